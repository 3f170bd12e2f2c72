//! The whole story as a user meets it, on the harness's real control plane: `helm install` of the
//! chart, a namespace labelled for injection, a caller and a server Deployment (one server pod
//! failing on purpose), policies applied with the real `kubectl`, and what the caller's own calls
//! see before and after. One cluster and one release for this binary; the tests run one at a time
//! ([`SERIAL`]) because they share the operator.

use std::time::Duration;

use breakwater_e2e::{
    Kubectl, TestCluster,
    collector::Collector,
    operator::Operator,
    scenario::{self, calls, create_deployment, fault_deployment, metric_sum, sidecar_metrics},
    wait,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use tokio::sync::{Mutex, OnceCell};

mod breaker;
mod bulkhead;
mod conflict;
mod diagnose;
mod dryrun;
mod kubectl;
mod monitoring;
mod offline;
mod retries;
mod routes;
mod upgrade;

const NAMESPACE: &str = "breakwater-system";
const TIMEOUT: Duration = Duration::from_secs(60);

static SERIAL: Mutex<()> = Mutex::const_new(());

/// `kubectl breakwater ARGS…`, found by kubectl's plugin discovery (`kubectl` must come from
/// [`Kubectl::with_plugin`]).
async fn plugin(kubectl: &Kubectl, args: &[&str]) -> anyhow::Result<breakwater_e2e::helm::Output> {
    let mut all = vec!["breakwater"];
    all.extend_from_slice(args);
    Ok(kubectl.output(&all, None).await?)
}

struct Story {
    cluster: &'static TestCluster,
    /// The release (the operator scenarios scale and upgrade it), installed with the proxies'
    /// spans exported to [`Story::collector`] (the chart's default sampler: a caller's sampled
    /// trace is followed, 1 % of the others).
    op: Operator,
    kubectl: Kubectl,
    /// A real OpenTelemetry Collector on the node's address.
    collector: Collector,
}

async fn story() -> anyhow::Result<&'static Story> {
    static STORY: OnceCell<Result<Story, String>> = OnceCell::const_new();
    let cluster = TestCluster::shared().await?;
    STORY
        .get_or_init(|| async {
            let collector = Collector::start(cluster).await.map_err(|e| e.to_string())?;
            let tracing = format!("sidecar.tracing.endpoint={}", collector.endpoint());
            // The Gateway API's CRDs, from the chart, for the routes scenario.
            let set = [tracing.as_str(), "gatewayAPI.installCRDs=true"];
            let op = Operator::install(cluster, "bw", NAMESPACE, &set).await.map_err(|e| e.to_string())?;
            op.ready_pods(2, TIMEOUT).await.map_err(|e| e.to_string())?;
            let kubectl = Kubectl::for_cluster(cluster).map_err(|e| e.to_string())?;
            Ok(Story { cluster, op, kubectl, collector })
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

/// The Ready pods with label `selector`, once there are `n` of them.
async fn ready_pods(client: &Client, ns: &str, selector: &str, n: usize) -> anyhow::Result<Vec<Pod>> {
    Ok(scenario::ready_pods(client, ns, selector, n, TIMEOUT).await?)
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
    let url = expose(story, &ns, "payments").await?;
    ready_pods(&client, &ns, "app=payments", 2).await?;
    let caller = ready_pods(&client, &ns, "app=checkout", 1).await?.remove(0);
    scenario::ready_endpoints(&client, &ns, "payments", 2, TIMEOUT).await?;
    let init: Vec<String> =
        caller.spec.iter().flat_map(|s| s.init_containers.iter().flatten()).map(|c| c.name.clone()).collect();
    assert_eq!(init, ["breakwater-init", "breakwater-proxy"], "the caller was injected");
    let caller = caller.metadata.name.clone().unwrap_or_default();
    Ok(Shop { ns, caller, url })
}

/// `kubectl expose` of Service `app` (port 80 → the pods' `http` port, selector `app=<app>`, so
/// every variant's pods are its endpoints); its URL by cluster IP (`ip netns exec` gives curl the
/// host's /etc/hosts, not the pod's, so no cluster DNS name).
async fn expose(story: &Story, ns: &str, app: &str) -> anyhow::Result<String> {
    let client = story.cluster.client()?;
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns);
    let any = deployments.list(&Default::default()).await?.items.into_iter().find(|d| {
        d.spec.template.metadata.as_ref().and_then(|m| m.labels.as_ref()).and_then(|l| l.get("app"))
            == Some(&app.to_owned())
    });
    let deployment =
        any.and_then(|d| d.metadata.name).ok_or_else(|| anyhow::anyhow!("no Deployment of app={app}"))?;
    let selector = format!("app={app}");
    let out = story
        .kubectl
        .output(
            [
                "expose",
                "deployment",
                &deployment,
                "-n",
                ns,
                "--name",
                app,
                "--port",
                "80",
                "--target-port",
                "http",
                "--selector",
                &selector,
            ],
            None,
        )
        .await?;
    anyhow::ensure!(out.success, "kubectl expose: {}", out.stderr);
    let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client, ns).get(app).await?;
    Ok(format!("http://{}/", svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default()))
}

/// Waits until `kubectl get cpol` shows policy `ns/name` Ready with reason `Programmed`.
async fn programmed(story: &Story, ns: &str, name: &str) -> anyhow::Result<()> {
    wait::until_ok(format!("policy {ns}/{name} to be programmed"), TIMEOUT, || async {
        let out = story
            .kubectl
            .run([
                "get",
                "cpol",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}",
            ])
            .await
            .map_err(|e| e.to_string())?;
        if out == "Programmed" { Ok(()) } else { Err(out) }
    })
    .await?;
    Ok(())
}

/// The parent span id a caller's app sends in its `traceparent` (W3C Trace Context).
const APP_SPAN: &str = "00f067aa0ba902b7";

/// A `traceparent` header that starts sampled trace `n` of scenario `tag` (one hex digit or
/// more), and that trace's id.
fn sampled(tag: u32, n: u32) -> (String, String) {
    let trace = format!("4bf92f3577b34da6{tag:08x}{n:08x}");
    (format!("traceparent: 00-{trace}-{APP_SPAN}-01"), trace)
}
