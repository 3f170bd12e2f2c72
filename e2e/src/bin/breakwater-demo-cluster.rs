//! `make demo-cluster`: the Breakwater story on a real Kubernetes control plane, for a person to
//! watch.
//!
//! Starts the e2e harness's control plane (etcd, kube-apiserver, controller-manager and
//! scheduler built from their Go modules; pods run as network namespaces with real iptables)
//! and a real OpenTelemetry Collector, then does what a platform engineer would: `helm install`
//! of the chart, a namespace labelled for injection, a `payments` service with one pod failing on
//! purpose and a `checkout` service calling it, and the policy of
//! `examples/checkout-to-payments.yaml` applied with kubectl, first in DryRun, then enforced. It
//! prints what checkout's calls saw each time and what Breakwater did (or would have done),
//! `kubectl get cpol`, and one retried call's trace across both sidecars, then removes everything
//! it started (also on Ctrl-C).
//!
//! Without a policy at all the numbers would mislead: the proxy then forwards to the cluster IP
//! over a pooled connection, so every call of a run reaches the one pod that connection was
//! DNATed to. DryRun routes per call, as the enforced policy does, so the two runs compare the
//! same thing.

#![forbid(unsafe_code)]

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use breakwater_e2e::{
    Kubectl, TestCluster,
    bins::workspace_root,
    collector::{self, Collector},
    operator::Operator,
    scenario::{self, Answer, fault_deployment, metric_sum, sidecar_metrics},
    wait,
};
use clap::Parser;
use serde_json::Value;

/// Watch Breakwater on a real Kubernetes control plane, built from its Go modules and started
/// on this machine: helm install, a flaky service and its caller, a policy applied with kubectl,
/// what the caller saw before and after, and one trace. Everything is removed at the end.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Calls checkout makes to payments in each run (one at a time).
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// The share of calls the flaky payments pod fails with 503.
    #[arg(long, default_value_t = 0.8)]
    fail_rate: f64,
}

const NS: &str = "shop";
const SYSTEM: &str = "breakwater-system";
const TIMEOUT: Duration = Duration::from_secs(120);
const POLICY: &str = "examples/checkout-to-payments.yaml";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!((0.0..=1.0).contains(&args.fail_rate), "--fail-rate must be between 0 and 1");
    let started = tokio::time::Instant::now();
    println!(
        "Starting a Kubernetes {} control plane on this machine (etcd, kube-apiserver,",
        breakwater_e2e::bins::kubernetes_version()
    );
    println!("kube-controller-manager, kube-scheduler; pods run as network namespaces)…");
    let cluster = TestCluster::start().await.context("starting the control plane")?;
    println!(
        "  ready in {:.0}s; kubeconfig {}\n",
        started.elapsed().as_secs_f64(),
        cluster.kubeconfig().display()
    );
    let result = tokio::select! {
        // The demo; its errors are reported after the clean-up.
        r = demo(&cluster, &args) => r,
        // Ctrl-C: stop at once and clean up.
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    println!("Stopping everything the demo started (pods, control plane, collector, network namespaces).");
    drop(cluster);
    println!("Done in {:.0}s.", started.elapsed().as_secs_f64());
    result
}

/// `$ command` as the user would type it.
fn typed(command: &str) {
    println!("$ {command}");
}

/// Prints `text` indented, without its trailing newline.
fn indented(text: &str) {
    for line in text.trim_end().lines() {
        println!("  {line}");
    }
}

