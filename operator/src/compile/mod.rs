//! `compile`: policies, Services, EndpointSlices, Namespaces and one Pod → that pod's sidecar
//! [`Snapshot`]. A pure function: the same objects give the same snapshot, whatever order they
//! come in, so every operator replica computes the same content hash.
//!
//! [`World::new`] indexes the objects once (valid policies with their effective form, Services
//! with their per-port endpoints, which pods back which Services); [`World::compile`] then
//! builds one pod's snapshot in time proportional to the policies and the Services they govern,
//! not to the cluster, so recompiling the pods a change concerns stays cheap.
//!
//! What a snapshot holds, and why:
//! - **the Services a policy governs for this pod as a caller** (its `sources` select the pod):
//!   calls to any other Service pass through the sidecar untouched and reach the Service as
//!   they would without it (kube-proxy balances them), so listing every Service of the cluster
//!   in every pod would only make each snapshot, and each push, as large as the cluster — the
//!   scaling problem of full-mesh configuration (istio/istio#7665);
//! - per Service port: its cluster IPs, its **ready** endpoints from the EndpointSlices (the
//!   slice controller resolved `targetPort`, by name or number, on each pod; terminating
//!   endpoints are left out, so they drain), and the policy in force there after precedence;
//! - **the Services `HTTPRoute`s govern for this pod** (see [`routes`]), each port with its
//!   route table, and the routes' backends, so the sidecar has their endpoints;
//! - **inbound**: each port of this pod that a Service routes to, with every such Service and
//!   the one policy whose `bulkhead.inbound` applies there;
//! - the pod's **identity** and a content hash (the counter is the snapshot
//!   hub's).
//!
//! Precedence, selection and validation are `breakwater-crds`' — the same functions the
//! sidecar's local mode runs — so operator and sidecar can never disagree.

mod endpoints;
pub mod routes;
#[cfg(test)]
pub(crate) mod tests;

pub use self::endpoints::SERVICE_NAME_LABEL;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Weak},
};

use breakwater_crds::{
    CommunicationPolicy,
    gateway::HTTPRoute,
    precedence,
    snapshot::{
        AppliedPolicy, EndpointSnapshot, Identity, InboundPort, PortSnapshot, ServiceSnapshot, Snapshot,
        routes as route_table, select,
    },
};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::ResourceExt;

use crate::key::ObjKey;

/// A valid policy, ready to compile.
#[derive(Debug, Clone)]
pub struct PolicyEntry {
    /// `namespace/name`.
    pub name: String,
    /// The policy as stored.
    pub policy: Arc<CommunicationPolicy>,
    /// Its effective form, as snapshots carry it.
    pub applied: AppliedPolicy,
    /// The Services it selects, sorted.
    pub targets: Vec<ObjKey>,
}

/// A Service, indexed.
#[derive(Debug, Clone)]
pub struct ServiceEntry {
    /// Its key.
    pub key: ObjKey,
    /// Labels (for `targetRef.selector`).
    pub labels: BTreeMap<String, String>,
    /// No cluster IP.
    pub headless: bool,
    /// Ports with addresses and ready endpoints.
    pub ports: Vec<PortEntry>,
    /// Valid policies selecting it, as indexes into [`World::policies`], in precedence order
    /// (callers not considered).
    pub policies: Vec<usize>,
}

/// One Service port, indexed.
#[derive(Debug, Clone)]
pub struct PortEntry {
    /// The Service port.
    pub port: u16,
    /// Its name.
    pub name: Option<String>,
    /// Its `appProtocol`.
    pub app_protocol: Option<String>,
    /// Cluster IP(s) at this port.
    pub addresses: Vec<SocketAddr>,
    /// Ready endpoints, sorted and deduplicated.
    pub endpoints: Vec<EndpointSnapshot>,
}

/// A pod backs a Service port at one of its own ports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backing {
    /// The Service.
    pub service: ObjKey,
    /// The Service port.
    pub service_port: u16,
    /// The pod's port it leads to.
    pub pod_port: u16,
}

/// A Service, the caller's policies selecting it, its namespace and its policies on routes.
type BuiltKey = (ObjKey, Vec<usize>, String, Vec<usize>);

