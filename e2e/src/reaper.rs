//! The reaper: a companion process that cleans up after the test process, whatever way it ends.
//!
//! The shared cluster lives in a `static`, and Rust never drops statics; a test binary can also
//! be killed outright. So each cluster starts `reaper.sh` with a pipe on its stdin whose write end
//! only the test process holds (Rust opens pipes close-on-exec, so no other child inherits it).
//! When the test process ends, the kernel closes the pipe; the reaper reads EOF and removes, by
//! id, the pods' processes and namespaces, the control-plane processes, the bridge, the iptables
//! chains and the cluster directory. It ignores SIGINT and SIGTERM, so Ctrl-C on `cargo test`
//! (sent to the whole process group) still leaves a clean machine.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{Error, Result, wait::blocking_until};

const SCRIPT: &str = include_str!("reaper.sh");

/// Set to `1` to keep the cluster directory (logs, certificates, kubeconfig) after the run.
pub const KEEP_ENV: &str = "BREAKWATER_E2E_KEEP";

/// The handle on a running reaper; see the module docs.
#[derive(Debug)]
pub struct Reaper {
    /// Holds the pipe's write end (the child's stdin). Closing it tells the reaper to clean up.
    child: Child,
}

impl Reaper {
    /// Starts a reaper for the cluster directory `dir`.
    pub fn spawn(dir: &Path) -> Result<Self> {
        let keep = if std::env::var(KEEP_ENV).is_ok_and(|v| v == "1") { "1" } else { "0" };
        let child = Command::new("bash")
            .arg("-c")
            .arg(SCRIPT)
            .arg("breakwater-e2e-reaper")
            .arg(dir)
            .arg(keep)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .map_err(Error::io("starting the e2e reaper (bash)"))?;
        Ok(Reaper { child })
    }

    /// Cleans up now: closes the pipe and waits (bounded) for the reaper to finish.
    pub fn finish(mut self) {
        drop(self.child.stdin.take());
        let child = &mut self.child;
        blocking_until(Duration::from_secs(30), || matches!(child.try_wait(), Ok(Some(_))));
    }
}
