//! Per-pod annotations that override the injection template. A value that cannot be used is a
//! warning (shown by `kubectl` when the pod is created) and the template's default applies:
//! a typo never blocks a deployment, and never passes silently.
//!
//! | annotation | value | effect |
//! |---|---|---|
//! | `breakwater.dev/inject` | `disabled` | the pod is left alone |
//! | `breakwater.dev/exclude-outbound-ports` | `5432,6379` | calls to these ports bypass the proxy |
//! | `breakwater.dev/exclude-inbound-ports` | `9100` | calls to these ports of the pod bypass the proxy |
//! | `breakwater.dev/proxy-cpu-request`, `…-cpu-limit` | a quantity (`100m`) | the proxy's CPU |
//! | `breakwater.dev/proxy-memory-request`, `…-memory-limit` | a quantity (`64Mi`) | the proxy's memory |
//! | `breakwater.dev/log-level` | `trace`…`error` | the proxy's log level |
//! | `breakwater.dev/native-sidecar` | `true`/`false` | `false`: the proxy as a regular container even where native sidecars exist |

use std::collections::BTreeMap;

/// Opt-out (also read as a label, as the webhook's object selector does).
pub const INJECT: &str = "breakwater.dev/inject";
/// Outbound ports not redirected.
pub const EXCLUDE_OUTBOUND_PORTS: &str = "breakwater.dev/exclude-outbound-ports";
/// Inbound ports not redirected.
pub const EXCLUDE_INBOUND_PORTS: &str = "breakwater.dev/exclude-inbound-ports";
/// The proxy's log level.
pub const LOG_LEVEL: &str = "breakwater.dev/log-level";
/// Native sidecar on or off.
pub const NATIVE_SIDECAR: &str = "breakwater.dev/native-sidecar";
/// Resource annotations: (annotation, `requests`/`limits`, `cpu`/`memory`).
pub const RESOURCES: [(&str, &str, &str); 4] = [
    ("breakwater.dev/proxy-cpu-request", "requests", "cpu"),
    ("breakwater.dev/proxy-cpu-limit", "limits", "cpu"),
    ("breakwater.dev/proxy-memory-request", "requests", "memory"),
    ("breakwater.dev/proxy-memory-limit", "limits", "memory"),
];
const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// The overrides a pod asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// Extra outbound ports not redirected.
    pub exclude_outbound_ports: Vec<u16>,
    /// Extra inbound ports not redirected.
    pub exclude_inbound_ports: Vec<u16>,
    /// The proxy's log level.
    pub log_level: Option<String>,
    /// Native sidecar on or off.
    pub native_sidecar: Option<bool>,
    /// (`requests`/`limits`, `cpu`/`memory`, quantity).
    pub resources: Vec<(&'static str, &'static str, String)>,
}

impl Overrides {
    /// Reads the overrides from a pod's annotations; the warnings name each annotation whose
    /// value was not used, and why.
    pub fn read(annotations: Option<&BTreeMap<String, String>>) -> (Self, Vec<String>) {
        let mut o = Overrides::default();
        let mut warnings = Vec::new();
        let Some(a) = annotations else { return (o, warnings) };
        let mut ports = |key: &str, out: &mut Vec<u16>| {
            let Some(v) = a.get(key) else { return };
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                match part.parse::<u16>() {
                    Ok(p) if p > 0 => out.push(p),
                    _ => warnings.push(format!(
                        "metadata.annotations[{key}]: {part:?} is not a port (1-65535); ignored"
                    )),
                }
            }
        };
        ports(EXCLUDE_OUTBOUND_PORTS, &mut o.exclude_outbound_ports);
        ports(EXCLUDE_INBOUND_PORTS, &mut o.exclude_inbound_ports);
        if let Some(v) = a.get(LOG_LEVEL) {
            if LEVELS.contains(&v.as_str()) {
                o.log_level = Some(v.clone());
            } else {
                warnings.push(format!(
                    "metadata.annotations[{LOG_LEVEL}]: {v:?} is not one of {}; the default applies",
                    LEVELS.join(", ")
                ));
            }
        }
        if let Some(v) = a.get(NATIVE_SIDECAR) {
            match v.as_str() {
                "true" => o.native_sidecar = Some(true),
                "false" => o.native_sidecar = Some(false),
                _ => warnings.push(format!(
                    "metadata.annotations[{NATIVE_SIDECAR}]: {v:?} is not \"true\" or \"false\"; the default applies"
                )),
            }
        }
        for (key, kind, resource) in RESOURCES {
            let Some(v) = a.get(key) else { continue };
            if is_quantity(v) {
                o.resources.push((kind, resource, v.clone()));
            } else {
                warnings.push(format!(
                    "metadata.annotations[{key}]: {v:?} is not a quantity (e.g. 100m, 64Mi); the default applies"
                ));
            }
        }
        if let Some(v) = a.get(INJECT).filter(|v| !["enabled", "disabled"].contains(&v.as_str())) {
            warnings.push(format!(
                "metadata.annotations[{INJECT}]: {v:?} is not \"enabled\" or \"disabled\"; ignored"
            ));
        }
        (o, warnings)
    }
}

/// A Kubernetes resource quantity: a decimal number with an optional suffix (`100m`, `0.5`,
/// `64Mi`, `1G`, `2e3`).
fn is_quantity(v: &str) -> bool {
    let digits = v.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &v[digits.len()..];
    let number_ok = !digits.is_empty()
        && digits.chars().filter(|c| *c == '.').count() <= 1
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().any(|c| c.is_ascii_digit());
    let suffixes = ["", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    number_ok && suffixes.contains(&suffix)
}
