//! A caller and a server behind a Service, both injected; the server's pods fail half their calls. With
//! no policy the caller sees the failures (and its sidecar counts them); a retry policy applied
//! with kubectl makes them disappear, and its status says it is programmed into the caller's
//! sidecar; a change to the policy is live within a second.

use super::*;

pub(crate) fn retry_policy(ns: &str, attempts: u32) -> String {
    format!(
        r#"apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata:
  name: payments-from-checkout
  namespace: {ns}
spec:
  targetRef: {{name: payments}}
  sources: [{{namespace: {ns}, podSelector: {{matchLabels: {{app: checkout}}}}}}]
  timeouts: {{perTry: 800ms, request: 3s}}
  retries:
    attempts: {attempts}
    retryOn: {{conditions: [connect-failure, reset, gateway-error]}}
    backoff: {{base: 5ms, max: 20ms}}
    budget: {{ratio: 1.0, minPerSecond: 100}}
"#
    )
}

#[tokio::test]
async fn a_retry_policy_applied_with_kubectl_takes_the_callers_errors_away() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let runner = story.cluster.pod_runner().await?;
    let client = story.cluster.client()?;
    let Shop { ns, caller, url } = shop(story, "retries").await?;

    // No policy: calls go through the sidecar, and the failures reach the caller (40 calls at
    // p = 0.5: fewer than 8 errors happens once in 10^5 runs).
    let before = calls(runner, &ns, &caller, &url, 40).await?;
    assert!(before.errors >= 8, "half the calls fail without a policy: {before:?}");
    let metrics = sidecar_metrics(&client, &ns, &caller).await?;
    // Without a policy the snapshot names no Service: the calls are forwarded to their original
    // destination and counted as `passthrough`.
    let counted = metric_sum(
        &metrics,
        "breakwater_requests_total",
        &["service=\"passthrough\"", "direction=\"outbound\""],
    );
    assert!(counted >= 40.0, "the caller's sidecar counted every call: {counted}\n{metrics}");
    let failed = metric_sum(
        &metrics,
        "breakwater_requests_total",
        &["service=\"passthrough\"", "status_class=\"5xx\""],
    );
    assert_eq!(failed as usize, before.errors, "and every failure");

    // The policy, applied as a user would.
    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&retry_policy(&ns, 8))).await?;
    assert!(applied.success, "{}", applied.stderr);
    let status = wait::until_ok("the policy to be programmed into the caller's sidecar", TIMEOUT, || async {
        let out = story
            .kubectl
            .run([
                "get",
                "cpol",
                "payments-from-checkout",
                "-n",
                ns.name(),
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason} {.status.sidecars}",
            ])
            .await
            .map_err(|e| e.to_string())?;
        if out.starts_with("Programmed ") { Ok(out) } else { Err(out) }
    })
    .await?;
    // Every sidecar whose snapshot carries the policy acknowledged it: the caller's and those of
    // the two payments pods (its target). The source names the namespace: a `podSelector` alone
    // matches callers in every namespace, and other scenarios run a `checkout` too.
    assert_eq!(status, "Programmed 3");

    // Eight attempts: a call fails with p = 0.5^8; more than 2 errors in 40 calls happens once in
    // 10^4 runs.
    let after = calls(runner, &ns, &caller, &url, 40).await?;
    assert!(after.errors <= 2, "retries take the errors away: {after:?} (before: {before:?})");
    assert!(before.rate() > after.rate() + 0.2);

    // A change (no more retries) is what the caller sees within a second of `kubectl apply`:
    // calls until the first failure comes back (each fails with p = 0.5 once the change is live).
    let changed = story.kubectl.output(["apply", "-f", "-"], Some(&retry_policy(&ns, 1))).await?;
    assert!(changed.success && changed.stdout.contains("configured"), "{}{}", changed.stdout, changed.stderr);
    let applied_at = tokio::time::Instant::now();
    let mut n = 0;
    while calls(runner, &ns, &caller, &url, 1).await?.errors == 0 {
        n += 1;
        anyhow::ensure!(
            n < 500 && applied_at.elapsed() < Duration::from_secs(10),
            "no failure in {n} calls after the change"
        );
    }
    let live = applied_at.elapsed();
    eprintln!("policy change live after {live:?} ({n} calls without failure first)");
    assert!(
        live < Duration::from_secs(2),
        "the change was live after {live:?} (goal 1 s; 2 s with margin for a loaded CI)"
    );
    Ok(())
}
