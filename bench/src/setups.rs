//! The setups under test, each started fresh for a round and stopped after it, and the
//! configuration each proxy gets.
//!
//! | setup | path |
//! |---|---|
//! | `direct` | oha → backend |
//! | `haproxy` | oha → HAProxy → backend: keep-alive to the backend, retries, timeouts, `maxconn` |
//! | `bw-1hop` | oha → sidecar outbound (explicit mode) → backend, no policy |
//! | `bw-1hop-policy` | the same with timeouts, retries with a budget, a breaker and a bulkhead, none triggering |
//! | `bw-2hop` | oha → client sidecar outbound → server sidecar inbound → backend (the mesh path) |
//! | `bw-1hop-trace100` | `bw-1hop` exporting a trace of every request (OTLP/HTTP to the backend, which discards it) |
//! | `bw-1hop-trace1` | the same, sampling 1% of requests |
//! | `bw-1hop-route1` | `bw-1hop` with one `HTTPRoute` on the Service, whose one rule takes every call |
//! | `bw-1hop-routes50` | `bw-1hop` with 50 `HTTPRoute`s on the Service (paths, methods, headers, query parameters, regular expressions); the calls match only the last one in precedence order |
//!
//! The two route setups are the instruction count's own (`--instructions` runs them by default;
//! `make bench` times them only when `--setups` names them): they price route matching.
//!
//! The proxies run on the proxy CPU, one event loop each (a sidecar's tokio runtime sizes itself
//! from its CPU affinity: one worker; HAProxy gets `nbthread 1`), so each proxy has what a
//! sidecar with a one-core limit would have.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::{
    load::Protocol,
    procs::{self, Proc},
};

/// One way of putting something (or nothing) between the load and the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Setup {
    /// No proxy.
    #[serde(rename = "direct")]
    Direct,
    /// HAProxy, configured for the same job.
    #[serde(rename = "haproxy")]
    Haproxy,
    /// One sidecar, outbound, no policy.
    #[serde(rename = "bw-1hop")]
    Bw1Hop,
    /// One sidecar, outbound, every policy layer on (none triggering).
    #[serde(rename = "bw-1hop-policy")]
    Bw1HopPolicy,
    /// Client sidecar outbound → server sidecar inbound, no policy.
    #[serde(rename = "bw-2hop")]
    Bw2Hop,
    /// One sidecar, no policy, tracing every request.
    #[serde(rename = "bw-1hop-trace100")]
    Bw1HopTrace100,
    /// One sidecar, no policy, tracing 1% of requests.
    #[serde(rename = "bw-1hop-trace1")]
    Bw1HopTrace1,
    /// One sidecar, one HTTPRoute on the Service.
    #[serde(rename = "bw-1hop-route1")]
    Bw1HopRoute1,
    /// One sidecar, 50 HTTPRoutes on the Service, the calls matching the last one.
    #[serde(rename = "bw-1hop-routes50")]
    Bw1HopRoutes50,
}

impl Setup {
    /// The setups `make bench` times by default, in report order.
    pub const ALL: [Setup; 7] = [
        Setup::Direct,
        Setup::Haproxy,
        Setup::Bw1Hop,
        Setup::Bw1HopPolicy,
        Setup::Bw2Hop,
        Setup::Bw1HopTrace100,
        Setup::Bw1HopTrace1,
    ];

    /// The route-matching setups, which only the counts (`--instructions`, `--syscalls`) run by
    /// default.
    pub const ROUTES: [Setup; 2] = [Setup::Bw1HopRoute1, Setup::Bw1HopRoutes50];

    /// Every setup there is: [`Setup::ALL`], then [`Setup::ROUTES`].
    pub fn every() -> impl Iterator<Item = Setup> {
        Self::ALL.into_iter().chain(Self::ROUTES)
    }

