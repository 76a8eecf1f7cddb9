//! The client-certificate verifier for SPIFFE mutual TLS.
//!
//! Each trust domain has its own bundle. A presented leaf is first checked against the
//! X509-SVID rules ([`crate::svid`]) to learn its SPIFFE ID; the chain is then verified by a
//! WebPKI verifier built from the bundle of *that ID's trust domain only*, so a CA trusted for
//! one trust domain can never vouch for an identity in another.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::spiffe::TrustDomain;
use crate::svid::{SvidError, leaf_spiffe_id};
use crate::verified::{ChainKey, VerifiedChains};

impl Borrow<str> for TrustDomain {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// Why a client certificate was refused, as carried inside the rustls error.
#[derive(thiserror::Error)]
pub enum PeerRefusal {
    #[error("not an X.509-SVID: {0}")]
    NotSvid(#[from] SvidError),
    #[error("trust domain {0} is not configured")]
    UnknownTrustDomain(String),
}

/// The sentence, not the variant names: rustls shows a custom certificate error with `{:?}`
/// (`invalid peer certificate: Other(OtherError(..))`), and that is the line an operator
/// reads to learn why a handshake was refused.
impl std::fmt::Debug for PeerRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The verifiers of every configured trust domain, swapped as a whole on reload.
///
/// It also remembers the chains that verified against it ([`crate::verified`]): a new
/// value, built whenever any bundle changes, starts with an empty memory.
#[derive(Default)]
pub struct TrustBundles {
    by_domain: HashMap<TrustDomain, Arc<dyn ClientCertVerifier>>,
    verified: VerifiedChains,
}

impl TrustBundles {
    /// Builds the set from each trust domain's root store.
    pub fn new(
        roots: impl IntoIterator<Item = (TrustDomain, Arc<RootCertStore>)>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, Error> {
        let mut by_domain = HashMap::new();
        for (td, store) in roots {
            by_domain.insert(td, build_domain_verifier(store, provider)?);
        }
        Ok(Self::from_map(by_domain))
    }

    pub(crate) fn from_map(by_domain: HashMap<TrustDomain, Arc<dyn ClientCertVerifier>>) -> Self {
        Self {
            by_domain,
            verified: VerifiedChains::default(),
        }
    }

    pub(crate) fn get(&self, trust_domain: &str) -> Option<&Arc<dyn ClientCertVerifier>> {
        self.by_domain.get(trust_domain)
    }

    pub(crate) fn map(&self) -> &HashMap<TrustDomain, Arc<dyn ClientCertVerifier>> {
        &self.by_domain
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.by_domain.keys()
    }
}

pub(crate) fn build_domain_verifier(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, Error> {
    WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| Error::General(format!("cannot build a verifier for the bundle: {e}")))
}

/// A rustls client verifier that accepts only SPIFFE X.509-SVIDs of configured trust domains.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<ArcSwap<TrustBundles>>,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl std::fmt::Debug for TrustBundles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_domain.keys()).finish()
    }
}

impl SpiffeClientVerifier {
    /// `mandatory`: refuse the handshake of a client that presents no certificate.
    pub fn new(
        bundles: Arc<ArcSwap<TrustBundles>>,
        provider: Arc<CryptoProvider>,
        mandatory: bool,
    ) -> Self {
        Self {
            bundles,
            provider,
            mandatory,
        }
    }
}

fn refuse(why: PeerRefusal) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(why))))
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: SVID clients present their one SVID whatever the hints say, and a long
        // list of CA names would only tell a scanner which trust domains we accept.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let bundles = self.bundles.load();
        let key = ChainKey::of(end_entity, intermediates);
        if bundles.verified.holds(&key, now) {
            return Ok(ClientCertVerified::assertion());
        }
        let id = leaf_spiffe_id(end_entity).map_err(|e| refuse(e.into()))?;
        let Some(verifier) = bundles.get(id.trust_domain_name()) else {
            return Err(refuse(PeerRefusal::UnknownTrustDomain(
                id.trust_domain_name().to_owned(),
            )));
        };
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        bundles
            .verified
            .remember(key, end_entity, intermediates, now);
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;
