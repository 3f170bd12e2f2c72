//! Certificates for a test cluster, made with rcgen: one CA signs the API server's serving
//! certificate and the client certificates of the admin, the controller-manager and the scheduler;
//! one ECDSA key signs ServiceAccount tokens.
//!
//! One CA for serving and clients keeps the kubeconfig simple; a real cluster separates them, but
//! nothing here tests CA separation. ECDSA P-256 rather than RSA because it is rcgen's default and
//! generates in microseconds.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use crate::Result;

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its PKCS#8 private key.
    pub key_pem: String,
}

/// The cluster's certificate authority.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// A fresh CA, `CN=breakwater-e2e-ca`.
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name("breakwater-e2e-ca", None);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Pki { ca })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A serving certificate for `dns` names and `ips`.
    pub fn serving(&self, common_name: &str, dns: &[&str], ips: &[IpAddr]) -> Result<CertKey> {
        let mut params = CertificateParams::new(dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.subject_alt_names.extend(ips.iter().copied().map(SanType::IpAddress));
        params.distinguished_name = name(common_name, None);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate: Kubernetes reads the user from the CN and the group from the O
    /// (rcgen keeps one value per attribute, so at most one group).
    pub fn client(&self, user: &str, group: Option<&str>) -> Result<CertKey> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = name(user, group);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertKey> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        Ok(CertKey { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A key pair for signing ServiceAccount tokens: (PKCS#8 private key, public key), both PEM. The
/// API server signs with the private key and verifies with the public one; the controller-manager
/// signs its controllers' tokens with the private key.
pub fn service_account_key() -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn
}