    /// Short name (JSON, plot legend, `--setups`).
    pub fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct",
            Setup::Haproxy => "haproxy",
            Setup::Bw1Hop => "bw-1hop",
            Setup::Bw1HopPolicy => "bw-1hop-policy",
            Setup::Bw2Hop => "bw-2hop",
            Setup::Bw1HopTrace100 => "bw-1hop-trace100",
            Setup::Bw1HopTrace1 => "bw-1hop-trace1",
            Setup::Bw1HopRoute1 => "bw-1hop-route1",
            Setup::Bw1HopRoutes50 => "bw-1hop-routes50",
        }
    }

    /// Proxy hops between the load and the backend.
    pub fn hops(self) -> u32 {
        match self {
            Setup::Direct => 0,
            Setup::Haproxy
            | Setup::Bw1Hop
            | Setup::Bw1HopPolicy
            | Setup::Bw1HopTrace100
            | Setup::Bw1HopTrace1
            | Setup::Bw1HopRoute1
            | Setup::Bw1HopRoutes50 => 1,
            Setup::Bw2Hop => 2,
        }
    }

    /// Parses a `--setups` entry.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        Self::every().find(|x| x.name() == s).with_context(|| {
            let names: Vec<_> = Self::every().map(|x| x.name()).collect();
            format!("unknown setup {s:?}: expected one of {}", names.join(", "))
        })
    }
}

/// Where the binaries are and which CPUs things run on.
#[derive(Debug, Clone)]
pub struct Env {
    /// `breakwater-sidecar`.
    pub sidecar: PathBuf,
    /// `haproxy`.
    pub haproxy: PathBuf,
    /// The CPUs proxies run on (`taskset -c`).
    pub proxy_cpus: String,
    /// The backend's address.
    pub backend: SocketAddr,
    /// Configuration files and logs.
    pub dir: PathBuf,
    /// A program (and its arguments) every proxy runs under, e.g. valgrind for `--instructions`;
    /// empty for none. Start-up then gets [`WRAPPED_STARTUP`] instead of 10 s.
    pub wrap: Vec<String>,
}

/// How long a proxy under a wrapper (valgrind) may take to start.
pub const WRAPPED_STARTUP: std::time::Duration = std::time::Duration::from_secs(120);

impl Env {
    /// Starts `program args` on the proxy CPUs, under the wrapper when there is one.
    fn spawn_proxy(&self, tag: &str, program: &Path, args: &[String]) -> anyhow::Result<Proc> {
        match self.wrap.split_first() {
            None => Proc::spawn(tag, &self.proxy_cpus, program, args, &self.dir),
            Some((wrapper, wrap_args)) => {
                let mut all = wrap_args.to_vec();
                all.push(program.display().to_string());
                all.extend_from_slice(args);
                Proc::spawn(tag, &self.proxy_cpus, Path::new(wrapper), &all, &self.dir)
            }
        }
    }

    fn startup(&self) -> std::time::Duration {
        if self.wrap.is_empty() { std::time::Duration::from_secs(10) } else { WRAPPED_STARTUP }
    }
}

/// A setup, started.
pub struct Running {
    /// Where the load connects.
    pub entry: SocketAddr,
    /// The proxies, measured (empty for `direct`). Killed when dropped.
    pub proxies: Vec<Proc>,
    /// How each proxy was started, for the report.
    pub commands: Vec<String>,
}

impl Running {
    /// Stops every proxy.
    pub async fn stop(self) {
        for p in self.proxies {
            p.stop().await;
        }
    }
}

