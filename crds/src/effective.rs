//! The effective policy: a validated `CommunicationPolicySpec` with every default filled in.
//!
//! This is what a sidecar enforces and what `status.effective` and the sidecar's `/config`
//! show, so the defaults live in exactly one place: the `DEFAULT_*` constants and
//! [`EffectivePolicy::resolve`] below, which the field docs in `policy/` describe.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{
    CommunicationPolicySpec, FaultHeader, ValidationErrors,
    policy::{
        BreakerScope, FailureCondition, GrpcCode, Mode, RetryCondition,
        retries::{DEFAULT_ATTEMPTS, DEFAULT_MAX_REPLAY_BODY_BYTES, IDEMPOTENT_METHODS},
    },
};

/// `timeouts.connect` when unset.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `timeouts.idle` when unset.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// `retries.backoff.base` when unset.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// `retries.backoff.max` when unset.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
/// `retries.budget.ratio` when unset.
pub const DEFAULT_BUDGET_RATIO: f64 = 0.2;
/// `retries.budget.minPerSecond` when unset.
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// `retries.budget.window` when unset.
pub const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// `circuitBreaker.consecutiveFailures` when neither trip rule is set.
pub const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
/// `circuitBreaker.failureRate.threshold` when unset.
pub const DEFAULT_FAILURE_RATE_THRESHOLD: f64 = 0.5;
/// `circuitBreaker.failureRate.window` when unset.
pub const DEFAULT_FAILURE_RATE_WINDOW: Duration = Duration::from_secs(10);
/// `circuitBreaker.failureRate.minimumRequests` when unset.
pub const DEFAULT_FAILURE_RATE_MINIMUM_REQUESTS: u32 = 20;
/// `circuitBreaker.openDuration` when unset.
pub const DEFAULT_OPEN_DURATION: Duration = Duration::from_secs(5);
/// `circuitBreaker.maxOpenDuration` when unset.
pub const DEFAULT_MAX_OPEN_DURATION: Duration = Duration::from_secs(120);
/// `bulkhead.*.maxQueueWait` when a queue is configured without it.
pub const DEFAULT_MAX_QUEUE_WAIT: Duration = Duration::from_secs(1);
/// `retries.retryOn.conditions` when `retryOn` is unset.
pub const DEFAULT_RETRY_CONDITIONS: [RetryCondition; 3] =
    [RetryCondition::ConnectFailure, RetryCondition::Reset, RetryCondition::GatewayError];
/// `circuitBreaker.failOn` when unset.
pub const DEFAULT_FAIL_ON: [FailureCondition; 4] = [
    FailureCondition::GatewayError,
    FailureCondition::Timeout,
    FailureCondition::ConnectFailure,
    FailureCondition::Reset,
];

/// A policy as enforced: valid, with every default applied.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePolicy {
    /// `Enforce` or `DryRun`.
    pub mode: Mode,
    /// Deadlines.
    pub timeouts: EffectiveTimeouts,
    /// Retry behaviour; absent when the policy does not retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<EffectiveRetries>,
    /// Circuit breaker; absent when the policy has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<EffectiveCircuitBreaker>,
    /// Bulkheads; each side absent when unbounded.
    pub bulkhead: EffectiveBulkhead,
    /// Faults to inject; absent unless `spec.faults.enabled` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faults: Option<EffectiveFaults>,
}

/// Effective `faults` (enabled ones only).
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveFaults {
    /// Headers a call must all carry to be eligible; empty for every call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<FaultHeader>,
    /// The delay, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<EffectiveFaultDelay>,
    /// The abort, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<EffectiveFaultAbort>,
}

/// Effective `faults.delay`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveFaultDelay {
    /// How long a delayed call is held.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub fixed_delay: Duration,
    /// Share of eligible calls delayed, in percent.
    pub percentage: f64,
}

/// Effective `faults.abort`: exactly one of `httpStatus`, `grpcStatus` and `reset`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveFaultAbort {
    /// The HTTP status answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// The gRPC status answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<GrpcCode>,
    /// Reset instead of answering.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reset: bool,
    /// Share of eligible calls aborted, in percent.
    pub percentage: f64,
}

