//! Turning a local-mode file into a [`Config`]: strict parsing, the same `validate()` the API
//! server's rules mirror, address resolution, and policy precedence — every problem collected,
//! so `breakwater-sidecar validate` prints them all at once.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, ToSocketAddrs},
    time::Duration,
};

use breakwater_crds::{
    CommunicationPolicy,
    gateway::{self, HTTPRoute},
    load,
    snapshot::{
        AppliedPolicy, EndpointSnapshot, Identity, InboundPort, PortSnapshot, ServiceSnapshot, Snapshot,
        routes,
        select::{self, ServiceRef},
    },
};
use serde::Serialize;

use super::model::{self, SidecarConfig};

/// A Service by `name.namespace`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServiceKey {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// Listener addresses, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ListenerAddrs {
    /// Outbound.
    pub outbound: SocketAddr,
    /// Inbound, when an application is configured.
    pub inbound: Option<SocketAddr>,
    /// Admin.
    pub admin: SocketAddr,
}

/// Proxy limits, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyLimits {
    /// Protocol detection timeout.
    #[serde(with = "humantime_serde")]
    pub detect_timeout: Duration,
    /// Header read timeout.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Header count limit.
    pub max_headers: usize,
    /// Header bytes limit.
    pub max_header_bytes: usize,
    /// Client idle timeout.
    #[serde(with = "humantime_serde")]
    pub client_idle_timeout: Duration,
}

mod humantime_serde {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// A complete, valid configuration: this sidecar's own settings, and the snapshot it enforces.
///
/// The settings (listeners, limits, telemetry, the application's address) belong to the sidecar
/// and come from its file or flags; the [`Snapshot`] is what a file's Services and policies
/// compile to here, and what the operator will stream in a cluster — one type, so both are
/// enforced by the same code.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Listener addresses.
    pub listeners: ListenerAddrs,
    /// Proxy limits.
    pub proxy: ProxyLimits,
    /// The `telemetry` section.
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
    /// Where the application listens (inbound calls go to this IP, at the port they were
    /// addressed to); `None` without an inbound listener.
    pub inbound_app: Option<SocketAddr>,
    /// What this sidecar enforces.
    pub snapshot: Snapshot,
    /// Settings of its policies that are valid but can never take effect, one line each
    /// (document and field first).
    pub warnings: Vec<String>,
}

impl Config {
    /// The name spans carry when nothing else names them: the Service this pod serves.
    pub fn default_service_name(&self) -> String {
        self.snapshot
            .inbound
            .iter()
            .flat_map(|p| p.services.first())
            .next()
            .and_then(|s| s.split('.').next())
            .map_or_else(|| "breakwater-sidecar".to_owned(), str::to_owned)
    }

    /// This pod's name and namespace, when the file (or the operator) names the pod.
    pub fn pod(&self) -> (Option<&str>, Option<&str>) {
        let id = &self.snapshot.identity;
        match id.name.as_str() {
            "" => (None, None),
            name => (Some(name), Some(id.namespace.as_str())),
        }
    }

    /// What in the snapshot this sidecar cannot enforce: an inbound port that is one of the
    /// proxy's own listeners (calls to it would loop back into the proxy).
    pub fn conflicts(&self) -> Vec<String> {
        if self.inbound_app.is_none() {
            return Vec::new();
        }
        let l = &self.listeners;
        let own = [("admin", Some(l.admin)), ("outbound", Some(l.outbound)), ("inbound", l.inbound)];
        let mut out = Vec::new();
        for p in &self.snapshot.inbound {
            for (name, addr) in own {
                if addr.is_some_and(|a| a.port() != 0 && a.port() == p.port) {
                    out.push(format!(
                        "inbound port {} ({}) is this proxy's own {name} listener: calls to it would loop \
                         through the proxy; give the Service another targetPort",
                        p.port,
                        p.services.join(", ")
                    ));
                }
            }
        }
        out
    }

    /// How many `HTTPRoute` rules the snapshot's ports carry (a rule attached to several
    /// ports counts once per port).
    pub fn route_rules(&self) -> usize {
        let ports = self.snapshot.services.iter().flat_map(|s| &s.ports);
        ports.filter_map(|p| p.routes.as_ref()).map(|r| r.rules.len()).sum()
    }

