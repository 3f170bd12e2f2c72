//! Test support: start a sidecar in-process on loopback, and talk HTTP/1.1, HTTP/2 and raw
//! TCP to it. Each test owns what it starts; everything stops when dropped.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::{net::SocketAddr, time::Duration};

use breakwater_sidecar::Sidecar;
use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A bound on every test's waiting, so a bug fails the test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// `SidecarConfig` YAML with every listener on an ephemeral loopback port.
pub fn sidecar_yaml(services: &str, inbound_app: Option<SocketAddr>, extra: &str) -> String {
    let inbound = inbound_app.map_or(String::new(), |a| {
        format!("inbound:\n  app: {a}\n  service: {{name: payments, namespace: shop}}\n")
    });
    format!(
        "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\n\
         listeners: {{outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, admin: 127.0.0.1:0}}\n\
         {inbound}{extra}services:\n{services}"
    )
}

/// A service entry for [`sidecar_yaml`].
pub fn service(name: &str, endpoints: &[SocketAddr]) -> String {
    let eps: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!("  - name: {name}\n    namespace: shop\n    endpoints: [{}]\n", eps.join(", "))
}

/// A CommunicationPolicy document for `service` with `spec` (YAML, indented by 2).
pub fn policy(name: &str, service: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\n\
         metadata: {{name: {name}, namespace: shop}}\nspec:\n  targetRef: {{name: {service}}}\n{spec}"
    )
}

/// The path of a Go-built tool from `e2e/gobuild/<dir>/build.sh path` (cached outside the work
/// tree); fails saying which `make` target builds it when it is missing.
pub fn go_tool(dir: &str, make_target: &str, what: &str) -> std::path::PathBuf {
    let script =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../e2e/gobuild/{dir}/build.sh"));
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("path")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    let path = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(path.is_file(), "{} is missing: run `make {make_target}` ({what})", path.display());
    path
}

/// Starts a sidecar from YAML.
pub async fn start(yaml: &str) -> Sidecar {
    Sidecar::start(yaml, None).await.unwrap_or_else(|e| panic!("sidecar failed to start: {e:#}\n{yaml}"))
}

/// A response with its body read.
#[derive(Debug)]
pub struct Got {
    /// Status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Trailers, if any.
    pub trailers: Option<HeaderMap>,
}

impl Got {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn collect<B>(resp: Response<B>) -> Got
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.expect("response body");
    let trailers = collected.trailers().cloned();
    Got { status: parts.status.as_u16(), headers: parts.headers, body: collected.to_bytes(), trailers }
}

/// One HTTP/1.1 request over a fresh connection to `proxy`.
pub async fn http1(proxy: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    tokio::time::timeout(PATIENCE, async {
        let io = TokioIo::new(TcpStream::connect(proxy).await.expect("connect to the proxy"));
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
        tokio::spawn(conn.with_upgrades());
        collect(send.send_request(req).await.expect("response")).await
    })
    .await
    .expect("HTTP/1.1 request timed out")
}

/// `GET url` through the proxy in explicit mode (absolute-form request target).
pub async fn get(proxy: SocketAddr, url: &str) -> Got {
    let req = Request::get(url).body(Full::new(Bytes::new())).expect("request");
    http1(proxy, req).await
}

/// One HTTP/2 (prior knowledge) request over a fresh connection to `proxy`.
pub async fn http2(proxy: SocketAddr, req: Request<Full<Bytes>>) -> Got {
    tokio::time::timeout(PATIENCE, async {
        let stream = TcpStream::connect(proxy).await.expect("connect to the proxy");
        stream.set_nodelay(true).expect("nodelay");
        let io = TokioIo::new(stream);
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.expect("h2 handshake");
        tokio::spawn(conn);
        collect(send.send_request(req).await.expect("response")).await
    })
    .await
    .expect("HTTP/2 request timed out")
}

/// A gRPC unary call (empty message) to `url` over HTTP/2.
pub async fn grpc(proxy: SocketAddr, url: &str) -> Got {
    let req = Request::post(url)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("request");
    http2(proxy, req).await
}

/// Writes `raw` on a fresh connection and reads until the peer closes or `PATIENCE` ends.
pub async fn raw(proxy: SocketAddr, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Fetches an admin path.
pub async fn admin(sidecar: &Sidecar, path: &str) -> Got {
    let req = Request::get(path).header("host", "admin").body(Full::new(Bytes::new())).expect("request");
    http1(sidecar.admin, req).await
}

/// The value of the metric line that starts with `prefix` (labels included), or 0.
pub async fn metric(sidecar: &Sidecar, prefix: &str) -> f64 {
    let text = admin(sidecar, "/metrics").await.text();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Polls `check` until it returns `Some` or `PATIENCE` passes (then panics with `what`).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback address nothing listens on.
pub async fn closed_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// An empty body.
pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// A sidecar run as its real binary (for what only `main` sets up: signals, telemetry).
pub struct SidecarProcess {
    /// Outbound listener.
    pub outbound: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl SidecarProcess {
    /// Starts `breakwater-sidecar run` on `yaml` with extra environment variables.
    pub fn start(yaml: &str, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sidecar.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater-sidecar"));
        cmd.args(["run", "--no-watch", "--config"]).arg(&path).stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn the sidecar");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line.clone()).is_err() {
                    eprintln!("{line}");
                }
            }
        });
        let ready = loop {
            let line = rx.recv_timeout(PATIENCE).expect("the sidecar logs readiness");
            if line.contains("sidecar ready") {
                break line;
            }
            assert!(!line.contains("ERROR") && !line.contains("error:"), "the sidecar failed: {line}");
        };
        let field = |name: &str| -> SocketAddr {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {name} address in {ready:?}"))
        };
        Self { outbound: field("outbound"), admin: field("admin"), child, _dir: dir }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit (after a signal) and returns how it exited.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait for the sidecar")
    }
}

impl Drop for SidecarProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