/// Effective `timeouts`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveTimeouts {
    /// Connect timeout per endpoint.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub connect: Duration,
    /// Whole-call deadline; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::duration::go::option")]
    #[schemars(with = "Option<String>")]
    pub request: Option<Duration>,
    /// Per-attempt deadline; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "crate::duration::go::option")]
    #[schemars(with = "Option<String>")]
    pub per_try: Option<Duration>,
    /// Idle timeout for connections.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub idle: Duration,
}

/// Effective `retries`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveRetries {
    /// Most attempts, the first included.
    pub attempts: u32,
    /// Retried failure classes.
    pub conditions: Vec<RetryCondition>,
    /// Retried HTTP statuses beyond the classes.
    pub http_status_codes: Vec<u16>,
    /// Retried gRPC codes.
    pub grpc_codes: Vec<GrpcCode>,
    /// Backoff before the first retry.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub backoff_base: Duration,
    /// Longest backoff.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub backoff_max: Duration,
    /// Randomised fraction of each backoff.
    pub jitter: f64,
    /// Retries allowed per request.
    pub budget_ratio: f64,
    /// Retries per second always allowed.
    pub budget_min_per_second: u32,
    /// How long a request counts toward the budget.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub budget_window: Duration,
    /// Methods retryable after the request may have reached the application.
    pub retryable_methods: Vec<String>,
    /// Whether an `Idempotency-Key` header makes any request retryable.
    pub honor_idempotency_key: bool,
    /// Incoming `breakwater-retry-depth` at or above which this sidecar does not retry.
    pub max_retry_depth: u32,
    /// Largest body buffered for replay.
    pub max_replay_body_bytes: u32,
}

impl EffectiveRetries {
    /// Whether `method` may be retried after the request may have reached the application.
    pub fn is_retryable_method(&self, method: &str) -> bool {
        self.retryable_methods.iter().any(|m| m == method)
    }
}

/// Effective `circuitBreaker`.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveCircuitBreaker {
    /// Consecutive-failure trip rule, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Failure-rate trip rule, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<EffectiveFailureRate>,
    /// Open time after the first trip.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub open_duration: Duration,
    /// Longest open time after repeated trips.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub max_open_duration: Duration,
    /// Probes let through while half-open.
    pub half_open_probes: u32,
    /// Per endpoint or per Service.
    pub scope: BreakerScope,
    /// Outcomes that count as failures.
    pub fail_on: Vec<FailureCondition>,
}

/// Effective failure-rate trip rule.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveFailureRate {
    /// Failure fraction that trips.
    pub threshold: f64,
    /// Sliding window.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub window: Duration,
    /// Calls needed in the window before the rule can trip.
    pub minimum_requests: u32,
}

/// Effective bulkheads.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveBulkhead {
    /// Caller-side limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound: Option<EffectiveBulkheadLimits>,
    /// Target-side limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<EffectiveBulkheadLimits>,
}

/// Effective limits of one bulkhead.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveBulkheadLimits {
    /// Most calls in flight.
    pub max_concurrent_requests: u32,
    /// Most calls waiting.
    pub max_queued: u32,
    /// Longest wait in the queue.
    #[serde(with = "crate::duration::go")]
    #[schemars(with = "String")]
    pub max_queue_wait: Duration,
    /// Most connections; absent for no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

impl EffectivePolicy {
    /// Validates `spec` and fills in every default. Returns every problem when it is invalid.
    pub fn resolve(spec: &CommunicationPolicySpec) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        crate::validate::validate_spec(spec, "spec", &mut errors);
        errors.into_result()?;
        // From here on every duration parses: `validate_spec` checked each one.
        let d = |d: &Option<crate::Duration>, default: Duration| {
            d.as_ref().and_then(|d| d.parse().ok()).unwrap_or(default)
        };
        let opt = |d: &Option<crate::Duration>| d.as_ref().and_then(|d| d.parse().ok());

        let t = spec.timeouts.clone().unwrap_or_default();
        let timeouts = EffectiveTimeouts {
            connect: d(&t.connect, DEFAULT_CONNECT_TIMEOUT),
            request: opt(&t.request),
            per_try: opt(&t.per_try),
            idle: d(&t.idle, DEFAULT_IDLE_TIMEOUT),
        };

