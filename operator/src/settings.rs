//! [`Settings`]: every knob of the operator, as a flag and as the `BREAKWATER_*` variable the
//! Helm chart sets (`charts/breakwater/templates/deployment.yaml`).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, ValueEnum};

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for log collectors).
    Json,
    /// Human-readable lines.
    Text,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 250ms, 15s, 1m)"))
}

/// The operator's settings; see `breakwater-operator --help`.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// The namespace the operator runs in: its Lease lives there.
    #[arg(long, env = "BREAKWATER_NAMESPACE", default_value = "breakwater-system")]
    pub namespace: String,

    /// This replica's name: its identity in the Lease and in Events. Default: the host name.
    #[arg(long, env = "BREAKWATER_POD_NAME")]
    pub pod_name: Option<String>,

    /// The Lease the replicas elect the status writer with. Every replica indexes, compiles and
    /// serves; only the holder writes policy status and Events.
    #[arg(long, env = "BREAKWATER_LEASE_NAME", default_value = "breakwater-operator")]
    pub lease_name: String,

    /// How long a lease holder that stops renewing keeps the lease: the longest a failed
    /// holder's status writes are missing before another replica takes over.
    #[arg(long, env = "BREAKWATER_LEASE_DURATION", default_value = "15s", value_parser = duration)]
    pub lease_duration: Duration,

    /// How long before the lease expires its holder renews it.
    #[arg(long, env = "BREAKWATER_LEASE_RENEW_BEFORE", default_value = "5s", value_parser = duration)]
    pub lease_renew_before: Duration,

    /// Label selector of the Pods that get snapshots: the pods with a Breakwater sidecar (the
    /// injector labels them).
    #[arg(long, env = "BREAKWATER_POD_SELECTOR", default_value = "breakwater.dev/injected=true")]
    pub pod_selector: String,

    /// How long a burst of changes gathers before the affected snapshots are recompiled.
    #[arg(long, env = "BREAKWATER_SNAPSHOT_DEBOUNCE", default_value = "100ms", value_parser = duration)]
    pub snapshot_debounce: Duration,

    /// How long a policy's changes gather before it is reconciled (kube-runtime's debounce).
    #[arg(long, env = "BREAKWATER_RECONCILE_DEBOUNCE", default_value = "200ms", value_parser = duration)]
    pub reconcile_debounce: Duration,

    /// Most policies reconciled at once.
    #[arg(long, env = "BREAKWATER_RECONCILE_CONCURRENCY", default_value_t = 8)]
    pub reconcile_concurrency: u16,

    /// How often every policy is reconciled even when nothing changed.
    #[arg(long, env = "BREAKWATER_RESYNC", default_value = "5m", value_parser = duration)]
    pub resync: Duration,

    /// The address every listener (health, metrics, webhook, config API) binds unless its own
    /// `--*-bind-address` says otherwise: `127.0.0.1` keeps a local run off the network.
    #[arg(long, env = "BREAKWATER_BIND_ADDRESS", default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Port of `/live` and `/ready` (ready once every index has its first list).
    #[arg(long, env = "BREAKWATER_HEALTH_PORT", default_value_t = 8081)]
    pub health_port: u16,

    /// The address `/live` and `/ready` listen on (default: `--bind-address`).
    #[arg(long, env = "BREAKWATER_HEALTH_BIND_ADDRESS")]
    pub health_bind_address: Option<IpAddr>,

    /// Port of `/metrics` (Prometheus text format).
    #[arg(long, env = "BREAKWATER_METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,

    /// The address `/metrics` listens on (default: `--bind-address`).
    #[arg(long, env = "BREAKWATER_METRICS_BIND_ADDRESS")]
    pub metrics_bind_address: Option<IpAddr>,

    /// Where `/debug/snapshots/NAMESPACE/POD` shows a pod's compiled snapshot. Keep it on
    /// loopback: snapshots describe the mesh. Empty: off.
    #[arg(long, env = "BREAKWATER_DEBUG_ADDRESS", default_value = "127.0.0.1:9091", value_parser = debug_address)]
    pub debug_address: MaybeAddr,

    /// How long SIGTERM may take: stop reconciling, release the lease, exit.
    #[arg(long, env = "BREAKWATER_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub shutdown_timeout: Duration,

    /// A kubeconfig to use instead of the in-cluster ServiceAccount (or `KUBECONFIG`).
    #[arg(long, env = "BREAKWATER_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Log filter: trace, debug, info, warn or error, or a tracing directive
    /// (`breakwater_operator=debug,kube=info`).
    #[arg(long, env = "BREAKWATER_LOG", default_value = "info")]
    pub log: String,

    /// Log format.
    #[arg(long, env = "BREAKWATER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// The config API.
    #[command(flatten)]
    pub config_api: ConfigApi,

    /// The sidecar injector.
    #[command(flatten)]
    pub injection: Injection,

    /// The CA and serving certificate.
    #[command(flatten)]
    pub certificates: Certificates,
}

