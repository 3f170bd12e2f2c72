//! `kubectl breakwater status`: each policy as the operator reported it (targets, mode,
//! conditions, how many sidecars enforce its generation out of how many must), and each pod of
//! the namespaces where injection applies: injected (and its proxy ready), or running without
//! the sidecar it should have.
//!
//! Policies are read as plain objects and parsed one by one, so one the plugin cannot read (a
//! newer API version, a hand-edited object) is shown as unreadable instead of failing the list.

use breakwater_crds::{
    CONDITION_ACCEPTED, CONDITION_CONFLICTED, CONDITION_FAULTS_INJECTED, CONDITION_READY,
    CommunicationPolicy, Mode, reasons,
};
use k8s_openapi::{api::core::v1::Namespace, apimachinery::pkg::apis::meta::v1::Condition};
use kube::{
    Api, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, ListParams},
};
use serde::Serialize;

use crate::{
    Error,
    cluster::Cluster,
    output::{Report, Table},
    pods,
};

/// One policy.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The Services it resolved to, `name:port,port` (or the route, `HTTPRoute/name` and
    /// `HTTPRoute/name[rule]`), with `(governed by other)` where another policy wins.
    pub targets: Vec<String>,
    /// `Enforce` or `DryRun`.
    pub mode: String,
    /// The operator's conditions (`Accepted`, `Ready`, `Conflicted`, `FaultsInjected`).
    pub conditions: Vec<ConditionView>,
    /// Sidecars that enforce its current generation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sidecars: Option<u32>,
    /// Sidecars that must (the pods whose snapshot holds it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_sidecars: Option<u32>,
    /// Whether status describes the current generation.
    pub observed: bool,
    /// Why the object could not be read as a policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// A condition, the fields a person reads.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    /// `Accepted`, `Ready`, `Conflicted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// What it means here.
    pub message: String,
}

impl PolicyStatus {
    fn condition(&self, type_: &str) -> Option<&ConditionView> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// What is wrong with it, for a policy that is not [`healthy`](Self::healthy).
    pub fn problem(&self) -> String {
        if let Some(why) = &self.unreadable {
            return format!("unreadable: {why}");
        }
        if !self.observed {
            return "the operator has not processed its current generation (is it running?)".into();
        }
        for type_ in [CONDITION_ACCEPTED, CONDITION_READY] {
            match self.condition(type_) {
                Some(c) if c.status == "True" => {}
                Some(c) => return format!("{type_}={} ({}): {}", c.status, c.reason, c.message),
                None => return format!("no {type_} condition yet"),
            }
        }
        "healthy".into()
    }

    /// Accepted, valid, and only waiting for its target Service to exist: the policy is fine,
    /// the Service it names is not there (yet, or a typo in `targetRef`).
    pub fn waiting_for_targets(&self) -> bool {
        self.unreadable.is_none()
            && self.observed
            && self.condition(CONDITION_ACCEPTED).is_some_and(|c| c.status == "True")
            && self.condition(CONDITION_READY).is_some_and(|c| c.reason == reasons::NO_MATCHING_TARGETS)
    }

    /// Accepted, Ready and describing its current generation.
    pub fn healthy(&self) -> bool {
        let is = |t: &str, s: &str| self.condition(t).is_some_and(|c| c.status == s);
        self.unreadable.is_none()
            && self.observed
            && is(CONDITION_ACCEPTED, "True")
            && is(CONDITION_READY, "True")
    }
}

/// What `status` found.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// The namespace shown, or none for every namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Every policy.
    pub policies: Vec<PolicyStatus>,
    /// The pods where injection applies (and any pod that has the sidecar).
    pub pods: Vec<pods::PodSidecar>,
    /// Why the sidecars' snapshot convergence is not shown (the operator's diagnostics could
    /// not be read).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshots_unknown: Option<String>,
}

