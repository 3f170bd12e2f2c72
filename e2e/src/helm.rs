//! The real `helm` (built by `gobuild/build.sh`), run against a [`TestCluster`] or offline.
//!
//! Each [`Helm`] has its own `HELM_CONFIG_HOME`, `HELM_CACHE_HOME` and `HELM_DATA_HOME` in a
//! temporary directory, so tests neither read nor write the user's helm state.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
};

use tempfile::TempDir;

use crate::{Binaries, Error, Result, TestCluster, bins::workspace_root};

/// `charts/breakwater` in this repository.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts").join("breakwater")
}

/// What a helm command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Whether it exited with 0.
    pub success: bool,
    /// Its exit status (none when a signal ended it).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Standard output if the command succeeded; otherwise an error quoting `tool args...` and
    /// everything it printed.
    pub fn stdout_or_error(self, tool: &str, args: &[std::ffi::OsString]) -> Result<String> {
        if self.success {
            Ok(self.stdout)
        } else {
            Err(Error::Other(format!(
                "`{tool} {}` failed:\n{}{}",
                args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "),
                self.stdout,
                self.stderr
            )))
        }
    }
}

/// A `helm` with private state, optionally pointed at a cluster.
#[derive(Debug)]
pub struct Helm {
    binary: PathBuf,
    kubeconfig: Option<PathBuf>,
    home: TempDir,
}

impl Helm {
    /// Helm without a cluster (`lint`, `template`), building it first if needed.
    pub fn offline() -> Result<Self> {
        let binaries = Binaries::ensure()?;
        Self::new(binaries.helm, None)
    }

    /// Helm using `cluster`'s admin kubeconfig.
    pub fn for_cluster(cluster: &TestCluster) -> Result<Self> {
        Self::new(cluster.binaries().helm.clone(), Some(cluster.kubeconfig().to_path_buf()))
    }

    fn new(binary: PathBuf, kubeconfig: Option<PathBuf>) -> Result<Self> {
        let home = tempfile::Builder::new()
            .prefix("breakwater-e2e-helm-")
            .tempdir()
            .map_err(Error::io("creating helm's home"))?;
        Ok(Helm { binary, kubeconfig, home })
    }

    /// Runs `helm args...` and returns what it printed, whether or not it succeeded.
    pub async fn output<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = tokio::process::Command::new(&self.binary);
        command
            .args(args)
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_DATA_HOME", self.home.path().join("data"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        match &self.kubeconfig {
            Some(kc) => command.env("KUBECONFIG", kc),
            None => command.env("KUBECONFIG", self.home.path().join("no-cluster")),
        };
        let out = command.output().await.map_err(Error::io(format!("running {}", self.binary.display())))?;
        Ok(Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `helm args...`, failing unless it succeeds; returns stdout.
    pub async fn run<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.output(&args).await?.stdout_or_error("helm", &args)
    }

    /// A scratch directory owned by this helm (for values files and chart copies).
    pub fn scratch(&self) -> &Path {
        self.home.path()
    }
}
