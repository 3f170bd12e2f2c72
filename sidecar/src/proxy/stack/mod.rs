//! One target's request path, built once when its configuration is published
//! (linkerd2-proxy's "new service per target"), each step a tower layer:
//!
//! ```text
//! faults ─▶ deadline ─▶ retry ─▶ service breaker ─▶ bulkhead ─▶ attempt span ─▶ pick endpoint
//!   ─▶ endpoint breaker ─▶ per-try deadline ─▶ upstream
//! ```
//!
//! Faults (`spec.faults`) come first, outside the tower stack: an injected abort never reaches
//! the mechanisms below, and an injected delay counts against the call's deadline.
//! A step the policy does not ask for is not in the stack: without a policy a request goes
//! through the attempt span, the pick and the upstream only. The whole call's deadline is taken
//! once, when the request arrives, and travels with it; the per-try deadline sits below the
//! endpoint breaker so that the breaker counts the attempts it cuts.
//!
//! The mechanisms (deadline, retry, breakers, bulkhead) are `breakwater-resilience`'s; the
//! steps written here are what only HTTP and this target know: the request adapters
//! ([`request`]), the classification of outcomes and refusals ([`classify`]), the attempt spans,
//! the endpoint choice and the send.

mod classify;
mod endpoint_breaker;
mod fault;
mod pick;
mod request;
mod span;
mod upstream;

use std::{sync::Arc, time::Duration};

use breakwater_resilience::{
    BoxError,
    breaker::{CircuitBreakerLayer, CircuitBreakerService},
    bulkhead::{BulkheadLayer, BulkheadService},
    retry::{Retry, RetryLayer, RetryPolicy},
    timeout::{Timeout, TimeoutLayer},
};
use http::{Request, Response};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt as _, util::Either};

use self::{
    endpoint_breaker::{EndpointBreaker, EndpointBreakerLayer},
    pick::{Pick, PickLayer},
    request::{HttpRequest, HttpResponse},
    span::{AttemptSpan, AttemptSpanLayer},
    upstream::Upstream,
};
pub use self::{
    fault::ResetStream,
    request::{IDEMPOTENCY_KEY, RETRY_DEPTH_HEADER},
};
use super::{
    body::{ClientFault, ProxyBody},
    endpoint::Endpoint,
    error::Refusal,
    state::{Breakers, Resilience},
};
use crate::{config::policy::Policy, metrics::ServiceMetrics};

/// What the steps of one target's stack share.
pub(crate) struct Shared {
    /// The target's endpoints.
    endpoints: Arc<[Arc<Endpoint>]>,
    /// Its breakers, budget and bulkhead, and their observer.
    resilience: Arc<Resilience>,
    /// Its metric handles.
    metrics: ServiceMetrics,
    /// How long a connection attempt may take (the ejected endpoints' probes use it too).
    connect_timeout: Duration,
    /// Statuses the retry policy lists (failures, for the classification).
    retry_statuses: Vec<u16>,
    /// Whether a gRPC response's trailers decide anything here (a retried gRPC code, a
    /// breaker), so they are read before answering.
    trailers_matter: bool,
    /// Whether the balancer's failure accrual is on: it is unless per-endpoint breakers are
    /// enforced, which then do that job as configured.
    failure_aware: bool,
}

/// The per-try deadline over the send.
type PerTry = Either<Timeout<Upstream>, Upstream>;
/// The endpoint breaker over that.
type Guarded = Either<EndpointBreaker<PerTry>, PerTry>;
/// One attempt: span, pick, breaker, deadline, send.
type Attempt = AttemptSpan<Pick<Guarded>>;
/// The bulkhead over the attempts.
type Bulkheaded = Either<BulkheadService<Attempt>, Attempt>;
/// The Service-wide breaker over that.
type Broken = Either<CircuitBreakerService<Bulkheaded, HttpResponse>, Bulkheaded>;
/// The retries.
type Retried = Either<Retry<Broken>, Broken>;
/// The whole call under its deadline.
type Service = Either<Timeout<Retried>, Retried>;

