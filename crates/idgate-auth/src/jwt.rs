//! JWT access tokens (RFC 9068) in `Authorization: Bearer`: from outside OAuth2/OIDC
//! servers, whose keys are fetched from their JWKS, and from issuers whose keys are given
//! directly (idgate's own token endpoint).
//!
//! A token is verified in this order, each step refusing with a short reason that goes to
//! the log and to the caller's `error_description` (none of them says anything secret):
//!
//! 1. shape — three base64url parts, at most [`MAX_TOKEN_BYTES`], strict JSON objects, an
//!    `alg` we implement (`none` and HMAC never), no `crit` extension;
//! 2. issuer — the unverified `iss` picks a configured issuer; its allowed algorithms;
//! 3. key — by `kid` (an unknown one refreshes the JWKS, rate-limited), or the issuer's
//!    only key for the algorithm; the key's type, curve and own `alg` must fit the token's
//!    `alg`, which is what defeats algorithm confusion. A `kid` that could not be looked
//!    for (refresh not allowed yet, or failed) is refused with a reason of its own, which
//!    is not a failed attempt: right after an issuer rotates its key, honest callers come
//!    with the new one;
//! 4. signature — `ring`;
//! 5. claims — `iss`, `aud`, `exp`, `nbf`, `iat` (with leeway), `sub`; then the identity:
//!    `client_id`/`azp`, scopes from `scope` and `scp`, and the certificate binding
//!    `cnf.x5t#S256` (RFC 8705) for the pipeline to compare with the connection's. A `cnf`
//!    naming anything else (a DPoP key, a JWK) is refused: the gateway cannot check that
//!    proof, so the token is not a bearer token (RFC 9449 §7).
//!
//! An issuer may also require `typ: at+jwt` (RFC 9068 §4), so that its ID tokens — signed
//! with the same keys, for the same audience at times — are never taken for access tokens.

pub(crate) mod claims;
mod errors;
pub mod json;
pub(crate) mod jwk;
pub(crate) mod jwks;
pub(crate) mod jws;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, Uri};

pub use errors::{
    DiscoveryError, DiscoveryUriError, FetchError, FetchUriError, HttpClientError, IssuerProblem,
    IssuerSetupError, JwkError, JwksError, KeyError, RefreshError,
};
pub use jwk::Jwk;
pub use jwks::IssuerKeyCache;
pub use jws::{Algorithm, AlgorithmError, MAX_TOKEN_BYTES};

use crate::caller::TokenIdentity;
use crate::failure::AuthFailure;
use jwks::{JwksLocation, KeySet, KeySource, KidLookup, Remote, RemoteSettings};

/// Clock skew tolerated on `exp`, `nbf` and `iat` unless configured.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// How old fetched keys may get before they are refreshed in the background.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(300);
/// The least time between two fetches of one issuer's keys, whatever the tokens say.
pub const DEFAULT_MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// An outside OAuth2/OIDC authorization server whose access tokens are accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// A name for logs and metrics.
    pub name: String,
    /// The exact `iss` value of its tokens (and the base of its discovery URL).
    pub issuer: String,
    /// Where its JWKS is. When absent, it is found through the issuer's metadata.
    pub jwks_uri: Option<Uri>,
    /// Find the JWKS through `{issuer}/.well-known/openid-configuration` (or RFC 8414's
    /// `oauth-authorization-server`). Implied when `jwks_uri` is absent; a configured
    /// `jwks_uri` is used as it is, without asking the metadata.
    pub discovery: bool,
    /// Tokens must name one of these in `aud`.
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    /// Extra trusted roots (PEM) for the JWKS and metadata servers.
    pub ca: Option<PathBuf>,
    pub jwks_refresh_interval: Duration,
    pub min_refresh_interval: Duration,
    /// Refuse tokens whose header lacks `typ: at+jwt` (RFC 9068): ID tokens and other JWTs
    /// of this issuer are then never taken for access tokens.
    pub require_at_jwt: bool,
}

impl IssuerConfig {
    /// An issuer found by discovery, with every algorithm and the default intervals.
    pub fn new(name: impl Into<String>, issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self {
            name: name.into(),
            issuer: issuer.into(),
            jwks_uri: None,
            discovery: true,
            audiences,
            algorithms: Algorithm::ALL.to_vec(),
            leeway: DEFAULT_LEEWAY,
            ca: None,
            jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            min_refresh_interval: DEFAULT_MIN_REFRESH_INTERVAL,
            require_at_jwt: false,
        }
    }
}