/// Starts `setup` for `protocol` (HAProxy's backend connection follows the protocol; the
/// sidecar's always does) and checks that a request through it reaches the backend.
pub async fn start(env: &Env, setup: Setup, protocol: Protocol, round: usize) -> anyhow::Result<Running> {
    let tag = format!("{}-{}-r{round}", setup.name(), protocol_tag(protocol));
    let mut running = match setup {
        Setup::Direct => Running { entry: env.backend, proxies: Vec::new(), commands: Vec::new() },
        Setup::Haproxy => {
            let entry = procs::free_port()?;
            let cfg = env.dir.join(format!("{tag}.cfg"));
            write(&cfg, &haproxy_config(entry, env.backend, protocol))?;
            let args = vec!["-db".to_owned(), "-f".to_owned(), cfg.display().to_string()];
            let mut p = env.spawn_proxy(&tag, &env.haproxy, &args)?;
            p.wait_listening(entry, env.startup()).await?;
            let cmd = command(&env.proxy_cpus, &env.haproxy, &args);
            Running { entry, proxies: vec![p], commands: vec![cmd] }
        }
        Setup::Bw1Hop | Setup::Bw1HopPolicy => {
            let policy = setup == Setup::Bw1HopPolicy;
            let (p, l, cmd) =
                sidecar(env, &format!("{tag}-client"), |l| client_config(l, env.backend, policy)).await?;
            Running { entry: l.outbound, proxies: vec![p], commands: vec![cmd] }
        }
        Setup::Bw1HopTrace100 | Setup::Bw1HopTrace1 => {
            let ratio = if setup == Setup::Bw1HopTrace100 { 1.0 } else { 0.01 };
            let (p, l, cmd) = sidecar(env, &format!("{tag}-client"), |l| {
                client_config(l, env.backend, false) + &tracing_section(env.backend, ratio)
            })
            .await?;
            Running { entry: l.outbound, proxies: vec![p], commands: vec![cmd] }
        }
        Setup::Bw1HopRoute1 | Setup::Bw1HopRoutes50 => {
            let n = if setup == Setup::Bw1HopRoute1 { 1 } else { 50 };
            let (p, l, cmd) =
                sidecar(env, &format!("{tag}-client"), |l| client_config(l, env.backend, false) + &routes(n))
                    .await?;
            Running { entry: l.outbound, proxies: vec![p], commands: vec![cmd] }
        }
        Setup::Bw2Hop => {
            let (server, server_l, server_cmd) =
                sidecar(env, &format!("{tag}-server"), |l| server_config(l, env.backend)).await?;
            let (client, client_l, client_cmd) =
                sidecar(env, &format!("{tag}-client"), |l| client_config(l, server_l.inbound, false)).await?;
            Running {
                entry: client_l.outbound,
                proxies: vec![client, server],
                commands: vec![client_cmd, server_cmd],
            }
        }
    };
    // A request through the setup must reach the backend: a benchmark of 404s would be fast and
    // meaningless.
    match procs::probe(running.entry, "/", "backend").await {
        Ok(200) => Ok(running),
        other => {
            let logs: Vec<String> =
                running.proxies.iter_mut().map(|p| format!("{}:\n{}", p.name(), p.log_tail())).collect();
            let what = match other {
                Ok(status) => format!("status {status}"),
                Err(e) => format!("{e:#}"),
            };
            let stopping = std::mem::take(&mut running.proxies);
            for p in stopping {
                p.stop().await;
            }
            bail!(
                "{}: GET / with Host: backend through {} did not reach the backend ({what})\n{}",
                setup.name(),
                running.entry,
                logs.join("\n")
            )
        }
    }
}

fn protocol_tag(p: Protocol) -> &'static str {
    match p {
        Protocol::Http1 => "http1",
        Protocol::H2c => "h2c",
    }
}

/// The listeners one sidecar gets.
#[derive(Debug, Clone, Copy)]
struct SidecarListeners {
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
}

