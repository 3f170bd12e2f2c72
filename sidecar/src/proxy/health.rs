//! What the balancer knows of one endpoint's health: whether it is ejected (refused a
//! connection, not yet probed back), and a failure score that weighs on its load. See
//! `balance` for how picks use it. Lock-free: a lost update between two racing outcomes costs
//! nothing that matters.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Weight of the newest outcome in the failure EWMA.
const ALPHA: f64 = 0.3;
/// The failure score halves every this many milliseconds without news.
const HALF_LIFE_MS: f64 = 5000.0;
/// An endpoint failing every call scores `1 + PENALTY` times its load.
const PENALTY: f64 = 20.0;

/// Milliseconds on a process-wide monotonic clock.
fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    u64::try_from(BASE.get_or_init(tokio::time::Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One endpoint's health.
#[derive(Debug, Default)]
pub struct Health {
    ejected: AtomicBool,
    /// The failure EWMA in millionths, as of `updated`.
    failures: AtomicU32,
    /// When `failures` was last written (`now_ms`).
    updated: AtomicU64,
}

impl Health {
    /// The failure score now, in [0, 1].
    fn failure_rate(&self, now: u64) -> f64 {
        let f = self.failures.load(Ordering::Relaxed);
        if f == 0 {
            return 0.0;
        }
        let age = now.saturating_sub(self.updated.load(Ordering::Relaxed)) as f64;
        let rate = f64::from(f) / 1e6 * 0.5f64.powf(age / HALF_LIFE_MS);
        // A faded score is no score: equal loads then split evenly again.
        if rate < 1e-3 { 0.0 } else { rate }
    }

    /// The multiplier of the endpoint's load: 1 when healthy (without reading the clock).
    pub fn weight(&self) -> f64 {
        if self.failures.load(Ordering::Relaxed) == 0 {
            return 1.0;
        }
        1.0 + PENALTY * self.failure_rate(now_ms())
    }

    /// Feeds one call's outcome into the failure score.
    pub fn record(&self, failed: bool) {
        if !failed && self.failures.load(Ordering::Relaxed) == 0 {
            return; // the common case: healthy, and staying so
        }
        let now = now_ms();
        let f = self.failure_rate(now) * (1.0 - ALPHA) + if failed { ALPHA } else { 0.0 };
        // Below one in a thousand the score no longer matters: drop it to the fast path.
        let stored = if f < 1e-3 { 0 } else { (f * 1e6) as u32 };
        self.failures.store(stored, Ordering::Relaxed);
        self.updated.store(now, Ordering::Relaxed);
    }

    /// Whether it is out of the set until a connect probe succeeds.
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Relaxed)
    }
}

impl Health {
    /// Takes the endpoint out of the set; `false` when it already was.
    pub fn try_eject(&self) -> bool {
        !self.ejected.swap(true, Ordering::AcqRel)
    }

    /// Puts it back with a clean record (its failures were the refused connections).
    pub fn readmit(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.ejected.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_fades_and_successes_clear_it() {
        let h = Health::default();
        for _ in 0..5 {
            h.record(true);
        }
        assert!(h.weight() > 10.0, "five failures in a row weigh: {}", h.weight());
        // Read 30 s later, the stored score is worth 2^-6 of itself.
        assert!(h.failure_rate(now_ms() + 30_000) < 0.02);
        for _ in 0..30 {
            h.record(false);
        }
        assert_eq!(h.failures.load(Ordering::Relaxed), 0, "successes bring it back to the fast path");
        assert!(h.try_eject() && !h.try_eject(), "ejected once");
        h.record(true);
        h.readmit();
        assert!(!h.is_ejected());
        assert_eq!(h.weight(), 1.0, "back with a clean record");
    }
}
