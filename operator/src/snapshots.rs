//! The snapshot hub: every pod with a sidecar has its current snapshot in a
//! `tokio::sync::watch` channel (Linkerd's pattern: a stream serving a pod just watches its
//! channel, and a burst of changes reaches it as the latest value only).
//!
//! The hub takes [`Trigger`]s from the index, waits a short debounce so a burst (a rollout, a
//! scale-up) becomes one batch, rebuilds the [`World`] from the stores, and recompiles **only
//! the pods the batch concerns**:
//!
//! | trigger | pods recompiled |
//! |---|---|
//! | Pod | that pod |
//! | Namespace | the pods in it (its labels feed `sources.namespaceSelector`) |
//! | Policy | the pods whose snapshot used it, the pods it now applies to as callers, the pods backing its targets |
//! | Service or EndpointSlice | the pods whose snapshot lists the Service, the callers of every policy now selecting it, the pods backing it |
//!
//! Both the previous and the new [`World`] are asked, so a deletion or a label that stops
//! matching still reaches the pods it affected, without remembering per pod what it used (at
//! thousands of pods and hundreds of Services each, that memory would be the operator's
//! largest). A recompiled snapshot whose content hash did not change is not published. The
//! same batch tells the controller which policies' status a Service change (or a peer policy)
//! may have changed.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use breakwater_crds::{CommunicationPolicy, snapshot::Snapshot};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{RwLock, mpsc, watch};

use crate::{
    compile::World,
    delivery::Expected,
    index::{Index, Lenient, Trigger, TriggerQueue, readable},
    key::ObjKey,
    metrics::Metrics,
};

/// Where the hub tells the controller which policies to reconcile again.
pub type PolicyRefs = mpsc::Sender<ObjectRef<Lenient<CommunicationPolicy>>>;

/// A pod's current snapshot, and when the change it carries was observed (the first trigger of
/// its batch): what `breakwater_operator_convergence_seconds` measures from.
#[derive(Debug, Clone)]
pub struct Current {
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// When the change was observed.
    pub observed: tokio::time::Instant,
}

