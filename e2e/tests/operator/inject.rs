//! Sidecar injection through the real API server: the chart's MutatingWebhookConfiguration (its
//! caBundle set by the operator), the operator's `/inject`, and injected pods that run — the
//! init container's iptables rules, the native sidecar started before the app, its snapshot
//! from the config API — with calls going through the proxy.

use std::time::Duration;

use breakwater_e2e::PodRunner;

use super::*;

/// A namespace whose pods get the sidecar.
pub(super) async fn labelled(
    cluster: &TestCluster,
    prefix: &str,
) -> anyhow::Result<breakwater_e2e::TestNamespace> {
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

pub(super) fn fault_pod(name: &str, extra: Value) -> anyhow::Result<Pod> {
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

pub(super) fn json_merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                json_merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

pub(super) fn container_names(pod: &Pod) -> (Vec<String>, Vec<String>) {
    let spec = pod.spec.clone().unwrap_or_default();
    (
        spec.init_containers.unwrap_or_default().into_iter().map(|c| c.name).collect(),
        spec.containers.into_iter().map(|c| c.name).collect(),
    )
}

/// What the API server would store for `pod` in `ns` (a server-side dry run: webhooks run,
/// nothing is created).
pub(super) async fn admitted(client: &Client, ns: &str, pod: &Pod) -> anyhow::Result<Pod> {
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams { dry_run: true, ..PostParams::default() }, pod)
        .await?)
}

/// Waits until the webhook answers (the operator sets the caBundle once it serves).
pub(super) async fn injecting(client: &Client, ns: &str) -> anyhow::Result<()> {
    let probe = fault_pod("probe", json!({}))?;
    wait::until_ok("the webhook to inject", TIMEOUT, || async {
        let p = admitted(client, ns, &probe).await.map_err(|e| e.to_string())?;
        let (init, _) = container_names(&p);
        if init.iter().any(|n| n == "breakwater-proxy") { Ok(()) } else { Err(format!("{init:?}")) }
    })
    .await?;
    Ok(())
}

pub(super) async fn in_netns(
    runner: &PodRunner,
    ns: &str,
    pod: &str,
    args: &[&str],
) -> anyhow::Result<String> {
    let netns =
        runner.netns(ns, pod).ok_or_else(|| anyhow::anyhow!("pod {ns}/{pod} has no network namespace"))?;
    let out = tokio::process::Command::new("ip").args(["netns", "exec", &netns]).args(args).output().await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The upstream `payments` (not injected: opted out by label) and its Service; its cluster IP.
async fn upstream(client: &Client, ns: &str) -> anyhow::Result<String> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &fault_pod("payments", json!({"metadata": {"labels": {"breakwater.dev/inject": "disabled"}}}))?,
        )
        .await?;
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &service("payments", &[("http", 80, json!("http"))])?)
        .await?;
    // Ready, and listed as a ready endpoint of the Service (the EndpointSlice trails the pod's
    // Ready condition; the operator compiles snapshots from the slices): a call before that is
    // answered 502, which a Job with backoffLimit 0 does not survive.
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    wait::until_ok("payments to be Ready", TIMEOUT, || async {
        let p = pods.get("payments").await.map_err(|e| e.to_string())?;
        let ready = p
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready { Ok(()) } else { Err("not Ready".to_owned()) }
    })
    .await?;
    breakwater_e2e::scenario::ready_endpoints(client, ns, "payments", 1, TIMEOUT).await?;
    Ok(svc.spec.and_then(|s| s.cluster_ip).unwrap_or_default())
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
    let cluster_ip = upstream(&client, &ns).await?;
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
    // The chart's diagnostics (on by default): /config on the probes port too, as a v1 document
    // naming the pod its snapshot was compiled for, from the operator's stream.
    let (status, body) = breakwater_e2e::operator::http_get(ip, 15020, "/config").await?;
    assert_eq!(status, 200, "/config on the probes port with diagnostics: {body}");
    let view = breakwater_crds::admin::read_config(body.as_bytes())?;
    assert_eq!(view.snapshot.source, "stream");
    assert_eq!(view.config.snapshot.identity.name, "checkout");
    assert!(!view.snapshot.version.hash.is_empty(), "the operator's version: {:?}", view.snapshot);
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
                e.reason.as_deref() == Some("SidecarInjectionSkipped")
                    && e.type_.as_deref() == Some("Normal")
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
    op.gone(TIMEOUT).await?;
    let started = tokio::time::Instant::now();
    let stored = admitted(&client, &ns, &fault_pod("while-down", json!({}))?).await?;
    assert_eq!(container_names(&stored).0, Vec::<String>::new(), "failurePolicy Ignore: created, uninjected");
    assert!(started.elapsed() < Duration::from_secs(15), "not blocked for long: {:?}", started.elapsed());
    // A real one too (bound to a node that does not exist, so it never runs): created without
    // the proxy, and reported once a replica is back.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let missed = pods
        .create(&PostParams::default(), &fault_pod("missed", json!({"spec": {"nodeName": "nowhere"}}))?)
        .await?;
    assert_eq!(container_names(&missed).0, Vec::<String>::new(), "created, uninjected");
    op.scale(2).await?;
    op.ready_pods(2, TAKEOVER * 2).await?;
    injecting(&client, &ns).await?;
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns);
    let note = wait::until_ok("an Event on the pod created while no replica answered", TIMEOUT, || async {
        let list = events.list(&kube::api::ListParams::default()).await.map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("SidecarNotInjected")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("missed")
            })
            .and_then(|e| e.note.clone())
            .ok_or_else(|| format!("{} events", list.items.len()))
    })
    .await?;
    assert!(note.contains("no operator replica answered"), "{note}");
    let stored = admitted(&client, &ns, &fault_pod("after", json!({}))?).await?;
    assert_eq!(container_names(&stored).0, ["breakwater-init", "breakwater-proxy"], "injected again");
    pods.delete("missed", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() }).await?;
    Ok(())
}

