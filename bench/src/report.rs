//! From runs to what a person reads: medians over rounds, ratios to `direct` and to `haproxy`
//! from the same run, the goals of issue 5 checked against them, a Markdown report and JSON.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::{
    load::{Protocol, Shape},
    machine::Machine,
    run::{Measurements, Plan},
    setups::Setup,
};

/// Medians over rounds of one (protocol, setup, shape).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// Protocol.
    pub protocol: Protocol,
    /// Setup.
    pub setup: Setup,
    /// Load shape.
    pub shape: Shape,
    /// Rounds measured.
    pub rounds: usize,
    /// Completed requests per second.
    pub rps: f64,
    /// Latency percentiles, µs.
    pub p50_us: f64,
    /// 90th.
    pub p90_us: f64,
    /// 99th.
    pub p99_us: f64,
    /// 99.9th.
    pub p999_us: f64,
    /// Proxy CPU seconds per 1000 requests (summed over a setup's proxies).
    pub cpu_per_1000: Option<f64>,
    /// Cores the proxies kept busy.
    pub proxy_cores: Option<f64>,
    /// Cores the load side (backend, oha, harness) kept busy.
    pub load_cores: f64,
    /// Peak RSS of the largest proxy process, MB (10^6 bytes).
    pub peak_rss_mb: Option<f64>,
    /// Failed requests over every round (non-2xx answers and errors): should be 0.
    pub failed: u64,
}

/// Idle memory of one (protocol, setup), median over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleRow {
    /// Protocol.
    pub protocol: Protocol,
    /// Setup.
    pub setup: Setup,
    /// RSS of the largest proxy process once ready, MB.
    pub rss_mb: f64,
    /// Of which anonymous memory (heap, stacks), MB.
    pub anon_mb: f64,
    /// Of which file-backed pages (the binary's and libraries' code), MB.
    pub file_mb: f64,
}

/// One goal of the issue, measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Goal {
    /// What.
    pub what: String,
    /// The target, as written.
    pub target: String,
    /// Protocol.
    pub protocol: Protocol,
    /// Measured value (in the target's unit).
    pub value: Option<f64>,
    /// Unit.
    pub unit: String,
    /// Met.
    pub met: Option<bool>,
}

/// The whole report, also written as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Where and with what it ran.
    pub machine: Machine,
    /// What ran.
    pub plan: Plan,
    /// Medians.
    pub rows: Vec<Row>,
    /// Idle memory.
    pub idle: Vec<IdleRow>,
    /// Goals.
    pub goals: Vec<Goal>,
    /// Raw measurements (every round).
    pub measurements: Measurements,
    /// The backend's and the load generator's command lines (one example per shape and protocol).
    pub load_commands: Vec<String>,
}

/// The median of `v` (mean of the middle two for an even count); `None` when empty.
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

const MB: f64 = 1e6 / 1024.0; // KiB per MB

impl Report {
    /// Summarizes `m`.
    pub fn new(machine: Machine, plan: Plan, m: Measurements, load_commands: Vec<String>) -> Self {
        let mut rows = Vec::new();
        for &protocol in &plan.protocols {
            for &setup in &plan.setups {
                for &(shape, _) in &plan.shapes {
                    let runs: Vec<_> = m
                        .runs
                        .iter()
                        .filter(|r| r.protocol == protocol && r.setup == setup && r.shape == shape)
                        .collect();
                    if runs.is_empty() {
                        continue;
                    }
                    let med =
                        |f: &dyn Fn(&crate::run::Run) -> f64| median(runs.iter().map(|r| f(r)).collect());
                    let med_opt = |f: &dyn Fn(&crate::run::Run) -> Option<f64>| {
                        median(runs.iter().filter_map(|r| f(r)).collect())
                    };
                    rows.push(Row {
                        protocol,
                        setup,
                        shape,
                        rounds: runs.len(),
                        rps: med(&|r| r.load.rps).unwrap_or(0.0),
                        p50_us: med(&|r| r.load.p50_us).unwrap_or(0.0),
                        p90_us: med(&|r| r.load.p90_us).unwrap_or(0.0),
                        p99_us: med(&|r| r.load.p99_us).unwrap_or(0.0),
                        p999_us: med(&|r| r.load.p999_us).unwrap_or(0.0),
                        cpu_per_1000: med_opt(&|r| r.cpu_per_1000()),
                        proxy_cores: med_opt(&|r| r.proxy_cores()),
                        load_cores: med(&|r| r.load_cores).unwrap_or(0.0),
                        peak_rss_mb: med_opt(&|r| r.proxy_peak_rss_kib.map(|k| k as f64 / MB)),
                        failed: runs.iter().map(|r| r.load.failed).sum(),
                    });
                }
            }
        }
        let mut idle = Vec::new();
        for &protocol in &plan.protocols {
            for &setup in &plan.setups {
                let of = |f: fn(&crate::run::Idle) -> u64| {
                    median(
                        m.idle
                            .iter()
                            .filter(|i| i.protocol == protocol && i.setup == setup)
                            .map(|i| f(i) as f64 / MB)
                            .collect(),
                    )
                };
                if let Some(rss_mb) = of(|i| i.rss_kib) {
                    let anon_mb = of(|i| i.anon_kib).unwrap_or(0.0);
                    let file_mb = of(|i| i.file_kib).unwrap_or(0.0);
                    idle.push(IdleRow { protocol, setup, rss_mb, anon_mb, file_mb });
                }
            }
        }
        let mut report =
            Report { machine, plan, rows, idle, goals: Vec::new(), measurements: m, load_commands };
        report.goals = report.goals();
        report
    }

