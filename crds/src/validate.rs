//! One validation function for the whole API, called by the operator, by the sidecar for local
//! files, and (rule for rule) mirrored by the CRD schema and its CEL rules at the API server.
//!
//! It returns **every** problem, each with the field path and what is allowed, because a user
//! fixing a manifest one error per `kubectl apply` round trip would rightly give up.

use std::{collections::HashSet, fmt, hash::Hash, time};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::{
    BulkheadLimits, CommunicationPolicy, CommunicationPolicySpec, Duration, Faults, MAX_FAULT_HEADERS,
    ROUTE_KIND, SERVICE_KIND,
    policy::{
        Backoff, CircuitBreaker, Retries, RetryBudget, Source, TargetRef, Timeouts,
        retries::{MAX_ATTEMPTS, MAX_REPLAY_BODY_BYTES},
    },
};

/// One problem: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path from the document root, e.g. `spec.retries.attempts` or
    /// `spec.targetRef.ports[1]`.
    pub path: String,
    /// What is allowed and what was found, e.g. `must be between 1 and 10, got 0`.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one document; empty means valid.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { path: path.into(), message: message.into() });
    }

    /// `Ok` when nothing was recorded.
    pub fn into_result(self) -> Result<(), Self> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    /// The recorded problems.
    pub fn iter(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter()
    }

    /// Whether any problem names `path` exactly.
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

/// Validates a whole `CommunicationPolicy` (metadata and spec) and returns every problem.
pub fn validate(policy: &CommunicationPolicy) -> Result<(), ValidationErrors> {
    let mut errors = ValidationErrors::default();
    match policy.metadata.name.as_deref() {
        None | Some("") => errors.push("metadata.name", "is required"),
        Some(name) => check_dns_subdomain(name, "metadata.name", &mut errors),
    }
    if let Some(ns) = policy.metadata.namespace.as_deref() {
        check_dns_label(ns, "metadata.namespace", &mut errors);
    }
    validate_spec(&policy.spec, "spec", &mut errors);
    errors.into_result()
}

/// Validates a spec, recording problems under `path`.
pub(crate) fn validate_spec(spec: &CommunicationPolicySpec, path: &str, errors: &mut ValidationErrors) {
    check_target(&spec.target_ref, &format!("{path}.targetRef"), errors);
    if let Some(sources) = &spec.sources {
        max_items(sources, 32, &format!("{path}.sources"), errors);
        for (i, s) in sources.iter().enumerate() {
            check_source(s, &format!("{path}.sources[{i}]"), errors);
        }
    }
    if spec.timeouts.is_none()
        && spec.retries.is_none()
        && spec.circuit_breaker.is_none()
        && spec.bulkhead.is_none()
        && spec.faults.is_none()
    {
        errors.push(
            path,
            "a policy must set at least one of timeouts, retries, circuitBreaker, bulkhead or faults",
        );
    }
    if let Some(f) = &spec.faults {
        check_faults(f, &format!("{path}.faults"), errors);
    }
    if let Some(t) = &spec.timeouts {
        check_timeouts(t, &format!("{path}.timeouts"), errors);
    }
    if let Some(r) = &spec.retries {
        check_retries(r, &format!("{path}.retries"), errors);
    }
    if let Some(b) = &spec.circuit_breaker {
        check_breaker(b, &format!("{path}.circuitBreaker"), errors);
    }
    if let Some(b) = &spec.bulkhead {
        let p = format!("{path}.bulkhead");
        if b.outbound.is_none() && b.inbound.is_none() {
            errors.push(&p, "a bulkhead must set outbound, inbound or both");
        }
        if let Some(l) = &b.outbound {
            check_limits(l, &format!("{p}.outbound"), errors);
        }
        if let Some(l) = &b.inbound {
            check_limits(l, &format!("{p}.inbound"), errors);
            if spec.target_ref.is_route() {
                errors.push(
                    format!("{p}.inbound"),
                    "bulkhead.inbound is enforced by the target's own sidecar, which sees no routes: set it on a \
                     policy targeting the Service",
                );
            }
        }
    }
}

