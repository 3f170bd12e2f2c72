//! The mutating webhook: `POST /inject` on the webhook port (TLS), an AdmissionReview in, an
//! AdmissionReview out with [`inject`](super::inject)'s patch. Every replica answers; nothing
//! here needs the lease.
//!
//! [`answer`] is pure (bytes → review), so every answer — malformed reviews included — is
//! unit-tested; [`serve`] is the listener; [`keep_configuration`] keeps the webhook
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
    owner_or_pod(pod, request.namespace.clone().or_else(|| pod.metadata.namespace.clone()))
}

/// Whom an Event about `pod` names: its controller, or the pod itself (None for a pod with
/// neither an owner nor a name yet).
pub(super) fn owner_or_pod(pod: &Pod, namespace: Option<String>) -> Option<ObjectReference> {
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
        uid: pod.metadata.uid.clone(),
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
            // Not `SidecarNotInjected`: that Warning is for pods that should have the proxy and
            // do not (see `uninjected`); this pod was left alone on purpose.
            Some((EventType::Normal, "SidecarInjectionSkipped", note))
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

/// What the operator keeps on its MutatingWebhookConfiguration.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// The `caBundle` to set (the operator's own CA); `None` when someone else sets it
    /// (cert-manager's CA injector).
    pub ca_bundle: Option<&'a str>,
    /// The CA the served certificate chains to: a webhook whose `caBundle` holds it can call us.
    pub trust: &'a str,
    /// The failure policy once a webhook can call us (until then it stays as the chart
    /// rendered it: `Ignore`).
    pub failure_policy: &'a str,
}

/// The JSON patch operations that bring `current` to `wanted` (none when it is there).
pub fn configuration_ops(
    current: &MutatingWebhookConfiguration,
    wanted: Wanted<'_>,
) -> Vec<serde_json::Value> {
    let first = |pem: &str| -> String {
        const END: &str = "-----END CERTIFICATE-----";
        pem.find(END).map_or(pem, |i| &pem[..i + END.len()]).trim().to_owned()
    };
    let trust = first(wanted.trust);
    let mut ops = Vec::new();
    for (i, hook) in current.webhooks.iter().flatten().enumerate() {
        let bundle =
            hook.client_config.ca_bundle.as_ref().map(|b| String::from_utf8_lossy(&b.0).into_owned());
        let callable = match wanted.ca_bundle {
            Some(ca) => {
                if bundle.as_deref() != Some(ca) {
                    let value = base64::engine::general_purpose::STANDARD.encode(ca);
                    ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": value}));
                }
                true
            }
            None => !trust.is_empty() && bundle.is_some_and(|b| b.contains(&trust)),
        };
        if callable && hook.failure_policy.as_deref() != Some(wanted.failure_policy) {
            ops.push(serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/failurePolicy"), "value": wanted.failure_policy}));
        }
    }
    ops
}

/// Applies [`configuration_ops`] to MutatingWebhookConfiguration `name`; returns how many
/// operations it sent.
pub async fn keep_configuration(
    client: &Client,
    name: &str,
    wanted: Wanted<'_>,
) -> Result<usize, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let current = api.get(name).await?;
    let mut ops = configuration_ops(&current, wanted);
    let n = ops.len();
    if n == 0 {
        return Ok(0);
    }
    // Only on the configuration we read: a concurrent `helm upgrade` makes the patch fail and
    // the next round starts from what it wrote.
    if let Some(rv) = current.metadata.resource_version {
        ops.insert(0, serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}));
    }
    let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
        .expect("add and test operations with string paths are a JSON patch");
    // A named field manager: `kubectl get -o yaml --show-managed-fields` says who set the field.
    let params = PatchParams { field_manager: Some(crate::FIELD_MANAGER.into()), ..PatchParams::default() };
    api.patch(name, &params, &Patch::<()>::Json(patch)).await?;
    Ok(n)
}
