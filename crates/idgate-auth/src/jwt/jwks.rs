//! An issuer's signing keys: given in the configuration, or fetched from its JWKS (RFC 7517
//! §5) — found through OIDC discovery or RFC 8414 metadata when no `jwks_uri` is
//! configured — cached, refreshed in the background when older than the refresh interval,
//! and refreshed at once for a `kid` not yet seen, but at most once per minimum interval
//! and by one request at a time however many are waiting: a stream of tokens with made-up
//! `kid`s must not turn the gateway into a flood against the issuer.
//!
//! What was fetched from an issuer outlives the configuration snapshot that fetched it: an
//! [`IssuerKeyCache`] hands it to the next snapshot that names the same issuer at the same
//! address, so a reload while the issuer is down keeps the keys it had.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use idgate_tls::client::{HttpsClient, OutboundClient};
use serde_json::Value;

use super::errors::{
    DiscoveryError, DiscoveryUriError, FetchError, FetchUriError, HttpClientError, JwksError,
    KeyError, RefreshError,
};
use super::json;
use super::jwk::{Jwk, VerifyingKey};

/// The most a JWKS or metadata document may weigh. Real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The most one fetch (connect, TLS, response) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// While an issuer has never delivered usable keys, how often a request may try again.
const NO_KEYS_RETRY: Duration = Duration::from_secs(1);

pub(crate) type HttpClient = HttpsClient<Empty<Bytes>>;

/// Why a token is refused when its issuer's keys could not be fetched: the issuer's outage,
/// not the caller's credential.
pub(crate) const KEYS_UNAVAILABLE: &str = "signing keys unavailable";

/// Why a token is refused when it names a `kid` its issuer's keys lack and they could not be
/// fetched again to look for it (the minimum interval had not passed, or the fetch failed):
/// the key may be a new one, so this is no sign of a forged token.
pub(crate) const KEY_NOT_LOOKED_UP: &str = "signing key not known yet";

/// One fetched (or configured) set of keys.
#[derive(Debug)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<VerifyingKey>,
    fetched_at: Instant,
    /// Changes with every successful fetch, so a waiter can tell whether someone else
    /// refreshed while it waited.
    pub(crate) generation: u64,
}

impl KeySet {
    /// Keys checked elsewhere (a SPIFFE bundle), as one set.
    pub(crate) fn new(keys: Vec<VerifyingKey>, generation: u64) -> Self {
        Self {
            keys,
            fetched_at: Instant::now(),
            generation,
        }
    }

    pub(crate) fn from_jwks(jwks: &[Jwk], generation: u64) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for (i, jwk) in jwks.iter().enumerate() {
            let key = VerifyingKey::from_jwk(jwk).map_err(|source| KeyError {
                key: jwk.kid.as_deref().map_or(i.to_string(), str::to_owned),
                source,
            })?;
            keys.push(key);
        }
        Ok(Self {
            keys,
            fetched_at: Instant::now(),
            generation,
        })
    }
}

/// Parses a JWKS document, keeping the keys we can verify with and skipping (with a log
/// line) the others: an issuer may publish encryption keys or algorithms we do not use. A
/// document that holds none of ours is still the issuer's word, and an empty set: an issuer
/// that withdraws its last signing key is trusted no more.
pub(crate) fn parse_jwks(body: &[u8], issuer: &str, generation: u64) -> Result<KeySet, JwksError> {
    let doc = json::object(body).ok_or(JwksError::NotAnObject)?;
    let Some(Value::Array(entries)) = doc.get("keys") else {
        return Err(JwksError::NoKeysArray);
    };
    let mut keys = Vec::new();
    for entry in entries {
        let kid = || entry.get("kid").and_then(|k| k.as_str()).unwrap_or("-");
        match serde_json::from_value::<Jwk>(entry.clone()) {
            Err(why) => tracing::debug!(issuer, kid = kid(), %why, "skipping a JWKS key"),
            Ok(jwk) => match VerifyingKey::from_jwk(&jwk) {
                Ok(key) => keys.push(key),
                Err(why) => tracing::debug!(issuer, kid = kid(), %why, "skipping a JWKS key"),
            },
        }
    }
    Ok(KeySet {
        keys,
        fetched_at: Instant::now(),
        generation,
    })
}

