//! Retry budgets: retries may add at most `ratio` × the recent request rate, plus
//! `min_per_second`, so a failing dependency never sees a retry storm.
//!
//! Why a budget and not just `attempts`: with `attempts: 3`, a dependency that fails every call
//! receives three times its normal load exactly when it is least able to take it. A budget
//! bounds the extra load to a fraction of real traffic whatever happens (Linkerd's retry
//! budgets, Finagle's `RetryBudget`). The arithmetic is tower's `TpsBudget` (a sliding window
//! of `window`, split in slots), which we use as it is: it runs on tokio's clock, so the unit
//! tests below step time by hand.

use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// One target's retry budget.
#[derive(Debug)]
pub struct RetryBudget {
    inner: TpsBudget,
    settings: (Duration, u32, u64),
}

impl RetryBudget {
    /// `window`: how long a request counts (1–60s); `min_per_second`: retries always allowed;
    /// `ratio`: retries per request (0–1).
    pub fn new(window: Duration, min_per_second: u32, ratio: f64) -> Self {
        let window = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let ratio = ratio.clamp(0.0, 1.0);
        Self {
            inner: TpsBudget::new(window, min_per_second, ratio as f32),
            settings: (window, min_per_second, ratio.to_bits()),
        }
    }

    /// Whether this budget was built with these settings (so a reload can keep it).
    pub fn same_settings(&self, window: Duration, min_per_second: u32, ratio: f64) -> bool {
        let window = window.clamp(Duration::from_secs(1), Duration::from_secs(60));
        self.settings == (window, min_per_second, ratio.clamp(0.0, 1.0).to_bits())
    }

    /// Records a request (each original request, not each retry).
    pub fn deposit(&self) {
        self.inner.deposit();
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        self.inner.withdraw()
    }

    /// The settings it was built with: window, retries per second always allowed, ratio.
    pub fn settings(&self) -> (Duration, u32, f64) {
        (self.settings.0, self.settings.1, f64::from_bits(self.settings.2))
    }

    /// How many retries it would allow now, taking none (for `/breakers`).
    ///
    /// tower's `TpsBudget` keeps its balance private and shows it only in its `Debug` output
    /// (`balance: N`, in units where a retry costs `1 / ratio`), so that is where it is read; a
    /// unit test below fails if tower changes that output. Deposits older than the window are
    /// expired on the next deposit or withdrawal, so an idle budget may show a little more than
    /// it would give.
    pub fn available(&self) -> u64 {
        let debug = format!("{:?}", self.inner);
        let balance: i64 = debug
            .split("balance: ")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !(c.is_ascii_digit() || c == '-')).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // What one retry costs, as tower computes it.
        let ratio = f64::from_bits(self.settings.2) as f32;
        let cost = if ratio == 0.0 { 1 } else { ((1.0 / ratio) as i64).max(1) };
        (balance.max(0) / cost) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn withdrawals(b: &RetryBudget) -> usize {
        (0..10_000).take_while(|_| b.withdraw()).count()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded_by_the_ratio_of_requests() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.2);
        for _ in 0..100 {
            b.deposit();
        }
        let n = withdrawals(&b);
        assert!((19..=21).contains(&n), "0.2 × 100 requests allows about 20 retries, got {n}");
    }

    #[tokio::test(start_paused = true)]
    async fn min_per_second_allows_retries_without_traffic() {
        let b = RetryBudget::new(Duration::from_secs(10), 10, 0.0);
        let n = withdrawals(&b);
        assert!((90..=101).contains(&n), "10/s over a 10s window, got {n}");
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let b = RetryBudget::new(Duration::from_secs(2), 0, 1.0);
        for _ in 0..50 {
            b.deposit();
        }
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(withdrawals(&b), 0, "old requests no longer pay for retries");
    }

    #[tokio::test(start_paused = true)]
    async fn available_counts_the_retries_left_without_taking_any() {
        let b = RetryBudget::new(Duration::from_secs(10), 1, 0.25);
        assert_eq!(b.available(), 10, "1/s over 10 s with no traffic");
        for _ in 0..40 {
            b.deposit();
        }
        assert_eq!(b.available(), 20, "and a quarter of 40 requests");
        assert_eq!(b.available(), 20, "reading takes nothing");
        let taken = withdrawals(&b);
        assert_eq!(taken, 20, "available is what withdraw gives");
        assert_eq!(b.available(), 0);
        assert_eq!(b.settings(), (Duration::from_secs(10), 1, 0.25));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_ratio_and_zero_minimum_allow_nothing() {
        let b = RetryBudget::new(Duration::from_secs(10), 0, 0.0);
        b.deposit();
        assert!(!b.withdraw());
    }
}
