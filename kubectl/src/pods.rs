//! Which pods should run the sidecar, and whether they do.
//!
//! "Should" follows the chart's webhooks: a pod in a namespace labelled
//! `breakwater.dev/inject=enabled`, or a pod labelled so anywhere, unless the pod opts out
//! (`breakwater.dev/inject: disabled`, label or annotation) or uses the node's network. The
//! operator decides the same way at admission, and reports the pods it finds without the sidecar
//! with a `SidecarNotInjected` Event; the plugin reads the pods itself so the answer does not
//! depend on Events, which expire.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{Api, ResourceExt, api::ListParams};
use serde::Serialize;

use crate::{Error, cluster::Cluster, diagnostics::Convergence, output::Table};

/// The label (namespace or pod) and annotation (pod) that turn injection on or off.
pub const INJECT: &str = "breakwater.dev/inject";
/// The proxy container's name.
pub const PROXY: &str = "breakwater-proxy";

/// A pod's sidecar.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum SidecarState {
    /// The proxy runs and is ready.
    Ready,
    /// The proxy is there but not ready (starting, or failing its probe).
    NotReady {
        /// Its container state, e.g. `waiting: CrashLoopBackOff`.
        detail: String,
    },
    /// Injection applies but the pod has no proxy.
    Missing,
    /// The pod opted out.
    OptedOut,
    /// The pod uses the node's network; it is never injected.
    HostNetwork,
}

impl SidecarState {
    /// Whether this is as it should be.
    pub fn healthy(&self) -> bool {
        !matches!(self, SidecarState::NotReady { .. } | SidecarState::Missing)
    }
}

/// One pod.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PodSidecar {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its sidecar.
    #[serde(flatten)]
    pub state: SidecarState,
    /// Whether its sidecar applied what the operator compiled for it (when the operator's
    /// diagnostics could be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Convergence>,
}

impl PodSidecar {
    /// Its sidecar is as it should be, and has applied its snapshot when that is known.
    pub fn healthy(&self) -> bool {
        self.state.healthy() && self.snapshot.as_ref().is_none_or(Convergence::healthy)
    }
}

/// The pods' table (`all`: with a namespace column), or a line saying there are none.
pub fn table(pods: &[PodSidecar], all: bool) -> String {
    if pods.is_empty() {
        return "No pods where injection applies (label a namespace breakwater.dev/inject=enabled).\n".into();
    }
    let with_snapshot = pods.iter().any(|p| p.snapshot.is_some());
    let mut header = vec!["pod", "sidecar"];
    if with_snapshot {
        header.push("snapshot");
    }
    if all {
        header.insert(0, "namespace");
    }
    let mut t = Table::new(&header);
    for p in pods {
        let (cell, mut details) = match &p.state {
            SidecarState::Ready => ("ready", vec![]),
            SidecarState::NotReady { detail } => ("not ready", vec![detail.clone()]),
            SidecarState::Missing => (
                "MISSING",
                vec!["created before injection applied, or while no operator replica answered the webhook: restart its workload (kubectl rollout restart)".to_owned()],
            ),
            SidecarState::OptedOut => ("opted out", vec![]),
            SidecarState::HostNetwork => ("host network", vec![]),
        };
        let mut row = vec![p.name.clone(), cell.to_owned()];
        if with_snapshot {
            row.push(p.snapshot.as_ref().map_or_else(|| "-".to_owned(), Convergence::word));
            match &p.snapshot {
                Some(Convergence::Behind { applied, compiled }) => details.push(format!(
                    "applied {applied}, the operator compiled {compiled}: kubectl breakwater config {} -n {} shows what differs",
                    p.name, p.namespace
                )),
                Some(Convergence::Pending) => details.push(
                    "connected, nothing applied yet: it refused every snapshot, or one is on its way (kubectl logs … -c breakwater-proxy)".into(),
                ),
                Some(Convergence::NotConnected) => details.push(
                    "no operator replica streams to it: it enforces its last snapshot (kubectl logs … -c breakwater-proxy)".into(),
                ),
                _ => {}
            }
        }
        if all {
            row.insert(0, p.namespace.clone());
        }
        t.row(row);
        for d in details {
            t.detail(d);
        }
    }
    t.render()
}

/// Whether `namespace` is labelled for injection.
pub fn labelled(namespace: &Namespace) -> bool {
    namespace.labels().get(INJECT).is_some_and(|v| v == "enabled")
}

