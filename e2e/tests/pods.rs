//! The harness's kubelet and kube-proxy: a Deployment of the workspace's fault server behind a
//! Service, reached from another pod through the Service's cluster IP.

use std::{collections::BTreeSet, net::Ipv4Addr, path::Path, time::Duration};

use breakwater_e2e::{TestCluster, wait};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ContainerStateWaiting, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn deployment_behind_a_service_answers_another_pod_on_the_cluster_ip() -> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    let runner = cluster.pod_runner().await?;
    let ns = cluster.namespace("pods").await?;
    let client = cluster.client()?;

    let node = Api::<Node>::all(client.clone()).get(runner.node_name()).await?;
    let ready = node.status.and_then(|s| s.conditions).unwrap_or_default();
    assert!(ready.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{ready:?}");

    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "fault"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "fault"}},
            "template": {
                "metadata": {"labels": {"app": "fault"}},
                "spec": {"containers": [{
                    "name": "fault",
                    "image": "breakwater/fault-server:dev",
                    "args": ["--listen", "0.0.0.0:8080"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                }]},
            },
        },
    }))?;
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "fault"},
        "spec": {"selector": {"app": "fault"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]},
    }))?;
    Api::<Deployment>::namespaced(client.clone(), &ns).create(&PostParams::default(), &deployment).await?;
    let service =
        Api::<Service>::namespaced(client.clone(), &ns).create(&PostParams::default(), &service).await?;
    let cluster_ip: Ipv4Addr = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default().parse()?;
    let service_range = cluster.network().service_cidr();
    assert_eq!(
        cluster_ip.octets()[..3],
        [198, 19, cluster.network().index()],
        "{cluster_ip} in {service_range}"
    );

    // The controller-manager makes a ReplicaSet and Pods, the scheduler binds them to our Node,
    // the runner starts them and reports them Ready once the probe passes.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    wait::until_ok("2 ready replicas", TIMEOUT, || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("fault").await.map_err(|e| e.to_string())?;
            let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
            if ready == 2 { Ok(()) } else { Err(format!("{:?}", d.status)) }
        }
    })
    .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let fault_pods = pods.list(&ListParams::default().labels("app=fault")).await?.items;
    let names: BTreeSet<String> = fault_pods.iter().map(|p| p.name_any()).collect();
    let mut pod_ips = BTreeSet::new();
    for pod in &fault_pods {
        let spec = pod.spec.as_ref().expect("pods have a spec");
        assert_eq!(spec.node_name.as_deref(), Some(runner.node_name()), "scheduled to the runner's node");
        let ip: Ipv4Addr = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default().parse()?;
        assert_eq!(ip.octets()[..3], [198, 18, cluster.network().index()], "pod IP {ip}");
        pod_ips.insert(ip.to_string());
    }

    // The EndpointSlice controller follows the Service and lists both pods.
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
    wait::until_ok("EndpointSlice with both pods", TIMEOUT, || {
        let slices = slices.clone();
        let pod_ips = pod_ips.clone();
        async move {
            let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=fault")).await;
            let addresses: BTreeSet<String> = list
                .map_err(|e| e.to_string())?
                .items
                .into_iter()
                .flat_map(|s| s.endpoints.into_iter().flatten())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                .flat_map(|e| e.addresses)
                .collect();
            if addresses == pod_ips { Ok(()) } else { Err(format!("{addresses:?}")) }
        }
    })
    .await?;

    // From the host, through the cluster IP (nat OUTPUT): both replicas answer eventually.
    let seen = std::cell::RefCell::new(BTreeSet::new());
    wait::until_ok("both replicas answering on the cluster IP from the host", TIMEOUT, || {
        let answer = get(cluster_ip, 80);
        let (seen, names) = (&seen, &names);
        async move {
            let body = answer.await.map_err(|e| e.to_string())?;
            let mut seen = seen.borrow_mut();
            seen.insert(body.split_whitespace().next().unwrap_or_default().to_owned());
            if names.is_subset(&seen) { Ok(()) } else { Err(format!("seen {seen:?}")) }
        }
    })
    .await?;

    // From another pod, through the cluster IP (nat PREROUTING on the bridge).
    let client_pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "caller"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "client",
                "image": "breakwater/e2e-client:dev",
                "args": ["get", "http://$(FAULT_SERVICE_HOST):$(FAULT_SERVICE_PORT)/", "20"],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &client_pod).await?;
    wait::until_ok("the caller pod to succeed", TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("caller").await.map_err(|e| e.to_string())?;
            match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
                Some("Succeeded") => Ok(()),
                Some("Failed") => Ok(()),
                other => Err(format!("phase {other:?}")),
            }
        }
    })
    .await?;
    let logs = runner.logs(&ns, "caller", "client")?;
    let answered: BTreeSet<&str> = logs
        .lines()
        .filter_map(|line| line.strip_prefix("200 "))
        .filter_map(|body| body.split_whitespace().next())
        .collect();
    assert_eq!(
        logs.lines().filter(|l| l.starts_with("200 ")).count(),
        20,
        "every call answered 200:\n{logs}"
    );
    assert_eq!(
        answered,
        names.iter().map(String::as_str).collect(),
        "both replicas served the caller:\n{logs}"
    );
    let phase = pods.get("caller").await?.status.and_then(|s| s.phase);
    assert_eq!(phase.as_deref(), Some("Succeeded"));

    // Deleting a pod stops its processes and removes its network namespace, then the object.
    let netns = runner.netns(&ns, "caller").expect("the caller ran in a namespace");
    pods.delete("caller", &DeleteParams::default()).await?;
    wait::until_ok("the caller pod to be gone", TIMEOUT, || {
        let pods = pods.clone();
        async move {
            match pods.get_opt("caller").await {
                Ok(None) => Ok(()),
                other => Err(format!("{:?}", other.map(|p| p.map(|p| p.metadata.deletion_timestamp)))),
            }
        }
    })
    .await?;
    // A finished pod's object goes at once (terminal phase); its namespace follows.
    wait::until_ok(format!("network namespace {netns} to be removed"), TIMEOUT, || {
        let gone = !Path::new("/run/netns").join(&netns).exists();
        async move { if gone { Ok(()) } else { Err("still there".to_owned()) } }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn pods_get_their_service_account_volume_and_reach_the_api_server() -> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    let runner = cluster.pod_runner().await?;
    let ns = cluster.namespace("incluster").await?;
    let pods = Api::<Pod>::namespaced(cluster.client()?, &ns);
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "reader"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "files", "image": "breakwater/e2e-client",
                 "args": ["cat", format!("{sa}/namespace"), format!("{sa}/ca.crt")]},
                {"name": "token", "image": "breakwater/e2e-client", "args": ["size", format!("{sa}/token")]},
                {"name": "api", "image": "breakwater/e2e-client",
                 "args": ["connect", "$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"]},
            ],
        },
    }))?;
    let created = pods.create(&PostParams::default(), &pod).await?;
    // The ServiceAccount admission plugin added the projected token volume to every container.
    let mounts: Vec<String> = created
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .map(|m| m.mount_path.clone())
        .collect();
    assert_eq!(mounts, [sa, sa, sa], "admission injected the kube-api-access volume");
    let phase = wait::until_ok("the reader pod to finish", TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("reader").await.map_err(|e| e.to_string())?;
            match pod.status.and_then(|s| s.phase) {
                Some(p) if p == "Succeeded" || p == "Failed" => Ok(p),
                other => Err(format!("phase {other:?}")),
            }
        }
    })
    .await?;
    let files = runner.logs(&ns, "reader", "files")?;
    let token = runner.logs(&ns, "reader", "token")?;
    let api = runner.logs(&ns, "reader", "api")?;
    assert_eq!(phase, "Succeeded", "files:\n{files}\ntoken:\n{token}\napi:\n{api}");
    assert!(files.starts_with(ns.name()), "the namespace file: {files}");
    assert!(files.contains("BEGIN CERTIFICATE"), "ca.crt from kube-root-ca.crt: {files}");
    let size: usize = token.split_whitespace().nth(1).unwrap_or_default().parse()?;
    assert!(size > 100, "a bound token was written: {token}");
    let kubernetes = Api::<Service>::namespaced(cluster.client()?, "default").get("kubernetes").await?;
    let ip = kubernetes.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    assert_eq!(
        api.trim(),
        format!("connected {ip}:443"),
        "the kubernetes Service is wired to the API server"
    );
    // The mount stayed inside the pod: the host has no token at that path.
    assert!(!Path::new(sa).join("token").exists(), "nothing mounted on the host");
    Ok(())
}

