//! The benchmark's steps (see the crate docs): a cluster, the operator as a process, the
//! bounded loader, and the measurements.

use std::{collections::HashMap, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use breakwater_crds::CommunicationPolicy;
use breakwater_e2e::{TestCluster, operator::metric};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    sync::{Mutex, Notify},
    time::Instant,
};

use crate::{Args, procs};

/// Everything measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Results {
    /// Objects created by the loader, by kind.
    pub objects: Vec<(String, usize)>,
    /// How long the loader took.
    pub load_seconds: f64,
    /// The first create of a policy after the CRD was installed (the API server's own warm-up).
    pub first_create_ms: f64,
    /// apply → Accepted before the load, milliseconds, sorted.
    pub accept_idle_ms: Vec<f64>,
    /// apply → Accepted with everything loaded, milliseconds, sorted.
    pub accept_loaded_ms: Vec<f64>,
    /// After the load: seconds from the loader's end until every policy had its status.
    pub full_status_after_load_s: f64,
    /// After the load: seconds from the loader's end until every pod had a snapshot.
    pub all_snapshots_after_load_s: f64,
    /// The operator's memory with everything loaded, KiB.
    pub rss_loaded_kib: u64,
    /// Its peak memory over the load, KiB.
    pub rss_peak_kib: u64,
    /// CPU seconds the operator used while the loader ran and it caught up.
    pub cpu_load_s: f64,
    /// The restart: seconds from start to ready (indexes synced).
    pub restart_ready_s: f64,
    /// The restart: seconds from start to every pod's snapshot compiled.
    pub restart_all_snapshots_s: f64,
    /// The restart: the operator's own time for compiling every snapshot once.
    pub restart_full_compile_s: f64,
    /// The restart: seconds from start to every policy reconciled.
    pub restart_full_status_s: f64,
    /// The restart: status writes it needed (none should be).
    pub restart_status_writes: f64,
    /// The restart: memory once settled, KiB.
    pub restart_rss_kib: u64,
    /// The restart: CPU seconds until settled.
    pub restart_cpu_s: f64,
    /// Average Services in a pod's snapshot.
    pub services_per_snapshot: f64,
}

/// The operator as a process of this machine.
struct OperatorProc {
    proc: procs::Proc,
    health: SocketAddr,
    metrics: SocketAddr,
    started: Instant,
}

impl OperatorProc {
    fn start(binary: &Path, kubeconfig: &Path, log_dir: &Path, name: &str) -> anyhow::Result<Self> {
        let (health, metrics) = (procs::free_port()?, procs::free_port()?);
        let args: Vec<String> = [
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--namespace",
            "breakwater-system",
            "--lease-name",
            "bench",
            "--bind-address",
            "127.0.0.1",
            "--health-port",
            &health.port().to_string(),
            "--metrics-port",
            &metrics.port().to_string(),
            "--debug-address",
            "",
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let proc = procs::Proc::spawn(name, "0-1", binary, &args, log_dir)?;
        Ok(OperatorProc { proc, health, metrics, started: Instant::now() })
    }

    async fn scrape(&self) -> anyhow::Result<String> {
        let ip = match self.metrics.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => bail!("the metrics address is IPv4"),
        };
        let (status, body) = breakwater_e2e::operator::http_get(ip, self.metrics.port(), "/metrics").await?;
        if status != 200 {
            bail!("/metrics answered {status}");
        }
        Ok(body)
    }

