//! `spec.timeouts`: deadlines for connecting, for each attempt, and for the whole call.
//!
//! `request` covers the whole call including every retry and backoff (Envoy's route timeout), so
//! a caller's worst-case latency is one number; `perTry` bounds each attempt within it.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// Deadlines for calls to the target. Every value is a duration such as `250ms`, `2s` or
/// `1m30s` (units `ms`, `s`, `m`, `h`; at most `24h`).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.perTry) || !has(self.request) || duration(self.perTry) <= duration(self.request)")
    .message("perTry must not be longer than request").field_path(".perTry"))]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.connect) || !has(self.request) || duration(self.connect) <= duration(self.request)")
    .message("connect must not be longer than request").field_path(".connect"))]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Longest time to establish a TCP connection to one endpoint. A connection that is not up
    /// in time counts as a connect failure (retryable, and a failure for the circuit breaker).
    /// Default: `1s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,

    /// Longest time for the whole call, from the request arriving at the sidecar to the end of
    /// the response headers, including every retry and backoff. When it fires the caller gets
    /// 504 with `breakwater-error: timeout` (gRPC: DEADLINE_EXCEEDED). Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,

    /// Longest time for one attempt, up to its response headers. An attempt cut by `perTry` may be
    /// retried; the last attempt always gets whatever remains of `request`. Must not be longer
    /// than `request`. Default: no per-attempt limit (only `request` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try: Option<Duration>,

    /// Longest time a connection (from the caller, or pooled to an endpoint) may sit with no
    /// request in flight before the sidecar closes it. Default: `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
}
