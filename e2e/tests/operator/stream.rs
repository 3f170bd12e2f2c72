//! The config API with real sidecars: `breakwater-sidecar run --control-plane` in pods the
//! harness runs (projected token, the CA from `breakwater-root-ca`, an emptyDir for the last good
//! snapshot), the operator as the chart deploys it.

use std::process::Output;

use breakwater_e2e::{PodRunner, TestNamespace};

use super::*;

/// A caller pod in `ns`: an app container and a cluster-mode sidecar.
fn caller(name: &str, url: &str, server_name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "checkout", "breakwater.dev/injected": "true"}},
        "spec": {
            "containers": [
                {"name": "app", "image": "breakwater/fault-server", "args": ["--listen", "0.0.0.0:8080"]},
                {
                    "name": "sidecar",
                    "image": "breakwater/sidecar",
                    "args": ["run", "--control-plane", url, "--control-plane-server-name", server_name,
                             "--snapshot-dir", "/var/run/breakwater/snapshot", "--log", "breakwater_sidecar=debug,info"],
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    ],
                    "securityContext": {"runAsUser": 2102, "runAsGroup": 2102, "runAsNonRoot": true,
                                        "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [
                        {"name": "token", "mountPath": "/var/run/breakwater/token", "readOnly": true},
                        {"name": "ca", "mountPath": "/var/run/breakwater/ca", "readOnly": true},
                        {"name": "snapshot", "mountPath": "/var/run/breakwater/snapshot"},
                    ],
                },
            ],
            "volumes": [
                {"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                    "audience": "breakwater.dev/config", "expirationSeconds": 3600, "path": "token"}}]}},
                {"name": "ca", "configMap": {"name": "breakwater-root-ca"}},
                {"name": "snapshot", "emptyDir": {}},
            ],
        },
    }))?)
}

/// A Deployment of the fault server behind label `app=payments`, `fail_first` failing first.
fn payments(name: &str, replicas: i32, fail_first: u32) -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "payments", "variant": name}},
            "template": {
                "metadata": {"labels": {"app": "payments", "variant": name}},
                "spec": {"containers": [{
                    "name": "fault",
                    "image": "breakwater/fault-server",
                    "args": ["--listen", "0.0.0.0:8080", "--fail-first", fail_first.to_string()],
                    "env": [{"name": "FAULT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 1},
                }]},
            },
        },
    }))?)
}

/// Runs `args` inside pod `ns/name`'s network namespace.
async fn in_pod(runner: &PodRunner, ns: &str, name: &str, args: &[&str]) -> anyhow::Result<Output> {
    let netns =
        runner.netns(ns, name).ok_or_else(|| anyhow::anyhow!("pod {ns}/{name} has no network namespace"))?;
    Ok(tokio::process::Command::new("ip").args(["netns", "exec", &netns]).args(args).output().await?)
}

/// The sidecar's `/config` (the admin listener stays on the pod's loopback).
async fn sidecar_config(runner: &PodRunner, ns: &str, name: &str) -> Result<Value, String> {
    let out = in_pod(runner, ns, name, &["curl", "-sS", "--max-time", "2", "http://127.0.0.1:15000/config"])
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// `n` calls to `http://payments.<ns>/` through the sidecar (its outbound listener as an
/// explicit proxy); the status and `x-served-by` of each.
async fn calls(runner: &PodRunner, ns: &str, name: &str, n: usize) -> anyhow::Result<Vec<(u16, String)>> {
    let url = format!("http://payments.{ns}/");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let o = in_pod(
            runner,
            ns,
            name,
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-x",
                "http://127.0.0.1:15001",
                "-w",
                "%{http_code} %header{x-served-by}",
                &url,
            ],
        )
        .await?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (code, by) = text.split_once(' ').unwrap_or((&text, ""));
        out.push((code.parse().unwrap_or(0), by.to_owned()));
    }
    Ok(out)
}

