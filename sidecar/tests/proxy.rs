//! The proxy core through real sockets on loopback: protocols, routing, errors, timeouts,
//! bad input.

mod support;

use std::time::Duration;

use breakwater_fault::{FaultServer, Faults, GarbageServer, TcpEchoServer};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn fault(name: &str) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", Faults { name: name.into(), ..Default::default() })
        .await
        .expect("fault server")
}

#[tokio::test]
async fn routes_by_absolute_uri_with_every_name_form() {
    let up = fault("payments-1").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;
    for host in
        ["payments", "payments.shop", "payments.shop.svc", "payments.shop.svc.cluster.local", "PAYMENTS.shop"]
    {
        let got = get(sc.outbound, &format!("http://{host}/hello")).await;
        assert_eq!(got.status, 200, "{host}: {got:?}");
        assert_eq!(got.header("x-served-by"), Some("payments-1"), "{host}");
    }
    assert_eq!(up.stats().requests(), 5);
}

#[tokio::test]
async fn routes_by_host_header_and_keeps_it() {
    let up = fault("payments-1").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;
    let req =
        Request::get("/echo").header("host", "payments.shop:80").body(Full::new(Bytes::new())).expect("req");
    let got = http1(sc.outbound, req).await;
    assert_eq!(got.status, 200);
    let echo: serde_json::Value = serde_json::from_slice(&got.body).expect("json");
    assert_eq!(echo["headers"]["host"], "payments.shop:80", "the upstream sees the caller's Host");
}

#[tokio::test]
async fn unknown_host_gets_404_no_route() {
    let up = fault("p").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;
    let got = get(sc.outbound, "http://inventory/").await;
    assert_eq!(got.status, 404);
    assert_eq!(got.header("breakwater-error"), Some("no-route"));
    let got = grpc(sc.outbound, "http://inventory/pkg.Svc/Call").await;
    assert_eq!(got.status, 200, "gRPC errors are trailers-only responses");
    assert_eq!(got.header("grpc-status"), Some("12"));
    assert_eq!(got.header("breakwater-error"), Some("no-route"));
}

#[tokio::test]
async fn keep_alive_reuses_the_client_connection_and_chunked_bodies_pass() {
    let up = fault("p").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;
    let mut s = tokio::net::TcpStream::connect(sc.outbound).await.expect("connect");
    let req = b"POST http://payments/echo HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    for _ in 0..3 {
        s.write_all(req).await.expect("write");
        let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("read in time").expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("\"bodyLen\":5"), "the chunked body arrived whole: {text}");
    }
    assert_eq!(
        up.stats().connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one pooled upstream connection"
    );
}

#[tokio::test]
async fn http2_and_grpc_trailers_are_preserved() {
    let up =
        FaultServer::bind("127.0.0.1:0", Faults { grpc_status: 14, ..Default::default() }).await.expect("up");
    let sc = start(&sidecar_yaml(&service("inventory", &[up.addr()]), None, "")).await;
    let got = grpc(sc.outbound, "http://inventory.shop/inventory.v1.Inventory/Get").await;
    assert_eq!(got.status, 200);
    let trailers = got.trailers.expect("gRPC trailers arrive");
    assert_eq!(trailers.get("grpc-status").and_then(|v| v.to_str().ok()), Some("14"));
    let seen = up.stats().seen().await;
    assert_eq!(seen[0].version, "HTTP/2.0", "h2 in, h2 out");
    assert_eq!(seen[0].headers.get("te").map(String::as_str), Some("trailers"));
}

#[tokio::test]
async fn websocket_upgrade_is_passed_through_after_101() {
    let up = fault("ws").await;
    let sc = start(&sidecar_yaml(&service("chat", &[up.addr()]), None, "")).await;
    let mut s = tokio::net::TcpStream::connect(sc.outbound).await.expect("connect");
    s.write_all(
        b"GET http://chat/socket HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("read in time").expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head}");
    s.write_all(b"\x81\x05hello").await.expect("write frame");
    let mut echo = [0u8; 7];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut echo)).await.expect("echo in time").expect("echo");
    assert_eq!(&echo, b"\x81\x05hello", "bytes flow both ways after the upgrade");
}

