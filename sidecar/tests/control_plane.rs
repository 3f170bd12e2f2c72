//! Cluster mode against a config API that misbehaves on purpose: a real TLS + HTTP/2 server on
//! loopback, scripted per connection, that sends good snapshots, refused ones, malformed and
//! truncated frames, garbage in place of TLS or HTTP/2, an error status, or nothing at all.
//! Whatever it does, the sidecar keeps serving its last good snapshot, retries, and says so in a
//! metric and a log line. (The real operator's side is proven in `e2e/tests/operator/stream.rs`.)

mod support;

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use breakwater_crds::snapshot::stream::{Ack, Frames, frame};
use breakwater_fault::{FaultServer, Faults};
use breakwater_sidecar::store::stream::ControlPlane;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, channel::Channel, combinators::BoxBody};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use support::*;
use tokio::{io::AsyncWriteExt, sync::Mutex};

/// What the config API does with one connection.
#[derive(Clone)]
enum Act {
    /// Answers 200 and sends `chunks` (raw bytes) on the stream; then ends it (`close`) or holds
    /// it open.
    Send { chunks: Vec<Vec<u8>>, close: bool },
    /// Answers this status with a text body.
    Status(StatusCode, &'static str),
    /// Writes these bytes in place of a TLS handshake.
    NotTls(&'static [u8]),
    /// Completes TLS, then writes these bytes in place of HTTP/2.
    NotHttp2(&'static [u8]),
    /// Completes TLS and HTTP/2, and never answers the request.
    Hang,
}

/// A scripted config API: connection `i` gets the script's `i`-th act (the last one repeats).
struct ConfigApi {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    connections: Arc<AtomicUsize>,
    acks: tokio::sync::mpsc::UnboundedReceiver<Ack>,
    requests: Arc<Mutex<Vec<(String, String)>>>,
}

impl ConfigApi {
    async fn start(script: Vec<Act>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let issuer = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
        let leaf = rcgen::CertificateParams::new(vec!["breakwater-operator.breakwater.svc".to_owned()])
            .expect("leaf params");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = leaf.signed_by(&key, &issuer).expect("leaf");
        std::fs::write(dir.path().join("ca.crt"), issuer.pem()).expect("write the CA");
        std::fs::write(dir.path().join("token"), "header.payload.signature\n").expect("write the token");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key"),
            )
            .expect("TLS config");
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (ack_tx, acks) = tokio::sync::mpsc::unbounded_channel();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (count, seen) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let act = {
                    let mut s = script.lock().await;
                    if s.len() > 1 { s.pop_front() } else { s.front().cloned() }
                }
                .expect("a script with at least one act");
                let (acceptor, ack_tx, seen) = (acceptor.clone(), ack_tx.clone(), seen.clone());
                tokio::spawn(async move {
                    if let Act::NotTls(bytes) = act {
                        let _ = tcp.write_all(bytes).await;
                        return;
                    }
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    if let Act::NotHttp2(bytes) = act {
                        let _ = tls.write_all(bytes).await;
                        let _ = tls.shutdown().await;
                        return;
                    }
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (act, ack_tx, seen) = (act.clone(), ack_tx.clone(), seen.clone());
                        async move { answer(act, req, ack_tx, seen).await }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self { addr, dir, connections, acks, requests }
    }

    /// The sidecar's settings for this API, with a snapshot directory and a short timeout.
    fn control_plane(&self, snapshot_dir: &Path) -> ControlPlane {
        ControlPlane {
            url: format!("https://{}", self.addr).parse().expect("url"),
            ca: self.dir.path().join("ca.crt"),
            token: self.dir.path().join("token"),
            pod: ("shop".into(), "checkout-1".into()),
            snapshot_dir: Some(snapshot_dir.to_owned()),
            server_name: Some("breakwater-operator.breakwater.svc".into()),
            timeout: Duration::from_secs(1),
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// The next acknowledgement, within `PATIENCE`.
    async fn ack(&mut self) -> Ack {
        tokio::time::timeout(PATIENCE, self.acks.recv())
            .await
            .expect("an acknowledgement in time")
            .expect("the server is running")
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    act: Act,
    req: Request<hyper::body::Incoming>,
    acks: tokio::sync::mpsc::UnboundedSender<Ack>,
    seen: Arc<Mutex<Vec<(String, String)>>>,
) -> Result<Response<Body>, Infallible> {
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    seen.lock().await.push((req.uri().path().to_owned(), auth));
    match act {
        Act::Hang => std::future::pending().await,
        Act::Status(status, text) => {
            let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())).boxed());
            *resp.status_mut() = status;
            Ok(resp)
        }
        Act::Send { chunks, close } => {
            // The sidecar's acknowledgements, frame by frame.
            let mut body = req.into_body();
            tokio::spawn(async move {
                let mut frames = Frames::default();
                while let Some(Ok(f)) = body.frame().await {
                    let Ok(data) = f.into_data() else { continue };
                    frames.push(&data);
                    while let Ok(Some(bytes)) = frames.next_frame() {
                        let _ = acks.send(serde_json::from_slice(&bytes).expect("an Ack"));
                    }
                }
            });
            let (mut tx, body) = Channel::<Bytes, Infallible>::new(4);
            tokio::spawn(async move {
                for chunk in chunks {
                    if tx.send_data(Bytes::from(chunk)).await.is_err() {
                        return;
                    }
                }
                if !close {
                    // Held open until the sidecar goes away.
                    let _keep = tx;
                    std::future::pending::<()>().await;
                }
            });
            Ok(Response::new(body.boxed()))
        }
        Act::NotTls(_) | Act::NotHttp2(_) => unreachable!("answered before HTTP/2"),
    }
}

/// A snapshot for pod `shop/checkout-1`: Service `payments.shop` port 80 → `endpoint`.
fn snapshot(counter: u64, endpoint: SocketAddr) -> Value {
    json!({
        "schema": 1,
        "version": {"counter": counter, "hash": format!("h{counter}")},
        "identity": {"name": "checkout-1", "namespace": "shop"},
        "services": [{"name": "payments", "namespace": "shop",
                      "ports": [{"port": 80, "endpoints": [{"address": endpoint.to_string()}]}]}],
    })
}

fn framed(v: &Value) -> Vec<u8> {
    frame(v.to_string().as_bytes())
}

async fn fault(name: &str) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", Faults { name: name.into(), ..Default::default() })
        .await
        .expect("fault server")
}

async fn config_json(admin_addr: SocketAddr) -> Value {
    let req = Request::get("/config").header("host", "admin").body(Full::new(Bytes::new())).expect("request");
    serde_json::from_slice(&http1(admin_addr, req).await.body).expect("json")
}

async fn ready(admin_addr: SocketAddr) -> u16 {
    let req = Request::get("/ready").header("host", "admin").body(Full::new(Bytes::new())).expect("request");
    http1(admin_addr, req).await.status
}

async fn metric_at(admin_addr: SocketAddr, prefix: &str) -> f64 {
    let req =
        Request::get("/metrics").header("host", "admin").body(Full::new(Bytes::new())).expect("request");
    let text = http1(admin_addr, req).await.text();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn errors(reason: &str) -> String {
    format!("breakwater_config_stream_errors_total{{reason=\"{reason}\"}}")
}

const SETTINGS: &str = "apiVersion: breakwater.dev/v1alpha1\nkind: SidecarConfig\n\
    listeners: {outbound: 127.0.0.1:0, inbound: 127.0.0.1:0, admin: 127.0.0.1:0}\n\
    inbound: {app: \"127.0.0.1:1\"}\nservices: []\n";

#[tokio::test]
async fn snapshots_are_applied_acknowledged_and_kept_on_disk_and_a_refused_one_changes_nothing() {
    let (v1, v3) = (fault("v1").await, fault("v3").await);
    let mut refused = snapshot(2, v3.addr());
    refused["schema"] = json!(9);
    let mut api = ConfigApi::start(vec![
        // The first connection is never answered: the sidecar is not ready meanwhile.
        Act::Hang,
        Act::Send { chunks: vec![framed(&snapshot(1, v1.addr())), framed(&refused)], close: false },
    ])
    .await;
    let disk = tempfile::tempdir().expect("tempdir");
    let sc = breakwater_sidecar::Sidecar::start_cluster(SETTINGS, api.control_plane(disk.path()))
        .await
        .expect("the sidecar starts");
    assert_eq!(ready(sc.admin).await, 503, "not ready before a first snapshot");
    assert_eq!(get(sc.outbound, "http://payments.shop/").await.status, 404, "nothing is routed yet");

    let first = api.ack().await;
    assert_eq!((first.version.counter, first.error.as_deref()), (1, None));
    assert_eq!(ready(sc.admin).await, 200);
    assert_eq!(get(sc.outbound, "http://payments.shop/").await.header("x-served-by"), Some("v1"));
    let second = api.ack().await;
    assert_eq!(second.version.counter, 2);
    let why = second.error.expect("schema 9 is refused, and the acknowledgement says so");
    assert!(why.contains("schema 9"), "{why}");
    assert_eq!(get(sc.outbound, "http://payments.shop/").await.header("x-served-by"), Some("v1"));

    let config = config_json(sc.admin).await;
    assert_eq!(config["snapshot"]["version"], json!({"counter": 1, "hash": "h1"}), "{config}");
    assert_eq!(config["snapshot"]["source"], "stream");
    assert!(config["snapshot"]["receivedAtUnix"].as_u64().is_some_and(|t| t > 1_700_000_000), "{config}");
    let on_disk: Value = serde_json::from_slice(
        &std::fs::read(disk.path().join("snapshot.json")).expect("the last good snapshot"),
    )
    .expect("json");
    assert_eq!(on_disk, snapshot(1, v1.addr()), "only what was applied is kept on disk");
    assert_eq!(metric(&sc, "breakwater_config_stream_connected").await, 1.0);
    assert_eq!(metric(&sc, &errors("timeout")).await, 1.0, "the hung first connection");

    let requests = api.requests.lock().await.clone();
    assert!(
        requests.iter().all(|(path, auth)| path == "/v1/snapshots/shop/checkout-1"
            && auth == "Bearer header.payload.signature"),
        "the pod's own path, its token as bearer: {requests:?}"
    );
}

#[tokio::test]
async fn malformed_and_truncated_streams_keep_the_last_good_snapshot_and_the_sidecar_reconnects() {
    let up = fault("up").await;
    let good = framed(&snapshot(1, up.addr()));
    let mut truncated = 1000u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(b"{\"schema\":1,");
    let mut api = ConfigApi::start(vec![
        // A good snapshot, then a frame that is not JSON.
        Act::Send { chunks: vec![good.clone(), frame(b"{this is not json")], close: false },
        // The stream ends inside a frame.
        Act::Send { chunks: vec![truncated], close: true },
        // A length prefix far over the limit.
        Act::Send { chunks: vec![u32::MAX.to_be_bytes().to_vec()], close: false },
        Act::Send { chunks: vec![good], close: false },
    ])
    .await;
    let disk = tempfile::tempdir().expect("tempdir");
    let sc = breakwater_sidecar::Sidecar::start_cluster(SETTINGS, api.control_plane(disk.path()))
        .await
        .expect("the sidecar starts");
    // (Its acknowledgement may be lost with the session the bad frame right behind it ends.)
    eventually("the first snapshot applied", || async {
        (config_json(sc.admin).await["snapshot"]["version"]["counter"] == 1).then_some(())
    })
    .await;

    let malformed = eventually("three malformed sessions", || async {
        let n = metric(&sc, &errors("malformed")).await;
        // Serving throughout, from the last good snapshot.
        assert_eq!(get(sc.outbound, "http://payments.shop/").await.header("x-served-by"), Some("up"));
        assert_eq!(ready(sc.admin).await, 200);
        (n >= 3.0).then_some(n)
    })
    .await;
    assert_eq!(malformed, 3.0);
    // Then a good session again: the same content, acknowledged, nothing rebuilt.
    assert_eq!(api.ack().await.version.counter, 1);
    assert_eq!(api.connections(), 4);
    let config = config_json(sc.admin).await;
    assert_eq!(config["snapshot"]["version"], json!({"counter": 1, "hash": "h1"}));
    assert_eq!(config["version"], 2, "one reload: the first snapshot over the built-in settings");
    assert_eq!(get(sc.outbound, "http://payments.shop/").await.header("x-served-by"), Some("up"));
}

/// `breakwater-sidecar run --control-plane` as its binary, its log lines collected.
struct ClusterProcess {
    admin: SocketAddr,
    outbound: SocketAddr,
    child: std::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    log: Vec<String>,
}

impl ClusterProcess {
    async fn start(api: &ConfigApi, settings: &Path, snapshot_dir: &Path) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_breakwater-sidecar"))
            .args(["run", "--no-watch", "--config"])
            .arg(settings)
            .args(["--control-plane", &format!("https://{}", api.addr)])
            .arg("--control-plane-ca")
            .arg(api.dir.path().join("ca.crt"))
            .args(["--control-plane-server-name", "breakwater-operator.breakwater.svc"])
            .arg("--token-file")
            .arg(api.dir.path().join("token"))
            .args(["--pod-name", "checkout-1", "--pod-namespace", "shop", "--control-plane-timeout", "1s"])
            .arg("--snapshot-dir")
            .arg(snapshot_dir)
            .args(["--log", "info", "--log-format", "json"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn the sidecar");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut p = Self {
            admin: SocketAddr::from(([0, 0, 0, 0], 0)),
            outbound: SocketAddr::from(([0, 0, 0, 0], 0)),
            child,
            lines,
            log: Vec::new(),
        };
        let started = p.wait_log("the sidecar's listening line", |v| v["fields"]["admin"].is_string()).await;
        let addr =
            |name: &str| started["fields"][name].as_str().and_then(|a| a.parse().ok()).expect("an address");
        (p.admin, p.outbound) = (addr("admin"), addr("outbound"));
        p
    }

    /// Reads log lines until one (a JSON object) satisfies `matches`, within `PATIENCE`.
    async fn wait_log(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        if let Some(found) = self.log.iter().filter_map(|l| serde_json::from_str(l).ok()).find(|v| matches(v))
        {
            return found;
        }
        loop {
            let Ok(Some(line)) = tokio::time::timeout_at(deadline, self.lines.recv()).await else {
                panic!("no log line for {what} within {PATIENCE:?}; the log:\n{}", self.log.join("\n"))
            };
            self.log.push(line.clone());
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && matches(&v)
            {
                return v;
            }
        }
    }
}

impl Drop for ClusterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A warning that a session failed for `reason`.
fn failed_for(reason: &'static str) -> impl Fn(&Value) -> bool {
    move |v| v["level"] == "WARN" && v["fields"]["reason"] == reason
}

#[tokio::test]
async fn garbage_an_error_or_a_hung_config_api_leave_the_sidecar_serving_its_snapshot_from_disk() {
    let up = fault("up").await;
    let disk = tempfile::tempdir().expect("tempdir");
    std::fs::write(disk.path().join("snapshot.json"), snapshot(1, up.addr()).to_string()).expect("write");
    let settings = disk.path().join("settings.yaml");
    std::fs::write(&settings, SETTINGS).expect("write");
    let mut api = ConfigApi::start(vec![
        Act::NotTls(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
        Act::NotHttp2(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"),
        Act::Status(StatusCode::FORBIDDEN, "pod shop/other is not the pod this token is bound to"),
        // 200, then never a snapshot.
        Act::Send { chunks: vec![], close: false },
        // Never an answer at all.
        Act::Hang,
        Act::Send { chunks: vec![framed(&snapshot(1, up.addr()))], close: false },
    ])
    .await;
    let mut sc = ClusterProcess::start(&api, &settings, disk.path()).await;
    assert_eq!(ready(sc.admin).await, 200, "ready at once from the snapshot on disk");
    assert_eq!(config_json(sc.admin).await["snapshot"]["source"], "disk");

    for (reason, says) in [
        ("tls", "TLS"),
        ("http2", "HTTP/2"),
        ("refused", "not the pod this token is bound to"),
        ("timeout", "no snapshot"),
        ("timeout", "no answer"),
    ] {
        let line = sc
            .wait_log(reason, |v| {
                failed_for(reason)(v) && v["fields"]["error"].as_str().is_some_and(|e| e.contains(says))
            })
            .await;
        assert!(
            line["fields"]["message"].as_str().is_some_and(|m| m.contains("serving the last good snapshot")),
            "{line}"
        );
        // Serving, from the snapshot on disk, whatever the config API does.
        assert_eq!(get(sc.outbound, "http://payments.shop/").await.header("x-served-by"), Some("up"));
        assert_eq!(ready(sc.admin).await, 200);
    }
    for (reason, n) in [("tls", 1.0), ("http2", 1.0), ("refused", 1.0), ("timeout", 2.0)] {
        assert_eq!(metric_at(sc.admin, &errors(reason)).await, n, "{reason}");
    }
    // The config API recovers: the same content, now from the stream.
    assert_eq!(api.ack().await.version.counter, 1);
    eventually("the snapshot's source to be the stream", || async {
        (config_json(sc.admin).await["snapshot"]["source"] == "stream").then_some(())
    })
    .await;
    assert_eq!(metric_at(sc.admin, "breakwater_config_stream_connected").await, 1.0);
}
