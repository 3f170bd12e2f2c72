//! Settings that are valid but can never take effect: `breakwater-sidecar validate` prints
//! them, and a sidecar logs them when it loads a file. They are not errors, because each one is
//! harmless and some are on purpose (a policy written ahead of a `perTry` timeout, say).

use crate::{CommunicationPolicySpec, EffectivePolicy, FieldError, GrpcCode, RetryCondition};

/// Every setting of a valid `spec` that can never take effect, with its path and why. An
/// invalid spec has no warnings (its errors come first).
pub fn warnings(spec: &CommunicationPolicySpec) -> Vec<FieldError> {
    let mut found = Vec::new();
    let mut warn = |path: &str, message: String| found.push(FieldError { path: path.to_owned(), message });
    let Ok(effective) = EffectivePolicy::resolve(spec) else { return found };
    let (Some(r), Some(written)) = (&effective.retries, &spec.retries) else { return found };
    if r.attempts == 1 {
        warn(
            "spec.retries.attempts",
            "is 1: no call is ever retried (the first attempt is the only one)".into(),
        );
    }
    if r.conditions.contains(&RetryCondition::Timeout) && effective.timeouts.per_try.is_none() {
        warn(
            "spec.retries.retryOn.conditions",
            "lists timeout, but timeouts.perTry is not set: only a per-try timeout is retried \
             (the request timeout ends the call, retries included)"
                .into(),
        );
    }
    if r.budget_ratio == 0.0 && r.budget_min_per_second == 0 {
        warn("spec.retries.budget", "ratio 0 and minPerSecond 0 leave no room for any retry".into());
    }
    if let Some(methods) = &written.retryable_methods {
        // Failures where nothing reached the application are retried whatever the method, and so
        // are the gRPC codes the policy lists (gRPC's semantics).
        let only_unprocessed = r.http_status_codes.is_empty()
            && r.grpc_codes.is_empty()
            && r.conditions.iter().all(|c| *c == RetryCondition::ConnectFailure);
        if only_unprocessed && !methods.is_empty() {
            warn(
                "spec.retries.retryableMethods",
                "has no effect: retryOn lists only connect-failure, which is retried for any method \
                 (nothing reached the application)"
                    .into(),
            );
        } else if !r.grpc_codes.is_empty() && methods.iter().any(|m| m == "POST") {
            let codes: Vec<String> = r.grpc_codes.iter().map(grpc_name).collect();
            warn(
                "spec.retries.retryableMethods",
                format!(
                    "lists POST: the gRPC codes in retryOn.grpcCodes ({}) are retried without it, \
                     and POST here also makes every plain-HTTP POST to this Service retryable",
                    codes.join(", ")
                ),
            );
        }
    }
    found
}

/// `UNAVAILABLE` for [`GrpcCode::Unavailable`]: the name a policy spells.
fn grpc_name(code: &GrpcCode) -> String {
    serde_json::to_value(code).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> CommunicationPolicySpec {
        serde_saphyr::from_str(&format!("targetRef: {{name: inventory}}\n{yaml}")).expect("a spec")
    }

    fn paths(yaml: &str) -> Vec<String> {
        warnings(&spec(yaml)).into_iter().map(|w| w.path).collect()
    }

    #[test]
    fn settings_that_never_take_effect_are_named() {
        assert_eq!(paths("retries: {attempts: 1}"), ["spec.retries.attempts"]);
        assert_eq!(paths("retries: {retryOn: {conditions: [timeout]}}"), ["spec.retries.retryOn.conditions"]);
        assert!(paths("timeouts: {perTry: 100ms}\nretries: {retryOn: {conditions: [timeout]}}").is_empty());
        assert_eq!(paths("retries: {budget: {ratio: 0, minPerSecond: 0}}"), ["spec.retries.budget"]);
        assert_eq!(
            paths("retries: {retryOn: {grpcCodes: [UNAVAILABLE]}, retryableMethods: [POST]}"),
            ["spec.retries.retryableMethods"]
        );
        assert_eq!(
            paths("retries: {retryOn: {conditions: [connect-failure]}, retryableMethods: [PUT]}"),
            ["spec.retries.retryableMethods"]
        );
    }

    #[test]
    fn sound_policies_have_none() {
        assert!(paths("retries: {attempts: 3}").is_empty());
        assert!(paths("retries: {retryOn: {grpcCodes: [UNAVAILABLE]}}").is_empty());
        assert!(paths("retries: {retryOn: {conditions: [5xx]}, retryableMethods: [POST]}").is_empty());
        assert!(paths("timeouts: {request: 1s}").is_empty());
        assert!(paths("retries: {attempts: 0}").is_empty(), "an invalid spec reports errors, not warnings");
    }
}