fn check_target(t: &TargetRef, path: &str, errors: &mut ValidationErrors) {
    let route = match (t.group.as_str(), t.kind.as_str()) {
        ("", SERVICE_KIND) => false,
        (crate::gateway::GROUP, ROUTE_KIND) => true,
        (group, SERVICE_KIND | ROUTE_KIND) => {
            errors.push(
                format!("{path}.group"),
                format!(
                    "a target is a Service (group \"\") or an HTTPRoute (group {}), got group {group:?} for kind {}",
                    crate::gateway::GROUP,
                    t.kind
                ),
            );
            t.kind == ROUTE_KIND
        }
        (_, kind) => {
            errors
                .push(format!("{path}.kind"), format!("must be \"Service\" or \"HTTPRoute\", got {kind:?}"));
            false
        }
    };
    match (&t.name, &t.selector) {
        (Some(_), Some(_)) | (None, None) => {
            errors.push(path, "exactly one of targetRef.name and targetRef.selector must be set")
        }
        _ => {}
    }
    if route {
        if let Some(name) = &t.name {
            check_dns_subdomain(name, &format!("{path}.name"), errors);
        }
        if t.selector.is_some() {
            errors.push(
                format!("{path}.selector"),
                "an HTTPRoute is targeted by name; selector selects Services only",
            );
        }
        if t.ports.is_some() {
            errors.push(
                format!("{path}.ports"),
                "ports are for Service targets; an HTTPRoute's parentRefs say which ports it governs",
            );
        }
        if let Some(rule) = &t.section_name {
            check_dns_subdomain(rule, &format!("{path}.sectionName"), errors);
        }
        return;
    }
    if t.section_name.is_some() {
        errors.push(
            format!("{path}.sectionName"),
            "sectionName names a rule of an HTTPRoute; a Service target has none",
        );
    }
    if let Some(name) = &t.name {
        check_dns1035_label(name, &format!("{path}.name"), errors);
    }
    if let Some(sel) = &t.selector {
        check_selector(sel, &format!("{path}.selector"), false, errors);
    }
    if let Some(ports) = &t.ports {
        let p = format!("{path}.ports");
        max_items(ports, 64, &p, errors);
        for (i, port) in ports.iter().enumerate() {
            if !(1..=65535).contains(port) {
                errors.push(format!("{p}[{i}]"), format!("must be between 1 and 65535, got {port}"));
            }
        }
        unique(ports, &p, errors);
    }
}

fn check_source(s: &Source, path: &str, errors: &mut ValidationErrors) {
    if s.namespace.is_some() && s.namespace_selector.is_some() {
        errors.push(path, "set at most one of namespace and namespaceSelector");
    }
    if s.namespace.is_none() && s.namespace_selector.is_none() && s.pod_selector.is_none() {
        errors.push(path, "a source must set namespace, namespaceSelector or podSelector");
    }
    if let Some(ns) = &s.namespace {
        check_dns_label(ns, &format!("{path}.namespace"), errors);
    }
    if let Some(sel) = &s.namespace_selector {
        check_selector(sel, &format!("{path}.namespaceSelector"), true, errors);
    }
    if let Some(sel) = &s.pod_selector {
        check_selector(sel, &format!("{path}.podSelector"), true, errors);
    }
}

fn check_selector(sel: &LabelSelector, path: &str, allow_empty: bool, errors: &mut ValidationErrors) {
    let labels = sel.match_labels.as_ref().map_or(0, |m| m.len());
    let exprs = sel.match_expressions.as_deref().unwrap_or_default();
    if !allow_empty && labels == 0 && exprs.is_empty() {
        errors.push(path, "must not be empty (it would select every Service; name the Service instead)");
    }
    for (i, e) in exprs.iter().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                errors.push(format!("{p}.values"), format!("must not be empty for operator {}", e.operator))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                errors.push(format!("{p}.values"), format!("must be empty for operator {}", e.operator))
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errors.push(
                format!("{p}.operator"),
                format!("must be one of In, NotIn, Exists, DoesNotExist, got {other:?}"),
            ),
        }
    }
}

fn check_timeouts(t: &Timeouts, path: &str, errors: &mut ValidationErrors) {
    let connect = duration(&t.connect, &format!("{path}.connect"), errors);
    let request = duration(&t.request, &format!("{path}.request"), errors);
    let per_try = duration(&t.per_try, &format!("{path}.perTry"), errors);
    duration(&t.idle, &format!("{path}.idle"), errors);
    if let (Some(per_try), Some(request)) = (per_try, request)
        && per_try > request
    {
        errors.push(
            format!("{path}.perTry"),
            format!("must not be longer than request ({}), got {}", show(&t.request), show(&t.per_try)),
        );
    }
    if let (Some(connect), Some(request)) = (connect, request)
        && connect > request
    {
        errors.push(
            format!("{path}.connect"),
            format!("must not be longer than request ({}), got {}", show(&t.request), show(&t.connect)),
        );
    }
}