    /// The row for (protocol, setup, shape).
    pub fn row(&self, protocol: Protocol, setup: Setup, shape: Shape) -> Option<&Row> {
        self.rows.iter().find(|r| r.protocol == protocol && r.setup == setup && r.shape == shape)
    }

    fn idle_rss(&self, protocol: Protocol, setup: Setup) -> Option<f64> {
        self.idle.iter().find(|r| r.protocol == protocol && r.setup == setup).map(|r| r.rss_mb)
    }

    /// The issue's goals, per protocol, for every setup that was measured.
    fn goals(&self) -> Vec<Goal> {
        let mut goals = Vec::new();
        let at_1000 = Shape::Fixed(1000);
        for &protocol in &self.plan.protocols {
            let row = |s: Setup, shape: Shape| self.row(protocol, s, shape);
            let mut goal =
                |what: &str, target: &str, unit: &str, value: Option<f64>, ok: &dyn Fn(f64) -> bool| {
                    goals.push(Goal {
                        what: what.to_owned(),
                        target: target.to_owned(),
                        protocol,
                        value,
                        unit: unit.to_owned(),
                        // "report" rows measure without a goal: no verdict.
                        met: if target == "report" { None } else { value.map(ok) },
                    });
                };
            let direct = row(Setup::Direct, at_1000);
            let added = |s: Setup, f: fn(&Row) -> f64| {
                let (d, r) = (direct?, row(s, at_1000)?);
                Some((f(r) - f(d)) / f64::from(s.hops()))
            };
            let p50: fn(&Row) -> f64 = |r| r.p50_us;
            let p99: fn(&Row) -> f64 = |r| r.p99_us;
            for (pct, of, limit) in [("p50", p50, 50.0), ("p99", p99, 250.0)] {
                for (setup, hops) in [(Setup::Bw1Hop, "1 hop"), (Setup::Bw2Hop, "2 hops ÷ 2")] {
                    goal(
                        &format!("{pct} added per hop at 1000 rps ({hops})"),
                        &format!("≤ {limit} µs"),
                        "µs",
                        added(setup, of),
                        &|v| v <= limit,
                    );
                }
            }
            let sat = |s: Setup| row(s, Shape::Saturation).map(|r| r.rps);
            let ratio = |a: Option<f64>, b: Option<f64>| Some(a? / b?).filter(|v| v.is_finite());
            goal(
                "saturation throughput, 1 hop, × HAProxy",
                "≥ 1.0×",
                "×",
                ratio(sat(Setup::Bw1Hop), sat(Setup::Haproxy)),
                &|v| v >= 1.0,
            );
            goal(
                "saturation throughput, 1 hop with full policy, × HAProxy",
                "≥ 1.0×",
                "×",
                ratio(sat(Setup::Bw1HopPolicy), sat(Setup::Haproxy)),
                &|v| v >= 1.0,
            );
            let cpu = row(Setup::Bw1Hop, at_1000).and_then(|r| r.cpu_per_1000);
            goal(
                "CPU per 1000 rps, 1 hop (cores = CPU s per 1000 requests)",
                "≤ 0.05 core",
                "core",
                cpu,
                &|v| v <= 0.05,
            );
            let idle = [Setup::Bw1Hop, Setup::Bw1HopPolicy, Setup::Bw2Hop]
                .iter()
                .filter_map(|&s| self.idle_rss(protocol, s))
                .reduce(f64::max);
            goal("RSS idle (largest sidecar)", "≤ 10 MB", "MB", idle, &|v| v <= 10.0);
            let busy = [Setup::Bw1Hop, Setup::Bw1HopPolicy, Setup::Bw2Hop]
                .iter()
                .filter_map(|&s| row(s, at_1000).and_then(|r| r.peak_rss_mb))
                .reduce(f64::max);
            goal("RSS peak at 1000 rps (largest sidecar)", "≤ 20 MB", "MB", busy, &|v| v <= 20.0);
            // Throughput given up against bw-1hop at saturation, in %.
            let throughput_cost = |s: Setup| ratio(sat(s), sat(Setup::Bw1Hop)).map(|r| (1.0 - r) * 100.0);
            goal(
                "throughput cost of the full policy vs none (saturation)",
                "≤ 5 %",
                "%",
                throughput_cost(Setup::Bw1HopPolicy),
                &|v| v <= 5.0,
            );
            // CPU per request is steadier than a saturation median on a shared machine (it does not
            // move with how the load side was scheduled): the same costs, per request.
            let cpu_sat = |s: Setup| row(s, Shape::Saturation).and_then(|r| r.cpu_per_1000);
            let cpu_cost = |s: Setup| ratio(cpu_sat(s), cpu_sat(Setup::Bw1Hop)).map(|r| (r - 1.0) * 100.0);
            goal(
                "CPU per request added by the full policy vs none (saturation)",
                "report",
                "%",
                cpu_cost(Setup::Bw1HopPolicy),
                &|_| true,
            );
            // Tracing (issue 7): reported, with no goal of its own beyond "off costs nothing".
            for (setup, what) in [(Setup::Bw1HopTrace100, "100 %"), (Setup::Bw1HopTrace1, "1 %")] {
                goal(
                    &format!("throughput cost of tracing {what} of requests vs off (saturation)"),
                    "report",
                    "%",
                    throughput_cost(setup),
                    &|_| true,
                );
                let p50 = match (row(setup, at_1000), row(Setup::Bw1Hop, at_1000)) {
                    (Some(t), Some(off)) => Some(t.p50_us - off.p50_us),
                    _ => None,
                };
                goal(&format!("p50 added by tracing {what} at 1000 rps"), "report", "µs", p50, &|_| true);
                goal(
                    &format!("CPU per request added by tracing {what} vs off (saturation)"),
                    "report",
                    "%",
                    cpu_cost(setup),
                    &|_| true,
                );
            }
        }
        goals
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "# Breakwater benchmark, {}\n", m.date);
        let _ = writeln!(
            s,
            "Same backend (`breakwater-fault`), same load (`oha`, {} connections), same run: no proxy \
             (`direct`), HAProxy, and the Breakwater sidecar with one hop (no policy, and every policy layer \
             on without any triggering) and two hops (client sidecar outbound → server sidecar inbound). \
             Every figure is the **median of {} round(s)**; ratios compare with `direct` and `haproxy` from \
             this run. Latency is measured from when each request was due (oha `--latency-correction`).\n",
            self.plan.connections, self.plan.rounds
        );
        let _ = writeln!(s, "{}\n", m.pinning);
        if let Some(warning) = m.load_warning(&self.measurements) {
            let _ = writeln!(s, "> **{warning}**\n");
        }
        if self.rows.iter().any(|r| r.failed > 0) {
            let _ = writeln!(
                s,
                "> **Some requests failed** (column `failed`): those setups' figures are suspect.\n"
            );
        }

