//! One Pod, from scheduled to deleted: network namespace, init containers in order (native
//! sidecars — init containers with `restartPolicy: Always` — keep running), containers, restarts,
//! readiness, status, and a graceful stop.
//!
//! Supervision polls the children every [`TICK`] rather than awaiting each exit: the kubelet
//! itself relists containers periodically (PLEG), and polling keeps one owner for every `Child`,
//! which makes stop and restart simple.

mod resolve;
mod status;
mod supervise;

use self::supervise::{backoff, stop_all, wait_exit};

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Preconditions},
};
use tokio::{process::Child, sync::watch, time::Instant};

use super::{container::Launch, images::ImageTable};
use crate::network::{HostNetwork, PodNetns};

/// How often containers are checked for exits and probed while not ready.
pub(crate) const TICK: Duration = Duration::from_millis(200);
/// How soon a pod whose volumes or environment could not be made is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// The longest a container gets between SIGTERM and SIGKILL, whatever the pod asks (tests stay fast).
const MAX_GRACE: Duration = Duration::from_secs(10);

/// Why a pod worker should stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The Pod has a deletionTimestamp: stop, then delete the object (grace 0, UID precondition).
    Deleted,
    /// The Pod object is already gone.
    Gone,
    /// The runner is shutting down: stop, leave the object.
    Shutdown,
}

/// What every pod worker shares.
pub(crate) struct Ctx {
    pub client: Client,
    pub node: String,
    pub network: Arc<HostNetwork>,
    pub images: ImageTable,
    pub pods_dir: PathBuf,
    /// Pod address slots (the last octet) in use.
    pub slots: tokio::sync::Mutex<std::collections::BTreeSet<u8>>,
    pub seq: AtomicU32,
}

impl Ctx {
    async fn take_slot(&self) -> Option<u8> {
        let mut used = self.slots.lock().await;
        let slot = (2..=254u8).find(|s| !used.contains(s))?;
        used.insert(slot);
        Some(slot)
    }

    async fn release_slot(&self, slot: u8) {
        self.slots.lock().await.remove(&slot);
    }
}

/// Runs `pod` until told to stop.
pub(crate) async fn run(ctx: Arc<Ctx>, pod: Pod, mut stop: watch::Receiver<Option<Stop>>) {
    let mut worker = Worker::new(Arc::clone(&ctx), pod);
    let key = worker.key.clone();
    tracing::debug!(pod = %key, "starting pod");
    let stopping = stop.borrow_and_update().is_some();
    if !stopping && let Err(message) = worker.live(&mut stop).await {
        tracing::warn!(pod = %key, %message, "pod failed");
    }
    // Whatever happened, wait for the reason to stop before tearing down.
    let reason = loop {
        if let Some(reason) = *stop.borrow() {
            break reason;
        }
        if stop.changed().await.is_err() {
            break Stop::Shutdown;
        }
    };
    worker.teardown().await;
    if reason == Stop::Deleted {
        worker.delete().await;
    }
    tracing::debug!(pod = %key, ?reason, "pod stopped");
}

