//! Sidecar injection: a pod as the API server is about to create it → the JSON Patch that adds
//! Breakwater to it. A pure function ([`inject`]) of the pod, the chart's [`Template`] and
//! whether the API server runs native sidecars; the webhook only wraps it in an
//! AdmissionReview.
//!
//! What a pod gets (names are fixed, so a re-invoked webhook recognises its own work and
//! answers with an empty patch):
//! - init container `breakwater-init`: `breakwater-sidecar init` (iptables), as root with only
//!   `NET_ADMIN` and `NET_RAW`, everything else dropped;
//! - `breakwater-proxy`, the proxy: a **native sidecar** (an init container with
//!   `restartPolicy: Always` and a startup probe, so the app's containers start once it
//!   listens and a Job's pod still completes), or — on API servers without native sidecars, or
//!   with `breakwater.dev/native-sidecar: "false"` — the first regular container with a
//!   `postStart` hook that waits until it listens. Non-root (the template's UID: iptables leaves
//!   its connections alone), read-only root filesystem, every capability dropped; the projected
//!   token for the config API, the CA from `breakwater-root-ca`, the downward-API identity and
//!   an emptyDir for the last good snapshot;
//! - no API token in either container ([`NO_API_TOKEN`]);
//! - probes and metrics on the probes port (every address) for the kubelet and Prometheus, and
//!   `/config` and `/breakers` there too with the template's `diagnostics` (for `kubectl
//!   breakwater`); the admin port stays on 127.0.0.1;
//! - label `breakwater.dev/injected: "true"` (the operator compiles snapshots for such pods).
//!
//! Per-pod annotations override the template ([`annotations`]); a value that cannot be used is
//! a warning and the default applies. A pod whose own containers, ports or volumes collide with
//! what injection adds is refused with the field that collides — never half-injected.

pub mod annotations;
mod injector;
pub mod template;
#[cfg(test)]
mod tests;
pub mod uninjected;
pub mod webhook;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

pub use self::{
    injector::{ConfigurationKeeper, Injector},
    template::Template,
};

/// The init container that installs the iptables rules.
pub const INIT: &str = "breakwater-init";
/// The proxy container.
pub const PROXY: &str = "breakwater-proxy";
/// The label injected pods carry (and the operator's default pod selector).
pub const INJECTED_LABEL: &str = "breakwater.dev/injected";
/// Volumes injection adds.
pub const VOLUMES: [&str; 5] =
    ["breakwater-token", "breakwater-ca", "breakwater-snapshot", "breakwater-xtables-lock", NO_API_TOKEN];
/// An empty volume mounted over [`API_TOKEN_DIR`] in both of our containers. The API server's
/// ServiceAccount admission runs again after the webhook and mounts the pod's API token into
/// every container that has nothing at that path; neither of ours talks to the API server (the
/// proxy's only credential is its own bound token for the config API), so each gets this
/// instead.
pub const NO_API_TOKEN: &str = "breakwater-no-api-token";
/// Where the ServiceAccount admission mounts the pod's API token.
pub const API_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Where the proxy keeps the last good snapshot.
pub const SNAPSHOT_DIR: &str = "/var/run/breakwater/snapshot";

/// Why a pod was left alone (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// It already has the proxy (the webhook was re-invoked, or the pod was injected before).
    AlreadyInjected,
    /// `hostNetwork: true`: iptables rules would change the node's network.
    HostNetwork,
    /// Annotated (or labelled) `breakwater.dev/inject: disabled`.
    OptedOut,
}

impl SkipReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::AlreadyInjected => "already-injected",
            SkipReason::HostNetwork => "host-network",
            SkipReason::OptedOut => "opted-out",
        }
    }
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Apply this patch; tell the user these warnings.
    Inject {
        /// JSON Patch operations against the pod as it was submitted.
        patch: json_patch::Patch,
        /// Annotation values that could not be used (the default applied instead).
        warnings: Vec<String>,
    },
    /// Leave the pod alone.
    Skip {
        /// Why.
        reason: SkipReason,
        /// For the Event.
        message: String,
    },
    /// The pod cannot be injected as it is: refuse it, naming the field.
    Refuse(String),
}

/// How the API server runs sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Native sidecars (init containers with `restartPolicy: Always`, Kubernetes ≥ 1.29).
    pub native_sidecars: bool,
}

