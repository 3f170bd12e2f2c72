//! HTTP routes for one Service port, as a snapshot carries them: every match of every
//! `HTTPRoute` attached to the port, already sorted into the Gateway API's precedence order, so
//! a sidecar takes the first that matches and never re-sorts; each rule with its weighted
//! backends, header changes and the policy its calls run with: the most specific
//! `CommunicationPolicy` (one naming the rule, then one naming the route, then the port's),
//! with the rule's own `timeouts` and `retry` laid over it.
//!
//! Which routes attach (GAMMA): a route whose `parentRefs` name the Service (and the port, or
//! no port). A route in the Service's namespace is a *producer* route and governs every
//! caller; one in another namespace is a *consumer* route and governs only callers in its own
//! namespace, for whom it replaces the producer routes.
//!
//! Precedence across all attached routes (Gateway API `HTTPRouteMatch`), continuing on ties:
//! an `Exact` path; then a `RegularExpression` path, the longer pattern first (the Gateway API
//! leaves regular expressions' rank to the implementation: ours is between exact and prefix,
//! so a regex can carve a path out of a prefix catch-all); then a `PathPrefix`, the longer
//! first; then a method; then more header matches; then more query parameter matches; then the
//! older route; then the route first by `namespace/name`; then the rule, then the match, in
//! list order. A request that matches nothing is answered 404.

use std::{cmp::Ordering, time::Duration};

use serde::{Deserialize, Serialize};

use super::AppliedPolicy;
use crate::{
    EffectivePolicy, EffectiveRetries, RetryCondition,
    gateway::{HTTPRoute, HeaderModifier, HttpRouteFilter, HttpRouteRule, ValueMatch, parse_duration},
};

/// The routes of one Service port.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoutes {
    /// Every rule, referred to by [`RouteMatch::rule`].
    pub rules: Vec<RouteRule>,
    /// Every match, in precedence order.
    pub matches: Vec<RouteMatch>,
}

/// One rule of a route.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// The route, `namespace/name`.
    pub route: String,
    /// The rule's name, or its index in the route when it has none.
    pub rule: String,
    /// Where its requests go. Empty (or every weight 0): answered 500.
    #[serde(default)]
    pub backends: Vec<RouteBackend>,
    /// Request header changes for every backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    /// Response header changes for every backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
    /// What its calls run with: the policy in force (the rule's, else the route's, else the
    /// port's) with the rule's `timeouts` and `retry` laid over it. Named for the policy, or
    /// for the route ([`ROUTE_ONLY`]) when only the route sets anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<AppliedPolicy>,
}

/// A backend of a rule.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteBackend {
    /// The Service's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its port.
    pub port: u16,
    /// Relative share of the rule's calls.
    pub weight: u32,
    /// Why it cannot be used (the Service or port does not exist): its share of calls is
    /// answered 500, as the Gateway API asks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// Request header changes for this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    /// Response header changes for this backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
}

/// One match, normalised: every default made explicit.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Index into [`HttpRoutes::rules`].
    pub rule: u32,
    /// The path condition.
    pub path: PathMatch,
    /// The method, if one is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header conditions (names lower-case, `type` explicit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions (`type` explicit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
}

/// A path condition.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    /// The whole path.
    Exact(String),
    /// Whole segments: `/orders` takes `/orders` and `/orders/7`, not `/ordersx`. Stored
    /// without a trailing slash (`/` is stored as the empty string).
    PathPrefix(String),
    /// A regular expression over the whole path.
    RegularExpression(String),
}

impl Default for PathMatch {
    fn default() -> Self {
        PathMatch::PathPrefix(String::new())
    }
}

/// The routes attached to Service `namespace/name` at `port` (`None`: a port not known) for a
/// caller in `caller_namespace` (`None`: any caller), valid ones only, in no particular order.
pub fn attached<'r>(
    routes: impl IntoIterator<Item = &'r HTTPRoute>,
    namespace: &str,
    name: &str,
    port: Option<u16>,
    caller_namespace: Option<&str>,
) -> Vec<&'r HTTPRoute> {
    let parent_of = |r: &HTTPRoute| {
        r.spec.parent_refs.iter().any(|p| {
            p.is_service()
                && p.name == name
                && p.namespace.as_deref().unwrap_or(r.namespace_or_default()) == namespace
                && match (p.port, port) {
                    (None, _) => true,
                    (Some(want), Some(port)) => i32::from(port) == want,
                    (Some(_), None) => false,
                }
        })
    };
    let all: Vec<&HTTPRoute> = routes.into_iter().filter(|r| parent_of(r)).collect();
    let consumer: Vec<&HTTPRoute> = all
        .iter()
        .copied()
        .filter(|r| {
            r.namespace_or_default() != namespace && Some(r.namespace_or_default()) == caller_namespace
        })
        .collect();
    if !consumer.is_empty() {
        return consumer;
    }
    all.into_iter().filter(|r| r.namespace_or_default() == namespace).collect()
}

