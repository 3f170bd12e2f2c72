//! `BulkheadLayer`: capacity is taken in `poll_ready` (queueing there, bounded), used by
//! `call`, and released when the response — body included — is dropped (tower's
//! `ConcurrencyLimit` pattern, with a bounded queue and a wait limit).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use tower::{Layer, Service};

use super::{Bulkhead, Permit};
use crate::{BoxError, Decision, Enforcement, Observer};

/// Responses that can carry a bulkhead permit until they are fully consumed.
pub trait AttachPermit {
    /// Keeps `permit` alive as long as the response (for HTTP: until its body ends).
    fn attach_permit(self, permit: Permit) -> Self;
}

/// Wraps a service with a bulkhead.
#[derive(Clone)]
pub struct BulkheadLayer {
    bulkhead: Arc<Bulkhead>,
    enforcement: Enforcement,
    observer: Arc<dyn Observer>,
}

impl BulkheadLayer {
    /// In DryRun, a refused call is reported and admitted anyway.
    pub fn new(bulkhead: Arc<Bulkhead>, enforcement: Enforcement, observer: Arc<dyn Observer>) -> Self {
        Self { bulkhead, enforcement, observer }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService { inner, layer: self.clone(), acquiring: None, permit: None }
    }
}

type Acquiring = Pin<Box<dyn Future<Output = Result<Permit, super::BulkheadFull>> + Send + Sync>>;

/// A service behind a bulkhead.
pub struct BulkheadService<S> {
    inner: S,
    layer: BulkheadLayer,
    /// The queue wait in progress, if `poll_ready` is waiting for a slot.
    acquiring: Option<Acquiring>,
    /// Taken by `poll_ready`, moved into the response by `call`.
    permit: Option<Permit>,
}

impl<S: Clone> Clone for BulkheadService<S> {
    /// A clone starts without a permit: capacity belongs to one call.
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), layer: self.layer.clone(), acquiring: None, permit: None }
    }
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req, Error = BoxError>,
    S::Response: AttachPermit + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = AttachFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.permit.is_none() && self.acquiring.is_none() {
            // Fast path: a free slot, without allocating a wait.
            if let Some(p) = self.layer.bulkhead.try_acquire() {
                self.permit = Some(p);
            }
        }
        if self.permit.is_none() {
            let acquiring = self.acquiring.get_or_insert_with(|| {
                let b = self.layer.bulkhead.clone();
                let (observer, enforcement) = (self.layer.observer.clone(), self.layer.enforcement);
                Box::pin(async move {
                    b.acquire_observed(|| observer.decided(Decision::Queued, enforcement)).await
                })
            });
            let result = ready!(acquiring.as_mut().poll(cx));
            self.acquiring = None;
            match result {
                Ok(p) => {
                    if !p.waited.is_zero() {
                        self.layer
                            .observer
                            .decided(Decision::AdmittedAfter(p.waited), self.layer.enforcement);
                    }
                    self.permit = Some(p);
                }
                Err(full) => {
                    self.layer.observer.decided(Decision::BulkheadFull(full), self.layer.enforcement);
                    if self.layer.enforcement.enforced() {
                        return Poll::Ready(Err(full.into()));
                    }
                    self.permit = Some(Permit::unlimited());
                }
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = self.permit.take().expect("poll_ready must be called first");
        AttachFuture { inner: self.inner.call(req), permit: Some(permit) }
    }
}

pin_project_lite::pin_project! {
    /// The call; its response gets the permit (a named future: this is on every request's path).
    pub struct AttachFuture<F> {
        #[pin]
        inner: F,
        permit: Option<Permit>,
    }
}

impl<F, T> Future for AttachFuture<F>
where
    F: Future<Output = Result<T, BoxError>>,
    T: AttachPermit,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        // Without a permit (polled again after completing) the response just goes without one.
        Poll::Ready(match this.permit.take() {
            Some(permit) => result.map(|r| r.attach_permit(permit)),
            None => result,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
    use tower_test::mock;

    use super::*;
    use crate::bulkhead::Limits;

    #[derive(Debug)]
    struct Resp(Option<Permit>);

    impl AttachPermit for Resp {
        fn attach_permit(self, permit: Permit) -> Self {
            Resp(Some(permit))
        }
    }

    #[derive(Default)]
    struct Counts(std::sync::atomic::AtomicUsize, std::sync::atomic::AtomicUsize);

    impl Observer for Counts {
        fn decided(&self, decision: Decision, _: Enforcement) {
            match decision {
                Decision::BulkheadFull(_) => self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                Decision::AdmittedAfter(_) => self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                _ => 0,
            };
        }
    }

    fn layer(enforcement: Enforcement, counts: Arc<Counts>) -> BulkheadLayer {
        let b = Arc::new(Bulkhead::new(Limits {
            max_concurrent: 1,
            max_queued: 0,
            max_queue_wait: Duration::ZERO,
        }));
        BulkheadLayer::new(b, enforcement, counts)
    }

    #[tokio::test(start_paused = true)]
    async fn permit_is_held_by_the_response_and_freed_with_it() {
        let counts = Arc::new(Counts::default());
        let l = layer(Enforcement::Enforce, counts.clone());
        let (mut svc, mut handle) = mock::spawn_layer::<(), Resp, _>(l.clone());
        let (mut svc2, _h2) = mock::spawn_with(|s: mock::Mock<(), Resp>| l.layer(s));
        handle.allow(1);
        assert_ready_ok!(svc.poll_ready());
        let fut = svc.call(());
        let (_, send) = handle.next_request().await.expect("request");
        send.send_response(Resp(None));
        let resp = fut.await.expect("response");
        assert!(resp.0.is_some(), "the permit travels with the response");
        // While the response lives, the single slot is taken.
        assert_ready_err!(svc2.poll_ready());
        assert_eq!(counts.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        drop(resp);
        let (mut svc3, mut h3) = mock::spawn_with(|s: mock::Mock<(), Resp>| l.layer(s));
        h3.allow(1);
        assert_ready_ok!(svc3.poll_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn dry_run_admits_over_the_limit_and_reports_it() {
        let counts = Arc::new(Counts::default());
        let l = layer(Enforcement::DryRun, counts.clone());
        let (mut a, mut ha) = mock::spawn_with(|s: mock::Mock<(), Resp>| l.layer(s));
        let (mut b, mut hb) = mock::spawn_with(|s: mock::Mock<(), Resp>| l.layer(s));
        ha.allow(1);
        hb.allow(1);
        assert_ready_ok!(a.poll_ready());
        assert_ready_ok!(b.poll_ready(), "DryRun never refuses");
        assert_eq!(counts.0.load(std::sync::atomic::Ordering::SeqCst), 1, "but counts what it would refuse");
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_waits_for_the_inner_service() {
        let counts = Arc::new(Counts::default());
        let (mut svc, mut handle) = mock::spawn_layer::<(), Resp, _>(layer(Enforcement::Enforce, counts));
        handle.allow(0);
        assert_pending!(svc.poll_ready());
        handle.allow(1);
        assert_ready_ok!(svc.poll_ready());
    }
}
