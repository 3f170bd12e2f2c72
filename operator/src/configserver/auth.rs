//! Who is asking: a sidecar's projected ServiceAccount token, checked with a `TokenReview`.
//!
//! The kubelet binds a projected token to its pod, and the API server says so in the review:
//! `extra["authentication.kubernetes.io/pod-name"]` and `…/pod-uid`, with the namespace in the
//! username (`system:serviceaccount:NAMESPACE:SA`). The token must have been issued for our
//! audience ([`TOKEN_AUDIENCE`]), so a token meant for the API server (or anyone else) cannot be
//! replayed here, and one of ours is no good anywhere else.
//!
//! Reviews are cached by the token's SHA-256 for a minute (bounded), so a reconnect storm does
//! not become a TokenReview storm; a refused token is not cached.

use std::{collections::HashMap, sync::Arc, time::Duration};

use breakwater_crds::snapshot::stream::TOKEN_AUDIENCE;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::Mutex, time::Instant};

use crate::key::ObjKey;

const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// How long a review is trusted.
const CACHE_FOR: Duration = Duration::from_secs(60);
/// Most reviews remembered.
const CACHE_SIZE: usize = 16 * 1024;

/// The pod a token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `namespace/name` of the pod.
    pub pod: ObjKey,
    /// Its UID.
    pub uid: String,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No bearer token: 401.
    #[error("no bearer token: send the pod's projected ServiceAccount token (audience {TOKEN_AUDIENCE})")]
    NoToken,
    /// The API server did not accept the token, or it is not for us: 401.
    #[error("the token is not valid for audience {TOKEN_AUDIENCE}: {0}")]
    Invalid(String),
    /// The token is not bound to a pod: 401.
    #[error("the token is not bound to a pod (project it into the pod, do not mint it by hand)")]
    NotBound,
    /// The token's pod is not the one asked for: 403.
    #[error("the token is bound to pod {bound}; it may read only that pod's snapshot, not {asked}'s")]
    OtherPod {
        /// The pod the token belongs to.
        bound: String,
        /// The pod asked for.
        asked: String,
    },
    /// The API server could not be asked: 503 (the sidecar retries).
    #[error("cannot review the token now: {0}")]
    Unavailable(String),
}

impl Refused {
    /// The HTTP status to answer with.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Refused::NoToken | Refused::Invalid(_) | Refused::NotBound => http::StatusCode::UNAUTHORIZED,
            Refused::OtherPod { .. } => http::StatusCode::FORBIDDEN,
            Refused::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Reviews tokens, with a cache.
#[derive(Clone)]
pub struct Authenticator {
    client: Client,
    cache: Arc<Mutex<Reviews>>,
}

/// Reviews by the token's SHA-256: who it belongs to, and when that was learnt.
type Reviews = HashMap<[u8; 32], (Caller, Instant)>;

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Reviews with `client` (which needs `create` on `tokenreviews`).
    pub fn new(client: Client) -> Self {
        Authenticator { client, cache: Arc::default() }
    }