impl Report for StatusReport {
    fn table(&self) -> String {
        let all = self.namespace.is_none();
        let mut out = String::new();
        if self.policies.is_empty() {
            out.push_str(&match &self.namespace {
                Some(ns) => format!("No CommunicationPolicies in namespace {ns}.\n"),
                None => "No CommunicationPolicies in any namespace.\n".to_owned(),
            });
        } else {
            let mut header = vec!["name", "targets", "mode", "accepted", "ready", "conflicted", "sidecars"];
            if all {
                header.insert(0, "namespace");
            }
            let mut t = Table::new(&header);
            for p in &self.policies {
                let cell = |type_: &str| match p.condition(type_) {
                    Some(c) => format!("{} ({})", c.status, c.reason),
                    None => "-".to_owned(),
                };
                let sidecars = match (p.sidecars, p.expected_sidecars) {
                    (Some(n), Some(of)) => format!("{n}/{of}"),
                    (Some(n), None) => n.to_string(),
                    _ => "-".to_owned(),
                };
                let mut row = vec![
                    p.name.clone(),
                    if p.targets.is_empty() { "-".into() } else { p.targets.join(" ") },
                    p.mode.clone(),
                    cell(CONDITION_ACCEPTED),
                    cell(CONDITION_READY),
                    cell(CONDITION_CONFLICTED),
                    sidecars,
                ];
                if all {
                    row.insert(0, p.namespace.clone());
                }
                t.row(row);
                if let Some(why) = &p.unreadable {
                    t.detail(format!("unreadable: {why}"));
                }
                if !p.observed && p.unreadable.is_none() {
                    t.detail("the operator has not reported on this generation yet (is it running? kubectl breakwater check)");
                }
                for c in &p.conditions {
                    // Faults on are worth a line (calls fail on purpose); faults off are not.
                    let unwell = match c.type_.as_str() {
                        CONDITION_CONFLICTED | CONDITION_FAULTS_INJECTED => c.status != "False",
                        _ => c.status != "True",
                    };
                    if unwell {
                        t.detail(format!("{}: {}", c.type_, c.message));
                    }
                }
            }
            out.push_str(&t.render());
        }
        out.push('\n');
        out.push_str(&pods::table(&self.pods, all));
        if let Some(why) = &self.snapshots_unknown {
            out.push_str(&format!("(whether each sidecar applied its snapshot is unknown: {why})\n"));
        }
        out
    }

    fn healthy(&self) -> bool {
        self.policies.iter().all(PolicyStatus::healthy) && self.pods.iter().all(pods::PodSidecar::healthy)
    }
}

/// Reads the policies and pods of `namespace` (none: every namespace), and from the operator
/// in `breakwater` whether each sidecar applied its current snapshot.
pub async fn status(
    cluster: &Cluster,
    namespace: Option<&str>,
    breakwater: &str,
) -> Result<StatusReport, Error> {
    let policies = policies(cluster, namespace).await?;
    let mut pods = pods::survey(cluster, namespace).await?;
    let injected = |p: &pods::PodSidecar| {
        matches!(p.state, pods::SidecarState::Ready | pods::SidecarState::NotReady { .. })
    };
    let mut snapshots_unknown = None;
    if pods.iter().any(injected) {
        match crate::diagnostics::deliveries(cluster, breakwater).await {
            Ok(views) => {
                for p in pods.iter_mut().filter(|p| injected(p)) {
                    p.snapshot = Some(crate::diagnostics::convergence(&views, &p.namespace, &p.name));
                }
            }
            Err(why) => snapshots_unknown = Some(why),
        }
    }
    Ok(StatusReport { namespace: namespace.map(str::to_owned), policies, pods, snapshots_unknown })
}

/// The policies of `namespace` (none: every namespace), sorted.
pub async fn policies(cluster: &Cluster, namespace: Option<&str>) -> Result<Vec<PolicyStatus>, Error> {
    let resource = ApiResource::erase::<CommunicationPolicy>(&());
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(cluster.client.clone(), ns, &resource),
        None => Api::all_with(cluster.client.clone(), &resource),
    };
    let listed = api.list(&ListParams::default()).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => Error::Refused {
            what: format!("list {}", resource.plural),
            message: format!("{}/{} is not served here", resource.group, resource.version),
            hint: "Breakwater's CRD is not installed (helm install breakwater …), or is of another version: kubectl breakwater check".into(),
        },
        e => Error::api(format!("listing CommunicationPolicies in {}", namespace.unwrap_or("every namespace")), e),
    })?;
    let mut policies: Vec<PolicyStatus> = listed.items.into_iter().map(policy_status).collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Ok(policies)
}

