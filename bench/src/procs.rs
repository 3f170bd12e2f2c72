//! The processes a benchmark starts — each pinned to its CPUs with `taskset`, its output in a
//! log file, killed by pid when its guard drops (also on error or panic) and by the kernel if
//! the harness itself is killed — and what `/proc` says about them: CPU time and resident memory.
//!
//! Why `/proc` and not `getrusage` or cgroups: the harness measures processes it did not start
//! as its direct children only (`taskset` execs in place, so the pid is the proxy's own), needs
//! no unsafe code and no cgroup setup, and `VmHWM` can be reset between runs
//! (`clear_refs` = 5), which gives the peak of each run rather than of the process's life.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    process::{Child, Command},
};

/// A child process pinned to `cpus`, killed (SIGKILL, by pid) when dropped.
pub struct Proc {
    /// What it is, for errors.
    name: String,
    /// The process; `kill_on_drop` makes dropping the guard kill it.
    child: Child,
    /// Its pid (the program's own: `taskset` execs in place).
    pid: u32,
    /// Its stdout and stderr.
    log: PathBuf,
}

impl Proc {
    /// Starts `program args` on `cpus` (a `taskset -c` list), its output going to
    /// `log_dir/<name>.log`.
    pub fn spawn(
        name: &str,
        cpus: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let child = pinned(cpus, program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("cannot start {name}: setpriv/taskset -c {cpus} {}", program.display())
            })?;
        let pid = child.id().with_context(|| format!("{name} exited at once"))?;
        Ok(Self { name: name.to_owned(), child, pid, log })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What it is.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); its log ends with:\n{}", self.name, self.log_tail());
        }
        Ok(())
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `addr` accepts connections (`within` at most), failing early if the process
    /// exits.
    pub async fn wait_listening(&mut self, addr: SocketAddr, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            self.check_alive()?;
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "{} did not listen on {addr} within {within:?}; its log ends with:\n{}",
            self.name,
            self.log_tail()
        )
    }

    /// Kills the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// `program` on `cpus`, killed by the kernel if the harness dies (even by SIGKILL, when no
/// guard runs): `setpriv --pdeathsig KILL taskset -c CPUS program`. Both exec in place, so the
/// child's pid is the program's. The parent-death signal follows the thread that spawned the
/// child, which is why the harness runs on a current-thread runtime.
pub fn pinned(cpus: &str, program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--pdeathsig", "KILL", "taskset", "-c", cpus]).arg(program);
    c
}

/// CPU time (user + system, all threads) of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may hold spaces and parentheses: fields are counted after the
    // last ')'. There, index 0 is field 3 (state), so utime (14) and stime (15) are 11 and 12.
    let rest =
        stat.rsplit_once(')').map(|(_, r)| r).with_context(|| format!("{path}: no ')' in {stat:?}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {} is not a number in {stat:?}", i + 3))
    };
    Ok(field(11)? + field(12)?)
}

/// Resident memory of `pid` now and at its peak (since start or the last [`reset_peak_rss`]), KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<Rss> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let kib = |key: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{path}: no {key} line"))
    };
    Ok(Rss { now: kib("VmRSS:")?, peak: kib("VmHWM:")?, anon: kib("RssAnon:")?, file: kib("RssFile:")? })
}

/// Resident memory, KiB.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    /// `VmRSS`.
    pub now: u64,
    /// `VmHWM`.
    pub peak: u64,
    /// `RssAnon`: heap, stacks, written data.
    pub anon: u64,
    /// `RssFile`: pages of the binary and libraries mapped in (code, read-only data).
    pub file: u64,
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0), so the next reading is this run's peak.
pub fn reset_peak_rss(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/clear_refs");
    std::fs::write(&path, "5").with_context(|| format!("cannot reset the peak RSS through {path}"))
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux this runs on).
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Sends one `GET /` with `Host: backend` over HTTP/1.1 to `addr` and returns the status, or an
/// error with what came back: proves a setup routes to the backend before it is measured.
pub async fn probe(addr: SocketAddr, path: &str, host: &str) -> anyhow::Result<u16> {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .with_context(|| format!("no answer from {addr} within 5s"))?
        .with_context(|| format!("GET {path} to {addr} failed"))?;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).with_context(|| {
        format!("{addr} answered no HTTP status: {:?}", text.chars().take(200).collect::<String>())
    })
}

/// A free loopback port (bound, read, released: another process could take it in between,
/// which makes the setup fail loudly rather than measure the wrong thing).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(l.local_addr()?)
}

/// Busy CPU time of the whole machine (every CPU: user, nice, system, irq, softirq, steal), in
/// clock ticks, from the first line of `/proc/stat`.
pub fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Ok(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
}

/// CPU time of this process and of its children that have been waited for (the load generator
/// runs), in clock ticks.
pub fn own_and_reaped_children_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("cannot read /proc/self/stat")?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("/proc/self/stat: no ')'")?;
    let fields: Vec<u64> = rest.split_whitespace().skip(11).take(4).filter_map(|f| f.parse().ok()).collect();
    Ok(fields.iter().sum())
}
