//! The routing table built from a [`Config`]: which [`Target`] a request goes to, by original
//! destination or by authority, and the runtime state of each target (endpoint pools, load,
//! and — for policies — breakers, budgets and bulkheads).
//!
//! A table is immutable once built and published whole (see `store::Store`). Building a new
//! one reuses the previous table's runtime state wherever the settings it depends on did not
//! change, so a reload neither drops warm connection pools nor resets circuit breakers.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use breakwater_crds::snapshot::{
    AppliedPolicy, PortSnapshot, ServiceSnapshot,
    routes::{HttpRoutes, RouteBackend},
};

use super::{
    client::PoolSettings, detect::Declared, endpoint::Endpoint, http_route::RouteTable, stack::Stack,
    state::Resilience,
};
use crate::{
    config::{Config, ProxyLimits, ServiceKey, policy::Policy},
    metrics::{Direction, Mechanisms, Metrics, ServiceMetrics},
};

/// A Service under one policy (or none): where calls go and how they are governed.
#[derive(Debug)]
pub struct Target {
    /// The Service.
    pub service: ServiceKey,
    /// The policy in force, if any (its name and generation).
    pub policy: Option<AppliedPolicy>,
    /// The policy as compiled for this target's direction.
    pub settings: Arc<Policy>,
    /// Its endpoints.
    pub endpoints: Arc<[Arc<Endpoint>]>,
    /// Pool settings (from the policy's timeouts, or defaults).
    pub pool: PoolSettings,
    /// Metric handles.
    pub metrics: ServiceMetrics,
    /// Retries, breakers, bulkheads.
    pub resilience: Arc<Resilience>,
    /// Its request path.
    pub stack: Stack,
}

impl Target {
    pub(super) fn build(
        service: &ServiceKey,
        endpoints: &[SocketAddr],
        app_protocol: Option<&str>,
        policy: Option<&AppliedPolicy>,
        direction: Direction,
        prev: Option<&Arc<Target>>,
        metrics: &Arc<Metrics>,
    ) -> Arc<Self> {
        let settings = Arc::new(Policy::compile(policy.map(|p| &p.effective), direction));
        let pool =
            PoolSettings { connect_timeout: settings.connect_timeout, idle_timeout: settings.idle_timeout };
        let service_metrics = metrics.service(&service.to_string(), direction);
        if policy.is_some() {
            service_metrics.start_at_zero(Mechanisms {
                dry_run: !settings.enforcement.enforced(),
                retries: settings.retry.is_some(),
                breaker: settings.breaker.is_some(),
                bulkhead: settings.bulkhead.is_some() || settings.max_connections.is_some(),
                request_timeout: settings.request_timeout.is_some(),
                per_try_timeout: settings.per_try_timeout.is_some(),
                fault_delay: settings.faults.as_ref().is_some_and(|f| f.delay.is_some()),
                fault_abort: settings.faults.as_ref().is_some_and(|f| f.abort.is_some()),
            });
        }
        let resilience = Arc::new(Resilience::build(
            &settings,
            endpoints,
            prev.map(|p| p.resilience.as_ref()),
            &service_metrics,
        ));
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
        let endpoints: Arc<[Arc<Endpoint>]> = endpoints
            .iter()
            .map(|a| {
                reusable
                    .get(a)
                    .map_or_else(|| Arc::new(Endpoint::new(*a, pool, limit.clone())), |e| Arc::clone(e))
            })
            .collect();
        let version = super::speaks::Speaks::declared_by(app_protocol);
        for e in endpoints.iter() {
            e.speaks.declare(version);
        }
        let stack =
            Stack::new(settings.clone(), endpoints.clone(), resilience.clone(), service_metrics.clone());
        Arc::new(Self {
            service: service.clone(),
            policy: policy.cloned(),
            settings,
            endpoints,
            pool,
            metrics: service_metrics,
            resilience,
            stack,
        })
    }

    /// `namespace/name` of the policy, or `-`.
    pub fn policy_name(&self) -> &str {
        self.policy.as_ref().map_or("-", |p| p.name.as_str())
    }
}

/// Where calls to one Service port go: its target and, when `HTTPRoute`s are attached to it,
/// the routes HTTP requests take instead (opaque TCP still goes to the target).
#[derive(Debug, Clone)]
pub struct Destination {
    /// The port's own target.
    pub target: Arc<Target>,
    /// Its HTTP routes, if any.
    pub http: Option<Arc<Routing>>,
}

/// HTTP routes leading to targets.
pub type Routing = RouteTable<Arc<Target>>;

