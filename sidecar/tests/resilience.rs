//! Policies through the real proxy on loopback, against fault servers that fail on purpose.

mod support;

use std::time::Duration;

use breakwater_fault::{FaultServer, Faults, TcpEchoServer};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn fault(faults: Faults) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", faults).await.expect("fault server")
}

fn failing_first(n: u64) -> Faults {
    Faults { name: "up".into(), fail_first: n, ..Default::default() }
}

async fn sidecar_with(up: &[std::net::SocketAddr], spec: &str) -> breakwater_sidecar::Sidecar {
    start(&(sidecar_yaml(&service("payments", up), None, "") + &policy("p", "payments", spec))).await
}

fn post(url: &str, idempotency_key: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post(url);
    if let Some(k) = idempotency_key {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::from_static(b"{\"amount\": 42}"))).expect("request")
}

#[tokio::test]
async fn retries_recover_from_two_503s() {
    let up = fault(failing_first(2)).await;
    let sc = sidecar_with(&[up.addr()], "  retries: {attempts: 3, backoff: {base: 5ms, max: 20ms}}\n").await;
    let got = get(sc.outbound, "http://payments/").await;
    assert_eq!(got.status, 200);
    assert_eq!(up.stats().requests(), 3);
    assert_eq!(
        metric(&sc, "breakwater_retries_total{service=\"payments.shop\",reason=\"gateway-error\"}").await,
        2.0
    );
    let seen = up.stats().seen().await;
    assert_eq!(seen[0].headers.get("breakwater-retry-depth"), None, "the first attempt is not marked");
    assert_eq!(seen[2].headers.get("breakwater-retry-depth").map(String::as_str), Some("1"));
}

#[tokio::test]
async fn post_is_not_retried_but_post_with_idempotency_key_is() {
    let up = fault(failing_first(1)).await;
    let sc = sidecar_with(&[up.addr()], "  retries: {attempts: 3, backoff: {base: 5ms, max: 20ms}}\n").await;
    let got = http1(sc.outbound, post("http://payments/charges", None)).await;
    assert_eq!(got.status, 503, "a POST that reached the app is not replayed");
    assert_eq!(up.stats().requests(), 1);

    let up = fault(failing_first(1)).await;
    let sc = sidecar_with(&[up.addr()], "  retries: {attempts: 3, backoff: {base: 5ms, max: 20ms}}\n").await;
    let got = http1(sc.outbound, post("http://payments/charges", Some("order-7"))).await;
    assert_eq!(got.status, 200, "the Idempotency-Key makes it safe");
    let seen = up.stats().seen().await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body_len, 14, "the body was replayed whole");
}

#[tokio::test]
async fn grpc_unavailable_in_trailers_is_retried() {
    // gRPC's own retry semantics: listing a code makes calls ending with it retryable, although
    // every gRPC call is a POST; it does not make plain-HTTP POSTs retryable.
    let up = fault(failing_first(1)).await;
    let spec = "  retries:\n    attempts: 2\n    backoff: {base: 5ms, max: 20ms}\n    retryOn: {conditions: [5xx], grpcCodes: [UNAVAILABLE]}\n";
    let sc = sidecar_with(&[up.addr()], spec).await;
    let got = grpc(sc.outbound, "http://payments/payments.v1.Payments/Charge").await;
    let status = got.trailers.as_ref().and_then(|t| t.get("grpc-status")).and_then(|v| v.to_str().ok());
    assert_eq!(status, Some("0"), "the retry succeeded: {got:?}");
    assert_eq!(up.stats().requests(), 2);
    assert_eq!(
        metric(&sc, "breakwater_retries_total{service=\"payments.shop\",reason=\"grpc-code\"}").await,
        1.0
    );

    let up = fault(failing_first(1)).await;
    let sc = sidecar_with(&[up.addr()], spec).await;
    let got = http1(sc.outbound, post("http://payments/charges", None)).await;
    assert_eq!(got.status, 503, "a plain POST that reached the app is still not replayed");
    assert_eq!(up.stats().requests(), 1);
}

