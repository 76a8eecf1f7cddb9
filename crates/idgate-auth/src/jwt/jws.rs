//! JWS compact serialization (RFC 7515) verified with `ring`: the algorithms we accept, the
//! public keys (JWK, RFC 7517) they verify with, and the parsing of a token into its signed
//! bytes, header, claims and signature.
//!
//! Key confusion is defeated here: the header's `alg` must be one we implement (never `none`,
//! never an HMAC), and a key verifies only the algorithms of its own type and curve, and
//! only its own `alg` when the key names one.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::errors::JwkError;
use super::json;

/// The largest token accepted, in bytes. Real access tokens are a few hundred bytes to a
/// few KiB; anything near this is an attempt to make the gateway parse a large document.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A JWS signature algorithm the gateway verifies. Only asymmetric ones: an HMAC "public
/// key" is no key at all, and `none` is no signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA keys of 2048 to 8192 bits.
    RS256,
    /// RSASSA-PSS with SHA-256, RSA keys of 2048 to 8192 bits.
    PS256,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// Ed25519 (the only EdDSA curve accepted).
    EdDSA,
}

impl Algorithm {
    /// Every algorithm, the default allowed list.
    pub const ALL: [Self; 4] = [Self::RS256, Self::PS256, Self::ES256, Self::EdDSA];

    /// The JOSE name, as in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::PS256 => "PS256",
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a name is not an algorithm the gateway accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlgorithmError {
    #[error("\"none\" is never accepted: an unsigned token proves nothing")]
    None,
    #[error(
        "{0} is never accepted: an HMAC needs a shared secret, and a public key is not one; use RS256, PS256, ES256 or EdDSA"
    )]
    Hmac(String),
    #[error("unsupported algorithm {0:?}; use RS256, PS256, ES256 or EdDSA")]
    Unsupported(String),
}

impl FromStr for Algorithm {
    type Err = AlgorithmError;

    /// Exact, case-sensitive JOSE names, as RFC 7518 registers them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" => Ok(Self::RS256),
            "PS256" => Ok(Self::PS256),
            "ES256" => Ok(Self::ES256),
            "EdDSA" => Ok(Self::EdDSA),
            _ if s.eq_ignore_ascii_case("none") => Err(AlgorithmError::None),
            // Byte-wise: the header is untrusted and may cut a UTF-8 character at byte 2.
            _ if s
                .as_bytes()
                .get(..2)
                .is_some_and(|p| p.eq_ignore_ascii_case(b"HS")) =>
            {
                Err(AlgorithmError::Hmac(s.to_owned()))
            }
            _ => Err(AlgorithmError::Unsupported(s.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A public JSON Web Key, as published in a JWKS (RFC 7517) — the members the gateway
/// reads; others are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `RSA`, `EC` or `OKP`.
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// When present, the only algorithm this key verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// When present, must be `sig`.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    /// When present, must contain `verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ops: Option<Vec<String>>,
    /// `P-256` for EC, `Ed25519` for OKP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    /// RSA modulus, base64url big-endian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url big-endian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// EC x coordinate, or the Ed25519 public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// EC y coordinate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
}

impl Jwk {
    /// An Ed25519 public key (32 bytes, as `ring::signature::Ed25519KeyPair::public_key`).
    pub fn ed25519(kid: impl Into<String>, public_key: &[u8]) -> Self {
        Self {
            kty: "OKP".into(),
            kid: Some(kid.into()),
            alg: Some(Algorithm::EdDSA.as_str().into()),
            use_: Some("sig".into()),
            crv: Some("Ed25519".into()),
            x: Some(URL_SAFE_NO_PAD.encode(public_key)),
            ..Self::default()
        }
    }

    /// A P-256 public key from its uncompressed point `0x04 || x || y` (65 bytes, as
    /// `ring::signature::EcdsaKeyPair::public_key`).
    pub fn p256(kid: impl Into<String>, uncompressed_point: &[u8]) -> Result<Self, JwkError> {
        match uncompressed_point {
            [0x04, xy @ ..] if xy.len() == 64 => Ok(Self {
                kty: "EC".into(),
                kid: Some(kid.into()),
                alg: Some(Algorithm::ES256.as_str().into()),
                use_: Some("sig".into()),
                crv: Some("P-256".into()),
                x: Some(URL_SAFE_NO_PAD.encode(&xy[..32])),
                y: Some(URL_SAFE_NO_PAD.encode(&xy[32..])),
                ..Self::default()
            }),
            _ => Err(JwkError::P256PointLength),
        }
    }

    /// An RSA public key from its big-endian modulus and exponent, for `alg` (RS256 or
    /// PS256; RSA keys should name the one padding they are used with).
    pub fn rsa(kid: impl Into<String>, n: &[u8], e: &[u8], alg: Algorithm) -> Self {
        Self {
            kty: "RSA".into(),
            kid: Some(kid.into()),
            alg: Some(alg.as_str().into()),
            use_: Some("sig".into()),
            n: Some(URL_SAFE_NO_PAD.encode(n)),
            e: Some(URL_SAFE_NO_PAD.encode(e)),
            ..Self::default()
        }
    }
}

/// The public key material of a usable JWK.
#[derive(Clone, PartialEq, Eq)]
enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point, 65 bytes.
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// A JWK checked and decoded, ready to verify signatures.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<String>,
    alg: Option<String>,
    material: KeyMaterial,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kty = match self.material {
            KeyMaterial::Rsa { .. } => "RSA",
            KeyMaterial::P256(_) => "EC P-256",
            KeyMaterial::Ed25519(_) => "OKP Ed25519",
        };
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("kty", &kty)
            .field("alg", &self.alg)
            .finish()
    }
}

