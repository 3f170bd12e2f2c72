//! The operator as the chart deploys it — `helm install`, two replicas run as pods — against the
//! real API server: policy status from the lease holder only, snapshots that follow the cluster,
//! failover, restarts that change nothing, and policies the operator cannot use.
//!
//! One release per test binary. Tests that stop operator replicas or change the CRD take the
//! [`DISRUPTIVE`] lock exclusively; the others hold it shared, so they never overlap.
//!
//! - [`status`]: policy status, conflicts, snapshots following the cluster, failover, restarts,
//!   policies the operator cannot use;
//! - [`stream`]: the config API and sidecars in cluster mode;
//! - [`inject`]: sidecar injection and injected pods that run;
//! - [`certs`]: certificate rotation and renewal, the webhook's failure policy.

mod certs;
mod inject;
mod owners;
mod status;
mod stream;

use std::time::Duration;

use breakwater_crds::{CommunicationPolicy, CommunicationPolicyStatus, load, reasons};
use breakwater_e2e::{
    TestCluster,
    operator::{Operator, metric},
    wait,
};
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Service},
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::sync::{OnceCell, RwLock};

const NAMESPACE: &str = "breakwater-system";
const TIMEOUT: Duration = Duration::from_secs(60);
/// The chart's default lease duration is 15 s: a takeover may take that long, plus a relist.
const TAKEOVER: Duration = Duration::from_secs(30);

static DISRUPTIVE: RwLock<()> = RwLock::const_new(());

async fn operator() -> anyhow::Result<(&'static TestCluster, &'static Operator)> {
    static RELEASE: OnceCell<Result<Operator, String>> = OnceCell::const_new();
    let cluster = TestCluster::shared().await?;
    let op = RELEASE
        .get_or_init(|| async {
            let op = Operator::install(cluster, "bw", NAMESPACE, &["operator.logLevel=debug"])
                .await
                .map_err(|e| e.to_string())?;
            op.ready_pods(2, TIMEOUT).await.map_err(|e| e.to_string())?;
            Ok(op)
        })
        .await
        .as_ref()
        .map_err(|e| anyhow::anyhow!("installing the chart failed: {e}"))?;
    Ok((cluster, op))
}

fn policies(client: &Client, ns: &str) -> Api<CommunicationPolicy> {
    Api::namespaced(client.clone(), ns)
}

fn policy(name: &str, spec: Value) -> anyhow::Result<CommunicationPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CommunicationPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))?)
}

fn condition(status: &CommunicationPolicyStatus, type_: &str) -> Option<(String, String, String)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until `name`'s status (for its current generation) satisfies `check`.
async fn status_until(
    api: &Api<CommunicationPolicy>,
    name: &str,
    timeout: Duration,
    check: impl Fn(&CommunicationPolicyStatus) -> bool,
) -> anyhow::Result<CommunicationPolicyStatus> {
    let check = &check;
    Ok(wait::until_ok(format!("the status of {name}"), timeout, || async move {
        let p = api.get(name).await.map_err(|e| e.to_string())?;
        let status = p.status.clone().unwrap_or_default();
        let current =
            status.observed_generation.is_some() && status.observed_generation == p.metadata.generation;
        if current && check(&status) { Ok(status) } else { Err(format!("{status:?}")) }
    })
    .await?)
}

fn service(name: &str, ports: &[(&str, u16, Value)]) -> anyhow::Result<Service> {
    let ports: Vec<Value> =
        ports.iter().map(|(n, p, t)| json!({"name": n, "port": p, "targetPort": t})).collect();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"tier": "backend"}},
        "spec": {"selector": {"app": name}, "ports": ports},
    }))?)
}
