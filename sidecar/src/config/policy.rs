//! A policy compiled for one target in one direction: the settings its resilience mechanisms
//! and its request path run with. This is the one place between the policy API
//! (`breakwater-crds`) and the mechanisms (`breakwater-resilience`), which never see the API's
//! types. Inbound, only timeouts, the bulkhead and the connection cap apply: retries,
//! breakers and faults are the callers' business.

use std::{sync::Arc, time::Duration};

use breakwater_crds::{
    BreakerScope, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, EffectiveFaults, EffectivePolicy,
    FailureCondition, Mode, RetryCondition,
};
use breakwater_resilience::{
    Enforcement, breaker, bulkhead,
    outcome::{Condition, Conditions},
    retry,
};

use crate::metrics::Direction;

/// What one target runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Whether decisions act (`spec.mode`).
    pub enforcement: Enforcement,
    /// Connection establishment limit.
    pub connect_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// The whole call's deadline, retries included.
    pub request_timeout: Option<Duration>,
    /// One attempt's deadline.
    pub per_try_timeout: Option<Duration>,
    /// Retries (outbound).
    pub retry: Option<Retry>,
    /// The circuit breaker (outbound).
    pub breaker: Option<Breaker>,
    /// The bulkhead of this direction.
    pub bulkhead: Option<bulkhead::Limits>,
    /// The connection cap of this direction.
    pub max_connections: Option<u32>,
    /// Faults to inject (outbound, enabled ones only).
    pub faults: Option<Faults>,
}

/// Faults injected into calls before they enter the stack (`spec.faults`).
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Headers a call must all carry (names lower-case), to be eligible.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// How long to hold a call, and the share of eligible calls held (0 to 1).
    pub delay: Option<(Duration, f64)>,
    /// What to answer instead of the call, and the share of eligible calls aborted (0 to 1).
    pub abort: Option<(Abort, f64)>,
}

/// An injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    /// An HTTP status (gRPC calls get the gRPC status it maps to).
    Http(u16),
    /// A gRPC status code (plain HTTP calls get 500).
    Grpc(u8),
    /// No answer: the connection (HTTP/1) or stream (HTTP/2) is reset.
    Reset,
}

impl Faults {
    /// Compiles enabled faults. A header that does not parse (validation refuses those) drops
    /// the faults whole rather than widening the match to every call.
    fn compile(f: &EffectiveFaults) -> Option<Self> {
        let headers = f
            .headers
            .iter()
            .map(|h| {
                let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
                Some((name, http::HeaderValue::from_str(&h.value).ok()?))
            })
            .collect::<Option<Vec<_>>>()?;
        let share = |percent: f64| (percent / 100.0).clamp(0.0, 1.0);
        Some(Self {
            headers,
            delay: f.delay.as_ref().map(|d| (d.fixed_delay, share(d.percentage))),
            abort: f.abort.as_ref().map(|a| {
                let abort = match (a.http_status, a.grpc_status) {
                    (Some(status), _) => Abort::Http(status),
                    (None, Some(code)) => Abort::Grpc(code.code()),
                    (None, None) => Abort::Reset,
                };
                (abort, share(a.percentage))
            }),
        })
    }

    /// Whether a call with `headers` may be hit.
    pub fn eligible(&self, headers: &http::HeaderMap) -> bool {
        self.headers.iter().all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
    }
}

/// Retry settings, and what makes a request safe to send again.
#[derive(Debug, Clone, PartialEq)]
pub struct Retry {
    /// The retry policy's settings.
    pub settings: Arc<retry::Settings>,
    /// The budget: `(window, min_per_second, ratio)`.
    pub budget: (Duration, u32, f64),
    /// Largest request body kept for a replay.
    pub max_replay_body_bytes: usize,
    /// Methods retried after the request may have reached the application.
    pub retryable_methods: Vec<String>,
    /// Whether an `Idempotency-Key` makes any method retryable.
    pub honor_idempotency_key: bool,
}

