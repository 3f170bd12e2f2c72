//! `make demo`: Breakwater on one machine, with nothing else to install.
//!
//! Starts two services that fail on purpose (payments: one flaky pod, one dead, one that
//! stalls; reports: slow, with a small worker pool), then sends the same bounded load three
//! ways — straight to the pods, through a sidecar whose policies are in DryRun (policy off,
//! decisions only counted), and through a sidecar enforcing `examples/local/demo.yaml` — and
//! prints what each caller experienced and what Breakwater did. Everything it starts is
//! stopped at the end, also on Ctrl-C.

#![forbid(unsafe_code)]

mod load;
mod procs;
mod traces;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use load::{Load, LoadResult, Via};
use procs::Proc;

/// Run the Breakwater demo: flaky services, a sidecar, the same load with the policy off and on.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// The local-mode configuration to enforce.
    #[arg(long, default_value = "examples/local/demo.yaml")]
    config: PathBuf,
    /// Calls to payments per run.
    #[arg(long, default_value_t = 1500)]
    payments_calls: usize,
    /// Calls to reports per run.
    #[arg(long, default_value_t = 120)]
    reports_calls: usize,
}

const PAYMENTS: [&str; 3] = ["127.0.0.1:19101", "127.0.0.1:19102", "127.0.0.1:19103"];
const REPORTS: &str = "127.0.0.1:19111";
const ENFORCE: (&str, &str) = ("127.0.0.1:19001", "127.0.0.1:19000");
const DRYRUN: (&str, &str) = ("127.0.0.1:19011", "127.0.0.1:19010");

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("a constant address")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut procs = Vec::new();
    let result = tokio::select! {
        r = demo(&args, &mut procs) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    for p in procs {
        p.stop().await;
    }
    result
}

