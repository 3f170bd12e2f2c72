//! Which policy governs a Service when several select it.
//!
//! The rule, from the most to the least decisive:
//! 1. a policy that names the Service (`targetRef.name`) beats one that selects it by label
//!    (more specific wins, as in Gateway API policy attachment);
//! 2. then the older policy (`metadata.creationTimestamp`) wins, so applying a new policy never
//!    silently changes the behaviour of calls that an existing one already governs; a policy
//!    without a timestamp (local files) counts as newer than any with one;
//! 3. then the first by `namespace/name`, so the answer never depends on list order.
//!
//! The operator and the sidecar both call these functions, so they always agree on the winner.

use std::cmp::Ordering;

use kube::ResourceExt;

use crate::CommunicationPolicy;

/// Orders two policies that select the same Service: `Less` means `a` wins.
pub fn compare(a: &CommunicationPolicy, b: &CommunicationPolicy) -> Ordering {
    let by_name = |p: &CommunicationPolicy| !p.spec.target_ref.is_by_name();
    let created = |p: &CommunicationPolicy| {
        // `None` sorts after every timestamp: untimed policies count as newest.
        (p.metadata.creation_timestamp.is_none(), p.metadata.creation_timestamp.clone())
    };
    by_name(a)
        .cmp(&by_name(b))
        .then_with(|| created(a).cmp(&created(b)))
        .then_with(|| a.namespace().cmp(&b.namespace()))
        .then_with(|| a.name_any().cmp(&b.name_any()))
}

/// The policy in force among `candidates` (which all select the same Service), if any.
pub fn winner<'a>(
    candidates: impl IntoIterator<Item = &'a CommunicationPolicy>,
) -> Option<&'a CommunicationPolicy> {
    candidates.into_iter().min_by(|a, b| compare(a, b))
}

/// Sorts `policies` so the winner comes first and each loser follows the ones that beat it.
pub fn sort(policies: &mut [&CommunicationPolicy]) {
    policies.sort_by(|a, b| compare(a, b));
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    use super::*;
    use crate::{CommunicationPolicySpec, TargetRef, Timeouts};

    fn policy(name: &str, by_name: bool, created_secs: Option<i64>) -> CommunicationPolicy {
        let mut target = TargetRef::service("payments");
        if !by_name {
            target.name = None;
            target.selector = Some(LabelSelector {
                match_labels: Some([("tier".to_owned(), "backend".to_owned())].into()),
                ..Default::default()
            });
        }
        let mut p = CommunicationPolicy::new(
            name,
            CommunicationPolicySpec {
                target_ref: target,
                timeouts: Some(Timeouts::default()),
                ..Default::default()
            },
        );
        p.metadata.namespace = Some("shop".into());
        p.metadata.creation_timestamp = created_secs.map(|s| {
            Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000 + s).expect("valid timestamp"))
        });
        p
    }

    fn win(ps: &[CommunicationPolicy]) -> &str {
        winner(ps).map(|p| p.metadata.name.as_deref().unwrap_or_default()).unwrap_or_default()
    }

    #[test]
    fn name_beats_selector_even_when_younger() {
        let ps = [policy("by-selector", false, Some(0)), policy("by-name", true, Some(100))];
        assert_eq!(win(&ps), "by-name");
    }

    #[test]
    fn oldest_wins_among_equally_specific() {
        let ps = [policy("young", true, Some(50)), policy("old", true, Some(10))];
        assert_eq!(win(&ps), "old");
    }

    #[test]
    fn timestamped_beats_untimed() {
        let ps = [policy("a-untimed", true, None), policy("z-timed", true, Some(999))];
        assert_eq!(win(&ps), "z-timed");
    }

    #[test]
    fn name_breaks_ties_whatever_the_order() {
        let ps = [policy("beta", true, Some(5)), policy("alpha", true, Some(5))];
        assert_eq!(win(&ps), "alpha");
        let ps = [policy("alpha", true, Some(5)), policy("beta", true, Some(5))];
        assert_eq!(win(&ps), "alpha");
    }

    #[test]
    fn sort_puts_the_winner_first_and_is_total() {
        let ps = [
            policy("c", false, Some(1)),
            policy("b", true, None),
            policy("a", true, Some(3)),
            policy("d", true, Some(3)),
        ];
        let mut refs: Vec<&CommunicationPolicy> = ps.iter().collect();
        sort(&mut refs);
        let names: Vec<_> = refs.iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["a", "d", "b", "c"]);
        assert_eq!(compare(&ps[0], &ps[0]), Ordering::Equal);
    }
}