#[tokio::test]
async fn a_slow_upstream_is_cut_at_the_request_timeout_retries_included() {
    // The upstream would answer after a minute; only the deadline can end the call sooner.
    let up = fault(Faults { delay: Duration::from_secs(60), ..Default::default() }).await;
    let spec = "  timeouts: {request: 400ms, perTry: 100ms}\n  retries: {attempts: 10, retryOn: {conditions: [timeout]}, backoff: {base: 5ms, max: 10ms}}\n";
    let sc = sidecar_with(&[up.addr()], spec).await;
    let started = tokio::time::Instant::now();
    let got = get(sc.outbound, "http://payments/").await;
    let took = started.elapsed();
    assert_eq!(got.status, 504);
    assert_eq!(got.header("breakwater-error"), Some("timeout"));
    assert!(took >= Duration::from_millis(400), "never before the deadline: {took:?}");
    assert!(took < Duration::from_secs(30), "cut by the deadline, not by the upstream's answer: {took:?}");

    assert!(up.stats().requests() >= 2, "perTry cut attempts and retried within the deadline");
    assert!(
        metric(&sc, "breakwater_timeouts_total{service=\"payments.shop\",kind=\"per_try\"}").await >= 1.0
    );
}

#[tokio::test]
async fn a_retry_goes_to_an_endpoint_the_call_has_not_tried() {
    // One pod always answers 503, the other never; no breaker, so the failing pod stays in the
    // set and keeps getting first attempts. With two attempts, every call must still succeed:
    // a retry to the pod that just failed would fail again.
    let failing = fault(Faults { name: "failing".into(), fail_rate: 1.0, ..Default::default() }).await;
    let healthy = fault(Faults { name: "healthy".into(), ..Default::default() }).await;
    let spec = "  retries: {attempts: 2, backoff: {base: 1ms, max: 2ms}, budget: {ratio: 1.0, minPerSecond: 1000}}\n";
    let sc = sidecar_with(&[failing.addr(), healthy.addr()], spec).await;
    let calls = 40;
    for _ in 0..calls {
        let got = get(sc.outbound, "http://payments/").await;
        assert_eq!(got.status, 200, "the retry went to the other pod");
        assert_eq!(got.header("x-served-by"), Some("healthy"));
    }
    let first_attempts_to_failing = failing.stats().requests();
    assert!(first_attempts_to_failing > 0, "the failing pod was tried (else this proves nothing)");
    assert_eq!(
        healthy.stats().requests(),
        calls,
        "each call reached the healthy pod exactly once: first try or the retry"
    );
}

#[tokio::test]
async fn a_dead_endpoint_trips_its_breaker_and_traffic_moves_to_the_healthy_one() {
    let healthy = fault(Faults { name: "healthy".into(), ..Default::default() }).await;
    let dead = closed_port().await;
    let spec = "  retries: {attempts: 2, backoff: {base: 1ms, max: 5ms}}\n  circuitBreaker: {consecutiveFailures: 2, openDuration: 1m, scope: Endpoint}\n";
    let sc = sidecar_with(&[dead, healthy.addr()], spec).await;
    for _ in 0..30 {
        let got = get(sc.outbound, "http://payments/").await;
        assert_eq!(got.status, 200, "connect failures are retried on the other endpoint");
        assert_eq!(got.header("x-served-by"), Some("healthy"));
    }
    let state = format!("breakwater_breaker_state{{service=\"payments.shop\",endpoint=\"{dead}\"}}");
    assert_eq!(metric(&sc, &state).await, 2.0, "the dead endpoint's breaker is open");
    assert_eq!(
        metric(&sc, "breakwater_upstream_connect_failures_total{service=\"payments.shop\"}").await,
        2.0,
        "once open, the dead endpoint is no longer tried"
    );
    let view =
        breakwater_crds::admin::read_breakers(&admin(&sc, "/breakers").await.body).expect("a v1 document");
    let target = view.targets.iter().find(|t| t.service == "payments.shop").expect("the target");
    assert_eq!(target.direction, "outbound");
    let dead_row = target.breakers.iter().find(|b| b.endpoint == dead.to_string()).expect("row");
    assert_eq!(dead_row.state, "Open");
    assert_eq!(dead_row.trips, 1);
}

