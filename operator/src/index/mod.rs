//! The in-memory index: one watch per kind (CommunicationPolicy, Service, EndpointSlice, Pod,
//! Namespace, and the Gateway API's HTTPRoute when it is installed), each kept in a
//! kube-runtime reflector store, and every change turned into a [`Trigger`] naming what changed.
//!
//! The Gateway API is optional: the HTTPRoute watch starts once a list of HTTPRoutes succeeds,
//! asked again every [`ROUTE_API_POLL`] until then (so installing the CRDs later needs no
//! restart); until it does, HTTPRoutes count as listed, and there are none. A route change
//! recompiles every pod (routes govern every caller of a Service, and are rare) and wakes the
//! route status writer ([`Index::route_changes`]).
//!
//! Every replica keeps the whole index warm — only the lease holder writes status, but any
//! replica must be able to take over, and every replica serves snapshots. Objects are stripped
//! as they arrive (managed fields, the last-applied annotation, and all of a Pod but its
//! labels, ServiceAccount and phase), which is most of their memory. Pods are watched through a
//! label selector ([`crate::Settings::pod_selector`]): only pods with a sidecar get snapshots.
//!
//! The index owns every watch, the policies' too: each runs in a task of its own, so what reads
//! the stores can stall or stop without stopping the snapshots. Triggers go through one bounded
//! channel to the snapshot hub (a watch waits for room). The status controller hears of policy
//! changes on a broadcast channel ([`Index::policy_changes`]) that never waits for it: a reader
//! that falls behind is told to look at every policy. After a relist (a watch that expired),
//! objects deleted meanwhile left no event, so a relist asks for a full recompile too.

mod lenient;

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use breakwater_crds::{CommunicationPolicy, gateway::HTTPRoute};
use futures_util::StreamExt;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, PodSpec, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::{
    sync::{broadcast, mpsc, watch},
    task::JoinHandle,
};

pub use self::lenient::Lenient;
use crate::{compile::World, key::ObjKey, metrics::Metrics};

/// What changed; the hub turns it into the pods (and the controller into the policies) it
/// concerns. Two triggers are equal when they name the same object (a deleted policy's last
/// state does not count), so a batch holds each once.
#[derive(Debug, Clone)]
pub enum Trigger {
    /// Anything may have changed (a relist, or triggers were lost to overflow).
    All,
    /// A Pod changed or went.
    Pod(ObjKey),
    /// A Namespace's labels may have changed.
    Namespace(String),
    /// A Service, or one of its EndpointSlices, changed or went.
    Service(ObjKey),
    /// A policy changed, or went (then with its last state, to find what it governed).
    Policy(ObjKey, Option<Arc<CommunicationPolicy>>),
}

impl Trigger {
    fn identity(&self) -> (u8, Option<&ObjKey>, Option<&str>) {
        match self {
            Trigger::All => (0, None, None),
            Trigger::Pod(k) => (1, Some(k), None),
            Trigger::Namespace(n) => (2, None, Some(n)),
            Trigger::Service(k) => (3, Some(k), None),
            Trigger::Policy(k, _) => (4, Some(k), None),
        }
    }
}

impl PartialEq for Trigger {
    fn eq(&self, other: &Self) -> bool {
        self.identity() == other.identity()
    }
}

impl Eq for Trigger {}

impl std::hash::Hash for Trigger {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.identity().hash(state);
    }
}

/// The sending side of the trigger channel.
#[derive(Debug, Clone)]
pub struct Triggers {
    tx: mpsc::Sender<Trigger>,
}

/// The receiving side, for the hub.
#[derive(Debug)]
pub struct TriggerQueue {
    rx: mpsc::Receiver<Trigger>,
}

/// How many triggers may wait for the hub.
const TRIGGER_QUEUE: usize = 8192;

/// A trigger channel.
pub fn triggers() -> (Triggers, TriggerQueue) {
    let (tx, rx) = mpsc::channel(TRIGGER_QUEUE);
    (Triggers { tx }, TriggerQueue { rx })
}

impl Triggers {
    /// Sends, waiting for room.
    pub async fn send(&self, t: Trigger) {
        let _ = self.tx.send(t).await;
    }
}

impl TriggerQueue {
    /// The next trigger; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Trigger> {
        self.rx.recv().await
    }

    /// A trigger already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Trigger> {
        self.rx.try_recv().ok()
    }
}

