//! X.509-SVID leaf checks of the SPIFFE X509-SVID specification that a generic chain
//! verifier does not make: one URI SAN holding a valid SPIFFE ID with a path (a workload's,
//! not a trust domain's), not a CA, and key usage fit for a workload (digitalSignature, never
//! keyCertSign or cRLSign).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a certificate is not an acceptable X.509-SVID leaf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("the certificate is not valid DER X.509")]
    Malformed,
    #[error("the certificate has no URI SAN, so it carries no SPIFFE ID")]
    NoSpiffeId,
    #[error("the certificate has more than one URI SAN")]
    SeveralUris,
    #[error("the URI SAN is not a valid SPIFFE ID: {0}")]
    BadSpiffeId(SpiffeIdError),
    #[error("the SPIFFE ID {0} has no path: it names a trust domain, not a workload")]
    TrustDomainId(String),
    #[error("the certificate is a CA certificate and cannot be used as a leaf SVID")]
    IsCa,
    #[error("the certificate has no key usage extension with digitalSignature")]
    NoDigitalSignature,
    #[error("a leaf SVID must not have the keyCertSign or cRLSign key usage")]
    SigningKeyUsage,
    #[error("the certificate has a duplicate or unreadable extension")]
    BadExtension,
}

/// The end of a certificate's validity (`notAfter`), or `None` if it cannot be read.
pub fn not_after(der: &[u8]) -> Option<std::time::SystemTime> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    not_after_of(&cert)
}

fn not_after_of(cert: &X509Certificate<'_>) -> Option<std::time::SystemTime> {
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// [`leaf_spiffe_id`] and [`not_after`] of one leaf, from a single parse (a connection's
/// peer is read once, after its handshake).
pub fn leaf_facts(der: &[u8]) -> (Result<SpiffeId, SvidError>, Option<std::time::SystemTime>) {
    match X509Certificate::from_der(der) {
        Ok((_, cert)) => (spiffe_id_of(&cert), not_after_of(&cert)),
        Err(_) => (Err(SvidError::Malformed), None),
    }
}

/// Checks a leaf certificate against the X509-SVID rules and returns its SPIFFE ID.
///
/// Chain, signature and validity-period checks are not made here: the caller delegates those
/// to a WebPKI verifier built from the bundle of the returned ID's trust domain.
pub fn leaf_spiffe_id(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| SvidError::Malformed)?;
    spiffe_id_of(&cert)
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|_| SvidError::BadExtension)?;
    let mut uris = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        });
    let uri = uris.next().ok_or(SvidError::NoSpiffeId)?;
    if uris.next().is_some() {
        return Err(SvidError::SeveralUris);
    }
    let id = SpiffeId::new(uri).map_err(SvidError::BadSpiffeId)?;

    if let Some(bc) = cert
        .basic_constraints()
        .map_err(|_| SvidError::BadExtension)?
        && bc.value.ca
    {
        return Err(SvidError::IsCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|_| SvidError::BadExtension)?
        .ok_or(SvidError::NoDigitalSignature)?;
    if !ku.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::SigningKeyUsage);
    }
    // Checked after the CA rules, so that a CA certificate (whose ID is its trust domain's)
    // is refused for what it is.
    if id.path().is_empty() {
        return Err(SvidError::TrustDomainId(id.to_string()));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType};

    use super::*;

    fn cert(
        uris: &[&str],
        ca: bool,
        usages: Vec<KeyUsagePurpose>,
    ) -> rustls_pki_types::CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        params.is_ca = if ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = usages;
        params
            .self_signed(&KeyPair::generate().unwrap())
            .unwrap()
            .der()
            .clone()
    }

    const ID: &str = "spiffe://example.org/ns/kyc/sa/onboarding";

    #[test]
    fn accepts_a_workload_svid() {
        let der = cert(&[ID], false, vec![KeyUsagePurpose::DigitalSignature]);
        assert_eq!(leaf_spiffe_id(&der).unwrap().as_str(), ID);
    }

    #[test]
    fn refuses_what_the_x509_svid_rules_forbid_in_a_leaf() {
        let sig = || vec![KeyUsagePurpose::DigitalSignature];
        for (der, why) in [
            (cert(&[], false, sig()), SvidError::NoSpiffeId),
            (
                cert(&[ID, "spiffe://example.org/b"], false, sig()),
                SvidError::SeveralUris,
            ),
            (
                cert(&["spiffe://Example.org/a"], false, sig()),
                SvidError::BadSpiffeId(SpiffeIdError::BadTrustDomainChar),
            ),
            (
                cert(&["spiffe://example.org"], false, sig()),
                SvidError::TrustDomainId("spiffe://example.org".to_owned()),
            ),
            (cert(&[ID], true, sig()), SvidError::IsCa),
            (
                cert(
                    &["spiffe://example.org"],
                    true,
                    vec![KeyUsagePurpose::KeyCertSign],
                ),
                SvidError::IsCa,
            ),
            (
                cert(&[ID], false, Vec::new()),
                SvidError::NoDigitalSignature,
            ),
            (
                cert(&[ID], false, vec![KeyUsagePurpose::KeyEncipherment]),
                SvidError::NoDigitalSignature,
            ),
            (
                cert(
                    &[ID],
                    false,
                    vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign],
                ),
                SvidError::SigningKeyUsage,
            ),
        ] {
            assert_eq!(leaf_spiffe_id(&der).unwrap_err(), why);
            // One parse tells the same: the refusal, and the expiry all the same.
            let (id, expiry) = leaf_facts(&der);
            assert_eq!(id.unwrap_err(), why);
            assert_eq!(expiry, not_after(&der));
            assert!(expiry.is_some());
        }
    }

    #[test]
    fn one_parse_gives_the_leafs_spiffe_id_and_expiry() {
        let der = cert(&[ID], false, vec![KeyUsagePurpose::DigitalSignature]);
        let (id, expiry) = leaf_facts(&der);
        assert_eq!(id.unwrap().as_str(), ID);
        assert_eq!(expiry, not_after(&der));
        assert!(expiry.is_some());
        let (id, expiry) = leaf_facts(b"not a certificate");
        assert_eq!(id.unwrap_err(), SvidError::Malformed);
        assert_eq!(expiry, None);
    }
}