/// The injected pod spec with what differs between runs replaced by placeholders: the
/// namespace's generated name and the ServiceAccount token volume's random suffix.
fn normalized(pod: &Pod, ns: &str) -> anyhow::Result<Value> {
    let mut text = serde_json::to_string(&pod.spec)?.replace(ns, "[namespace]");
    let volumes: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| v.name.starts_with("kube-api-access-"))
        .map(|v| v.name.clone())
        .collect();
    for name in volumes {
        text = text.replace(&name, "kube-api-access-[random]");
    }
    Ok(serde_json::from_str(&text)?)
}

/// The stored pod's containers and the API credentials each can read: the app keeps the
/// namespace's ServiceAccount token the API server mounted; `breakwater-init` holds none, and
/// `breakwater-proxy` only its token for the config API (audience `breakwater.dev/config`),
/// although the API server's ServiceAccount admission runs again after the webhook.
fn api_credentials_only_where_wanted(pod: &Pod) -> anyhow::Result<()> {
    let spec = pod.spec.clone().unwrap_or_default();
    let volumes = spec.volumes.clone().unwrap_or_default();
    // Every ServiceAccount token a container can read: (container, audience).
    let tokens = |c: &k8s_openapi::api::core::v1::Container| -> Vec<String> {
        c.volume_mounts
            .iter()
            .flatten()
            .filter_map(|m| volumes.iter().find(|v| v.name == m.name))
            .filter_map(|v| v.projected.as_ref())
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.service_account_token.as_ref())
            .map(|t| t.audience.clone().unwrap_or_else(|| "<the API server>".into()))
            .collect()
    };
    let all: Vec<_> = spec.init_containers.iter().flatten().chain(&spec.containers).collect();
    let find = |name: &str| {
        all.iter().find(|c| c.name == name).ok_or_else(|| anyhow::anyhow!("no container {name}"))
    };
    assert_eq!(tokens(find("app")?), ["<the API server>"], "the app keeps its API token");
    assert_eq!(tokens(find("breakwater-init")?), Vec::<String>::new(), "the init container reads no token");
    assert_eq!(
        tokens(find("breakwater-proxy")?),
        ["breakwater.dev/config"],
        "the proxy reads only its config API token"
    );
    for name in ["breakwater-init", "breakwater-proxy"] {
        let mounts = find(name)?.volume_mounts.clone().unwrap_or_default();
        let at = mounts
            .iter()
            .find(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount")
            .ok_or_else(|| anyhow::anyhow!("{name}: nothing mounted at the API token's path"))?;
        assert_eq!(
            at.name, "breakwater-no-api-token",
            "{name}: the empty volume covers the API token's path"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_deployments_pods_carry_exactly_the_reviewed_spec_and_a_second_admission_adds_nothing()
-> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, _op) = operator().await?;
    let client = cluster.client()?;
    let ns = labelled(cluster, "spec").await?;
    injecting(&client, &ns).await?;

    // The user's Deployment, as they would write it; its pod can be placed on no node, so it
    // stays Pending and the spec is the one the API server stored.
    let deployment: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "orders"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "orders"}},
            "template": {
                "metadata": {"labels": {"app": "orders"}},
                "spec": {
                    "nodeSelector": {"breakwater.dev/e2e": "no-such-node"},
                    "containers": [{
                        "name": "app",
                        "image": "breakwater/fault-server",
                        "args": ["--listen", "0.0.0.0:8080"],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                    }],
                },
            },
        },
    }))?;
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod = wait::until_ok("the Deployment's pod", TIMEOUT, || async {
        let list = pods
            .list(&kube::api::ListParams::default().labels("app=orders"))
            .await
            .map_err(|e| e.to_string())?;
        list.items.into_iter().next().ok_or_else(|| "no pod yet".to_owned())
    })
    .await?;
    insta::assert_json_snapshot!("injected_deployment_pod_spec", normalized(&pod, &ns)?);
    api_credentials_only_where_wanted(&pod)?;

    // The stored (injected) pod admitted again, as a re-invocation or a re-created pod would be:
    // exactly the same containers and volumes, one proxy.
    let mut again = pod.clone();
    again.metadata = kube::api::ObjectMeta {
        name: Some("orders-again".into()),
        labels: pod.metadata.labels.clone(),
        annotations: pod.metadata.annotations.clone(),
        ..kube::api::ObjectMeta::default()
    };
    again.status = None;
    let stored = admitted(&client, &ns, &again).await?;
    let (init, containers) = container_names(&stored);
    assert_eq!(init, ["breakwater-init", "breakwater-proxy"], "one set of the sidecar's containers");
    assert_eq!(containers, ["app"]);
    let (first, second) = (pod.spec.clone().unwrap_or_default(), stored.spec.clone().unwrap_or_default());
    assert_eq!(first.init_containers, second.init_containers, "init containers unchanged");
    assert_eq!(first.containers, second.containers, "containers unchanged");
    assert_eq!(first.volumes, second.volumes, "volumes unchanged");
    Ok(())
}

