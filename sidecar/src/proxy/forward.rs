//! Forwarding one request to a Service under its policy.

use std::sync::Arc;

use http::{Request, Response};
use http_body_util::BodyExt;

use super::{
    balance,
    body::ProxyBody,
    error::Refusal,
    http::{AttemptError, forward_once},
    routes::Target,
};

/// Forwards `req` to `target`'s endpoints and returns the response, or Breakwater's own
/// answer saying why there is none.
pub async fn call(target: &Arc<Target>, req: Request<ProxyBody>, grpc: bool) -> Response<ProxyBody> {
    let Some((_, endpoint)) = balance::pick(&target.endpoints, |_| true) else {
        return Refusal::ConnectFailed.response(grpc, "the Service has no endpoints");
    };
    let endpoint = endpoint.clone();
    let attempt = forward_once(&endpoint, req);
    let result = match target.request_timeout {
        Some(limit) => match tokio::time::timeout(limit, attempt).await {
            Ok(r) => r,
            Err(_) => {
                target.metrics.timeout("request");
                return Refusal::Timeout.response(grpc, &format!("no response within {limit:?}"));
            }
        },
        None => attempt.await,
    };
    match result {
        Ok(resp) => resp.map(|b| b.map_err(Into::into).boxed_unsync()),
        Err(e) => {
            if matches!(e, AttemptError::Connect { .. }) {
                target.metrics.connect_failure();
            }
            tracing::debug!(service = %target.service, error = %e, "attempt failed");
            e.refusal().response(grpc, &e.to_string())
        }
    }
}
