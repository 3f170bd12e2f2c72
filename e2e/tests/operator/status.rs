//! Policy status, conflicts, the snapshots the operator compiles, failover and restarts.

use super::*;

#[tokio::test]
async fn every_example_is_accepted_with_its_effective_policy_within_two_seconds() -> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, op) = operator().await?;
    op.leader(TAKEOVER).await?;
    let ns = cluster.namespace("examples").await?;
    let client = cluster.client()?;
    let api = policies(&client, &ns);
    let dir = breakwater_e2e::helm::chart_dir().join("../../examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.retain(|p| p.extension().is_some_and(|x| x == "yaml"));
    files.sort();
    assert!(files.len() >= 4, "the examples are found in {}", dir.display());
    for file in &files {
        for doc in load::documents(&std::fs::read_to_string(file)?)? {
            let mut p: CommunicationPolicy = serde_json::from_value(doc.value.clone())?;
            p.metadata.namespace = Some(ns.to_string());
            let name = p.name_any();
            let started = tokio::time::Instant::now();
            api.create(&PostParams::default(), &p).await?;
            let status = status_until(&api, &name, Duration::from_secs(2), |s| {
                condition(s, "Accepted").is_some_and(|c| c.0 == "True") && s.effective.is_some()
            })
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            eprintln!("{}: Accepted in {:?}", file.display(), started.elapsed());
            let (_, reason, _) = condition(&status, "Accepted").unwrap_or_default();
            assert_eq!(reason, reasons::VALID);
            // No Service exists in this namespace: every example is waiting for its targets.
            let ready = condition(&status, "Ready").unwrap_or_default();
            assert_eq!(
                (ready.0.as_str(), ready.1.as_str()),
                ("False", reasons::NO_MATCHING_TARGETS),
                "{}",
                file.display()
            );
            let expected = breakwater_crds::EffectivePolicy::resolve(&p.spec)?;
            assert_eq!(
                status.effective,
                Some(expected),
                "{}: effective is the policy with defaults",
                file.display()
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_policy_for_a_missing_service_is_resolved_when_it_appears() -> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, _op) = operator().await?;
    let ns = cluster.namespace("resolve").await?;
    let client = cluster.client()?;
    let api = policies(&client, &ns);
    api.create(
        &PostParams::default(),
        &policy("payments", json!({"targetRef": {"name": "payments"}, "timeouts": {"request": "2s"}}))?,
    )
    .await?;
    let status = status_until(&api, "payments", TIMEOUT, |s| condition(s, "Ready").is_some()).await?;
    let (ready, reason, message) = condition(&status, "Ready").unwrap_or_default();
    assert_eq!((ready.as_str(), reason.as_str()), ("False", reasons::NO_MATCHING_TARGETS));
    assert!(message.contains("no Service named payments"), "{message}");

    Api::<Service>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &service("payments", &[("http", 80, json!(8080)), ("admin", 9090, json!(9000))])?,
        )
        .await?;
    let status = status_until(&api, "payments", TIMEOUT, |s| {
        condition(s, "Ready").is_some_and(|c| c.1 == reasons::RESOLVED)
    })
    .await?;
    assert_eq!(condition(&status, "Ready").map(|c| c.0), Some("True".into()));
    assert_eq!(status.targets.len(), 1);
    assert_eq!(
        (status.targets[0].name.as_str(), status.targets[0].ports.as_slice()),
        ("payments", &[80, 9090][..])
    );

    // Events record the transitions, as `kubectl describe` shows them.
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), &ns);
    let reasons_seen = wait::until_ok("the policy's Events", TIMEOUT, || async {
        let list = events.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let seen: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("payments"))
            .filter_map(|e| e.reason.clone())
            .collect();
        if seen.iter().any(|r| r == reasons::RESOLVED) { Ok(seen) } else { Err(format!("{seen:?}")) }
    })
    .await?;
    for r in [reasons::VALID, reasons::NO_MATCHING_TARGETS, reasons::RESOLVED] {
        assert!(reasons_seen.iter().any(|s| s == r), "an Event for {r}: {reasons_seen:?}");
    }

    // What `kubectl get cpol` prints: the API server's Table, from the CRD's printer columns.
    let request = http::Request::get(format!(
        "/apis/breakwater.dev/v1alpha1/namespaces/{}/communicationpolicies",
        ns.name()
    ))
    .header("Accept", "application/json;as=Table;g=meta.k8s.io;v=v1")
    .body(Vec::new())?;
    let table: Value = client.request(request).await?;
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Name", "Target", "Mode", "Accepted", "Ready", "Age"]);
    let cells = &table["rows"][0]["cells"];
    assert_eq!(cells[1], "payments");
    assert_eq!(cells[3], "True", "Accepted column: {table}");
    assert_eq!(cells[4], reasons::RESOLVED, "Ready column: {table}");
    Ok(())
}

