//! `make bench-convergence`: how fast a policy change reaches every sidecar, and what the
//! config API's streams cost.
//!
//! A control plane from the e2e harness (etcd, kube-apiserver, controller-manager, scheduler),
//! the CRD, and the operator as a process of this machine (so its memory and CPU are read from
//! `/proc`), serving its config API on loopback. Then:
//!
//! 1. **pods and tokens**: the largest N of `--streams` pods with the sidecar label (Pending: no
//!    node matches them, which is all the operator reads of them), a policy that governs their
//!    calls to Service `payments`, and for each pod a token bound to it (TokenRequest, audience
//!    `breakwater.dev/config`), as the kubelet would project it;
//! 2. for each N: **N sidecar clients in this process** — the sidecar's own `follow` loop and
//!    `Store` (TLS, HTTP/2, TokenReview on the operator's side, snapshots applied and
//!    acknowledged as a real sidecar does), one stream each;
//! 3. **idle streams**: the operator's memory and CPU with N streams open and nothing changing;
//! 4. **convergence**: `--rounds` changes of `retries.attempts`; for each, the time from the
//!    patch call to each client having applied (and so acknowledged) the new generation —
//!    p50/p99/max over every client of every round, and per round the time until all N had it
//!    — and the operator's CPU per push to all N;
//! 5. **sidecar memory**: the real sidecar binary started from a snapshot on disk of
//!    `--services` Services / `--endpoints` endpoints (every one with a policy), beside one with
//!    a single Service.
//!
//! The clients share the 2 cores with the operator and the control plane: the figures include
//! that contention, as a node running 1,000 sidecars would not.

#![forbid(unsafe_code)]

