//! Which policy governs a call: the selection and per-port precedence that the operator's
//! compile, the sidecar's local mode and the policies' status all use, so the three can never
//! disagree about who wins.
//!
//! A policy governs calls to a Service when it is in the Service's namespace, its `targetRef`
//! selects the Service (by name or label selector), and — for outbound calls — its `sources`
//! select the caller. Among the policies that do, each **port** is governed by the first, in
//! [`crate::precedence`] order, whose `targetRef.ports` covers it; the others are shadowed
//! there. Inbound, the caller is unknown, so every policy selecting the Service counts.
//!
//! A policy targeting an `HTTPRoute` governs the calls that route matches, and beats the
//! Service's policies there; one naming a rule (`sectionName`) beats one naming the whole
//! route, for that rule ([`for_rule`]).
//!
//! Callers pass valid policies only: invalid ones are refused before they get here (the strict
//! loader in local mode, the `Accepted=False` policies in the operator).

use std::collections::BTreeMap;

use super::{AppliedPolicy, Identity};
use crate::{CommunicationPolicy, EffectivePolicy, ValidationErrors, precedence};

/// A Service as selection sees it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceRef<'a> {
    /// Name.
    pub name: &'a str,
    /// Namespace.
    pub namespace: &'a str,
    /// Labels (for `targetRef.selector`).
    pub labels: &'a BTreeMap<String, String>,
}

/// The policies that select `service` and, when a `caller` is given, whose `sources` select it,
/// in precedence order (the winner first).
pub fn selecting<'p>(
    policies: impl IntoIterator<Item = &'p CommunicationPolicy>,
    service: &ServiceRef<'_>,
    caller: Option<&Identity>,
) -> Vec<&'p CommunicationPolicy> {
    let mut found: Vec<&CommunicationPolicy> = policies
        .into_iter()
        .filter(|p| p.namespace_or_default() == service.namespace)
        .filter(|p| p.spec.selects_service(service.name, service.labels))
        .filter(|p| {
            caller.is_none_or(|c| p.spec.selects_caller(&c.namespace, &c.namespace_labels, &c.labels))
        })
        .collect();
    precedence::sort(&mut found);
    found
}

/// The policies targeting rule `rule` (its name, `None` for a rule without one) of the
/// `HTTPRoute` `namespace/route`, and, when a `caller` is given, whose `sources` select it, the
/// winner first: those naming the rule in `sectionName` before those naming the whole route,
/// then in [`crate::precedence`] order.
pub fn for_rule<'p>(
    policies: impl IntoIterator<Item = &'p CommunicationPolicy>,
    namespace: &str,
    route: &str,
    rule: Option<&str>,
    caller: Option<&Identity>,
) -> Vec<&'p CommunicationPolicy> {
    let mut found: Vec<&CommunicationPolicy> = policies
        .into_iter()
        .filter(|p| p.namespace_or_default() == namespace)
        .filter(|p| match p.spec.target_ref.route_name() {
            Some((name, section)) => name == route && section.is_none_or(|s| Some(s) == rule),
            None => false,
        })
        .filter(|p| {
            caller.is_none_or(|c| p.spec.selects_caller(&c.namespace, &c.namespace_labels, &c.labels))
        })
        .collect();
    found.sort_by(|a, b| {
        let whole = |p: &CommunicationPolicy| p.spec.target_ref.section_name.is_none();
        whole(a).cmp(&whole(b)).then_with(|| precedence::compare(a, b))
    });
    found
}

/// The policy in force for calls to `port` among `sorted` (precedence order): the first whose
/// `targetRef.ports` covers it. `None` asks for "every port not listed": the first policy
/// without a port list.
pub fn in_force<'p>(
    sorted: &[&'p CommunicationPolicy],
    port: Option<u16>,
) -> Option<&'p CommunicationPolicy> {
    sorted.iter().copied().find(|p| match port {
        Some(port) => p.spec.target_ref.applies_to_port(port),
        None => p.spec.target_ref.ports.is_none(),
    })
}

