//! `CircuitBreakerLayer`: one breaker in front of a whole service (scope `Service`). Scope
//! `Endpoint` uses [`super::Breaker`] directly in the balancer, so that an open endpoint leaves
//! the set instead of failing the call.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tower::{Layer, Service};

use super::{Breaker, CircuitOpen, Permit};
use crate::{BoxError, Decision, Enforcement, Observer};

/// Decides whether a call's result counts as a failure for the breaker; `None` when it says
/// nothing about the service (the caller's own fault), which then goes unrecorded.
pub type FailureClassifier<Res> = Arc<dyn Fn(&Result<Res, BoxError>) -> Option<bool> + Send + Sync>;

/// Wraps a service with a breaker.
pub struct CircuitBreakerLayer<Res> {
    breaker: Breaker,
    classify: FailureClassifier<Res>,
    enforcement: Enforcement,
    observer: Arc<dyn Observer>,
}

impl<Res> Clone for CircuitBreakerLayer<Res> {
    fn clone(&self) -> Self {
        Self {
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
            enforcement: self.enforcement,
            observer: self.observer.clone(),
        }
    }
}

impl<Res> CircuitBreakerLayer<Res> {
    /// In DryRun, an open breaker admits the call and only reports it.
    pub fn new(
        breaker: Breaker,
        classify: FailureClassifier<Res>,
        enforcement: Enforcement,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self { breaker, classify, enforcement, observer }
    }
}

impl<S, Res> Layer<S> for CircuitBreakerLayer<Res> {
    type Service = CircuitBreakerService<S, Res>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService { inner, layer: self.clone() }
    }
}

/// A service behind a breaker.
pub struct CircuitBreakerService<S, Res> {
    inner: S,
    layer: CircuitBreakerLayer<Res>,
}

impl<S: Clone, Res> Clone for CircuitBreakerService<S, Res> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone() }
    }
}

impl<S, Req, Res> Service<Req> for CircuitBreakerService<S, Res>
where
    S: Service<Req, Response = Res, Error = BoxError>,
    S::Future: Send + 'static,
    Res: Send + 'static,
{
    type Response = Res;
    type Error = BoxError;
    type Future = BreakerFuture<S::Future, Res>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.layer.breaker.try_admit() {
            Ok(p) => p,
            Err(CircuitOpen) => {
                self.layer.observer.decided(Decision::CircuitOpen, self.layer.enforcement);
                if self.layer.enforcement.enforced() {
                    return BreakerFuture::Rejected;
                }
                self.layer.breaker.admit_anyway()
            }
        };
        BreakerFuture::Called {
            inner: self.inner.call(req),
            permit: Some(permit),
            classify: self.layer.classify.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call behind the breaker (a named future: it is on every call's path).
    #[project = BreakerFutureProj]
    pub enum BreakerFuture<F, Res> {
        /// The breaker is open: refused without calling.
        Rejected,
        /// Admitted: the outcome is recorded when the call completes.
        Called {
            #[pin]
            inner: F,
            permit: Option<Permit>,
            classify: FailureClassifier<Res>,
        },
    }
}

impl<F, Res> Future for BreakerFuture<F, Res>
where
    F: Future<Output = Result<Res, BoxError>>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            BreakerFutureProj::Rejected => Poll::Ready(Err(CircuitOpen.into())),
            BreakerFutureProj::Called { inner, permit, classify } => {
                let result = std::task::ready!(inner.poll(cx));
                if let Some(permit) = permit.take()
                    && let Some(failed) = classify(&result)
                {
                    permit.record(failed);
                }
                Poll::Ready(result)
            }
        }
    }
}
