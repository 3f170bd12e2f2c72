//! Turning a local-mode file into a [`Config`]: strict parsing, the same `validate()` the API
//! server's rules mirror, address resolution, and policy precedence — every problem collected,
//! so `breakwater-sidecar validate` prints them all at once.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, ToSocketAddrs},
    time::Duration,
};

use breakwater_crds::{CommunicationPolicy, EffectivePolicy, load, precedence};
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

/// A policy as applied to one Service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicy {
    /// `namespace/name` of the policy.
    pub name: String,
    /// Service ports it is limited to (empty: all).
    pub ports: Vec<u16>,
    /// The policy with defaults.
    pub effective: EffectivePolicy,
}

impl AppliedPolicy {
    /// Whether it applies to calls to `port` (`None`: port unknown, applies).
    pub fn applies_to_port(&self, port: Option<u16>) -> bool {
        self.ports.is_empty() || port.is_none_or(|p| self.ports.contains(&p))
    }
}

/// A Service this pod may call, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceConfig {
    /// Its name.
    pub key: ServiceKey,
    /// Ports callers use (empty: any).
    pub ports: Vec<u16>,
    /// Endpoints.
    pub endpoints: Vec<SocketAddr>,
    /// Virtual addresses routed here.
    pub addresses: Vec<SocketAddr>,
    /// Policies selecting it, in precedence order (the first that covers a call's port wins).
    pub policies: Vec<AppliedPolicy>,
    /// Policies that select it but lose to a more specific or older one (for `/config`).
    pub shadowed: Vec<String>,
}

impl ServiceConfig {
    /// The policy in force for calls to `port`.
    pub fn policy_for(&self, port: Option<u16>) -> Option<&AppliedPolicy> {
        self.policies.iter().find(|p| p.applies_to_port(port))
    }
}

/// The application behind the inbound listener.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundConfig {
    /// Where the application listens.
    pub app: SocketAddr,
    /// The Service it backs.
    pub service: Option<ServiceKey>,
    /// The policy whose `bulkhead.inbound` (and mode) applies here.
    pub policy: Option<AppliedPolicy>,
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

/// A complete, valid configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// Listener addresses.
    pub listeners: ListenerAddrs,
    /// The local application, if any.
    pub inbound: Option<InboundConfig>,
    /// Callable Services, sorted by name.
    pub services: Vec<ServiceConfig>,
    /// Proxy limits.
    pub proxy: ProxyLimits,
    /// The `telemetry` section.
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
    /// This pod's name and namespace, when the file says.
    pub pod: (Option<String>, Option<String>),
}

impl Config {
    /// The name spans carry when nothing else names them: the Service this pod serves.
    pub fn default_service_name(&self) -> String {
        self.inbound
            .as_ref()
            .and_then(|i| i.service.as_ref())
            .map_or_else(|| "breakwater-sidecar".to_owned(), |s| s.name.clone())
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
    /// Only `CommunicationPolicy` documents (what a team keeps in Git and applies to a cluster).
    Policies(usize),
}

/// Validates a file for `breakwater-sidecar validate`: a full sidecar configuration, or a
/// file of policies only.
pub fn check(text: &str) -> Result<Checked, ConfigError> {
    let docs = load::documents(text).map_err(|e| ConfigError { problems: vec![e.to_string()] })?;
    if docs.iter().any(|d| d.is(model::KIND)) {
        return compile(text).map(|c| Checked::Sidecar(Box::new(c)));
    }
    let mut problems = Vec::new();
    for doc in &docs {
        if doc.kind == "CommunicationPolicy" {
            if let Err(errors) = load::policy(&doc.value) {
                problems.extend(errors.iter().map(|e| format!("{}: {e}", doc.describe())));
            }
        } else {
            problems.push(format!(
                "{}: not a CommunicationPolicy or SidecarConfig (apiVersion {:?}, kind {:?})",
                doc.describe(),
                doc.api_version,
                doc.kind
            ));
        }
    }
    if docs.is_empty() {
        problems.push("the file holds no documents".to_owned());
    }
    if problems.is_empty() { Ok(Checked::Policies(docs.len())) } else { Err(ConfigError { problems }) }
}

/// Parses and validates a local-mode file. Every problem is reported.
pub fn compile(text: &str) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let docs = load::documents(text).map_err(|e| ConfigError { problems: vec![e.to_string()] })?;