#[tokio::test]
async fn opaque_tcp_passes_through_inbound() {
    let app = TcpEchoServer::bind("127.0.0.1:0", None).await.expect("echo");
    let sc = start(&sidecar_yaml("  []\n", Some(app.addr()), "")).await;
    let inbound = sc.inbound.expect("inbound listener");
    let mut s = tokio::net::TcpStream::connect(inbound).await.expect("connect");
    // A TLS ClientHello-like first byte: not HTTP.
    s.write_all(b"\x16\x03\x01binary payload").await.expect("write");
    let mut buf = [0u8; 17];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut buf)).await.expect("in time").expect("read");
    assert_eq!(&buf, b"\x16\x03\x01binary payload");
}

#[tokio::test]
async fn server_first_protocols_are_not_waited_on_forever() {
    let app = TcpEchoServer::bind("127.0.0.1:0", Some(b"220 smtp ready\r\n")).await.expect("echo");
    let extra = "proxy: {detectTimeout: 200ms}\n";
    let sc = start(&sidecar_yaml("  []\n", Some(app.addr()), extra)).await;
    let mut s = tokio::net::TcpStream::connect(sc.inbound.expect("inbound")).await.expect("connect");
    let mut buf = [0u8; 16];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut buf)).await.expect("greeting in time").expect("read");
    assert_eq!(&buf, b"220 smtp ready\r\n");
}

#[tokio::test]
async fn inbound_http_is_forwarded_to_the_app() {
    let app = fault("app").await;
    let sc = start(&sidecar_yaml("  []\n", Some(app.addr()), "")).await;
    let req = Request::get("/x").header("host", "payments").body(Full::new(Bytes::new())).expect("req");
    let got = http1(sc.inbound.expect("inbound"), req).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-served-by"), Some("app"));
    assert_eq!(
        metric(
            &sc,
            "breakwater_requests_total{service=\"payments.shop\",direction=\"inbound\",status_class=\"2xx\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn refused_connection_gets_502_connect_failed() {
    let dead = closed_port().await;
    let sc = start(&sidecar_yaml(&service("payments", &[dead]), None, "")).await;
    let got = get(sc.outbound, "http://payments/").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("breakwater-error"), Some("connect-failed"));
    assert!(
        metric(&sc, "breakwater_upstream_connect_failures_total{service=\"payments.shop\"}").await >= 1.0
    );
}

#[tokio::test]
async fn connect_timeout_gets_502_connect_failed_in_time() {
    // A listener whose accept queue is full: the kernel drops further SYNs, so connect hangs.
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let full = sock.listen(0).expect("listen");
    let addr = full.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let yaml = sidecar_yaml(&service("slowconn", &[addr]), None, "")
        + &policy("p", "slowconn", "  timeouts: {connect: 300ms}\n");
    let sc = start(&yaml).await;
    let started = tokio::time::Instant::now();
    let got = get(sc.outbound, "http://slowconn/").await;
    assert_eq!(got.status, 502, "{got:?}");
    assert_eq!(got.header("breakwater-error"), Some("connect-failed"));
    assert!(started.elapsed() < Duration::from_secs(5), "the connect timeout bounded the wait");
    drop(full);
}

#[tokio::test]
async fn request_timeout_gets_504() {
    let up = fault("slow").await;
    let yaml = sidecar_yaml(&service("payments", &[up.addr()]), None, "")
        + &policy("p", "payments", "  timeouts: {request: 200ms}\n");
    let sc = start(&yaml).await;
    let got = get(sc.outbound, "http://payments/?delay=5s").await;
    assert_eq!(got.status, 504);
    assert_eq!(got.header("breakwater-error"), Some("timeout"));
    let got = grpc(sc.outbound, "http://payments/svc/Slow?delay=5s").await;
    assert_eq!(got.header("grpc-status"), Some("4"), "gRPC gets DEADLINE_EXCEEDED");
    assert!(
        metric(&sc, "breakwater_timeouts_total{service=\"payments.shop\",kind=\"request\"}").await >= 2.0
    );
}

#[tokio::test]
async fn garbage_from_upstream_gets_502_upstream_protocol() {
    let up = GarbageServer::bind("127.0.0.1:0").await.expect("garbage");
    let sc = start(&sidecar_yaml(&service("weird", &[up.addr()]), None, "")).await;
    let got = get(sc.outbound, "http://weird/").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("breakwater-error"), Some("upstream-protocol"));
}

