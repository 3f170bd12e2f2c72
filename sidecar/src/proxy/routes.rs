//! The routing table built from a [`Config`]: which [`Target`] a request goes to, by original
//! destination or by authority, and the runtime state of each target (endpoint pools, load,
//! and — for policies — breakers, budgets and bulkheads).
//!
//! A table is immutable once built and published whole (see `config::Store`). Building a new
//! one reuses the previous table's runtime state wherever the settings it depends on did not
//! change, so a reload neither drops warm connection pools nor resets circuit breakers.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use breakwater_crds::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, EffectivePolicy, Mode};

use super::client::{EndpointClients, PoolSettings};
use crate::{
    config::{AppliedPolicy, Config, ProxyLimits, ServiceConfig, ServiceKey},
    metrics::{Direction, Metrics, ServiceMetrics},
    resilience::Resilience,
};

/// One endpoint of a target: its pools and its load.
#[derive(Debug)]
pub struct Endpoint {
    /// Address.
    pub addr: SocketAddr,
    /// Pooled clients.
    pub clients: EndpointClients,
    /// Requests in flight to it (the balancer's load measure).
    pub in_flight: AtomicUsize,
}

impl Endpoint {
    fn new(addr: SocketAddr, settings: PoolSettings, limit: Option<Arc<tokio::sync::Semaphore>>) -> Self {
        Self { addr, clients: EndpointClients::new(addr, settings, limit), in_flight: AtomicUsize::new(0) }
    }

    /// An endpoint outside any table, for unit tests.
    #[cfg(test)]
    pub fn new_for_test(addr: SocketAddr, settings: PoolSettings) -> Self {
        Self::new(addr, settings, None)
    }

    /// Marks a request in flight until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to an endpoint.
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A Service under one policy (or none): where calls go and how they are governed.
#[derive(Debug)]
pub struct Target {
    /// The Service.
    pub service: ServiceKey,
    /// The policy in force, if any.
    pub policy: Option<AppliedPolicy>,
    /// Its endpoints.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Pool settings (from the policy's timeouts, or defaults).
    pub pool: PoolSettings,
    /// Whole-call deadline.
    pub request_timeout: Option<Duration>,
    /// Per-attempt deadline.
    pub per_try_timeout: Option<Duration>,
    /// Metric handles.
    pub metrics: ServiceMetrics,
    /// Retries, breakers, bulkheads.
    pub resilience: Resilience,
    /// The service-scope breaker as a tower layer, built on first use (once per configuration
    /// rather than per call).
    pub service_breaker: super::forward::ServiceBreakerLayer,
}

impl Target {
    fn build(
        service: &ServiceKey,
        endpoints: &[SocketAddr],
        policy: Option<&AppliedPolicy>,
        direction: Direction,
        prev: Option<&Arc<Target>>,
        metrics: &Arc<Metrics>,
    ) -> Arc<Self> {
        let effective = policy.map(|p| &p.effective);
        let pool = PoolSettings {
            connect_timeout: effective.map_or(DEFAULT_CONNECT_TIMEOUT, |e| e.timeouts.connect),
            idle_timeout: effective.map_or(DEFAULT_IDLE_TIMEOUT, |e| e.timeouts.idle),
        };
        let service_metrics = metrics.service(&service.to_string(), direction);
        let resilience =
            Resilience::build(effective, direction, endpoints, prev.map(|p| &p.resilience), &service_metrics);
        let limit = resilience.connections.as_ref().map(|c| c.permits.clone());
        let same_limit = |p: &Target| match (&p.resilience.connections, &resilience.connections) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(&a.permits, &b.permits),
            _ => false,
        };
        // Reuse warm endpoints (pools, load) when their pool settings are unchanged.
        let reusable: HashMap<SocketAddr, &Arc<Endpoint>> = prev
            .filter(|p| p.pool == pool && same_limit(p))
            .map(|p| p.endpoints.iter().map(|e| (e.addr, e)).collect())
            .unwrap_or_default();
        let endpoints: Vec<Arc<Endpoint>> = endpoints
            .iter()
            .map(|a| {
                reusable
                    .get(a)
                    .map_or_else(|| Arc::new(Endpoint::new(*a, pool, limit.clone())), |e| Arc::clone(e))
            })
            .collect();
        Arc::new(Self {
            service: service.clone(),
            policy: policy.cloned(),
            endpoints,
            pool,
            request_timeout: effective.and_then(|e| e.timeouts.request),
            per_try_timeout: effective.and_then(|e| e.timeouts.per_try),
            metrics: service_metrics,
            resilience,
            service_breaker: Default::default(),
        })
    }

