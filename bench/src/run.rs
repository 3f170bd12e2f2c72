//! The measurement loop: rounds × protocols × setups × load shapes, each setup started fresh
//! for its round, warmed up, measured shape by shape, and stopped.
//!
//! Rounds are the outer loop (rather than repeating one setup three times in a row) so that a
//! burst of other work on the machine spreads over every setup instead of skewing one; the
//! report takes the median of the rounds.

use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    load::{LoadGen, LoadResult, Protocol, Shape},
    procs,
    setups::{self, Env, Running, Setup},
};

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// Setups, in order.
    pub setups: Vec<Setup>,
    /// Protocols, in order.
    pub protocols: Vec<Protocol>,
    /// Load shapes and how long each runs.
    pub shapes: Vec<(Shape, Duration)>,
    /// Load before the measured shapes (discarded): fills connection pools.
    pub warmup: Duration,
    /// Rounds (the report takes the median).
    pub rounds: usize,
    /// Connections the load uses.
    pub connections: u32,
}

/// One measured load run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// Round, from 1.
    pub round: usize,
    /// Protocol.
    pub protocol: Protocol,
    /// Setup.
    pub setup: Setup,
    /// Load shape.
    pub shape: Shape,
    /// `/proc/loadavg` (1, 5, 15 min) just before the run.
    pub loadavg: [f64; 3],
    /// What the load generator saw.
    pub load: LoadResult,
    /// CPU seconds (user + system) the proxies used during the run, summed over them.
    pub proxy_cpu_seconds: f64,
    /// Peak RSS during the run, KiB, of the largest proxy process (`VmHWM`, reset before).
    pub proxy_peak_rss_kib: Option<u64>,
    /// Cores kept busy by everything else on the machine during the run: all CPU time less the
    /// proxies', the backend's, the load generator's and the harness's. Near 0 on a quiet machine.
    pub other_cores: f64,
    /// Cores kept busy by the load side (backend, load generator, harness) during the run: 1.0
    /// per load CPU means the load side, not the proxy, limited a saturation run.
    #[serde(default)]
    pub load_cores: f64,
}

impl Run {
    /// Proxy CPU seconds per 1000 completed requests (none without a proxy).
    pub fn cpu_per_1000(&self) -> Option<f64> {
        (self.setup.hops() > 0 && self.load.requests > 0)
            .then(|| self.proxy_cpu_seconds * 1000.0 / self.load.requests as f64)
    }

    /// Cores the proxies kept busy on average (1.0: one core all the time).
    pub fn proxy_cores(&self) -> Option<f64> {
        (self.setup.hops() > 0 && self.load.seconds > 0.0).then(|| self.proxy_cpu_seconds / self.load.seconds)
    }
}

/// Resident memory of a setup's proxies once started and ready, before load.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Idle {
    /// Round.
    pub round: usize,
    /// Protocol.
    pub protocol: Protocol,
    /// Setup.
    pub setup: Setup,
    /// The largest proxy process's `VmRSS`, KiB.
    pub rss_kib: u64,
    /// Of which `RssAnon` (heap, stacks), KiB.
    #[serde(default)]
    pub anon_kib: u64,
    /// Of which `RssFile` (the binary's and libraries' pages), KiB.
    #[serde(default)]
    pub file_kib: u64,
}

/// Everything measured.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Measurements {
    /// Every load run.
    pub runs: Vec<Run>,
    /// Idle memory, per started setup.
    pub idle: Vec<Idle>,
    /// How each setup's proxies were started (first round, first protocol).
    pub commands: Vec<(Setup, Vec<String>)>,
    /// Whether `VmHWM` could be reset before each run (else peaks are since the proxy started).
    pub peak_reset: bool,
}

/// Runs the plan against `env` (whose backend is already up).
pub async fn run(
    plan: &Plan,
    env: &Env,
    load: &LoadGen,
    backend_pid: u32,
    tick: f64,
) -> anyhow::Result<Measurements> {
    let mut m = Measurements { peak_reset: true, ..Default::default() };
    let total = plan.rounds * plan.protocols.len() * plan.setups.len();
    let mut n = 0;
    for round in 1..=plan.rounds {
        for &protocol in &plan.protocols {
            for &setup in &plan.setups {
                n += 1;
                eprintln!(
                    "[{n}/{total}] round {round}, {}, {} (load average {:.2})",
                    protocol.label(),
                    setup.name(),
                    loadavg()[0]
                );
                let mut running = setups::start(env, setup, protocol, round)
                    .await
                    .with_context(|| format!("cannot start {} for {}", setup.name(), protocol.label()))?;
                if !m.commands.iter().any(|(s, _)| *s == setup) {
                    m.commands.push((setup, running.commands.clone()));
                }
                let case = Case { round, protocol, setup, backend_pid };
                let measured = measure(plan, load, &mut running, case, tick, &mut m).await;
                running.stop().await;
                measured
                    .with_context(|| format!("{} over {}, round {round}", setup.name(), protocol.label()))?;
            }
        }
    }
    Ok(m)
}

