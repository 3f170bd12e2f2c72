//! Endpoint choice: power of two choices over requests in flight.
//!
//! Two endpoints are drawn at random and the less loaded one wins — nearly as good as
//! least-loaded over all endpoints, in O(1) and without coordination (Mitzenmacher). We do not
//! use `tower::balance::p2c` because each pick must skip some endpoints — those already tried
//! by earlier attempts of the same request, and those whose circuit breaker is open — which a
//! `Discover`-driven balancer cannot express per request.

use std::sync::{Arc, atomic::Ordering};

use rand::Rng;

use super::routes::Endpoint;

/// Picks an endpoint among those for which `eligible(index)` holds, or `None` when none is.
pub fn pick(
    endpoints: &[Arc<Endpoint>],
    eligible: impl Fn(usize) -> bool,
) -> Option<(usize, &Arc<Endpoint>)> {
    match endpoints.len() {
        0 => return None,
        1 => return eligible(0).then(|| (0, &endpoints[0])),
        _ => {}
    }
    let load = |i: usize| endpoints[i].in_flight.load(Ordering::Relaxed);
    let mut rng = rand::rng();
    // Fast path: two random distinct candidates.
    let a = rng.random_range(0..endpoints.len());
    let mut b = rng.random_range(0..endpoints.len() - 1);
    if b >= a {
        b += 1;
    }
    let chosen = match (eligible(a), eligible(b)) {
        (true, true) => Some(if load(b) < load(a) { b } else { a }),
        (true, false) => Some(a),
        (false, true) => Some(b),
        (false, false) => {
            // Slow path (both drawn were excluded): least loaded among the eligible.
            (0..endpoints.len()).filter(|i| eligible(*i)).min_by_key(|i| load(*i))
        }
    };
    chosen.map(|i| (i, &endpoints[i]))
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
            assert_eq!(pick(&eps, |_| true).map(|(i, _)| i), Some(1));
        }
    }

    #[tokio::test]
    async fn skips_excluded_endpoints_and_reports_none_when_all_are() {
        let eps = endpoints(5);
        for _ in 0..100 {
            assert_eq!(pick(&eps, |i| i == 3).map(|(i, _)| i), Some(3));
        }
        assert!(pick(&eps, |_| false).is_none());
        assert!(pick(&[], |_| true).is_none());
    }

    #[tokio::test]
    async fn spreads_load_over_equal_endpoints() {
        let eps = endpoints(4);
        let mut hits = [0; 4];
        for _ in 0..4000 {
            hits[pick(&eps, |_| true).map(|(i, _)| i).expect("eligible")] += 1;
        }
        assert!(hits.iter().all(|h| *h > 600), "uneven spread: {hits:?}");
    }
}
