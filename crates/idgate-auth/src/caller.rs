//! The authenticated caller: every identity the route's layers established.

use idgate_tls::SpiffeId;

/// An API key that authenticated the request (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyIdentity {
    /// The key's public id (the part of the key before the secret).
    pub id: String,
    /// The name given at `idgate keys create --name`.
    pub name: String,
    pub scopes: Vec<String>,
}

/// An OAuth2 access token (JWT) that authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub issuer: String,
    pub subject: String,
    /// `client_id` (or `azp`) claim, when present.
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
}

/// Everything known about who is calling. Used by authorization, and later by rate limits
/// and audit.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub spiffe_id: Option<SpiffeId>,
    pub api_key: Option<ApiKeyIdentity>,
    pub token: Option<TokenIdentity>,
}

impl Caller {
    /// Scopes granted by the credentials presented (API key and token together).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.api_key
            .as_ref()
            .is_some_and(|k| k.scopes.iter().any(|s| s == scope))
            || self
                .token
                .as_ref()
                .is_some_and(|t| t.scopes.iter().any(|s| s == scope))
    }

    /// A short label for logs: the strongest identity present.
    pub fn label(&self) -> String {
        let mut parts = Vec::new();
        if let Some(id) = &self.spiffe_id {
            parts.push(id.to_string());
        }
        if let Some(k) = &self.api_key {
            parts.push(format!("apikey:{}", k.name));
        }
        if let Some(t) = &self.token {
            // A subject may be a person's e-mail or user id: logs name the client, or only the
            // issuer.
            parts.push(match &t.client_id {
                Some(c) => format!("client:{c}"),
                None => format!("token:{}", t.issuer),
            });
        }
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(" ")
        }
    }
}
