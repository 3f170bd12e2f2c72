//! The mutating webhook: `POST /inject` on the webhook port (TLS), an AdmissionReview in, an
//! AdmissionReview out with [`inject`](super::inject)'s patch. Every replica answers; nothing
//! here needs the lease.
//!
//! [`answer`] is pure (bytes → review), so every answer — malformed reviews included — is
//! unit-tested; [`serve`] is the listener; [`patch_ca_bundle`] keeps the webhook
//! configuration's `caBundle` on the operator's CA.

use std::{convert::Infallible, sync::Arc, time::Duration};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{ObjectReference, Pod},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
    },
    runtime::events::{Event, EventType, Recorder},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Options, Outcome, SkipReason, Template};
use crate::metrics::Metrics;

/// The largest AdmissionReview read (a pod is at most etcd's 1.5 MiB request, twice over).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// What the webhook decided, for metrics and Events.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Patched.
    Injected,
    /// Left alone.
    Skipped(SkipReason, String),
    /// Refused (the pod collides with what injection adds).
    Refused(String),
    /// Not a pod creation (allowed, untouched).
    NotConcerned,
    /// The review could not be read.
    Invalid(String),
}

impl Decision {
    /// The `result` label.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Injected => "injected",
            Decision::Skipped(..) => "skipped",
            Decision::Refused(_) => "refused",
            Decision::NotConcerned => "not-concerned",
            Decision::Invalid(_) => "invalid",
        }
    }
}

/// One answer: the review to send, what was decided, and whom an Event about it should name.
#[derive(Debug)]
pub struct Answer {
    /// The AdmissionReview to send back.
    pub review: AdmissionReview<DynamicObject>,
    /// What was decided.
    pub decision: Decision,
    /// The pod's controller (a ReplicaSet, a Job), or the pod when it has a name and no owner.
    pub subject: Option<ObjectReference>,
}

/// Answers one AdmissionReview (its JSON body).
pub fn answer(body: &[u8], template: &Template, options: Options) -> Answer {
    let invalid = |why: String| Answer {
        review: AdmissionResponse::invalid(&why).into_review(),
        decision: Decision::Invalid(why),
        subject: None,
    };
    let review: AdmissionReview<Pod> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return invalid(format!("not an AdmissionReview of a Pod: {e}")),
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return invalid("the AdmissionReview has no request".to_owned()),
    };
    let response = AdmissionResponse::from(&request);
    let (Operation::Create, Some(pod)) = (&request.operation, &request.object) else {
        return Answer { review: response.into_review(), decision: Decision::NotConcerned, subject: None };
    };
    // A dry run records nothing (the webhook declares `sideEffects: None`).
    let subject = if request.dry_run { None } else { subject(&request) };
    let (review, decision) = match super::inject(pod, template, options) {
        Outcome::Inject { patch, warnings } => match response.with_patch(patch) {
            Ok(mut r) => {
                if !warnings.is_empty() {
                    r.warnings = Some(warnings);
                }
                (r.into_review(), Decision::Injected)
            }
            Err(e) => {
                let why = format!("the patch cannot be written: {e}");
                (AdmissionResponse::from(&request).deny(&why).into_review(), Decision::Refused(why))
            }
        },
        Outcome::Skip { reason, message } => (response.into_review(), Decision::Skipped(reason, message)),
        Outcome::Refuse(why) => (response.deny(&why).into_review(), Decision::Refused(why)),
    };
    Answer { review, decision, subject }
}

/// Whom an Event about a pod at admission names: its controller, or the pod itself when it has
/// a name and no owner (a pod being created has no uid yet).
fn subject(request: &AdmissionRequest<Pod>) -> Option<ObjectReference> {
    let pod = request.object.as_ref()?;
    let namespace = request.namespace.clone().or_else(|| pod.metadata.namespace.clone());
    if let Some(owner) = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true)) {
        return Some(ObjectReference {
            api_version: Some(owner.api_version.clone()),
            kind: Some(owner.kind.clone()),
            name: Some(owner.name.clone()),
            uid: Some(owner.uid.clone()),
            namespace,
            ..ObjectReference::default()
        });
    }
    let name = pod.metadata.name.clone().filter(|n| !n.is_empty())?;
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace,
        ..ObjectReference::default()
    })
}

