//! Faults injected on purpose (`spec.faults`), before the call enters the stack: an aborted
//! call never reaches the target, its breakers, its bulkhead or its retries (Envoy's fault
//! filter sits before the router the same way), and a delay is waited under the call's own
//! deadline.
//!
//! In DryRun nothing is injected: each fault that would have hit the call is counted in
//! `breakwater_dryrun_decisions_total` (`fault-delay`, `fault-abort`), never as a failure.

use http::{HeaderValue, Response, StatusCode};
use rand::Rng as _;
use tokio::time::Instant;

use super::super::{
    body::ProxyBody,
    error::{GRPC_STATUS, Refusal},
};
use crate::{
    config::policy::{Abort, Faults},
    metrics::ServiceMetrics,
    telemetry::spans,
};

/// Marks a response that must not be sent: the connection (HTTP/1) or the stream (HTTP/2) is
/// reset instead. `http::serve` turns it into a service error, which is what makes hyper do
/// that.
#[derive(Debug, Clone, Copy)]
pub struct ResetStream;

impl std::fmt::Display for ResetStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a reset injected by the policy's faults")
    }
}

impl std::error::Error for ResetStream {}

/// Whether a share (0 to 1) of calls is hit this time.
fn hit(share: f64) -> bool {
    share >= 1.0 || (share > 0.0 && rand::rng().random::<f64>() < share)
}

/// Injects `faults` into a call that may be hit: waits the delay, then returns the abort's
/// answer, if either is drawn. `None`: send the call (after the delay, if any). A delay that
/// outlasts `deadline` ends in Breakwater's 504 at the deadline, as the deadline would have
/// cut the call anyway.
pub(super) async fn inject(
    faults: &Faults,
    dry_run: bool,
    metrics: &ServiceMetrics,
    grpc: bool,
    deadline: Option<Instant>,
) -> Option<Response<ProxyBody>> {
    let service = metrics.service();
    let delayed = faults.delay.filter(|(_, share)| hit(*share));
    let aborted = faults.abort.filter(|(_, share)| hit(*share));
    if dry_run {
        if delayed.is_some() {
            metrics.dryrun("fault-delay");
            tracing::debug!(service, decision = "fault-delay", "dry run: the call would have been delayed");
        }
        if aborted.is_some() {
            metrics.dryrun("fault-abort");
            tracing::debug!(service, decision = "fault-abort", "dry run: the call would have been aborted");
        }
        return None;
    }
    let abort = aborted.map(|(abort, _)| abort);
    let name = match (delayed.is_some(), abort) {
        (false, None) => return None,
        (true, None) => "delay",
        (false, Some(Abort::Reset)) => "reset",
        (false, Some(_)) => "abort",
        (true, Some(Abort::Reset)) => "delay,reset",
        (true, Some(_)) => "delay,abort",
    };
    spans::record_fault(name);
    if let Some((delay, _)) = delayed {
        metrics.fault("delay");
        tracing::debug!(service, delay_ms = delay.as_millis() as u64, "injecting a delay");
        let until = Instant::now() + delay;
        match deadline {
            Some(deadline) if deadline < until => {
                tokio::time::sleep_until(deadline).await;
                metrics.timeout("request");
                return Some(
                    Refusal::Timeout
                        .response(grpc, "the request timeout fired during a delay injected by faults"),
                );
            }
            _ => tokio::time::sleep_until(until).await,
        }
    }
    let abort = abort?;
    metrics.fault("abort");
    tracing::debug!(service, abort = ?abort, "injecting an abort");
    Some(abort_response(abort, grpc))
}

/// Breakwater's answer for an injected abort (`breakwater-error: fault-injected`).
fn abort_response(abort: Abort, grpc: bool) -> Response<ProxyBody> {
    let mut resp = Refusal::FaultInjected.response(grpc, "an abort injected by the policy's faults");
    let grpc_status = match abort {
        Abort::Http(status) if !grpc => {
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            None
        }
        Abort::Http(status) => Some(grpc_code_for(status)),
        Abort::Grpc(code) => grpc.then_some(code),
        Abort::Reset => {
            resp.extensions_mut().insert(ResetStream);
            None
        }
    };
    if let Some(code) = grpc_status {
        resp.headers_mut().insert(GRPC_STATUS, HeaderValue::from(u16::from(code)));
    }
    resp
}

/// gRPC's mapping of an HTTP status to a gRPC status ("HTTP to gRPC Status Code Mapping" in
/// the gRPC repository's docs), which a gRPC client applies to a non-200 answer.
fn grpc_code_for(status: u16) -> u8 {
    match status {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_abort_answers_in_the_callers_protocol() {
        let http = abort_response(Abort::Http(503), false);
        assert_eq!(http.status(), 503);
        assert_eq!(super::super::super::error::refused(&http), Some("fault-injected"));
        let grpc = abort_response(Abort::Http(503), true);
        assert_eq!((grpc.status(), grpc.headers()[&GRPC_STATUS].to_str().ok()), (StatusCode::OK, Some("14")));
        let code = abort_response(Abort::Grpc(8), true);
        assert_eq!(code.headers()[&GRPC_STATUS], "8");
        assert_eq!(abort_response(Abort::Grpc(8), false).status(), 500, "plain HTTP gets 500");
        assert!(abort_response(Abort::Reset, false).extensions().get::<ResetStream>().is_some());
    }

    #[test]
    fn shares_of_none_and_all_are_exact() {
        assert!((0..1000).all(|_| hit(1.0)) && !(0..1000).any(|_| hit(0.0)));
    }
}