/// Every pod's current snapshot; see the module docs.
#[derive(Debug)]
pub struct Hub {
    channels: RwLock<HashMap<ObjKey, watch::Sender<Current>>>,
    /// Wakes streams waiting for a pod's first snapshot.
    created: tokio::sync::Notify,
    /// The next version counter (starts from the Unix time in milliseconds).
    counter: AtomicU64,
    expected: watch::Sender<Expected>,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// An empty hub.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        Hub {
            channels: RwLock::default(),
            created: tokio::sync::Notify::new(),
            counter: AtomicU64::new(start),
            expected: watch::Sender::new(Arc::default()),
            metrics,
        }
    }

    /// The current snapshot of `pod`, if it has one.
    pub async fn current(&self, pod: &ObjKey) -> Option<Arc<Snapshot>> {
        self.channels.read().await.get(pod).map(|tx| tx.borrow().snapshot.clone())
    }

    /// A receiver that sees every new snapshot of `pod` (the latest one when several come
    /// quickly); `None` when the pod has none. The channel closes when the pod goes.
    pub async fn subscribe(&self, pod: &ObjKey) -> Option<watch::Receiver<Current>> {
        self.channels.read().await.get(pod).map(watch::Sender::subscribe)
    }

    /// [`Hub::subscribe`], waiting up to `within` for the pod's first snapshot.
    pub async fn subscribe_within(&self, pod: &ObjKey, within: Duration) -> Option<watch::Receiver<Current>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let created = self.created.notified();
            if let Some(rx) = self.subscribe(pod).await {
                return Some(rx);
            }
            // Woken when a batch creates snapshots; give up at the deadline.
            tokio::time::timeout_at(deadline, created).await.ok()?;
        }
    }

    /// How many pods' snapshots carry each policy.
    pub fn expected(&self) -> watch::Receiver<Expected> {
        self.expected.subscribe()
    }

    /// Every pod's current snapshot version.
    pub async fn versions(&self) -> Vec<(ObjKey, breakwater_crds::snapshot::SnapshotVersion)> {
        let channels = self.channels.read().await;
        channels.iter().map(|(pod, tx)| (pod.clone(), tx.borrow().snapshot.version.clone())).collect()
    }

    /// How many pods have a snapshot.
    pub async fn len(&self) -> usize {
        self.channels.read().await.len()
    }

    /// Whether no pod has a snapshot.
    pub async fn is_empty(&self) -> bool {
        self.len().await == 0
    }

    /// Runs until `queue` closes: waits for the index, compiles every pod, then applies each
    /// batch of triggers. `debounce` is how long a batch gathers after its first trigger.
    pub async fn run(
        self: Arc<Self>,
        index: Index,
        mut queue: TriggerQueue,
        policies: PolicyRefs,
        debounce: Duration,
    ) {
        index.wait_ready().await;
        // What queued up while the indexes listed is covered by the first full pass.
        while queue.try_recv().is_some() {}
        let mut state = State::default();
        let now = tokio::time::Instant::now();
        self.apply(&index, &mut state, &HashSet::from([Trigger::All]), &policies, now).await;
        loop {
            let Some(first) = queue.recv().await else { return };
            let observed = tokio::time::Instant::now();
            let mut batch = HashSet::from([first]);
            tokio::time::sleep(debounce).await;
            while let Some(t) = queue.try_recv() {
                // A deleted policy's last state is worth keeping over a bare key.
                if matches!(t, Trigger::Policy(_, Some(_))) {
                    batch.replace(t);
                } else {
                    batch.insert(t);
                }
            }
            self.apply(&index, &mut state, &batch, &policies, observed).await;
        }
    }

    /// Applies one batch. The work — indexing the World, finding the affected pods, compiling
    /// them — runs on a blocking thread: at thousands of pods it takes long enough to starve the
    /// runtime's other tasks (probes, reconciles, streams) if it ran on a worker. Only
    /// publishing takes the channels' lock.
    async fn apply(
        &self,
        index: &Index,
        state: &mut State,
        batch: &HashSet<Trigger>,
        policies: &PolicyRefs,
        observed: tokio::time::Instant,
    ) {
        let started = tokio::time::Instant::now();
        let inputs = Inputs {
            stored: index.policies.state(),
            policies: readable(&index.policies),
            services: readable(&index.services),
            slices: readable(&index.slices),
            namespaces: readable(&index.namespaces),
            routes: readable(&index.routes),
            pods: readable(&index.pods)
                .into_iter()
                .filter_map(|p| Some((ObjKey::of(p.as_ref())?, p)))
                .collect(),
            previous: state.world.take(),
            shared: std::mem::take(&mut state.shared),
            batch: batch.clone(),
        };
        let all = batch.contains(&Trigger::All);
        let Compiled { world, shared, concerned, snapshots, live } =
            match tokio::task::spawn_blocking(move || inputs.compile()).await {
                Ok(done) => done,
                Err(e) => {
                    // A panic in compile is a bug; keep serving the snapshots we have.
                    tracing::error!(error = %e, "compiling snapshots failed; the current ones stay");
                    return;
                }
            };
        state.world = Some(world);
        state.shared = shared;
        for p in concerned {
            // A closed channel means the controller stopped: we are shutting down.
            let _ = policies.send(p).await;
        }

        let mut updated = 0;
        let compiled_count = snapshots.len();
        let mut channels = self.channels.write().await;
        let mut expected = HashMap::clone(&self.expected.borrow());
        let mut count = |snapshot: &Snapshot, add: bool| {
            // The compiler names every policy `namespace/name`.
            for policy in snapshot.policies().into_keys().filter_map(|p| p.parse::<ObjKey>().ok()) {
                let n = expected.entry(policy).or_default();
                *n = if add { *n + 1 } else { n.saturating_sub(1) };
            }
        };
        if all {
            channels.retain(|key, tx| {
                let keep = live.contains(key);
                if !keep {
                    count(&tx.borrow().snapshot, false);
                }
                keep
            });
        }
        let mut created = false;
        for (key, snapshot) in snapshots {
            let Some(mut snapshot) = snapshot else {
                if let Some(tx) = channels.remove(&key) {
                    count(&tx.borrow().snapshot, false);
                }
                continue;
            };
            let unchanged = channels
                .get(&key)
                .is_some_and(|tx| tx.borrow().snapshot.version.hash == snapshot.version.hash);
            if unchanged {
                continue;
            }
            snapshot.version.counter = self.counter.fetch_add(1, Ordering::Relaxed);
            updated += 1;
            tracing::debug!(pod = %key, version = %snapshot.version, services = snapshot.services.len(), "snapshot updated");
            count(&snapshot, true);
            let current = Current { snapshot: Arc::new(snapshot), observed };
            match channels.get(&key) {
                Some(tx) => {
                    count(&tx.borrow().snapshot, false);
                    tx.send_replace(current);
                }
                None => {
                    channels.insert(key, watch::Sender::new(current));
                    created = true;
                }
            }
        }
        expected.retain(|_, n| *n > 0);
        self.expected.send_if_modified(|e| {
            if **e == expected {
                false
            } else {
                *e = Arc::new(expected);
                true
            }
        });
        if created {
            self.created.notify_waiters();
        }
        let total = channels.len();
        let services = channels.values().map(|tx| tx.borrow().snapshot.services.len()).sum();
        drop(channels);
        let took = started.elapsed().as_secs_f64();
        self.metrics.snapshot_batch(compiled_count, updated, total, services, took);
        if all {
            self.metrics.snapshot_full_compile(took);
        }
        if updated > 0 {
            tracing::info!(compiled = compiled_count, updated, pods = total, took = ?started.elapsed(), "snapshots updated");
        }
    }
}