#[allow(dead_code)] // shared with the sidecar bench, which uses the rest of it
#[path = "../../procs.rs"]
mod procs;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::{Context as _, bail};
use breakwater_crds::{CommunicationPolicy, snapshot::stream::TOKEN_AUDIENCE};
use breakwater_e2e::{TestCluster, operator::metric};
use breakwater_sidecar::store::{Store, stream::ControlPlane};
use clap::Parser;
use k8s_openapi::{
    api::{
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{Namespace, Pod, Secret, Service, ServiceAccount},
        discovery::v1::EndpointSlice,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

/// Measure config-API convergence and stream costs on a real API server.
#[derive(Parser, Debug, Clone)]
#[command(version, about, long_about = None)]
struct Args {
    /// Where the report goes (convergence.md, convergence.json).
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// The operator binary.
    #[arg(long, default_value = "target/release/breakwater-operator")]
    operator: PathBuf,
    /// The sidecar binary (for its memory with a large snapshot).
    #[arg(long, default_value = "target/release/breakwater-sidecar")]
    sidecar: PathBuf,
    /// Stream counts to measure, comma-separated, ascending.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    streams: Vec<usize>,
    /// Policy changes timed at each stream count.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// How long the streams stay idle while the operator's CPU is read.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Services in the large snapshot of the sidecar memory step.
    #[arg(long, default_value_t = 500)]
    services: usize,
    /// Endpoints (over all Services) in that snapshot.
    #[arg(long, default_value_t = 5000)]
    endpoints: usize,
    /// Pod creations timed through the injection webhook (0: skip that step).
    #[arg(long, default_value_t = 100)]
    admissions: usize,
    /// A tiny scale, to check the harness (`make test` runs it; point `--out` elsewhere).
    #[arg(long)]
    smoke: bool,
}

/// One stream count's figures.
#[derive(Debug, Clone, Serialize, Default)]
struct AtScale {
    streams: usize,
    /// Streams connected in this step (the rest were open from the previous one).
    added: usize,
    /// Seconds until all N streams had applied their first snapshot.
    connect_all_s: f64,
    /// Operator memory before these streams connected and with them idle, KiB.
    rss_before_kib: u64,
    rss_idle_kib: u64,
    /// Operator CPU (share of one core) with every stream idle.
    idle_cpu_cores: f64,
    /// Per client per round: patch → applied, milliseconds, sorted.
    apply_ms: Vec<f64>,
    /// Per round: patch → the last of the N applied, milliseconds, sorted.
    all_ms: Vec<f64>,
    /// Operator CPU seconds per round (compile + push to all N + acknowledgements).
    cpu_per_push_s: Vec<f64>,
    /// The operator's own histogram: observed change → acknowledgement (mean, ms).
    operator_convergence_mean_ms: f64,
}

/// The injection webhook, through the real API server.
#[derive(Debug, Clone, Serialize, Default)]
struct WebhookFigures {
    admissions: usize,
    /// Pod create calls into an injecting namespace, milliseconds, sorted.
    create_injected_ms: Vec<f64>,
    /// The same into a namespace the webhook does not see, milliseconds, sorted.
    create_plain_ms: Vec<f64>,
    /// The operator's own answer time (its histogram): mean, and the share under 1 ms / 10 ms.
    answer_mean_ms: f64,
    answer_under_1ms: f64,
    answer_under_10ms: f64,
    /// The API server's webhook round trip (`apiserver_admission_webhook_admission_duration_seconds`):
    /// the share under 5 ms and 25 ms (its coarsest buckets).
    apiserver_under_5ms: f64,
    apiserver_under_25ms: f64,
    /// Operator CPU seconds per 1,000 admissions.
    cpu_per_1000_s: f64,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize, Default)]
struct Results {
    scales: Vec<AtScale>,
    /// The injection webhook's step.
    webhook: Option<WebhookFigures>,
    /// Whether a stalled stream (a sidecar that never reads) was open throughout.
    stalled_stream: bool,
    sidecar_small_rss_kib: u64,
    sidecar_large_rss_kib: u64,
    large_services: usize,
    large_endpoints: usize,
    large_snapshot_bytes: usize,
}

const NS: &str = "conv";
const OPERATOR_NS: &str = "breakwater-system";
const POLICY: &str = "payments";
const SERVER_NAME: &str = "breakwater.breakwater-system.svc";

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        (args.streams, args.rounds, args.idle, args.services, args.endpoints, args.admissions) =
            (vec![5], 2, Duration::from_secs(1), 10, 20, 5);
    }
    for (binary, package) in [(&args.operator, "breakwater-operator"), (&args.sidecar, "breakwater-sidecar")]
    {
        if !binary.is_file() {
            bail!(
                "{} is not built: run `cargo build --release -p {package}` (make bench-convergence does)",
                binary.display()
            );
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let results = runtime.block_on(run(&args)).context("the convergence benchmark failed")?;
    std::fs::create_dir_all(&args.out)?;
    let md = markdown(&args, &results);
    print!("{md}");
    std::fs::write(args.out.join("convergence.md"), &md)?;
    std::fs::write(args.out.join("convergence.json"), serde_json::to_string_pretty(&results)?)?;
    eprintln!("wrote {}", args.out.join("convergence.md").display());
    Ok(())
}

async fn run(args: &Args) -> anyhow::Result<Results> {
    let mut results = Results::default();
    let dir = tempfile::tempdir()?;
    // The sidecar first: it needs no cluster.
    eprintln!("sidecar memory: 1 Service, then {} Services / {} endpoints", args.services, args.endpoints);
    results.sidecar_small_rss_kib = sidecar_rss(&args.sidecar, dir.path(), 1, 1).await?.0;
    let (rss, bytes) = sidecar_rss(&args.sidecar, dir.path(), args.services, args.endpoints).await?;
    (results.sidecar_large_rss_kib, results.large_snapshot_bytes) = (rss, bytes);
    (results.large_services, results.large_endpoints) = (args.services, args.endpoints);

    let cluster = TestCluster::start().await.context("starting the control plane")?;
    let client = cluster.client()?;
    install_crd(&client).await?;
    for ns in [OPERATOR_NS, NS] {
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": ns}}))?)
            .await?;
    }
    let max = args.streams.iter().copied().max().unwrap_or(0);
    eprintln!("{max} pods, a policy, {max} bound tokens");
    // One more pod than streams: its stream stalls (below).
    let (ca, tokens) = setup(&client, dir.path(), max + 1).await?;

    let config = procs::free_port()?;
    let (health, metrics) = (procs::free_port()?, procs::free_port()?);
    let webhook_port = procs::free_port()?;
    let template = dir.path().join("sidecar.yaml");
    std::fs::write(
        &template,
        format!("image: breakwater/sidecar\nconfigApi: \"{SERVER_NAME}:{}\"\n", config.port()),
    )?;
    let op_args: Vec<String> = [
        "--kubeconfig",
        &cluster.kubeconfig().display().to_string(),
        "--namespace",
        OPERATOR_NS,
        "--bind-address",
        "127.0.0.1",
        "--health-port",
        &health.port().to_string(),
        "--metrics-port",
        &metrics.port().to_string(),
        "--config-port",
        &config.port().to_string(),
        "--publish-root-ca",
        "false",
        "--webhook-port",
        &webhook_port.port().to_string(),
        "--sidecar-config",
        &template.display().to_string(),
        "--debug-address",
        "",
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut op = procs::Proc::spawn("operator", "0-1", &args.operator, &op_args, cluster.dir())?;
    wait_for("the operator to be ready", Duration::from_secs(90), || async {
        Ok(procs::probe(health, "/ready", "operator").await.ok() == Some(200))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", op.log_tail()))?;
    op.check_alive()?;
    // The CA the operator made (the sidecars read it from the `breakwater-root-ca` ConfigMap).
    let secret = Api::<Secret>::namespaced(client.clone(), OPERATOR_NS).get("breakwater-webhook-tls").await?;
    let ca_pem = secret.data.and_then(|d| d.get("ca.crt").cloned()).context("the Secret has no ca.crt")?;
    std::fs::write(&ca, ca_pem.0)?;

    let url: http::Uri = format!("https://{config}").parse()?;
    // A sidecar that opens its stream and never reads it: its stream window fills with the first
    // snapshot. Every change below must still reach every other client — one slow sidecar
    // never delays the others.
    let _stalled = stalled_stream(config, &ca, &tokens[max], &pod_name(max)).await?;
    results.stalled_stream = true;
    let drain = breakwater_sidecar::drain::Drain::new();
    let mut clients: Vec<Arc<Store>> = Vec::new();
    let policies = Api::<CommunicationPolicy>::namespaced(client.clone(), NS);
    let mut generation = policies.get(POLICY).await?.metadata.generation.unwrap_or(1);
    let mut attempts = 2;
    for &n in &args.streams {
        eprintln!("{n} streams");
        let mut at = AtScale { streams: n, added: n.saturating_sub(clients.len()), ..AtScale::default() };
        at.rss_before_kib = procs::rss_kib(op.pid())?.now;
        let started = Instant::now();
        while clients.len() < n {
            let i = clients.len();
            let store = Arc::new(
                Store::new(SETTINGS, Arc::new(breakwater_sidecar::metrics::Metrics::new()))
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
            );
            let cp = ControlPlane {
                url: url.clone(),
                ca: ca.clone(),
                token: tokens[i].clone(),
                pod: (NS.into(), pod_name(i)),
                snapshot_dir: None,
                server_name: Some(SERVER_NAME.into()),
                timeout: Duration::from_secs(30),
            };
            tokio::spawn(breakwater_sidecar::store::stream::follow(
                cp,
                store.clone(),
                Arc::new(AtomicBool::new(false)),
                drain.signal(),
            ));
            clients.push(store);
            // A connection storm is not what is measured: 50 at a time.
            if clients.len().is_multiple_of(50) {
                wait_applied(&clients, generation, Duration::from_secs(120)).await?;
            }
        }
        wait_applied(&clients, generation, Duration::from_secs(120)).await?;
        at.connect_all_s = started.elapsed().as_secs_f64();

        // Idle: nothing changes for `idle`.
        tokio::time::sleep(Duration::from_secs(2)).await; // acknowledgement reports settle
        let cpu0 = procs::cpu_ticks(op.pid())?;
        let t0 = Instant::now();
        tokio::time::sleep(args.idle).await;
        let ticks = (procs::cpu_ticks(op.pid())? - cpu0) as f64 / procs::clock_ticks_per_second() as f64;
        at.idle_cpu_cores = ticks / t0.elapsed().as_secs_f64();
        at.rss_idle_kib = procs::rss_kib(op.pid())?.now;

        let (sum0, count0) = convergence(metrics).await?;
        for round in 0..args.rounds {
            attempts = if attempts == 2 { 3 } else { 2 };
            let cpu0 = procs::cpu_ticks(op.pid())?;
            let t0 = Instant::now();
            let patched = policies
                .patch(
                    POLICY,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"retries": {"attempts": attempts}}})),
                )
                .await?;
            generation = patched.metadata.generation.unwrap_or(generation + 1);
            let times = wait_applied_times(&clients, generation, t0, Duration::from_secs(60)).await?;
            let cpu = (procs::cpu_ticks(op.pid())? - cpu0) as f64 / procs::clock_ticks_per_second() as f64;
            let all = times.iter().copied().fold(0.0, f64::max);
            eprintln!("  round {round}: all {n} applied in {all:.0} ms, operator CPU {cpu:.3} s");
            at.all_ms.push(all);
            at.apply_ms.extend(times);
            at.cpu_per_push_s.push(cpu);
            op.check_alive()?;
            // The next change only after this one's acknowledgements are in.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let (sum1, count1) = convergence(metrics).await?;
        at.operator_convergence_mean_ms =
            if count1 > count0 { (sum1 - sum0) / (count1 - count0) * 1000.0 } else { 0.0 };
        at.apply_ms.sort_by(f64::total_cmp);
        at.all_ms.sort_by(f64::total_cmp);
        results.scales.push(at);
    }
    drain.start();
    if args.admissions > 0 {
        eprintln!("{} pod creations through the injection webhook", args.admissions);
        results.webhook =
            Some(webhook_latency(&client, webhook_port, &ca, metrics, &op, args.admissions).await?);
    }
    op.stop().await;
    Ok(results)
}

/// The settings of each in-process sidecar client (Services come from the stream).
const SETTINGS: &str = "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\n\
    listeners: {outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, admin: 127.0.0.1:0}\n\
    inbound: {app: \"127.0.0.1:1\"}\nservices: []\n";

fn pod_name(i: usize) -> String {
    format!("caller-{i}")
}

/// The pods, the Service, the policy; a bound token per pod. Returns the CA's path (written
/// later) and each pod's token file.
async fn setup(client: &Client, dir: &Path, pods: usize) -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
    let pp = PostParams::default();
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "payments"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }))?;
    Api::<Service>::namespaced(client.clone(), NS).create(&pp, &service).await?;
    let endpoints: Vec<Value> = (0..3)
        .map(|k| json!({"addresses": [format!("198.18.9.{}", k + 1)], "conditions": {"ready": true}}))
        .collect();
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "payments-1", "labels": {"kubernetes.io/service-name": "payments"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
    }))?;
    Api::<EndpointSlice>::namespaced(client.clone(), NS).create(&pp, &slice).await?;
    let policy: CommunicationPolicy = serde_json::from_value(json!({
        "apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
        "metadata": {"name": POLICY},
        "spec": {"targetRef": {"name": "payments"}, "retries": {"attempts": 2}, "timeouts": {"request": "2s"}},
    }))?;
    Api::<CommunicationPolicy>::namespaced(client.clone(), NS).create(&pp, &policy).await?;

    let sas = Api::<ServiceAccount>::namespaced(client.clone(), NS);
    wait_for("the default ServiceAccount", Duration::from_secs(60), || async {
        Ok(sas.get_opt("default").await?.is_some())
    })
    .await?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), NS);
    let tokens_dir = dir.join("tokens");
    std::fs::create_dir_all(&tokens_dir)?;
    let mut tokens = Vec::with_capacity(pods);
    for i in 0..pods {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": pod_name(i), "labels": {"app": "caller", "breakwater.dev/injected": "true"}},
            // No node matches: the pod stays Pending, which is all the operator reads of it.
            "spec": {"nodeSelector": {"breakwater.dev/bench": "no-such-node"},
                     "containers": [{"name": "app", "image": "breakwater/fault-server"}]},
        }))?;
        let pod =
            pods_api.create(&pp, &pod).await.with_context(|| format!("creating pod {}", pod_name(i)))?;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
                expiration_seconds: Some(3600),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.name_any()),
                    uid: pod.metadata.uid.clone(),
                }),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let token = sas
            .create_token_request("default", &pp, &request)
            .await?
            .status
            .and_then(|s| s.token)
            .context("a TokenRequest without a token")?;
        let path = tokens_dir.join(pod_name(i));
        std::fs::write(&path, token)?;
        tokens.push(path);
    }
    Ok((dir.join("ca.crt"), tokens))
}

