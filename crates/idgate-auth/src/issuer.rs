//! The built-in token issuer (the signing half of `POST /oauth2/token`): short-lived JWT
//! access tokens for the client credentials grant, signed ES256, EdDSA or RS256 (by the key's
//! type), bound to the client's certificate (RFC 8705 `cnf.x5t#S256`), with the public key
//! published as a JWKS. RS256 is the one algorithm RFC 9068 requires every resource server to
//! accept: an RSA key serves those that take nothing else.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::rsa::PublicKeyComponents;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value, json};

enum Key {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

/// Signs access tokens. Never exposes its private key (not even in `Debug`).
pub struct TokenIssuer {
    issuer: String,
    audience: String,
    ttl: Duration,
    key: Key,
    kid: String,
    jwk: Value,
    /// The public halves of the keys signed with before a rotation, as JWKs.
    previous: Vec<Value>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why the signing key is unusable. Never includes key bytes.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("the signing key is not a PKCS#8 PEM private key")]
    NotPkcs8,
    #[error(
        "the signing key is not a P-256 (ES256), an Ed25519 (EdDSA) or an RSA key of 2048 to 4096 bits (RS256)"
    )]
    UnsupportedKey,
    #[error("signing failed")]
    Sign,
    #[error("this is the signing key itself, not a previous one")]
    PreviousIsCurrent,
}

fn thumbprint(canonical: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// A PEM `PRIVATE KEY` (P-256, Ed25519, or RSA of 2048 to 4096 bits) and its public half as a
/// JWK, with `kid` (its RFC 7638 thumbprint), `alg` and `use`.
fn parse_key(pkcs8_pem: &[u8], rng: &SystemRandom) -> Result<(Key, Value), IssuerError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let der = match PrivateKeyDer::from_pem_slice(pkcs8_pem) {
        Ok(PrivateKeyDer::Pkcs8(der)) => der,
        _ => return Err(IssuerError::NotPkcs8),
    };
    let der = der.secret_pkcs8_der();
    let (key, jwk_fields, canonical) = if let Ok(k) =
        EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, rng)
    {
        let public = k.public_key().as_ref();
        let (x, y) = (B64.encode(&public[1..33]), B64.encode(&public[33..65]));
        // RFC 7638: required members in lexicographic order, no spaces.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        (
            Key::Es256(k),
            json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256"}),
            canonical,
        )
    } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
        let x = B64.encode(k.public_key().as_ref());
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        (
            Key::EdDsa(k),
            json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA"}),
            canonical,
        )
    } else if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
        // ring signs with 2048 to 4096 bits (it verifies up to 8192), and a public exponent
        // of at least 65537.
        let public = PublicKeyComponents::<Vec<u8>>::from(k.public());
        // RFC 7518 §6.3.1: unsigned big-endian, without leading zeros.
        let (n, e) = (B64.encode(&public.n), B64.encode(&public.e));
        let canonical = format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#);
        (
            Key::Rs256(k),
            json!({"kty": "RSA", "n": n, "e": e, "alg": "RS256"}),
            canonical,
        )
    } else {
        return Err(IssuerError::UnsupportedKey);
    };
    let mut jwk = jwk_fields;
    jwk["kid"] = Value::String(thumbprint(&canonical));
    jwk["use"] = Value::String("sig".into());
    Ok((key, jwk))
}

/// RFC 8705 certificate thumbprint: base64url(SHA-256(DER)).
pub fn cert_thumbprint(der: &[u8]) -> String {
    B64.encode(ring::digest::digest(&ring::digest::SHA256, der))
}

impl TokenIssuer {
    /// `pkcs8_pem` is a PEM `PRIVATE KEY`: P-256, Ed25519, or RSA of 2048 to 4096 bits.
    pub fn new(
        issuer: String,
        audience: String,
        ttl: Duration,
        pkcs8_pem: &[u8],
    ) -> Result<Self, IssuerError> {
        let rng = SystemRandom::new();
        let (key, jwk) = parse_key(pkcs8_pem, &rng)?;
        let kid = jwk
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(Self {
            issuer,
            audience,
            ttl,
            key,
            kid,
            jwk,
            previous: Vec::new(),
            rng,
        })
    }

