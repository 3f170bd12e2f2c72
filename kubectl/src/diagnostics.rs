//! Reading the diagnostics documents ([`breakwater_crds::admin`]) through the API server's pod
//! proxy (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH`): a sidecar's `/config` and
//! `/breakers` on its probes port, an operator replica's `/debug/snapshots` on its debug port.
//! The user needs `get` on `pods/proxy` and no port-forward; the chart serves them there with
//! `diagnostics.enabled` (the default).

use breakwater_crds::{
    admin::{self, BreakersView, ConfigView, DeliveriesView},
    snapshot::Snapshot,
};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt, api::ListParams};

use crate::{Error, cluster::Cluster, error::chain, pods::PROXY};

/// The chart's labels on the operator's pods.
pub const OPERATOR_SELECTOR: &str =
    "app.kubernetes.io/part-of=breakwater,app.kubernetes.io/component=operator";
/// The proxy container's probes port name, as the injector writes it.
const PROBES_PORT: &str = "bw-probes";
/// The operator container's debug port name, as the chart writes it.
const DEBUG_PORT: &str = "debug";

/// A pod with a Breakwater sidecar, as `config` and `breakers` address it.
#[derive(Debug, Clone)]
pub struct Sidecar {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// The proxy's probes port.
    pub port: u16,
}

/// Reads pod `name` in `namespace` and finds its proxy's probes port; a pod without a sidecar
/// is an error that says so.
pub async fn sidecar(cluster: &Cluster, namespace: &str, name: &str) -> Result<Sidecar, Error> {
    let pod = Api::<Pod>::namespaced(cluster.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|e| Error::api(format!("reading pod {namespace}/{name}"), e))?
        .ok_or_else(|| Error::Diagnostics {
            what: format!("pod {namespace}/{name}"),
            why: "not found".into(),
            hint: format!("kubectl get pods -n {namespace}; another namespace? pass -n NAMESPACE"),
        })?;
    let spec = pod.spec.as_ref();
    let proxy = spec
        .into_iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .find(|c| c.name == PROXY);
    let Some(proxy) = proxy else {
        return Err(Error::Diagnostics {
            what: format!("pod {namespace}/{name}"),
            why: "has no Breakwater sidecar (no breakwater-proxy container): nothing governs its calls"
                .into(),
            hint: "label its namespace breakwater.dev/inject=enabled (or the pod) and recreate the pod; \
                   `kubectl breakwater status -n NAMESPACE` lists the pods that miss it"
                .into(),
        });
    };
    let port = proxy
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(PROBES_PORT))
        .map(|p| p.container_port)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| Error::Diagnostics {
            what: format!("pod {namespace}/{name}"),
            why: format!("its breakwater-proxy container declares no port named {PROBES_PORT}"),
            hint: "it was injected by another Breakwater release: recreate the pod so the current operator injects it"
                .into(),
        })?;
    Ok(Sidecar { namespace: namespace.into(), pod: pod.name_any(), port })
}

/// GET `path` on `port` of pod `namespace/pod` through the API server.
async fn get(
    cluster: &Cluster,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
) -> Result<Vec<u8>, String> {
    let url = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}");
    let request = http::Request::get(&url).body(Vec::new()).map_err(|e| e.to_string())?;
    match cluster.client.request_text(request).await {
        Ok(text) => Ok(text.into_bytes()),
        Err(kube::Error::Api(status)) if status.code == 403 => Err(format!(
            "the API server refused the pod proxy ({}): `get` on pods/proxy in {namespace} is needed",
            status.message
        )),
        Err(kube::Error::Api(status)) => Err(format!("HTTP {}: {}", status.code, status.message.trim())),
        Err(e) => Err(chain(&e)),
    }
}

/// Why a sidecar's diagnostics could not be read, with what to do.
fn sidecar_error(s: &Sidecar, path: &str, why: String) -> Error {
    let hint = if why.contains("--probe-diagnostics") {
        "the chart's diagnostics are off: helm upgrade … --set diagnostics.enabled=true, then restart the pod \
         (kubectl rollout restart); or read the admin port inside the pod: curl http://127.0.0.1:15000"
            .to_owned()
            + path
    } else if why.contains("another version") {
        "use the plugin of the same release as the sidecar (kubectl breakwater --version; the sidecar's image tag)"
            .to_owned()
    } else {
        format!(
            "is the proxy running? kubectl get pod {} -n {}; kubectl logs {} -n {} -c {PROXY}",
            s.pod, s.namespace, s.pod, s.namespace
        )
    };
    Error::Diagnostics {
        what: format!("reading {path} of the sidecar of pod {}/{}", s.namespace, s.pod),
        why,
        hint,
    }
}

