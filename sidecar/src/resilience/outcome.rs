//! What happened to one attempt, in protocol-neutral terms, so retries and breakers decide
//! on the same facts. The protocol layer (HTTP, gRPC, TCP) classifies; this module only names.

use std::time::Duration;

use breakwater_crds::{FailureCondition, RetryCondition};

/// A failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made: nothing was sent, so it is safe to retry any request.
    Connect,
    /// The connection or stream was reset or refused before a response. `unprocessed` is true
    /// when the peer said it did not process the request (HTTP/2 REFUSED_STREAM).
    Reset {
        /// The peer did not process the request.
        unprocessed: bool,
    },
    /// The attempt hit its per-try deadline.
    Timeout,
    /// An HTTP response with this status (only failures: 5xx, or codes a policy lists).
    Status(u16),
    /// A gRPC status other than OK, from the headers or the trailers.
    Grpc(u8),
}

/// gRPC UNAVAILABLE.
pub const GRPC_UNAVAILABLE: u8 = 14;
/// gRPC DEADLINE_EXCEEDED.
pub const GRPC_DEADLINE_EXCEEDED: u8 = 4;

impl Failure {
    /// Whether the request may have reached the application (so only idempotent requests
    /// may be retried).
    pub fn may_have_been_processed(self) -> bool {
        !matches!(self, Self::Connect | Self::Reset { unprocessed: true })
    }

    /// The retry reason for metrics and trace events.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Connect => "connect-failure",
            Self::Reset { .. } => "reset",
            Self::Timeout => "timeout",
            Self::Status(s) if (502..=504).contains(&s) => "gateway-error",
            Self::Status(s) if s >= 500 => "5xx",
            Self::Status(_) => "status-code",
            Self::Grpc(_) => "grpc-code",
        }
    }

    /// The HTTP status a gRPC code corresponds to for breaker classification
    /// (grpc-gateway's mapping).
    fn grpc_as_http(code: u8) -> Option<u16> {
        match code {
            GRPC_UNAVAILABLE => Some(503),
            GRPC_DEADLINE_EXCEEDED => Some(504),
            2 | 13 | 15 => Some(500), // UNKNOWN, INTERNAL, DATA_LOSS
            _ => None,
        }
    }

    /// Whether a policy's `retryOn` matches it.
    pub fn matches_retry(self, conditions: &[RetryCondition], statuses: &[u16], grpc: &[u8]) -> bool {
        let has = |c| conditions.contains(&c);
        match self {
            Self::Connect => has(RetryCondition::ConnectFailure),
            Self::Reset { .. } => has(RetryCondition::Reset),
            Self::Timeout => has(RetryCondition::Timeout),
            Self::Status(s) => {
                statuses.contains(&s)
                    || (has(RetryCondition::ServerError) && (500..=599).contains(&s))
                    || (has(RetryCondition::GatewayError) && (502..=504).contains(&s))
            }
            Self::Grpc(code) => grpc.contains(&code),
        }
    }

    /// Whether a breaker configured with `fail_on` counts it.
    pub fn counts_for_breaker(self, fail_on: &[FailureCondition]) -> bool {
        let has = |c| fail_on.contains(&c);
        let status = |s: u16| {
            (has(FailureCondition::ServerError) && (500..=599).contains(&s))
                || (has(FailureCondition::GatewayError) && (502..=504).contains(&s))
        };
        match self {
            Self::Connect => has(FailureCondition::ConnectFailure),
            Self::Reset { .. } => has(FailureCondition::Reset),
            Self::Timeout => has(FailureCondition::Timeout),
            Self::Status(s) => status(s),
            Self::Grpc(code) => Self::grpc_as_http(code).is_some_and(status),
        }
    }
}

/// The classification of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The failure, if it failed.
    pub failure: Option<Failure>,
    /// How long the upstream asked us to wait before retrying (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl Outcome {
    /// A success.
    pub const SUCCESS: Self = Self { failure: None, retry_after: None };

    /// A failure.
    pub fn failed(f: Failure) -> Self {
        Self { failure: Some(f), retry_after: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_conditions_match_their_failures() {
        let gw = [RetryCondition::GatewayError];
        assert!(Failure::Status(503).matches_retry(&gw, &[], &[]));
        assert!(!Failure::Status(500).matches_retry(&gw, &[], &[]));
        assert!(Failure::Status(500).matches_retry(&[RetryCondition::ServerError], &[], &[]));
        assert!(Failure::Status(429).matches_retry(&[], &[429], &[]));
        assert!(Failure::Grpc(14).matches_retry(&[], &[], &[14]));
        assert!(!Failure::Connect.matches_retry(&gw, &[], &[]));
    }

    #[test]
    fn only_unprocessed_failures_are_safe_for_any_method() {
        assert!(!Failure::Connect.may_have_been_processed());
        assert!(!Failure::Reset { unprocessed: true }.may_have_been_processed());
        assert!(Failure::Reset { unprocessed: false }.may_have_been_processed());
        assert!(Failure::Status(503).may_have_been_processed());
    }

    #[test]
    fn grpc_codes_count_for_breakers_like_their_http_status() {
        let gw = [FailureCondition::GatewayError];
        assert!(Failure::Grpc(GRPC_UNAVAILABLE).counts_for_breaker(&gw));
        assert!(!Failure::Grpc(5).counts_for_breaker(&gw), "NOT_FOUND is not a server failure");
        assert!(!Failure::Grpc(13).counts_for_breaker(&gw));
        assert!(Failure::Grpc(13).counts_for_breaker(&[FailureCondition::ServerError]));
    }
}
