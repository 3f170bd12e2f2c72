//! `spec.circuitBreaker`: stop calling what is failing, and fail fast instead.
//!
//! States, in the classic words: `Closed` admits calls, `Open` rejects them without trying,
//! `HalfOpen` lets a few probes through to find out whether the target recovered.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// A circuit breaker. It opens when either trip rule fires: `consecutiveFailures` in a row, or
/// a failure rate of at least `failureRate.threshold` over `failureRate.window` once
/// `failureRate.minimumRequests` calls were seen. When neither rule is set,
/// `consecutiveFailures: 5` applies.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.openDuration) || !has(self.maxOpenDuration) || duration(self.openDuration) <= duration(self.maxOpenDuration)")
    .message("openDuration must not be longer than maxOpenDuration").field_path(".openDuration"))]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Open after this many failures in a row, between 1 and 1000. Default: `5` when
    /// `failureRate` is not set either; otherwise omit to trip on the failure rate only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: Option<u32>,

    /// Open when the failure rate over a sliding window reaches a threshold. Omit to trip on
    /// consecutive failures only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<FailureRate>,

    /// How long the breaker stays open after its first trip. Each trip that follows a failed
    /// half-open probe doubles it (with ±10% jitter), up to `maxOpenDuration`; a successful
    /// probe resets it. Default: `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_duration: Option<Duration>,

    /// Longest time the breaker stays open after repeated trips. Default: `2m` (or
    /// `openDuration`, when that is longer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_open_duration: Option<Duration>,

    /// Calls let through while half-open, between 1 and 100. The breaker closes once they all
    /// succeed, and opens again on the first failure. Default: `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub half_open_probes: Option<u32>,

    /// `Endpoint`: one breaker per endpoint (pod); an open endpoint leaves the load-balancing set,
    /// and calls fail fast only when every endpoint is open. `Service`: one breaker for the whole
    /// Service. Default: `Endpoint`.
    #[serde(default)]
    pub scope: BreakerScope,

    /// Which outcomes count as failures: `5xx`, `gateway-error` (502, 503, 504), `timeout`,
    /// `connect-failure`, `reset`. Default: `[gateway-error, timeout, connect-failure, reset]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 5))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub fail_on: Option<Vec<FailureCondition>>,
}

/// The failure-rate trip rule.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.window) || (duration(self.window) >= duration('1s') && duration(self.window) <= duration('10m'))")
    .message("window must be between 1s and 10m").field_path(".window"))]
// The schema's `minimum: 0.01` alone lets an integer `0` through: kube-openapi compares integer
// values against the minimum truncated to an integer. The real API server test found it.
#[x_kube(validation = kube::core::Rule::new("!has(self.threshold) || self.threshold >= 0.01")
    .message("threshold must be between 0.01 and 1").field_path(".threshold"))]
#[serde(rename_all = "camelCase")]
pub struct FailureRate {
    /// Fraction of failed calls that opens the breaker, between 0.01 and 1. Default: `0.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 1.0))]
    pub threshold: Option<f64>,

    /// Length of the sliding window, between `1s` and `10m`. Default: `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,

    /// Calls that must be seen in the window before the rate can trip the breaker, between 1
    /// and 100000. Default: `20`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub minimum_requests: Option<u32>,
}

/// What a breaker guards.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BreakerScope {
    /// One breaker per endpoint.
    #[default]
    Endpoint,
    /// One breaker for the whole Service.
    Service,
}

/// An outcome that counts as a failure for the circuit breaker.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCondition {
    /// Any response status from 500 to 599.
    #[serde(rename = "5xx")]
    ServerError,
    /// Response status 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// The attempt timed out.
    #[serde(rename = "timeout")]
    Timeout,
    /// No connection could be made.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection or stream was reset before a response.
    #[serde(rename = "reset")]
    Reset,
}
