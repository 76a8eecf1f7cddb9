//! The authentication sections: `[api_keys]`, `[[jwt_issuers]]`, `[token_endpoint]`, and a
//! route's `auth`, `scopes` and `allow` entries. (`[jwt_svid]` is in `jwt_svid`.)

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use http::{Method, Uri};
use idgate_auth::jwt::{Algorithm, AlgorithmError};
use idgate_auth::policy::{
    AllowEntry, AllowEntryError, AuthLayer, Requirement, RouteAuth, ScopeRule,
};
use idgate_secrets::SecretRef;
use idgate_tls::{SpiffeId, SpiffeIdPattern, TrustDomain};

use crate::context::Ctx;
use crate::raw;

/// Where the API keys are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyStoreConfig {
    /// A redb file of their own (`[api_keys] store`).
    File(PathBuf),
    /// The shared `[state]` backend (Redis), so that every replica sees the same keys.
    State,
}

/// `[api_keys]`: where caller API keys are stored and the pepper their hashes are keyed with.
#[derive(Debug, Clone)]
pub struct ApiKeysConfig {
    pub store: ApiKeyStoreConfig,
    pub pepper: SecretRef,
    /// How often the running gateway re-reads the store (revocations take effect within it).
    pub reload_interval: Duration,
}

/// One `[[jwt_issuers]]` entry: an outside OAuth2/OIDC server whose access tokens are
/// accepted. The verifier's own configuration type, so nothing is copied field by field.
pub type JwtIssuerConfig = idgate_auth::jwt::IssuerConfig;

/// A client of the built-in token endpoint.
#[derive(Debug, Clone)]
pub struct TokenClientConfig {
    pub client_id: String,
    /// RFC 8705 `tls_client_auth`: the client is the workload presenting this SVID.
    pub spiffe_id: Option<SpiffeId>,
    /// Or a client secret (HTTP Basic or form post).
    pub client_secret: Option<SecretRef>,
    pub scopes: Vec<String>,
    /// The rate-limit tier of the tokens issued to this client.
    pub tier: Option<String>,
}

/// The most `previous_signing_keys`: a rotation needs one.
pub(crate) const MAX_PREVIOUS_SIGNING_KEYS: usize = 4;

/// `[token_endpoint]`: the built-in OAuth2 client-credentials endpoint.
#[derive(Debug, Clone)]
pub struct TokenEndpointConfig {
    pub issuer: String,
    pub audience: String,
    /// A PKCS#8 PEM private key (P-256 for ES256, Ed25519 for EdDSA).
    pub signing_key: SecretRef,
    /// The keys signed with before a rotation: their tokens are still accepted, and their
    /// public halves published, until they are taken out.
    pub previous_signing_keys: Vec<SecretRef>,
    pub token_ttl: Duration,
    pub clients: Vec<TokenClientConfig>,
}

/// Parses a secret reference and checks the secret can be had, recording problems under
/// `key`.
pub(crate) fn available(cx: &mut Ctx<'_>, key: &str, s: &str) -> Option<SecretRef> {
    let r = SecretRef::parse(s, cx.base)
        .map_err(|e| cx.err(key, e.to_string()))
        .ok()?;
    cx.secret_available(key, &r);
    Some(r)
}

