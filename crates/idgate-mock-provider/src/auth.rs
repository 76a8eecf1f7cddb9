//! Credential checks, as each provider documents them:
//!
//! - Didit: `x-api-key` equal to the key → else 401 `{"detail": ...}`.
//! - Sumsub: `X-App-Token` equal to the app token, `X-App-Access-Ts` within ±300 s of now,
//!   `X-App-Access-Sig` = lowercase hex HMAC-SHA256(secret, ts + METHOD + path_with_query +
//!   body).
//! - Veriff: `X-AUTH-CLIENT` equal to the client key, `X-HMAC-SIGNATURE` = lowercase hex
//!   HMAC-SHA256(secret, payload), where the payload is the raw body for POST, PATCH and
//!   PUT, and for GET and DELETE the session id: the path segment after `/sessions/`
//!   (`/v1/sessions/{id}/decision` → `{id}`). A GET or DELETE whose path has no
//!   `/sessions/{id}` (such as a Didit-shaped path served in Veriff mode) signs the raw body,
//!   which is empty for such requests. Creating a session (`POST /v1/sessions`) needs no
//!   signature; one that is sent anyway must match (Veriff's documents do not say what
//!   happens to it, and a wrong signature passing unnoticed would hide a signing bug). HEAD
//!   is signed as GET is, the session id: Veriff's documents do not name HEAD, and that is
//!   what idgate sends (docs/configuration.md, `scheme = "veriff"`).
//!
//! Every comparison is constant-time. Refusals say which header was wrong, never what was
//! expected, and nothing here logs a credential value.

use http::HeaderMap;
use http::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::didit_webhook::verify_hex;
use crate::util::{self, CtSecret};

/// How far Sumsub's `X-App-Access-Ts` may be from now, either way.
pub const SUMSUB_TS_TOLERANCE_SECS: i64 = 300;

/// How callers must authenticate, as one of the providers would require.
#[derive(Debug, Clone)]
pub enum AuthMode {
    /// Didit: the `x-api-key` header.
    DiditApiKey(SecretString),
    /// Sumsub: `X-App-Token` plus an HMAC request signature with `secret`.
    Sumsub {
        app_token: SecretString,
        secret: SecretString,
    },
    /// Veriff: `X-AUTH-CLIENT` plus an HMAC signature with `secret`.
    Veriff {
        client: SecretString,
        secret: SecretString,
    },
}

impl AuthMode {
    /// `didit`, `sumsub` or `veriff`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::DiditApiKey(_) => "didit",
            Self::Sumsub { .. } => "sumsub",
            Self::Veriff { .. } => "veriff",
        }
    }
}

/// The prepared checker for one [`AuthMode`].
pub(crate) enum Authenticator {
    Didit {
        key: CtSecret,
    },
    Sumsub {
        token: CtSecret,
        secret: SecretString,
    },
    Veriff {
        client: CtSecret,
        secret: SecretString,
    },
}

/// A refused request: the 401 body in the provider's own error shape.
pub(crate) struct Refused(pub(crate) Value);

impl Authenticator {
    pub(crate) fn new(mode: &AuthMode) -> Self {
        match mode {
            AuthMode::DiditApiKey(key) => Self::Didit {
                key: CtSecret::new(key.expose_secret().as_bytes()),
            },
            AuthMode::Sumsub { app_token, secret } => Self::Sumsub {
                token: CtSecret::new(app_token.expose_secret().as_bytes()),
                secret: secret.clone(),
            },
            AuthMode::Veriff { client, secret } => Self::Veriff {
                client: CtSecret::new(client.expose_secret().as_bytes()),
                secret: secret.clone(),
            },
        }
    }

    pub(crate) fn is_veriff(&self) -> bool {
        matches!(self, Self::Veriff { .. })
    }

    pub(crate) fn check(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), Refused> {
        match self {
            Self::Didit { key } => check_didit(key, headers),
            Self::Sumsub { token, secret } => {
                check_sumsub(token, secret, method, path_and_query, headers, body)
            }
            Self::Veriff { client, secret } => {
                check_veriff(client, secret, method, path_and_query, headers, body)
            }
        }
    }
}

/// The header's value if it is present exactly once. A repeated credential header is
/// treated as absent: two values leave it ambiguous which one a proxy would use.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a [u8]> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    Some(first.as_bytes())
}

fn check_didit(key: &CtSecret, headers: &HeaderMap) -> Result<(), Refused> {
    let Some(presented) = single(headers, "x-api-key") else {
        return Err(Refused(
            json!({"detail": "Authentication credentials were not provided."}),
        ));
    };
    if key.matches(presented) {
        Ok(())
    } else {
        Err(Refused(json!({"detail": "Invalid API key."})))
    }
}

fn sumsub_refusal(description: &str) -> Refused {
    Refused(json!({
        "description": description,
        "code": 401,
        "correlationId": util::uuid_v4(),
    }))
}

