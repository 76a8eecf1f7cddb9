//! Upstream credentials on the way out: each scheme of PROVIDERS.md turns a request into the
//! headers that authenticate it to the provider.
//!
//! Values are read from their [`SecretRef`] at start-up and re-read every
//! `refresh_interval`; a new version is used by requests that start after it appears, while a
//! request that started before keeps the previous version for at most `overlap`. HMAC keys
//! that live in an HSM never leave it: each signature is a PKCS#11 call on a blocking thread.
//! Every use is counted per credential label and version (never the value).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use idgate_config::{CredentialConfig, CredentialScheme};
use idgate_secrets::pkcs11::{Hsm, ObjectKind};
use idgate_secrets::{ExposeSecret, Fetched, SecretError, SecretRef};
use zeroize::Zeroizing;

use crate::metrics::Metrics;

/// Why a credential could not be produced for a request.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential {label}: {source}")]
    Secret {
        label: String,
        #[source]
        source: SecretError,
    },
    #[error("credential {label}: HSM signature failed: {source}")]
    Sign {
        label: String,
        #[source]
        source: SignError,
    },
    #[error("credential {label}: token endpoint: {source}")]
    Token {
        label: String,
        #[source]
        source: Arc<crate::oauth2::TokenError>,
    },
}

/// Why an HSM signature was not made.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("the signing queue is closed")]
    QueueClosed,
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Hsm(#[from] idgate_secrets::pkcs11::HsmError),
}

/// Why a credential cannot be loaded (at start-up or reload).
#[derive(Debug, thiserror::Error)]
pub enum CredentialLoadError {
    #[error("credential {label}: {source}")]
    Secret {
        label: String,
        /// The key of the credential's configuration naming the secret: `secret`,
        /// `app_token`, `client`, `client_secret`.
        field: &'static str,
        #[source]
        source: SecretError,
    },
    #[error("credential {label}: no HTTP client")]
    NoHttpClient { label: String },
}

impl CredentialLoadError {
    /// The key of the setting at fault under the credential's own; empty for the whole.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Secret { field, .. } => field,
            Self::NoHttpClient { .. } => "",
        }
    }
}

/// A value with the version it was built from and when it came into use.
pub struct Versioned<T> {
    pub value: T,
    pub version: Arc<str>,
    since: Instant,
}

/// A value that is replaced when its source changes, keeping the previous one for requests
/// that started before the change.
pub struct LiveValue<T> {
    current: ArcSwap<Versioned<T>>,
    previous: ArcSwap<Option<Arc<Versioned<T>>>>,
    overlap: Duration,
}

impl<T> LiveValue<T> {
    fn new(value: T, version: String, overlap: Duration) -> Self {
        Self {
            current: ArcSwap::from_pointee(Versioned {
                value,
                version: version.into(),
                since: Instant::now(),
            }),
            previous: ArcSwap::from_pointee(None),
            overlap,
        }
    }

    fn version(&self) -> Arc<str> {
        self.current.load().version.clone()
    }

    fn replace(&self, value: T, version: String) {
        let old = self.current.swap(Arc::new(Versioned {
            value,
            version: version.into(),
            since: Instant::now(),
        }));
        self.previous.store(Arc::new(Some(old)));
    }

    /// The value for a request that started at `started`.
    pub fn for_request(&self, started: Instant) -> Arc<Versioned<T>> {
        let cur = self.current.load_full();
        if started < cur.since
            && cur.since.elapsed() < self.overlap
            && let Some(prev) = self.previous.load().as_ref()
        {
            return prev.clone();
        }
        cur
    }
}

/// Signatures in flight per HSM-held key: as many as the token's session pool keeps idle.
const HSM_CONCURRENCY: usize = 16;

/// An HMAC-SHA256 key: in memory (from env, file or a wrapped HSM value) or in the HSM.
enum HmacKey {
    Memory(LiveValue<ring::hmac::Key>),
    Hsm {
        hsm: Arc<Hsm>,
        label: String,
        /// Bounds the signatures in flight, so a burst queues here instead of opening
        /// more token sessions than the pool keeps.
        in_flight: Arc<tokio::sync::Semaphore>,
    },
}

