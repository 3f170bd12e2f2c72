//! A Service's ports, addresses and ready endpoints, from its spec and EndpointSlices.
//!
//! The EndpointSlice controller has already resolved each port's `targetPort` on each pod — a
//! named port may be 8080 on one pod and 9090 on another, in which case the pods land in
//! different slices, each slice saying which number its port name maps to. So a Service port
//! is matched to slice ports **by name** (both unnamed for a single-port Service), and the
//! endpoint's port is the slice's. A slice port without a number falls back to a numeric
//! `targetPort`.
//!
//! Only ready endpoints are kept: `conditions.ready` unset counts as ready (the API's rule);
//! terminating endpoints are left out, so a pod being deleted gets no new calls while the
//! calls it has finish (the sidecar drops an endpoint's pool only when its last call ends).
//! An address in several slices (a slice being replaced) appears once.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::{
    api::{core::v1::ServiceSpec, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::ResourceExt;

use super::{Backing, PortEntry, socket};
use crate::key::ObjKey;
use breakwater_crds::snapshot::EndpointSnapshot;

/// The label the EndpointSlice controller puts on every slice of a Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Slices by the Service they belong to.
pub fn group_by_service(slices: &[std::sync::Arc<EndpointSlice>]) -> HashMap<ObjKey, Vec<&EndpointSlice>> {
    let mut out: HashMap<ObjKey, Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let (Some(namespace), Some(service)) = (slice.namespace(), slice.labels().get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        out.entry(ObjKey::new(&namespace, service)).or_default().push(slice);
    }
    out
}

/// What one Service contributes to the index.
#[derive(Debug, Default)]
pub struct Indexed {
    /// No cluster IP.
    pub headless: bool,
    /// Its ports, in the order of the spec.
    pub ports: Vec<PortEntry>,
    /// Which pods back which of its ports.
    pub backing: Vec<(ObjKey, Backing)>,
}

/// Indexes one Service (`key`, `spec`) with its `slices`.
pub fn index_service(key: &ObjKey, spec: &ServiceSpec, slices: &[&EndpointSlice]) -> Indexed {
    let cluster_ips: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) => vec![ip.clone()],
        _ => Vec::new(),
    };
    let headless = cluster_ips.iter().any(|ip| ip == "None");
    let mut out = Indexed { headless, ..Default::default() };
    for sp in spec.ports.iter().flatten() {
        let Ok(port) = u16::try_from(sp.port) else { continue };
        let name = sp.name.clone().filter(|n| !n.is_empty());
        if sp.protocol.as_deref().is_some_and(|p| p != "TCP") {
            // UDP and SCTP are not proxied.
            continue;
        }
        let addresses = if headless {
            Vec::new()
        } else {
            cluster_ips.iter().filter_map(|ip| socket(ip, port)).collect()
        };
        let numeric_target = match &sp.target_port {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
            Some(IntOrString::String(_)) => None,
            None => Some(port),
        };
        let mut endpoints = BTreeSet::new();
        for slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue;
            }
            let slice_port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().filter(|n| !n.is_empty()) == name.as_deref());
            let Some(slice_port) = slice_port else { continue };
            let Some(pod_port) = slice_port.port.and_then(|p| u16::try_from(p).ok()).or(numeric_target)
            else {
                continue;
            };
            for ep in slice.endpoints.iter().flatten() {
                let conditions = ep.conditions.as_ref();
                let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
                let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone());
                if let Some(pod) = &pod {
                    let namespace = slice.namespace().unwrap_or_default();
                    out.backing.push((
                        ObjKey::new(&namespace, pod),
                        Backing { service: key.clone(), service_port: port, pod_port },
                    ));
                }
                if !ready || terminating {
                    continue;
                }
                for address in &ep.addresses {
                    if let Some(address) = socket(address, pod_port) {
                        endpoints.insert(EndpointSnapshot { address, pod: pod.clone() });
                    }
                }
            }
        }
        out.ports.push(PortEntry {
            port,
            name,
            app_protocol: sp.app_protocol.clone(),
            addresses,
            endpoints: endpoints.into_iter().collect(),
        });
    }
    out.ports.sort_by_key(|p| p.port);
    out.ports.dedup_by_key(|p| p.port);
    out
}