fn policy_status(object: DynamicObject) -> PolicyStatus {
    let namespace = object.namespace().unwrap_or_default();
    let name = object.name_any();
    let generation = object.meta().generation;
    let value = serde_json::to_value(&object).unwrap_or_default();
    let conditions = |cs: &[Condition]| {
        cs.iter()
            .map(|c| ConditionView {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect()
    };
    match serde_json::from_value::<CommunicationPolicy>(value) {
        Ok(p) => {
            let status = p.status.unwrap_or_default();
            PolicyStatus {
                namespace,
                name,
                targets: status
                    .targets
                    .iter()
                    .map(|t| {
                        let ports = t.ports.iter().map(i32::to_string).collect::<Vec<_>>().join(",");
                        let mut s = match (&t.kind, &t.section_name) {
                            (Some(kind), Some(rule)) => format!("{kind}/{}[{rule}]", t.name),
                            (Some(kind), None) => format!("{kind}/{}", t.name),
                            (None, _) if ports.is_empty() => t.name.clone(),
                            (None, _) => format!("{}:{ports}", t.name),
                        };
                        if let Some(other) = &t.governed_by {
                            s.push_str(&format!("(governed by {other})"));
                        }
                        s
                    })
                    .collect(),
                mode: match p.spec.mode {
                    Mode::Enforce => "Enforce".into(),
                    Mode::DryRun => "DryRun".into(),
                },
                conditions: conditions(&status.conditions),
                sidecars: status.sidecars,
                expected_sidecars: status.expected_sidecars,
                observed: status.observed_generation.is_some() && status.observed_generation == generation,
                unreadable: None,
            }
        }
        Err(e) => PolicyStatus {
            namespace,
            name,
            targets: Vec::new(),
            mode: "-".into(),
            conditions: Vec::new(),
            sidecars: None,
            expected_sidecars: None,
            observed: false,
            unreadable: Some(format!(
                "{e} (a policy of another Breakwater version? kubectl breakwater check)"
            )),
        },
    }
}

/// The namespaces' labels, for [`pods::survey`].
pub(crate) async fn namespaces(cluster: &Cluster, namespace: Option<&str>) -> Result<Vec<Namespace>, Error> {
    let api = Api::<Namespace>::all(cluster.client.clone());
    match namespace {
        Some(ns) => {
            match api.get_opt(ns).await.map_err(|e| Error::api(format!("reading namespace {ns}"), e))? {
                Some(n) => Ok(vec![n]),
                None => Err(Error::Refused {
                    what: format!("find namespace {ns}"),
                    message: "it does not exist".into(),
                    hint: "kubectl get namespaces lists them; -A shows every namespace".into(),
                }),
            }
        }
        None => {
            Ok(api.list(&ListParams::default()).await.map_err(|e| Error::api("listing namespaces", e))?.items)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, faults: &str, reason: &str) -> PolicyStatus {
        let condition = |type_: &str, status: &str, reason: &str, message: &str| ConditionView {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        };
        PolicyStatus {
            namespace: "shop".into(),
            name: name.into(),
            targets: vec!["HTTPRoute/orders[create]".into()],
            mode: "Enforce".into(),
            conditions: vec![
                condition(CONDITION_ACCEPTED, "True", reasons::VALID, "the policy is valid"),
                condition(CONDITION_READY, "True", reasons::PROGRAMMED, "1 of 1 sidecars"),
                condition(CONDITION_CONFLICTED, "False", reasons::NO_CONFLICT, "in force"),
                condition(CONDITION_FAULTS_INJECTED, faults, reason, &format!("{name} faults")),
            ],
            sidecars: Some(1),
            expected_sidecars: Some(1),
            observed: true,
            unreadable: None,
        }
    }

    #[test]
    fn faults_on_get_a_line_and_faults_off_do_not() {
        let report = StatusReport {
            namespace: Some("shop".into()),
            policies: vec![
                policy("on", "True", reasons::FAULTS_ENABLED),
                policy("off", "False", reasons::FAULTS_DISABLED),
            ],
            pods: vec![],
            snapshots_unknown: None,
        };
        let table = report.table();
        assert!(table.contains("FaultsInjected: on faults"), "{table}");
        assert!(!table.contains("off faults"), "{table}");
        assert!(report.healthy(), "faults on is a warning, not a failure");
    }
}
