//! Deadlines.
//!
//! [`Timeout`] bounds a whole call — every retry and backoff included — like Envoy's route
//! timeout, so a caller's worst case is one number. Per-attempt deadlines are computed with
//! [`attempt_deadline`]: the smaller of `perTry` and what remains of the whole call, except
//! that the last attempt always gets everything that remains (cutting it early would only turn
//! a slow success into a certain failure).
//!
//! In DryRun the deadline is *observed*: when it passes, the observer is told and the call
//! goes on.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tower::{Layer, Service};

use crate::{BoxError, Deadline, Decision, Enforcement, Observer};

/// A deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline of {0:?} passed")]
pub struct Elapsed(pub Duration);

/// The deadline for attempt `attempt` (1-based) of at most `attempts`, for a call whose whole
/// deadline is `call_deadline`.
pub fn attempt_deadline(
    now: Instant,
    per_try: Option<Duration>,
    call_deadline: Option<Instant>,
    attempt: u32,
    attempts: u32,
) -> Option<Instant> {
    let per_try = per_try.map(|d| now + d);
    match (per_try, call_deadline) {
        (_, Some(call)) if attempt >= attempts => Some(call),
        (Some(p), Some(call)) => Some(p.min(call)),
        (p, c) => p.or(c),
    }
}

/// Bounds calls by a duration.
#[derive(Clone)]
pub struct TimeoutLayer {
    limit: Option<Duration>,
    enforcement: Enforcement,
    observer: Arc<dyn Observer>,
}

impl TimeoutLayer {
    /// `None` means no deadline. In DryRun the deadline is only reported.
    pub fn new(limit: Option<Duration>, enforcement: Enforcement, observer: Arc<dyn Observer>) -> Self {
        Self { limit, enforcement, observer }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout { inner, layer: self.clone() }
    }
}

/// A service whose calls are bounded by a deadline.
#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    layer: TimeoutLayer,
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: self.layer.limit.map(tokio::time::sleep),
            layer: self.layer.clone(),
            fired: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call under a deadline (a named future rather than a boxed one: this is on every
    /// request's path).
    pub struct TimeoutFuture<F> {
        #[pin]
        inner: F,
        // None: no deadline.
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        layer: TimeoutLayer,
        // The deadline passed (DryRun goes on after reporting it once).
        fired: bool,
    }
}

impl<F, T> Future for TimeoutFuture<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // The call finished in time.
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r);
        }
        if !*this.fired
            && let Some(sleep) = this.sleep.as_pin_mut()
            && sleep.poll(cx).is_ready()
        {
            // The deadline passed first.
            *this.fired = true;
            let limit = this.layer.limit.unwrap_or_default();
            let decision = Decision::TimedOut { deadline: Deadline::Request, limit };
            this.layer.observer.decided(decision, this.layer.enforcement);
            if this.layer.enforcement.enforced() {
                return Poll::Ready(Err(Elapsed(limit).into()));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tower::ServiceExt;
    use tower_test::mock;

    use super::*;

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Observer for Count {
        fn decided(&self, decision: Decision, _: Enforcement) {
            if let Decision::TimedOut { .. } = decision {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_a_slow_call_with_elapsed() {
        let count = Arc::new(Count::default());
        let (svc, mut handle) = mock::pair::<(), ()>();
        let svc = TimeoutLayer::new(Some(Duration::from_millis(200)), Enforcement::Enforce, count.clone())
            .layer(svc);
        handle.allow(1);
        let call = tokio::spawn(svc.oneshot(()));
        let (_, _send) = handle.next_request().await.expect("request");
        let err = call.await.expect("join").expect_err("cut");
        assert_eq!(err.downcast_ref::<Elapsed>(), Some(&Elapsed(Duration::from_millis(200))));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_reports_but_lets_the_call_finish() {
        let count = Arc::new(Count::default());
        let (svc, mut handle) = mock::pair::<(), ()>();
        let svc = TimeoutLayer::new(Some(Duration::from_millis(200)), Enforcement::DryRun, count.clone())
            .layer(svc);
        handle.allow(1);
        let call = tokio::spawn(svc.oneshot(()));
        let (_, send) = handle.next_request().await.expect("request");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "the deadline was noticed");
        send.send_response(());
        assert!(call.await.expect("join").is_ok(), "DryRun never changes the outcome");
    }

    #[test]
    fn the_last_attempt_gets_all_that_remains() {
        let now = Instant::now();
        let call = Some(now + Duration::from_millis(1000));
        let per_try = Some(Duration::from_millis(300));
        assert_eq!(attempt_deadline(now, per_try, call, 1, 3), Some(now + Duration::from_millis(300)));
        assert_eq!(attempt_deadline(now, per_try, call, 3, 3), call, "last attempt: not cut by perTry");
        let late = now + Duration::from_millis(900);
        assert_eq!(attempt_deadline(late, per_try, call, 2, 3), call, "perTry never outlives the call");
        assert_eq!(attempt_deadline(now, per_try, None, 3, 3), Some(now + Duration::from_millis(300)));
        assert_eq!(attempt_deadline(now, None, None, 1, 1), None);
    }
}