/// What the webhook configuration's `failurePolicy` becomes once the operator answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailurePolicy {
    /// A pod is created without the sidecar when no replica answers.
    #[value(name = "Ignore")]
    Ignore,
    /// A pod that should get the sidecar is refused when no replica answers.
    #[value(name = "Fail")]
    Fail,
}

impl FailurePolicy {
    /// The value in a MutatingWebhookConfiguration.
    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Ignore => "Ignore",
            FailurePolicy::Fail => "Fail",
        }
    }
}

/// The CA and serving certificate of the webhook and the config API (in `--tls-secret`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Certificates")]
pub struct Certificates {
    /// Who makes the certificates: `self-signed` (the operator creates, renews and trusts its
    /// own CA, and sets the webhook's caBundle) or `external` (cert-manager or another tool
    /// writes ca.crt, tls.crt and tls.key; the operator only reloads them).
    #[arg(long = "certificates", env = "BREAKWATER_CERTIFICATES", value_enum, default_value_t = crate::certs::Source::SelfSigned)]
    pub source: crate::certs::Source,
    /// How long before the serving certificate expires (it is valid for 365 days) the operator
    /// renews it (self-signed only; less than half its lifetime).
    #[arg(long = "cert-renew-before", env = "BREAKWATER_CERT_RENEW_BEFORE", default_value = "30days", value_parser = duration)]
    pub renew_before: Duration,
}

/// The sidecar injector: the mutating webhook and what it adds to pods.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sidecar injection")]
pub struct Injection {
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps on its CA.
    #[arg(long, env = "BREAKWATER_WEBHOOK_CONFIGURATION")]
    pub webhook_configuration: Option<String>,
    /// HTTPS port of the injection webhook (`POST /inject`). Served when the injection template
    /// is set too.
    #[arg(long, env = "BREAKWATER_WEBHOOK_PORT")]
    pub webhook_port: Option<u16>,
    /// The address the webhook listens on: one the API server reaches (default:
    /// `--bind-address`).
    #[arg(long, env = "BREAKWATER_WEBHOOK_BIND_ADDRESS")]
    pub webhook_bind_address: Option<IpAddr>,
    /// The failure policy the webhook configuration gets once this operator answers (the chart
    /// renders `Ignore`, so nothing blocks before then). `Fail` keeps uninjected pods out, and
    /// refuses every pod to inject while no replica answers.
    #[arg(long, env = "BREAKWATER_WEBHOOK_FAILURE_POLICY", value_enum, ignore_case = true, default_value_t = FailurePolicy::Ignore)]
    pub webhook_failure_policy: FailurePolicy,
    /// The injection template (the chart's `<fullname>-sidecar` ConfigMap). Checked at start-up:
    /// a template that cannot be used stops the operator with the reason.
    #[arg(long, env = "BREAKWATER_SIDECAR_CONFIG")]
    pub sidecar_config: Option<PathBuf>,
}