/// What compiling remembers between pods and between batches, so that pods which agree share
/// memory and work:
///
/// - per [`World`]: each Service snapshot built for a set of the caller's policies, and the
///   whole outbound part of a snapshot per caller class — namespace and pod labels, all that
///   `sources` can see — so the pods of one Deployment are compiled once;
/// - across Worlds: every Service snapshot by content hash (weakly), so a Service unchanged by
///   a batch is not copied again into the pods it recompiles.
#[derive(Debug, Default)]
pub struct Shared {
    world: u64,
    /// Keyed by the Service, the caller's policies selecting it and, for a Service with
    /// routes, the caller's namespace (consumer routes depend on it) and its policies on routes.
    built: HashMap<BuiltKey, Built>,
    outbound: HashMap<(String, BTreeMap<String, String>), Arc<Outbound>>,
    interned: HashMap<[u8; 32], Weak<ServiceSnapshot>>,
    /// Interned entries when the dead ones were last swept.
    swept_at: usize,
}

/// One shared Service snapshot and its content hash.
type Built = (Arc<ServiceSnapshot>, [u8; 32]);

/// The outbound part of a snapshot: its Services, and each one's hash.
#[derive(Debug)]
struct Outbound {
    services: Vec<Arc<ServiceSnapshot>>,
    hashes: Vec<[u8; 32]>,
}

impl Shared {
    /// Forgets what belongs to another World.
    fn begin(&mut self, world: u64) {
        if self.world != world {
            self.world = world;
            self.built.clear();
            self.outbound.clear();
        }
    }

    /// The one copy of a Service snapshot with this content.
    fn intern(&mut self, snapshot: ServiceSnapshot, hash: [u8; 32]) -> Arc<ServiceSnapshot> {
        if let Some(existing) = self.interned.get(&hash).and_then(Weak::upgrade) {
            return existing;
        }
        let fresh = Arc::new(snapshot);
        self.interned.insert(hash, Arc::downgrade(&fresh));
        if self.interned.len() > 2 * self.swept_at.max(1024) {
            self.interned.retain(|_, w| w.strong_count() > 0);
            self.swept_at = self.interned.len();
        }
        fresh
    }
}

/// Tells Worlds apart (a [`Shared`] cache belongs to one).
static WORLDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Every object compile needs, indexed; see the module docs.
#[derive(Debug, Default)]
pub struct World {
    id: u64,
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Valid policies, sorted by key.
    policies: Vec<PolicyEntry>,
    services: BTreeMap<ObjKey, ServiceEntry>,
    /// Pod → the Service ports it backs.
    backing: HashMap<ObjKey, Vec<Backing>>,
    /// Service → the pods backing it.
    backers: HashMap<ObjKey, BTreeSet<ObjKey>>,
    /// `HTTPRoute`s.
    routes: routes::Routes,
}

impl World {
    /// Indexes the objects. Invalid policies (those `validate()` refuses: their status says
    /// why) and `ExternalName` Services (no endpoints to govern) are left out.
    pub fn new(
        policies: &[Arc<CommunicationPolicy>],
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        namespaces: &[Arc<Namespace>],
    ) -> Self {
        Self::after(None, policies, services, slices, namespaces)
    }