    /// How many Services and policy attachments (ports with a policy) the snapshot holds.
    pub fn counts(&self) -> (usize, usize) {
        let services = self.snapshot.services.len();
        let attachments =
            self.snapshot.services.iter().flat_map(|s| &s.ports).filter(|p| p.policy.is_some()).count();
        (services, attachments)
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    /// One line per problem, each naming its document and field.
    pub problems: Vec<String>,
}

/// What [`check`] found in a file that may hold only policies.
#[derive(Debug, Clone, PartialEq)]
pub enum Checked {
    /// A complete sidecar configuration.
    Sidecar(Box<Config>),
    /// Only `CommunicationPolicy` documents (what a team keeps in Git and applies to a
    /// cluster): how many, and the warnings about them (see [`Config::warnings`]).
    Policies(usize, Vec<String>),
}

/// Validates a file for `breakwater-sidecar validate`: a full sidecar configuration, or a
/// file of policies only.
pub fn check(text: &str) -> Result<Checked, ConfigError> {
    let docs = load::documents(text).map_err(|e| ConfigError { problems: vec![e.to_string()] })?;
    if docs.iter().any(|d| d.is(model::KIND)) {
        return compile(text).map(|c| Checked::Sidecar(Box::new(c)));
    }
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    for doc in &docs {
        if doc.kind == "CommunicationPolicy" {
            match load::policy(&doc.value) {
                Ok(policy) => warnings.extend(policy_warnings(doc, &policy)),
                Err(errors) => problems.extend(errors.iter().map(|e| format!("{}: {e}", doc.describe()))),
            }
        } else if is_http_route(doc) {
            if let Err(errors) =
                load::from_value_strict::<HTTPRoute>(&doc.value).and_then(|r| gateway::validate(&r))
            {
                problems.extend(errors.iter().map(|e| format!("{}: {e}", doc.describe())));
            }
        } else {
            problems.push(format!(
                "{}: not a CommunicationPolicy, HTTPRoute or SidecarConfig (apiVersion {:?}, kind {:?})",
                doc.describe(),
                doc.api_version,
                doc.kind
            ));
        }
    }
    if docs.is_empty() {
        problems.push("the file holds no documents".to_owned());
    }
    if problems.is_empty() {
        Ok(Checked::Policies(docs.len(), warnings))
    } else {
        Err(ConfigError { problems })
    }
}

/// [`breakwater_crds::warnings`] of one policy document, as lines naming the document.
fn policy_warnings(doc: &load::Document, policy: &CommunicationPolicy) -> Vec<String> {
    breakwater_crds::warnings(&policy.spec).iter().map(|w| format!("{}: {w}", doc.describe())).collect()
}

/// Parses and validates a local-mode file. Every problem is reported.
pub fn compile(text: &str) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let docs = load::documents(text).map_err(|e| ConfigError { problems: vec![e.to_string()] })?;

    let mut sidecar: Option<SidecarConfig> = None;
    let mut policies: Vec<CommunicationPolicy> = Vec::new();
    let mut http_routes: Vec<(String, HTTPRoute)> = Vec::new();
    let mut warnings = Vec::new();
    for doc in &docs {
        if is_http_route(doc) {
            match load::from_value_strict::<HTTPRoute>(&doc.value)
                .and_then(|r| gateway::validate(&r).map(|()| r))
            {
                Ok(r) => http_routes.push((doc.describe(), r)),
                Err(errors) => problems.extend(errors.iter().map(|e| format!("{}: {e}", doc.describe()))),
            }
        } else if doc.is(model::KIND) {
            match load::from_value_strict::<SidecarConfig>(&doc.value) {
                Ok(c) if sidecar.is_none() => sidecar = Some(c),
                Ok(_) => {
                    problems.push(format!("{}: only one SidecarConfig document is allowed", doc.describe()))
                }
                Err(errors) => problems.extend(errors.iter().map(|e| format!("{}: {e}", doc.describe()))),
            }
        } else if doc.kind == "CommunicationPolicy" {
            match load::policy(&doc.value) {
                Ok(p) => {
                    warnings.extend(policy_warnings(doc, &p));
                    policies.push(p);
                }
                Err(errors) => problems.extend(errors.iter().map(|e| format!("{}: {e}", doc.describe()))),
            }
        } else {
            problems.push(format!(
                "{}: unknown document: expected apiVersion breakwater.dev/v1alpha1 and kind \
                 CommunicationPolicy or SidecarConfig, or gateway.networking.k8s.io/v1 HTTPRoute, got {:?} \
                 {:?}",
                doc.describe(),
                doc.api_version,
                doc.kind
            ));
        }
    }
    let sidecar = sidecar.unwrap_or_else(|| {
        problems.push(
            "no SidecarConfig document: the file must say where to listen and which Services exist".into(),
        );
        SidecarConfig::default()
    });

