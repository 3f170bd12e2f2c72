//! Routes and canaries: the Gateway API's standard-channel CRDs installed by the chart
//! (`gatewayAPI.installCRDs=true`), two Deployments of `orders` behind their own Services and
//! one Service for both, and an `HTTPRoute` applied with kubectl that splits calls to `orders`
//! 90/10 and cuts a slow path at its own deadline. The operator writes the route's status as
//! the Gateway API defines it; the caller's own calls, counted by the pod that answered, show
//! the split; a route naming a Service that does not exist is reported, not applied half; a
//! `CommunicationPolicy` on one rule retries `GET /orders` and nothing else, on the upstream's
//! own count; faults on another rule fail half the `POST /orders` a tester tags, before they
//! leave the caller, and none of the untagged ones.

use breakwater_e2e::scenario::{call, call_method, fault_stats};

use super::*;

fn services(ns: &str) -> String {
    let service = |name: &str, selector: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec:\n  selector: {selector}\n  ports: [{{name: http, port: 80, targetPort: http}}]\n"
        )
    };
    [
        service("orders", "{app: orders}"),
        service("orders-v1", "{variant: orders-v1}"),
        service("orders-v2", "{variant: orders-v2}"),
    ]
    .concat()
}

fn route(ns: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: orders, namespace: {ns}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: orders, port: 80}}]
  rules:
    - name: read
      matches: [{{path: {{type: PathPrefix, value: /orders}}, method: GET}}]
      backendRefs: [{{name: orders-v2, port: 80}}]
    - name: create
      matches: [{{path: {{type: PathPrefix, value: /orders}}, method: POST}}]
      backendRefs: [{{name: orders-v2, port: 80}}]
    - name: slow
      matches: [{{path: {{type: PathPrefix, value: /reports}}}}]
      timeouts: {{request: 300ms}}
      backendRefs: [{{name: orders-v1, port: 80}}]
    - name: canary
      backendRefs:
        - {{name: orders-v1, port: 80, weight: 90}}
        - {{name: orders-v2, port: 80, weight: 10}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: broken, namespace: {ns}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: orders, port: 80}}]
  rules:
    - matches: [{{path: {{type: PathPrefix, value: /gone}}}}]
      backendRefs: [{{name: orders-v3, port: 80}}]
"#
    )
}

/// A policy on the `read` rule of route `orders`: three tries on 503, for this namespace's
/// callers.
fn read_policy(ns: &str) -> String {
    format!(
        r#"apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata: {{name: orders-read, namespace: {ns}}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders, sectionName: read}}
  sources: [{{namespace: {ns}}}]
  retries:
    attempts: 3
    retryOn: {{httpStatusCodes: [503]}}
    backoff: {{base: 5ms, max: 20ms}}
    budget: {{ratio: 1.0, minPerSecond: 100}}
"#
    )
}

/// Faults on the `create` rule of route `orders`: 503 for half the calls tagged
/// `x-fault-test: checkout`.
fn create_faults(ns: &str) -> String {
    format!(
        r#"apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata: {{name: orders-faults, namespace: {ns}}}
spec:
  targetRef: {{group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders, sectionName: create}}
  faults:
    enabled: true
    match:
      headers: [{{name: x-fault-test, value: checkout}}]
    abort: {{httpStatus: 503, percentage: 50}}
"#
    )
}

/// `kubectl get httproute NAME -o jsonpath=…` of Breakwater's parent entry: each condition as
/// `Type=Status/Reason`.
async fn route_conditions(story: &Story, ns: &str, name: &str) -> anyhow::Result<String> {
    let path = "jsonpath={range .status.parents[?(@.controllerName==\"breakwater.dev/mesh\")].conditions[*]}{.type}={.status}/{.reason} {end}";
    Ok(story.kubectl.run(["get", "httproute", name, "-n", ns, "-o", path]).await?)
}

