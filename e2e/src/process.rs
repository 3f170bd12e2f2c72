//! Control-plane processes: started with their output in a log file, recorded for the
//! [`reaper`](crate::reaper), and stopped by pid — SIGTERM, a bounded wait, then SIGKILL — when
//! dropped.
//!
//! `std::process` rather than `tokio::process`: these processes outlive any one test's runtime
//! (the cluster is shared by every test of a binary), so they must not belong to one.

use std::{
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

use crate::{Error, Result, bins::tail, wait::blocking_until};

/// How long a process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running child process that is stopped when dropped.
#[derive(Debug)]
pub struct Process {
    name: String,
    log: PathBuf,
    /// Taken by `stop`; `None` once the process has been waited for.
    child: Option<Child>,
}

impl Process {
    /// Starts `command` with stdout and stderr appended to `<log_dir>/<name>.log`, and appends its
    /// pid to `pid_file` so the reaper can stop it if this process dies without dropping us.
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path, pid_file: &Path) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(Error::io(format!("creating {}", log.display())))?;
        let err = out.try_clone().map_err(Error::io("duplicating a log file handle"))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command.spawn().map_err(Error::io(format!("starting {name} ({command:?})")))?;
        let mut pids = OpenOptions::new()
            .create(true)
            .append(true)
            .open(pid_file)
            .map_err(Error::io(format!("opening {}", pid_file.display())))?;
        writeln!(pids, "{}", child.id()).map_err(Error::io("recording a pid"))?;
        Ok(Process { name: name.to_owned(), log, child: Some(child) })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The process's name, as given to [`Process::spawn`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }

    /// `Ok` while the process runs; [`Error::Exited`] with the end of its log once it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(Error::Other(format!("{} was stopped", self.name)));
        };
        match child.try_wait().map_err(Error::io(format!("waiting for {}", self.name)))? {
            None => Ok(()),
            Some(status) => Err(self.exited(status)),
        }
    }

    fn exited(&self, status: ExitStatus) -> Error {
        Error::Exited { name: self.name.clone(), status, log: self.log.clone(), tail: self.log_tail(30) }
    }

    /// Stops the process: SIGTERM, up to `grace` to exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        signal(child.id(), "TERM");
        let exited = blocking_until(grace, || matches!(child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// Sends `SIG<name>` to `pid` with kill(1): the crate forbids `unsafe`, and libc::kill is.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