#[tokio::test]
async fn the_loser_of_a_conflict_names_the_winner_and_takes_over_when_it_goes() -> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, _op) = operator().await?;
    let ns = cluster.namespace("conflict").await?;
    let client = cluster.client()?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service("payments", &[("http", 80, json!(8080))])?)
        .await?;
    let api = policies(&client, &ns);
    api.create(
        &PostParams::default(),
        &policy("first", json!({"targetRef": {"name": "payments"}, "timeouts": {"request": "2s"}}))?,
    )
    .await?;
    status_until(&api, "first", TIMEOUT, |s| condition(s, "Conflicted").is_some()).await?;
    api.create(
        &PostParams::default(),
        &policy("second", json!({"targetRef": {"name": "payments"}, "timeouts": {"request": "5s"}}))?,
    )
    .await?;

    let loser =
        status_until(&api, "second", TIMEOUT, |s| condition(s, "Conflicted").is_some_and(|c| c.0 == "True"))
            .await?;
    let (_, reason, message) = condition(&loser, "Conflicted").unwrap_or_default();
    assert_eq!(reason, reasons::OVERRIDDEN);
    let winner = format!("{}/first", ns.name());
    assert!(message.contains(&winner), "the loser names the winner: {message}");
    // Timestamps have a resolution of one second: created within the same one, the name decides.
    let created = |p: &CommunicationPolicy| p.metadata.creation_timestamp.clone();
    let same_second = created(&api.get("first").await?) == created(&api.get("second").await?);
    let why = if same_second { "comes first by namespace/name" } else { "it is older" };
    assert!(message.contains(why), "and why ({why}): {message}");
    assert_eq!(loser.targets[0].governed_by.as_deref(), Some(winner.as_str()));
    let first = api.get("first").await?.status.unwrap_or_default();
    assert_eq!(condition(&first, "Conflicted").map(|c| c.1), Some(reasons::NO_CONFLICT.into()));

    api.delete("first", &DeleteParams::default()).await?;
    let taken =
        status_until(&api, "second", TIMEOUT, |s| condition(s, "Conflicted").is_some_and(|c| c.0 == "False"))
            .await?;
    assert_eq!(taken.targets[0].governed_by, None);
    assert_eq!(taken.targets[0].ports, [80]);
    Ok(())
}