/// One port of a Service as `/breakers` walks it.
pub struct PortTargets<'a> {
    /// The port (`None`: the catch-all).
    pub port: Option<u16>,
    /// Its own target.
    pub target: &'a Arc<Target>,
    /// A headless Service's targets pinned to each endpoint.
    pub pinned: &'a [Arc<Target>],
    /// The targets of its HTTP routes' backends.
    pub routed: Vec<&'a Arc<Target>>,
}

/// A Service with a target per port.
#[derive(Debug)]
pub struct ServiceRoute {
    /// The Service.
    pub key: ServiceKey,
    /// Its ports, in the snapshot's order (the catch-all, if any, last).
    ports: Vec<PortRoute>,
}

/// One port of a Service: its target and, for a headless Service, one target per endpoint.
#[derive(Debug)]
struct PortRoute {
    port: Option<u16>,
    dest: Destination,
    /// Headless Services: a call to an endpoint's own address goes to that endpoint only.
    pinned: Vec<Arc<Target>>,
}

impl ServiceRoute {
    /// The target for a call to `port`: the port's own, else the catch-all. An unknown port
    /// (`None`: a `Host` without one) means the Service's only port, else the catch-all, else
    /// its first port. `None` when the Service has no such port.
    pub fn target(&self, port: Option<u16>) -> Option<&Arc<Target>> {
        self.destination(port).map(|d| &d.target)
    }

    /// [`ServiceRoute::target`] with the port's HTTP routes.
    pub fn destination(&self, port: Option<u16>) -> Option<&Destination> {
        let catch_all = || self.ports.iter().find(|p| p.port.is_none());
        let found = match port {
            Some(port) => self.ports.iter().find(|p| p.port == Some(port)).or_else(catch_all),
            None if self.ports.len() == 1 => self.ports.first(),
            None => catch_all().or_else(|| self.ports.first()),
        };
        found.map(|p| &p.dest)
    }

    /// Every target (for tests).
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.ports.iter().flat_map(|p| std::iter::once(&p.dest.target).chain(&p.pinned))
    }

    /// Every port (`None`: the catch-all) with its target, the targets pinned to each endpoint
    /// of a headless Service, and the targets of its HTTP routes' backends (for `/breakers`).
    pub fn ports(&self) -> impl Iterator<Item = PortTargets<'_>> {
        self.ports.iter().map(|p| PortTargets {
            port: p.port,
            target: &p.dest.target,
            pinned: p.pinned.as_slice(),
            routed: p.dest.http.iter().flat_map(|h| h.targets().map(|(_, t)| t)).collect(),
        })
    }

    fn build(
        s: &ServiceSnapshot,
        key: &ServiceKey,
        prev: Option<&ServiceRoute>,
        services: &[Arc<ServiceSnapshot>],
        metrics: &Arc<Metrics>,
    ) -> Self {
        let ports = s
            .ports
            .iter()
            .map(|p| {
                let prev_port = prev.and_then(|r| r.ports.iter().find(|q| q.port == p.port));
                let same_policy =
                    |t: &&Arc<Target>| t.policy_name() == p.policy.as_ref().map_or("-", |a| a.name.as_str());
                let endpoints: Vec<SocketAddr> = p.endpoints.iter().map(|e| e.address).collect();
                let target = Target::build(
                    key,
                    &endpoints,
                    p.app_protocol.as_deref(),
                    p.policy.as_ref(),
                    Direction::Outbound,
                    prev_port.map(|q| &q.dest.target).filter(same_policy),
                    metrics,
                );
                let pinned = if s.headless { pinned_targets(key, p, prev_port, metrics) } else { Vec::new() };
                let prev_http = prev_port.and_then(|q| q.dest.http.as_deref());
                let http = p.routes.as_ref().map(|r| Arc::new(route_table(r, prev_http, services, metrics)));
                PortRoute { port: p.port, dest: Destination { target, http }, pinned }
            })
            .collect();
        Self { key: key.clone(), ports }
    }
}

