//! OpenTelemetry traces: configuration, the export pipeline, propagation.
//!
//! `tracing` spans created by the proxy (target [`spans::TARGET`]) become OpenTelemetry spans
//! through `tracing-opentelemetry`; the decisions the resilience layers log as `tracing`
//! events inside them become span events. Spans are exported over OTLP (gRPC or
//! HTTP/protobuf) by a [`processor::BoundedBatchProcessor`] that never blocks a request.
//!
//! Settings come from the `telemetry` section of the `SidecarConfig`, and, for what it does not
//! set, from the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (and `…_TRACES_ENDPOINT`),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the spec's default, or `grpc`),
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `_ARG` and
//! `OTEL_SDK_DISABLED`. Without an endpoint tracing is off, and off costs nothing: no layer is
//! installed, so the proxy's span callsites are disabled.

pub mod processor;
pub mod propagation;
pub mod sampling;
pub mod spans;

use std::{collections::BTreeMap, time::Duration};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use serde::{Deserialize, Serialize};

/// The `telemetry` section of a `SidecarConfig`. Every field is optional; unset fields fall
/// back to the standard `OTEL_*` variables.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `false` turns tracing off whatever the environment says (like `OTEL_SDK_DISABLED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// OTLP endpoint, e.g. `http://otel-collector.observability:4318` (HTTP) or `:4317` (gRPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// `service.name` of the spans. Default: `OTEL_SERVICE_NAME`, else the Service this pod
    /// serves, else `breakwater-sidecar`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// Extra resource attributes (added to `OTEL_RESOURCE_ATTRIBUTES`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resource_attributes: BTreeMap<String, String>,
    /// `parentbased_traceidratio` (default `parentbased_always_on`), `traceidratio`,
    /// `always_on`, `always_off`, `parentbased_always_off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// The ratio for the ratio samplers, 0–1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler_arg: Option<f64>,
}

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
    /// OTLP over gRPC.
    Grpc,
}

/// Settings after merging the file and the environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    /// Where spans go; `None`: tracing off.
    pub endpoint: Option<String>,
    /// Transport.
    pub protocol: Protocol,
    /// `service.name`.
    pub service_name: String,
    /// Every resource attribute besides `service.name`.
    pub resource: BTreeMap<String, String>,
    /// Sampler name.
    pub sampler: String,
    /// Sampler ratio.
    pub ratio: f64,
}

/// Why telemetry settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting has a value we do not know.
    #[error("{0}")]
    Invalid(String),
    /// The exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
}

/// Reads a variable from the process environment (empty counts as unset).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

impl Resolved {
    /// Merges `config` over the environment (read through `env`, so tests need not touch the
    /// process environment). `default_service` names the spans when nothing else does.
    pub fn from(
        config: Option<&TelemetryConfig>,
        env: impl Fn(&str) -> Option<String>,
        default_service: &str,
        pod: (Option<&str>, Option<&str>),
    ) -> Result<Self, TelemetryError> {
        let c = config.cloned().unwrap_or_default();
        let disabled = c.enabled == Some(false)
            || (c.enabled.is_none()
                && env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")));
        let protocol = match c
            .protocol
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .as_deref()
        {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(TelemetryError::Invalid(format!(
                    "telemetry protocol must be http/protobuf or grpc, got {other:?} (http/json is not supported)"
                )));
            }
        };
        let endpoint = match c.endpoint {
            Some(e) => Some(signal_endpoint(&e, protocol)),
            None => env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT").map(|e| signal_endpoint(&e, protocol))),
        };
        let endpoint = endpoint.filter(|_| !disabled);
        let sampler = c
            .sampler
            .or_else(|| env("OTEL_TRACES_SAMPLER"))
            .unwrap_or_else(|| "parentbased_always_on".to_owned());
        let ratio = match c.sampler_arg {
            Some(r) => r,
            None => match env("OTEL_TRACES_SAMPLER_ARG") {
                Some(v) => v.parse().map_err(|_| {
                    TelemetryError::Invalid(format!("OTEL_TRACES_SAMPLER_ARG must be a number, got {v:?}"))
                })?,
                None => 1.0,
            },
        };
        if !(0.0..=1.0).contains(&ratio) {
            return Err(TelemetryError::Invalid(format!(
                "the sampler ratio must be between 0 and 1, got {ratio}"
            )));
        }
        if !matches!(
            sampler.as_str(),
            "always_on"
                | "always_off"
                | "traceidratio"
                | "parentbased_always_on"
                | "parentbased_always_off"
                | "parentbased_traceidratio"
        ) {
            return Err(TelemetryError::Invalid(format!("unknown sampler {sampler:?}")));
        }
        let mut resource = BTreeMap::new();
        if let Some(attrs) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for kv in attrs.split(',') {
                if let Some((k, v)) = kv.split_once('=') {
                    resource.insert(k.trim().to_owned(), v.trim().to_owned());
                }
            }
        }
        // The Kubernetes downward API, as the injector sets it, or the file's pod identity.
        let pod_name = env("POD_NAME").or_else(|| pod.0.filter(|p| !p.is_empty()).map(str::to_owned));
        let pod_ns = env("POD_NAMESPACE").or_else(|| pod.1.map(str::to_owned));
        if let Some(p) = pod_name {
            resource.insert("k8s.pod.name".into(), p);
        }
        if let Some(ns) = pod_ns {
            resource.insert("k8s.namespace.name".into(), ns);
        }
        resource.extend(c.resource_attributes);
        let service_name = c
            .service_name
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .or_else(|| resource.remove("service.name"))
            .unwrap_or_else(|| default_service.to_owned());
        resource.remove("service.name");
        Ok(Self { endpoint, protocol, service_name, resource, sampler, ratio })
    }

    /// The request-path sampling policy (see [`sampling`]).
    pub fn sampling(&self) -> sampling::Policy {
        sampling::Policy::from_name(&self.sampler, self.ratio)
    }
}

