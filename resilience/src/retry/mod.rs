//! Retries: which failed attempts are tried again, after how long, and how many in total.
//!
//! [`Retry`] is the loop, [`RetryPolicy`] its brain. An attempt is retried only when every one
//! of these holds, checked in this order (the first that fails is what metrics and trace
//! events report):
//! 1. it failed in a way the policy's `retryOn` lists;
//! 2. attempts remain;
//! 3. it is safe: nothing reached the application (connect failure, refused stream), or the
//!    request is idempotent (by method, by policy, or by `Idempotency-Key`), or it ended with a
//!    gRPC code the policy lists (gRPC's semantics: listing a code says so, whatever the method);
//! 4. no sidecar upstream already retried this call at the policy's depth limit (retry-storm
//!    damping across a call chain);
//! 5. the request can be sent again (its body was small enough to keep);
//! 6. the backoff fits before the call's deadline;
//! 7. the retry budget has room (otherwise the response says `retry-budget-exhausted`).
//!
//! In DryRun everything is evaluated and reported, and nothing is retried.

mod backoff;
mod layer;
mod policy;

pub use self::{
    backoff::Backoff,
    layer::{ResponseFuture, Retry, RetryLayer},
    policy::{RetryPolicy, RetryRequest, RetryResponse, Settings},
};