#[tokio::test]
async fn an_open_breaker_fails_fast_with_its_header() {
    let dead = closed_port().await;
    let spec = "  circuitBreaker: {consecutiveFailures: 1, openDuration: 1m, scope: Service}\n";
    let sc = sidecar_with(&[dead], spec).await;
    assert_eq!(get(sc.outbound, "http://payments/").await.header("breakwater-error"), Some("connect-failed"));
    let sc_metrics = "breakwater_breaker_transitions_total{service=\"payments.shop\",to=\"open\"}";
    eventually("the breaker to open", || async { (metric(&sc, sc_metrics).await == 1.0).then_some(()) })
        .await;
    let got = get(sc.outbound, "http://payments/").await;
    assert_eq!(got.status, 503);
    assert_eq!(got.header("breakwater-error"), Some("circuit-open"));
    let got = grpc(sc.outbound, "http://payments/svc/Call").await;
    assert_eq!(got.header("grpc-status"), Some("14"), "gRPC callers get UNAVAILABLE");
    let refusals = |reason: &str| {
        format!(
            "breakwater_refusals_total{{service=\"payments.shop\",direction=\"outbound\",reason=\"{reason}\"}}"
        )
    };
    assert_eq!(metric(&sc, &refusals("connect-failed")).await, 1.0);
    assert_eq!(metric(&sc, &refusals("circuit-open")).await, 2.0, "the HTTP and the gRPC call");
}

