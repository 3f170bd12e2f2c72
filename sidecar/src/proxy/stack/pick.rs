//! `Pick`: the endpoint for this attempt. Power of two choices over load (see `balance`),
//! preferring an endpoint this call has not tried yet whose breaker admits; else one already
//! tried (a retry to the same pod beats no retry); else — every per-endpoint breaker open —
//! the call is refused. In DryRun breakers never change where calls go: an open one is only
//! reported.
//!
//! Where no per-endpoint breaker is enforced, the balancer's own failure accrual does the
//! outlier work: every outcome below this step feeds the endpoint's health, and an endpoint
//! refusing connections is ejected and probed back.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use breakwater_resilience::{BoxError, Decision, Enforcement, Observer as _, breaker::CircuitOpen, cause};
use tower::{Layer, Service};

use super::{
    Shared,
    classify::{classify_error, is_client_fault},
    request::{HttpRequest, HttpResponse},
};
use crate::{
    proxy::{balance, endpoint::Endpoint, upstream::AttemptError},
    telemetry::spans,
};

/// Picks the endpoint of each attempt.
#[derive(Clone)]
pub struct PickLayer {
    shared: Arc<Shared>,
}

impl PickLayer {
    /// Picks among `shared`'s endpoints.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for PickLayer {
    type Service = Pick<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Pick { inner, shared: self.shared.clone() }
    }
}

/// A service that sends each attempt to an endpoint of its choice.
#[derive(Clone)]
pub struct Pick<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Pick<S> {
    /// The endpoint for `req` (its index and the endpoint), or why there is none.
    fn choose(&self, req: &HttpRequest) -> Result<(usize, Arc<Endpoint>), BoxError> {
        let (endpoints, res) = (&self.shared.endpoints, &self.shared.resilience);
        let tried = req.tried();
        let n = endpoints.len();
        let all_tried = n > 0 && (0..n.min(64)).all(|i| tried & (1 << i) != 0);
        let not_tried = |i: usize| all_tried || i >= 64 || tried & (1 << i) == 0;
        let breaker_ok = |i: usize| res.endpoint_breaker(i).is_none_or(|b| b.would_admit());
        let failure_aware = self.shared.failure_aware;
        let choice = match res.enforcement {
            Enforcement::Enforce => {
                let c = balance::pick(endpoints, failure_aware, |i| not_tried(i) && breaker_ok(i))
                    .or_else(|| balance::pick(endpoints, failure_aware, breaker_ok));
                if c.is_none() && n > 0 {
                    res.observer.decided(Decision::CircuitOpen, Enforcement::Enforce);
                    return Err(CircuitOpen.into());
                }
                c
            }
            Enforcement::DryRun => {
                let c = balance::pick(endpoints, failure_aware, not_tried);
                if let Some((i, _)) = c
                    && !breaker_ok(i)
                {
                    res.observer.decided(Decision::CircuitOpen, Enforcement::DryRun);
                }
                c
            }
        };
        let (index, endpoint) = choice.ok_or(AttemptError::NoEndpoints)?;
        Ok((index, endpoint.clone()))
    }
}

impl<S> Service<HttpRequest> for Pick<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = BoxError>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = PickFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: HttpRequest) -> Self::Future {
        let (index, endpoint) = match self.choose(&req) {
            Ok(c) => c,
            Err(e) => return PickFuture::Refused { error: Some(e) },
        };
        req.mark_tried(index);
        spans::record_endpoint(&tracing::Span::current(), endpoint.addr);
        req.endpoint = Some((index, endpoint.clone()));
        PickFuture::Called { future: self.inner.call(req), endpoint, shared: self.shared.clone() }
    }
}

pin_project_lite::pin_project! {
    /// An attempt at the endpoint picked, whose outcome feeds the endpoint's health.
    #[project = PickFutureProj]
    pub enum PickFuture<F> {
        /// No endpoint could be picked.
        Refused { error: Option<BoxError> },
        /// Sent to `endpoint`.
        Called { #[pin] future: F, endpoint: Arc<Endpoint>, shared: Arc<Shared> },
    }
}

impl<F> Future for PickFuture<F>
where
    F: Future<Output = Result<HttpResponse, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            PickFutureProj::Refused { error } => {
                Poll::Ready(Err(error.take().unwrap_or_else(|| AttemptError::NoEndpoints.into())))
            }
            PickFutureProj::Called { future, endpoint, shared } => {
                let result = ready!(future.poll(cx));
                accrue(shared, endpoint, &result);
                Poll::Ready(result)
            }
        }
    }
}

/// What an attempt's result tells the balancer about `endpoint`.
fn accrue(shared: &Shared, endpoint: &Arc<Endpoint>, result: &Result<HttpResponse, BoxError>) {
    let outcome = match result {
        Ok(resp) => resp.outcome,
        // The caller's body failed, or our own breaker refused: nothing about the endpoint.
        Err(e) if is_client_fault(e) || cause::<CircuitOpen>(e.as_ref()).is_some() => return,
        Err(e) => {
            if cause::<AttemptError>(e.as_ref()).is_some_and(|a| matches!(a, AttemptError::Connect { .. })) {
                shared.metrics.connect_failure();
                if shared.failure_aware && balance::eject(endpoint, shared.connect_timeout) {
                    shared.metrics.ejection();
                }
            }
            classify_error(e)
        }
    };
    if shared.failure_aware {
        endpoint.health.record(balance::is_endpoint_failure(outcome.failure));
    }
}
