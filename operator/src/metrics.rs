//! The operator's Prometheus metrics (`breakwater_operator_*`), served on the metrics port.
//!
//! | metric | what |
//! |---|---|
//! | `reconciles_total` | policy reconciles run |
//! | `reconcile_failures_total{error}` | failed reconciles, by [`crate::Error::metric_label`] |
//! | `reconcile_duration_seconds` | time per reconcile |
//! | `status_writes_total` / `status_unchanged_total` | status patches sent / skipped as unchanged |
//! | `objects_indexed{kind}` | objects in each index |
//! | `malformed_objects_total{kind}` | watched objects that could not be read (ignored) |
//! | `watch_errors_total{kind}` | watch failures (retried with backoff) |
//! | `leader` | 1 while this replica holds the lease (and writes status) |
//! | `snapshots` | pods with a snapshot |
//! | `snapshot_updates_total` | snapshots whose content changed |
//! | `snapshot_compiles_total` / `snapshot_batch_seconds` | pods compiled, time per batch of changes |
//! | `snapshot_full_compile_seconds` | how long the last recompile of every pod took (start-up, relist) |
//! | `snapshot_services` | Service entries over every pod's snapshot (their average size is this / `snapshots`) |
//! | `streams` | sidecars streaming from this replica |
//! | `stream_refusals_total{code}` | streams refused (401 no or bad token, 403 another pod's, 404 no snapshot) |
//! | `snapshot_pushes_total` | snapshots sent on streams |
//! | `acknowledgements_total{result}` | sidecars' answers: `applied` or `refused` |
//! | `unapplied_change_age_seconds` | how long the oldest change pushed to a sidecar on this replica has waited for that sidecar to apply it (0: all current) |
//! | `convergence_seconds` | from a change the operator observed to a sidecar's acknowledgement of it |
//! | `admissions_total{result}` / `admission_seconds` | AdmissionReviews answered, time per answer |
//! | `injection_skips_total{reason}` | pods the webhook left without a sidecar, by reason |
//! | `uninjected_pods_reported_total` | pods found running without the sidecar they should have (created while no replica answered) |
//! | `certificate_expiry_timestamp_seconds` | when the served certificate expires (Unix time) |
//! | `certificate_loads_total{result}` | certificates read from the Secret: `loaded` (now served) or `invalid` (the last good one kept) |
//! | `certificate_renewals_total` | renewals this replica wrote |

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    error: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
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
struct KindLabel {
    kind: &'static str,
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_failures: Family<ErrorLabel, Counter>,
    reconcile_duration: Histogram,
    status_writes: Counter,
    status_unchanged: Counter,
    objects_indexed: Family<KindLabel, Gauge>,
    malformed: Family<KindLabel, Counter>,
    watch_errors: Family<KindLabel, Counter>,
    leader: Gauge,
    snapshots: Gauge,
    snapshot_services: Gauge,
    snapshot_updates: Counter,
    snapshot_compiles: Counter,
    snapshot_batch: Histogram,
    snapshot_full: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    streams: Gauge,
    stream_refusals: Family<CodeLabel, Counter>,
    pushes: Counter,
    acks: Family<ResultLabel, Counter>,
    convergence: Histogram,
    unapplied_age: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    admissions: Family<ResultLabel, Counter>,
    admission_seconds: Histogram,
    injection_skips: Family<ReasonLabel, Counter>,
    uninjected: Counter,
    certificate_expiry: Gauge,
    certificate_loads: Family<ResultLabel, Counter>,
    certificate_renewals: Counter,
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

const SECONDS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

impl Metrics {
    /// Registers every family.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("breakwater_operator"),
            reconciles: Counter::default(),
            reconcile_failures: Family::default(),
            reconcile_duration: Histogram::new(SECONDS),
            status_writes: Counter::default(),
            status_unchanged: Counter::default(),
            objects_indexed: Family::default(),
            malformed: Family::default(),
            watch_errors: Family::default(),
            leader: Gauge::default(),
            snapshots: Gauge::default(),
            snapshot_services: Gauge::default(),
            snapshot_updates: Counter::default(),
            snapshot_compiles: Counter::default(),
            snapshot_batch: Histogram::new(SECONDS),
            snapshot_full: Default::default(),
            streams: Gauge::default(),
            stream_refusals: Family::default(),
            pushes: Counter::default(),
            acks: Family::default(),
            convergence: Histogram::new(SECONDS),
            unapplied_age: Default::default(),
            admissions: Family::default(),
            admission_seconds: Histogram::new(SECONDS),
            injection_skips: Family::default(),
            uninjected: Counter::default(),
            certificate_expiry: Gauge::default(),
            certificate_loads: Family::default(),
            certificate_renewals: Counter::default(),
        };
        let r = &mut m.registry;
        r.register("reconciles", "Policy reconciles run", m.reconciles.clone());
        r.register("reconcile_failures", "Failed policy reconciles, by error", m.reconcile_failures.clone());
        r.register("reconcile_duration_seconds", "Time per policy reconcile", m.reconcile_duration.clone());
        r.register("status_writes", "Policy status patches sent", m.status_writes.clone());
        r.register(
            "status_unchanged",
            "Policy status patches skipped: nothing changed",
            m.status_unchanged.clone(),
        );
        r.register("objects_indexed", "Objects in the in-memory indexes, by kind", m.objects_indexed.clone());
        r.register(
            "malformed_objects",
            "Watched objects that could not be read, by kind",
            m.malformed.clone(),
        );
        r.register("watch_errors", "Watch failures (retried), by kind", m.watch_errors.clone());
        r.register("leader", "1 while this replica holds the lease and writes status", m.leader.clone());
        r.register("snapshots", "Pods with a compiled snapshot", m.snapshots.clone());
        r.register("snapshot_updates", "Snapshots whose content changed", m.snapshot_updates.clone());
        r.register(
            "snapshot_services",
            "Service entries over every pod's snapshot",
            m.snapshot_services.clone(),
        );
        r.register("snapshot_compiles", "Pod snapshots compiled", m.snapshot_compiles.clone());
        r.register(
            "snapshot_batch_seconds",
            "Time to apply one batch of changes to the snapshots",
            m.snapshot_batch.clone(),
        );
        r.register(
            "snapshot_full_compile_seconds",
            "How long the last recompile of every pod's snapshot took",
            m.snapshot_full.clone(),
        );
        r.register("streams", "Sidecars streaming their snapshot from this replica", m.streams.clone());
        r.register("stream_refusals", "Config streams refused, by HTTP status", m.stream_refusals.clone());
        r.register("snapshot_pushes", "Snapshots sent on config streams", m.pushes.clone());
        r.register("acknowledgements", "Sidecars' answers to snapshots, by result", m.acks.clone());
        r.register(
            "convergence_seconds",
            "From a change the operator observed to a sidecar's acknowledgement of the snapshot carrying it",
            m.convergence.clone(),
        );
        r.register(
            "unapplied_change_age_seconds",
            "How long the oldest change pushed to a sidecar streaming from this replica has waited for the sidecar to apply it (0: every connected sidecar runs its latest snapshot; a refused snapshot keeps aging)",
            m.unapplied_age.clone(),
        );
        r.register(
            "admissions",
            "AdmissionReviews answered by the injection webhook, by result (injected, skipped, refused, not-concerned, invalid)",
            m.admissions.clone(),
        );
        r.register("admission_seconds", "Time to answer an AdmissionReview", m.admission_seconds.clone());
        r.register(
            "injection_skips",
            "Pods the webhook left without a sidecar, by reason (already-injected, host-network, opted-out)",
            m.injection_skips.clone(),
        );
        r.register(
            "uninjected_pods_reported",
            "Pods found running without the sidecar they should have (created while no replica answered the webhook), reported by an Event",
            m.uninjected.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the served certificate expires (Unix time)",
            m.certificate_expiry.clone(),
        );
        r.register(
            "certificate_loads",
            "Certificates read from the Secret, by result (loaded, invalid: the last good one kept)",
            m.certificate_loads.clone(),
        );
        r.register(
            "certificate_renewals",
            "Certificate renewals this replica wrote",
            m.certificate_renewals.clone(),
        );
        m
    }

    /// The age of the oldest change a connected sidecar has not applied (set at scrape).
    pub fn unapplied(&self, age: Option<std::time::Duration>) {
        self.unapplied_age.set(age.map_or(0.0, |a| a.as_secs_f64()));
    }

    /// The webhook answered an AdmissionReview with `result` in `seconds`.
    pub fn admission(&self, result: &'static str, seconds: f64) {
        self.admissions.get_or_create(&ResultLabel { result }).inc();
        self.admission_seconds.observe(seconds);
    }

    /// A pod running without the sidecar it should have was reported (an Event).
    pub fn uninjected_reported(&self) {
        self.uninjected.inc();
    }

    /// Certificates were read from the Secret: `result` is `loaded` (served from now on, expiring
    /// at `not_after`, Unix seconds) or `invalid`.
    pub fn certificate_loaded(&self, result: &'static str, not_after: Option<i64>) {
        self.certificate_loads.get_or_create(&ResultLabel { result }).inc();
        if let Some(t) = not_after {
            self.certificate_expiry.set(t);
        }
    }

    /// This replica renewed the certificates.
    pub fn certificate_renewed(&self) {
        self.certificate_renewals.inc();
    }

    /// The webhook left a pod alone for `reason`.
    pub fn injection_skipped(&self, reason: &'static str) {
        self.injection_skips.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// A config stream opened.
    pub fn stream_opened(&self) {
        self.streams.inc();
    }

    /// A config stream closed.
    pub fn stream_closed(&self) {
        self.streams.dec();
    }

    /// A config stream was refused with `code`.
    pub fn stream_refused(&self, code: u16) {
        self.stream_refusals.get_or_create(&CodeLabel { code }).inc();
    }

    /// A snapshot was sent on a stream.
    pub fn snapshot_pushed(&self) {
        self.pushes.inc();
    }

    /// A sidecar answered a snapshot `seconds` after its change was observed.
    pub fn acknowledged(&self, applied: bool, seconds: f64) {
        self.acks.get_or_create(&ResultLabel { result: if applied { "applied" } else { "refused" } }).inc();
        if applied {
            self.convergence.observe(seconds);
        }
    }

    /// A reconcile ended after `seconds`, failing with `error` if set.
    pub fn reconciled(&self, seconds: f64, error: Option<&'static str>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(seconds);
        if let Some(error) = error {
            self.reconcile_failures.get_or_create(&ErrorLabel { error }).inc();
        }
    }

    /// A status patch was sent (`true`) or skipped as unchanged (`false`).
    pub fn status_write(&self, sent: bool) {
        if sent {
            self.status_writes.inc()
        } else {
            self.status_unchanged.inc()
        };
    }

    /// Sets how many `kind` objects are indexed.
    pub fn indexed(&self, kind: &'static str, n: usize) {
        self.objects_indexed.get_or_create(&KindLabel { kind }).set(n as i64);
    }

    /// A watched `kind` object could not be read.
    pub fn malformed_object(&self, kind: &'static str) {
        self.malformed.get_or_create(&KindLabel { kind }).inc();
    }

    /// The `kind` watch failed.
    pub fn watch_error(&self, kind: &'static str) {
        self.watch_errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// A batch of changes compiled `pods` snapshots, `updated` of which changed, in `seconds`;
    /// `total` pods have one, holding `services` Service entries in all.
    pub fn snapshot_batch(&self, pods: usize, updated: usize, total: usize, services: usize, seconds: f64) {
        self.snapshot_compiles.inc_by(pods as u64);
        self.snapshot_updates.inc_by(updated as u64);
        self.snapshots.set(total as i64);
        self.snapshot_services.set(services as i64);
        self.snapshot_batch.observe(seconds);
    }

    /// Every pod's snapshot was recompiled in `seconds`.
    pub fn snapshot_full_compile(&self, seconds: f64) {
        self.snapshot_full.set(seconds);
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_with_its_prefix() {
        let m = Metrics::new();
        m.snapshot_full_compile(1.5);
        m.reconciled(0.01, Some("status_write"));
        m.set_leader(true);
        let text = m.encode();
        for line in [
            "breakwater_operator_snapshot_full_compile_seconds 1.5",
            "breakwater_operator_reconcile_failures_total{error=\"status_write\"} 1",
            "breakwater_operator_leader 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