/// Service `payments` (of the caller's namespace) in a sidecar's `/config`.
fn payments_in(config: &Value) -> &Value {
    let ns = &config["config"]["snapshot"]["identity"]["namespace"];
    config["config"]["snapshot"]["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "payments" && &s["namespace"] == ns))
        .unwrap_or(&Value::Null)
}

fn attempts(config: &Value) -> Option<u64> {
    payments_in(config)["ports"][0]["policy"]["effective"]["retries"]["attempts"].as_u64()
}

/// Retries for calls to `payments` from callers in `ns` only (a policy without `sources` would
/// govern every injected caller in the cluster, other tests' too).
fn retry_policy(ns: &str, attempts: u32) -> Value {
    json!({
        "targetRef": {"name": "payments"},
        "sources": [{"namespace": ns}],
        "retries": {"attempts": attempts, "retryOn": {"conditions": ["5xx"]}, "budget": {"ratio": 1.0, "minPerSecond": 1000}},
    })
}

/// Everything a stream test needs: payments (one pod always failing, one healthy) and a caller
/// with a sidecar that has applied a snapshot with `policy`.
async fn setup(
    prefix: &str,
    attempts_first: u32,
) -> anyhow::Result<(&'static TestCluster, &'static Operator, TestNamespace)> {
    let (cluster, op) = operator().await?;
    op.leader(TAKEOVER).await?;
    let runner = cluster.pod_runner().await?;
    let ns = cluster.namespace(prefix).await?;
    let client = cluster.client()?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service("payments", &[("http", 80, json!("http"))])?)
        .await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &payments("broken", 1, 1_000_000)?).await?;
    deployments.create(&PostParams::default(), &payments("healthy", 1, 0)?).await?;
    policies(&client, &ns)
        .create(&PostParams::default(), &policy("payments", retry_policy(&ns, attempts_first))?)
        .await?;
    let (url, server_name) = op.config_api().await?;
    Api::<Pod>::namespaced(client, &ns)
        .create(&PostParams::default(), &caller("checkout", &url, &server_name)?)
        .await?;
    wait::until_ok("the sidecar to apply a snapshot with the policy and two endpoints", TIMEOUT, || async {
        let c = sidecar_config(runner, &ns, "checkout").await?;
        let eps = payments_in(&c)["ports"][0]["endpoints"].as_array().map_or(0, Vec::len);
        if attempts(&c) == Some(u64::from(attempts_first)) && eps == 2 {
            Ok(())
        } else {
            Err(format!("{eps} endpoints: {c}"))
        }
    })
    .await?;
    Ok((cluster, op, ns))
}

#[tokio::test]
async fn a_policy_reaches_the_sidecar_is_acknowledged_and_a_change_is_live_within_a_second()
-> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, op, ns) = setup("stream", 1).await?;
    let runner = cluster.pod_runner().await?;
    let client = cluster.client()?;
    let api = policies(&client, &ns);

    // The sidecar acknowledged: the status counts it.
    let status = programmed(cluster, op, &api, "payments").await?;
    assert_eq!((status.sidecars, status.expected_sidecars), (Some(1), Some(1)));
    let config = sidecar_config(runner, &ns, "checkout").await.map_err(anyhow::Error::msg)?;
    assert_eq!(config["snapshot"]["source"], "stream");
    assert_eq!(config["config"]["snapshot"]["identity"]["name"], "checkout");

    // One attempt: a call that lands on the broken pod fails.
    let before = calls(runner, &ns, "checkout", 40).await?;
    assert!(before.iter().any(|(code, _)| *code == 503), "some calls reach the broken pod: {before:?}");

    let patched = tokio::time::Instant::now();
    api.patch("payments", &PatchParams::default(), &Patch::Merge(json!({"spec": retry_policy(&ns, 3)})))
        .await?;
    wait::until_ok("the new attempts in the sidecar", Duration::from_secs(1), || async {
        let c = sidecar_config(runner, &ns, "checkout").await?;
        if attempts(&c) == Some(3) { Ok(()) } else { Err(format!("attempts {:?}: {c}", attempts(&c))) }
    })
    .await?;
    eprintln!("retries.attempts 1 → 3: live in the sidecar {:?} after the patch", patched.elapsed());
    let after = calls(runner, &ns, "checkout", 40).await?;
    assert!(after.iter().all(|(code, _)| *code == 200), "every call retried onto the healthy pod: {after:?}");
    let status = programmed(cluster, op, &api, "payments").await?;
    assert_eq!(status.sidecars, Some(1), "the new generation acknowledged");

    // Scale the healthy Deployment: the new pod is called too.
    Api::<Deployment>::namespaced(client.clone(), &ns)
        .patch("healthy", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 2}})))
        .await?;
    let served = wait::until_ok("calls to reach both healthy pods", TIMEOUT, || async {
        let got = calls(runner, &ns, "checkout", 20).await.map_err(|e| e.to_string())?;
        let mut by: Vec<String> = got.iter().filter(|(c, _)| *c == 200).map(|(_, b)| b.clone()).collect();
        by.sort();
        by.dedup();
        if by.len() == 2 { Ok(by) } else { Err(format!("{got:?}")) }
    })
    .await?;
    assert!(served.iter().all(|b| b.starts_with("healthy-")), "{served:?}");

    // Convergence is measured on the replica the sidecar streams from.
    let mut acks = 0.0;
    for pod in op.pods().await? {
        let text = op.metrics(&pod).await?;
        acks += metric(&text, "breakwater_operator_convergence_seconds_count").unwrap_or(0.0);
    }
    assert!(acks >= 2.0, "acknowledgements observed in breakwater_operator_convergence_seconds: {acks}");
    Ok(())
}