/// An issuer whose public keys are given directly, never fetched: idgate's own token
/// endpoint registers its signing key this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    pub keys: Vec<Jwk>,
    /// As [`IssuerConfig::require_at_jwt`].
    pub require_at_jwt: bool,
}

impl StaticIssuer {
    /// With the default leeway, accepting any access-token `typ`.
    pub fn new(
        issuer: impl Into<String>,
        audiences: Vec<String>,
        algorithms: Vec<Algorithm>,
        keys: Vec<Jwk>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            algorithms,
            leeway: DEFAULT_LEEWAY,
            keys,
            require_at_jwt: false,
        }
    }
}

/// A verified access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtIdentity {
    pub token: TokenIdentity,
    /// RFC 8705 certificate binding: base64url SHA-256 of the client certificate's DER the
    /// token was issued to. When present the pipeline must compare it with the connection's.
    pub cnf_x5t_s256: Option<String>,
    pub expires_at: SystemTime,
}

struct Issuer {
    name: String,
    issuer: String,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    require_at_jwt: bool,
    keys: KeySource,
}

/// Verifies bearer tokens from the configured issuers. Built once per configuration
/// snapshot; cheap to share (`Send + Sync`); fetches keys lazily on first use, or takes
/// over those an earlier snapshot fetched ([`Self::with_key_cache`]).
pub struct JwtVerifier {
    issuers: HashMap<String, Issuer>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuers", &self.issuers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn check_common(
    issuer: &str,
    audiences: &[String],
    algorithms: &[Algorithm],
) -> Result<(), IssuerProblem> {
    if issuer.is_empty() {
        return Err(IssuerProblem::NoIssuer);
    }
    if audiences.is_empty() || audiences.iter().any(String::is_empty) {
        return Err(IssuerProblem::NoAudience);
    }
    if algorithms.is_empty() {
        return Err(IssuerProblem::NoAlgorithm);
    }
    Ok(())
}

impl JwtVerifier {
    /// Checks the configuration and builds the HTTP clients; no network. Blocking (reads
    /// `ca` files and the platform's roots).
    pub fn new(
        issuers: Vec<IssuerConfig>,
        static_issuers: Vec<StaticIssuer>,
    ) -> Result<Self, IssuerSetupError> {
        Self::with_key_cache(issuers, static_issuers, &IssuerKeyCache::default())
    }

    /// As [`Self::new`], taking over from `cache` the keys already fetched from each issuer
    /// (at the same JWKS address, through the same `ca`) by the verifiers of earlier
    /// snapshots, and leaving its own there for the next: a reload while an issuer is down
    /// keeps the keys it had.
    pub fn with_key_cache(
        issuers: Vec<IssuerConfig>,
        static_issuers: Vec<StaticIssuer>,
        cache: &IssuerKeyCache,
    ) -> Result<Self, IssuerSetupError> {
        let mut out: HashMap<String, Issuer> = HashMap::new();
        let mut insert = |issuer: Issuer| {
            if out.contains_key(&issuer.issuer) {
                return Err(IssuerProblem::Duplicate(issuer.issuer));
            }
            out.insert(issuer.issuer.clone(), issuer);
            Ok(())
        };
        for (position, cfg) in issuers.into_iter().enumerate() {
            let name = cfg.name.clone();
            let setup = |problem| IssuerSetupError {
                issuer: name.clone(),
                position: Some(position),
                problem,
            };
            if cfg.name.is_empty() {
                return Err(setup(IssuerProblem::NoName));
            }
            check_common(&cfg.issuer, &cfg.audiences, &cfg.algorithms).map_err(setup)?;
            // A configured jwks_uri is used as it is; discovery only finds one.
            let location = match &cfg.jwks_uri {
                Some(uri) => {
                    jwks::check_fetch_uri(uri).map_err(|e| setup(IssuerProblem::JwksUri(e)))?;
                    JwksLocation::Uri(uri.clone())
                }
                None => JwksLocation::Discover(
                    jwks::discovery_uris(&cfg.issuer)
                        .map_err(|e| setup(IssuerProblem::Discovery(e)))?,
                ),
            };
            if cfg.min_refresh_interval.is_zero() || cfg.jwks_refresh_interval.is_zero() {
                return Err(setup(IssuerProblem::ZeroRefreshInterval));
            }
            let client = jwks::http_client(cfg.ca.as_deref())
                .map_err(|e| setup(IssuerProblem::HttpClient(Box::new(e))))?;
            let remote = Remote::new(
                RemoteSettings {
                    name: cfg.name.clone(),
                    issuer: cfg.issuer.clone(),
                    location,
                    ca: cfg.ca.clone(),
                    refresh_interval: cfg.jwks_refresh_interval,
                    min_refresh_interval: cfg.min_refresh_interval,
                },
                client,
                cache,
            );
            insert(Issuer {
                name: cfg.name,
                issuer: cfg.issuer,
                audiences: cfg.audiences,
                algorithms: cfg.algorithms,
                leeway: cfg.leeway,
                require_at_jwt: cfg.require_at_jwt,
                keys: KeySource::Remote(Arc::new(remote)),
            })
            .map_err(setup)?;
        }
        for st in static_issuers {
            let iss = st.issuer.clone();
            let setup = |problem| IssuerSetupError {
                issuer: iss.clone(),
                position: None,
                problem,
            };
            check_common(&st.issuer, &st.audiences, &st.algorithms).map_err(setup)?;
            let keys = KeySet::from_jwks(&st.keys, 0).map_err(|e| setup(IssuerProblem::Key(e)))?;
            if keys.keys.is_empty() {
                return Err(setup(IssuerProblem::NoSigningKey));
            }
            insert(Issuer {
                name: st.issuer.clone(),
                issuer: st.issuer,
                audiences: st.audiences,
                algorithms: st.algorithms,
                leeway: st.leeway,
                require_at_jwt: st.require_at_jwt,
                keys: KeySource::Static(Arc::new(keys)),
            })
            .map_err(setup)?;
        }
        Ok(Self { issuers: out })
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// Fetches every outside issuer's keys now, so the first requests do not wait. Failures
    /// are logged and retried on use.
    pub async fn prefetch(&self) {
        for issuer in self.issuers.values() {
            if let KeySource::Remote(_) = issuer.keys {
                let _ = issuer.keys.current().await;
            }
        }
    }

    /// Whether the unverified `iss` of `token` names one of the configured issuers. Where a
    /// route takes an access token or a JWT-SVID for the same header, this says which of
    /// the two the token is meant to be; nothing about it is trusted yet.
    pub fn is_issuer_of(&self, token: &str) -> bool {
        jws::parse_with(token, |_| Ok(false)).is_ok_and(|u| {
            u.claims
                .get("iss")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|iss| self.issuers.contains_key(iss))
        })
    }

