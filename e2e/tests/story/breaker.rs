//! A circuit breaker per endpoint: one payments pod is dead (answers every call with 503), the
//! other healthy. Without a policy nothing protects the caller from the dead pod; with the
//! breaker, the dead pod fails `consecutiveFailures` calls, its breaker opens, and it receives nothing more
//! (its own sidecar's count stops) while every call succeeds on the healthy pod. Then what
//! `kubectl breakwater breakers`, `config` and `status` say of the caller.

use super::*;

fn breaker_policy(ns: &str) -> String {
    format!(
        r#"apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata:
  name: payments-breaker
  namespace: {ns}
spec:
  targetRef: {{name: payments}}
  circuitBreaker:
    consecutiveFailures: 3
    openDuration: 5m
    scope: Endpoint
"#
    )
}

/// Requests the sidecar of pod `ns/pod` received (inbound), all services and codes together.
async fn inbound(client: &Client, ns: &str, pod: &str) -> anyhow::Result<f64> {
    let metrics = sidecar_metrics(client, ns, pod).await?;
    Ok(metric_sum(&metrics, "breakwater_requests_total", &["direction=\"inbound\""]))
}

#[tokio::test]
async fn a_circuit_breaker_stops_calls_to_the_dead_pod() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let runner = story.cluster.pod_runner().await?;
    let client = story.cluster.client()?;
    let ns = injected_namespace(story, "breaker").await?;

    create_deployment(&client, &ns, &fault_deployment("payments-healthy", "payments", 1, &[])?).await?;
    create_deployment(
        &client,
        &ns,
        &fault_deployment("payments-dead", "payments", 1, &["--fail-rate", "1.0"])?,
    )
    .await?;
    create_deployment(&client, &ns, &fault_deployment("checkout", "checkout", 1, &[])?).await?;
    let url = expose(story, &ns, "payments").await?;
    let dead = ready_pods(&client, &ns, "variant=payments-dead", 1).await?.remove(0);
    let dead_ip = breakwater_e2e::operator::pod_ip(&dead)?;
    let dead = dead.metadata.name.clone().unwrap_or_default();
    ready_pods(&client, &ns, "variant=payments-healthy", 1).await?;
    let caller = ready_pods(&client, &ns, "app=checkout", 1).await?.remove(0);
    let caller = caller.metadata.name.clone().unwrap_or_default();

    scenario::ready_endpoints(&client, &ns, "payments", 2, TIMEOUT).await?;

    // No policy: the sidecar forwards to the cluster IP as it was called, over a pooled
    // connection (so to whichever pod the Service rules chose for it); the dead pod fails
    // every call that reaches it.
    let dead_url = format!("http://{dead_ip}:8080/");
    // Ready is not yet answering: the pod's tcpSocket readiness probe reaches its sidecar's
    // inbound listener (iptables sends it there), which can accept before the app listens. So wait
    // for the app's own first answer (under a full `make test`, 2 of 5 calls once got 502
    // `connect-failed` from the dead pod's sidecar).
    wait::until_ok("the dead pod's app to answer", TIMEOUT, || async {
        let a = scenario::call(runner, &ns, &caller, &dead_url, Duration::from_secs(2), &[])
            .await
            .map_err(|e| e.to_string())?;
        if a.code == 503 && a.error.is_none() { Ok(()) } else { Err(format!("{a:?}")) }
    })
    .await?;
    let before = calls(runner, &ns, &caller, &dead_url, 5).await?;
    // Every call fails, most of them with the pod's own 503. A 502 `connect-failed` seen under
    // a full `make test` was the harness's kube-proxy lagging behind the EndpointSlice (the
    // node refused the cluster IP); `ready_endpoints` now waits for its DNAT rules too.
    assert_eq!(before.ok, 0, "without a policy the dead pod fails every call: {before:?}");
    assert!(before.codes.get(&503).is_some_and(|n| *n >= 4), "answered by the dead pod: {before:?}");

    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&breaker_policy(&ns))).await?;
    assert!(applied.success, "{}", applied.stderr);
    programmed(story, &ns, "payments-breaker").await?;

    // With the policy the caller's sidecar picks an endpoint per call. The breaker opens after
    // three failures in a row at the dead pod: at most those three reach
    // the caller, then every call goes to the healthy pod.
    let opening = calls(runner, &ns, &caller, &url, 30).await?;
    assert!(opening.errors <= 3, "the dead pod's breaker opens after 3 failures: {opening:?}");
    let metrics = sidecar_metrics(&client, &ns, &caller).await?;
    let service = format!("service=\"payments.{}\"", ns.name());
    let endpoint = format!("endpoint=\"{dead_ip}:8080\"");
    let state = metric_sum(&metrics, "breakwater_breaker_state", &[&service, &endpoint]);
    assert_eq!(state, 2.0, "the dead pod's breaker is open in the caller's sidecar:\n{metrics}");

    let received = inbound(&client, &ns, &dead).await?;
    let after = calls(runner, &ns, &caller, &url, 30).await?;
    assert_eq!(after.errors, 0, "with the breaker open every call succeeds: {after:?}");
    assert_eq!(
        inbound(&client, &ns, &dead).await?,
        received,
        "the dead pod receives no call while its breaker is open"
    );
    diagnosed(story, &ns, &caller, &dead_ip.to_string()).await
}