/// `OTEL_EXPORTER_OTLP_ENDPOINT` is a base URL: the HTTP transport appends `/v1/traces`.
fn signal_endpoint(base: &str, protocol: Protocol) -> String {
    match protocol {
        Protocol::Grpc => base.to_owned(),
        Protocol::HttpProtobuf if base.ends_with("/v1/traces") => base.to_owned(),
        Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
    }
}

/// A running trace pipeline.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// The settings in force.
    pub settings: Resolved,
}

impl Telemetry {
    /// Starts the export thread (the exporter is built there) and the provider, counting into
    /// `counters`, and returns the tracer for the `tracing` layer. `None` when tracing is off.
    pub fn start(
        settings: Resolved,
        counters: processor::SpanCounters,
    ) -> Result<Option<(Self, opentelemetry_sdk::trace::SdkTracer)>, TelemetryError> {
        let Some(endpoint) = settings.endpoint.clone() else { return Ok(None) };
        let mut attrs: Vec<KeyValue> =
            settings.resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect();
        attrs.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .with_attributes(attrs)
            .build();
        let (protocol, exporter_resource) = (settings.protocol, resource.clone());
        let build = move || {
            let timeout = Duration::from_secs(10);
            let mut exporter = match protocol {
                Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(timeout)
                    .build(),
                Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(endpoint)
                    .with_timeout(timeout)
                    .with_headers(Default::default())
                    .build(),
            }
            .map_err(|e| e.to_string())?;
            opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, &exporter_resource);
            Ok(exporter)
        };
        let processor =
            processor::BoundedBatchProcessor::start(build, processor::Limits::default(), counters)
                .map_err(TelemetryError::Exporter)?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(settings.sampling().sdk_sampler())
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("breakwater-sidecar");
        Ok(Some((Self { provider, settings }, tracer)))
    }

    /// The request path's sampling decision (see [`sampling`]).
    pub fn sampling(&self) -> sampling::Policy {
        self.settings.sampling()
    }

    /// Exports what is queued and stops the pipeline, waiting at most `timeout` (blocks: call
    /// it off the runtime's threads).
    pub fn shutdown(&self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "spans may have been lost at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn off_without_an_endpoint_and_when_disabled() {
        let r = Resolved::from(None, env_of(&[]), "svc", (None, None)).expect("valid");
        assert_eq!(r.endpoint, None);
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(Resolved::from(None, env_of(&env), "svc", (None, None)).expect("valid").endpoint, None);
    }

    #[test]
    fn standard_variables_configure_it_and_the_file_wins() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_SERVICE_NAME", "checkout"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=pay"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ("POD_NAME", "checkout-7d9f"),
            ("POD_NAMESPACE", "shop"),
        ];
        let r = Resolved::from(None, env_of(&env), "svc", (None, None)).expect("valid");
        assert_eq!(r.endpoint.as_deref(), Some("http://collector:4318/v1/traces"));
        assert_eq!(r.protocol, Protocol::HttpProtobuf);
        assert_eq!(r.service_name, "checkout");
        assert_eq!(r.ratio, 0.01);
        assert_eq!(r.resource.get("k8s.pod.name").map(String::as_str), Some("checkout-7d9f"));
        assert_eq!(r.resource.get("team").map(String::as_str), Some("pay"));
        let file = TelemetryConfig {
            endpoint: Some("http://other:4317".into()),
            protocol: Some("grpc".into()),
            sampler_arg: Some(0.5),
            ..Default::default()
        };
        let r = Resolved::from(Some(&file), env_of(&env), "svc", (None, None)).expect("valid");
        assert_eq!(r.endpoint.as_deref(), Some("http://other:4317"));
        assert_eq!(r.protocol, Protocol::Grpc);
        assert_eq!(r.ratio, 0.5);
    }

    #[test]
    fn bad_values_are_named() {
        let env = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")];
        let e = Resolved::from(None, env_of(&env), "svc", (None, None)).expect_err("unsupported");
        assert!(e.to_string().contains("http/json"));
        let env = [("OTEL_TRACES_SAMPLER_ARG", "lots")];
        assert!(Resolved::from(None, env_of(&env), "svc", (None, None)).is_err());
    }
}