/// One container's process and what the status reports about it.
struct Running {
    launch: Launch,
    child: Option<Child>,
    started_at: Option<Time>,
    restarts: u32,
    ready: bool,
    next_probe: Instant,
    /// Exit code and time of the last run, if it ended.
    terminated: Option<(i32, Time)>,
    /// When to start again after an exit (restart policy and backoff).
    restart_at: Option<Instant>,
    /// Set when the container cannot be started at all: (reason, message).
    waiting: Option<(&'static str, String)>,
}

impl Running {
    fn new(launch: Launch) -> Self {
        Running {
            launch,
            child: None,
            started_at: None,
            restarts: 0,
            ready: false,
            next_probe: Instant::now(),
            terminated: None,
            restart_at: None,
            waiting: None,
        }
    }
}

struct Worker {
    ctx: Arc<Ctx>,
    api: Api<Pod>,
    pod: Pod,
    key: String,
    dir: PathBuf,
    slot: Option<u8>,
    netns: Option<PodNetns>,
    start_time: Time,
    init: Vec<Running>,
    containers: Vec<Running>,
    /// Conditions and when each last changed.
    conditions: BTreeMap<&'static str, (bool, Time)>,
    phase: &'static str,
    /// Reason and message for container waiting states before launch (image errors).
    failure: Option<(String, &'static str, String)>,
}

impl Worker {
    fn new(ctx: Arc<Ctx>, pod: Pod) -> Self {
        let namespace = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        Worker {
            api: Api::namespaced(ctx.client.clone(), &namespace),
            key: format!("{namespace}/{name}"),
            dir: ctx.pods_dir.join(format!("{namespace}_{name}")),
            ctx,
            pod,
            slot: None,
            netns: None,
            start_time: now(),
            init: Vec::new(),
            containers: Vec::new(),
            conditions: BTreeMap::new(),
            phase: "Pending",
            failure: None,
        }
    }

    fn restart_policy(&self) -> &str {
        self.pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()).unwrap_or("Always")
    }

    /// Sets up and runs the pod; returns when stop is requested, or early with an error message
    /// (already reported on the Pod's status) when the pod cannot run.
    async fn live(&mut self, stop: &mut watch::Receiver<Option<Stop>>) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let slot = self.ctx.take_slot().await.ok_or("no free pod address on this node")?;
        self.slot = Some(slot);
        let ip = self.ctx.network.pod_ip(slot);
        let seq = self.ctx.seq.fetch_add(1, Ordering::Relaxed);
        let network = Arc::clone(&self.ctx.network);
        let netns = tokio::task::spawn_blocking(move || network.add_pod(seq, ip))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let _ = std::fs::write(self.dir.join("netns"), &netns.name);
        self.netns = Some(netns);
        let status = self.pod.status.get_or_insert_default();
        status.pod_ip = Some(ip.to_string());
        status.host_ip = Some(self.ctx.network.gateway().to_string());

        self.set_condition("PodScheduled", true);
        self.set_condition("PodReadyToStartContainers", true);
        self.set_condition("Initialized", false);
        self.set_condition("ContainersReady", false);
        self.set_condition("Ready", false);
        while let Err(message) = self.resolve().await {
            tracing::debug!(pod = %self.key, %message, "pod not ready to start, retrying");
            self.publish().await;
            tokio::select! {
                // Stop requested while waiting for what the pod needs.
                _ = stop.changed() => return Ok(()),
                // Try again.
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
        self.publish().await;
        if let Some((container, reason, message)) = &self.failure {
            return Err(format!("container {container}: {reason}: {message}"));
        }

        // Init containers, in order.
        for i in 0..self.init.len() {
            let sidecar = self.is_sidecar(i);
            loop {
                self.start(true, i)?;
                self.publish().await;
                if sidecar {
                    // As the kubelet: the next container starts once a native sidecar's startup
                    // probe passes (at once without one).
                    self.wait_started(i, stop).await?;
                    break;
                }
                let code = tokio::select! {
                    // Stop requested while an init container runs.
                    _ = stop.changed() => return Ok(()),
                    // The init container finished.
                    code = wait_exit(&mut self.init[i]) => code,
                };
                self.publish().await;
                if code == 0 {
                    break;
                }
                if self.restart_policy() == "Never" {
                    self.phase = "Failed";
                    self.publish().await;
                    return Err(format!("init container {} exited with {code}", self.init[i].launch.name));
                }
                let backoff = backoff(self.init[i].restarts);
                tokio::select! {
                    // Stop requested during the restart backoff.
                    _ = stop.changed() => return Ok(()),
                    // Backoff over: run the init container again.
                    _ = tokio::time::sleep(backoff) => {}
                }
                self.init[i].restarts += 1;
            }
        }
        self.set_condition("Initialized", true);
        for i in 0..self.containers.len() {
            self.start(false, i)?;
        }
        self.phase = "Running";
        self.publish().await;

        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                // Stop requested.
                _ = stop.changed() => return Ok(()),
                // Time to look at the children and probes.
                _ = tick.tick() => {}
            }
            if self.supervise().await? {
                self.publish().await;
            }
        }
    }