/// The outcome for `pod` (see the module docs).
pub fn inject(pod: &Pod, template: &Template, options: Options) -> Outcome {
    let spec = pod.spec.clone().unwrap_or_default();
    let meta = &pod.metadata;
    let label = meta.labels.as_ref().and_then(|l| l.get(annotations::INJECT));
    let annotation = meta.annotations.as_ref().and_then(|a| a.get(annotations::INJECT));
    if label.or(annotation).is_some_and(|v| v == "disabled") {
        return Outcome::Skip {
            reason: SkipReason::OptedOut,
            message: format!("{} is \"disabled\"", annotations::INJECT),
        };
    }
    if spec.host_network == Some(true) {
        return Outcome::Skip {
            reason: SkipReason::HostNetwork,
            message: "the pod uses the node's network (hostNetwork): its iptables rules would be the node's"
                .into(),
        };
    }
    let init_containers = spec.init_containers.clone().unwrap_or_default();
    let has = |name: &str| {
        init_containers.iter().any(|c| c.name == name) || spec.containers.iter().any(|c| c.name == name)
    };
    if has(PROXY) {
        return Outcome::Skip {
            reason: SkipReason::AlreadyInjected,
            message: format!("it has {PROXY} already"),
        };
    }
    if let Some(problem) = collision(pod, template) {
        return Outcome::Refuse(format!("cannot add the Breakwater sidecar: {problem}"));
    }
    let (overrides, warnings) = annotations::Overrides::read(meta.annotations.as_ref());
    let native = options.native_sidecars && overrides.native_sidecar.unwrap_or(true);

    let before = match serde_json::to_value(pod) {
        Ok(v) => v,
        Err(e) => return Outcome::Refuse(format!("the pod cannot be read: {e}")),
    };
    let mut after = before.clone();
    let proxy = proxy_container(template, &overrides, native);
    let init = init_container(template, &overrides);
    let spec_json = after
        .as_object_mut()
        .map(|o| o.entry("spec").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut);
    let Some(spec_json) = spec_json else { return Outcome::Refuse("the pod has no spec".into()) };
    let mut inits = vec![init];
    if native {
        inits.push(proxy.clone());
    }
    if let Some(Value::Array(existing)) = spec_json.get("initContainers") {
        inits.extend(existing.iter().cloned());
    }
    spec_json.insert("initContainers".into(), Value::Array(inits));
    if !native {
        let mut containers = vec![proxy];
        if let Some(Value::Array(existing)) = spec_json.get("containers") {
            containers.extend(existing.iter().cloned());
        }
        spec_json.insert("containers".into(), Value::Array(containers));
    }
    let mut volumes = match spec_json.get("volumes") {
        Some(Value::Array(v)) => v.clone(),
        _ => Vec::new(),
    };
    volumes.extend(volumes_json());
    spec_json.insert("volumes".into(), Value::Array(volumes));
    let labels = after
        .as_object_mut()
        .map(|o| o.entry("metadata").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
        .map(|m| m.entry("labels").or_insert_with(|| json!({})));
    if let Some(Value::Object(labels)) = labels {
        labels.insert(INJECTED_LABEL.into(), json!("true"));
    }
    Outcome::Inject { patch: json_patch::diff(&before, &after), warnings }
}

/// What in the pod collides with what injection adds, as `field: why`.
fn collision(pod: &Pod, template: &Template) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let p = template.ports;
    let ours = [(p.outbound, "outbound"), (p.inbound, "inbound"), (p.admin, "admin"), (p.probes, "probes")];
    let lists = [
        ("initContainers", spec.init_containers.as_deref().unwrap_or_default()),
        ("containers", &spec.containers),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            if c.name == INIT {
                return Some(format!(
                    "spec.{list}[{i}].name: {INIT:?} is the name of Breakwater's init container"
                ));
            }
            for (j, port) in c.ports.iter().flatten().enumerate() {
                let Ok(number) = u16::try_from(port.container_port) else { continue };
                if let Some((_, what)) = ours.iter().find(|(n, _)| *n == number) {
                    return Some(format!(
                        "spec.{list}[{i}].ports[{j}].containerPort: {number} is the proxy's {what} port \
                         (change the app's port, or the chart's sidecar.ports)"
                    ));
                }
            }
        }
    }
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if VOLUMES.contains(&v.name.as_str()) {
            return Some(format!("spec.volumes[{i}].name: {:?} is a volume Breakwater adds", v.name));
        }
    }
    None
}

fn ports_csv(ports: &[u16]) -> String {
    ports.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
}

