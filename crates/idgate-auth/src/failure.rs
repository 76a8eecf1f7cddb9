//! Why authentication or authorization failed, and how the caller is told: 401 with a
//! challenge (RFC 6750 error codes for bearer tokens) or 403. The detail helps the caller fix
//! the request and never says which part of a secret was wrong.

use http::StatusCode;

/// Which credential a challenge is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    MutualTls,
    ApiKey,
    Bearer,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// The route needs a client certificate and the connection has none.
    #[error("client certificate required")]
    NoClientCertificate,
    /// No credential of any accepted kind was presented.
    #[error("credentials required")]
    Missing { schemes: Vec<Scheme> },
    /// An API key was sent in the query string, where it would be logged by every proxy.
    #[error("API key in query string")]
    ApiKeyInQuery,
    /// The API key is malformed, unknown, revoked, expired or wrong — deliberately one case.
    #[error("invalid API key")]
    InvalidApiKey,
    /// The API key is bound to another workload identity.
    #[error("API key bound to another workload")]
    ApiKeyBindingMismatch,
    /// The request carries a malformed Authorization header or several credentials of a kind.
    #[error("malformed credentials: {0}")]
    InvalidRequest(&'static str),
    /// The bearer token failed verification; the reason is for the log and the
    /// `error_description`.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// The token is bound to a client certificate other than this connection's (RFC 8705).
    #[error("token bound to another certificate")]
    TokenBindingMismatch,
    /// Authenticated, and an identity on the allow list, but no allowed identity holds every
    /// scope the route requires.
    #[error("insufficient scope")]
    InsufficientScope { required: Vec<String> },
    /// Authenticated, but no identity is on the route's allow list.
    #[error("not allowed")]
    NotAllowed,
}

impl AuthFailure {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InsufficientScope { .. } | Self::NotAllowed | Self::ApiKeyBindingMismatch => {
                StatusCode::FORBIDDEN
            }
            Self::ApiKeyInQuery | Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// Whether this counts as a failed authentication attempt (for lockouts): a wrong
    /// credential, not a missing one or a missing permission. A token refused because its
    /// issuer's keys could not be fetched, or because its `kid` could not be looked for in
    /// them just now, is not the caller's failure: counting it would lock every caller out
    /// during (and for the cool-down after) the issuer's outage, or after it rotates its key.
    pub fn is_failed_attempt(&self) -> bool {
        use crate::jwt::jwks::{KEY_NOT_LOOKED_UP, KEYS_UNAVAILABLE};
        match self {
            Self::InvalidToken(why) => ![KEYS_UNAVAILABLE, KEY_NOT_LOOKED_UP].contains(why),
            Self::InvalidApiKey | Self::TokenBindingMismatch | Self::ApiKeyBindingMismatch => true,
            _ => false,
        }
    }

    /// A stable slug for the problem `type`.
    pub fn slug(&self) -> &'static str {
        match self {
            Self::NoClientCertificate => "client-certificate-required",
            Self::Missing { .. } => "credentials-required",
            Self::ApiKeyInQuery => "api-key-in-query",
            Self::InvalidApiKey => "invalid-api-key",
            Self::ApiKeyBindingMismatch => "api-key-binding-mismatch",
            Self::InvalidRequest(_) => "invalid-credentials-request",
            Self::InvalidToken(_) => "invalid-token",
            Self::TokenBindingMismatch => "token-binding-mismatch",
            Self::InsufficientScope { .. } => "insufficient-scope",
            Self::NotAllowed => "forbidden",
        }
    }

    pub fn title(&self) -> &'static str {
        match self {
            Self::NoClientCertificate => "Client certificate required",
            Self::Missing { .. } => "Credentials required",
            Self::ApiKeyInQuery => "API key in query string",
            Self::InvalidApiKey => "Invalid API key",
            Self::ApiKeyBindingMismatch => "API key bound to another workload",
            Self::InvalidRequest(_) => "Malformed credentials",
            Self::InvalidToken(_) => "Invalid access token",
            Self::TokenBindingMismatch => "Access token bound to another certificate",
            Self::InsufficientScope { .. } => "Insufficient scope",
            Self::NotAllowed => "Caller not allowed",
        }
    }

    /// What the caller is told.
    pub fn detail(&self) -> String {
        match self {
            Self::NoClientCertificate => {
                "This route requires a client certificate (an X.509-SVID) on the TLS connection.".into()
            }
            Self::Missing { schemes } => {
                let names: Vec<&str> = schemes
                    .iter()
                    .map(|s| match s {
                        Scheme::MutualTls => "a client certificate",
                        Scheme::ApiKey => "an API key (x-api-key or Authorization: ApiKey)",
                        Scheme::Bearer => "a bearer token (Authorization: Bearer)",
                    })
                    .collect();
                format!("This route requires {}.", names.join(" or "))
            }
            Self::ApiKeyInQuery => {
                "API keys are accepted only in the x-api-key or Authorization: ApiKey header, never in the URL; this key should now be considered exposed and rotated.".into()
            }
            Self::InvalidApiKey => "The API key is not valid: it is unknown, revoked, expired or wrong.".into(),
            Self::ApiKeyBindingMismatch => "This API key is bound to another workload identity.".into(),
            Self::InvalidRequest(why) => format!("The credentials are malformed: {why}."),
            Self::InvalidToken(why) => format!("The access token is not valid: {why}."),
            Self::TokenBindingMismatch => {
                "The access token is bound to another client certificate; present it over the TLS connection whose certificate it was issued to.".into()
            }
            Self::InsufficientScope { required } => {
                format!(
                    "This route requires the scope(s): {}, held by a credential whose own identity the route allows.",
                    required.join(" ")
                )
            }
            Self::NotAllowed => "Your identity is not allowed to use this route.".into(),
        }
    }

    /// The `WWW-Authenticate` challenge for a 401 (and for a 403 on scope, per RFC 6750).
    pub fn challenge(&self, realm: &str) -> Option<String> {
        let quote = |s: &str| s.replace(['"', '\\'], "");
        match self {
            Self::NoClientCertificate => Some(format!("MutualTLS realm=\"{realm}\"")),
            Self::Missing { schemes } => Some(
                schemes
                    .iter()
                    .map(|s| match s {
                        Scheme::MutualTls => format!("MutualTLS realm=\"{realm}\""),
                        Scheme::ApiKey => format!("ApiKey realm=\"{realm}\""),
                        // RFC 6750 §3.1: no error code when no token was sent.
                        Scheme::Bearer => format!("Bearer realm=\"{realm}\""),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Self::InvalidApiKey => Some(format!("ApiKey realm=\"{realm}\", error=\"invalid_key\"")),
            Self::InvalidToken(why) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                quote(why)
            )),
            Self::TokenBindingMismatch => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"certificate binding mismatch\""
            )),
            Self::InvalidRequest(why) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"{}\"",
                quote(why)
            )),
            Self::InsufficientScope { required } => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{}\"",
                quote(&required.join(" "))
            )),
            Self::ApiKeyInQuery | Self::ApiKeyBindingMismatch | Self::NotAllowed => None,
        }
    }
}