#[tokio::test]
async fn upstream_reset_gets_502_upstream_reset() {
    let up = fault("p").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;
    let got = get(sc.outbound, "http://payments/?reset=1").await;
    assert_eq!(got.status, 502);
    assert_eq!(got.header("breakwater-error"), Some("upstream-reset"));
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let up = fault("p").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;
    let bad = raw(sc.outbound, b"GET / HTTP/1.1\r\nHost: payments\r\nNo colon here\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let bad =
        raw(sc.outbound, format!("GET http://payments/ HTTP/1.1\r\nHost: payments\r\n{many}\r\n").as_bytes())
            .await;
    assert!(bad.starts_with("HTTP/1.1 431"), "too many headers: {bad}");
    let huge = "a".repeat(100_000);
    let bad = raw(
        sc.outbound,
        format!("GET http://payments/ HTTP/1.1\r\nHost: payments\r\nX-Big: {huge}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 431"), "headers too large: {}", &bad[..bad.len().min(80)]);
    let bad =
        raw(sc.outbound, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x01\x09\x00\x00\x00\x00\x00garbage")
            .await;
    assert!(!bad.contains("200"), "a broken h2 stream gets no answer");
    assert_eq!(get(sc.outbound, "http://payments/").await.status, 200, "still serving");
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    let up = fault("p").await;
    let extra = "proxy: {headerReadTimeout: 300ms}\n";
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, extra)).await;
    let mut s = tokio::net::TcpStream::connect(sc.outbound).await.expect("connect");
    s.write_all(b"GET http://payments/ HTTP/1.1\r\nHost: pay").await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy closed the connection of a client that stopped mid-headers");
    assert_eq!(get(sc.outbound, "http://payments/").await.status, 200, "still serving");
}

/// `headerReadTimeout` bounds a request head that has begun, not the silence between two
/// requests of a keep-alive connection (that is `clientIdleTimeout`'s): hyper's own timer ran
/// from the end of each response, so a pooled connection idle for longer was closed under its
/// client, which then raced the close with its next request (a reset, a 502 upstream).
#[tokio::test]
async fn keep_alive_connections_outlive_the_header_read_timeout() {
    let up = fault("p").await;
    let extra = "proxy: {headerReadTimeout: 200ms}\n";
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, extra)).await;
    let io =
        hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(sc.outbound).await.expect("connect"));
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.expect("handshake");
    let conn = tokio::spawn(conn);
    for n in 0..2 {
        if n > 0 {
            // The behaviour under test is the connection's silence itself: three header
            // read timeouts long, well within clientIdleTimeout (10 m by default).
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let req = Request::get("http://payments/").body(empty()).expect("request");
        let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
            .await
            .expect("answered in time")
            .unwrap_or_else(|e| panic!("request {n} on the kept-alive connection: {e}"));
        assert_eq!(resp.status(), 200);
        http_body_util::BodyExt::collect(resp.into_body()).await.expect("body");
    }
    drop(send);
    let _ = conn.await;

    // A head that has begun is still bounded, on a kept-alive connection too.
    let mut s = tokio::net::TcpStream::connect(sc.outbound).await.expect("connect");
    s.write_all(b"GET http://payments/ HTTP/1.1\r\nHost: payments\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("answer in time").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(b"GET http://payments/ HTTP/1.1\r\nHost: pay").await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the proxy closed the connection of a client that stopped mid-headers");
    assert!(out.is_empty(), "no answer to a head that never ended: {}", String::from_utf8_lossy(&out));
}

#[tokio::test]
async fn admin_reports_liveness_readiness_metrics_and_config() {
    let up = fault("p").await;
    let yaml = sidecar_yaml(&service("payments", &[up.addr()]), None, "")
        + &policy("p", "payments", "  timeouts: {request: 2s}\n  retries: {attempts: 2}\n");
    let sc = start(&yaml).await;
    assert_eq!(admin(&sc, "/live").await.status, 200);
    assert_eq!(admin(&sc, "/ready").await.status, 200);
    get(sc.outbound, "http://payments/").await;
    let metrics = admin(&sc, "/metrics").await.text();
    for family in [
        "breakwater_requests_total",
        "breakwater_request_duration_seconds_bucket",
        "breakwater_upstream_connect_failures_total",
        "breakwater_config_reloads_total",
        "breakwater_open_connections",
    ] {
        assert!(metrics.contains(family), "missing {family} in:\n{metrics}");
    }
    assert_eq!(
        metric(
            &sc,
            "breakwater_requests_total{service=\"payments.shop\",direction=\"outbound\",status_class=\"2xx\"}"
        )
        .await,
        1.0
    );
    let config: serde_json::Value = serde_json::from_slice(&admin(&sc, "/config").await.body).expect("json");
    assert_eq!(config["version"], 1);
    let svc = &config["config"]["snapshot"]["services"][0];
    assert_eq!(svc["ports"][0]["policy"]["name"], "shop/p");
    assert_eq!(svc["ports"][0]["policy"]["effective"]["timeouts"]["request"], "2s");
    assert_eq!(svc["ports"][0]["policy"]["effective"]["retries"]["attempts"], 2);
}

#[tokio::test]
async fn idle_client_connections_are_closed() {
    let up = fault("p").await;
    let extra = "proxy: {clientIdleTimeout: 300ms}\n";
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, extra)).await;
    let mut s = tokio::net::TcpStream::connect(sc.outbound).await.expect("connect");
    s.write_all(b"GET http://payments/ HTTP/1.1\r\nHost: payments\r\n\r\n").await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("answer in time").expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Then silence: the proxy closes the keep-alive connection.
    let closed = tokio::time::timeout(PATIENCE, s.read(&mut buf)).await.expect("closed in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "the idle connection was closed");
}