/// `shared_state`: `[state]` is a backend every replica shares (Redis), where the keys go
/// when no file is named.
pub(crate) fn api_keys(
    cx: &mut Ctx<'_>,
    a: raw::ApiKeys,
    shared_state: bool,
    warnings: &mut Vec<String>,
) -> Option<ApiKeysConfig> {
    let before = cx.errors.len();
    let pepper = available(cx, "api_keys.pepper", &a.pepper);
    let store = match a.store {
        None if shared_state => ApiKeyStoreConfig::State,
        None => {
            cx.err(
                "api_keys.store",
                "missing: name a file for the keys, or keep them in a shared [state] backend (backend = \"redis\")",
            );
            ApiKeyStoreConfig::State
        }
        Some(file) => {
            let store = cx.path(&file);
            if let Some(parent) = store.parent()
                && !parent.as_os_str().is_empty()
                && !parent.is_dir()
            {
                cx.err(
                    "api_keys.store",
                    format!("directory {} does not exist", parent.display()),
                );
            }
            if shared_state {
                warnings.push(
                    "api_keys.store names a file while [state] is shared: replicas do not share keys kept in a file; leave store out to keep them in [state]".to_owned(),
                );
            }
            ApiKeyStoreConfig::File(store)
        }
    };
    let reload_interval = cx.duration(
        "api_keys.reload_interval",
        a.reload_interval,
        Duration::from_millis(250),
    );
    if reload_interval > Duration::from_secs(1) {
        cx.err(
            "api_keys.reload_interval",
            "must be at most 1s, so that a revoked key stops working within a second",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(ApiKeysConfig {
        store,
        pepper: pepper?,
        reload_interval,
    })
}

/// The name allow entries give the gateway's own token endpoint (`client:ID@token_endpoint`).
pub(crate) const TOKEN_ENDPOINT_ISSUER: &str = "token_endpoint";

/// Every `[[jwt_issuers]]` entry. Allow entries name an issuer by its `name`
/// (`client:ID@NAME`), so a name is unique and never the built-in issuer's: a second
/// issuer of one name, or an outside one named `token_endpoint`, would take the entries
/// meant for another.
pub(crate) fn jwt_issuers(
    cx: &mut Ctx<'_>,
    raws: Vec<(usize, raw::JwtIssuer)>,
) -> Vec<JwtIssuerConfig> {
    let mut seen: Vec<(usize, String)> = Vec::new();
    let mut out = Vec::new();
    for (i, j) in raws {
        let key = format!("jwt_issuers[{i}].name");
        if j.name == TOKEN_ENDPOINT_ISSUER {
            cx.err(
                key,
                "\"token_endpoint\" is the name of the gateway's own token endpoint in allow entries: choose another",
            );
        } else if let Some((first, _)) = seen.iter().find(|(_, n)| *n == j.name) {
            cx.err(
                key,
                format!(
                    "\"{}\" is already the name of jwt_issuers[{first}]: allow entries name issuers by name, so each must be unique",
                    j.name
                ),
            );
        } else if !j.name.is_empty() {
            seen.push((i, j.name.clone()));
        }
        out.extend(jwt_issuer(cx, i, j));
    }
    out
}

fn jwt_issuer(cx: &mut Ctx<'_>, i: usize, j: raw::JwtIssuer) -> Option<JwtIssuerConfig> {
    let key = format!("jwt_issuers[{i}]");
    let before = cx.errors.len();
    if j.name.is_empty() {
        cx.err(format!("{key}.name"), "must not be empty");
    }
    let issuer_uri = j.issuer.parse::<Uri>().ok().filter(|u| u.host().is_some());
    match &issuer_uri {
        Some(u) if u.scheme_str() == Some("https") => {}
        Some(u) if u.scheme_str() == Some("http") && is_loopback_uri(u) => {}
        _ => cx.err(
            format!("{key}.issuer"),
            "must be an https:// URL (http:// only on loopback)",
        ),
    }
    let jwks_uri = match j.jwks_uri.as_deref().map(str::parse::<Uri>) {
        None => None,
        Some(Ok(u))
            if u.scheme_str() == Some("https")
                || (u.scheme_str() == Some("http") && is_loopback_uri(&u)) =>
        {
            Some(u)
        }
        Some(_) => {
            cx.err(
                format!("{key}.jwks_uri"),
                "must be an https:// URL (http:// only on loopback)",
            );
            None
        }
    };
    let discovery = j.discovery.unwrap_or(jwks_uri.is_none());
    if jwks_uri.is_none() && !discovery {
        cx.err(
            format!("{key}.jwks_uri"),
            "missing: set jwks_uri or discovery = true",
        );
    }
    if j.audiences.is_empty() || j.audiences.iter().any(String::is_empty) {
        cx.err(
            format!("{key}.audiences"),
            "list the audiences (aud) tokens must carry",
        );
    }
    let names = j
        .algorithms
        .unwrap_or_else(|| vec!["RS256".into(), "ES256".into()]);
    if names.is_empty() {
        cx.err(format!("{key}.algorithms"), "list at least one algorithm");
    }
    let mut algorithms = Vec::new();
    for (n, a) in names.iter().enumerate() {
        match a.parse::<Algorithm>() {
            Ok(alg) => algorithms.push(alg),
            // A registered algorithm the gateway cannot verify: say so, not "unknown".
            Err(e @ AlgorithmError::Es512) => {
                cx.err(format!("{key}.algorithms[{n}]"), e.to_string())
            }
            Err(_) => cx.err(
                format!("{key}.algorithms[{n}]"),
                format!(
                    "\"{a}\" is not allowed: use {} (never none or HS*)",
                    Algorithm::NAMES
                ),
            ),
        }
    }
    let ca =
        j.ca.as_deref()
            .map(|p| cx.existing_file(&format!("{key}.ca"), p));
    // RFC 9068 §4: the media type compares without case, with or without `application/`.
    let require_at_jwt = match j.require_typ.as_deref() {
        None => false,
        Some(t)
            if t.eq_ignore_ascii_case("at+jwt") || t.eq_ignore_ascii_case("application/at+jwt") =>
        {
            true
        }
        Some(t) => {
            cx.err(
                format!("{key}.require_typ"),
                format!("\"{t}\" is not supported: the only value is \"at+jwt\" (RFC 9068)"),
            );
            false
        }
    };
    let out = JwtIssuerConfig {
        leeway: leeway(
            cx,
            &format!("{key}.leeway"),
            j.leeway,
            idgate_auth::jwt::DEFAULT_LEEWAY,
        ),
        jwks_refresh_interval: cx.duration(
            &format!("{key}.jwks_refresh_interval"),
            j.jwks_refresh_interval,
            Duration::from_secs(300),
        ),
        min_refresh_interval: cx.duration(
            &format!("{key}.min_refresh_interval"),
            j.min_refresh_interval,
            Duration::from_secs(30),
        ),
        name: j.name,
        issuer: j.issuer,
        jwks_uri,
        discovery,
        audiences: j.audiences,
        algorithms,
        ca,
        require_at_jwt,
    };
    (cx.errors.len() == before).then_some(out)
}

/// The longest clock leeway on a token's time claims.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// A token's clock leeway (`jwt_issuers[].leeway`, `jwt_svid.leeway`): zero or more, at
/// most [`MAX_LEEWAY`].
pub(crate) fn leeway(
    cx: &mut Ctx<'_>,
    key: &str,
    v: Option<String>,
    default: Duration,
) -> Duration {
    let leeway = duration_or_zero(cx, key, v, default);
    if leeway > MAX_LEEWAY {
        cx.err(
            key,
            "at most 5m: leeway is for clock skew, and lengthens every token's life",
        );
    }
    leeway
}

pub(crate) fn duration_or_zero(
    cx: &mut Ctx<'_>,
    key: &str,
    v: Option<String>,
    default: Duration,
) -> Duration {
    match v.as_deref() {
        Some("0s" | "0ms" | "0") => Duration::ZERO,
        _ => cx.duration(key, v, default),
    }
}

pub(crate) fn is_loopback_uri(u: &Uri) -> bool {
    u.host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

pub(crate) fn token_endpoint(
    cx: &mut Ctx<'_>,
    t: raw::TokenEndpoint,
) -> Option<TokenEndpointConfig> {
    let before = cx.errors.len();
    if t.issuer
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.host().map(|_| ()))
        .is_none()
    {
        cx.err(
            "token_endpoint.issuer",
            "must be a URL naming this gateway, like https://idgate.example.internal",
        );
    }
    if t.audience.is_empty() {
        cx.err("token_endpoint.audience", "must not be empty");
    }
    let signing_key = available(cx, "token_endpoint.signing_key", &t.signing_key);
    if t.previous_signing_keys.len() > MAX_PREVIOUS_SIGNING_KEYS {
        cx.err(
            "token_endpoint.previous_signing_keys",
            format!(
                "at most {MAX_PREVIOUS_SIGNING_KEYS}: keep a previous key only until the tokens it signed have expired (token_ttl)"
            ),
        );
    }
    let previous_signing_keys: Vec<SecretRef> = t
        .previous_signing_keys
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            available(cx, &format!("token_endpoint.previous_signing_keys[{i}]"), s)
        })
        .collect();
    let token_ttl = cx.duration(
        "token_endpoint.token_ttl",
        t.token_ttl,
        Duration::from_secs(300),
    );
    if token_ttl > Duration::from_secs(3600) {
        cx.err(
            "token_endpoint.token_ttl",
            "at most 1h: issued tokens are meant to be short-lived",
        );
    }
    if t.clients.is_empty() {
        cx.err(
            "token_endpoint.clients",
            "register at least one [[token_endpoint.clients]]",
        );
    }
    let mut ids = HashSet::new();
    let mut clients = Vec::new();
    for (i, c) in t.clients.into_iter().enumerate() {
        let key = format!("token_endpoint.clients[{i}]");
        if c.client_id.is_empty() || !ids.insert(c.client_id.clone()) {
            cx.err(format!("{key}.client_id"), "must be present and unique");
        }
        let spiffe_id = c.spiffe_id.as_deref().and_then(|s| {
            SpiffeId::new(s)
                .map_err(|e| {
                    cx.err(
                        format!("{key}.spiffe_id"),
                        format!("\"{s}\" is not a SPIFFE ID: {e}"),
                    )
                })
                .ok()
        });
        let client_secret = c
            .client_secret
            .as_deref()
            .and_then(|s| available(cx, &format!("{key}.client_secret"), s));
        if c.spiffe_id.is_none() && c.client_secret.is_none() {
            cx.err(
                key.clone(),
                "set spiffe_id (tls_client_auth) or client_secret",
            );
        }
        clients.push(TokenClientConfig {
            client_id: c.client_id,
            spiffe_id,
            client_secret,
            scopes: c.scopes,
            tier: c.tier,
        });
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(TokenEndpointConfig {
        issuer: t.issuer,
        audience: t.audience,
        signing_key: signing_key?,
        previous_signing_keys,
        token_ttl,
        clients,
    })
}

/// A route's `auth` list; absent means mutual TLS alone.
pub(crate) fn route_auth(
    cx: &mut Ctx<'_>,
    key: &str,
    items: Option<Vec<raw::AuthItem>>,
) -> RouteAuth {
    let Some(items) = items else {
        return RouteAuth::default();
    };
    if items.is_empty() {
        cx.err(
            format!("{key}.auth"),
            "list at least one layer: \"mtls\", \"api_key\", \"jwt\" or \"jwt_svid\"",
        );
    }
    let layer = |cx: &mut Ctx<'_>, k: String, s: &str| -> Option<AuthLayer> {
        AuthLayer::parse(s).or_else(|| {
            cx.err(
                k,
                format!(
                    "\"{s}\" is not a layer: use \"mtls\", \"api_key\", \"jwt\" or \"jwt_svid\""
                ),
            );
            None
        })
    };
    let mut requirements = Vec::new();
    for (n, item) in items.into_iter().enumerate() {
        match item {
            raw::AuthItem::Layer(s) => {
                if let Some(l) = layer(cx, format!("{key}.auth[{n}]"), &s) {
                    requirements.push(Requirement::One(l));
                }
            }
            raw::AuthItem::Any(any) => {
                if any.any.len() < 2 {
                    cx.err(
                        format!("{key}.auth[{n}].any"),
                        "list two or more layers, any of which may pass",
                    );
                }
                let ls: Vec<AuthLayer> = any
                    .any
                    .iter()
                    .enumerate()
                    .filter_map(|(m, s)| layer(cx, format!("{key}.auth[{n}].any[{m}]"), s))
                    .collect();
                requirements.push(Requirement::Any(ls));
            }
        }
    }
    let auth = RouteAuth { requirements };
    crate::jwt_svid::check_bearer_layers(cx, key, &auth);
    auth
}

