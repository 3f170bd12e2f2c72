//! [`Operator`]: Breakwater installed with `helm install` on a [`TestCluster`], its operator
//! running as the chart's Deployment (pods run by the [`PodRunner`](crate::PodRunner)), and what
//! tests read from it: its pods, each replica's metrics, which one holds the lease, and the
//! snapshot it compiled for a pod (from the loopback debug endpoint, inside the replica's own
//! network namespace, as `kubectl exec … curl` would).

use std::{net::Ipv4Addr, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::ListParams};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Error, Helm, PodRunner, Result, TestCluster, helm::chart_dir, wait};

/// The operator's component label in the chart.
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/component=operator";
/// How long `helm install --wait` may take (two replicas syncing their indexes).
const INSTALL_TIMEOUT: &str = "180s";

/// An installed release; see the module docs.
pub struct Operator {
    helm: Helm,
    /// The release name.
    pub release: String,
    /// The release namespace.
    pub namespace: String,
    /// A client is made per call: a `kube::Client` belongs to the runtime it was made on, and
    /// each test has its own.
    config: kube::Config,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("release", &self.release)
            .field("namespace", &self.namespace)
            .finish()
    }
}

impl Operator {
    /// `helm install RELEASE charts/breakwater -n NAMESPACE --create-namespace --wait` with
    /// `--set` values, and waits for every operator replica to be ready.
    pub async fn install(
        cluster: &TestCluster,
        release: &str,
        namespace: &str,
        set: &[&str],
    ) -> Result<Operator> {
        cluster.pod_runner().await?;
        let helm = Helm::for_cluster(cluster)?;
        let chart = chart_dir().display().to_string();
        let mut args = vec![
            "install",
            release,
            chart.as_str(),
            "--namespace",
            namespace,
            "--create-namespace",
            "--wait",
            "--timeout",
            INSTALL_TIMEOUT,
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        helm.run(&args).await?;
        Ok(Operator {
            helm,
            release: release.into(),
            namespace: namespace.into(),
            config: cluster.config().clone(),
        })
    }

    /// The config API's URL, `https://<cluster IP of the operator's Service>:9090`, and the
    /// name its certificate carries (the harness has no cluster DNS; the certificate names the
    /// cluster IP too).
    pub async fn config_api(&self) -> Result<(String, String)> {
        let client = kube::Client::try_from(self.config.clone()).map_err(Error::kube("building a client"))?;
        let service = self.service_name();
        let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client, &self.namespace)
            .get(&service)
            .await
            .map_err(Error::kube(format!("reading Service {service}")))?;
        let ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
        Ok((format!("https://{ip}:9090"), format!("{service}.{}.svc", self.namespace)))
    }

    /// The operator's Service (and Deployment) name: `<release>-breakwater`.
    pub fn service_name(&self) -> String {
        if self.release.contains("breakwater") {
            self.release.clone()
        } else {
            format!("{}-breakwater", self.release)
        }
    }

    /// `helm upgrade --reuse-values --wait` with `--set` values.
    pub async fn upgrade(&self, set: &[&str]) -> Result<()> {
        let chart = chart_dir().display().to_string();
        let mut args = vec![
            "upgrade",
            self.release.as_str(),
            chart.as_str(),
            "--namespace",
            self.namespace.as_str(),
            "--reuse-values",
            "--wait",
            "--timeout",
            INSTALL_TIMEOUT,
        ];
        for s in set {
            args.extend(["--set", s]);
        }
        self.helm.run(&args).await?;
        Ok(())
    }

    /// Scales the operator's Deployment to `replicas`.
    pub async fn scale(&self, replicas: i32) -> Result<()> {
        let client = kube::Client::try_from(self.config.clone()).map_err(Error::kube("building a client"))?;
        let api = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client, &self.namespace);
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        api.patch(&self.service_name(), &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
            .await
            .map_err(Error::kube("scaling the operator"))?;
        Ok(())
    }

    /// The helm this release was installed with.
    pub fn helm(&self) -> &Helm {
        &self.helm
    }