/// The route table of a port: each backend of each rule a target of its own (its own breaker,
/// budget and bulkhead, under the rule's policy), with the endpoints of the backend's Service
/// port from the snapshot, reusing the previous table's state for the same rule and backend.
fn route_table(
    routes: &HttpRoutes,
    prev: Option<&Routing>,
    services: &[Arc<ServiceSnapshot>],
    metrics: &Arc<Metrics>,
) -> Routing {
    let build = |rule: usize, b: &RouteBackend| {
        let r = &routes.rules[rule];
        let service =
            services.iter().find(|s| s.name == b.name && s.namespace == b.namespace).ok_or_else(|| {
                format!("Service {}.{} is not in this sidecar's configuration", b.name, b.namespace)
            })?;
        let port = service
            .ports
            .iter()
            .find(|p| p.port == Some(b.port))
            .or_else(|| service.ports.iter().find(|p| p.port.is_none()))
            .ok_or_else(|| format!("Service {}.{} has no port {}", b.name, b.namespace, b.port))?;
        let key = ServiceKey { name: b.name.clone(), namespace: b.namespace.clone() };
        let endpoints: Vec<SocketAddr> = port.endpoints.iter().map(|e| e.address).collect();
        let policy_name = r.policy.as_ref().map_or("-", |a| a.name.as_str());
        let prev =
            prev.and_then(|t| t.target_of(&r.route, &r.rule, b)).filter(|t| t.policy_name() == policy_name);
        Ok(Target::build(
            &key,
            &endpoints,
            port.app_protocol.as_deref(),
            r.policy.as_ref(),
            Direction::Outbound,
            prev,
            metrics,
        ))
    };
    RouteTable::build(routes, build).unwrap_or_else(|e| {
        // `Config::conflicts` refuses such a snapshot before it gets here.
        tracing::error!(error = %e, "routes could not be compiled; every request to this port is answered 404");
        RouteTable::empty()
    })
}

/// One target per endpoint of a headless Service's port, reusing the previous ones' state.
fn pinned_targets(
    key: &ServiceKey,
    p: &PortSnapshot,
    prev: Option<&PortRoute>,
    metrics: &Arc<Metrics>,
) -> Vec<Arc<Target>> {
    p.endpoints
        .iter()
        .map(|e| {
            let prev = prev.and_then(|q| {
                q.pinned.iter().find(|t| {
                    t.endpoints.first().map(|x| x.addr) == Some(e.address)
                        && t.policy_name() == p.policy.as_ref().map_or("-", |a| a.name.as_str())
                })
            });
            let app_protocol = p.app_protocol.as_deref();
            Target::build(
                key,
                &[e.address],
                app_protocol,
                p.policy.as_ref(),
                Direction::Outbound,
                prev,
                metrics,
            )
        })
        .collect()
}

/// Where inbound calls go: the application, at the port each call was addressed to.
#[derive(Debug)]
pub struct InboundRoute {
    /// The application's IP.
    pub app_ip: IpAddr,
    /// The port a call without an original destination goes to (the configured application's).
    pub default_port: u16,
    /// The pod's ports that Services route to, each with the inbound policy in force there.
    ports: HashMap<u16, Arc<Target>>,
    /// The protocols those ports declare.
    declared: HashMap<u16, Declared>,
}

impl InboundRoute {
    /// The target for a call to the pod's `port`; `None` for a port no Service routes to
    /// (forwarded to the application as it is).
    pub fn target(&self, port: u16) -> Option<&Arc<Target>> {
        self.ports.get(&port)
    }

    /// Every inbound target.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.ports.values()
    }

    /// Every port with its target, by port.
    pub fn ports(&self) -> Vec<(u16, &Arc<Target>)> {
        let mut ports: Vec<_> = self.ports.iter().map(|(p, t)| (*p, t)).collect();
        ports.sort_unstable_by_key(|(p, _)| *p);
        ports
    }
}

