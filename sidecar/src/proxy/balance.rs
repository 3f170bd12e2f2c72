//! Endpoint choice: power of two choices over load, failure-aware by default.
//!
//! Two endpoints are drawn at random and the one with the lower score wins — nearly as good as
//! least-loaded over all endpoints, in O(1) and without coordination (Mitzenmacher). We do not
//! use `tower::balance::p2c` because each pick must skip some endpoints — those already tried
//! by earlier attempts of the same request, and those whose circuit breaker is open — which a
//! `Discover`-driven balancer cannot express per request.
//!
//! Least-loaded alone favours an endpoint that fails *fast*: a dead pod refusing connections,
//! or one answering 503 at once, has the fewest requests in flight and so draws the most
//! calls, which made a sidecar without a policy worse than no sidecar. So, with no policy
//! needed (as Linkerd's failure accrual and Envoy's outlier detection):
//! - an endpoint that refuses connections (or cannot be reached) is **ejected**: it leaves the
//!   set at once and a background task probes it with TCP connects, 0.5s, 1s, 2s... up to 10s
//!   apart, returning it on the first success — no caller's request is spent on the probing;
//! - every outcome feeds a **failure score** (an EWMA of failures: 5xx, resets, timeouts, gRPC
//!   UNAVAILABLE) that multiplies the endpoint's load, and decays by half every 5s without
//!   news, so a recovered endpoint wins its share back;
//! - when every eligible endpoint is ejected, they are used anyway (a call is never refused for
//!   the balancer's sake alone).
//!
//! Where a policy enforces per-endpoint circuit breakers, they do this job as configured and
//! the default accrual stands aside (it would keep the breakers from ever seeing their
//! `consecutiveFailures`).

use std::{
    sync::{Arc, Weak, atomic::Ordering},
    time::Duration,
};

use rand::Rng;

use super::endpoint::Endpoint;
use breakwater_resilience::outcome::{Failure, GRPC_UNAVAILABLE};

/// First and longest wait between connect probes of an ejected endpoint.
const PROBE_FIRST: Duration = Duration::from_millis(500);
const PROBE_MAX: Duration = Duration::from_secs(10);

/// Whether an outcome counts against an endpoint's health: it failed in a way that says the
/// endpoint is unwell (not a 4xx, not a gRPC application error).
pub fn is_endpoint_failure(failure: Option<Failure>) -> bool {
    match failure {
        None => false,
        Some(Failure::Connect | Failure::Reset { .. } | Failure::Timeout) => true,
        Some(Failure::Status(s)) => s >= 500,
        Some(Failure::Grpc(code)) => code == GRPC_UNAVAILABLE,
    }
}

/// Ejects `endpoint` after a failed connection and starts probing it back (once: `false` when
/// it already was out).
pub fn eject(endpoint: &Arc<Endpoint>, connect_timeout: Duration) -> bool {
    if !endpoint.health.try_eject() {
        return false;
    }
    tracing::debug!(endpoint = %endpoint.addr, "endpoint refuses connections: out of the set until a probe connects");
    let weak = Arc::downgrade(endpoint);
    tokio::spawn(probe(weak, endpoint.addr, connect_timeout));
    true
}

/// Connects to an ejected endpoint with growing pauses until it answers (then it is back), or
/// until the endpoint leaves the configuration (nothing holds it any more).
async fn probe(endpoint: Weak<Endpoint>, addr: std::net::SocketAddr, connect_timeout: Duration) {
    let mut wait = PROBE_FIRST;
    loop {
        tokio::time::sleep(wait).await;
        if endpoint.strong_count() == 0 {
            return;
        }
        let connected = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr)).await;
        if matches!(connected, Ok(Ok(_))) {
            if let Some(e) = endpoint.upgrade() {
                e.health.readmit();
                tracing::debug!(endpoint = %addr, "endpoint accepts connections again: back in the set");
            }
            return;
        }
        wait = (wait * 2).min(PROBE_MAX);
    }
}

/// Picks an endpoint among those for which `eligible(index)` holds, or `None` when none is.
/// `failure_aware`: skip ejected endpoints (unless every eligible one is) and weigh load by
/// the failure score.
pub fn pick(
    endpoints: &[Arc<Endpoint>],
    failure_aware: bool,
    eligible: impl Fn(usize) -> bool,
) -> Option<(usize, &Arc<Endpoint>)> {
    if !failure_aware {
        return pick_by(endpoints, |i| endpoints[i].in_flight.load(Ordering::Relaxed) as f64, &eligible);
    }
    let score = |i: usize| {
        let e = &endpoints[i];
        (e.in_flight.load(Ordering::Relaxed) + 1) as f64 * e.health.weight()
    };
    pick_by(endpoints, score, |i| eligible(i) && !endpoints[i].health.is_ejected())
        .or_else(|| pick_by(endpoints, score, &eligible))
}