    /// [`World::new`], reusing what `previous` already worked out for the objects that did not
    /// change (the same `Arc`: the index's stores hand out the same one until an object
    /// changes) — validating and resolving a policy is most of the cost of a World.
    pub fn after(
        previous: Option<&World>,
        policies: &[Arc<CommunicationPolicy>],
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        namespaces: &[Arc<Namespace>],
    ) -> Self {
        let resolved: HashMap<String, (&Arc<CommunicationPolicy>, &AppliedPolicy)> = previous
            .map(|w| w.policies.iter().map(|e| (e.name.clone(), (&e.policy, &e.applied))).collect())
            .unwrap_or_default();
        let namespaces: HashMap<String, BTreeMap<String, String>> =
            namespaces.iter().map(|n| (n.name_any(), n.labels().clone())).collect();

        let slices_by_service = endpoints::group_by_service(slices);
        let mut entries: BTreeMap<ObjKey, ServiceEntry> = BTreeMap::new();
        let mut backing: HashMap<ObjKey, Vec<Backing>> = HashMap::new();
        for svc in services {
            let Some(key) = ObjKey::of(svc.as_ref()) else { continue };
            let Some(spec) = svc.spec.as_ref() else { continue };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let slices = slices_by_service.get(&key).map(Vec::as_slice).unwrap_or_default();
            let indexed = endpoints::index_service(&key, spec, slices);
            for (pod, b) in indexed.backing {
                backing.entry(pod).or_default().push(b);
            }
            entries.insert(
                key.clone(),
                ServiceEntry {
                    key,
                    labels: svc.labels().clone(),
                    headless: indexed.headless,
                    ports: indexed.ports,
                    policies: Vec::new(),
                },
            );
        }
        let mut backers: HashMap<ObjKey, BTreeSet<ObjKey>> = HashMap::new();
        for (pod, list) in backing.iter_mut() {
            list.sort();
            list.dedup();
            for b in list.iter() {
                backers.entry(b.service.clone()).or_default().insert(pod.clone());
            }
        }

        let mut valid: Vec<PolicyEntry> = policies
            .iter()
            .filter_map(|p| {
                let name = p.full_name();
                let applied = match resolved.get(&name) {
                    Some((same, applied)) if Arc::ptr_eq(same, p) => (*applied).clone(),
                    _ => AppliedPolicy::from_policy(p).ok()?,
                };
                let namespace = p.namespace_or_default().to_owned();
                let targets: Vec<ObjKey> = match &p.spec.target_ref.name {
                    // Its calls are found through the routes.
                    Some(_) if p.spec.target_ref.is_route() => Vec::new(),
                    Some(name) => {
                        let key = ObjKey::new(&namespace, name);
                        entries.contains_key(&key).then_some(key).into_iter().collect()
                    }
                    None => entries
                        .range(ObjKey::new(&namespace, "")..)
                        .take_while(|(k, _)| k.namespace == namespace)
                        .filter(|(k, s)| p.spec.selects_service(&k.name, &s.labels))
                        .map(|(k, _)| k.clone())
                        .collect(),
                };
                Some(PolicyEntry { name, policy: p.clone(), applied, targets })
            })
            .collect();
        valid.sort_by(|a, b| a.name.cmp(&b.name));
        for (i, entry) in valid.iter().enumerate() {
            for target in &entry.targets {
                if let Some(s) = entries.get_mut(target) {
                    s.policies.push(i);
                }
            }
        }
        for s in entries.values_mut() {
            s.policies.sort_by(|a, b| precedence::compare(&valid[*a].policy, &valid[*b].policy));
        }
        let id = WORLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        World {
            id,
            namespaces,
            policies: valid,
            services: entries,
            backing,
            backers,
            routes: Default::default(),
        }
    }

    /// This World with `routes` (`HTTPRoute`s; none when the Gateway API is not installed).
    pub fn with_routes(mut self, routes: &[Arc<breakwater_crds::gateway::HTTPRoute>]) -> Self {
        self.routes = routes::Routes::new(routes);
        self
    }

    /// The routes indexed.
    pub fn routes(&self) -> &routes::Routes {
        &self.routes
    }

    /// The valid policies, sorted by `namespace/name`.
    pub fn policies(&self) -> &[PolicyEntry] {
        &self.policies
    }

    /// A Service, if indexed.
    pub fn service(&self, key: &ObjKey) -> Option<&ServiceEntry> {
        self.services.get(key)
    }

    /// The Service ports `pod` backs.
    pub fn backing(&self, pod: &ObjKey) -> &[Backing] {
        self.backing.get(pod).map(Vec::as_slice).unwrap_or_default()
    }

    /// The pods backing `service`.
    pub fn backers_of(&self, service: &ObjKey) -> impl Iterator<Item = &ObjKey> {
        self.backers.get(service).into_iter().flatten()
    }

    /// The valid policy `key`, if indexed.
    pub fn policy(&self, key: &ObjKey) -> Option<&PolicyEntry> {
        let name = key.to_string();
        self.policies.binary_search_by(|e| e.name.as_str().cmp(&name)).ok().map(|i| &self.policies[i])
    }