    /// Verifies a compact JWS access token at time `now`.
    pub async fn verify(&self, token: &str, now: SystemTime) -> Result<JwtIdentity, AuthFailure> {
        self.verify_inner(token, now)
            .await
            .map_err(AuthFailure::InvalidToken)
    }

    async fn verify_inner(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<JwtIdentity, &'static str> {
        let unverified = jws::parse(token)?;
        let Some(serde_json::Value::String(iss)) = unverified.claims.get("iss") else {
            return Err("missing issuer");
        };
        let issuer = self.issuers.get(iss).ok_or("unknown issuer")?;
        let alg = unverified.alg;
        if !issuer.algorithms.contains(&alg) {
            return Err("algorithm not allowed");
        }
        if issuer.require_at_jwt && !unverified.at_jwt {
            return Err("not an access token (typ at+jwt required)");
        }

        let mut keys = issuer.keys.current().await?;
        let mut candidates = select(&keys, unverified.kid.as_deref(), alg);
        if candidates == Selection::UnknownKid {
            match issuer.keys.refresh_for_unknown_kid(&keys).await {
                KidLookup::Newer(newer) => {
                    keys = newer;
                    candidates = select(&keys, unverified.kid.as_deref(), alg);
                }
                KidLookup::Final => {}
                KidLookup::NotLookedUp => {
                    tracing::debug!(issuer = %issuer.name, kid = unverified.kid.as_deref().unwrap_or("-"), "token names a key id not known yet, which could not be looked for now");
                    return Err(jwks::KEY_NOT_LOOKED_UP);
                }
            }
        }
        verify_signature(&keys, candidates, alg, &unverified).inspect_err(|why| {
            tracing::debug!(issuer = %issuer.name, kid = unverified.kid.as_deref().unwrap_or("-"), %alg, reason = why, "token not verified by its issuer's keys");
        })?;

        let claims = claims::check(
            &unverified.claims,
            &claims::Expect {
                issuer: &issuer.issuer,
                audiences: &issuer.audiences,
                leeway: issuer.leeway,
            },
            now,
        )?;
        Ok(JwtIdentity {
            token: TokenIdentity {
                issuer: issuer.issuer.clone(),
                subject: claims.subject,
                client_id: claims.client_id,
                scopes: claims.scopes,
                workload: None,
            },
            cnf_x5t_s256: claims.cnf_x5t_s256,
            expires_at: claims.expires_at,
        })
    }
}