#[tokio::test]
async fn an_httproute_splits_calls_90_10_and_cuts_a_slow_path() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let runner = story.cluster.pod_runner().await?;
    let client = story.cluster.client()?;
    let ns = injected_namespace(story, "routes").await?;
    for (name, replicas) in [("orders-v1", 2), ("orders-v2", 1)] {
        create_deployment(&client, &ns, &fault_deployment(name, "orders", replicas, &[])?).await?;
    }
    create_deployment(&client, &ns, &fault_deployment("checkout", "checkout", 1, &[])?).await?;
    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&services(&ns))).await?;
    anyhow::ensure!(applied.success, "{}", applied.stderr);
    ready_pods(&client, &ns, "app=orders", 3).await?;
    let caller =
        ready_pods(&client, &ns, "app=checkout", 1).await?.remove(0).metadata.name.unwrap_or_default();
    scenario::ready_endpoints(&client, &ns, "orders", 3, TIMEOUT).await?;
    let ip = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns)
        .get("orders")
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_default();

    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&route(&ns))).await?;
    anyhow::ensure!(applied.success, "kubectl apply of the routes: {}", applied.stderr);

    // Status, as the Gateway API defines it, from the operator.
    let status = wait::until_ok("the route's status", TIMEOUT, || async {
        let c = route_conditions(story, &ns, "orders").await.map_err(|e| e.to_string())?;
        if c.contains("Accepted=") { Ok(c) } else { Err(c) }
    })
    .await?;
    assert_eq!(status.trim(), "Accepted=True/Accepted ResolvedRefs=True/ResolvedRefs");
    let broken = wait::until_ok("the broken route's status", TIMEOUT, || async {
        let c = route_conditions(story, &ns, "broken").await.map_err(|e| e.to_string())?;
        if c.contains("ResolvedRefs=") { Ok(c) } else { Err(c) }
    })
    .await?;
    assert_eq!(broken.trim(), "Accepted=True/Accepted ResolvedRefs=False/BackendNotFound");

    // The slow path is cut at the rule's 300ms, once the caller's sidecar has the route.
    let slow = format!("http://{ip}/reports/q3?delay=2s");
    let cut = wait::until_ok("the caller's sidecar to enforce the route", TIMEOUT, || async {
        let a = call(runner, &ns, &caller, &slow, Duration::from_secs(3), &[])
            .await
            .map_err(|e| e.to_string())?;
        if a.code == 504 { Ok(a) } else { Err(format!("{a:?}")) }
    })
    .await?;
    assert_eq!(cut.error.as_deref(), Some("timeout"));
    assert!(cut.time < Duration::from_millis(1500), "cut near 300ms, not at the app's 2s: {cut:?}");
    // The broken route's rule answers 500 for its missing backend, and nothing else changed.
    let gone = call(runner, &ns, &caller, &format!("http://{ip}/gone"), Duration::from_secs(2), &[]).await?;
    assert_eq!((gone.code, gone.error.as_deref()), (500, Some("no-backend")));

    // A policy on the `read` rule: GET /orders is tried three times, POST /orders once, on
    // orders-v2's own count (its `/stats` request counts itself).
    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&read_policy(&ns))).await?;
    anyhow::ensure!(applied.success, "kubectl apply of the rule's policy: {}", applied.stderr);
    let jsonpath = "jsonpath={.status.targets[0].kind}/{.status.targets[0].name}/{.status.targets[0].sectionName} \
                    {.status.conditions[?(@.type==\"Ready\")].reason}";
    let programmed = wait::until_ok("the rule's policy to be programmed", TIMEOUT, || async {
        let out = story
            .kubectl
            .run(["get", "cpol", "orders-read", "-n", ns.name(), "-o", jsonpath])
            .await
            .map_err(|e| e.to_string())?;
        if out.ends_with(" Programmed") { Ok(out) } else { Err(out) }
    })
    .await?;
    assert_eq!(programmed, "HTTPRoute/orders/read Programmed");
    let v2 = ready_pods(&client, &ns, "variant=orders-v2", 1).await?.remove(0);
    let stats_url = format!("http://{}:8080/stats", v2.status.and_then(|s| s.pod_ip).unwrap_or_default());
    let requests = || async {
        let stats = fault_stats(runner, &ns, &caller, &stats_url).await?;
        stats["requests"].as_u64().ok_or_else(|| anyhow::anyhow!("no request count in {stats}"))
    };
    let before = requests().await?;
    let get =
        call(runner, &ns, &caller, &format!("http://{ip}/orders/7?status=503"), Duration::from_secs(3), &[])
            .await?;
    assert_eq!(get.code, 503, "{get:?}");
    let after_get = requests().await?;
    assert_eq!(after_get - before - 1, 3, "GET /orders/7: one try and two retries");
    let post = call_method(
        runner,
        &ns,
        &caller,
        "POST",
        &format!("http://{ip}/orders?status=503"),
        Duration::from_secs(3),
        &[],
    )
    .await?;
    assert_eq!(post.code, 503, "{post:?}");
    let after_post = requests().await?;
    assert_eq!(after_post - after_get - 1, 1, "POST /orders: the `create` rule has no retries");

    // The split, counted by the pods that answered.
    const CALLS: usize = 200;
    let (mut v1, mut v2) = (0, 0);
    for _ in 0..CALLS {
        let a = call(runner, &ns, &caller, &format!("http://{ip}/"), Duration::from_secs(2), &[]).await?;
        assert_eq!(a.code, 200, "{a:?}");
        match a.served_by.as_deref() {
            Some(p) if p.starts_with("orders-v1-") => v1 += 1,
            Some(p) if p.starts_with("orders-v2-") => v2 += 1,
            other => anyhow::bail!("answered by {other:?}"),
        }
    }
    // 10 % of 200 is 20, with a standard deviation of about 4.2: 3.5 of them either way.
    assert_eq!(v1 + v2, CALLS);
    assert!((6..=35).contains(&v2), "orders-v2 took {v2} of {CALLS} calls, expected about 20");

    // Faults on the `create` rule, aimed by a header: reported as a Warning while on.
    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&create_faults(&ns))).await?;
    anyhow::ensure!(applied.success, "kubectl apply of the faults: {}", applied.stderr);
    let jsonpath = "jsonpath={.status.conditions[?(@.type==\"FaultsInjected\")].status} \
                    {.status.conditions[?(@.type==\"Ready\")].reason}";
    wait::until_ok("the faults to be programmed", TIMEOUT, || async {
        let out = story
            .kubectl
            .run(["get", "cpol", "orders-faults", "-n", ns.name(), "-o", jsonpath])
            .await
            .map_err(|e| e.to_string())?;
        if out == "True Programmed" { Ok(()) } else { Err(out) }
    })
    .await?;
    let events = "jsonpath={range .items[*]}{.type}/{.reason} {end}";
    let selector = "involvedObject.name=orders-faults";
    wait::until_ok("a Warning Event for the faults", TIMEOUT, || async {
        let out = story
            .kubectl
            .run(["get", "events", "-n", ns.name(), "--field-selector", selector, "-o", events])
            .await
            .map_err(|e| e.to_string())?;
        if out.contains("Warning/Enabled") { Ok(()) } else { Err(out) }
    })
    .await?;
    let before = requests().await?;
    let orders = format!("http://{ip}/orders");
    const TAGGED: usize = 60;
    let mut failed = 0;
    for _ in 0..TAGGED {
        let a = call_method(
            runner,
            &ns,
            &caller,
            "POST",
            &orders,
            Duration::from_secs(3),
            &["x-fault-test: checkout"],
        )
        .await?;
        match (a.code, a.error.as_deref()) {
            (200, None) => {}
            (503, Some("fault-injected")) => failed += 1,
            _ => anyhow::bail!("a tagged POST answered {a:?}"),
        }
    }
    // 50 % of 60 is 30, with a standard deviation of about 3.9: 3.9 of them either way.
    assert!((15..=45).contains(&failed), "{failed} of {TAGGED} tagged calls failed, expected about 30");
    const UNTAGGED: usize = 20;
    for _ in 0..UNTAGGED {
        let a = call_method(runner, &ns, &caller, "POST", &orders, Duration::from_secs(3), &[]).await?;
        assert_eq!((a.code, a.error.as_deref()), (200, None), "an untagged POST is never hit");
    }
    let after = requests().await?;
    assert_eq!(
        (after - before - 1) as usize,
        TAGGED - failed + UNTAGGED,
        "orders-v2 saw every call but the aborted ones"
    );
    Ok(())
}