    let mut p = Problems { at: "SidecarConfig".into(), list: &mut problems };
    let listeners = ListenerAddrs {
        outbound: p.addr("listeners.outbound", &sidecar.listeners.outbound),
        inbound: sidecar.inbound.as_ref().map(|_| p.addr("listeners.inbound", &sidecar.listeners.inbound)),
        admin: p.addr("listeners.admin", &sidecar.listeners.admin),
    };
    let proxy = ProxyLimits {
        detect_timeout: p.duration("proxy.detectTimeout", &sidecar.proxy.detect_timeout),
        header_read_timeout: p.duration("proxy.headerReadTimeout", &sidecar.proxy.header_read_timeout),
        max_headers: p.range("proxy.maxHeaders", sidecar.proxy.max_headers, 1, 1000),
        max_header_bytes: p.range("proxy.maxHeaderBytes", sidecar.proxy.max_header_bytes, 1024, 1 << 20),
        client_idle_timeout: p.duration("proxy.clientIdleTimeout", &sidecar.proxy.client_idle_timeout),
    };

    let pod = sidecar.pod.clone().unwrap_or_else(|| model::PodIdentity {
        namespace: sidecar
            .inbound
            .as_ref()
            .and_then(|i| i.service.as_ref())
            .map_or_else(model::default_namespace, |s| s.namespace.clone()),
        ..Default::default()
    });
    let identity = Identity {
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        labels: pod.labels.clone(),
        namespace_labels: pod.namespace_labels.clone(),
        ..Default::default()
    };
    let mut snapshot = Snapshot::new(identity);

    let mut seen = BTreeMap::new();
    for (i, s) in sidecar.services.iter().enumerate() {
        let at = format!("services[{i}]");
        let key = ServiceKey { name: s.name.clone(), namespace: s.namespace.clone() };
        if let Some(first) = seen.insert(key.clone(), i) {
            p.push(format!("{at}: duplicate of services[{first}] ({key})"));
        }
        let endpoints: Vec<EndpointSnapshot> = s
            .endpoints
            .iter()
            .enumerate()
            .map(|(j, e)| EndpointSnapshot { address: p.addr(&format!("{at}.endpoints[{j}]"), e), pod: None })
            .collect();
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for (j, a) in s.addresses.iter().enumerate() {
            let addr = p.addr(&format!("{at}.addresses[{j}]"), a);
            if !s.ports.is_empty() && addr.port() != 0 && !s.ports.contains(&addr.port()) {
                p.push(format!(
                    "{at}.addresses[{j}]: port {} is not one of the Service's ports {:?}",
                    addr.port(),
                    s.ports
                ));
            }
            addresses.push(addr);
        }
        let service = ServiceRef { name: &s.name, namespace: &s.namespace, labels: &s.labels };
        snapshot.services.push(std::sync::Arc::new(local_service(
            &policies,
            &service,
            &snapshot.identity,
            &s.ports,
            endpoints,
            addresses,
            s.app_protocol.as_deref(),
        )));
    }
    snapshot.services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    attach_routes(&mut snapshot, &sidecar.services, &http_routes, &policies, &mut p);

