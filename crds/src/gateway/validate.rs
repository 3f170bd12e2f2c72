//! What Breakwater can enforce of an `HTTPRoute`, checked once for the operator (a route that
//! fails is `Accepted=False` with these messages) and for local files (refused, with the
//! document named). The API server's own schema has already checked shapes in a cluster; this
//! adds what only the data plane knows: which filters it applies, which regular expressions its
//! engine takes, and durations it can keep.

use regex::RegexBuilder;

use super::{HTTPRoute, HeaderModifier, HttpRouteFilter, ValueMatch};
use crate::{FieldError, ValidationErrors};

/// Largest compiled regular expression accepted (bounds memory and matching time per rule).
pub const REGEX_SIZE_LIMIT: usize = 1 << 16;

/// The methods a match may name.
const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// A route's problem, as status and files report it.
pub type RouteError = FieldError;

/// Every problem in `route` that keeps Breakwater from enforcing it, with field paths.
pub fn validate(route: &HTTPRoute) -> Result<(), ValidationErrors> {
    let mut e = Errors(ValidationErrors::default());
    let mut names = std::collections::BTreeSet::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(name) = &rule.name
            && !names.insert(name.as_str())
        {
            e.push(&format!("{at}.name"), format!("{name:?} names another rule of this route already"));
        }
        for (j, m) in rule.matches.iter().enumerate() {
            let at = format!("{at}.matches[{j}]");
            if let Some(path) = &m.path {
                let value = path.value.as_deref().unwrap_or("/");
                match path.type_.as_deref().unwrap_or("PathPrefix") {
                    "Exact" | "PathPrefix" if !value.starts_with('/') => {
                        e.push(&format!("{at}.path.value"), format!("must start with /, got {value:?}"))
                    }
                    "Exact" | "PathPrefix" => {}
                    "RegularExpression" => e.regex(&format!("{at}.path.value"), value),
                    other => e.push(
                        &format!("{at}.path.type"),
                        format!("must be Exact, PathPrefix or RegularExpression, got {other:?}"),
                    ),
                }
            }
            for (k, h) in m.headers.iter().enumerate() {
                let at = format!("{at}.headers[{k}]");
                e.value_match(&at, h);
                if !is_header_name(&h.name) {
                    e.push(&format!("{at}.name"), format!("not a valid header name: {:?}", h.name));
                }
            }
            for (k, q) in m.query_params.iter().enumerate() {
                e.value_match(&format!("{at}.queryParams[{k}]"), q);
            }
            if let Some(method) = &m.method
                && !METHODS.contains(&method.as_str())
            {
                e.push(
                    &format!("{at}.method"),
                    format!("must be one of {}, got {method:?}", METHODS.join(", ")),
                );
            }
        }
        e.filters(&format!("{at}.filters"), &rule.filters);
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let at = format!("{at}.backendRefs[{j}]");
            let (group, kind) = (b.group.as_deref().unwrap_or(""), b.kind.as_deref().unwrap_or("Service"));
            if !group.is_empty() || kind != "Service" {
                e.push(
                    &format!("{at}.kind"),
                    format!("only Services can be backends, got {kind} in group {group:?}"),
                );
            }
            match b.port {
                Some(p) if (1..=65535).contains(&p) => {}
                Some(p) => e.push(&format!("{at}.port"), format!("must be between 1 and 65535, got {p}")),
                None => e.push(&format!("{at}.port"), "a Service backend needs its port".to_owned()),
            }
            if let Some(w) = b.weight
                && !(0..=1_000_000).contains(&w)
            {
                e.push(&format!("{at}.weight"), format!("must be between 0 and 1000000, got {w}"));
            }
            e.filters(&format!("{at}.filters"), &b.filters);
        }
        if let Some(t) = &rule.timeouts {
            let request = t.request.as_deref().map(|d| e.duration(&format!("{at}.timeouts.request"), d));
            let backend =
                t.backend_request.as_deref().map(|d| e.duration(&format!("{at}.timeouts.backendRequest"), d));
            if let (Some(Some(r)), Some(Some(b))) = (request, backend)
                && b > r
            {
                e.push(
                    &format!("{at}.timeouts.backendRequest"),
                    format!("must not be longer than timeouts.request ({r:?}), got {b:?}"),
                );
            }
        }
        if let Some(r) = &rule.retry {
            for (k, code) in r.codes.iter().enumerate() {
                if !(400..=599).contains(code) {
                    e.push(
                        &format!("{at}.retry.codes[{k}]"),
                        format!("must be between 400 and 599, got {code}"),
                    );
                }
            }
            if let Some(a) = r.attempts
                && !(0..=10).contains(&a)
            {
                e.push(&format!("{at}.retry.attempts"), format!("must be between 0 and 10, got {a}"));
            }
            if let Some(b) = &r.backoff {
                e.duration(&format!("{at}.retry.backoff"), b);
            }
        }
    }
    e.0.into_result()
}