/// The sidecar's `/config`.
pub async fn config(cluster: &Cluster, s: &Sidecar) -> Result<ConfigView, Error> {
    let body = get(cluster, &s.namespace, &s.pod, s.port, "/config")
        .await
        .map_err(|w| sidecar_error(s, "/config", w))?;
    admin::read_config(&body).map_err(|e| sidecar_error(s, "/config", e.to_string()))
}

/// The sidecar's `/breakers`.
pub async fn breakers(cluster: &Cluster, s: &Sidecar) -> Result<BreakersView, Error> {
    let body = get(cluster, &s.namespace, &s.pod, s.port, "/breakers")
        .await
        .map_err(|w| sidecar_error(s, "/breakers", w))?;
    admin::read_breakers(&body).map_err(|e| sidecar_error(s, "/breakers", e.to_string()))
}

/// An operator replica whose debug view can be read.
#[derive(Debug, Clone)]
struct Replica {
    pod: String,
    port: u16,
}

/// The ready operator replicas serving their debug view on the pod's address; `Err` says why
/// there are none.
async fn replicas(cluster: &Cluster, namespace: &str) -> Result<Vec<Replica>, String> {
    let pods = Api::<Pod>::namespaced(cluster.client.clone(), namespace)
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await
        .map_err(|e| format!("cannot list the operator's pods in {namespace}: {}", chain(&e)))?;
    if pods.items.is_empty() {
        return Err(format!(
            "no operator pod in namespace {namespace} (scaled to 0, or installed elsewhere: --breakwater-namespace)"
        ));
    }
    let ready = |p: &Pod| {
        p.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Ready" && c.status == "True")
    };
    let found: Vec<Replica> = pods
        .items
        .iter()
        .filter(|p| ready(p) && p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let port = p
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|port| port.name.as_deref() == Some(DEBUG_PORT))?;
            Some(Replica { pod: p.name_any(), port: u16::try_from(port.container_port).ok()? })
        })
        .collect();
    if found.is_empty() {
        return Err(if pods.items.iter().any(ready) {
            "the operator serves no debug port: helm upgrade … --set diagnostics.enabled=true".into()
        } else {
            format!("no operator replica in {namespace} is ready")
        });
    }
    Ok(found)
}

/// What the operator compiled for pod `namespace/pod` now, from the first replica that answers.
pub async fn compiled(
    cluster: &Cluster,
    breakwater: &str,
    namespace: &str,
    pod: &str,
) -> Result<Snapshot, String> {
    let mut last = String::new();
    for r in replicas(cluster, breakwater).await? {
        match get(cluster, breakwater, &r.pod, r.port, &format!("/debug/snapshots/{namespace}/{pod}")).await {
            Ok(body) => {
                return serde_json::from_slice(&body).map_err(|e| {
                    format!("replica {} answered something that is not a snapshot: {e}", r.pod)
                });
            }
            Err(why) => last = format!("replica {}: {why}", r.pod),
        }
    }
    Err(last)
}

/// Every ready replica's deliveries; `Err` when none could be read.
pub async fn deliveries(cluster: &Cluster, breakwater: &str) -> Result<Vec<DeliveriesView>, String> {
    let mut views = Vec::new();
    let mut last = String::new();
    for r in replicas(cluster, breakwater).await? {
        match get(cluster, breakwater, &r.pod, r.port, "/debug/snapshots").await {
            Ok(body) => match admin::read_deliveries(&body) {
                Ok(v) => views.push(v),
                Err(e) => last = format!("replica {}: {e}", r.pod),
            },
            Err(why) => last = format!("replica {}: {why}", r.pod),
        }
    }
    if views.is_empty() { Err(last) } else { Ok(views) }
}

/// Where a pod's sidecar stands, from every replica's deliveries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Convergence {
    /// It applied what the operator compiled for it now.
    Current,
    /// It applied an older snapshot.
    Behind {
        /// What it applied (`counter-hash`).
        applied: String,
        /// What the operator compiled.
        compiled: String,
    },
    /// It streams from a replica but has applied nothing yet (or refused every snapshot).
    Pending,
    /// No replica has a stream from it.
    NotConnected,
    /// The operator has no snapshot for it (not indexed yet, or not a pod it serves).
    NotCompiled,
}