        let retries = spec.retries.as_ref().map(|r| {
            let backoff = r.backoff.clone().unwrap_or_default();
            let budget = r.budget.clone().unwrap_or_default();
            let (conditions, http_status_codes, grpc_codes) = match &r.retry_on {
                None => (DEFAULT_RETRY_CONDITIONS.to_vec(), vec![], vec![]),
                Some(on) => (
                    on.conditions.clone().unwrap_or_default(),
                    on.http_status_codes.clone().unwrap_or_default(),
                    on.grpc_codes.clone().unwrap_or_default(),
                ),
            };
            EffectiveRetries {
                attempts: r.attempts.unwrap_or(DEFAULT_ATTEMPTS),
                conditions,
                http_status_codes,
                grpc_codes,
                backoff_base: d(&backoff.base, DEFAULT_BACKOFF_BASE),
                backoff_max: d(&backoff.max, DEFAULT_BACKOFF_MAX),
                jitter: backoff.jitter.unwrap_or(1.0),
                budget_ratio: budget.ratio.unwrap_or(DEFAULT_BUDGET_RATIO),
                budget_min_per_second: budget.min_per_second.unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND),
                budget_window: d(&budget.window, DEFAULT_BUDGET_WINDOW),
                retryable_methods: r
                    .retryable_methods
                    .clone()
                    .unwrap_or_else(|| IDEMPOTENT_METHODS.iter().map(|m| (*m).to_owned()).collect()),
                honor_idempotency_key: r.honor_idempotency_key.unwrap_or(true),
                max_retry_depth: r.max_retry_depth.unwrap_or(1),
                max_replay_body_bytes: r.max_replay_body_bytes.unwrap_or(DEFAULT_MAX_REPLAY_BODY_BYTES),
            }
        });

        let circuit_breaker = spec.circuit_breaker.as_ref().map(|b| {
            let failure_rate = b.failure_rate.as_ref().map(|f| EffectiveFailureRate {
                threshold: f.threshold.unwrap_or(DEFAULT_FAILURE_RATE_THRESHOLD),
                window: d(&f.window, DEFAULT_FAILURE_RATE_WINDOW),
                minimum_requests: f.minimum_requests.unwrap_or(DEFAULT_FAILURE_RATE_MINIMUM_REQUESTS),
            });
            let consecutive_failures = match (b.consecutive_failures, &failure_rate) {
                (None, None) => Some(DEFAULT_CONSECUTIVE_FAILURES),
                (n, _) => n,
            };
            EffectiveCircuitBreaker {
                consecutive_failures,
                failure_rate,
                open_duration: d(&b.open_duration, DEFAULT_OPEN_DURATION),
                max_open_duration: d(&b.max_open_duration, DEFAULT_MAX_OPEN_DURATION)
                    .max(d(&b.open_duration, DEFAULT_OPEN_DURATION)),
                half_open_probes: b.half_open_probes.unwrap_or(1),
                scope: b.scope,
                fail_on: b.fail_on.clone().unwrap_or_else(|| DEFAULT_FAIL_ON.to_vec()),
            }
        });

        let limits = |l: &crate::BulkheadLimits| EffectiveBulkheadLimits {
            max_concurrent_requests: l.max_concurrent_requests,
            max_queued: l.max_queued.unwrap_or(0),
            max_queue_wait: d(&l.max_queue_wait, DEFAULT_MAX_QUEUE_WAIT),
            max_connections: l.max_connections,
        };
        let bulkhead = spec
            .bulkhead
            .as_ref()
            .map(|b| EffectiveBulkhead {
                outbound: b.outbound.as_ref().map(limits),
                inbound: b.inbound.as_ref().map(limits),
            })
            .unwrap_or_default();

        let faults = spec.faults.as_ref().filter(|f| f.enabled).map(|f| EffectiveFaults {
            headers: f.match_.as_ref().map(|m| m.headers.clone()).unwrap_or_default(),
            delay: f.delay.as_ref().map(|delay| EffectiveFaultDelay {
                fixed_delay: d(&Some(delay.fixed_delay.clone()), Duration::ZERO),
                percentage: delay.percentage.unwrap_or(100.0),
            }),
            abort: f.abort.as_ref().map(|a| EffectiveFaultAbort {
                http_status: a.http_status,
                grpc_status: a.grpc_status,
                reset: a.reset.unwrap_or(false),
                percentage: a.percentage.unwrap_or(100.0),
            }),
        });

        Ok(Self { mode: spec.mode, timeouts, retries, circuit_breaker, bulkhead, faults })
    }
}