        let _ = writeln!(s, "## Goals (issue 5)\n");
        let _ = write!(s, "| goal | target |");
        for p in &self.plan.protocols {
            let _ = write!(s, " {} |", p.label());
        }
        let _ = write!(s, "\n|---|---|");
        for _ in &self.plan.protocols {
            let _ = write!(s, "---|");
        }
        s.push('\n');
        let mut seen = Vec::new();
        for g in &self.goals {
            if seen.contains(&g.what) {
                continue;
            }
            seen.push(g.what.clone());
            let _ = write!(s, "| {} | {} |", g.what, g.target);
            for &p in &self.plan.protocols {
                let cell = self.goals.iter().find(|x| x.what == g.what && x.protocol == p).map_or(
                    "–".to_owned(),
                    |x| match (x.value, x.met) {
                        (Some(v), Some(met)) => {
                            format!("{} {}", fmt_unit(v, &x.unit), if met { "✅ met" } else { "❌ missed" })
                        }
                        (Some(v), None) => fmt_unit(v, &x.unit),
                        _ => "not measured".to_owned(),
                    },
                );
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }

        for &(shape, duration) in &self.plan.shapes {
            let Shape::Fixed(rate) = shape else { continue };
            for &p in &self.plan.protocols {
                let _ = writeln!(
                    s,
                    "\n## {} at {rate} requests/s ({} connections, {:.2} s per round)\n",
                    p.label(),
                    self.plan.connections,
                    duration.as_secs_f64()
                );
                let _ = writeln!(
                    s,
                    "Latency in µs. *added* = minus `direct`; ×direct and ×HAProxy are ratios of the same \
                     percentile. CPU: proxy CPU seconds per 1000 requests (all proxies of the setup). RSS: peak \
                     of the largest proxy process during the run.\n"
                );
                let _ = writeln!(
                    s,
                    "| setup | p50 | p90 | p99 | p99.9 | p50 added | p99 added | p50 ×direct | p99 ×direct | \
                     p50 ×HAProxy | p99 ×HAProxy | CPU s/1000 req | CPU ×HAProxy | peak RSS MB | RSS ×HAProxy | \
                     failed |"
                );
                let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
                let d = self.row(p, Setup::Direct, shape);
                let h = self.row(p, Setup::Haproxy, shape);
                for &setup in &self.plan.setups {
                    let Some(r) = self.row(p, setup, shape) else { continue };
                    let _ = writeln!(
                        s,
                        "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        setup.name(),
                        r.p50_us,
                        r.p90_us,
                        r.p99_us,
                        r.p999_us,
                        diff(Some(r.p50_us), d.map(|d| d.p50_us)),
                        diff(Some(r.p99_us), d.map(|d| d.p99_us)),
                        times(Some(r.p50_us), d.map(|d| d.p50_us)),
                        times(Some(r.p99_us), d.map(|d| d.p99_us)),
                        times(Some(r.p50_us), h.map(|h| h.p50_us)),
                        times(Some(r.p99_us), h.map(|h| h.p99_us)),
                        opt(r.cpu_per_1000, 4),
                        times(r.cpu_per_1000, h.and_then(|h| h.cpu_per_1000)),
                        opt(r.peak_rss_mb, 1),
                        times(r.peak_rss_mb, h.and_then(|h| h.peak_rss_mb)),
                        r.failed
                    );
                }
            }
        }

        if let Some(&(_, duration)) = self.plan.shapes.iter().find(|(s, _)| *s == Shape::Saturation) {
            let _ = writeln!(
                s,
                "\n## Saturation ({} connections, as fast as they go, {:.2} s per round)\n",
                self.plan.connections,
                duration.as_secs_f64()
            );
            let _ = writeln!(
                s,
                "*proxy cores*: CPU the proxies used ÷ wall time; *load cores*: the same for the backend, oha \
                 and the harness, which share the load CPU. A proxy near 1.0 per process was the bottleneck; \
                 load cores near 1.0 mean the load side was, and the throughput ratio then also reflects the \
                 latency each proxy adds to the closed loop of {} connections.\n",
                self.plan.connections
            );
            let _ = writeln!(
                s,
                "| protocol | setup | req/s | ×direct | ×HAProxy | proxy cores | load cores | CPU s/1000 req | \
                 CPU ×HAProxy | peak RSS MB | failed |"
            );
            let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
            for &p in &self.plan.protocols {
                let d = self.row(p, Setup::Direct, Shape::Saturation);
                let h = self.row(p, Setup::Haproxy, Shape::Saturation);
                for &setup in &self.plan.setups {
                    let Some(r) = self.row(p, setup, Shape::Saturation) else { continue };
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.0} | {} | {} | {} | {:.2} | {} | {} | {} | {} |",
                        p.label(),
                        setup.name(),
                        r.rps,
                        times(Some(r.rps), d.map(|d| d.rps)),
                        times(Some(r.rps), h.map(|h| h.rps)),
                        opt(r.proxy_cores, 2),
                        r.load_cores,
                        opt(r.cpu_per_1000, 4),
                        times(r.cpu_per_1000, h.and_then(|h| h.cpu_per_1000)),
                        opt(r.peak_rss_mb, 1),
                        r.failed
                    );
                }
            }
        }

        let _ = writeln!(s, "\n## Idle memory\n");
        let _ = writeln!(
            s,
            "RSS of the largest proxy process once started and ready (one request served), MB, and what it \
             is made of: *anon* (heap, stacks, written data) and *file* (pages of the binary and the libraries \
             mapped in, which processes running the same binary share).\n"
        );
        let _ = write!(s, "| setup |");
        for p in &self.plan.protocols {
            let _ = write!(s, " {0} RSS | ×HAProxy | {0} anon | {0} file |", p.label());
        }
        let _ = write!(s, "\n|---|");
        for _ in &self.plan.protocols {
            let _ = write!(s, "--:|--:|--:|--:|");
        }
        s.push('\n');
        for &setup in self.plan.setups.iter().filter(|s| s.hops() > 0) {
            let _ = write!(s, "| {} |", setup.name());
            for &p in &self.plan.protocols {
                let row = self.idle.iter().find(|r| r.protocol == p && r.setup == setup);
                let v = row.map(|r| r.rss_mb);
                let _ = write!(
                    s,
                    " {} | {} | {} | {} |",
                    opt(v, 1),
                    times(v, self.idle_rss(p, Setup::Haproxy)),
                    opt(row.map(|r| r.anon_mb), 1),
                    opt(row.map(|r| r.file_mb), 1)
                );
            }
            s.push('\n');
        }

        let _ = writeln!(s, "\n## Machine and versions\n");
        for (k, v) in m.facts(&self.measurements) {
            let _ = writeln!(s, "- **{k}**: {v}");
        }
        if !self.measurements.peak_reset {
            let _ =
                writeln!(s, "- peak RSS could not be reset between runs: peaks are since each proxy started");
        }

        let _ = writeln!(s, "\n## Commands\n");
        let _ = writeln!(
            s,
            "Ports are picked free on 127.0.0.1 at run time (`$PORT`: the setup's entry: the backend, HAProxy's \
             bind or the client sidecar's outbound listener); configuration files are written to a temporary \
             directory and shown below with illustrative ports. Every process runs under \
             `setpriv --pdeathsig KILL`, so none outlives the harness.\n"
        );
        let _ = writeln!(s, "```sh");
        let _ = writeln!(s, "{}", m.invocation);
        for c in &self.load_commands {
            let _ = writeln!(s, "{c}");
        }
        for (setup, cmds) in &self.measurements.commands {
            for c in cmds {
                let _ = writeln!(s, "# {}\n{c}", setup.name());
            }
        }
        let _ = writeln!(s, "```");
        let _ = writeln!(s, "\n## Configurations\n");
        for (what, lang, text) in crate::setups::example_configs() {
            let _ = writeln!(s, "{what}:\n\n```{lang}\n{text}```\n");
        }
        s
    }
}

fn fmt_unit(v: f64, unit: &str) -> String {
    match unit {
        "µs" => format!("{v:.0} µs"),
        "×" => format!("{v:.2}×"),
        "core" => format!("{v:.4} core"),
        "MB" => format!("{v:.1} MB"),
        "%" => format!("{v:.1} %"),
        _ => format!("{v:.3} {unit}"),
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.decimals$}"))
}

/// `a - b` with a sign.
fn diff(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:+.0}", a - b),
        _ => "–".to_owned(),
    }
}

/// `a / b` as `1.23×`.
fn times(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
    }

    #[test]
    fn ratios_and_differences_render_with_dashes_when_missing() {
        assert_eq!(times(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(times(Some(3.0), None), "–");
        assert_eq!(diff(Some(120.0), Some(100.0)), "+20");
    }
}