/// Whether `namespace` is being deleted: it takes its pods and policies with it, so what they
/// lack no longer matters.
pub fn terminating(namespace: &Namespace) -> bool {
    namespace.metadata.deletion_timestamp.is_some()
}

/// The pods of `namespace` (none: every namespace) that injection concerns or that run the proxy.
pub async fn survey(cluster: &Cluster, namespace: Option<&str>) -> Result<Vec<PodSidecar>, Error> {
    let namespaces = crate::status::namespaces(cluster, namespace).await?;
    survey_in(cluster, namespace, &namespaces).await
}

/// [`survey`], with the `namespaces` already read (their labels decide).
pub async fn survey_in(
    cluster: &Cluster,
    namespace: Option<&str>,
    namespaces: &[Namespace],
) -> Result<Vec<PodSidecar>, Error> {
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(cluster.client.clone(), ns),
        None => Api::all(cluster.client.clone()),
    };
    let listed = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::api(format!("listing pods in {}", namespace.unwrap_or("every namespace")), e))?;
    let mut out: Vec<PodSidecar> = listed
        .items
        .iter()
        .filter_map(|pod| {
            let ns = pod.namespace().unwrap_or_default();
            let namespace = namespaces.iter().find(|n| n.name_any() == ns);
            if namespace.is_some_and(terminating) {
                return None;
            }
            let state = state(pod, namespace.is_some_and(labelled))?;
            Some(PodSidecar { namespace: ns, name: pod.name_any(), state, snapshot: None })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(out)
}

/// `pod`'s sidecar; `None` when injection does not concern it and it has no proxy.
pub fn state(pod: &Pod, namespace_enabled: bool) -> Option<SidecarState> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref();
    let finished = status.and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
    if finished || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let has_proxy =
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == PROXY);
    if has_proxy {
        let proxy = status
            .iter()
            .flat_map(|s| {
                s.container_statuses.iter().flatten().chain(s.init_container_statuses.iter().flatten())
            })
            .find(|c| c.name == PROXY);
        return Some(match proxy {
            Some(c) if c.ready => SidecarState::Ready,
            Some(c) => SidecarState::NotReady { detail: container_detail(c) },
            None => SidecarState::NotReady { detail: "no container status yet".into() },
        });
    }
    let label = pod.labels().get(INJECT);
    let annotation = pod.annotations().get(INJECT);
    if label.or(annotation).is_some_and(|v| v == "disabled") {
        return namespace_enabled.then_some(SidecarState::OptedOut);
    }
    if !namespace_enabled && label.is_none_or(|v| v != "enabled") {
        return None;
    }
    if spec.host_network == Some(true) {
        return Some(SidecarState::HostNetwork);
    }
    Some(SidecarState::Missing)
}

fn container_detail(c: &k8s_openapi::api::core::v1::ContainerStatus) -> String {
    let state = c.state.as_ref();
    if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
        return format!("waiting: {}", w.reason.as_deref().unwrap_or("-"));
    }
    if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
        return format!("terminated: {} (exit {})", t.reason.as_deref().unwrap_or("-"), t.exit_code);
    }
    format!("running, not ready ({} restarts)", c.restart_count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    #[test]
    fn a_pod_in_a_labelled_namespace_without_the_proxy_is_missing_it_unless_it_opts_out() {
        let plain =
            pod(serde_json::json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "app"}]}}));
        assert_eq!(state(&plain, true), Some(SidecarState::Missing));
        assert_eq!(state(&plain, false), None);
        let out = pod(serde_json::json!({
            "metadata": {"name": "b", "annotations": {INJECT: "disabled"}},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert_eq!(state(&out, true), Some(SidecarState::OptedOut));
        let labelled = pod(serde_json::json!({
            "metadata": {"name": "c", "labels": {INJECT: "enabled"}},
            "spec": {"containers": [{"name": "app"}]}
        }));
        assert_eq!(state(&labelled, false), Some(SidecarState::Missing));
    }

    #[test]
    fn a_native_sidecar_proxy_is_read_from_the_init_container_statuses() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "a"},
            "spec": {"initContainers": [{"name": PROXY, "restartPolicy": "Always"}], "containers": [{"name": "app"}]},
            "status": {"initContainerStatuses": [{"name": PROXY, "ready": true, "restartCount": 0, "image": "x", "imageID": ""}]}
        }));
        assert_eq!(state(&p, true), Some(SidecarState::Ready));
    }
}