impl Convergence {
    /// Whether this is as it should be.
    pub fn healthy(&self) -> bool {
        *self == Convergence::Current
    }

    /// The short word for tables.
    pub fn word(&self) -> String {
        match self {
            Convergence::Current => "current".into(),
            Convergence::Behind { .. } => "BEHIND".into(),
            Convergence::Pending => "PENDING".into(),
            Convergence::NotConnected => "NOT CONNECTED".into(),
            Convergence::NotCompiled => "NOT COMPILED".into(),
        }
    }
}

/// Pod `namespace/name`'s convergence according to `views` (every replica's).
pub fn convergence(views: &[DeliveriesView], namespace: &str, name: &str) -> Convergence {
    let rows: Vec<_> =
        views.iter().flat_map(|v| &v.pods).filter(|p| p.namespace == namespace && p.name == name).collect();
    let Some(compiled) = rows.iter().find_map(|p| p.compiled.as_ref()) else {
        return Convergence::NotCompiled;
    };
    let Some(connected) = rows.iter().find(|p| p.connected) else {
        return Convergence::NotConnected;
    };
    match &connected.applied {
        None => Convergence::Pending,
        Some(applied) if applied.hash == compiled.hash => Convergence::Current,
        Some(applied) => Convergence::Behind { applied: applied.to_string(), compiled: compiled.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use breakwater_crds::{admin::PodDelivery, snapshot::SnapshotVersion};

    use super::*;

    fn version(counter: u64, hash: &str) -> Option<SnapshotVersion> {
        Some(SnapshotVersion { counter, hash: hash.into() })
    }

    fn view(replica: &str, pods: Vec<PodDelivery>) -> DeliveriesView {
        DeliveriesView {
            api_version: admin::API_VERSION.into(),
            kind: admin::KIND_DELIVERIES.into(),
            replica: replica.into(),
            pods,
        }
    }

    fn pod(
        compiled: Option<SnapshotVersion>,
        connected: bool,
        applied: Option<SnapshotVersion>,
    ) -> PodDelivery {
        PodDelivery { namespace: "shop".into(), name: "checkout".into(), compiled, connected, applied }
    }

    #[test]
    fn a_pod_is_current_when_the_replica_it_streams_from_says_it_applied_the_compiled_hash() {
        // The counter differs between replicas; only the hash identifies content.
        let views = [
            view("a", vec![pod(version(5, "ab12"), false, None)]),
            view("b", vec![pod(version(9, "ab12"), true, version(9, "ab12"))]),
        ];
        assert_eq!(convergence(&views, "shop", "checkout"), Convergence::Current);
        let views = [view("a", vec![pod(version(5, "ab12"), true, version(4, "0000"))])];
        assert_eq!(
            convergence(&views, "shop", "checkout"),
            Convergence::Behind { applied: "4-0000".into(), compiled: "5-ab12".into() }
        );
        let views = [view("a", vec![pod(version(5, "ab12"), true, None)])];
        assert_eq!(convergence(&views, "shop", "checkout"), Convergence::Pending);
        let views = [view("a", vec![pod(version(5, "ab12"), false, None)])];
        assert_eq!(convergence(&views, "shop", "checkout"), Convergence::NotConnected);
        assert_eq!(convergence(&views, "shop", "other"), Convergence::NotCompiled);
    }

    #[test]
    fn a_sidecar_of_another_version_is_named_with_what_to_do() {
        let s = Sidecar { namespace: "shop".into(), pod: "checkout".into(), port: 15020 };
        let newer = br#"{"apiVersion": "breakwater.dev/admin/v2", "kind": "SidecarConfig"}"#;
        let why = admin::read_config(newer).expect_err("a v2 document is refused").to_string();
        let Error::Diagnostics { what, why, hint } = sidecar_error(&s, "/config", why) else {
            panic!("a diagnostics error")
        };
        assert_eq!(what, "reading /config of the sidecar of pod shop/checkout");
        assert!(why.contains("breakwater.dev/admin/v2") && why.contains(admin::API_VERSION), "{why}");
        assert!(hint.starts_with("use the plugin of the same release as the sidecar"), "{hint}");
    }
}
