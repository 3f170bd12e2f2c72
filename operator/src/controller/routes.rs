//! `HTTPRoute` status, as the Gateway API defines it: for each Service a route names in
//! `parentRefs`, one `status.parents[]` entry with `controllerName: breakwater.dev/mesh` and
//! the conditions
//!
//! - `Accepted`: `True`, or `False` with `UnsupportedValue` (a field the sidecar cannot
//!   enforce, named; the route is not applied at all) or `NoMatchingParent` (no such Service,
//!   or no such port on it);
//! - `ResolvedRefs`: `True`, or `False` with `BackendNotFound`, `RefNotPermitted` or
//!   `InvalidKind` for the first backend that cannot be used (its share of calls is answered
//!   500; the rest of the route applies, as the Gateway API asks);
//! - `breakwater.dev/Shadowed` (only when it happens): a match that is exactly a match of an
//!   older route on the same parent, which takes its calls, as the Gateway API's precedence
//!   says: the newer route's match never sees a call.
//!
//! Entries of other controllers are kept as they are. `status.parents` is an atomic list, so
//! a server-side apply would replace theirs: the write is a merge patch of the whole list,
//! carrying the `resourceVersion` it was computed from (a conflict is retried on the next
//! pass). Only the lease holder writes, when an entry differs; a pass runs when a route or a
//! Service changes, when this replica becomes the lease holder, and every [`RESYNC`].

use std::time::Duration;

use breakwater_crds::gateway::{
    self, CONTROLLER_NAME, HTTPRoute, ParentReference, RouteParentStatus, RouteStatus,
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::watch;

use crate::{
    compile::World,
    index::{Index, Lenient, readable},
    key::ObjKey,
};

/// How often every route's status is checked without a change.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How long a pass waits for more changes to arrive with the first.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Our entries of `route`'s status: one per Service parent, in `parentRefs` order.
pub fn desired(
    route: &HTTPRoute,
    world: &World,
    previous: &[RouteParentStatus],
    now: &Time,
) -> Vec<RouteParentStatus> {
    let generation = route.metadata.generation;
    let invalid = gateway::validate(route).err();
    let route_ns = route.namespace_or_default();
    // The same for every parent: backends belong to the route.
    let resolved = resolved_refs(route, world);
    let mut out: Vec<RouteParentStatus> = Vec::new();
    for parent in route.spec.parent_refs.iter().filter(|p| p.is_service()) {
        if out.iter().any(|e| e.parent_ref == *parent) {
            continue;
        }
        let key = ObjKey::new(parent.namespace.as_deref().unwrap_or(route_ns), &parent.name);
        let accepted = match (&invalid, world.service(&key)) {
            (Some(errors), _) => (false, "UnsupportedValue", format!("not applied: {errors}")),
            (None, None) => (false, "NoMatchingParent", format!("Service {key} does not exist")),
            (None, Some(s)) => match parent.port {
                Some(port) if !s.ports.iter().any(|p| i32::from(p.port) == port) => {
                    (false, "NoMatchingParent", format!("Service {key} has no port {port}"))
                }
                _ if key.namespace != route_ns => (
                    true,
                    "Accepted",
                    format!(
                        "governs calls to Service {key} from injected pods of namespace {route_ns} (a consumer route)"
                    ),
                ),
                _ => (true, "Accepted", format!("governs calls to Service {key} from injected pods")),
            },
        };
        let mut conditions = vec![
            condition("Accepted", accepted.0, accepted.1, &accepted.2, generation),
            condition("ResolvedRefs", resolved.0, resolved.1, &resolved.2, generation),
        ];
        if accepted.0
            && let Some(message) = shadowed(route, &key, parent, world)
        {
            conditions.push(condition(
                "breakwater.dev/Shadowed",
                true,
                "MatchShadowed",
                &message,
                generation,
            ));
        }
        let before =
            previous.iter().find(|e| e.controller_name == CONTROLLER_NAME && e.parent_ref == *parent);
        for c in &mut conditions {
            c.last_transition_time = before
                .and_then(|b| b.conditions.iter().find(|o| o.type_ == c.type_ && o.status == c.status))
                .map_or_else(|| now.clone(), |o| o.last_transition_time.clone());
        }
        out.push(RouteParentStatus {
            parent_ref: parent.clone(),
            controller_name: CONTROLLER_NAME.into(),
            conditions,
        });
    }
    out
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.chars().take(32768).collect(),
        observed_generation: generation,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

/// `ResolvedRefs`: the first backend that cannot be used, or every one can.
fn resolved_refs(route: &HTTPRoute, world: &World) -> (bool, &'static str, String) {
    let ns = route.namespace_or_default();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        for (j, b) in rule.backend_refs.iter().enumerate() {
            let at = format!("spec.rules[{i}].backendRefs[{j}]");
            let (group, kind) = (b.group.as_deref().unwrap_or(""), b.kind.as_deref().unwrap_or("Service"));
            if !group.is_empty() || kind != "Service" {
                return (false, "InvalidKind", format!("{at}: only Services can be backends, got {kind}"));
            }
            let port = b.port.and_then(|p| u16::try_from(p).ok()).unwrap_or_default();
            let target_ns = b.namespace.as_deref().unwrap_or(ns);
            if let Some(p) = world.backend_problem(ns, target_ns, &b.name, port) {
                return (false, p.reason, format!("{at}: {}; its share of calls is answered 500", p.message));
            }
        }
    }
    (true, "ResolvedRefs", "every backend is a Service port of the route's namespace".into())
}

/// A match of `route` that an older route attached to the same Service has too.
fn shadowed(route: &HTTPRoute, service: &ObjKey, parent: &ParentReference, world: &World) -> Option<String> {
    use breakwater_crds::snapshot::routes::compile;
    let older: Vec<&HTTPRoute> = world
        .routes()
        .attached_to(service)
        .filter(|o| o.full_name() != route.full_name() && older_than(o, route))
        .filter(|o| o.namespace_or_default() == route.namespace_or_default())
        .filter(|o| {
            o.spec.parent_refs.iter().any(|q| {
                q.is_service()
                    && q.name == parent.name
                    && (q.port.is_none() || parent.port.is_none() || q.port == parent.port)
            })
        })
        .collect();
    if older.is_empty() {
        return None;
    }
    let theirs = compile(&older, None, |_, _| None, |_, _, _, _| None);
    let mine = compile(&[route], None, |_, _| None, |_, _, _, _| None);
    let same = |a: &breakwater_crds::snapshot::routes::RouteMatch,
                b: &breakwater_crds::snapshot::routes::RouteMatch| {
        a.path == b.path && a.method == b.method && a.headers == b.headers && a.query_params == b.query_params
    };
    let found: Vec<String> = mine
        .matches
        .iter()
        .filter_map(|m| {
            let other = theirs.matches.iter().find(|o| same(m, o))?;
            let (r, o) = (&mine.rules[m.rule as usize], &theirs.rules[other.rule as usize]);
            Some(format!(
                "rule {} has a match of rule {} of older route {}, which takes its calls",
                r.rule, o.rule, o.route
            ))
        })
        .collect();
    (!found.is_empty()).then(|| found.join("; "))
}

fn older_than(a: &HTTPRoute, b: &HTTPRoute) -> bool {
    breakwater_crds::snapshot::routes::route_order(a, b).is_lt()
}

/// Writes route status until `shutdown`; see the module docs.
pub async fn run(
    client: Client,
    index: Index,
    mut leader: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let mut changes = index.route_changes();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // Stop.
            _ = &mut shutdown => return,
            // A route or a Service changed: what a status is made of.
            r = changes.changed() => if r.is_err() { return },
            // Became (or stopped being) the lease holder.
            r = leader.changed() => if r.is_err() { return },
            // Nothing happened for a while: check anyway.
            _ = tokio::time::sleep(RESYNC) => {}
        }
        if !*leader.borrow_and_update() {
            continue;
        }
        index.wait_ready().await;
        tokio::time::sleep(DEBOUNCE).await;
        changes.borrow_and_update();
        pass(&client, &index).await;
    }
}