/// Where an issuer's keys come from.
pub(crate) enum KeySource {
    Static(Arc<KeySet>),
    Remote(Arc<Remote>),
}

impl KeySource {
    /// The keys to verify with now, fetching them first if there are none yet.
    pub(crate) async fn current(&self) -> Result<Arc<KeySet>, &'static str> {
        match self {
            Self::Static(k) => Ok(k.clone()),
            Self::Remote(r) => r.current().await,
        }
    }

    /// Called when a token names a `kid` that `seen` lacks: whether a newer set could be had
    /// (someone else's refresh, or ours if the minimum interval allows).
    pub(crate) async fn refresh_for_unknown_kid(&self, seen: &KeySet) -> KidLookup {
        match self {
            Self::Static(_) => KidLookup::Final,
            Self::Remote(r) => r.refresh_for_unknown_kid(seen.generation).await,
        }
    }
}

/// What looking again for a `kid` the keys held lack gave.
pub(crate) enum KidLookup {
    /// A set fetched since: the `kid` is looked for in it.
    Newer(Arc<KeySet>),
    /// The keys held are all there is (keys given in the configuration).
    Final,
    /// No fetch could be made (the minimum interval had not passed) or it failed: whether the
    /// issuer has such a key is not known.
    NotLookedUp,
}

/// Where to fetch the JWKS.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum JwksLocation {
    Uri(Uri),
    /// Found through the issuer's metadata at one of these addresses, tried in order.
    Discover(Vec<Uri>),
}

/// The keys fetched from each outside issuer, kept across configuration snapshots. A
/// verifier built with the cache takes over what an earlier one fetched from the same
/// issuer, at the same JWKS address, through the same `ca`: the keys, the time of the last
/// fetch and the address discovery found. The cache holds nothing itself once no verifier
/// uses an issuer. Cheap to clone; every clone is the same cache.
#[derive(Clone, Default)]
pub struct IssuerKeyCache {
    issuers: Arc<Mutex<CachedIssuers>>,
}

/// Each issuer's record, for as long as a verifier holds it.
type CachedIssuers = HashMap<CacheKey, Weak<FetchedKeys>>;

impl std::fmt::Debug for IssuerKeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers = self
            .issuers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|w| w.strong_count() > 0)
            .count();
        f.debug_struct("IssuerKeyCache")
            .field("issuers", &issuers)
            .finish()
    }
}

/// What defines where an issuer's keys come from: keys fetched from elsewhere, or trusted
/// through other roots, are not taken over.
#[derive(PartialEq, Eq, Hash)]
struct CacheKey {
    issuer: String,
    location: JwksLocation,
    ca: Option<PathBuf>,
}

impl IssuerKeyCache {
    /// The fetched keys of `issuer` at `location` through `ca`: those a live verifier holds,
    /// or a new, empty record.
    fn take(&self, issuer: &str, location: &JwksLocation, ca: Option<&Path>) -> Arc<FetchedKeys> {
        let mut issuers = self.issuers.lock().unwrap_or_else(PoisonError::into_inner);
        issuers.retain(|_, w| w.strong_count() > 0);
        let key = CacheKey {
            issuer: issuer.to_owned(),
            location: location.clone(),
            ca: ca.map(Path::to_path_buf),
        };
        if let Some(held) = issuers.get(&key).and_then(Weak::upgrade) {
            return held;
        }
        let fresh = Arc::new(FetchedKeys::default());
        issuers.insert(key, Arc::downgrade(&fresh));
        fresh
    }
}

/// One issuer's keys and the record of fetching them, shared by the verifiers of successive
/// snapshots.
#[derive(Default)]
struct FetchedKeys {
    keys: ArcSwapOption<KeySet>,
    /// Held by the one task fetching; the others wait on it or use what they have.
    fetch: tokio::sync::Mutex<FetchState>,
    /// Fetch attempts ended, successful or not: a request that waited for the fetch lock
    /// while one ended takes that attempt's outcome rather than making its own.
    attempts: AtomicU64,
    background_refresh: AtomicBool,
    generation: AtomicU64,
}

