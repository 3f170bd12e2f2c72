//! The processes the demo starts, stopped when dropped (and by pid on Ctrl-C).

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// A child process killed when dropped.
pub struct Proc {
    child: Child,
}

impl Proc {
    /// Starts `bin` with `args`; `name` says what it is in errors.
    pub fn spawn(name: &str, bin: &PathBuf, args: &[String]) -> anyhow::Result<Self> {
        Self::spawn_with_env(name, bin, args, &[])
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        bin: &PathBuf,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let child = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", bin.display()))?;
        Ok(Self { child })
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The sibling binary `name` (built by `make demo` into the same target directory).
pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let p = me.with_file_name(name);
    if !p.exists() {
        bail!("{} is missing: run `make demo`, which builds it", p.display());
    }
    Ok(p)
}

/// Fails when something already listens on `addr` (a demo from another terminal, say).
pub async fn ensure_free(addr: SocketAddr) -> anyhow::Result<()> {
    if tokio::net::TcpStream::connect(addr).await.is_ok() {
        bail!("{addr} is already in use: is another demo running? Stop it and try again");
    }
    Ok(())
}

/// Waits until `addr` accepts connections, for at most 10s.
pub async fn wait_listening(addr: SocketAddr, what: &str) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{what} did not start listening on {addr} within 10s")
}
