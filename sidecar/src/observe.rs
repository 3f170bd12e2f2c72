//! The one observer of resilience decisions: each [`Decision`] becomes a metric and a debug
//! line (a span event when the call is traced). In DryRun, a decision that would have changed
//! the call is counted in `breakwater_dryrun_decisions_total` under its action's name, and
//! nothing else happens.

use breakwater_resilience::{Deadline, Decision, Enforcement};

use crate::metrics::ServiceMetrics;

/// Reports one target's decisions (and, for a breaker, which endpoint it guards).
#[derive(Debug, Clone)]
pub struct Observer {
    metrics: ServiceMetrics,
    /// The endpoint a breaker guards, or `*` for a Service-wide one.
    breaker: Option<String>,
}

impl Observer {
    /// The observer of a target's decisions.
    pub fn new(metrics: ServiceMetrics) -> Self {
        Self { metrics, breaker: None }
    }

    /// The observer of the breaker that guards `endpoint` (`*`: the whole Service). Its state
    /// gauge is read at scrape (`Metrics::breakers`).
    pub fn for_breaker(metrics: ServiceMetrics, endpoint: String) -> Self {
        Self { metrics, breaker: Some(endpoint) }
    }
}

impl breakwater_resilience::Observer for Observer {
    fn decided(&self, decision: Decision, enforcement: Enforcement) {
        let m = &self.metrics;
        let service = m.service();
        if enforcement == Enforcement::DryRun
            && let Some(action) = decision.action()
        {
            m.dryrun(action);
            let what = match decision {
                Decision::Retry { .. } => "dry run: the call would have been retried",
                Decision::BudgetExhausted { .. } => "dry run: the retry budget would have refused a retry",
                Decision::CircuitOpen => "dry run: circuit breaker would have rejected the call",
                Decision::BulkheadFull(_) => "dry run: bulkhead would have rejected the call",
                Decision::TimedOut { deadline: Deadline::Request, .. } => {
                    "dry run: request timeout would have fired"
                }
                _ => "dry run: per-try timeout would have fired",
            };
            tracing::debug!(service, decision = action, "{what}");
            return;
        }
        match decision {
            Decision::Retry { reason, attempt, backoff } => {
                m.retry(reason);
                let backoff_ms = backoff.as_millis() as u64;
                tracing::debug!(service, reason, attempt, backoff_ms, "retry scheduled");
            }
            Decision::RetrySkipped(why) => {
                m.retry_skipped(why.as_str());
                tracing::debug!(service, why = why.as_str(), "retryable failure not retried");
            }
            Decision::BudgetExhausted { reason } => {
                m.budget_exhausted();
                tracing::debug!(service, reason, "retry budget exhausted");
            }
            Decision::CircuitOpen => {
                tracing::debug!(
                    service,
                    endpoint = self.breaker.as_deref(),
                    "circuit breaker rejected the call"
                );
            }
            Decision::BreakerMoved(state) => {
                let endpoint = self.breaker.as_deref().unwrap_or("*");
                m.breaker_transition(state.as_str());
                tracing::info!(service, endpoint, to = state.as_str(), "circuit breaker changed state");
            }
            Decision::BulkheadFull(why) => {
                m.bulkhead_rejected();
                tracing::debug!(service, %why, "bulkhead rejected the call");
            }
            Decision::Queued => tracing::debug!(service, "bulkhead full: queued"),
            Decision::AdmittedAfter(waited) => {
                m.bulkhead_waited(waited.as_secs_f64());
                let waited_ms = waited.as_millis() as u64;
                tracing::debug!(service, waited_ms, "admitted after waiting in the bulkhead queue");
            }
            Decision::TimedOut { deadline, limit } => {
                let limit_ms = limit.as_millis() as u64;
                match deadline {
                    Deadline::Request => {
                        m.timeout("request");
                        tracing::debug!(service, limit_ms, "request timeout fired");
                    }
                    Deadline::PerTry => {
                        m.timeout("per_try");
                        tracing::debug!(service, limit_ms, "per-try timeout fired");
                    }
                }
            }
        }
    }
}
