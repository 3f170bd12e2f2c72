//! kube-proxy's job: every Service port with a cluster IP is DNATed to its ready endpoints.
//!
//! Two reflectors (Services, EndpointSlices); after any change the whole rule set is recomputed
//! and, if it differs, written in one `iptables-restore` transaction (see
//! [`HostNetwork::set_services`]). Recomputing everything is simpler than diffing and cheap at
//! test scale (tens of Services).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddrV4},
    sync::Arc,
};

use futures_util::StreamExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::sync::watch;

use crate::network::{HostNetwork, ServiceRule};

/// Keeps the Service rules in step with the API server until `shutdown` turns true.
pub(crate) async fn run(client: Client, network: Arc<HostNetwork>, mut shutdown: watch::Receiver<bool>) {
    let (services, services_writer) = reflector::store::<Service>();
    let (slices, slices_writer) = reflector::store::<EndpointSlice>();
    let service_events =
        reflector(services_writer, watcher(Api::<Service>::all(client.clone()), Default::default()))
            .default_backoff()
            .map(|_| ())
            .boxed();
    let slice_events =
        reflector(slices_writer, watcher(Api::<EndpointSlice>::all(client), Default::default()))
            .default_backoff()
            .map(|_| ())
            .boxed();
    let mut events = futures_util::stream::select(service_events, slice_events);
    let mut applied: Option<Vec<ServiceRule>> = None;
    loop {
        tokio::select! {
            // Any change to either kind: recompute below.
            event = events.next() => if event.is_none() { return },
            // The runner is stopping.
            _ = shutdown.changed() => return,
        }
        let rules = rules(&services.state(), &slices.state());
        if applied.as_ref() == Some(&rules) {
            continue;
        }
        let net = Arc::clone(&network);
        let to_apply = rules.clone();
        match tokio::task::spawn_blocking(move || net.set_services(&to_apply)).await {
            Ok(Ok(())) => {
                tracing::debug!(rules = rules.len(), "service rules applied");
                applied = Some(rules);
            }
            Ok(Err(e)) => tracing::error!(error = %e, "applying service rules failed"),
            Err(e) => tracing::error!(error = %e, "applying service rules panicked"),
        }
    }
}

/// The DNAT rules for `services` given `slices`.
pub(crate) fn rules(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Vec<ServiceRule> {
    let mut rules = Vec::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(cluster_ip) = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok()) else {
            continue;
        };
        let namespace = svc.namespace().unwrap_or_default();
        let own_slices: Vec<&EndpointSlice> = slices
            .iter()
            .filter(|s| {
                s.namespace().as_deref() == Some(namespace.as_str())
                    && s.address_type == "IPv4"
                    && s.labels().get("kubernetes.io/service-name") == Some(&svc.name_any())
            })
            .map(|s| s.as_ref())
            .collect();
        for port in spec.ports.iter().flatten() {
            let protocol = port.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            let name = port.name.as_deref().unwrap_or_default();
            let mut endpoints = BTreeSet::new();
            for slice in &own_slices {
                let Some(target) = slice
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref().unwrap_or_default() == name)
                    .and_then(|p| p.port)
                    .and_then(|p| u16::try_from(p).ok())
                else {
                    continue;
                };
                for ep in slice.endpoints.iter().flatten() {
                    if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                        continue;
                    }
                    for address in ep.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
                        endpoints.insert(SocketAddrV4::new(address, target));
                    }
                }
            }
            let Ok(port) = u16::try_from(port.port) else { continue };
            if !endpoints.is_empty() {
                rules.push(ServiceRule {
                    cluster_ip,
                    port,
                    protocol,
                    endpoints: endpoints.into_iter().collect(),
                });
            }
        }
    }
    rules.sort();
    rules
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc() -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "a"},
                "spec": {"clusterIP": "198.19.1.20", "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "admin", "port": 9000, "protocol": "TCP"}
                ]}
            }))
            .expect("a valid Service"),
        )
    }

    fn slice(namespace: &str, ready: Option<bool>) -> Arc<EndpointSlice> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "web-x", "namespace": namespace,
                             "labels": {"kubernetes.io/service-name": "web"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": [
                    {"addresses": ["198.18.1.3"], "conditions": {"ready": true}},
                    {"addresses": ["198.18.1.4"], "conditions": {"ready": ready}},
                ]
            }))
            .expect("a valid EndpointSlice"),
        )
    }

    #[test]
    fn ready_endpoints_of_the_same_namespace_are_dnat_targets_by_port_name() {
        let rules = rules(&[svc()], &[slice("a", None), slice("b", Some(true))]);
        assert_eq!(
            rules,
            vec![ServiceRule {
                cluster_ip: Ipv4Addr::new(198, 19, 1, 20),
                port: 80,
                protocol: "tcp".into(),
                endpoints: vec![
                    "198.18.1.3:8080".parse().expect("addr"),
                    "198.18.1.4:8080".parse().expect("addr")
                ],
            }]
        );
    }

    #[test]
    fn endpoints_marked_not_ready_are_left_out() {
        let rules = rules(&[svc()], &[slice("a", Some(false))]);
        assert_eq!(rules[0].endpoints, vec!["198.18.1.3:8080".parse::<SocketAddrV4>().expect("addr")]);
    }
}