/// How [`RouteRule::policy`] is named when no `CommunicationPolicy` governs the rule and only
/// the route's own `timeouts` or `retry` apply: `HTTPRoute namespace/name`.
pub const ROUTE_ONLY: &str = "HTTPRoute ";

/// Compiles `routes` (attached to one port, see [`attached`]) into the table a sidecar
/// matches with. `policy` is the port's policy in force; `rule_policy` gives the policy
/// targeting a route's rule (by its name) or the whole route, for this caller, if any (see
/// [`super::select::for_rule`]), which replaces the port's for that rule; `backend` says why a
/// backend of a route (`namespace`, `name`, `port`) cannot be used, or `None` when it can.
pub fn compile(
    routes: &[&HTTPRoute],
    policy: Option<&AppliedPolicy>,
    rule_policy: impl Fn(&HTTPRoute, Option<&str>) -> Option<AppliedPolicy>,
    backend: impl Fn(&HTTPRoute, &str, &str, u16) -> Option<String>,
) -> HttpRoutes {
    let mut sorted: Vec<&HTTPRoute> = routes.to_vec();
    sorted.sort_by(|a, b| route_order(a, b));
    let mut table = HttpRoutes::default();
    let mut keyed: Vec<(MatchKey, RouteMatch)> = Vec::new();
    for (r, route) in sorted.iter().enumerate() {
        let ns = route.namespace_or_default();
        for (i, rule) in route.spec.rules.iter().enumerate() {
            let index = table.rules.len() as u32;
            table.rules.push(RouteRule {
                route: route.full_name(),
                rule: rule.name.clone().unwrap_or_else(|| i.to_string()),
                backends: rule
                    .backend_refs
                    .iter()
                    .map(|b| {
                        let namespace = b.namespace.clone().unwrap_or_else(|| ns.to_owned());
                        let port = b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or_default();
                        RouteBackend {
                            invalid: backend(route, &namespace, &b.name, port),
                            name: b.name.clone(),
                            namespace,
                            port,
                            weight: b.weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(1),
                            request_headers: request_headers(&b.filters),
                            response_headers: response_headers(&b.filters),
                        }
                    })
                    .collect(),
                request_headers: request_headers(&rule.filters),
                response_headers: response_headers(&rule.filters),
                policy: overlay(
                    rule_policy(route, rule.name.as_deref()).as_ref().or(policy),
                    rule,
                    &route.full_name(),
                ),
            });
            let matches =
                if rule.matches.is_empty() { vec![Default::default()] } else { rule.matches.clone() };
            for (j, m) in matches.iter().enumerate() {
                let normal = normalise(index, m);
                keyed.push((MatchKey::of(&normal, r, i, j), normal));
            }
        }
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    table.matches = keyed.into_iter().map(|(_, m)| m).collect();
    table
}

/// Older first, then by `namespace/name` (Gateway API tie-breaks between routes): `Less` means
/// `a`'s matches win ties with `b`'s.
pub fn route_order(a: &HTTPRoute, b: &HTTPRoute) -> Ordering {
    let created =
        |r: &HTTPRoute| (r.metadata.creation_timestamp.is_none(), r.metadata.creation_timestamp.clone());
    created(a).cmp(&created(b)).then_with(|| a.full_name().cmp(&b.full_name()))
}

/// A match's precedence: smaller sorts first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct MatchKey {
    path_kind: u8,
    path_len: std::cmp::Reverse<usize>,
    no_method: bool,
    headers: std::cmp::Reverse<usize>,
    query: std::cmp::Reverse<usize>,
    route: usize,
    rule: usize,
    index: usize,
}

impl MatchKey {
    fn of(m: &RouteMatch, route: usize, rule: usize, index: usize) -> Self {
        let (path_kind, len) = match &m.path {
            PathMatch::Exact(v) => (0, v.len()),
            PathMatch::RegularExpression(v) => (1, v.len()),
            // `/` is stored empty: count the slash, so `/` ranks like its one character.
            PathMatch::PathPrefix(v) => (2, v.len().max(1)),
        };
        Self {
            path_kind,
            path_len: std::cmp::Reverse(len),
            no_method: m.method.is_none(),
            headers: std::cmp::Reverse(m.headers.len()),
            query: std::cmp::Reverse(m.query_params.len()),
            route,
            rule,
            index,
        }
    }
}