fn check_retries(r: &Retries, path: &str, errors: &mut ValidationErrors) {
    if let Some(n) = r.attempts {
        range(n, 1, MAX_ATTEMPTS, &format!("{path}.attempts"), errors);
    }
    if let Some(on) = &r.retry_on {
        let p = format!("{path}.retryOn");
        if let Some(c) = &on.conditions {
            unique(c, &format!("{p}.conditions"), errors);
        }
        if let Some(codes) = &on.http_status_codes {
            let cp = format!("{p}.httpStatusCodes");
            max_items(codes, 32, &cp, errors);
            for (i, code) in codes.iter().enumerate() {
                range(*code, 400, 599, &format!("{cp}[{i}]"), errors);
            }
            unique(codes, &cp, errors);
        }
        if let Some(codes) = &on.grpc_codes {
            unique(codes, &format!("{p}.grpcCodes"), errors);
        }
    }
    if let Some(b) = &r.backoff {
        check_backoff(b, &format!("{path}.backoff"), errors);
    }
    if let Some(b) = &r.budget {
        check_budget(b, &format!("{path}.budget"), errors);
    }
    if let Some(methods) = &r.retryable_methods {
        let p = format!("{path}.retryableMethods");
        max_items(methods, 16, &p, errors);
        for (i, m) in methods.iter().enumerate() {
            let ok = !m.is_empty()
                && m.len() <= 32
                && m.starts_with(|c: char| c.is_ascii_uppercase())
                && m.chars().all(|c| c.is_ascii_uppercase() || c == '-');
            if !ok {
                errors.push(
                    format!("{p}[{i}]"),
                    format!("must be an upper-case HTTP method such as POST, got {m:?}"),
                );
            }
        }
        unique(methods, &p, errors);
    }
    if let Some(n) = r.max_retry_depth {
        range(n, 1, 10, &format!("{path}.maxRetryDepth"), errors);
    }
    if let Some(n) = r.max_replay_body_bytes {
        range(n, 0, MAX_REPLAY_BODY_BYTES, &format!("{path}.maxReplayBodyBytes"), errors);
    }
}

fn check_backoff(b: &Backoff, path: &str, errors: &mut ValidationErrors) {
    let base = duration(&b.base, &format!("{path}.base"), errors);
    let max = duration(&b.max, &format!("{path}.max"), errors);
    if let (Some(base), Some(max)) = (base, max)
        && base > max
    {
        errors.push(
            format!("{path}.base"),
            format!("must not be longer than max ({}), got {}", show(&b.max), show(&b.base)),
        );
    }
    if let Some(j) = b.jitter {
        fraction(j, 0.0, &format!("{path}.jitter"), errors);
    }
}

fn check_budget(b: &RetryBudget, path: &str, errors: &mut ValidationErrors) {
    if let Some(r) = b.ratio {
        fraction(r, 0.0, &format!("{path}.ratio"), errors);
    }
    if let Some(n) = b.min_per_second {
        range(n, 0, 10_000, &format!("{path}.minPerSecond"), errors);
    }
    let p = format!("{path}.window");
    if let Some(w) = duration(&b.window, &p, errors) {
        within(w, 1, 60, "1s", "60s", &p, &b.window, errors);
    }
}

fn check_breaker(b: &CircuitBreaker, path: &str, errors: &mut ValidationErrors) {
    if let Some(n) = b.consecutive_failures {
        range(n, 1, 1000, &format!("{path}.consecutiveFailures"), errors);
    }
    if let Some(f) = &b.failure_rate {
        let p = format!("{path}.failureRate");
        if let Some(t) = f.threshold {
            fraction(t, 0.01, &format!("{p}.threshold"), errors);
        }
        let wp = format!("{p}.window");
        if let Some(w) = duration(&f.window, &wp, errors) {
            within(w, 1, 600, "1s", "10m", &wp, &f.window, errors);
        }
        if let Some(n) = f.minimum_requests {
            range(n, 1, 100_000, &format!("{p}.minimumRequests"), errors);
        }
    }
    let open = duration(&b.open_duration, &format!("{path}.openDuration"), errors);
    let max = duration(&b.max_open_duration, &format!("{path}.maxOpenDuration"), errors);
    if let (Some(open), Some(max)) = (open, max)
        && open > max
    {
        errors.push(
            format!("{path}.openDuration"),
            format!(
                "must not be longer than maxOpenDuration ({}), got {}",
                show(&b.max_open_duration),
                show(&b.open_duration)
            ),
        );
    }
    if let Some(n) = b.half_open_probes {
        range(n, 1, 100, &format!("{path}.halfOpenProbes"), errors);
    }
    if let Some(f) = &b.fail_on {
        let p = format!("{path}.failOn");
        if f.is_empty() {
            errors.push(&p, "must list at least one condition (omit it for the default)");
        }
        unique(f, &p, errors);
    }
}