/// One pass over every route.
async fn pass(client: &Client, index: &Index) {
    let routes = readable(&index.routes);
    if routes.is_empty() {
        return;
    }
    let world = World::new(&[], &readable(&index.services), &[], &[]).with_routes(&routes);
    let now = Time(Timestamp::now());
    for route in routes {
        let Some(key) = ObjKey::of(route.as_ref()) else { continue };
        let previous = route.status.clone().unwrap_or_default().parents;
        let ours = desired(&route, &world, &previous, &now);
        let stored: Vec<&RouteParentStatus> =
            previous.iter().filter(|e| e.controller_name == CONTROLLER_NAME).collect();
        if stored.len() == ours.len() && stored.iter().zip(&ours).all(|(a, b)| *a == b) {
            continue;
        }
        let mut parents: Vec<RouteParentStatus> =
            previous.into_iter().filter(|e| e.controller_name != CONTROLLER_NAME).collect();
        parents.extend(ours);
        if let Err(error) = write(client, &key, route.metadata.resource_version.as_deref(), parents).await {
            tracing::warn!(route = %key, %error, "writing HTTPRoute status failed; retried on the next pass");
        } else {
            tracing::info!(route = %key, "HTTPRoute status written");
        }
    }
}

async fn write(
    client: &Client,
    key: &ObjKey,
    resource_version: Option<&str>,
    parents: Vec<RouteParentStatus>,
) -> Result<(), kube::Error> {
    let api: Api<Lenient<HTTPRoute>> = Api::namespaced(client.clone(), &key.namespace);
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": resource_version},
        "status": RouteStatus { parents },
    });
    api.patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
}

#[cfg(test)]
mod tests;