/// RFC 9112 §3.2: a request with two Host lines, or an HTTP/1.1 request with none, is refused
/// with 400 by the sidecar itself (the upstream sees nothing); §3.2.2: an absolute-form target
/// wins over the Host header, which the proxy replaces.
#[tokio::test]
async fn host_header_rules_of_rfc_9112() {
    let up = fault("p").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;

    let got = raw(
        sc.outbound,
        b"GET http://payments/echo HTTP/1.1\r\nHost: inventory.shop\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let body = &got[got.find("\r\n\r\n").expect("a head") + 4..];
    let echo: serde_json::Value = serde_json::from_str(body).expect("echo json");
    assert_eq!(echo["headers"]["host"], "payments", "the proxy replaced the client's Host: {echo}");

    let got = raw(
        sc.outbound,
        b"GET /echo HTTP/1.1\r\nHost: payments\r\nHost: inventory\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "two Host lines: {got}");
    assert!(got.contains("breakwater-error: bad-request"), "{got}");
    let got = raw(sc.outbound, b"GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 400"), "HTTP/1.1 without Host: {got}");
    let got = raw(sc.outbound, b"GET /echo HTTP/1.1\r\nHost: pay ments\r\nConnection: close\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 400"), "an invalid Host: {got}");
    assert_eq!(up.stats().requests(), 1, "only the first request reached the upstream");
    assert_eq!(
        metric(
            &sc,
            "breakwater_client_errors_total{service=\"-\",direction=\"outbound\",reason=\"bad-request\"}"
        )
        .await,
        3.0,
        "client faults are counted, and not against the Service"
    );
}

