//! The authenticated caller: every identity the route's layers established, and the
//! principals authorization judges them as.
//!
//! A principal is one identity with the scopes it holds. The connection's SVID, an API key
//! and a token are each a principal of their own; the SVID is part of a key's or a token's
//! principal only when that credential is bound to it. Authorization then asks one principal
//! to be on the allow list *and* to hold the scopes, so that credentials of different parties
//! presented together never add up.

use std::fmt;
use std::sync::Arc;

use idgate_tls::SpiffeId;

pub use crate::jwt_svid::JwtSvidIdentity;

/// An API key that authenticated the request (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyIdentity {
    /// The key's public id (the part of the key before the secret).
    pub id: String,
    /// The name given at `idgate keys create --name`.
    pub name: String,
    pub scopes: Vec<String>,
    /// The workload the key is bound to (`--bind-spiffe`); verification has checked that it
    /// is the connection's.
    pub workload: Option<SpiffeId>,
}

/// An OAuth2 access token (JWT) that authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub issuer: String,
    pub subject: String,
    /// `client_id` (or `azp`) claim, when present.
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// The connection's workload, when the token is bound to the connection's certificate
    /// (RFC 8705) and was issued to that workload. Set by the pipeline, which knows the
    /// connection; a verifier alone never sets it.
    pub workload: Option<SpiffeId>,
}

/// Everything known about who is calling. Used by authorization, and later by rate limits
/// and audit.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The connection's SVID, when the route's `auth` lists `mtls`: a principal with no
    /// scopes. On other routes the SVID counts only as part of a credential bound to it.
    pub spiffe_id: Option<SpiffeId>,
    /// Shared with the verifier's table: a request does not copy the key's names and scopes.
    pub api_key: Option<Arc<ApiKeyIdentity>>,
    pub token: Option<TokenIdentity>,
    /// A JWT-SVID in `Authorization: Bearer`, when the route's `auth` lists `jwt_svid`.
    pub jwt_svid: Option<JwtSvidIdentity>,
}

/// One identity with the scopes it holds: what the allow list and the scopes are checked
/// against, together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal<'a> {
    /// The connection's SVID on a route that lists `mtls`.
    Workload(&'a SpiffeId),
    /// An API key, with the workload it is bound to, if any.
    ApiKey(&'a ApiKeyIdentity),
    /// A token, with the workload it is bound to and was issued to, if any.
    Token(&'a TokenIdentity),
    /// A workload that presented a JWT-SVID: like the connection's SVID, a SPIFFE ID with
    /// no scopes.
    JwtSvid(&'a JwtSvidIdentity),
}

impl<'a> Principal<'a> {
    /// The SPIFFE ID this principal is, or is bound to.
    pub fn workload(self) -> Option<&'a SpiffeId> {
        match self {
            Self::Workload(id) => Some(id),
            Self::ApiKey(k) => k.workload.as_ref(),
            Self::Token(t) => t.workload.as_ref(),
            Self::JwtSvid(s) => Some(&s.spiffe_id),
        }
    }

    /// The scopes this principal holds: a workload by itself holds none.
    pub fn scopes(self) -> &'a [String] {
        match self {
            Self::Workload(_) | Self::JwtSvid(_) => &[],
            Self::ApiKey(k) => &k.scopes,
            Self::Token(t) => &t.scopes,
        }
    }

    pub fn has_scope(self, scope: &str) -> bool {
        self.scopes().iter().any(|s| s == scope)
    }
}

impl Principal<'_> {
    /// The label of [`fmt::Display`], as a `String` made without `format!`'s machinery (the
    /// access log and the trail take it once a request).
    pub fn label(&self) -> String {
        let [kind, name] = self.label_pieces();
        let mut s = String::with_capacity(kind.len() + name.len());
        s.push_str(kind);
        s.push_str(name);
        s
    }

    /// A short label for logs, in two pieces. A token's subject may be a person's e-mail or
    /// user id: logs name the client, or only the issuer.
    fn label_pieces(&self) -> [&str; 2] {
        match self {
            Self::Workload(id) => ["", id.as_str()],
            Self::ApiKey(k) => ["apikey:", &k.name],
            Self::Token(t) => match &t.client_id {
                Some(c) => ["client:", c],
                None => ["token:", &t.issuer],
            },
            // Said apart from a connection's SVID: a bearer token can be replayed, a
            // certificate's key cannot, and whoever reads the log should know which it was.
            Self::JwtSvid(s) => ["jwt-svid:", s.spiffe_id.as_str()],
        }
    }
}

impl fmt::Display for Principal<'_> {
    /// A short label for logs (see [`Principal::label`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [kind, name] = self.label_pieces();
        f.write_str(kind)?;
        f.write_str(name)
    }
}

impl Caller {
    /// Every principal the request established, credentials first.
    pub fn principals(&self) -> impl Iterator<Item = Principal<'_>> {
        let token = self.token.as_ref().map(Principal::Token);
        let key = self.api_key.as_deref().map(Principal::ApiKey);
        let svid = self.jwt_svid.as_ref().map(Principal::JwtSvid);
        let workload = self.spiffe_id.as_ref().map(Principal::Workload);
        token.into_iter().chain(key).chain(svid).chain(workload)
    }

    /// A short label for logs naming every principal, or `None` when there is none.
    pub fn label(&self) -> Option<String> {
        use std::fmt::Write as _;
        let mut principals = self.principals();
        let mut out = principals.next()?.to_string();
        for p in principals {
            let _ = write!(out, " {p}");
        }
        Some(out)
    }
}
