//! Answers that Breakwater itself produces, and why.
//!
//! Every such response carries a `breakwater-error` header naming the cause, so a caller (and
//! the engineer reading its logs) can tell "the upstream said 503" from "Breakwater refused to
//! call the upstream". A gRPC caller gets the matching `grpc-status` in a trailers-only
//! response, because gRPC clients ignore HTTP statuses.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use super::body::ProxyBody;

/// The header that names why Breakwater answered.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("breakwater-error");
/// gRPC's status, in headers (trailers-only responses) or trailers.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Why Breakwater answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No Service matches the request's destination.
    NoRoute,
    /// No connection could be made to any endpoint.
    ConnectFailed,
    /// A deadline fired before the response headers arrived.
    Timeout,
    /// The upstream answered something that is not valid HTTP.
    UpstreamProtocol,
    /// The upstream closed or reset the connection (or stream) before answering.
    UpstreamReset,
    /// The circuit breaker is open: the call was not attempted.
    CircuitOpen,
    /// The bulkhead is full (and its queue too, or the queue wait expired).
    BulkheadFull,
    /// The sidecar is shutting down.
    Draining,
    /// The Service exists but none of its endpoints is ready (a cluster: every pod is starting,
    /// failing its readiness probe or terminating).
    NoHealthyEndpoints,
    /// An `HTTPRoute` rule took the request but has no backend to send it to (none listed,
    /// every weight 0, or the one chosen does not exist): 500, as the Gateway API asks.
    NoBackend,
    /// The policy's `spec.faults` aborted the call on purpose; the status is the fault's.
    FaultInjected,
    /// The request itself is malformed (RFC 9112's Host rules, a broken body): the caller's
    /// fault, never retried, never counted against the upstream.
    BadRequest,
}

impl Refusal {
    /// The `breakwater-error` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no-route",
            Self::ConnectFailed => "connect-failed",
            Self::Timeout => "timeout",
            Self::UpstreamProtocol => "upstream-protocol",
            Self::UpstreamReset => "upstream-reset",
            Self::CircuitOpen => "circuit-open",
            Self::BulkheadFull => "bulkhead-full",
            Self::Draining => "draining",
            Self::NoHealthyEndpoints => "no-healthy-endpoints",
            Self::BadRequest => "bad-request",
            Self::NoBackend => "no-backend",
            Self::FaultInjected => "fault-injected",
        }
    }

    /// The HTTP status that fits.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::NoBackend | Self::FaultInjected => StatusCode::INTERNAL_SERVER_ERROR,
            Self::ConnectFailed | Self::UpstreamProtocol | Self::UpstreamReset => StatusCode::BAD_GATEWAY,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::CircuitOpen | Self::BulkheadFull | Self::Draining | Self::NoHealthyEndpoints => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The gRPC status that fits: DEADLINE_EXCEEDED for timeouts, UNIMPLEMENTED for no route,
    /// INTERNAL for a malformed request (gRPC's mapping of HTTP 400) and a route without a backend, UNAVAILABLE (safe to
    /// retry) for the rest.
    pub fn grpc_status(self) -> u8 {
        match self {
            Self::Timeout => 4,
            Self::NoRoute => 12,
            Self::BadRequest | Self::NoBackend | Self::FaultInjected => 13,
            _ => 14,
        }
    }

    /// The answer for a request; `grpc` selects the trailers-only gRPC form.
    pub fn response(self, grpc: bool, detail: &str) -> Response<ProxyBody> {
        // The extension marks the answer as this sidecar's own (for `breakwater_refusals_total`);
        // a `breakwater-error` header from an upstream's sidecar is not one.
        let mut builder = Response::builder().header(ERROR_HEADER, self.as_str()).extension(self);
        let body = if grpc {
            // Trailers-only: status 200, grpc-status in the headers, END_STREAM on the HEADERS frame.
            builder = builder
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "application/grpc")
                .header(GRPC_STATUS, HeaderValue::from(u16::from(self.grpc_status())))
                .header("grpc-message", grpc_message(self, detail));
            Bytes::new()
        } else {
            builder = builder.status(self.status()).header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
            Bytes::from(format!("breakwater: {}: {detail}\n", self.as_str()))
        };
        builder
            .body(Full::new(body).map_err(|never| match never {}).boxed_unsync())
            .expect("a response built from constants is valid")
    }
}

/// Why Breakwater answered `resp` itself, or `None` when the upstream answered it.
pub fn refused<B>(resp: &Response<B>) -> Option<&'static str> {
    resp.extensions().get::<Refusal>().map(|r| r.as_str())
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec); keep it to safe characters.
fn grpc_message(r: Refusal, detail: &str) -> HeaderValue {
    let text: String = format!("breakwater: {}: {detail}", r.as_str())
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect::<String>()
        .replace('%', "%25");
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("breakwater"))
}

/// Whether a request is gRPC (its content type says so).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_sidecars_own_answers_count_as_its_refusals() {
        let own = Refusal::CircuitOpen.response(false, "open");
        assert_eq!(refused(&own), Some("circuit-open"));
        assert_eq!(refused(&Refusal::Timeout.response(true, "late")), Some("timeout"), "gRPC form too");
        // An upstream's sidecar refused: the header arrives, the refusal is not ours.
        let relayed = Response::builder()
            .status(503)
            .header(ERROR_HEADER, "bulkhead-full")
            .body(())
            .expect("a valid response");
        assert_eq!(refused(&relayed), None);
    }
}
