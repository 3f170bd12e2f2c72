//! An inbound bulkhead: the server's own sidecar admits at most two requests at a time from all
//! callers together and refuses the rest at once (no queue), with 503 and
//! `breakwater-error: bulkhead-full`; the server's sidecar counts each refusal.

use super::*;

fn bulkhead_policy(ns: &str) -> String {
    format!(
        r#"apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata:
  name: reporting-bulkhead
  namespace: {ns}
spec:
  targetRef: {{name: reporting}}
  timeouts: {{request: 10s}}
  bulkhead:
    inbound:
      maxConcurrentRequests: 2
      maxQueued: 0
"#
    )
}

#[tokio::test]
async fn an_inbound_bulkhead_sheds_at_the_servers_sidecar() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let runner = story.cluster.pod_runner().await?;
    let client = story.cluster.client()?;
    let ns = injected_namespace(story, "bulkhead").await?;

    // reporting answers each call after 1.5 s: six calls sent together overlap.
    create_deployment(&client, &ns, &fault_deployment("reporting", "reporting", 1, &["--delay", "1500ms"])?)
        .await?;
    create_deployment(&client, &ns, &fault_deployment("dashboard", "dashboard", 1, &[])?).await?;
    let url = expose(story, &ns, "reporting").await?;
    let server = ready_pods(&client, &ns, "app=reporting", 1).await?.remove(0);
    let server = server.metadata.name.clone().unwrap_or_default();
    let caller = ready_pods(&client, &ns, "app=dashboard", 1).await?.remove(0);
    let caller = caller.metadata.name.clone().unwrap_or_default();
    scenario::ready_endpoints(&client, &ns, "reporting", 1, TIMEOUT).await?;

    let together = |n: usize| {
        let (ns, caller, url) = (ns.name().to_owned(), caller.clone(), url.clone());
        async move {
            let all = (0..n).map(|_| scenario::call(runner, &ns, &caller, &url, Duration::from_secs(5), &[]));
            futures_util::future::join_all(all).await.into_iter().collect::<Result<Vec<_>, _>>()
        }
    };

    // No policy: all six are served.
    let before = together(6).await?;
    assert!(before.iter().all(|a| a.code == 200), "without a bulkhead all six are served: {before:?}");

    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&bulkhead_policy(&ns))).await?;
    assert!(applied.success, "{}", applied.stderr);
    programmed(story, &ns, "reporting-bulkhead").await?;

    let after = together(6).await?;
    let served = after.iter().filter(|a| a.code == 200).count();
    let shed: Vec<_> =
        after.iter().filter(|a| a.code == 503 && a.error.as_deref() == Some("bulkhead-full")).collect();
    assert_eq!(served, 2, "two at a time are admitted: {after:?}");
    assert_eq!(shed.len(), 4, "the other four are refused with bulkhead-full: {after:?}");

    // Refused by the server's sidecar, not the caller's (which has no outbound bulkhead).
    let service = format!("service=\"reporting.{}\"", ns.name());
    let server_metrics = sidecar_metrics(&client, &ns, &server).await?;
    let refused = metric_sum(&server_metrics, "breakwater_bulkhead_rejected_total", &[&service, "inbound"]);
    assert_eq!(refused, 4.0, "the server's sidecar counts its refusals:\n{server_metrics}");
    let caller_metrics = sidecar_metrics(&client, &ns, &caller).await?;
    assert_eq!(metric_sum(&caller_metrics, "breakwater_bulkhead_rejected_total", &[]), 0.0);
    Ok(())
}