    async fn value(&self, name: &str) -> anyhow::Result<f64> {
        Ok(metric(&self.scrape().await?, name).unwrap_or(0.0))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.proc.check_alive()?;
            if procs::probe(self.health, "/ready", "operator").await.ok() == Some(200) {
                return Ok(self.started.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!("the operator was not ready within {timeout:?}:\n{}", self.proc.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls `metric` until it reaches `at_least`; seconds since `since`.
    async fn wait_metric(
        &mut self,
        name: &str,
        at_least: f64,
        since: Instant,
        timeout: Duration,
    ) -> anyhow::Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            self.proc.check_alive()?;
            let v = self.value(name).await.unwrap_or(0.0);
            if v >= at_least {
                return Ok(since.elapsed().as_secs_f64());
            }
            if Instant::now() > deadline {
                bail!("{name} was {v}, not {at_least}, after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        Ok(procs::cpu_ticks(self.proc.pid())? as f64 / procs::clock_ticks_per_second() as f64)
    }
}

/// Runs every step; see the crate docs.
pub async fn run(args: &Args) -> anyhow::Result<Results> {
    let cluster = TestCluster::start().await.context("starting the control plane")?;
    let client = cluster.client()?;
    install_crd(&client).await?;
    create(&client, namespace("breakwater-system", 0)).await?;
    let log_dir = cluster.dir().to_path_buf();
    let mut op = OperatorProc::start(&args.operator, cluster.kubeconfig(), &log_dir, "operator")?;
    op.wait_ready(Duration::from_secs(60)).await?;
    let mut results = Results::default();

    eprintln!("apply → Accepted, idle ({} policies)", args.samples);
    create(&client, namespace("accept", 0)).await?;
    // The API server builds a CRD's handler on its first request (about 2 s here): not the
    // operator's time, so one policy warms it up first.
    let warm_up = policy_object(
        "breakwater-system",
        "warm-up",
        json!({"targetRef": {"name": "none"}, "timeouts": {"request": "1s"}}),
    )?;
    let t0 = Instant::now();
    Api::<CommunicationPolicy>::namespaced(client.clone(), "breakwater-system")
        .create(&PostParams::default(), &warm_up)
        .await?;
    results.first_create_ms = t0.elapsed().as_secs_f64() * 1000.0;
    results.accept_idle_ms = accept_latencies(&client, "idle", args.samples).await?;

    eprintln!(
        "loading {} namespaces, {} Services, {} endpoints, {} pods, {} policies ({} requests in flight)",
        args.namespaces, args.services, args.endpoints, args.pods, args.policies, args.concurrency
    );
    let cpu_before = op.cpu_seconds()?;
    let _ = procs::reset_peak_rss(op.proc.pid());
    let started = Instant::now();
    results.objects = load(&client, args).await?;
    results.load_seconds = started.elapsed().as_secs_f64();
    let loaded = Instant::now();
    results.full_status_after_load_s =
        wait_full_status(&client, args.policies, loaded, args.phase_timeout).await?;
    results.all_snapshots_after_load_s =
        op.wait_metric("breakwater_operator_snapshots", args.pods as f64, loaded, args.phase_timeout).await?;
    let compiles = op.value("breakwater_operator_snapshot_updates_total").await?;
    eprintln!(
        "settled: status {:.1}s, snapshots {:.1}s after the load ({compiles} snapshot updates)",
        results.full_status_after_load_s, results.all_snapshots_after_load_s
    );
    results.cpu_load_s = op.cpu_seconds()? - cpu_before;
    let rss = procs::rss_kib(op.proc.pid())?;
    (results.rss_loaded_kib, results.rss_peak_kib) = (rss.now, rss.peak);

    eprintln!("apply → Accepted, loaded ({} policies)", args.samples);
    results.accept_loaded_ms = accept_latencies(&client, "loaded", args.samples).await?;

    eprintln!("restart");
    op.proc.stop().await;
    let mut op = OperatorProc::start(&args.operator, cluster.kubeconfig(), &log_dir, "operator-restarted")?;
    let start = op.started;
    results.restart_ready_s = op.wait_ready(args.phase_timeout).await?;
    results.restart_all_snapshots_s =
        op.wait_metric("breakwater_operator_snapshots", args.pods as f64, start, args.phase_timeout).await?;
    results.restart_full_compile_s = op.value("breakwater_operator_snapshot_full_compile_seconds").await?;
    let total_policies = (args.policies + 2 * args.samples + 1) as f64;
    results.restart_full_status_s = op
        .wait_metric("breakwater_operator_reconciles_total", total_policies, start, args.phase_timeout)
        .await?;
    results.restart_status_writes = op.value("breakwater_operator_status_writes_total").await?;
    results.restart_rss_kib = procs::rss_kib(op.proc.pid())?.now;
    results.restart_cpu_s = op.cpu_seconds()?;
    let entries = op.value("breakwater_operator_snapshot_services").await?;
    results.services_per_snapshot = entries / (args.pods.max(1) as f64);
    op.proc.stop().await;
    Ok(results)
}

async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&PostParams::default(), &breakwater_crds::crd()).await.context("creating the CRD")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let crd = crds.get("communicationpolicies.breakwater.dev").await?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the CRD was not Established within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Times `n` policies from the create call to the watch event showing them `Accepted`.
async fn accept_latencies(client: &Client, prefix: &str, n: usize) -> anyhow::Result<Vec<f64>> {
    let api = Api::<CommunicationPolicy>::namespaced(client.clone(), "accept");
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let notify = Arc::new(Notify::new());
    let watch = {
        let (seen, notify, api) = (seen.clone(), notify.clone(), api.clone());
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(p)) = stream.try_next().await {
                let accepted = p.status.as_ref().is_some_and(|s| {
                    s.observed_generation == p.metadata.generation
                        && s.conditions.iter().any(|c| c.type_ == "Accepted")
                });
                if accepted {
                    seen.lock().await.entry(p.name_any()).or_insert_with(Instant::now);
                    notify.notify_waiters();
                }
            }
        })
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        let policy = policy_object(
            "accept",
            &name,
            json!({"targetRef": {"name": "payments"}, "timeouts": {"request": "2s"}}),
        )?;
        let t0 = Instant::now();
        api.create(&PostParams::default(), &policy).await?;
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let notified = notify.notified();
            if let Some(at) = seen.lock().await.get(&name) {
                out.push(at.duration_since(t0).as_secs_f64() * 1000.0);
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!("{name} was not Accepted within 30s");
            }
        }
    }
    watch.abort();
    out.sort_by(f64::total_cmp);
    Ok(out)
}

