//! [`PodRunner`]: the kubelet of one Node, and kube-proxy.
//!
//! It registers a Node (Ready, with allocatable cpu, memory and pods) and renews its Lease in
//! `kube-node-lease` every 10 s, so the node lifecycle controller keeps it Ready. It watches the
//! Pods the scheduler bound to it — the objects as the API server returned them, after admission —
//! and runs each as a network namespace whose containers are local processes, each in its own
//! mount namespace on a copy of its image's root filesystem, unpacked from the OCI archives
//! `make images` builds ([`ImageTable`]) ([`pod`]); it stops a pod when its
//! deletionTimestamp appears and then deletes the object. [`services`] wires cluster IPs to
//! endpoints with iptables.

mod container;
mod downward;
mod images;
mod pod;
mod security;
mod services;
mod volumes;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use k8s_openapi::{
    api::{coordination::v1::Lease, core::v1::Node, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::{sync::watch, task::JoinHandle};

pub use self::images::ImageTable;
use self::pod::{Ctx, Stop};
use crate::{Error, Result, bins::kubernetes_version, network::HostNetwork};

/// How often the Node's Lease is renewed (the kubelet's default).
const LEASE_RENEW: Duration = Duration::from_secs(10);
const FIELD_MANAGER: &str = "breakwater-e2e-kubelet";

/// The kubelet of one Node; see the module docs. Stops its pods when [`PodRunner::stop`] is called
/// (an owned cluster does so on drop; the shared cluster leaves it to the reaper).
pub struct PodRunner {
    node: String,
    pods_dir: PathBuf,
    images: ImageTable,
    shutdown: watch::Sender<bool>,
    /// Set by the pod loop once every pod has stopped.
    stopped: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for PodRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRunner").field("node", &self.node).finish_non_exhaustive()
    }
}

impl PodRunner {
    /// Registers the Node and starts watching its Pods and the cluster's Services. Must run on
    /// the harness's background runtime (it spawns tasks that outlive any test).
    pub(crate) async fn start(
        config: Config,
        network: Arc<HostNetwork>,
        images: ImageTable,
        pods_dir: PathBuf,
    ) -> Result<PodRunner> {
        let client = Client::try_from(config).map_err(Error::kube("building the kubelet's client"))?;
        let node = format!("e2e-node-{}", network.index());
        std::fs::create_dir_all(&pods_dir).map_err(Error::io(format!("creating {}", pods_dir.display())))?;
        register(&client, &node, &network).await?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let stopped = Arc::new(AtomicBool::new(false));
        let stopped_tx = Arc::clone(&stopped);
        let ctx = Arc::new(Ctx {
            client: client.clone(),
            node: node.clone(),
            network: Arc::clone(&network),
            images: images.clone(),
            pods_dir: pods_dir.clone(),
            slots: Default::default(),
            seq: AtomicU32::new(0),
        });
        let tasks = vec![
            tokio::spawn(heartbeat(
                client.clone(),
                node.clone(),
                network.gateway().to_string(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(services::run(client, network, shutdown_rx.clone())),
            tokio::spawn(async move {
                pods(ctx, shutdown_rx).await;
                stopped_tx.store(true, Ordering::Release);
            }),
        ];
        Ok(PodRunner { node, pods_dir, images, shutdown, stopped, tasks })
    }

    /// The images this kubelet can run; [`ImageTable::add`] adds one.
    pub fn images(&self) -> &ImageTable {
        &self.images
    }

    /// The Node's name.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The directory kept for pod `namespace/name`: container logs, volumes, the containers'
    /// root filesystems while it runs.
    pub fn pod_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.pods_dir.join(format!("{namespace}_{name}"))
    }

    /// What `container` of pod `namespace/name` wrote to stdout and stderr (all runs).
    pub fn logs(&self, namespace: &str, name: &str, container: &str) -> Result<String> {
        let path = self.pods_dir.join(format!("{namespace}_{name}")).join(format!("{container}.log"));
        std::fs::read_to_string(&path).map_err(Error::io(format!("reading {}", path.display())))
    }

    /// The network namespace pod `namespace/name` ran in (`bwe2eX-pN`; it exists under
    /// `/run/netns/` only while the pod runs).
    pub fn netns(&self, namespace: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.pods_dir.join(format!("{namespace}_{name}")).join("netns")).ok()
    }

    /// Stops every pod (leaving the Pod objects) and the watchers; blocks up to a minute.
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
        let stopped = &self.stopped;
        crate::wait::blocking_until(Duration::from_secs(60), || stopped.load(Ordering::Acquire));
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Creates (or takes over) the Node and reports it Ready.
async fn register(client: &Client, node: &str, network: &HostNetwork) -> Result<()> {
    let nodes = Api::<Node>::all(client.clone());
    let object = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "breakwater.dev/e2e": "true",
            },
        },
        "spec": {"podCIDR": network.pod_cidr(), "podCIDRs": [network.pod_cidr()]},
    });
    nodes
        .patch(node, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&object))
        .await
        .map_err(Error::kube(format!("registering Node {node}")))?;
    report_ready(&nodes, node, &network.gateway().to_string()).await
}

