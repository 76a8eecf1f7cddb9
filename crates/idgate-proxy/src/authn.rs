//! Stages 3 and 4 of the pipeline: authenticate the caller with the layers the route
//! requires, then authorize one of its principals against the route's allow list and
//! scopes.

use std::collections::HashMap;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use http::request::Parts;
use idgate_auth::api_key::{self, ApiKeyVerifier};
use idgate_auth::failure::Scheme;
use idgate_auth::issuer::TokenIssuer;
use idgate_auth::jwt::{self, Algorithm, Jwk, JwtVerifier, StaticIssuer};
use idgate_auth::jwt_svid::{
    JwtBundle, JwtBundleError, JwtBundleStore, JwtBundles, JwtSvidSettings, JwtSvidSetupError,
    JwtSvidVerifier, MAX_BUNDLE_BYTES,
};
use idgate_auth::policy::{self, AuthLayer};
use idgate_auth::{AuthFailure, Caller, Principal, TokenIdentity};
use idgate_config::{ApiKeyStoreConfig, Config, JwtSvidConfig};
use idgate_tls::SpiffeId;

use crate::conn::ConnInfo;
use crate::routes::Route;

/// Why the verifiers of a configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("{0}")]
    ApiKeys(#[from] api_key::ApiKeyError),
    #[error("{0}")]
    OwnJwk(#[from] serde_json::Error),
    #[error("{0}")]
    OwnAlgorithm(#[from] jwt::AlgorithmError),
    #[error("{0}")]
    Issuer(#[from] jwt::IssuerSetupError),
    #[error("{0}")]
    JwtSvid(#[from] JwtSvidSetupError),
    #[error("cannot read {}: {source}", path.display())]
    JwtSvidBundleRead {
        index: usize,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    JwtSvidBundle {
        index: usize,
        path: PathBuf,
        source: JwtBundleError,
    },
}

impl AuthSetupError {
    /// The key path of the setting at fault: `api_keys.pepper`, `jwt_issuers[1].ca`.
    pub fn key(&self) -> String {
        match self {
            Self::ApiKeys(api_key::ApiKeyError::Pepper { .. })
            | Self::ApiKeys(api_key::ApiKeyError::PepperTooShort { .. }) => {
                "api_keys.pepper".to_owned()
            }
            Self::ApiKeys(api_key::ApiKeyError::Store(_)) => "api_keys.store".to_owned(),
            Self::ApiKeys(_) => "api_keys".to_owned(),
            Self::OwnJwk(_) | Self::OwnAlgorithm(_) => "token_endpoint.signing_key".to_owned(),
            Self::JwtSvid(JwtSvidSetupError::NoAudience) => "jwt_svid.audiences".to_owned(),
            Self::JwtSvid(JwtSvidSetupError::ZeroMaxLifetime) => "jwt_svid.max_lifetime".to_owned(),
            Self::JwtSvidBundleRead { index, .. } | Self::JwtSvidBundle { index, .. } => {
                format!("jwt_svid.bundles[{index}].file")
            }
            Self::Issuer(e) => {
                let base = match e.position {
                    Some(i) => format!("jwt_issuers[{i}]"),
                    // The only issuer with keys given directly is the own token endpoint.
                    None => "token_endpoint".to_owned(),
                };
                match e.problem.key() {
                    "" => base,
                    sub => format!("{base}.{sub}"),
                }
            }
        }
    }
}

/// The verifiers of the API key and JWT layers, built per configuration snapshot.
#[derive(Default)]
pub struct AuthServices {
    pub api_keys: Option<ApiKeyVerifier>,
    pub jwt: Option<Arc<JwtVerifier>>,
    /// The `jwt_svid` layer's verifier, when `[jwt_svid]` is configured.
    pub jwt_svid: Option<Arc<JwtSvidVerifier>>,
    /// The gateway's own token issuer (`iss`) and the workload each of its clients is
    /// registered with: its tokens are issued to that workload only when the client is.
    own_tokens: Option<(String, HashMap<String, SpiffeId>)>,
}

impl AuthServices {
    /// Builds the verifiers the configuration asks for. Blocking (reads the pepper, the key
    /// store, CA files); fetches no JWKS yet, and takes over from `jwt_keys` those the
    /// running snapshot fetched.
    pub fn build(
        config: &Config,
        token_issuer: Option<&TokenIssuer>,
        state: &idgate_store::StateStore,
        jwt_keys: &jwt::IssuerKeyCache,
    ) -> Result<Self, AuthSetupError> {
        let api_keys = match &config.api_keys {
            None => None,
            Some(a) => Some(match &a.store {
                ApiKeyStoreConfig::File(path) => ApiKeyVerifier::open(path, &a.pepper)?,
                // Reading every key is no request: it may take longer than a state call on
                // the request path.
                ApiKeyStoreConfig::State => {
                    ApiKeyVerifier::shared(&a.pepper, state.patient(Duration::from_secs(5)))?
                }
            }),
        };
        let issuers = config.jwt_issuers.clone();
        // The gateway's own token endpoint is an issuer with a key it knows.
        let mut statics = Vec::new();
        let mut own_tokens = None;
        if let Some(t) = token_issuer {
            // The signing key, and those signed with before a rotation.
            let mut jwks = vec![serde_json::from_value::<Jwk>(t.jwk().clone())?];
            let mut algs = vec![Algorithm::from_str(t.algorithm())?];
            for previous in t.previous_jwks() {
                let alg = previous.get("alg").and_then(serde_json::Value::as_str);
                let alg = Algorithm::from_str(alg.unwrap_or_default())?;
                if !algs.contains(&alg) {
                    algs.push(alg);
                }
                jwks.push(serde_json::from_value(previous.clone())?);
            }
            let mut own = StaticIssuer::new(t.issuer(), vec![t.audience().to_owned()], algs, jwks);
            // It issues nothing but `at+jwt` access tokens.
            own.require_at_jwt = true;
            statics.push(own);
            let workloads = config
                .token_endpoint
                .iter()
                .flat_map(|te| &te.clients)
                .filter_map(|c| Some((c.client_id.clone(), c.spiffe_id.clone()?)))
                .collect();
            own_tokens = Some((t.issuer().to_owned(), workloads));
        }
        let jwt = if issuers.is_empty() && statics.is_empty() {
            None
        } else {
            Some(Arc::new(JwtVerifier::with_key_cache(
                issuers, statics, jwt_keys,
            )?))
        };
        let jwt_svid = match &config.jwt_svid {
            None => None,
            Some(j) => Some(Arc::new(JwtSvidVerifier::new(
                jwt_svid_settings(j),
                read_jwt_bundles(j)?,
            )?)),
        };
        Ok(Self {
            api_keys,
            jwt,
            jwt_svid,
            own_tokens,
        })
    }

    /// Makes the `jwt_svid` layer read its bundles from `store` rather than from the files
    /// read by [`Self::build`]: a store that outlives snapshots, such as the one the SPIFFE
    /// Workload API's bundle stream keeps current. Nothing changes without `[jwt_svid]`.
    pub fn with_jwt_bundle_store(mut self, store: JwtBundleStore) -> Result<Self, AuthSetupError> {
        if let Some(v) = &self.jwt_svid {
            let shared = JwtSvidVerifier::with_store(v.settings().clone(), store)?;
            self.jwt_svid = Some(Arc::new(shared));
        }
        Ok(self)
    }

    /// The workload a token bound to the connection's certificate was issued to. The
    /// gateway's own endpoint binds every token to the certificate it was asked over, also
    /// for a client that authenticated with a secret alone: such a token is the client's,
    /// not the workload's. An outside issuer's binding is taken as issued to the
    /// certificate's holder.
    fn bound_workload(&self, token: &TokenIdentity, peer: &SpiffeId) -> Option<SpiffeId> {
        match &self.own_tokens {
            Some((issuer, workloads)) if *issuer == token.issuer => token
                .client_id
                .as_ref()
                .and_then(|c| workloads.get(c))
                .filter(|w| *w == peer)
                .cloned(),
            _ => Some(peer.clone()),
        }
    }

    /// Starts keeping the API key table in step with its store and warms the JWKS caches.
    pub fn start_background(&self, reload_interval: Option<Duration>) {
        if let (Some(k), Some(every)) = (&self.api_keys, reload_interval) {
            k.spawn_reload(every);
        }
        if let Some(jwt) = &self.jwt {
            let jwt = jwt.clone();
            tokio::spawn(async move { jwt.prefetch().await });
        }
    }
}

/// What `[jwt_svid]` asks of a token. A verifier whose bundles come from the Workload API
/// is built from these with `JwtSvidVerifier::with_store` and that source's store.
pub fn jwt_svid_settings(config: &JwtSvidConfig) -> JwtSvidSettings {
    JwtSvidSettings {
        audiences: config.audiences.clone(),
        leeway: config.leeway,
        max_lifetime: config.max_lifetime,
    }
}

/// Reads the `[[jwt_svid.bundles]]` files. Blocking. A file that cannot be read or used
/// refuses the whole configuration: at a reload, the running one keeps its bundles.
pub fn read_jwt_bundles(config: &JwtSvidConfig) -> Result<JwtBundles, AuthSetupError> {
    let mut bundles = JwtBundles::new();
    for (index, b) in config.bundles.iter().enumerate() {
        let read_error = |source| AuthSetupError::JwtSvidBundleRead {
            index,
            path: b.file.clone(),
            source,
        };
        let mut bytes = Vec::new();
        // One byte over the limit is enough to refuse the file without reading all of it.
        std::fs::File::open(&b.file)
            .and_then(|f| f.take(MAX_BUNDLE_BYTES as u64 + 1).read_to_end(&mut bytes))
            .map_err(read_error)?;
        let bundle = JwtBundle::parse(b.trust_domain.clone(), &bytes).map_err(|source| {
            AuthSetupError::JwtSvidBundle {
                index,
                path: b.file.clone(),
                source,
            }
        })?;
        if bundle.is_empty() {
            // Valid (the trust domain revoked its keys), but more often the wrong file: an
            // X.509 bundle, or one exported before JWT-SVIDs were enabled.
            tracing::warn!(trust_domain = %b.trust_domain, file = %b.file.display(), key = %format!("jwt_svid.bundles[{index}].file"), "the bundle has no jwt-svid key: every JWT-SVID of this trust domain is refused");
        }
        tracing::debug!(trust_domain = %b.trust_domain, keys = bundle.len(), sequence = ?bundle.sequence(), "JWT-SVID bundle read");
        bundles.insert(bundle);
    }
    Ok(bundles)
}

impl std::fmt::Debug for AuthServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthServices")
    }
}

/// Stage 3: every requirement of the route must be met; within `{ any = [...] }` one layer
/// suffices. Each layer that passes adds its identity to the caller. The connection's SVID
/// is a principal of its own only on a route that lists `mtls`; elsewhere it counts only as
/// part of a key or token bound to it.
pub(crate) async fn authenticate(
    route: &Route,
    conn: &ConnInfo,
    parts: &Parts,
    services: &AuthServices,
) -> Result<Caller, AuthFailure> {
    let mut caller = Caller {
        spiffe_id: if route.auth.uses(AuthLayer::Mtls) {
            conn.peer.clone()
        } else {
            None
        },
        ..Caller::default()
    };
    // A key in the URL ends up in logs everywhere the URL goes: refuse it outright. On a
    // route that takes API keys, any parameter named like one too; on every route, anything
    // shaped like one of the gateway's keys, which must never reach a provider.
    let query = parts.uri.query();
    if (route.auth.uses(AuthLayer::ApiKey) && api_key::key_in_query(query))
        || api_key::idgate_key_in_query(query)
    {
        return Err(AuthFailure::ApiKeyInQuery);
    }
    for requirement in &route.auth.requirements {
        let mut failure: Option<AuthFailure> = None;
        let mut passed = false;
        // Every layer of an `any` whose credential is present is checked: a presented but
        // invalid, revoked or expired credential fails the request even when another layer
        // passes, and every identity that passes is added to the caller (any of them may be
        // the principal the route allows).
        let layers = requirement.layers();
        // Within one `any`, `jwt` and `jwt_svid` are two readings of the one bearer token:
        // see `bearer_token`.
        let both_bearers = layers.contains(&AuthLayer::Jwt) && layers.contains(&AuthLayer::JwtSvid);
        for &layer in layers {
            let result = match layer {
                AuthLayer::JwtSvid if both_bearers => continue,
                AuthLayer::Jwt if both_bearers => {
                    bearer_token(conn, parts, services, &mut caller).await
                }
                _ => layer_check(layer, conn, parts, services, &mut caller).await,
            };
            match result {
                Ok(()) => passed = true,
                Err(e @ (AuthFailure::Missing { .. } | AuthFailure::NoClientCertificate)) => {
                    failure = Some(merge(failure, e));
                }
                Err(e) => return Err(e),
            }
        }
        if !passed {
            return Err(failure.unwrap_or(AuthFailure::Missing {
                schemes: Vec::new(),
            }));
        }
    }
    Ok(caller)
}

/// `{ any = ["jwt", "jwt_svid"] }`: the bearer token is an access token when its `iss` names
/// a configured issuer (or the gateway's own endpoint), and is judged as one; any other
/// token is judged as a JWT-SVID. So each token is verified once, under one set of rules,
/// and a refusal gives the reason of the kind of token it was taken for.
async fn bearer_token(
    conn: &ConnInfo,
    parts: &Parts,
    services: &AuthServices,
    caller: &mut Caller,
) -> Result<(), AuthFailure> {
    let Some(token) = jwt::presented_bearer(&parts.headers)? else {
        return Err(AuthFailure::Missing {
            schemes: vec![Scheme::Bearer],
        });
    };
    let layer = if services.jwt.as_ref().is_some_and(|j| j.is_issuer_of(token)) {
        AuthLayer::Jwt
    } else {
        AuthLayer::JwtSvid
    };
    layer_check(layer, conn, parts, services, caller).await
}

/// Of two failures of alternative layers, the one that tells the caller more: a wrong
/// credential beats a missing one; two missing ones are reported together.
fn merge(prev: Option<AuthFailure>, next: AuthFailure) -> AuthFailure {
    match (prev, next) {
        (None, n) => n,
        (Some(AuthFailure::Missing { mut schemes }), AuthFailure::Missing { schemes: more }) => {
            schemes.extend(more);
            AuthFailure::Missing { schemes }
        }
        (Some(AuthFailure::NoClientCertificate), AuthFailure::Missing { mut schemes }) => {
            schemes.insert(0, Scheme::MutualTls);
            AuthFailure::Missing { schemes }
        }
        (Some(AuthFailure::Missing { mut schemes }), AuthFailure::NoClientCertificate) => {
            schemes.push(Scheme::MutualTls);
            AuthFailure::Missing { schemes }
        }
        (Some(AuthFailure::Missing { .. } | AuthFailure::NoClientCertificate), n) => n,
        (Some(p), _) => p,
    }
}

async fn layer_check(
    layer: AuthLayer,
    conn: &ConnInfo,
    parts: &Parts,
    services: &AuthServices,
    caller: &mut Caller,
) -> Result<(), AuthFailure> {
    match layer {
        AuthLayer::Mtls => {
            if conn.peer.is_some() {
                Ok(())
            } else {
                Err(AuthFailure::NoClientCertificate)
            }
        }
        AuthLayer::ApiKey => {
            let missing = || AuthFailure::Missing {
                schemes: vec![Scheme::ApiKey],
            };
            let Some(key) = api_key::presented_key(&parts.headers)? else {
                return Err(missing());
            };
            let verifier = services.api_keys.as_ref().ok_or_else(missing)?;
            caller.api_key = Some(verifier.verify(key, conn.peer.as_ref(), SystemTime::now())?);
            Ok(())
        }
        AuthLayer::Jwt => {
            let missing = || AuthFailure::Missing {
                schemes: vec![Scheme::Bearer],
            };
            let Some(token) = jwt::presented_bearer(&parts.headers)? else {
                return Err(missing());
            };
            let verifier = services.jwt.as_ref().ok_or_else(missing)?;
            let identity = verifier.verify(token, SystemTime::now()).await?;
            let mut token = identity.token;
            // RFC 8705: a certificate-bound token is only good over a connection with that
            // certificate, and is then the same principal as the workload it was issued to.
            if let Some(bound) = &identity.cnf_x5t_s256 {
                if conn.cert_thumbprint.as_deref() != Some(bound.as_str()) {
                    return Err(AuthFailure::TokenBindingMismatch);
                }
                token.workload = conn
                    .peer
                    .as_ref()
                    .and_then(|peer| services.bound_workload(&token, peer));
            }
            caller.token = Some(token);
            Ok(())
        }
        AuthLayer::JwtSvid => {
            let missing = || AuthFailure::Missing {
                schemes: vec![Scheme::Bearer],
            };
            let Some(token) = jwt::presented_bearer(&parts.headers)? else {
                return Err(missing());
            };
            let verifier = services.jwt_svid.as_ref().ok_or_else(missing)?;
            caller.jwt_svid = Some(verifier.verify(token, SystemTime::now())?);
            Ok(())
        }
    }
}

/// Stage 4: default deny. One principal must be on the route's allow list and hold the
/// scopes the method requires; returns that principal.
pub(crate) fn authorize<'c>(
    route: &Route,
    method: &http::Method,
    caller: &'c Caller,
) -> Result<Principal<'c>, AuthFailure> {
    policy::authorize(&route.allow, route.scopes.required(method), caller)
}

/// Failed authentication attempts per source address over a sliding window, for lockouts.
/// Bounded: the oldest sources are forgotten first when it is full.
pub struct FailedAttempts {
    window: Duration,
    max_sources: usize,
    state: Mutex<Sources>,
}

struct Sources {
    map: HashMap<IpAddr, (u32, Instant)>,
    last_sweep: Instant,
}

impl std::fmt::Debug for FailedAttempts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailedAttempts")
    }
}

