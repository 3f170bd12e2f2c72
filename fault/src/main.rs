//! `breakwater-fault`: serve HTTP/1.1, h2c and gRPC, failing on purpose. See the library docs
//! for the per-request query parameters (`?status=503&delay=250ms`, ...).

use std::time::Duration;

use anyhow::Context as _;
use breakwater_fault::{FaultServer, Faults};
use clap::Parser;

/// An upstream that fails on purpose, for Breakwater's tests, demo and benchmarks.
///
/// Serves HTTP/1.1 and h2c (prior knowledge) on every --listen address. Per-request
/// overrides: ?status=503, ?delay=250ms, ?reset=1, ?close_early=1, ?slow_body=1,
/// ?grpc_status=14, ?body_bytes=N. GET /echo answers the request as JSON, GET /stats the counters.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// Address to listen on (repeat for several).
    #[arg(long, default_value = "127.0.0.1:8080", env = "FAULT_LISTEN")]
    listen: Vec<String>,
    /// Name in the `x-served-by` header and the body (default: $HOSTNAME or "fault").
    #[arg(long, env = "FAULT_NAME")]
    name: Option<String>,
    /// The first N requests fail with --fail-status.
    #[arg(long, default_value_t = 0, env = "FAULT_FAIL_FIRST")]
    fail_first: u64,
    /// Fraction (0-1) of requests that fail with --fail-status.
    #[arg(long, default_value_t = 0.0, env = "FAULT_FAIL_RATE")]
    fail_rate: f64,
    /// Status for failed requests.
    #[arg(long, default_value_t = 503, env = "FAULT_FAIL_STATUS")]
    fail_status: u16,
    /// Fraction (0-1) of requests answered after --slow-delay.
    #[arg(long, default_value_t = 0.0, env = "FAULT_SLOW_RATE")]
    slow_rate: f64,
    /// Delay for the slow fraction, e.g. 2s.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration, env = "FAULT_SLOW_DELAY")]
    slow_delay: Duration,
    /// Fraction (0-1) of requests whose connection is reset.
    #[arg(long, default_value_t = 0.0, env = "FAULT_RESET_RATE")]
    reset_rate: f64,
    /// Delay applied to every request, e.g. 5ms.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, env = "FAULT_DELAY")]
    delay: Duration,
    /// gRPC status in the trailers of gRPC responses (0 = OK, 14 = UNAVAILABLE).
    #[arg(long, default_value_t = 0, env = "FAULT_GRPC_STATUS")]
    grpc_status: u32,
    /// Body size of normal answers, in bytes.
    #[arg(long, env = "FAULT_BODY_BYTES")]
    body_bytes: Option<usize>,
    /// Requests handled at once (a worker pool); the rest queue. Default: unlimited.
    #[arg(long, env = "FAULT_WORKERS")]
    workers: Option<usize>,
    /// HTTP versions spoken: both (HTTP/2 by prior knowledge), or only http1 or http2, as
    /// many real apps.
    #[arg(long, value_enum, default_value = "both", env = "FAULT_HTTP")]
    http: breakwater_fault::HttpVersions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    for (flag, v) in
        [("--fail-rate", args.fail_rate), ("--slow-rate", args.slow_rate), ("--reset-rate", args.reset_rate)]
    {
        anyhow::ensure!((0.0..=1.0).contains(&v), "{flag} must be between 0 and 1, got {v}");
    }
    let name = args.name.or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_else(|| "fault".to_owned());
    let faults = Faults {
        name,
        fail_first: args.fail_first,
        fail_rate: args.fail_rate,
        http: args.http,
        fail_status: Some(args.fail_status),
        slow_rate: args.slow_rate,
        slow_delay: args.slow_delay,
        reset_rate: args.reset_rate,
        delay: args.delay,
        grpc_status: args.grpc_status,
        body_bytes: args.body_bytes,
        workers: args.workers,
    };
    let mut servers = Vec::new();
    for addr in &args.listen {
        let s = FaultServer::bind(addr, faults.clone())
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!("breakwater-fault listening on {}", s.addr());
        servers.push(s);
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        // Ctrl-C.
        _ = tokio::signal::ctrl_c() => {}
        // Kubernetes (or the harness) stops the pod.
        _ = term.recv() => {}
    }
    drop(servers);
    Ok(())
}
