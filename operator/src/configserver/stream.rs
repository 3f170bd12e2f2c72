//! One sidecar's stream: a writer task pushes its pod's snapshot whenever the hub's channel
//! changes, a reader task takes its acknowledgements; when either ends, so does the other.

use std::{collections::VecDeque, convert::Infallible, sync::Arc};

use breakwater_crds::snapshot::{
    encode,
    stream::{Ack, Frames, frame},
};
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, channel::Channel};
use hyper::body::Incoming;
use tokio::sync::{Mutex, watch};

use super::{Body, ConfigServer};
use crate::{key::ObjKey, snapshots::Current};

/// Snapshots sent and not yet answered that an acknowledgement may name (older ones are
/// superseded: a sidecar applies the latest).
const UNANSWERED: usize = 8;

/// Starts streaming `rx` (pod `pod`'s snapshots) and reading acknowledgements from `acks`.
pub(super) async fn start(
    server: &ConfigServer,
    pod: ObjKey,
    mut rx: watch::Receiver<Current>,
    acks: Incoming,
) -> Response<Body> {
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(1);
    let stream = server.acks.connected(&pod).await;
    server.metrics.stream_opened();
    tracing::info!(pod = %pod, stream, "config stream opened");
    let sent: Arc<Mutex<VecDeque<Current>>> = Arc::default();

    let writer = {
        let (sent, metrics, registry, pod) =
            (sent.clone(), server.metrics.clone(), server.acks.clone(), pod.clone());
        async move {
            loop {
                let current = rx.borrow_and_update().clone();
                let bytes = Bytes::from(frame(&encode(&current.snapshot)));
                {
                    let mut sent = sent.lock().await;
                    sent.push_back(current.clone());
                    if sent.len() > UNANSWERED {
                        sent.pop_front();
                    }
                }
                // Waits while the sidecar's stream window is full: flow control, per stream.
                if tx.send_data(bytes).await.is_err() {
                    return "the sidecar went away";
                }
                metrics.snapshot_pushed();
                registry.pushed(&pod, stream, &current.snapshot, current.observed).await;
                tracing::debug!(pod = %pod, version = %current.snapshot.version, "snapshot pushed");
                // A closed channel: the pod is gone.
                if rx.changed().await.is_err() {
                    return "the pod is gone";
                }
            }
        }
    };
    let reader = {
        let (sent, server, pod) = (sent, server.clone(), pod.clone());
        async move {
            let mut acks = acks;
            let mut frames = Frames::default();
            loop {
                let chunk = match acks.frame().await {
                    Some(Ok(f)) => f,
                    Some(Err(_)) | None => return "the sidecar closed its side",
                };
                let Ok(data) = chunk.into_data() else { continue };
                frames.push(&data);
                loop {
                    let next = match frames.next_frame() {
                        Ok(Some(f)) => f,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(pod = %pod, error = %e, "malformed acknowledgement; closing the stream");
                            return "a malformed acknowledgement";
                        }
                    };
                    let ack: Ack = match serde_json::from_slice(&next) {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(pod = %pod, error = %e, "unreadable acknowledgement; closing the stream");
                            return "an unreadable acknowledgement";
                        }
                    };
                    let answered = sent
                        .lock()
                        .await
                        .iter()
                        .find(|c| c.snapshot.version.hash == ack.version.hash)
                        .cloned();
                    let Some(answered) = answered else {
                        tracing::debug!(pod = %pod, version = %ack.version, "acknowledgement of an unknown version ignored");
                        continue;
                    };
                    match &ack.error {
                        None => {
                            tracing::debug!(pod = %pod, stream, version = %ack.version, "snapshot acknowledged");
                            server.metrics.acknowledged(true, answered.observed.elapsed().as_secs_f64());
                            server
                                .acks
                                .applied(&pod, stream, answered.snapshot.clone(), answered.observed)
                                .await;
                        }
                        Some(why) => {
                            server.metrics.acknowledged(false, answered.observed.elapsed().as_secs_f64());
                            tracing::warn!(pod = %pod, version = %ack.version, error = %why, "a sidecar refused its snapshot");
                            server.acks.refused(&pod, &answered.snapshot, why).await;
                        }
                    }
                }
            }
        }
    };
    let (registry, metrics) = (server.acks.clone(), server.metrics.clone());
    tokio::spawn(async move {
        let why = tokio::select! {
            // Pushing ended.
            why = writer => why,
            // Reading acknowledgements ended.
            why = reader => why,
        };
        registry.disconnected(&pod, stream).await;
        metrics.stream_closed();
        tracing::info!(pod = %pod, stream, why, "config stream closed");
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-breakwater-snapshots")
        .body(body.boxed())
        .expect("a response from constants is valid")
}