pub(crate) struct Remote {
    pub(crate) name: String,
    pub(crate) issuer: String,
    location: JwksLocation,
    /// This snapshot's: a reload reads the `ca` file again.
    client: HttpClient,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    fetched: Arc<FetchedKeys>,
}

#[derive(Default)]
struct FetchState {
    /// When the last fetch started, and once it is over, when it ended.
    last_attempt: Option<Instant>,
    /// The `jwks_uri` found by discovery, kept until a fetch from it fails.
    discovered: Option<Uri>,
}

/// How a [`Remote`] fetches: the settings of one issuer.
pub(crate) struct RemoteSettings {
    pub(crate) name: String,
    pub(crate) issuer: String,
    pub(crate) location: JwksLocation,
    pub(crate) ca: Option<PathBuf>,
    pub(crate) refresh_interval: Duration,
    pub(crate) min_refresh_interval: Duration,
}

impl Remote {
    /// With the keys `cache` holds for this issuer, if any.
    pub(crate) fn new(
        settings: RemoteSettings,
        client: HttpClient,
        cache: &IssuerKeyCache,
    ) -> Self {
        let fetched = cache.take(&settings.issuer, &settings.location, settings.ca.as_deref());
        Self {
            name: settings.name,
            issuer: settings.issuer,
            location: settings.location,
            client,
            refresh_interval: settings.refresh_interval,
            min_refresh_interval: settings.min_refresh_interval,
            fetched,
        }
    }