    let mut inbound_app = None;
    if let Some(i) = &sidecar.inbound {
        let app = p.addr("inbound.app", &i.app);
        inbound_app = Some(app);
        // Inbound: every policy selecting this pod's Service applies, whoever the caller is.
        let mut services = Vec::new();
        let mut policy = None;
        if let Some(s) = &i.service {
            let labels = sidecar
                .services
                .iter()
                .find(|e| e.name == s.name && e.namespace == s.namespace)
                .map(|e| e.labels.clone())
                .unwrap_or_default();
            let service = ServiceRef { name: &s.name, namespace: &s.namespace, labels: &labels };
            policy = select::selecting(&policies, &service, None).first().map(|p| applied(p));
            services.push(format!("{}.{}", s.name, s.namespace));
        }
        let app_protocol = i.app_protocol.clone();
        snapshot.inbound.push(InboundPort { port: app.port(), services, policy, app_protocol });
    }

    if problems.is_empty() {
        snapshot.version.hash = snapshot.content_hash();
        Ok(Config { listeners, proxy, telemetry: sidecar.telemetry.clone(), inbound_app, snapshot, warnings })
    } else {
        Err(ConfigError { problems })
    }
}

/// One Service of a local file as a snapshot: the policies selecting it for this caller, in
/// precedence order, resolved per port. A file that lists no ports gets one entry per port a
/// policy names and a catch-all for the rest; every port leads to the same endpoints (a local
/// file names endpoints, not target ports).
fn local_service(
    policies: &[CommunicationPolicy],
    service: &ServiceRef<'_>,
    caller: &Identity,
    ports: &[u16],
    endpoints: Vec<EndpointSnapshot>,
    addresses: Vec<SocketAddr>,
    app_protocol: Option<&str>,
) -> ServiceSnapshot {
    let sorted = select::selecting(policies, service, Some(caller));
    let ports: Vec<Option<u16>> = if ports.is_empty() {
        select::ports_named(&sorted)
    } else {
        ports.iter().copied().map(Some).collect()
    };
    let (chosen, shadowed) = select::resolve_ports(&sorted, &ports);
    let listed: Vec<u16> = ports.iter().flatten().copied().collect();
    let ports = ports
        .iter()
        .zip(chosen)
        .map(|(port, policy)| PortSnapshot {
            port: *port,
            // A virtual address belongs to the port it names, or to the catch-all.
            addresses: addresses
                .iter()
                .filter(|a| match port {
                    Some(p) => a.port() == *p,
                    None => !listed.contains(&a.port()),
                })
                .copied()
                .collect(),
            endpoints: endpoints.clone(),
            policy: policy.map(applied),
            app_protocol: app_protocol.map(str::to_owned),
            ..Default::default()
        })
        .collect();
    ServiceSnapshot {
        name: service.name.to_owned(),
        namespace: service.namespace.to_owned(),
        headless: false,
        ports,
        shadowed,
    }
}

fn is_http_route(doc: &load::Document) -> bool {
    doc.api_version == format!("{}/{}", gateway::GROUP, gateway::VERSION) && doc.kind == "HTTPRoute"
}