impl Retry {
    /// Whether a request with `method` (and an `Idempotency-Key` or not) may be sent twice.
    pub fn idempotent(&self, method: &str, has_idempotency_key: bool) -> bool {
        self.retryable_methods.iter().any(|m| m == method)
            || (self.honor_idempotency_key && has_idempotency_key)
    }
}

/// A circuit breaker's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    /// One per endpoint (`true`), or one for the whole Service.
    pub per_endpoint: bool,
    /// The state machine's settings.
    pub settings: breaker::Settings,
    /// Which outcomes count as failures.
    pub fail_on: Conditions,
}

impl Default for Policy {
    /// No policy: enforced (nothing to enforce), default pool timeouts, nothing else.
    fn default() -> Self {
        Self {
            enforcement: Enforcement::Enforce,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            request_timeout: None,
            per_try_timeout: None,
            retry: None,
            breaker: None,
            bulkhead: None,
            max_connections: None,
            faults: None,
        }
    }
}

fn retry_condition(c: RetryCondition) -> Condition {
    match c {
        RetryCondition::ConnectFailure => Condition::ConnectFailure,
        RetryCondition::Reset => Condition::Reset,
        RetryCondition::Timeout => Condition::Timeout,
        RetryCondition::ServerError => Condition::ServerError,
        RetryCondition::GatewayError => Condition::GatewayError,
    }
}

fn failure_condition(c: FailureCondition) -> Condition {
    match c {
        FailureCondition::ConnectFailure => Condition::ConnectFailure,
        FailureCondition::Reset => Condition::Reset,
        FailureCondition::Timeout => Condition::Timeout,
        FailureCondition::ServerError => Condition::ServerError,
        FailureCondition::GatewayError => Condition::GatewayError,
    }
}