/// A policy change, as the status controller hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyChange {
    /// This policy changed (its status too: a status someone else wrote is put back) or went.
    One(ObjKey),
    /// Every policy may have changed (a relist).
    All,
}

/// How many policy changes a slow reader may fall behind before it is told [`PolicyChange::All`].
const POLICY_CHANGES: usize = 1024;

/// The reflector stores, shared by the hub, the controller and the admin endpoints.
#[derive(Clone)]
pub struct Index {
    /// Every CommunicationPolicy.
    pub policies: Store<Lenient<CommunicationPolicy>>,
    /// Every Service.
    pub services: Store<Lenient<Service>>,
    /// Every EndpointSlice.
    pub slices: Store<Lenient<EndpointSlice>>,
    /// Pods with a sidecar.
    pub pods: Store<Lenient<Pod>>,
    /// Every Namespace.
    pub namespaces: Store<Lenient<Namespace>>,
    /// Every HTTPRoute (none while the Gateway API is not installed).
    pub routes: Store<Lenient<HTTPRoute>>,
    ready: Arc<Readiness>,
    policy_changes: broadcast::Sender<PolicyChange>,
    namespace_changes: watch::Sender<()>,
    route_changes: watch::Sender<()>,
}

/// How often the operator asks whether the Gateway API's HTTPRoute is installed, until it is.
pub const ROUTE_API_POLL: std::time::Duration = std::time::Duration::from_secs(15);

/// Which stores have had their first list. Tracked from the watch events rather than with
/// `Store::wait_until_ready`, which wakes only one of several tasks waiting on it (its oneshot
/// keeps one waker).
struct Readiness {
    synced: [AtomicBool; KINDS.len()],
    all: watch::Sender<bool>,
}

/// The watched kinds, in the order [`Readiness`] tracks them.
const KINDS: [&str; 6] = ["CommunicationPolicy", "Service", "EndpointSlice", "Pod", "Namespace", "HTTPRoute"];

impl Readiness {
    fn new() -> Self {
        Readiness { synced: Default::default(), all: watch::Sender::new(false) }
    }

    /// `kind` completed a list.
    fn synced(&self, kind: &str) {
        if let Some(i) = KINDS.iter().position(|k| *k == kind) {
            self.synced[i].store(true, Ordering::Release);
        }
        if self.synced.iter().all(|s| s.load(Ordering::Acquire)) && !*self.all.borrow() {
            self.all.send_replace(true);
            tracing::info!("indexes synced");
        }
    }
}

impl Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("ready", &self.is_ready()).finish_non_exhaustive()
    }
}