/// Compiles the file's `HTTPRoute`s onto the ports of the Services they attach to. A route
/// whose parent is not in the file is a problem (it would govern nothing); a backend that is
/// not is reported in the route table (its calls are answered 500), as in a cluster.
///
/// A policy targeting a route (or a rule of one) must name one of the file's routes (and
/// rules): a policy that governs nothing is a mistake a file can catch.
fn attach_routes(
    snapshot: &mut Snapshot,
    services: &[model::ServiceEntry],
    http_routes: &[(String, HTTPRoute)],
    policies: &[CommunicationPolicy],
    p: &mut Problems<'_>,
) {
    for policy in policies {
        let Some((name, rule)) = policy.spec.target_ref.route_name() else { continue };
        let ns = policy.namespace_or_default();
        let at = format!("CommunicationPolicy {}", policy.full_name());
        match http_routes
            .iter()
            .find(|(_, r)| r.namespace_or_default() == ns && r.metadata.name.as_deref() == Some(name))
        {
            None => p.list.push(format!(
                "{at}: spec.targetRef.name: no HTTPRoute {name} in namespace {ns} in this file"
            )),
            Some((_, route)) => {
                if let Some(rule) =
                    rule.filter(|r| !route.spec.rules.iter().any(|x| x.name.as_deref() == Some(*r)))
                {
                    p.list.push(format!(
                        "{at}: spec.targetRef.sectionName: HTTPRoute {name} has no rule named {rule}"
                    ));
                }
            }
        }
    }
    for (doc, route) in http_routes {
        for (i, parent) in route.spec.parent_refs.iter().enumerate() {
            let ns = parent.namespace.as_deref().unwrap_or(route.namespace_or_default());
            if !parent.is_service() {
                p.list.push(format!(
                    "{doc}: spec.parentRefs[{i}]: a route attaches to a Service here (group \"\", kind Service)"
                ));
            } else {
                match services.iter().find(|s| s.name == parent.name && s.namespace == ns) {
                    None => p
                        .list
                        .push(format!("{doc}: spec.parentRefs[{i}]: no Service {}.{ns} in this file", parent.name)),
                    Some(s) => match parent.port.and_then(|port| u16::try_from(port).ok()) {
                        Some(port) if !s.ports.contains(&port) => p.list.push(format!(
                            "{doc}: spec.parentRefs[{i}].port: Service {}.{ns} has no port {port} in this file \
                             (list it in its ports)",
                            parent.name
                        )),
                        _ => {}
                    },
                }
            }
        }
    }
    let backend = |_: &HTTPRoute, ns: &str, name: &str, port: u16| {
        let Some(s) = services.iter().find(|s| s.name == name && s.namespace == ns) else {
            return Some(format!("no Service {name}.{ns} in this file"));
        };
        (!s.ports.is_empty() && !s.ports.contains(&port))
            .then(|| format!("Service {name}.{ns} has no port {port}"))
    };
    let caller = snapshot.identity.namespace.clone();
    for service in &mut snapshot.services {
        let service = std::sync::Arc::make_mut(service);
        for port in &mut service.ports {
            let found = routes::attached(
                http_routes.iter().map(|(_, r)| r),
                &service.namespace,
                &service.name,
                port.port,
                Some(&caller),
            );
            if !found.is_empty() {
                let identity = &snapshot.identity;
                let rule_policy = |route: &HTTPRoute, rule: Option<&str>| {
                    let name = route.metadata.name.as_deref().unwrap_or_default();
                    let winners =
                        select::for_rule(policies, route.namespace_or_default(), name, rule, Some(identity));
                    winners.first().map(|p| applied(p))
                };
                port.routes = Some(routes::compile(&found, port.policy.as_ref(), rule_policy, backend));
            }
        }
    }
}

fn applied(policy: &CommunicationPolicy) -> AppliedPolicy {
    AppliedPolicy::from_policy(policy).expect("load::policy validated it")
}

struct Problems<'a> {
    at: String,
    list: &'a mut Vec<String>,
}

impl Problems<'_> {
    fn push(&mut self, msg: String) {
        self.list.push(format!("{}: {msg}", self.at));
    }

    fn addr(&mut self, field: &str, text: &str) -> SocketAddr {
        match text
            .to_socket_addrs()
            .map(|mut a| a.find(|a| a.is_ipv4()).or_else(|| text.to_socket_addrs().ok()?.next()))
        {
            Ok(Some(a)) => a,
            _ => {
                self.push(format!("{field}: must be host:port, e.g. 127.0.0.1:8080, got {text:?}"));
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        }
    }

    fn duration(&mut self, field: &str, text: &str) -> Duration {
        match breakwater_crds::Duration::new(text).parse() {
            Ok(d) => d,
            Err(e) => {
                self.push(format!("{field}: {e}"));
                Duration::ZERO
            }
        }
    }

    fn range(&mut self, field: &str, v: usize, min: usize, max: usize) -> usize {
        if !(min..=max).contains(&v) {
            self.push(format!("{field}: must be between {min} and {max}, got {v}"));
        }
        v
    }
}