#[tokio::test]
async fn a_jobs_pod_completes_with_the_native_sidecar() -> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, _op) = operator().await?;
    let runner = cluster.pod_runner().await?;
    let client = cluster.client()?;
    let ns = labelled(cluster, "job").await?;
    injecting(&client, &ns).await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    upstream(&client, &ns).await?;
    // The Job calls the upstream pod by its address: what this scenario is about is the native
    // sidecar's lifecycle, and the Service's cluster IP (no policy: passed through to the
    // harness's DNAT rules) was unreachable for seconds in some fresh-clone runs.
    let upstream_ip = breakwater_e2e::operator::pod_ip(&pods.get("payments").await?)?;

    // A Job calling the upstream three times: its container exits, then the kubelet stops the
    // native sidecar, and the Job completes (a regular proxy container would keep it running).
    let job: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({
        "metadata": {"name": "report"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": {"app": "report"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "app",
                        "image": "breakwater/e2e-client",
                        "args": ["get", format!("http://{upstream_ip}:8080/"), "3"],
                    }],
                },
            },
        },
    }))?;
    let jobs = Api::<k8s_openapi::api::batch::v1::Job>::namespaced(client.clone(), &ns);
    jobs.create(&PostParams::default(), &job).await?;
    let pod_of_job = || async {
        let list = pods
            .list(&kube::api::ListParams::default().labels("app=report"))
            .await
            .map_err(|e| e.to_string())?;
        list.items.into_iter().next().ok_or_else(|| "no pod yet".to_owned())
    };
    let done = wait::until_ok("the Job to complete", TIMEOUT, || async {
        let j = jobs.get("report").await.map_err(|e| e.to_string())?;
        let conditions = j.status.and_then(|s| s.conditions).unwrap_or_default();
        if conditions.iter().any(|c| c.type_ == "Failed" && c.status == "True") {
            return Ok(Err(format!("the Job failed: {conditions:?}")));
        }
        if conditions.iter().any(|c| c.type_ == "Complete" && c.status == "True") {
            return Ok(Ok(()));
        }
        let p = pod_of_job().await?;
        Err(format!("{:?}", p.status.map(|s| (s.phase, s.init_container_statuses, s.container_statuses))))
    })
    .await?;
    let pod = pod_of_job().await.map_err(anyhow::Error::msg)?;
    let name = pod.name_any();
    if let Err(e) = done {
        anyhow::bail!(
            "{e}\napp log:\n{}\nproxy log:\n{}",
            runner.logs(&ns, &name, "app").unwrap_or_default(),
            runner.logs(&ns, &name, "breakwater-proxy").unwrap_or_default()
        );
    }
    let (init, _) = container_names(&pod);
    assert_eq!(init, ["breakwater-init", "breakwater-proxy"], "the Job's pod was injected");
    assert_eq!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded"));
    // The Job completes when the app does; the kubelet then stops the proxy and reports it in a
    // status update of its own: wait for that one.
    let stopped = wait::until_ok("the proxy to be stopped after the app", TIMEOUT, || async {
        let pod = pod_of_job().await?;
        let proxy = pod
            .status
            .and_then(|s| s.init_container_statuses)
            .unwrap_or_default()
            .into_iter()
            .find(|s| s.name == "breakwater-proxy")
            .ok_or_else(|| "no status for the proxy".to_owned())?;
        if proxy.state.as_ref().is_some_and(|s| s.terminated.is_some()) {
            Ok(())
        } else {
            Err(format!("{:?}", proxy.state))
        }
    })
    .await;
    assert!(stopped.is_ok(), "the proxy was stopped after the app: {stopped:?}");
    let log = runner.logs(&ns, &name, "app").unwrap_or_default();
    assert_eq!(log.lines().filter(|l| l.starts_with("200 ")).count(), 3, "three calls answered:\n{log}");
    Ok(())
}