fn check_faults(f: &Faults, path: &str, errors: &mut ValidationErrors) {
    if f.delay.is_none() && f.abort.is_none() {
        errors.push(path, "faults must set delay, abort or both");
    }
    if let Some(m) = &f.match_ {
        let p = format!("{path}.match.headers");
        if m.headers.is_empty() {
            errors.push(&p, "must list at least one header (omit match to inject into every call)");
        }
        max_items(&m.headers, MAX_FAULT_HEADERS, &p, errors);
        for (i, h) in m.headers.iter().enumerate() {
            if !crate::gateway::is_header_name(&h.name) || h.name.len() > 256 {
                errors
                    .push(format!("{p}[{i}].name"), format!("{:?} is not a valid HTTP header name", h.name));
            }
            if h.value.is_empty() || h.value.len() > 4096 || http_value(&h.value).is_none() {
                errors
                    .push(format!("{p}[{i}].value"), "must be 1 to 4096 visible characters, spaces or tabs");
            }
        }
    }
    if let Some(d) = &f.delay {
        duration(&Some(d.fixed_delay.clone()), &format!("{path}.delay.fixedDelay"), errors);
        percent(d.percentage, &format!("{path}.delay.percentage"), errors);
    }
    if let Some(a) = &f.abort {
        let p = format!("{path}.abort");
        let set = [a.http_status.is_some(), a.grpc_status.is_some(), a.reset.is_some()];
        if set.iter().filter(|s| **s).count() != 1 {
            errors.push(&p, "an abort sets exactly one of httpStatus, grpcStatus or reset");
        }
        if let Some(status) = a.http_status {
            range(status, 400, 599, &format!("{p}.httpStatus"), errors);
        }
        if a.reset == Some(false) {
            errors.push(format!("{p}.reset"), "reset must be true when set (omit it for no reset)");
        }
        percent(a.percentage, &format!("{p}.percentage"), errors);
    }
}

/// What a header value may hold (RFC 9110 field-value, visible ASCII), or `None`.
fn http_value(v: &str) -> Option<&str> {
    v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)).then_some(v)
}

fn percent(v: Option<f64>, path: &str, errors: &mut ValidationErrors) {
    if let Some(v) = v
        && !(0.0..=100.0).contains(&v)
    {
        errors.push(path, format!("must be between 0 and 100, got {v}"));
    }
}

fn check_limits(l: &BulkheadLimits, path: &str, errors: &mut ValidationErrors) {
    range(l.max_concurrent_requests, 1, 100_000, &format!("{path}.maxConcurrentRequests"), errors);
    if let Some(n) = l.max_queued {
        range(n, 0, 100_000, &format!("{path}.maxQueued"), errors);
    }
    let wp = format!("{path}.maxQueueWait");
    duration(&l.max_queue_wait, &wp, errors);
    if l.max_queue_wait.is_some() && l.max_queued.unwrap_or(0) == 0 {
        errors.push(wp, "maxQueueWait needs a queue: set maxQueued above 0");
    }
    if let Some(n) = l.max_connections {
        range(n, 1, 100_000, &format!("{path}.maxConnections"), errors);
    }
}

// ---- leaf checks ----

fn duration(d: &Option<Duration>, path: &str, errors: &mut ValidationErrors) -> Option<time::Duration> {
    let d = d.as_ref()?;
    match d.parse() {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(path, e.to_string());
            None
        }
    }
}

#[allow(clippy::too_many_arguments)] // each argument is one part of the message
fn within(
    d: time::Duration,
    min_secs: u64,
    max_secs: u64,
    min: &str,
    max: &str,
    path: &str,
    text: &Option<Duration>,
    errors: &mut ValidationErrors,
) {
    if d < time::Duration::from_secs(min_secs) || d > time::Duration::from_secs(max_secs) {
        errors.push(path, format!("must be between {min} and {max}, got {}", show(text)));
    }
}

