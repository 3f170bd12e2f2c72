//! Sidecar injection through the real API server: the chart's MutatingWebhookConfiguration (its
//! caBundle set by the operator), the operator's `/inject`, and injected pods that run — the
//! init container's iptables rules, the native sidecar started before the app, its snapshot
//! from the config API — with calls going through the proxy.

use std::time::Duration;

use breakwater_e2e::PodRunner;

use super::*;

/// A namespace whose pods get the sidecar.
async fn labelled(cluster: &TestCluster, prefix: &str) -> anyhow::Result<breakwater_e2e::TestNamespace> {
    let ns = cluster.namespace(prefix).await?;
    Api::<k8s_openapi::api::core::v1::Namespace>::all(cluster.client()?)
        .patch(
            ns.name(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"breakwater.dev/inject": "enabled"}}})),
        )
        .await?;
    Ok(ns)
}

fn fault_pod(name: &str, extra: Value) -> anyhow::Result<Pod> {
    let mut p = json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"containers": [{
            "name": "app",
            "image": "breakwater/fault-server",
            "args": ["--listen", "0.0.0.0:8080"],
            "env": [{"name": "FAULT_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"name": "http", "containerPort": 8080}],
        }]},
    });
    json_merge(&mut p, extra);
    Ok(serde_json::from_value(p)?)
}

fn json_merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn container_names(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = pod.spec.clone().unwrap_or_default();
    (
        spec.init_containers.unwrap_or_default().into_iter().map(|c| c.name).collect(),
        spec.containers.into_iter().map(|c| c.name).collect(),
    )
}

/// What the API server would store for `pod` in `ns` (a server-side dry run: webhooks run,
/// nothing is created).
async fn admitted(client: &Client, ns: &str, pod: &Pod) -> anyhow::Result<Pod> {
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams { dry_run: true, ..PostParams::default() }, pod)
        .await?)
}

/// Waits until the webhook answers (the operator sets the caBundle once it serves).
async fn injecting(client: &Client, ns: &str) -> anyhow::Result<()> {
    let probe = fault_pod("probe", json!({}))?;
    wait::until_ok("the webhook to inject", TIMEOUT, || async {
        let p = admitted(client, ns, &probe).await.map_err(|e| e.to_string())?;
        let (init, _) = container_names(&p);
        if init.iter().any(|n| n == "breakwater-proxy") { Ok(()) } else { Err(format!("{init:?}")) }
    })
    .await?;
    Ok(())
}

