//! A test PKI for one trust domain: a self-signed CA issuing X.509-SVIDs in memory, with
//! PEM output for clients that read files (curl, Python, the gateway's file sources).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use spiffe::{SpiffeId, TrustDomain};
use time::OffsetDateTime;

use crate::files::{pem_block, write_atomically};

/// Why test material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("invalid trust domain name {name:?}: {reason}")]
    TrustDomain { name: String, reason: String },
    #[error("invalid SPIFFE ID {id:?}: {reason}")]
    SpiffeId { id: String, reason: String },
    #[error("{id} is not in trust domain {trust_domain}")]
    ForeignId { id: String, trust_domain: String },
    #[error("SPIFFE ID {0} has no path; an SVID names a workload, not a trust domain")]
    NoPath(String),
    #[error("validity {0:?} does not fit a certificate")]
    Validity(Duration),
    #[error("time {0:?} does not fit a certificate")]
    Time(SystemTime),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Parses a trust domain name (`example.org`) or its SPIFFE ID (`spiffe://example.org`).
pub(crate) fn trust_domain(name: &str) -> Result<TrustDomain, PkiError> {
    TrustDomain::new(name).map_err(|e| PkiError::TrustDomain {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn spiffe_id(id: &str) -> Result<SpiffeId, PkiError> {
    SpiffeId::new(id).map_err(|e| PkiError::SpiffeId {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

fn validity_end(ttl: Duration) -> Result<OffsetDateTime, PkiError> {
    time::Duration::try_from(ttl)
        .ok()
        .and_then(|ttl| OffsetDateTime::now_utc().checked_add(ttl))
        .ok_or(PkiError::Validity(ttl))
}

fn certificate_time(t: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let secs = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).ok(),
        Err(before) => i64::try_from(before.duration().as_secs()).ok().map(|s| -s),
    };
    secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or(PkiError::Time(t))
}

/// Certificates are valid from a little in the past, so a peer whose clock runs slightly
/// behind does not refuse a certificate issued a moment ago.
fn validity_start() -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::minutes(5)
}

/// The CA of one trust domain. Each `TestCa::new` makes a new key, so calling it again for
/// the same trust domain gives a rotated CA whose SVIDs the old bundle does not verify.
///
/// [`TestCa::intermediate`] makes an intermediate CA under it: its SVIDs carry the
/// intermediate in their chain and verify against the same root bundle.
pub struct TestCa {
    trust_domain: TrustDomain,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// For an intermediate: its own certificate, then its parents' up to (not including)
    /// the root. Empty for a root.
    intermediates: Vec<CertificateDer<'static>>,
    root: CertificateDer<'static>,
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The CA's signing key stays out of Debug output.
        f.debug_struct("TestCa")
            .field("trust_domain", &self.trust_domain.as_str())
            .field("intermediate", &!self.intermediates.is_empty())
            .finish_non_exhaustive()
    }
}

/// CAs live ten days: longer than any test, short enough to look like a real one.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 24 * 3600);

fn ca_params(td: &TrustDomain, cn: &str) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // The trust domain's own SPIFFE ID, as SPIRE puts on its CAs.
    params.subject_alt_names = vec![SanType::URI(td.id_string().as_str().try_into()?)];
    params.not_before = validity_start();
    params.not_after = validity_end(CA_VALIDITY)?;
    Ok(params)
}

impl TestCa {
    /// A self-signed root CA for `trust_domain` (`example.org`), valid for ten days.
    pub fn new(trust_domain: &str) -> Result<Self, PkiError> {
        let td = self::trust_domain(trust_domain)?;
        let params = ca_params(&td, &format!("{} test CA", td.as_str()))?;
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let root = issuer.der().clone();
        Ok(Self {
            trust_domain: td,
            issuer,
            intermediates: Vec::new(),
            root,
        })
    }

    /// An intermediate CA of the same trust domain, signed by this one.
    pub fn intermediate(&self) -> Result<Self, PkiError> {
        let depth = self.intermediates.len() + 1;
        let params = ca_params(
            &self.trust_domain,
            &format!(
                "{} test intermediate CA {depth}",
                self.trust_domain.as_str()
            ),
        )?;
        let issuer = CertifiedIssuer::signed_by(params, KeyPair::generate()?, &self.issuer)?;
        let mut intermediates = vec![issuer.der().clone()];
        intermediates.extend(self.intermediates.iter().cloned());
        Ok(Self {
            trust_domain: self.trust_domain.clone(),
            issuer,
            intermediates,
            root: self.root.clone(),
        })
    }

    /// The trust domain name (`example.org`).
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_str()
    }

    /// This CA's own certificate (for an intermediate, not the root).
    pub fn cert(&self) -> &CertificateDer<'static> {
        self.issuer.der()
    }

    /// The trust bundle: the root CA certificate, as the Workload API and bundle files
    /// carry it.
    pub fn bundle(&self) -> Vec<CertificateDer<'static>> {
        vec![self.root.clone()]
    }

    /// The trust bundle as PEM.
    pub fn bundle_pem(&self) -> String {
        pem_block("CERTIFICATE", self.root.as_ref())
    }

    /// Writes the trust bundle as PEM to `path` (atomically, mode 0644).
    pub fn write_bundle_pem(&self, path: &Path) -> std::io::Result<()> {
        write_atomically(path, self.bundle_pem().as_bytes(), false)
    }

    /// Issues an X.509-SVID for `spiffe_id`, valid from a few minutes ago for `ttl`.
    ///
    /// The certificate carries the SPIFFE ID as its only URI SAN, the DNS SAN `localhost`
    /// and the IP SAN 127.0.0.1 (so it also serves as a loopback server certificate), and
    /// the extended key usages serverAuth and clientAuth. The chain holds the leaf, then
    /// this CA's intermediates, never the root.
    pub fn svid(&self, spiffe_id: &str, ttl: Duration) -> Result<Svid, PkiError> {
        self.svid_valid(spiffe_id, validity_start(), validity_end(ttl)?)
    }

    /// Issues an X.509-SVID valid from `not_before` to `not_after`, for SVIDs that are
    /// expired or not yet valid.
    pub fn svid_with_validity(
        &self,
        spiffe_id: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Svid, PkiError> {
        self.svid_valid(
            spiffe_id,
            certificate_time(not_before)?,
            certificate_time(not_after)?,
        )
    }

    fn svid_valid(
        &self,
        spiffe_id: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Svid, PkiError> {
        let id = self::spiffe_id(spiffe_id)?;
        if id.trust_domain() != &self.trust_domain {
            return Err(PkiError::ForeignId {
                id: id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        if id.path().is_empty() {
            return Err(PkiError::NoPath(id.to_string()));
        }
        let id = id.to_string();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&id);
        params.subject_alt_names = vec![
            SanType::URI(id.as_str().try_into()?),
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        // X509-SVID §4.3: a leaf has digitalSignature and never keyCertSign or cRLSign.
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.intermediates.iter().cloned());
        Ok(Svid {
            spiffe_id: id,
            chain,
            key_pkcs8: key.serialize_der(),
        })
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "idgate test PKI");
    dn.push(DnType::CommonName, cn);
    dn
}

/// An X.509-SVID and its private key.
#[derive(Clone)]
pub struct Svid {
    /// The SPIFFE ID in the leaf's URI SAN.
    pub spiffe_id: String,
    /// The certificate chain, leaf first (intermediates, if any, follow; never the root).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS#8 DER, unencrypted.
    pub key_pkcs8: Vec<u8>,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// The chain as concatenated DER, as the Workload API's `x509_svid` field carries it.
    pub fn chain_der(&self) -> Vec<u8> {
        concat_der(&self.chain)
    }

    /// The chain as PEM, leaf first.
    pub fn cert_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c.as_ref()))
            .collect()
    }

    /// The private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        pem_block("PRIVATE KEY", &self.key_pkcs8)
    }

    /// Writes `{name}.crt` (the chain, mode 0644) and `{name}.key` (mode 0600) into `dir`,
    /// each atomically, and returns their paths.
    pub fn write_pem(&self, dir: &Path, name: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write_atomically(&cert, self.cert_pem().as_bytes(), false)?;
        write_atomically(&key, self.key_pem().as_bytes(), true)?;
        Ok((cert, key))
    }
}

/// Concatenated ASN.1 DER, the Workload API's encoding of certificate lists.
pub(crate) fn concat_der(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    certs
        .iter()
        .flat_map(|c| c.as_ref().iter().copied())
        .collect()
}
