//! `spec.faults` through the real proxy on loopback: aborts and delays for a share of the
//! calls that carry a tester's header, answered before the call leaves (the upstream's own count
//! shows it never saw them, retries and the breaker never touched them), a delay under the
//! call's deadline, resets on HTTP/1.1 and HTTP/2, gRPC statuses, and DryRun counting without
//! injecting.

mod support;

use std::time::Duration;

use breakwater_fault::{FaultServer, Faults};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::{net::TcpStream, time::Instant};

async fn upstream(name: &str) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", Faults { name: name.into(), ..Default::default() })
        .await
        .expect("fault server")
}

fn tagged(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).header("x-fault-test", "checkout").body(Full::new(Bytes::new())).expect("a request")
}

fn faults_metric(service: &str, fault: &str) -> String {
    format!("breakwater_faults_injected_total{{service=\"{service}.shop\",fault=\"{fault}\"}}")
}

#[tokio::test]
async fn half_the_tagged_calls_are_aborted_before_they_leave_and_no_untagged_one() {
    let up = upstream("payments").await;
    // Retries on 503 and a breaker that opens after two failures: an injected abort must reach
    // neither, or the count below would show retries and the untagged calls would be refused.
    let spec = "  retries: {attempts: 3, retryOn: {httpStatusCodes: [503]}, backoff: {base: 1ms, max: 2ms}}\n\
                \x20 circuitBreaker: {consecutiveFailures: 2, failOn: [5xx]}\n\
                \x20 faults:\n\
                \x20   enabled: true\n\
                \x20   match: {headers: [{name: X-Fault-Test, value: checkout}]}\n\
                \x20   abort: {httpStatus: 503, percentage: 50}\n";
    let sc =
        start(&(sidecar_yaml(&service("payments", &[up.addr()]), None, "") + &policy("f", "payments", spec)))
            .await;

    const TAGGED: u64 = 200;
    let mut aborted = 0;
    for _ in 0..TAGGED {
        let got = http1(sc.outbound, tagged("http://payments/charge")).await;
        match (got.status, got.header("breakwater-error")) {
            (200, None) => {}
            (503, Some("fault-injected")) => aborted += 1,
            other => panic!("a tagged call answered {other:?}"),
        }
    }
    // 50 % of 200 is 100, with a standard deviation of about 7: 5 of them either way.
    assert!((65..=135).contains(&aborted), "{aborted} of {TAGGED} tagged calls aborted, expected about 100");
    assert_eq!(up.stats().requests(), TAGGED - aborted, "an aborted call never reaches the upstream, once");
    for _ in 0..50 {
        assert_eq!(
            get(sc.outbound, "http://payments/charge").await.status,
            200,
            "untagged calls are never hit"
        );
    }
    assert_eq!(up.stats().requests(), TAGGED - aborted + 50);
    assert_eq!(metric(&sc, &faults_metric("payments", "abort")).await, aborted as f64);
    let refusals = "breakwater_refusals_total{service=\"payments.shop\",direction=\"outbound\",reason=\"fault-injected\"}";
    assert_eq!(metric(&sc, refusals).await, aborted as f64);
    assert!(admin(&sc, "/metrics").await.text().contains(&faults_metric("payments", "abort")));
}

#[tokio::test]
async fn a_delay_is_waited_under_the_calls_deadline() {
    let up = upstream("payments").await;
    let delay = |deadline: &str| {
        format!(
            "  timeouts: {{request: {deadline}}}\n  faults: {{enabled: true, delay: {{fixedDelay: 300ms}}}}\n"
        )
    };
    let docs = policy("roomy", "payments", &delay("5s")) + &policy("tight", "ledger", &delay("100ms"));
    let services = service("payments", &[up.addr()]) + &service("ledger", &[up.addr()]);
    let sc = start(&(sidecar_yaml(&services, None, "") + &docs)).await;

    let began = Instant::now();
    let got = get(sc.outbound, "http://payments/charge").await;
    assert_eq!(got.status, 200);
    assert!(began.elapsed() >= Duration::from_millis(300), "answered after {:?}", began.elapsed());
    assert_eq!(metric(&sc, &faults_metric("payments", "delay")).await, 1.0);

    // The deadline fires during the delay: Breakwater's 504, and nothing sent.
    let got = get(sc.outbound, "http://ledger/charge").await;
    assert_eq!((got.status, got.header("breakwater-error")), (504, Some("timeout")));
    assert_eq!(up.stats().requests(), 1, "only the payments call was sent");
    assert_eq!(metric(&sc, "breakwater_timeouts_total{service=\"ledger.shop\",kind=\"request\"}").await, 1.0);
}

