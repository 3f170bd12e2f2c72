//! What the injector adds, as the chart renders it into the `<release>-sidecar` ConfigMap
//! (`BREAKWATER_SIDECAR_CONFIG` names the file). Every field has the chart's default, so a
//! template missing a key still injects something sane; an unknown key is an error (a typo
//! must not be ignored silently).

use std::path::Path;

use serde::Deserialize;

/// The injection template.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Template {
    /// The sidecar image (it also runs the init container).
    #[serde(default = "default_image")]
    pub image: String,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default = "default_pull_policy")]
    pub image_pull_policy: String,
    /// The proxy's log level.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub log_format: String,
    /// The proxy's UID (and GID): iptables leaves its own connections alone by this UID.
    #[serde(default = "default_uid")]
    pub proxy_uid: i64,
    /// The proxy's ports.
    #[serde(default)]
    pub ports: Ports,
    /// Outbound destination ports never redirected.
    #[serde(default)]
    pub exclude_outbound_ports: Vec<u16>,
    /// Inbound ports never redirected.
    #[serde(default)]
    pub exclude_inbound_ports: Vec<u16>,
    /// The proxy's resources (a Kubernetes `ResourceRequirements`).
    #[serde(default)]
    pub resources: k8s_openapi::api::core::v1::ResourceRequirements,
    /// How long the proxy drains on SIGTERM (a duration: `30s`).
    #[serde(default = "default_grace")]
    pub grace_period: String,
    /// `host:port` of the config API (the operator's Service).
    pub config_api: String,
    /// Where the proxies export their spans (OTLP); no endpoint: tracing off.
    #[serde(default)]
    pub tracing: Tracing,
    /// Serve `/config` and `/breakers` on the probes port too (`--probe-diagnostics`), for
    /// `kubectl breakwater config` and `breakers` through the API server's pod proxy.
    #[serde(default = "default_diagnostics")]
    pub diagnostics: bool,
}

/// The proxies' trace export, passed to them as the standard `OTEL_*` variables.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tracing {
    /// The collector's OTLP endpoint, `http://HOST:PORT` (`OTEL_EXPORTER_OTLP_ENDPOINT`); empty:
    /// off.
    #[serde(default)]
    pub endpoint: String,
    /// `grpc` (port 4317) or `http/protobuf` (port 4318).
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// The sampler (`OTEL_TRACES_SAMPLER`): `parentbased_traceidratio` follows the caller's
    /// decision and samples `samplerArg` of the traces that start here.
    #[serde(default = "default_sampler")]
    pub sampler: String,
    /// The sampler's ratio, 0 to 1 (`OTEL_TRACES_SAMPLER_ARG`).
    #[serde(default = "default_sampler_arg")]
    pub sampler_arg: f64,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            endpoint: String::new(),
            protocol: default_protocol(),
            sampler: default_sampler(),
            sampler_arg: default_sampler_arg(),
        }
    }
}

/// The samplers the proxy knows (the OpenTelemetry SDK's names).
const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

impl Tracing {
    fn check(&self) -> Result<(), String> {
        let e = &self.endpoint;
        if !(e.is_empty() || e.starts_with("http://") || e.starts_with("https://")) {
            return Err(format!("tracing.endpoint: {e:?} must be http://HOST:PORT or https://HOST:PORT"));
        }
        if !matches!(self.protocol.as_str(), "grpc" | "http/protobuf") {
            return Err(format!("tracing.protocol: {:?} must be grpc or http/protobuf", self.protocol));
        }
        if !SAMPLERS.contains(&self.sampler.as_str()) {
            return Err(format!(
                "tracing.sampler: {:?} must be one of {}",
                self.sampler,
                SAMPLERS.join(", ")
            ));
        }
        if !(0.0..=1.0).contains(&self.sampler_arg) {
            return Err(format!("tracing.samplerArg: {} must be between 0 and 1", self.sampler_arg));
        }
        Ok(())
    }
}

/// The proxy's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ports {
    /// Outbound listener (on 127.0.0.1; the app's calls are redirected here).
    #[serde(default = "default_outbound")]
    pub outbound: u16,
    /// Inbound listener (calls to the app are redirected here).
    #[serde(default = "default_inbound")]
    pub inbound: u16,
    /// Admin (on 127.0.0.1 only: `/config`, `/breakers`, and the rest).
    #[serde(default = "default_admin")]
    pub admin: u16,
    /// Probes and metrics for the kubelet and Prometheus (on every address: `/live`, `/ready`,
    /// `/metrics`, and `/config` and `/breakers` with [`Template::diagnostics`]).
    #[serde(default = "default_probes")]
    pub probes: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { outbound: 15001, inbound: 15006, admin: 15000, probes: 15020 }
    }
}

fn default_image() -> String {
    "ghcr.io/breakwater-dev/breakwater/sidecar:0.1.0".into()
}
fn default_pull_policy() -> String {
    "IfNotPresent".into()
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_format() -> String {
    "json".into()
}
fn default_uid() -> i64 {
    2102
}
fn default_protocol() -> String {
    "grpc".into()
}
fn default_sampler() -> String {
    "parentbased_traceidratio".into()
}
fn default_sampler_arg() -> f64 {
    0.01
}
fn default_grace() -> String {
    "30s".into()
}
fn default_diagnostics() -> bool {
    true
}
fn default_outbound() -> u16 {
    Ports::default().outbound
}
fn default_inbound() -> u16 {
    Ports::default().inbound
}
fn default_admin() -> u16 {
    Ports::default().admin
}
fn default_probes() -> u16 {
    Ports::default().probes
}

impl Template {
    /// Parses a template (YAML).
    pub fn parse(text: &str) -> Result<Self, String> {
        let t: Template = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        let p = t.ports;
        let mut seen = vec![p.outbound, p.inbound, p.admin, p.probes];
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != 4 {
            return Err(format!(
                "ports: outbound {}, inbound {}, admin {} and probes {} must differ",
                p.outbound, p.inbound, p.admin, p.probes
            ));
        }
        if t.proxy_uid <= 0 {
            return Err(format!("proxyUid: {} — the proxy must not run as root", t.proxy_uid));
        }
        if humantime::parse_duration(&t.grace_period).is_err() {
            return Err(format!("gracePeriod: {:?} is not a duration (e.g. 30s)", t.grace_period));
        }
        t.tracing.check()?;
        Ok(t)
    }

    /// Reads and parses the template file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}