/// Waits until every policy outside `accept` has a current status; seconds since `since`.
async fn wait_full_status(
    client: &Client,
    expected: usize,
    since: Instant,
    timeout: Duration,
) -> anyhow::Result<f64> {
    let api = Api::<CommunicationPolicy>::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        let list = api.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|p| p.namespace().as_deref() != Some("accept"))
            .filter(|p| p.status.as_ref().is_some_and(|s| s.observed_generation == p.metadata.generation))
            .count();
        if done >= expected {
            return Ok(since.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            bail!("{done} of {expected} policies had a status after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn namespace(name: &str, team: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": format!("t{}", team % 4)}}})
}

fn policy_object(ns: &str, name: &str, spec: Value) -> anyhow::Result<CommunicationPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))?)
}

/// Every object of the scale, in the order they are created (namespaces first).
fn objects(args: &Args) -> Vec<Value> {
    let ns = |i: usize| format!("bench-{}", i % args.namespaces);
    let per_ns_services = args.services.div_ceil(args.namespaces);
    let per_ns_pods = args.pods.div_ceil(args.namespaces).max(1);
    let eps_per_service = (args.endpoints / args.services.max(1)).max(1);
    let mut out: Vec<Value> = (0..args.namespaces).map(|n| namespace(&ns(n), n)).collect();
    out.push(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "payments", "namespace": "accept"},
                    "spec": {"ports": [{"name": "http", "port": 80}]}}),
    );
    for i in 0..args.pods {
        let local = i / args.namespaces;
        out.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{local}"), "namespace": ns(i),
                         "labels": {"app": format!("caller-{}", local % 10), "breakwater.dev/injected": "true"}},
            // No node matches: the pod stays Pending, which is all the operator reads of it.
            "spec": {"nodeSelector": {"breakwater.dev/bench": "no-such-node"},
                     "containers": [{"name": "app", "image": "breakwater/fault-server"}]},
        }));
    }
    for i in 0..args.services {
        let local = i / args.namespaces;
        let grpc = i % 5 == 0;
        let mut ports = vec![json!({"name": "http", "port": 80, "targetPort": 8080})];
        if grpc {
            ports.push(json!({"name": "grpc", "port": 9090, "targetPort": 9000}));
        }
        let tier = if i % 2 == 0 { "backend" } else { "frontend" };
        out.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{local}"), "namespace": ns(i), "labels": {"app": format!("svc-{local}"), "tier": tier}},
            "spec": {"ports": ports},
        }));
        let endpoints: Vec<Value> = (0..eps_per_service)
            .map(|k| {
                let n = i * eps_per_service + k;
                json!({
                    "addresses": [format!("198.18.{}.{}", 100 + (n / 250) % 100, n % 250 + 1)],
                    "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "name": format!("pod-{}", (local * eps_per_service + k) % per_ns_pods), "namespace": ns(i)},
                })
            })
            .collect();
        let mut slice_ports = vec![json!({"name": "http", "port": 8080, "protocol": "TCP"})];
        if grpc {
            slice_ports.push(json!({"name": "grpc", "port": 9000, "protocol": "TCP"}));
        }
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc-{local}-1"), "namespace": ns(i), "labels": {"kubernetes.io/service-name": format!("svc-{local}")}},
            "addressType": "IPv4", "ports": slice_ports, "endpoints": endpoints,
        }));
    }
    for i in 0..args.policies {
        let local = i / args.namespaces;
        let target = if i % 5 == 4 {
            json!({"selector": {"matchLabels": {"tier": "backend"}}, "ports": [80]})
        } else {
            json!({"name": format!("svc-{}", local % per_ns_services)})
        };
        let mut spec =
            json!({"targetRef": target, "timeouts": {"request": "2s"}, "retries": {"attempts": 3}});
        match i % 3 {
            1 => {
                spec["sources"] =
                    json!([{"namespaceSelector": {"matchLabels": {"team": format!("t{}", (i / 3) % 4)}}}])
            }
            2 => {
                spec["sources"] =
                    json!([{"podSelector": {"matchLabels": {"app": format!("caller-{}", i % 10)}}}])
            }
            _ => {}
        }
        out.push(json!({"apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
                        "metadata": {"name": format!("policy-{local}"), "namespace": ns(i)}, "spec": spec}));
    }
    out
}

