//! `breakwater-operator`: the control plane.
//!
//! - [`compile`]: policies, Services, EndpointSlices, Namespaces and a Pod → that pod's sidecar
//!   snapshot (a pure function);
//! - [`key`]: the `namespace/name` keys the indexes use.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod compile;
pub mod key;