#[tokio::test]
async fn scaling_a_deployment_changes_the_snapshot_of_a_caller() -> anyhow::Result<()> {
    let _shared = DISRUPTIVE.read().await;
    let (cluster, op) = operator().await?;
    let runner = cluster.pod_runner().await?;
    let ns = cluster.namespace("scale").await?;
    let client = cluster.client()?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service("payments", &[("web", 80, json!("http"))])?)
        .await?;
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "payments"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "payments"}},
            "template": {
                "metadata": {"labels": {"app": "payments"}},
                "spec": {"containers": [{
                    "name": "fault",
                    "image": "breakwater/fault-server",
                    "args": ["--listen", "0.0.0.0:8080"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                }]},
            },
        },
    }))?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    deployments.create(&PostParams::default(), &deployment).await?;
    // The caller: a pod with a sidecar (as the injector labels it).
    let caller: Pod = serde_json::from_value(json!({
        "metadata": {"name": "checkout", "labels": {"app": "checkout", "breakwater.dev/injected": "true"}},
        "spec": {"containers": [{"name": "app", "image": "breakwater/fault-server", "args": ["--listen", "0.0.0.0:8080"]}]},
    }))?;
    Api::<Pod>::namespaced(client.clone(), &ns).create(&PostParams::default(), &caller).await?;
    policies(&client, &ns)
        .create(
            &PostParams::default(),
            &policy("payments", json!({"targetRef": {"name": "payments"}, "retries": {"attempts": 2}}))?,
        )
        .await?;

    let replica = op.ready_pods(2, TIMEOUT).await?.remove(0);
    let endpoints = |n: usize| {
        let (op, runner, replica, ns) = (op, runner, &replica, ns.name().to_owned());
        async move {
            wait::until_ok(format!("{n} endpoints in the caller's snapshot"), TIMEOUT, || {
                let ns = ns.clone();
                async move {
                    let snapshot =
                        op.snapshot(runner, replica, &ns, "checkout").await.map_err(|e| e.to_string())?;
                    let snapshot = snapshot.ok_or("no snapshot yet")?;
                    let port = &snapshot["services"][0]["ports"][0];
                    let eps = port["endpoints"].as_array().map_or(0, Vec::len);
                    if eps == n { Ok(snapshot) } else { Err(format!("{eps} endpoints: {port}")) }
                }
            })
            .await
        }
    };
    let one = endpoints(1).await?;
    let service = &one["services"][0];
    assert_eq!(service["name"], "payments");
    assert_eq!(service["ports"][0]["policy"]["name"], format!("{}/payments", ns.name()));
    assert_eq!(
        service["ports"][0]["endpoints"][0]["address"].as_str().map(|a| a.ends_with(":8080")),
        Some(true),
        "{service}"
    );
    assert_eq!(one["identity"]["name"], "checkout");

    let started = tokio::time::Instant::now();
    deployments
        .patch("payments", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 3}})))
        .await?;
    let three = endpoints(3).await?;
    eprintln!("scale 1 → 3: in the caller's snapshot {:?} after the patch", started.elapsed());
    assert_ne!(one["version"]["hash"], three["version"]["hash"]);
    assert!(three["version"]["counter"].as_u64() > one["version"]["counter"].as_u64(), "the counter grows");
    let pods = Api::<Pod>::namespaced(client, &ns)
        .list(&kube::api::ListParams::default().labels("app=payments"))
        .await?;
    let mut ips: Vec<String> = pods
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .map(|ip| format!("{ip}:8080"))
        .collect();
    ips.sort();
    let mut listed: Vec<String> = three["services"][0]["ports"][0]["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["address"].as_str().map(str::to_owned))
        .collect();
    listed.sort();
    assert_eq!(listed, ips, "exactly the ready pods");

    deployments
        .patch("payments", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 1}})))
        .await?;
    endpoints(1).await?;
    Ok(())
}

/// The status writer's field manager owns the status, and only it.
fn status_managers(p: &CommunicationPolicy) -> Vec<String> {
    p.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.subresource.as_deref() == Some("status"))
        .filter_map(|m| m.manager.clone())
        .collect()
}

