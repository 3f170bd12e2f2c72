//! The breaker's state machine task: one `async fn` per state.

use std::{sync::Arc, time::Duration};

use rand::Rng;
use tokio::sync::{Semaphore, mpsc, watch};

use super::{Observer, Published, Report, State, window::Window};

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
    reports: mpsc::Receiver<Report>,
    publish: watch::Sender<Published>,
    observer: Observer,
    window: Window,
    consecutive: u32,
    trips: u64,
    open_for: Duration,
    /// The span of the call whose outcome is being processed (see `Report::Done`).
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

impl Machine {
    pub(super) fn new(
        settings: Settings,
        reports: mpsc::Receiver<Report>,
        publish: watch::Sender<Published>,
        observer: Observer,
    ) -> Self {
        let window = Window::new(settings.failure_rate.map_or(Duration::from_secs(10), |(_, w, _)| w));
        Self {
            settings,
            reports,
            publish,
            observer,
            window,
            consecutive: 0,
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
        let (calls, failures) = self.window.totals();
        let previous = self.publish.borrow().state;
        self.publish.send_replace(Published {
            state,
            consecutive_failures: self.consecutive,
            window_calls: calls,
            window_failures: failures,
            trips: self.trips,
            open_duration_ms: u64::try_from(self.open_for.as_millis()).unwrap_or(u64::MAX),
            probes,
        });
        if previous != state {
            (self.observer)(state);
            if let Some(span) = &self.cause {
                tracing::debug!(parent: span, from = previous.as_str(), to = state.as_str(), "circuit breaker changed state");
            }
        }
        self.cause = None;
    }

    fn tripped(&mut self) -> bool {
        if self.settings.consecutive_failures.is_some_and(|n| self.consecutive >= n) {
            return true;
        }
        if let Some((threshold, _, minimum)) = self.settings.failure_rate {
            let (calls, failures) = self.window.totals();
            if calls >= u64::from(minimum) && calls > 0 && failures as f64 / calls as f64 >= threshold {
                return true;
            }
        }
        false
    }

    /// Closed: admit everything; count outcomes until a trip rule fires.
    async fn closed(&mut self) -> Next {
        self.consecutive = 0;
        self.window.clear();
        self.publish(State::Closed, None);
        loop {
            // A closed channel means every handle is gone.
            let Some(report) = self.reports.recv().await else { return Next::Stop };
            match report {
                Report::Done { failed: false, span, .. } => {
                    self.cause = Some(span);
                    self.consecutive = 0;
                    self.window.record(false);
                }
                Report::Done { failed: true, span, .. } => {
                    self.cause = Some(span);
                    self.consecutive += 1;
                    self.window.record(true);
                }
                Report::Cancelled { .. } => continue,
            }
            if self.tripped() {
                self.trips += 1;
                return Next::Open;
            }
            // Keep the counts on /breakers current.
            self.publish(State::Closed, None);
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
                // Outcomes of calls admitted before the trip (or DryRun calls): drained, and
                // a closed channel means stop.
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
                // Outcomes of calls admitted before the breaker opened say nothing about now.
                Report::Done { probe: false, .. } => {}
                Report::Done { failed: false, probe: true, span } => {
                    self.cause = Some(span);
                    successes += 1;
                    if successes >= self.settings.half_open_probes {
                        self.open_for = self.settings.open_duration;
                        return Next::Closed;
                    }
                }
                Report::Done { failed: true, probe: true, span } => {
                    self.cause = Some(span);
                    self.trips += 1;
                    self.open_for = (self.open_for * 2).min(self.settings.max_open_duration);
                    return Next::Open;
                }
                // A probe that never finished: give its slot back.
                Report::Cancelled { probe: true } => probes.add_permits(1),
                Report::Cancelled { probe: false } => {}
            }
            // No state change: let the call's span close.
            self.cause = None;
        }
    }
}