/// The readers of the key documents fetched from an issuer, for the fuzz targets
/// (`fuzz/fuzz_targets/jwks.rs`); not part of the crate's interface.
#[doc(hidden)]
pub mod fuzzing {
    use http::Uri;

    use super::{Algorithm, DiscoveryError, JwksError, jwks};

    /// A key read from a JWKS: its `kid` and the algorithms it verifies.
    pub type KeyRead = (Option<String>, Vec<Algorithm>);

    /// The keys a JWKS document gives, as an issuer's keys are read.
    pub fn jwks(body: &[u8]) -> Result<Vec<KeyRead>, JwksError> {
        let set = jwks::parse_jwks(body, "fuzz", 1)?;
        Ok(set
            .keys
            .iter()
            .map(|k| {
                let algs = Algorithm::ALL.iter().copied();
                (k.kid.clone(), algs.filter(|a| k.supports(*a)).collect())
            })
            .collect())
    }

    /// The `jwks_uri` that the metadata document `body`, fetched from `uri`, gives for
    /// `issuer`, as discovery reads it.
    pub fn metadata_jwks_uri(body: &[u8], issuer: &str, uri: &Uri) -> Result<Uri, DiscoveryError> {
        jwks::metadata_jwks_uri(body, issuer, uri)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Indices of the keys to try.
    Keys(Vec<usize>),
    /// The token names a `kid` the set lacks.
    UnknownKid,
    /// No `kid`, and not exactly one key for the algorithm.
    Ambiguous,
    /// The `kid` exists but its key is of another type, or declares another `alg`.
    AlgorithmMismatch,
}

/// Whether one of the keys `selection` picked from `keys` verifies `token`'s signature; the
/// refusal reason of the `jwt` and `jwt_svid` layers alike.
pub(crate) fn verify_signature(
    keys: &KeySet,
    selection: Selection,
    alg: Algorithm,
    token: &jws::Unverified<'_>,
) -> Result<(), &'static str> {
    let indices = match selection {
        Selection::Keys(i) => i,
        Selection::UnknownKid | Selection::Ambiguous => return Err("unknown signing key"),
        Selection::AlgorithmMismatch => return Err("algorithm does not match key"),
    };
    let verified = indices
        .iter()
        .any(|&i| keys.keys[i].verify(alg, token.signing_input, &token.signature));
    if verified {
        Ok(())
    } else {
        Err("bad signature")
    }
}

pub(crate) fn select(keys: &KeySet, kid: Option<&str>, alg: Algorithm) -> Selection {
    match kid {
        Some(kid) => {
            let named: Vec<usize> = (0..keys.keys.len())
                .filter(|&i| keys.keys[i].kid.as_deref() == Some(kid))
                .collect();
            if named.is_empty() {
                return Selection::UnknownKid;
            }
            let fit: Vec<usize> = named
                .into_iter()
                .filter(|&i| keys.keys[i].supports(alg))
                .collect();
            if fit.is_empty() {
                Selection::AlgorithmMismatch
            } else {
                Selection::Keys(fit)
            }
        }
        None => {
            let fit: Vec<usize> = (0..keys.keys.len())
                .filter(|&i| keys.keys[i].supports(alg))
                .collect();
            if fit.len() == 1 {
                Selection::Keys(fit)
            } else {
                Selection::Ambiguous
            }
        }
    }
}

/// The bearer token of a request: `Ok(None)` when there is none, an error when there are
/// several or the header is malformed. The scheme is case-insensitive (RFC 9110 §11.1);
/// `Authorization` headers of other schemes (an API key) are left to their layer.
pub fn presented_bearer(headers: &HeaderMap) -> Result<Option<&str>, AuthFailure> {
    let mut found = None;
    for value in headers.get_all(http::header::AUTHORIZATION) {
        let bytes = value.as_bytes();
        let is_bearer = bytes.len() >= 6
            && bytes[..6].eq_ignore_ascii_case(b"bearer")
            && (bytes.len() == 6 || bytes[6] == b' ' || bytes[6] == b'\t');
        if !is_bearer {
            continue;
        }
        if found.is_some() {
            return Err(AuthFailure::InvalidRequest("more than one bearer token"));
        }
        let token = value
            .to_str()
            .map_err(|_| AuthFailure::InvalidRequest("malformed bearer token"))?[6..]
            .trim_matches([' ', '\t']);
        // token68 (RFC 9110 §11.2): a JWT uses only its base64url letters and dots.
        let token68 = !token.is_empty()
            && token
                .trim_end_matches('=')
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if !token68 {
            return Err(AuthFailure::InvalidRequest("malformed bearer token"));
        }
        found = Some(token);
    }
    Ok(found)
}

#[cfg(test)]
pub(crate) mod tests;