async fn demo(cluster: &TestCluster, args: &Args) -> anyhow::Result<()> {
    let kubectl = Kubectl::for_cluster(cluster)?;
    let collector = Collector::start(cluster).await?;
    let client = cluster.client()?;
    let runner = cluster.pod_runner().await?;

    println!(
        "1. Install Breakwater with the chart, traces to an OpenTelemetry Collector (every call sampled):"
    );
    let tracing = format!("sidecar.tracing.endpoint={}", collector.endpoint());
    typed(&format!(
        "helm install breakwater charts/breakwater -n {SYSTEM} --create-namespace --wait \\\n    --set {tracing} --set sidecar.tracing.samplerArg=1"
    ));
    let op =
        Operator::install(cluster, "breakwater", SYSTEM, &[&tracing, "sidecar.tracing.samplerArg=1"]).await?;
    op.ready_pods(2, TIMEOUT).await?;
    indented(&kubectl.run(["get", "deployments,pods", "-n", SYSTEM]).await?);
    println!();

    println!(
        "2. The shop: payments (2 healthy pods, 1 that fails {:.0}% of calls with 503) and checkout, its caller:",
        args.fail_rate * 100.0
    );
    for command in
        [vec!["create", "namespace", NS], vec!["label", "namespace", NS, "breakwater.dev/inject=enabled"]]
    {
        typed(&format!("kubectl {}", command.join(" ")));
        kubectl.run(&command).await?;
    }
    let fail_rate = args.fail_rate.to_string();
    for d in [
        fault_deployment("payments", "payments", 2, &[])?,
        fault_deployment("payments-flaky", "payments", 1, &["--fail-rate", &fail_rate])?,
        fault_deployment("checkout", "checkout", 1, &[])?,
    ] {
        let name = d.metadata.name.clone().unwrap_or_default();
        typed(&format!("kubectl apply -n {NS} -f {name}.yaml"));
        let out = kubectl.output(["apply", "-n", NS, "-f", "-"], Some(&serde_json::to_string(&d)?)).await?;
        anyhow::ensure!(out.success, "kubectl apply: {}", out.stderr);
    }
    let expose = [
        "expose",
        "deployment",
        "payments",
        "-n",
        NS,
        "--port",
        "8080",
        "--target-port",
        "http",
        "--selector",
        "app=payments",
    ];
    typed(&format!("kubectl {}", expose.join(" ")));
    kubectl.run(expose).await?;
    scenario::ready_pods(&client, NS, "app=payments", 3, TIMEOUT).await?;
    let caller = scenario::ready_pods(&client, NS, "app=checkout", 1, TIMEOUT).await?.remove(0);
    let caller = caller.metadata.name.clone().unwrap_or_default();
    typed(&format!(
        "kubectl get pods -n {NS}   # injected: the init container and the proxy (a native sidecar) in each"
    ));
    indented(&kubectl.run(["get", "pods", "-n", NS, "-o", "custom-columns=NAME:.metadata.name,STATUS:.status.phase,IP:.status.podIP,INIT+SIDECAR:.spec.initContainers[*].name"]).await?);
    let svc =
        kubectl.run(["get", "service", "payments", "-n", NS, "-o", "jsonpath={.spec.clusterIP}"]).await?;
    // By cluster IP: the harness has no cluster DNS for commands run in a pod's namespace.
    let url = format!("http://{svc}:8080/");
    println!();

    println!(
        "3. checkout calls payments ({} calls, one at a time, with curl inside the checkout pod):",
        args.calls
    );
    println!("   first the policy in DryRun (how a policy is rolled out safely: decisions counted, nothing");
    println!("   changed), then enforced.");
    let policy = std::fs::read_to_string(workspace_root().join(POLICY))?;
    anyhow::ensure!(policy.contains("mode: Enforce"), "{POLICY} no longer says `mode: Enforce`");
    typed(&format!("sed 's/mode: Enforce/mode: DryRun/' {POLICY} | kubectl apply -f -"));
    apply(&kubectl, &policy.replace("mode: Enforce", "mode: DryRun"), "DryRun").await?;
    println!(
        "  {:<22} {:>6} {:>7} {:>7} {:>8} {:>8}   what Breakwater did",
        "", "calls", "errors", "", "p50", "p99"
    );
    let before = run(runner, &client, &caller, &url, args.calls).await?;
    before.row("policy in DryRun");
    typed(&format!("kubectl apply -f {POLICY}   # mode: Enforce"));
    apply(&kubectl, &policy, "Enforce").await?;
    let after = run(runner, &client, &caller, &url, args.calls).await?;
    after.row("policy enforced");
    println!(
        "  → {} of {} errors avoided\n",
        before.errors().saturating_sub(after.errors()),
        before.errors()
    );

    println!("4. The policy's status:");
    typed(&format!("kubectl get cpol -n {NS}"));
    indented(&kubectl.run(["get", "cpol", "-n", NS]).await?);
    println!();

    println!(
        "5. One retried call, as the collector received it (caller's CLIENT span, its attempts, and the"
    );
    println!("   SERVER span of each payments sidecar that answered; one trace across both sidecars):");
    let spans = wait::until_ok("a retried call's trace", Duration::from_secs(30), || async {
        let spans = collector.spans();
        retried(&spans)
            .map(|_| spans.clone())
            .ok_or_else(|| format!("{} spans, no retried call yet", spans.len()))
    })
    .await;
    match spans {
        Ok(spans) => print_trace(&spans),
        Err(e) => println!("  (no retried call was traced: {e})"),
    }
    println!();
    Ok(())
}