/// What one batch is compiled from: the stores as they were when it started, and what the last
/// batch left.
struct Inputs {
    /// Every stored policy, readable or not (for the policies a change concerns).
    stored: Vec<Arc<Lenient<CommunicationPolicy>>>,
    policies: Vec<Arc<CommunicationPolicy>>,
    services: Vec<Arc<k8s_openapi::api::core::v1::Service>>,
    slices: Vec<Arc<k8s_openapi::api::discovery::v1::EndpointSlice>>,
    namespaces: Vec<Arc<k8s_openapi::api::core::v1::Namespace>>,
    routes: Vec<Arc<breakwater_crds::gateway::HTTPRoute>>,
    pods: HashMap<ObjKey, Arc<Pod>>,
    /// The World of the last batch.
    previous: Option<World>,
    shared: crate::compile::Shared,
    batch: HashSet<Trigger>,
}

/// What a batch produced.
struct Compiled {
    world: World,
    shared: crate::compile::Shared,
    /// Policies whose status the batch may have changed.
    concerned: HashSet<ObjectRef<Lenient<CommunicationPolicy>>>,
    /// Each affected pod's new snapshot; `None` for a pod that is gone.
    snapshots: Vec<(ObjKey, Option<Snapshot>)>,
    /// Every pod with a sidecar, after a full recompile (the others' channels close); empty
    /// otherwise.
    live: HashSet<ObjKey>,
}

