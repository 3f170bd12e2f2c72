//! A sliding window of call outcomes, in ten buckets, on tokio's clock.

use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: u32 = 10;

/// Calls and failures over the last `window`.
#[derive(Debug)]
pub struct Window {
    width: Duration,
    buckets: [(u64, u64); BUCKETS as usize],
    /// Start of the bucket at `head`.
    head_start: Instant,
    head: usize,
}

impl Window {
    /// An empty window of `window` length.
    pub fn new(window: Duration) -> Self {
        Self {
            width: window / BUCKETS,
            buckets: [(0, 0); BUCKETS as usize],
            head_start: Instant::now(),
            head: 0,
        }
    }

    fn rotate(&mut self) {
        let now = Instant::now();
        let mut steps = 0;
        while now.duration_since(self.head_start) >= self.width && steps <= BUCKETS {
            self.head = (self.head + 1) % BUCKETS as usize;
            self.buckets[self.head] = (0, 0);
            self.head_start += self.width;
            steps += 1;
        }
        if steps > BUCKETS {
            // Idle for longer than the window: everything expired.
            self.head_start = now;
        }
    }

    /// Records an outcome.
    pub fn record(&mut self, failed: bool) {
        self.rotate();
        let b = &mut self.buckets[self.head];
        b.0 += 1;
        if failed {
            b.1 += 1;
        }
    }

    /// `(calls, failures)` in the window.
    pub fn totals(&mut self) -> (u64, u64) {
        self.rotate();
        self.buckets.iter().fold((0, 0), |(c, f), b| (c + b.0, f + b.1))
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.buckets = [(0, 0); BUCKETS as usize];
        self.head_start = Instant::now();
    }
}