pub(crate) fn route_scopes(
    cx: &mut Ctx<'_>,
    key: &str,
    scopes: Option<raw::Scopes>,
    methods: &[Method],
) -> ScopeRule {
    match scopes {
        None => ScopeRule::None,
        Some(raw::Scopes::All(list)) => ScopeRule::All(list),
        Some(raw::Scopes::PerMethod(map)) => {
            let mut out = Vec::new();
            for (m, list) in map {
                match Method::from_bytes(m.as_bytes()) {
                    Ok(method) if methods.contains(&method) => out.push((method, list)),
                    _ => cx.err(
                        format!("{key}.scopes.{m}"),
                        "names a method this route does not have",
                    ),
                }
            }
            ScopeRule::PerMethod(out)
        }
    }
}

/// Token issuers by the names `client:`/`sub:` allow entries may qualify themselves with
/// (`client:ID@NAME`): each `[[jwt_issuers]]` name, and `token_endpoint` for the built-in one.
pub(crate) type IssuerNames = Vec<(String, String)>;

pub(crate) fn allow_entry(
    cx: &mut Ctx<'_>,
    key: String,
    s: &str,
    issuers: &IssuerNames,
) -> Option<AllowEntry> {
    match AllowEntry::parse(s) {
        Ok(AllowEntry::Client(id, _)) => {
            qualify(cx, key, s, id, issuers).map(|(id, iss)| AllowEntry::Client(id, iss))
        }
        Ok(AllowEntry::Subject(sub, _)) => {
            qualify(cx, key, s, sub, issuers).map(|(sub, iss)| AllowEntry::Subject(sub, iss))
        }
        Ok(e) => Some(e),
        Err(AllowEntryError::Spiffe(e)) => {
            cx.err(key, format!("\"{s}\" is not a SPIFFE ID: {e}"));
            None
        }
        Err(e) => {
            cx.err(key, format!("\"{s}\": {e}"));
            None
        }
    }
}