impl HmacKey {
    fn load(secret: &SecretRef, overlap: Duration) -> Result<Self, SecretError> {
        if let SecretRef::Pkcs11(uri) = secret {
            let hsm = Hsm::shared(uri).map_err(|e| SecretError::Hsm(secret.to_string(), e))?;
            if hsm
                .kind_of(&uri.object)
                .map_err(|e| SecretError::Hsm(secret.to_string(), e))?
                == ObjectKind::HmacKey
            {
                return Ok(Self::Hsm {
                    hsm,
                    label: uri.object.clone(),
                    in_flight: Arc::new(tokio::sync::Semaphore::new(HSM_CONCURRENCY)),
                });
            }
        }
        let f = secret.fetch()?;
        Ok(Self::Memory(LiveValue::new(
            hmac_key(&f),
            f.version,
            overlap,
        )))
    }

    /// Signs `data`; returns the lowercase hex MAC and the key version used.
    async fn sign(&self, started: Instant, data: Vec<u8>) -> Result<(String, Arc<str>), SignError> {
        match self {
            Self::Memory(live) => {
                let key = live.for_request(started);
                let tag = ring::hmac::sign(&key.value, &data);
                Ok((hex(tag.as_ref()), key.version.clone()))
            }
            Self::Hsm {
                hsm,
                label,
                in_flight,
            } => {
                let _permit = in_flight
                    .acquire()
                    .await
                    .map_err(|_| SignError::QueueClosed)?;
                let (hsm, label) = (hsm.clone(), label.clone());
                let (mac, version) =
                    tokio::task::spawn_blocking(move || hsm.hmac_sha256(&label, &data)).await??;
                Ok((hex(&mac), version.to_string().into()))
            }
        }
    }
}

fn hmac_key(f: &Fetched) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, f.value.expose_secret())
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 0xf) as usize] as char);
    }
    s
}

fn header_value(prefix: &str, f: &Fetched, source: &SecretRef) -> Result<HeaderValue, SecretError> {
    let mut raw = Zeroizing::new(Vec::with_capacity(
        prefix.len() + f.value.expose_secret().len(),
    ));
    raw.extend_from_slice(prefix.as_bytes());
    raw.extend_from_slice(f.value.expose_secret());
    let ok = raw
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b));
    if !ok {
        return Err(SecretError::NotHeaderSafe(source.to_string()));
    }
    let mut v = HeaderValue::from_bytes(&raw)
        .map_err(|_| SecretError::NotHeaderSafe(source.to_string()))?;
    // Never indexed by HPACK, hidden from Debug.
    v.set_sensitive(true);
    Ok(v)
}

/// A static header value with its source, refreshed in the background.
struct LiveHeader {
    source: SecretRef,
    prefix: String,
    value: LiveValue<HeaderValue>,
}

impl LiveHeader {
    fn load(source: &SecretRef, prefix: &str, overlap: Duration) -> Result<Self, SecretError> {
        let f = source.fetch()?;
        let v = header_value(prefix, &f, source)?;
        Ok(Self {
            source: source.clone(),
            prefix: prefix.to_owned(),
            value: LiveValue::new(v, f.version, overlap),
        })
    }

    /// Re-reads the source; blocking.
    fn refresh(&self) -> Result<bool, SecretError> {
        let f = self.source.fetch()?;
        if *f.version == *self.value.version() {
            return Ok(false);
        }
        let v = header_value(&self.prefix, &f, &self.source)?;
        self.value.replace(v, f.version);
        Ok(true)
    }
}

enum Scheme {
    Header {
        header: HeaderName,
        value: LiveHeader,
    },
    Sumsub {
        app_token: LiveHeader,
        key: HmacKey,
        key_source: SecretRef,
    },
    Veriff {
        client: LiveHeader,
        key: HmacKey,
        key_source: SecretRef,
    },
    OAuth2(Box<crate::oauth2::TokenSource>),
}

