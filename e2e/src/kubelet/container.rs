//! One container as a local process: its image (pulled from the OCI archives `make images`
//! writes), its command line (the image's entrypoint and cmd, the pod's `command`/`args`, `$(VAR)`
//! expansion), its environment, how it is started inside the pod's network namespace on its own
//! copy of the image's root filesystem, and its readiness probe.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use k8s_openapi::{
    ByteString,
    api::core::v1::{ConfigMap, Container, EnvVar, Pod, Probe, Secret},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::{Api, Client, ResourceExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    process::{Child, Command},
};

use super::{
    images::ImageTable,
    security::Security,
    volumes::{self, Mount},
};

/// What is needed to start a container, resolved once when the pod starts.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub name: String,
    pub image: String,
    /// `repository@sha256:…` of the image pulled.
    pub image_id: String,
    /// The image's unpacked root filesystem (copied at each start, never written).
    pub image_rootfs: PathBuf,
    /// The program (`argv[0]`, as found in the image) and its arguments.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub readiness: Option<Probe>,
    /// Its startup probe: a native sidecar must pass it before the next container starts.
    pub startup: Option<Probe>,
    pub ports: BTreeMap<String, u16>,
    /// Bind mounts made in the container's mount namespace before it starts.
    pub mounts: Vec<Mount>,
    /// User, groups, capabilities, read-only root.
    pub security: Security,
}

impl Launch {
    /// Resolves `container`'s image, command and environment. `base_env` comes first (the
    /// kubelet's own variables and service links); the container's `env` may refer to it.
    pub async fn resolve(
        client: &Client,
        pod: &Pod,
        container: &Container,
        images: &ImageTable,
        base_env: &[(String, String)],
        volumes: &BTreeMap<String, PathBuf>,
    ) -> Result<Launch, (&'static str, String)> {
        let image = container.image.clone().unwrap_or_default();
        let pulled = {
            let (images, image) = (images.clone(), image.clone());
            tokio::task::spawn_blocking(move || images.pull(&image))
                .await
                .map_err(|e| ("ErrImagePull", e.to_string()))?
                .map_err(|e| ("ErrImagePull", e))?
        };
        let config = &pulled.config;
        // The image's environment first; the kubelet's and the container's own override it.
        let mut env: Vec<(String, String)> = config.env.clone();
        for (k, v) in base_env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
        for var in container.env.iter().flatten() {
            let value =
                env_value(client, pod, var, &env).await.map_err(|e| ("CreateContainerConfigError", e))?;
            env.retain(|(k, _)| k != &var.name);
            env.push((var.name.clone(), value));
        }
        if container.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(("CreateContainerConfigError", "envFrom is not supported by the e2e kubelet".into()));
        }
        let vars: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let expand_all = |list: &[String]| -> Vec<String> { list.iter().map(|s| expand(s, &vars)).collect() };
        // Kubernetes' rule: `command` replaces the entrypoint (and drops the image's cmd), `args`
        // replaces the cmd.
        let mut argv = match &container.command {
            Some(command) => expand_all(command),
            None => config.entrypoint.clone(),
        };
        match &container.args {
            Some(args) => argv.extend(expand_all(args)),
            None if container.command.is_none() => argv.extend(config.cmd.iter().cloned()),
            None => {}
        }
        let Some(program) = argv.first() else {
            return Err(("CreateContainerError", "no command specified".into()));
        };
        let path_var = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.as_str()).unwrap_or_default();
        find_program(&pulled.rootfs, program, path_var).map_err(|e| ("CreateContainerError", e))?;
        let working_dir = container
            .working_dir
            .clone()
            .or_else(|| Some(config.working_dir.clone()).filter(|w| !w.is_empty()))
            .unwrap_or_else(|| "/".to_owned());
        let ports = container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let mounts = volumes::mounts(container, volumes).map_err(|e| ("CreateContainerConfigError", e))?;
        let security =
            Security::resolve(pod, container, &config.user).map_err(|e| ("CreateContainerConfigError", e))?;
        Ok(Launch {
            name: container.name.clone(),
            image,
            image_id: pulled.image_id.clone(),
            image_rootfs: pulled.rootfs.clone(),
            argv,
            env,
            working_dir,
            readiness: container.readiness_probe.clone(),
            startup: container.startup_probe.clone(),
            ports,
            mounts,
            security,
        })
    }

    /// Starts the container inside `netns`: a fresh copy of the image's root filesystem under
    /// `dir` (a runtime's writable layer), then a script that mounts `/proc`, `/dev`, `/sys` and
    /// the volumes into it in the private mount namespace `ip netns exec` creates, and `exec`s
    /// `breakwater-e2e-exec`, which enters that root as the container's user and `exec`s the
    /// program — so the pid is the container's. Stdout and stderr are appended to `log`.
    pub fn spawn(&self, netns: &str, log: &Path, dir: &Path) -> std::io::Result<Child> {
        let rootfs = dir.join("rootfs").join(&self.name);
        if rootfs.exists() {
            std::fs::remove_dir_all(&rootfs)?;
        }
        std::fs::create_dir_all(rootfs.parent().unwrap_or(dir))?;
        let copied = std::process::Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&self.image_rootfs)
            .arg(&rootfs)
            .status()?;
        if !copied.success() {
            return Err(std::io::Error::other(format!(
                "copying {} to {} failed ({copied})",
                self.image_rootfs.display(),
                rootfs.display()
            )));
        }
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]);
        command.args([
            "bash",
            "-c",
            &volumes::launch_script(&rootfs, &self.mounts, &self.security, &self.working_dir, &self.env),
            "breakwater-e2e-container",
        ]);
        command
            .arg(exec_binary())
            .args(&self.argv)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        command.spawn()
    }

    /// Runs the readiness probe once against `ip`; `true` without a probe.
    pub async fn ready(&self, ip: std::net::Ipv4Addr) -> bool {
        let Some(probe) = &self.readiness else { return true };
        self.probe_once(probe, ip).await
    }

    /// Runs the startup probe once against `ip`; `true` without a probe.
    pub async fn started(&self, ip: std::net::Ipv4Addr) -> bool {
        let Some(probe) = &self.startup else { return true };
        self.probe_once(probe, ip).await
    }

    /// How long the startup probe may keep failing (`failureThreshold × periodSeconds`, the
    /// kubelet's defaults 3 × 10 s), and how often it runs.
    pub fn startup_budget(&self) -> Option<(Duration, Duration)> {
        let p = self.startup.as_ref()?;
        let period = Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64);
        Some((period * p.failure_threshold.unwrap_or(3).max(1) as u32, period))
    }

    async fn probe_once(&self, probe: &Probe, ip: std::net::Ipv4Addr) -> bool {
        let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        let port = |p: &IntOrString| match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => self.ports.get(name).copied(),
        };
        let check = async {
            if let Some(http) = &probe.http_get {
                let port = port(&http.port)?;
                let path = http.path.as_deref().unwrap_or("/");
                Some(http_ok(ip, port, path).await)
            } else if let Some(tcp) = &probe.tcp_socket {
                let port = port(&tcp.port)?;
                Some(TcpStream::connect((ip, port)).await.is_ok())
            } else {
                // exec and gRPC probes would need the container's filesystem view; not supported.
                None
            }
        };
        matches!(tokio::time::timeout(timeout, check).await, Ok(Some(true)))
    }

    /// How often to repeat the readiness probe once ready.
    pub fn probe_period(&self) -> Duration {
        let secs = self.readiness.as_ref().and_then(|p| p.period_seconds).unwrap_or(10).max(1);
        Duration::from_secs(secs as u64)
    }
}