impl Inputs {
    /// Indexes the World, finds the affected pods and compiles them (on a blocking thread).
    fn compile(self) -> Compiled {
        let Inputs {
            stored,
            policies,
            services,
            slices,
            namespaces,
            routes,
            pods,
            previous,
            mut shared,
            batch,
        } = self;
        let world =
            World::after(previous.as_ref(), &policies, &services, &slices, &namespaces).with_routes(&routes);
        let concerned = concerned_policies(&world, &stored, &batch);
        let snapshots = affected(previous.as_ref(), &world, &pods, &batch)
            .into_iter()
            .map(|key| {
                let snapshot = pods.get(&key).map(|pod| world.compile_shared(pod, &mut shared));
                (key, snapshot)
            })
            .collect();
        let live = if batch.contains(&Trigger::All) { pods.into_keys().collect() } else { HashSet::new() };
        Compiled { world, shared, concerned, snapshots, live }
    }
}

/// What the hub keeps between batches.
#[derive(Debug, Default)]
struct State {
    /// The World of the last batch (what the current snapshots were compiled from).
    world: Option<World>,
    /// Shared Service snapshots.
    shared: crate::compile::Shared,
}

/// The pods `batch` concerns, asking the previous World (what they were compiled from) and the
/// new one; see the module docs.
fn affected(
    old: Option<&World>,
    new: &World,
    pods: &HashMap<ObjKey, Arc<Pod>>,
    batch: &HashSet<Trigger>,
) -> BTreeSet<ObjKey> {
    if batch.contains(&Trigger::All) {
        return pods.keys().cloned().collect();
    }
    let worlds: Vec<&World> = old.into_iter().chain([new]).collect();
    let mut out = BTreeSet::new();
    let callers = |world: &World, policy: &CommunicationPolicy, out: &mut BTreeSet<ObjKey>| {
        out.extend(pods.iter().filter(|(_, pod)| world.applies_to_pod(policy, pod)).map(|(k, _)| k.clone()));
    };
    for t in batch {
        match t {
            Trigger::All => {}
            Trigger::Pod(key) => {
                out.insert(key.clone());
            }
            Trigger::Namespace(ns) => out.extend(pods.keys().filter(|k| &k.namespace == ns).cloned()),
            Trigger::Policy(key, _) => {
                for world in &worlds {
                    if let Some(entry) = world.policy(key) {
                        // A policy on a route concerns its callers wherever the route governs
                        // their calls; one on Services, only the callers of Services it selects.
                        if entry.policy.spec.target_ref.is_route() || !entry.targets.is_empty() {
                            callers(world, &entry.policy, &mut out);
                        }
                        for target in &entry.targets {
                            out.extend(world.backers_of(target).cloned());
                        }
                    }
                }
            }
            Trigger::Service(key) => {
                for world in &worlds {
                    for entry in world.policies().iter().filter(|e| e.targets.contains(key)) {
                        callers(world, &entry.policy, &mut out);
                    }
                    out.extend(world.backers_of(key).cloned());
                }
            }
        }
    }
    // Pods that are gone are dropped by the caller; keep only the ones asked about that exist
    // or had a snapshot.
    out
}