fn b64(s: Option<&str>, what: &'static str) -> Result<Vec<u8>, JwkError> {
    let s = s.ok_or(JwkError::Missing(what))?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwkError::NotBase64Url(what))
}

/// A big-endian integer without its leading zero bytes (ring wants them minimal; some
/// publishers pad the modulus to a whole number of bytes anyway).
fn minimal(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

impl VerifyingKey {
    /// Checks a JWK: a signing key (`use`/`key_ops`) of a type and curve we verify, with
    /// well-formed public parameters. Private members (`d`, …) are not read.
    pub(crate) fn from_jwk(jwk: &Jwk) -> Result<Self, JwkError> {
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(JwkError::NotForSigning);
        }
        if jwk
            .key_ops
            .as_ref()
            .is_some_and(|ops| !ops.iter().any(|o| o == "verify"))
        {
            return Err(JwkError::NotForVerifying);
        }
        let material = match jwk.kty.as_str() {
            "RSA" => {
                let n = minimal(b64(jwk.n.as_deref(), "n")?);
                let e = minimal(b64(jwk.e.as_deref(), "e")?);
                // ring enforces the real bounds (2048..8192 bits) when verifying; refusing
                // short keys here tells the operator early.
                if n.len() < 256 {
                    return Err(JwkError::RsaModulusTooShort);
                }
                if e.is_empty() {
                    return Err(JwkError::RsaExponentZero);
                }
                KeyMaterial::Rsa { n, e }
            }
            "EC" => {
                if jwk.crv.as_deref() != Some("P-256") {
                    return Err(JwkError::UnsupportedEcCurve);
                }
                let x = b64(jwk.x.as_deref(), "x")?;
                let y = b64(jwk.y.as_deref(), "y")?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(JwkError::P256CoordinateLength);
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                KeyMaterial::P256(point)
            }
            "OKP" => {
                if jwk.crv.as_deref() != Some("Ed25519") {
                    return Err(JwkError::UnsupportedOkpCurve);
                }
                let x = b64(jwk.x.as_deref(), "x")?;
                if x.len() != 32 {
                    return Err(JwkError::Ed25519KeyLength);
                }
                KeyMaterial::Ed25519(x)
            }
            other => return Err(JwkError::UnsupportedKeyType(other.to_owned())),
        };
        Ok(Self {
            kid: jwk.kid.clone(),
            alg: jwk.alg.clone(),
            material,
        })
    }

    /// Whether this key may verify `alg`: its type and curve fit, and its own `alg`, when
    /// it has one, is the same.
    pub(crate) fn supports(&self, alg: Algorithm) -> bool {
        let fits = matches!(
            (&self.material, alg),
            (KeyMaterial::Rsa { .. }, Algorithm::RS256 | Algorithm::PS256)
                | (KeyMaterial::P256(_), Algorithm::ES256)
                | (KeyMaterial::Ed25519(_), Algorithm::EdDSA)
        );
        fits && self.alg.as_deref().is_none_or(|a| a == alg.as_str())
    }

    pub(crate) fn is_ed25519(&self) -> bool {
        matches!(self.material, KeyMaterial::Ed25519(_))
    }

    /// Verifies `signature` over `message` with `alg`; false for any mismatch.
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        if !self.supports(alg) {
            return false;
        }
        match (&self.material, alg) {
            (KeyMaterial::Rsa { n, e }, Algorithm::RS256 | Algorithm::PS256) => {
                let params = if alg == Algorithm::RS256 {
                    &signature::RSA_PKCS1_2048_8192_SHA256
                } else {
                    &signature::RSA_PSS_2048_8192_SHA256
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            (KeyMaterial::P256(point), Algorithm::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, sig)
                    .is_ok()
            }
            (KeyMaterial::Ed25519(x), Algorithm::EdDSA) => {
                UnparsedPublicKey::new(&signature::ED25519, x)
                    .verify(message, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub(crate) struct Unverified<'a> {
    /// `BASE64URL(header) . BASE64URL(payload)`, the bytes the signature covers.
    pub(crate) signing_input: &'a [u8],
    pub(crate) alg: Algorithm,
    pub(crate) kid: Option<String>,
    /// The header says `typ: at+jwt` (RFC 9068 §2.1), in either of its spellings.
    pub(crate) at_jwt: bool,
    pub(crate) claims: Map<String, Value>,
    pub(crate) signature: Vec<u8>,
}

/// The `typ` values of an access token (RFC 9068 `at+jwt`) or a plain JWT. Other types —
/// DPoP proofs, logout tokens, security events — are JWTs meant for something else.
fn typ_is_access_token(typ: &str) -> bool {
    typ_is_at_jwt(typ)
        || ["JWT", "application/jwt"]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(typ))
}

/// RFC 9068 §4: `at+jwt`, or its media type `application/at+jwt`, compared without case.
fn typ_is_at_jwt(typ: &str) -> bool {
    ["at+jwt", "application/at+jwt"]
        .iter()
        .any(|t| t.eq_ignore_ascii_case(typ))
}

/// Splits and decodes a compact access token. Refuses: oversized tokens, anything but three
/// base64url (unpadded, canonical) parts, headers and payloads that are not strict JSON
/// objects, an `alg` we do not verify (`none`, HMAC, unknown), `crit` extensions, unencoded
/// payloads (`b64`), and `typ`s of other kinds of JWT.
pub(crate) fn parse(token: &str) -> Result<Unverified<'_>, &'static str> {
    parse_with(token, access_token_header)
}

/// The header checks of an access token (see [`parse`]); whether it says `typ: at+jwt`.
fn access_token_header(header: &Map<String, Value>) -> Result<bool, &'static str> {
    match header.get("crit") {
        None => {}
        Some(Value::Array(c)) if c.is_empty() => {}
        Some(_) => return Err("unsupported critical header"),
    }
    if header.get("b64").is_some_and(|b| b != &Value::Bool(true)) {
        return Err("unsupported critical header");
    }
    match header.get("typ") {
        None => Ok(false),
        Some(Value::String(t)) if typ_is_access_token(t) => Ok(typ_is_at_jwt(t)),
        Some(_) => Err("not an access token"),
    }
}

/// Splits and decodes a compact JWS whose header, once its `alg` is known to be one we
/// verify, passes `check` (which returns [`Unverified::at_jwt`]). The limits on size,
/// encoding and JSON are those of [`parse`], for every kind of token.
pub(crate) fn parse_with(
    token: &str,
    check: impl FnOnce(&Map<String, Value>) -> Result<bool, &'static str>,
) -> Result<Unverified<'_>, &'static str> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("token too large");
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed");
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| "malformed");
    let header = json::object(&decode(h)?).ok_or("malformed")?;

    let alg = match header.get("alg") {
        Some(Value::String(a)) => a
            .parse::<Algorithm>()
            .map_err(|_| "algorithm not allowed")?,
        _ => return Err("malformed"),
    };
    let at_jwt = check(&header)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("malformed"),
    };

    let claims = json::object(&decode(p)?).ok_or("malformed")?;
    let signature = decode(s)?;
    if signature.is_empty() {
        return Err("bad signature");
    }
    Ok(Unverified {
        signing_input: &token.as_bytes()[..h.len() + 1 + p.len()],
        alg,
        kid,
        at_jwt,
        claims,
        signature,
    })
}

#[cfg(test)]
mod tests;