    /// The policy's effective settings, if a policy is in force.
    pub fn effective(&self) -> Option<&EffectivePolicy> {
        self.policy.as_ref().map(|p| &p.effective)
    }

    /// Whether the policy is in DryRun (decisions reported, not enforced).
    pub fn dry_run(&self) -> bool {
        self.effective().is_some_and(|e| e.mode == Mode::DryRun)
    }

    /// `namespace/name` of the policy, or `-`.
    pub fn policy_name(&self) -> &str {
        self.policy.as_ref().map_or("-", |p| p.name.as_str())
    }
}

/// A Service with its targets by port.
#[derive(Debug)]
pub struct ServiceRoute {
    /// The Service.
    pub key: ServiceKey,
    /// Ports callers use (empty: any).
    pub ports: Vec<u16>,
    /// Policies with a port filter, in precedence order.
    by_port: Vec<Arc<Target>>,
    /// The target for calls no port-filtered policy covers.
    fallback: Arc<Target>,
}

impl ServiceRoute {
    /// The target for a call to `port` (`None` when unknown).
    pub fn target(&self, port: Option<u16>) -> &Arc<Target> {
        self.by_port
            .iter()
            .find(|t| t.policy.as_ref().is_some_and(|p| p.applies_to_port(port)))
            .unwrap_or(&self.fallback)
    }

    /// Whether the Service accepts calls on `port`.
    pub fn accepts_port(&self, port: Option<u16>) -> bool {
        self.ports.is_empty() || port.is_none_or(|p| self.ports.contains(&p))
    }

    /// Every target (for `/breakers` and tests).
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.by_port.iter().chain(std::iter::once(&self.fallback))
    }

    fn build(s: &ServiceConfig, prev: Option<&ServiceRoute>, metrics: &Arc<Metrics>) -> Self {
        let find_prev = |policy: Option<&str>| {
            prev.and_then(|p| p.targets().find(|t| t.policy.as_ref().map(|p| p.name.as_str()) == policy))
        };
        let mut by_port = Vec::new();
        let mut fallback = None;
        for policy in &s.policies {
            let t = Target::build(
                &s.key,
                &s.endpoints,
                Some(policy),
                Direction::Outbound,
                find_prev(Some(&policy.name)),
                metrics,
            );
            if policy.ports.is_empty() {
                fallback = Some(t);
                break;
            }
            by_port.push(t);
        }
        let fallback = fallback.unwrap_or_else(|| {
            Target::build(&s.key, &s.endpoints, None, Direction::Outbound, find_prev(None), metrics)
        });
        Self { key: s.key.clone(), ports: s.ports.clone(), by_port, fallback }
    }
}

/// Where inbound calls go.
#[derive(Debug)]
pub struct InboundRoute {
    /// The application's address.
    pub app: SocketAddr,
    /// The app as a target, with the inbound bulkhead of the policy targeting this pod's Service.
    pub target: Arc<Target>,
}

/// The complete routing table.
#[derive(Debug)]
pub struct Routes {
    by_name: HashMap<String, Arc<ServiceRoute>>,
    by_addr: HashMap<SocketAddr, Arc<ServiceRoute>>,
    services: Vec<Arc<ServiceRoute>>,
    /// Inbound, when this pod serves an application.
    pub inbound: Option<InboundRoute>,
    /// Client-side limits.
    pub limits: ProxyLimits,
    /// Clients for destinations no Service claims (forwarded as they are, without a policy).
    pub passthrough: Arc<Passthrough>,
}

/// Pooled clients for unknown destinations, keyed by the request's own authority.
#[derive(Debug)]
pub struct Passthrough {
    /// Per-destination endpoints, created on first use.
    endpoints: arc_swap::ArcSwap<HashMap<SocketAddr, Arc<Endpoint>>>,
    metrics: ServiceMetrics,
    inbound_metrics: ServiceMetrics,
}