fn init_container(t: &Template, o: &annotations::Overrides) -> Value {
    let p = t.ports;
    let mut args = vec![
        "init".to_owned(),
        "--proxy-uid".into(),
        t.proxy_uid.to_string(),
        "--outbound-port".into(),
        p.outbound.to_string(),
        "--inbound-port".into(),
        p.inbound.to_string(),
        "--admin-port".into(),
        p.admin.to_string(),
    ];
    // The probes port is never redirected either: the kubelet reaches the proxy itself.
    let mut inbound_skip = vec![p.probes];
    inbound_skip.extend(t.exclude_inbound_ports.iter().chain(&o.exclude_inbound_ports));
    args.extend(["--skip-inbound-ports".into(), ports_csv(&inbound_skip)]);
    let outbound_skip: Vec<u16> =
        t.exclude_outbound_ports.iter().chain(&o.exclude_outbound_ports).copied().collect();
    if !outbound_skip.is_empty() {
        args.extend(["--skip-outbound-ports".into(), ports_csv(&outbound_skip)]);
    }
    json!({
        "name": INIT,
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        // iptables takes its lock in /run; the root filesystem stays read-only (linkerd-init does the same).
        "volumeMounts": [
            {"name": "breakwater-xtables-lock", "mountPath": "/run"},
            {"name": NO_API_TOKEN, "mountPath": API_TOKEN_DIR, "readOnly": true},
        ],
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    })
}

fn proxy_container(t: &Template, o: &annotations::Overrides, native: bool) -> Value {
    let p = t.ports;
    let log_level = o.log_level.clone().unwrap_or_else(|| t.log_level.clone());
    let mut resources = serde_json::to_value(&t.resources).unwrap_or_else(|_| json!({}));
    for (kind, resource, value) in &o.resources {
        resources[*kind][*resource] = json!(value);
    }
    let probe = |path: &str, period: u32, failures: u32| json!({"httpGet": {"path": path, "port": p.probes}, "periodSeconds": period, "failureThreshold": failures});
    let mut c = json!({
        "name": PROXY,
        "image": t.image,
        "imagePullPolicy": t.image_pull_policy,
        "args": [
            "run",
            "--control-plane", format!("https://{}", t.config_api),
            "--snapshot-dir", SNAPSHOT_DIR,
            "--probe-address", format!("0.0.0.0:{}", p.probes),
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "BREAKWATER_LOG", "value": log_level},
            {"name": "BREAKWATER_LOG_FORMAT", "value": t.log_format},
            {"name": "BREAKWATER_GRACE_PERIOD", "value": t.grace_period},
        ],
        "ports": [{"name": "bw-probes", "containerPort": p.probes, "protocol": "TCP"}],
        // The app starts once the proxy listens; it is ready once it has a snapshot.
        "startupProbe": probe("/live", 1, 120),
        "readinessProbe": probe("/ready", 2, 3),
        "livenessProbe": probe("/live", 10, 3),
        "resources": resources,
        "securityContext": {
            "runAsUser": t.proxy_uid,
            "runAsGroup": t.proxy_uid,
            "runAsNonRoot": true,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "breakwater-token", "mountPath": "/var/run/breakwater/token", "readOnly": true},
            {"name": "breakwater-ca", "mountPath": "/var/run/breakwater/ca", "readOnly": true},
            {"name": "breakwater-snapshot", "mountPath": SNAPSHOT_DIR},
            {"name": NO_API_TOKEN, "mountPath": API_TOKEN_DIR, "readOnly": true},
        ],
    });
    if t.diagnostics
        && let Some(args) = c["args"].as_array_mut()
    {
        args.push(json!("--probe-diagnostics"));
    }
    if !t.tracing.endpoint.is_empty() {
        let tr = &t.tracing;
        if let Some(env) = c["env"].as_array_mut() {
            env.extend([
                json!({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": tr.endpoint}),
                json!({"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": tr.protocol}),
                json!({"name": "OTEL_TRACES_SAMPLER", "value": tr.sampler}),
                json!({"name": "OTEL_TRACES_SAMPLER_ARG", "value": tr.sampler_arg.to_string()}),
            ]);
        }
    }
    if native {
        c["restartPolicy"] = json!("Always");
    } else {
        // No native sidecars: the kubelet starts the app's containers right after this one's
        // postStart hook returns, so the hook waits until the proxy listens.
        c["lifecycle"] = json!({"postStart": {"exec": {"command": [
            "breakwater-sidecar", "wait", "--url", format!("http://127.0.0.1:{}/live", p.probes), "--timeout", "120s",
        ]}}});
    }
    c
}

fn volumes_json() -> Vec<Value> {
    vec![
        json!({"name": "breakwater-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": breakwater_crds::snapshot::stream::TOKEN_AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}}),
        json!({"name": "breakwater-ca", "configMap": {"name": "breakwater-root-ca"}}),
        json!({"name": "breakwater-snapshot", "emptyDir": {"sizeLimit": "16Mi"}}),
        json!({"name": "breakwater-xtables-lock", "emptyDir": {}}),
        json!({"name": NO_API_TOKEN, "emptyDir": {}}),
    ]
}
