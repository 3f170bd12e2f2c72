//! The retry policy for tower's `Retry`.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::Backoff;
use crate::{
    BoxError, Decision, Enforcement, Observer, Skip,
    budget::RetryBudget,
    outcome::{Conditions, Failure, Outcome},
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
pub trait RetryRequest: Sized {
    /// A copy for the next attempt. It may be marked not [replayable](Self::replayable) (its
    /// body was too large to keep), in which case it is never sent.
    fn clone_for_retry(&self) -> Self;
    /// Whether this copy can be sent.
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

/// The retry policy of one call (create one per call with [`RetryPolicy::for_call`]).
#[derive(Clone)]
pub struct RetryPolicy {
    settings: Arc<Settings>,
    budget: Arc<RetryBudget>,
    observer: Arc<dyn Observer>,
    classify_error: fn(&BoxError) -> Outcome,
    enforcement: Enforcement,
    deadline: Option<Instant>,
    /// Attempts made so far.
    attempt: u32,
}

impl RetryPolicy {
    /// The policy for one call: records the call in the budget. `deadline` is the call's
    /// overall deadline, if any.
    pub fn for_call(
        settings: Arc<Settings>,
        budget: Arc<RetryBudget>,
        observer: Arc<dyn Observer>,
        classify_error: fn(&BoxError) -> Outcome,
        enforcement: Enforcement,
        deadline: Option<Instant>,
    ) -> Self {
        budget.deposit();
        Self { settings, budget, observer, classify_error, enforcement, deadline, attempt: 1 }
    }

    fn decide<Req: RetryRequest, Res: RetryResponse>(
        &mut self,
        req: &mut Req,
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
        if self.attempt >= s.attempts {
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
        if failure.may_have_been_processed() && !listed_grpc_code && !req.idempotent() {
            return skip(Skip::Method);
        }
        if req.depth() >= s.max_depth {
            return skip(Skip::RetryDepth);
        }
        if !req.replayable() {
            return skip(Skip::BodyTooLarge);
        }
        let backoff = s.backoff.delay(self.attempt, outcome.retry_after, &mut rand::rng());
        if self.deadline.is_some_and(|d| Instant::now() + backoff >= d) {
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
        let attempt = self.attempt + 1;
        self.observer.decided(Decision::Retry { reason, attempt, backoff }, enforcement);
        if !enforcement.enforced() {
            return None;
        }
        self.attempt = attempt;
        req.prepare_retry(attempt);
        Some(backoff)
    }
}

impl<Req, Res> tower::retry::Policy<Req, Res, BoxError> for RetryPolicy
where
    Req: RetryRequest,
    Res: RetryResponse,
{
    type Future = Pin<Box<dyn Future<Output = ()> + Send>>;

    fn retry(&mut self, req: &mut Req, result: &mut Result<Res, BoxError>) -> Option<Self::Future> {
        let backoff = self.decide(req, result)?;
        Some(Box::pin(tokio::time::sleep(backoff)))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        // Without retries configured there is nothing to keep.
        (self.settings.attempts > 1).then(|| req.clone_for_retry())
    }
}

#[cfg(test)]
mod tests;