/// One upstream's credential, ready for the request path.
pub struct Credential {
    pub label: Arc<str>,
    scheme: Scheme,
    refresh_interval: Duration,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

/// Which credential a request used, for logs and metrics.
#[derive(Debug, Clone)]
pub struct Use {
    pub version: Arc<str>,
}

const X_APP_TOKEN: HeaderName = HeaderName::from_static("x-app-token");
const X_APP_ACCESS_TS: HeaderName = HeaderName::from_static("x-app-access-ts");
const X_APP_ACCESS_SIG: HeaderName = HeaderName::from_static("x-app-access-sig");
const X_AUTH_CLIENT: HeaderName = HeaderName::from_static("x-auth-client");
const X_HMAC_SIGNATURE: HeaderName = HeaderName::from_static("x-hmac-signature");

impl Credential {
    /// Loads the credential's secrets. Blocking (files, tokens).
    pub fn load(
        cfg: &CredentialConfig,
        oauth_client: Option<crate::oauth2::TokenClient>,
    ) -> Result<Self, CredentialLoadError> {
        let err = |field: &'static str| {
            move |source: SecretError| CredentialLoadError::Secret {
                label: cfg.label.clone(),
                field,
                source,
            }
        };
        let scheme = match &cfg.scheme {
            CredentialScheme::Header {
                header,
                prefix,
                secret,
            } => Scheme::Header {
                header: header.clone(),
                value: LiveHeader::load(secret, prefix, cfg.overlap).map_err(err("secret"))?,
            },
            CredentialScheme::Sumsub { app_token, secret } => Scheme::Sumsub {
                app_token: LiveHeader::load(app_token, "", cfg.overlap)
                    .map_err(err("app_token"))?,
                key: HmacKey::load(secret, cfg.overlap).map_err(err("secret"))?,
                key_source: secret.clone(),
            },
            CredentialScheme::Veriff { client, secret } => Scheme::Veriff {
                client: LiveHeader::load(client, "", cfg.overlap).map_err(err("client"))?,
                key: HmacKey::load(secret, cfg.overlap).map_err(err("secret"))?,
                key_source: secret.clone(),
            },
            CredentialScheme::OAuth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let client = oauth_client.ok_or_else(|| CredentialLoadError::NoHttpClient {
                    label: cfg.label.clone(),
                })?;
                Scheme::OAuth2(Box::new(
                    crate::oauth2::TokenSource::new(
                        client,
                        token_url.clone(),
                        client_id.clone(),
                        client_secret,
                        scope.clone(),
                    )
                    .map_err(err("client_secret"))?,
                ))
            }
        };
        Ok(Self {
            label: cfg.label.as_str().into(),
            scheme,
            refresh_interval: cfg.refresh_interval,
        })
    }

    /// Whether the scheme signs the body, so the gateway must buffer it.
    pub fn needs_body(&self) -> bool {
        matches!(self.scheme, Scheme::Sumsub { .. } | Scheme::Veriff { .. })
    }

    /// Adds the credential's headers to a request about to leave.
    pub async fn apply(
        &self,
        started: Instant,
        method: &Method,
        path_and_query: &str,
        body: &[u8],
        headers: &mut HeaderMap,
    ) -> Result<Use, CredentialError> {
        match &self.scheme {
            Scheme::Header { header, value } => {
                let v = value.value.for_request(started);
                headers.insert(header.clone(), v.value.clone());
                Ok(Use {
                    version: v.version.clone(),
                })
            }
            Scheme::Sumsub { app_token, key, .. } => {
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    .to_string();
                let mut data = Vec::with_capacity(ts.len() + 8 + path_and_query.len() + body.len());
                data.extend_from_slice(ts.as_bytes());
                data.extend_from_slice(method.as_str().as_bytes());
                data.extend_from_slice(path_and_query.as_bytes());
                data.extend_from_slice(body);
                let (sig, version) = key
                    .sign(started, data)
                    .await
                    .map_err(|source| self.sign_err(source))?;
                headers.insert(
                    X_APP_TOKEN,
                    app_token.value.for_request(started).value.clone(),
                );
                headers.insert(
                    X_APP_ACCESS_TS,
                    HeaderValue::from_str(&ts).unwrap_or(HeaderValue::from_static("0")),
                );
                headers.insert(X_APP_ACCESS_SIG, hex_header(sig));
                Ok(Use { version })
            }
            Scheme::Veriff { client, key, .. } => {
                // PROVIDERS.md: the body for requests that carry one, the session id for
                // GET and DELETE.
                let data = if matches!(*method, Method::GET | Method::DELETE | Method::HEAD) {
                    veriff_session_id(path_and_query).as_bytes().to_vec()
                } else {
                    body.to_vec()
                };
                let (sig, version) = key
                    .sign(started, data)
                    .await
                    .map_err(|source| self.sign_err(source))?;
                headers.insert(
                    X_AUTH_CLIENT,
                    client.value.for_request(started).value.clone(),
                );
                headers.insert(X_HMAC_SIGNATURE, hex_header(sig));
                Ok(Use { version })
            }
            Scheme::OAuth2(source) => {
                let (value, version) =
                    source
                        .token()
                        .await
                        .map_err(|source| CredentialError::Token {
                            label: self.label.to_string(),
                            source,
                        })?;
                headers.insert(http::header::AUTHORIZATION, value);
                Ok(Use { version })
            }
        }
    }

    fn sign_err(&self, source: SignError) -> CredentialError {
        CredentialError::Sign {
            label: self.label.to_string(),
            source,
        }
    }

    /// Re-reads the sources; blocking. Returns whether anything changed.
    fn refresh(&self) -> Result<bool, SecretError> {
        let refresh_key = |key: &HmacKey, source: &SecretRef| -> Result<bool, SecretError> {
            match key {
                HmacKey::Memory(live) => {
                    let f = source.fetch()?;
                    if *f.version == *live.version() {
                        return Ok(false);
                    }
                    live.replace(hmac_key(&f), f.version);
                    Ok(true)
                }
                // The HSM picks the newest key version at every signature.
                HmacKey::Hsm { .. } => Ok(false),
            }
        };
        match &self.scheme {
            Scheme::Header { value, .. } => value.refresh(),
            Scheme::Sumsub {
                app_token,
                key,
                key_source,
            } => Ok(app_token.refresh()? | refresh_key(key, key_source)?),
            Scheme::Veriff {
                client,
                key,
                key_source,
            } => Ok(client.refresh()? | refresh_key(key, key_source)?),
            Scheme::OAuth2(_) => Ok(false),
        }
    }

    /// Starts the background refresh of this credential's sources.
    pub fn spawn_refresh(self: &Arc<Self>, metrics: Arc<Metrics>) {
        let weak = Arc::downgrade(self);
        let every = self.refresh_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                // Stop when the configuration that owns this credential is gone.
                let Some(cred) = weak.upgrade() else { return };
                let c = cred.clone();
                match tokio::task::spawn_blocking(move || c.refresh()).await {
                    Ok(Ok(true)) => {
                        tracing::info!(credential = %cred.label, "upstream credential rotated: a new version is in use");
                        metrics.credential_rotated(&cred.label);
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(credential = %cred.label, error = %e, "cannot refresh upstream credential; the current version stays in use");
                    }
                    Err(e) => tracing::error!(error = %e, "credential refresh task failed"),
                }
            }
        });
    }
}