#[tokio::test]
async fn exactly_one_replica_writes_status_and_the_other_takes_over() -> anyhow::Result<()> {
    let _exclusive = DISRUPTIVE.write().await;
    let (cluster, op) = operator().await?;
    let ns = cluster.namespace("failover").await?;
    let client = cluster.client()?;
    let api = policies(&client, &ns);
    let spec = json!({"targetRef": {"name": "payments"}, "timeouts": {"request": "2s"}});
    let leader = op.leader(TAKEOVER).await?;
    api.create(&PostParams::default(), &policy("before", spec.clone())?).await?;
    status_until(&api, "before", TIMEOUT, |s| condition(s, "Accepted").is_some()).await?;
    assert_eq!(status_managers(&api.get("before").await?), ["breakwater-operator"]);

    let writes = |text: &str| metric(text, "breakwater_operator_status_writes_total").unwrap_or(0.0);
    for pod in op.pods().await? {
        let text = op.metrics(&pod).await?;
        let is_leader = pod.name_any() == leader.name_any();
        assert_eq!(metric(&text, "breakwater_operator_leader"), Some(if is_leader { 1.0 } else { 0.0 }));
        if is_leader {
            assert!(writes(&text) >= 1.0, "the leader wrote the status");
        } else {
            assert_eq!(writes(&text), 0.0, "{} never writes status", pod.name_any());
        }
    }

    // Kill the leader (SIGKILL: it cannot release the lease, which must expire), then delete
    // its pod so it does not come back under the same identity.
    let pid = leader
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first()?.container_id.clone())
        .and_then(|id| id.strip_prefix("e2e://")?.parse::<u32>().ok())
        .ok_or_else(|| anyhow::anyhow!("the leader's pid is not in its status"))?;
    breakwater_e2e::process::signal(pid, "KILL");
    let killed = tokio::time::Instant::now();
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    pods.delete(&leader.name_any(), &DeleteParams { grace_period_seconds: Some(0), ..Default::default() })
        .await?;
    api.create(&PostParams::default(), &policy("after", spec)?).await?;
    status_until(&api, "after", TAKEOVER, |s| condition(s, "Accepted").is_some()).await?;
    let took = killed.elapsed();
    eprintln!("status written {took:?} after the leader was killed");
    assert!(
        took >= Duration::from_secs(1),
        "nobody took over before the killed leader's lease expired ({took:?})"
    );
    let new_leader = op.leader(TAKEOVER).await?;
    assert_ne!(new_leader.name_any(), leader.name_any());
    assert!(writes(&op.metrics(&new_leader).await?) >= 1.0, "the new leader writes");
    assert_eq!(
        status_managers(&api.get("after").await?),
        ["breakwater-operator"],
        "one field manager, whoever leads"
    );
    op.ready_pods(2, TIMEOUT).await?;
    Ok(())
}