/// `kubectl apply` of `manifest`; waits until the policy is programmed in `mode` and says how
/// long that took.
async fn apply(kubectl: &Kubectl, manifest: &str, mode: &str) -> anyhow::Result<()> {
    let out = kubectl.output(["apply", "-f", "-"], Some(manifest)).await?;
    anyhow::ensure!(out.success, "kubectl apply: {}", out.stderr);
    let applied = tokio::time::Instant::now();
    let wanted = format!("{mode} Programmed");
    wait::until_ok("the policy to be programmed", TIMEOUT, || async {
        let now = kubectl
            .run([
                "get",
                "cpol",
                "payments-from-checkout",
                "-n",
                NS,
                "-o",
                "jsonpath={.spec.mode} {.status.conditions[?(@.type==\"Ready\")].reason}",
            ])
            .await
            .map_err(|e| e.to_string())?;
        if now == wanted { Ok(()) } else { Err(now) }
    })
    .await?;
    println!(
        "  {}, programmed in every sidecar it concerns {} ms later",
        out.stdout.trim(),
        applied.elapsed().as_millis()
    );
    Ok(())
}

/// What one run of calls saw, and what the caller's sidecar did meanwhile (its metrics before
/// and after).
struct Run {
    answers: Vec<Answer>,
    retries: f64,
    /// Breakers opened.
    opened: f64,
    /// Breakers open at the end.
    open_now: f64,
    /// What a DryRun policy would have done, by decision.
    would: BTreeMap<String, f64>,
}

/// The counters of a sidecar's metrics text that a run reports.
fn counters(text: &str) -> BTreeMap<String, f64> {
    let mut c = BTreeMap::new();
    c.insert("retries".to_owned(), metric_sum(text, "breakwater_retries_total", &[]));
    c.insert("opened".to_owned(), metric_sum(text, "breakwater_breaker_transitions_total", &["to=\"open\""]));
    let open_now =
        text.lines().filter(|l| l.starts_with("breakwater_breaker_state{") && l.ends_with(" 2")).count();
    c.insert("open now".to_owned(), open_now as f64);
    for line in text.lines().filter(|l| l.starts_with("breakwater_dryrun_decisions_total{")) {
        let decision = line.split("decision=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("?");
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        *c.entry(format!("would {decision}")).or_default() += value;
    }
    c
}

async fn run(
    runner: &breakwater_e2e::PodRunner,
    client: &kube::Client,
    caller: &str,
    url: &str,
    n: usize,
) -> anyhow::Result<Run> {
    let before = counters(&sidecar_metrics(client, NS, caller).await?);
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        answers.push(scenario::call(runner, NS, caller, url, Duration::from_secs(5), &[]).await?);
    }
    let after = counters(&sidecar_metrics(client, NS, caller).await?);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let would = after
        .keys()
        .filter_map(|k| k.strip_prefix("would "))
        .map(|d| (d.to_owned(), delta(&format!("would {d}"))))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    let open_now = after.get("open now").copied().unwrap_or(0.0);
    Ok(Run { answers, retries: delta("retries"), opened: delta("opened"), open_now, would })
}

impl Run {
    fn errors(&self) -> usize {
        self.answers.iter().filter(|a| !(200..300).contains(&a.code)).count()
    }

