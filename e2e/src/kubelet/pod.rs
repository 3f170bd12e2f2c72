//! One Pod, from scheduled to deleted: network namespace, init containers in order (native
//! sidecars — init containers with `restartPolicy: Always` — keep running), containers, restarts,
//! readiness, status, and a graceful stop.
//!
//! Supervision polls the children every [`TICK`] rather than awaiting each exit: the kubelet
//! itself relists containers periodically (PLEG), and polling keeps one owner for every `Child`,
//! which makes stop and restart simple.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{Pod, Service},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions},
};
use serde_json::{Value, json};
use tokio::{process::Child, sync::watch, time::Instant};

use super::{
    container::Launch,
    images::ImageTable,
    volumes::{self, MountPoints},
};
use crate::network::{HostNetwork, PodNetns};

/// How often containers are checked for exits and probed while not ready.
pub(crate) const TICK: Duration = Duration::from_millis(200);
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
    pub mount_points: MountPoints,
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
    /// Mount points referenced in `ctx.mount_points`, released at teardown.
    mount_points: Vec<PathBuf>,
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
            mount_points: Vec::new(),
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

        self.resolve().await;
        if self.failure.is_none() {
            let mounts: Vec<_> =
                self.init.iter().chain(&self.containers).flat_map(|r| r.launch.mounts.clone()).collect();
            match self.ctx.mount_points.acquire(&mounts).await {
                Ok(held) => self.mount_points = held,
                Err(e) => self.failure = Some(("*".into(), "CreateContainerConfigError", e)),
            }
        }
        self.set_condition("PodScheduled", true);
        self.set_condition("PodReadyToStartContainers", true);
        self.set_condition("Initialized", false);
        self.set_condition("ContainersReady", false);
        self.set_condition("Ready", false);
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

    /// Resolves every container; the first that cannot run is recorded in `failure`.
    async fn resolve(&mut self) {
        let base = match self.base_env().await {
            Ok(env) => env,
            Err(e) => {
                self.failure = Some(("*".into(), "CreateContainerConfigError", e));
                return;
            }
        };
        let volumes = match volumes::materialize(&self.ctx.client, &self.pod, &self.dir).await {
            Ok(volumes) => volumes,
            Err(e) => {
                self.failure = Some(("*".into(), "CreateContainerConfigError", e));
                return;
            }
        };
        let spec = self.pod.spec.clone().unwrap_or_default();
        for (init, list) in [(true, spec.init_containers.unwrap_or_default()), (false, spec.containers)] {
            for c in &list {
                match Launch::resolve(&self.ctx.client, &self.pod, c, &self.ctx.images, &base, &volumes).await
                {
                    Ok(launch) => {
                        let r = Running::new(launch);
                        if init { self.init.push(r) } else { self.containers.push(r) }
                    }
                    Err((reason, message)) => {
                        if self.failure.is_none() {
                            self.failure = Some((c.name.clone(), reason, message.clone()));
                        }
                        let mut r = Running::new(Launch {
                            name: c.name.clone(),
                            image: c.image.clone().unwrap_or_default(),
                            binary: PathBuf::new(),
                            args: Vec::new(),
                            env: Vec::new(),
                            working_dir: None,
                            readiness: None,
                            ports: BTreeMap::new(),
                            mounts: Vec::new(),
                        });
                        r.waiting = Some((reason, message));
                        if init { self.init.push(r) } else { self.containers.push(r) }
                    }
                }
            }
        }
    }

    /// The kubelet's own variables: `HOSTNAME`, the `kubernetes` Service, and service links for
    /// the Services of the pod's namespace.
    async fn base_env(&self) -> Result<Vec<(String, String)>, String> {
        let mut env = vec![("HOSTNAME".to_owned(), self.pod.name_any())];
        let mut services: Vec<Service> = Vec::new();
        let default = Api::<Service>::namespaced(self.ctx.client.clone(), "default");
        if let Some(k) =
            default.get_opt("kubernetes").await.map_err(|e| format!("reading Service kubernetes: {e}"))?
        {
            services.push(k);
        }
        let links = self.pod.spec.as_ref().and_then(|s| s.enable_service_links).unwrap_or(true);
        if links {
            let namespace = self.pod.namespace().unwrap_or_default();
            let list = Api::<Service>::namespaced(self.ctx.client.clone(), &namespace)
                .list(&ListParams::default())
                .await
                .map_err(|e| format!("listing Services: {e}"))?;
            services.extend(
                list.items.into_iter().filter(|s| {
                    !(s.namespace().as_deref() == Some("default") && s.name_any() == "kubernetes")
                }),
            );
        }
        for svc in &services {
            let Some(spec) = &svc.spec else { continue };
            let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| ip.parse::<Ipv4Addr>().is_ok()) else {
                continue;
            };
            let prefix = svc.name_any().to_ascii_uppercase().replace('-', "_");
            let ports = spec.ports.clone().unwrap_or_default();
            env.push((format!("{prefix}_SERVICE_HOST"), ip.to_owned()));
            if let Some(first) = ports.first() {
                env.push((format!("{prefix}_SERVICE_PORT"), first.port.to_string()));
                let proto = first.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
                env.push((format!("{prefix}_PORT"), format!("{proto}://{ip}:{}", first.port)));
            }
            for p in &ports {
                if let Some(name) = &p.name {
                    let name = name.to_ascii_uppercase().replace('-', "_");
                    env.push((format!("{prefix}_SERVICE_PORT_{name}"), p.port.to_string()));
                }
            }
        }
        Ok(env)
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

    /// One supervision round: exits, restarts, probes. Returns whether the status changed.
    async fn supervise(&mut self) -> Result<bool, String> {
        let mut changed = false;
        let policy = self.restart_policy().to_owned();
        let ip = self.netns.as_ref().map(|n| n.ip).unwrap_or(Ipv4Addr::UNSPECIFIED);
        for (init, i) in
            (0..self.init.len()).map(|i| (true, i)).chain((0..self.containers.len()).map(|i| (false, i)))
        {
            if init && !self.is_sidecar(i) {
                continue;
            }
            let r = if init { &mut self.init[i] } else { &mut self.containers[i] };
            if let Some(child) = r.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let code = exit_code(status);
                tracing::debug!(container = %r.launch.name, code, "container exited");
                r.child = None;
                r.ready = false;
                r.terminated = Some((code, now()));
                let restart = init || policy == "Always" || (policy == "OnFailure" && code != 0);
                if restart {
                    r.restart_at = Some(Instant::now() + backoff(r.restarts));
                }
                changed = true;
            }
            if r.restart_at.is_some_and(|at| at <= Instant::now()) {
                r.restarts += 1;
                self.start(init, i)?;
                changed = true;
                continue;
            }
            let r = if init { &mut self.init[i] } else { &mut self.containers[i] };
            if r.child.is_some() && r.next_probe <= Instant::now() {
                let ready = r.launch.ready(ip).await;
                r.next_probe = Instant::now() + if ready { r.launch.probe_period() } else { TICK };
                if ready != r.ready {
                    r.ready = ready;
                    changed = true;
                }
            }
        }
        let all_ready = self.containers.iter().all(|c| c.ready)
            && (0..self.init.len()).filter(|&i| self.is_sidecar(i)).all(|i| self.init[i].ready);
        if self.conditions.get("Ready").map(|c| c.0) != Some(all_ready) {
            self.set_condition("ContainersReady", all_ready);
            self.set_condition("Ready", all_ready);
            changed = true;
        }
        // restartPolicy Never/OnFailure: the pod ends when every container has ended for good.
        let done = self
            .containers
            .iter()
            .all(|c| c.child.is_none() && c.terminated.is_some() && c.restart_at.is_none());
        if done && self.phase == "Running" {
            let failed = self.containers.iter().any(|c| c.terminated.as_ref().is_some_and(|t| t.0 != 0));
            self.phase = if failed { "Failed" } else { "Succeeded" };
            for r in self.init.iter_mut() {
                r.restart_at = None;
                if let Some(child) = r.child.as_mut() {
                    let _ = child.start_kill();
                }
            }
            changed = true;
        }
        Ok(changed)
    }

    fn set_condition(&mut self, kind: &'static str, value: bool) {
        match self.conditions.get(kind) {
            Some((old, _)) if *old == value => {}
            _ => {
                self.conditions.insert(kind, (value, now()));
            }
        }
    }

    fn status(&self) -> Value {
        let conditions: Vec<Value> = self
            .conditions
            .iter()
            .map(|(kind, (value, at))| {
                json!({"type": kind, "status": if *value { "True" } else { "False" }, "lastTransitionTime": at})
            })
            .collect();
        let statuses = |list: &[Running]| -> Vec<Value> { list.iter().map(container_status).collect() };
        let ip = self.pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let host = self.ctx.network.gateway().to_string();
        json!({"status": {
            "phase": self.phase,
            "hostIP": host,
            "hostIPs": [{"ip": host}],
            "podIP": ip,
            "podIPs": ip.as_ref().map(|ip| vec![json!({"ip": ip})]).unwrap_or_default(),
            "startTime": self.start_time,
            "conditions": conditions,
            "initContainerStatuses": statuses(&self.init),
            "containerStatuses": statuses(&self.containers),
        }})
    }

    /// Writes the status through the `status` subresource (a merge patch: the lists are ours).
    async fn publish(&self) {
        let patch = self.status();
        if let Err(e) =
            self.api.patch_status(&self.pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await
        {
            tracing::warn!(pod = %self.key, error = %e, "updating pod status failed");
        }
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
        let held = std::mem::take(&mut self.mount_points);
        self.ctx.mount_points.release(held).await;
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

fn container_status(r: &Running) -> Value {
    let state = if let Some((reason, message)) = &r.waiting {
        json!({"waiting": {"reason": reason, "message": message}})
    } else if let (Some(_), Some(at)) = (&r.child, &r.started_at) {
        json!({"running": {"startedAt": at}})
    } else if let Some((code, at)) = &r.terminated {
        json!({"terminated": {
            "exitCode": code,
            "reason": if *code == 0 { "Completed" } else { "Error" },
            "startedAt": r.started_at.as_ref().unwrap_or(at),
            "finishedAt": at,
        }})
    } else {
        json!({"waiting": {"reason": "PodInitializing"}})
    };
    let pid = r.child.as_ref().and_then(Child::id);
    let mut status = json!({
        "name": r.launch.name,
        "image": r.launch.image,
        "imageID": format!("e2e://{}", r.launch.binary.display()),
        "ready": r.ready,
        "started": r.child.is_some(),
        "restartCount": r.restarts,
        "state": state,
    });
    if let Some(pid) = pid {
        status["containerID"] = json!(format!("e2e://{pid}"));
    }
    status
}

/// Waits for a container started by `Worker::start` to exit; returns its exit code.
async fn wait_exit(r: &mut Running) -> i32 {
    let code = match r.child.as_mut() {
        Some(child) => child.wait().await.map(exit_code).unwrap_or(-1),
        None => -1,
    };
    r.child = None;
    r.terminated = Some((code, now()));
    code
}

/// SIGTERM to every running process at once, then up to `grace` for all to exit, then SIGKILL.
async fn stop_all(list: &mut [Running], grace: Duration) {
    for r in list.iter() {
        if let Some(pid) = r.child.as_ref().and_then(Child::id) {
            crate::process::signal(pid, "TERM");
        }
    }
    let deadline = Instant::now() + grace;
    for r in list.iter_mut() {
        r.restart_at = None;
        if let Some(mut child) = r.child.take()
            && tokio::time::timeout_at(deadline, child.wait()).await.is_err()
        {
            let _ = child.kill().await;
        }
    }
}

/// Exit code as the kubelet reports it: the code, or 128 + the signal number.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
}

/// Restart backoff: 1s, 2s, 4s, ... capped at 10s (the kubelet's starts at 10s and caps at 5min,
/// too slow for tests).
fn backoff(restarts: u32) -> Duration {
    Duration::from_secs(1u64 << restarts.min(4)).min(Duration::from_secs(10))
}

fn now() -> Time {
    Time(Timestamp::now())
}
