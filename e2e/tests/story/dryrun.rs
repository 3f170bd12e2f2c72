//! A policy in DryRun: the caller sees exactly what it saw without one, and the decisions the
//! policy would have made are in the caller's sidecar metrics and, as span events, in the traces
//! the real collector receives.

use super::*;

fn dry_run_policy(ns: &str) -> String {
    format!(
        r#"apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata:
  name: payments-dry-run
  namespace: {ns}
spec:
  targetRef: {{name: payments}}
  mode: DryRun
  retries:
    attempts: 8
    retryOn: {{conditions: [gateway-error]}}
    budget: {{ratio: 1.0, minPerSecond: 100}}
  circuitBreaker:
    consecutiveFailures: 2
    openDuration: 30s
    scope: Endpoint
"#
    )
}

#[tokio::test]
async fn a_dry_run_policy_changes_nothing_for_callers_and_reports_what_it_would_have_done()
-> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let runner = story.cluster.pod_runner().await?;
    let client = story.cluster.client()?;
    let Shop { ns, caller, url } = shop(story, "dryrun").await?;

    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&dry_run_policy(&ns))).await?;
    assert!(applied.success, "{}", applied.stderr);
    let columns = wait::until_ok("the DryRun policy to be programmed", TIMEOUT, || async {
        let out = story
            .kubectl
            .run(["get", "cpol", "payments-dry-run", "-n", ns.name(), "--no-headers"])
            .await
            .map_err(|e| e.to_string())?;
        let row: Vec<String> = out.split_whitespace().map(str::to_owned).collect();
        if row.get(4).map(String::as_str) == Some("Programmed") { Ok(row) } else { Err(out) }
    })
    .await?;
    assert_eq!(columns[2], "DryRun", "kubectl get cpol shows the mode");

    // Nothing enforced: the failures reach the caller as they would without a policy (40 calls
    // at p = 0.5; with the 8 retries enforced, more than 2 errors would be a 1-in-10^4 event).
    let seen = calls(runner, &ns, &caller, &url, 40).await?;
    assert!(seen.errors >= 8, "a DryRun policy neither retries nor sheds: {seen:?}");

    // What it would have done: open the breaker of a pod that failed twice in a row.
    let metrics = sidecar_metrics(&client, &ns, &caller).await?;
    let service = format!("payments.{}", ns.name());
    let would = metric_sum(&metrics, "breakwater_dryrun_decisions_total", &[&service, "circuit-open"]);
    assert!(would >= 1.0, "the breaker it would have opened is counted:\n{metrics}");
    let failures = metric_sum(&metrics, "breakwater_requests_total", &[&service, "status_class=\"5xx\""]);
    assert_eq!(failures as usize, seen.errors, "and each failure the caller saw, under the policy's service");

    // In the traces: calls that carry the app's sampled trace context (so traced at the chart's
    // default sampler), until one fails (p = 0.5; none in 20: 1 in 10^6). Its CLIENT span says
    // DryRun and carries the retry it would have made as an event.
    let mut failed = Vec::new();
    for n in 0..20 {
        let (header, trace) = sampled(0xd7, n);
        let answer = scenario::call(runner, &ns, &caller, &url, Duration::from_secs(3), &[&header]).await?;
        if answer.code != 200 {
            failed.push(trace);
        }
    }
    assert!(!failed.is_empty(), "one of twenty calls failed");
    let client = wait::until_ok("a DryRun decision in a trace", TIMEOUT, || async {
        let spans = story.collector.spans();
        spans
            .into_iter()
            .find(|s| {
                failed.iter().any(|t| s["traceId"] == t.as_str())
                    && s["kind"] == 3
                    && s["parentSpanId"] == APP_SPAN
                    && s["events"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|e| e["name"].as_str().is_some_and(|n| n.starts_with("dry run")))
            })
            .ok_or_else(|| "not yet".to_owned())
    })
    .await?;
    assert_eq!(breakwater_e2e::collector::attr(&client, "breakwater.mode").as_deref(), Some("DryRun"));
    assert_eq!(breakwater_e2e::collector::attr(&client, "http.response.status_code").as_deref(), Some("503"));
    Ok(())
}