/// `kubectl breakwater` on the caller whose breaker for `dead_ip` is open.
async fn diagnosed(
    story: &Story,
    ns: &breakwater_e2e::TestNamespace,
    caller: &str,
    dead_ip: &str,
) -> anyhow::Result<()> {
    let kubectl = Kubectl::for_cluster(story.cluster)?.with_plugin()?;
    let n = ns.name();
    let service = format!("payments.{n}");
    let dead = format!("{dead_ip}:8080");

    // breakers: the dead endpoint's breaker open, the other closed; exit 1, calls are refused.
    let out = plugin(&kubectl, &["breakers", caller, "-n", n, "--to", "payments"]).await?;
    println!("$ kubectl breakwater breakers {caller} -n {n} --to payments\n{}", out.stdout);
    assert_eq!(out.code, Some(1), "an open breaker is unhealthy:\n{}{}", out.stdout, out.stderr);
    let row = out.stdout.lines().find(|l| l.contains(&dead)).unwrap_or_default();
    assert!(row.starts_with("outbound") && row.contains("OPEN (300000ms)"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("breaker {dead} open: calls to it are refused")), "{}", out.stdout);
    let json = plugin(&kubectl, &["breakers", caller, "-n", n, "-o", "json"]).await?;
    let view: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(view["apiVersion"], breakwater_crds::admin::API_VERSION, "{view}");
    let target = view["targets"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["service"] == service.as_str()))
        .ok_or_else(|| anyhow::anyhow!("no target {service}: {view}"))?;
    assert_eq!(target["policy"], format!("{n}/payments-breaker"));
    let states: Vec<(String, String, u64)> = target["breakers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["endpoint"].as_str().unwrap_or_default().to_owned(),
                b["state"].as_str().unwrap_or_default().to_owned(),
                b["trips"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(states.len(), 2, "a breaker per endpoint: {states:?}");
    assert!(states.contains(&(dead.clone(), "Open".to_owned(), 1)), "{states:?}");
    assert!(states.iter().any(|(e, s, _)| *e != dead && s == "Closed"), "{states:?}");
    let unknown = plugin(&kubectl, &["breakers", caller, "-n", n, "--to", "inventory"]).await?;
    assert_eq!(unknown.code, Some(2), "{}{}", unknown.stdout, unknown.stderr);
    assert!(
        unknown
            .stderr
            .contains(&format!("no policy governs its calls to inventory\n  hint: it governs: {service}")),
        "{}",
        unknown.stderr
    );

    // config: the sidecar's policy beside the operator's, the same.
    let out = plugin(&kubectl, &["config", caller, "-n", n]).await?;
    println!("$ kubectl breakwater config {caller} -n {n}\n{}", out.stdout);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("the operator compiled ") && l.ends_with(": MATCH")),
        "{}",
        out.stdout
    );
    let row =
        out.stdout.lines().find(|l| l.starts_with("outbound") && l.contains(&service)).unwrap_or_default();
    for cell in
        [format!("{n}/payments-breaker@1"), "3 in a row → open 5m0s, per endpoint".into(), "same".into()]
    {
        assert!(row.contains(&cell), "{cell:?} in its row:\n{}", out.stdout);
    }

    // status: the policy programmed on the three sidecars, each on its current snapshot.
    let out = wait::until_ok("`kubectl breakwater status` to be healthy", TIMEOUT, || async {
        let out = plugin(&kubectl, &["status", "-n", n]).await.map_err(|e| e.to_string())?;
        if out.code == Some(0) { Ok(out) } else { Err(format!("{}{}", out.stdout, out.stderr)) }
    })
    .await?;
    println!("$ kubectl breakwater status -n {n}\n{}", out.stdout);
    let policy = out.stdout.lines().find(|l| l.starts_with("payments-breaker")).unwrap_or_default();
    let sidecars = policy.split_whitespace().last().and_then(|c| c.split_once('/')).unwrap_or_default();
    assert!(sidecars.0 == sidecars.1 && sidecars.0 != "0", "every sidecar enforces it:\n{}", out.stdout);
    let pod = out.stdout.lines().find(|l| l.starts_with(caller)).unwrap_or_default();
    assert!(pod.contains("ready") && pod.ends_with("current"), "{}", out.stdout);
    Ok(())
}