    /// Waits until no operator pod exists, terminating ones included: their processes have
    /// stopped (a terminating replica still answers the webhook while it drains).
    pub async fn gone(&self, timeout: std::time::Duration) -> Result<()> {
        let client = kube::Client::try_from(self.config.clone()).map_err(Error::kube("building a client"))?;
        let api = Api::<Pod>::namespaced(client, &self.namespace);
        crate::wait::until_ok("every operator replica to stop", timeout, || async {
            let n = api
                .list(&ListParams::default().labels(OPERATOR_SELECTOR))
                .await
                .map_err(|e| e.to_string())?
                .items
                .len();
            if n == 0 { Ok(()) } else { Err(format!("{n} pods left")) }
        })
        .await
    }

    /// The operator pods that are running (not being deleted), by name.
    pub async fn pods(&self) -> Result<Vec<Pod>> {
        let client = kube::Client::try_from(self.config.clone()).map_err(Error::kube("building a client"))?;
        let api = Api::<Pod>::namespaced(client, &self.namespace);
        let mut pods: Vec<Pod> = api
            .list(&ListParams::default().labels(OPERATOR_SELECTOR))
            .await
            .map_err(Error::kube("listing the operator pods"))?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .collect();
        pods.sort_by_key(|p| p.name_any());
        Ok(pods)
    }

    /// Waits until `n` operator replicas are running and ready, and returns them.
    pub async fn ready_pods(&self, n: usize, timeout: Duration) -> Result<Vec<Pod>> {
        wait::until_ok(format!("{n} ready operator replicas"), timeout, || async {
            let pods = self.pods().await.map_err(|e| e.to_string())?;
            let ready: Vec<Pod> = pods.into_iter().filter(is_ready).collect();
            if ready.len() == n { Ok(ready) } else { Err(format!("{} ready", ready.len())) }
        })
        .await
    }

    /// A replica's `/metrics` text (the metrics port, from the node, as Prometheus scrapes it).
    pub async fn metrics(&self, pod: &Pod) -> Result<String> {
        let ip: Ipv4Addr = pod_ip(pod)?;
        let (status, body) =
            http_get(ip, 8080, "/metrics").await.map_err(Error::io("scraping the operator"))?;
        if status != 200 {
            return Err(Error::Other(format!("{}: /metrics answered {status}: {body}", pod.name_any())));
        }
        Ok(body)
    }

    /// The replica that holds the lease (`breakwater_operator_leader 1`), once exactly one does.
    pub async fn leader(&self, timeout: Duration) -> Result<Pod> {
        wait::until_ok("exactly one operator replica to lead", timeout, || async {
            let mut leaders = Vec::new();
            for pod in self.pods().await.map_err(|e| e.to_string())? {
                let text = self.metrics(&pod).await.map_err(|e| e.to_string())?;
                if metric(&text, "breakwater_operator_leader") == Some(1.0) {
                    leaders.push(pod);
                }
            }
            match leaders.len() {
                1 => Ok(leaders.remove(0)),
                n => Err(format!("{n} leaders")),
            }
        })
        .await
    }

    /// The snapshot replica `pod` compiled for pod `namespace/name`, or `None` if it has none.
    pub async fn snapshot(
        &self,
        runner: &PodRunner,
        pod: &Pod,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>> {
        let netns = runner
            .netns(&self.namespace, &pod.name_any())
            .ok_or_else(|| Error::Other(format!("{} has no network namespace", pod.name_any())))?;
        let url = format!("http://127.0.0.1:9091/debug/snapshots/{namespace}/{name}");
        let out = tokio::process::Command::new("ip")
            .args(["netns", "exec", &netns, "curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", &url])
            .output()
            .await
            .map_err(Error::io("running curl in the operator's network namespace"))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
        match code {
            "200" => {
                serde_json::from_str(body).map(Some).map_err(|e| Error::Other(format!("{url}: {e}: {body}")))
            }
            "404" => Ok(None),
            _ => Err(Error::Other(format!("{url}: {code}: {body}{}", String::from_utf8_lossy(&out.stderr)))),
        }
    }
}

/// Whether a pod reports Ready.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod's IP.
pub fn pod_ip(pod: &Pod) -> Result<Ipv4Addr> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok())
        .ok_or_else(|| Error::Other(format!("{} has no IP", pod.name_any())))
}

/// The value of the first sample of `name` (exact name and labels, as printed) in Prometheus
/// text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// GET `path` over HTTP/1.1 with `Connection: close`; the status and the body.
pub async fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect((ip, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "response timed out"))??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, body.to_owned()))
}
