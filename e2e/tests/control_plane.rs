//! The control plane itself: versions, readiness, controllers and RBAC, against the real
//! kube-apiserver, kube-controller-manager and kube-scheduler.

use std::time::Duration;

use breakwater_e2e::{TestCluster, bins, wait};
use k8s_openapi::api::{
    authentication::v1::TokenRequest,
    core::v1::{ConfigMap, Namespace, Pod, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;

#[tokio::test]
async fn api_server_runs_the_pinned_release_and_reports_ready() -> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    let version = client.apiserver_version().await?;
    assert_eq!(version.git_version, bins::kubernetes_version(), "version stamped with -ldflags");
    assert_eq!(version.minor, "37", "k8s-openapi is built for v1_37");
    let readyz = client.request_text(http::Request::get("/readyz?verbose").body(Vec::new())?).await?;
    assert!(readyz.contains("readyz check passed"), "{readyz}");
    let url = cluster.server();
    assert!(url.starts_with("https://127.0.0.1:"), "API server on loopback, got {url}");
    Ok(())
}

#[tokio::test]
async fn controller_manager_gives_namespaces_service_accounts_tokens_and_the_root_ca() -> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    let ns = cluster.namespace("tokens").await?;
    let client = cluster.client()?;
    let token = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request("default", &PostParams::default(), &TokenRequest::default())
        .await?;
    let token = token.status.and_then(|s| s.token).unwrap_or_default();
    assert_eq!(token.split('.').count(), 3, "a signed JWT, got {token:?}");
    let configmaps = Api::<ConfigMap>::namespaced(client, &ns);
    let ca = wait::until("kube-root-ca.crt", Duration::from_secs(30), || {
        let configmaps = configmaps.clone();
        async move { configmaps.get_opt("kube-root-ca.crt").await }
    })
    .await?;
    let pem = ca.data.unwrap_or_default().remove("ca.crt").unwrap_or_default();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    Ok(())
}

#[tokio::test]
async fn impersonated_service_account_gets_exactly_what_rbac_grants() -> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    let ns = cluster.namespace("rbac").await?;
    let admin = cluster.client()?;
    let as_sa = cluster.client_as_service_account(&ns, "default")?;
    let pods = Api::<Pod>::namespaced(as_sa.clone(), &ns);
    let denied = pods.list(&ListParams::default()).await.expect_err("no Role yet");
    assert!(matches!(&denied, kube::Error::Api(s) if s.code == 403), "{denied:?}");

    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    }))?;
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "pod-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": &*ns}]
    }))?;
    Api::<Role>::namespaced(admin.clone(), &ns).create(&PostParams::default(), &role).await?;
    Api::<RoleBinding>::namespaced(admin, &ns).create(&PostParams::default(), &binding).await?;
    wait::until("the Role to take effect", Duration::from_secs(30), || {
        let pods = pods.clone();
        async move { pods.list(&ListParams::default()).await.map(Some) }
    })
    .await?;
    let still_denied = Api::<ConfigMap>::namespaced(as_sa, &ns).list(&ListParams::default()).await;
    assert!(matches!(&still_denied, Err(kube::Error::Api(s)) if s.code == 403), "{still_denied:?}");
    Ok(())
}

#[tokio::test]
async fn deleted_namespaces_are_finalized() -> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    let client = cluster.client()?;
    let namespaces = Api::<Namespace>::all(client.clone());
    let name = {
        let ns = cluster.namespace("finalize").await?;
        Api::<ConfigMap>::namespaced(client, &ns)
            .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "x"}}))?)
            .await?;
        namespaces.delete(&ns, &DeleteParams::default()).await?;
        ns.name().to_owned()
    };
    wait::until_ok(format!("namespace {name} to be gone"), Duration::from_secs(60), || {
        let namespaces = namespaces.clone();
        let name = name.clone();
        async move {
            match namespaces.get_opt(&name).await {
                Ok(None) => Ok(()),
                Ok(Some(ns)) => Err(format!("phase {:?}", ns.status.and_then(|s| s.phase))),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await?;
    Ok(())
}

/// Set by [`a_killed_test_binary_leaves_nothing_behind`] for its child.
const HELPER_ENV: &str = "BREAKWATER_E2E_REAPER_HELPER";

/// Not a test on its own: the child process of [`a_killed_test_binary_leaves_nothing_behind`].
/// Starts a cluster with a running pod, prints what it made, and waits to be killed.
#[tokio::test]
#[ignore = "run by a_killed_test_binary_leaves_nothing_behind"]
async fn reaper_helper_holds_a_cluster_until_killed() -> anyhow::Result<()> {
    if std::env::var_os(HELPER_ENV).is_none() {
        return Ok(());
    }
    let cluster = TestCluster::start().await?;
    let runner = cluster.pod_runner().await?;
    let ns = cluster.namespace("reaper").await?;
    let pods = Api::<Pod>::namespaced(cluster.client()?, &ns);
    let pod = serde_json::from_value(json!({
        "metadata": {"name": "fault"},
        "spec": {"containers": [{"name": "fault", "image": "breakwater/fault-server", "args": ["--listen", "0.0.0.0:8080"]}]},
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let netns = wait::until("the pod to run", Duration::from_secs(60), || {
        let pods = pods.clone();
        let netns = runner.netns(&ns, "fault");
        async move {
            let running = pods.get("fault").await?.status.and_then(|s| s.phase).as_deref() == Some("Running");
            Ok::<_, kube::Error>(netns.filter(|_| running))
        }
    })
    .await?;
    println!("READY {} bwe2e{} {netns}", cluster.dir().display(), cluster.network().index());
    std::future::pending::<()>().await;
    Ok(())
}

#[tokio::test]
async fn a_killed_test_binary_leaves_nothing_behind() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--ignored", "--exact", "reaper_helper_holds_a_cluster_until_killed", "--nocapture"])
        .env(HELPER_ENV, "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("READY ") {
                return anyhow::Ok(rest.to_owned());
            }
        }
        anyhow::bail!("the helper exited before it was ready")
    })
    .await??;
    let parts: Vec<&str> = ready.split_whitespace().collect();
    let [dir, bridge, netns] = parts[..] else { anyhow::bail!("unexpected READY line {ready:?}") };
    let paths = [
        std::path::PathBuf::from(dir),
        format!("/sys/class/net/{bridge}").into(),
        format!("/run/netns/{netns}").into(),
    ];
    assert!(paths.iter().all(|p| p.exists()), "the helper made {paths:?}");

    child.kill().await?; // SIGKILL: no destructor runs, only the reaper can clean up.
    wait::until_ok("the reaper to remove the cluster", Duration::from_secs(60), || {
        let left: Vec<String> =
            paths.iter().filter(|p| p.exists()).map(|p| p.display().to_string()).collect();
        let processes = processes_mentioning(dir);
        async move {
            if left.is_empty() && processes.is_empty() {
                Ok(())
            } else {
                Err(format!("left: {left:?}, processes: {processes:?}"))
            }
        }
    })
    .await?;
    let chains = std::process::Command::new("iptables").args(["-w", "-t", "nat", "-S"]).output()?;
    let chain = format!("BWE2E{}-", bridge.trim_start_matches("bwe2e"));
    assert!(!String::from_utf8_lossy(&chains.stdout).contains(&chain), "iptables chains {chain}* removed");
    Ok(())
}

/// Pids whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}