    fn percentile(&self, p: f64) -> Duration {
        let mut times: Vec<Duration> = self.answers.iter().map(|a| a.time).collect();
        times.sort();
        times
            .get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    }

    fn row(&self, name: &str) {
        let n = self.answers.len();
        let mut did = Vec::new();
        // In DryRun the breaker's state machine still runs (that is how it knows what it would
        // have refused): its transitions are reported as what it would have done.
        if self.would.is_empty() {
            did.push(format!(
                "{} retries, {} breaker(s) opened, {} pod(s) kept out by an open breaker",
                self.retries, self.opened, self.open_now
            ));
        }
        if !self.would.is_empty() {
            let would: Vec<String> = self.would.iter().map(|(d, n)| format!("{n} × {d}")).collect();
            did.push(format!("would have: {}", would.join(", ")));
        }
        let did = if did.is_empty() { "-".to_owned() } else { did.join("; ") };
        let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
        for a in &self.answers {
            *codes.entry(a.code).or_default() += 1;
        }
        println!(
            "  {:<22} {:>6} {:>7} {:>6.1}% {:>6}ms {:>6}ms   {did}",
            name,
            n,
            self.errors(),
            100.0 * self.errors() as f64 / n.max(1) as f64,
            self.percentile(0.5).as_millis(),
            self.percentile(0.99).as_millis(),
        );
        let codes: Vec<String> = codes.iter().map(|(c, k)| format!("{k} × {c}")).collect();
        println!("  {:<22} answers: {}", "", codes.join(", "));
    }
}

/// The CLIENT span of a call retried at least once whose every attempt has a SERVER span.
fn retried(spans: &[Value]) -> Option<&Value> {
    spans.iter().filter(|s| s["kind"] == 3 && !s["name"].as_str().unwrap_or("").starts_with("attempt")).find(
        |c| {
            let attempts: Vec<&Value> = spans.iter().filter(|s| s["parentSpanId"] == c["spanId"]).collect();
            attempts.len() >= 2
                && attempts
                    .iter()
                    .all(|a| spans.iter().any(|s| s["kind"] == 2 && s["parentSpanId"] == a["spanId"]))
        },
    )
}

fn duration(span: &Value) -> String {
    let n = |k: &str| span[k].as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let micros = n("endTimeUnixNano").saturating_sub(n("startTimeUnixNano")) / 1000;
    if micros >= 1000 { format!("{}ms", micros / 1000) } else { format!("{micros}µs") }
}

fn print_trace(spans: &[Value]) {
    let Some(client) = retried(spans) else { return };
    let attr = |s: &Value, k: &str| collector::attr(s, k).unwrap_or_else(|| "-".into());
    println!("  trace {}", client["traceId"].as_str().unwrap_or("?"));
    println!(
        "  CLIENT {} [{}] → {} in {}   policy {}",
        client["name"].as_str().unwrap_or("?"),
        client["service"].as_str().unwrap_or("?"),
        attr(client, "http.response.status_code"),
        duration(client),
        attr(client, "breakwater.policy"),
    );
    let mut attempts: Vec<&Value> = spans.iter().filter(|s| s["parentSpanId"] == client["spanId"]).collect();
    attempts.sort_by_key(|a| attr(a, "breakwater.attempt").parse::<u32>().unwrap_or(0));
    for (i, a) in attempts.iter().enumerate() {
        let last = i + 1 == attempts.len();
        println!(
            "  {} {} → {}:{}  {}  {}",
            if last { "└─" } else { "├─" },
            a["name"].as_str().unwrap_or("?"),
            attr(a, "server.address"),
            attr(a, "server.port"),
            duration(a),
            attr(a, "breakwater.outcome"),
        );
        for s in spans.iter().filter(|s| s["kind"] == 2 && s["parentSpanId"] == a["spanId"]) {
            println!(
                "  {}    └─ SERVER {} [{}] → {} in {}",
                if last { " " } else { "│" },
                s["name"].as_str().unwrap_or("?"),
                s["service"].as_str().unwrap_or("?"),
                attr(s, "http.response.status_code"),
                duration(s),
            );
        }
    }
}
