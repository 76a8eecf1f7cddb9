//! The JWT-SVID signing keys of trust domains, read from SPIFFE bundles (SPIFFE Trust Domain
//! and Bundle §4, JWT-SVID §6): a bundle is a JWKS whose entries each say which kind of SVID
//! they authenticate in `use`. Only `"use": "jwt-svid"` entries are read; `x509-svid`
//! entries, unknown uses and key types we do not verify are skipped, as the specification
//! requires of consumers. A bundle with no JWT-SVID key is valid: its trust domain has
//! revoked its keys (or publishes none), and every JWT-SVID it issued is refused.
//!
//! The Workload API's `FetchJWTBundles` is the exception: what it delivers are the JWT
//! authorities alone, and SPIRE's agent sends them as plain JWKs, without `use`
//! (`bundleutil.Marshal` with `StandardJWKS`). There a key without `use` is a JWT-SVID key;
//! one whose `use` names anything else is still skipped.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use idgate_tls::TrustDomain;
use serde_json::Value;

use crate::jwt::JwkError;
use crate::jwt::json;
use crate::jwt::jwk::{Jwk, VerifyingKey};
use crate::jwt::jwks::KeySet;

/// The largest bundle document read. Real ones are a few KiB (a handful of keys and CA
/// certificates); more is a mistake or an attempt to make the gateway parse a large file.
pub const MAX_BUNDLE_BYTES: usize = 1024 * 1024;

/// The `use` of a JWT-SVID signing key in a SPIFFE bundle (JWT-SVID §6.1).
const JWT_SVID_USE: &str = "jwt-svid";

/// Why a bundle document cannot be used. The messages name keys by position and `kid`,
/// never their material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtBundleError {
    #[error("the bundle is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge,
    #[error("the bundle is not a JSON object (or names a member twice)")]
    NotAnObject,
    #[error("the bundle has no \"keys\" array")]
    NoKeysArray,
    #[error("spiffe_sequence must be a non-negative integer")]
    BadSequence,
    #[error("keys[{index}]: a jwt-svid key must have a kid (JWT-SVID §6.1)")]
    MissingKid { index: usize },
    #[error("keys[{index}]: the kid {kid:?} is used by another jwt-svid key")]
    DuplicateKid { index: usize, kid: String },
    #[error("keys[{index}]: not a valid JWK: {reason}")]
    MalformedKey { index: usize, reason: String },
    #[error("keys[{index}] (kid {kid:?}): {source}")]
    Key {
        index: usize,
        kid: String,
        source: JwkError,
    },
}

/// One trust domain's JWT-SVID signing keys.
#[derive(Debug)]
pub struct JwtBundle {
    trust_domain: TrustDomain,
    keys: KeySet,
    sequence: Option<u64>,
}

/// Where a bundle document comes from, which decides what a key without `use` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// A SPIFFE bundle (a file, a bundle endpoint): `use` says which SVID a key is for.
    Bundle,
    /// The Workload API's JWT bundles: JWT authorities only, `use` often left out.
    WorkloadApi,
}

impl JwtBundle {
    /// Reads a SPIFFE bundle (a JWKS) of `trust_domain`, as found in a bundle file: only
    /// keys whose `use` is `jwt-svid` are read.
    pub fn parse(trust_domain: TrustDomain, json_bytes: &[u8]) -> Result<Self, JwtBundleError> {
        Self::parse_from(trust_domain, json_bytes, Source::Bundle)
    }

    /// Reads a trust domain's JWT bundle as the Workload API delivers it: a key without
    /// `use` is a JWT-SVID key (see the module's note).
    pub fn parse_workload_api(
        trust_domain: TrustDomain,
        json_bytes: &[u8],
    ) -> Result<Self, JwtBundleError> {
        Self::parse_from(trust_domain, json_bytes, Source::WorkloadApi)
    }