fn show(d: &Option<Duration>) -> &str {
    d.as_ref().map_or("", |d| d.as_str())
}

fn range<T: PartialOrd + fmt::Display>(v: T, min: T, max: T, path: &str, errors: &mut ValidationErrors) {
    if v < min || v > max {
        errors.push(path, format!("must be between {min} and {max}, got {v}"));
    }
}

fn fraction(v: f64, min: f64, path: &str, errors: &mut ValidationErrors) {
    if !(min..=1.0).contains(&v) {
        errors.push(path, format!("must be between {min} and 1, got {v}"));
    }
}

fn max_items<T>(items: &[T], max: usize, path: &str, errors: &mut ValidationErrors) {
    if items.len() > max {
        errors.push(path, format!("must have at most {max} items, got {}", items.len()));
    }
}

fn unique<T: Eq + Hash + fmt::Debug>(items: &[T], path: &str, errors: &mut ValidationErrors) {
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        if !seen.insert(item) {
            errors.push(format!("{path}[{i}]"), format!("duplicate value {item:?}"));
        }
    }
}

fn check_dns_label(s: &str, path: &str, errors: &mut ValidationErrors) {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        errors.push(
            path,
            format!("must be a DNS-1123 label (lower-case letters, digits and '-', at most 63), got {s:?}"),
        );
    }
}

fn check_dns1035_label(s: &str, path: &str, errors: &mut ValidationErrors) {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.ends_with('-');
    if !ok {
        errors.push(
            path,
            format!(
                "must be a Service name (lower-case letters, digits and '-', starting with a letter, at most 63), got {s:?}"
            ),
        );
    }
}