/// Whether `name` is an HTTP header name (an RFC 9110 token).
pub fn is_header_name(name: &str) -> bool {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    !name.is_empty() && name.chars().all(token)
}

/// `pattern` compiled the way the sidecar compiles it: anchored at both ends.
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(REGEX_SIZE_LIMIT).build()
}

struct Errors(ValidationErrors);

impl Errors {
    fn push(&mut self, path: &str, message: String) {
        self.0.0.push(FieldError { path: path.to_owned(), message });
    }

    fn regex(&mut self, path: &str, pattern: &str) {
        if let Err(err) = compile_regex(pattern) {
            let why = match err {
                regex::Error::CompiledTooBig(_) => "it compiles to more than 64 KiB".to_owned(),
                other => other.to_string().lines().last().unwrap_or_default().trim().to_owned(),
            };
            self.push(
                path,
                format!(
                    "the sidecar's regular expression engine (RE2 syntax: no look-around, no \
                     back-references) refuses {pattern:?}: {why}"
                ),
            );
        }
    }

    fn value_match(&mut self, at: &str, m: &ValueMatch) {
        match m.type_.as_deref().unwrap_or("Exact") {
            "Exact" => {}
            "RegularExpression" => self.regex(&format!("{at}.value"), &m.value),
            other => {
                self.push(&format!("{at}.type"), format!("must be Exact or RegularExpression, got {other:?}"))
            }
        }
    }

    fn filters(&mut self, at: &str, filters: &[HttpRouteFilter]) {
        for (i, f) in filters.iter().enumerate() {
            let at = format!("{at}[{i}]");
            let modifier = match f.type_.as_str() {
                "RequestHeaderModifier" => f.request_header_modifier.as_ref(),
                "ResponseHeaderModifier" => f.response_header_modifier.as_ref(),
                other => {
                    self.push(
                        &format!("{at}.type"),
                        format!(
                            "filter {other:?} is not supported by Breakwater (supported: \
                             RequestHeaderModifier, ResponseHeaderModifier)"
                        ),
                    );
                    continue;
                }
            };
            match modifier {
                Some(m) => self.modifier(&at, m),
                None => self.push(&at, format!("a {} filter needs its settings", f.type_)),
            }
        }
    }

    fn modifier(&mut self, at: &str, m: &HeaderModifier) {
        let names = m.set.iter().map(|h| ("set", &h.name)).chain(m.add.iter().map(|h| ("add", &h.name)));
        for (i, (list, name)) in names.chain(m.remove.iter().map(|n| ("remove", n))).enumerate() {
            if !is_header_name(name) {
                self.push(&format!("{at}.{list}"), format!("not a valid header name: {name:?} (entry {i})"));
            }
        }
        for (list, h) in m.set.iter().map(|h| ("set", h)).chain(m.add.iter().map(|h| ("add", h))) {
            if h.value.chars().any(|c| c.is_control() && c != '\t') {
                self.push(
                    &format!("{at}.{list}"),
                    format!("the value of {:?} has control characters", h.name),
                );
            }
        }
    }

    fn duration(&mut self, path: &str, text: &str) -> Option<std::time::Duration> {
        match super::parse_duration(text) {
            Ok(d) => d,
            Err(why) => {
                self.push(path, why);
                None
            }
        }
    }
}
