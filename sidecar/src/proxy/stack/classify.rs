//! What happened to an attempt, in the resilience mechanisms' terms, and what the caller is
//! told when there is no response: every error is classified here, by its type in the chain of
//! sources ([`cause`]), never by its text.

use std::time::Duration;

use breakwater_resilience::{
    BoxError,
    breaker::CircuitOpen,
    bulkhead::BulkheadFull,
    cause,
    outcome::{Conditions, Failure, Outcome},
    timeout::Elapsed,
};
use http::{HeaderValue, Response, header};
use http_body::Frame;

use super::request::{BUFFER_IDLE, HttpResponse};
use crate::{
    metrics::ServiceMetrics,
    proxy::{
        body::{self, Buffered, Chain, ProxyBody},
        error::{GRPC_STATUS, Refusal},
        upstream::AttemptError,
    },
};
use breakwater_resilience::Deadline;

/// Largest response body read to find gRPC trailers before deciding on a retry.
const GRPC_TRAILER_BUFFER: usize = 64 * 1024;

/// How a failed attempt looks to the retry policy and the breakers.
pub(super) fn classify_error(e: &BoxError) -> Outcome {
    if let Some(a) = cause::<AttemptError>(e.as_ref()) {
        return Outcome::failed(match a {
            AttemptError::Connect { .. } => Failure::Connect,
            AttemptError::Reset { source, .. } => Failure::Reset { unprocessed: refused_stream(source) },
            AttemptError::Protocol { .. } => Failure::Status(502),
            AttemptError::NoEndpoints => Failure::Connect,
            // The caller's fault: says nothing of the upstream, and sending it again would fail
            // the same way.
            AttemptError::ClientBody { .. } => return Outcome::SUCCESS,
            // Our own limit: not a failure of the target, and not retried.
            AttemptError::ConnectionLimit { .. } => return Outcome::SUCCESS,
        });
    }
    if cause::<Elapsed>(e.as_ref()).is_some_and(|e| e.deadline == Deadline::PerTry) {
        return Outcome::failed(Failure::Timeout);
    }
    // Refusals by our own layers (open breaker, full bulkhead) are not retried.
    Outcome::SUCCESS
}

/// Whether the upstream refused an HTTP/2 stream without processing it (REFUSED_STREAM), which
/// makes a retry safe for any method.
fn refused_stream(e: &hyper::Error) -> bool {
    cause::<h2::Error>(e).is_some_and(|h2| h2.reason() == Some(h2::Reason::REFUSED_STREAM))
}

/// Whether an attempt failed because the caller's body did.
pub(super) fn is_client_fault(e: &BoxError) -> bool {
    cause::<AttemptError>(e.as_ref()).is_some_and(|a| matches!(a, AttemptError::ClientBody { .. }))
}

/// What an attempt's result tells a breaker failing on `fail_on`: a failure or not, or nothing
/// at all (`None`) when the caller's own body failed.
pub(super) fn breaker_verdict(result: &Result<HttpResponse, BoxError>, fail_on: Conditions) -> Option<bool> {
    let outcome = match result {
        Ok(resp) => resp.outcome,
        Err(e) if is_client_fault(e) => return None,
        Err(e) => classify_error(e),
    };
    Some(outcome.failure.is_some_and(|f| f.counts_for_breaker(fail_on)))
}

/// Classifies a response: failure statuses (5xx and those the retry policy lists), gRPC status
/// (headers or trailers), `Retry-After`.
pub(super) fn classify_response(resp: &Response<ProxyBody>, retry_statuses: &[u16]) -> Outcome {
    let status = resp.status().as_u16();
    let grpc_status = resp
        .headers()
        .get(GRPC_STATUS)
        .or_else(|| resp.extensions().get::<GrpcTrailerStatus>().map(|t| &t.0))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u8>().ok());
    let failure = if status >= 500 || retry_statuses.contains(&status) {
        Some(Failure::Status(status))
    } else {
        grpc_status.filter(|c| *c != 0).map(Failure::Grpc)
    };
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Outcome { failure, retry_after }
}

/// The `grpc-status` found in a response's trailers, when they were read before answering.
#[derive(Clone)]
struct GrpcTrailerStatus(HeaderValue);

/// Reads a gRPC response body (up to a small bound, while it keeps coming) so that a status in
/// the trailers can decide a retry — unary gRPC puts the status there. A streaming response is
/// passed on as a stream.
pub(super) async fn read_grpc_trailers(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if resp.headers().contains_key(GRPC_STATUS) {
        return resp; // trailers-only response: the status is in the headers
    }
    let (mut parts, body) = resp.into_parts();
    match body::buffer(body, GRPC_TRAILER_BUFFER, BUFFER_IDLE).await {
        Buffered::Whole(frames) => {
            if let Some(status) =
                frames.iter().filter_map(Frame::trailers_ref).find_map(|t| t.get(GRPC_STATUS))
            {
                parts.extensions.insert(GrpcTrailerStatus(status.clone()));
            }
            Response::from_parts(parts, Chain::wrap(frames.into(), None))
        }
        Buffered::Partial(head, rest) => Response::from_parts(parts, Chain::wrap(head, Some(rest))),
    }
}

/// The `error.type` of a failed attempt.
pub(super) fn error_type(e: &BoxError) -> &'static str {
    if cause::<Elapsed>(e.as_ref()).is_some() {
        "timeout"
    } else if cause::<CircuitOpen>(e.as_ref()).is_some() {
        "circuit-open"
    } else if let Some(a) = cause::<AttemptError>(e.as_ref()) {
        match a {
            AttemptError::ClientBody { reason, .. } => reason,
            a => a.refusal().as_str(),
        }
    } else {
        "error"
    }
}

/// Breakwater's answer to a call that got no response: why, in the status, the
/// `breakwater-error` header (and `grpc-status`) and the body.
pub(super) fn refusal(e: &BoxError, grpc: bool, metrics: &ServiceMetrics) -> Response<ProxyBody> {
    let refusal = if cause::<Elapsed>(e.as_ref()).is_some() {
        Refusal::Timeout
    } else if cause::<CircuitOpen>(e.as_ref()).is_some() {
        Refusal::CircuitOpen
    } else if cause::<BulkheadFull>(e.as_ref()).is_some() {
        Refusal::BulkheadFull
    } else if let Some(a) = cause::<AttemptError>(e.as_ref()) {
        if let AttemptError::ClientBody { reason, .. } = a {
            metrics.client_error(reason);
        }
        a.refusal()
    } else {
        Refusal::UpstreamReset
    };
    tracing::debug!(service = metrics.service(), error = %e, refusal = %refusal, "call refused or failed");
    refusal.response(grpc, &e.to_string())
}