    async fn current(self: &Arc<Self>) -> Result<Arc<KeySet>, &'static str> {
        let fetched = &self.fetched;
        if let Some(keys) = fetched.keys.load_full() {
            if keys.fetched_at.elapsed() >= self.refresh_interval {
                self.refresh_in_background();
            }
            return Ok(keys);
        }
        // No keys yet: everyone waits for the first fetch, which only one of them makes.
        let attempts = fetched.attempts.load(Ordering::Acquire);
        let state = fetched.fetch.lock().await;
        if let Some(keys) = fetched.keys.load_full() {
            return Ok(keys);
        }
        // An attempt ended while this request waited, and brought no keys: so be it.
        if fetched.attempts.load(Ordering::Acquire) != attempts {
            return Err(KEYS_UNAVAILABLE);
        }
        let retry = NO_KEYS_RETRY.min(self.min_refresh_interval);
        if state.last_attempt.is_none_or(|t| t.elapsed() >= retry) {
            drop(state);
            self.refresh_detached(move |this, state| {
                this.fetched.keys.load().is_none()
                    && state.last_attempt.is_none_or(|t| t.elapsed() >= retry)
            })
            .await;
        }
        fetched.keys.load_full().ok_or(KEYS_UNAVAILABLE)
    }

    /// Refreshes stale keys off the request's path; requests go on with the old keys.
    fn refresh_in_background(self: &Arc<Self>) {
        if self.fetched.background_refresh.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            {
                let mut state = this.fetched.fetch.lock().await;
                let stale = this
                    .fetched
                    .keys
                    .load()
                    .as_ref()
                    .is_none_or(|k| k.fetched_at.elapsed() >= this.refresh_interval);
                let allowed = state
                    .last_attempt
                    .is_none_or(|t| t.elapsed() >= this.min_refresh_interval);
                if stale && allowed {
                    this.refresh(&mut state).await;
                }
            }
            this.fetched
                .background_refresh
                .store(false, Ordering::Release);
        });
    }

    /// Fetches in a task of its own, which the caller waits for: a request that goes away
    /// (its client reset the stream, or hung up) does not cut the fetch short. A fetch cut
    /// short would still have counted as the interval's attempt, and one such request an
    /// interval kept the keys from ever being fetched again: a new key never known, a
    /// withdrawn one trusted on. `still`: whether, once the task holds the fetch lock, there
    /// is still reason to fetch (another may have fetched meanwhile).
    async fn refresh_detached(
        self: &Arc<Self>,
        still: impl FnOnce(&Self, &FetchState) -> bool + Send + 'static,
    ) {
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut state = this.fetched.fetch.lock().await;
            if still(&this, &state) {
                this.refresh(&mut state).await;
            }
        });
        // A task that panicked fetched nothing: the keys held stay.
        let _ = task.await;
    }

    async fn refresh_for_unknown_kid(self: &Arc<Self>, seen: u64) -> KidLookup {
        let fetched = &self.fetched;
        let attempts = fetched.attempts.load(Ordering::Acquire);
        let state = fetched.fetch.lock().await;
        let newer = || {
            fetched
                .keys
                .load_full()
                .filter(|k| k.generation != seen)
                .map_or(KidLookup::NotLookedUp, KidLookup::Newer)
        };
        if let found @ KidLookup::Newer(_) = newer() {
            return found;
        }
        // An attempt ended while this request waited and brought nothing new: it failed.
        if fetched.attempts.load(Ordering::Acquire) != attempts {
            return KidLookup::NotLookedUp;
        }
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.min_refresh_interval)
        {
            return KidLookup::NotLookedUp;
        }
        tracing::info!(issuer = %self.name, "token signed with an unknown key id; refreshing the JWKS");
        drop(state);
        self.refresh_detached(move |this, state| {
            this.fetched
                .keys
                .load()
                .as_ref()
                .is_none_or(|k| k.generation == seen)
                && state
                    .last_attempt
                    .is_none_or(|t| t.elapsed() >= this.min_refresh_interval)
        })
        .await;
        newer()
    }

    /// Fetches the JWKS once (discovering its address first if need be) and installs it, even
    /// when it holds no key we can use. A failure (no answer, not 200, not a JWKS) keeps the
    /// keys we had: an issuer's outage should not log everyone out.
    async fn refresh(&self, state: &mut FetchState) {
        // Stamped now, so that an attempt that never ends (the runtime going away under it)
        // still counts...
        state.last_attempt = Some(Instant::now());
        let result = async {
            let uri = match (&self.location, &state.discovered) {
                (JwksLocation::Uri(u), _) | (JwksLocation::Discover(_), Some(u)) => u.clone(),
                (JwksLocation::Discover(candidates), None) => {
                    let found = self.discover(candidates).await?;
                    state.discovered = Some(found.clone());
                    found
                }
            };
            let body = match get(&self.client, &uri).await {
                Ok(body) => body,
                Err(source) => {
                    // The address may have moved: ask the metadata again next time.
                    state.discovered = None;
                    return Err(RefreshError::Fetch { uri, source });
                }
            };
            let generation = self.fetched.generation.fetch_add(1, Ordering::Relaxed) + 1;
            parse_jwks(&body, &self.issuer, generation)
                .map_err(|source| RefreshError::Document { uri, source })
        }
        .await;
        match result {
            Ok(keys) if keys.keys.is_empty() => {
                tracing::warn!(
                    issuer = %self.name,
                    "the issuer's JWKS holds no usable signing key; its tokens are refused until it publishes one"
                );
                self.fetched.keys.store(Some(Arc::new(keys)));
            }
            Ok(keys) => {
                tracing::debug!(issuer = %self.name, keys = keys.keys.len(), "JWKS fetched");
                self.fetched.keys.store(Some(Arc::new(keys)));
            }
            Err(error) => {
                let have = self.fetched.keys.load().is_some();
                tracing::warn!(
                    issuer = %self.name,
                    %error,
                    keeping_previous_keys = have,
                    "cannot fetch the issuer's signing keys"
                );
            }
        }
        // ...and restamped at its end, so that the intervals run from what the issuer last
        // said, however long it took to say it.
        state.last_attempt = Some(Instant::now());
        self.fetched.attempts.fetch_add(1, Ordering::AcqRel);
    }

    /// Reads the issuer's metadata and returns its `jwks_uri`, after checking that the
    /// document speaks for this very issuer (OIDC Discovery §4.3, RFC 8414 §3.3).
    async fn discover(&self, candidates: &[Uri]) -> Result<Uri, DiscoveryError> {
        let mut errors = Vec::new();
        for uri in candidates {
            let body = match get(&self.client, uri).await {
                Ok(b) => b,
                Err(e) => {
                    errors.push((uri.clone(), e));
                    continue;
                }
            };
            return metadata_jwks_uri(&body, &self.issuer, uri);
        }
        Err(DiscoveryError::NotFound(errors))
    }
}