#[tokio::test]
async fn a_saturated_service_sheds_with_bulkhead_full_while_the_queue_bound_holds() {
    let up = fault(Faults { delay: Duration::from_millis(800), ..Default::default() }).await;
    let spec = "  bulkhead:\n    outbound: {maxConcurrentRequests: 2, maxQueued: 2, maxQueueWait: 200ms}\n";
    let sc = sidecar_with(&[up.addr()], spec).await;
    let outbound = sc.outbound;
    let gauge = |name: &str| {
        format!("breakwater_bulkhead_{name}{{service=\"payments.shop\",direction=\"outbound\"}}")
    };
    assert_eq!(metric(&sc, &gauge("max_concurrent")).await, 2.0, "the limit is exported before any call");
    let calls: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let got = get(outbound, "http://payments/").await;
                (got.status, got.header("breakwater-error").map(str::to_owned), started.elapsed(), got.text())
            })
        })
        .collect();
    // While the upstream holds two calls for 800 ms: two in flight, and two queued until their
    // 200 ms wait expires (the other two were refused at once).
    eventually("2 calls in flight and 2 queued", || async {
        let now = (metric(&sc, &gauge("in_flight")).await, metric(&sc, &gauge("queued")).await);
        (now == (2.0, 2.0)).then_some(())
    })
    .await;
    let mut results = Vec::new();
    for c in calls {
        results.push(c.await.expect("task"));
    }
    assert_eq!(metric(&sc, &gauge("in_flight")).await, 0.0, "every permit returned");
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let shed: Vec<_> = results.iter().filter(|r| r.1.as_deref() == Some("bulkhead-full")).collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(shed.len(), 4, "{results:?}");
    assert!(shed.iter().all(|r| r.0 == 503));
    // Why each was refused is in its answer: two found the queue full, two waited in it.
    let queue_full = shed.iter().filter(|r| r.3.contains("the queue is full")).count();
    let waited: Vec<_> = shed.iter().filter(|r| r.3.contains("no slot freed within 200ms")).collect();
    assert_eq!((queue_full, waited.len()), (2, 2), "2 refused at once, 2 after maxQueueWait: {results:?}");
    assert!(waited.iter().all(|r| r.2 >= Duration::from_millis(200)), "those waited the 200ms: {results:?}");
    assert!(up.stats().max_in_flight() <= 2, "the upstream never saw more than 2");
    assert_eq!(
        metric(&sc, "breakwater_bulkhead_rejected_total{service=\"payments.shop\",direction=\"outbound\"}")
            .await,
        4.0
    );
    assert_eq!(
        metric(&sc, "breakwater_refusals_total{service=\"payments.shop\",direction=\"outbound\",reason=\"bulkhead-full\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn queued_calls_are_served_when_slots_free_up() {
    let up = fault(Faults { delay: Duration::from_millis(100), ..Default::default() }).await;
    let spec = "  bulkhead:\n    outbound: {maxConcurrentRequests: 2, maxQueued: 4, maxQueueWait: 5s}\n";
    let sc = sidecar_with(&[up.addr()], spec).await;
    let outbound = sc.outbound;
    let calls: Vec<_> =
        (0..6).map(|_| tokio::spawn(async move { get(outbound, "http://payments/").await.status })).collect();
    for c in calls {
        assert_eq!(c.await.expect("task"), 200);
    }
    assert_eq!(up.stats().max_in_flight(), 2);
}

#[tokio::test]
async fn the_inbound_bulkhead_protects_the_app_from_all_callers() {
    let app = fault(Faults { delay: Duration::from_millis(500), ..Default::default() }).await;
    let yaml = sidecar_yaml("  []\n", Some(app.addr()), "")
        + &policy("p", "payments", "  bulkhead:\n    inbound: {maxConcurrentRequests: 1}\n");
    let sc = start(&yaml).await;
    let inbound = sc.inbound.expect("inbound");
    let call = move || async move {
        let req = Request::get("/").header("host", "payments").body(Full::new(Bytes::new())).expect("req");
        http1(inbound, req).await
    };
    let first = tokio::spawn(call());
    let stats = app.stats().clone();
    eventually("the first call in flight", || async { (stats.in_flight() == 1).then_some(()) }).await;
    let second = call().await;
    assert_eq!(second.status, 503);
    assert_eq!(second.header("breakwater-error"), Some("bulkhead-full"));
    assert_eq!(first.await.expect("task").status, 200);
}

#[tokio::test]
async fn the_budget_caps_retries_under_a_total_failure() {
    let up = fault(Faults { fail_rate: 1.0, ..Default::default() }).await;
    let spec = "  retries:\n    attempts: 3\n    backoff: {base: 1ms, max: 2ms}\n    budget: {ratio: 0.2, minPerSecond: 0, window: 60s}\n";
    let sc = sidecar_with(&[up.addr()], spec).await;
    let mut marked = 0;
    let requests = 200;
    for _ in 0..requests {
        let got = get(sc.outbound, "http://payments/").await;
        assert_eq!(got.status, 503);
        if got.header("breakwater-error") == Some("retry-budget-exhausted") {
            marked += 1;
        }
    }
    let sent = up.stats().requests();
    let retries = sent - requests;
    let ratio = retries as f64 / requests as f64;
    println!(
        "budget: {requests} requests, {retries} retries sent upstream, ratio {ratio:.3} (configured 0.2)"
    );
    assert!(ratio <= 0.21, "retries stay within the budget: {ratio}");
    assert!(ratio >= 0.15, "and the budget is used: {ratio}");
    assert!(marked > 100, "responses whose retry the budget refused say so: {marked}");
    assert_eq!(
        metric(&sc, "breakwater_retry_budget_exhausted_total{service=\"payments.shop\"}").await,
        marked as f64
    );
}

#[tokio::test]
async fn dry_run_passes_everything_and_counts_what_it_would_do() {
    let up = fault(failing_first(1)).await;
    let spec = "  mode: DryRun\n  timeouts: {request: 100ms}\n  retries: {attempts: 3}\n  bulkhead:\n    outbound: {maxConcurrentRequests: 1}\n";
    let sc = sidecar_with(&[up.addr()], spec).await;
    let first = get(sc.outbound, "http://payments/").await;
    assert_eq!(first.status, 503, "not retried");
    assert_eq!(first.header("breakwater-error"), None);
    let slow = get(sc.outbound, "http://payments/?delay=300ms").await;
    assert_eq!(slow.status, 200, "not cut");
    let outbound = sc.outbound;
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(outbound, "http://payments/?delay=200ms").await.status }))
        .collect();
    for c in calls {
        assert_eq!(c.await.expect("task"), 200, "not shed");
    }
    assert_eq!(up.stats().requests(), 5, "exactly the calls made, no retries");
    let would =
        |d: &str| format!("breakwater_dryrun_decisions_total{{service=\"payments.shop\",decision=\"{d}\"}}");
    assert_eq!(metric(&sc, &would("retry")).await, 1.0);
    assert!(metric(&sc, &would("timeout")).await >= 3.0);
    assert!(metric(&sc, &would("bulkhead-full")).await >= 1.0);
    assert_eq!(
        metric(&sc, "breakwater_retries_total{service=\"payments.shop\",reason=\"gateway-error\"}").await,
        0.0
    );
}