fn pick_by(
    endpoints: &[Arc<Endpoint>],
    score: impl Fn(usize) -> f64,
    eligible: impl Fn(usize) -> bool,
) -> Option<(usize, &Arc<Endpoint>)> {
    match endpoints.len() {
        0 => return None,
        1 => return eligible(0).then(|| (0, &endpoints[0])),
        _ => {}
    }
    let mut rng = rand::rng();
    // Fast path: two random distinct candidates, both eligible. Taking the one eligible
    // candidate of a pair without comparing would hand an excluded endpoint's share to its
    // neighbour whatever that one's score (with a dead pod ejected, a failing pod drawn beside
    // it would win every such pair), so a pair with an excluded member is drawn again.
    for _ in 0..3 {
        let a = rng.random_range(0..endpoints.len());
        let mut b = rng.random_range(0..endpoints.len() - 1);
        if b >= a {
            b += 1;
        }
        if eligible(a) && eligible(b) {
            let i = if score(b) < score(a) { b } else { a };
            return Some((i, &endpoints[i]));
        }
    }
    // Slow path (many are excluded): the lowest score among the eligible.
    (0..endpoints.len())
        .filter(|i| eligible(*i))
        .min_by(|x, y| score(*x).total_cmp(&score(*y)))
        .map(|i| (i, &endpoints[i]))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::proxy::client::PoolSettings;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        let settings = PoolSettings {
            connect_timeout: std::time::Duration::from_secs(1),
            idle_timeout: std::time::Duration::from_secs(1),
        };
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new_for_test(
                    SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    settings,
                ))
            })
            .collect()
    }

    #[tokio::test]
    async fn prefers_the_less_loaded_endpoint() {
        let eps = endpoints(2);
        eps[0].in_flight.store(10, Ordering::Relaxed);
        for _ in 0..100 {
            assert_eq!(pick(&eps, true, |_| true).map(|(i, _)| i), Some(1));
        }
    }

    #[tokio::test]
    async fn skips_excluded_endpoints_and_reports_none_when_all_are() {
        let eps = endpoints(5);
        for _ in 0..100 {
            assert_eq!(pick(&eps, true, |i| i == 3).map(|(i, _)| i), Some(3));
        }
        assert!(pick(&eps, true, |_| false).is_none());
        assert!(pick(&[], true, |_| true).is_none());
    }

    #[tokio::test]
    async fn spreads_load_over_equal_endpoints() {
        let eps = endpoints(4);
        let mut hits = [0; 4];
        for _ in 0..4000 {
            hits[pick(&eps, true, |_| true).map(|(i, _)| i).expect("eligible")] += 1;
        }
        assert!(hits.iter().all(|h| *h > 600), "uneven spread: {hits:?}");
    }

    #[tokio::test]
    async fn failures_weigh_on_an_endpoint() {
        let eps = endpoints(2);
        for _ in 0..5 {
            eps[0].health.record(true);
        }
        let mut hits = [0; 2];
        for _ in 0..1000 {
            hits[pick(&eps, true, |_| true).map(|(i, _)| i).expect("eligible")] += 1;
        }
        assert_eq!(hits, [0, 1000], "with equal load the failing endpoint always loses");
        eps[1].in_flight.store(30, Ordering::Relaxed);
        assert_eq!(pick(&eps, true, |_| true).map(|(i, _)| i), Some(0), "but not at any load");
        eps[1].in_flight.store(0, Ordering::Relaxed);
        assert!(pick(&eps, false, |_| true).is_some());
    }

    #[tokio::test]
    async fn ejected_endpoints_are_skipped_unless_all_are() {
        let eps = endpoints(3);
        assert!(eps[1].health.try_eject());
        for _ in 0..200 {
            assert_ne!(pick(&eps, true, |_| true).map(|(i, _)| i), Some(1));
        }
        assert_eq!(
            pick(&eps, true, |i| i == 1).map(|(i, _)| i),
            Some(1),
            "the only eligible one is used anyway"
        );
        assert!(is_endpoint_failure(Some(Failure::Status(503))));
        assert!(!is_endpoint_failure(Some(Failure::Status(429))));
        assert!(!is_endpoint_failure(Some(Failure::Grpc(5))));
        assert!(!is_endpoint_failure(None));
    }
}
