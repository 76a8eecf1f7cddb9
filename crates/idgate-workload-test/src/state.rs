//! What the agent currently tells its workloads: the X.509 identities and bundles, the JWT
//! bundles and signing authorities, and how each becomes a Workload API response.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use spiffe::SpiffeId;

use crate::jwt::JwtAuthority;
use crate::pb::workload::{X509BundlesResponse, X509svid, X509svidResponse};
use crate::pki::{Svid, TestCa, concat_der};

/// One identity the agent issues to the workload: an X.509-SVID, its private key and the
/// bundle of its trust domain (one `X509SVID` message).
#[derive(Clone, Debug)]
pub struct X509Identity {
    /// The `spiffe_id` field. [`X509Identity::new`] takes it from the SVID; a test may set
    /// another to play a non-conforming agent.
    pub spiffe_id: String,
    pub svid: Svid,
    /// The trust bundle of the SVID's trust domain.
    pub bundle: Vec<CertificateDer<'static>>,
    /// The optional operator hint (`internal`, `external`); empty for none.
    pub hint: String,
}

impl X509Identity {
    pub fn new(svid: Svid, bundle: Vec<CertificateDer<'static>>) -> Self {
        Self {
            spiffe_id: svid.spiffe_id.clone(),
            svid,
            bundle,
            hint: String::new(),
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = hint.into();
        self
    }

    fn to_message(&self) -> X509svid {
        X509svid {
            spiffe_id: self.spiffe_id.clone(),
            x509_svid: self.svid.chain_der(),
            x509_svid_key: self.svid.key_pkcs8.clone(),
            bundle: concat_der(&self.bundle),
            hint: self.hint.clone(),
        }
    }
}

/// The full X.509 state the agent streams: its identities (the first is the default one,
/// Workload API §8) and the bundles of federated trust domains.
///
/// It is sent as it is: an empty `identities` list gives the malformed response a
/// non-conforming agent would send, which a client must refuse.
#[derive(Clone, Debug, Default)]
pub struct X509State {
    pub identities: Vec<X509Identity>,
    /// Foreign trust domain (`other.org` or `spiffe://other.org`) → its CA certificates.
    pub federated: BTreeMap<String, Vec<CertificateDer<'static>>>,
}

impl X509State {
    /// A state with `default` as the only (hence default) identity and no federation.
    pub fn new(default: X509Identity) -> Self {
        Self {
            identities: vec![default],
            federated: BTreeMap::new(),
        }
    }

    /// The common case: one SVID issued by `ca`, with `ca`'s bundle.
    pub fn issued_by(ca: &TestCa, svid: Svid) -> Self {
        Self::new(X509Identity::new(svid, ca.bundle()))
    }

    /// Adds a further, non-default identity.
    pub fn with_identity(mut self, identity: X509Identity) -> Self {
        self.identities.push(identity);
        self
    }

    /// Adds (or replaces) the bundle of a federated trust domain.
    pub fn with_federated(
        mut self,
        trust_domain: &str,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Self {
        self.federated.insert(trust_domain.to_owned(), bundle);
        self
    }

    pub(crate) fn svid_response(&self) -> X509svidResponse {
        X509svidResponse {
            svids: self
                .identities
                .iter()
                .map(X509Identity::to_message)
                .collect(),
            crl: Vec::new(),
            federated_bundles: self
                .federated
                .iter()
                .map(|(td, certs)| (trust_domain_key(td), concat_der(certs)))
                .collect(),
        }
    }

    /// Every bundle the workload should trust: those of its own identities' trust domains
    /// and the federated ones, keyed by trust domain ID.
    pub(crate) fn bundles_response(&self) -> X509BundlesResponse {
        let mut bundles = HashMap::new();
        for identity in &self.identities {
            // An identity a test gave an invalid SPIFFE ID names no trust domain: its
            // bundle cannot be keyed, so it is left out.
            if let Ok(id) = SpiffeId::new(&identity.spiffe_id) {
                bundles.insert(id.trust_domain().id_string(), concat_der(&identity.bundle));
            }
        }
        for (td, certs) in &self.federated {
            bundles.insert(trust_domain_key(td), concat_der(certs));
        }
        X509BundlesResponse {
            crl: Vec::new(),
            bundles,
        }
    }
}

/// Bundle maps are keyed by the trust domain's SPIFFE ID (`spiffe://example.org`), as the
/// proto's comments say and SPIRE sends; a bare name is given its scheme.
pub(crate) fn trust_domain_key(name: &str) -> String {
    if name.starts_with("spiffe://") {
        name.to_owned()
    } else {
        format!("spiffe://{name}")
    }
}

/// Whether the agent has an identity for the caller.
#[derive(Clone, Debug)]
pub(crate) enum Identity {
    /// Nothing set yet: like a SPIRE agent still minting the SVIDs of a registered
    /// workload, streams stay open and silent until an identity or a refusal is set.
    Pending,
    /// No registration entry matches the caller: PermissionDenied.
    Denied,
    Issued(Arc<X509State>),
}

/// The agent's whole state, shared with every open stream through a watch channel.
#[derive(Debug)]
pub(crate) struct AgentState {
    pub(crate) identity: Identity,
    /// Bumped by every X.509 change, so each open stream pushes each change once.
    pub(crate) x509_generation: u64,
    /// Trust domain ID → JWKS; `None` until set.
    pub(crate) jwt_bundles: Option<Arc<BTreeMap<String, Vec<u8>>>>,
    pub(crate) jwt_generation: u64,
    /// Trust domain ID → the authority minting that trust domain's JWT-SVIDs.
    pub(crate) jwt_authorities: BTreeMap<String, Arc<JwtAuthority>>,
    pub(crate) jwt_svid_ttl: Duration,
    /// Set by shutdown: open streams end with Unavailable.
    pub(crate) stopping: bool,
}

/// The lifetime of minted JWT-SVIDs unless a test sets another.
pub(crate) const DEFAULT_JWT_SVID_TTL: Duration = Duration::from_secs(300);

impl Default for AgentState {
    fn default() -> Self {
        Self {
            identity: Identity::Pending,
            x509_generation: 0,
            jwt_bundles: None,
            jwt_generation: 0,
            jwt_authorities: BTreeMap::new(),
            jwt_svid_ttl: DEFAULT_JWT_SVID_TTL,
            stopping: false,
        }
    }
}