impl Policy {
    /// Compiles `policy` (none: [`Policy::default`]) for calls in `direction`.
    pub fn compile(policy: Option<&EffectivePolicy>, direction: Direction) -> Self {
        let Some(p) = policy else { return Self::default() };
        let outbound = direction == Direction::Outbound;
        let limits = match direction {
            Direction::Outbound => p.bulkhead.outbound.as_ref(),
            Direction::Inbound => p.bulkhead.inbound.as_ref(),
        };
        let retry = p.retries.as_ref().filter(|_| outbound).map(|r| Retry {
            settings: Arc::new(retry::Settings {
                attempts: r.attempts,
                conditions: r.conditions.iter().copied().map(retry_condition).collect(),
                statuses: r.http_status_codes.clone(),
                grpc_codes: r.grpc_codes.iter().map(|c| c.code()).collect(),
                backoff: retry::Backoff { base: r.backoff_base, max: r.backoff_max, jitter: r.jitter },
                max_depth: r.max_retry_depth,
            }),
            budget: (r.budget_window, r.budget_min_per_second, r.budget_ratio),
            max_replay_body_bytes: r.max_replay_body_bytes as usize,
            retryable_methods: r.retryable_methods.clone(),
            honor_idempotency_key: r.honor_idempotency_key,
        });
        let breaker = p.circuit_breaker.as_ref().filter(|_| outbound).map(|b| Breaker {
            per_endpoint: b.scope == BreakerScope::Endpoint,
            settings: breaker::Settings {
                consecutive_failures: b.consecutive_failures,
                failure_rate: b.failure_rate.as_ref().map(|f| (f.threshold, f.window, f.minimum_requests)),
                open_duration: b.open_duration,
                max_open_duration: b.max_open_duration,
                half_open_probes: b.half_open_probes,
            },
            fail_on: b.fail_on.iter().copied().map(failure_condition).collect(),
        });
        Self {
            enforcement: if p.mode == Mode::DryRun { Enforcement::DryRun } else { Enforcement::Enforce },
            connect_timeout: p.timeouts.connect,
            idle_timeout: p.timeouts.idle,
            request_timeout: p.timeouts.request,
            per_try_timeout: p.timeouts.per_try,
            retry,
            breaker,
            bulkhead: limits.map(|l| bulkhead::Limits {
                max_concurrent: l.max_concurrent_requests as usize,
                max_queued: l.max_queued as usize,
                max_queue_wait: l.max_queue_wait,
            }),
            max_connections: limits.and_then(|l| l.max_connections),
            faults: p.faults.as_ref().filter(|_| outbound).and_then(Faults::compile),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effective(mut spec: serde_json::Value) -> EffectivePolicy {
        spec["targetRef"] = serde_json::json!({"group": "", "kind": "Service", "name": "payments"});
        let spec = serde_json::from_value(spec).expect("a valid spec");
        EffectivePolicy::resolve(&spec).expect("valid")
    }

    /// Inbound, a policy is its timeouts, bulkhead and connection cap; retries and breakers
    /// are left to the callers' sidecars.
    #[test]
    fn inbound_keeps_only_what_the_server_side_enforces() {
        let p = effective(serde_json::json!({
            "mode": "DryRun", "timeouts": {"request": "2s"},
            "retries": {"attempts": 3},
            "circuitBreaker": {"consecutiveFailures": 5, "failOn": ["5xx", "reset"]},
            "bulkhead": {"inbound": {"maxConcurrentRequests": 4, "maxConnections": 8}},
            "faults": {"enabled": true, "abort": {"httpStatus": 503}},
        }));
        let inbound = Policy::compile(Some(&p), Direction::Inbound);
        assert_eq!(inbound.enforcement, Enforcement::DryRun);
        assert_eq!(inbound.request_timeout, Some(Duration::from_secs(2)));
        assert!(inbound.retry.is_none() && inbound.breaker.is_none() && inbound.faults.is_none());
        assert_eq!(inbound.bulkhead.map(|b| b.max_concurrent), Some(4));
        assert_eq!(inbound.max_connections, Some(8));

        let outbound = Policy::compile(Some(&p), Direction::Outbound);
        assert_eq!(outbound.retry.as_ref().map(|r| r.settings.attempts), Some(3));
        let breaker = outbound.breaker.expect("a breaker outbound");
        assert!(
            breaker.fail_on.contains(Condition::ServerError) && breaker.fail_on.contains(Condition::Reset)
        );
        assert!(!breaker.fail_on.contains(Condition::Timeout));
        assert!(outbound.bulkhead.is_none(), "no outbound bulkhead was asked for");
        assert_eq!(outbound.faults.and_then(|f| f.abort), Some((Abort::Http(503), 1.0)));
    }

    #[test]
    fn faults_match_every_listed_header_case_insensitively() {
        let p = effective(serde_json::json!({"faults": {
            "enabled": true,
            "match": {"headers": [{"name": "X-Test", "value": "a"}, {"name": "x-team", "value": "b"}]},
            "delay": {"fixedDelay": "250ms", "percentage": 12.5},
            "abort": {"reset": true},
        }}));
        let faults = Policy::compile(Some(&p), Direction::Outbound).faults.expect("enabled faults");
        assert_eq!(faults.delay, Some((Duration::from_millis(250), 0.125)));
        assert_eq!(faults.abort, Some((Abort::Reset, 1.0)));
        let headers = |pairs: &[(&'static str, &'static str)]| {
            pairs
                .iter()
                .map(|(n, v)| (http::HeaderName::from_static(n), http::HeaderValue::from_static(v)))
                .collect()
        };
        assert!(faults.eligible(&headers(&[("x-test", "a"), ("x-team", "b"), ("other", "c")])));
        assert!(!faults.eligible(&headers(&[("x-test", "a")])), "every header must be there");
        assert!(!faults.eligible(&headers(&[("x-test", "A"), ("x-team", "b")])), "values compare exactly");
        let disabled = effective(serde_json::json!({"faults": {"enabled": false, "abort": {"reset": true}}}));
        assert_eq!(Policy::compile(Some(&disabled), Direction::Outbound).faults, None);
    }

    #[test]
    fn no_policy_enforces_nothing_with_default_pool_timeouts() {
        let none = Policy::compile(None, Direction::Outbound);
        assert_eq!(none, Policy::default());
        assert_eq!(none.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }
}
