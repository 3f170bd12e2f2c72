//! Trace context in and out of requests.
//!
//! In: W3C `traceparent`/`tracestate` and `baggage`, and B3 (single or multi header) from
//! Zipkin-instrumented callers. Out: W3C and `baggage` only — one format, the standard one.
//!
//! B3 is read by [`B3`], a few lines of our own: the only maintained implementation,
//! `opentelemetry-zipkin`'s, is deprecated together with the Zipkin exporter it ships with.
//! The correlation ID `x-request-id` is kept when present and generated when absent.

use std::sync::LazyLock;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator},
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use rand::Rng;

/// The correlation ID header (a `HeaderName`: a `&str` would be parsed, and copied on insert,
/// for every request).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static EXTRACT: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![
        Box::new(B3),
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
});

/// Reads B3 single (`b3: {trace}-{span}[-{sampled}[-{parent}]]`) and multi (`x-b3-*`)
/// headers. Never injects.
#[derive(Debug)]
struct B3;

static B3_FIELDS: [String; 0] = [];

impl TextMapPropagator for B3 {
    fn inject_context(&self, _cx: &Context, _injector: &mut dyn Injector) {}

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
        let (trace, span, sampled) = match extractor.get("b3") {
            Some(single) => {
                let mut parts = single.split('-');
                (parts.next(), parts.next(), parts.next())
            }
            None => (
                extractor.get("x-b3-traceid"),
                extractor.get("x-b3-spanid"),
                extractor.get("x-b3-flags").filter(|f| *f == "1").or_else(|| extractor.get("x-b3-sampled")),
            ),
        };
        let (Some(trace), Some(span)) = (trace, span) else { return cx.clone() };
        // 64-bit trace IDs are left-padded to 128 bits.
        let trace = format!("{trace:0>32}");
        let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&trace), SpanId::from_hex(span)) else {
            return cx.clone();
        };
        let flags = if matches!(sampled, Some("1" | "d" | "true")) {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
        if !sc.is_valid() {
            return cx.clone();
        }
        cx.with_remote_span_context(sc)
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        opentelemetry::propagation::text_map_propagator::FieldIter::new(&B3_FIELDS)
    }
}

static INJECT: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
});

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::from_str(&value)) {
            self.0.insert(k, v);
        }
    }
}

/// The caller's trace context (W3C, or B3 when that is what it sent), with its baggage.
pub fn extract(headers: &HeaderMap) -> Context {
    EXTRACT.extract(&Headers(headers))
}

/// Writes `cx` as W3C `traceparent`/`tracestate` and `baggage`, replacing any B3 headers so the
/// upstream never sees two disagreeing contexts.
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    for b3 in ["b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"] {
        headers.remove(b3);
    }
    INJECT.inject_context(cx, &mut HeadersMut(headers));
}

/// Gives the request a correlation ID when it has none.
pub fn ensure_request_id(headers: &mut HeaderMap) {
    if headers.contains_key(REQUEST_ID) {
        return;
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes: [u8; 16] = rand::rng().random();
    let mut id = [0u8; 32];
    for (i, b) in bytes.iter().enumerate() {
        id[2 * i] = HEX[usize::from(b >> 4)];
        id[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    if let Ok(mut v) = HeaderValue::from_bytes(&id) {
        // A value never seen twice would only churn HTTP/2's header compression table.
        v.set_sensitive(true);
        headers.insert(REQUEST_ID, v);
    }
}

/// The request's correlation ID (after [`ensure_request_id`]).
pub fn request_id(headers: &HeaderMap) -> &str {
    headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    #[test]
    fn reads_w3c_and_b3_and_writes_w3c_only() {
        let mut h = HeaderMap::new();
        h.insert("b3", HeaderValue::from_static("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"));
        let cx = extract(&h);
        let sc = cx.span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), "80f198ee56343ba864fe8b2a57d3eff7");
        assert!(sc.is_sampled());
        let mut out = h.clone();
        inject(&cx, &mut out);
        assert!(out.get("b3").is_none(), "B3 is replaced");
        let tp = out.get("traceparent").and_then(|v| v.to_str().ok()).expect("traceparent");
        assert!(tp.starts_with("00-80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-01"), "{tp}");
    }

    #[test]
    fn reads_b3_multi_headers_with_64_bit_ids() {
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("64fe8b2a57d3eff7"));
        h.insert("x-b3-spanid", HeaderValue::from_static("e457b5a2e4d86bd1"));
        h.insert("x-b3-sampled", HeaderValue::from_static("1"));
        let sc = extract(&h).span().span_context().clone();
        assert_eq!(sc.trace_id().to_string(), "000000000000000064fe8b2a57d3eff7");
        assert!(sc.is_sampled() && sc.is_remote());
    }

    #[test]
    fn keeps_or_generates_the_request_id() {
        let mut h = HeaderMap::new();
        ensure_request_id(&mut h);
        let id = request_id(&h).to_owned();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        ensure_request_id(&mut h);
        assert_eq!(request_id(&h), id, "an existing ID is kept");
        let mut other = HeaderMap::new();
        ensure_request_id(&mut other);
        assert_ne!(request_id(&other), id, "a new request gets a new ID");
    }
}