/// Registers a webhook (by URL, on loopback) for namespaces labelled `bench-inject=enabled`,
/// then times `n` pod creations there and `n` in a namespace it does not see.
async fn webhook_latency(
    client: &Client,
    port: SocketAddr,
    ca: &Path,
    metrics: SocketAddr,
    op: &procs::Proc,
    n: usize,
) -> anyhow::Result<WebhookFigures> {
    use k8s_openapi::{ByteString, api::admissionregistration::v1::MutatingWebhookConfiguration};
    const NAME: &str = "inject.bench.breakwater.dev";
    let configuration: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "breakwater-bench"},
        "webhooks": [{
            "name": NAME,
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail", "timeoutSeconds": 5,
            "clientConfig": {"url": format!("https://localhost:{}/inject", port.port()), "caBundle": ByteString(std::fs::read(ca)?)},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"bench-inject": "enabled"}},
        }],
    }))?;
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &configuration)
        .await?;
    for (ns, labels) in [("inj", json!({"bench-inject": "enabled"})), ("plain", json!({}))] {
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns, "labels": labels}}))?,
            )
            .await?;
        let sas = Api::<ServiceAccount>::namespaced(client.clone(), ns);
        wait_for("the default ServiceAccount", Duration::from_secs(60), || async {
            Ok(sas.get_opt("default").await?.is_some())
        })
        .await?;
    }
    let pod = |name: String| -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "bench"}},
            "spec": {"nodeSelector": {"breakwater.dev/bench": "no-such-node"},
                     "containers": [{"name": "app", "image": "breakwater/fault-server", "ports": [{"containerPort": 8080}]}]},
        }))?)
    };
    let injected = Api::<Pod>::namespaced(client.clone(), "inj");
    // The API server picks a new webhook configuration up within a moment.
    wait_for("the webhook to inject", Duration::from_secs(30), || async {
        let p = injected
            .create(&PostParams { dry_run: true, ..PostParams::default() }, &pod("probe".into())?)
            .await?;
        Ok(p.spec
            .and_then(|s| s.init_containers)
            .is_some_and(|c| c.iter().any(|c| c.name == "breakwater-proxy")))
    })
    .await?;
    let plain = Api::<Pod>::namespaced(client.clone(), "plain");
    let (sum0, count0) = histogram(metrics, "breakwater_operator_admission_seconds").await?;
    let cpu0 = procs::cpu_ticks(op.pid())?;
    let mut figures = WebhookFigures { admissions: n, ..WebhookFigures::default() };
    for i in 0..n {
        for (api, out) in
            [(&injected, &mut figures.create_injected_ms), (&plain, &mut figures.create_plain_ms)]
        {
            let t0 = Instant::now();
            let created = api.create(&PostParams::default(), &pod(format!("p-{i}"))?).await?;
            out.push(t0.elapsed().as_secs_f64() * 1000.0);
            let has = created
                .spec
                .and_then(|s| s.init_containers)
                .is_some_and(|c| c.iter().any(|c| c.name == "breakwater-proxy"));
            if has != std::ptr::eq(api, &injected) {
                bail!("pod {i} in {:?}: injected {has}", api.resource_url());
            }
        }
    }
    figures.cpu_per_1000_s =
        (procs::cpu_ticks(op.pid())? - cpu0) as f64 / procs::clock_ticks_per_second() as f64 / n as f64
            * 1000.0;
    let (sum1, count1) = histogram(metrics, "breakwater_operator_admission_seconds").await?;
    let answers = (count1 - count0).max(1.0);
    figures.answer_mean_ms = (sum1 - sum0) / answers * 1000.0;
    let text = scrape(metrics).await?;
    let bucket = |le: &str| {
        metric(&text, &format!("breakwater_operator_admission_seconds_bucket{{le=\"{le}\"}}")).unwrap_or(0.0)
    };
    (figures.answer_under_1ms, figures.answer_under_10ms) =
        (bucket("0.001") / count1.max(1.0), bucket("0.01") / count1.max(1.0));
    // The API server's own view of the round trip.
    let api_metrics = client.request_text(http::Request::get("/metrics").body(Vec::new())?).await?;
    let line = |le: &str| -> f64 {
        api_metrics
            .lines()
            .filter(|l| {
                l.starts_with("apiserver_admission_webhook_admission_duration_seconds_bucket")
                    && l.contains(NAME)
                    && l.contains(&format!("le=\"{le}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let total = line("+Inf").max(1.0);
    (figures.apiserver_under_5ms, figures.apiserver_under_25ms) =
        (line("0.005") / total, line("0.025") / total);
    figures.create_injected_ms.sort_by(f64::total_cmp);
    figures.create_plain_ms.sort_by(f64::total_cmp);
    Ok(figures)
}

async fn scrape(metrics: SocketAddr) -> anyhow::Result<String> {
    let ip = match metrics.ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => bail!("the metrics address is IPv4"),
    };
    Ok(breakwater_e2e::operator::http_get(ip, metrics.port(), "/metrics").await?.1)
}

async fn histogram(metrics: SocketAddr, name: &str) -> anyhow::Result<(f64, f64)> {
    let text = scrape(metrics).await?;
    Ok((
        metric(&text, &format!("{name}_sum")).unwrap_or(0.0),
        metric(&text, &format!("{name}_count")).unwrap_or(0.0),
    ))
}

/// Opens pod `pod`'s stream with a 1 KiB stream window and never reads it; the connection stays
/// open while the returned guard lives.
async fn stalled_stream(
    addr: SocketAddr,
    ca: &Path,
    token: &Path,
    pod: &str,
) -> anyhow::Result<(tokio::task::JoinHandle<()>, Stalled)> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut tls =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(SERVER_NAME)?, tcp)
        .await?;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .initial_stream_window_size(1024)
        .initial_connection_window_size(1024)
        .handshake(hyper_util::rt::TokioIo::new(tls))
        .await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let (acks, body) = http_body_util::channel::Channel::<bytes::Bytes, std::convert::Infallible>::new(1);
    let request = http::Request::post(format!("https://{SERVER_NAME}/v1/snapshots/{NS}/{pod}"))
        .header("authorization", format!("Bearer {}", std::fs::read_to_string(token)?.trim()))
        .body(body)?;
    let response = sender.send_request(request).await?;
    if response.status() != http::StatusCode::OK {
        bail!("the stalled stream was refused: {}", response.status());
    }
    // Held, never read.
    Ok((driver, (response, acks, sender)))
}

type Stalled = (
    http::Response<hyper::body::Incoming>,
    http_body_util::channel::Sender<bytes::Bytes, std::convert::Infallible>,
    hyper::client::conn::http2::SendRequest<
        http_body_util::channel::Channel<bytes::Bytes, std::convert::Infallible>,
    >,
);

/// Whether `store` runs generation `generation` (or newer) of the policy.
fn has(store: &Store, generation: i64) -> bool {
    let key = format!("{NS}/{POLICY}");
    store.load().config.snapshot.policies().get(&key).copied().flatten().is_some_and(|g| g >= generation)
}

async fn wait_applied(clients: &[Arc<Store>], generation: i64, timeout: Duration) -> anyhow::Result<()> {
    wait_applied_times(clients, generation, Instant::now(), timeout).await.map(drop)
}

/// Polls every client (a pointer load; the policy map only when its configuration changed)
/// until each runs `generation`; each one's time since `t0`, milliseconds.
async fn wait_applied_times(
    clients: &[Arc<Store>],
    generation: i64,
    t0: Instant,
    timeout: Duration,
) -> anyhow::Result<Vec<f64>> {
    let mut times: Vec<Option<f64>> = vec![None; clients.len()];
    let mut seen: Vec<u64> = vec![0; clients.len()];
    let deadline = t0 + timeout;
    loop {
        let now = t0.elapsed().as_secs_f64() * 1000.0;
        for (i, c) in clients.iter().enumerate() {
            if times[i].is_some() {
                continue;
            }
            let version = c.load().version;
            if version != seen[i] {
                seen[i] = version;
                if has(c, generation) {
                    times[i] = Some(now);
                }
            }
        }
        let missing = times.iter().filter(|t| t.is_none()).count();
        if missing == 0 {
            return Ok(times.into_iter().flatten().collect());
        }
        if Instant::now() > deadline {
            bail!(
                "{missing} of {} clients did not apply generation {generation} within {timeout:?}",
                clients.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The operator's `breakwater_operator_convergence_seconds` sum and count.
async fn convergence(metrics: SocketAddr) -> anyhow::Result<(f64, f64)> {
    let ip = match metrics.ip() {
        std::net::IpAddr::V4(ip) => ip,
        std::net::IpAddr::V6(_) => bail!("the metrics address is IPv4"),
    };
    let (_, text) = breakwater_e2e::operator::http_get(ip, metrics.port(), "/metrics").await?;
    Ok((
        metric(&text, "breakwater_operator_convergence_seconds_sum").unwrap_or(0.0),
        metric(&text, "breakwater_operator_convergence_seconds_count").unwrap_or(0.0),
    ))
}

/// The sidecar binary's memory once ready with a snapshot of `services` Services holding
/// `endpoints` endpoints in all (each with a policy), started from disk; KiB and the
/// snapshot's size in bytes.
async fn sidecar_rss(
    binary: &Path,
    dir: &Path,
    services: usize,
    endpoints: usize,
) -> anyhow::Result<(u64, usize)> {
    let here = dir.join(format!("sidecar-{services}"));
    std::fs::create_dir_all(&here)?;
    let per = (endpoints / services.max(1)).max(1);
    let services_json: Vec<Value> = (0..services)
        .map(|s| {
            let eps: Vec<Value> = (0..per)
                .map(|k| {
                    let n = s * per + k;
                    json!({"address": format!("198.18.{}.{}:8080", 100 + (n / 250) % 100, n % 250 + 1), "pod": format!("svc-{s}-{k}")})
                })
                .collect();
            json!({
                "name": format!("svc-{s}"), "namespace": "shop",
                "ports": [{"port": 80, "name": "http", "addresses": [format!("198.19.{}.{}:80", 192 + s / 250, s % 250 + 1)],
                           "endpoints": eps,
                           "policy": {"name": format!("shop/policy-{s}"), "generation": 1, "effective": effective()}}],
            })
        })
        .collect();
    let snapshot = json!({
        "schema": 1,
        "version": {"counter": 1, "hash": "bench"},
        "identity": {"name": "checkout-1", "namespace": "shop"},
        "services": services_json,
    });
    let bytes = serde_json::to_vec(&snapshot)?;
    std::fs::write(here.join("snapshot.json"), &bytes)?;
    std::fs::write(here.join("token"), "unused")?;
    std::fs::write(here.join("ca.crt"), "unused")?;
    let settings = here.join("settings.yaml");
    let admin = procs::free_port()?;
    let settings_text = SETTINGS.replace("admin: 127.0.0.1:0", &format!("admin: {admin}"));
    std::fs::write(&settings, settings_text)?;
    let closed = procs::free_port()?;
    let a = |s: &str| s.to_owned();
    let args = vec![
        a("run"),
        a("--no-watch"),
        a("--config"),
        settings.display().to_string(),
        a("--control-plane"),
        format!("https://{closed}"),
        a("--control-plane-ca"),
        here.join("ca.crt").display().to_string(),
        a("--token-file"),
        here.join("token").display().to_string(),
        a("--pod-name"),
        a("checkout-1"),
        a("--pod-namespace"),
        a("shop"),
        a("--snapshot-dir"),
        here.display().to_string(),
        a("--log"),
        a("warn"),
    ];
    let mut sidecar = procs::Proc::spawn(&format!("sidecar-{services}"), "0-1", binary, &args, dir)?;
    wait_for("the sidecar to be ready from disk", Duration::from_secs(30), || async {
        Ok(procs::probe(admin, "/ready", "admin").await.ok() == Some(200))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", sidecar.log_tail()))?;
    sidecar.check_alive()?;
    // Let start-up allocations settle before reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = procs::rss_kib(sidecar.pid())?.now;
    sidecar.stop().await;
    Ok((rss, bytes.len()))
}

/// An effective policy with every part set, as the operator compiles one.
fn effective() -> Value {
    json!({
        "mode": "Enforce",
        "timeouts": {"connect": "1s", "request": "2s", "perTry": "500ms", "idle": "5m0s"},
        "retries": {"attempts": 3, "backoffBase": "25ms", "backoffMax": "250ms", "budgetMinPerSecond": 10,
                    "budgetRatio": 0.2, "budgetWindow": "10s", "conditions": ["5xx", "reset"], "grpcCodes": [],
                    "honorIdempotencyKey": true, "httpStatusCodes": [], "jitter": 1.0, "maxReplayBodyBytes": 65536,
                    "maxRetryDepth": 1, "retryableMethods": ["GET", "HEAD"]},
        "bulkhead": {"outbound": {"maxConcurrentRequests": 100, "maxQueued": 10, "maxQueueWait": "100ms"}},
    })
}

async fn install_crd(client: &Client) -> anyhow::Result<()> {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&PostParams::default(), &breakwater_crds::crd()).await.context("creating the CRD")?;
    wait_for("the CRD to be Established", Duration::from_secs(60), || async {
        let crd = crds.get("communicationpolicies.breakwater.dev").await?;
        Ok(crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True"))
    })
    .await
}

/// Polls `check` every 50 ms until it is true, for at most `timeout`.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await.unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn markdown(args: &Args, r: &Results) -> String {
    let mut md = String::from("# Config API: convergence and stream costs\n\n");
    md += "`make bench-convergence` on this machine (2 cores): a real kube-apiserver and etcd from the e2e \
           harness, the operator as a process, N in-process sidecar clients running the sidecar's own \
           stream loop and store (TLS, HTTP/2, TokenReview, snapshots applied and acknowledged). \
           The clients share the cores with the operator and the control plane.\n\n";
    md += &format!(
        "A change is a merge patch of `retries.attempts` on one policy that governs every pod's calls \
         ({} rounds per N); *applied* is the moment a client's store runs the new generation (its \
         acknowledgement leaves in the same step).\n\n",
        args.rounds
    );
    if r.stalled_stream {
        md += "Throughout, one more sidecar held its stream open without reading it (a 1 KiB HTTP/2 \
               window, full after the first snapshot): every change still reached every other client.\n\n";
    }
    md += "| streams | patch → applied p50 | p99 | max | patch → all N, median round | worst round | operator's own convergence (mean) |\n";
    md += "|---:|---:|---:|---:|---:|---:|---:|\n";
    for s in &r.scales {
        md += &format!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |\n",
            s.streams,
            pct(&s.apply_ms, 0.5),
            pct(&s.apply_ms, 0.99),
            pct(&s.apply_ms, 1.0),
            pct(&s.all_ms, 0.5),
            pct(&s.all_ms, 1.0),
            s.operator_convergence_mean_ms,
        );
    }
    md += "\n## What the streams cost the operator\n\n";
    md += "*RSS before* is with the previous row's streams open; *per 1,000 streams* is the growth over the streams this row added.\n\n";
    md += "| streams | connect all | RSS before | RSS idle | per 1,000 streams | idle CPU | CPU per push to all (median) |\n";
    md += "|---:|---:|---:|---:|---:|---:|---:|\n";
    for s in &r.scales {
        let mut cpu = s.cpu_per_push_s.clone();
        cpu.sort_by(f64::total_cmp);
        let per_1000 = (s.rss_idle_kib as f64 - s.rss_before_kib as f64) / s.added.max(1) as f64 * 1000.0;
        md += &format!(
            "| {} | {:.1} s | {:.1} MiB | {:.1} MiB | {:+.1} MiB | {:.1} % of a core | {:.0} ms |\n",
            s.streams,
            s.connect_all_s,
            s.rss_before_kib as f64 / 1024.0,
            s.rss_idle_kib as f64 / 1024.0,
            per_1000 / 1024.0,
            s.idle_cpu_cores * 100.0,
            pct(&cpu, 0.5) * 1000.0,
        );
    }
    if let Some(w) = &r.webhook {
        md += &format!(
            "\n## The injection webhook\n\n{} pod creations through the real API server into a namespace the \
             webhook injects (`failurePolicy: Fail`, so every one was answered), each beside one into a namespace it \
             does not see:\n\n\
             | | p50 | p99 | max |\n|---|---:|---:|---:|\n\
             | pod create, injected | {:.1} ms | {:.1} ms | {:.1} ms |\n\
             | pod create, not injected | {:.1} ms | {:.1} ms | {:.1} ms |\n\n\
             The operator's answer takes {:.2} ms on average ({:.0} % under 1 ms, {:.0} % under 10 ms); the API server's \
             own round-trip histogram puts {:.0} % under 5 ms and {:.0} % under 25 ms (its finest buckets). \
             Operator CPU: {:.2} s per 1,000 admissions.\n",
            w.admissions,
            pct(&w.create_injected_ms, 0.5),
            pct(&w.create_injected_ms, 0.99),
            pct(&w.create_injected_ms, 1.0),
            pct(&w.create_plain_ms, 0.5),
            pct(&w.create_plain_ms, 0.99),
            pct(&w.create_plain_ms, 1.0),
            w.answer_mean_ms,
            w.answer_under_1ms * 100.0,
            w.answer_under_10ms * 100.0,
            w.apiserver_under_5ms * 100.0,
            w.apiserver_under_25ms * 100.0,
            w.cpu_per_1000_s,
        );
    }
    md += &format!(
        "\n## The sidecar's memory\n\nThe sidecar binary started from a snapshot on disk: {} Services / {} \
         endpoints, each Service with a policy (timeouts, retries, bulkhead) — {:.1} MiB of JSON — uses \
         **{:.1} MiB** RSS, against {:.1} MiB with one Service.\n",
        r.large_services,
        r.large_endpoints,
        r.large_snapshot_bytes as f64 / 1024.0 / 1024.0,
        r.sidecar_large_rss_kib as f64 / 1024.0,
        r.sidecar_small_rss_kib as f64 / 1024.0,
    );
    md
}