async fn demo(args: &Args, procs: &mut Vec<Proc>) -> anyhow::Result<()> {
    let fault = procs::sibling("breakwater-fault")?;
    let sidecar = procs::sibling("breakwater-sidecar")?;
    let enforced = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read {}", args.config.display()))?;
    for a in PAYMENTS.iter().chain([&REPORTS, &ENFORCE.0, &ENFORCE.1, &DRYRUN.0, &DRYRUN.1]) {
        procs::ensure_free(addr(a)).await?;
    }

    println!("Starting the services (breakwater-fault plays them):");
    let flaky = ["--listen", PAYMENTS[0], "--name", "payments-1", "--fail-rate", "0.2", "--delay", "2ms"];
    let stall = [
        "--listen",
        PAYMENTS[2],
        "--name",
        "payments-3",
        "--slow-rate",
        "0.05",
        "--slow-delay",
        "3s",
        "--delay",
        "2ms",
    ];
    let slow = ["--listen", REPORTS, "--name", "reports-1", "--delay", "100ms", "--workers", "2"];
    for (name, a) in [("payments-1", &flaky[..]), ("payments-3", &stall[..]), ("reports-1", &slow[..])] {
        procs.push(Proc::spawn(name, &fault, &a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?);
    }
    for a in [PAYMENTS[0], PAYMENTS[2], REPORTS] {
        procs::wait_listening(addr(a), "a demo service").await?;
    }
    println!(
        "  payments  3 pods: payments-1 answers 503 to 20% of calls, payments-2 is dead (nothing listens),"
    );
    println!("            payments-3 stalls for 3s on 5% of calls");
    println!("  reports   1 pod, 100ms per report, 2 workers: it queues when busy");

    let dir = tempfile::tempdir()?;
    let dry_path = dir.path().join("dryrun.yaml");
    let dry = enforced
        .replace("mode: Enforce", "mode: DryRun")
        .replace(ENFORCE.0, DRYRUN.0)
        .replace(ENFORCE.1, DRYRUN.1);
    std::fs::write(&dry_path, dry)?;
    // The enforcing sidecar sends its traces to a receiver inside this demo.
    let otlp = breakwater_fault::otlp::OtlpReceiver::start().await?;
    let trace_env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), otlp.grpc_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL".to_owned(), "grpc".to_owned()),
        ("OTEL_SERVICE_NAME".to_owned(), "checkout".to_owned()),
    ];
    for (name, path, admin, env) in [
        ("sidecar (policies enforced)", args.config.clone(), ENFORCE.1, &trace_env[..]),
        ("sidecar (policies in DryRun)", dry_path.clone(), DRYRUN.1, &[][..]),
    ] {
        let a = vec!["run".into(), "--config".into(), path.display().to_string(), "--no-watch".into()];
        procs.push(Proc::spawn_with_env(name, &sidecar, &a, env)?);
        procs::wait_listening(addr(admin), name).await?;
    }
    println!(
        "  sidecars  {} enforces {}; {} runs the same policies in DryRun\n",
        ENFORCE.0,
        args.config.display(),
        DRYRUN.0
    );

    let payments = Load {
        rate: None,
        host: "payments",
        path: "/charge",
        total: args.payments_calls,
        concurrency: 16,
        max_time: Duration::from_secs(20),
        client_timeout: Duration::from_secs(5),
    };
    let reports = Load {
        rate: Some(40),
        host: "reports",
        path: "/monthly",
        total: args.reports_calls,
        concurrency: 0,
        max_time: Duration::from_secs(20),
        client_timeout: Duration::from_secs(5),
    };
    let pods: Vec<SocketAddr> = PAYMENTS.iter().map(|a| addr(a)).collect();
    for (title, load, direct) in [
        (
            "payments: 1 flaky pod, 1 dead, 1 that stalls; 16 callers at once",
            &payments,
            Via::Direct(pods.clone()),
        ),
        (
            "reports: 40 calls/s offered to a service that can do 20/s",
            &reports,
            Via::Direct(vec![addr(REPORTS)]),
        ),
    ] {
        println!("{title} — {} calls per run", load.total);
        println!(
            "  {:<20} {:>6} {:>13} {:>7} {:>7} {:>6} {:>7}   what Breakwater did",
            "", "calls", "errors", "p50", "p99", ">1s", "wall"
        );
        let r = load::run(direct, load).await;
        row("direct to the pods", &r, "-".into());
        let before = scrape(DRYRUN.1).await?;
        let r_dry = load::run(Via::Sidecar(addr(DRYRUN.0)), load).await;
        let after = scrape(DRYRUN.1).await?;
        row("sidecar, DryRun", &r_dry, dryrun_summary(&delta(&before, &after), load.host));
        let before = scrape(ENFORCE.1).await?;
        let r_on = load::run(Via::Sidecar(addr(ENFORCE.0)), load).await;
        let after = scrape(ENFORCE.1).await?;
        row("sidecar, enforced", &r_on, enforced_summary(&delta(&before, &after), load.host));
        println!("  {}", verdict(&r, &r_on));
        if load.host == "payments" {
            println!(
                "    (DryRun enforces nothing of the policy; the balancer alone, failure-aware with no policy, takes the"
            );
            println!(
                "     dead pod out at its first refused connection and steers away from the flaky one: what is left are"
            );
            println!(
                "     the 503s and stalls that the enforced retries, timeouts and breakers then absorb.)"
            );
        }
        failures("direct", &r);
        failures("enforced", &r_on);
        println!();
    }
    let spans = otlp
        .wait_for(Duration::from_secs(5), |s| s.iter().any(|x| x.has_event("retry scheduled")))
        .await
        .unwrap_or_else(|s| s);
    traces::show(&spans);
    println!(
        "Admin endpoints of the enforcing sidecar while it runs: http://{}/metrics /config /breakers",
        ENFORCE.1
    );
    println!("Stopping everything the demo started.");
    Ok(())
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn row(name: &str, r: &LoadResult, did: String) {
    let pct = if r.calls == 0 { 0.0 } else { 100.0 * r.errors() as f64 / r.calls as f64 };
    println!(
        "  {:<20} {:>6} {:>6} {:>5.1}% {:>7} {:>7} {:>6} {:>7}   {did}",
        name,
        r.calls,
        r.errors(),
        pct,
        ms(r.percentile(0.5)),
        ms(r.percentile(0.99)),
        r.slower_than(Duration::from_secs(1)),
        ms(r.wall)
    );
}