fn check_sumsub(
    token: &CtSecret,
    secret: &SecretString,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refused> {
    match single(headers, "x-app-token") {
        Some(t) if token.matches(t) => {}
        Some(_) => return Err(sumsub_refusal("Invalid X-App-Token")),
        None => return Err(sumsub_refusal("X-App-Token header is missing")),
    }
    let Some(ts_raw) = single(headers, "x-app-access-ts") else {
        return Err(sumsub_refusal("X-App-Access-Ts header is missing"));
    };
    let Some(ts) = std::str::from_utf8(ts_raw)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
    else {
        return Err(sumsub_refusal("X-App-Access-Ts is not a unix timestamp"));
    };
    if (util::unix_now() - ts).abs() > SUMSUB_TS_TOLERANCE_SECS {
        return Err(sumsub_refusal(
            "Request timestamp is too far from the current time",
        ));
    }
    let Some(sig) = single(headers, "x-app-access-sig").and_then(|s| std::str::from_utf8(s).ok())
    else {
        return Err(sumsub_refusal("X-App-Access-Sig header is missing"));
    };
    let mut message = Vec::with_capacity(ts_raw.len() + 8 + path_and_query.len() + body.len());
    message.extend_from_slice(ts_raw);
    message.extend_from_slice(method.as_str().as_bytes());
    message.extend_from_slice(path_and_query.as_bytes());
    message.extend_from_slice(body);
    if verify_hex(secret.expose_secret().as_bytes(), &message, sig) {
        Ok(())
    } else {
        Err(sumsub_refusal("Request signature mismatch"))
    }
}

fn veriff_refusal(code: &str, message: &str) -> Refused {
    Refused(json!({"status": "fail", "code": code, "message": message}))
}

/// The session id Veriff signs for GET and DELETE: the path segment after `/sessions/`.
pub(crate) fn veriff_session_id(path_and_query: &str) -> Option<&str> {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    let (_, rest) = path.split_once("/sessions/")?;
    let id = rest.split('/').next().unwrap_or("");
    (!id.is_empty()).then_some(id)
}

/// `POST /v1/sessions` (the trailing slash optional, as the router takes it).
fn is_veriff_create(method: &Method, path_and_query: &str) -> bool {
    let path = path_and_query
        .split_once('?')
        .map_or(path_and_query, |(p, _)| p);
    *method == Method::POST && matches!(path, "/v1/sessions" | "/v1/sessions/")
}

fn check_veriff(
    client: &CtSecret,
    secret: &SecretString,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Refused> {
    match single(headers, "x-auth-client") {
        Some(c) if client.matches(c) => {}
        Some(_) => return Err(veriff_refusal("1801", "Invalid X-AUTH-CLIENT")),
        None => {
            return Err(veriff_refusal(
                "1801",
                "Mandatory X-AUTH-CLIENT header containing the API key is missing",
            ));
        }
    }
    let sig = match single(headers, "x-hmac-signature") {
        Some(s) => std::str::from_utf8(s).ok(),
        // Session creation is the one call Veriff takes without a signature.
        None if is_veriff_create(method, path_and_query) => return Ok(()),
        None => None,
    };
    let Some(sig) = sig else {
        return Err(veriff_refusal(
            "1812",
            "Mandatory X-HMAC-SIGNATURE header is missing",
        ));
    };
    let payload: &[u8] = if matches!(*method, Method::GET | Method::HEAD | Method::DELETE) {
        veriff_session_id(path_and_query).map_or(body, str::as_bytes)
    } else {
        body
    };
    if verify_hex(secret.expose_secret().as_bytes(), payload, sig) {
        Ok(())
    } else {
        Err(veriff_refusal(
            "1812",
            "Signature does not match the HMAC-SHA256 of the payload and the integration's secret",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veriff_session_id_is_the_segment_after_sessions() {
        assert_eq!(veriff_session_id("/v1/sessions/abc/decision"), Some("abc"));
        assert_eq!(veriff_session_id("/v1/sessions/abc"), Some("abc"));
        assert_eq!(veriff_session_id("/v1/sessions/abc?x=1"), Some("abc"));
        assert_eq!(veriff_session_id("/v1/sessions"), None);
        assert_eq!(veriff_session_id("/v1/sessions/"), None);
        assert_eq!(veriff_session_id("/v3/session/abc/decision/"), None);
    }

    #[test]
    fn repeated_credential_header_is_refused() {
        let a = Authenticator::new(&AuthMode::DiditApiKey("k".into()));
        let mut h = HeaderMap::new();
        h.append("x-api-key", "k".parse().unwrap());
        assert!(a.check(&Method::GET, "/", &h, b"").is_ok());
        h.append("x-api-key", "k".parse().unwrap());
        assert!(a.check(&Method::GET, "/", &h, b"").is_err());
    }
}
