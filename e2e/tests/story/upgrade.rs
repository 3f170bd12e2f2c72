//! `helm upgrade` with changed sidecar settings (trace export to a real OpenTelemetry Collector,
//! `sidecar.tracing.endpoint`): the pods already running are left as they were (same pods, same
//! proxy settings, calls still governed by their policy), and pods created after the upgrade get
//! the new settings. With them, a caller's retried call is one trace across both sidecars: the
//! caller's CLIENT span with one child span per attempt, and under each attempt the SERVER span
//! of the payments sidecar that received it.

use breakwater_e2e::collector::Collector;
use serde_json::Value;

use super::{retries::retry_policy, *};

/// The parent span the caller's app sends in its `traceparent` (W3C Trace Context).
const APP_SPAN: &str = "00f067aa0ba902b7";

/// `NAME=value` of each `OTEL_*` variable of the proxy container of pod `ns/name`, and the
/// proxy's restart count.
async fn proxy_settings(client: &Client, ns: &str, name: &str) -> anyhow::Result<(Vec<String>, i32)> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns).get(name).await?;
    let proxy = pod
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .find(|c| c.name == "breakwater-proxy")
        .ok_or_else(|| anyhow::anyhow!("{ns}/{name} has no breakwater-proxy container"))?;
    let otel = proxy
        .env
        .iter()
        .flatten()
        .filter(|e| e.name.starts_with("OTEL_"))
        .map(|e| format!("{}={}", e.name, e.value.as_deref().unwrap_or_default()))
        .collect();
    let restarts = pod
        .status
        .and_then(|s| s.init_container_statuses)
        .into_iter()
        .flatten()
        .find(|c| c.name == "breakwater-proxy")
        .map_or(0, |c| c.restart_count);
    Ok((otel, restarts))
}

/// `kubectl rollout restart` of Deployment `name`, then `kubectl rollout status` until done.
async fn restart(story: &Story, ns: &str, name: &str) -> anyhow::Result<()> {
    let deployment = format!("deployment/{name}");
    story.kubectl.run(["rollout", "restart", &deployment, "-n", ns]).await?;
    story.kubectl.run(["rollout", "status", &deployment, "-n", ns, "--timeout", "60s"]).await?;
    Ok(())
}

/// The spans of the first of `traces` that shows a retried call across both sidecars: the
/// caller sidecar's CLIENT span (child of the app's span), two or more attempts under it, and a
/// SERVER span under every attempt.
fn retried_trace(spans: &[Value], traces: &[String]) -> Option<Vec<Value>> {
    traces.iter().find_map(|trace| {
        let of: Vec<&Value> = spans.iter().filter(|s| s["traceId"] == trace.as_str()).collect();
        let client = of.iter().find(|s| s["kind"] == 3 && s["parentSpanId"] == APP_SPAN)?;
        let attempts: Vec<&&Value> = of.iter().filter(|s| s["parentSpanId"] == client["spanId"]).collect();
        let served =
            attempts.iter().all(|a| of.iter().any(|s| s["kind"] == 2 && s["parentSpanId"] == a["spanId"]));
        (attempts.len() >= 2 && served).then(|| of.into_iter().cloned().collect())
    })
}

