//! `EndpointBreaker`: the circuit breaker of the endpoint picked for this attempt (scope
//! `Endpoint`). It sits above the per-try deadline, so an attempt that deadline cuts counts as
//! the timeout it is. `Pick` already avoids open endpoints; this step takes the admission (a
//! half-open probe slot, or a refusal when the last slot went to a concurrent call) and reports
//! the outcome.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use breakwater_resilience::{
    BoxError, Decision, Enforcement, Observer as _,
    breaker::{CircuitOpen, Permit},
};
use tower::{Layer, Service};

use super::{
    Shared,
    classify::breaker_verdict,
    request::{HttpRequest, HttpResponse},
};

/// Puts each attempt under its endpoint's breaker.
#[derive(Clone)]
pub struct EndpointBreakerLayer {
    shared: Arc<Shared>,
}

impl EndpointBreakerLayer {
    /// The breakers of `shared`'s endpoints.
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl<S> Layer<S> for EndpointBreakerLayer {
    type Service = EndpointBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EndpointBreaker { inner, shared: self.shared.clone() }
    }
}

/// A service whose attempts pass their endpoint's breaker.
#[derive(Clone)]
pub struct EndpointBreaker<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Service<HttpRequest> for EndpointBreaker<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = BoxError>,
{
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        let res = &self.shared.resilience;
        let breaker = req.endpoint.as_ref().and_then(|(i, _)| res.endpoint_breaker(*i));
        let permit = match breaker {
            Some(b) if res.enforcement.enforced() => match b.try_admit() {
                Ok(p) => Some(p),
                Err(CircuitOpen) => {
                    res.observer.decided(Decision::CircuitOpen, Enforcement::Enforce);
                    return BreakerFuture::Refused;
                }
            },
            // DryRun: an open breaker was reported when the endpoint was picked.
            Some(b) => Some(b.admit_anyway()),
            None => None,
        };
        BreakerFuture::Called { future: self.inner.call(req), permit, shared: self.shared.clone() }
    }
}

pin_project_lite::pin_project! {
    /// An attempt under its endpoint's breaker.
    #[project = BreakerFutureProj]
    pub enum BreakerFuture<F> {
        /// The breaker refused it.
        Refused,
        /// Admitted: the outcome is recorded when the attempt ends.
        Called { #[pin] future: F, permit: Option<Permit>, shared: Arc<Shared> },
    }
}

impl<F> Future for BreakerFuture<F>
where
    F: Future<Output = Result<HttpResponse, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BreakerFutureProj::Refused => Poll::Ready(Err(CircuitOpen.into())),
            BreakerFutureProj::Called { future, permit, shared } => {
                let result = ready!(future.poll(cx));
                if let Some(permit) = permit.take()
                    && let Some(failed) = breaker_verdict(&result, shared.resilience.fail_on)
                {
                    permit.record(failed);
                }
                Poll::Ready(result)
            }
        }
    }
}
