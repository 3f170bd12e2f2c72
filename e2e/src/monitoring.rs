//! The chart's monitoring objects as the tests read them: the PromQL of the PrometheusRule's
//! alerts and of the Grafana dashboard's panels, the metric names that PromQL uses, and the
//! metric names an exposition (`/metrics`) offers.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::{Error, Result};

/// One PromQL expression of the chart, and where it is.
#[derive(Debug, Clone)]
pub struct Query {
    /// `alert BreakwaterX` or `panel "Title"`.
    pub source: String,
    /// The expression, the dashboard's variables substituted (see [`dashboard_queries`]).
    pub expr: String,
}

/// The `spec` of the rendered PrometheusRule.
pub fn rule_spec(objects: &[Value]) -> Result<&Value> {
    objects
        .iter()
        .find(|o| o["kind"] == "PrometheusRule")
        .map(|o| &o["spec"])
        .ok_or_else(|| Error::Other("the chart rendered no PrometheusRule".into()))
}

/// Every alert's expression.
pub fn alert_queries(spec: &Value) -> Vec<Query> {
    let rules = spec["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten());
    rules
        .map(|r| Query {
            source: format!("alert {}", r["alert"].as_str().unwrap_or("?")),
            expr: r["expr"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// The dashboard JSON inside the rendered dashboards ConfigMap.
pub fn dashboard(objects: &[Value]) -> Result<Value> {
    let text = objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["data"]["breakwater.json"].is_string())
        .and_then(|o| o["data"]["breakwater.json"].as_str())
        .ok_or_else(|| Error::Other("the chart rendered no dashboards ConfigMap".into()))?;
    serde_json::from_str(text).map_err(|e| Error::Other(format!("the dashboard is not JSON: {e}")))
}

/// Every panel target's expression, with Grafana's variables replaced as a query would see them
/// with "All" selected (`$namespace` → `.*`, `$__rate_interval` → `1m`, `$__range` → `1h`), and
/// each variable's `label_values(SELECTOR, label)` query as its selector.
pub fn dashboard_queries(dashboard: &Value) -> Vec<Query> {
    let substitute = |expr: &str| {
        let mut out = expr.replace("$__rate_interval", "1m").replace("$__range", "1h");
        for var in ["namespace", "caller", "service", "direction"] {
            out = out.replace(&format!("${var}"), ".*");
        }
        out
    };
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or("?");
                queries.push(Query { source: format!("panel {title:?}"), expr: substitute(expr) });
            }
        }
    }
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        let query = var["query"].as_str().or_else(|| var["query"]["query"].as_str()).unwrap_or_default();
        if let Some(args) = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
            let selector = args.rsplit_once(',').map_or(args, |(s, _)| s);
            let name = var["name"].as_str().unwrap_or("?");
            queries.push(Query { source: format!("variable ${name}"), expr: substitute(selector) });
        }
    }
    queries
}

/// The metric names `expr` uses: every identifier that starts with `breakwater_` (all of
/// Breakwater's metrics do, and the chart's queries use no others).
pub fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let end = (i..bytes.len()).find(|&j| !ident(bytes[j])).unwrap_or(bytes.len());
            let word = &expr[i..end];
            // Not inside a string ("breakwater_x" as a label value is not a metric).
            let quoted = expr[..i].matches('"').count() % 2 == 1;
            if word.starts_with("breakwater_") && !quoted {
                names.insert(word.to_owned());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names an OpenMetrics exposition offers, from its `# TYPE` lines (prometheus-client
/// writes them for every registered family, with or without samples yet): a counter's
/// `_total`, a histogram's `_bucket`, `_sum` and `_count`, a gauge's own name.
pub fn exposed_metrics(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else { continue };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The values that turn every monitoring part on.
pub const ALL_ON: [&str; 4] = [
    "monitoring.podMonitor.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboards.enabled=true",
];

/// `helm template` of the chart with every monitoring part on (and default thresholds).
pub async fn render_all(helm: &crate::Helm) -> Result<Vec<Value>> {
    let chart = crate::helm::chart_dir().display().to_string();
    let mut args = vec!["template", "bw", chart.as_str(), "--namespace", "breakwater-system"];
    for part in ALL_ON {
        args.extend(["--set", part]);
    }
    crate::objects::manifests(&helm.run(args).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_read_from_expressions_and_not_from_label_values() {
        let expr = r#"sum by (service) (rate(breakwater_requests_total{service="breakwater_x"}[5m])) / on () breakwater_bulkhead_in_flight"#;
        let got: Vec<_> = referenced_metrics(expr).into_iter().collect();
        assert_eq!(got, ["breakwater_bulkhead_in_flight", "breakwater_requests_total"]);
    }

    #[test]
    fn an_exposition_offers_each_familys_sample_names() {
        let text = "# HELP breakwater_requests Requests.\n# TYPE breakwater_requests counter\n\
                    # TYPE breakwater_request_duration_seconds histogram\n# TYPE breakwater_breaker_state gauge\n# EOF\n";
        let got = exposed_metrics(text);
        for name in [
            "breakwater_requests_total",
            "breakwater_request_duration_seconds_bucket",
            "breakwater_request_duration_seconds_count",
            "breakwater_breaker_state",
        ] {
            assert!(got.contains(name), "{name} in {got:?}");
        }
        assert!(!got.contains("breakwater_requests"), "a counter's samples end in _total");
    }
}