async fn report_ready(nodes: &Api<Node>, node: &str, address: &str) -> Result<()> {
    let now = Time(Timestamp::now());
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": reason,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    let resources = json!({"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "50Gi"});
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": node}],
        "nodeInfo": {
            "kubeletVersion": kubernetes_version(),
            "containerRuntimeVersion": "breakwater-e2e://0.1.0",
            "operatingSystem": "linux",
            "architecture": "amd64",
            "osImage": "breakwater e2e (pods are network namespaces)",
            "kernelVersion": "",
            "machineID": "", "systemUUID": "", "bootID": "", "kubeProxyVersion": "",
        },
    }});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(Error::kube(format!("reporting Node {node} Ready")))?;
    Ok(())
}

/// Renews the Node's Lease every [`LEASE_RENEW`], and its Ready condition every minute.
async fn heartbeat(client: Client, node: String, address: String, mut shutdown: watch::Receiver<bool>) {
    let leases = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let nodes = Api::<Node>::all(client);
    let mut tick = tokio::time::interval(LEASE_RENEW);
    let mut rounds = 0u32;
    loop {
        tokio::select! {
            // Time to renew.
            _ = tick.tick() => {}
            // The runner is stopping.
            _ = shutdown.changed() => return,
        }
        let uid = nodes.get_opt(&node).await.ok().flatten().and_then(|n| n.metadata.uid);
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": node,
                "ownerReferences": uid.map(|uid| vec![json!({"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid})]),
            },
            "spec": {"holderIdentity": node, "leaseDurationSeconds": 40, "renewTime": MicroTime(Timestamp::now())},
        });
        if let Err(e) =
            leases.patch(&node, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&lease)).await
        {
            tracing::warn!(%node, error = %e, "renewing the node lease failed");
        }
        rounds += 1;
        if rounds.is_multiple_of(6)
            && let Err(e) = report_ready(&nodes, &node, &address).await
        {
            tracing::warn!(%node, error = %e, "node heartbeat failed");
        }
    }
}

/// Watches the Pods bound to this Node and runs one worker per Pod UID.
async fn pods(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    let api = Api::<Pod>::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut workers: HashMap<String, (watch::Sender<Option<Stop>>, JoinHandle<()>)> = HashMap::new();
    loop {
        let event = tokio::select! {
            // A Pod bound to this node changed.
            event = events.next() => match event {
                Some(event) => event,
                None => break,
            },
            // The runner is stopping.
            _ = shutdown.changed() => break,
        };
        workers.retain(|_, (_, handle)| !handle.is_finished());
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                let Some(uid) = pod.metadata.uid.clone() else { continue };
                if pod.metadata.deletion_timestamp.is_some() {
                    match workers.get(&uid) {
                        Some((stop, _)) => {
                            let _ = stop.send(Some(Stop::Deleted));
                        }
                        None => {
                            // Never ran here (or already stopped): nothing to tear down.
                            let (stop, rx) = watch::channel(Some(Stop::Deleted));
                            let handle = tokio::spawn(pod::run(Arc::clone(&ctx), pod, rx));
                            workers.insert(uid, (stop, handle));
                        }
                    }
                    continue;
                }
                let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
                if workers.contains_key(&uid) || matches!(phase, Some("Succeeded" | "Failed")) {
                    continue;
                }
                tracing::debug!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), "pod bound to this node");
                let (stop, rx) = watch::channel(None);
                let handle = tokio::spawn(pod::run(Arc::clone(&ctx), pod, rx));
                workers.insert(uid, (stop, handle));
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some((stop, _)) = pod.metadata.uid.as_ref().and_then(|uid| workers.get(uid)) {
                    let _ = stop.send(Some(Stop::Gone));
                }
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            Err(e) => tracing::debug!(error = %e, "pod watch error (retrying)"),
        }
    }
    for (stop, _) in workers.values() {
        let _ = stop.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(Stop::Shutdown);
                true
            } else {
                false
            }
        });
    }
    for (_, (_, handle)) in workers {
        let _ = handle.await;
    }
}
