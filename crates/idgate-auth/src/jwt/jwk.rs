//! Public JSON Web Keys (RFC 7517) and the signatures they verify with `ring`: which
//! algorithms a key of each type and curve may verify, and the checks of its parameters.
//!
//! This is where algorithm confusion is defeated on the key's side: an RSA key verifies
//! `RS*`/`PS*` only, a P-256 key ES256 only, a P-384 key ES384 only, an Ed25519 key EdDSA
//! only, and a key that names an `alg` verifies that one alone.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::errors::JwkError;
use super::jws::Algorithm;

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
    /// `P-256` or `P-384` for EC, `Ed25519` for OKP.
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
        Self::ec(kid, EcCurve::P256, uncompressed_point)
    }

    /// A P-384 public key from its uncompressed point `0x04 || x || y` (97 bytes).
    pub fn p384(kid: impl Into<String>, uncompressed_point: &[u8]) -> Result<Self, JwkError> {
        Self::ec(kid, EcCurve::P384, uncompressed_point)
    }

    fn ec(kid: impl Into<String>, curve: EcCurve, point: &[u8]) -> Result<Self, JwkError> {
        let len = curve.coordinate_len();
        match point {
            [0x04, xy @ ..] if xy.len() == 2 * len => Ok(Self {
                kty: "EC".into(),
                kid: Some(kid.into()),
                alg: Some(curve.algorithm().as_str().into()),
                use_: Some("sig".into()),
                crv: Some(curve.name().into()),
                x: Some(URL_SAFE_NO_PAD.encode(&xy[..len])),
                y: Some(URL_SAFE_NO_PAD.encode(&xy[len..])),
                ..Self::default()
            }),
            _ => Err(curve.point_length_error()),
        }
    }

    /// An RSA public key from its big-endian modulus and exponent, for `alg` (an `RS*` or
    /// `PS*` algorithm; RSA keys should name the one padding and hash they are used with).
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

/// An ECDSA curve the gateway verifies. RFC 7518 §3.4 ties each curve to one algorithm:
/// a P-256 key verifies ES256 only, a P-384 key ES384 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EcCurve {
    P256,
    P384,
}

impl EcCurve {
    /// By the JWK's `crv`; P-521 (ES512) is not among them: `ring` cannot verify it.
    fn from_crv(crv: Option<&str>) -> Option<Self> {
        match crv {
            Some("P-256") => Some(Self::P256),
            Some("P-384") => Some(Self::P384),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    fn key_kind(self) -> &'static str {
        match self {
            Self::P256 => "a P-256 key",
            Self::P384 => "a P-384 key",
        }
    }

    /// The bytes of one coordinate, and of each of a signature's `r` and `s`.
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Self::P256 => Algorithm::ES256,
            Self::P384 => Algorithm::ES384,
        }
    }

    /// JWS signatures are the fixed-size `r || s` (RFC 7518 §3.4), never DER.
    fn verification(self) -> &'static signature::EcdsaVerificationAlgorithm {
        match self {
            Self::P256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::P384 => &signature::ECDSA_P384_SHA384_FIXED,
        }
    }

    fn coordinate_length_error(self) -> JwkError {
        match self {
            Self::P256 => JwkError::P256CoordinateLength,
            Self::P384 => JwkError::P384CoordinateLength,
        }
    }

    fn point_length_error(self) -> JwkError {
        match self {
            Self::P256 => JwkError::P256PointLength,
            Self::P384 => JwkError::P384PointLength,
        }
    }
}

