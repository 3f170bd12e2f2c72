//! `Retry`: the loop around the attempts. Why not tower's `Retry`: its `Policy` has no hook
//! for what happens once per call (a deposit in the retry budget; `clone_request` runs once
//! per attempt), it clones the whole policy and inner stack into every call's future, and it
//! keeps a copy of every request, also of one that can never be sent again. This one keeps a
//! copy only of a replayable request, and clones the inner service only for such a call.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tower::{Layer, Service};

use super::{
    RetryPolicy,
    policy::{Facts, RetryRequest, RetryResponse},
};
use crate::BoxError;

/// Retries calls under a [`RetryPolicy`].
#[derive(Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
}

impl RetryLayer {
    /// Retries under `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self { policy: Arc::new(policy) }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry { inner, policy: self.policy.clone() }
    }
}

/// A service whose failed calls are tried again.
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
}

impl<S, Req> Service<Req> for Retry<S>
where
    S: Service<Req, Error = BoxError> + Clone,
    S::Response: RetryResponse,
    Req: RetryRequest,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Every call pays into the budget that its retries, and other calls' retries, draw on.
        self.policy.budget.deposit();
        let facts = Facts::of(&req);
        let again = facts.replayable && self.policy.settings.attempts > 1;
        let copy = again.then(|| req.clone_for_retry());
        // The service for the next attempts; `self.inner` was made ready for this one.
        let service = again.then(|| self.inner.clone());
        ResponseFuture {
            state: State::Called { future: self.inner.call(req) },
            service,
            copy,
            facts,
            policy: self.policy.clone(),
            attempt: 1,
        }
    }
}

pin_project_lite::pin_project! {
    /// One call and its retries (a named future: it is on every retried call's path).
    pub struct ResponseFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        // For the next attempts (`None`: the request cannot be sent again).
        service: Option<S>,
        // The next attempt's request, while one may follow.
        copy: Option<Req>,
        facts: Facts,
        policy: Arc<RetryPolicy>,
        // The attempt under way, 1-based.
        attempt: u32,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is under way.
        Called { #[pin] future: F },
        // Backing off before the next attempt.
        Waiting { #[pin] backoff: tokio::time::Sleep },
        // Waiting for the inner service to be ready for the next attempt.
        Retrying,
    }
}

impl<S, Req> Future for ResponseFuture<S, Req>
where
    S: Service<Req, Error = BoxError>,
    S::Response: RetryResponse,
    Req: RetryRequest,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let mut result = ready!(future.poll(cx));
                    let Some(backoff) = this.policy.decide(*this.attempt, this.facts, &mut result) else {
                        return Poll::Ready(result);
                    };
                    *this.attempt += 1;
                    match this.copy.as_mut() {
                        Some(copy) => copy.prepare_retry(*this.attempt),
                        // `decide` retries only a replayable request, of which a copy is kept.
                        None => return Poll::Ready(result),
                    }
                    this.state.set(State::Waiting { backoff: tokio::time::sleep(backoff) });
                }
                StateProj::Waiting { backoff } => {
                    ready!(backoff.poll(cx));
                    this.state.set(State::Retrying);
                }
                StateProj::Retrying => {
                    let (Some(service), Some(req)) = (this.service.as_mut(), this.copy.as_ref()) else {
                        unreachable!("a retry is decided only with a service and a copy kept");
                    };
                    ready!(service.poll_ready(cx))?;
                    // Keep a copy for the attempt after this one, while one may follow.
                    let next = (*this.attempt < this.policy.settings.attempts).then(|| req.clone_for_retry());
                    let req = std::mem::replace(this.copy, next).expect("checked above");
                    this.state.set(State::Called { future: service.call(req) });
                }
            }
        }
    }
}