#[tokio::test]
async fn a_pod_waits_in_container_creating_until_its_configmap_exists() -> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    let runner = cluster.pod_runner().await?;
    let ns = cluster.namespace("volumes").await?;
    let client = cluster.client()?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "greeter"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "config", "configMap": {"name": "greeting"}}],
            "containers": [{
                "name": "cat", "image": "breakwater/e2e-client", "args": ["cat", "/etc/greeting/text"],
                "volumeMounts": [{"name": "config", "mountPath": "/etc/greeting", "readOnly": true}],
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let waiting = wait::until_ok("ContainerCreating", TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("greeter").await.map_err(|e| e.to_string())?;
            let status = pod.status.and_then(|s| s.container_statuses).and_then(|c| c.into_iter().next());
            status
                .and_then(|c| c.state)
                .and_then(|s| s.waiting)
                .ok_or_else(|| "no container status yet".to_owned())
        }
    })
    .await?;
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    assert!(waiting.message.unwrap_or_default().contains("greeting"), "the message names the ConfigMap");

    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "greeting"}, "data": {"text": "hello from a volume"}}),
    )?;
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client, &ns)
        .create(&PostParams::default(), &cm)
        .await?;
    let phase = wait::until_ok("the pod to finish", TIMEOUT, || {
        let pods = pods.clone();
        async move {
            let phase = pods.get("greeter").await.map_err(|e| e.to_string())?.status.and_then(|s| s.phase);
            match phase.as_deref() {
                Some("Succeeded" | "Failed") => Ok(phase),
                other => Err(format!("phase {other:?}")),
            }
        }
    })
    .await?;
    let logs = runner.logs(&ns, "greeter", "cat")?;
    assert_eq!(phase.as_deref(), Some("Succeeded"), "{logs}");
    assert_eq!(logs, "hello from a volume");
    Ok(())
}