/// The RSA padding and hash of an `RS*` or `PS*` algorithm; `None` for the others. No
/// wildcard: a new algorithm must say whether an RSA key verifies it.
fn rsa_parameters(alg: Algorithm) -> Option<&'static signature::RsaParameters> {
    match alg {
        Algorithm::RS256 => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Some(&signature::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Some(&signature::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Some(&signature::RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 | Algorithm::ES384 | Algorithm::EdDSA => None,
    }
}

/// The public key material of a usable JWK.
#[derive(Clone, PartialEq, Eq)]
enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed point `0x04 || x || y`.
    Ec {
        curve: EcCurve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

impl KeyMaterial {
    /// Whether a key of this type and curve may verify `alg`: an RSA key any `RS*` or
    /// `PS*`, an EC key its curve's one algorithm, an Ed25519 key EdDSA.
    fn fits(&self, alg: Algorithm) -> bool {
        match self {
            Self::Rsa { .. } => rsa_parameters(alg).is_some(),
            Self::Ec { curve, .. } => curve.algorithm() == alg,
            Self::Ed25519(_) => alg == Algorithm::EdDSA,
        }
    }

    /// The key's type and curve, for an error.
    fn kind(&self) -> &'static str {
        match self {
            Self::Rsa { .. } => "an RSA key",
            Self::Ec { curve, .. } => curve.key_kind(),
            Self::Ed25519(_) => "an Ed25519 key",
        }
    }
}

/// A JWK checked and decoded, ready to verify signatures.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct VerifyingKey {
    pub(crate) kid: Option<String>,
    /// The key's own `alg`, parsed when it was read: the only algorithm it then verifies.
    alg: Option<Algorithm>,
    material: KeyMaterial,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kty, crv) = match &self.material {
            KeyMaterial::Rsa { .. } => ("RSA", None),
            KeyMaterial::Ec { curve, .. } => ("EC", Some(curve.name())),
            KeyMaterial::Ed25519(_) => ("OKP", Some("Ed25519")),
        };
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("kty", &kty)
            .field("crv", &crv)
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
                let curve =
                    EcCurve::from_crv(jwk.crv.as_deref()).ok_or(JwkError::UnsupportedEcCurve)?;
                let x = b64(jwk.x.as_deref(), "x")?;
                let y = b64(jwk.y.as_deref(), "y")?;
                // RFC 7518 §6.2.1.2: each coordinate is the full size of the curve's field,
                // leading zeros kept.
                let len = curve.coordinate_len();
                if x.len() != len || y.len() != len {
                    return Err(curve.coordinate_length_error());
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                KeyMaterial::Ec { curve, point }
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
        // A key that names an algorithm verifies that one alone: refused now if it is one the
        // gateway cannot verify, or one its own type and curve cannot (RFC 7518 §3), rather
        // than loaded to refuse every token.
        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(alg) => {
                let named = alg
                    .parse::<Algorithm>()
                    .map_err(|why| JwkError::UnsupportedAlgorithm(why.to_string()))?;
                if !material.fits(named) {
                    return Err(JwkError::AlgorithmNotForKey {
                        alg: named.as_str(),
                        key: material.kind(),
                    });
                }
                Some(named)
            }
        };
        Ok(Self {
            kid: jwk.kid.clone(),
            alg,
            material,
        })
    }

    /// Whether this key may verify `alg`: its type and curve fit (an RSA key any `RS*` or
    /// `PS*`, an EC key its curve's one algorithm), and its own `alg`, when it has one, is
    /// the same.
    pub(crate) fn supports(&self, alg: Algorithm) -> bool {
        self.material.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }

    pub(crate) fn is_ed25519(&self) -> bool {
        matches!(self.material, KeyMaterial::Ed25519(_))
    }

    /// Verifies `signature` over `message` with `alg`; false for any mismatch.
    pub(crate) fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        if !self.supports(alg) {
            return false;
        }
        match &self.material {
            KeyMaterial::Rsa { n, e } => rsa_parameters(alg).is_some_and(|params| {
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }),
            KeyMaterial::Ec { curve, point } => {
                // Only `r || s`, each the curve's size: a DER signature (what some libraries
                // emit by mistake) or a truncated one is refused however ring would read it.
                sig.len() == 2 * curve.coordinate_len()
                    && UnparsedPublicKey::new(curve.verification(), point)
                        .verify(message, sig)
                        .is_ok()
            }
            KeyMaterial::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
        }
    }
}

#[cfg(test)]
mod tests;
