//! The chart's monitoring parts, off by default: the PodMonitor (sidecars), the ServiceMonitor
//! (operator), the PrometheusRule and the Grafana dashboard. The alert rules are checked with
//! the real `promtool check rules` and unit-tested with `promtool test rules`
//! (`tests/alerts_test.yaml`), promtool built from the Prometheus Go module by `make promtool`;
//! every dashboard query is checked as PromQL by promtool too. No cluster here: chart.rs creates
//! the objects against the Prometheus Operator's CRDs, and the story checks that every metric
//! they use is one the live sidecars and operator export.

use std::{path::PathBuf, process::Command};

use breakwater_e2e::{
    Helm,
    bins::{gobuild_path, workspace_root},
    helm::chart_dir,
    monitoring::{self, ALL_ON},
    objects::manifests,
};
use serde_json::{Value, json};

fn promtool() -> PathBuf {
    gobuild_path("promtool/build.sh", "promtool").expect("promtool")
}

/// Runs promtool in `dir`; (succeeded, what it printed).
fn run_promtool(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(promtool()).args(args).current_dir(dir).output().expect("run promtool");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn render(sets: &[&str]) -> Vec<Value> {
    let helm = Helm::offline().expect("helm");
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", "bw", chart.as_str(), "--namespace", "breakwater-system"];
    for s in sets {
        args.extend(["--set", s]);
    }
    manifests(&helm.run(args).await.expect("helm template")).expect("manifests")
}

fn kinds(objects: &[Value]) -> Vec<String> {
    objects.iter().map(|o| o["kind"].as_str().unwrap_or_default().to_owned()).collect()
}

#[tokio::test]
async fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let objects = render(&ALL_ON).await;
    let spec = monitoring::rule_spec(&objects).expect("a PrometheusRule");
    let scratch = tempfile::tempdir().expect("scratch");
    // JSON is YAML: promtool reads the rule groups as the Prometheus Operator hands them over.
    std::fs::write(scratch.path().join("rules.yaml"), serde_json::to_string_pretty(spec).expect("json"))
        .expect("write rules");
    std::fs::copy(
        workspace_root().join("e2e/tests/alerts_test.yaml"),
        scratch.path().join("alerts_test.yaml"),
    )
    .expect("copy the rule tests");

    let (ok, text) = run_promtool(scratch.path(), &["check", "rules", "rules.yaml"]);
    assert!(ok, "promtool check rules:\n{text}");
    let alerts = monitoring::alert_queries(spec);
    assert!(text.contains(&format!("SUCCESS: {} rules found", alerts.len())), "{text}");

    let (ok, text) = run_promtool(scratch.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(ok, "promtool test rules:\n{text}");
    assert!(text.contains("SUCCESS"), "{text}");
    // Every alert has a test that fires it.
    let tests = std::fs::read_to_string(scratch.path().join("alerts_test.yaml")).expect("read");
    for alert in &alerts {
        let name = alert.source.trim_start_matches("alert ");
        assert!(tests.contains(&format!("alertname: {name}")), "{name} has no promtool test");
    }
}

#[tokio::test]
async fn every_alert_has_a_severity_a_description_and_a_runbook_in_the_readme() {
    let objects = render(&ALL_ON).await;
    let spec = monitoring::rule_spec(&objects).expect("a PrometheusRule");
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    let rules: Vec<&Value> = spec["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .collect();
    assert!(rules.len() >= 8, "{rules:?}");
    for rule in rules {
        let name = rule["alert"].as_str().expect("an alerting rule");
        assert!(matches!(rule["labels"]["severity"].as_str(), Some("warning" | "critical")), "{rule}");
        assert!(rule["annotations"]["summary"].as_str().is_some_and(|s| !s.is_empty()), "{rule}");
        assert!(rule["annotations"]["description"].as_str().is_some_and(|s| s.len() > 40), "{rule}");
        let url = rule["annotations"]["runbook_url"].as_str().expect("runbook_url");
        let anchor = url.rsplit_once('#').map(|(_, a)| a).expect("an anchor");
        assert_eq!(anchor, name.to_lowercase(), "{url}");
        // GitHub's anchor of `#### BreakwaterX` is `#breakwaterx`.
        assert!(readme.contains(&format!("\n#### {name}\n")), "README has no runbook section `#### {name}`");
    }
}

#[tokio::test]
async fn dashboard_queries_are_valid_promql() {
    let objects = render(&["monitoring.dashboards.enabled=true"]).await;
    let dashboard = monitoring::dashboard(&objects).expect("the dashboard");
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("dashboards/breakwater.json")).expect("the dashboard file"),
    )
    .expect("JSON");
    assert_eq!(dashboard, file, "the ConfigMap carries the file as it is");
    let queries = monitoring::dashboard_queries(&dashboard);
    assert!(queries.len() >= 25, "{} queries", queries.len());
    // Each query as a recording rule: promtool parses it with Prometheus's own PromQL parser.
    let rules: Vec<Value> = queries
        .iter()
        .enumerate()
        .map(|(i, q)| json!({"record": format!("dashboard:query_{i}"), "expr": q.expr}))
        .collect();
    let scratch = tempfile::tempdir().expect("scratch");
    let file = json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(scratch.path().join("dashboard.yaml"), file.to_string()).expect("write");
    let (ok, text) = run_promtool(scratch.path(), &["check", "rules", "dashboard.yaml"]);
    assert!(ok, "promtool check rules on the dashboard's queries:\n{text}\n{queries:#?}");
    for q in &queries {
        assert!(
            !monitoring::referenced_metrics(&q.expr).is_empty(),
            "{} reads no Breakwater metric: {}",
            q.source,
            q.expr
        );
    }
    // Per Service and per caller, and the panels the issue names.
    let titles: Vec<&str> =
        dashboard["panels"].as_array().expect("panels").iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Per caller",
        "Refusals by reason",
        "Breaker state over time",
        "Bulkhead occupancy",
        "Retry budget exhausted by service",
    ] {
        assert!(titles.contains(&wanted), "no panel {wanted:?} in {titles:?}");
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "namespace", "caller", "service", "direction"]);
}