    fn parse_from(
        trust_domain: TrustDomain,
        json_bytes: &[u8],
        source: Source,
    ) -> Result<Self, JwtBundleError> {
        if json_bytes.len() > MAX_BUNDLE_BYTES {
            return Err(JwtBundleError::TooLarge);
        }
        let doc = json::object(json_bytes).ok_or(JwtBundleError::NotAnObject)?;
        let sequence = match doc.get("spiffe_sequence") {
            None => None,
            Some(Value::Number(n)) => Some(n.as_u64().ok_or(JwtBundleError::BadSequence)?),
            Some(_) => return Err(JwtBundleError::BadSequence),
        };
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(JwtBundleError::NoKeysArray);
        };
        let mut keys: Vec<VerifyingKey> = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            // Bundle §4.2.2: a missing or unknown `use` means the entry is not ours to read;
            // from the Workload API, a missing one means a JWT authority.
            let ours = match entry.get("use") {
                None => source == Source::WorkloadApi,
                Some(use_) => use_.as_str() == Some(JWT_SVID_USE),
            };
            if !ours {
                continue;
            }
            let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| {
                JwtBundleError::MalformedKey {
                    index,
                    reason: e.to_string(),
                }
            })?;
            let kid = match jwk.kid.as_deref() {
                Some(k) if !k.is_empty() => k.to_owned(),
                _ => return Err(JwtBundleError::MissingKid { index }),
            };
            // `use` says which SVID the key is for; as a JWK it is a signature key.
            let as_signing_key = Jwk { use_: None, ..jwk };
            match VerifyingKey::from_jwk(&as_signing_key) {
                Ok(key) if key.is_ed25519() => {
                    // JWT-SVID §2.1 has no EdDSA: such a key can never verify an SVID.
                    tracing::debug!(trust_domain = %trust_domain, kid, "skipping an Ed25519 jwt-svid key: EdDSA is not a JWT-SVID algorithm");
                }
                Ok(key) => {
                    if keys.iter().any(|k| k.kid.as_deref() == Some(kid.as_str())) {
                        return Err(JwtBundleError::DuplicateKid { index, kid });
                    }
                    keys.push(key);
                }
                // Bundle §4.2.1: key types (and curves) we do not understand are skipped.
                Err(
                    why @ (JwkError::UnsupportedKeyType(_)
                    | JwkError::UnsupportedEcCurve
                    | JwkError::UnsupportedOkpCurve
                    | JwkError::UnsupportedAlgorithm(_)),
                ) => {
                    tracing::debug!(trust_domain = %trust_domain, kid, %why, "skipping a jwt-svid key");
                }
                Err(source) => return Err(JwtBundleError::Key { index, kid, source }),
            }
        }
        if keys.is_empty() && !entries.is_empty() {
            // Keys were sent and none can be used: a mistake worth seeing, not a revocation.
            tracing::warn!(trust_domain = %trust_domain, keys = entries.len(), "the bundle has no usable jwt-svid key: JWT-SVIDs of this trust domain are refused");
        } else if keys.is_empty() {
            tracing::debug!(trust_domain = %trust_domain, "the bundle has no jwt-svid key: JWT-SVIDs of this trust domain are refused");
        }
        Ok(Self {
            trust_domain,
            keys: KeySet::new(keys, sequence.unwrap_or(0)),
            sequence,
        })
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The bundle's `spiffe_sequence`, when it has one.
    pub fn sequence(&self) -> Option<u64> {
        self.sequence
    }

    /// How many JWT-SVID keys the bundle holds.
    pub fn len(&self) -> usize {
        self.keys.keys.len()
    }

    /// Whether the trust domain has no JWT-SVID key (then its SVIDs are all refused).
    pub fn is_empty(&self) -> bool {
        self.keys.keys.is_empty()
    }

    /// The `kid`s of the keys, in bundle order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys.iter().filter_map(|k| k.kid.as_deref())
    }

    pub(crate) fn key_set(&self) -> &KeySet {
        &self.keys
    }
}

/// The JWT-SVID bundles of every trusted trust domain, at most one each.
#[derive(Debug, Default)]
pub struct JwtBundles {
    /// By trust domain name, so that a token's trust domain is looked up without a copy.
    by_domain: HashMap<String, JwtBundle>,
}

/// A trust domain's bundle could not be read; the error names which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("JWT-SVID bundle of {trust_domain}: {source}")]
pub struct JwtBundlesError {
    pub trust_domain: TrustDomain,
    pub source: JwtBundleError,
}

impl JwtBundles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one bundle per trust domain — what the Workload API's `FetchJWTBundles`
    /// delivers: trust domain name to JWKS bytes. Any bad bundle refuses the whole set, so
    /// that a caller keeps its previous set rather than lose a trust domain silently.
    pub fn parse<'a>(
        bundles: impl IntoIterator<Item = (TrustDomain, &'a [u8])>,
    ) -> Result<Self, JwtBundlesError> {
        let mut out = Self::new();
        for (trust_domain, bytes) in bundles {
            let bundle =
                JwtBundle::parse_workload_api(trust_domain.clone(), bytes).map_err(|source| {
                    JwtBundlesError {
                        trust_domain,
                        source,
                    }
                })?;
            out.insert(bundle);
        }
        Ok(out)
    }

    /// Adds a trust domain's bundle, replacing the one it had.
    pub fn insert(&mut self, bundle: JwtBundle) -> Option<JwtBundle> {
        self.by_domain
            .insert(bundle.trust_domain.as_str().to_owned(), bundle)
    }

    pub fn get(&self, trust_domain: &str) -> Option<&JwtBundle> {
        self.by_domain.get(trust_domain)
    }

    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.by_domain.values().map(|b| &b.trust_domain)
    }

    pub fn len(&self) -> usize {
        self.by_domain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }
}

/// The bundles a verifier uses, replaceable at any time and atomically: a request verifies
/// against the set that was current when it started. Clones share the same set, so a
/// source of bundles (the Workload API) can keep one handle and the verifiers of every
/// configuration snapshot another.
#[derive(Debug, Clone, Default)]
pub struct JwtBundleStore(Arc<ArcSwap<JwtBundles>>);

impl JwtBundleStore {
    pub fn new(bundles: JwtBundles) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(bundles)))
    }

    /// Puts `bundles` in place of the current set.
    pub fn set(&self, bundles: JwtBundles) {
        self.0.store(Arc::new(bundles));
    }

    /// The current set.
    pub fn load(&self) -> Arc<JwtBundles> {
        self.0.load_full()
    }
}
