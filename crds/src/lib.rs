//! `breakwater-crds`: the `CommunicationPolicy` API, the single source of truth shared by the
//! operator, the sidecar and the generated CRD.
//!
//! - [`CommunicationPolicy`] and its parts: the Kubernetes resource, with doc comments that
//!   become the CRD's descriptions and CEL rules that the API server enforces;
//! - [`validate()`]: every rule, returning every problem with its field path;
//! - [`EffectivePolicy`]: a valid spec with all defaults applied, what sidecars enforce;
//! - [`precedence`]: which policy wins when several select the same Service;
//! - [`load`]: strict reading of YAML documents, as `kubectl apply` would;
//! - [`snapshot`]: what one pod's sidecar enforces, as the operator and local mode compile it,
//!   and the selection and per-port precedence both use;
//! - [`gateway`]: the Gateway API's `HTTPRoute`, as mesh routing reads it;
//! - [`crd()`]: the CustomResourceDefinition, written into the Helm chart by `crdgen`.
//!
//! This crate never depends on tokio or hyper: it is plain data and pure functions.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod admin;
pub mod crdgen;
pub mod duration;
mod effective;
pub mod gateway;
pub mod load;
pub mod policy;
pub mod precedence;
pub mod selector;
pub mod snapshot;
mod validate;
mod warnings;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use self::{
    duration::Duration,
    effective::*,
    policy::{
        Backoff, BreakerScope, Bulkhead, BulkheadLimits, CONDITION_ACCEPTED, CONDITION_CONFLICTED,
        CONDITION_FAULTS_INJECTED, CONDITION_READY, CircuitBreaker, CommunicationPolicy,
        CommunicationPolicySpec, CommunicationPolicyStatus, FailureCondition, FailureRate, FaultAbort,
        FaultDelay, FaultHeader, FaultMatch, Faults, GROUP, GrpcCode, MAX_FAULT_HEADERS, Mode, ROUTE_KIND,
        ResolvedTarget, Retries, RetryBudget, RetryCondition, RetryOn, SERVICE_KIND, Source, TargetRef,
        Timeouts, VERSION, reasons,
    },
    validate::{FieldError, ValidationErrors, validate},
    warnings::warnings,
};

/// The `CommunicationPolicy` CustomResourceDefinition, as installed by the Helm chart.
///
/// Doc comments arrive with their source line breaks; they are re-flowed into one line per
/// paragraph so `kubectl explain` can wrap them to the terminal.
pub fn crd() -> CustomResourceDefinition {
    let mut value = serde_json::to_value(CommunicationPolicy::crd()).expect("a CRD serializes to JSON");
    reflow_descriptions(&mut value);
    serde_json::from_value(value).expect("re-flowing descriptions keeps the CRD valid")
}

fn reflow_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(s) if key == "description" => {
                        *s = s
                            .split("\n\n")
                            .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => reflow_descriptions(v),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(reflow_descriptions),
        _ => {}
    }
}
