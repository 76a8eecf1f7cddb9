//! What a route requires of its callers: authentication layers, an allow list of identities
//! and scopes per method.

use std::fmt;

use http::Method;
use idgate_tls::{SpiffeIdError, SpiffeIdPattern};

use crate::caller::{Caller, Principal};
use crate::failure::AuthFailure;

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
    /// A SPIFFE JWT-SVID in `Authorization: Bearer`, verified against its trust domain's
    /// JWT bundle (`[jwt_svid]`).
    JwtSvid,
}

impl AuthLayer {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mtls" => Some(Self::Mtls),
            "api_key" => Some(Self::ApiKey),
            "jwt" => Some(Self::Jwt),
            "jwt_svid" => Some(Self::JwtSvid),
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
            Self::JwtSvid => "jwt_svid",
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

/// An entry of a route's `allow` list, matched against one principal at a time:
/// - `spiffe://td/path` or `spiffe://td/prefix/*` — the connection's SPIFFE ID (on a route
///   that lists `mtls`), a JWT-SVID's subject (on a route that lists `jwt_svid`), or the
///   workload a key or token is bound to;
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

    pub fn matches(&self, principal: Principal<'_>) -> bool {
        match (self, principal) {
            (Self::Spiffe(p), _) => principal.workload().is_some_and(|id| p.matches(id)),
            (Self::ApiKey(name), Principal::ApiKey(k)) => k.name == *name,
            (Self::Client(c, iss), Principal::Token(t)) => {
                t.client_id.as_deref() == Some(c.as_str())
                    && iss.as_ref().is_none_or(|i| *i == t.issuer)
            }
            (Self::Subject(sub, iss), Principal::Token(t)) => {
                t.subject == *sub && iss.as_ref().is_none_or(|i| *i == t.issuer)
            }
            _ => false,
        }
    }
}

