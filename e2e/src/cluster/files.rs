//! The cluster directory's files: certificates and keys, kubeconfigs.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use kube::{
    Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{
    Error, Result,
    network::HostNetwork,
    pki::{self, Pki},
};

/// Certificate and key files of a cluster.
pub(super) struct Files {
    pub ca: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    pub admin: (PathBuf, PathBuf),
    pub controller_manager: (PathBuf, PathBuf),
    pub scheduler: (PathBuf, PathBuf),
}

impl Files {
    pub fn write(dir: &Path, network: &HostNetwork) -> Result<Self> {
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir).map_err(Error::io("creating the pki directory"))?;
        let pki = Pki::new()?;
        let ca = pki_dir.join("ca.crt");
        write(&ca, &pki.ca_pem())?;
        let kubernetes_ip = first_service_ip(network);
        let serving = pki.serving(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V4(network.gateway()), IpAddr::V4(kubernetes_ip)],
        )?;
        let pair = |name: &str, ck: pki::CertKey| -> Result<(PathBuf, PathBuf)> {
            let (cert, key) = (pki_dir.join(format!("{name}.crt")), pki_dir.join(format!("{name}.key")));
            write(&cert, &ck.cert_pem)?;
            write(&key, &ck.key_pem)?;
            Ok((cert, key))
        };
        let (serving_cert, serving_key) = pair("apiserver", serving)?;
        let (sa_key, sa_pub) = (pki_dir.join("service-account.key"), pki_dir.join("service-account.pub"));
        let (private, public) = pki::service_account_key()?;
        write(&sa_key, &private)?;
        write(&sa_pub, &public)?;
        Ok(Files {
            ca,
            serving_cert,
            serving_key,
            sa_key,
            sa_pub,
            admin: pair("admin", pki.client("breakwater-e2e-admin", Some("system:masters"))?)?,
            controller_manager: pair(
                "controller-manager",
                pki.client("system:kube-controller-manager", None)?,
            )?,
            scheduler: pair("scheduler", pki.client("system:kube-scheduler", None)?)?,
        })
    }
}

/// The `kubernetes` Service's cluster IP: the first address of the range.
fn first_service_ip(network: &HostNetwork) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, network.index(), 1)
}

pub(super) async fn load_config(kubeconfig: &Path) -> Result<Config> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .map_err(|e| Error::Other(format!("reading {}: {e}", kubeconfig.display())))?;
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Other(format!("loading {}: {e}", kubeconfig.display())))
}

pub(super) fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
}

/// Writes a kubeconfig for `user` (certificate, key) against `server`.
pub(super) fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &(PathBuf, PathBuf),
) -> Result<()> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    \
         certificate-authority: {ca}\nusers:\n- name: e2e\n  user:\n    client-certificate: {cert}\n    \
         client-key: {key}\ncontexts:\n- name: e2e\n  context:\n    cluster: e2e\n    user: e2e\n    \
         namespace: default\ncurrent-context: e2e\n",
        ca = ca.display(),
        cert = user.0.display(),
        key = user.1.display(),
    );
    write(path, &text)
}
