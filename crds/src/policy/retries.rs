//! `spec.retries`: when a failed call is tried again, how long to wait, and how many retries the
//! target may be sent in total.
//!
//! Retries are **safe by default**: a request that may have reached the application is retried
//! only when its method is idempotent (or listed in `retryableMethods`, or the request carries an
//! `Idempotency-Key`), and every retry is paid from a budget proportional to the request rate
//! (tower's `TpsBudget`, Linkerd's retry budget), so a failing dependency never sees a retry
//! storm. A max-attempts number alone cannot guarantee that: it multiplies load by `attempts`
//! exactly when the target is least able to take it.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// Default number of attempts, the first included.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// Largest allowed number of attempts.
pub const MAX_ATTEMPTS: u32 = 10;
/// Default cap on a request body buffered for replay.
pub const DEFAULT_MAX_REPLAY_BODY_BYTES: u32 = 64 * 1024;
/// Largest allowed replay buffer.
pub const MAX_REPLAY_BODY_BYTES: u32 = 16 * 1024 * 1024;
/// The methods retried by default after a request may have reached the application.
pub const IDEMPOTENT_METHODS: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

/// Retry behaviour for calls to the target.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Retries {
    /// Most attempts per call, the first one included (`1` disables retries). Between 1 and
    /// 10. Default: `3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub attempts: Option<u32>,

    /// Which outcomes are retried. Default: `conditions: [connect-failure, reset,
    /// gateway-error]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<RetryOn>,

    /// Wait between attempts: exponential, fully jittered. Default: base `25ms`, max `250ms`,
    /// jitter `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,

    /// Cap on retries relative to requests, per sidecar and target. Default: ratio `0.2`,
    /// minPerSecond `10`, window `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RetryBudget>,

    /// HTTP methods (upper case) that may be retried after the request may have reached the
    /// application. A connect failure (nothing was sent) is retried for every method, and so is
    /// a gRPC call ending with a code `retryOn.grpcCodes` lists. Default:
    /// the idempotent methods `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE`, `TRACE`. Listing methods
    /// replaces the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 32), regex(pattern = r"^[A-Z][A-Z-]*$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub retryable_methods: Option<Vec<String>>,

    /// When true, a request with an `Idempotency-Key` header is retryable whatever its method
    /// (the application promised to deduplicate it). Default: `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub honor_idempotency_key: Option<bool>,

    /// Retry-storm damping: a request that arrives carrying a `breakwater-retry-depth` header
    /// (set by an upstream sidecar on its retries) at or above this value is not retried again
    /// by this sidecar, so only one layer of a call chain retries. Between 1 and 10. Default:
    /// `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10))]
    pub max_retry_depth: Option<u32>,

    /// Largest request body, in bytes, buffered so that it can be sent again. A request with a
    /// bigger body is not retried (and is counted). At most 16777216 (16 MiB). Default: `65536`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16777216))]
    pub max_replay_body_bytes: Option<u32>,
}

/// Which outcomes of an attempt are retried. An outcome is retried when it matches any entry.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetryOn {
    /// Classes of failure: `connect-failure` (no connection could be made; nothing was sent),
    /// `reset` (the connection or HTTP/2 stream was reset or refused), `5xx` (any 500–599
    /// response), `gateway-error` (502, 503 or 504), `timeout` (the attempt hit `perTry`).
    /// Omit for none (when `retryOn` itself is omitted, the default is `[connect-failure, reset,
    /// gateway-error]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 5))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub conditions: Option<Vec<RetryCondition>>,

    /// Further HTTP response status codes to retry, between 400 and 599 (e.g. `429`). Omit for
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), inner(range(min = 400, max = 599)))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub http_status_codes: Option<Vec<u16>>,

    /// gRPC status codes to retry, by canonical name (e.g. `UNAVAILABLE`,
    /// `RESOURCE_EXHAUSTED`), read from the response headers or trailers. As in gRPC's own retry
    /// policy, a listed code makes the call retryable by itself: `retryableMethods` (every gRPC
    /// call is a POST) does not apply to it. Omit for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub grpc_codes: Option<Vec<GrpcCode>>,
}

