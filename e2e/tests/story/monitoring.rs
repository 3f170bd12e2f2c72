//! What the chart's dashboard and alerts read exists: a caller whose policy turns every mechanism
//! on (timeouts, retries and their budget, a breaker, a bulkhead, faults aimed at no call) for
//! payments, and a DryRun policy for inventory; after a few calls, every metric name the
//! PrometheusRule and the Grafana dashboard use is one that the caller's sidecar or an operator
//! replica exports, read from their live `/metrics`, and the series the alerts rate start at zero
//! before their first event.

use super::*;

fn policies(ns: &str) -> String {
    format!(
        r#"apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata:
  name: payments-everything
  namespace: {ns}
spec:
  targetRef: {{name: payments}}
  timeouts: {{perTry: 2s, request: 5s}}
  retries:
    attempts: 3
    retryOn: {{conditions: [gateway-error]}}
    backoff: {{base: 1ms, max: 5ms}}
  circuitBreaker: {{consecutiveFailures: 50, openDuration: 5s, scope: Service}}
  bulkhead:
    outbound: {{maxConcurrentRequests: 7, maxQueued: 3, maxQueueWait: 100ms}}
  # Aimed at a header no call here carries: the series exist, nothing is injected.
  faults:
    enabled: true
    match: {{headers: [{{name: x-fault-test, value: never-sent}}]}}
    abort: {{httpStatus: 503, percentage: 50}}
---
apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata:
  name: inventory-dry-run
  namespace: {ns}
spec:
  targetRef: {{name: inventory}}
  mode: DryRun
  retries: {{attempts: 2}}
  circuitBreaker: {{consecutiveFailures: 5, scope: Service}}
"#
    )
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_use_is_exported_live() -> anyhow::Result<()> {
    use breakwater_e2e::monitoring;
    let _serial = SERIAL.lock().await;
    let story = story().await?;
    let runner = story.cluster.pod_runner().await?;
    let client = story.cluster.client()?;
    let Shop { ns, caller, url } = shop(story, "monitoring").await?;
    create_deployment(&client, &ns, &fault_deployment("inventory", "inventory", 1, &[])?).await?;
    expose(story, &ns, "inventory").await?;
    ready_pods(&client, &ns, "app=inventory", 1).await?;

    let applied = story.kubectl.output(["apply", "-f", "-"], Some(&policies(&ns))).await?;
    assert!(applied.success, "{}", applied.stderr);
    programmed(story, &ns, "payments-everything").await?;
    programmed(story, &ns, "inventory-dry-run").await?;
    // payments' pods fail half the calls with 503: retried (gateway-error), so retries happen.
    let seen = calls(runner, &ns, &caller, &url, 20).await?;
    assert!(seen.ok >= 15, "retries hide most failures: {seen:?}");

    let sidecar = sidecar_metrics(&client, &ns, &caller).await?;
    let mut exported = monitoring::exposed_metrics(&sidecar);
    let operators = story.op.pods().await?;
    anyhow::ensure!(!operators.is_empty(), "no operator replica is running");
    for pod in operators {
        let ip = breakwater_e2e::operator::pod_ip(&pod)?;
        let (status, body) = breakwater_e2e::operator::http_get(ip, 8080, "/metrics").await?;
        anyhow::ensure!(status == 200, "GET /metrics of operator {ip}: {status}");
        exported.extend(monitoring::exposed_metrics(&body));
    }
    let objects = monitoring::render_all(&breakwater_e2e::Helm::offline()?).await?;
    let mut queries = monitoring::alert_queries(monitoring::rule_spec(&objects)?);
    queries.extend(monitoring::dashboard_queries(&monitoring::dashboard(&objects)?));
    let mut used = std::collections::BTreeSet::new();
    let mut missing = Vec::new();
    for q in &queries {
        for name in monitoring::referenced_metrics(&q.expr) {
            if !exported.contains(&name) {
                missing.push(format!("{name} in {}", q.source));
            }
            used.insert(name);
        }
    }
    assert!(missing.is_empty(), "not exported by the sidecar or the operator: {missing:#?}\n{sidecar}");
    assert!(used.len() >= 20, "the dashboard and alerts use {} metrics: {used:?}", used.len());

    // The series the alerts rate exist at zero before their first event.
    let payments = format!("service=\"payments.{}\"", ns.name());
    let inventory = format!("service=\"inventory.{}\"", ns.name());
    let zero = |name: &str, labels: &[&str]| {
        let line = sidecar
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want)));
        assert_eq!(line.and_then(|l| l.rsplit(' ').next()), Some("0"), "{name} {labels:?} at 0:\n{sidecar}");
    };
    zero("breakwater_refusals_total", &[&payments, "reason=\"circuit-open\""]);
    zero("breakwater_refusals_total", &[&payments, "reason=\"bulkhead-full\""]);
    zero("breakwater_retry_budget_exhausted_total", &[&payments]);
    zero("breakwater_bulkhead_in_flight", &[&payments]);
    zero("breakwater_dryrun_decisions_total", &[&inventory, "decision=\"circuit-open\""]);
    zero("breakwater_faults_injected_total", &[&payments, "fault=\"abort\""]);
    assert_eq!(metric_sum(&sidecar, "breakwater_bulkhead_max_concurrent", &[&payments]), 7.0);
    assert!(metric_sum(&sidecar, "breakwater_retries_total", &[&payments]) >= 1.0, "{sidecar}");
    assert_eq!(metric_sum(&sidecar, "breakwater_breaker_state", &[&payments]), 0.0, "closed");
    Ok(())
}
