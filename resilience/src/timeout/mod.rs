//! Deadlines.
//!
//! The whole call's deadline is taken once, when the call arrives, and travels with it
//! ([`Timed::deadline`]); [`TimeoutLayer::request`] enforces it around every retry and backoff,
//! like Envoy's route timeout, so a caller's worst case is one number. [`TimeoutLayer::per_try`]
//! bounds one attempt by [`attempt_deadline`]: the smaller of `perTry` and what remains of the
//! whole call, except that the last attempt always gets everything that remains (cutting it
//! early would only turn a slow success into a certain failure).
//!
//! In DryRun a deadline is *observed*: when it passes, the observer is told and the call goes
//! on.

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
#[error("the {} deadline of {limit:?} passed", match deadline { Deadline::Request => "request", Deadline::PerTry => "per-try" })]
pub struct Elapsed {
    /// Which.
    pub deadline: Deadline,
    /// Its length.
    pub limit: Duration,
}

/// What the deadlines read from a call.
pub trait Timed {
    /// The whole call's deadline, taken once when it arrived.
    fn deadline(&self) -> Option<Instant>;
    /// Which attempt this is, 1-based.
    fn attempt(&self) -> u32 {
        1
    }
}

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

/// Bounds calls by a deadline.
#[derive(Clone)]
pub struct TimeoutLayer {
    deadline: Deadline,
    limit: Duration,
    /// Per try: attempts at most (the last one gets what remains of the call).
    attempts: u32,
    enforcement: Enforcement,
    observer: Arc<dyn Observer>,
}

impl TimeoutLayer {
    /// The whole call's deadline, `limit` long, read from each call ([`Timed::deadline`]).
    pub fn request(limit: Duration, enforcement: Enforcement, observer: Arc<dyn Observer>) -> Self {
        Self { deadline: Deadline::Request, limit, attempts: 1, enforcement, observer }
    }

    /// Each attempt's deadline: `limit` from when it starts, within the call's deadline, of at
    /// most `attempts` attempts.
    pub fn per_try(
        limit: Duration,
        attempts: u32,
        enforcement: Enforcement,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self { deadline: Deadline::PerTry, limit, attempts, enforcement, observer }
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
    Req: Timed,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = TimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let l = &self.layer;
        let until = match l.deadline {
            Deadline::Request => req.deadline(),
            Deadline::PerTry => {
                attempt_deadline(Instant::now(), Some(l.limit), req.deadline(), req.attempt(), l.attempts)
            }
        };
        TimeoutFuture {
            inner: self.inner.call(req),
            sleep: until.map(tokio::time::sleep_until),
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
            let (deadline, limit) = (this.layer.deadline, this.layer.limit);
            this.layer.observer.decided(Decision::TimedOut { deadline, limit }, this.layer.enforcement);
            if this.layer.enforcement.enforced() {
                return Poll::Ready(Err(Elapsed { deadline, limit }.into()));
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

    /// A call whose deadline was taken when it arrived.
    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Call {
        deadline: Option<Instant>,
        attempt: u32,
    }

    impl Timed for Call {
        fn deadline(&self) -> Option<Instant> {
            self.deadline
        }
        fn attempt(&self) -> u32 {
            self.attempt
        }
    }

    fn arriving_now(limit: Duration) -> Call {
        Call { deadline: Some(Instant::now() + limit), attempt: 1 }
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_a_slow_call_with_elapsed() {
        let count = Arc::new(Count::default());
        let limit = Duration::from_millis(200);
        let (svc, mut handle) = mock::pair::<Call, ()>();
        let svc = TimeoutLayer::request(limit, Enforcement::Enforce, count.clone()).layer(svc);
        handle.allow(1);
        let call = tokio::spawn(svc.oneshot(arriving_now(limit)));
        let (_, _send) = handle.next_request().await.expect("request");
        let err = call.await.expect("join").expect_err("cut");
        assert_eq!(err.downcast_ref::<Elapsed>(), Some(&Elapsed { deadline: Deadline::Request, limit }));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
    }

    /// The deadline is the one the call carries, taken when it arrived: time spent before the
    /// layer (reading the request body, waiting in a queue) counts.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_arrival_not_from_the_layer() {
        let count = Arc::new(Count::default());
        let limit = Duration::from_millis(200);
        let arrived = arriving_now(limit);
        tokio::time::advance(Duration::from_millis(150)).await;
        let (svc, mut handle) = mock::pair::<Call, ()>();
        let svc = TimeoutLayer::request(limit, Enforcement::Enforce, count.clone()).layer(svc);
        handle.allow(1);
        let started = Instant::now();
        let call = tokio::spawn(svc.oneshot(arrived));
        let (_, _send) = handle.next_request().await.expect("request");
        call.await.expect("join").expect_err("cut");
        assert_eq!(started.elapsed(), Duration::from_millis(50), "what remained of the 200ms");
    }

    /// Per try: `perTry` from the attempt's start, and the last attempt gets what remains.
    #[tokio::test(start_paused = true)]
    async fn per_try_cuts_an_attempt_but_not_the_last_one_early() {
        let count = Arc::new(Count::default());
        let per_try = Duration::from_millis(100);
        let (svc, mut handle) = mock::pair::<Call, ()>();
        let svc = TimeoutLayer::per_try(per_try, 2, Enforcement::Enforce, count.clone()).layer(svc);
        handle.allow(2);
        let start = Instant::now();
        let first = Call { deadline: Some(start + Duration::from_secs(1)), attempt: 1 };
        let call = tokio::spawn(svc.clone().oneshot(first));
        let (_, _send) = handle.next_request().await.expect("request");
        let err = call.await.expect("join").expect_err("cut");
        assert_eq!(err.downcast_ref::<Elapsed>().map(|e| e.deadline), Some(Deadline::PerTry));
        assert_eq!(start.elapsed(), per_try);
        let last = Call { attempt: 2, ..first };
        let call = tokio::spawn(svc.oneshot(last));
        let (_, _send2) = handle.next_request().await.expect("request");
        call.await.expect("join").expect_err("cut");
        assert_eq!(start.elapsed(), Duration::from_secs(1), "the last attempt ran to the call's deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_reports_but_lets_the_call_finish() {
        let count = Arc::new(Count::default());
        let limit = Duration::from_millis(200);
        let (svc, mut handle) = mock::pair::<Call, ()>();
        let svc = TimeoutLayer::request(limit, Enforcement::DryRun, count.clone()).layer(svc);
        handle.allow(1);
        let call = tokio::spawn(svc.oneshot(arriving_now(limit)));
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