/// Waits for `Ready=True/Programmed`; on a timeout the error carries what the operator saw.
async fn programmed(
    cluster: &TestCluster,
    op: &Operator,
    api: &Api<CommunicationPolicy>,
    name: &str,
) -> anyhow::Result<CommunicationPolicyStatus> {
    let waited = status_until(api, name, TIMEOUT, |s| {
        condition(s, "Ready").is_some_and(|c| c.1 == reasons::PROGRAMMED)
    })
    .await;
    let Err(e) = waited else { return waited };
    let mut seen = format!("{e}\n");
    let runner = cluster.pod_runner().await?;
    for pod in op.pods().await.unwrap_or_default() {
        let log = runner.logs(NAMESPACE, &pod.name_any(), "operator").unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        seen += &format!("--- {} (last lines, newest first):\n{}\n", pod.name_any(), tail.join("\n"));
    }
    let reports = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(cluster.client()?, NAMESPACE)
        .list(&kube::api::ListParams::default().labels("breakwater.dev/acknowledgements=true"))
        .await?;
    for cm in reports {
        seen += &format!("--- report {}: {:?} {:?}\n", cm.name_any(), cm.annotations(), cm.data);
    }
    Err(anyhow::anyhow!(seen))
}

/// A token minted for `pod` (bound to it, for `audience`), as the kubelet would project it.
async fn token(client: &Client, ns: &str, pod: &Pod, audience: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.to_owned()]),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.metadata.uid.clone(),
            }),
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sa =
        pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let answer = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await?;
    answer.status.and_then(|s| s.token).ok_or_else(|| anyhow::anyhow!("no token in the TokenRequest answer"))
}

/// `curl --http2` to the config API as a sidecar would; the HTTP status.
async fn ask(
    url: &str,
    ca: &std::path::Path,
    ns: &str,
    pod: &str,
    token: Option<&str>,
) -> anyhow::Result<u16> {
    let mut args: Vec<String> = [
        "-sS",
        "--http2",
        "--max-time",
        "3",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        "--cacert",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(ca.display().to_string());
    if let Some(t) = token {
        args.extend(["-H".to_owned(), format!("Authorization: Bearer {t}")]);
    }
    args.push(format!("{url}/v1/snapshots/{ns}/{pod}"));
    let out = tokio::process::Command::new("curl").args(&args).output().await?;
    // A 200 streams on until --max-time cuts it (curl then exits 28, having printed the status).
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0))
}

#[tokio::test]
async fn a_pod_reads_only_its_own_snapshot() -> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, op) = operator().await?;
    cluster.pod_runner().await?;
    let ns = cluster.namespace("tokens").await?;
    let client = cluster.client()?;
    let (url, server_name) = op.config_api().await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for name in ["a", "b"] {
        pods.create(&PostParams::default(), &caller(name, &url, &server_name)?).await?;
    }
    let a = wait::until_ok("pod a to be running", TIMEOUT, || async {
        let p = pods.get("a").await.map_err(|e| e.to_string())?;
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            Ok(p)
        } else {
            Err("not yet".into())
        }
    })
    .await?;
    let ca = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
        .get("breakwater-root-ca")
        .await?
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .ok_or_else(|| anyhow::anyhow!("no ca.crt in breakwater-root-ca"))?;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca)?;
    let _ = server_name;

    let ours = token(&client, &ns, &a, "breakwater.dev/config").await?;
    assert_eq!(ask(&url, &ca_file, &ns, "a", Some(&ours)).await?, 200, "a reads its own");
    assert_eq!(ask(&url, &ca_file, &ns, "b", Some(&ours)).await?, 403, "a may not read b's");
    assert_eq!(ask(&url, &ca_file, &ns, "a", None).await?, 401, "no token");
    let apiserver = token(&client, &ns, &a, "https://kubernetes.default.svc.cluster.local").await?;
    assert_eq!(ask(&url, &ca_file, &ns, "a", Some(&apiserver)).await?, 401, "a token for another audience");
    assert_eq!(ask(&url, &ca_file, &ns, "a", Some("not-a-token")).await?, 401, "garbage");
    Ok(())
}

