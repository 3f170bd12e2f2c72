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
//! As in linkerd2-proxy, the state machine is a task — an `async fn` per state, fed outcomes
//! over a channel — and the request path only reads the published state and takes a probe
//! permit in HalfOpen, so it never waits on a lock. A closed channel (every handle dropped,
//! e.g. after a reload that changed the settings) stops the task.

mod layer;
mod machine;
mod window;

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
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

/// A call's report to the breaker.
#[derive(Debug, Clone)]
enum Report {
    /// A finished call; `probe` when it was admitted as a half-open probe. `span` is the
    /// call's span, kept open until the machine has seen the report, so that a state change
    /// this call caused is recorded on it.
    Done { failed: bool, probe: bool, span: tracing::Span },
    /// The call ended without an outcome (cancelled): a half-open probe slot is given back.
    Cancelled { probe: bool },
}

/// Observes state changes (metrics, logs, trace events).
pub type Observer = Arc<dyn Fn(State) + Send + Sync>;

/// A handle to one breaker; cheap to clone.
#[derive(Clone)]
pub struct Breaker {
    state: watch::Receiver<Published>,
    reports: mpsc::Sender<Report>,
    settings: Settings,
    dropped_reports: Arc<AtomicU64>,
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
    reports: Option<mpsc::Sender<Report>>,
    probe: bool,
    dropped: Arc<AtomicU64>,
}

impl Permit {
    /// Reports the call's outcome: `failed` when it counts as a failure for this breaker.
    pub fn record(mut self, failed: bool) {
        if let Some(tx) = self.reports.take()
            && tx
                .try_send(Report::Done { failed, probe: self.probe, span: tracing::Span::current() })
                .is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(tx) = self.reports.take() {
            let _ = tx.try_send(Report::Cancelled { probe: self.probe });
        }
    }
}

/// Outcomes queued for the state machine; beyond this they are dropped (and counted), never
/// waited for.
const REPORT_QUEUE: usize = 4096;

impl Breaker {
    /// Starts a breaker task with `settings`, calling `observer` on every state change.
    pub fn spawn(settings: Settings, observer: Observer) -> Self {
        let (tx, rx) = mpsc::channel(REPORT_QUEUE);
        let initial = Published {
            state: State::Closed,
            consecutive_failures: 0,
            window_calls: 0,
            window_failures: 0,
            trips: 0,
            open_duration_ms: u64::try_from(settings.open_duration.as_millis()).unwrap_or(u64::MAX),
            probes: None,
        };
        let (state_tx, state_rx) = watch::channel(initial);
        tokio::spawn(machine::Machine::new(settings, rx, state_tx, observer).run());
        Self { state: state_rx, reports: tx, settings, dropped_reports: Arc::new(AtomicU64::new(0)) }
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
        self.state.borrow().clone()
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

    /// Admits a call, or refuses it with [`CircuitOpen`].
    pub fn try_admit(&self) -> Result<Permit, CircuitOpen> {
        let s = self.state.borrow();
        let probe = match s.state {
            State::Closed => false,
            State::Open => return Err(CircuitOpen),
            State::HalfOpen => {
                let probes = s.probes.as_ref().ok_or(CircuitOpen)?;
                probes.try_acquire().map_err(|_| CircuitOpen)?.forget();
                true
            }
        };
        Ok(Permit { reports: Some(self.reports.clone()), probe, dropped: self.dropped_reports.clone() })
    }

    /// Admits a call whatever the state (DryRun): the outcome still drives the state machine,
    /// so what the breaker *would* do stays visible.
    pub fn admit_anyway(&self) -> Permit {
        self.try_admit().unwrap_or_else(|CircuitOpen| Permit {
            reports: Some(self.reports.clone()),
            probe: false,
            dropped: self.dropped_reports.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
