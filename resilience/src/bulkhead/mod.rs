//! Bulkheads: at most `max_concurrent` calls in flight; up to `max_queued` more wait, each at
//! most `max_queue_wait`, first come first served; beyond that a call is refused at once
//! (`BulkheadFull`). A slow dependency then costs its callers a bounded number of requests, not
//! all of them — the watertight compartments of a ship's hull.
//!
//! The permit is taken before the call and must be held until the *response body* ends: a
//! response whose headers arrived but whose body still streams is still load on the target.
//! The protocol layer attaches the [`Permit`] to its response for that (see
//! [`layer::AttachPermit`]); dropping it, or the body, frees the slot.

pub mod layer;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use self::layer::{AttachPermit, BulkheadLayer, BulkheadService};

/// The bulkhead refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BulkheadFull {
    /// Every slot and every queue place was taken.
    #[error("bulkhead full: {0} calls in flight and the queue is full")]
    QueueFull(usize),
    /// The call waited in the queue for the longest allowed time.
    #[error("bulkhead full: no slot freed within {0:?}")]
    WaitExpired(Duration),
}

/// A bulkhead's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most calls in flight.
    pub max_concurrent: usize,
    /// Most calls waiting.
    pub max_queued: usize,
    /// Longest wait in the queue.
    pub max_queue_wait: Duration,
}

/// One bulkhead; share it with `Arc`.
#[derive(Debug)]
pub struct Bulkhead {
    limits: Limits,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
}

/// A slot in the bulkhead, held until dropped.
#[derive(Debug)]
pub struct Permit {
    _slot: Option<OwnedSemaphorePermit>,
    /// How long the call waited in the queue (zero when it got a slot at once).
    pub waited: Duration,
}

impl Permit {
    /// A permit that holds no slot (DryRun admits over the limit with one).
    pub fn unlimited() -> Self {
        Self { _slot: None, waited: Duration::ZERO }
    }
}

struct QueuedGuard<'a>(&'a AtomicUsize);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    /// A bulkhead with `limits`.
    pub fn new(limits: Limits) -> Self {
        Self { limits, slots: Arc::new(Semaphore::new(limits.max_concurrent)), queued: AtomicUsize::new(0) }
    }

    /// Its limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.limits.max_concurrent - self.slots.available_permits()
    }

    /// Calls waiting now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Takes a free slot, if there is one, without waiting.
    pub fn try_acquire(&self) -> Option<Permit> {
        self.slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(|slot| Permit { _slot: Some(slot), waited: Duration::ZERO })
    }

    /// Takes a slot: at once if one is free, else after waiting in the queue (if there is room
    /// in it) for at most `max_queue_wait`.
    pub async fn acquire(&self) -> Result<Permit, BulkheadFull> {
        self.acquire_observed(|| {}).await
    }

    /// [`Bulkhead::acquire`], calling `on_queued` when the call has to wait in the queue.
    pub async fn acquire_observed(&self, on_queued: impl FnOnce()) -> Result<Permit, BulkheadFull> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(Permit { _slot: Some(slot), waited: Duration::ZERO });
        }
        // Reserve a queue place, or refuse.
        let reserved = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
            (q < self.limits.max_queued).then_some(q + 1)
        });
        if reserved.is_err() {
            return Err(BulkheadFull::QueueFull(self.limits.max_concurrent));
        }
        let _queued = QueuedGuard(&self.queued);
        on_queued();
        let started = tokio::time::Instant::now();
        // tokio's semaphore is fair: waiters get slots in arrival order.
        match tokio::time::timeout(self.limits.max_queue_wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(Permit { _slot: Some(slot), waited: started.elapsed() }),
            // The semaphore is never closed; treat it as full if it were.
            Ok(Err(_closed)) => Err(BulkheadFull::QueueFull(self.limits.max_concurrent)),
            Err(_elapsed) => Err(BulkheadFull::WaitExpired(self.limits.max_queue_wait)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulkhead(max_concurrent: usize, max_queued: usize, wait_ms: u64) -> Arc<Bulkhead> {
        Arc::new(Bulkhead::new(Limits {
            max_concurrent,
            max_queued,
            max_queue_wait: Duration::from_millis(wait_ms),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn refuses_at_once_when_slots_and_queue_are_full() {
        let b = bulkhead(2, 0, 1000);
        let _a = b.acquire().await.expect("slot 1");
        let _b = b.acquire().await.expect("slot 2");
        let started = tokio::time::Instant::now();
        assert_eq!(b.acquire().await.err(), Some(BulkheadFull::QueueFull(2)));
        assert_eq!(started.elapsed(), Duration::ZERO, "no queue: no waiting");
        assert_eq!(b.in_flight(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn queued_calls_get_slots_in_arrival_order() {
        let b = bulkhead(1, 3, 10_000);
        let first = b.acquire().await.expect("slot");
        let order = Arc::new(tokio::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for i in 0..3 {
            let (b2, order) = (b.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let p = b2.acquire().await.expect("queued slot");
                order.lock().await.push(i);
                drop(p);
            }));
            // Let each waiter enqueue before the next.
            while b.queued() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(b.acquire().await.err(), Some(BulkheadFull::QueueFull(1)), "the queue holds 3");
        drop(first);
        for w in waiters {
            w.await.expect("waiter");
        }
        assert_eq!(*order.lock().await, [0, 1, 2]);
        assert_eq!(b.queued(), 0);
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_gives_up_after_max_queue_wait() {
        let b = bulkhead(1, 1, 250);
        let _held = b.acquire().await.expect("slot");
        let started = tokio::time::Instant::now();
        assert_eq!(b.acquire().await.err(), Some(BulkheadFull::WaitExpired(Duration::from_millis(250))));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        assert_eq!(b.queued(), 0, "the queue place is released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_reports_how_long_it_waited() {
        let b = bulkhead(1, 1, 1000);
        let held = b.acquire().await.expect("slot");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.acquire().await.map(|p| p.waited) })
        };
        while b.queued() < 1 {
            tokio::task::yield_now().await;
        }
        tokio::time::advance(Duration::from_millis(300)).await;
        drop(held);
        assert_eq!(waiter.await.expect("join"), Ok(Duration::from_millis(300)));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_permit_frees_the_slot() {
        let b = bulkhead(1, 0, 0);
        let p = b.acquire().await.expect("slot");
        assert!(b.acquire().await.is_err());
        drop(p);
        assert!(b.acquire().await.is_ok());
    }
}
