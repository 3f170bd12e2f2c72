//! Resilience mechanisms: timeouts, retries with backoff and a budget, circuit breakers and
//! bulkheads — protocol-agnostic, with no knowledge of Kubernetes or hyper.

use std::net::SocketAddr;

use breakwater_crds::EffectivePolicy;

use crate::metrics::{Direction, ServiceMetrics};

/// The runtime state of one target's policy (breakers, budget, bulkhead).
#[derive(Debug, Default)]
pub struct Resilience {}

/// A breaker's state and counts, for `/breakers`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BreakerReport {}

impl Resilience {
    /// Every breaker of this target.
    pub fn breakers(&self) -> Vec<BreakerReport> {
        Vec::new()
    }

    /// Builds the state for `policy`, reusing `prev`'s where its settings are unchanged.
    pub fn build(
        _policy: Option<&EffectivePolicy>,
        _direction: Direction,
        _endpoints: &[SocketAddr],
        _prev: Option<&Resilience>,
        _metrics: &ServiceMetrics,
    ) -> Self {
        Self {}
    }
}
