//! The in-memory index: one watch per kind (CommunicationPolicy, Service, EndpointSlice, Pod,
//! Namespace), each kept in a kube-runtime reflector store, and every change turned into a
//! [`Trigger`] naming what changed.
//!
//! Every replica keeps the whole index warm — only the lease holder writes status, but any
//! replica must be able to take over, and every replica serves snapshots. Objects are stripped
//! as they arrive (managed fields, the last-applied annotation, and all of a Pod but its
//! labels, ServiceAccount and phase), which is most of their memory. Pods are watched through a
//! label selector ([`crate::Settings::pod_selector`]): only pods with a sidecar get snapshots.
//!
//! Triggers go through one bounded channel to the snapshot hub. The policy watch is driven by
//! the controller (it is its trigger stream), whose inspection callback cannot wait, so a full
//! channel sets an overflow flag instead; the hub then recompiles everything once, which is
//! slower but never wrong. After a relist (a watch that expired), objects deleted meanwhile left
//! no event, so a relist asks for a full recompile too.

mod lenient;

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use breakwater_crds::CommunicationPolicy;
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
    sync::{mpsc, watch},
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
    overflow: Arc<AtomicBool>,
}

/// The receiving side, for the hub.
#[derive(Debug)]
pub struct TriggerQueue {
    rx: mpsc::Receiver<Trigger>,
    overflow: Arc<AtomicBool>,
}

/// How many triggers may wait for the hub.
const TRIGGER_QUEUE: usize = 8192;

/// A trigger channel.
pub fn triggers() -> (Triggers, TriggerQueue) {
    let (tx, rx) = mpsc::channel(TRIGGER_QUEUE);
    let overflow = Arc::new(AtomicBool::new(false));
    (Triggers { tx, overflow: overflow.clone() }, TriggerQueue { rx, overflow })
}

impl Triggers {
    /// Sends without waiting; a full queue turns into one [`Trigger::All`].
    pub fn send_now(&self, t: Trigger) {
        if self.tx.try_send(t).is_err() {
            self.overflow.store(true, Ordering::Release);
        }
    }

    /// Sends, waiting for room.
    pub async fn send(&self, t: Trigger) {
        let _ = self.tx.send(t).await;
    }
}

impl TriggerQueue {
    /// The next trigger; `None` once every sender is gone.
    pub async fn recv(&mut self) -> Option<Trigger> {
        if self.overflow.swap(false, Ordering::AcqRel) {
            return Some(Trigger::All);
        }
        self.rx.recv().await
    }

    /// A trigger already waiting, if any.
    pub fn try_recv(&mut self) -> Option<Trigger> {
        if self.overflow.swap(false, Ordering::AcqRel) {
            return Some(Trigger::All);
        }
        self.rx.try_recv().ok()
    }
}

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
    ready: Arc<Readiness>,
}

/// Which stores have had their first list. Tracked from the watch events rather than with
/// `Store::wait_until_ready`, which wakes only one of several tasks waiting on it (its oneshot
/// keeps one waker) — and the controller already waits on the policy store.
struct Readiness {
    synced: [AtomicBool; KINDS.len()],
    all: watch::Sender<bool>,
}

/// The watched kinds, in the order [`Readiness`] tracks them.
const KINDS: [&str; 5] = ["CommunicationPolicy", "Service", "EndpointSlice", "Pod", "Namespace"];

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

/// The policy watch: the controller drives it (it is the controller's trigger), and as it does
/// the policy store fills and triggers reach the hub.
pub type PolicyStream =
    futures_util::stream::BoxStream<'static, Result<Lenient<CommunicationPolicy>, watcher::Error>>;

