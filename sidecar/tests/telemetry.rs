//! OpenTelemetry traces from the real sidecar binary, received by a test OTLP collector
//! (gRPC and HTTP/protobuf): spans, attempts, events, propagation, and a dead collector.

mod support;

use std::time::Duration;

use breakwater_fault::{
    FaultServer, Faults,
    otlp::{OtlpReceiver, ReceivedSpan},
};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

async fn fault(faults: Faults) -> FaultServer {
    FaultServer::bind("127.0.0.1:0", faults).await.expect("fault server")
}

fn config(up: &[std::net::SocketAddr], spec: &str) -> String {
    sidecar_yaml(&service("payments", up), None, "") + &policy("p", "payments", spec)
}

fn traced(endpoint: &str, protocol: &str) -> Vec<(&'static str, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol.to_owned()),
        ("OTEL_SERVICE_NAME", "checkout".to_owned()),
        ("POD_NAME", "checkout-7d9f".to_owned()),
        ("POD_NAMESPACE", "shop".to_owned()),
    ]
}

fn start_traced(yaml: &str, env: &[(&'static str, String)]) -> SidecarProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    SidecarProcess::start(yaml, &env)
}

fn client_spans(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.kind == 3 && !s.name.starts_with("attempt")).collect()
}

fn children<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    let mut c: Vec<_> = spans.iter().filter(|s| s.parent_span_id == parent.span_id).collect();
    c.sort_by_key(|s| s.attr("breakwater.attempt").and_then(|a| a.parse::<u32>().ok()));
    c
}

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn a_request_retried_twice_yields_one_client_span_with_three_attempts() {
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let up = fault(Faults { fail_first: 2, ..Default::default() }).await;
    let sc = start_traced(
        &config(&[up.addr()], "  retries: {attempts: 3, backoff: {base: 5ms, max: 10ms}}\n"),
        &traced(&otlp.http_endpoint(), "http/protobuf"),
    );
    let req = Request::get("/charge").header("host", "payments").body(Full::new(Bytes::new())).expect("req");
    assert_eq!(http1(sc.outbound, req).await.status, 200);

    let spans = otlp
        .wait_for(WAIT, |s| {
            client_spans(s).len() == 1 && s.iter().filter(|x| x.name.starts_with("attempt")).count() == 3
        })
        .await
        .unwrap_or_else(|s| panic!("expected 1 client span and 3 attempts, got {s:#?}"));
    let client = client_spans(&spans)[0];
    assert_eq!(client.name, "GET payments.shop");
    assert_eq!(client.attr("http.request.method"), Some("GET"));
    assert_eq!(client.attr("http.response.status_code"), Some("200"));
    assert_eq!(client.attr("server.address"), Some("payments"));
    assert_eq!(client.attr("network.protocol.version"), Some("1.1"));
    assert_eq!(client.attr("breakwater.service"), Some("payments.shop"));
    assert_eq!(client.attr("breakwater.policy"), Some("shop/p"));
    assert_eq!(client.attr("breakwater.mode"), Some("Enforce"));
    assert_eq!(client.events.iter().filter(|(n, _)| n.contains("retry scheduled")).count(), 2, "{client:#?}");
    let (_, retry) = client.events.iter().find(|(n, _)| n.contains("retry scheduled")).expect("event");
    assert_eq!(retry.get("reason").map(String::as_str), Some("gateway-error"));
    assert!(retry.contains_key("backoff_ms"));
    assert_eq!(client.resource.get("service.name").map(String::as_str), Some("checkout"));
    assert_eq!(client.resource.get("k8s.pod.name").map(String::as_str), Some("checkout-7d9f"));
    assert_eq!(client.resource.get("k8s.namespace.name").map(String::as_str), Some("shop"));

    let attempts = children(&spans, client);
    assert_eq!(attempts.len(), 3, "{attempts:#?}");
    let outcomes: Vec<_> =
        attempts.iter().map(|a| a.attr("breakwater.outcome").unwrap_or_default()).collect();
    assert_eq!(outcomes, ["gateway-error", "gateway-error", "ok"]);
    assert_eq!(attempts[0].attr("http.response.status_code"), Some("503"));
    assert_eq!(attempts[0].status, 2, "a failed attempt is an error span");
    assert_eq!(attempts[2].attr("server.port"), Some(up.addr().port().to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_receives_the_attempt_context_and_the_request_id() {
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let up = fault(Faults::default()).await;
    let sc = start_traced(
        &config(&[up.addr()], "  timeouts: {request: 5s}\n"),
        &traced(&otlp.grpc_endpoint(), "grpc"),
    );
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = Request::get("/charge")
        .header("host", "payments")
        .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(http1(sc.outbound, req).await.status, 200);
    // A B3 caller joins its trace too.
    let req = Request::get("/charge")
        .header("host", "payments")
        .header("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")
        .body(Full::new(Bytes::new()))
        .expect("req");
    assert_eq!(http1(sc.outbound, req).await.status, 200);

    let spans = otlp
        .wait_for(WAIT, |s| s.iter().filter(|x| x.name.starts_with("attempt")).count() == 2)
        .await
        .unwrap_or_else(|s| panic!("spans: {s:#?}"));
    let client = spans
        .iter()
        .find(|s| s.trace_id == caller_trace && s.kind == 3 && !s.name.starts_with("attempt"))
        .expect("client span joins the caller's trace");
    assert_eq!(client.parent_span_id, "00f067aa0ba902b7", "parented on the caller's span");
    let attempt = children(&spans, client)[0];
    let seen = up.stats().seen().await;
    let traceparent = seen[0].headers.get("traceparent").expect("the upstream got a traceparent");
    assert_eq!(
        traceparent,
        &format!("00-{caller_trace}-{}-01", attempt.span_id),
        "the upstream's parent is the attempt"
    );
    let request_id = seen[0].headers.get("x-request-id").expect("a request id was generated");
    assert_eq!(client.attr("breakwater.request_id"), Some(request_id.as_str()));

    assert!(spans.iter().any(|s| s.trace_id == "80f198ee56343ba864fe8b2a57d3eff7"), "B3 context accepted");
    assert!(!seen[1].headers.contains_key("b3"), "B3 is replaced by W3C on the way out");
    assert!(
        seen[1].headers.get("traceparent").is_some_and(|t| t.contains("80f198ee56343ba864fe8b2a57d3eff7"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn breaker_refusals_and_bulkhead_rejections_are_span_events() {
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let dead = closed_port().await;
    let slow = fault(Faults { delay: Duration::from_millis(500), ..Default::default() }).await;
    let yaml = sidecar_yaml(&(service("payments", &[dead]) + &service("reports", &[slow.addr()])), None, "")
        + &policy("breaker", "payments", "  circuitBreaker: {consecutiveFailures: 1, openDuration: 1m}\n")
        + &policy("bulkhead", "reports", "  bulkhead:\n    outbound: {maxConcurrentRequests: 1}\n");
    let sc = start_traced(&yaml, &traced(&otlp.grpc_endpoint(), "grpc"));

    assert_eq!(get(sc.outbound, "http://payments/").await.header("breakwater-error"), Some("connect-failed"));
    let refused = eventually("the breaker to refuse", || async {
        let got = get(sc.outbound, "http://payments/").await;
        (got.header("breakwater-error") == Some("circuit-open")).then_some(got)
    })
    .await;
    assert_eq!(refused.status, 503);

    let outbound = sc.outbound;
    let first = tokio::spawn(async move { get(outbound, "http://reports/").await });
    let stats = slow.stats().clone();
    eventually("a report in flight", || async { (stats.in_flight() == 1).then_some(()) }).await;
    assert_eq!(get(sc.outbound, "http://reports/").await.header("breakwater-error"), Some("bulkhead-full"));
    assert_eq!(first.await.expect("task").status, 200);

    let spans = otlp
        .wait_for(WAIT, |s| {
            s.iter().any(|x| x.has_event("circuit breaker rejected"))
                && s.iter().any(|x| x.has_event("bulkhead rejected"))
        })
        .await
        .unwrap_or_else(|s| panic!("no refusal events in {s:#?}"));
    let refused_span = spans.iter().find(|s| s.has_event("circuit breaker rejected")).expect("span");
    assert_eq!(refused_span.attr("breakwater.outcome"), Some("circuit-open"));
    let rejected = spans.iter().find(|s| s.has_event("bulkhead rejected")).expect("span");
    assert_eq!(rejected.attr("breakwater.service"), Some("reports.shop"));
    assert_eq!(rejected.attr("error.type"), Some("bulkhead-full"));
    assert!(
        spans.iter().any(|s| s.has_event("circuit breaker changed state")),
        "the trip is recorded on the call that caused it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_decisions_are_events_while_the_request_succeeds() {
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let up = fault(Faults { delay: Duration::from_millis(300), ..Default::default() }).await;
    let sc = start_traced(
        &config(&[up.addr()], "  mode: DryRun\n  timeouts: {request: 50ms}\n"),
        &traced(&otlp.http_endpoint(), "http/protobuf"),
    );
    assert_eq!(get(sc.outbound, "http://payments/").await.status, 200, "DryRun cuts nothing");
    let spans = otlp
        .wait_for(WAIT, |s| s.iter().any(|x| x.has_event("dry run: request timeout would have fired")))
        .await
        .unwrap_or_else(|s| panic!("no DryRun event in {s:#?}"));
    let client = spans.iter().find(|s| s.has_event("dry run")).expect("span");
    assert_eq!(client.attr("breakwater.mode"), Some("DryRun"));
    assert_eq!(client.attr("http.response.status_code"), Some("200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_injected_fault_marks_the_client_span_and_no_attempt_is_made() {
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let up = fault(Faults::default()).await;
    let spec = "  faults: {enabled: true, delay: {fixedDelay: 5ms}, abort: {httpStatus: 429}}\n";
    let sc = start_traced(&config(&[up.addr()], spec), &traced(&otlp.http_endpoint(), "http/protobuf"));
    let got = get(sc.outbound, "http://payments/").await;
    assert_eq!((got.status, got.header("breakwater-error")), (429, Some("fault-injected")));
    let spans = otlp
        .wait_for(WAIT, |s| s.iter().any(|x| x.has_event("injecting an abort")))
        .await
        .unwrap_or_else(|s| panic!("no fault event in {s:#?}"));
    let client = client_spans(&spans).into_iter().find(|s| s.has_event("injecting an abort")).expect("span");
    assert_eq!(client.attr("breakwater.fault"), Some("delay,abort"));
    assert_eq!(client.attr("error.type"), Some("fault-injected"));
    assert!(client.has_event("injecting a delay"));
    assert!(children(&spans, client).is_empty(), "an aborted call makes no attempt");
    assert_eq!(up.stats().requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_collector_never_slows_or_fails_a_request() {
    // One collector that refuses connections, one that accepts and never answers.
    let refused = closed_port().await;
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hole = blackhole.local_addr().expect("addr");
    let up = fault(Faults::default()).await;
    for (endpoint, protocol) in
        [(format!("http://{refused}"), "grpc"), (format!("http://{hole}"), "http/protobuf")]
    {
        let sc =
            start_traced(&config(&[up.addr()], "  timeouts: {request: 5s}\n"), &traced(&endpoint, protocol));
        for _ in 0..200 {
            let started = tokio::time::Instant::now();
            let got = get(sc.outbound, "http://payments/").await;
            assert_eq!(got.status, 200);
            // Export waits up to 10s per batch: a request that waited on it would take that long.
            assert!(started.elapsed() < Duration::from_secs(5), "a request waited on the exporter");
        }
        let admin = sc.admin;
        // Refused: every batch fails at once and is counted. The black hole holds the first
        // batch for the 10 s export timeout (the processor's unit tests step through that on a
        // paused clock); until then nothing may be counted as exported.
        let (lost, exported) = eventually("the sidecar's span counters", || async move {
            let text = http1(
                admin,
                Request::get("/metrics").header("host", "a").body(Full::new(Bytes::new())).expect("req"),
            )
            .await
            .text();
            let v = |name: &str| {
                text.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
            };
            let lost =
                v("breakwater_trace_spans_export_failed_total")? + v("breakwater_trace_spans_dropped_total")?;
            let exported = v("breakwater_trace_spans_exported_total")?;
            (lost > 0.0 || protocol == "http/protobuf").then_some((lost, exported))
        })
        .await;
        assert_eq!(exported, 0.0, "{protocol} at {endpoint}: no span reached a collector");
        if protocol == "grpc" {
            assert!(lost > 0.0, "spans the refusing collector never took are counted as lost");
        }
    }
    drop(blackhole);
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_follows_the_caller_and_the_ratio() {
    let otlp = OtlpReceiver::start().await.expect("receiver");
    let up = fault(Faults::default()).await;
    let mut env = traced(&otlp.grpc_endpoint(), "grpc");
    env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()));
    env.push(("OTEL_TRACES_SAMPLER_ARG", "0".to_owned()));
    let sc = start_traced(&config(&[up.addr()], "  timeouts: {request: 5s}\n"), &env);
    // Ratio 0: requests without a context are not recorded...
    for _ in 0..20 {
        assert_eq!(get(sc.outbound, "http://payments/").await.status, 200);
    }
    // ...a caller's sampled context is followed...
    let sampled = "11111111111111111111111111111111";
    let req = Request::get("/")
        .header("host", "payments")
        .header("traceparent", format!("00-{sampled}-00f067aa0ba902b7-01"));
    assert_eq!(http1(sc.outbound, req.body(Full::new(Bytes::new())).expect("req")).await.status, 200);
    // ...and so is an unsampled one, whose headers pass through untouched.
    let unsampled = "22222222222222222222222222222222";
    let req = Request::get("/")
        .header("host", "payments")
        .header("traceparent", format!("00-{unsampled}-00f067aa0ba902b7-00"));
    assert_eq!(http1(sc.outbound, req.body(Full::new(Bytes::new())).expect("req")).await.status, 200);

    let spans = otlp
        .wait_for(WAIT, |s| s.iter().any(|x| x.trace_id == sampled && x.name.starts_with("attempt")))
        .await
        .unwrap_or_else(|s| panic!("the sampled caller's trace never arrived: {s:#?}"));
    assert!(
        spans.iter().all(|s| s.trace_id == sampled),
        "only the sampled caller's trace is recorded: {spans:#?}"
    );
    let seen = up.stats().seen().await;
    let last = seen.last().expect("requests");
    assert_eq!(
        last.headers.get("traceparent").map(String::as_str),
        Some(format!("00-{unsampled}-00f067aa0ba902b7-00").as_str()),
        "an unrecorded request carries the caller's context unchanged"
    );
}