async fn in_netns(runner: &PodRunner, ns: &str, pod: &str, args: &[&str]) -> anyhow::Result<String> {
    let netns =
        runner.netns(ns, pod).ok_or_else(|| anyhow::anyhow!("pod {ns}/{pod} has no network namespace"))?;
    let out = tokio::process::Command::new("ip").args(["netns", "exec", &netns]).args(args).output().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn a_pod_in_a_labelled_namespace_runs_with_the_proxy_and_its_calls_go_through_it() -> anyhow::Result<()>
{
    let _shared = DISRUPTIVE.read().await;
    let (cluster, _op) = operator().await?;
    let runner = cluster.pod_runner().await?;
    let client = cluster.client()?;
    let ns = labelled(cluster, "inject").await?;
    injecting(&client, &ns).await?;

    // The upstream (not injected: opted out by label) and its Service.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &fault_pod("payments", json!({"metadata": {"labels": {"breakwater.dev/inject": "disabled"}}}))?,
    )
    .await?;
    let svc = Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service("payments", &[("http", 80, json!("http"))])?)
        .await?;
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    policies(&client, &ns)
        .create(
            &PostParams::default(),
            &policy("payments", json!({"targetRef": {"name": "payments"}, "sources": [{"namespace": ns.name()}], "timeouts": {"request": "2s"}}))?,
        )
        .await?;

    // The caller: the user's manifest has one container.
    let created = pods.create(&PostParams::default(), &fault_pod("checkout", json!({}))?).await?;
    let (init, containers) = container_names(&created);
    assert_eq!(init, ["breakwater-init", "breakwater-proxy"], "the init container, then the native sidecar");
    assert_eq!(containers, ["app"], "the app's own containers untouched");
    assert_eq!(created.labels().get("breakwater.dev/injected").map(String::as_str), Some("true"));
    let untouched = pods.get("payments").await?;
    assert_eq!(container_names(&untouched).0, Vec::<String>::new(), "opted out by label");

    // It runs: the native sidecar started (and got its snapshot), then the app.
    wait::until_ok("the injected pod to be Ready", TIMEOUT, || async {
        let p = pods.get("checkout").await.map_err(|e| e.to_string())?;
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready { Ok(()) } else { Err(format!("{:?}", p.status.and_then(|s| s.init_container_statuses))) }
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nproxy log:\n{}\ninit log:\n{}",
            runner.logs(&ns, "checkout", "breakwater-proxy").unwrap_or_default(),
            runner.logs(&ns, "checkout", "breakwater-init").unwrap_or_default()
        )
    })?;

    // The app's call to the Service's cluster IP is intercepted (iptables → the proxy, which
    // routes it by its original destination).
    let url = format!("http://{cluster_ip}/");
    let answer = in_netns(
        runner,
        &ns,
        "checkout",
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{x-served-by}",
            &url,
        ],
    )
    .await?;
    assert_eq!(answer, "200 payments", "through the proxy to the upstream");
    let pod = pods.get("checkout").await?;
    let ip = breakwater_e2e::operator::pod_ip(&pod)?;
    let (status, metrics) = breakwater_e2e::operator::http_get(ip, 15020, "/metrics").await?;
    assert_eq!(status, 200, "metrics reachable from the node on the probes port");
    let counted = metrics
        .lines()
        .filter(|l| {
            l.starts_with("breakwater_requests_total") && l.contains(&format!("payments.{}", ns.name()))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert!(counted >= 1.0, "the proxy counted the call:\n{metrics}");
    let (status, _) = breakwater_e2e::operator::http_get(ip, 15020, "/config").await?;
    assert_eq!(status, 404, "/config stays on the pod's loopback");
    Ok(())
}

#[tokio::test]
async fn pods_that_must_not_get_the_proxy_are_left_alone() -> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, _op) = operator().await?;
    let client = cluster.client()?;
    let ns = labelled(cluster, "skip").await?;
    injecting(&client, &ns).await?;
    let plain = cluster.namespace("plain").await?;

    let cases = [
        ("an unlabelled namespace", plain.name().to_owned(), fault_pod("a", json!({}))?),
        (
            "kube-system",
            "kube-system".to_owned(),
            fault_pod("b", json!({"metadata": {"labels": {"breakwater.dev/inject": "enabled"}}}))?,
        ),
        ("a hostNetwork pod", ns.name().to_owned(), fault_pod("c", json!({"spec": {"hostNetwork": true}}))?),
        (
            "an opted-out pod",
            ns.name().to_owned(),
            fault_pod("d", json!({"metadata": {"annotations": {"breakwater.dev/inject": "disabled"}}}))?,
        ),
    ];
    for (what, namespace, pod) in cases {
        let stored = admitted(&client, &namespace, &pod).await?;
        assert_eq!(container_names(&stored).0, Vec::<String>::new(), "{what}: no init containers");
        assert_eq!(container_names(&stored).1, ["app"], "{what}");
    }
    // A real (not dry-run) skip is recorded as an Event on the pod (bound to a node that does
    // not exist, so it never runs).
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    pods.create(
        &PostParams::default(),
        &fault_pod("host", json!({"spec": {"hostNetwork": true, "nodeName": "nowhere"}}))?,
    )
    .await?;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns);
    let note = wait::until_ok("an Event saying why the pod has no sidecar", TIMEOUT, || async {
        let list = events.list(&kube::api::ListParams::default()).await.map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("SidecarNotInjected")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("host")
            })
            .and_then(|e| e.note.clone())
            .ok_or_else(|| format!("{} events", list.items.len()))
    })
    .await?;
    assert!(note.contains("host-network"), "{note}");
    pods.delete("host", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await?;
    // A pod whose port is the proxy's is refused, naming the field.
    let clash = fault_pod(
        "e",
        json!({"spec": {"containers": [{"name": "app", "image": "breakwater/fault-server", "ports": [{"containerPort": 15001}]}]}}),
    )?;
    let err = admitted(&client, &ns, &clash).await.expect_err("refused");
    assert!(err.to_string().contains("spec.containers[0].ports[0].containerPort"), "{err}");
    // An annotation value that cannot be used is a warning, and the pod is injected with the default.
    let odd = fault_pod("f", json!({"metadata": {"annotations": {"breakwater.dev/log-level": "loud"}}}))?;
    let stored = admitted(&client, &ns, &odd).await?;
    assert_eq!(container_names(&stored).0, ["breakwater-init", "breakwater-proxy"]);
    Ok(())
}

#[tokio::test]
async fn without_the_operator_pods_are_created_without_the_proxy_and_injected_again_after()
-> anyhow::Result<()> {
    let (cluster, op) = operator().await?;
    let _exclusive = DISRUPTIVE.write().await;
    let client = cluster.client()?;
    let ns = labelled(cluster, "noop").await?;
    injecting(&client, &ns).await?;
    op.scale(0).await?;
    wait::until_ok("every operator replica to stop", TIMEOUT, || async {
        let n = op.pods().await.map_err(|e| e.to_string())?.len();
        if n == 0 { Ok(()) } else { Err(format!("{n} left")) }
    })
    .await?;
    let started = tokio::time::Instant::now();
    let stored = admitted(&client, &ns, &fault_pod("while-down", json!({}))?).await?;
    assert_eq!(container_names(&stored).0, Vec::<String>::new(), "failurePolicy Ignore: created, uninjected");
    assert!(started.elapsed() < Duration::from_secs(15), "not blocked for long: {:?}", started.elapsed());
    op.scale(2).await?;
    op.ready_pods(2, TAKEOVER * 2).await?;
    injecting(&client, &ns).await?;
    Ok(())
}
