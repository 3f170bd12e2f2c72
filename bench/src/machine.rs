//! Where and with what a benchmark ran: date, processor, kernel, memory, commit, the versions of
//! every program measured, how processes were pinned, and how loaded the machine was.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::run::Measurements;

/// Facts about the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// UTC, RFC 3339.
    pub date: String,
    /// Processor model.
    pub cpu: String,
    /// CPUs this process may use.
    pub cpus: usize,
    /// `MemTotal`.
    pub memory: String,
    /// Kernel release.
    pub kernel: String,
    /// `git rev-parse HEAD` (and whether tracked files differ from it).
    pub commit: String,
    /// `breakwater-sidecar --version` and where it came from.
    pub sidecar: String,
    /// `oha --version`.
    pub oha: String,
    /// `haproxy -v`, first line.
    pub haproxy: String,
    /// `rustc -V`.
    pub rustc: String,
    /// How processes were pinned, in a sentence.
    pub pinning: String,
    /// The harness's own command line.
    pub invocation: String,
}

impl Machine {
    /// Gathers the facts.
    pub fn gather(sidecar: &Path, oha: &Path, haproxy: &Path, pinning: String) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let commit = match output("git", &["rev-parse", "HEAD"]) {
            Some(c) => {
                let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                if dirty { format!("{c} (work tree has uncommitted changes)") } else { c }
            }
            None => "unknown (not a git work tree)".to_owned(),
        };
        Machine {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
                .unwrap_or_else(|| "unknown".to_owned()),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| "unknown".to_owned()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "unknown".to_owned()),
            commit,
            sidecar: format!(
                "{} ({})",
                output(&sidecar.display().to_string(), &["--version"])
                    .unwrap_or_else(|| "unknown".to_owned()),
                sidecar.display()
            ),
            oha: crate::load::version(oha),
            haproxy: output(&haproxy.display().to_string(), &["-v"])
                .and_then(|s| s.lines().next().map(str::to_owned))
                .unwrap_or_else(|| "unknown".to_owned()),
            rustc: output("rustc", &["-V"]).unwrap_or_else(|| "unknown".to_owned()),
            pinning,
            invocation: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }

    /// A warning when other work used the machine during the runs (more than 0.1 core on
    /// average, or more than 0.3 core in some run).
    pub fn load_warning(&self, m: &Measurements) -> Option<String> {
        let (lo, median, hi) = others_range(m)?;
        let (load_lo, load_hi) = load_range(m)?;
        (median > 0.1 || hi > 0.3).then(|| {
            format!(
                "The machine was shared: other work kept {lo:.2} to {hi:.2} cores busy during the runs \
                 (median {median:.2} of {} CPUs); the 1-minute load average before runs was \
                 {load_lo:.2} to {load_hi:.2}. Absolute figures are noisier than on an idle machine; ratios \
                 from the same rounds hold up better.",
                self.cpus
            )
        })
    }

    /// `(label, value)` pairs for the report.
    pub fn facts(&self, m: &Measurements) -> Vec<(String, String)> {
        let mut v = vec![
            ("date".to_owned(), self.date.clone()),
            ("processor".to_owned(), format!("{} ({} CPUs available)", self.cpu, self.cpus)),
            ("memory".to_owned(), self.memory.clone()),
            ("kernel".to_owned(), self.kernel.clone()),
            ("commit".to_owned(), self.commit.clone()),
            ("breakwater-sidecar".to_owned(), self.sidecar.clone()),
            ("load generator".to_owned(), self.oha.clone()),
            ("HAProxy".to_owned(), self.haproxy.clone()),
            ("rustc".to_owned(), self.rustc.clone()),
        ];
        if let Some((lo, hi)) = load_range(m) {
            v.push(("load average (1 min) before runs".to_owned(), format!("{lo:.2} to {hi:.2}")));
        }
        if let Some((lo, median, hi)) = others_range(m) {
            v.push((
                "other work during runs (cores, not counting the bench's own processes)".to_owned(),
                format!("{lo:.2} to {hi:.2}, median {median:.2}"),
            ));
        }
        v
    }
}

fn load_range(m: &Measurements) -> Option<(f64, f64)> {
    let loads: Vec<f64> = m.runs.iter().map(|r| r.loadavg[0]).collect();
    let lo = loads.iter().copied().reduce(f64::min)?;
    let hi = loads.iter().copied().reduce(f64::max)?;
    Some((lo, hi))
}

fn others_range(m: &Measurements) -> Option<(f64, f64, f64)> {
    let v: Vec<f64> = m.runs.iter().map(|r| r.other_cores).collect();
    let median = crate::report::median(v.clone())?;
    Some((v.iter().copied().reduce(f64::min)?, median, v.iter().copied().reduce(f64::max)?))
}

fn output(program: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(program).args(args).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}
