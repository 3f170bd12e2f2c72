//! `HTTPRoute`s in the World: which are valid (what `breakwater_crds::gateway::validate`
//! accepts; the others are never applied, their status says why), which Services they are
//! attached to, and what each of their references resolves to — the facts a snapshot's route
//! tables and a route's status are both made from, so the two cannot disagree.
//!
//! References: a parent is a Service (`group: ""`, `kind: Service`) of any namespace; a
//! backend is a Service port **in the route's own namespace**. A backend in another namespace
//! would need the Gateway API's `ReferenceGrant`, which Breakwater does not read yet: it is
//! refused as `RefNotPermitted` (its share of calls answered 500), never followed unchecked.

use std::{collections::HashMap, sync::Arc};

use breakwater_crds::gateway::{self, HTTPRoute};

use super::World;
use crate::key::ObjKey;

/// The valid routes, indexed by the Services they are attached to.
#[derive(Debug, Default)]
pub struct Routes {
    /// Valid routes, sorted by `namespace/name`.
    valid: Vec<Arc<HTTPRoute>>,
    /// Service → the valid routes whose `parentRefs` name it (any port), as indexes.
    by_parent: HashMap<ObjKey, Vec<usize>>,
}

/// Why a backend reference cannot be used: a Gateway API `ResolvedRefs` reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefProblem {
    /// `BackendNotFound`, `RefNotPermitted` or `InvalidKind`.
    pub reason: &'static str,
    /// What is wrong, naming the reference.
    pub message: String,
}

impl Routes {
    /// Indexes `routes`; invalid ones are left out.
    pub fn new(routes: &[Arc<HTTPRoute>]) -> Self {
        let mut valid: Vec<Arc<HTTPRoute>> =
            routes.iter().filter(|r| gateway::validate(r).is_ok()).cloned().collect();
        valid.sort_by_key(|r| r.full_name());
        let mut by_parent: HashMap<ObjKey, Vec<usize>> = HashMap::new();
        for (i, r) in valid.iter().enumerate() {
            for key in service_parents(r) {
                let list = by_parent.entry(key).or_default();
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        Self { valid, by_parent }
    }

    /// The valid routes attached to `service`.
    pub fn attached_to(&self, service: &ObjKey) -> impl Iterator<Item = &HTTPRoute> {
        self.by_parent.get(service).into_iter().flatten().map(|i| self.valid[*i].as_ref())
    }

    /// Whether any route is attached to `service`.
    pub fn has(&self, service: &ObjKey) -> bool {
        self.by_parent.contains_key(service)
    }

    /// Every valid route.
    pub fn valid(&self) -> &[Arc<HTTPRoute>] {
        &self.valid
    }
}

/// The Services `route`'s `parentRefs` name.
pub fn service_parents(route: &HTTPRoute) -> impl Iterator<Item = ObjKey> + '_ {
    let ns = route.namespace_or_default();
    route
        .spec
        .parent_refs
        .iter()
        .filter(|p| p.is_service())
        .map(move |p| ObjKey::new(p.namespace.as_deref().unwrap_or(ns), &p.name))
}

impl World {
    /// Why backend `namespace/name:port` of a route in `route_namespace` cannot be used, if it
    /// cannot.
    pub fn backend_problem(
        &self,
        route_namespace: &str,
        namespace: &str,
        name: &str,
        port: u16,
    ) -> Option<RefProblem> {
        if namespace != route_namespace {
            return Some(RefProblem {
                reason: "RefNotPermitted",
                message: format!(
                    "backend Service {namespace}/{name} is in another namespace than the route; Breakwater \
                     does not read ReferenceGrants yet, so only Services of namespace {route_namespace} can be \
                     backends"
                ),
            });
        }
        let Some(service) = self.service(&ObjKey::new(namespace, name)) else {
            return Some(RefProblem {
                reason: "BackendNotFound",
                message: format!("backend Service {namespace}/{name} does not exist"),
            });
        };
        (!service.ports.iter().any(|p| p.port == port)).then(|| RefProblem {
            reason: "BackendNotFound",
            message: format!("backend Service {namespace}/{name} has no port {port}"),
        })
    }

    /// The routes attached to `service` that govern calls from a pod in `caller_namespace`.
    pub(super) fn routes_for(&self, service: &ObjKey, caller_namespace: &str) -> Vec<&HTTPRoute> {
        // Any port here; the snapshot narrows to each port.
        let attached = self.routes.attached_to(service);
        let producer_or_mine = |r: &&HTTPRoute| {
            r.namespace_or_default() == service.namespace || r.namespace_or_default() == caller_namespace
        };
        attached.filter(producer_or_mine).collect()
    }

    /// The Services a caller in `caller_namespace` needs because of routes: every Service with
    /// a route governing its calls, and every backend of those routes that exists.
    pub(super) fn routed_services(&self, caller_namespace: &str) -> Vec<ObjKey> {
        let mut out = Vec::new();
        for route in self.routes.valid() {
            let ns = route.namespace_or_default();
            let parents: Vec<ObjKey> = service_parents(route)
                .filter(|p| (p.namespace == ns || ns == caller_namespace) && self.service(p).is_some())
                .collect();
            if parents.is_empty() {
                continue;
            }
            out.extend(parents);
            for b in route.spec.rules.iter().flat_map(|r| &r.backend_refs) {
                let key = ObjKey::new(b.namespace.as_deref().unwrap_or(ns), &b.name);
                if key.namespace == ns && self.service(&key).is_some() {
                    out.push(key);
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
pub(crate) mod tests;