/// Starts one sidecar with the configuration `config` makes for its listeners; returns it, its
/// listeners and its command line.
async fn sidecar(
    env: &Env,
    tag: &str,
    config: impl FnOnce(&SidecarListeners) -> String,
) -> anyhow::Result<(Proc, SidecarListeners, String)> {
    let l = SidecarListeners {
        outbound: procs::free_port()?,
        inbound: procs::free_port()?,
        admin: procs::free_port()?,
    };
    let path = env.dir.join(format!("{tag}.yaml"));
    write(&path, &config(&l))?;
    let args: Vec<String> =
        ["run", "--config", &path.display().to_string(), "--no-watch"].map(String::from).into();
    let mut p = env.spawn_proxy(tag, &env.sidecar, &args)?;
    p.wait_listening(l.admin, env.startup()).await?;
    wait_ready(&mut p, l.admin, env.startup()).await?;
    Ok((p, l, command(&env.proxy_cpus, &env.sidecar, &args)))
}

/// Waits for the admin `/ready` to answer 200 (`within` at most).
async fn wait_ready(p: &mut Proc, admin: SocketAddr, within: std::time::Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        p.check_alive()?;
        if matches!(procs::probe(admin, "/ready", "admin").await, Ok(200)) {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    bail!("{} was not ready within {within:?}; its log ends with:\n{}", p.name(), p.log_tail())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn command(cpus: &str, program: &Path, args: &[String]) -> String {
    format!("taskset -c {cpus} {} {}", program.display(), args.join(" "))
}

/// Each proxy configuration, as the report shows it: with illustrative ports (the run picks free
/// ones) — backend on 8080, HAProxy on 8000, client sidecar on 1500x, server sidecar on 1600x.
pub fn example_configs() -> Vec<(&'static str, &'static str, String)> {
    let a = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let client = SidecarListeners { outbound: a(15001), inbound: a(15006), admin: a(15000) };
    let server = SidecarListeners { outbound: a(16001), inbound: a(16006), admin: a(16000) };
    vec![
        ("bw-1hop: the sidecar", "yaml", client_config(&client, a(8080), false)),
        (
            "bw-1hop-policy: the sidecar, with every policy layer",
            "yaml",
            client_config(&client, a(8080), true),
        ),
        ("bw-2hop: the client sidecar", "yaml", client_config(&client, server.inbound, false)),
        ("bw-2hop: the server sidecar", "yaml", server_config(&server, a(8080))),
        (
            "haproxy, HTTP/1.1 (for h2c the server line ends with `proto h2`)",
            "haproxy",
            haproxy_config(a(8000), a(8080), Protocol::Http1),
        ),
    ]
}

/// The client sidecar: calls to `backend.bench` go to `upstream`; with `policy`, under a
/// policy that uses every layer and triggers none at this load.
fn client_config(l: &SidecarListeners, upstream: SocketAddr, policy: bool) -> String {
    let mut doc = format!(
        "apiVersion: breakwater.dev/v1alpha1
kind: SidecarConfig
listeners: {{outbound: \"{}\", inbound: \"{}\", admin: \"{}\"}}
pod: {{name: bench-client, namespace: bench, labels: {{app: bench-client}}}}
services:
  - name: backend
    namespace: bench
    ports: [80]
    endpoints: [\"{upstream}\"]
",
        l.outbound, l.inbound, l.admin
    );
    if policy {
        doc.push_str(FULL_POLICY);
    }
    doc
}

/// `n` HTTPRoutes on Service `backend`, one rule each. The last, `catch-all`, takes every call
/// (`PathPrefix /`, the lowest precedence there is); the others are what a real Service's routes
/// look like, and match none of the bench's `GET /`: path prefixes, exact paths with a method,
/// a header on `/` (which outranks the catch-all, so it is tried first), prefixes with a query
/// parameter, and regular expressions. Every call is checked against all of them before it
/// reaches the catch-all: the worst case for matching.
pub fn routes(n: usize) -> String {
    let mut docs = String::new();
    for i in 0..n {
        let matches = if i + 1 == n {
            "[{path: {type: PathPrefix, value: /}}]".to_owned()
        } else {
            match i % 5 {
                0 => format!("[{{path: {{type: PathPrefix, value: /api/v{i}}}}}]"),
                1 => format!("[{{path: {{type: Exact, value: /orders/{i}}}, method: POST}}]"),
                2 => format!(
                    "[{{path: {{type: PathPrefix, value: /}}, headers: [{{name: x-tenant, value: t{i}}}]}}]"
                ),
                3 => format!(
                    "[{{path: {{type: PathPrefix, value: /reports/{i}}}, queryParams: [{{name: format, value: csv}}]}}]"
                ),
                _ => format!("[{{path: {{type: RegularExpression, value: \"/v{i}/items/[0-9]+\"}}}}]"),
            }
        };
        let name = if i + 1 == n { "catch-all".to_owned() } else { format!("route-{i}") };
        docs.push_str(&format!(
            "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: bench}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: backend, port: 80}}]
  rules:
    - matches: {matches}
      backendRefs: [{{name: backend, port: 80}}]
"
        ));
    }
    docs
}

/// Tracing on, sampling `ratio` of the requests, exported over OTLP/HTTP to `sink` (the backend,
/// which answers any POST and drops the body: the bench prices producing and sending spans, not a
/// collector). Appended to the SidecarConfig document.
fn tracing_section(sink: SocketAddr, ratio: f64) -> String {
    format!(
        "telemetry:\n  endpoint: \"http://{sink}\"\n  protocol: http/protobuf\n  sampler: traceidratio\n  samplerArg: {ratio}\n"
    )
}

/// Every policy layer, generous enough that none triggers: the bench prices the layers, not
/// their decisions.
const FULL_POLICY: &str = "---
apiVersion: breakwater.dev/v1alpha1
kind: CommunicationPolicy
metadata: {name: backend-full, namespace: bench}
spec:
  targetRef: {name: backend}
  timeouts: {connect: 1s, perTry: 2s, request: 5s, idle: 1m}
  retries:
    attempts: 3
    retryOn:
      conditions: [connect-failure, reset, gateway-error]
      httpStatusCodes: [429]
    backoff: {base: 10ms, max: 100ms}
    budget: {ratio: 0.2, minPerSecond: 10}
  circuitBreaker:
    consecutiveFailures: 50
    failureRate: {threshold: 0.5, window: 10s, minimumRequests: 100}
    openDuration: 5s
    maxOpenDuration: 1m
    scope: Endpoint
  bulkhead:
    outbound: {maxConcurrentRequests: 1024, maxQueued: 1024, maxQueueWait: 1s}
  mode: Enforce
";

/// The server sidecar: inbound calls for `backend.bench` go to the app at `app`.
fn server_config(l: &SidecarListeners, app: SocketAddr) -> String {
    format!(
        "apiVersion: breakwater.dev/v1alpha1
kind: SidecarConfig
listeners: {{outbound: \"{}\", inbound: \"{}\", admin: \"{}\"}}
inbound:
  app: \"{app}\"
  service: {{name: backend, namespace: bench}}
pod: {{name: backend-0, namespace: bench, labels: {{app: backend}}}}
",
        l.outbound, l.inbound, l.admin
    )
}

/// HAProxy doing the sidecar's job: one thread, keep-alive and connection reuse to the backend
/// (h2 to it when the client speaks h2c), connect/server/client timeouts, up to 2 retries on
/// connect failures, empty responses and 502/503/504 with redispatch, `maxconn` per server as
/// the bulkhead. HTTP/2 prior knowledge from clients is detected on the plain `bind`.
fn haproxy_config(entry: SocketAddr, backend: SocketAddr, protocol: Protocol) -> String {
    let proto = match protocol {
        Protocol::Http1 => "",
        Protocol::H2c => " proto h2",
    };
    format!(
        "global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 10m
    timeout server 5s
    timeout http-request 10s
    timeout http-keep-alive 10m
    timeout queue 1s
    option http-keep-alive
    http-reuse always
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response response-timeout 502 503 504

frontend bench
    bind {entry}
    default_backend backend

backend backend
    server backend-0 {backend} maxconn 1024{proto}
"
    )
}
