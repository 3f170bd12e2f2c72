//! The command lines of the control-plane processes. Flags follow envtest's defaults, plus what a
//! controller-manager needs to mint ServiceAccount tokens (the signing key and the root CA it
//! publishes); names were checked against the built binaries' `--help`.

use std::{path::Path, process::Command};

use super::files::Files;
use crate::{Binaries, network::HostNetwork};

/// Loopback ports of a cluster.
pub(super) struct Ports {
    pub etcd: u16,
    pub etcd_peer: u16,
    pub api: u16,
}

/// etcd: plain HTTP on loopback, data in the cluster directory, no fsync (tests need no durability).
pub(super) fn etcd(binaries: &Binaries, dir: &Path, ports: &Ports) -> Command {
    let (client, peer) = (ports.etcd, ports.etcd_peer);
    let mut command = Command::new(&binaries.etcd);
    command.args([
        "--name=e2e".to_owned(),
        format!("--data-dir={}", dir.join("etcd").display()),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=e2e=http://127.0.0.1:{peer}"),
        "--unsafe-no-fsync=true".to_owned(),
        "--log-level=warn".to_owned(),
    ]);
    command
}

/// kube-apiserver on 127.0.0.1, advertising the bridge address (where pods reach it), with RBAC,
/// the default admission plugins (webhooks included) and Services in the cluster's /24.
pub(super) fn apiserver(
    binaries: &Binaries,
    dir: &Path,
    ports: &Ports,
    files: &Files,
    network: &HostNetwork,
) -> Command {
    let mut command = Command::new(&binaries.kube_apiserver);
    command.args([
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd),
        "--bind-address=127.0.0.1".to_owned(),
        format!("--secure-port={}", ports.api),
        format!("--advertise-address={}", network.gateway()),
        format!("--cert-dir={}", dir.join("apiserver").display()),
        format!("--tls-cert-file={}", files.serving_cert.display()),
        format!("--tls-private-key-file={}", files.serving_key.display()),
        format!("--client-ca-file={}", files.ca.display()),
        "--authorization-mode=Node,RBAC".to_owned(),
        format!("--service-cluster-ip-range={}", network.service_cidr()),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
        format!("--service-account-key-file={}", files.sa_pub.display()),
        format!("--service-account-signing-key-file={}", files.sa_key.display()),
        "--enable-admission-plugins=NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook"
            .to_owned(),
        "--allow-privileged=true".to_owned(),
        // Webhooks and aggregated APIs are dialled at a ready endpoint's IP (a pod on our bridge)
        // rather than the cluster IP, so they do not wait for the Service rules to catch up.
        "--enable-aggregator-routing=true".to_owned(),
        "--profiling=false".to_owned(),
        "--v=1".to_owned(),
    ]);
    command
}

/// kube-controller-manager with every default controller, signing ServiceAccount tokens with the
/// API server's key.
pub(super) fn controller_manager(binaries: &Binaries, kubeconfig: &Path, files: &Files) -> Command {
    let mut command = Command::new(&binaries.kube_controller_manager);
    command.args([
        format!("--kubeconfig={}", kubeconfig.display()),
        "--leader-elect=false".to_owned(),
        // No HTTPS endpoint: nothing scrapes it, and readiness is judged by what it does.
        "--secure-port=0".to_owned(),
        format!("--service-account-private-key-file={}", files.sa_key.display()),
        format!("--root-ca-file={}", files.ca.display()),
        "--use-service-account-credentials=true".to_owned(),
        "--controllers=*".to_owned(),
        "--v=1".to_owned(),
    ]);
    command
}

/// kube-scheduler with its default profile.
pub(super) fn scheduler(binaries: &Binaries, kubeconfig: &Path) -> Command {
    let mut command = Command::new(&binaries.kube_scheduler);
    command.args([
        format!("--kubeconfig={}", kubeconfig.display()),
        "--leader-elect=false".to_owned(),
        "--secure-port=0".to_owned(),
        "--v=1".to_owned(),
    ]);
    command
}
