//! A test OpenTelemetry collector: receives OTLP traces over gRPC (the `TraceService` of the
//! OpenTelemetry proto types) and over HTTP/protobuf (`POST /v1/traces`), and keeps the spans
//! for assertions. No `protoc` needed: the types come generated with `opentelemetry-proto`.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
};
use prost::Message as _;
use tokio::{
    net::TcpListener,
    sync::{Mutex, Notify, watch},
};

/// One received span, flattened for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Hex trace ID.
    pub trace_id: String,
    /// Hex span ID.
    pub span_id: String,
    /// Hex parent span ID (empty for a root).
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// OTLP span kind: 2 server, 3 client, 1 internal.
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: BTreeMap<String, String>,
    /// Events: name and attributes.
    pub events: Vec<(String, BTreeMap<String, String>)>,
    /// Status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// Duration.
    pub duration: Duration,
    /// Resource attributes of its batch.
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// Whether an event whose name contains `text` was recorded.
    pub fn has_event(&self, text: &str) -> bool {
        self.events.iter().any(|(n, _)| n.contains(text))
    }
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Default)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    arrived: Notify,
}

impl Store {
    async fn add(&self, req: ExportTraceServiceRequest) {
        let mut out = Vec::new();
        for rs in req.resource_spans {
            let resource = rs.resource.as_ref().map(|r| attrs(&r.attributes)).unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ReceivedSpan {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name.clone(),
                        kind: s.kind,
                        attributes: attrs(&s.attributes),
                        events: s.events.iter().map(|e| (e.name.clone(), attrs(&e.attributes))).collect(),
                        status: s.status.as_ref().map_or(0, |st| st.code),
                        duration: Duration::from_nanos(
                            s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                        ),
                        resource: resource.clone(),
                    });
                }
            }
        }
        self.spans.lock().await.extend(out);
        self.arrived.notify_waiters();
    }
}

struct Grpc(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner()).await;
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    grpc: SocketAddr,
    http: SocketAddr,
    store: Arc<Store>,
    _stop: watch::Sender<()>,
}

impl OtlpReceiver {
    /// Starts gRPC and HTTP receivers on ephemeral loopback ports.
    pub async fn start() -> std::io::Result<Self> {
        let store = Arc::new(Store::default());
        let (stop, stopped) = watch::channel(());

        let grpc_listener = TcpListener::bind("127.0.0.1:0").await?;
        let grpc = grpc_listener.local_addr()?;
        let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
        let svc = TraceServiceServer::new(Grpc(store.clone()));
        let mut grpc_stop = stopped.clone();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = grpc_stop.changed().await;
            };
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
        });

        let http_listener = TcpListener::bind("127.0.0.1:0").await?;
        let http = http_listener.local_addr()?;
        let http_store = store.clone();
        let mut http_stop = stopped;
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    // Owner dropped the receiver.
                    _ = http_stop.changed() => return,
                    // A client connected.
                    a = http_listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let store = http_store.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let store = store.clone();
                        async move {
                            let ok = req.uri().path() == "/v1/traces";
                            let body =
                                req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let status = match ExportTraceServiceRequest::decode(body) {
                                Ok(r) if ok => {
                                    store.add(r).await;
                                    StatusCode::OK
                                }
                                _ => StatusCode::BAD_REQUEST,
                            };
                            let resp = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                            Ok::<_, std::convert::Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::from(resp)))
                                    .expect("static response parts are valid"),
                            )
                        }
                    });
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                });
            }
        });
        Ok(Self { grpc, http, store, _stop: stop })
    }

    /// `http://127.0.0.1:PORT` of the gRPC receiver.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// `http://127.0.0.1:PORT` of the HTTP receiver (base URL; the path is `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every span received so far.
    pub async fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.spans.lock().await.clone()
    }

    /// Waits until `pred` holds on the received spans, for at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let arrived = self.store.arrived.notified();
            let spans = self.spans().await;
            if pred(&spans) {
                return Ok(spans);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(self.spans().await);
            }
        }
    }
}
