//! `breakwater-e2e`: tests against a real control plane, on a machine without Docker or kind.
//!
//! - [`TestCluster`]: etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from
//!   their Go modules by `gobuild/build.sh` and cached by version ([`Binaries`]), started on
//!   127.0.0.1 with free ports, certificates made here ([`pki`]), RBAC on and admission webhooks
//!   enabled. One cluster per test binary ([`TestCluster::shared`]), a namespace per test
//!   ([`TestCluster::namespace`]).
//! - [`PodRunner`]: the kubelet (and kube-proxy) of one Node. Each Pod scheduled to it becomes a
//!   network namespace with an address in 198.18.0.0/16, its containers local processes each on
//!   its own copy of its image's root filesystem, from the OCI archives `make images` builds
//!   ([`ImageTable`]); Services reach their endpoints through
//!   iptables DNAT from cluster IPs in 198.19.0.0/16.
//! - [`Helm`]: the real `helm` against the cluster, and the chart's path; [`operator::Operator`]:
//!   the chart installed, and what tests read from the operator's replicas.
//!
//! Why processes and network namespaces and not kind: kind needs Docker, which this machine (and
//! CI) does not have; what the tests must prove — that the API server accepts our CRD, chart and
//! RBAC, and that pods can reach Services — needs a real API server, not a real container runtime.
//!
//! Every process, namespace, link and iptables chain the harness creates carries the cluster's
//! index or pid and is removed by id when its owner is dropped; a companion reaper process
//! ([`reaper`]) removes what is left when the test binary exits, panics or is killed.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

pub mod bins;
pub mod cluster;
pub mod collector;
mod error;
pub mod helm;
pub mod kubectl;
pub mod kubelet;
pub mod monitoring;
pub mod network;
pub mod objects;
pub mod oci;
pub mod operator;
pub mod pki;
pub mod process;
pub mod reaper;
pub mod scenario;
pub mod wait;

pub use self::{
    bins::Binaries,
    cluster::{TestCluster, TestNamespace},
    error::{Error, Result},
    helm::Helm,
    kubectl::Kubectl,
    kubelet::{ImageTable, PodRunner},
};
