//! Resilience mechanisms: timeouts, retries with backoff and a budget, circuit breakers and
//! bulkheads — protocol-agnostic tower layers and state machines, with no knowledge of
//! Kubernetes or hyper. `proxy::forward` composes them for HTTP; `proxy::tcp` uses the
//! breaker and the connection limit for opaque TCP.
//!
//! [`Resilience`] is one target's runtime state, built from its effective policy. It is
//! rebuilt on every configuration change but takes over the previous state whenever the
//! settings it depends on are unchanged, so a reload neither resets an open breaker nor
//! refills a spent retry budget.

pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod outcome;
pub mod retry;
pub mod timeout;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use breakwater_crds::{BreakerScope, EffectiveBulkheadLimits, EffectivePolicy, FailureCondition, Mode};
use tokio::sync::Semaphore;

use self::{
    breaker::{Breaker, State},
    budget::RetryBudget,
    bulkhead::{Bulkhead, BulkheadFull, Limits},
};
use crate::metrics::{Direction, ServiceMetrics};

/// Circuit breakers of a target.
#[derive(Debug, Clone)]
pub enum Breakers {
    /// One for the whole Service.
    Service(Breaker),
    /// One per endpoint, in the target's endpoint order.
    Endpoint(Vec<(SocketAddr, Breaker)>),
}

/// A cap on connections, shared by a target's endpoints.
#[derive(Debug, Clone)]
pub struct ConnectionLimit {
    /// The cap.
    pub max: u32,
    /// One permit per open connection.
    pub permits: Arc<Semaphore>,
}

/// One target's resilience state.
#[derive(Debug)]
pub struct Resilience {
    /// `false` in DryRun: decisions are reported, never enforced.
    pub enforce: bool,
    /// Retry settings and budget.
    pub retry: Option<(Arc<retry::Settings>, Arc<RetryBudget>)>,
    /// Which outcomes count as failures for the breakers.
    pub fail_on: Vec<FailureCondition>,
    /// Circuit breakers.
    pub breakers: Option<Breakers>,
    /// The bulkhead for this direction.
    pub bulkhead: Option<Arc<Bulkhead>>,
    /// The connection cap for this direction.
    pub connections: Option<ConnectionLimit>,
    /// Metric handles (and trace events) for every decision.
    pub observer: Arc<Observer>,
}

/// A breaker's report for `/breakers`.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BreakerReport {
    /// The endpoint, or `*` for a Service-wide breaker.
    pub endpoint: String,
    /// State and counts.
    #[serde(flatten)]
    pub published: breaker::Published,
}

fn breaker_settings(p: &breakwater_crds::EffectiveCircuitBreaker) -> breaker::Settings {
    breaker::Settings {
        consecutive_failures: p.consecutive_failures,
        failure_rate: p.failure_rate.as_ref().map(|f| (f.threshold, f.window, f.minimum_requests)),
        open_duration: p.open_duration,
        max_open_duration: p.max_open_duration,
        half_open_probes: p.half_open_probes,
    }
}

impl Resilience {
    /// Builds the state for `policy` in `direction`, reusing `prev`'s where settings match.
    /// Inbound, only the bulkhead and the connection cap apply: retries and breakers are the
    /// callers' business.
    pub fn build(
        policy: Option<&EffectivePolicy>,
        direction: Direction,
        endpoints: &[SocketAddr],
        prev: Option<&Resilience>,
        metrics: &ServiceMetrics,
    ) -> Self {
        let observer = Arc::new(Observer { metrics: metrics.clone() });
        let nothing = Self {
            enforce: true,
            retry: None,
            fail_on: Vec::new(),
            breakers: None,
            bulkhead: None,
            connections: None,
            observer: observer.clone(),
        };
        let Some(policy) = policy else { return nothing };
        let enforce = policy.mode == Mode::Enforce;
        let limits: Option<&EffectiveBulkheadLimits> = match direction {
            Direction::Outbound => policy.bulkhead.outbound.as_ref(),
            Direction::Inbound => policy.bulkhead.inbound.as_ref(),
        };

        let bulkhead = limits.map(|l| {
            let wanted = Limits {
                max_concurrent: l.max_concurrent_requests as usize,
                max_queued: l.max_queued as usize,
                max_queue_wait: l.max_queue_wait,
            };
            prev.and_then(|p| p.bulkhead.clone())
                .filter(|b| b.limits() == wanted)
                .unwrap_or_else(|| Arc::new(Bulkhead::new(wanted)))
        });
        let connections = limits.and_then(|l| l.max_connections).map(|max| {
            prev.and_then(|p| p.connections.clone())
                .filter(|c| c.max == max)
                .unwrap_or_else(|| ConnectionLimit { max, permits: Arc::new(Semaphore::new(max as usize)) })
        });
        if direction == Direction::Inbound {
            return Self { enforce, bulkhead, connections, ..nothing };
        }

        let retry = policy.retries.as_ref().map(|r| {
            let settings = Arc::new(retry::Settings {
                attempts: r.attempts,
                conditions: r.conditions.clone(),
                statuses: r.http_status_codes.clone(),
                grpc_codes: r.grpc_codes.iter().map(|c| c.code()).collect(),
                backoff: retry::Backoff { base: r.backoff_base, max: r.backoff_max, jitter: r.jitter },
                max_depth: r.max_retry_depth,
            });
            let budget = prev
                .and_then(|p| p.retry.as_ref())
                .map(|(_, b)| b.clone())
                .filter(|b| b.same_settings(r.budget_window, r.budget_min_per_second, r.budget_ratio))
                .unwrap_or_else(|| {
                    Arc::new(RetryBudget::new(r.budget_window, r.budget_min_per_second, r.budget_ratio))
                });
            (settings, budget)
        });

        let breakers = policy.circuit_breaker.as_ref().map(|b| {
            let settings = breaker_settings(b);
            let reuse = |addr: Option<SocketAddr>| -> Option<Breaker> {
                match prev.and_then(|p| p.breakers.as_ref())? {
                    Breakers::Service(old) if addr.is_none() => Some(old.clone()),
                    Breakers::Endpoint(old) => {
                        old.iter().find(|(a, _)| Some(*a) == addr).map(|(_, br)| br.clone())
                    }
                    Breakers::Service(_) => None,
                }
                .filter(|old| *old.settings() == settings)
            };
            let spawn = |label: String| {
                let m = metrics.clone();
                m.breaker_state(&label, 0);
                Breaker::spawn(
                    settings,
                    Arc::new(move |state: State| {
                        m.breaker_state(&label, state.gauge());
                        m.breaker_transition(state.as_str());
                        tracing::info!(service = m.service(), endpoint = %label, to = state.as_str(), "circuit breaker changed state");
                    }),
                )
            };
            match b.scope {
                BreakerScope::Service => Breakers::Service(reuse(None).unwrap_or_else(|| spawn("*".to_owned()))),
                BreakerScope::Endpoint => Breakers::Endpoint(
                    endpoints
                        .iter()
                        .map(|a| (*a, reuse(Some(*a)).unwrap_or_else(|| spawn(a.to_string()))))
                        .collect(),
                ),
            }
        });

        Self {
            enforce,
            retry,
            fail_on: policy.circuit_breaker.as_ref().map(|b| b.fail_on.clone()).unwrap_or_default(),
            breakers,
            bulkhead,
            connections,
            observer,
        }
    }