/// Refuses a SPIFFE ID pattern of a trust domain the gateway has no bundle for (when it
/// names its trust domains: with the Workload API any may come): no caller could match it,
/// and a typo would leave the entry meaning nothing, silently.
pub(crate) fn known_trust_domain(
    cx: &mut Ctx<'_>,
    key: String,
    pattern: &SpiffeIdPattern,
    trust_domains: &HashSet<TrustDomain>,
) {
    let td = match pattern {
        SpiffeIdPattern::Exact(id) => id.trust_domain_name(),
        SpiffeIdPattern::Prefix(prefix) => prefix
            .trim_start_matches("spiffe://")
            .split('/')
            .next()
            .unwrap_or_default(),
    };
    if !trust_domains.is_empty() && !trust_domains.iter().any(|t| t.as_str() == td) {
        cx.err(
            key,
            format!(
                "trust domain {td} has no [[identity.trust_bundles]] entry, so no caller could match"
            ),
        );
    }
}

/// Splits `NAME@ISSUER` when ISSUER names a configured issuer. With several issuers an
/// unqualified name is refused: the same client id or subject from another issuer would match.
fn qualify(
    cx: &mut Ctx<'_>,
    key: String,
    s: &str,
    name: String,
    issuers: &IssuerNames,
) -> Option<(String, Option<String>)> {
    if let Some((n, issuer)) = name.rsplit_once('@')
        && let Some((_, iss)) = issuers.iter().find(|(label, _)| label == issuer)
    {
        return Some((n.to_owned(), Some(iss.clone())));
    }
    if issuers.len() > 1 {
        let names: Vec<&str> = issuers.iter().map(|(n, _)| n.as_str()).collect();
        cx.err(
            key,
            format!(
                "\"{s}\" could match a token of any of several issuers: write it as {s}@ISSUER, with ISSUER one of {}",
                names.join(", ")
            ),
        );
        return None;
    }
    Some((name, issuers.first().map(|(_, iss)| iss.clone())))
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
