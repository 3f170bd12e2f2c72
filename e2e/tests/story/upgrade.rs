//! `helm upgrade` with changed sidecar settings (every trace sampled, `sidecar.tracing.samplerArg`
//! 0.01 → 1): the pods already running are left as they were (same pods, same proxy settings,
//! calls still governed by their policy), and pods created after the upgrade get the new
//! settings and act on them: a call that carries no trace context of its own is traced, and a
//! caller's retried call is one trace across both sidecars — the caller's CLIENT span with one
//! child span per attempt, and under each attempt the SERVER span of the payments sidecar that
//! received it.

use serde_json::Value;

use super::{retries::retry_policy, *};

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

/// The CLIENT spans that the sidecar of pod `caller` started as the roots of their traces (the
/// app sent no trace context).
fn roots<'a>(spans: &'a [Value], caller: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| {
            s["kind"] == 3 && s["pod"] == caller && s["parentSpanId"].as_str().unwrap_or_default().is_empty()
        })
        .collect()
}

/// The spans of a trace that `caller`'s sidecar started and that shows a retried call across
/// both sidecars: the root CLIENT span, two or more attempts under it, and a SERVER span under
/// every attempt.
fn retried_trace(spans: &[Value], caller: &str) -> Option<Vec<Value>> {
    roots(spans, caller).into_iter().find_map(|client| {
        let of: Vec<&Value> = spans.iter().filter(|s| s["traceId"] == client["traceId"]).collect();
        let attempts: Vec<&&Value> = of.iter().filter(|s| s["parentSpanId"] == client["spanId"]).collect();
        let served =
            attempts.iter().all(|a| of.iter().any(|s| s["kind"] == 2 && s["parentSpanId"] == a["spanId"]));
        // A call whose retries ended in a success: one that failed all 8 attempts (p = 2^-8, so
        // 1 in 128 of the retried calls) shows retries but not recovery.
        let recovered = attempts
            .iter()
            .any(|a| breakwater_e2e::collector::attr(a, "breakwater.outcome").as_deref() == Some("ok"));
        (attempts.len() >= 2 && served && recovered).then(|| of.into_iter().cloned().collect())
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
    let endpoint = format!("OTEL_EXPORTER_OTLP_ENDPOINT={}", story.collector.endpoint());
    let before = proxy_settings(&client, &ns, &caller).await?;
    anyhow::ensure!(before.0.contains(&endpoint), "the release exports traces: {before:?}");
    assert!(before.0.contains(&"OTEL_TRACES_SAMPLER_ARG=0.01".to_owned()), "{before:?}");

    story.op.upgrade(&["sidecar.tracing.samplerArg=1"]).await?;
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
        for pod in
            std::iter::once(caller.clone()).chain(payments.iter().filter_map(|p| p.metadata.name.clone()))
        {
            let (otel, _) = proxy_settings(&client, &ns, &pod).await?;
            anyhow::ensure!(
                otel.contains(&"OTEL_TRACES_SAMPLER_ARG=1".to_owned()) && otel.contains(&endpoint),
                "{pod} was created after the upgrade: {otel:?}"
            );
        }

        // And act on them: every one of 20 calls without a trace context of its own is traced
        // (at 0.01, all 20 would be a 1-in-10^40 event), and one of them was retried (each is,
        // with p = 0.5; none in twenty: 1 in 10^6). With 8 attempts a call still fails with
        // p = 2^-8, so one error in 20 calls happens in 1 run of 13 (it did); three, in 1 of 10^4.
        let sent = calls(runner, &ns, &caller, &url, 20).await?;
        anyhow::ensure!(sent.errors <= 2, "the retry policy holds in the new pods: {sent:?}");
        let spans =
            wait::until_ok("20 traces, a retried call across both sidecars among them", TIMEOUT, || async {
                let spans = story.collector.spans();
                let traced = roots(&spans, &caller).len();
                match retried_trace(&spans, &caller) {
                    Some(trace) if traced == 20 => Ok(trace),
                    _ => Err(format!("{traced} traces from {caller}")),
                }
            })
            .await?;
        let ips: Vec<String> = payments
            .iter()
            .filter_map(|p| breakwater_e2e::operator::pod_ip(p).ok())
            .map(|ip| ip.to_string())
            .collect();
        // The caller's attempts (the server's sidecar has attempts of its own, to its app on
        // loopback, under its SERVER span).
        let client = roots(&spans, &caller).first().map(|c| c["spanId"].clone());
        let client_id = client.ok_or_else(|| anyhow::anyhow!("the trace has its root"))?;
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
    story.op.upgrade(&["sidecar.tracing.samplerArg=0.01"]).await?;
    result
}
