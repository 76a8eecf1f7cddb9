//! JWS compact serialization (RFC 7515): the algorithms we accept, and the parsing of a
//! token into its signed bytes, header, claims and signature. The keys that verify it are
//! in [`jwk`](super::jwk).
//!
//! Key confusion is defeated in two places: here, the header's `alg` must be one we
//! implement (never `none`, never an HMAC); there, a key verifies only the algorithms of its
//! own type and curve, and only its own `alg` when the key names one.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
    /// RSASSA-PKCS1-v1_5 with SHA-384, RSA keys of 2048 to 8192 bits.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512, RSA keys of 2048 to 8192 bits.
    RS512,
    /// RSASSA-PSS with SHA-256, RSA keys of 2048 to 8192 bits.
    PS256,
    /// RSASSA-PSS with SHA-384, RSA keys of 2048 to 8192 bits.
    PS384,
    /// RSASSA-PSS with SHA-512, RSA keys of 2048 to 8192 bits.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519 (the only EdDSA curve accepted).
    EdDSA,
}

/// The reason a token signed ES512 is refused. RFC 7518 and JWT-SVID §2.1 name it, but
/// `ring` has no P-521, so it is refused by name rather than as an unknown algorithm.
const ES512_UNSUPPORTED: &str = "ES512 (P-521) is not supported";

impl Algorithm {
    /// Every algorithm the gateway verifies; the default allowed list of an issuer built in
    /// code ([`IssuerConfig::new`](super::IssuerConfig::new)).
    pub const ALL: [Self; 9] = [
        Self::RS256,
        Self::RS384,
        Self::RS512,
        Self::PS256,
        Self::PS384,
        Self::PS512,
        Self::ES256,
        Self::ES384,
        Self::EdDSA,
    ];

    /// The names of [`Self::ALL`], for messages that tell what to use instead.
    pub const NAMES: &'static str =
        "RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA";

    /// The JOSE name, as in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RS256 => "RS256",
            Self::RS384 => "RS384",
            Self::RS512 => "RS512",
            Self::PS256 => "PS256",
            Self::PS384 => "PS384",
            Self::PS512 => "PS512",
            Self::ES256 => "ES256",
            Self::ES384 => "ES384",
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
        "{0:?} is never accepted: an HMAC needs a shared secret, and a public key is not one; use {names}",
        names = Algorithm::NAMES
    )]
    Hmac(String),
    /// A registered algorithm the gateway cannot verify (`ring` has no P-521).
    #[error("{ES512_UNSUPPORTED}: use ES384 (P-384) or ES256 (P-256)")]
    Es512,
    #[error("unsupported algorithm {0:?}; use {names}", names = Algorithm::NAMES)]
    Unsupported(String),
}

impl FromStr for Algorithm {
    type Err = AlgorithmError;

    /// Exact, case-sensitive JOSE names, as RFC 7518 registers them.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "RS256" => Ok(Self::RS256),
            "RS384" => Ok(Self::RS384),
            "RS512" => Ok(Self::RS512),
            "PS256" => Ok(Self::PS256),
            "PS384" => Ok(Self::PS384),
            "PS512" => Ok(Self::PS512),
            "ES256" => Ok(Self::ES256),
            "ES384" => Ok(Self::ES384),
            "EdDSA" => Ok(Self::EdDSA),
            "ES512" => Err(AlgorithmError::Es512),
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
/// objects, an `alg` we do not verify (`none`, HMAC, ES512, unknown), `crit` extensions,
/// unencoded payloads (`b64`), and `typ`s of other kinds of JWT.
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
        Some(Value::String(a)) => a.parse::<Algorithm>().map_err(|e| match e {
            // Named, so that an issuer's operator learns what to change.
            AlgorithmError::Es512 => ES512_UNSUPPORTED,
            _ => "algorithm not allowed",
        })?,
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
