//! The breaker's state machine task: one `async fn` per state.

use std::{sync::Arc, time::Duration};

use rand::Rng;
use tokio::sync::{Semaphore, mpsc, watch};

use super::{Counts, Published, Report, State};
use crate::{Decision, Enforcement, Observer};

/// A breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Trip after this many failures in a row.
    pub consecutive_failures: Option<u32>,
    /// Trip at this failure fraction over `window`, once `minimum_requests` were seen.
    pub failure_rate: Option<(f64, Duration, u32)>,
    /// First open period.
    pub open_duration: Duration,
    /// Longest open period.
    pub max_open_duration: Duration,
    /// Calls let through while half-open.
    pub half_open_probes: u32,
}

pub(super) struct Machine {
    settings: Settings,
    reports: mpsc::UnboundedReceiver<Report>,
    publish: watch::Sender<Published>,
    observer: Arc<dyn Observer>,
    counts: Arc<Counts>,
    trips: u64,
    open_for: Duration,
    /// The span of the call that caused the pending state change (see `Report`).
    cause: Option<tracing::Span>,
}

/// What a state handler decided.
enum Next {
    Closed,
    Open,
    HalfOpen,
    /// Every handle was dropped: stop.
    Stop,
}

impl Settings {
    /// Whether a run of `consecutive` failures, or the window's `(calls, failures)`, trips.
    pub(super) fn trips(&self, consecutive: u32, window: impl FnOnce() -> (u64, u64)) -> bool {
        if self.consecutive_failures.is_some_and(|n| consecutive >= n) {
            return true;
        }
        if let Some((threshold, _, minimum)) = self.failure_rate {
            let (calls, failures) = window();
            if calls >= u64::from(minimum) && calls > 0 && failures as f64 / calls as f64 >= threshold {
                return true;
            }
        }
        false
    }
}

impl Machine {
    pub(super) fn new(
        settings: Settings,
        reports: mpsc::UnboundedReceiver<Report>,
        publish: watch::Sender<Published>,
        observer: Arc<dyn Observer>,
        counts: Arc<Counts>,
    ) -> Self {
        Self {
            settings,
            reports,
            publish,
            observer,
            counts,
            trips: 0,
            open_for: settings.open_duration,
            cause: None,
        }
    }

    pub(super) async fn run(mut self) {
        let mut next = Next::Closed;
        loop {
            next = match next {
                Next::Closed => self.closed().await,
                Next::Open => self.open().await,
                Next::HalfOpen => self.half_open().await,
                Next::Stop => return,
            };
        }
    }

    fn publish(&mut self, state: State, probes: Option<Arc<Semaphore>>) {
        let previous = self.publish.borrow().state;
        self.publish.send_replace(Published {
            state,
            consecutive_failures: 0,
            window_calls: 0,
            window_failures: 0,
            trips: self.trips,
            open_duration_ms: u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX),
            probes,
        });
        if previous != state {
            self.observer.decided(Decision::BreakerMoved(state), Enforcement::Enforce);
            if let Some(span) = &self.cause {
                tracing::debug!(parent: span, from = previous.as_str(), to = state.as_str(), "circuit breaker changed state");
            }
        }
        self.cause = None;
    }

    /// Closed: admit everything; calls count their outcomes and report a trip.
    async fn closed(&mut self) -> Next {
        // The counts start empty; after a trip they restart from zero, in a new generation.
        if self.trips > 0 {
            self.counts.reset();
        }
        self.publish(State::Closed, None);
        loop {
            // A closed channel means every handle is gone.
            let Some(report) = self.reports.recv().await else { return Next::Stop };
            // A trip reported in an earlier Closed period (a late call racing the reset) is stale.
            if let Report::Trip { generation, span } = report
                && generation == self.counts.generation.load(std::sync::atomic::Ordering::Acquire)
            {
                self.cause = Some(span);
                self.trips += 1;
                return Next::Open;
            }
            // Late probe outcomes and cancellations say nothing while Closed.
        }
    }

    /// Open: refuse everything for the open period, then probe.
    async fn open(&mut self) -> Next {
        self.publish(State::Open, None);
        let jitter = rand::rng().random_range(0.9..=1.1);
        let wait = self.open_for.mul_f64(jitter).min(self.settings.max_open_duration);
        let until = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                // The open period is over: let probes through.
                _ = tokio::time::sleep_until(until) => return Next::HalfOpen,
                // Late trips and outcomes are drained; a closed channel means stop.
                r = self.reports.recv() => if r.is_none() { return Next::Stop },
            }
        }
    }

    /// HalfOpen: let `half_open_probes` calls through; all succeed → Closed, one fails → Open
    /// for longer.
    async fn half_open(&mut self) -> Next {
        let probes = Arc::new(Semaphore::new(self.settings.half_open_probes as usize));
        self.publish(State::HalfOpen, Some(probes.clone()));
        let mut successes = 0;
        loop {
            // A closed channel means every handle is gone.
            let Some(report) = self.reports.recv().await else { return Next::Stop };
            match report {
                Report::Probe { failed: false, span } => {
                    successes += 1;
                    if successes >= self.settings.half_open_probes {
                        self.cause = Some(span);
                        self.open_for = self.settings.open_duration;
                        return Next::Closed;
                    }
                }
                Report::Probe { failed: true, span } => {
                    self.cause = Some(span);
                    self.trips += 1;
                    self.open_for = (self.open_for * 2).min(self.settings.max_open_duration);
                    return Next::Open;
                }
                // A probe that never finished: give its slot back.
                Report::Cancelled { probe: true } => probes.add_permits(1),
                // Trips from calls admitted before the breaker opened say nothing about now.
                Report::Cancelled { probe: false } | Report::Trip { .. } => {}
            }
        }
    }
}