/// The sidecar's own answers to HEAD carry no body, on HTTP/2 too: END_STREAM on the HEADERS
/// frame, as RFC 9110 §9.3.2 and RFC 9113 §8.1 want (a body there makes h2 clients reset).
#[tokio::test]
async fn head_gets_no_body_from_the_sidecar_on_either_protocol() {
    let up = fault("p").await;
    let sc = start(&sidecar_yaml(&service("payments", &[up.addr()]), None, "")).await;
    // The sidecar's own answer, the upstream's through the sidecar, the fault server's direct,
    // the admin listener's (which speaks HTTP/2 too).
    for (to, url, status) in [
        (sc.outbound, "http://inventory/", 404),
        (sc.outbound, "http://payments/", 200),
        (up.addr(), "http://p/", 200),
        (sc.admin, "http://admin/ready", 200),
        (sc.admin, "http://admin/nothing-here", 404),
    ] {
        let stream = tokio::net::TcpStream::connect(to).await.expect("connect");
        let (client, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
        tokio::spawn(conn);
        let mut client = client.ready().await.expect("ready");
        let req = Request::head(url).body(()).expect("request");
        let (resp, _) = client.send_request(req, true).expect("send");
        let resp =
            tokio::time::timeout(Duration::from_secs(10), resp).await.expect("in time").expect("response");
        assert_eq!(resp.status().as_u16(), status, "{url}");
        assert!(resp.body().is_end_stream(), "{url}: END_STREAM on the HEADERS frame");
    }
    let got =
        raw(sc.outbound, b"HEAD http://inventory/ HTTP/1.1\r\nHost: inventory\r\nConnection: close\r\n\r\n")
            .await;
    assert!(got.starts_with("HTTP/1.1 404"), "{got}");
    assert!(got.ends_with("\r\n\r\n"), "no body after the head: {got:?}");
}

/// Leading empty lines (RFC 9112 §2.2), a lower-case method, or a request line paused past
/// the detect timeout once steered a request to opaque TCP, past every HTTP limit and policy.
/// Each now takes the HTTP path: the inbound requests are counted there.
#[tokio::test]
async fn requests_cannot_steer_detection_to_tcp() {
    let app = fault("app").await;
    let extra = "proxy: {detectTimeout: 200ms}\n";
    let sc = start(&sidecar_yaml("  []\n", Some(app.addr()), extra)).await;
    let inbound = sc.inbound.expect("inbound");
    let got = raw(inbound, b"\r\n\r\nGET /x HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let got = raw(inbound, b"get /x HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 "), "{got}");
    let mut s = tokio::net::TcpStream::connect(inbound).await.expect("connect");
    s.write_all(b"GET /x HT").await.expect("write");
    // The pause is the input under test: longer than detectTimeout.
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(b"TP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n").await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await.expect("in time").expect("read");
    assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    let http = |class: &'static str| {
        let sc = &sc;
        async move {
            metric(
                sc,
                &format!("breakwater_requests_total{{service=\"payments.shop\",direction=\"inbound\",status_class=\"{class}\"}}"),
            )
            .await
        }
    };
    assert_eq!(http("2xx").await + http("4xx").await, 3.0, "all three took the HTTP path");
}

/// A port that declares HTTP (`appProtocol: http`) is never taken as TCP: what is not HTTP
/// gets 400 from the sidecar and never reaches the application.
#[tokio::test]
async fn a_port_declared_http_is_never_tcp() {
    let app = TcpEchoServer::bind("127.0.0.1:0", None).await.expect("echo");
    let yaml = sidecar_yaml("  []\n", Some(app.addr()), "").replace(
        "service: {name: payments, namespace: shop}\n",
        "service: {name: payments, namespace: shop}\n  appProtocol: http\n",
    );
    let sc = start(&yaml).await;
    let got = raw(sc.inbound.expect("inbound"), b"hello, not HTTP\r\n\r\n").await;
    assert!(got.starts_with("HTTP/1.1 400"), "refused by the sidecar, not echoed by the app: {got:?}");
}

/// A port that declares TCP (`appProtocol: tcp`, Linkerd's opaque ports) is forwarded at once:
/// a server-first protocol's greeting does not wait for the detect timeout.
#[tokio::test]
async fn a_port_declared_tcp_is_forwarded_without_waiting() {
    let app = TcpEchoServer::bind("127.0.0.1:0", Some(b"220 smtp ready\r\n")).await.expect("echo");
    let yaml = sidecar_yaml("  []\n", Some(app.addr()), "proxy: {detectTimeout: 30s}\n").replace(
        "service: {name: payments, namespace: shop}\n",
        "service: {name: payments, namespace: shop}\n  appProtocol: tcp\n",
    );
    let sc = start(&yaml).await;
    let mut s = tokio::net::TcpStream::connect(sc.inbound.expect("inbound")).await.expect("connect");
    let mut buf = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
        .await
        .expect("the greeting came before the 30s detect timeout")
        .expect("read");
    assert_eq!(&buf, b"220 smtp ready\r\n");
}