/// A class of failed attempt that can be retried.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCondition {
    /// No connection could be made (refused, unreachable, connect timeout); nothing was sent.
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    /// The connection or the HTTP/2 stream was reset or refused before a response.
    #[serde(rename = "reset")]
    Reset,
    /// Any response status from 500 to 599.
    #[serde(rename = "5xx")]
    ServerError,
    /// Response status 502, 503 or 504.
    #[serde(rename = "gateway-error")]
    GatewayError,
    /// The attempt hit its `perTry` timeout.
    #[serde(rename = "timeout")]
    Timeout,
}

/// gRPC status codes (all but `OK`), by canonical name.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GrpcCode {
    /// `CANCELLED` (1).
    Cancelled,
    /// `UNKNOWN` (2).
    Unknown,
    /// `INVALID_ARGUMENT` (3).
    InvalidArgument,
    /// `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded,
    /// `NOT_FOUND` (5).
    NotFound,
    /// `ALREADY_EXISTS` (6).
    AlreadyExists,
    /// `PERMISSION_DENIED` (7).
    PermissionDenied,
    /// `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted,
    /// `FAILED_PRECONDITION` (9).
    FailedPrecondition,
    /// `ABORTED` (10).
    Aborted,
    /// `OUT_OF_RANGE` (11).
    OutOfRange,
    /// `UNIMPLEMENTED` (12).
    Unimplemented,
    /// `INTERNAL` (13).
    Internal,
    /// `UNAVAILABLE` (14).
    Unavailable,
    /// `DATA_LOSS` (15).
    DataLoss,
    /// `UNAUTHENTICATED` (16).
    Unauthenticated,
}

impl GrpcCode {
    /// The numeric code carried in `grpc-status`.
    pub fn code(self) -> u8 {
        match self {
            Self::Cancelled => 1,
            Self::Unknown => 2,
            Self::InvalidArgument => 3,
            Self::DeadlineExceeded => 4,
            Self::NotFound => 5,
            Self::AlreadyExists => 6,
            Self::PermissionDenied => 7,
            Self::ResourceExhausted => 8,
            Self::FailedPrecondition => 9,
            Self::Aborted => 10,
            Self::OutOfRange => 11,
            Self::Unimplemented => 12,
            Self::Internal => 13,
            Self::Unavailable => 14,
            Self::DataLoss => 15,
            Self::Unauthenticated => 16,
        }
    }
}

/// Exponential backoff between attempts: before retry *n* the sidecar waits a random time up
/// to `min(max, base × 2ⁿ⁻¹)` ("full jitter"), or the response's `Retry-After` when that is
/// longer, capped at `max`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.base) || !has(self.max) || duration(self.base) <= duration(self.max)")
    .message("base must not be longer than max").field_path(".base"))]
#[serde(rename_all = "camelCase")]
pub struct Backoff {
    /// Backoff before the first retry (before jitter). Default: `25ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Duration>,

    /// Longest backoff between two attempts, also the cap on a honoured `Retry-After`.
    /// Default: `250ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Duration>,

    /// Fraction of each backoff that is randomised, between 0 and 1: `1` waits a uniformly
    /// random time in [0, backoff] (full jitter, best against synchronised retries), `0` waits
    /// exactly the backoff. Default: `1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub jitter: Option<f64>,
}

/// A retry budget: over the last `window`, retries may add at most `ratio` × requests, plus
/// `minPerSecond` retries per second so that low-traffic callers can still retry. When the
/// budget is spent, the failed response is returned with `breakwater-error:
/// retry-budget-exhausted`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.window) || (duration(self.window) >= duration('1s') && duration(self.window) <= duration('60s'))")
    .message("window must be between 1s and 60s").field_path(".window"))]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed per request, between 0 and 1 (`0.2`: retries add at most 20% load).
    /// Default: `0.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub ratio: Option<f64>,

    /// Retries per second always allowed, whatever the ratio, between 0 and 10000. Default: `10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_per_second: Option<u32>,

    /// How long a request counts toward the budget, between `1s` and `60s`. Default: `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Duration>,
}