/// What the listener needs.
#[derive(Clone)]
pub struct Webhook {
    /// The injection template.
    pub template: Arc<Template>,
    /// How the API server runs sidecars.
    pub options: Options,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Events saying why a pod has no sidecar.
    pub recorder: Option<Recorder>,
}

/// Serves `/inject` on `listener` (TLS with `tls`) until `stop`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    webhook: Webhook,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = tokio::select! {
            // The API server calls.
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            // Shutting down.
            _ = stop.cancelled() => return,
        };
        let (acceptor, webhook, stop) = (acceptor.clone(), webhook.clone(), stop.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
            };
            let service = service_fn(move |req| {
                let webhook = webhook.clone();
                async move { Ok::<_, Infallible>(route(&webhook, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                // The connection ended.
                _ = conn.as_mut() => {}
                // Shutting down: finish what is in flight.
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{message}\n"))))
        .expect("a response from constants is valid")
}

async fn route(webhook: &Webhook, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/inject" {
        return text(StatusCode::NOT_FOUND, "the webhook serves POST /inject");
    }
    if req.method() != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview");
    }
    let started = tokio::time::Instant::now();
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return text(StatusCode::PAYLOAD_TOO_LARGE, &format!("cannot read the AdmissionReview: {e}"));
        }
    };
    let Answer { review, decision, subject } = answer(&body, &webhook.template, webhook.options);
    webhook.metrics.admission(decision.label(), started.elapsed().as_secs_f64());
    let event = match &decision {
        Decision::Skipped(SkipReason::AlreadyInjected, _) => {
            webhook.metrics.injection_skipped(SkipReason::AlreadyInjected.label());
            None
        }
        Decision::Skipped(reason, message) => {
            webhook.metrics.injection_skipped(reason.label());
            tracing::info!(reason = reason.label(), %message, "pod left without a sidecar");
            let note =
                format!("a pod was created without the Breakwater sidecar ({}): {message}", reason.label());
            Some((EventType::Normal, "SidecarNotInjected", note))
        }
        Decision::Refused(why) => {
            tracing::warn!(%why, "pod refused");
            Some((EventType::Warning, "SidecarInjectionRefused", format!("a pod was refused: {why}")))
        }
        Decision::Invalid(why) => {
            tracing::warn!(%why, "malformed AdmissionReview");
            None
        }
        Decision::Injected | Decision::NotConcerned => None,
    };
    // Off the request path: the API server is waiting for the answer.
    if let (Some((type_, reason, note)), Some(subject), Some(recorder)) =
        (event, subject, webhook.recorder.clone())
    {
        tokio::spawn(async move {
            let event = Event {
                type_,
                reason: reason.into(),
                note: Some(note.chars().take(1000).collect()),
                action: "Inject".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &subject).await {
                tracing::debug!(error = %e, "publishing an injection Event failed");
            }
        });
    }
    match serde_json::to_vec(&review) {
        Ok(json) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json)))
            .expect("a response from constants is valid"),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot write the AdmissionReview: {e}")),
    }
}

/// Sets `caBundle` on every webhook of MutatingWebhookConfiguration `name` to `ca_pem` (a JSON
/// patch per webhook, only where it differs).
pub async fn patch_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> Result<usize, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let current = api.get(name).await?;
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let ops: Vec<serde_json::Value> = current
        .webhooks
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, w)| w.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem.as_bytes()))
        .map(|(i, _)| serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": bundle}))
        .collect();
    if ops.is_empty() {
        return Ok(0);
    }
    let n = ops.len();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .expect("add operations with string paths are a JSON patch");
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch)).await?;
    Ok(n)
}