    /// Every breaker of this target, for `/breakers`.
    pub fn breakers(&self) -> Vec<BreakerReport> {
        match &self.breakers {
            None => Vec::new(),
            Some(Breakers::Service(b)) => {
                vec![BreakerReport { endpoint: "*".into(), published: b.snapshot() }]
            }
            Some(Breakers::Endpoint(list)) => list
                .iter()
                .map(|(a, b)| BreakerReport { endpoint: a.to_string(), published: b.snapshot() })
                .collect(),
        }
    }

    /// The endpoint breaker at `index`, when breakers are per endpoint.
    pub fn endpoint_breaker(&self, index: usize) -> Option<&Breaker> {
        match &self.breakers {
            Some(Breakers::Endpoint(list)) => list.get(index).map(|(_, b)| b),
            _ => None,
        }
    }
}

/// Reports every decision as metrics and as `tracing` events (which become span events when
/// tracing is exported).
#[derive(Debug)]
pub struct Observer {
    /// Metric handles.
    pub metrics: ServiceMetrics,
}

impl retry::RetryObserver for Observer {
    fn retrying(&self, reason: &'static str, attempt: u32, backoff: Duration) {
        self.metrics.retry(reason);
        tracing::debug!(
            service = self.metrics.service(),
            reason,
            attempt,
            backoff_ms = backoff.as_millis() as u64,
            "retry scheduled"
        );
    }

    fn skipped(&self, why: &'static str) {
        self.metrics.retry_skipped(why);
        tracing::debug!(service = self.metrics.service(), why, "retryable failure not retried");
    }

    fn budget_exhausted(&self) {
        self.metrics.budget_exhausted();
        tracing::debug!(service = self.metrics.service(), "retry budget exhausted");
    }

    fn would(&self, decision: &'static str, reason: &'static str) {
        self.metrics.dryrun(decision);
        tracing::debug!(service = self.metrics.service(), decision, reason, "dry run: would have acted");
    }
}

impl bulkhead::layer::BulkheadObserver for Observer {
    fn rejected(&self, why: &BulkheadFull, enforced: bool) {
        if enforced {
            self.metrics.bulkhead_rejected();
            tracing::debug!(service = self.metrics.service(), %why, "bulkhead rejected the call");
        } else {
            self.metrics.dryrun("bulkhead-full");
            tracing::debug!(service = self.metrics.service(), %why, "dry run: bulkhead would have rejected the call");
        }
    }

    fn queued(&self) {
        tracing::debug!(service = self.metrics.service(), "bulkhead full: queued");
    }

    fn admitted_after(&self, waited: Duration) {
        self.metrics.bulkhead_waited(waited.as_secs_f64());
        tracing::debug!(
            service = self.metrics.service(),
            waited_ms = waited.as_millis() as u64,
            "admitted after waiting in the bulkhead queue"
        );
    }
}

impl timeout::TimeoutObserver for Observer {
    fn timed_out(&self, limit: Duration, enforced: bool) {
        if enforced {
            self.metrics.timeout("request");
            tracing::debug!(
                service = self.metrics.service(),
                limit_ms = limit.as_millis() as u64,
                "request timeout fired"
            );
        } else {
            self.metrics.dryrun("timeout");
            tracing::debug!(
                service = self.metrics.service(),
                limit_ms = limit.as_millis() as u64,
                "dry run: request timeout would have fired"
            );
        }
    }
}