    /// Waits until native sidecar `i` passes its startup probe, within the probe's budget.
    async fn wait_started(
        &mut self,
        i: usize,
        stop: &mut watch::Receiver<Option<Stop>>,
    ) -> Result<(), String> {
        let Some((budget, period)) = self.init[i].launch.startup_budget() else { return Ok(()) };
        let ip = self.netns.as_ref().map(|n| n.ip).ok_or("the pod has no network namespace")?;
        let deadline = Instant::now() + budget;
        loop {
            if self.init[i].launch.started(ip).await {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.init[i].child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "native sidecar {} exited ({status}) before its startup probe passed",
                    self.init[i].launch.name
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "native sidecar {} did not pass its startup probe within {budget:?}",
                    self.init[i].launch.name
                ));
            }
            tokio::select! {
                // Stop requested while waiting.
                _ = stop.changed() => return Ok(()),
                // The next probe (at most every TICK, so a fast start is seen at once).
                _ = tokio::time::sleep(period.min(TICK)) => {}
            }
        }
    }

    fn is_sidecar(&self, i: usize) -> bool {
        let name = &self.init[i].launch.name;
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .and_then(|cs| cs.iter().find(|c| &c.name == name))
            .and_then(|c| c.restart_policy.as_deref())
            == Some("Always")
    }

    /// Starts container `i` of the init list or the main list.
    fn start(&mut self, init: bool, i: usize) -> Result<(), String> {
        let netns = self.netns.as_ref().map(|n| n.name.clone()).unwrap_or_default();
        let dir = self.dir.clone();
        let r = if init { &mut self.init[i] } else { &mut self.containers[i] };
        let log = dir.join(format!("{}.log", r.launch.name));
        let child =
            r.launch.spawn(&netns, &log, &dir).map_err(|e| format!("starting {}: {e}", r.launch.name))?;
        tracing::debug!(container = %r.launch.name, pid = child.id(), "container started");
        r.child = Some(child);
        r.started_at = Some(now());
        r.terminated = None;
        r.restart_at = None;
        r.ready = false;
        r.next_probe = Instant::now();
        Ok(())
    }

    /// Stops the containers (SIGTERM, the grace period, SIGKILL), then the sidecars, then removes
    /// the namespace and frees the address.
    async fn teardown(&mut self) {
        let grace = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .map(|s| Duration::from_secs(s.max(0) as u64))
            .unwrap_or(MAX_GRACE)
            .min(MAX_GRACE);
        stop_all(&mut self.containers, grace).await;
        self.init.reverse();
        stop_all(&mut self.init, grace).await;
        if let Some(netns) = self.netns.take() {
            match tokio::task::spawn_blocking(move || netns.remove()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(pod = %self.key, error = %e, "removing the pod namespace failed")
                }
                Err(e) => tracing::warn!(pod = %self.key, error = %e, "removing the pod namespace panicked"),
            }
        }
        if let Some(slot) = self.slot.take() {
            self.ctx.release_slot(slot).await;
        }
        // The containers' writable copies of their images go with the pod, as with a runtime.
        let _ = std::fs::remove_dir_all(self.dir.join("rootfs"));
    }

    /// Deletes the Pod object now that nothing runs (what the kubelet does after a graceful stop).
    async fn delete(&self) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions { uid: self.pod.metadata.uid.clone(), resource_version: None }),
            ..DeleteParams::default()
        };
        if let Err(e) = self.api.delete(&self.pod.name_any(), &params).await {
            tracing::debug!(pod = %self.key, error = %e, "deleting the pod (may already be gone)");
        }
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}