fn normalise(rule: u32, m: &crate::gateway::HttpRouteMatch) -> RouteMatch {
    let value = m.path.as_ref().and_then(|p| p.value.clone()).unwrap_or_else(|| "/".to_owned());
    let path = match m.path.as_ref().and_then(|p| p.type_.as_deref()).unwrap_or("PathPrefix") {
        "Exact" => PathMatch::Exact(value),
        "RegularExpression" => PathMatch::RegularExpression(value),
        _ => PathMatch::PathPrefix(value.trim_end_matches('/').to_owned()),
    };
    let typed = |v: &ValueMatch| ValueMatch {
        type_: Some(v.type_.clone().unwrap_or_else(|| "Exact".to_owned())),
        ..v.clone()
    };
    RouteMatch {
        rule,
        path,
        method: m.method.clone(),
        headers: m
            .headers
            .iter()
            .map(|h| ValueMatch { name: h.name.to_ascii_lowercase(), ..typed(h) })
            .collect(),
        query_params: m.query_params.iter().map(typed).collect(),
    }
}

fn request_headers(filters: &[HttpRouteFilter]) -> Option<HeaderModifier> {
    filters
        .iter()
        .find(|f| f.type_ == "RequestHeaderModifier")
        .and_then(|f| f.request_header_modifier.clone())
}

fn response_headers(filters: &[HttpRouteFilter]) -> Option<HeaderModifier> {
    filters
        .iter()
        .find(|f| f.type_ == "ResponseHeaderModifier")
        .and_then(|f| f.response_header_modifier.clone())
}

/// The policy a rule's calls run with: `policy` (the port's) with the rule's `timeouts` and
/// `retry` laid over it. A rule that sets neither runs with `policy` as it is.
///
/// - `timeouts.request` is the whole call's deadline, `timeouts.backendRequest` each
///   attempt's; `0s` removes the policy's.
/// - `retry.attempts` counts retries (the Gateway API's meaning): `attempts: 2` is three tries
///   at most; `0` turns retries off. Unset: 1. Connection failures and resets are retried,
///   and the statuses in `codes`. `backoff` is the first wait. The budget, the idempotency
///   rules (which methods may be sent twice) and the rest come from the policy, or its
///   defaults: a route's retry does not make a `POST` safe to repeat.
pub fn overlay(policy: Option<&AppliedPolicy>, rule: &HttpRouteRule, route: &str) -> Option<AppliedPolicy> {
    if rule.timeouts.is_none() && rule.retry.is_none() {
        return policy.cloned();
    }
    let mut applied = policy.cloned().unwrap_or_else(|| AppliedPolicy {
        name: format!("{ROUTE_ONLY}{route}"),
        generation: None,
        effective: EffectivePolicy::plain(),
    });
    let e = &mut applied.effective;
    if let Some(t) = &rule.timeouts {
        if let Some(d) = &t.request {
            e.timeouts.request = parse_duration(d).ok().flatten();
        }
        if let Some(d) = &t.backend_request {
            e.timeouts.per_try = parse_duration(d).ok().flatten();
        }
    }
    if let Some(r) = &rule.retry {
        let retries = r.attempts.unwrap_or(1);
        if retries <= 0 {
            e.retries = None;
        } else {
            let mut settings = e.retries.clone().unwrap_or_else(EffectiveRetries::plain);
            settings.attempts = retries as u32 + 1;
            settings.conditions = vec![RetryCondition::ConnectFailure, RetryCondition::Reset];
            settings.http_status_codes = r.codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect();
            settings.grpc_codes = Vec::new();
            if let Some(b) = r.backoff.as_deref().and_then(|b| parse_duration(b).ok()) {
                let base = b.unwrap_or(Duration::ZERO);
                settings.backoff_base = base;
                settings.backoff_max = settings.backoff_max.max(base);
            }
            e.retries = Some(settings);
        }
    }
    Some(applied)
}

impl EffectivePolicy {
    /// A policy that sets nothing: enforced, default connection timeouts, no deadline, no
    /// retries, breaker or bulkhead. What a route's own `timeouts` or `retry` start from when
    /// no policy governs the Service. Resolved from `timeouts: {}`, so the defaults stay in
    /// [`EffectivePolicy::resolve`] alone.
    pub fn plain() -> Self {
        let spec = crate::CommunicationPolicySpec {
            target_ref: crate::TargetRef::service("plain"),
            timeouts: Some(crate::Timeouts::default()),
            ..Default::default()
        };
        EffectivePolicy::resolve(&spec).expect("`timeouts: {}` is a valid policy")
    }
}

impl EffectiveRetries {
    /// Retries with every default of `retries: {}`, resolved like any policy's.
    pub fn plain() -> Self {
        let spec = crate::CommunicationPolicySpec {
            target_ref: crate::TargetRef::service("plain"),
            retries: Some(crate::Retries::default()),
            ..Default::default()
        };
        let resolved = EffectivePolicy::resolve(&spec).expect("`retries: {}` is a valid policy");
        resolved.retries.expect("`retries: {}` resolves to retries")
    }
}

#[cfg(test)]
mod tests;