/// The ports to govern separately when a Service's own ports are unknown (local files that
/// list none): every port a port-limited policy names, sorted, and then `None` for the rest.
pub fn ports_named(sorted: &[&CommunicationPolicy]) -> Vec<Option<u16>> {
    let mut ports: Vec<u16> = sorted
        .iter()
        .flat_map(|p| p.spec.target_ref.ports.iter().flatten())
        .filter_map(|p| u16::try_from(*p).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports.into_iter().map(Some).chain([None]).collect()
}

/// Resolves every port of a Service: the policy in force on each (in the order of `ports`), and
/// the policies in force on none of them (shadowed), by `namespace/name`.
pub fn resolve_ports<'p>(
    sorted: &[&'p CommunicationPolicy],
    ports: &[Option<u16>],
) -> (Vec<Option<&'p CommunicationPolicy>>, Vec<String>) {
    let chosen: Vec<Option<&CommunicationPolicy>> = ports.iter().map(|p| in_force(sorted, *p)).collect();
    let shadowed = sorted
        .iter()
        .filter(|p| !chosen.iter().flatten().any(|c| std::ptr::eq(*c, **p)))
        .map(|p| p.full_name())
        .collect();
    (chosen, shadowed)
}

impl AppliedPolicy {
    /// The policy as a snapshot carries it: validated, defaults filled in.
    pub fn from_policy(policy: &CommunicationPolicy) -> Result<Self, ValidationErrors> {
        Ok(AppliedPolicy {
            name: policy.full_name(),
            generation: policy.metadata.generation,
            effective: EffectivePolicy::resolve(&policy.spec)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CommunicationPolicySpec, Source, TargetRef, Timeouts};

    fn policy(name: &str, ports: Option<Vec<i32>>, created: i64) -> CommunicationPolicy {
        let mut target = TargetRef::service("payments");
        target.ports = ports;
        let mut p = CommunicationPolicy::new(
            name,
            CommunicationPolicySpec {
                target_ref: target,
                timeouts: Some(Timeouts::default()),
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("shop".into());
        p.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + created).expect("a valid time"),
        ));
        p
    }

    fn service(labels: &BTreeMap<String, String>) -> ServiceRef<'_> {
        ServiceRef { name: "payments", namespace: "shop", labels }
    }

    #[test]
    fn each_port_is_governed_by_the_first_policy_covering_it() {
        let all = policy("all", None, 10);
        let web = policy("web", Some(vec![80]), 20);
        let labels = BTreeMap::new();
        let sorted = selecting([&web, &all], &service(&labels), None);
        let (chosen, shadowed) = resolve_ports(&sorted, &[Some(80), Some(9090)]);
        let names: Vec<_> = chosen.iter().map(|p| p.map(|p| p.full_name())).collect();
        // Older `all` wins both ports: precedence first, then port coverage.
        assert_eq!(names, [Some("shop/all".to_owned()), Some("shop/all".to_owned())]);
        assert_eq!(shadowed, ["shop/web"]);

        let old_web = policy("web", Some(vec![80]), 1);
        let sorted = selecting([&all, &old_web], &service(&labels), None);
        let (chosen, shadowed) = resolve_ports(&sorted, &[Some(80), Some(9090)]);
        let names: Vec<_> = chosen.iter().map(|p| p.map(|p| p.full_name())).collect();
        assert_eq!(names, [Some("shop/web".to_owned()), Some("shop/all".to_owned())]);
        assert!(shadowed.is_empty());
    }

    #[test]
    fn sources_filter_by_caller_but_not_inbound() {
        let mut only_frontend = policy("frontend", None, 1);
        only_frontend.spec.sources =
            Some(vec![Source { namespace: Some("frontend".into()), ..Default::default() }]);
        let labels = BTreeMap::new();
        let backend = Identity { namespace: "backend".into(), ..Default::default() };
        let frontend = Identity { namespace: "frontend".into(), ..Default::default() };
        assert!(selecting([&only_frontend], &service(&labels), Some(&backend)).is_empty());
        assert_eq!(selecting([&only_frontend], &service(&labels), Some(&frontend)).len(), 1);
        assert_eq!(selecting([&only_frontend], &service(&labels), None).len(), 1, "inbound: any caller");
    }

    #[test]
    fn unknown_ports_get_one_entry_per_named_port_and_a_catch_all() {
        let all = policy("all", None, 10);
        let grpc = policy("grpc", Some(vec![9090, 81]), 1);
        let labels = BTreeMap::new();
        let sorted = selecting([&all, &grpc], &service(&labels), None);
        let ports = ports_named(&sorted);
        assert_eq!(ports, [Some(81), Some(9090), None]);
        let (chosen, _) = resolve_ports(&sorted, &ports);
        let names: Vec<_> =
            chosen.iter().map(|p| p.map(|p| p.metadata.name.clone().unwrap_or_default())).collect();
        assert_eq!(names, [Some("grpc".into()), Some("grpc".into()), Some("all".into())]);
    }

    #[test]
    fn other_namespaces_never_select() {
        let mut p = policy("elsewhere", None, 1);
        p.metadata.namespace = Some("other".into());
        let labels = BTreeMap::new();
        assert!(selecting([&p], &service(&labels), None).is_empty());
    }

    #[test]
    fn a_rule_policy_beats_a_route_policy_which_selects_no_service() {
        let on_route = |name: &str, rule: Option<&str>, created: i64| {
            let mut p = policy(name, None, created);
            p.spec.target_ref = TargetRef::route("payments", rule);
            p
        };
        let route = on_route("route", None, 1);
        let get = on_route("get", Some("get"), 20);
        let newer_get = on_route("newer-get", Some("get"), 30);
        let post = on_route("post", Some("post"), 1);
        let all = [&newer_get, &route, &post, &get];
        let names = |rule| -> Vec<String> {
            for_rule(all, "shop", "payments", rule, None).iter().map(|p| p.full_name()).collect()
        };
        assert_eq!(names(Some("get")), ["shop/get", "shop/newer-get", "shop/route"]);
        assert_eq!(names(Some("post")), ["shop/post", "shop/route"]);
        assert_eq!(names(None), ["shop/route"], "a rule without a name: only whole-route policies");
        assert!(for_rule(all, "shop", "orders", Some("get"), None).is_empty(), "another route");
        assert!(for_rule(all, "other", "payments", Some("get"), None).is_empty(), "another namespace");

        // A route named like a Service never makes its policy select the Service.
        let labels = BTreeMap::new();
        assert!(selecting(all, &service(&labels), None).is_empty());
    }
}
