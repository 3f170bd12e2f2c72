//! `spec.faults`: make calls slow or fail on purpose, in the caller's sidecar before the call
//! leaves, so a team can see how its callers behave when this dependency is slow or failing
//! before production shows them (Istio's `fault`, Envoy's fault filter).
//!
//! Faults are **off unless asked for twice**: the block needs `enabled: true`, and while it is
//! on the policy reports a `FaultsInjected` condition and a Warning Event. An injected abort is
//! Breakwater's own answer: it never reaches the target, its breaker or its retries.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::GrpcCode;
use crate::Duration;

/// Most headers a fault's `match` may list.
pub const MAX_FAULT_HEADERS: usize = 16;

/// Faults injected into calls to the target, by each caller's sidecar.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new("has(self.delay) || has(self.abort)")
    .message("faults must set delay, abort or both"))]
#[serde(rename_all = "camelCase")]
pub struct Faults {
    /// Must be `true` for any fault to be injected; `false` keeps the block written down but
    /// inactive. Required, so that faults are never on by accident.
    pub enabled: bool,

    /// Inject only into calls that carry every header listed here (a tester's tag), e.g.
    /// `x-breakwater-fault: checkout-test`. Omit to inject into any call.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<FaultMatch>,

    /// Hold calls for a fixed time before sending them. The wait counts against
    /// `timeouts.request`: a delay longer than what is left of it ends in 504 `timeout`. Omit
    /// for no delay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,

    /// Answer calls with a failure instead of sending them. Applied after `delay` when both
    /// hit the same call. Omit for no abort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// Which calls are eligible for faults.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FaultMatch {
    /// Headers a call must all carry, with exactly these values (names are case-insensitive).
    /// At most 16.
    #[schemars(length(min = 1, max = 16))]
    pub headers: Vec<FaultHeader>,
}

/// One header a call must carry.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FaultHeader {
    /// The header's name, e.g. `x-breakwater-fault`.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"))]
    pub name: String,

    /// The value it must have, compared exactly: visible ASCII characters, spaces and tabs.
    #[schemars(length(min = 1, max = 4096), regex(pattern = r"^[\t -~]+$"))]
    pub value: String,
}

/// A delay before the call is sent.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long each delayed call is held, e.g. `2s` (at most `24h`).
    pub fixed_delay: Duration,

    /// The share of eligible calls delayed, in percent, between 0 and 100 (fractions allowed,
    /// e.g. `0.5`). Default: `100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: Option<f64>,
}

/// A failure answered instead of the call: exactly one of `httpStatus`, `grpcStatus` or
/// `reset`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new(
    "(has(self.httpStatus) ? 1 : 0) + (has(self.grpcStatus) ? 1 : 0) + (has(self.reset) ? 1 : 0) == 1")
    .message("an abort sets exactly one of httpStatus, grpcStatus or reset"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.reset) || self.reset")
    .message("reset must be true when set (omit it for no reset)").field_path(".reset"))]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// Answer HTTP calls with this status, between 400 and 599, e.g. `503`. A gRPC call gets
    /// the gRPC status that HTTP status maps to (gRPC's HTTP-to-gRPC table: 503 is
    /// `UNAVAILABLE`). Omit when `grpcStatus` or `reset` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub http_status: Option<u16>,

    /// Answer gRPC calls with this status, by canonical name, e.g. `UNAVAILABLE`. A plain HTTP
    /// call gets 500. Omit when `httpStatus` or `reset` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_grpc_code")]
    pub grpc_status: Option<GrpcCode>,

    /// `true`: reset instead of answering. HTTP/1.1 closes the connection without a response;
    /// HTTP/2 and gRPC reset the stream (`RST_STREAM`, `INTERNAL_ERROR`). Omit when
    /// `httpStatus` or `grpcStatus` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<bool>,

    /// The share of eligible calls aborted, in percent, between 0 and 100. Default: `100`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: Option<f64>,
}

/// `Option<GrpcCode>`'s schema without the enum's own description. kube's structural rewrite
/// hoists an `Option`'s inner schema over the field's, so the enum's description would replace
/// this field's in `kubectl explain`.
fn optional_grpc_code(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = <GrpcCode as schemars::JsonSchema>::json_schema(generator);
    schema.remove("description");
    schema.insert("nullable".into(), true.into());
    schema
}
