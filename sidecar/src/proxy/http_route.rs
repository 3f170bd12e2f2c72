//! The HTTP routes of one Service port (`HTTPRoute`s attached to it), compiled for matching:
//! which rule a request belongs to, which backend of the rule takes it (by weight), and the
//! header changes on the way.
//!
//! The snapshot carries the matches already in the Gateway API's precedence order
//! (`breakwater_crds::snapshot::routes`), so matching is a first-match scan with no sorting
//! and no allocation: most conditions are a string comparison; a regular expression was
//! compiled once, here, when the snapshot was published. Why a scan and not a trie: tables
//! are small (tens of matches), a request usually stops at one of the first, and the order
//! must stay the Gateway API's, which mixes path, method and header conditions.

use breakwater_crds::{
    gateway::{HeaderModifier, ValueMatch, compile_regex},
    snapshot::{
        Snapshot,
        routes::{HttpRoutes, PathMatch, RouteBackend, RouteMatch},
    },
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use rand::Rng as _;
use regex::Regex;

/// One port's routes, leading to targets of type `T` (the proxy's per-backend request path;
/// generic so this module knows nothing of it).
#[derive(Debug)]
pub struct RouteTable<T> {
    matchers: Vec<Matcher>,
    rules: Vec<Rule<T>>,
    /// Whether any match reads the query string (it is parsed only then).
    reads_query: bool,
}

/// A rule: its backends and header changes.
#[derive(Debug)]
pub struct Rule<T> {
    /// `namespace/name` of the route.
    pub route: String,
    /// The rule's name or index.
    pub name: String,
    backends: Vec<Backend<T>>,
    total_weight: u32,
    request_headers: Option<HeaderOps>,
    response_headers: Option<HeaderOps>,
}

/// A backend of a rule.
#[derive(Debug)]
pub struct Backend<T> {
    /// The backend as the route names it: namespace, name, port.
    service: (String, String, u16),
    weight: u32,
    /// Where its calls go, or why they cannot go anywhere (answered 500).
    pub target: Result<T, String>,
    request_headers: Option<HeaderOps>,
    response_headers: Option<HeaderOps>,
}

#[derive(Debug)]
struct Matcher {
    rule: usize,
    path: PathCondition,
    method: Option<Method>,
    headers: Vec<(HeaderName, Condition)>,
    query: Vec<(String, Condition)>,
}

#[derive(Debug)]
enum PathCondition {
    Exact(String),
    /// Without a trailing slash; empty for `/`.
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum Condition {
    Exact(String),
    Regex(Regex),
}

impl Condition {
    fn of(m: &ValueMatch) -> Result<Self, String> {
        match m.type_.as_deref() {
            Some("RegularExpression") => regex(&m.value).map(Condition::Regex),
            _ => Ok(Condition::Exact(m.value.clone())),
        }
    }

    fn holds(&self, value: &str) -> bool {
        match self {
            Condition::Exact(v) => v == value,
            Condition::Regex(r) => r.is_match(value),
        }
    }
}

fn regex(pattern: &str) -> Result<Regex, String> {
    compile_regex(pattern).map_err(|e| format!("regular expression {pattern:?}: {e}"))
}

/// Header changes, parsed once.
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn of(m: &HeaderModifier) -> Result<Self, String> {
        let name = |n: &str| HeaderName::try_from(n).map_err(|_| format!("not a header name: {n:?}"));
        let pair = |h: &breakwater_crds::gateway::HeaderValue| {
            let value = HeaderValue::try_from(h.value.as_str())
                .map_err(|_| format!("not a header value for {}: {:?}", h.name, h.value))?;
            Ok::<_, String>((name(&h.name)?, value))
        };
        Ok(Self {
            set: m.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: m.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: m.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
        })
    }

    /// Applies the changes: set, then add, then remove.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

fn ops(m: Option<&HeaderModifier>) -> Result<Option<HeaderOps>, String> {
    m.map(HeaderOps::of).transpose()
}

/// What a request was routed to.
pub enum Routed<'a, T> {
    /// This backend of this rule.
    Backend(&'a Rule<T>, &'a Backend<T>),
    /// The rule has nowhere to send it (no backend, or every weight 0): 500.
    NoBackend(&'a Rule<T>),
    /// No rule matches: 404.
    NoMatch,
}

impl<T> RouteTable<T> {
    /// Compiles `routes`; `target` builds (or reuses) the target of one backend of rule
    /// `rule_index`, or says why there is none. `Err` when a condition cannot be compiled (the
    /// operator and local mode refuse such routes first, so this is a snapshot from a
    /// different build): the whole snapshot is then refused, never half-applied.
    pub fn build(
        routes: &HttpRoutes,
        mut target: impl FnMut(usize, &RouteBackend) -> Result<T, String>,
    ) -> Result<Self, String> {
        let mut rules = Vec::with_capacity(routes.rules.len());
        for (i, r) in routes.rules.iter().enumerate() {
            let mut backends = Vec::with_capacity(r.backends.len());
            for b in &r.backends {
                let reachable = match &b.invalid {
                    Some(why) => Err(why.clone()),
                    None => target(i, b),
                };
                backends.push(Backend {
                    service: (b.namespace.clone(), b.name.clone(), b.port),
                    weight: b.weight,
                    target: reachable,
                    request_headers: ops(b.request_headers.as_ref())?,
                    response_headers: ops(b.response_headers.as_ref())?,
                });
            }
            rules.push(Rule {
                route: r.route.clone(),
                name: r.rule.clone(),
                total_weight: backends.iter().map(|b| b.weight).sum(),
                backends,
                request_headers: ops(r.request_headers.as_ref())?,
                response_headers: ops(r.response_headers.as_ref())?,
            });
        }
        let matchers =
            routes.matches.iter().map(|m| Matcher::of(m, rules.len())).collect::<Result<Vec<_>, _>>()?;
        let reads_query = matchers.iter().any(|m| !m.query.is_empty());
        Ok(Self { matchers, rules, reads_query })
    }

    /// A table with no routes: every request is answered 404.
    pub fn empty() -> Self {
        Self { matchers: Vec::new(), rules: Vec::new(), reads_query: false }
    }

    /// Routes `req`: the rule of the first match that holds, and a backend of it by weight.
    pub fn route<B>(&self, req: &Request<B>) -> Routed<'_, T> {
        let path = req.uri().path();
        let query = if self.reads_query { req.uri().query() } else { None };
        let Some(m) = self.matchers.iter().find(|m| m.holds(req, path, query)) else {
            return Routed::NoMatch;
        };
        let rule = &self.rules[m.rule];
        match rule.pick() {
            Some(backend) => Routed::Backend(rule, backend),
            None => Routed::NoBackend(rule),
        }
    }

    /// Every backend's target, with its rule (for `/breakers` and the gauges).
    pub fn targets(&self) -> impl Iterator<Item = (&Rule<T>, &T)> {
        self.rules
            .iter()
            .flat_map(|r| r.backends.iter().filter_map(move |b| Some((r, b.target.as_ref().ok()?))))
    }

    /// The target of backend `backend` of rule `route`/`rule`, if it has one (to reuse its state).
    pub fn target_of(&self, route: &str, rule: &str, backend: &RouteBackend) -> Option<&T> {
        let r = self.rules.iter().find(|r| r.route == route && r.name == rule)?;
        let wanted = (&backend.namespace, &backend.name, backend.port);
        r.backends
            .iter()
            .find(|b| (&b.service.0, &b.service.1, b.service.2) == wanted)
            .and_then(|b| b.target.as_ref().ok())
    }
}

/// What in `snapshot`'s routes this build cannot compile (a regular expression its engine
/// refuses, a header it cannot write), one line each: such a snapshot is refused whole.
pub fn check(snapshot: &Snapshot) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &snapshot.services {
        for p in &s.ports {
            let Some(routes) = &p.routes else { continue };
            if let Err(e) = RouteTable::<()>::build(routes, |_, _| Err(String::new())) {
                let port = p.port.map_or_else(|| "*".to_owned(), |p| p.to_string());
                problems.push(format!("Service {} port {port}: HTTP routes: {e}", s.key()));
            }
        }
    }
    problems
}

