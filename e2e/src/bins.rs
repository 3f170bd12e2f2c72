//! The control-plane binaries: where they are cached and how they are built.
//!
//! Versions live in `gobuild/versions.env`, read here at compile time and by `gobuild/build.sh`, so
//! the cache path (`${BREAKWATER_CACHE:-$HOME/.cache/breakwater}/k8s-v1.37.2/bin/...`) is computed
//! the same way on both sides. The cache is outside the work tree so `cargo clean` and fresh
//! clones keep it; Go's own module and build caches stay where Go puts them.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::{Error, Result};

const VERSIONS: &str = include_str!("../gobuild/versions.env");

fn version(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .expect("gobuild/versions.env defines K8S_VERSION, ETCD_VERSION and HELM_VERSION")
}

/// Kubernetes release of kube-apiserver, kube-controller-manager, kube-scheduler and kubectl (`v1.37.2`).
pub fn kubernetes_version() -> &'static str {
    version("K8S_VERSION")
}

/// etcd release (`v3.6.16`).
pub fn etcd_version() -> &'static str {
    version("ETCD_VERSION")
}

/// helm release (`v4.3.1`).
pub fn helm_version() -> &'static str {
    version("HELM_VERSION")
}

/// The root of this repository (the workspace), from this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("e2e/ lives inside the workspace").to_path_buf()
}

/// What a one-tool script under `e2e/gobuild/` (`SCRIPT path`) says it builds or fetches: a
/// binary or a directory, cached by `make MAKE`; an error naming that target when it is missing
/// (tests fail, never skip).
pub fn gobuild_path(script: &str, make: &str) -> Result<PathBuf> {
    let script = workspace_root().join("e2e/gobuild").join(script);
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("path")
        .output()
        .map_err(Error::io(format!("running {} path", script.display())))?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.exists() {
        return Err(Error::Environment(format!("{} is missing: run `make {make}`", path.display())));
    }
    Ok(path)
}

/// Paths of the binaries the harness runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `etcd`.
    pub etcd: PathBuf,
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`.
    pub kube_controller_manager: PathBuf,
    /// `kube-scheduler`.
    pub kube_scheduler: PathBuf,
    /// `kubectl`, of the same release as the API server.
    pub kubectl: PathBuf,
    /// `helm`.
    pub helm: PathBuf,
}

impl Binaries {
    /// The cache root: `$BREAKWATER_CACHE`, or `$HOME/.cache/breakwater`.
    pub fn cache_dir() -> PathBuf {
        match std::env::var_os("BREAKWATER_CACHE") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let home =
                    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/root"));
                home.join(".cache").join("breakwater")
            }
        }
    }

    /// Where the binaries are (or will be) once built.
    pub fn locate() -> Self {
        let cache = Self::cache_dir();
        let k8s = cache.join(format!("k8s-{}", kubernetes_version())).join("bin");
        Binaries {
            etcd: cache.join(format!("etcd-{}", etcd_version())).join("bin").join("etcd"),
            kube_apiserver: k8s.join("kube-apiserver"),
            kube_controller_manager: k8s.join("kube-controller-manager"),
            kube_scheduler: k8s.join("kube-scheduler"),
            kubectl: k8s.join("kubectl"),
            helm: cache.join(format!("helm-{}", helm_version())).join("bin").join("helm"),
        }
    }

    fn all(&self) -> [&Path; 6] {
        [
            &self.etcd,
            &self.kube_apiserver,
            &self.kube_controller_manager,
            &self.kube_scheduler,
            &self.kubectl,
            &self.helm,
        ]
    }

    /// Whether every binary is in the cache.
    pub fn present(&self) -> bool {
        self.all().iter().all(|p| p.is_file())
    }

    /// The binaries, building the missing ones first with `gobuild/build.sh` (blocking: minutes the
    /// first time, nothing afterwards). Fails with a clear message when `go` is not installed.
    pub fn ensure() -> Result<Self> {
        let bins = Self::locate();
        if bins.present() {
            return Ok(bins);
        }
        if Command::new("go").arg("version").output().is_err() {
            return Err(Error::Environment(format!(
                "`go` is not on PATH, and {} is missing. The harness builds etcd, kube-apiserver, \
                 kube-controller-manager, kube-scheduler and helm from their Go modules: install Go >= \
                 1.26 and run `make k8s-bins`.",
                bins.all()
                    .iter()
                    .find(|p| !p.is_file())
                    .map_or_else(String::new, |p| p.display().to_string())
            )));
        }
        let script = workspace_root().join("e2e").join("gobuild").join("build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(Error::io(format!("running {}", script.display())))?;
        let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
        output.push_str(&String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            return Err(Error::Build { status: out.status, output: tail(&output, 60) });
        }
        eprint!("{output}");
        if !bins.present() {
            return Err(Error::Other(format!(
                "gobuild/build.sh succeeded but binaries are missing: {bins:?}"
            )));
        }
        Ok(bins)
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
