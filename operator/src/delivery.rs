//! Deliveries: how many sidecars must enforce each policy, and how many run each of its
//! generations. Written by the parts that know — the snapshot hub counts the sidecars whose
//! snapshot carries a policy ([`Expected`]), the config server sums every replica's
//! acknowledgements ([`Totals`]) — and read by the status controller through [`Deliveries`].
//! This module imports neither side: the information flows one way, from the streams to the
//! status.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::key::ObjKey;

/// How many pods' snapshots carry each policy: the sidecars that must acknowledge it.
pub type Expected = Arc<HashMap<ObjKey, usize>>;

/// A sidecar that refused a snapshot carrying a policy, and why. Written as `[pod, why]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(ObjKey, String)", into = "(ObjKey, String)")]
pub struct Refusal {
    /// The sidecar's pod.
    pub pod: ObjKey,
    /// What it said.
    pub why: String,
}

impl From<(ObjKey, String)> for Refusal {
    fn from((pod, why): (ObjKey, String)) -> Self {
        Refusal { pod, why }
    }
}

impl From<Refusal> for (ObjKey, String) {
    fn from(r: Refusal) -> Self {
        (r.pod, r.why)
    }
}

/// One policy's acknowledgements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAcks {
    /// Generation → sidecars enforcing it.
    #[serde(default)]
    pub generations: BTreeMap<i64, usize>,
    /// The last refusals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refusal>,
}

/// Every fresh acknowledgement report summed: policy → acknowledgements over every replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Policy → acknowledgements.
    pub policies: BTreeMap<ObjKey, PolicyAcks>,
}

/// How many of the sidecars that must enforce a policy run its current generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Sidecars that acknowledged the current generation.
    pub acknowledged: u32,
    /// Sidecars that must enforce it.
    pub expected: u32,
    /// Sidecars that refused a snapshot carrying it.
    pub refused: Vec<Refusal>,
}

/// What the status controller reads: the hub's counts and the acknowledgements, as they change.
#[derive(Debug, Clone)]
pub struct Deliveries {
    expected: watch::Receiver<Expected>,
    totals: watch::Receiver<Arc<Totals>>,
}

impl Deliveries {
    /// Deliveries from the hub's counts and the acknowledgement totals.
    pub fn new(expected: watch::Receiver<Expected>, totals: watch::Receiver<Arc<Totals>>) -> Self {
        Deliveries { expected, totals }
    }

    /// How many sidecars run generation `generation` of `policy`, of how many must; `None`
    /// while no sidecar must.
    pub fn delivery(&self, policy: &ObjKey, generation: Option<i64>) -> Option<Delivery> {
        let expected = self.expected.borrow().get(policy).copied().unwrap_or(0);
        if expected == 0 {
            // No sidecar needs it (yet): `Resolved` says what there is to say.
            return None;
        }
        let totals = self.totals.borrow();
        let acks = totals.policies.get(policy);
        let acknowledged =
            acks.and_then(|a| a.generations.get(&generation.unwrap_or(0))).copied().unwrap_or(0);
        Some(Delivery {
            acknowledged: acknowledged.min(expected) as u32,
            expected: expected as u32,
            refused: acks.map(|a| a.refused.clone()).unwrap_or_default(),
        })
    }

    /// Waits until the counts or the acknowledgements change; `false` once either side is gone.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.expected.changed() => r.is_ok(),
            r = self.totals.changed() => r.is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_counts_the_current_generation_only_and_never_more_than_expected() {
        let key = ObjKey::new("shop", "p");
        let (expected_tx, expected) = watch::channel(Expected::default());
        let mut totals = Totals::default();
        let acks = PolicyAcks {
            generations: BTreeMap::from([(1, 2), (2, 4)]),
            refused: vec![Refusal { pod: ObjKey::new("shop", "a"), why: "schema 2".into() }],
        };
        totals.policies.insert(key.clone(), acks);
        let (_totals_tx, totals) = watch::channel(Arc::new(totals));
        let deliveries = Deliveries::new(expected, totals);

        assert_eq!(deliveries.delivery(&key, Some(2)), None, "no sidecar must enforce it yet");
        expected_tx.send_replace(Arc::new(HashMap::from([(key.clone(), 3)])));
        let d = deliveries.delivery(&key, Some(2)).expect("a delivery");
        assert_eq!((d.acknowledged, d.expected), (3, 3), "a replica's stale report cannot push it over");
        assert_eq!(d.refused[0].why, "schema 2");
        let d = deliveries.delivery(&key, Some(3)).expect("a delivery");
        assert_eq!((d.acknowledged, d.expected), (0, 3), "generation 3: nobody yet");
    }

    #[test]
    fn a_refusal_is_written_as_a_pair() {
        let r = Refusal { pod: ObjKey::new("shop", "a"), why: "no".into() };
        let json = serde_json::to_string(&r).expect("json");
        assert_eq!(json, r#"["shop/a","no"]"#);
        assert_eq!(serde_json::from_str::<Refusal>(&json).expect("back"), r);
    }
}