impl Index {
    /// Starts the watches of every kind, each in its own task (returned, to stop them).
    /// `pod_selector` limits the Pods watched.
    pub fn start(
        client: &Client,
        pod_selector: &str,
        triggers: Triggers,
        metrics: Arc<Metrics>,
    ) -> (Index, Vec<JoinHandle<()>>) {
        let (policies, policy_writer) = reflector::store();
        let (services, service_writer) = reflector::store();
        let (slices, slice_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let (namespaces, namespace_writer) = reflector::store();
        let (routes, route_writer) = reflector::store();
        let ready = Arc::new(Readiness::new());
        let (policy_changes, _) = broadcast::channel(POLICY_CHANGES);
        let namespace_changes = watch::Sender::new(());
        let route_changes = watch::Sender::new(());
        let index = Index {
            policies,
            services,
            slices,
            pods,
            namespaces,
            routes,
            ready: ready.clone(),
            policy_changes: policy_changes.clone(),
            namespace_changes: namespace_changes.clone(),
            route_changes: route_changes.clone(),
        };
        let on = |kind: &'static str| Watched { kind, metrics: metrics.clone(), ready: ready.clone() };

        let tasks = vec![
            spawn_watch(
                Api::<Lenient<CommunicationPolicy>>::all(client.clone()),
                watcher::Config::default(),
                policy_writer,
                triggers.clone(),
                {
                    let watched = on("CommunicationPolicy");
                    // The generation each policy was last seen with: a status write (ours)
                    // changes the object but not its generation, nor any snapshot.
                    let mut generations: HashMap<ObjKey, Option<i64>> = HashMap::new();
                    move |event| {
                        // Sent whether or not anyone listens (no receiver is not an error).
                        match event {
                            Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) => {
                                if let Some(key) = ObjKey::of(p) {
                                    let _ = policy_changes.send(PolicyChange::One(key));
                                }
                            }
                            Ok(watcher::Event::InitDone) => {
                                let _ = policy_changes.send(PolicyChange::All);
                            }
                            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) | Err(_) => {}
                        }
                        watched.triggers(event, |p| policy_trigger(&mut generations, event, p))
                    }
                },
            ),
            spawn_watch(
                Api::<Lenient<Service>>::all(client.clone()),
                watcher::Config::default(),
                service_writer,
                triggers.clone(),
                {
                    // Services decide what routes' references resolve to.
                    let watched = on("Service");
                    let route_changes = route_changes.clone();
                    move |event| {
                        let found = watched.triggers(event, |s| ObjKey::of(s).map(Trigger::Service));
                        if !found.is_empty() {
                            route_changes.send_replace(());
                        }
                        found
                    }
                },
            ),
            spawn_route_watch(client.clone(), route_writer, triggers.clone(), on("HTTPRoute"), route_changes),
            spawn_watch(
                Api::<Lenient<EndpointSlice>>::all(client.clone()),
                watcher::Config::default(),
                slice_writer,
                triggers.clone(),
                on("EndpointSlice").keyed(slice_trigger),
            ),
            spawn_watch(
                Api::<Lenient<Pod>>::all(client.clone()),
                watcher::Config::default().labels(pod_selector),
                pod_writer,
                triggers.clone(),
                on("Pod").keyed(|p| ObjKey::of(p).map(Trigger::Pod)),
            ),
            spawn_watch(
                Api::<Lenient<Namespace>>::all(client.clone()),
                watcher::Config::default(),
                namespace_writer,
                triggers,
                {
                    let watched = on("Namespace");
                    move |event| {
                        let found = watched.triggers(event, |n| Some(Trigger::Namespace(n.name_any())));
                        if !found.is_empty() {
                            namespace_changes.send_replace(());
                        }
                        found
                    }
                },
            ),
        ];
        (index, tasks)
    }

    /// Marked changed whenever a Namespace is added, changed or deleted, or the Namespaces are
    /// listed again (changes coalesce: a reader looks at the store).
    pub fn namespace_changes(&self) -> watch::Receiver<()> {
        self.namespace_changes.subscribe()
    }

    /// Marked changed whenever an HTTPRoute or a Service changes (what a route's status is made
    /// of), or they are listed again.
    pub fn route_changes(&self) -> watch::Receiver<()> {
        self.route_changes.subscribe()
    }

    /// Policy changes from now on, for the status controller; see the module docs.
    pub fn policy_changes(&self) -> broadcast::Receiver<PolicyChange> {
        self.policy_changes.subscribe()
    }

    /// Whether every store has completed its first list.
    pub fn is_ready(&self) -> bool {
        *self.ready.all.borrow()
    }

    /// Waits until [`Index::is_ready`].
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.all.subscribe();
        // The sender lives as long as the index: an error cannot happen while we hold it.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    /// Everything compile needs, indexed from the stores as they are now.
    pub fn world(&self) -> World {
        self.world_after(None)
    }

    /// [`Index::world`], reusing what `previous` resolved for objects that did not change.
    pub fn world_after(&self, previous: Option<&World>) -> World {
        World::after(
            previous,
            &readable(&self.policies),
            &readable(&self.services),
            &readable(&self.slices),
            &readable(&self.namespaces),
        )
        .with_routes(&readable(&self.routes))
    }

    /// How many objects of each kind are indexed.
    pub fn counts(&self) -> [(&'static str, usize); 6] {
        [
            ("CommunicationPolicy", self.policies.len()),
            ("Service", self.services.len()),
            ("EndpointSlice", self.slices.len()),
            ("Pod", self.pods.len()),
            ("Namespace", self.namespaces.len()),
            ("HTTPRoute", self.routes.len()),
        ]
    }
}

