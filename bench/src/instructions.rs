//! `--instructions`: user-space instructions per request, counted by valgrind's callgrind.
//!
//! Wall-clock figures on a shared 2-vCPU machine move by ±15 % from run to run, which hides a
//! 5 % change; an instruction count does not move with what else the machine does. Each proxy
//! runs under `valgrind --tool=callgrind --instr-atstart=no`; after a warm-up (pools filled)
//! counting is switched on with `callgrind_control -i on` for exactly `requests` requests from
//! oha (`-n`), then the counts are dumped (`callgrind_control -d`) and divided. Kernel time
//! (loopback TCP, epoll, wake-ups) is not in these counts: they price our code, not the syscalls.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    load::Protocol,
    procs,
    setups::{self, Env, Setup},
};

/// One setup's count.
#[derive(Debug, Clone, Serialize)]
pub struct Counted {
    /// Protocol of the load.
    pub protocol: Protocol,
    /// What was measured.
    pub setup: Setup,
    /// Requests counted.
    pub requests: u64,
    /// Instructions of every proxy of the setup (all threads) while they ran.
    pub instructions: u64,
}

impl Counted {
    /// Instructions per request.
    pub fn per_request(&self) -> f64 {
        self.instructions as f64 / self.requests as f64
    }
}

/// What the counting needs (instructions, or system calls in `syscalls`).
pub struct Counting<'a> {
    /// The setups (to count instructions, their proxies run under callgrind: `env.wrap` says so).
    pub env: &'a Env,
    /// oha.
    pub oha: &'a Path,
    /// CPUs of the load generator.
    pub load_cpus: &'a str,
    /// Connections the load uses.
    pub connections: u32,
    /// Requests before counting starts.
    pub warmup: u64,
    /// Requests counted.
    pub requests: u64,
}

/// The valgrind command line every proxy runs under; its dumps go to `dir`.
pub fn wrapper(dir: &Path) -> Vec<String> {
    vec![
        "valgrind".into(),
        "--tool=callgrind".into(),
        "--instr-atstart=no".into(),
        format!("--callgrind-out-file={}/callgrind.%p", dir.display()),
    ]
}

/// Starts every (protocol, setup) in turn (`direct` has no proxy and is skipped), counts it with
/// `count`, and stops it.
pub(crate) async fn each_setup<T>(
    c: &Counting<'_>,
    protocols: &[Protocol],
    setups: &[Setup],
    mut count: impl AsyncFnMut(&setups::Running, Protocol) -> anyhow::Result<T>,
) -> anyhow::Result<Vec<(Protocol, Setup, T)>> {
    let mut out = Vec::new();
    for &protocol in protocols {
        for &setup in setups.iter().filter(|s| **s != Setup::Direct) {
            eprintln!("[{} {}] starting", protocol.label(), setup.name());
            let running = setups::start(c.env, setup, protocol, 1).await?;
            let result = count(&running, protocol).await;
            running.stop().await;
            let counted = result.with_context(|| format!("{} over {}", setup.name(), protocol.label()))?;
            out.push((protocol, setup, counted));
        }
    }
    Ok(out)
}

/// Counts every (protocol, setup) in turn; `direct` has no proxy and is skipped.
pub async fn run(
    c: &Counting<'_>,
    dumps: &Path,
    protocols: &[Protocol],
    setups: &[Setup],
) -> anyhow::Result<Vec<Counted>> {
    let counted = each_setup(c, protocols, setups, async |running, protocol| {
        let instructions = count(c, dumps, running, protocol).await?;
        eprintln!("    {:.0} instructions per request", instructions as f64 / c.requests as f64);
        Ok(instructions)
    })
    .await?;
    Ok(counted
        .into_iter()
        .map(|(protocol, setup, instructions)| Counted {
            protocol,
            setup,
            requests: c.requests,
            instructions,
        })
        .collect())
}

async fn count(
    c: &Counting<'_>,
    dumps: &Path,
    running: &setups::Running,
    protocol: Protocol,
) -> anyhow::Result<u64> {
    load(c, running.entry, protocol, c.warmup).await.context("warm-up")?;
    for p in &running.proxies {
        control(&["-i", "on", &p.pid().to_string()]).await?;
    }
    load(c, running.entry, protocol, c.requests).await.context("counted load")?;
    let mut total = 0;
    for p in &running.proxies {
        control(&["-d", &p.pid().to_string()]).await?;
        total += dumped_total(dumps, p.pid())?;
    }
    Ok(total)
}