impl Default for FailedAttempts {
    fn default() -> Self {
        Self::new(Duration::from_secs(300), 100_000)
    }
}

impl FailedAttempts {
    pub fn new(window: Duration, max_sources: usize) -> Self {
        Self {
            window,
            max_sources,
            state: Mutex::new(Sources {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Records a failure from `source`; returns how many it has had in the current window.
    pub fn record(&self, source: IpAddr) -> u32 {
        let Ok(mut state) = self.state.lock() else {
            return 0;
        };
        let now = Instant::now();
        let window = self.window;
        if state.map.len() >= self.max_sources && !state.map.contains_key(&source) {
            // Full: sweep expired sources, at most once a second so that a flood of new
            // sources costs one scan a second, not one per failure.
            if now.duration_since(state.last_sweep) >= Duration::from_secs(1) {
                state
                    .map
                    .retain(|_, (_, start)| now.duration_since(*start) < window);
                state.last_sweep = now;
            }
            if state.map.len() >= self.max_sources {
                // Still full: this source is not tracked (the failure is still counted in
                // the metrics and the log).
                return 1;
            }
        }
        let entry = state.map.entry(source).or_insert((0, now));
        if now.duration_since(entry.1) >= window {
            *entry = (0, now);
        }
        entry.0 += 1;
        entry.0
    }

    /// Failures from `source` in the current window.
    pub fn count(&self, source: IpAddr) -> u32 {
        let Ok(state) = self.state.lock() else {
            return 0;
        };
        state
            .map
            .get(&source)
            .filter(|(_, start)| start.elapsed() < self.window)
            .map_or(0, |(n, _)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts_are_counted_per_source_and_bounded() {
        let f = FailedAttempts::new(Duration::from_secs(60), 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let c: IpAddr = "10.0.0.3".parse().unwrap();
        assert_eq!(f.record(a), 1);
        assert_eq!(f.record(a), 2);
        assert_eq!(f.record(b), 1);
        // Full, and nothing has expired: a new source is not tracked, known ones still are.
        assert_eq!(f.record(c), 1);
        assert_eq!(f.count(c), 0);
        assert_eq!(f.record(a), 3);
    }

    #[test]
    fn expired_sources_make_room() {
        let f = FailedAttempts::new(Duration::from_millis(1), 1);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        f.record(a);
        std::thread::sleep(Duration::from_millis(5));
        if let Ok(mut st) = f.state.lock() {
            st.last_sweep -= Duration::from_secs(2);
        }
        f.record(b);
        assert_eq!(f.count(b), 1);
    }

    #[test]
    fn a_shared_bundle_store_replaces_the_file_bundles() {
        let settings = JwtSvidSettings::new(vec!["spiffe://example.org/idgate".to_owned()]);
        let services = AuthServices {
            jwt_svid: Some(Arc::new(
                JwtSvidVerifier::new(settings, JwtBundles::new()).unwrap(),
            )),
            ..AuthServices::default()
        };
        let store = JwtBundleStore::default();
        let services = services.with_jwt_bundle_store(store.clone()).unwrap();
        let verifier = services.jwt_svid.as_ref().unwrap();
        // What the store's owner puts in is what the verifier reads next.
        let bundles = JwtBundles::parse([(
            idgate_tls::TrustDomain::new("example.org").unwrap(),
            &br#"{"keys":[]}"#[..],
        )])
        .unwrap();
        store.set(bundles);
        assert!(Arc::ptr_eq(&verifier.store().load(), &store.load()));
        assert_eq!(verifier.store().load().len(), 1);
        assert_eq!(
            verifier.settings().audiences,
            ["spiffe://example.org/idgate"]
        );
        // Without [jwt_svid] there is nothing to share.
        let none = AuthServices::default()
            .with_jwt_bundle_store(store)
            .unwrap();
        assert!(none.jwt_svid.is_none());
    }

    #[test]
    fn a_wrong_credential_is_reported_over_a_missing_one() {
        let m = merge(
            Some(AuthFailure::Missing {
                schemes: vec![Scheme::ApiKey],
            }),
            AuthFailure::InvalidToken("expired"),
        );
        assert_eq!(m, AuthFailure::InvalidToken("expired"));
        let m = merge(
            Some(AuthFailure::Missing {
                schemes: vec![Scheme::ApiKey],
            }),
            AuthFailure::Missing {
                schemes: vec![Scheme::Bearer],
            },
        );
        assert_eq!(
            m,
            AuthFailure::Missing {
                schemes: vec![Scheme::ApiKey, Scheme::Bearer]
            }
        );
    }
}
