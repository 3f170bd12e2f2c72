//! The operator's parts run in this process against the same API server, to show who owns the
//! policy watch: the index does, so the snapshots follow policies whatever the status controller
//! does — while its status writes hang, and after it is gone.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use breakwater_operator::{
    controller,
    index::{self, Index},
    key::ObjKey,
    metrics::Metrics,
    snapshots::Hub,
};

use super::*;

/// A client whose status writes to CommunicationPolicies never get an answer (each counted in
/// `held`); every other request goes to the API server.
fn stalling_status_writes(real: Client, held: Arc<AtomicUsize>) -> Client {
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let (real, held) = (real.clone(), held.clone());
        async move {
            let path = request.uri().path();
            if request.method() == http::Method::PATCH
                && path.contains("/communicationpolicies/")
                && path.ends_with("/status")
            {
                held.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            real.send(request).await
        }
    });
    Client::new(service, "default")
}

/// The generation of `policy` in `pod`'s snapshot in `hub`, once it is `generation`.
async fn snapshot_carries(hub: &Hub, pod: &ObjKey, policy: &str, generation: i64) -> anyhow::Result<()> {
    wait::until_ok(
        format!("generation {generation} of {policy} in {pod}'s snapshot"),
        TIMEOUT,
        || async move {
            let snapshot = hub.current(pod).await.ok_or("no snapshot yet")?;
            let policies = snapshot.policies();
            match policies.get(policy) {
                Some(Some(g)) if *g == generation => Ok(()),
                other => Err(format!("{policy}: {other:?} in {policies:?}")),
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn snapshots_follow_policies_while_status_writes_hang_and_after_the_controller_is_gone()
-> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, _op) = operator().await?;
    let client = cluster.client()?;
    let ns = cluster.namespace("owners").await?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service("payments", &[("http", 80, json!(8080))])?)
        .await?;
    // A caller with a sidecar, as the injector labels it; placed on no node, it stays Pending.
    let caller: Pod = serde_json::from_value(json!({
        "metadata": {"name": "checkout", "labels": {"app": "checkout", "breakwater.dev/injected": "true"}},
        "spec": {
            "nodeSelector": {"breakwater.dev/e2e": "no-such-node"},
            "containers": [{"name": "app", "image": "breakwater/fault-server"}],
        },
    }))?;
    Api::<Pod>::namespaced(client.clone(), &ns).create(&PostParams::default(), &caller).await?;

    // The index, the hub and the status controller, wired as `breakwater_operator::run` wires
    // them, but the controller's status writes hang.
    let metrics = Arc::new(Metrics::new());
    let (triggers, queue) = index::triggers();
    let (index, watches) = Index::start(&client, "breakwater.dev/injected=true", triggers, metrics.clone());
    let hub = Arc::new(Hub::new(metrics.clone()));
    let (concerned_tx, concerned_rx) = tokio::sync::mpsc::channel(1024);
    let hub_task =
        tokio::spawn(hub.clone().run(index.clone(), queue, concerned_tx, Duration::from_millis(50)));
    let held = Arc::new(AtomicUsize::new(0));
    let (_leader_tx, leader) = tokio::sync::watch::channel(true);
    let ctx = Arc::new(controller::Context {
        client: stalling_status_writes(client.clone(), held.clone()),
        index: index.clone(),
        leader,
        recorder: controller::recorder(client.clone(), "e2e-owners"),
        metrics,
        deliveries: None,
        resync: Duration::from_secs(300),
    });
    let inputs =
        controller::Inputs { concerned: concerned_rx, config: kube::runtime::controller::Config::default() };
    let controller = tokio::spawn(controller::run(ctx, inputs, std::future::pending()));

    let api = policies(&client, &ns);
    let timeout = |request: &str| {
        policy("payments", json!({"targetRef": {"name": "payments"}, "timeouts": {"request": request}}))
    };
    api.create(&PostParams::default(), &timeout("1s")?).await?;
    let (pod, name) = (ObjKey::new(&ns, "checkout"), format!("{}/payments", ns.name()));
    snapshot_carries(&hub, &pod, &name, 1).await?;
    wait::until_ok("the controller's status write to hang", TIMEOUT, || async {
        let n = held.load(Ordering::SeqCst);
        if n > 0 { Ok(n) } else { Err("no status write yet".to_owned()) }
    })
    .await?;

    // Status writing is stuck: the policy's next generation still reaches the snapshot.
    let change = |request: &'static str| {
        let api = api.clone();
        async move {
            let patch = json!({"spec": {"timeouts": {"request": request}}});
            api.patch("payments", &PatchParams::default(), &Patch::Merge(patch)).await
        }
    };
    change("2s").await?;
    snapshot_carries(&hub, &pod, &name, 2).await?;
    assert!(!controller.is_finished(), "the controller is alive, waiting on its status write");

    // The controller gone altogether: the index still owns the watch.
    controller.abort();
    let _ = controller.await;
    change("3s").await?;
    snapshot_carries(&hub, &pod, &name, 3).await?;

    for task in watches.into_iter().chain([hub_task]) {
        task.abort();
    }
    Ok(())
}
