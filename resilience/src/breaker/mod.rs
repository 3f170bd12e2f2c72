//! Circuit breakers: stop calling what is failing, and fail fast instead.
//!
//! The classic states, defined once here:
//! - **Closed** admits every call and watches outcomes;
//! - **Open** rejects every call without trying it (`CircuitOpen`), for `open_duration`;
//! - **HalfOpen** lets `half_open_probes` calls through to test recovery: if all succeed the
//!   breaker closes, on the first failure it opens again for twice as long (±10% jitter, up to
//!   `max_open_duration`), so a dependency that stays down is probed less and less often.
//!
//! It trips on either rule: `consecutive_failures` in a row, or a failure rate of at least
//! `threshold` over a sliding `window` once `minimum_requests` were seen.
//!
//! As in linkerd2-proxy, the state machine is a task — an `async fn` per state, fed over a
//! channel — and the request path only reads the published state and takes a probe permit in
//! HalfOpen, so it never waits on a lock. While Closed, calls count their own outcomes in
//! atomics and message the task only when they cross a trip rule: a healthy service costs no
//! message and no task wake-up per call. A closed channel (every handle dropped, e.g. after a
//! reload that changed the settings) stops the task.
//!
//! No report is ever dropped: the channel is unbounded, and bounded by construction instead —
//! at most one trip report is pending per Closed period (a flag in [`Counts`]), and a probe
//! report is sent once per probe permit the half-open state handed out. (An earlier bounded
//! queue with `try_send` could lose a probe's outcome under a burst of late trip reports and
//! leave the breaker half-open with no probe slot left.)

mod layer;
mod machine;
mod window;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Semaphore, mpsc, watch};

pub use self::{
    layer::{CircuitBreakerLayer, CircuitBreakerService},
    machine::Settings,
};

/// The breaker refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker is open")]
pub struct CircuitOpen;

/// A breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum State {
    /// Admits calls.
    Closed,
    /// Lets a few probes through.
    HalfOpen,
    /// Rejects calls.
    Open,
}

impl State {
    /// The `breakwater_breaker_state` gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }

    /// Lower-case name for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half-open",
            Self::Open => "open",
        }
    }
}

/// What the breaker publishes for the request path and `/breakers`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Published {
    /// Current state.
    pub state: State,
    /// Failures in a row so far (Closed).
    pub consecutive_failures: u32,
    /// Calls and failures in the sliding window (Closed).
    pub window_calls: u64,
    /// Failures in the sliding window.
    pub window_failures: u64,
    /// How many times it opened.
    pub trips: u64,
    /// How long the current (or next) open period lasts, in milliseconds.
    pub open_duration_ms: u64,
    #[serde(skip)]
    probes: Option<Arc<Semaphore>>,
}

/// What calls tell the state machine. While Closed, outcomes are counted on the request path
/// ([`Counts`]) and only a trip is sent, so a healthy service costs no message per call.
#[derive(Debug, Clone)]
enum Report {
    /// A call's outcome crossed a trip rule in Closed period `generation`. `span` is that
    /// call's span, kept open until the machine has recorded the state change on it.
    Trip { generation: u64, span: tracing::Span },
    /// A half-open probe finished.
    Probe { failed: bool, span: tracing::Span },
    /// A call ended without an outcome (cancelled): a half-open probe slot is given back.
    Cancelled { probe: bool },
}

/// Closed-state counters, updated by the calls themselves.
#[derive(Debug)]
pub(crate) struct Counts {
    consecutive: AtomicU32,
    window: window::Window,
    /// Bumped each time the breaker (re)enters Closed: outcomes of calls admitted before are
    /// ignored.
    generation: AtomicU64,
    /// A trip report is on its way (or the breaker already left Closed): no other is sent
    /// until the breaker is Closed again.
    trip_sent: AtomicBool,
}

impl Counts {
    fn reset(&self) {
        self.consecutive.store(0, Ordering::Release);
        self.window.clear();
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.trip_sent.store(false, Ordering::Release);
    }
}

/// A handle to one breaker; cheap to clone.
#[derive(Clone)]
pub struct Breaker {
    state: watch::Receiver<Published>,
    reports: mpsc::UnboundedSender<Report>,
    settings: Settings,
    counts: Arc<Counts>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("state", &self.state.borrow().state).finish_non_exhaustive()
    }
}

