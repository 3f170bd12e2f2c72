//! `--syscalls`: system calls per proxied request, counted by strace.
//!
//! A proxy's cost that instruction counts leave out is the kernel's, and the first lever on it is
//! how many times the proxy enters the kernel per request. Each proxy runs as it ships; after a
//! warm-up (pools filled) `strace -f -c -p PID` attaches to every thread, exactly `requests`
//! requests are sent, and the summary strace prints when interrupted is divided by them. strace
//! slows the traced process; the count does not depend on how fast it runs, except for
//! `epoll_wait`, which a slower proxy calls less often per request (it finds more work ready):
//! the table lists it apart.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    instructions::{Counting, each_setup, load},
    load::Protocol,
    setups::{self, Setup},
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
    /// Calls of every proxy of the setup, by system call.
    pub calls: Vec<(String, u64)>,
}

impl Counted {
    /// Every system call per request.
    pub fn per_request(&self) -> f64 {
        self.calls.iter().map(|(_, n)| n).sum::<u64>() as f64 / self.requests as f64
    }

    /// Per request, without the event-loop waits (`epoll_wait` and the like).
    pub fn per_request_without_waits(&self) -> f64 {
        self.calls.iter().filter(|(name, _)| !is_wait(name)).map(|(_, n)| n).sum::<u64>() as f64
            / self.requests as f64
    }
}

fn is_wait(name: &str) -> bool {
    name.starts_with("epoll_wait") || name.starts_with("epoll_pwait") || name == "futex"
}

/// Counts every (protocol, setup) in turn; `direct` has no proxy and is skipped.
pub async fn run(
    c: &Counting<'_>,
    out: &Path,
    protocols: &[Protocol],
    setups: &[Setup],
) -> anyhow::Result<Vec<Counted>> {
    let counted = each_setup(c, protocols, setups, async |running, protocol| {
        let calls = count(c, out, running, protocol).await?;
        let n: u64 = calls.iter().map(|(_, n)| n).sum();
        eprintln!("    {:.2} system calls per request", n as f64 / c.requests as f64);
        Ok(calls)
    })
    .await?;
    Ok(counted
        .into_iter()
        .map(|(protocol, setup, calls)| Counted { protocol, setup, requests: c.requests, calls })
        .collect())
}

async fn count(
    c: &Counting<'_>,
    out: &Path,
    running: &setups::Running,
    protocol: Protocol,
) -> anyhow::Result<Vec<(String, u64)>> {
    load(c, running.entry, protocol, c.warmup).await.context("warm-up")?;
    let mut tracers = Vec::new();
    for p in &running.proxies {
        let summary = out.join(format!("strace.{}", p.pid()));
        let child = tokio::process::Command::new("strace")
            .args(["-f", "-c", "-q", "-o"])
            .arg(&summary)
            .args(["-p", &p.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot run strace (make bench-tools installs it)")?;
        tracers.push((child, summary));
    }
    // strace reports each thread it attached to; give it the moment it needs before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    load(c, running.entry, protocol, c.requests).await.context("counted load")?;
    let mut calls: Vec<(String, u64)> = Vec::new();
    for (mut child, summary) in tracers {
        let pid = child.id().context("strace ended early")?;
        // SIGINT: strace detaches and writes its summary.
        let status = tokio::process::Command::new("kill").args(["-INT", &pid.to_string()]).status().await?;
        if !status.success() {
            bail!("cannot interrupt strace {pid}");
        }
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("strace did not stop within 30 s")??;
        let text = std::fs::read_to_string(&summary)
            .with_context(|| format!("no summary in {}", summary.display()))?;
        for (name, n) in parse(&text)? {
            match calls.iter_mut().find(|(c, _)| *c == name) {
                Some((_, total)) => *total += n,
                None => calls.push((name, n)),
            }
        }
    }
    calls.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    Ok(calls)
}

/// The rows of `strace -c`'s table: `% time  seconds  usecs/call  calls  [errors]  syscall`.
fn parse(text: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let mut rows = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 || fields[0].parse::<f64>().is_err() {
            continue; // header, rule or blank line
        }
        let Some(&name) = fields.last() else { continue };
        if name == "total" {
            continue;
        }
        let calls = fields[3].parse().with_context(|| format!("cannot read the calls in {line:?}"))?;
        rows.push((name.to_owned(), calls));
    }
    if rows.is_empty() {
        bail!("strace's summary has no rows:\n{text}");
    }
    Ok(rows)
}

/// The Markdown table: system calls per request, as ratios to HAProxy's.
pub fn markdown(counted: &[Counted], header: &str) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "# Breakwater: system calls per request\n\n{header}\n");
    let _ = writeln!(
        s,
        "| protocol | setup | calls / request | ×HAProxy | without epoll waits | ×HAProxy | the most frequent |"
    );
    let _ = writeln!(s, "|---|---|--:|--:|--:|--:|---|");
    for c in counted {
        let haproxy = counted.iter().find(|o| o.protocol == c.protocol && o.setup == Setup::Haproxy);
        let ratio = |f: fn(&Counted) -> f64| {
            haproxy.map_or_else(|| "–".to_owned(), |h| format!("{:.2}×", f(c) / f(h)))
        };
        let top: Vec<String> = c
            .calls
            .iter()
            .take(4)
            .map(|(name, n)| format!("{name} {:.2}", *n as f64 / c.requests as f64))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} | {:.2} | {} | {} |",
            c.protocol.label(),
            c.setup.name(),
            c.per_request(),
            ratio(Counted::per_request),
            c.per_request_without_waits(),
            ratio(Counted::per_request_without_waits),
            top.join(", "),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_strace_summaries_with_and_without_errors() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
                    ------ ----------- ----------- --------- --------- ----------------\n \
                    45.10    0.012000           1     20000           writev\n \
                    40.00    0.010000           0     20000      1000 recvfrom\n \
                    14.90    0.004000           0      6000           epoll_wait\n\
                    ------ ----------- ----------- --------- --------- ----------------\n\
                    100.00    0.026000           0     46000      1000 total\n";
        let rows = parse(text).expect("rows");
        assert_eq!(
            rows,
            [("writev".to_owned(), 20000), ("recvfrom".to_owned(), 20000), ("epoll_wait".to_owned(), 6000)]
        );
        let c = Counted { protocol: Protocol::Http1, setup: Setup::Bw1Hop, requests: 10000, calls: rows };
        assert_eq!(c.per_request(), 4.6);
        assert_eq!(c.per_request_without_waits(), 4.0);
    }
}
