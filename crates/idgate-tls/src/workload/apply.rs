//! Taking a Workload API update into the TLS material: the default SVID when it changed,
//! and exactly the trust domains the update lists, rebuilding only the verifiers of bundles
//! whose certificates changed (an SVID rotation resends every bundle unchanged).
//!
//! Each update is complete and authoritative, so it fails closed for trust: a trust domain
//! whose bundle is empty (SPIRE sends a federated bundle without CAs as empty bytes) or
//! cannot be used is not trusted, even if an earlier update gave it a usable one. Keeping
//! the earlier one would keep trusting a CA the agent has withdrawn, a compromised one
//! included. An unusable SVID, by contrast, leaves the one in use: serving an older SVID
//! of the gateway's own grants nobody anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use ::spiffe::X509Context;
use rustls::RootCertStore;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{JwtBundleSet, WorkloadStatus};
use crate::material::TlsMaterial;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{leaf_spiffe_id, not_after};
use crate::verifier::build_domain_verifier;

/// A trust domain's bundle as last taken into use.
struct Held {
    certs: Vec<Vec<u8>>,
    verifier: Arc<dyn ClientCertVerifier>,
    expiry: Option<SystemTime>,
}

pub(super) struct Applier {
    material: Arc<TlsMaterial>,
    status: Arc<WorkloadStatus>,
    /// The chain of the SVID in use (DER, leaf first).
    chain: Vec<Vec<u8>>,
    svid_expiry: Option<SystemTime>,
    bundles: HashMap<TrustDomain, Held>,
    /// The SVID to present, by the hint of its registration entry; the default (first) one
    /// without.
    hint: Option<String>,
    /// The trust domain of the SVID in use, to say when the gateway's own one is lost.
    own: Option<TrustDomain>,
}

impl Applier {
    pub(super) fn new(
        material: Arc<TlsMaterial>,
        status: Arc<WorkloadStatus>,
        hint: Option<String>,
    ) -> Self {
        Self {
            material,
            status,
            chain: Vec::new(),
            svid_expiry: None,
            bundles: HashMap::new(),
            hint,
            own: None,
        }
    }

    /// When the SVID in use expires, as an RFC 3339 date for the log.
    pub(super) fn svid_expiry(&self) -> Option<String> {
        let t = self.svid_expiry?;
        let t = time::OffsetDateTime::from(t);
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    }

    pub(super) fn apply(&mut self, context: &X509Context) {
        self.apply_svid(context);
        self.apply_bundles(context);
    }

