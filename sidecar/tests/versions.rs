//! Each upstream is spoken to in the HTTP version it speaks, whatever the caller's: declared by
//! the port's `appProtocol`, else learned once per endpoint and remembered. Real apps often
//! speak only one: an HTTP/1.1-only app behind an HTTP/2 caller must not answer 502 (nor open
//! its breaker for everyone), and an h2c-only app must serve HTTP/1.1 callers.

mod support;

use breakwater_fault::{FaultServer, Faults, HttpVersions};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

async fn speaking(name: &str, http: HttpVersions) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", Faults { name: name.into(), http, ..Default::default() })
        .await
        .expect("fault server")
}

fn post(url: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post(url).body(Full::new(Bytes::from_static(body.as_bytes()))).expect("request")
}

fn echo(got: &Got) -> serde_json::Value {
    assert_eq!(got.status, 200, "{got:?}");
    serde_json::from_slice(&got.body).unwrap_or_else(|e| panic!("{e}: {got:?}"))
}

/// A breaker that two upstream failures in a row would open: any 502 of a version mismatch
/// would show, to HTTP/1.1 callers too.
const BREAKER: &str = "  circuitBreaker: {consecutiveFailures: 2, openDuration: 1m}\n";

#[tokio::test]
async fn http2_callers_reach_an_http1_only_app() {
    let up = speaking("old-app", HttpVersions::Http1).await;
    let yaml = sidecar_yaml(&service("payments", &[up.addr()]), None, "") + &policy("b", "payments", BREAKER);
    let sc = start(&yaml).await;
    for _ in 0..5 {
        let got =
            http2(sc.outbound, Request::get("http://payments/echo").body(Full::default()).expect("req"))
                .await;
        assert_eq!(echo(&got)["version"], "HTTP/1.1", "translated to HTTP/1.1 for the app");
    }
    // With a body, and the caller's trailer-less HTTP/2 framing turned into HTTP/1.1's.
    let got = http2(sc.outbound, post("http://payments/echo", "hello")).await;
    assert_eq!(echo(&got)["bodyLen"], 5);
    // HTTP/1.1 callers were never affected.
    assert_eq!(get(sc.outbound, "http://payments/").await.status, 200);
    assert_eq!(up.stats().failures(), 0);
    let failed = metric(
        &sc,
        "breakwater_requests_total{service=\"payments.shop\",direction=\"outbound\",status_class=\"5xx\"}",
    )
    .await;
    assert_eq!(failed, 0.0, "no call failed");
}

#[tokio::test]
async fn http1_callers_reach_an_h2c_only_app() {
    let up = speaking("grpc-ish", HttpVersions::Http2).await;
    let yaml = sidecar_yaml(&service("payments", &[up.addr()]), None, "") + &policy("b", "payments", BREAKER);
    let sc = start(&yaml).await;
    // The first call finds out (an HTTP/1.1 request is no HTTP/2 preface: nothing reached the
    // app) and is sent again over HTTP/2.
    for _ in 0..3 {
        let got =
            http1(sc.outbound, Request::get("http://payments/echo").body(Full::default()).expect("req"))
                .await;
        assert_eq!(echo(&got)["version"], "HTTP/2.0", "translated to HTTP/2 for the app");
    }
    let got = http1(sc.outbound, post("http://payments/echo", "hello")).await;
    assert_eq!(echo(&got)["bodyLen"], 5);
    let got = http2(sc.outbound, post("http://payments/echo", "hello")).await;
    assert_eq!(echo(&got)["version"], "HTTP/2.0");
}

#[tokio::test]
async fn declared_versions_are_spoken_from_the_first_call() {
    let h1 = speaking("h1", HttpVersions::Http1).await;
    let h2 = speaking("h2", HttpVersions::Http2).await;
    let services = format!(
        "{}    appProtocol: http\n{}    appProtocol: kubernetes.io/h2c\n",
        service("old", &[h1.addr()]),
        service("grpc", &[h2.addr()])
    );
    let sc = start(&sidecar_yaml(&services, None, "")).await;
    // A POST with a body on the very first call: nothing to learn, nothing to send twice.
    let got = http2(sc.outbound, post("http://old/echo", "hello")).await;
    assert_eq!((echo(&got)["version"].clone(), echo(&got)["bodyLen"].clone()), ("HTTP/1.1".into(), 5.into()));
    let got = http1(sc.outbound, post("http://grpc/echo", "hello")).await;
    assert_eq!((echo(&got)["version"].clone(), echo(&got)["bodyLen"].clone()), ("HTTP/2.0".into(), 5.into()));
    // Declared: no probe connection beside the one the calls used.
    assert_eq!(h1.stats().connections.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(h2.stats().connections.load(std::sync::atomic::Ordering::Relaxed), 1);
}