/// GET `path` over HTTP/1.1; true for a 2xx or 3xx status, as the kubelet's HTTP probe.
async fn http_ok(ip: std::net::Ipv4Addr, port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect((ip, port)).await else { return false };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/e2e\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    let status = std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse::<u16>().ok());
    matches!(status, Some(200..=399))
}

/// The value of one `env` entry: a literal (with `$(VAR)` references expanded against the
/// variables defined before it) or a `valueFrom`.
async fn env_value(
    client: &Client,
    pod: &Pod,
    var: &EnvVar,
    defined: &[(String, String)],
) -> Result<String, String> {
    if let Some(value) = &var.value {
        let vars: BTreeMap<&str, &str> = defined.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        return Ok(expand(value, &vars));
    }
    let Some(from) = &var.value_from else { return Ok(String::new()) };
    let namespace = pod.namespace().unwrap_or_default();
    if let Some(field) = &from.field_ref {
        return super::downward::field_value(pod, &field.field_path)
            .ok_or_else(|| format!("env {}: unsupported fieldRef {}", var.name, field.field_path));
    }
    if let Some(sel) = &from.config_map_key_ref {
        let cm = Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .get_opt(&sel.name)
            .await
            .map_err(|e| format!("env {}: reading ConfigMap {}: {e}", var.name, sel.name))?;
        let value = cm.and_then(|cm| cm.data.and_then(|mut d| d.remove(&sel.key)));
        return match value {
            Some(v) => Ok(v),
            None if sel.optional == Some(true) => Ok(String::new()),
            None => Err(format!("env {}: ConfigMap {} has no key {}", var.name, sel.name, sel.key)),
        };
    }
    if let Some(sel) = &from.secret_key_ref {
        let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt(&sel.name)
            .await
            .map_err(|e| format!("env {}: reading Secret {}: {e}", var.name, sel.name))?;
        let value = secret.and_then(|s| s.data.and_then(|mut d| d.remove(&sel.key)));
        return match value {
            Some(ByteString(bytes)) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            None if sel.optional == Some(true) => Ok(String::new()),
            None => Err(format!("env {}: Secret {} has no key {}", var.name, sel.name, sel.key)),
        };
    }
    Err(format!("env {}: this valueFrom is not supported by the e2e kubelet", var.name))
}

/// Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` escapes a `$`, unknown
/// references stay as written.
pub(crate) fn expand(input: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = vars.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `breakwater-e2e-exec` of this workspace (`target/debug/`, or `$CARGO_TARGET_DIR/debug/`),
/// built with the crate's binaries.
fn exec_binary() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::bins::workspace_root().join("target"))
        .join("debug")
        .join("breakwater-e2e-exec")
}

/// Checks that `program` exists in the image at `rootfs` as the runtime would look it up (a path
/// as given, a bare name on `path_var`), following symbolic links inside the image; the error is
/// the runtime's message.
pub(crate) fn find_program(rootfs: &Path, program: &str, path_var: &str) -> Result<PathBuf, String> {
    let is_program = |path: &str| resolve_in(rootfs, path).filter(|p| p.is_file());
    if program.contains('/') {
        return is_program(program)
            .ok_or_else(|| format!("exec: {program:?}: stat {program}: no such file or directory"));
    }
    path_var
        .split(':')
        .filter(|dir| dir.starts_with('/'))
        .find_map(|dir| is_program(&format!("{dir}/{program}")))
        .ok_or_else(|| format!("exec: {program:?}: executable file not found in $PATH"))
}

/// `path` (absolute, inside the container) resolved under `rootfs` with symbolic links followed
/// as the container would see them (an absolute target is inside the image, never the host's).
fn resolve_in(rootfs: &Path, path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> =
        path.split('/').filter(|c| !c.is_empty()).rev().map(str::to_owned).collect();
    let mut resolved: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(component) = pending.pop() {
        match component.as_str() {
            "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate: PathBuf = std::iter::once(rootfs.to_path_buf())
            .chain(resolved.iter().map(PathBuf::from))
            .collect::<PathBuf>()
            .join(&component);
        match std::fs::read_link(&candidate) {
            Ok(target) => {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(target.split('/').filter(|c| !c.is_empty()).rev().map(str::to_owned));
            }
            Err(_) => resolved.push(component),
        }
    }
    let full: PathBuf =
        std::iter::once(rootfs.to_path_buf()).chain(resolved.into_iter().map(PathBuf::from)).collect();
    full.exists().then_some(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_replaces_known_variables_and_keeps_the_rest() {
        let vars = BTreeMap::from([("POD_IP", "198.18.1.2"), ("PORT", "8080")]);
        assert_eq!(expand("--listen=$(POD_IP):$(PORT)", &vars), "--listen=198.18.1.2:8080");
        assert_eq!(expand("$(MISSING) $$(PORT) $", &vars), "$(MISSING) $(PORT) $");
    }

    #[test]
    fn field_refs_cover_the_downward_api_the_kubelet_serves() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "n", "labels": {"app": "web"}},
            "spec": {"containers": [], "nodeName": "node"},
            "status": {"podIP": "198.18.1.9"}
        }))
        .expect("a valid pod");
        assert_eq!(super::super::downward::field_value(&pod, "metadata.name").as_deref(), Some("p"));
        assert_eq!(super::super::downward::field_value(&pod, "status.podIP").as_deref(), Some("198.18.1.9"));
        assert_eq!(
            super::super::downward::field_value(&pod, "metadata.labels['app']").as_deref(),
            Some("web")
        );
        assert_eq!(super::super::downward::field_value(&pod, "spec.nodeName").as_deref(), Some("node"));
        assert_eq!(super::super::downward::field_value(&pod, "status.podIPs"), None);
    }

    #[test]
    fn programs_are_found_in_the_image_never_on_the_host() {
        let root = tempfile::tempdir().expect("a temp dir");
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/local/bin")).expect("dirs");
        std::fs::write(r.join("usr/local/bin/tool"), b"").expect("file");
        std::os::unix::fs::symlink("usr/local", r.join("opt")).expect("relative link");
        std::fs::create_dir_all(r.join("usr/sbin")).expect("dirs");
        // An absolute link points into the image, not at the host's /usr/local/bin/tool.
        std::os::unix::fs::symlink("/usr/local/bin/tool", r.join("usr/sbin/alias")).expect("absolute link");
        std::os::unix::fs::symlink("/bin/sh", r.join("usr/sbin/sh")).expect("link to the host's shell");
        let path = "/usr/sbin:/usr/local/bin";
        assert_eq!(find_program(r, "tool", path), Ok(r.join("usr/local/bin/tool")));
        assert_eq!(find_program(r, "/opt/bin/tool", path), Ok(r.join("usr/local/bin/tool")));
        assert_eq!(find_program(r, "alias", path), Ok(r.join("usr/local/bin/tool")));
        assert_eq!(
            find_program(r, "sh", path),
            Err("exec: \"sh\": executable file not found in $PATH".into())
        );
        assert_eq!(
            find_program(r, "/bin/sh", path),
            Err("exec: \"/bin/sh\": stat /bin/sh: no such file or directory".into())
        );
        assert!(find_program(r, "tool", "").is_err(), "no PATH, no lookup");
    }
}