/// The complete routing table.
#[derive(Debug)]
pub struct Routes {
    by_name: HashMap<String, Arc<ServiceRoute>>,
    by_addr: HashMap<SocketAddr, Destination>,
    /// Protocols declared by Service ports, by virtual address.
    declared: HashMap<SocketAddr, Declared>,
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
        let none = Policy::default();
        let settings =
            PoolSettings { connect_timeout: none.connect_timeout, idle_timeout: none.idle_timeout };
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
        let snapshot = &config.snapshot;
        let own_ns = Some(snapshot.identity.namespace.as_str()).filter(|n| !n.is_empty());
        let mut by_name = HashMap::new();
        let mut by_addr = HashMap::new();
        let mut declared = HashMap::new();
        let mut services = Vec::new();
        for s in &snapshot.services {
            let key = ServiceKey { name: s.name.clone(), namespace: s.namespace.clone() };
            let prev_route = prev.and_then(|p| p.services.iter().find(|r| r.key == key)).map(Arc::as_ref);
            let route = Arc::new(ServiceRoute::build(s, &key, prev_route, &snapshot.services, metrics));
            let (name, ns) = (s.name.to_ascii_lowercase(), s.namespace.to_ascii_lowercase());
            for host in
                [format!("{name}.{ns}"), format!("{name}.{ns}.svc"), format!("{name}.{ns}.svc.cluster.local")]
            {
                by_name.insert(host, route.clone());
            }
            // The bare name means the Service in our own namespace when there is one.
            if own_ns.is_none_or(|o| o == s.namespace) || !by_name.contains_key(&name) {
                by_name.insert(name, route.clone());
            }
            for (p, r) in s.ports.iter().zip(&route.ports) {
                let protocol = p.app_protocol.as_deref().and_then(Declared::from_app_protocol);
                for a in &p.addresses {
                    by_addr.insert(*a, r.dest.clone());
                    if let Some(protocol) = protocol {
                        declared.insert(*a, protocol);
                    }
                }
                for t in &r.pinned {
                    if let Some(e) = t.endpoints.first() {
                        by_addr.insert(e.addr, Destination { target: t.clone(), http: None });
                    }
                }
            }
            services.push(route);
        }
        let inbound = config.inbound_app.map(|app| {
            let declared = snapshot
                .inbound
                .iter()
                .filter_map(|p| Some((p.port, Declared::from_app_protocol(p.app_protocol.as_deref()?)?)))
                .collect();
            let ports = snapshot
                .inbound
                .iter()
                .map(|p| {
                    let key = p.services.first().and_then(|s| s.split_once('.')).map_or_else(
                        || ServiceKey { name: "inbound".into(), namespace: "-".into() },
                        |(name, namespace)| ServiceKey { name: name.into(), namespace: namespace.into() },
                    );
                    let prev_target =
                        prev.and_then(|r| r.inbound.as_ref()).and_then(|r| r.ports.get(&p.port));
                    let endpoint = SocketAddr::new(app.ip(), p.port);
                    let target = Target::build(
                        &key,
                        &[endpoint],
                        p.app_protocol.as_deref(),
                        p.policy.as_ref(),
                        Direction::Inbound,
                        prev_target,
                        metrics,
                    );
                    (p.port, target)
                })
                .collect();
            InboundRoute { app_ip: app.ip(), default_port: app.port(), ports, declared }
        });
        let passthrough = prev.map_or_else(|| Arc::new(Passthrough::new(metrics)), |p| p.passthrough.clone());
        Self { by_name, by_addr, declared, services, inbound, limits: config.proxy, passthrough }
    }

    /// The protocol a connection's destination declares (a Service port's `appProtocol`), if
    /// any: outbound by the original destination, inbound by the pod's port it was sent to.
    pub fn declared(&self, direction: Direction, orig_dst: Option<SocketAddr>) -> Option<Declared> {
        match direction {
            Direction::Outbound => self.declared.get(&orig_dst?).copied(),
            Direction::Inbound => {
                let inbound = self.inbound.as_ref()?;
                inbound.declared.get(&orig_dst.map_or(inbound.default_port, |d| d.port())).copied()
            }
        }
    }

    /// The Service a request for `host` (an authority's host part, any case) goes to.
    pub fn by_host(&self, host: &str) -> Option<&Arc<ServiceRoute>> {
        let host = host.trim_end_matches('.');
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.by_name.get(&host.to_ascii_lowercase());
        }
        self.by_name.get(host)
    }

    /// Where a virtual address (a cluster IP:port, or a headless Service's endpoint) leads.
    pub fn by_addr(&self, addr: &SocketAddr) -> Option<&Destination> {
        self.by_addr.get(addr)
    }

    /// Every Service route.
    pub fn services(&self) -> &[Arc<ServiceRoute>] {
        &self.services
    }
}

#[cfg(test)]
mod tests {
    use breakwater_crds::snapshot::{EndpointSnapshot, InboundPort, Snapshot};

    use super::*;

    fn config(snapshot: Snapshot) -> Config {
        let text = "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\n\
                    inbound: {app: 127.0.0.1:8080}\nservices: []\n";
        let mut config = crate::config::compile(text).expect("a valid file");
        config.snapshot = snapshot;
        config
    }

