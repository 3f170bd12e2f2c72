//! What happened to one attempt, in protocol-neutral terms, so retries and breakers decide
//! on the same facts. The protocol layer (HTTP, gRPC, TCP) classifies; this module only names.

use std::time::Duration;

/// A class of failure a policy names in its `retryOn` or a breaker's `failOn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No connection could be made.
    ConnectFailure,
    /// The connection or stream was reset before a response.
    Reset,
    /// A per-try deadline passed.
    Timeout,
    /// Any 5xx.
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
}

/// A set of [`Condition`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions(u8);

impl Conditions {
    /// Whether `c` is in the set.
    pub fn contains(self, c: Condition) -> bool {
        self.0 & (1 << c as u8) != 0
    }
}

impl FromIterator<Condition> for Conditions {
    fn from_iter<I: IntoIterator<Item = Condition>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |set, c| set | (1 << c as u8)))
    }
}

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

    /// Whether a status falls under `conditions`' status classes.
    fn status_in(conditions: Conditions, s: u16) -> bool {
        (conditions.contains(Condition::ServerError) && (500..=599).contains(&s))
            || (conditions.contains(Condition::GatewayError) && (502..=504).contains(&s))
    }

    /// Whether a policy's `retryOn` (`conditions`, and the HTTP statuses and gRPC codes it
    /// lists) matches it.
    pub fn matches_retry(self, conditions: Conditions, statuses: &[u16], grpc: &[u8]) -> bool {
        match self {
            Self::Connect => conditions.contains(Condition::ConnectFailure),
            Self::Reset { .. } => conditions.contains(Condition::Reset),
            Self::Timeout => conditions.contains(Condition::Timeout),
            Self::Status(s) => statuses.contains(&s) || Self::status_in(conditions, s),
            Self::Grpc(code) => grpc.contains(&code),
        }
    }

    /// Whether a breaker that fails on `fail_on` counts it.
    pub fn counts_for_breaker(self, fail_on: Conditions) -> bool {
        match self {
            Self::Connect => fail_on.contains(Condition::ConnectFailure),
            Self::Reset { .. } => fail_on.contains(Condition::Reset),
            Self::Timeout => fail_on.contains(Condition::Timeout),
            Self::Status(s) => Self::status_in(fail_on, s),
            Self::Grpc(code) => Self::grpc_as_http(code).is_some_and(|s| Self::status_in(fail_on, s)),
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
        let gw = Conditions::from_iter([Condition::GatewayError]);
        let none = Conditions::default();
        assert!(Failure::Status(503).matches_retry(gw, &[], &[]));
        assert!(!Failure::Status(500).matches_retry(gw, &[], &[]));
        assert!(Failure::Status(500).matches_retry(
            Conditions::from_iter([Condition::ServerError]),
            &[],
            &[]
        ));
        assert!(Failure::Status(429).matches_retry(none, &[429], &[]));
        assert!(Failure::Grpc(14).matches_retry(none, &[], &[14]));
        assert!(!Failure::Connect.matches_retry(gw, &[], &[]));
        assert!(Failure::Connect.matches_retry(Conditions::from_iter([Condition::ConnectFailure]), &[], &[]));
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
        let gw = Conditions::from_iter([Condition::GatewayError]);
        assert!(Failure::Grpc(GRPC_UNAVAILABLE).counts_for_breaker(gw));
        assert!(!Failure::Grpc(5).counts_for_breaker(gw), "NOT_FOUND is not a server failure");
        assert!(!Failure::Grpc(13).counts_for_breaker(gw));
        assert!(Failure::Grpc(13).counts_for_breaker(Conditions::from_iter([Condition::ServerError])));
    }
}
