//! The real OpenTelemetry Collector (built from its Go modules by `make otelcol`,
//! `gobuild/otelcol/build.sh`) beside a [`TestCluster`]: an OTLP/gRPC receiver on the node's
//! address, which pods reach, and the file exporter writing every span as JSON lines that tests
//! and `make demo-cluster` read back.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{Error, Result, TestCluster, process::Process, wait};

/// The collector's binary, built and cached by `make otelcol`; an error naming the target when
/// it is missing (never a skip).
pub fn binary() -> Result<PathBuf> {
    crate::bins::gobuild_path("otelcol/build.sh", "otelcol")
}

/// A running collector; stopped when dropped (and by the cluster's reaper if the test dies).
#[derive(Debug)]
pub struct Collector {
    _process: Process,
    endpoint: String,
    spans: PathBuf,
}

impl Collector {
    /// Starts a collector whose OTLP/gRPC receiver listens on the cluster's node address (the
    /// bridge's gateway, which every pod reaches) and waits until it accepts connections.
    pub async fn start(cluster: &TestCluster) -> Result<Self> {
        let ip = cluster.network().gateway();
        let port = crate::cluster::free_port()?;
        let dir = cluster.dir().join("otelcol");
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("creating {}", dir.display())))?;
        let spans = dir.join("spans.jsonl");
        let config = dir.join("collector.yaml");
        std::fs::write(&config, config_yaml(ip, port, &spans))
            .map_err(Error::io(format!("writing {}", config.display())))?;
        let mut command = Command::new(binary()?);
        command.arg(format!("--config={}", config.display()));
        let process = Process::spawn("otelcol", command, &dir, &cluster.dir().join("pids"))?;
        wait::until_ok("the OpenTelemetry Collector to listen", Duration::from_secs(30), || async move {
            tokio::net::TcpStream::connect((ip, port)).await.map(|_| ()).map_err(|e| e.to_string())
        })
        .await?;
        Ok(Collector { _process: process, endpoint: format!("http://{ip}:{port}"), spans })
    }

    /// The OTLP/gRPC endpoint, `http://IP:PORT` (the chart's `sidecar.tracing.endpoint`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span written so far (the file exporter flushes every 100 ms).
    pub fn spans(&self) -> Vec<Value> {
        read_spans(&self.spans)
    }
}

fn config_yaml(ip: Ipv4Addr, port: u16, spans: &Path) -> String {
    format!(
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: {ip}:{port}\n\
         exporters:\n  file:\n    path: {}\n    flush_interval: 100ms\n\
         service:\n  telemetry:\n    metrics:\n      level: none\n  pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
        spans.display()
    )
}

/// The spans of an OTLP JSON-lines file, each with its resource's `service.name` added as
/// `"service"` and its `k8s.pod.name` as `"pod"`.
pub fn read_spans(file: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut spans = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(doc) = serde_json::from_str::<Value>(line) else { continue };
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            let resource = |key: &str| {
                rs["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|a| a["key"] == key)
                    .and_then(|a| a["value"]["stringValue"].as_str())
                    .unwrap_or("")
                    .to_owned()
            };
            let (service, pod) = (resource("service.name"), resource("k8s.pod.name"));
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    let mut span = span.clone();
                    span["service"] = Value::String(service.clone());
                    span["pod"] = Value::String(pod.clone());
                    spans.push(span);
                }
            }
        }
    }
    spans
}

/// A span attribute's value as text (string or integer attributes).
pub fn attr(span: &Value, key: &str) -> Option<String> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| {
        let v = &a["value"];
        v["stringValue"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| v["intValue"].to_string().trim_matches('"').to_owned())
    })
}
