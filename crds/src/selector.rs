//! Label selector matching, as Kubernetes defines it: every `matchLabels` entry and every
//! `matchExpressions` requirement must hold. The operator (targetRef selectors over Services)
//! and the sidecar (local files, `sources`) both match with this one function.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. An empty selector matches everything (callers refuse
/// an empty `targetRef.selector` at validation).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // validate() refuses other operators; an unknown one never matches.
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: op.to_owned(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn match_labels_and_expressions_must_all_hold() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("tier", "backend")])),
            match_expressions: Some(vec![
                req("env", "In", &["prod", "staging"]),
                req("legacy", "DoesNotExist", &[]),
                req("team", "NotIn", &["payments"]),
            ]),
        };
        assert!(matches(&sel, &labels(&[("tier", "backend"), ("env", "prod")])));
        assert!(!matches(&sel, &labels(&[("tier", "frontend"), ("env", "prod")])));
        assert!(!matches(&sel, &labels(&[("tier", "backend"), ("env", "dev")])));
        assert!(!matches(&sel, &labels(&[("tier", "backend"), ("env", "prod"), ("legacy", "y")])));
        assert!(!matches(&sel, &labels(&[("tier", "backend"), ("env", "prod"), ("team", "payments")])));
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(matches(&LabelSelector::default(), &labels(&[])));
    }
}
