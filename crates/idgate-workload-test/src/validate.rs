//! JWT-SVID validation against the JWT bundles the server holds, for `ValidateJWTSVID`
//! (JWT-SVID §7 and Appendix A: alg, signature by a `jwt-svid` key of the subject's trust
//! domain, `aud` holds the audience, `exp` in the future).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{Map, Value};
use spiffe::SpiffeId;

/// A validated JWT-SVID: its subject and all of its claims.
#[derive(Debug)]
pub(crate) struct Validated {
    pub(crate) spiffe_id: String,
    pub(crate) claims: Map<String, Value>,
}

/// Validates `token` for `audience` with the JWKS bundles keyed by trust domain ID.
///
/// The error is a reason for the caller; it never contains the token.
pub(crate) fn validate(
    token: &str,
    audience: &str,
    bundles: &BTreeMap<String, Vec<u8>>,
) -> Result<Validated, String> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("token is not a JWS compact serialization".into());
    };
    let header = decode_object(header_b64, "header")?;
    let claims = decode_object(claims_b64, "claims")?;
    let signature = URL_SAFE_NO_PAD
        .decode(sig_b64)
        .map_err(|_| "signature is not base64url".to_owned())?;

    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("header has no alg")?;
    if let Some(typ) = header.get("typ")
        && !matches!(typ.as_str(), Some("JWT" | "JOSE"))
    {
        return Err("header typ is neither JWT nor JOSE".into());
    }
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or("header has no kid")?;

    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("token has no sub claim")?;
    let spiffe_id = SpiffeId::new(sub).map_err(|e| format!("sub is not a SPIFFE ID: {e}"))?;
    let td = spiffe_id.trust_domain();
    let jwks = bundles
        .get(&td.id_string())
        .ok_or_else(|| format!("no JWT bundle for trust domain {td}"))?;
    let jwk = find_key(jwks, kid).ok_or_else(|| format!("no key {kid:?} in {td}'s bundle"))?;

    let (signed, _) = token
        .rsplit_once('.')
        .ok_or("token is not a JWS compact serialization")?;
    verify(alg, &jwk, signed.as_bytes(), &signature)?;

    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .ok_or("token has no numeric exp claim")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "system clock before 1970".to_owned())?
        .as_secs_f64();
    if exp <= now {
        return Err("token has expired".into());
    }
    if let Some(nbf) = claims.get("nbf").and_then(Value::as_f64)
        && nbf > now
    {
        return Err("token is not valid yet".into());
    }
    let audience_matches = match claims.get("aud") {
        Some(Value::String(aud)) => aud == audience,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
        _ => return Err("token has no aud claim".into()),
    };
    if !audience_matches {
        return Err("audience does not match".into());
    }
    Ok(Validated {
        spiffe_id: spiffe_id.to_string(),
        claims,
    })
}

fn decode_object(part: &str, what: &str) -> Result<Map<String, Value>, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| format!("{what} is not base64url"))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(format!("{what} is not a JSON object")),
    }
}

/// The JWT-SVID key with `kid` in a JWKS; keys with another `use` are not JWT-SVID keys
/// (Trust Domain and Bundle §4.2.1).
fn find_key(jwks: &[u8], kid: &str) -> Option<Map<String, Value>> {
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(jwks) else {
        return None;
    };
    let Some(Value::Array(keys)) = doc.remove("keys") else {
        return None;
    };
    keys.into_iter().find_map(|key| match key {
        Value::Object(key)
            if key.get("kid").and_then(Value::as_str) == Some(kid)
                && key
                    .get("use")
                    .is_none_or(|u| u.as_str() == Some("jwt-svid")) =>
        {
            Some(key)
        }
        _ => None,
    })
}

fn component(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    jwk.get(name)
        .and_then(Value::as_str)
        .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
        .ok_or_else(|| format!("key has no valid {name}"))
}

/// Verifies the signature with the algorithm the header names, refusing a key whose type
/// or curve does not fit that algorithm (no algorithm confusion).
fn verify(alg: &str, jwk: &Map<String, Value>, signed: &[u8], sig: &[u8]) -> Result<(), String> {
    let kty = jwk.get("kty").and_then(Value::as_str);
    let crv = jwk.get("crv").and_then(Value::as_str);
    let bad_signature = |_| "signature does not verify".to_owned();
    let ec = |algorithm: &'static dyn VerificationAlgorithm, curve: &str| {
        if kty != Some("EC") || crv != Some(curve) {
            return Err(format!("{alg} needs an EC {curve} key"));
        }
        let mut point = vec![0x04];
        point.extend(component(jwk, "x")?);
        point.extend(component(jwk, "y")?);
        UnparsedPublicKey::new(algorithm, point)
            .verify(signed, sig)
            .map_err(bad_signature)
    };
    let rsa = |params: &'static signature::RsaParameters| {
        if kty != Some("RSA") {
            return Err(format!("{alg} needs an RSA key"));
        }
        RsaPublicKeyComponents {
            n: component(jwk, "n")?,
            e: component(jwk, "e")?,
        }
        .verify(params, signed, sig)
        .map_err(bad_signature)
    };
    match alg {
        "ES256" => ec(&signature::ECDSA_P256_SHA256_FIXED, "P-256"),
        "ES384" => ec(&signature::ECDSA_P384_SHA384_FIXED, "P-384"),
        "RS256" => rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
        "RS384" => rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
        "PS256" => rsa(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => rsa(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => rsa(&signature::RSA_PSS_2048_8192_SHA512),
        other => Err(format!("unsupported alg {other:?}")),
    }
}

/// JSON claims as a protobuf `Struct`, for `ValidateJWTSVIDResponse.claims`.
pub(crate) fn to_struct(claims: Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: claims.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(value: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(map) => Kind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}