#[cfg(test)]
impl Index {
    /// An index holding these objects (as JSON), every kind listed: for tests without an API
    /// server.
    pub(crate) fn of(policies: &[serde_json::Value], services: &[serde_json::Value]) -> Index {
        fn store<K>(objects: &[serde_json::Value]) -> Store<Lenient<K>>
        where
            K: Resource<DynamicType = ()> + DeserializeOwned + Clone + 'static,
        {
            let (reader, mut writer) = reflector::store();
            for o in objects {
                let object = serde_json::from_value(o.clone()).expect("an object");
                writer.apply_watcher_event(&watcher::Event::Apply(object));
            }
            reader
        }
        let ready = Readiness::new();
        for kind in KINDS {
            ready.synced(kind);
        }
        Index {
            policies: store(policies),
            services: store(services),
            slices: store(&[]),
            pods: store(&[]),
            namespaces: store(&[]),
            routes: store(&[]),
            ready: Arc::new(ready),
            policy_changes: broadcast::channel(POLICY_CHANGES).0,
            namespace_changes: watch::Sender::new(()),
            route_changes: watch::Sender::new(()),
        }
    }

    /// Tells the policy changes' readers about `change`, as the policy watch does.
    pub(crate) fn announce(&self, change: PolicyChange) {
        let _ = self.policy_changes.send(change);
    }
}

/// The objects of a store that could be read.
pub fn readable<K>(store: &Store<Lenient<K>>) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + 'static,
{
    store.state().iter().filter_map(|l| l.get().cloned()).collect()
}

fn slice_trigger(s: &Lenient<EndpointSlice>) -> Option<Trigger> {
    let service = s.metadata.labels.as_ref()?.get(crate::compile::SERVICE_NAME_LABEL)?;
    Some(Trigger::Service(ObjKey::new(s.metadata.namespace.as_deref()?, service)))
}

/// A policy event's trigger for the hub: a deletion (with the last state, to find what the
/// policy governed), or a policy seen with a new generation.
fn policy_trigger(
    generations: &mut HashMap<ObjKey, Option<i64>>,
    event: &WatchEvent<CommunicationPolicy>,
    p: &Lenient<CommunicationPolicy>,
) -> Option<Trigger> {
    let key = ObjKey::of(p)?;
    if matches!(event, Ok(watcher::Event::Delete(_))) {
        generations.remove(&key);
        return Some(Trigger::Policy(key, p.get().cloned()));
    }
    let generation = p.metadata.generation;
    let seen = generations.insert(key.clone(), generation);
    // A relist (InitApply) yields no trigger anyway; an unreadable object has no generation of
    // note: always pass it on.
    (seen != Some(generation) || p.get().is_none()).then_some(Trigger::Policy(key, None))
}

/// The HTTPRoute watch, once the Gateway API is installed; see the module docs. A route event
/// recompiles every pod.
fn spawn_route_watch(
    client: Client,
    writer: reflector::store::Writer<Lenient<HTTPRoute>>,
    triggers: Triggers,
    watched: Watched,
    route_changes: watch::Sender<()>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api = Api::<Lenient<HTTPRoute>>::all(client);
        let mut told = false;
        loop {
            match api.list_metadata(&kube::api::ListParams::default().limit(1)).await {
                Ok(_) => break,
                Err(error) => {
                    if !told {
                        tracing::info!(%error, "HTTPRoutes cannot be listed (is the Gateway API installed?); routes are off until they can");
                        told = true;
                    }
                    // No routes to wait for: the kind counts as listed.
                    watched.ready.synced(watched.kind);
                }
            }
            tokio::time::sleep(ROUTE_API_POLL).await;
        }
        tracing::info!("HTTPRoutes can be listed; watching them");
        let on_event = move |event: &WatchEvent<HTTPRoute>| {
            let found = watched.triggers(event, |_| Some(Trigger::All));
            if !found.is_empty() || matches!(event, Ok(watcher::Event::InitDone)) {
                route_changes.send_replace(());
            }
            found
        };
        drive_watch(api, watcher::Config::default(), writer, triggers, on_event).await;
    })
}

/// One watch event.
type WatchEvent<K> = Result<watcher::Event<Lenient<K>>, watcher::Error>;

/// Drives one watch into its store, sending the triggers `on_event` finds in each event
/// (waiting for room).
fn spawn_watch<K>(
    api: Api<Lenient<K>>,
    config: watcher::Config,
    writer: reflector::store::Writer<Lenient<K>>,
    triggers: Triggers,
    on_event: impl FnMut(&WatchEvent<K>) -> Vec<Trigger> + Send + 'static,
) -> JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Strip + DeserializeOwned + Clone + Debug + Send + Sync + 'static,
{
    tokio::spawn(drive_watch(api, config, writer, triggers, on_event))
}

