//! `Upstream`: the last step, one attempt sent to the endpoint picked for it — the trace
//! context injected, the response's gRPC trailers read when a retry or a breaker needs the
//! status in them, the response classified. A failure while the caller's own body failed is
//! the caller's ([`AttemptError::ClientBody`]), whatever the upstream did about it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use breakwater_resilience::BoxError;
use tower::Service;

use super::{
    Shared,
    classify::{classify_response, read_grpc_trailers},
    request::{HttpRequest, HttpResponse},
};
use crate::{
    proxy::upstream::{AttemptError, forward_once},
    telemetry::spans,
};

/// Sends attempts to their endpoint.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
}

impl Upstream {
    /// For `shared`'s target.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl Service<HttpRequest> for Upstream {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(send(shared, req))
    }
}

async fn send(shared: Arc<Shared>, mut req: HttpRequest) -> Result<HttpResponse, BoxError> {
    let Some((_, endpoint)) = req.endpoint.take() else {
        return Err(AttemptError::NoEndpoints.into());
    };
    let inspect_trailers = req.grpc && shared.trailers_matter;
    let fault = req.fault.clone();
    let Some(mut http) = req.into_http() else {
        // A streamed body was already sent once: nothing to send.
        return Err(AttemptError::NoEndpoints.into());
    };
    let span = tracing::Span::current();
    if !span.is_disabled() {
        // The upstream's spans nest under this attempt.
        spans::inject(&span, http.headers_mut());
    }
    let resp = match forward_once(&endpoint, http).await {
        Ok(resp) => resp,
        Err(e) => {
            return Err(match fault.reason() {
                // The caller's body failed while it was sent: whatever the upstream then did (a
                // reset, an error status) says nothing about the upstream.
                Some(reason) => {
                    tracing::debug!(
                        service = shared.metrics.service(),
                        reason,
                        "the caller's request body failed"
                    );
                    AttemptError::ClientBody { addr: endpoint.addr, reason }.into()
                }
                None => e.into(),
            });
        }
    };
    let resp = if inspect_trailers { read_grpc_trailers(resp).await } else { resp };
    let outcome = classify_response(&resp, &shared.retry_statuses);
    Ok(HttpResponse { inner: resp, outcome })
}
