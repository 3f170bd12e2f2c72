//! The whole story as a user meets it, on the harness's real control plane: `helm install` of the
//! chart, a namespace labelled for injection, a caller and a server Deployment (one server pod
//! failing on purpose), policies applied with the real `kubectl`, and what the caller's own calls
//! see before and after. One cluster and one release for this binary; the tests run one at a time
//! ([`SERIAL`]) because they share the operator.

use std::time::Duration;

use breakwater_e2e::{Kubectl, PodRunner, TestCluster, operator::Operator, wait};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;
use tokio::sync::{Mutex, OnceCell};

mod dryrun;
mod kubectl;
mod retries;

const NAMESPACE: &str = "breakwater-system";
const TIMEOUT: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::const_new(());

struct Story {
    cluster: &'static TestCluster,
    /// The release (the operator scenarios scale and upgrade it).
    #[allow(dead_code)]
    op: Operator,
    kubectl: Kubectl,
}

async fn story() -> anyhow::Result<&'static Story> {
    static STORY: OnceCell<Result<Story, String>> = OnceCell::const_new();
    let cluster = TestCluster::shared().await?;
    STORY
        .get_or_init(|| async {
            let op = Operator::install(cluster, "bw", NAMESPACE, &[]).await.map_err(|e| e.to_string())?;
            op.ready_pods(2, TIMEOUT).await.map_err(|e| e.to_string())?;
            let kubectl = Kubectl::for_cluster(cluster).map_err(|e| e.to_string())?;
            Ok(Story { cluster, op, kubectl })
        })
        .await
        .as_ref()
        .map_err(|e| anyhow::anyhow!("installing the chart failed: {e}"))
}

/// `kubectl create namespace` + `kubectl label … breakwater.dev/inject=enabled`, as the README says.
async fn injected_namespace(story: &Story, prefix: &str) -> anyhow::Result<breakwater_e2e::TestNamespace> {
    let ns = story.cluster.namespace(prefix).await?;
    story.kubectl.run(["label", "namespace", ns.name(), "breakwater.dev/inject=enabled"]).await?;
    Ok(ns)
}

/// A Deployment of the fault server (`args` added to its own), `app=<app>`, `variant=<name>`.
fn fault_deployment(name: &str, app: &str, replicas: i32, args: &[&str]) -> anyhow::Result<Deployment> {
    let mut all = vec!["--listen", "0.0.0.0:8080"];
    all.extend_from_slice(args);
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "variant": name}},
            "template": {
                "metadata": {"labels": {"app": app, "variant": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "breakwater/fault-server",
                    "args": all,
                    "env": [{"name": "FAULT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
                }]},
            },
        },
    }))?)
}

/// The Ready pods with label `selector`, once there are `n` of them.
async fn ready_pods(client: &Client, ns: &str, selector: &str, n: usize) -> anyhow::Result<Vec<Pod>> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    Ok(wait::until_ok(format!("{n} ready pods {selector}"), TIMEOUT, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
        let ready: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .collect();
        if ready.len() == n { Ok(ready) } else { Err(format!("{} ready", ready.len())) }
    })
    .await?)
}

/// What the caller's calls saw: status codes (0: no answer) counted.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    errors: usize,
    /// Each status code seen, and how often (0: no answer).
    codes: std::collections::BTreeMap<u16, usize>,
}

impl Seen {
    fn rate(&self) -> f64 {
        self.errors as f64 / (self.ok + self.errors).max(1) as f64
    }
}

/// `n` sequential calls to `url` from inside pod `ns/pod` (as its app would make them: through
/// its iptables rules, so through its sidecar), each with `curl`.
async fn calls(runner: &PodRunner, ns: &str, pod: &str, url: &str, n: usize) -> anyhow::Result<Seen> {
    let netns =
        runner.netns(ns, pod).ok_or_else(|| anyhow::anyhow!("pod {ns}/{pod} has no network namespace"))?;
    let mut seen = Seen::default();
    for _ in 0..n {
        let out = tokio::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "curl",
                "-s",
                "--max-time",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                url,
            ])
            .output()
            .await?;
        let code: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        *seen.codes.entry(code).or_default() += 1;
        if (200..300).contains(&code) {
            seen.ok += 1;
        } else {
            seen.errors += 1;
        }
    }
    Ok(seen)
}

/// A metric's value summed over the lines of `text` that start with `name` and contain every
/// one of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|s| l.contains(s)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn create_deployment(client: &Client, ns: &str, d: &Deployment) -> anyhow::Result<()> {
    Api::<Deployment>::namespaced(client.clone(), ns).create(&PostParams::default(), d).await?;
    Ok(())
}

/// What the scenarios call: an injected namespace, `payments` (a Deployment of two fault-server
/// pods that each answer half the calls with 503, behind a Service made with `kubectl expose`)
/// and `checkout`, the caller (one pod).
struct Shop {
    ns: breakwater_e2e::TestNamespace,
    /// The caller pod's name.
    caller: String,
    /// payments' URL by cluster IP.
    url: String,
}

async fn shop(story: &Story, prefix: &str) -> anyhow::Result<Shop> {
    let client = story.cluster.client()?;
    let ns = injected_namespace(story, prefix).await?;

    // payments: two pods that each answer half the calls with 503; checkout: the caller.
    create_deployment(&client, &ns, &fault_deployment("payments", "payments", 2, &["--fail-rate", "0.5"])?)
        .await?;
    create_deployment(&client, &ns, &fault_deployment("checkout", "checkout", 1, &[])?).await?;
    let service = story
        .kubectl
        .output(
            [
                "expose",
                "deployment",
                "payments",
                "-n",
                ns.name(),
                "--name",
                "payments",
                "--port",
                "80",
                "--target-port",
                "http",
                "--selector",
                "app=payments",
            ],
            None,
        )
        .await?;
    assert!(service.success, "{}", service.stderr);
    ready_pods(&client, &ns, "app=payments", 2).await?;
    let caller = ready_pods(&client, &ns, "app=checkout", 1).await?.remove(0);
    let init: Vec<String> =
        caller.spec.iter().flat_map(|s| s.init_containers.iter().flatten()).map(|c| c.name.clone()).collect();
    assert_eq!(init, ["breakwater-init", "breakwater-proxy"], "the caller was injected");
    let caller = caller.metadata.name.clone().unwrap_or_default();
    // By cluster IP: `ip netns exec` gives curl the host's /etc/hosts, not the pod's.
    let svc =
        Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns).get("payments").await?;
    let url = format!("http://{}/", svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default());
    Ok(Shop { ns, caller, url })
}
