//! The `SidecarConfig` document of a local-mode file: where the sidecar listens, which pod it
//! serves, and the Services it can call. Policies come beside it as ordinary
//! `CommunicationPolicy` documents.
//!
//! ```yaml
//! apiVersion: breakwater.dev/v1alpha1
//! kind: SidecarConfig
//! listeners: {outbound: 127.0.0.1:15001, inbound: 0.0.0.0:15006, admin: 127.0.0.1:15000}
//! inbound:
//!   app: 127.0.0.1:8080
//!   service: {name: payments, namespace: shop}
//! services:
//!   - name: payments
//!     namespace: shop
//!     ports: [80]
//!     endpoints: ["127.0.0.1:8081", "127.0.0.1:8082"]
//!     addresses: ["198.19.0.10:80"]
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `kind` of the sidecar's own document.
pub const KIND: &str = "SidecarConfig";

/// The sidecar's own settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SidecarConfig {
    /// `breakwater.dev/v1alpha1`.
    #[serde(default)]
    pub api_version: String,
    /// `SidecarConfig`.
    #[serde(default)]
    pub kind: String,
    /// Where the sidecar listens.
    #[serde(default)]
    pub listeners: Listeners,
    /// The application this sidecar stands in front of. Optional in local mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Inbound>,
    /// Who this pod is, for matching policies' `sources`. Default: the namespace of
    /// `inbound.service` (or `default`), no labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodIdentity>,
    /// The Services this pod may call.
    #[serde(default)]
    pub services: Vec<ServiceEntry>,
    /// Protocol-handling limits.
    #[serde(default)]
    pub proxy: ProxySettings,
    /// OpenTelemetry traces (read at start; a change needs a restart). Unset fields fall back
    /// to the standard `OTEL_*` variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telemetry: Option<crate::telemetry::TelemetryConfig>,
}

/// Listener addresses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Listeners {
    /// Outbound (the application's calls). Default `127.0.0.1:15001`.
    #[serde(default = "default_outbound")]
    pub outbound: String,
    /// Inbound (calls to the application). Default `0.0.0.0:15006`; only opened when `inbound`
    /// is configured.
    #[serde(default = "default_inbound")]
    pub inbound: String,
    /// Admin: `/live`, `/ready`, `/metrics`, `/config`, `/breakers`. Default `127.0.0.1:15000`.
    #[serde(default = "default_admin")]
    pub admin: String,
}

fn default_outbound() -> String {
    "127.0.0.1:15001".to_owned()
}
fn default_inbound() -> String {
    "0.0.0.0:15006".to_owned()
}
fn default_admin() -> String {
    "127.0.0.1:15000".to_owned()
}

impl Default for Listeners {
    fn default() -> Self {
        Self { outbound: default_outbound(), inbound: default_inbound(), admin: default_admin() }
    }
}

/// The local application and the Service it backs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    /// Where the application listens, `host:port`; inbound calls are forwarded there.
    pub app: String,
    /// The Service this pod serves: policies targeting it apply their `bulkhead.inbound` here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// What the application speaks, as a Kubernetes `appProtocol` (`http`, `kubernetes.io/h2c`,
    /// `grpc`, `tcp`, ...): calls in are then taken as that protocol instead of being detected.
    /// Default: detect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// A Service by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// Name.
    pub name: String,
    /// Namespace. Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

/// This pod's identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    /// Pod name (for logs and traces).
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels of the pod's namespace.
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
}

pub(crate) fn default_namespace() -> String {
    "default".to_owned()
}

/// One Service this pod can call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    /// Service name.
    pub name: String,
    /// Namespace. Default `default`.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Service ports callers use. Empty: any port.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// The endpoints (pods) behind it, `ip:port` or `localhost:port`. May be empty (no pod is
    /// ready): calls are then refused with `no-healthy-endpoints`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Virtual (cluster) addresses, `ip:port`: a connection intercepted for one of them is
    /// routed to this Service.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Service labels, for policies that select by label.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the Service's ports speak, as a Kubernetes `appProtocol` (`http`,
    /// `kubernetes.io/h2c`, `grpc`, `tcp`, ...): connections to its `addresses` are then taken
    /// as that protocol instead of being detected. Default: detect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// Limits on what the proxy accepts from clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxySettings {
    /// How long to wait for a client's first bytes to tell HTTP from opaque TCP; a client that
    /// says nothing for this long (a server-first protocol) is treated as TCP. Default `1s`.
    #[serde(default = "default_detect_timeout")]
    pub detect_timeout: String,
    /// Longest time a client may take to send a request's headers, from the first byte of the
    /// head (HTTP/1; the silence between requests on a kept-alive connection is bounded by
    /// `clientIdleTimeout`). Default `10s`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: String,
    /// Most header fields in a request. Default 100.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
    /// Most bytes of request headers. Default 65536.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// A client connection with no request in flight for this long is closed. Default `10m`.
    #[serde(default = "default_client_idle_timeout")]
    pub client_idle_timeout: String,
}

fn default_detect_timeout() -> String {
    "1s".to_owned()
}
fn default_header_read_timeout() -> String {
    "10s".to_owned()
}
fn default_max_headers() -> usize {
    100
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_client_idle_timeout() -> String {
    "10m".to_owned()
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            detect_timeout: default_detect_timeout(),
            header_read_timeout: default_header_read_timeout(),
            max_headers: default_max_headers(),
            max_header_bytes: default_max_header_bytes(),
            client_idle_timeout: default_client_idle_timeout(),
        }
    }
}
