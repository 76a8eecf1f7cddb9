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
        "the signing key is not a P-256 (ES256), an Ed25519 (EdDSA) or an RSA key of 2048 to 8192 bits (RS256)"
    )]
    UnsupportedKey,
    #[error("signing failed")]
    Sign,
}

fn thumbprint(canonical: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

/// RFC 8705 certificate thumbprint: base64url(SHA-256(DER)).
pub fn cert_thumbprint(der: &[u8]) -> String {
    B64.encode(ring::digest::digest(&ring::digest::SHA256, der))
}

impl TokenIssuer {
    /// `pkcs8_pem` is a PEM `PRIVATE KEY`: P-256, Ed25519, or RSA of 2048 to 8192 bits.
    pub fn new(
        issuer: String,
        audience: String,
        ttl: Duration,
        pkcs8_pem: &[u8],
    ) -> Result<Self, IssuerError> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        let der = match PrivateKeyDer::from_pem_slice(pkcs8_pem) {
            Ok(PrivateKeyDer::Pkcs8(der)) => der,
            _ => return Err(IssuerError::NotPkcs8),
        };
        let rng = SystemRandom::new();
        let der = der.secret_pkcs8_der();
        let (key, jwk_fields, canonical) = if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
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
            // ring takes 2048 to 8192 bits, and a public exponent of at least 65537.
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
        let kid = thumbprint(&canonical);
        let mut jwk = jwk_fields;
        jwk["kid"] = Value::String(kid.clone());
        jwk["use"] = Value::String("sig".into());
        Ok(Self {
            issuer,
            audience,
            ttl,
            key,
            kid,
            jwk,
            rng,
        })
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
        json!({ "keys": [self.jwk] })
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
