//! What the mechanisms report: one [`Decision`] type, told to one [`Observer`] with the
//! [`Enforcement`] it was taken under. The sidecar's observer makes each a metric, a span event
//! and a debug line; in DryRun, the decisions that would have changed a call are counted as
//! what would have happened, under the names [`Decision::action`] gives.

use std::time::Duration;

use crate::{breaker::State, bulkhead::BulkheadFull};

/// Whether decisions act or are only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enforcement {
    /// Refuse, cut and retry as the settings say.
    #[default]
    Enforce,
    /// Evaluate everything, report what would have happened, change nothing.
    DryRun,
}

impl Enforcement {
    /// Whether decisions act.
    pub fn enforced(self) -> bool {
        self == Self::Enforce
    }

    /// `Enforce` or `DryRun`, as a policy's `spec.mode` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "Enforce",
            Self::DryRun => "DryRun",
        }
    }
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The whole call's (`timeouts.request`: every attempt and backoff included).
    Request,
    /// One attempt's (`timeouts.perTry`).
    PerTry,
}

/// Why a retryable failure was not retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The request may have been processed and is not idempotent.
    Method,
    /// A sidecar upstream already retried this call at the policy's depth limit.
    RetryDepth,
    /// The request's body was too large to keep for a replay.
    BodyTooLarge,
    /// The backoff would end after the call's deadline.
    Deadline,
}

impl Skip {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Method => "method",
            Self::RetryDepth => "retry-depth",
            Self::BodyTooLarge => "body-too-large",
            Self::Deadline => "deadline",
        }
    }
}

/// Something a mechanism decided (or, in DryRun, would have).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// A failed attempt is tried again: `attempt` (1-based) after `backoff`. `reason` is the
    /// failure's ([`crate::outcome::Failure::reason`]).
    Retry {
        /// Why the last attempt failed.
        reason: &'static str,
        /// The attempt about to be made.
        attempt: u32,
        /// The pause before it.
        backoff: Duration,
    },
    /// A retryable failure was not retried.
    RetrySkipped(Skip),
    /// The retry budget refused a retry.
    BudgetExhausted {
        /// Why the last attempt failed.
        reason: &'static str,
    },
    /// A circuit breaker refused a call.
    CircuitOpen,
    /// A circuit breaker changed state (reported the same in both modes: a DryRun breaker
    /// runs its state machine too, only its refusals are not enforced).
    BreakerMoved(State),
    /// The bulkhead refused a call.
    BulkheadFull(BulkheadFull),
    /// Every bulkhead slot was taken: the call waits in the queue.
    Queued,
    /// A call got a bulkhead slot after waiting this long.
    AdmittedAfter(Duration),
    /// A deadline passed.
    TimedOut {
        /// Which.
        deadline: Deadline,
        /// Its length.
        limit: Duration,
    },
}

impl Decision {
    /// What DryRun counts when it lets this decision pass: `retry`, `retry-budget-exhausted`,
    /// `circuit-open`, `bulkhead-full`, `timeout`, `per-try-timeout`. `None` for reports that
    /// change no call.
    pub fn action(&self) -> Option<&'static str> {
        Some(match self {
            Self::Retry { .. } => "retry",
            Self::BudgetExhausted { .. } => "retry-budget-exhausted",
            Self::CircuitOpen => "circuit-open",
            Self::BulkheadFull(_) => "bulkhead-full",
            Self::TimedOut { deadline: Deadline::Request, .. } => "timeout",
            Self::TimedOut { deadline: Deadline::PerTry, .. } => "per-try-timeout",
            Self::RetrySkipped(_) | Self::BreakerMoved(_) | Self::Queued | Self::AdmittedAfter(_) => {
                return None;
            }
        })
    }
}

/// Told about every decision.
pub trait Observer: Send + Sync {
    /// `decision` was taken under `enforcement` (in DryRun: it was only reported).
    fn decided(&self, decision: Decision, enforcement: Enforcement);
}

/// An observer that ignores everything (tests, and mechanisms used without one).
impl Observer for () {
    fn decided(&self, _: Decision, _: Enforcement) {}
}
