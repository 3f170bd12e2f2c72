//! The load: `oha`, pinned to the load CPU, at a fixed rate or as fast as it can, for a bounded
//! time, its JSON summary read back.
//!
//! Why oha: it holds a fixed rate (`-q`) and corrects the latency of requests that had to wait
//! for a busy connection from the time they were due (`--latency-correction`, no coordinated
//! omission), speaks HTTP/1.1 keep-alive and h2c with prior knowledge (`--http2`), keeps every
//! latency so percentiles are exact (fortio buckets them), prints JSON, and installs from
//! crates.io with `cargo install`. fortio, which Istio's benchmarks use, would do as well, but its
//! current release depends on a Go module this machine's proxy does not serve.
//!
//! Every request goes to `http://backend/` and `--connect-to` sends the connection to the setup's
//! entry port, so the request bytes (`Host: backend`, or `:authority: backend` on h2) are the same
//! in every setup: the backend ignores them, HAProxy forwards them, and the sidecar routes by them
//! (explicit proxy mode).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

/// HTTP/1.1 keep-alive or h2c.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    #[serde(rename = "http1")]
    Http1,
    /// HTTP/2 over cleartext, prior knowledge.
    #[serde(rename = "h2c")]
    H2c,
}

impl Protocol {
    /// Both, in report order.
    pub const ALL: [Protocol; 2] = [Protocol::Http1, Protocol::H2c];

    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "h2c",
        }
    }
}

/// A load shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Shape {
    /// This many requests per second, latency measured from when each was due.
    #[serde(rename = "fixed")]
    Fixed(u32),
    /// As fast as the connections go.
    #[serde(rename = "saturation")]
    Saturation,
}

impl Shape {
    /// How the report names it.
    pub fn label(self) -> String {
        match self {
            Shape::Fixed(rps) => format!("{rps} rps"),
            Shape::Saturation => "saturation".to_owned(),
        }
    }
}

/// The load generator and how it is run.
#[derive(Debug, Clone)]
pub struct LoadGen {
    /// The `oha` binary; `None`: the harness's own small generator (`--smoke` in `make test`).
    pub oha: Option<PathBuf>,
    /// CPUs it runs on (`taskset -c`).
    pub cpus: String,
    /// Its tokio worker threads (one per CPU it has).
    pub threads: usize,
    /// Connections.
    pub connections: u32,
}

/// What one load run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoadResult {
    /// Requests completed (any status) plus failed.
    pub requests: u64,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Answers with another status, and requests that failed (connection errors, resets).
    pub failed: u64,
    /// What the failures were: `status 404`, or oha's error text.
    pub failures: BTreeMap<String, u64>,
    /// Requests still in flight when the duration ended, which oha cut (h2 ignores `-w`): not
    /// failures, and not counted in `requests`.
    #[serde(default)]
    pub aborted: u64,
    /// Completed requests per second over the run.
    pub rps: f64,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: f64,
    /// 90th.
    pub p90_us: f64,
    /// 99th.
    pub p99_us: f64,
    /// 99.9th.
    pub p999_us: f64,
}

impl LoadGen {
    /// The command line of one run (without the `taskset` prefix that [`LoadGen::run`] adds).
    pub fn args(
        &self,
        entry: SocketAddr,
        protocol: Protocol,
        shape: Shape,
        duration: Duration,
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--no-tui".into(),
            "--output-format".into(),
            "json".into(),
            "--worker-threads".into(),
            self.threads.to_string(),
            "-c".into(),
            self.connections.to_string(),
            "-z".into(),
            format!("{}ms", duration.as_millis()),
            // Requests still in flight at the deadline finish and count, instead of being
            // reported as errors.
            "-w".into(),
            "-t".into(),
            "10s".into(),
        ];
        if let Shape::Fixed(rps) = shape {
            args.extend(["-q".into(), rps.to_string(), "--latency-correction".into()]);
        }
        if protocol == Protocol::H2c {
            args.push("--http2".into());
        }
        args.extend(["--connect-to".into(), format!("backend:80:{}:{}", entry.ip(), entry.port())]);
        args.push("http://backend/".into());
        args
    }

    /// Runs one load and reads oha's summary. Killed if it runs 30 s past its duration.
    pub async fn run(
        &self,
        entry: SocketAddr,
        protocol: Protocol,
        shape: Shape,
        duration: Duration,
    ) -> anyhow::Result<LoadResult> {
        let Some(oha) = &self.oha else {
            return crate::builtin::run(entry, protocol, shape, duration, self.connections).await;
        };
        let args = self.args(entry, protocol, shape, duration);
        let child = crate::procs::pinned(&self.cpus, oha)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", oha.display()))?;
        let out = tokio::time::timeout(duration + Duration::from_secs(30), child.wait_with_output())
            .await
            .with_context(|| format!("oha did not finish within {duration:?} + 30s: killed"))??;
        if !out.status.success() {
            bail!(
                "oha failed ({}): {}\n  command: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                oha.display(),
                args.join(" ")
            );
        }
        parse(&out.stdout).with_context(|| format!("cannot read oha's JSON summary: {}", oha.display()))
    }
}

