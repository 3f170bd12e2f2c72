//! A sliding window of call outcomes in ten buckets of atomics, on tokio's clock: the request
//! path records into it without a lock or a message.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

const BUCKETS: usize = 10;

#[derive(Debug, Default)]
struct Bucket {
    /// Which slice of time (in bucket widths since `base`) the counts belong to.
    epoch: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
}

/// Calls and failures over the last `window`.
#[derive(Debug)]
pub struct Window {
    base: Instant,
    width_ms: u64,
    buckets: [Bucket; BUCKETS],
}

impl Window {
    /// An empty window of `window` length.
    pub fn new(window: Duration) -> Self {
        let width_ms = u64::try_from((window / BUCKETS as u32).as_millis()).unwrap_or(u64::MAX).max(1);
        Self { base: Instant::now(), width_ms, buckets: Default::default() }
    }

    fn epoch(&self) -> u64 {
        // +1 so that epoch 0 means "never used".
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX) / self.width_ms + 1
    }

    /// Records an outcome.
    pub fn record(&self, failed: bool) {
        let epoch = self.epoch();
        let b = &self.buckets[(epoch as usize) % BUCKETS];
        let seen = b.epoch.load(Ordering::Acquire);
        if seen != epoch && b.epoch.compare_exchange(seen, epoch, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            // This bucket's slice of time is over: start it afresh. A record racing with the
            // reset may be lost, which a sliding estimate tolerates.
            b.calls.store(0, Ordering::Release);
            b.failures.store(0, Ordering::Release);
        }
        b.calls.fetch_add(1, Ordering::AcqRel);
        if failed {
            b.failures.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// `(calls, failures)` in the window.
    pub fn totals(&self) -> (u64, u64) {
        let now = self.epoch();
        self.buckets
            .iter()
            .filter(|b| {
                let e = b.epoch.load(Ordering::Acquire);
                e != 0 && now.saturating_sub(e) < BUCKETS as u64
            })
            .fold((0, 0), |(c, f), b| {
                (c + b.calls.load(Ordering::Acquire), f + b.failures.load(Ordering::Acquire))
            })
    }

    /// Forgets everything.
    pub fn clear(&self) {
        for b in &self.buckets {
            b.epoch.store(0, Ordering::Release);
            b.calls.store(0, Ordering::Release);
            b.failures.store(0, Ordering::Release);
        }
    }
}
