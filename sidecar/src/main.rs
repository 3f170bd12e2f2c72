//! `breakwater-sidecar`: arguments, tracing, signals and the drain bound; nothing else.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use breakwater_sidecar::{
    Sidecar,
    config::Checked,
    init::{self, Family, InitOptions, Outcome},
    telemetry,
};
use clap::{Parser, Subcommand, ValueEnum};

/// Breakwater's sidecar proxy: timeouts, retries, circuit breaking and bulkheads for every call
/// a pod makes and receives, as its CommunicationPolicies say.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(subcommand)]
    command: Cmd,

    /// Log filter, e.g. `info` or `breakwater_sidecar=debug` (overrides $RUST_LOG).
    #[arg(long, global = true, env = "BREAKWATER_LOG")]
    log: Option<String>,

    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "BREAKWATER_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the proxy. Local mode (`--config FILE`): CommunicationPolicy documents plus one
    /// SidecarConfig document; the file is watched and reloaded, SIGHUP reloads it too, and an
    /// invalid file is reported and the running configuration kept. Cluster mode
    /// (`--control-plane URL`): the pod's snapshot streams from the operator; `--config`, if
    /// given, holds only the sidecar's own settings.
    Run {
        /// The configuration file (multi-document YAML). Required in local mode.
        #[arg(long, short, env = "BREAKWATER_CONFIG")]
        config: Option<PathBuf>,
        /// How long SIGTERM waits for in-flight requests before cutting them.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "BREAKWATER_GRACE_PERIOD")]
        grace_period: Duration,
        /// Do not watch the file (reload on SIGHUP only).
        #[arg(long)]
        no_watch: bool,
        /// Also serve `/live`, `/ready` and `/metrics` on this address (the injector sets
        /// `0.0.0.0:15020`, for the kubelet's probes and Prometheus); `/config` and `/breakers`
        /// stay on the loopback admin port unless --probe-diagnostics.
        #[arg(long, env = "BREAKWATER_PROBE_ADDRESS")]
        probe_address: Option<std::net::SocketAddr>,
        /// Serve `/config` and `/breakers` (read-only JSON) on the probe address too, where
        /// `kubectl breakwater config` and `breakers` read them through the API server's pod
        /// proxy. They show the pod's policies and the endpoints it calls, to whoever reaches
        /// the pod's address.
        #[arg(long, env = "BREAKWATER_PROBE_DIAGNOSTICS", requires = "probe_address")]
        probe_diagnostics: bool,
        #[command(flatten)]
        cluster: Box<ClusterArgs>,
    },
    /// Check a configuration file with the same rules as the API server. Prints every problem
    /// with its document and field path; exits 0 only when the file is valid. For CI pipelines.
    Validate {
        /// The file to check.
        file: PathBuf,
    },
    /// Wait until a URL answers 200 (a regular container's `postStart` hook uses it to hold the
    /// app until the proxy listens, where the API server has no native sidecars). Exits 0 once
    /// it does, 1 at the timeout.
    Wait {
        /// The URL to poll (plain HTTP).
        #[arg(long, default_value = "http://127.0.0.1:15020/live")]
        url: http::Uri,
        /// How long to wait at most.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Install the iptables rules that send the pod's traffic through the proxy (run in the
    /// pod's init container, with NET_ADMIN and NET_RAW). Idempotent: a second run changes
    /// nothing.
    Init(InitArgs),
}

/// Cluster mode: where the operator's config API is and how this pod proves who it is.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Cluster mode (the operator's config API)")]
struct ClusterArgs {
    /// The config API, `https://HOST:PORT` (the operator's Service, port `config`). Set: cluster
    /// mode.
    #[arg(long, env = "BREAKWATER_CONTROL_PLANE")]
    control_plane: Option<http::Uri>,
    /// PEM file of the CA that signed the operator's certificate (the `breakwater-root-ca`
    /// ConfigMap of the pod's namespace).
    #[arg(long, env = "BREAKWATER_CONTROL_PLANE_CA", default_value = "/var/run/breakwater/ca/ca.crt")]
    control_plane_ca: PathBuf,
    /// The name to expect in the operator's certificate, when not the URL's host.
    #[arg(long, env = "BREAKWATER_CONTROL_PLANE_SERVER_NAME")]
    control_plane_server_name: Option<String>,
    /// The pod's projected ServiceAccount token for audience `breakwater.dev/config` (read
    /// again on every connection).
    #[arg(long, env = "BREAKWATER_TOKEN_FILE", default_value = "/var/run/breakwater/token/token")]
    token_file: PathBuf,
    /// This pod's name (the downward API's `metadata.name`).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// This pod's namespace (the downward API's `metadata.namespace`).
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Where the last good snapshot is kept (an emptyDir), so a restart while the operator is
    /// away starts from it. Unset: memory only.
    #[arg(long, env = "BREAKWATER_SNAPSHOT_DIR")]
    snapshot_dir: Option<PathBuf>,
    /// How long the config API may take to answer, and then to send the first snapshot, before
    /// the sidecar gives up on that connection and retries (with jittered exponential backoff,
    /// at most 15s apart). The sidecar serves its last good snapshot meanwhile.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "BREAKWATER_CONTROL_PLANE_TIMEOUT")]
    control_plane_timeout: Duration,
}