/// The parts of oha's `--output-format json` the bench reads.
#[derive(Deserialize)]
struct OhaSummary {
    summary: OhaTotals,
    #[serde(rename = "latencyPercentiles")]
    latency_percentiles: BTreeMap<String, Option<f64>>,
    #[serde(rename = "statusCodeDistribution", default)]
    status_code_distribution: BTreeMap<String, u64>,
    #[serde(rename = "errorDistribution", default)]
    error_distribution: BTreeMap<String, u64>,
}

#[derive(Deserialize)]
struct OhaTotals {
    total: f64,
}

/// oha's text for requests cut by `-z` (its `ClientError::Deadline`).
const DEADLINE: &str = "aborted due to deadline";

/// Reads oha's JSON (latencies in seconds).
pub fn parse(json: &[u8]) -> anyhow::Result<LoadResult> {
    let s: OhaSummary = serde_json::from_slice(json)?;
    let mut failures = BTreeMap::new();
    let mut ok = 0;
    for (status, n) in &s.status_code_distribution {
        if status.starts_with('2') {
            ok += n;
        } else {
            *failures.entry(format!("status {status}")).or_default() += n;
        }
    }
    let mut aborted = 0;
    for (error, n) in &s.error_distribution {
        if error == DEADLINE {
            aborted += n;
        } else {
            *failures.entry(error.clone()).or_default() += n;
        }
    }
    let failed: u64 = failures.values().sum();
    let requests = ok + failed;
    let pct = |key: &str| -> anyhow::Result<f64> {
        // NaN (no request completed) is `null` in oha's JSON: reported as 0, and the run is
        // flagged by its request count.
        Ok(s.latency_percentiles
            .get(key)
            .with_context(|| format!("no {key} in latencyPercentiles"))?
            .unwrap_or(0.0)
            * 1e6)
    };
    let seconds = s.summary.total;
    Ok(LoadResult {
        requests,
        ok,
        failed,
        failures,
        aborted,
        rps: if seconds > 0.0 { ok as f64 / seconds } else { 0.0 },
        seconds,
        p50_us: pct("p50")?,
        p90_us: pct("p90")?,
        p99_us: pct("p99")?,
        p999_us: pct("p99.9")?,
    })
}

/// `oha --version`, or why not.
pub fn version(oha: &Path) -> String {
    if !oha.is_file() {
        return format!("{} (breakwater-bench's own, for smoke runs)", oha.display());
    }
    std::process::Command::new(oha)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_oha_json_with_statuses_errors_and_percentiles() {
        let json = br#"{
            "summary": {"successRate": 1.0, "total": 2.0, "slowest": 0.01, "fastest": 0.0001,
                        "average": 0.0002, "requestsPerSec": 1000.0, "totalData": 0, "sizePerRequest": 0,
                        "sizePerSec": 0.0},
            "latencyPercentiles": {"p10": 0.0001, "p50": 0.0002, "p90": 0.0003, "p99": 0.0005,
                                   "p99.9": 0.001, "p99.99": null},
            "statusCodeDistribution": {"200": 1990, "503": 10},
            "errorDistribution": {"connection closed": 5, "aborted due to deadline": 3}
        }"#;
        let r = parse(json).expect("valid oha JSON");
        assert_eq!((r.requests, r.ok, r.failed), (2005, 1990, 15));
        assert_eq!(r.failures.get("status 503"), Some(&10));
        assert_eq!(r.aborted, 3);
        assert!((r.p50_us - 200.0).abs() < 1e-6);
        assert!((r.p999_us - 1000.0).abs() < 1e-6);
        assert!((r.rps - 995.0).abs() < 1e-6);
    }
}
