//! The retry decision: whether a failed attempt is tried again, and after how long.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::Backoff;
use crate::{
    BoxError, Decision, Enforcement, Observer, Skip,
    budget::RetryBudget,
    outcome::{Conditions, Failure, Outcome},
    timeout::Timed,
};

/// Retry settings of one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Most attempts, the first included.
    pub attempts: u32,
    /// Retried failure classes.
    pub conditions: Conditions,
    /// Retried HTTP statuses.
    pub statuses: Vec<u16>,
    /// Retried gRPC codes.
    pub grpc_codes: Vec<u8>,
    /// Backoff between attempts.
    pub backoff: Backoff,
    /// Incoming retry depth at or above which we do not retry.
    pub max_depth: u32,
}

/// What the policy needs from a request (implemented by the protocol layer).
pub trait RetryRequest: Timed + Sized {
    /// A copy for the next attempt; asked for only when the request is
    /// [replayable](Self::replayable).
    fn clone_for_retry(&self) -> Self;
    /// Whether the request can be sent again (its body was small enough to keep).
    fn replayable(&self) -> bool;
    /// Whether sending it twice is safe (idempotent method, listed method, or an
    /// `Idempotency-Key`).
    fn idempotent(&self) -> bool;
    /// How many retrying sidecars this call already went through.
    fn depth(&self) -> u32;
    /// Prepares the copy as attempt `attempt` (1-based), e.g. marks it as a retry.
    fn prepare_retry(&mut self, attempt: u32);
}

/// What the policy needs from a response.
pub trait RetryResponse {
    /// How the attempt went.
    fn outcome(&self) -> Outcome;
    /// Marks the response as returned because the retry budget was spent.
    fn mark_budget_exhausted(&mut self);
}

/// What the decision reads of a call, taken from its request when it arrives (so the request
/// itself need not be kept when it cannot be sent again).
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    pub(super) idempotent: bool,
    pub(super) depth: u32,
    pub(super) replayable: bool,
    pub(super) deadline: Option<Instant>,
}

impl Facts {
    pub(super) fn of<R: RetryRequest>(req: &R) -> Self {
        Self {
            idempotent: req.idempotent(),
            depth: req.depth(),
            replayable: req.replayable(),
            deadline: req.deadline(),
        }
    }
}

/// One target's retry policy, shared by all its calls.
pub struct RetryPolicy {
    pub(super) settings: Arc<Settings>,
    pub(super) budget: Arc<RetryBudget>,
    observer: Arc<dyn Observer>,
    classify_error: fn(&BoxError) -> Outcome,
    enforcement: Enforcement,
}

impl RetryPolicy {
    /// `classify_error` says how a failed attempt (an `Err`) looks to the policy.
    pub fn new(
        settings: Arc<Settings>,
        budget: Arc<RetryBudget>,
        observer: Arc<dyn Observer>,
        classify_error: fn(&BoxError) -> Outcome,
        enforcement: Enforcement,
    ) -> Self {
        Self { settings, budget, observer, classify_error, enforcement }
    }

    /// Whether attempt `attempt` (1-based), which ended in `result`, is tried again, and after
    /// how long (see the module's list of conditions). In DryRun every decision is reported
    /// and `None` returned.
    pub(super) fn decide<Res: RetryResponse>(
        &self,
        attempt: u32,
        call: &Facts,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Duration> {
        let outcome = match result {
            Ok(r) => r.outcome(),
            Err(e) => (self.classify_error)(e),
        };
        let failure = outcome.failure?;
        let s = &self.settings;
        if !failure.matches_retry(s.conditions, &s.statuses, &s.grpc_codes) {
            return None;
        }
        if attempt >= s.attempts {
            return None;
        }
        let enforcement = self.enforcement;
        let skip = |why| {
            self.observer.decided(Decision::RetrySkipped(why), enforcement);
            None
        };
        // A gRPC code the policy lists is retryable by itself (gRPC's retry policy semantics:
        // listing `retryableStatusCodes` declares the calls safe to repeat), although every gRPC
        // call is a POST; it does not widen what is retried for plain HTTP.
        let listed_grpc_code = matches!(failure, Failure::Grpc(_));
        if failure.may_have_been_processed() && !listed_grpc_code && !call.idempotent {
            return skip(Skip::Method);
        }
        if call.depth >= s.max_depth {
            return skip(Skip::RetryDepth);
        }
        if !call.replayable {
            return skip(Skip::BodyTooLarge);
        }
        let backoff = s.backoff.delay(attempt, outcome.retry_after, &mut rand::rng());
        if call.deadline.is_some_and(|d| Instant::now() + backoff >= d) {
            return skip(Skip::Deadline);
        }
        let reason = failure.reason();
        if !self.budget.withdraw() {
            self.observer.decided(Decision::BudgetExhausted { reason }, enforcement);
            if let (Enforcement::Enforce, Ok(resp)) = (enforcement, result) {
                resp.mark_budget_exhausted();
            }
            return None;
        }
        self.observer.decided(Decision::Retry { reason, attempt: attempt + 1, backoff }, enforcement);
        enforcement.enforced().then_some(backoff)
    }
}

#[cfg(test)]
mod tests;
