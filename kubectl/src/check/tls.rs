//! The webhook's certificates, checked as the API server checks them when it calls the webhook:
//! the serving certificate (the Secret's `tls.crt`) must chain to the `caBundle` and name
//! `<service>.<namespace>.svc`.

use std::{sync::Arc, time::SystemTime};

use rustls::{
    RootCertStore,
    client::{WebPkiServerVerifier, danger::ServerCertVerifier as _},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

/// The certificates of a PEM bundle, in order; an error when it holds none or something
/// unreadable.
pub fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs =
        CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("it holds no PEM certificate".into());
    }
    Ok(certs)
}

/// Whether `chain_pem` (the serving certificate, then any intermediates) verifies for `dns`
/// against the CAs of `ca_bundle` at `now`; the error says why not.
pub fn verify(ca_bundle: &[u8], chain_pem: &[u8], dns: &str, now: SystemTime) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for ca in certificates(ca_bundle).map_err(|e| format!("caBundle: {e}"))? {
        roots.add(ca).map_err(|e| format!("caBundle: {e}"))?;
    }
    let chain = certificates(chain_pem).map_err(|e| format!("tls.crt: {e}"))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(dns.to_owned()).map_err(|e| format!("{dns}: {e}"))?;
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::since_unix_epoch(since_epoch))
        .map(|_| ())
        .map_err(|e| describe(&e, dns))
}

/// Why a certificate did not verify, in words.
fn describe(e: &rustls::Error, dns: &str) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "it was not issued by a CA of the caBundle".into(),
            C::BadSignature => {
                "its signature does not verify with the caBundle's CA (a CA of the same name but another key)"
                    .into()
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => format!("it is not valid for {dns}"),
            C::Expired | C::ExpiredContext { .. } => "it has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".into(),
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

/// The end of validity (Unix seconds) of each certificate of `pem`, in order.
pub fn not_after(pem: &[u8]) -> Result<Vec<i64>, String> {
    certificates(pem)?
        .iter()
        .map(|der| {
            x509_parser::parse_x509_certificate(der)
                .map(|(_, cert)| cert.validity().not_after.timestamp())
                .map_err(|e| e.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

    use super::*;

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a key")).expect("a CA")
    }

    fn serving(issuer: &CertifiedIssuer<'static, KeyPair>, dns: &str) -> String {
        let params = CertificateParams::new(vec![dns.to_owned()]).expect("params");
        params.signed_by(&KeyPair::generate().expect("a key"), issuer).expect("signed").pem()
    }

    #[test]
    fn the_serving_certificate_verifies_only_against_its_ca_and_for_its_name() {
        let (ours, other, same_name) =
            (ca("breakwater-operator-ca"), ca("another-ca"), ca("breakwater-operator-ca"));
        let cert = serving(&ours, "breakwater.breakwater-system.svc");
        let now = SystemTime::now();
        verify(ours.pem().as_bytes(), cert.as_bytes(), "breakwater.breakwater-system.svc", now)
            .expect("verifies");
        let wrong_ca =
            verify(other.pem().as_bytes(), cert.as_bytes(), "breakwater.breakwater-system.svc", now);
        assert_eq!(wrong_ca.expect_err("another CA"), "it was not issued by a CA of the caBundle");
        // A CA made again (same name, new key): what a stale caBundle usually is.
        let regenerated =
            verify(same_name.pem().as_bytes(), cert.as_bytes(), "breakwater.breakwater-system.svc", now);
        assert!(regenerated.expect_err("another key").contains("another key"));
        let wrong_name = verify(ours.pem().as_bytes(), cert.as_bytes(), "breakwater.default.svc", now);
        assert_eq!(wrong_name.expect_err("another name"), "it is not valid for breakwater.default.svc");
        // A bundle with both CAs (a CA rotation in progress) still verifies.
        let both = format!("{}{}", other.pem(), ours.pem());
        verify(both.as_bytes(), cert.as_bytes(), "breakwater.breakwater-system.svc", now).expect("either CA");
        assert!(verify(b"", cert.as_bytes(), "x.y.svc", now).expect_err("empty").contains("caBundle"));
    }

    #[test]
    fn expiry_is_read_per_certificate() {
        let issuer = ca("ca");
        let bundle = format!("{}{}", serving(&issuer, "a.b.svc"), issuer.pem());
        let ends = not_after(bundle.as_bytes()).expect("readable");
        assert_eq!(ends.len(), 2);
        assert!(ends.iter().all(|&t| t > 0));
        assert!(not_after(b"not pem").is_err());
    }
}