/// Stage 4's decision, default deny: one principal must be on the allow list *and* hold every
/// scope in `required`; identities and scopes of different principals never combine.
/// Returns the principal that passed. Refused, the caller learns it lacks a scope when one of
/// its principals is allowed (it can fetch a better token), and otherwise that it is not
/// allowed.
pub fn authorize<'c>(
    allow: &[AllowEntry],
    required: &[String],
    caller: &'c Caller,
) -> Result<Principal<'c>, AuthFailure> {
    let mut allowed = false;
    for p in caller.principals() {
        if allow.iter().any(|e| e.matches(p)) {
            if required.iter().all(|s| p.has_scope(s)) {
                return Ok(p);
            }
            allowed = true;
        }
    }
    Err(if allowed {
        AuthFailure::InsufficientScope {
            required: required.to_vec(),
        }
    } else {
        AuthFailure::NotAllowed
    })
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
    use std::sync::Arc;

    use crate::caller::{ApiKeyIdentity, TokenIdentity};
    use idgate_tls::SpiffeId;

    const KYC: &str = "spiffe://example.org/ns/kyc/sa/a";

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    fn key(name: &str, scopes: &[&str], workload: Option<&str>) -> ApiKeyIdentity {
        ApiKeyIdentity {
            id: "k1".into(),
            name: name.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            workload: workload.map(id),
        }
    }

    fn token(client: &str, scopes: &[&str], workload: Option<&str>) -> TokenIdentity {
        TokenIdentity {
            issuer: "https://idp".into(),
            subject: "svc-1".into(),
            client_id: Some(client.into()),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            workload: workload.map(id),
        }
    }

    fn allow(entries: &[&str]) -> Vec<AllowEntry> {
        entries
            .iter()
            .map(|e| AllowEntry::parse(e).unwrap())
            .collect()
    }

    #[test]
    fn allow_entries_match_their_own_kind_of_identity_only() {
        let svid = id(KYC);
        let k = key("batch", &[], None);
        let t = token("onboarding", &[], None);
        for (entry, principal, ok) in [
            (
                "spiffe://example.org/ns/kyc/*",
                Principal::Workload(&svid),
                true,
            ),
            (
                "spiffe://example.org/ns/web/*",
                Principal::Workload(&svid),
                false,
            ),
            (
                "spiffe://example.org/ns/kyc/*",
                Principal::ApiKey(&k),
                false,
            ),
            ("spiffe://example.org/ns/kyc/*", Principal::Token(&t), false),
            ("apikey:batch", Principal::ApiKey(&k), true),
            ("apikey:other", Principal::ApiKey(&k), false),
            ("apikey:batch", Principal::Workload(&svid), false),
            ("client:onboarding", Principal::Token(&t), true),
            ("client:svc-1", Principal::Token(&t), false),
            ("sub:svc-1", Principal::Token(&t), true),
            ("sub:svc-1", Principal::ApiKey(&k), false),
        ] {
            assert_eq!(
                AllowEntry::parse(entry).unwrap().matches(principal),
                ok,
                "{entry} {principal}"
            );
        }
        assert!(AllowEntry::parse("batch").is_err());
        assert!(AllowEntry::parse("apikey:").is_err());
        assert!(matches!(
            AllowEntry::parse("spiffe://Bad/x"),
            Err(AllowEntryError::Spiffe(_))
        ));
    }

    #[test]
    fn a_bound_credential_is_also_its_workload() {
        let k = key("batch", &[], Some(KYC));
        let t = token("onboarding", &[], Some(KYC));
        let kyc = AllowEntry::parse("spiffe://example.org/ns/kyc/*").unwrap();
        assert!(kyc.matches(Principal::ApiKey(&k)));
        assert!(kyc.matches(Principal::Token(&t)));
        assert!(
            AllowEntry::parse("client:onboarding")
                .unwrap()
                .matches(Principal::Token(&t))
        );
    }

    /// One principal must be on the allow list and hold every scope; nothing adds up across
    /// credentials.
    #[test]
    fn one_principal_must_be_allowed_and_hold_the_scopes() {
        let svid = || Some(id(KYC));
        // (case, allow, caller, expected: Ok(label of the principal) or the failure's slug);
        // the method requires `sessions:write`.
        type Case = (
            &'static str,
            Vec<AllowEntry>,
            Caller,
            Result<&'static str, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                "SVID alone lacks the scope",
                allow(&["spiffe://example.org/ns/kyc/*"]),
                Caller {
                    spiffe_id: svid(),
                    ..Caller::default()
                },
                Err("insufficient-scope"),
            ),
            (
                "SVID allowed, someone else's token holds the scope",
                allow(&["spiffe://example.org/ns/kyc/*"]),
                Caller {
                    spiffe_id: svid(),
                    token: Some(token("someone-else", &["sessions:write"], None)),
                    ..Caller::default()
                },
                Err("insufficient-scope"),
            ),
            (
                "SVID allowed, an unbound key holds the scope",
                allow(&["spiffe://example.org/ns/kyc/*"]),
                Caller {
                    spiffe_id: svid(),
                    api_key: Some(Arc::new(key("batch", &["sessions:write"], None))),
                    ..Caller::default()
                },
                Err("insufficient-scope"),
            ),
            (
                "jwt-only route: the SVID is no principal, the token is not allowed",
                allow(&["spiffe://example.org/ns/kyc/*"]),
                Caller {
                    token: Some(token("someone-else", &["sessions:write"], None)),
                    ..Caller::default()
                },
                Err("forbidden"),
            ),
            (
                "a token bound to the allowed workload, with the scope",
                allow(&["spiffe://example.org/ns/kyc/*"]),
                Caller {
                    spiffe_id: svid(),
                    token: Some(token("onboarding", &["sessions:write"], Some(KYC))),
                    ..Caller::default()
                },
                Ok("client:onboarding"),
            ),
            (
                "a key bound to the allowed workload, with the scope",
                allow(&["spiffe://example.org/ns/kyc/*"]),
                Caller {
                    api_key: Some(Arc::new(key("batch", &["sessions:write"], Some(KYC)))),
                    ..Caller::default()
                },
                Ok("apikey:batch"),
            ),
            (
                "the token's own client is allowed and holds the scope",
                allow(&["client:onboarding"]),
                Caller {
                    spiffe_id: svid(),
                    token: Some(token("onboarding", &["sessions:write"], None)),
                    ..Caller::default()
                },
                Ok("client:onboarding"),
            ),
            (
                "an allowed key without the scope and an allowed token with it",
                allow(&["apikey:batch", "client:onboarding"]),
                Caller {
                    api_key: Some(Arc::new(key("batch", &[], None))),
                    token: Some(token("onboarding", &["sessions:write"], None)),
                    ..Caller::default()
                },
                Ok("client:onboarding"),
            ),
            (
                "nothing at all",
                allow(&["spiffe://example.org/ns/kyc/*"]),
                Caller::default(),
                Err("forbidden"),
            ),
        ];
        let required = ["sessions:write".to_owned()];
        for (case, allow, caller, expected) in cases {
            let got = authorize(&allow, &required, &caller)
                .map(|p| p.to_string())
                .map_err(|f| f.slug());
            assert_eq!(got.as_deref().map_err(|e| *e), expected, "{case}");
        }
        // Scopes split over two allowed credentials do not add up either.
        let split = Caller {
            api_key: Some(Arc::new(key("batch", &["sessions:read"], None))),
            token: Some(token("onboarding", &["sessions:write"], None)),
            ..Caller::default()
        };
        let both = ["sessions:read".to_owned(), "sessions:write".to_owned()];
        assert_eq!(
            authorize(
                &allow(&["apikey:batch", "client:onboarding"]),
                &both,
                &split
            ),
            Err(AuthFailure::InsufficientScope {
                required: both.to_vec()
            })
        );
        // Without required scopes the SVID alone passes, and is what the log names.
        let svid_only = Caller {
            spiffe_id: svid(),
            ..Caller::default()
        };
        let p = authorize(&allow(&["spiffe://example.org/ns/kyc/*"]), &[], &svid_only).unwrap();
        assert_eq!(
            p,
            Principal::Workload(&svid_only.spiffe_id.clone().unwrap())
        );
    }

    /// A JWT-SVID's subject is matched like a connection's SVID, holds no scope, and is
    /// named apart from it in logs.
    #[test]
    fn a_jwt_svid_is_a_workload_without_scopes() {
        let svid = crate::JwtSvidIdentity {
            spiffe_id: id(KYC),
            expires_at: std::time::UNIX_EPOCH,
        };
        let p = Principal::JwtSvid(&svid);
        assert!(
            AllowEntry::parse("spiffe://example.org/ns/kyc/*")
                .unwrap()
                .matches(p)
        );
        assert!(
            !AllowEntry::parse("spiffe://example.org/ns/web/*")
                .unwrap()
                .matches(p)
        );
        assert!(
            !AllowEntry::parse("sub:spiffe://example.org/ns/kyc/sa/a")
                .unwrap()
                .matches(p)
        );
        assert!(p.scopes().is_empty());
        let caller = Caller {
            jwt_svid: Some(svid.clone()),
            ..Caller::default()
        };
        let allow = allow(&["spiffe://example.org/ns/kyc/*"]);
        assert_eq!(
            authorize(&allow, &[], &caller),
            Ok(Principal::JwtSvid(&svid))
        );
        assert_eq!(
            authorize(&allow, &["sessions:read".to_owned()], &caller)
                .unwrap_err()
                .slug(),
            "insufficient-scope"
        );
        assert_eq!(
            caller.label().as_deref(),
            Some("jwt-svid:spiffe://example.org/ns/kyc/sa/a")
        );
        assert_eq!(AuthLayer::parse("jwt_svid"), Some(AuthLayer::JwtSvid));
        assert_eq!(AuthLayer::JwtSvid.to_string(), "jwt_svid");
    }

    #[test]
    fn scopes_per_method() {
        let rule = ScopeRule::PerMethod(vec![(Method::POST, vec!["sessions:write".into()])]);
        assert_eq!(rule.required(&Method::POST), ["sessions:write".to_owned()]);
        assert!(rule.required(&Method::GET).is_empty());
    }
}