/// The config API sidecars stream their snapshots from.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Config API")]
pub struct ConfigApi {
    /// Port of the config API (TLS, HTTP/2). Unset: not served (a local run without sidecars).
    #[arg(long, env = "BREAKWATER_CONFIG_PORT")]
    pub config_port: Option<u16>,
    /// The address the config API listens on: one the pods reach (default: `--bind-address`).
    #[arg(long, env = "BREAKWATER_CONFIG_BIND_ADDRESS")]
    pub config_bind_address: Option<IpAddr>,
    /// The operator's Service: named (with its cluster IPs) in the serving certificate.
    #[arg(long, env = "BREAKWATER_SERVICE_NAME", default_value = "breakwater")]
    pub service_name: String,
    /// The Secret (in the operator's namespace) holding the CA and serving certificate; made
    /// by the first replica that finds it missing.
    #[arg(long, env = "BREAKWATER_WEBHOOK_SECRET", default_value = "breakwater-webhook-tls")]
    pub tls_secret: String,
    /// Keep the CA in a `breakwater-root-ca` ConfigMap in every namespace (but kube-system,
    /// kube-public and kube-node-lease), for sidecars to trust the config API.
    #[arg(long, env = "BREAKWATER_PUBLISH_ROOT_CA", default_value_t = true, action = clap::ArgAction::Set)]
    pub publish_root_ca: bool,
}

/// An address, or none (an empty value turns a listener off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeAddr(pub Option<SocketAddr>);

fn debug_address(s: &str) -> Result<MaybeAddr, String> {
    if s.is_empty() {
        return Ok(MaybeAddr(None));
    }
    s.parse()
        .map(|a| MaybeAddr(Some(a)))
        .map_err(|e| format!("{e}: expected host:port, e.g. 127.0.0.1:9091, or empty"))
}

impl Settings {
    /// Where `/live` and `/ready` listen.
    pub fn health_address(&self) -> SocketAddr {
        SocketAddr::new(self.health_bind_address.unwrap_or(self.bind_address), self.health_port)
    }

    /// Where `/metrics` listens.
    pub fn metrics_address(&self) -> SocketAddr {
        SocketAddr::new(self.metrics_bind_address.unwrap_or(self.bind_address), self.metrics_port)
    }

    /// Where the webhook listens, when it is served (a port and an injection template).
    pub fn webhook_address(&self) -> Option<SocketAddr> {
        let ip = self.injection.webhook_bind_address.unwrap_or(self.bind_address);
        self.injection.webhook_port.map(|port| SocketAddr::new(ip, port))
    }

    /// Where the config API listens, when it is served.
    pub fn config_address(&self) -> Option<SocketAddr> {
        let ip = self.config_api.config_bind_address.unwrap_or(self.bind_address);
        self.config_api.config_port.map(|port| SocketAddr::new(ip, port))
    }

    /// Where the certificates live and who makes them.
    pub fn certificate_options(&self) -> crate::certs::rotation::Options {
        crate::certs::rotation::Options {
            namespace: self.namespace.clone(),
            secret: self.config_api.tls_secret.clone(),
            service: self.config_api.service_name.clone(),
            source: self.certificates.source,
            renew_before: self.certificates.renew_before,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.pod_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| format!("breakwater-operator-{}", std::process::id()))
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    fn parse(args: &[&str]) -> Settings {
        let argv = std::iter::once("breakwater-operator").chain(args.iter().copied());
        Cli::try_parse_from(argv).expect("valid flags").settings
    }

    #[test]
    fn each_listener_binds_its_own_address_or_the_common_one() {
        let all = parse(&["--webhook-port", "9443", "--config-port", "9090"]);
        assert_eq!(all.health_address(), "0.0.0.0:8081".parse().expect("addr"));
        assert_eq!(all.metrics_address(), "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(all.webhook_address(), Some("0.0.0.0:9443".parse().expect("addr")));
        assert_eq!(all.config_address(), Some("0.0.0.0:9090".parse().expect("addr")));

        let split = parse(&[
            "--bind-address=127.0.0.1",
            "--webhook-port=9443",
            "--webhook-bind-address=198.18.0.1",
            "--config-port=9090",
            "--metrics-bind-address=::",
        ]);
        assert_eq!(split.health_address(), "127.0.0.1:8081".parse().expect("addr"), "the common one");
        assert_eq!(split.metrics_address(), "[::]:8080".parse().expect("addr"));
        assert_eq!(split.webhook_address(), Some("198.18.0.1:9443".parse().expect("addr")));
        assert_eq!(split.config_address(), Some("127.0.0.1:9090".parse().expect("addr")));

        let local = parse(&["--webhook-bind-address=127.0.0.1"]);
        assert_eq!(local.webhook_address(), None, "no port: the webhook is not served");
        assert_eq!(local.config_address(), None);
    }
}