#[tokio::test]
async fn a_helm_upgrade_keeps_running_pods_and_gives_new_pods_the_new_sidecar_settings() -> anyhow::Result<()>
{
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let runner = story.cluster.pod_runner().await?;
    let client = story.cluster.client()?;
    let Shop { ns, caller, url } = shop(story, "upgrade").await?;
    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&retry_policy(&ns, 8))).await?;
    assert!(applied.success, "{}", applied.stderr);
    programmed(story, &ns, "payments-from-checkout").await?;
    let before = proxy_settings(&client, &ns, &caller).await?;
    assert_eq!(before, (vec![], 0), "tracing is off by default");

    let collector = Collector::start(story.cluster).await?;
    let endpoint = format!("sidecar.tracing.endpoint={}", collector.endpoint());
    story.op.upgrade(&[&endpoint]).await?;
    let upgraded = story.op.ready_pods(2, TIMEOUT).await;
    // Put the release back whatever happens next (the other scenarios share it).
    let result = async {
        upgraded?;
        // The running caller is the same pod with the same proxy, and its calls are still
        // retried (more than 2 errors in 40 calls at 8 attempts: 1 in 10^4).
        let now = proxy_settings(&client, &ns, &caller).await?;
        anyhow::ensure!(now == before, "the running pod is left alone: {now:?}");
        let kept = calls(runner, &ns, &caller, &url, 40).await?;
        anyhow::ensure!(kept.errors <= 2, "calls keep their policy across the upgrade: {kept:?}");

        // New pods get the new settings.
        restart(story, &ns, "checkout").await?;
        restart(story, &ns, "payments").await?;
        let caller = ready_pods(&client, &ns, "app=checkout", 1).await?.remove(0);
        let caller = caller.metadata.name.clone().unwrap_or_default();
        let payments = ready_pods(&client, &ns, "app=payments", 2).await?;
        let wanted = format!("OTEL_EXPORTER_OTLP_ENDPOINT={}", collector.endpoint());
        for pod in
            std::iter::once(caller.clone()).chain(payments.iter().filter_map(|p| p.metadata.name.clone()))
        {
            let (otel, _) = proxy_settings(&client, &ns, &pod).await?;
            anyhow::ensure!(otel.contains(&wanted), "{pod} was created after the upgrade: {otel:?}");
        }

        // Calls that carry the app's own sampled trace context, until one of them was retried
        // (each is retried with p = 0.5; twenty without a retry: 1 in 10^6).
        let mut traces = Vec::new();
        for i in 0..20u32 {
            let trace = format!("4bf92f3577b34da6a3ce929d{i:08x}");
            let header = format!("traceparent: 00-{trace}-{APP_SPAN}-01");
            let answer =
                scenario::call(runner, &ns, &caller, &url, Duration::from_secs(3), &[&header]).await?;
            anyhow::ensure!(answer.code == 200, "the retry policy holds in the new pods: {answer:?}");
            traces.push(trace);
        }
        let spans = wait::until_ok("a retried call's trace across both sidecars", TIMEOUT, || async {
            let spans = collector.spans();
            retried_trace(&spans, &traces).ok_or_else(|| format!("{} spans, none such yet", spans.len()))
        })
        .await?;
        let ips: Vec<String> = payments
            .iter()
            .filter_map(|p| breakwater_e2e::operator::pod_ip(p).ok())
            .map(|ip| ip.to_string())
            .collect();
        // The caller's attempts (the server's sidecar has attempts of its own, to its app on
        // loopback, under its SERVER span).
        let client = spans.iter().find(|s| s["kind"] == 3 && s["parentSpanId"] == APP_SPAN);
        let client_id = client.map(|c| c["spanId"].clone()).unwrap_or_default();
        for attempt in spans.iter().filter(|s| s["parentSpanId"] == client_id) {
            let to = breakwater_e2e::collector::attr(attempt, "server.address").unwrap_or_default();
            anyhow::ensure!(ips.contains(&to), "each attempt went to a payments pod ({ips:?}): {attempt}");
        }
        let outcomes: Vec<String> = spans
            .iter()
            .filter(|s| s["parentSpanId"] == client_id)
            .filter_map(|s| breakwater_e2e::collector::attr(s, "breakwater.outcome"))
            .collect();
        anyhow::ensure!(
            outcomes.iter().any(|o| o == "gateway-error") && outcomes.iter().any(|o| o == "ok"),
            "a failed attempt (503) and the one that succeeded: {outcomes:?}"
        );
        anyhow::Ok(())
    }
    .await;
    story.op.upgrade(&["sidecar.tracing.endpoint="]).await?;
    result
}