#[tokio::test]
async fn a_reset_closes_http1_without_an_answer_and_resets_the_h2_stream() {
    let up = upstream("payments").await;
    let grpc_up = upstream("grpc").await;
    let docs = policy("reset", "payments", "  faults: {enabled: true, abort: {reset: true}}\n")
        + &policy(
            "exhausted",
            "grpc",
            "  faults: {enabled: true, abort: {grpcStatus: RESOURCE_EXHAUSTED}}\n",
        );
    let services = service("payments", &[up.addr()]) + &service("grpc", &[grpc_up.addr()]);
    let sc = start(&(sidecar_yaml(&services, None, "") + &docs)).await;

    // HTTP/1.1: the connection closes and not one byte of an answer comes back.
    let answer = raw(sc.outbound, b"GET http://payments/charge HTTP/1.1\r\nHost: payments\r\n\r\n").await;
    assert_eq!(answer, "", "no answer on HTTP/1.1");

    // HTTP/2: the stream is reset with INTERNAL_ERROR; the connection lives on.
    let stream = TcpStream::connect(sc.outbound).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2");
    tokio::spawn(conn);
    for _ in 0..2 {
        let req = Request::get("http://payments/charge").body(Full::new(Bytes::new())).expect("a request");
        let err = send.send_request(req).await.expect_err("the stream is reset");
        let reason = std::error::Error::source(&err)
            .and_then(|e| e.downcast_ref::<h2::Error>())
            .and_then(h2::Error::reason);
        assert_eq!(reason, Some(h2::Reason::INTERNAL_ERROR), "{err:?}");
    }
    assert_eq!(up.stats().requests(), 0);
    assert_eq!(metric(&sc, &faults_metric("payments", "abort")).await, 3.0);

    // gRPC: the status the policy names, in a trailers-only answer.
    let got = grpc(sc.outbound, "http://grpc/pkg.Svc/Call").await;
    assert_eq!(got.header("grpc-status"), Some("8"), "RESOURCE_EXHAUSTED");
    assert_eq!(got.header("breakwater-error"), Some("fault-injected"));
    assert_eq!(grpc_up.stats().requests(), 0);
}

#[tokio::test]
async fn dry_run_counts_the_faults_it_would_inject_and_injects_none() {
    let up = upstream("payments").await;
    let spec = "  mode: DryRun\n\
                \x20 faults: {enabled: true, delay: {fixedDelay: 10s}, abort: {httpStatus: 500}}\n";
    let sc =
        start(&(sidecar_yaml(&service("payments", &[up.addr()]), None, "") + &policy("f", "payments", spec)))
            .await;
    for _ in 0..5 {
        assert_eq!(get(sc.outbound, "http://payments/charge").await.status, 200, "nothing injected");
    }
    assert_eq!(up.stats().requests(), 5);
    let decision =
        |d: &str| format!("breakwater_dryrun_decisions_total{{service=\"payments.shop\",decision=\"{d}\"}}");
    assert_eq!(metric(&sc, &decision("fault-delay")).await, 5.0);
    assert_eq!(metric(&sc, &decision("fault-abort")).await, 5.0);
    assert_eq!(metric(&sc, &faults_metric("payments", "abort")).await, 0.0, "none injected");
}