impl Passthrough {
    fn new(metrics: &Arc<Metrics>) -> Self {
        Self {
            endpoints: Default::default(),
            metrics: metrics.service("passthrough", Direction::Outbound),
            inbound_metrics: metrics.service("passthrough", Direction::Inbound),
        }
    }

    /// The endpoint for `addr`, created with default pool settings on first use. At most 1024
    /// are kept; past that, a fresh (unpooled) one is returned.
    pub fn endpoint(&self, addr: SocketAddr) -> Arc<Endpoint> {
        if let Some(e) = self.endpoints.load().get(&addr) {
            return e.clone();
        }
        let settings =
            PoolSettings { connect_timeout: DEFAULT_CONNECT_TIMEOUT, idle_timeout: DEFAULT_IDLE_TIMEOUT };
        let fresh = Arc::new(Endpoint::new(addr, settings, None));
        if self.endpoints.load().len() >= 1024 {
            return fresh;
        }
        self.endpoints.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(addr).or_insert_with(|| fresh.clone());
            m
        });
        self.endpoints.load().get(&addr).cloned().unwrap_or(fresh)
    }

    /// Metric handles for `direction`.
    pub fn metrics(&self, direction: Direction) -> &ServiceMetrics {
        match direction {
            Direction::Outbound => &self.metrics,
            Direction::Inbound => &self.inbound_metrics,
        }
    }
}

impl Routes {
    /// Builds the table for `config`, reusing `prev`'s runtime state where settings match.
    pub fn build(config: &Config, prev: Option<&Routes>, metrics: &Arc<Metrics>) -> Self {
        let own_ns = config.inbound.as_ref().and_then(|i| i.service.as_ref()).map(|s| s.namespace.as_str());
        let mut by_name = HashMap::new();
        let mut by_addr = HashMap::new();
        let mut services = Vec::new();
        for s in &config.services {
            let prev_route = prev.and_then(|p| p.services.iter().find(|r| r.key == s.key)).map(Arc::as_ref);
            let route = Arc::new(ServiceRoute::build(s, prev_route, metrics));
            let (name, ns) = (s.key.name.to_ascii_lowercase(), s.key.namespace.to_ascii_lowercase());
            for host in
                [format!("{name}.{ns}"), format!("{name}.{ns}.svc"), format!("{name}.{ns}.svc.cluster.local")]
            {
                by_name.insert(host, route.clone());
            }
            // The bare name means the Service in our own namespace when there is one.
            if own_ns.is_none_or(|o| o == s.key.namespace) || !by_name.contains_key(&name) {
                by_name.insert(name, route.clone());
            }
            for a in &s.addresses {
                by_addr.insert(*a, route.clone());
            }
            services.push(route);
        }
        let inbound = config.inbound.as_ref().map(|i| {
            let key =
                i.service.clone().unwrap_or(ServiceKey { name: "inbound".into(), namespace: "-".into() });
            let prev_target = prev.and_then(|p| p.inbound.as_ref()).map(|r| &r.target);
            let target =
                Target::build(&key, &[i.app], i.policy.as_ref(), Direction::Inbound, prev_target, metrics);
            InboundRoute { app: i.app, target }
        });
        let passthrough = prev.map_or_else(|| Arc::new(Passthrough::new(metrics)), |p| p.passthrough.clone());
        Self { by_name, by_addr, services, inbound, limits: config.proxy, passthrough }
    }

    /// The Service a request for `host` (an authority's host part, any case) goes to.
    pub fn by_host(&self, host: &str) -> Option<&Arc<ServiceRoute>> {
        let host = host.trim_end_matches('.');
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_name.get(&host.to_ascii_lowercase());
        }
        self.by_name.get(host)
    }

    /// The Service owning a virtual address.
    pub fn by_addr(&self, addr: &SocketAddr) -> Option<&Arc<ServiceRoute>> {
        self.by_addr.get(addr)
    }

    /// Every Service route.
    pub fn services(&self) -> &[Arc<ServiceRoute>] {
        &self.services
    }
}
