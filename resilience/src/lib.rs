//! Resilience mechanisms: deadlines, retries with backoff and a budget, circuit breakers and
//! bulkheads — protocol-neutral tower layers and state machines, with no knowledge of
//! Kubernetes, HTTP or metrics. The sidecar maps a policy to their settings (its config
//! compile step), composes them into one stack per target, and turns what they report to an
//! [`Observer`] into metrics, span events and logs.
//!
//! Every mechanism runs in one of two [`Enforcement`] modes: `Enforce` acts, `DryRun` reports
//! the same [`Decision`] and changes nothing, so a policy can be measured before it bites.
//!
//! Why a crate and not a module of the sidecar: the compiler then keeps it mechanism only —
//! it cannot reach the policy types, hyper or the sidecar's metrics by accident.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod breaker;
pub mod budget;
pub mod bulkhead;
mod observe;
pub mod outcome;
pub mod retry;
pub mod timeout;

pub use tower::BoxError;

pub use self::observe::{Deadline, Decision, Enforcement, Observer, Skip};

/// The first error of type `E` in `e`'s chain of sources, `e` itself included: how errors are
/// classified between layers, never by their text (linkerd2-proxy's `is_caused_by`).
pub fn cause<'a, E: std::error::Error + 'static>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a E> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] timeout::Elapsed);

    fn elapsed() -> timeout::Elapsed {
        timeout::Elapsed { deadline: Deadline::Request, limit: std::time::Duration::from_secs(1) }
    }

    #[test]
    fn cause_finds_an_error_anywhere_in_the_chain() {
        let inner = elapsed();
        let e: BoxError = Outer(inner).into();
        assert_eq!(cause::<timeout::Elapsed>(e.as_ref()), Some(&inner));
        assert!(cause::<Outer>(e.as_ref()).is_some(), "the error itself counts");
        assert!(cause::<breaker::CircuitOpen>(e.as_ref()).is_none());
    }
}
