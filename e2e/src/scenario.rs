//! The building blocks of the user stories (`tests/story/`, `tests/lifecycle.rs` and
//! `make demo-cluster`): fault-server Deployments, the pods of a label that are Ready, calls made
//! from inside a pod as its app would make them (through its iptables rules, so through its
//! sidecar), and sums over a sidecar's Prometheus text.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;

use crate::{Error, PodRunner, Result, wait};

/// A Deployment of the fault server (`args` added to its own `--listen 0.0.0.0:8080`), its pods
/// labelled `app=<app>` and `variant=<name>`, the port named `http`, Ready once it listens.
pub fn fault_deployment(name: &str, app: &str, replicas: i32, args: &[&str]) -> Result<Deployment> {
    let mut all = vec!["--listen", "0.0.0.0:8080"];
    all.extend_from_slice(args);
    serde_json::from_value(json!({
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
    }))
    .map_err(|e| Error::Other(format!("the fault-server Deployment {name}: {e}")))
}

/// Creates `deployment` in `namespace`.
pub async fn create_deployment(client: &Client, namespace: &str, deployment: &Deployment) -> Result<()> {
    let name = deployment.metadata.name.clone().unwrap_or_default();
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), deployment)
        .await
        .map_err(Error::kube(format!("creating Deployment {namespace}/{name}")))?;
    Ok(())
}

/// The Ready pods with label `selector` in `namespace` (none being deleted counted), once there
/// are exactly `n` of them.
pub async fn ready_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
    n: usize,
    timeout: Duration,
) -> Result<Vec<Pod>> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    wait::until_ok(format!("{n} ready pods {selector} in {namespace}"), timeout, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
        let (ready, waiting): (Vec<Pod>, Vec<Pod>) = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .partition(crate::operator::is_ready);
        if ready.len() == n {
            return Ok(ready);
        }
        let why: Vec<String> = waiting.iter().map(not_ready_because).collect();
        Err(format!("{} ready; {}", ready.len(), why.join("; ")))
    })
    .await
}

/// Why a pod is not Ready, as `kubectl describe` would say it: its phase and each container's
/// waiting or terminated reason and message.
fn not_ready_because(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let Some(status) = &pod.status else { return format!("{name}: no status") };
    let states =
        status.init_container_statuses.iter().flatten().chain(status.container_statuses.iter().flatten());
    let containers: Vec<String> = states
        .filter_map(|c| {
            let state = c.state.as_ref()?;
            let (reason, message) = if let Some(w) = &state.waiting {
                (w.reason.clone(), w.message.clone())
            } else if let Some(t) = &state.terminated {
                (t.reason.clone(), t.message.clone())
            } else {
                return (!c.ready).then(|| format!("{} running, not ready", c.name));
            };
            Some(format!("{} {} {}", c.name, reason.unwrap_or_default(), message.unwrap_or_default()))
        })
        .collect();
    format!("{name} {}: {}", status.phase.as_deref().unwrap_or("?"), containers.join(", "))
}

/// What a series of calls saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Answers 2xx.
    pub ok: usize,
    /// Everything else, no answer included.
    pub errors: usize,
    /// Each status code seen, and how often (0: no answer within the call's limit).
    pub codes: BTreeMap<u16, usize>,
    /// Each `breakwater-error` seen (why a sidecar refused or cut a call), and how often.
    pub refusals: BTreeMap<String, usize>,
}

impl Seen {
    /// The share of calls that failed.
    pub fn rate(&self) -> f64 {
        self.errors as f64 / (self.ok + self.errors).max(1) as f64
    }

    /// Adds one call's status code (0: no answer).
    pub fn add(&mut self, code: u16) {
        *self.codes.entry(code).or_default() += 1;
        if (200..300).contains(&code) {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
    }
}

/// What one call got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The status code (0: no answer within the call's limit).
    pub code: u16,
    /// The response's `breakwater-error` header: why Breakwater refused or cut the call.
    pub error: Option<String>,
    /// How long the call took, as curl measured it (connect to last byte).
    pub time: Duration,
    /// The response's `x-served-by` header: which fault-server pod answered.
    pub served_by: Option<String>,
}

/// One `curl` of `url` from inside pod `namespace/pod`, as its app would make it: through the
/// pod's iptables rules, so through its sidecar, with `headers` (`Name: value`) added.
pub async fn call(
    runner: &PodRunner,
    namespace: &str,
    pod: &str,
    url: &str,
    max_time: Duration,
    headers: &[&str],
) -> Result<Answer> {
    call_method(runner, namespace, pod, "GET", url, max_time, headers).await
}

