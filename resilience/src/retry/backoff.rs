//! Exponential backoff with jitter.
//!
//! Before retry *n* (1-based) the wait is drawn uniformly from
//! `[cap × (1 − jitter), cap]` with `cap = min(max, base × 2ⁿ⁻¹)`: with `jitter = 1` ("full
//! jitter", AWS Architecture Blog, 2015) callers that failed together spread out instead of
//! retrying in lockstep. A `Retry-After` from the upstream is honoured when it asks for longer,
//! but never beyond `max`: one misbehaving upstream must not park requests for minutes.

use std::time::Duration;

use rand::Rng;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Wait before the first retry, before jitter.
    pub base: Duration,
    /// Longest wait.
    pub max: Duration,
    /// Randomised fraction, 0–1.
    pub jitter: f64,
}

impl Backoff {
    /// The ceiling for retry `n` (1-based), before jitter.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 2u32.saturating_pow(n.saturating_sub(1).min(30));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait before retry `n`, given the upstream's `Retry-After`, if any.
    pub fn delay(&self, n: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let cap = self.ceiling(n);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let low = cap.mul_f64(1.0 - jitter);
        let drawn = if cap > low { rng.random_range(low..=cap) } else { cap };
        match retry_after {
            Some(asked) if asked > drawn => asked.min(self.max),
            _ => drawn,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    fn b(jitter: f64) -> Backoff {
        Backoff { base: Duration::from_millis(25), max: Duration::from_millis(250), jitter }
    }

    #[test]
    fn ceiling_doubles_up_to_max() {
        let ms: Vec<u128> = (1..=6).map(|n| b(1.0).ceiling(n).as_millis()).collect();
        assert_eq!(ms, [25, 50, 100, 200, 250, 250]);
        assert_eq!(b(1.0).ceiling(u32::MAX), Duration::from_millis(250), "no overflow");
    }

    #[test]
    fn full_jitter_stays_in_bounds_and_spreads() {
        let mut rng = StdRng::seed_from_u64(7);
        let draws: Vec<Duration> = (0..2000).map(|_| b(1.0).delay(3, None, &mut rng)).collect();
        assert!(draws.iter().all(|d| *d <= Duration::from_millis(100)));
        let low = draws.iter().filter(|d| **d < Duration::from_millis(25)).count();
        let high = draws.iter().filter(|d| **d > Duration::from_millis(75)).count();
        // Uniform over [0, 100ms]: about a quarter in each outer quarter.
        assert!((400..600).contains(&low), "low quarter: {low}");
        assert!((400..600).contains(&high), "high quarter: {high}");
    }

    #[test]
    fn no_jitter_waits_exactly_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(b(0.0).delay(2, None, &mut rng), Duration::from_millis(50));
    }

    #[test]
    fn retry_after_is_honoured_up_to_max() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(b(0.0).delay(1, Some(Duration::from_millis(200)), &mut rng), Duration::from_millis(200));
        assert_eq!(b(0.0).delay(1, Some(Duration::from_secs(60)), &mut rng), Duration::from_millis(250));
        assert_eq!(b(0.0).delay(3, Some(Duration::from_millis(1)), &mut rng), Duration::from_millis(100));
    }
}