/// `callgrind_control ARGS`, which waits for the process to answer (bounded here).
async fn control(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("callgrind_control")
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("callgrind_control {} did not answer within 60s", args.join(" ")))?
    .context("cannot run callgrind_control (make bench-tools installs valgrind)")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `n` requests from oha over the setup's connections (`-n`: a count, not a duration).
pub(crate) async fn load(
    c: &Counting<'_>,
    entry: SocketAddr,
    protocol: Protocol,
    n: u64,
) -> anyhow::Result<()> {
    let mut cmd = procs::pinned(c.load_cpus, c.oha);
    cmd.args(["--no-tui", "--output-format", "json", "-n", &n.to_string(), "-c", &c.connections.to_string()]);
    cmd.args(["-t", "10s"]);
    if protocol == Protocol::H2c {
        cmd.arg("--http2");
    }
    cmd.args(["--connect-to", &format!("backend:80:{}:{}", entry.ip(), entry.port()), "http://backend/"]);
    let child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).spawn()?;
    // Under valgrind a proxy serves a few hundred requests per second: bound the run by that.
    let limit = Duration::from_secs(60 + n / 50);
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("oha -n {n} did not finish within {limit:?}: killed"))??;
    if !out.status.success() {
        bail!("oha failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let result = crate::load::parse(&out.stdout)?;
    if !result.failures.is_empty() {
        bail!("requests failed: {:?}", result.failures);
    }
    Ok(())
}

/// The instruction total of `pid`'s newest dump (`callgrind.<pid>.<n>`, its `totals:` line).
fn dumped_total(dir: &Path, pid: u32) -> anyhow::Result<u64> {
    let prefix = format!("callgrind.{pid}.");
    let newest: Option<(u32, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let seq = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((seq, e.path()))
        })
        .max_by_key(|(seq, _)| *seq);
    let (_, path) = newest.with_context(|| format!("no callgrind dump of pid {pid} in {}", dir.display()))?;
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{} has no totals line", path.display()))
}

/// The Markdown table: instructions per request, as ratios to HAProxy and to `bw-1hop`.
pub fn markdown(counted: &[Counted], header: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Breakwater: user-space instructions per request\n\n{header}\n");
    let _ = writeln!(s, "| protocol | setup | instructions / request | ×HAProxy | ×bw-1hop |");
    let _ = writeln!(s, "|---|---|--:|--:|--:|");
    for c in counted {
        let of = |setup: Setup| {
            counted.iter().find(|o| o.protocol == c.protocol && o.setup == setup).map(Counted::per_request)
        };
        let ratio = |base: Option<f64>| {
            base.map_or_else(|| "–".to_owned(), |b| format!("{:.2}×", c.per_request() / b))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {} | {} |",
            c.protocol.label(),
            c.setup.name(),
            c.per_request(),
            ratio(of(Setup::Haproxy)),
            ratio(of(Setup::Bw1Hop)),
        );
    }
    let _ = write!(s, "{}", route_matching(counted));
    s
}

/// What 50 routes on a Service cost over one, per protocol, against the goal (at most +10 %);
/// empty when the route setups were not counted.
fn route_matching(counted: &[Counted]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for protocol in Protocol::ALL {
        let of = |setup: Setup| {
            counted.iter().find(|o| o.protocol == protocol && o.setup == setup).map(Counted::per_request)
        };
        let (Some(one), Some(fifty)) = (of(Setup::Bw1HopRoute1), of(Setup::Bw1HopRoutes50)) else { continue };
        if s.is_empty() {
            let _ = writeln!(
                s,
                "\n**Route matching** (`bw-1hop-routes50` over `bw-1hop-route1`: 50 HTTPRoutes on the Service, \
                 every call matching the last in precedence order, against one route; goal: at most +10 %):\n"
            );
        }
        let extra = (fifty / one - 1.0) * 100.0;
        let verdict = if extra <= 10.0 { "within the goal" } else { "**over the goal**" };
        let _ = writeln!(
            s,
            "- {}: {fifty:.0} against {one:.0} instructions per request, {extra:+.1} % ({verdict}).",
            protocol.label()
        );
    }
    s
}
