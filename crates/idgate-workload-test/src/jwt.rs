//! A JWT-SVID signing authority for one trust domain: an ES256 (P-256) key with a `kid`,
//! its JWKS bundle and minted JWT-SVIDs.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Map, Value, json};
use spiffe::TrustDomain;

use crate::pki::{PkiError, spiffe_id, trust_domain};

/// Why a JWT authority or a JWT-SVID could not be made.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error(transparent)]
    Name(#[from] PkiError),
    #[error("a JWT-SVID needs at least one audience")]
    NoAudience,
    #[error("validity {0:?} does not fit a JWT")]
    Validity(Duration),
    #[error("ES256 key generation failed")]
    KeyGeneration,
    #[error("ES256 signing failed")]
    Signing,
}

/// An ES256 signing key for the JWT-SVIDs of one trust domain.
///
/// Each `JwtAuthority::new` makes a new key and `kid`; a rotation publishes both keys for a
/// while ([`JwtAuthority::jwks_of`]). Clones share the key, so a test can hand one to the
/// server and keep minting with another.
#[derive(Clone)]
pub struct JwtAuthority {
    trust_domain: TrustDomain,
    kid: String,
    key: Arc<EcdsaKeyPair>,
    rng: SystemRandom,
}

impl fmt::Debug for JwtAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtAuthority")
            .field("trust_domain", &self.trust_domain.as_str())
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl JwtAuthority {
    /// A new P-256 key for `trust_domain` (`example.org`) with a random `kid`.
    pub fn new(trust_domain: &str) -> Result<Self, JwtError> {
        let td = self::trust_domain(trust_domain)?;
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| JwtError::KeyGeneration)?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| JwtError::KeyGeneration)?;
        let mut kid = [0u8; 16];
        rng.fill(&mut kid).map_err(|_| JwtError::KeyGeneration)?;
        Ok(Self {
            trust_domain: td,
            kid: URL_SAFE_NO_PAD.encode(kid),
            key: Arc::new(key),
            rng,
        })
    }

    /// The trust domain name (`example.org`).
    pub fn trust_domain(&self) -> &str {
        self.trust_domain.as_str()
    }

    /// The key ID, in every JWT-SVID's header and in the JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK with `use: jwt-svid` (SPIFFE Trust Domain and Bundle §4.2.1).
    pub fn jwk(&self) -> Value {
        // ring's P-256 public key is the uncompressed point: 0x04 || x (32) || y (32).
        let point = self.key.public_key().as_ref();
        let (x, y) = point
            .get(1..)
            .map(|xy| xy.split_at(xy.len() / 2))
            .unwrap_or_default();
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "kid": self.kid,
            "use": "jwt-svid",
        })
    }

    /// This key's JWT bundle: a JWKS `{"keys":[…]}`, as the Workload API's
    /// `JWTBundlesResponse` carries it and as a SPIFFE bundle file holds it.
    pub fn jwks(&self) -> Vec<u8> {
        Self::jwks_of(&[self])
    }

    /// One JWT bundle as SPIRE's agent sends it in a `JWTBundlesResponse`: the keys as
    /// plain JWKs, without the `use` member a SPIFFE bundle file gives them (SPIRE marshals
    /// them with `bundleutil.StandardJWKS`).
    pub fn workload_api_jwks_of(authorities: &[&JwtAuthority]) -> Vec<u8> {
        let keys: Vec<Value> = authorities
            .iter()
            .map(|a| {
                let mut jwk = a.jwk();
                if let Some(members) = jwk.as_object_mut() {
                    members.remove("use");
                }
                jwk
            })
            .collect();
        json!({ "keys": keys }).to_string().into_bytes()
    }

    /// One JWT bundle holding the keys of several authorities (a key rotation's overlap).
    pub fn jwks_of(authorities: &[&JwtAuthority]) -> Vec<u8> {
        let keys: Vec<Value> = authorities.iter().map(|a| a.jwk()).collect();
        json!({ "keys": keys }).to_string().into_bytes()
    }

    /// Mints a JWT-SVID for `sub` (a SPIFFE ID) and `audiences`, expiring after `ttl`.
    ///
    /// Header `{"alg":"ES256","kid":…,"typ":"JWT"}`; claims `sub`, `aud` (a string for one
    /// audience, an array for several), `exp`, `iat`.
    pub fn mint(&self, sub: &str, audiences: &[&str], ttl: Duration) -> Result<String, JwtError> {
        let sub = spiffe_id(sub)?.to_string();
        let aud = match audiences {
            [] => return Err(JwtError::NoAudience),
            [one] => Value::from(*one),
            many => Value::from(many.to_vec()),
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| JwtError::Validity(ttl))?;
        let exp = now
            .checked_add(ttl)
            .map(|exp| exp.as_secs())
            .ok_or(JwtError::Validity(ttl))?;
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from(sub));
        claims.insert("aud".into(), aud);
        claims.insert("exp".into(), Value::from(exp));
        claims.insert("iat".into(), Value::from(now.as_secs()));
        self.sign(&claims)
    }

    /// Signs arbitrary claims with this key (header alg ES256, this `kid`, typ JWT), for
    /// tokens a test wants malformed on purpose: no `exp`, a foreign `sub`, and so on.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, JwtError> {
        let header = json!({ "alg": "ES256", "kid": self.kid, "typ": "JWT" });
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string()));
        let signature = self
            .key
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| JwtError::Signing)?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature.as_ref()));
        Ok(token)
    }
}