    /// The pod `authorization` (the header's value) belongs to, if it may read `asked`.
    pub async fn check(&self, authorization: Option<&str>, asked: &ObjKey) -> Result<Caller, Refused> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(Refused::NoToken)?;
        let caller = self.review(token).await?;
        if &caller.pod != asked {
            return Err(Refused::OtherPod { bound: caller.pod.to_string(), asked: asked.to_string() });
        }
        Ok(caller)
    }

    async fn review(&self, token: &str) -> Result<Caller, Refused> {
        use sha2::Digest;
        let id: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        if let Some((caller, at)) = self.cache.lock().await.get(&id)
            && at.elapsed() < CACHE_FOR
        {
            return Ok(caller.clone());
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
            },
            ..Default::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| Refused::Unavailable(e.to_string()))?;
        let status = answer.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(Refused::Invalid(status.error.unwrap_or_else(|| "not authenticated".into())));
        }
        if !status.audiences.iter().flatten().any(|a| a == TOKEN_AUDIENCE) {
            return Err(Refused::Invalid("issued for another audience".into()));
        }
        let user = status.user.unwrap_or_default();
        let extra = user.extra.unwrap_or_default();
        let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
        let namespace = user
            .username
            .as_deref()
            .and_then(|u| u.strip_prefix("system:serviceaccount:"))
            .and_then(|rest| rest.split(':').next())
            .map(str::to_owned);
        let (Some(namespace), Some(name), Some(uid)) = (namespace, one(POD_NAME), one(POD_UID)) else {
            return Err(Refused::NotBound);
        };
        let caller = Caller { pod: ObjKey::new(&namespace, &name), uid };
        let mut cache = self.cache.lock().await;
        if cache.len() >= CACHE_SIZE {
            cache.retain(|_, (_, at)| at.elapsed() < CACHE_FOR);
            if cache.len() >= CACHE_SIZE {
                cache.clear();
            }
        }
        cache.insert(id, (caller.clone(), Instant::now()));
        Ok(caller)
    }
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::{Value, json};

    use super::*;
    use crate::testing::{self, ApiServer};

    const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews?";

    /// The TokenReview answer for a token bound to pod `namespace/name`.
    fn bound_to(namespace: &str, name: &str, audience: &str) -> Value {
        json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {},
            "status": {
                "authenticated": true,
                "audiences": [audience],
                "user": {
                    "username": format!("system:serviceaccount:{namespace}:default"),
                    "extra": {POD_NAME: [name], POD_UID: ["uid-1"]},
                },
            },
        })
    }

    /// Runs `check` while the API server answers one TokenReview with `answer`; returns the
    /// result and the review that was sent.
    async fn reviewed(
        auth: &Authenticator,
        server: &mut ApiServer,
        token: &str,
        asked: &ObjKey,
        answer: Value,
    ) -> (Result<Caller, Refused>, Value) {
        let header = format!("Bearer {token}");
        let (result, seen) = tokio::join!(
            auth.check(Some(&header), asked),
            server.expect(Method::POST, REVIEWS, StatusCode::CREATED, answer)
        );
        (result, seen.body)
    }

    #[tokio::test]
    async fn a_pod_reads_its_own_snapshot_and_its_review_is_cached() {
        let (client, mut server) = testing::client();
        let auth = Authenticator::new(client);
        let me = ObjKey::new("shop", "checkout-1");
        let (result, review) =
            reviewed(&auth, &mut server, "t1", &me, bound_to("shop", "checkout-1", TOKEN_AUDIENCE)).await;
        assert_eq!(result, Ok(Caller { pod: me.clone(), uid: "uid-1".into() }));
        assert_eq!(
            review["spec"],
            json!({"token": "t1", "audiences": [TOKEN_AUDIENCE]}),
            "our audience only"
        );

        // The same token again: answered from the cache, no second review.
        assert!(testing::within(auth.check(Some("Bearer t1"), &me)).await.is_ok());
        // Another pod's snapshot with it: 403, also without asking.
        let other = testing::within(auth.check(Some("Bearer t1"), &ObjKey::new("shop", "payments-1"))).await;
        assert_eq!(other.as_ref().map_err(Refused::status), Err(StatusCode::FORBIDDEN), "{other:?}");
        server.nothing_more();
    }

    #[tokio::test]
    async fn tokens_that_prove_nothing_are_refused_and_not_cached() {
        let (client, mut server) = testing::client();
        let auth = Authenticator::new(client);
        let me = ObjKey::new("shop", "checkout-1");

        // No header, or not a bearer: refused before asking anyone.
        for header in [None, Some("Basic abc"), Some("Bearer  ")] {
            assert_eq!(testing::within(auth.check(header, &me)).await, Err(Refused::NoToken), "{header:?}");
        }
        server.nothing_more();

        let unauthenticated = json!({"status": {"authenticated": false, "error": "token expired"}});
        let (result, _) = reviewed(&auth, &mut server, "t2", &me, unauthenticated).await;
        assert_eq!(result, Err(Refused::Invalid("token expired".into())));
        // Not cached: the next attempt is reviewed again (and the API server's audience check
        // answered with someone else's audience is refused too).
        let (result, _) =
            reviewed(&auth, &mut server, "t2", &me, bound_to("shop", "checkout-1", "vault")).await;
        assert_eq!(result, Err(Refused::Invalid("issued for another audience".into())));

        // A token of a ServiceAccount, not bound to a pod.
        let unbound = json!({"status": {"authenticated": true, "audiences": [TOKEN_AUDIENCE],
                                        "user": {"username": "system:serviceaccount:shop:default"}}});
        let (result, _) = reviewed(&auth, &mut server, "t3", &me, unbound).await;
        assert_eq!(result.map_err(|e| e.status()), Err(StatusCode::UNAUTHORIZED));

        // The API server cannot answer: 503, the sidecar retries.
        let header = "Bearer t4";
        let (result, _) = tokio::join!(
            auth.check(Some(header), &me),
            server.expect(
                Method::POST,
                REVIEWS,
                StatusCode::INTERNAL_SERVER_ERROR,
                testing::status(500, "InternalError", "etcd is down")
            )
        );
        assert_eq!(result.map_err(|e| e.status()), Err(StatusCode::SERVICE_UNAVAILABLE));
        server.nothing_more();
    }
}