/// The `jwks_uri` of the metadata document `body`, fetched from `uri`, once the document is
/// found to speak for `issuer`; an address keys may be fetched from.
pub(crate) fn metadata_jwks_uri(
    body: &[u8],
    issuer: &str,
    uri: &Uri,
) -> Result<Uri, DiscoveryError> {
    let doc = json::object(body).ok_or_else(|| DiscoveryError::NotAnObject(uri.clone()))?;
    if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(DiscoveryError::OtherIssuer(uri.clone()));
    }
    let jwks_uri = doc
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| DiscoveryError::NoJwksUri(uri.clone()))?;
    let jwks_uri: Uri = jwks_uri
        .parse()
        .map_err(|_| DiscoveryError::JwksUriNotAUrl(uri.clone()))?;
    let checked = check_fetch_uri(&jwks_uri).and_then(|()| {
        // Plain http is for an issuer on loopback (a test, a sidecar): metadata fetched over
        // https naming an http address would have the gateway ask its own host's services.
        if jwks_uri.scheme_str() == Some("http") && uri.scheme_str() != Some("http") {
            Err(FetchUriError::PlainHttpFromHttps)
        } else {
            Ok(())
        }
    });
    checked.map_err(|source| DiscoveryError::JwksUri {
        uri: uri.clone(),
        source,
    })?;
    Ok(jwks_uri)
}

/// GETs `uri`: 200 and at most [`MAX_DOCUMENT_BYTES`], within [`FETCH_TIMEOUT`].
async fn get(client: &HttpClient, uri: &Uri) -> Result<Bytes, FetchError> {
    let req = http::Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, "idgate")
        .body(Empty::new())?;
    let fetch = async {
        let resp = client.request(req).await?;
        if resp.status() != http::StatusCode::OK {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(FetchError::Body)
    };
    tokio::time::timeout(FETCH_TIMEOUT, fetch)
        .await
        .map_err(|_| FetchError::Timeout(FETCH_TIMEOUT))?
}

/// `https://`, or `http://` to a loopback address only: keys fetched in clear text from
/// elsewhere could be swapped by anyone on the path.
pub(crate) fn check_fetch_uri(uri: &Uri) -> Result<(), FetchUriError> {
    let host = uri.host().ok_or(FetchUriError::NoHost)?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let ip = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || ip.parse::<IpAddr>().is_ok_and(|a| a.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(FetchUriError::PlainHttpNotLoopback)
            }
        }
        _ => Err(FetchUriError::NotHttps),
    }
}

/// Where an issuer's metadata may be: OIDC Discovery's `{issuer}/.well-known/openid-configuration`,
/// then RFC 8414's `.well-known/oauth-authorization-server` inserted before the issuer's path.
pub(crate) fn discovery_uris(issuer: &str) -> Result<Vec<Uri>, DiscoveryUriError> {
    let parsed: Uri = issuer.parse().map_err(|_| DiscoveryUriError::NotAUrl)?;
    check_fetch_uri(&parsed).map_err(DiscoveryUriError::Issuer)?;
    let (Some(scheme), Some(authority)) = (parsed.scheme_str(), parsed.authority()) else {
        return Err(DiscoveryUriError::NotAbsolute);
    };
    if parsed.query().is_some() {
        return Err(DiscoveryUriError::HasQuery);
    }
    let path = parsed.path().trim_end_matches('/');
    let mut out = vec![format!(
        "{scheme}://{authority}{path}/.well-known/openid-configuration"
    )];
    let rfc8414 = format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}");
    if !out.contains(&rfc8414) {
        out.push(rfc8414);
    }
    out.into_iter()
        .map(|u| {
            u.parse()
                .map_err(|_| DiscoveryUriError::MetadataUrl(u.clone()))
        })
        .collect()
}

