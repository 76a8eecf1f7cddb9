//! X.509-SVID leaf checks of the SPIFFE X509-SVID specification that a generic chain
//! verifier does not make: one URI SAN holding a valid SPIFFE ID, not a CA, and key usage
//! fit for a workload (digitalSignature, never keyCertSign or cRLSign).

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
    #[error("the certificate is a CA certificate and cannot be used as a leaf SVID")]
    IsCa,
    #[error("the certificate has no key usage extension with digitalSignature")]
    NoDigitalSignature,
    #[error("a leaf SVID must not have the keyCertSign or cRLSign key usage")]
    SigningKeyUsage,
    #[error("the certificate has a duplicate or unreadable extension")]
    BadExtension,
}

/// Checks a leaf certificate against the X509-SVID rules and returns its SPIFFE ID.
///
/// Chain, signature and validity-period checks are not made here: the caller delegates those
/// to a WebPKI verifier built from the bundle of the returned ID's trust domain.
pub fn leaf_spiffe_id(der: &[u8]) -> Result<SpiffeId, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| SvidError::Malformed)?;
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
    Ok(id)
}