    fn applied(name: &str) -> AppliedPolicy {
        let spec = breakwater_crds::CommunicationPolicySpec {
            target_ref: breakwater_crds::TargetRef::service("payments"),
            bulkhead: Some(breakwater_crds::Bulkhead {
                inbound: Some(breakwater_crds::BulkheadLimits {
                    max_concurrent_requests: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let effective = breakwater_crds::EffectivePolicy::resolve(&spec).expect("valid");
        AppliedPolicy { name: name.into(), generation: Some(1), effective }
    }

    #[test]
    fn inbound_ports_each_get_their_own_policy_and_others_pass_through() {
        let s = Snapshot {
            inbound: vec![
                InboundPort {
                    port: 8080,
                    services: vec!["payments.shop".into()],
                    policy: Some(applied("shop/web")),
                    app_protocol: None,
                },
                InboundPort {
                    port: 9000,
                    services: vec!["payments-admin.shop".into(), "payments-grpc.shop".into()],
                    policy: None,
                    app_protocol: None,
                },
            ],
            ..Default::default()
        };
        let routes = Routes::build(&config(s), None, &Arc::new(Metrics::new()));
        let inbound = routes.inbound.as_ref().expect("an inbound route");
        let web = inbound.target(8080).expect("port 8080 is served");
        assert_eq!(web.policy_name(), "shop/web");
        assert_eq!(web.service.to_string(), "payments.shop");
        assert_eq!(web.endpoints[0].addr, "127.0.0.1:8080".parse().expect("an address"));
        let admin = inbound.target(9000).expect("port 9000 is served");
        assert_eq!(admin.policy_name(), "-");
        assert_eq!(admin.service.to_string(), "payments-admin.shop", "the first Service names it");
        assert!(inbound.target(7000).is_none(), "a port no Service routes to passes through");
    }

    /// Declared protocols come from the Service ports' `appProtocol`: outbound by virtual
    /// address, inbound by the pod's port (the listener's default port without an original
    /// destination); an unknown name declares nothing.
    #[test]
    fn ports_declare_their_protocol_by_app_protocol() {
        let text = "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\n\
                    inbound: {app: 127.0.0.1:8080, appProtocol: kubernetes.io/h2c}\n\
                    services:\n\
                    - {name: db, ports: [5432], addresses: [198.18.0.10:5432], endpoints: [198.18.0.11:5432], appProtocol: tcp}\n\
                    - {name: web, ports: [80], addresses: [198.18.0.20:80], endpoints: [198.18.0.21:80], appProtocol: http}\n\
                    - {name: odd, ports: [81], addresses: [198.18.0.30:81], endpoints: [198.18.0.31:81], appProtocol: example.com/x}\n";
        let config = crate::config::compile(text).expect("a valid file");
        let routes = Routes::build(&config, None, &Arc::new(Metrics::new()));
        let at = |a: &str| Some(a.parse::<SocketAddr>().expect("an address"));
        assert_eq!(routes.declared(Direction::Outbound, at("198.18.0.10:5432")), Some(Declared::Opaque));
        assert_eq!(routes.declared(Direction::Outbound, at("198.18.0.20:80")), Some(Declared::Http));
        assert_eq!(routes.declared(Direction::Outbound, at("198.18.0.30:81")), None);
        assert_eq!(routes.declared(Direction::Outbound, None), None);
        assert_eq!(routes.declared(Direction::Inbound, None), Some(Declared::Http));
        assert_eq!(routes.declared(Direction::Inbound, at("198.18.0.1:8080")), Some(Declared::Http));
        assert_eq!(routes.declared(Direction::Inbound, at("198.18.0.1:9999")), None);
    }

    #[test]
    fn a_headless_service_pins_calls_to_the_endpoint_addressed() {
        let eps = ["198.18.0.5:8080", "198.18.0.6:8080"];
        let mut s = Snapshot::default();
        s.services.push(Arc::new(ServiceSnapshot {
            name: "db".into(),
            namespace: "shop".into(),
            headless: true,
            ports: vec![PortSnapshot {
                port: Some(8080),
                endpoints: eps
                    .iter()
                    .map(|e| EndpointSnapshot { address: e.parse().expect("an address"), pod: None })
                    .collect(),
                ..Default::default()
            }],
            shadowed: vec![],
        }));
        let routes = Routes::build(&config(s), None, &Arc::new(Metrics::new()));
        for e in eps {
            let addr: SocketAddr = e.parse().expect("an address");
            let target = &routes.by_addr(&addr).expect("each endpoint address is routed").target;
            assert_eq!(target.endpoints.len(), 1);
            assert_eq!(target.endpoints[0].addr, addr, "to that endpoint only");
        }
        let by_name = routes.by_host("db.shop").and_then(|r| r.target(Some(8080))).expect("by name");
        assert_eq!(by_name.endpoints.len(), 2, "by name, every endpoint");
    }
}