impl Index {
    /// Starts the watches of every kind but policies (whose stream is returned, for the
    /// controller to drive). `pod_selector` limits the Pods watched.
    pub fn start(
        client: &Client,
        pod_selector: &str,
        triggers: Triggers,
        metrics: Arc<Metrics>,
    ) -> (Index, PolicyStream, Vec<JoinHandle<()>>) {
        let (policies, policy_writer) = reflector::store();
        let (services, service_writer) = reflector::store();
        let (slices, slice_writer) = reflector::store();
        let (pods, pod_writer) = reflector::store();
        let (namespaces, namespace_writer) = reflector::store();
        let ready = Arc::new(Readiness::new());
        let index = Index { policies, services, slices, pods, namespaces, ready: ready.clone() };

        let tasks = vec![
            spawn_watch(
                Api::<Lenient<Service>>::all(client.clone()),
                watcher::Config::default(),
                service_writer,
                (triggers.clone(), metrics.clone(), ready.clone(), "Service"),
                |s| ObjKey::of(s).map(Trigger::Service),
            ),
            spawn_watch(
                Api::<Lenient<EndpointSlice>>::all(client.clone()),
                watcher::Config::default(),
                slice_writer,
                (triggers.clone(), metrics.clone(), ready.clone(), "EndpointSlice"),
                slice_trigger,
            ),
            spawn_watch(
                Api::<Lenient<Pod>>::all(client.clone()),
                watcher::Config::default().labels(pod_selector),
                pod_writer,
                (triggers.clone(), metrics.clone(), ready.clone(), "Pod"),
                |p| ObjKey::of(p).map(Trigger::Pod),
            ),
            spawn_watch(
                Api::<Lenient<Namespace>>::all(client.clone()),
                watcher::Config::default(),
                namespace_writer,
                (triggers.clone(), metrics.clone(), ready.clone(), "Namespace"),
                |n| Some(Trigger::Namespace(n.name_any())),
            ),
        ];

        let policy_stream =
            watcher(Api::<Lenient<CommunicationPolicy>>::all(client.clone()), watcher::Config::default())
                .default_backoff()
                .modify(strip)
                .reflect(policy_writer)
                .inspect({
                    // The generation each policy was last seen with: a status write (ours)
                    // changes the object but not its generation, nor any snapshot.
                    let mut generations: HashMap<ObjKey, Option<i64>> = HashMap::new();
                    move |event| {
                        // The controller polls this stream: no waiting here (see the module docs).
                        let found = triggers_for(&metrics, &ready, "CommunicationPolicy", event, |p| {
                            let key = ObjKey::of(p)?;
                            if matches!(event, Ok(watcher::Event::Delete(_))) {
                                generations.remove(&key);
                                return Some(Trigger::Policy(key, p.get().cloned()));
                            }
                            let generation = p.metadata.generation;
                            let seen = generations.insert(key.clone(), generation);
                            // A relist (InitApply) yields no trigger anyway; an unreadable
                            // object has no generation of note: always pass it on.
                            (seen != Some(generation) || p.get().is_none())
                                .then_some(Trigger::Policy(key, None))
                        });
                        for t in found {
                            triggers.send_now(t);
                        }
                    }
                })
                .applied_objects()
                .boxed();
        (index, policy_stream, tasks)
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
    }

    /// How many objects of each kind are indexed.
    pub fn counts(&self) -> [(&'static str, usize); 5] {
        [
            ("CommunicationPolicy", self.policies.len()),
            ("Service", self.services.len()),
            ("EndpointSlice", self.slices.len()),
            ("Pod", self.pods.len()),
            ("Namespace", self.namespaces.len()),
        ]
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

/// Drives one watch into its store, sending the triggers of each event (waiting for room).
fn spawn_watch<K>(
    api: Api<Lenient<K>>,
    config: watcher::Config,
    writer: reflector::store::Writer<Lenient<K>>,
    (triggers, metrics, ready, kind): (Triggers, Arc<Metrics>, Arc<Readiness>, &'static str),
    key: fn(&Lenient<K>) -> Option<Trigger>,
) -> JoinHandle<()>
where
    K: Resource<DynamicType = ()> + Strip + DeserializeOwned + Clone + Debug + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let stream = watcher(api, config).default_backoff().modify(strip).reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            for t in triggers_for(&metrics, &ready, kind, &event, key) {
                triggers.send(t).await;
            }
        }
    })
}

/// The triggers of one watch event; malformed objects and watch errors are logged and counted,
/// and never stop the watch.
fn triggers_for<K>(
    metrics: &Metrics,
    ready: &Readiness,
    kind: &'static str,
    event: &Result<watcher::Event<Lenient<K>>, watcher::Error>,
    mut key: impl FnMut(&Lenient<K>) -> Option<Trigger>,
) -> Vec<Trigger> {
    match event {
        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
            if let Err(error) = &o.object {
                metrics.malformed_object(kind);
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
            ready.synced(kind);
            vec![Trigger::All]
        }
        Err(error) => {
            metrics.watch_error(kind);
            tracing::warn!(kind, %error, "watch failed; retrying with backoff");
            Vec::new()
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