fn failures(name: &str, r: &LoadResult) {
    if r.failures.is_empty() {
        return;
    }
    let list: Vec<String> = r.failures.iter().map(|(k, v)| format!("{v} × {k}")).collect();
    println!("    {name} errors: {}", list.join(", "));
}

fn verdict(off: &LoadResult, on: &LoadResult) -> String {
    let slow = |r: &LoadResult| r.slower_than(Duration::from_secs(1));
    let waited = |r: &LoadResult| r.latencies.iter().sum::<Duration>();
    let errors = if on.errors() <= off.errors() {
        format!("{} of {} errors avoided", off.errors() - on.errors(), off.errors())
    } else {
        format!("{} calls refused fast instead of waiting", on.errors() - off.errors())
    };
    format!(
        "→ {errors}; calls over 1s: {} → {}; total time callers waited: {} → {}",
        slow(off),
        slow(on),
        ms(waited(off)),
        ms(waited(on))
    )
}

type Metrics = BTreeMap<String, f64>;

async fn scrape(admin: &str) -> anyhow::Result<Metrics> {
    let mut s =
        tokio::net::TcpStream::connect(admin).await.context("cannot reach the sidecar's admin port")?;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").await?;
    let mut text = String::new();
    s.read_to_string(&mut text).await?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.parse().ok()?))))
        .collect())
}

fn delta(before: &Metrics, after: &Metrics) -> Metrics {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).collect()
}

/// Sum of every series of `family` for `service` whose labels contain `filter`.
fn sum(m: &Metrics, family: &str, service: &str, filter: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| {
            k.starts_with(family) && k.contains(&format!("service=\"{service}.shop\"")) && k.contains(filter)
        })
        .map(|(_, v)| v)
        .sum()
}

fn enforced_summary(m: &Metrics, service: &str) -> String {
    let mut parts = Vec::new();
    let n = |v: f64| v.round() as u64;
    let retries = sum(m, "breakwater_retries_total", service, "");
    if retries > 0.0 {
        parts.push(format!("{} retries", n(retries)));
    }
    let trips = sum(m, "breakwater_breaker_transitions_total", service, "to=\"open\"");
    if trips > 0.0 {
        parts.push(format!("{} breaker trip(s)", n(trips)));
    }
    let cut = sum(m, "breakwater_timeouts_total", service, "");
    if cut > 0.0 {
        parts.push(format!("{} attempts cut by timeouts", n(cut)));
    }
    let shed = sum(m, "breakwater_bulkhead_rejected_total", service, "");
    if shed > 0.0 {
        parts.push(format!("{} shed at once (bulkhead-full)", n(shed)));
    }
    let waited = sum(m, "breakwater_bulkhead_queue_wait_seconds_count", service, "");
    if waited > 0.0 {
        parts.push(format!("{} queued", n(waited)));
    }
    let budget = sum(m, "breakwater_retry_budget_exhausted_total", service, "");
    if budget > 0.0 {
        parts.push(format!("{} retries refused by the budget", n(budget)));
    }
    if parts.is_empty() { "nothing needed".into() } else { parts.join(", ") }
}

fn dryrun_summary(m: &Metrics, service: &str) -> String {
    let decisions: Vec<String> = m
        .iter()
        .filter(|(k, v)| {
            k.starts_with("breakwater_dryrun_decisions_total")
                && k.contains(&format!("service=\"{service}.shop\""))
                && **v > 0.0
        })
        .filter_map(|(k, v)| {
            let d = k.split("decision=\"").nth(1)?.split('"').next()?;
            Some(format!("{} {d}", v.round() as u64))
        })
        .collect();
    if decisions.is_empty() {
        "would have done nothing".into()
    } else {
        format!("would have: {}", decisions.join(", "))
    }
}