/// The policies whose status `batch` may have changed, besides the changed policies themselves
/// (the controller sees those on its own): for a Service, the policies selecting it now or
/// listing it in their status; for a policy, the others sharing a target with it or naming it
/// as the winner.
fn concerned_policies(
    world: &World,
    stored: &[Arc<Lenient<CommunicationPolicy>>],
    batch: &HashSet<Trigger>,
) -> HashSet<ObjectRef<Lenient<CommunicationPolicy>>> {
    let reference = |p: &Lenient<CommunicationPolicy>| {
        Some(ObjectRef::new(p.metadata.name.as_deref()?).within(p.metadata.namespace.as_deref()?))
    };
    let mut out = HashSet::new();
    let lists = |p: &Lenient<CommunicationPolicy>, f: &dyn Fn(&breakwater_crds::ResolvedTarget) -> bool| {
        p.get().and_then(|p| p.status.as_ref()).is_some_and(|s| s.targets.iter().any(f))
    };
    for t in batch {
        match t {
            Trigger::All => out.extend(stored.iter().filter_map(|p| reference(p))),
            Trigger::Service(key) => {
                let labels = world_labels(world, key);
                for p in
                    stored.iter().filter(|p| p.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
                {
                    let selects = p.get().is_some_and(|p| p.spec.selects_service(&key.name, &labels));
                    if selects || lists(p, &|t| t.name == key.name) {
                        out.extend(reference(p));
                    }
                }
            }
            Trigger::Policy(key, deleted) => {
                let current = stored
                    .iter()
                    .find(|p| ObjKey::of(p.as_ref()).as_ref() == Some(key))
                    .and_then(|p| p.get().cloned());
                let Some(policy) = current.or_else(|| deleted.clone()) else { continue };
                let mut targets: BTreeSet<ObjKey> = world.selected_by(&policy).into_iter().collect();
                // A policy on a route: the policies on the same route, and those of the Services
                // it is attached to (their `overriddenBy` names it).
                let route = policy.spec.target_ref.route_name().map(|(name, _)| name.to_owned());
                if let Some(name) = &route {
                    let this = ObjKey::new(&key.namespace, name);
                    let parents = world
                        .routes()
                        .valid()
                        .iter()
                        .filter(|r| ObjKey::of(r.as_ref()).as_ref() == Some(&this));
                    targets.extend(
                        parents.flat_map(|r| crate::compile::routes::service_parents(r).collect::<Vec<_>>()),
                    );
                }
                let me = key.to_string();
                let names_me = |t: &breakwater_crds::ResolvedTarget| {
                    t.governed_by.as_deref() == Some(me.as_str())
                        || t.overridden_by.iter().any(|o| o.rsplit(": ").next() == Some(me.as_str()))
                };
                for p in
                    stored.iter().filter(|p| p.metadata.namespace.as_deref() == Some(key.namespace.as_str()))
                {
                    if ObjKey::of(p.as_ref()).as_ref() == Some(key) {
                        continue;
                    }
                    let shares = p.get().is_some_and(|other| {
                        world.selected_by(other).iter().any(|t| targets.contains(t))
                            || (route.is_some()
                                && other.spec.target_ref.route_name().map(|(n, _)| n) == route.as_deref())
                    });
                    if shares || lists(p, &names_me) {
                        out.extend(reference(p));
                    }
                }
            }
            Trigger::Pod(_) | Trigger::Namespace(_) => {}
        }
    }
    out
}

fn world_labels(world: &World, key: &ObjKey) -> std::collections::BTreeMap<String, String> {
    world.service(key).map(|s| s.labels.clone()).unwrap_or_default()
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::All => f.write_str("everything"),
            Trigger::Pod(k) => write!(f, "pod {k}"),
            Trigger::Namespace(n) => write!(f, "namespace {n}"),
            Trigger::Service(k) => write!(f, "service {k}"),
            Trigger::Policy(k, _) => write!(f, "policy {k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
        Arc::new(serde_json::from_value(v).expect("a valid object"))
    }

    fn pod(ns: &str, name: &str, app: &str) -> (ObjKey, Arc<Pod>) {
        let p: Arc<Pod> = obj(json!({"metadata": {"name": name, "namespace": ns, "labels": {"app": app}}}));
        (ObjKey::new(ns, name), p)
    }

    fn world(policies: &[serde_json::Value]) -> World {
        let policies: Vec<Arc<CommunicationPolicy>> = policies
            .iter()
            .map(|p| {
                obj(json!({"apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
                           "metadata": {"name": p["name"], "namespace": p["ns"]}, "spec": p["spec"]}))
            })
            .collect();
        let services = vec![
            obj(
                json!({"metadata": {"name": "payments", "namespace": "shop"}, "spec": {"ports": [{"port": 80}]}}),
            ),
            obj(
                json!({"metadata": {"name": "reports", "namespace": "web"}, "spec": {"ports": [{"port": 80}]}}),
            ),
        ];
        let slices = vec![obj(json!({
            "metadata": {"name": "payments-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "payments"}},
            "addressType": "IPv4", "ports": [{"port": 8080}],
            "endpoints": [{"addresses": ["198.18.0.9"], "targetRef": {"kind": "Pod", "name": "payments-1"}}],
        }))];
        World::new(&policies, &services, &slices, &[])
    }

    fn names(set: BTreeSet<ObjKey>) -> Vec<String> {
        set.into_iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn a_change_recompiles_the_pods_it_concerns_and_no_others() {
        let checkout = json!({"name": "checkout", "ns": "shop", "spec": {
            "targetRef": {"name": "payments"}, "timeouts": {"request": "1s"},
            "sources": [{"podSelector": {"matchLabels": {"app": "checkout"}}}]}});
        let web = json!({"name": "web", "ns": "web", "spec": {
            "targetRef": {"name": "reports"}, "timeouts": {"request": "1s"}, "sources": [{"namespace": "web"}]}});
        let pods: HashMap<ObjKey, Arc<Pod>> = [
            pod("shop", "a", "checkout"),
            pod("web", "b", "other"),
            pod("shop", "payments-1", "payments"),
            pod("shop", "idle", "nothing"),
        ]
        .into_iter()
        .collect();
        let new = world(&[checkout.clone(), web.clone()]);
        let one = |t: Trigger| names(affected(None, &new, &pods, &HashSet::from([t])));

        // The Service: callers of the policies selecting it, and the pods backing it.
        assert_eq!(one(Trigger::Service(ObjKey::new("shop", "payments"))), ["shop/a", "shop/payments-1"]);
        assert_eq!(one(Trigger::Policy(ObjKey::new("web", "web"), None)), ["web/b"]);
        assert_eq!(one(Trigger::Namespace("web".into())), ["web/b"]);
        assert_eq!(one(Trigger::Pod(ObjKey::new("shop", "idle"))), ["shop/idle"]);

        // A deleted policy: the previous World still knows whom it concerned.
        let without = world(&[web]);
        let gone = affected(
            Some(&new),
            &without,
            &pods,
            &HashSet::from([Trigger::Policy(ObjKey::new("shop", "checkout"), None)]),
        );
        assert_eq!(names(gone), ["shop/a", "shop/payments-1"]);
        let all = affected(None, &new, &pods, &HashSet::from([Trigger::All]));
        assert_eq!(all.len(), 4);

        // A policy on a route: its callers (wherever the route governs their calls), and no
        // Service's backers; the Service policies sharing its parent are concerned too.
        let on_route = json!({"name": "read", "ns": "shop", "spec": {
            "targetRef": {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "payments", "sectionName": "read"},
            "retries": {}, "sources": [{"podSelector": {"matchLabels": {"app": "checkout"}}}]}});
        let route: Arc<breakwater_crds::gateway::HTTPRoute> = obj(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "payments", "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "payments"}],
                     "rules": [{"name": "read", "backendRefs": [{"name": "payments", "port": 80}]}]},
        }));
        let new = world(&[checkout.clone(), on_route.clone()]).with_routes(&[route]);
        let trigger = HashSet::from([Trigger::Policy(ObjKey::new("shop", "read"), None)]);
        assert_eq!(names(affected(None, &new, &pods, &trigger)), ["shop/a"]);
        let stored: Vec<Arc<Lenient<CommunicationPolicy>>> = [&checkout, &on_route]
            .iter()
            .map(|p| {
                obj(json!({"apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
                           "metadata": {"name": p["name"], "namespace": p["ns"]}, "spec": p["spec"]}))
            })
            .collect();
        let concerned: Vec<String> =
            concerned_policies(&new, &stored, &trigger).into_iter().map(|r| r.name).collect();
        assert_eq!(concerned, ["checkout"], "the Service's policy lists it in overriddenBy");
    }
}