/// Creates every object with at most `args.concurrency` requests in flight; counts by kind.
async fn load(client: &Client, args: &Args) -> anyhow::Result<Vec<(String, usize)>> {
    let all = objects(args);
    let (namespaces, rest): (Vec<Value>, Vec<Value>) =
        all.into_iter().partition(|o| o["kind"] == "Namespace");
    // The harness gives a cluster a /24 of Service IPs; thousands of Services need another range
    // (a ServiceCIDR, GA since Kubernetes 1.33), inside the harness's 198.19.0.0/16.
    if args.services > 200 {
        add_service_range(client).await?;
    }
    let names: Vec<String> =
        namespaces.iter().filter_map(|n| n["metadata"]["name"].as_str().map(str::to_owned)).collect();
    for n in namespaces {
        create(client, n).await?;
    }
    // Pods are refused until their namespace's `default` ServiceAccount exists.
    for n in &names {
        let sas = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), n);
        let deadline = Instant::now() + Duration::from_secs(60);
        while sas.get_opt("default").await?.is_none() {
            if Instant::now() > deadline {
                bail!("namespace {n} got no default ServiceAccount");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for o in &rest {
        *counts.entry(o["kind"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
    }
    let deadline = Instant::now() + args.phase_timeout;
    futures_util::stream::iter(rest)
        .map(|o| async move {
            if Instant::now() > deadline {
                bail!("the load did not finish within the phase timeout");
            }
            create(client, o).await
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort();
    Ok(counts)
}

/// Adds 198.19.192.0/20 (4,094 addresses) to the cluster's Service IPs and waits until it is
/// ready to allocate from.
async fn add_service_range(client: &Client) -> anyhow::Result<()> {
    let cidrs = Api::<k8s_openapi::api::networking::v1::ServiceCIDR>::all(client.clone());
    let range = serde_json::from_value(json!({
        "metadata": {"name": "breakwater-bench"}, "spec": {"cidrs": ["198.19.192.0/20"]},
    }))?;
    cidrs.create(&PostParams::default(), &range).await.context("adding a ServiceCIDR")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = cidrs
            .get("breakwater-bench")
            .await?
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the extra ServiceCIDR was not Ready within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates one object of the kinds the loader makes.
async fn create(client: &Client, o: Value) -> anyhow::Result<()> {
    let ns = o["metadata"]["namespace"].as_str().unwrap_or_default().to_owned();
    let pp = PostParams::default();
    let kind = o["kind"].as_str().unwrap_or_default().to_owned();
    let result = match kind.as_str() {
        "Namespace" => {
            Api::<Namespace>::all(client.clone()).create(&pp, &serde_json::from_value(o)?).await.map(drop)
        }
        "Service" => Api::<Service>::namespaced(client.clone(), &ns)
            .create(&pp, &serde_json::from_value(o)?)
            .await
            .map(drop),
        "Pod" => Api::<Pod>::namespaced(client.clone(), &ns)
            .create(&pp, &serde_json::from_value(o)?)
            .await
            .map(drop),
        "EndpointSlice" => Api::<EndpointSlice>::namespaced(client.clone(), &ns)
            .create(&pp, &serde_json::from_value(o)?)
            .await
            .map(drop),
        "CommunicationPolicy" => Api::<CommunicationPolicy>::namespaced(client.clone(), &ns)
            .create(&pp, &serde_json::from_value(o)?)
            .await
            .map(drop),
        other => bail!("the loader does not make {other}"),
    };
    result.with_context(|| format!("creating a {kind} in {ns}"))
}