    /// Keeps accepting, and publishing, the tokens of the keys signed with before a rotation
    /// (`pkcs8_pems`, in the form of the signing key): only their public halves are kept.
    /// Refuses one that does not parse, and one that is the signing key itself, with its
    /// position.
    pub fn with_previous(mut self, pkcs8_pems: &[&[u8]]) -> Result<Self, (usize, IssuerError)> {
        for (position, pem) in pkcs8_pems.iter().enumerate() {
            let (_, jwk) = parse_key(pem, &self.rng).map_err(|e| (position, e))?;
            let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or_default();
            if kid == self.kid {
                return Err((position, IssuerError::PreviousIsCurrent));
            }
            if !self.previous.iter().any(|p| p.get("kid") == jwk.get("kid")) {
                self.previous.push(jwk);
            }
        }
        Ok(self)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Es256(_) => "ES256",
            Key::EdDsa(_) => "EdDSA",
            Key::Rs256(_) => "RS256",
        }
    }

    /// The public key as a JWK (with `kid`, `alg`, `use`).
    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// `{"keys": [jwk]}` for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> Value {
        let keys: Vec<&Value> = std::iter::once(&self.jwk).chain(&self.previous).collect();
        json!({ "keys": keys })
    }

    /// The public keys of the signing keys before a rotation, as JWKs (with `kid`, `alg`,
    /// `use`): their tokens are still accepted.
    pub fn previous_jwks(&self) -> &[Value] {
        &self.previous
    }

    /// RFC 8414 metadata for `/.well-known/oauth-authorization-server`.
    pub fn metadata(&self) -> Value {
        let base = self.issuer.trim_end_matches('/');
        json!({
            "issuer": self.issuer,
            "token_endpoint": format!("{base}/oauth2/token"),
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": [],
            "token_endpoint_auth_methods_supported": ["tls_client_auth", "client_secret_basic", "client_secret_post"],
            "tls_client_certificate_bound_access_tokens": true,
            "access_token_signing_alg_values_supported": [self.algorithm()],
        })
    }

    /// Issues a token for `client_id` with `scopes`, bound to the certificate whose RFC 8705
    /// thumbprint is `x5t_s256`. Returns the token and its lifetime in seconds.
    pub fn issue(
        &self,
        client_id: &str,
        scopes: &[String],
        x5t_s256: &str,
        now: SystemTime,
    ) -> Result<(String, u64), IssuerError> {
        let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let exp = iat + self.ttl.as_secs();
        let mut jti = [0u8; 16];
        ring::rand::SecureRandom::fill(&self.rng, &mut jti).map_err(|_| IssuerError::Sign)?;
        // RFC 9068 access token profile.
        let header = json!({"alg": self.algorithm(), "typ": "at+jwt", "kid": self.kid});
        let claims = json!({
            "iss": self.issuer,
            "sub": client_id,
            "client_id": client_id,
            "aud": self.audience,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": B64.encode(jti),
            "scope": scopes.join(" "),
            "cnf": { "x5t#S256": x5t_s256 },
        });
        let signing_input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        );
        let sig = match &self.key {
            Key::Es256(k) => k
                .sign(&self.rng, signing_input.as_bytes())
                .map_err(|_| IssuerError::Sign)?
                .as_ref()
                .to_vec(),
            Key::EdDsa(k) => k.sign(signing_input.as_bytes()).as_ref().to_vec(),
            Key::Rs256(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    signing_input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| IssuerError::Sign)?;
                sig
            }
        };
        Ok((
            format!("{signing_input}.{}", B64.encode(sig)),
            self.ttl.as_secs(),
        ))
    }
}

/// Generates a PKCS#8 PEM ES256 signing key (for `idgate dev-pki` and tests).
pub fn generate_es256_pem() -> Result<String, IssuerError> {
    let rng = SystemRandom::new();
    let doc = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| IssuerError::Sign)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_keys_are_published_by_their_public_halves_and_the_signing_key_is_not_one() {
        let pem = |p: String| p.into_bytes();
        let current = pem(generate_es256_pem().unwrap());
        let old = pem(generate_es256_pem().unwrap());
        let issuer = |previous: &[&[u8]]| {
            TokenIssuer::new(
                "https://idgate.test".into(),
                "idgate".into(),
                Duration::from_secs(60),
                &current,
            )
            .unwrap()
            .with_previous(previous)
        };
        let rotated = issuer(&[&old, &old]).unwrap();
        let keys = rotated.jwks()["keys"].as_array().unwrap().clone();
        assert_eq!(keys.len(), 2, "the same previous key once");
        assert_eq!(keys[0], *rotated.jwk(), "the signing key first");
        assert_ne!(keys[1]["kid"], keys[0]["kid"]);
        assert!(keys.iter().all(|k| k.get("d").is_none()));
        assert_eq!(rotated.previous_jwks(), &keys[1..]);
        assert!(matches!(
            issuer(&[&old, &current]).unwrap_err(),
            (1, IssuerError::PreviousIsCurrent)
        ));
        assert!(matches!(
            issuer(&[b"not a key"]).unwrap_err(),
            (0, IssuerError::NotPkcs8)
        ));
    }

    #[test]
    fn issues_bound_es256_tokens_that_verify_with_the_published_key() {
        let pem = generate_es256_pem().unwrap();
        let issuer = TokenIssuer::new(
            "https://idgate.test".into(),
            "idgate".into(),
            Duration::from_secs(300),
            pem.as_bytes(),
        )
        .unwrap();
        let (token, ttl) = issuer
            .issue(
                "onboarding",
                &["sessions:read".into()],
                "abc",
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(ttl, 300);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["cnf"]["x5t#S256"], "abc");
        assert_eq!(claims["scope"], "sessions:read");
        let jwk = issuer.jwk();
        let mut point = vec![4u8];
        point.extend(B64.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(B64.decode(jwk["y"].as_str().unwrap()).unwrap());
        let key = signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point);
        let input = format!("{}.{}", parts[0], parts[1]);
        key.verify(input.as_bytes(), &B64.decode(parts[2]).unwrap())
            .unwrap();
        assert!(!format!("{issuer:?}").contains("PRIVATE"));
    }

    #[test]
    fn refuses_text_that_is_not_a_pkcs8_key() {
        assert!(matches!(
            TokenIssuer::new("i".into(), "a".into(), Duration::from_secs(1), b"not a key"),
            Err(IssuerError::NotPkcs8)
        ));
    }
}