/// An HTTPS client for JWKS and metadata: the platform's roots plus `ca` if given.
/// Blocking (reads files).
pub(crate) fn http_client(ca: Option<&Path>) -> Result<HttpClient, HttpClientError> {
    let roots = idgate_tls::roots::roots_with_ca(ca)?;
    Ok(OutboundClient::new(roots, FETCH_TIMEOUT)
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn metadata_fetched_over_https_cannot_send_keys_to_be_fetched_over_http() {
        let issuer = "https://idp.example";
        let doc = |jwks: &str| format!(r#"{{"issuer":"{issuer}","jwks_uri":"{jwks}"}}"#);
        let https: Uri = "https://idp.example/.well-known/openid-configuration"
            .parse()
            .unwrap();
        let err = metadata_jwks_uri(
            doc("http://127.0.0.1:9901/metrics").as_bytes(),
            issuer,
            &https,
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                DiscoveryError::JwksUri {
                    source: FetchUriError::PlainHttpFromHttps,
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            metadata_jwks_uri(
                doc("https://keys.idp.example/jwks").as_bytes(),
                issuer,
                &https
            )
            .is_ok()
        );
        // An issuer on loopback may name a loopback http address.
        let local = "http://127.0.0.1:8080";
        let local_doc =
            format!(r#"{{"issuer":"{local}","jwks_uri":"http://127.0.0.1:8080/jwks"}}"#);
        let at: Uri = "http://127.0.0.1:8080/.well-known/openid-configuration"
            .parse()
            .unwrap();
        assert!(metadata_jwks_uri(local_doc.as_bytes(), local, &at).is_ok());
    }

    #[test]
    fn only_https_or_loopback_http() {
        for ok in [
            "https://idp.example/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://127.9.9.9/jwks",
            "http://localhost/jwks",
            "http://[::1]:80/jwks",
        ] {
            assert!(check_fetch_uri(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example/jwks",
            "http://10.0.0.1/jwks",
            "http://[::2]/jwks",
            "ftp://idp.example/jwks",
            "/jwks",
        ] {
            assert!(check_fetch_uri(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn discovery_addresses_follow_oidc_then_rfc8414() {
        let s = |v: Vec<Uri>| v.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(
            s(discovery_uris("https://idp.example").unwrap()),
            [
                "https://idp.example/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server"
            ]
        );
        assert_eq!(
            s(discovery_uris("https://idp.example/tenant/1/").unwrap()),
            [
                "https://idp.example/tenant/1/.well-known/openid-configuration",
                "https://idp.example/.well-known/oauth-authorization-server/tenant/1"
            ]
        );
        assert!(discovery_uris("http://idp.example").is_err());
        assert!(discovery_uris("idp").is_err());
    }

    #[test]
    fn a_jwks_keeps_usable_keys_and_may_hold_none() {
        let body = br#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"hmac"},
            {"kty":"OKP","crv":"Ed25519","x":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc","kid":"ed","use":"sig"},
            {"kty":"EC","crv":"P-256","x":"AA","y":"AA","kid":"short"},
            {"kty":"EC","crv":"P-384","x":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB","y":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB","kid":"p384"},
            {"kty":"EC","crv":"P-384","x":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE","y":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE","kid":"short384"},
            {"kty":"EC","crv":"P-521","x":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB","y":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB","kid":"p521"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
            "junk"
        ]}"#;
        let set = parse_jwks(body, "i", 1).unwrap();
        let kids: Vec<_> = set.keys.iter().filter_map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, ["ed", "p384"]);
        let none = |body: &[u8]| parse_jwks(body, "i", 1).unwrap().keys.is_empty();
        assert!(none(br#"{"keys":[{"kty":"oct","k":"AA"}]}"#));
        assert!(none(br#"{"keys":[]}"#));
        assert!(parse_jwks(br#"{"keys":{}}"#, "i", 1).is_err());
        assert!(parse_jwks(br#"{"other":[]}"#, "i", 1).is_err());
        assert!(parse_jwks(br#"[]"#, "i", 1).is_err());
    }
}