/// Where the loop is.
#[derive(Debug, Clone, Copy)]
struct Case {
    round: usize,
    protocol: Protocol,
    setup: Setup,
    backend_pid: u32,
}

async fn measure(
    plan: &Plan,
    load: &LoadGen,
    running: &mut Running,
    case: Case,
    tick: f64,
    m: &mut Measurements,
) -> anyhow::Result<()> {
    let Case { round, protocol, setup, backend_pid } = case;
    let pids: Vec<u32> = running.proxies.iter().map(|p| p.pid()).collect();
    if !pids.is_empty() {
        let mut largest: Option<procs::Rss> = None;
        for &pid in &pids {
            let r = procs::rss_kib(pid)?;
            if largest.is_none_or(|l| r.now > l.now) {
                largest = Some(r);
            }
        }
        if let Some(r) = largest {
            m.idle.push(Idle { round, protocol, setup, rss_kib: r.now, anon_kib: r.anon, file_kib: r.file });
        }
    }
    if !plan.warmup.is_zero() {
        let warm = plan.shapes.first().map_or(Shape::Fixed(1000), |(s, _)| *s);
        load.run(running.entry, protocol, warm, plan.warmup).await.context("warm-up")?;
    }
    for &(shape, duration) in &plan.shapes {
        let before_load = loadavg();
        for &pid in &pids {
            if procs::reset_peak_rss(pid).is_err() {
                m.peak_reset = false;
            }
        }
        let cpu_before = ticks(&pids)?;
        let ours_before = procs::cpu_ticks(backend_pid)? + procs::own_and_reaped_children_ticks()?;
        let machine_before = procs::machine_busy_ticks()?;
        let window = tokio::time::Instant::now();
        let result = load.run(running.entry, protocol, shape, duration).await?;
        let machine_after = procs::machine_busy_ticks()?;
        let window = window.elapsed().as_secs_f64();
        let cpu_after = ticks(&pids)?;
        let ours_after = procs::cpu_ticks(backend_pid)? + procs::own_and_reaped_children_ticks()?;
        let load_side = ours_after.saturating_sub(ours_before);
        let ours = (cpu_after + ours_after).saturating_sub(cpu_before + ours_before);
        let others = machine_after.saturating_sub(machine_before).saturating_sub(ours);
        let mut peak = None;
        for &pid in &pids {
            let p = procs::rss_kib(pid)?.peak;
            peak = Some(peak.map_or(p, |q: u64| q.max(p)));
        }
        for p in &mut running.proxies {
            p.check_alive()?;
        }
        if result.failed > 0 {
            eprintln!(
                "    {}: {} of {} requests failed: {:?}",
                shape.label(),
                result.failed,
                result.requests,
                result.failures
            );
        }
        eprintln!(
            "    {:>10}: {:>8.0} req/s  p50 {:>6.0} µs  p99 {:>6.0} µs  p99.9 {:>6.0} µs",
            shape.label(),
            result.rps,
            result.p50_us,
            result.p99_us,
            result.p999_us
        );
        m.runs.push(Run {
            round,
            protocol,
            setup,
            shape,
            loadavg: before_load,
            load: result,
            proxy_cpu_seconds: cpu_after.saturating_sub(cpu_before) as f64 / tick,
            proxy_peak_rss_kib: peak,
            other_cores: if window > 0.0 { others as f64 / tick / window } else { 0.0 },
            load_cores: if window > 0.0 { load_side as f64 / tick / window } else { 0.0 },
        });
    }
    Ok(())
}

fn ticks(pids: &[u32]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for &pid in pids {
        sum += procs::cpu_ticks(pid)?;
    }
    Ok(sum)
}

/// `/proc/loadavg`: 1, 5 and 15 minutes (zeros if unreadable).
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut v = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [v.next().unwrap_or(0.0), v.next().unwrap_or(0.0), v.next().unwrap_or(0.0)]
}