#[tokio::test]
async fn without_the_operator_sidecars_keep_enforcing_and_restart_from_disk() -> anyhow::Result<()> {
    let (cluster, op, ns) = {
        let _shared = DISRUPTIVE.read().await;
        setup("outage", 3).await?
    };
    let _exclusive = DISRUPTIVE.write().await;
    let runner = cluster.pod_runner().await?;
    let client = cluster.client()?;

    op.scale(0).await?;
    wait::until_ok("every operator replica to stop", TIMEOUT, || async {
        let n = op.pods().await.map_err(|e| e.to_string())?.len();
        if n == 0 { Ok(()) } else { Err(format!("{n} left")) }
    })
    .await?;
    let during = calls(runner, &ns, "checkout", 20).await?;
    assert!(during.iter().all(|(c, _)| *c == 200), "the policy still retries: {during:?}");

    // Kill the sidecar: the pod restarts it, and it starts from the snapshot on disk.
    let pod = Api::<Pod>::namespaced(client.clone(), &ns).get("checkout").await?;
    let pid = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "sidecar")?.container_id.clone())
        .and_then(|id| id.strip_prefix("e2e://")?.parse::<u32>().ok())
        .ok_or_else(|| anyhow::anyhow!("the sidecar's pid is not in the pod status"))?;
    breakwater_e2e::process::signal(pid, "KILL");
    let restarted = wait::until_ok("the sidecar to come back from disk", TIMEOUT, || async {
        let c = sidecar_config(runner, &ns, "checkout").await?;
        if c["snapshot"]["source"] == "disk" { Ok(c) } else { Err(format!("{}", c["snapshot"])) }
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nthe sidecar's log:\n{}",
            runner.logs(&ns, "checkout", "sidecar").unwrap_or_default()
        )
    })?;
    assert_eq!(attempts(&restarted), Some(3));
    let ready = in_pod(
        runner,
        &ns,
        "checkout",
        &["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:15000/ready"],
    )
    .await?;
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "200", "ready from disk, with no operator");
    let after = calls(runner, &ns, "checkout", 20).await?;
    assert!(after.iter().all(|(c, _)| *c == 200), "enforced from disk: {after:?}");

    op.scale(2).await?;
    op.ready_pods(2, TAKEOVER * 2).await?;
    wait::until_ok("the sidecar to reconnect", TIMEOUT * 2, || async {
        let c = sidecar_config(runner, &ns, "checkout").await?;
        if c["snapshot"]["source"] == "stream" { Ok(()) } else { Err(format!("{}", c["snapshot"])) }
    })
    .await?;
    let api = policies(&client, &ns);
    let status = programmed(cluster, op, &api, "payments").await?;
    assert_eq!(status.sidecars, Some(1));
    Ok(())
}

#[tokio::test]
async fn a_snapshot_the_sidecar_refuses_is_not_applied_and_the_status_names_the_sidecar() -> anyhow::Result<()>
{
    let _shared = DISRUPTIVE.read().await;
    let (cluster, _op, ns) = setup("refuse", 3).await?;
    let runner = cluster.pod_runner().await?;
    let client = cluster.client()?;
    let before = sidecar_config(runner, &ns, "checkout").await.map_err(anyhow::Error::msg)?;

    // A Service that routes to the caller's port 15000 — the sidecar's own admin listener.
    let looped: Service = serde_json::from_value(json!({
        "metadata": {"name": "looped"},
        "spec": {"selector": {"app": "checkout"}, "ports": [{"name": "admin", "port": 80, "targetPort": 15000}]},
    }))?;
    Api::<Service>::namespaced(client.clone(), &ns).create(&PostParams::default(), &looped).await?;
    policies(&client, &ns)
        .create(&PostParams::default(), &policy("looped", json!({"targetRef": {"name": "looped"}, "sources": [{"namespace": ns.name()}], "bulkhead": {"inbound": {"maxConcurrentRequests": 5}}}))?)
        .await?;
    let api = policies(&client, &ns);
    let status = status_until(&api, "looped", TIMEOUT, |s| {
        condition(s, "Ready").is_some_and(|c| c.1 == reasons::PENDING && c.2.contains("refused it"))
    })
    .await?;
    let (_, _, message) = condition(&status, "Ready").unwrap_or_default();
    assert!(message.contains(&format!("{}/checkout refused it", ns.name())), "names the sidecar: {message}");
    assert!(message.contains("inbound port 15000"), "and what: {message}");

    let after = sidecar_config(runner, &ns, "checkout").await.map_err(anyhow::Error::msg)?;
    assert_eq!(
        after["config"]["snapshot"]["version"], before["config"]["snapshot"]["version"],
        "the old one stays"
    );
    assert!(after["lastReloadError"]["problems"].to_string().contains("inbound port 15000"), "{after}");
    let calls = calls(runner, &ns, "checkout", 10).await?;
    assert!(calls.iter().all(|(c, _)| *c == 200), "still enforcing the old snapshot: {calls:?}");
    Ok(())
}
