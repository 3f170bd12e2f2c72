//! One container as a local process: its command line (image → binary, `command`/`args`, `$(VAR)`
//! expansion), its environment, how it is started inside the pod's network namespace, and its
//! readiness probe.

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
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
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
        let binary = images.resolve_for_any_user(&image).map_err(|e| ("ErrImagePull", e))?;
        let mut env: Vec<(String, String)> = base_env.to_vec();
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
        let expand_all = |list: Option<&Vec<String>>| -> Vec<String> {
            list.into_iter().flatten().map(|s| expand(s, &vars)).collect()
        };
        let mut args = Vec::new();
        if let Some(command) = &container.command {
            let program = command.first().map(String::as_str).unwrap_or_default();
            let wanted = binary.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let given = Path::new(program).file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if given != wanted {
                return Err((
                    "CreateContainerError",
                    format!("command[0] {program:?} is not the image's binary {wanted:?}"),
                ));
            }
            args.extend(expand_all(Some(command)).into_iter().skip(1));
        }
        args.extend(expand_all(container.args.as_ref()));
        let ports = container
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
            .collect();
        let mounts = volumes::mounts(container, volumes).map_err(|e| ("CreateContainerConfigError", e))?;
        let security = Security::resolve(pod, container).map_err(|e| ("CreateContainerConfigError", e))?;
        Ok(Launch {
            name: container.name.clone(),
            image,
            binary,
            args,
            env,
            working_dir: container.working_dir.clone(),
            readiness: container.readiness_probe.clone(),
            startup: container.startup_probe.clone(),
            ports,
            mounts,
            security,
        })
    }

    /// Starts the process inside `netns`, through a script that makes its mounts in the
    /// private mount namespace `ip netns exec` creates and applies its security settings, then
    /// `exec`s the binary (so the pid is the container's), with stdout and stderr appended to
    /// `log`.
    pub fn spawn(&self, netns: &str, log: &Path, default_dir: &Path) -> std::io::Result<Child> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]);
        command.args([
            "bash",
            "-c",
            &volumes::launch_script(&self.mounts, &self.security),
            "breakwater-e2e-container",
        ]);
        command
            .arg(&self.binary)
            .args(&self.args)
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.working_dir.as_deref().map(Path::new).unwrap_or(default_dir))
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
}
