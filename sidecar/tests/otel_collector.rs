//! End to end through a real OpenTelemetry Collector, built from its Go modules by
//! `make otelcol` (e2e/gobuild/otelcol/build.sh): the sidecar exports OTLP/gRPC to the
//! collector's OTLP receiver, the collector's file exporter writes the spans, and the test reads
//! them. Fails — never skips — when the collector binary is missing.

mod support;

use std::{path::PathBuf, process::Command, time::Duration};

use breakwater_fault::{FaultServer, Faults};
use serde_json::Value;
use support::*;

fn collector_binary() -> PathBuf {
    go_tool("otelcol", "otelcol", "builds the OpenTelemetry Collector from its Go modules")
}

/// The collector process, killed on drop.
struct Collector(std::process::Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn attr(span: &Value, key: &str) -> Option<String> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| {
        let v = &a["value"];
        v["stringValue"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v["intValue"].to_string().trim_matches('"').to_owned())
    })
}

fn read_spans(file: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(doc) = serde_json::from_str::<Value>(line) else { continue };
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                spans.extend(ss["spans"].as_array().into_iter().flatten().cloned());
            }
        }
    }
    spans
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_a_real_collector_with_attempts_and_events() {
    let bin = collector_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = closed_port().await.port();
    let out = dir.path().join("spans.jsonl");
    let config = dir.path().join("collector.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: 127.0.0.1:{port}\n\
             exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
            out.display()
        ),
    )
    .expect("write collector config");
    let _collector = Collector(
        Command::new(&bin)
            .arg(format!("--config={}", config.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the collector"),
    );
    eventually("the collector to listen", || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await;

    let up = FaultServer::bind("127.0.0.1:0", Faults { fail_first: 1, ..Default::default() })
        .await
        .expect("upstream");
    let yaml = sidecar_yaml(&service("payments", &[up.addr()]), None, "")
        + &policy("p", "payments", "  retries: {attempts: 2, backoff: {base: 5ms, max: 10ms}}\n");
    let endpoint = format!("http://127.0.0.1:{port}");
    let sc = SidecarProcess::start(
        &yaml,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "checkout"),
        ],
    );
    assert_eq!(get(sc.outbound, "http://payments/").await.status, 200);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = read_spans(&out);
        if spans.iter().filter(|s| s["name"].as_str().is_some_and(|n| n.starts_with("attempt"))).count() == 2
        {
            break spans;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the collector wrote no complete trace; file: {:?}",
            std::fs::read_to_string(&out)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let client = spans.iter().find(|s| s["name"] == "GET payments.shop").expect("the client span");
    assert_eq!(client["kind"], 3, "SPAN_KIND_CLIENT");
    assert_eq!(attr(client, "breakwater.policy").as_deref(), Some("shop/p"));
    assert!(client["events"].as_array().into_iter().flatten().any(|e| e["name"] == "retry scheduled"));
    let attempts: Vec<&Value> = spans.iter().filter(|s| s["parentSpanId"] == client["spanId"]).collect();
    assert_eq!(attempts.len(), 2);
    assert!(attempts.iter().all(|a| a["traceId"] == client["traceId"]));
    let outcomes: Vec<Option<String>> = attempts.iter().map(|a| attr(a, "breakwater.outcome")).collect();
    assert!(
        outcomes.contains(&Some("gateway-error".into())) && outcomes.contains(&Some("ok".into())),
        "{outcomes:?}"
    );
}