/// One target's request path.
#[derive(Clone)]
pub struct Stack {
    service: Service,
    /// The settings it was built from (the call's deadline, what a request needs to be read
    /// for retries); shared with the target.
    policy: Arc<Policy>,
    metrics: ServiceMetrics,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").field("service", &self.metrics.service()).finish_non_exhaustive()
    }
}

impl Stack {
    /// Builds the stack of a target with `endpoints`, running `policy` with the state in
    /// `resilience`.
    pub fn new(
        policy: Arc<Policy>,
        endpoints: Arc<[Arc<Endpoint>]>,
        resilience: Arc<Resilience>,
        metrics: ServiceMetrics,
    ) -> Self {
        let retry = resilience.retry.clone();
        let shared = Arc::new(Shared {
            endpoints,
            resilience: resilience.clone(),
            metrics: metrics.clone(),
            connect_timeout: policy.connect_timeout,
            retry_statuses: retry.as_ref().map(|(s, _)| s.statuses.clone()).unwrap_or_default(),
            trailers_matter: retry.as_ref().is_some_and(|(s, _)| !s.grpc_codes.is_empty())
                || resilience.breakers.is_some(),
            failure_aware: !resilience.endpoint_breakers_enforced(),
        });
        let (enforcement, observer) = (resilience.enforcement, resilience.observer.clone());
        let attempts = retry.as_ref().map_or(1, |(s, _)| s.attempts);
        let deadline =
            policy.request_timeout.map(|t| TimeoutLayer::request(t, enforcement, observer.clone()));
        let retry = retry.filter(|(s, _)| s.attempts > 1).map(|(settings, budget)| {
            let policy =
                RetryPolicy::new(settings, budget, observer.clone(), classify::classify_error, enforcement);
            RetryLayer::new(policy)
        });
        let service_breaker = match &resilience.breakers {
            Some(Breakers::Service(b)) => {
                let fail_on = resilience.fail_on;
                let verdict =
                    Arc::new(move |r: &Result<HttpResponse, BoxError>| classify::breaker_verdict(r, fail_on));
                Some(CircuitBreakerLayer::new(b.clone(), verdict, enforcement, observer.clone()))
            }
            _ => None,
        };
        let bulkhead =
            resilience.bulkhead.clone().map(|b| BulkheadLayer::new(b, enforcement, observer.clone()));
        let endpoint_breaker = matches!(resilience.breakers, Some(Breakers::Endpoint(_)))
            .then(|| EndpointBreakerLayer::new(shared.clone()));
        let per_try =
            policy.per_try_timeout.map(|t| TimeoutLayer::per_try(t, attempts, enforcement, observer.clone()));
        let service = ServiceBuilder::new()
            .option_layer(deadline)
            .option_layer(retry)
            .option_layer(service_breaker)
            .option_layer(bulkhead)
            .layer(AttemptSpanLayer)
            .layer(PickLayer::new(shared.clone()))
            .option_layer(endpoint_breaker)
            .option_layer(per_try)
            .service(Upstream::new(shared));
        Self { service, policy, metrics }
    }

    /// Forwards `req`, which arrived at `arrived`, and returns the response, or Breakwater's
    /// own answer saying why there is none.
    pub async fn call(
        &self,
        req: Request<ProxyBody>,
        grpc: bool,
        fault: ClientFault,
        arrived: Instant,
    ) -> Response<ProxyBody> {
        let deadline = self.policy.request_timeout.map(|t| arrived + t);
        if let Some(faults) = &self.policy.faults
            && faults.eligible(req.headers())
        {
            let dry_run = !self.policy.enforcement.enforced();
            if let Some(resp) = fault::inject(faults, dry_run, &self.metrics, grpc, deadline).await {
                return resp;
            }
        }
        let request = match HttpRequest::read(req, grpc, fault, deadline, self.policy.retry.as_ref()).await {
            Ok(r) => r,
            Err(reason) => {
                self.metrics.client_error(reason);
                return Refusal::BadRequest.response(grpc, &format!("the request body failed: {reason}"));
            }
        };
        match self.service.clone().oneshot(request).await {
            Ok(resp) => resp.inner,
            Err(e) => classify::refusal(&e, grpc, &self.metrics),
        }
    }
}