    /// The Services of `namespace` that `policy` selects (whether or not it is valid).
    pub fn selected_by(&self, policy: &CommunicationPolicy) -> Vec<ObjKey> {
        let namespace = policy.namespace_or_default();
        self.services
            .range(ObjKey::new(namespace, "")..)
            .take_while(|(k, _)| k.namespace == namespace)
            .filter(|(k, s)| policy.spec.selects_service(&k.name, &s.labels))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The identity of `pod` as policies' `sources` see it.
    pub fn identity(&self, pod: &Pod) -> Identity {
        let namespace = pod.namespace().unwrap_or_default();
        Identity {
            name: pod.name_any(),
            namespace_labels: self.namespaces.get(&namespace).cloned().unwrap_or_default(),
            namespace,
            uid: pod.metadata.uid.clone(),
            service_account: pod.spec.as_ref().and_then(|s| s.service_account_name.clone()),
            labels: pod.labels().clone(),
        }
    }

    /// Whether `policy` governs calls made by `pod` (as [`World::applies_to`], without building
    /// its identity).
    pub fn applies_to_pod(&self, policy: &CommunicationPolicy, pod: &Pod) -> bool {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let empty = BTreeMap::new();
        let namespace_labels = self.namespaces.get(namespace).unwrap_or(&empty);
        policy.spec.selects_caller(namespace, namespace_labels, pod.labels())
    }

    /// Whether `policy` governs calls made by a pod with `identity`.
    pub fn applies_to(policy: &CommunicationPolicy, identity: &Identity) -> bool {
        policy.spec.selects_caller(&identity.namespace, &identity.namespace_labels, &identity.labels)
    }

    /// `pod`'s snapshot; see the module docs. Its version carries the content hash and a zero
    /// counter.
    pub fn compile(&self, pod: &Pod) -> Snapshot {
        self.compile_shared(pod, &mut Shared::default())
    }

    /// [`World::compile`], reusing the Service snapshots already built for other pods of the
    /// same batch (`shared` belongs to this `World`): pods whose callers' policies agree on a
    /// Service share one copy of it, and its hash.
    pub fn compile_shared(&self, pod: &Pod, shared: &mut Shared) -> Snapshot {
        let identity = self.identity(pod);
        let key = ObjKey::new(&identity.namespace, &identity.name);

        // Outbound: the policies that select this pod as a caller, and the Services they govern;
        // the same for every pod of its class (namespace and labels: all `sources` can see).
        shared.begin(self.id);
        let class = (identity.namespace.clone(), identity.labels.clone());
        let outbound = match shared.outbound.get(&class) {
            Some(o) => o.clone(),
            None => {
                let o = Arc::new(self.outbound(&identity, shared));
                shared.outbound.insert(class, o.clone());
                o
            }
        };
        let mut snapshot = Snapshot::new(identity);
        snapshot.services = outbound.services.clone();

        // Inbound: this pod's ports that Services route to.
        let mut by_port: BTreeMap<u16, Vec<&Backing>> = BTreeMap::new();
        for b in self.backing(&key) {
            by_port.entry(b.pod_port).or_default().push(b);
        }
        for (port, backings) in by_port {
            let mut services: Vec<String> =
                backings.iter().map(|b| format!("{}.{}", b.service.name, b.service.namespace)).collect();
            services.sort();
            services.dedup();
            let candidates = backings.iter().filter_map(|b| {
                let s = self.services.get(&b.service)?;
                let sorted = self.sorted(&s.policies);
                select::in_force(&sorted, Some(b.service_port))
            });
            let policy = candidates.min_by(|a, b| precedence::compare(a, b)).and_then(|p| self.applied(p));
            let app_protocol = backings.iter().find_map(|b| {
                let s = self.services.get(&b.service)?;
                s.ports.iter().find(|p| p.port == b.service_port)?.app_protocol.clone()
            });
            snapshot.inbound.push(InboundPort { port, services, policy, app_protocol });
        }
        snapshot.version.hash = snapshot.content_hash_with(outbound.hashes.iter().copied());
        snapshot
    }

    fn outbound(&self, identity: &Identity, shared: &mut Shared) -> Outbound {
        let mine: Vec<bool> = self.policies.iter().map(|e| Self::applies_to(&e.policy, identity)).collect();
        let routed = self.routed_services(&identity.namespace);
        let governed: BTreeSet<&ObjKey> = self
            .policies
            .iter()
            .zip(&mine)
            .filter(|(_, m)| **m)
            .flat_map(|(e, _)| &e.targets)
            .chain(&routed)
            .collect();
        // The policies on routes (or their rules) this caller's calls run with, wherever the
        // routes match.
        let on_routes: Vec<usize> = (0..self.policies.len())
            .filter(|i| mine[*i] && self.policies[*i].policy.spec.target_ref.is_route())
            .collect();
        let mut out = Outbound {
            services: Vec::with_capacity(governed.len()),
            hashes: Vec::with_capacity(governed.len()),
        };
        for service in governed.into_iter().filter_map(|k| self.services.get(k)) {
            let policies: Vec<usize> = service.policies.iter().copied().filter(|i| mine[*i]).collect();
            let routed = self.routes.has(&service.key);
            let caller = if routed { identity.namespace.clone() } else { String::new() };
            let on_routes = if routed { on_routes.clone() } else { Vec::new() };
            let key = (service.key.clone(), policies, caller, on_routes);
            let (built, hash) = match shared.built.get(&key) {
                Some(b) => b.clone(),
                None => {
                    let s = self.service_snapshot(service, &key.1, &key.2, &key.3);
                    let hash = s.content_hash();
                    let built = (shared.intern(s, hash), hash);
                    shared.built.insert(key, built.clone());
                    built
                }
            };
            out.services.push(built);
            out.hashes.push(hash);
        }
        out
    }

    /// One Service for a caller with `policies` (of the Service's) in `caller_namespace`, whose
    /// policies on routes are `on_routes` (both empty when no route is attached to the
    /// Service).
    fn service_snapshot(
        &self,
        service: &ServiceEntry,
        policies: &[usize],
        caller_namespace: &str,
        on_routes: &[usize],
    ) -> ServiceSnapshot {
        let sorted = self.sorted(policies);
        let routes = self.routes_for(&service.key, caller_namespace);
        let ports: Vec<Option<u16>> = service.ports.iter().map(|p| Some(p.port)).collect();
        let (chosen, shadowed) = select::resolve_ports(&sorted, &ports);
        ServiceSnapshot {
            name: service.key.name.clone(),
            namespace: service.key.namespace.clone(),
            headless: service.headless,
            ports: service
                .ports
                .iter()
                .zip(chosen)
                .map(|(p, policy)| {
                    let policy = policy.and_then(|p| self.applied(p));
                    let attached = route_table::attached(
                        routes.iter().copied(),
                        &service.key.namespace,
                        &service.key.name,
                        Some(p.port),
                        Some(caller_namespace),
                    );
                    let table = (!attached.is_empty()).then(|| {
                        let rule_policy = |route: &HTTPRoute, rule: Option<&str>| {
                            let candidates = on_routes.iter().map(|i| self.policies[*i].policy.as_ref());
                            let ns = route.namespace_or_default();
                            let winners = select::for_rule(candidates, ns, &route.name_any(), rule, None);
                            winners.first().and_then(|p| self.applied(p))
                        };
                        route_table::compile(
                            &attached,
                            policy.as_ref(),
                            rule_policy,
                            |route, ns, name, port| {
                                self.backend_problem(route.namespace_or_default(), ns, name, port)
                                    .map(|p| p.message)
                            },
                        )
                    });
                    PortSnapshot {
                        port: Some(p.port),
                        name: p.name.clone(),
                        app_protocol: p.app_protocol.clone(),
                        addresses: p.addresses.clone(),
                        endpoints: p.endpoints.clone(),
                        policy,
                        routes: table,
                    }
                })
                .collect(),
            shadowed,
        }
    }

    /// The policies at `indexes`, in that order.
    fn sorted(&self, indexes: &[usize]) -> Vec<&CommunicationPolicy> {
        indexes.iter().map(|i| self.policies[*i].policy.as_ref()).collect()
    }

    fn applied(&self, policy: &CommunicationPolicy) -> Option<AppliedPolicy> {
        let name = policy.full_name();
        let i = self.policies.binary_search_by(|e| e.name.as_str().cmp(&name)).ok()?;
        Some(self.policies[i].applied.clone())
    }
}

/// `ip` at `port`.
fn socket(ip: &str, port: u16) -> Option<SocketAddr> {
    ip.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
}