/// One watch into its store, sending the triggers `on_event` finds in each event; runs as long
/// as the watch (which retries failures with backoff itself).
async fn drive_watch<K>(
    api: Api<Lenient<K>>,
    config: watcher::Config,
    writer: reflector::store::Writer<Lenient<K>>,
    triggers: Triggers,
    mut on_event: impl FnMut(&WatchEvent<K>) -> Vec<Trigger> + Send + 'static,
) where
    K: Resource<DynamicType = ()> + Strip + DeserializeOwned + Clone + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, config).default_backoff().modify(strip).reflect(writer);
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        for t in on_event(&event) {
            triggers.send(t).await;
        }
    }
}

/// What a watch reports to: its kind's name, the metrics, the readiness.
struct Watched {
    kind: &'static str,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
}

impl Watched {
    /// The event handler of a kind whose objects each make one trigger, `key`.
    fn keyed<K>(self, key: fn(&Lenient<K>) -> Option<Trigger>) -> impl FnMut(&WatchEvent<K>) -> Vec<Trigger> {
        move |event| self.triggers(event, key)
    }

    /// The triggers of one watch event; malformed objects and watch errors are logged and
    /// counted, and never stop the watch.
    fn triggers<K>(
        &self,
        event: &WatchEvent<K>,
        key: impl FnOnce(&Lenient<K>) -> Option<Trigger>,
    ) -> Vec<Trigger> {
        let kind = self.kind;
        match event {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                if let Err(error) = &o.object {
                    self.metrics.malformed_object(kind);
                    let name = o.metadata.name.as_deref().unwrap_or_default();
                    let namespace = o.metadata.namespace.as_deref().unwrap_or_default();
                    tracing::warn!(kind, %namespace, %name, %error, "object cannot be read; it is ignored");
                }
                // During a (re)list, one full recompile at the end beats one trigger per object.
                if matches!(event, Ok(watcher::Event::InitApply(_))) {
                    Vec::new()
                } else {
                    key(o).into_iter().collect()
                }
            }
            Ok(watcher::Event::Delete(o)) => key(o).into_iter().collect(),
            Ok(watcher::Event::Init) => Vec::new(),
            Ok(watcher::Event::InitDone) => {
                self.ready.synced(kind);
                vec![Trigger::All]
            }
            Err(error) => {
                self.metrics.watch_error(kind);
                tracing::warn!(kind, %error, "watch failed; retrying with backoff");
                Vec::new()
            }
        }
    }
}

/// What of an object the index keeps; see the module docs.
pub trait Strip {
    /// Drops what no index reads.
    fn strip(&mut self) {}
}