/// A cluster-mode sidecar's settings when no `--config` gives them: the default listeners,
/// and inbound calls forwarded to the application on 127.0.0.1 at the port they were sent to.
const CLUSTER_SETTINGS: &str = "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\n\
                                inbound: {app: \"127.0.0.1:0\"}\nservices: []\n";

#[derive(clap::Args, Debug)]
struct InitArgs {
    /// UID the proxy runs as; its own connections are not redirected.
    #[arg(long, default_value_t = 2102, env = "BREAKWATER_PROXY_UID")]
    proxy_uid: u32,
    /// Outbound listener port.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound listener port.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Admin port (never redirected).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Inbound ports not redirected, comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports not redirected, comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks not redirected (CIDR), comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_outbound_cidrs: Vec<String>,
    /// Do not redirect inbound traffic.
    #[arg(long)]
    no_inbound: bool,
    /// IPv6 rules: `auto` (when ip6tables and IPv6 are present), `on`, `off`.
    #[arg(long, value_enum, default_value = "auto")]
    ipv6: Ipv6,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Ipv6 {
    Auto,
    On,
    Off,
}

/// Logs to stderr, and — when tracing is on — request spans and the decision events inside
/// them to OpenTelemetry. Request spans live at their own target, which only the OpenTelemetry
/// layer enables: with tracing off their callsites stay disabled.
fn init_tracing(log: Option<&str>, format: LogFormat, tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    use tracing_subscriber::{
        Layer as _, filter::Targets, layer::SubscriberExt as _, util::SubscriberInitExt as _,
    };
    let filter = log
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{filter},{}=off", telemetry::spans::TARGET))
        .unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    // Only a real layer: an `Option` layer that is `None` still marks every callsite enabled,
    // and request spans would be built (and contexts extracted) for nothing.
    match tracer {
        Some(t) => registry
            .with(
                tracing_opentelemetry::layer().with_tracer(t).with_filter(
                    Targets::new()
                        .with_target("breakwater_sidecar", tracing::Level::DEBUG)
                        .with_target("breakwater_resilience", tracing::Level::DEBUG),
                ),
            )
            .init(),
        None => registry.init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (log, format) = (args.log.clone(), args.log_format);
    let result = match args.command {
        Cmd::Run { config, grace_period, no_watch, probe_address, probe_diagnostics, cluster } => {
            let probes = probe_address.map(|a| (a, probe_diagnostics));
            run(config, *cluster, grace_period, no_watch, probes, log.as_deref(), format)
        }
        Cmd::Wait { url, timeout } => wait(&url, timeout),
        Cmd::Validate { file } => {
            init_tracing(log.as_deref(), format, None);
            return validate(&file);
        }
        Cmd::Init(a) => {
            init_tracing(log.as_deref(), format, None);
            init(a)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match breakwater_sidecar::config::check(&text) {
        Ok(Checked::Sidecar(c)) => {
            let (services, attachments) = c.counts();
            let rules = c.route_rules();
            let routes = if rules == 0 { String::new() } else { format!(", {rules} route rules") };
            println!(
                "{}: valid ({services} services, {attachments} policy attachments{routes})",
                file.display()
            );
            print_warnings(file, &c.warnings);
            ExitCode::SUCCESS
        }
        Ok(Checked::Policies(n, warnings)) => {
            println!("{}: valid ({n} policies)", file.display());
            print_warnings(file, &warnings);
            ExitCode::SUCCESS
        }
        Err(e) => {
            for p in &e.problems {
                println!("{}: {p}", file.display());
            }
            eprintln!("{}: {} problem(s)", file.display(), e.problems.len());
            ExitCode::FAILURE
        }
    }
}

/// Valid settings that can never take effect: reported, not refused (the exit status stays 0).
fn print_warnings(file: &std::path::Path, warnings: &[String]) {
    for w in warnings {
        println!("{}: warning: {w}", file.display());
    }
}

fn run(
    config: Option<PathBuf>,
    cluster: ClusterArgs,
    grace: Duration,
    no_watch: bool,
    probes: Option<(std::net::SocketAddr, bool)>,
    log: Option<&str>,
    format: LogFormat,
) -> anyhow::Result<()> {
    let control_plane = match &cluster.control_plane {
        None => None,
        Some(url) => {
            let (Some(name), Some(namespace)) = (cluster.pod_name.clone(), cluster.pod_namespace.clone())
            else {
                anyhow::bail!(
                    "cluster mode needs the pod's name and namespace: set --pod-name and --pod-namespace (or POD_NAME and POD_NAMESPACE from the downward API)"
                );
            };
            if url.scheme_str() != Some("https") {
                anyhow::bail!("--control-plane must be an https:// URL, got {url}");
            }
            Some(breakwater_sidecar::store::stream::ControlPlane {
                url: url.clone(),
                ca: cluster.control_plane_ca.clone(),
                token: cluster.token_file.clone(),
                pod: (namespace, name),
                snapshot_dir: cluster.snapshot_dir.clone(),
                server_name: cluster.control_plane_server_name.clone(),
                timeout: cluster.control_plane_timeout,
            })
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let (text, source) = match (&config, &control_plane) {
            (Some(path), _) => (
                tokio::fs::read_to_string(path).await.with_context(|| format!("cannot read {}", path.display()))?,
                path.display().to_string(),
            ),
            (None, Some(_)) => (CLUSTER_SETTINGS.to_owned(), "the built-in cluster settings".to_owned()),
            (None, None) => anyhow::bail!("give --config FILE (local mode) or --control-plane URL (cluster mode)"),
        };
        // Telemetry is set up from the file once, before anything logs.
        let compiled = breakwater_sidecar::config::compile(&text)
            .map_err(|e| anyhow::anyhow!("invalid configuration {source}:\n{e}"))?;
        if control_plane.is_some() && !compiled.snapshot.services.is_empty() {
            anyhow::bail!("{source}: in cluster mode the Services and policies come from the operator; leave `services` empty");
        }
        let settings = telemetry::Resolved::from(
            compiled.telemetry.as_ref(),
            telemetry::process_env,
            &compiled.default_service_name(),
            compiled.pod(),
        )?;
        let metrics = std::sync::Arc::new(breakwater_sidecar::metrics::Metrics::new());
        let started = telemetry::Telemetry::start(settings, metrics.span_counters())?;
        let (telemetry, tracer) = match started {
            Some((t, tracer)) => (Some(t), Some(tracer)),
            None => (None, None),
        };
        init_tracing(log, format, tracer);
        if let Some(t) = &telemetry {
            tracing::info!(endpoint = ?t.settings.endpoint, protocol = ?t.settings.protocol, sampler = %t.settings.sampler, ratio = t.settings.ratio, "exporting traces");
        }
        let observability =
            breakwater_sidecar::Observability { metrics, sampling: telemetry.as_ref().map(|t| t.sampling()) };
        let watch = config.clone().filter(|_| !no_watch && control_plane.is_none());
        let sidecar = Sidecar::start_with(&text, watch, control_plane, observability).await?;
        if let Some((addr, diagnostics)) = probes {
            let bound = sidecar.serve_probes(addr, diagnostics).await?;
            if diagnostics {
                tracing::info!(probes = %bound, "serving /live /ready /metrics /config /breakers for the kubelet, Prometheus and kubectl breakwater");
            } else {
                tracing::info!(probes = %bound, "serving /live /ready /metrics for the kubelet and Prometheus");
            }
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            // Kubernetes stops the pod.
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            // Ctrl-C in local mode.
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: draining"),
        }
        let cut = sidecar.shutdown(grace).await;
        if cut > 0 {
            tracing::warn!(connections = cut, ?grace, "grace period over: cutting connections still open");
        } else {
            tracing::info!("drained");
        }
        if let Some(t) = telemetry {
            // Exporting what is left blocks: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || t.shutdown(Duration::from_secs(5))).await;
        }
        Ok(())
    })
}

fn init(a: InitArgs) -> anyhow::Result<()> {
    let opts = InitOptions {
        proxy_uid: a.proxy_uid,
        outbound_port: a.outbound_port,
        inbound_port: a.inbound_port,
        skip_inbound_ports: a.skip_inbound_ports,
        admin_port: a.admin_port,
        skip_outbound_ports: a.skip_outbound_ports,
        skip_outbound_cidrs: a.skip_outbound_cidrs,
        inbound: !a.no_inbound,
    };
    opts.validate()?;
    let v6 = match a.ipv6 {
        Ipv6::On => true,
        Ipv6::Off => false,
        Ipv6::Auto => !a.dry_run && init::ipv6_available(),
    };
    let mut families = vec![Family::V4];
    if v6 || (a.dry_run && a.ipv6 == Ipv6::On) {
        families.push(Family::V6);
    }
    for family in families {
        if a.dry_run {
            println!("# {family:?}: iptables-restore --noflush input");
            print!("{}", opts.restore_input(family, ""));
            continue;
        }
        match init::apply(&opts, family)? {
            Outcome::Unchanged => println!("{family:?}: rules already in place; nothing changed"),
            Outcome::Applied => println!("{family:?}: rules installed"),
        }
    }
    Ok(())
}

/// Polls `url` every 100 ms until it answers 200, for at most `timeout`.
fn wait(url: &http::Uri, timeout: Duration) -> anyhow::Result<()> {
    let host = url.host().context("the URL has no host")?.trim_matches(['[', ']']).to_owned();
    let port = url.port_u16().unwrap_or(80);
    let path = url.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let attempt = async {
                let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                let (mut send, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
                tokio::spawn(conn);
                let req = http::Request::get(path.as_str())
                    .header(http::header::HOST, host.as_str())
                    .body(http_body_util::Empty::<bytes::Bytes>::new())?;
                anyhow::Ok(send.send_request(req).await?.status())
            };
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), attempt).await
                && status == http::StatusCode::OK
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("{url} did not answer 200 within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}
