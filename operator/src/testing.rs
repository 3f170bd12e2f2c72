//! The fast test tier's API server: a `kube::Client` over `tower_test::mock`, as kube-rs's
//! controller-rs tests its reconciler. A test runs the code under test and the expected
//! exchanges side by side and asserts every request exactly: method, path and query, body.
//! What needs a real API server (admission, RBAC, watches, server-side apply's merge) stays in
//! the e2e tests.

use futures_util::FutureExt;
use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body};
use serde_json::Value;
use tower_test::mock::{self, Handle};

/// The mock API server's side.
pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

/// A client whose every request reaches the returned [`ApiServer`].
pub fn client() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer { handle })
}

/// A request as the test sees it.
#[derive(Debug)]
pub struct Seen {
    /// The method.
    pub method: Method,
    /// Path and query.
    pub uri: String,
    /// The body, as JSON (`Null` when empty).
    pub body: Value,
}

impl ApiServer {
    /// Waits for the next request, checks its method and that its path and query start with
    /// `uri`, and answers `status` with `answer` as JSON; returns what was sent.
    pub async fn expect(&mut self, method: Method, uri: &str, status: StatusCode, answer: Value) -> Seen {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), self.handle.next_request());
        let Ok(Some((request, send))) = next.await else { panic!("no {method} {uri}… within 10 s") };
        let seen = Seen {
            method: request.method().clone(),
            uri: request.uri().to_string(),
            body: {
                let bytes = request.into_body().collect_bytes().await.expect("a readable body");
                if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).expect("a JSON body")
                }
            },
        };
        assert_eq!(seen.method, method, "{seen:?}");
        assert!(seen.uri.starts_with(uri), "expected {method} {uri}…, got {seen:?}");
        let body = serde_json::to_vec(&answer).expect("JSON");
        send.send_response(Response::builder().status(status).body(Body::from(body)).expect("a response"));
        seen
    }

    /// Asserts that nothing was sent (call once the code under test has returned: whatever it
    /// sent is queued by then).
    pub fn nothing_more(&mut self) {
        if let Some(Some((request, _))) = self.handle.next_request().now_or_never() {
            panic!("unexpected request: {} {}", request.method(), request.uri());
        }
    }
}

/// The body of an API error answer (`Status`), as the API server sends it.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "code": code, "reason": reason, "message": message,
    })
}

/// `future`'s output, which must come within 10 s (code that waits for an answer nobody gives
/// fails the test instead of hanging it).
pub async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(10), future).await.expect("done within 10 s")
}
