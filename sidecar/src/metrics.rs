//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! Families are registered once; the request path holds pre-resolved handles
//! ([`ServiceMetrics`]) so that counting a request is an atomic add, not a map lookup.

use crate::telemetry::processor::SpanCounters;
use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Latency buckets, in seconds: fine below 10ms, where a proxy's own cost lives.
const LATENCY_BUCKETS: [f64; 16] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Traffic direction.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Direction {
    /// The application's calls out.
    Outbound,
    /// Calls in to the application.
    Inbound,
}

impl Direction {
    /// `outbound` or `inbound`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outbound => "outbound",
            Self::Inbound => "inbound",
        }
    }
}

impl EncodeLabelValue for Direction {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    service: String,
    direction: Direction,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceDirection {
    service: String,
    direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: Direction,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceReason {
    service: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceEndpoint {
    service: String,
    endpoint: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceTo {
    service: String,
    to: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceKind {
    service: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceDirectionReason {
    service: String,
    direction: Direction,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceFault {
    service: String,
    fault: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceDecision {
    service: String,
    decision: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<ServiceDirection, Histogram, fn() -> Histogram>,
    connect_failures: Family<ServiceLabel, Counter>,
    ejections: Family<ServiceLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    snapshot_unknown_fields: Counter,
    config_stream_errors: Family<ReasonLabel, Counter>,
    config_stream_connected: Gauge,
    open_connections: Family<DirectionLabel, Gauge>,
    retries: Family<ServiceReason, Counter>,
    retries_skipped: Family<ServiceReason, Counter>,
    retry_budget_exhausted: Family<ServiceLabel, Counter>,
    breaker_state: Family<ServiceEndpoint, Gauge>,
    breaker_transitions: Family<ServiceTo, Counter>,
    bulkhead_rejected: Family<ServiceDirection, Counter>,
    bulkhead_queue_wait: Family<ServiceDirection, Histogram, fn() -> Histogram>,
    timeouts: Family<ServiceKind, Counter>,
    dryrun_decisions: Family<ServiceDecision, Counter>,
    faults_injected: Family<ServiceFault, Counter>,
    refusals: Family<ServiceDirectionReason, Counter>,
    bulkhead_in_flight: Family<ServiceDirection, Gauge>,
    bulkhead_queued: Family<ServiceDirection, Gauge>,
    bulkhead_capacity: Family<ServiceDirection, Gauge>,
    client_errors: Family<ServiceDirectionReason, Counter>,
    spans: SpanCounters,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The span export counters, for the trace pipeline to count into.
    pub fn span_counters(&self) -> SpanCounters {
        self.spans.clone()
    }

    /// Registers every family.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("breakwater");
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            connect_failures: Family::default(),
            ejections: Family::default(),
            config_reloads: Family::default(),
            snapshot_unknown_fields: Counter::default(),
            config_stream_errors: Family::default(),
            config_stream_connected: Gauge::default(),
            open_connections: Family::default(),
            retries: Family::default(),
            retries_skipped: Family::default(),
            retry_budget_exhausted: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            bulkhead_rejected: Family::default(),
            bulkhead_queue_wait: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            timeouts: Family::default(),
            dryrun_decisions: Family::default(),
            faults_injected: Family::default(),
            refusals: Family::default(),
            bulkhead_in_flight: Family::default(),
            bulkhead_queued: Family::default(),
            bulkhead_capacity: Family::default(),
            client_errors: Family::default(),
            spans: SpanCounters::default(),
            registry: Registry::default(),
        };
        registry.register(
            "client_errors",
            "Requests that failed by the caller's fault (malformed or cut short), by reason; never counted against the upstream, never retried",
            m.client_errors.clone(),
        );
        registry.register(
            "requests",
            "Requests handled, by service, direction and status class",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response headers, in seconds",
            m.duration.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Connections to an upstream endpoint that could not be made (refused, unreachable, timed out)",
            m.connect_failures.clone(),
        );
        registry.register(
            "endpoint_ejections",
            "Endpoints taken out of the balancer's set because they refused connections (probed back in the background)",
            m.ejections.clone(),
        );
        registry.register("config_reloads", "Configuration reloads, by result", m.config_reloads.clone());
        registry.register(
            "config_unknown_fields",
            "Fields of applied snapshots that this sidecar does not know (ignored; a newer operator)",
            m.snapshot_unknown_fields.clone(),
        );
        registry.register(
            "config_stream_errors",
            "Config streams to the operator that ended, by reason (the last good snapshot stays in force)",
            m.config_stream_errors.clone(),
        );
        registry.register(
            "config_stream_connected",
            "1 while the config stream to the operator is connected",
            m.config_stream_connected.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open, by direction",
            m.open_connections.clone(),
        );
        registry.register(
            "refusals",
            "Requests Breakwater answered itself instead of the upstream (the breakwater-error header), by service, direction and reason",
            m.refusals.clone(),
        );
        registry.register(
            "bulkhead_in_flight",
            "Calls holding a bulkhead permit now, by service and direction (read at scrape)",
            m.bulkhead_in_flight.clone(),
        );
        registry.register(
            "bulkhead_queued",
            "Calls waiting in a bulkhead queue now, by service and direction (read at scrape)",
            m.bulkhead_queued.clone(),
        );
        registry.register(
            "bulkhead_max_concurrent",
            "The bulkhead's limit of concurrent calls, by service and direction",
            m.bulkhead_capacity.clone(),
        );
        registry.register(
            "retries",
            "Retries sent, by service and the reason for the retry",
            m.retries.clone(),
        );
        registry.register(
            "retries_skipped",
            "Failed attempts not retried although the policy allowed it, by reason (body too large, retry depth, method, deadline)",
            m.retries_skipped.clone(),
        );
        registry.register(
            "retry_budget_exhausted",
            "Retries refused because the retry budget was spent",
            m.retry_budget_exhausted.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        registry.register(
            "breaker_transitions",
            "Circuit breaker state changes, by the state entered",
            m.breaker_transitions.clone(),
        );
        registry.register(
            "bulkhead_rejected",
            "Requests refused because the bulkhead and its queue were full or the queue wait expired",
            m.bulkhead_rejected.clone(),
        );
        registry.register(
            "bulkhead_queue_wait_seconds",
            "Time requests waited in a bulkhead queue, in seconds",
            m.bulkhead_queue_wait.clone(),
        );
        registry.register(
            "timeouts",
            "Deadlines that fired, by kind (request, per_try, connect)",
            m.timeouts.clone(),
        );
        registry.register(
            "dryrun_decisions",
            "Decisions a DryRun policy would have enforced, by decision",
            m.dryrun_decisions.clone(),
        );
        registry.register(
            "faults_injected",
            "Faults a policy's spec.faults injected into calls on purpose, by fault (delay, abort)",
            m.faults_injected.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped because the export queue was full (the collector is slow or down)",
            m.spans.dropped.clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Spans exported to the OpenTelemetry collector",
            m.spans.exported.clone(),
        );
        registry.register(
            "trace_spans_export_failed",
            "Spans in batches the collector refused or did not answer in time",
            m.spans.failed.clone(),
        );
        // Families whose every label is known up front start at zero, so dashboards and
        // alerts see them before the first event.
        for result in ["success", "failure"] {
            let _ = m.config_reloads.get_or_create(&ResultLabel { result });
        }
        for direction in [Direction::Outbound, Direction::Inbound] {
            let _ = m.open_connections.get_or_create(&DirectionLabel { direction });
        }
        Self { registry, ..m }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Replaces the bulkhead gauges with `now`: (service, direction, in flight, queued, limit)
    /// for every governed target with a bulkhead. Called at scrape, so the gauges cost the
    /// request path nothing; targets that lost their bulkhead drop out.
    pub fn bulkheads(&self, now: impl IntoIterator<Item = (String, Direction, usize, usize, usize)>) {
        // Summed first (two ports of a Service each have a bulkhead), then set: two scrapes at
        // once each write the same totals.
        let mut totals: std::collections::HashMap<ServiceDirection, [i64; 3]> = Default::default();
        for (service, direction, in_flight, queued, limit) in now {
            let t = totals.entry(ServiceDirection { service, direction }).or_default();
            t[0] += in_flight as i64;
            t[1] += queued as i64;
            t[2] += limit as i64;
        }
        self.bulkhead_in_flight.clear();
        self.bulkhead_queued.clear();
        self.bulkhead_capacity.clear();
        for (key, [in_flight, queued, limit]) in totals {
            self.bulkhead_in_flight.get_or_create(&key).set(in_flight);
            self.bulkhead_queued.get_or_create(&key).set(queued);
            self.bulkhead_capacity.get_or_create(&key).set(limit);
        }
    }

    /// Replaces the breaker state gauges with `now`: (service, endpoint or `*`, state) for
    /// every breaker in force. Called at scrape, so a breaker that is gone (its endpoint left
    /// the Service, its policy was removed) leaves no series behind that would look open.
    pub fn breakers(&self, now: impl IntoIterator<Item = (String, String, i64)>) {
        self.breaker_state.clear();
        for (service, endpoint, state) in now {
            let gauge = self.breaker_state.get_or_create(&ServiceEndpoint { service, endpoint });
            // Two breakers behind one label set (two ports of a Service): the worse one.
            if state > gauge.get() {
                gauge.set(state);
            }
        }
    }

    /// Counts a configuration reload.
    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabel { result: if ok { "success" } else { "failure" } })
            .inc();
    }

    /// The config stream ended for `reason` (connect, tls, refused, http2, malformed, timeout,
    /// closed, local).
    pub fn config_stream_error(&self, reason: &'static str) {
        self.config_stream_errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Whether the config stream is connected.
    pub fn config_stream_connected(&self, connected: bool) {
        self.config_stream_connected.set(i64::from(connected));
    }

    /// Counts fields of an applied snapshot that this build ignored.
    pub fn snapshot_unknown_fields(&self, n: usize) {
        self.snapshot_unknown_fields.inc_by(n as u64);
    }

    /// Counts a request that failed by its caller's fault: `reason` is `bad-request` (refused
    /// before routing, `service` is then `-`), `body-malformed` or `body-incomplete`.
    pub fn client_error(&self, service: &str, direction: Direction, reason: &'static str) {
        self.client_errors
            .get_or_create(&ServiceDirectionReason { service: service.to_owned(), direction, reason })
            .inc();
    }

    /// The gauge of open client connections in `direction`.
    pub fn open_connections(&self, direction: Direction) -> Gauge {
        self.open_connections.get_or_create(&DirectionLabel { direction }).clone()
    }

    /// Handles for one service and direction.
    pub fn service(self: &Arc<Self>, service: &str, direction: Direction) -> ServiceMetrics {
        let status = |status_class| {
            self.requests
                .get_or_create(&RequestLabels { service: service.to_owned(), direction, status_class })
                .clone()
        };
        ServiceMetrics {
            service: service.to_owned(),
            direction,
            by_class: [status("1xx"), status("2xx"), status("3xx"), status("4xx"), status("5xx")],
            duration: self
                .duration
                .get_or_create(&ServiceDirection { service: service.to_owned(), direction })
                .clone(),
            connect_failures: self
                .connect_failures
                .get_or_create(&ServiceLabel { service: service.to_owned() })
                .clone(),
            ejections: self.ejections.get_or_create(&ServiceLabel { service: service.to_owned() }).clone(),
            all: self.clone(),
        }
    }
}

/// What a governed target's policy turns on. The series that mechanism can produce start at
/// zero when the target is built (Prometheus's advice: a counter born at its first event loses
/// that event to `rate()`, and dashboards and alerts would not see it before).
#[derive(Debug, Default, Clone, Copy)]
pub struct Mechanisms {
    /// DryRun: only the "would have" decisions are counted.
    pub dry_run: bool,
    /// Retries (and their budget).
    pub retries: bool,
    /// A circuit breaker.
    pub breaker: bool,
    /// A bulkhead for this direction.
    pub bulkhead: bool,
    /// A request timeout.
    pub request_timeout: bool,
    /// A per-try timeout.
    pub per_try_timeout: bool,
    /// An injected delay.
    pub fault_delay: bool,
    /// An injected abort.
    pub fault_abort: bool,
}

/// Pre-resolved metric handles for one service and direction.
#[derive(Clone)]
pub struct ServiceMetrics {
    service: String,
    direction: Direction,
    by_class: [Counter; 5],
    duration: Histogram,
    connect_failures: Counter,
    ejections: Counter,
    all: Arc<Metrics>,
}

impl std::fmt::Debug for ServiceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceMetrics").field("service", &self.service).finish_non_exhaustive()
    }
}

impl ServiceMetrics {
    /// Counts a response with `status` that took `seconds` to its headers; `refusal` names why
    /// when Breakwater answered itself.
    pub fn response(&self, status: u16, refusal: Option<&'static str>, seconds: f64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.duration.observe(seconds);
        if let Some(reason) = refusal {
            self.all
                .refusals
                .get_or_create(&ServiceDirectionReason {
                    service: self.service.clone(),
                    direction: self.direction,
                    reason,
                })
                .inc();
        }
    }

    /// Creates, at zero, the series `m` can produce for this service (see [`Mechanisms`]).
    pub fn start_at_zero(&self, m: Mechanisms) {
        let all = &self.all;
        let service = || self.service.clone();
        let direction = self.direction;
        if m.dry_run {
            let decisions = [
                (m.retries, "retry"),
                (m.retries, "retry-budget-exhausted"),
                (m.breaker, "circuit-open"),
                (m.bulkhead, "bulkhead-full"),
                (m.request_timeout, "timeout"),
                (m.per_try_timeout, "per-try-timeout"),
                (m.fault_delay, "fault-delay"),
                (m.fault_abort, "fault-abort"),
            ];
            for (_, decision) in decisions.into_iter().filter(|(on, _)| *on) {
                let _ = all.dryrun_decisions.get_or_create(&ServiceDecision { service: service(), decision });
            }
            return;
        }
        let refusal = |reason| {
            let _ =
                all.refusals.get_or_create(&ServiceDirectionReason { service: service(), direction, reason });
        };
        refusal("connect-failed");
        if m.retries {
            // Connect failures are always retried, non-idempotent methods never: the two
            // reasons every retrying target can see.
            let _ =
                all.retries.get_or_create(&ServiceReason { service: service(), reason: "connect-failure" });
            let _ =
                all.retries_skipped.get_or_create(&ServiceReason { service: service(), reason: "method" });
            let _ = all.retry_budget_exhausted.get_or_create(&ServiceLabel { service: service() });
        }
        if m.breaker {
            refusal("circuit-open");
            for to in ["open", "half-open", "closed"] {
                let _ = all.breaker_transitions.get_or_create(&ServiceTo { service: service(), to });
            }
        }
        if m.bulkhead {
            refusal("bulkhead-full");
            let _ = all.bulkhead_rejected.get_or_create(&ServiceDirection { service: service(), direction });
            let _ =
                all.bulkhead_queue_wait.get_or_create(&ServiceDirection { service: service(), direction });
        }
        if m.request_timeout || m.per_try_timeout {
            refusal("timeout");
        }
        for (on, kind) in [(m.request_timeout, "request"), (m.per_try_timeout, "per_try")] {
            if on {
                let _ = all.timeouts.get_or_create(&ServiceKind { service: service(), kind });
            }
        }
        for (on, fault) in [(m.fault_delay, "delay"), (m.fault_abort, "abort")] {
            if on {
                let _ = all.faults_injected.get_or_create(&ServiceFault { service: service(), fault });
            }
        }
        if m.fault_abort {
            refusal("fault-injected");
        }
    }

    /// Counts a failed connection attempt.
    pub fn connect_failure(&self) {
        self.connect_failures.inc();
    }

    /// Counts an endpoint taken out of the balancer's set.
    pub fn ejection(&self) {
        self.ejections.inc();
    }

    /// Counts a retry.
    pub fn retry(&self, reason: &'static str) {
        self.all.retries.get_or_create(&ServiceReason { service: self.service.clone(), reason }).inc();
    }

    /// Counts a retry that was not sent although the outcome was retryable.
    pub fn retry_skipped(&self, reason: &'static str) {
        self.all
            .retries_skipped
            .get_or_create(&ServiceReason { service: self.service.clone(), reason })
            .inc();
    }

    /// Counts a retry refused by the budget.
    pub fn budget_exhausted(&self) {
        self.all.retry_budget_exhausted.get_or_create(&ServiceLabel { service: self.service.clone() }).inc();
    }

    /// Counts a breaker transition into `to`.
    pub fn breaker_transition(&self, to: &'static str) {
        self.all.breaker_transitions.get_or_create(&ServiceTo { service: self.service.clone(), to }).inc();
    }

    /// Counts a bulkhead rejection.
    pub fn bulkhead_rejected(&self) {
        self.all
            .bulkhead_rejected
            .get_or_create(&ServiceDirection { service: self.service.clone(), direction: self.direction })
            .inc();
    }

    /// Records a bulkhead queue wait.
    pub fn bulkhead_waited(&self, seconds: f64) {
        self.all
            .bulkhead_queue_wait
            .get_or_create(&ServiceDirection { service: self.service.clone(), direction: self.direction })
            .observe(seconds);
    }

    /// Counts a deadline that fired.
    pub fn timeout(&self, kind: &'static str) {
        self.all.timeouts.get_or_create(&ServiceKind { service: self.service.clone(), kind }).inc();
    }

    /// Counts a request that failed by its caller's fault (see [`Metrics::client_error`]).
    pub fn client_error(&self, reason: &'static str) {
        self.all.client_error(&self.service, self.direction, reason);
    }

    /// Counts a fault injected on purpose: `delay` or `abort`.
    pub fn fault(&self, fault: &'static str) {
        self.all.faults_injected.get_or_create(&ServiceFault { service: self.service.clone(), fault }).inc();
    }

    /// Counts a decision a DryRun policy would have enforced.
    pub fn dryrun(&self, decision: &'static str) {
        self.all
            .dryrun_decisions
            .get_or_create(&ServiceDecision { service: self.service.clone(), decision })
            .inc();
    }

    /// The service label.
    pub fn service(&self) -> &str {
        &self.service
    }
}
