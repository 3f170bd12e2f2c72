//! The real `kubectl` (built by `gobuild/build.sh` from the API server's own release), run against
//! a [`TestCluster`] where a user would type it.
//!
//! Each [`Kubectl`] has its own `HOME` (kubectl's discovery and HTTP caches live there), so
//! tests neither read nor write the user's kubectl state.

use std::{path::PathBuf, process::Stdio};

use tempfile::TempDir;

use crate::{Error, Result, TestCluster, helm::Output};

/// A `kubectl` with private state, pointed at a cluster's admin kubeconfig.
#[derive(Debug)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    home: TempDir,
    /// PATH for kubectl, with the directory of `kubectl-breakwater` first ([`Kubectl::with_plugin`]).
    path: Option<std::ffi::OsString>,
}

impl Kubectl {
    /// kubectl for `cluster`.
    pub fn for_cluster(cluster: &TestCluster) -> Result<Self> {
        let home = tempfile::Builder::new()
            .prefix("breakwater-e2e-kubectl-")
            .tempdir()
            .map_err(Error::io("creating kubectl's home"))?;
        Ok(Kubectl {
            binary: cluster.binaries().kubectl.clone(),
            kubeconfig: cluster.kubeconfig().to_path_buf(),
            home,
            path: None,
        })
    }

    /// The same kubectl, finding the workspace's `kubectl-breakwater` on PATH as a user's does
    /// after `cargo install --path kubectl`: `kubectl breakwater …` then runs it through kubectl's
    /// plugin discovery. The binary is the one `cargo build --workspace --bins` (make test) built
    /// beside this test's own executable.
    pub fn with_plugin(mut self) -> Result<Self> {
        let exe = std::env::current_exe().map_err(Error::io("locating the test executable"))?;
        // target/<profile>/deps/<test> → target/<profile>
        let dir = exe.parent().and_then(|deps| deps.parent()).map(PathBuf::from).unwrap_or_default();
        if !dir.join("kubectl-breakwater").is_file() {
            return Err(Error::Environment(format!(
                "{} is not built: run `cargo build -p breakwater-kubectl` (make test builds every binary first)",
                dir.join("kubectl-breakwater").display()
            )));
        }
        let mut paths = vec![dir];
        paths.extend(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()));
        self.path =
            Some(std::env::join_paths(paths).map_err(|e| Error::Other(format!("joining PATH: {e}")))?);
        Ok(self)
    }

    /// Runs `kubectl args...` (stdin from `input` when given) and returns what it printed,
    /// whether or not it succeeded.
    pub async fn output<I, S>(&self, args: I, input: Option<&str>) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        use tokio::io::AsyncWriteExt;
        let mut command = tokio::process::Command::new(&self.binary);
        if let Some(path) = &self.path {
            command.env("PATH", path);
        }
        command
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(Error::io(format!("running {}", self.binary.display())))?;
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes()).await.map_err(Error::io("writing kubectl's stdin"))?;
        }
        let out = child.wait_with_output().await.map_err(Error::io("waiting for kubectl"))?;
        Ok(Output {
            success: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs `kubectl args...`, failing unless it succeeds; returns stdout.
    pub async fn run<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        self.output(&args, None).await?.stdout_or_error("kubectl", &args)
    }
}