    fn refused(&self, what: &str, why: impl std::fmt::Display) {
        self.status.refused_updates.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            reason = %why,
            "{what} from the SPIFFE Workload API refused; the one in use stays"
        );
    }

    fn apply_svid(&mut self, context: &X509Context) {
        let chosen = match &self.hint {
            None => context.default_svid(),
            Some(hint) => context
                .svids()
                .iter()
                .find(|s| s.hint() == Some(hint.as_str())),
        };
        let Some(svid) = chosen else {
            let why = match &self.hint {
                None => "it holds no SVID".to_owned(),
                Some(hint) => format!(
                    "none of its {} SVIDs has the hint \"{hint}\" (svid_hint)",
                    context.svids().len()
                ),
            };
            return self.refused("an X.509 context", why);
        };
        let chain: Vec<Vec<u8>> = svid
            .cert_chain()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        if chain == self.chain {
            return;
        }
        match certified_key(
            &chain,
            svid.private_key().as_bytes(),
            self.material.provider(),
        ) {
            Ok((key, id, until)) => {
                self.material.install_svid(key);
                self.chain = chain;
                self.svid_expiry = Some(until);
                self.own = Some(id.trust_domain());
                let first = self.status.svid_updates.fetch_add(1, Ordering::Relaxed) == 0;
                tracing::info!(
                    spiffe_id = %id,
                    valid_until = %self.svid_expiry().unwrap_or_default(),
                    "{}",
                    if first {
                        "SVID received from the SPIFFE Workload API"
                    } else {
                        "SVID rotated by the SPIFFE Workload API: new handshakes present it"
                    }
                );
            }
            Err(why) => self.refused("an SVID", why),
        }
    }

    fn apply_bundles(&mut self, context: &X509Context) {
        let mut next = HashMap::new();
        let mut changed = false;
        for (td, bundle) in context.bundle_set().iter() {
            let Ok(td) = TrustDomain::new(td.as_str()) else {
                self.refused("a bundle", format!("\"{td}\" is not a trust domain"));
                continue;
            };
            let certs: Vec<Vec<u8>> = bundle
                .authorities()
                .iter()
                .map(|c| c.as_bytes().to_vec())
                .collect();
            let was_trusted = match self.bundles.remove(&td) {
                Some(held) if held.certs == certs => {
                    next.insert(td, held);
                    continue;
                }
                held => held.is_some(),
            };
            if certs.is_empty() {
                // The agent holds no CA for it: none is trusted, as if it were not listed.
                if was_trusted {
                    self.untrusted(
                        &td,
                        "the SPIFFE Workload API sent its bundle without any CA",
                    );
                    changed = true;
                } else {
                    tracing::debug!(trust_domain = %td, "empty trust bundle from the SPIFFE Workload API: not trusted");
                }
                continue;
            }
            match verifier(&certs, &self.material) {
                Ok(v) => {
                    if !was_trusted {
                        tracing::info!(trust_domain = %td, "trust bundle added by the SPIFFE Workload API");
                    }
                    next.insert(td, v);
                    changed = true;
                }
                Err(why) => {
                    self.status.refused_updates.fetch_add(1, Ordering::Relaxed);
                    self.untrusted(
                        &td,
                        &format!("its bundle from the SPIFFE Workload API cannot be used: {why}"),
                    );
                    changed |= was_trusted;
                }
            }
        }
        for td in self.bundles.keys() {
            tracing::info!(trust_domain = %td, "trust bundle removed by the SPIFFE Workload API: its workloads are no longer trusted");
            changed = true;
        }
        self.bundles = next;
        if changed {
            self.material.install_bundles(
                self.bundles
                    .iter()
                    .map(|(td, h)| (td.clone(), h.verifier.clone(), h.expiry))
                    .collect(),
            );
            self.status.bundle_updates.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Says that `td` is not trusted (any longer) and why.
    fn untrusted(&self, td: &TrustDomain, why: &str) {
        if self.own.as_ref() == Some(td) {
            // Failing closed costs the gateway every caller of its own trust domain; keeping
            // CAs the agent no longer vouches for would let a withdrawn CA's workloads in.
            tracing::error!(
                trust_domain = %td,
                reason = why,
                "the gateway's own trust domain is no longer trusted: its callers are refused \
                 until the SPIFFE Workload API sends a usable bundle"
            );
        } else {
            tracing::warn!(
                trust_domain = %td,
                reason = why,
                "trust domain not trusted: its workloads are refused until the SPIFFE \
                 Workload API sends a usable bundle"
            );
        }
    }
}

/// The signing identity of an SVID, its SPIFFE ID and `notAfter`; refuses an expired leaf,
/// a leaf without a SPIFFE ID and a key that does not fit.
fn certified_key(
    chain: &[Vec<u8>],
    key: &[u8],
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Result<(CertifiedKey, SpiffeId, SystemTime), String> {
    let certs: Vec<CertificateDer<'static>> = chain
        .iter()
        .map(|c| CertificateDer::from(c.clone()))
        .collect();
    let leaf = certs.first().ok_or("the SVID has no certificate")?;
    let id = leaf_spiffe_id(leaf).map_err(|e| e.to_string())?;
    let until = not_after(leaf).ok_or("the leaf certificate cannot be read")?;
    if until <= SystemTime::now() {
        return Err(format!("the SVID of {id} has expired"));
    }
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec()));
    // The error never includes key bytes.
    let certified = CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| format!("the SVID's key does not fit its certificate: {e}"))?;
    Ok((certified, id, until))
}

fn verifier(certs: &[Vec<u8>], material: &TlsMaterial) -> Result<Held, String> {
    let mut store = RootCertStore::empty();
    for c in certs {
        store
            .add(CertificateDer::from(c.clone()))
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    if store.is_empty() {
        return Err("the bundle holds no CA certificate".to_owned());
    }
    let expiry = certs
        .iter()
        .filter_map(|c| not_after(&CertificateDer::from(c.as_slice())))
        .max();
    let verifier =
        build_domain_verifier(Arc::new(store), material.provider()).map_err(|e| e.to_string())?;
    Ok(Held {
        certs: certs.to_vec(),
        verifier,
        expiry,
    })
}

/// A JWT bundle set as JWKS JSON per trust domain.
pub(super) fn jwt_bundle_set(set: &::spiffe::JwtBundleSet) -> Result<JwtBundleSet, String> {
    let mut out = JwtBundleSet::new();
    for (td, bundle) in set.iter() {
        let td = TrustDomain::new(td.as_str()).map_err(|e| format!("{td}: {e}"))?;
        let mut json = b"{\"keys\":[".to_vec();
        for (n, authority) in bundle.jwt_authorities().enumerate() {
            if n > 0 {
                json.push(b',');
            }
            json.extend_from_slice(authority.jwk_json());
        }
        json.extend_from_slice(b"]}");
        out.insert(td, json);
    }
    Ok(out)
}
