//! What a route requires of its callers: authentication layers, an allow list of identities
//! and scopes per method.

use std::fmt;

use http::Method;
use idgate_tls::{SpiffeIdError, SpiffeIdPattern};

use crate::caller::Caller;

/// One way a caller proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthLayer {
    /// The connection's verified X.509-SVID.
    Mtls,
    /// An idgate API key in `x-api-key` or `Authorization: ApiKey`.
    ApiKey,
    /// A JWT access token in `Authorization: Bearer`, from a configured issuer or idgate's
    /// own token endpoint.
    Jwt,
}

impl AuthLayer {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mtls" => Some(Self::Mtls),
            "api_key" => Some(Self::ApiKey),
            "jwt" => Some(Self::Jwt),
            _ => None,
        }
    }
}

impl fmt::Display for AuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mtls => "mtls",
            Self::ApiKey => "api_key",
            Self::Jwt => "jwt",
        })
    }
}

/// One entry of a route's `auth` list: a layer that must pass, or a set of which any one
/// must pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    One(AuthLayer),
    Any(Vec<AuthLayer>),
}

impl Requirement {
    pub fn layers(&self) -> &[AuthLayer] {
        match self {
            Self::One(l) => std::slice::from_ref(l),
            Self::Any(ls) => ls,
        }
    }
}

/// A route's authentication policy: every requirement must be met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAuth {
    pub requirements: Vec<Requirement>,
}

impl Default for RouteAuth {
    /// Mutual TLS alone, the gateway's foundation.
    fn default() -> Self {
        Self {
            requirements: vec![Requirement::One(AuthLayer::Mtls)],
        }
    }
}

impl RouteAuth {
    /// Whether a layer appears anywhere in the policy.
    pub fn uses(&self, layer: AuthLayer) -> bool {
        self.requirements
            .iter()
            .any(|r| r.layers().contains(&layer))
    }
}

/// An entry of a route's `allow` list. A caller passes when any of its identities matches any
/// entry:
/// - `spiffe://td/path` or `spiffe://td/prefix/*` — the connection's SPIFFE ID;
/// - `apikey:NAME` — an API key created with `--name NAME`;
/// - `client:ID` — an OAuth2 client (the token's `client_id`/`azp` claim);
/// - `sub:SUBJECT` — a token's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    Spiffe(SpiffeIdPattern),
    ApiKey(String),
    /// A client id, and the issuer (`iss`) it must come from when several are configured.
    Client(String, Option<String>),
    /// A subject, and the issuer (`iss`) it must come from when several are configured.
    Subject(String, Option<String>),
}

/// Why an allow-list entry is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowEntryError {
    #[error("not a SPIFFE ID: {0}")]
    Spiffe(SpiffeIdError),
    #[error("write spiffe://..., apikey:NAME, client:ID or sub:SUBJECT")]
    Unknown,
    #[error("the name after the prefix is empty")]
    Empty,
}

impl AllowEntry {
    pub fn parse(s: &str) -> Result<Self, AllowEntryError> {
        let named = |rest: &str, make: fn(String) -> Self| {
            if rest.is_empty() {
                Err(AllowEntryError::Empty)
            } else {
                Ok(make(rest.to_owned()))
            }
        };
        if s.starts_with("spiffe:") {
            SpiffeIdPattern::new(s)
                .map(Self::Spiffe)
                .map_err(AllowEntryError::Spiffe)
        } else if let Some(rest) = s.strip_prefix("apikey:") {
            named(rest, Self::ApiKey)
        } else if let Some(rest) = s.strip_prefix("client:") {
            named(rest, |id| Self::Client(id, None))
        } else if let Some(rest) = s.strip_prefix("sub:") {
            named(rest, |sub| Self::Subject(sub, None))
        } else {
            Err(AllowEntryError::Unknown)
        }
    }

    pub fn matches(&self, caller: &Caller) -> bool {
        match self {
            Self::Spiffe(p) => caller.spiffe_id.as_ref().is_some_and(|id| p.matches(id)),
            Self::ApiKey(name) => caller.api_key.as_ref().is_some_and(|k| &k.name == name),
            Self::Client(c, iss) => caller.token.as_ref().is_some_and(|t| {
                t.client_id.as_deref() == Some(c.as_str())
                    && iss.as_ref().is_none_or(|i| *i == t.issuer)
            }),
            Self::Subject(sub, iss) => caller
                .token
                .as_ref()
                .is_some_and(|t| t.subject == *sub && iss.as_ref().is_none_or(|i| *i == t.issuer)),
        }
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Spiffe(p) => write!(f, "{p}"),
            Self::ApiKey(n) => write!(f, "apikey:{n}"),
            Self::Client(c, None) => write!(f, "client:{c}"),
            Self::Client(c, Some(iss)) => write!(f, "client:{c} (from {iss})"),
            Self::Subject(s, None) => write!(f, "sub:{s}"),
            Self::Subject(s, Some(iss)) => write!(f, "sub:{s} (from {iss})"),
        }
    }
}

/// The scopes a route requires: the same for every method, or per method.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ScopeRule {
    #[default]
    None,
    All(Vec<String>),
    PerMethod(Vec<(Method, Vec<String>)>),
}

impl ScopeRule {
    pub fn required(&self, method: &Method) -> &[String] {
        match self {
            Self::None => &[],
            Self::All(s) => s,
            Self::PerMethod(m) => m
                .iter()
                .find(|(mm, _)| mm == method)
                .map_or(&[], |(_, s)| s),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Self::None => true,
            Self::All(s) => s.is_empty(),
            Self::PerMethod(m) => m.iter().all(|(_, s)| s.is_empty()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::{ApiKeyIdentity, TokenIdentity};
    use idgate_tls::SpiffeId;

    #[test]
    fn allow_entries_match_their_own_kind_of_identity_only() {
        let caller = Caller {
            spiffe_id: Some(SpiffeId::new("spiffe://example.org/ns/kyc/sa/a").unwrap()),
            api_key: Some(ApiKeyIdentity {
                id: "k1".into(),
                name: "batch".into(),
                scopes: vec![],
            }),
            token: Some(TokenIdentity {
                issuer: "https://idp".into(),
                subject: "svc-1".into(),
                client_id: Some("onboarding".into()),
                scopes: vec![],
            }),
        };
        for (entry, ok) in [
            ("spiffe://example.org/ns/kyc/*", true),
            ("spiffe://example.org/ns/web/*", false),
            ("apikey:batch", true),
            ("apikey:other", false),
            ("client:onboarding", true),
            ("client:svc-1", false),
            ("sub:svc-1", true),
        ] {
            assert_eq!(
                AllowEntry::parse(entry).unwrap().matches(&caller),
                ok,
                "{entry}"
            );
        }
        assert!(AllowEntry::parse("batch").is_err());
        assert!(AllowEntry::parse("apikey:").is_err());
        assert!(matches!(
            AllowEntry::parse("spiffe://Bad/x"),
            Err(AllowEntryError::Spiffe(_))
        ));
        assert!(
            !AllowEntry::parse("apikey:batch")
                .unwrap()
                .matches(&Caller::default())
        );
    }

    #[test]
    fn scopes_per_method() {
        let rule = ScopeRule::PerMethod(vec![(Method::POST, vec!["sessions:write".into()])]);
        assert_eq!(rule.required(&Method::POST), ["sessions:write".to_owned()]);
        assert!(rule.required(&Method::GET).is_empty());
    }
}