#[tokio::test]
async fn monitoring_is_off_by_default_and_each_part_renders_what_it_says() {
    let default = kinds(&render(&[]).await);
    for kind in ["PodMonitor", "ServiceMonitor", "PrometheusRule"] {
        assert!(!default.contains(&kind.to_owned()), "{kind} rendered by default");
    }

    let pm = render(&[
        "monitoring.podMonitor.enabled=true",
        "monitoring.podMonitor.labels.release=kube-prometheus-stack",
        "monitoring.podMonitor.podTargetLabels={app.kubernetes.io/name}",
        "monitoring.podMonitor.interval=15s",
    ])
    .await;
    let pod_monitor = pm.iter().find(|o| o["kind"] == "PodMonitor").expect("a PodMonitor");
    assert_eq!(pod_monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(pod_monitor["spec"]["namespaceSelector"], json!({"any": true}));
    assert_eq!(pod_monitor["spec"]["selector"], json!({"matchLabels": {"breakwater.dev/injected": "true"}}));
    assert_eq!(pod_monitor["spec"]["podTargetLabels"], json!(["app.kubernetes.io/name"]));
    assert_eq!(
        pod_monitor["spec"]["podMetricsEndpoints"],
        json!([{"port": "bw-probes", "path": "/metrics", "interval": "15s"}])
    );
    assert!(!kinds(&pm).contains(&"ServiceMonitor".to_owned()));

    let sm = render(&["monitoring.serviceMonitor.enabled=true"]).await;
    let service_monitor = sm.iter().find(|o| o["kind"] == "ServiceMonitor").expect("a ServiceMonitor");
    let service = sm.iter().find(|o| o["kind"] == "Service").expect("the Service");
    // It selects the chart's Service, whose `metrics` port reaches the operator's.
    let selector = service_monitor["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels");
    for (k, v) in selector {
        assert_eq!(&service["metadata"]["labels"][k], v, "the Service has {k}={v}");
    }
    assert_eq!(service_monitor["spec"]["endpoints"][0]["port"], "metrics");
    let ports = service["spec"]["ports"].as_array().expect("ports");
    assert!(
        ports.iter().any(|p| p["name"] == "metrics" && p["targetPort"] == "metrics" && p["port"] == 8080),
        "{ports:?}"
    );

    // The rule without the ServiceMonitor has no alert on the operator's absence (with nothing
    // scraping the operator it would always fire).
    let rules = render(&[
        "monitoring.prometheusRule.enabled=true",
        "monitoring.prometheusRule.certificateExpiryDays=20",
    ])
    .await;
    let spec = monitoring::rule_spec(&rules).expect("a PrometheusRule");
    let alerts: Vec<String> = monitoring::alert_queries(spec).into_iter().map(|q| q.source).collect();
    assert!(!alerts.contains(&"alert BreakwaterOperatorDown".to_owned()), "{alerts:?}");
    assert!(
        monitoring::alert_queries(spec).iter().any(|q| q.expr.contains(&(20 * 86400).to_string())),
        "the expiry threshold is the value's"
    );
    let with_sm =
        render(&["monitoring.prometheusRule.enabled=true", "monitoring.serviceMonitor.enabled=true"]).await;
    let alerts: Vec<String> = monitoring::alert_queries(monitoring::rule_spec(&with_sm).expect("rule"))
        .into_iter()
        .map(|q| q.source)
        .collect();
    assert!(alerts.contains(&"alert BreakwaterOperatorDown".to_owned()), "{alerts:?}");

    let dash = render(&[
        "monitoring.dashboards.enabled=true",
        "monitoring.dashboards.namespace=monitoring",
        "monitoring.dashboards.annotations.grafana_folder=Breakwater",
    ])
    .await;
    let cm = dash
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["data"]["breakwater.json"].is_string())
        .expect("dashboards");
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1", "Grafana's sidecar's default label");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Breakwater");
}

#[tokio::test]
async fn bad_monitoring_values_are_refused_naming_the_key() {
    let helm = Helm::offline().expect("helm");
    let chart = chart_dir().display().to_string();
    for (set, key) in [
        ("monitoring.podMonitor.interval=soon", "interval"),
        ("monitoring.prometheusRule.certificateExpiryDays=45", "certificateExpiryDays"),
        ("monitoring.prometheusRule.breakerOpenFor=10", "breakerOpenFor"),
        ("monitoring.dashboards.enable=true", "enable"),
    ] {
        let out = helm.output(["template", "bw", chart.as_str(), "--set", set]).await.expect("helm");
        assert!(!out.success, "{set} was accepted");
        assert!(out.stderr.contains(key), "{set}: the error names {key}: {}", out.stderr);
    }
}