    let mut sidecar: Option<SidecarConfig> = None;
    let mut policies: Vec<CommunicationPolicy> = Vec::new();
    for doc in &docs {
        if doc.is(model::KIND) {
            match load::from_value_strict::<SidecarConfig>(&doc.value) {
                Ok(c) if sidecar.is_none() => sidecar = Some(c),
                Ok(_) => {
                    problems.push(format!("{}: only one SidecarConfig document is allowed", doc.describe()))
                }
                Err(errors) => problems.extend(errors.iter().map(|e| format!("{}: {e}", doc.describe()))),
            }
        } else if doc.kind == "CommunicationPolicy" {
            match load::policy(&doc.value) {
                Ok(p) => policies.push(p),
                Err(errors) => problems.extend(errors.iter().map(|e| format!("{}: {e}", doc.describe()))),
            }
        } else {
            problems.push(format!(
                "{}: unknown document: expected apiVersion breakwater.dev/v1alpha1 and kind \
                 CommunicationPolicy or SidecarConfig, got {:?} {:?}",
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

    let identity = sidecar.pod.clone().unwrap_or_else(|| model::PodIdentity {
        namespace: sidecar
            .inbound
            .as_ref()
            .and_then(|i| i.service.as_ref())
            .map_or_else(model::default_namespace, |s| s.namespace.clone()),
        ..Default::default()
    });
    let caller_policies: Vec<&CommunicationPolicy> = policies
        .iter()
        .filter(|pol| {
            pol.spec.selects_caller(&identity.namespace, &identity.namespace_labels, &identity.labels)
        })
        .collect();

    let mut services = Vec::new();
    let mut seen = BTreeMap::new();
    for (i, s) in sidecar.services.iter().enumerate() {
        let at = format!("services[{i}]");
        let key = ServiceKey { name: s.name.clone(), namespace: s.namespace.clone() };
        if let Some(first) = seen.insert(key.clone(), i) {
            p.push(format!("{at}: duplicate of services[{first}] ({key})"));
        }
        if s.endpoints.is_empty() {
            p.push(format!("{at}.endpoints: must list at least one endpoint"));
        }
        let endpoints =
            s.endpoints.iter().enumerate().map(|(j, e)| p.addr(&format!("{at}.endpoints[{j}]"), e)).collect();
        let addresses =
            s.addresses.iter().enumerate().map(|(j, a)| p.addr(&format!("{at}.addresses[{j}]"), a)).collect();
        let (policies, shadowed) = policies_for(&caller_policies, &s.name, &s.namespace, &s.labels);
        services.push(ServiceConfig {
            key,
            ports: s.ports.clone(),
            endpoints,
            addresses,
            policies,
            shadowed,
        });
    }
    services.sort_by(|a, b| a.key.cmp(&b.key));

    let inbound = sidecar.inbound.as_ref().map(|i| {
        let service =
            i.service.as_ref().map(|s| ServiceKey { name: s.name.clone(), namespace: s.namespace.clone() });
        // Inbound: every policy targeting this pod's Service applies, whoever the caller is.
        let all: Vec<&CommunicationPolicy> = policies.iter().collect();
        let policy = service.as_ref().and_then(|s| {
            let labels = sidecar
                .services
                .iter()
                .find(|e| e.name == s.name && e.namespace == s.namespace)
                .map(|e| e.labels.clone())
                .unwrap_or_default();
            policies_for(&all, &s.name, &s.namespace, &labels).0.into_iter().next()
        });
        InboundConfig { app: p.addr("inbound.app", &i.app), service, policy }
    });

    if problems.is_empty() {
        let pod = sidecar.pod.as_ref().map_or((None, None), |p| {
            (Some(p.name.clone()).filter(|n| !n.is_empty()), Some(p.namespace.clone()))
        });
        Ok(Config { listeners, inbound, services, proxy, telemetry: sidecar.telemetry.clone(), pod })
    } else {
        Err(ConfigError { problems })
    }
}

/// The policies (already filtered by caller) that select a Service, in precedence order, and
/// the names of those that never win for any port.
fn policies_for(
    policies: &[&CommunicationPolicy],
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> (Vec<AppliedPolicy>, Vec<String>) {
    let mut selecting: Vec<&CommunicationPolicy> = policies
        .iter()
        .copied()
        .filter(|p| p.namespace_or_default() == namespace)
        .filter(|p| p.spec.selects_service(name, labels))
        .collect();
    precedence::sort(&mut selecting);
    let mut applied = Vec::new();
    let mut shadowed = Vec::new();
    let mut covers_all = false;
    for p in selecting {
        let full = p.full_name();
        if covers_all {
            shadowed.push(full);
            continue;
        }
        let effective = EffectivePolicy::resolve(&p.spec).expect("load::policy validated it");
        let ports: Vec<u16> =
            p.spec.target_ref.ports.iter().flatten().filter_map(|p| u16::try_from(*p).ok()).collect();
        covers_all = ports.is_empty();
        applied.push(AppliedPolicy { name: full, ports, effective });
    }
    (applied, shadowed)
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