impl Strip for CommunicationPolicy {}
impl Strip for Service {}
impl Strip for EndpointSlice {}
impl Strip for Namespace {}
impl Strip for HTTPRoute {}
impl Strip for Pod {
    fn strip(&mut self) {
        let service_account_name = self.spec.as_ref().and_then(|s| s.service_account_name.clone());
        self.spec = Some(PodSpec { service_account_name, ..Default::default() });
        let phase = self.status.as_ref().and_then(|s| s.phase.clone());
        self.status = Some(k8s_openapi::api::core::v1::PodStatus { phase, ..Default::default() });
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn strip<K: Resource + Strip>(l: &mut Lenient<K>) {
    fn meta(m: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        m.managed_fields = None;
        if let Some(a) = m.annotations.as_mut() {
            a.remove(LAST_APPLIED);
        }
    }
    meta(&mut l.metadata);
    if let Ok(object) = l.object.as_mut()
        && let Some(object) = Arc::get_mut(object)
    {
        meta(object.meta_mut());
        object.strip();
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(name: &str, generation: i64, spec: serde_json::Value) -> Lenient<CommunicationPolicy> {
        serde_json::from_value(json!({
            "apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
            "metadata": {"name": name, "namespace": "shop", "generation": generation},
            "spec": spec,
        }))
        .expect("a policy")
    }

    fn watched(kind: &'static str) -> (Watched, Arc<Metrics>, Arc<Readiness>) {
        let (metrics, ready) = (Arc::new(Metrics::new()), Arc::new(Readiness::new()));
        (Watched { kind, metrics: metrics.clone(), ready: ready.clone() }, metrics, ready)
    }

    #[test]
    fn a_list_triggers_one_full_recompile_at_its_end_and_marks_the_kind_synced() {
        let (watched, _, ready) = watched("Service");
        let service: Lenient<Service> =
            serde_json::from_value(json!({"metadata": {"name": "payments", "namespace": "shop"}}))
                .expect("a service");
        let key = |s: &Lenient<Service>| ObjKey::of(s).map(Trigger::Service);
        assert!(watched.triggers(&Ok(watcher::Event::Init), key).is_empty());
        assert!(
            watched.triggers(&Ok(watcher::Event::InitApply(service.clone())), key).is_empty(),
            "none per object"
        );
        assert!(!ready.synced[1].load(Ordering::Acquire));
        assert_eq!(watched.triggers(&Ok(watcher::Event::InitDone), key), [Trigger::All]);
        assert!(ready.synced[1].load(Ordering::Acquire), "Service listed");
        assert!(!*ready.all.borrow(), "the other kinds are not");
        let one = Trigger::Service(ObjKey::new("shop", "payments"));
        assert_eq!(
            watched.triggers(&Ok(watcher::Event::Apply(service.clone())), key),
            std::slice::from_ref(&one)
        );
        assert_eq!(watched.triggers(&Ok(watcher::Event::Delete(service)), key), [one]);
    }

    #[test]
    fn malformed_objects_and_watch_errors_are_counted_and_stop_nothing() {
        let (watched, metrics, _) = watched("CommunicationPolicy");
        let bad = policy("bad", 1, json!({"timeouts": {"request": 17}}));
        assert!(bad.get().is_none());
        let key = |p: &Lenient<CommunicationPolicy>| ObjKey::of(p).map(|k| Trigger::Policy(k, None));
        // Still a trigger: its status says why it cannot be used.
        assert_eq!(watched.triggers(&Ok(watcher::Event::Apply(bad)), key).len(), 1);
        let error = watcher::Error::NoResourceVersion;
        assert!(watched.triggers(&Err(error), key).is_empty());
        let text = metrics.encode();
        for family in [
            "malformed_objects_total{kind=\"CommunicationPolicy\"} 1",
            "watch_errors_total{kind=\"CommunicationPolicy\"} 1",
        ] {
            assert!(text.contains(family), "{family} in\n{text}");
        }
    }

    #[test]
    fn a_policy_triggers_the_hub_on_a_new_generation_or_deletion_not_on_a_status_write() {
        let mut generations = HashMap::new();
        let mut trigger = |event: WatchEvent<CommunicationPolicy>| {
            let p = match &event {
                Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) => p.clone(),
                _ => unreachable!("the test sends objects"),
            };
            policy_trigger(&mut generations, &event, &p)
        };
        let spec = json!({"targetRef": {"name": "payments"}});
        let key = ObjKey::new("shop", "p");
        assert_eq!(
            trigger(Ok(watcher::Event::Apply(policy("p", 1, spec.clone())))),
            Some(Trigger::Policy(key.clone(), None))
        );
        // Our status write: the same generation, no snapshot can change.
        assert_eq!(trigger(Ok(watcher::Event::Apply(policy("p", 1, spec.clone())))), None);
        assert_eq!(
            trigger(Ok(watcher::Event::Apply(policy("p", 2, spec.clone())))),
            Some(Trigger::Policy(key.clone(), None))
        );
        // A deletion carries the last state, to find what the policy governed.
        let Some(Trigger::Policy(k, Some(last))) =
            trigger(Ok(watcher::Event::Delete(policy("p", 2, spec.clone()))))
        else {
            panic!("a deletion trigger with the last state")
        };
        assert_eq!((k, last.metadata.generation), (key.clone(), Some(2)));
        // Created again with generation 1: news, although generation 1 was seen before.
        assert!(trigger(Ok(watcher::Event::Apply(policy("p", 1, spec)))).is_some());
        // An unreadable policy is always passed on.
        let bad = policy("p", 1, json!({"timeouts": {"request": 17}}));
        assert!(trigger(Ok(watcher::Event::Apply(bad))).is_some());
    }
}