#[tokio::test]
async fn a_restarted_operator_leaves_every_status_as_it_was() -> anyhow::Result<()> {
    let _exclusive = DISRUPTIVE.write().await;
    let (cluster, op) = operator().await?;
    let ns = cluster.namespace("restart").await?;
    let client = cluster.client()?;
    Api::<Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &service("payments", &[("http", 80, json!(8080))])?)
        .await?;
    let api = policies(&client, &ns);
    for name in ["one", "two"] {
        api.create(
            &PostParams::default(),
            &policy(name, json!({"targetRef": {"name": "payments"}, "timeouts": {"request": "2s"}}))?,
        )
        .await?;
    }
    for name in ["one", "two"] {
        status_until(&api, name, TIMEOUT, |s| {
            condition(s, "Ready").is_some_and(|c| c.1 == reasons::RESOLVED)
        })
        .await?;
    }
    // Let any write in flight land, then remember exactly what is stored — here, and in every
    // namespace (earlier tests' policies may still see their pods and Services go, which the
    // new leader then rightly writes).
    op.leader(TAKEOVER).await?;
    let before: Vec<CommunicationPolicy> = vec![api.get("one").await?, api.get("two").await?];
    let everywhere = Api::<CommunicationPolicy>::all(client.clone());
    let versions = |list: Vec<CommunicationPolicy>| -> std::collections::HashMap<String, Option<String>> {
        list.into_iter()
            .map(|p| {
                (
                    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()),
                    p.metadata.resource_version,
                )
            })
            .collect()
    };
    let all_before = versions(everywhere.list(&Default::default()).await?.items);

    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let old: Vec<String> = op.pods().await?.iter().map(|p| p.name_any()).collect();
    let stopping = tokio::time::Instant::now();
    for name in &old {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    let fresh = wait::until_ok("two new operator replicas", TAKEOVER * 2, || async {
        let now = op.ready_pods(2, Duration::from_secs(1)).await.map_err(|e| e.to_string())?;
        if now.iter().all(|p| !old.contains(&p.name_any())) {
            Ok(now)
        } else {
            Err("old replicas still there".into())
        }
    })
    .await?;
    let leader = op.leader(TAKEOVER).await?;
    assert!(fresh.iter().any(|p| p.name_any() == leader.name_any()));
    // SIGTERM made the old leader release the lease and exit cleanly.
    eprintln!("lease taken by a new replica {:?} after the old ones got SIGTERM", stopping.elapsed());
    let runner = cluster.pod_runner().await?;
    let logs: Vec<String> = old.iter().filter_map(|p| runner.logs(NAMESPACE, p, "operator").ok()).collect();
    assert!(
        logs.iter().any(|l| l.contains("lease released")),
        "the old leader released its lease:\n{logs:?}"
    );
    assert!(logs.iter().all(|l| l.contains("\"stopped\"")), "both old replicas stopped cleanly");
    // The new leader reconciled every policy and found nothing to write.
    wait::until_ok("the new leader to reconcile", TIMEOUT, || async {
        let text = op.metrics(&leader).await.map_err(|e| e.to_string())?;
        let unchanged = metric(&text, "breakwater_operator_status_unchanged_total").unwrap_or(0.0);
        if unchanged >= 2.0 { Ok(()) } else { Err(format!("{unchanged} unchanged")) }
    })
    .await?;
    for old in before {
        let now = api.get(&old.name_any()).await?;
        assert_eq!(now.status, old.status, "{}: same conditions, same lastTransitionTime", old.name_any());
        assert_eq!(
            now.metadata.resource_version,
            old.metadata.resource_version,
            "{}: not written at all",
            old.name_any()
        );
    }
    // Every status write the new leader made changed a stored object: a restart writes nothing
    // that was already there. (Metrics first: a write they count is in the list read after.)
    let text = op.metrics(&leader).await?;
    let writes = metric(&text, "breakwater_operator_status_writes_total").unwrap_or(0.0);
    let all_after = versions(everywhere.list(&Default::default()).await?.items);
    // Changed: a new resourceVersion, or gone — an earlier test's namespace, deleted in the
    // background, takes its policies with it, possibly just after the leader wrote their status.
    let mut changed: Vec<&String> =
        all_after.iter().filter(|(k, v)| all_before.get(*k) != Some(v)).map(|(k, _)| k).collect();
    changed.extend(all_before.keys().filter(|k| !all_after.contains_key(*k)));
    assert!(
        writes <= changed.len() as f64,
        "a restart writes nothing that was already there: {writes} writes, changed only {changed:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_policy_the_api_server_accepts_but_the_operator_cannot_use_says_why() -> anyhow::Result<()> {
    let _exclusive = DISRUPTIVE.write().await;
    let (cluster, op) = operator().await?;
    let ns = cluster.namespace("skew").await?;
    let client = cluster.client()?;
    // An older or hand-edited CRD (crds.install=false) that checks less than this operator: let
    // spec.retries.attempts be anything.
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let name = "communicationpolicies.breakwater.dev";
    let path =
        "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/retries/properties/attempts";
    let crd_value = serde_json::to_value(crds.get(name).await?)?;
    let original = crd_value.pointer(path).cloned().ok_or_else(|| anyhow::anyhow!("no {path} in the CRD"))?;
    let restore = Restore { config: cluster.config().clone(), path, original };
    let loose = json!([{"op": "replace", "path": path, "value": {"x-kubernetes-int-or-string": true}}]);
    crds.patch(name, &PatchParams::default(), &Patch::Json::<()>(serde_json::from_value(loose)?)).await?;

    let resource = ApiResource::erase::<CommunicationPolicy>(&());
    let raw = Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &resource);
    let create = |name: &'static str, attempts: Value| {
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "breakwater.dev/v1alpha1", "kind": "CommunicationPolicy",
            "metadata": {"name": name},
            "spec": {"targetRef": {"name": "payments"}, "retries": {"attempts": attempts}},
        }))
        .expect("a valid object");
        let raw = raw.clone();
        async move {
            // The API server may need a moment to serve the loosened schema.
            wait::until_ok(format!("the API server to accept {name}"), TIMEOUT, || {
                let (raw, object) = (raw.clone(), object.clone());
                async move {
                    raw.create(&PostParams::default(), &object).await.map(drop).map_err(|e| e.to_string())
                }
            })
            .await
        }
    };
    create("fifty-attempts", json!(50)).await?;
    create("three-attempts", json!("three")).await?;
    let leader = op.leader(TAKEOVER).await?;
    wait::until_ok("the unreadable policy to be counted", TIMEOUT, || async {
        let text = op.metrics(&leader).await.map_err(|e| e.to_string())?;
        let n = metric(&text, "breakwater_operator_malformed_objects_total{kind=\"CommunicationPolicy\"}")
            .unwrap_or(0.0);
        if n >= 1.0 { Ok(()) } else { Err(format!("{n} counted")) }
    })
    .await?;

    let api = policies(&client, &ns);
    let invalid =
        status_until(&api, "fifty-attempts", TIMEOUT, |s| condition(s, "Accepted").is_some()).await?;
    let (accepted, reason, message) = condition(&invalid, "Accepted").unwrap_or_default();
    assert_eq!((accepted.as_str(), reason.as_str()), ("False", reasons::INVALID));
    assert!(message.contains("spec.retries.attempts: must be between 1 and 10, got 50"), "{message}");
    assert_eq!(condition(&invalid, "Ready").map(|c| c.1), Some(reasons::NOT_ACCEPTED.into()));

    // This one cannot even be read as a CommunicationPolicy: its status is read raw.
    let unreadable = wait::until_ok("the unreadable policy's status", TIMEOUT, || async {
        let o = raw.get("three-attempts").await.map_err(|e| e.to_string())?;
        let status = o.data.get("status").cloned().ok_or("no status yet")?;
        serde_json::from_value::<CommunicationPolicyStatus>(status).map_err(|e| e.to_string())
    })
    .await?;
    let (accepted, reason, message) = condition(&unreadable, "Accepted").unwrap_or_default();
    assert_eq!((accepted.as_str(), reason.as_str()), ("False", reasons::INVALID));
    assert!(message.contains("cannot be read: spec.retries.attempts"), "{message}");

    // The loop carried on: a good policy next to them is accepted.
    api.create(
        &PostParams::default(),
        &policy("fine", json!({"targetRef": {"name": "payments"}, "timeouts": {"request": "1s"}}))?,
    )
    .await?;
    status_until(&api, "fine", TIMEOUT, |s| condition(s, "Accepted").is_some_and(|c| c.0 == "True")).await?;
    for name in ["fifty-attempts", "three-attempts"] {
        raw.delete(name, &DeleteParams::default()).await?;
    }
    restore.now().await?;
    Ok(())
}

/// Puts the CRD's schema back, also when the test fails half-way.
struct Restore {
    config: kube::Config,
    path: &'static str,
    original: Value,
}

impl Restore {
    async fn put_back(config: kube::Config, path: &str, original: Value) -> anyhow::Result<()> {
        let crds = Api::<CustomResourceDefinition>::all(Client::try_from(config)?);
        let patch = json!([{"op": "replace", "path": path, "value": original}]);
        crds.patch(
            "communicationpolicies.breakwater.dev",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(patch)?),
        )
        .await?;
        Ok(())
    }

    async fn now(self) -> anyhow::Result<()> {
        let (config, path, original) = (self.config.clone(), self.path, self.original.clone());
        std::mem::forget(self);
        Self::put_back(config, path, original).await
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        // A failing test: restore from a thread of its own (this one may be inside a runtime).
        let (config, path, original) = (self.config.clone(), self.path, self.original.clone());
        let _ = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(Self::put_back(config, path, original))
        })
        .join();
    }
}