#[tokio::test]
async fn max_connections_is_the_bulkhead_for_tcp() {
    let app = TcpEchoServer::bind("127.0.0.1:0", None).await.expect("echo");
    let yaml = sidecar_yaml("  []\n", Some(app.addr()), "")
        + &policy(
            "p",
            "payments",
            "  bulkhead:\n    inbound: {maxConcurrentRequests: 10, maxConnections: 1}\n",
        );
    let sc = start(&yaml).await;
    let inbound = sc.inbound.expect("inbound");
    let mut first = tokio::net::TcpStream::connect(inbound).await.expect("connect");
    first.write_all(b"\x00one").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(PATIENCE, first.read_exact(&mut buf)).await.expect("in time").expect("echo");
    let mut second = tokio::net::TcpStream::connect(inbound).await.expect("connect");
    let _ = second.write_all(b"\x00two").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, second.read_to_end(&mut out)).await.expect("closed in time");
    assert!(out.is_empty(), "the second connection was refused");
    assert_eq!(
        metric(&sc, "breakwater_bulkhead_rejected_total{service=\"payments.shop\",direction=\"inbound\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_bad_policy_is_rejected_before_it_reaches_a_layer() {
    let up = fault(Faults::default()).await;
    let yaml = sidecar_yaml(&service("payments", &[up.addr()]), None, "")
        + &policy(
            "p",
            "payments",
            "  timeouts: {request: 1s, perTry: 2s}\n  retries: {backoff: {base: 1s, max: 1ms}}\n",
        );
    let err = breakwater_sidecar::Sidecar::start(&yaml, None).await.expect_err("refused");
    let text = format!("{err:#}");
    assert!(text.contains("spec.timeouts.perTry"), "{text}");
    assert!(text.contains("spec.retries.backoff.base"), "{text}");
}

#[tokio::test]
async fn breaker_state_survives_a_reload_that_keeps_its_settings() {
    let dead = closed_port().await;
    let base = sidecar_yaml(&service("payments", &[dead]), None, "");
    let breaker = "  circuitBreaker: {consecutiveFailures: 1, openDuration: 1m, scope: Service}\n";
    let sc = start(&(base.clone() + &policy("p", "payments", breaker))).await;
    get(sc.outbound, "http://payments/").await;
    let opened = "breakwater_breaker_transitions_total{service=\"payments.shop\",to=\"open\"}";
    eventually("the breaker to open", || async { (metric(&sc, opened).await == 1.0).then_some(()) }).await;

    // Other settings change; the breaker's do not: it stays open.
    let same = base.clone() + &policy("p", "payments", &format!("{breaker}  timeouts: {{request: 5s}}\n"));
    assert!(sc.store.reload(&same).expect("valid"));
    assert_eq!(get(sc.outbound, "http://payments/").await.header("breakwater-error"), Some("circuit-open"));

    // The breaker's settings change: a fresh, closed breaker.
    let changed = base.clone()
        + &policy(
            "p",
            "payments",
            "  circuitBreaker: {consecutiveFailures: 2, openDuration: 1m, scope: Service}\n",
        );
    assert!(sc.store.reload(&changed).expect("valid"));
    assert_eq!(get(sc.outbound, "http://payments/").await.header("breakwater-error"), Some("connect-failed"));
    let text = admin(&sc, "/metrics").await.text();
    assert!(text.contains("breakwater_breaker_state{service=\"payments.shop\",endpoint=\"*\"} 0"), "{text}");

    // The policy goes, and its breaker's gauge with it: a stale "open" series would page someone.
    assert!(sc.store.reload(&base).expect("valid"));
    let text = admin(&sc, "/metrics").await.text();
    assert!(!text.contains("breakwater_breaker_state{"), "{text}");
}

/// Sends a request whose body the caller breaks: a malformed chunk size, or half of its
/// Content-Length followed by a hang-up (write side closed). Returns what came back.
async fn broken_body(proxy: std::net::SocketAddr, cut_short: bool) -> String {
    let mut s = tokio::net::TcpStream::connect(proxy).await.expect("connect");
    let req: &[u8] = if cut_short {
        b"POST http://payments/ HTTP/1.1\r\nHost: payments\r\nContent-Length: 100\r\n\r\nhalf of it"
    } else {
        b"POST http://payments/ HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    };
    s.write_all(req).await.expect("write");
    if cut_short {
        s.shutdown().await.expect("hang up");
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A caller's broken body is the caller's fault: answered 400 (or nothing, when it is gone),
/// never retried, never counted toward the breaker, counted as a client error — whether the
/// body breaks while buffered for replay (a retry policy) or while streamed to the upstream.
#[tokio::test]
async fn a_callers_broken_body_is_its_own_fault_not_the_upstreams() {
    let breaker = "  circuitBreaker: {consecutiveFailures: 2, openDuration: 1m, scope: Service}\n";
    let retries = "  retries: {attempts: 3, backoff: {base: 1ms, max: 2ms}, retryableMethods: [POST]}\n";
    for spec in [breaker.to_owned(), format!("{breaker}{retries}")] {
        let up = fault(Faults { name: "up".into(), ..Default::default() }).await;
        let sc = sidecar_with(&[up.addr()], &spec).await;
        for _ in 0..4 {
            let got = broken_body(sc.outbound, false).await;
            assert!(got.is_empty() || got.starts_with("HTTP/1.1 400"), "{spec}: {got}");
            broken_body(sc.outbound, true).await;
        }
        let got = get(sc.outbound, "http://payments/").await;
        assert_eq!(got.status, 200, "{spec}: the breaker stayed closed: {got:?}");
        let count = |reason: &'static str| {
            let sc = &sc;
            async move {
                metric(
                    sc,
                    &format!(
                        "breakwater_client_errors_total{{service=\"payments.shop\",direction=\"outbound\",reason=\"{reason}\"}}"
                    ),
                )
                .await
            }
        };
        assert_eq!(count("body-malformed").await, 4.0, "{spec}");
        assert_eq!(count("body-incomplete").await, 4.0, "{spec}");
        assert_eq!(metric(&sc, "breakwater_retries_total").await, 0.0, "{spec}: nothing retried");
        assert_eq!(
            metric(&sc, "breakwater_breaker_transitions_total{service=\"payments.shop\",to=\"open\"}").await,
            0.0,
            "{spec}"
        );
    }
}

/// With no policy (and with one in DryRun) the balancer is failure-aware by itself: a pod
/// refusing connections leaves the set after one failure and is probed back in the background;
/// a pod answering 503 at once loses its share. Calling the three pods directly (round robin)
/// fails two calls in three; through the sidecar only the first few fail.
#[tokio::test]
async fn without_a_policy_the_balancer_avoids_dead_and_failing_pods() {
    for spec in [None, Some("  mode: DryRun\n  circuitBreaker: {consecutiveFailures: 5, scope: Endpoint}\n")]
    {
        let dead = closed_port().await;
        let failing = fault(Faults { name: "failing".into(), fail_rate: 1.0, ..Default::default() }).await;
        let healthy = fault(Faults { name: "healthy".into(), ..Default::default() }).await;
        let mut yaml = sidecar_yaml(&service("payments", &[dead, failing.addr(), healthy.addr()]), None, "");
        if let Some(spec) = spec {
            yaml += &policy("p", "payments", spec);
        }
        let sc = start(&yaml).await;
        let calls = 300;
        let mut errors = 0;
        for _ in 0..calls {
            if get(sc.outbound, "http://payments/").await.status != 200 {
                errors += 1;
            }
        }
        assert!(errors <= 10, "{spec:?}: {errors} of {calls} calls failed (direct: about 200)");
        assert!(failing.stats().requests() <= 10, "{spec:?}: the 503 pod lost its share");
        assert_eq!(
            metric(&sc, "breakwater_endpoint_ejections_total{service=\"payments.shop\"}").await,
            1.0,
            "{spec:?}"
        );
        // The dead pod comes back: a background probe connects, and it gets calls again.
        let revived =
            FaultServer::bind(&dead.to_string(), Faults { name: "revived".into(), ..Default::default() })
                .await
                .expect("the dead pod's port, bound again");
        eventually("the revived pod receives calls again", || {
            let (sc, revived) = (&sc, &revived);
            async move {
                get(sc.outbound, "http://payments/").await;
                (revived.stats().requests() > 0).then_some(())
            }
        })
        .await;
    }
}