/// Admission to one call; report its outcome with [`Permit::record`]. Dropping it unreported
/// counts as a cancelled call.
#[derive(Debug)]
pub struct Permit {
    reports: Option<mpsc::UnboundedSender<Report>>,
    probe: bool,
    counts: Arc<Counts>,
    settings: Settings,
    generation: u64,
}

impl Permit {
    /// Reports the call's outcome: `failed` when it counts as a failure for this breaker.
    pub fn record(mut self, failed: bool) {
        let Some(tx) = self.reports.take() else { return };
        if self.probe {
            // An error only means the machine is gone (every handle dropped).
            let _ = tx.send(Report::Probe { failed, span: tracing::Span::current() });
            return;
        }
        let c = &self.counts;
        if c.generation.load(Ordering::Acquire) != self.generation {
            return; // admitted before the breaker last opened: says nothing about now
        }
        c.window.record(failed);
        let run = if failed {
            c.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            c.consecutive.store(0, Ordering::Release);
            // A success cannot complete a run of failures, but it can complete the minimum
            // number of calls the failure-rate rule waits for.
            if self.settings.failure_rate.is_none() {
                return;
            }
            0
        };
        if self.settings.trips(run, || c.window.totals()) && !c.trip_sent.swap(true, Ordering::AcqRel) {
            let _ = tx.send(Report::Trip { generation: self.generation, span: tracing::Span::current() });
        }
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(tx) = self.reports.take()
            && self.probe
        {
            let _ = tx.send(Report::Cancelled { probe: true });
        }
    }
}

impl Breaker {
    /// Starts a breaker task with `settings`, telling `observer` every state change
    /// ([`Decision::BreakerMoved`](crate::Decision::BreakerMoved)).
    pub fn spawn(settings: Settings, observer: Arc<dyn crate::Observer>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let initial = Published {
            state: State::Closed,
            consecutive_failures: 0,
            window_calls: 0,
            window_failures: 0,
            trips: 0,
            open_duration_ms: u64::try_from(settings.open_duration.as_millis()).unwrap_or(u64::MAX),
            probes: None,
        };
        let counts = Arc::new(Counts {
            consecutive: AtomicU32::new(0),
            window: window::Window::new(settings.failure_rate.map_or(Duration::from_secs(10), |(_, w, _)| w)),
            generation: AtomicU64::new(0),
            trip_sent: AtomicBool::new(false),
        });
        let (state_tx, state_rx) = watch::channel(initial);
        tokio::spawn(machine::Machine::new(settings, rx, state_tx, observer, counts.clone()).run());
        Self { state: state_rx, reports: tx, settings, counts }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state.borrow().state
    }

    /// State and counts, for `/breakers`.
    pub fn snapshot(&self) -> Published {
        let mut p = self.state.borrow().clone();
        if p.state == State::Closed {
            p.consecutive_failures = self.counts.consecutive.load(Ordering::Acquire);
            (p.window_calls, p.window_failures) = self.counts.window.totals();
        }
        p
    }

    /// Whether a call would be admitted now (no probe slot is taken).
    pub fn would_admit(&self) -> bool {
        let s = self.state.borrow();
        match s.state {
            State::Closed => true,
            State::Open => false,
            State::HalfOpen => s.probes.as_ref().is_some_and(|p| p.available_permits() > 0),
        }
    }

    fn permit(&self, probe: bool) -> Permit {
        Permit {
            reports: Some(self.reports.clone()),
            probe,
            counts: self.counts.clone(),
            settings: self.settings,
            generation: self.counts.generation.load(Ordering::Acquire),
        }
    }

    /// Admits a call, or refuses it with [`CircuitOpen`].
    pub fn try_admit(&self) -> Result<Permit, CircuitOpen> {
        let probe = {
            let s = self.state.borrow();
            match s.state {
                State::Closed => false,
                State::Open => return Err(CircuitOpen),
                State::HalfOpen => {
                    let probes = s.probes.as_ref().ok_or(CircuitOpen)?;
                    probes.try_acquire().map_err(|_| CircuitOpen)?.forget();
                    true
                }
            }
        };
        Ok(self.permit(probe))
    }

    /// Admits a call whatever the state (DryRun): the outcome still drives the state machine,
    /// so what the breaker *would* do stays visible.
    pub fn admit_anyway(&self) -> Permit {
        self.try_admit().unwrap_or_else(|CircuitOpen| self.permit(false))
    }
}

#[cfg(test)]
mod tests;