/// The waiting state of the first container of pod `name`, once it has a reason.
async fn waiting(pods: &Api<Pod>, name: &str) -> anyhow::Result<ContainerStateWaiting> {
    let what = format!("a waiting reason for {name}");
    Ok(wait::until_ok(&what, TIMEOUT, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let status = pod.status.and_then(|s| s.container_statuses).and_then(|c| c.into_iter().next());
        let waiting = status.and_then(|c| c.state).and_then(|s| s.waiting);
        waiting.filter(|w| w.reason.is_some()).ok_or_else(|| "no waiting reason yet".to_owned())
    })
    .await?)
}

#[tokio::test]
async fn containers_run_their_image_and_images_that_cannot_run_are_reported_as_a_kubelet_would()
-> anyhow::Result<()> {
    let cluster = TestCluster::shared().await?;
    let runner = cluster.pod_runner().await?;
    let ns = cluster.namespace("images").await?;
    let pods = Api::<Pod>::namespaced(cluster.client()?, &ns);
    let scratch = tempfile::tempdir()?;
    std::fs::write(scratch.path().join("corrupt.oci.tar"), b"this is not a tar archive")?;
    runner.images().add("breakwater-test/corrupt", scratch.path().join("corrupt.oci.tar"));
    runner.images().add("breakwater-test/missing", scratch.path().join("missing.oci.tar"));

    let cases = [
        ("nginx", json!({"image": "nginx:1.27"}), "ErrImagePull", "not in the e2e image table"),
        ("missing", json!({"image": "breakwater-test/missing:1"}), "ErrImagePull", "run `make images`"),
        (
            "corrupt",
            json!({"image": "breakwater-test/corrupt:1"}),
            "ErrImagePull",
            "not a readable OCI archive",
        ),
        // The images have no shell: a command that needs one cannot start.
        (
            "shell",
            json!({"image": "breakwater/fault-server", "command": ["/bin/sh", "-c", "true"]}),
            "CreateContainerError",
            "stat /bin/sh: no such file or directory",
        ),
        (
            "bare-name",
            json!({"image": "breakwater/fault-server", "command": ["curl"]}),
            "CreateContainerError",
            "\"curl\": executable file not found in $PATH",
        ),
    ];
    for (name, container, _, _) in &cases {
        let mut container = container.clone();
        container["name"] = json!("c");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"containers": [container], "restartPolicy": "Never"},
        }))?;
        pods.create(&PostParams::default(), &pod).await?;
    }
    // And one that runs: the fault server's image, as its image says (user, entrypoint).
    let good: Pod = serde_json::from_value(json!({
        "metadata": {"name": "good"},
        "spec": {"containers": [{"name": "fault", "image": "ghcr.io/example/breakwater/fault-server:0.1.0",
            "args": ["--listen", "0.0.0.0:8080"]}]},
    }))?;
    pods.create(&PostParams::default(), &good).await?;

    for (name, _, reason, message) in &cases {
        let state = waiting(&pods, name).await?;
        assert_eq!(state.reason.as_deref(), Some(*reason), "{name}: {state:?}");
        let text = state.message.unwrap_or_default();
        assert!(text.contains(message), "{name}: {text:?} should say {message:?}");
    }

    let running = wait::until_ok("the fault server running", TIMEOUT, || async {
        let pod = pods.get("good").await.map_err(|e| e.to_string())?;
        let status = pod.status.and_then(|s| s.container_statuses).and_then(|c| c.into_iter().next());
        status
            .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
            .ok_or("not running yet".to_owned())
    })
    .await?;
    let digest = std::fs::read_to_string(breakwater_e2e::oci::images_dir().join("fault-server.digest"))?;
    assert_eq!(running.image_id, format!("ghcr.io/example/breakwater/fault-server@{}", digest.trim()));
    let netns = runner.netns(&ns, "good").ok_or_else(|| anyhow::anyhow!("no netns recorded"))?;
    let pid = wait::until_ok("the container's process", TIMEOUT, || async {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &netns])
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("breakwater-fault"))
            })
            .ok_or_else(|| "no breakwater-fault process yet".to_owned())
    })
    .await?;
    // Its root is the image's: the binary at the image's path, no shell, and the image's user.
    let root = Path::new("/proc").join(pid.to_string()).join("root");
    assert!(root.join("usr/local/bin/breakwater-fault").is_file());
    assert!(!root.join("bin/sh").exists() && !root.join("usr/bin").exists(), "only the image's files");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default().to_owned();
    assert_eq!(uid.split_whitespace().skip(1).collect::<Vec<_>>(), ["65532"; 4], "the image's user: {uid}");
    let caps = status.lines().find(|l| l.starts_with("CapEff:")).unwrap_or_default().to_owned();
    assert!(caps.ends_with("0000000000000000"), "a non-root container has no capabilities: {caps}");

    // Deleted, nothing is left on the host: no mount, no copy of the image.
    let pod_dirs: Vec<_> = cluster_pod_dirs(runner, &ns, ["good", "shell", "bare-name"]);
    pods.delete_collection(&DeleteParams::default(), &ListParams::default()).await?;
    wait::until_ok("every pod gone", TIMEOUT, || async {
        let left = pods.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        if left.items.is_empty() { Ok(()) } else { Err(format!("{} pods left", left.items.len())) }
    })
    .await?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    for dir in &pod_dirs {
        assert!(!mounts.contains(&dir.display().to_string()), "a mount under {} is left", dir.display());
        assert!(!dir.join("rootfs").exists(), "{} still holds a root filesystem", dir.display());
    }
    Ok(())
}

/// The directories the runner keeps for pods `names` of `ns` (logs, volumes, root filesystems).
fn cluster_pod_dirs<const N: usize>(
    runner: &breakwater_e2e::PodRunner,
    ns: &str,
    names: [&str; N],
) -> Vec<std::path::PathBuf> {
    names.iter().map(|name| runner.pod_dir(ns, name)).collect()
}

/// GET / on `ip:port` from the host; the body.
async fn get(ip: Ipv4Addr, port: u16) -> std::io::Result<String> {
    let connect = tokio::net::TcpStream::connect((ip, port));
    let mut stream = tokio::time::timeout(Duration::from_secs(2), connect).await??;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: fault\r\nConnection: close\r\n\r\n").await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("unexpected answer: {head}")));
    }
    Ok(body.to_owned())
}