fn hex_header(s: String) -> HeaderValue {
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""))
}

/// The Veriff session id: the path segment after `sessions/` (`/v1/sessions/{id}/decision`).
/// Empty when the path names no session.
pub fn veriff_session_id(path_and_query: &str) -> &str {
    let path = path_and_query.split('?').next().unwrap_or("");
    let mut segs = path.split('/');
    while let Some(s) = segs.next() {
        if s == "sessions" {
            return segs.next().unwrap_or("");
        }
    }
    ""
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veriff_session_id_is_the_segment_after_sessions() {
        assert_eq!(
            veriff_session_id("/v1/sessions/abc-123/decision"),
            "abc-123"
        );
        assert_eq!(veriff_session_id("/v1/sessions/abc-123?x=1"), "abc-123");
        assert_eq!(veriff_session_id("/v1/sessions"), "");
        assert_eq!(veriff_session_id("/v1/other"), "");
    }

    #[test]
    fn live_value_keeps_the_previous_version_for_earlier_requests_within_the_overlap() {
        let live = LiveValue::new(1, "v1".into(), Duration::from_secs(60));
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        live.replace(2, "v2".into());
        assert_eq!(live.for_request(before).value, 1);
        assert_eq!(live.for_request(Instant::now()).value, 2);
        let no_overlap = LiveValue::new(1, "v1".into(), Duration::from_millis(1));
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        no_overlap.replace(2, "v2".into());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(no_overlap.for_request(before).value, 2);
    }
}