impl<T> Rule<T> {
    /// A backend by weight; `None` when no backend has any.
    fn pick(&self) -> Option<&Backend<T>> {
        match self.backends.as_slice() {
            [only] if only.weight > 0 => Some(only),
            _ if self.total_weight == 0 => None,
            backends => {
                let mut at = rand::rng().random_range(0..self.total_weight);
                backends.iter().find(|b| {
                    if at < b.weight {
                        return true;
                    }
                    at -= b.weight;
                    false
                })
            }
        }
    }

    /// Applies the rule's and then `backend`'s request header changes.
    pub fn request_headers(&self, backend: &Backend<T>, headers: &mut HeaderMap) {
        for ops in [&self.request_headers, &backend.request_headers].into_iter().flatten() {
            ops.apply(headers);
        }
    }

    /// Applies the rule's and then `backend`'s response header changes.
    pub fn response_headers(&self, backend: &Backend<T>, headers: &mut HeaderMap) {
        for ops in [&self.response_headers, &backend.response_headers].into_iter().flatten() {
            ops.apply(headers);
        }
    }
}

impl Matcher {
    fn of(m: &RouteMatch, rules: usize) -> Result<Self, String> {
        let rule = m.rule as usize;
        if rule >= rules {
            return Err(format!("a match refers to rule {rule} of {rules}"));
        }
        let path = match &m.path {
            PathMatch::Exact(p) => PathCondition::Exact(p.clone()),
            PathMatch::PathPrefix(p) => PathCondition::Prefix(p.trim_end_matches('/').to_owned()),
            PathMatch::RegularExpression(p) => PathCondition::Regex(regex(p)?),
        };
        let method = m
            .method
            .as_deref()
            .map(|x| Method::from_bytes(x.as_bytes()).map_err(|_| format!("not a method: {x:?}")))
            .transpose()?;
        let headers = m
            .headers
            .iter()
            .map(|h| {
                let name = HeaderName::try_from(h.name.as_str())
                    .map_err(|_| format!("not a header name: {:?}", h.name))?;
                Ok((name, Condition::of(h)?))
            })
            .collect::<Result<_, String>>()?;
        let query = m
            .query_params
            .iter()
            .map(|q| Ok((q.name.clone(), Condition::of(q)?)))
            .collect::<Result<_, String>>()?;
        Ok(Self { rule, path, method, headers, query })
    }

    fn holds<B>(&self, req: &Request<B>, path: &str, query: Option<&str>) -> bool {
        let path_holds = match &self.path {
            PathCondition::Exact(p) => path == p,
            PathCondition::Prefix(p) => {
                path.starts_with(p.as_str()) && matches!(path.as_bytes().get(p.len()), None | Some(b'/'))
            }
            PathCondition::Regex(r) => r.is_match(path),
        };
        path_holds
            && self.method.as_ref().is_none_or(|m| m == req.method())
            && self.headers.iter().all(|(name, c)| {
                req.headers().get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| c.holds(v)))
            })
            && self.query.iter().all(|(name, c)| query_value(query, name).is_some_and(|v| c.holds(v)))
    }
}

/// The first value of query parameter `name` (names are case-sensitive; values as sent).
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests;