fn check_dns_subdomain(s: &str, path: &str, errors: &mut ValidationErrors) {
    let ok = s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if !ok {
        errors.push(
            path,
            format!("must be a DNS-1123 subdomain (lower-case letters, digits, '-' and '.'), got {s:?}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EffectivePolicy, GrpcCode, load};

    fn parse(yaml: &str) -> CommunicationPolicy {
        let docs = load::documents(yaml).expect("valid YAML");
        load::from_value_strict(&docs[0].value).expect("well-typed policy")
    }

    #[test]
    fn reports_every_problem_with_path_and_allowed_values() {
        let p = parse(
            "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\nmetadata: {name: Bad_Name}\n\
             spec:\n  targetRef: {name: payments, ports: [0]}\n  timeouts: {request: 1s, perTry: 2s}\n\
             \x20 retries: {attempts: 0, backoff: {base: 1s, max: 10ms}, budget: {ratio: 2}}\n",
        );
        let errors = validate(&p).expect_err("five problems");
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text.contains(&"spec.retries.attempts: must be between 1 and 10, got 0".to_owned()),
            "{text:?}"
        );
        assert!(
            text.contains(&"spec.targetRef.ports[0]: must be between 1 and 65535, got 0".to_owned()),
            "{text:?}"
        );
        assert!(
            text.contains(&"spec.timeouts.perTry: must not be longer than request (1s), got 2s".to_owned()),
            "{text:?}"
        );
        assert!(errors.has_path("spec.retries.backoff.base"), "{text:?}");
        assert!(errors.has_path("spec.retries.budget.ratio"), "{text:?}");
        assert!(errors.has_path("metadata.name"), "{text:?}");
        assert_eq!(errors.0.len(), 6, "{text:?}");
    }

    #[test]
    fn a_route_target_is_named_and_carries_no_service_fields() {
        let spec = |target: &str, rest: &str| {
            parse(&format!(
                "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\nmetadata: {{name: p}}\n\
                 spec:\n  targetRef: {target}\n  {rest}\n"
            ))
        };
        let good = spec(
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: orders.v2, sectionName: get}",
            "retries: {}",
        );
        assert_eq!(validate(&good), Ok(()));
        let bad = spec(
            "{group: gateway.networking.k8s.io, kind: HTTPRoute, name: Orders, ports: [80], sectionName: -x}",
            "bulkhead: {inbound: {maxConcurrentRequests: 5}}",
        );
        let errors = validate(&bad).expect_err("four problems");
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.targetRef.name",
                "spec.targetRef.ports",
                "spec.targetRef.sectionName",
                "spec.bulkhead.inbound"
            ]
        );
        let wrong_group = spec("{kind: HTTPRoute, name: orders}", "retries: {}");
        let errors = validate(&wrong_group).expect_err("the core group has no HTTPRoute");
        assert!(
            errors.0[0].to_string().starts_with("spec.targetRef.group: a target is a Service"),
            "{errors}"
        );
        let service_section = spec("{name: orders, sectionName: get}", "retries: {}");
        assert!(validate(&service_section).expect_err("no sections").has_path("spec.targetRef.sectionName"));
        let service_dots = spec("{name: orders.v2}", "retries: {}");
        assert!(validate(&service_dots).expect_err("a DNS-1035 label").has_path("spec.targetRef.name"));
    }

    #[test]
    fn effective_policy_fills_documented_defaults() {
        let p = parse(
            "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\nmetadata: {name: p}\n\
             spec:\n  targetRef: {name: payments}\n  retries: {}\n  circuitBreaker: {openDuration: 5m}\n",
        );
        let e = EffectivePolicy::resolve(&p.spec).expect("valid");
        assert_eq!(e.timeouts.connect, time::Duration::from_secs(1));
        assert_eq!(e.timeouts.request, None);
        let r = e.retries.expect("retries set");
        assert_eq!(r.attempts, 3);
        assert!(r.is_retryable_method("GET") && !r.is_retryable_method("POST"));
        assert_eq!(r.budget_ratio, 0.2);
        let b = e.circuit_breaker.expect("breaker set");
        assert_eq!(b.consecutive_failures, Some(5));
        // A long openDuration lifts the default maximum with it.
        assert_eq!(b.max_open_duration, time::Duration::from_secs(300));
        assert_eq!(e.bulkhead.outbound, None);
    }

    #[test]
    fn faults_name_each_bad_field_and_resolve_only_when_enabled() {
        let spec = |faults: &str| {
            parse(&format!(
                "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\nmetadata: {{name: p}}\n\
                 spec:\n  targetRef: {{name: payments}}\n  faults: {faults}\n"
            ))
        };
        // A policy may consist of faults alone.
        let good = spec(
            "{enabled: true, match: {headers: [{name: x-test, value: 'checkout 1'}]}, \
             delay: {fixedDelay: 2s}, abort: {grpcStatus: UNAVAILABLE, percentage: 12.5}}",
        );
        assert_eq!(validate(&good), Ok(()));
        let e = EffectivePolicy::resolve(&good.spec).expect("valid").faults.expect("enabled faults resolve");
        assert_eq!(e.headers[0].name, "x-test");
        assert_eq!(
            e.delay.map(|d| (d.fixed_delay, d.percentage)),
            Some((time::Duration::from_secs(2), 100.0))
        );
        let abort = e.abort.expect("an abort");
        assert_eq!(
            (abort.grpc_status, abort.percentage, abort.reset),
            (Some(GrpcCode::Unavailable), 12.5, false)
        );

        let off = spec("{enabled: false, abort: {httpStatus: 503}}");
        assert_eq!(validate(&off), Ok(()));
        assert_eq!(EffectivePolicy::resolve(&off.spec).expect("valid").faults, None, "written down, not on");

        let bad = spec(
            "{enabled: true, match: {headers: [{name: 'x test', value: ''}]}, delay: {fixedDelay: 2 s, \
             percentage: 101}, abort: {httpStatus: 200, reset: false}}",
        );
        let errors = validate(&bad).expect_err("six problems");
        let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.faults.match.headers[0].name",
                "spec.faults.match.headers[0].value",
                "spec.faults.delay.fixedDelay",
                "spec.faults.delay.percentage",
                "spec.faults.abort",
                "spec.faults.abort.httpStatus",
                "spec.faults.abort.reset",
            ]
        );
        let empty = validate(&spec("{enabled: true}")).expect_err("nothing to inject");
        assert_eq!(empty.to_string(), "spec.faults: faults must set delay, abort or both");
    }

    #[test]
    fn effective_policy_round_trips_through_json() {
        let p = parse(
            "apiVersion: breakwater.dev/v1alpha1\nkind: CommunicationPolicy\nmetadata: {name: p}\n\
             spec:\n  targetRef: {name: payments}\n  timeouts: {request: 1m30s, perTry: 250ms}\n",
        );
        let e = EffectivePolicy::resolve(&p.spec).expect("valid");
        let json = serde_json::to_value(&e).expect("serializes");
        assert_eq!(json["timeouts"]["request"], "1m30s");
        assert_eq!(json["timeouts"]["perTry"], "250ms");
        let back: EffectivePolicy = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, e);
    }
}