/// [`call`] with another `method` (a `POST` carries a small JSON body).
pub async fn call_method(
    runner: &PodRunner,
    namespace: &str,
    pod: &str,
    method: &str,
    url: &str,
    max_time: Duration,
    headers: &[&str],
) -> Result<Answer> {
    let netns = runner
        .netns(namespace, pod)
        .ok_or_else(|| Error::Other(format!("pod {namespace}/{pod} has no network namespace")))?;
    let body: &[&str] = if method == "POST" { &["--data-binary", "{}"] } else { &[] };
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &netns, "curl", "-s", "-o", "/dev/null", "-D", "-", "-X", method])
        .args(body)
        .args(["-w", "\n%{http_code} %{time_total}"])
        .arg("--max-time")
        .arg(format!("{:.3}", max_time.as_secs_f64()))
        .args(headers.iter().flat_map(|h| ["-H", h]))
        .arg(url)
        .output()
        .await
        .map_err(Error::io("running curl in a pod's network namespace"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    let (code, time) = last.split_once(' ').unwrap_or((last, ""));
    let header = |wanted: &str| {
        text.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case(wanted).then(|| value.trim().to_owned())
        })
    };
    Ok(Answer {
        code: code.trim().parse().unwrap_or(0),
        error: header("breakwater-error"),
        served_by: header("x-served-by"),
        time: time.trim().parse::<f64>().ok().map_or(max_time, Duration::from_secs_f64),
    })
}

/// The `/stats` document of the fault server at `url` (`http://POD_IP:8080/stats`), fetched
/// from inside pod `namespace/pod`: its own count of the requests it received (`requests`,
/// this one included), failures and concurrency.
pub async fn fault_stats(
    runner: &PodRunner,
    namespace: &str,
    pod: &str,
    url: &str,
) -> Result<serde_json::Value> {
    let netns = runner
        .netns(namespace, pod)
        .ok_or_else(|| Error::Other(format!("pod {namespace}/{pod} has no network namespace")))?;
    let out = tokio::process::Command::new("ip")
        .args(["netns", "exec", &netns, "curl", "-sS", "--max-time", "3", url])
        .output()
        .await
        .map_err(Error::io("running curl in a pod's network namespace"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Other(format!(
            "{url} from {namespace}/{pod}: not a stats document ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

/// `n` sequential calls (2 s limit each) to `url` from inside pod `namespace/pod`; see [`call`].
pub async fn calls(runner: &PodRunner, namespace: &str, pod: &str, url: &str, n: usize) -> Result<Seen> {
    let mut seen = Seen::default();
    for _ in 0..n {
        let answer = call(runner, namespace, pod, url, Duration::from_secs(2), &[]).await?;
        seen.add(answer.code);
        if let Some(reason) = answer.error {
            *seen.refusals.entry(reason).or_default() += 1;
        }
    }
    Ok(seen)
}

/// A metric's value summed over the lines of `text` (Prometheus text format) that start with
/// `name` and contain every one of `labels` (`key="value"` fragments).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|s| l.contains(s)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Prometheus text of the sidecar of pod `namespace/name`, from its probes port (15020).
pub async fn sidecar_metrics(client: &Client, namespace: &str, name: &str) -> Result<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .map_err(Error::kube(format!("reading pod {namespace}/{name}")))?;
    let ip = crate::operator::pod_ip(&pod)?;
    let (status, body) = crate::operator::http_get(ip, 15020, "/metrics")
        .await
        .map_err(Error::io(format!("GET /metrics of {namespace}/{name}'s sidecar")))?;
    if status != 200 {
        return Err(Error::Other(format!("GET /metrics of {namespace}/{name}'s sidecar: {status}")));
    }
    Ok(body)
}

/// Waits until the EndpointSlices of Service `namespace/service` list exactly `n` ready
/// endpoints (the endpoint-slice controller follows pod readiness a moment later).
pub async fn ready_endpoints(
    client: &Client,
    namespace: &str,
    service: &str,
    n: usize,
    timeout: Duration,
) -> Result<()> {
    let slices = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(client.clone(), namespace);
    let selector = format!("kubernetes.io/service-name={service}");
    wait::until_ok(format!("{n} ready endpoints of Service {namespace}/{service}"), timeout, || async {
        let list = slices.list(&ListParams::default().labels(&selector)).await.map_err(|e| e.to_string())?;
        let ready = list
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
            .count();
        if ready == n { Ok(()) } else { Err(format!("{ready} ready")) }
    })
    .await?;
    // The harness's kube-proxy applies its DNAT rules after it sees the EndpointSlice, later
    // still when the machine is busy; a call to the cluster IP before that is refused by the
    // node (a `connect-failed` in ~5 ms that looked like a data-plane defect).
    let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), namespace)
        .get(service)
        .await
        .map_err(|e| Error::Environment(format!("reading Service {namespace}/{service}: {e}")))?;
    let spec = svc.spec.unwrap_or_default();
    let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") else { return Ok(()) };
    let ports: Vec<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
    wait::until_ok(
        format!("the node to DNAT {ip} ({namespace}/{service}) to {n} endpoints"),
        timeout,
        || async {
            let out = tokio::process::Command::new("iptables-save")
                .args(["-t", "nat"])
                .output()
                .await
                .map_err(|e| format!("iptables-save: {e}"))?;
            let rules = String::from_utf8_lossy(&out.stdout);
            let dnat = |port: i32| {
                rules
                    .lines()
                    .filter(|l| {
                        l.contains(&format!("-d {ip}/32 "))
                            && l.contains(&format!("--dport {port} "))
                            && l.contains("DNAT")
                    })
                    .count()
            };
            let counts: Vec<usize> = ports.iter().map(|p| dnat(*p)).collect();
            if counts.iter().all(|c| *c == n) {
                Ok(())
            } else {
                Err(format!("DNAT rules per port: {counts:?}"))
            }
        },
    )
    .await
}
