//! One target's resilience state — breakers, budget, bulkhead, connection cap — built from its
//! compiled [`Policy`]. Rebuilt with every configuration, it takes over the previous state
//! wherever the settings it depends on are unchanged, so a reload neither resets an open
//! breaker nor refills a spent retry budget.

use std::{net::SocketAddr, sync::Arc};

use breakwater_crds::admin;
use breakwater_resilience::{
    Enforcement, breaker::Breaker, budget::RetryBudget, bulkhead::Bulkhead, outcome::Conditions, retry,
};
use tokio::sync::Semaphore;

use crate::{config::policy::Policy, metrics::ServiceMetrics, observe::Observer};

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
    /// Whether decisions act.
    pub enforcement: Enforcement,
    /// Retry settings and budget.
    pub retry: Option<(Arc<retry::Settings>, Arc<RetryBudget>)>,
    /// Which outcomes count as failures for the breakers.
    pub fail_on: Conditions,
    /// Circuit breakers.
    pub breakers: Option<Breakers>,
    /// The bulkhead for this direction.
    pub bulkhead: Option<Arc<Bulkhead>>,
    /// The connection cap for this direction.
    pub connections: Option<ConnectionLimit>,
    /// Where every decision is reported.
    pub observer: Arc<Observer>,
}

impl Resilience {
    /// Builds the state for `policy` over `endpoints`, reusing `prev`'s where settings match.
    pub fn build(
        policy: &Policy,
        endpoints: &[SocketAddr],
        prev: Option<&Resilience>,
        metrics: &ServiceMetrics,
    ) -> Self {
        let bulkhead = policy.bulkhead.map(|wanted| {
            prev.and_then(|p| p.bulkhead.clone())
                .filter(|b| b.limits() == wanted)
                .unwrap_or_else(|| Arc::new(Bulkhead::new(wanted)))
        });
        let connections = policy.max_connections.map(|max| {
            prev.and_then(|p| p.connections.clone())
                .filter(|c| c.max == max)
                .unwrap_or_else(|| ConnectionLimit { max, permits: Arc::new(Semaphore::new(max as usize)) })
        });
        let retry = policy.retry.as_ref().map(|r| {
            let (window, min_per_second, ratio) = r.budget;
            let budget = prev
                .and_then(|p| p.retry.as_ref())
                .map(|(_, b)| b.clone())
                .filter(|b| b.same_settings(window, min_per_second, ratio))
                .unwrap_or_else(|| Arc::new(RetryBudget::new(window, min_per_second, ratio)));
            (r.settings.clone(), budget)
        });
        let breakers = policy.breaker.as_ref().map(|b| {
            let settings = b.settings;
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
                Breaker::spawn(settings, Arc::new(Observer::for_breaker(metrics.clone(), label)))
            };
            if b.per_endpoint {
                Breakers::Endpoint(
                    endpoints
                        .iter()
                        .map(|a| (*a, reuse(Some(*a)).unwrap_or_else(|| spawn(a.to_string()))))
                        .collect(),
                )
            } else {
                Breakers::Service(reuse(None).unwrap_or_else(|| spawn("*".to_owned())))
            }
        });
        Self {
            enforcement: policy.enforcement,
            retry,
            fail_on: policy.breaker.as_ref().map(|b| b.fail_on).unwrap_or_default(),
            breakers,
            bulkhead,
            connections,
            observer: Arc::new(Observer::new(metrics.clone())),
        }
    }

    /// Every breaker, the bulkhead and the retry budget as they are now, for `/breakers`.
    pub fn report(
        &self,
    ) -> (Vec<admin::BreakerState>, Option<admin::BulkheadState>, Option<admin::RetryBudgetState>) {
        let breaker = |endpoint: String, b: &Breaker| {
            let p = b.snapshot();
            admin::BreakerState {
                endpoint,
                state: format!("{:?}", p.state),
                consecutive_failures: p.consecutive_failures,
                window_calls: p.window_calls,
                window_failures: p.window_failures,
                trips: p.trips,
                open_duration_ms: p.open_duration_ms,
            }
        };
        let breakers = match &self.breakers {
            None => Vec::new(),
            Some(Breakers::Service(b)) => vec![breaker("*".into(), b)],
            Some(Breakers::Endpoint(list)) => list.iter().map(|(a, b)| breaker(a.to_string(), b)).collect(),
        };
        let bulkhead = self.bulkhead.as_ref().map(|b| {
            let limits = b.limits();
            admin::BulkheadState {
                in_flight: b.in_flight(),
                max_concurrent: limits.max_concurrent,
                queued: b.queued(),
                max_queued: limits.max_queued,
                max_queue_wait_ms: limits.max_queue_wait.as_millis() as u64,
            }
        });
        let retry_budget = self.retry.as_ref().map(|(_, budget)| {
            let (window, min_per_second, ratio) = budget.settings();
            admin::RetryBudgetState {
                ratio,
                min_per_second,
                window_seconds: window.as_secs(),
                available: budget.available(),
            }
        });
        (breakers, bulkhead, retry_budget)
    }

    /// Each breaker's endpoint (`*`: the whole Service) and state gauge (0 closed, 1 half-open,
    /// 2 open).
    pub fn breaker_gauges(&self) -> Vec<(String, i64)> {
        match &self.breakers {
            None => Vec::new(),
            Some(Breakers::Service(b)) => vec![("*".to_owned(), b.snapshot().state.gauge())],
            Some(Breakers::Endpoint(list)) => {
                list.iter().map(|(a, b)| (a.to_string(), b.snapshot().state.gauge())).collect()
            }
        }
    }

    /// The endpoint breaker at `index`, when breakers are per endpoint.
    pub fn endpoint_breaker(&self, index: usize) -> Option<&Breaker> {
        match &self.breakers {
            Some(Breakers::Endpoint(list)) => list.get(index).map(|(_, b)| b),
            _ => None,
        }
    }

    /// Whether per-endpoint breakers are enforced (then they, not the balancer's failure
    /// accrual, take failing endpoints out of the set).
    pub fn endpoint_breakers_enforced(&self) -> bool {
        self.enforcement.enforced() && matches!(self.breakers, Some(Breakers::Endpoint(_)))
    }
}
