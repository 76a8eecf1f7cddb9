//! Upstream credentials on the way out: each scheme the providers document (a header, Sumsub's and
//! Veriff's request signatures, OAuth2 client credentials) turns a request into the headers
//! that authenticate it to the provider. They live here, beside the secrets they are made
//! of; the gateway only calls [`Credential::apply`] on a request about to leave.
//!
//! Values are read from their [`SecretRef`] at start-up and re-read every
//! `refresh_interval`; a new version is used by requests that start after it appears, while a
//! request that started before keeps the previous version for at most `overlap`. The two
//! secrets of a signing scheme are read and replaced as one pair (`signed.rs`). HMAC keys
//! that live in an HSM never leave it: each signature is a PKCS#11 call on a blocking thread.

pub(crate) mod live;
mod signed;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::uri::Uri;

use self::live::LiveHeader;
use self::signed::{Half, SignedPair};
pub use crate::hmac::SignError;
use crate::oauth2::{TokenClient, TokenSource};
use crate::{SecretError, SecretRef};

/// How the upstream credential is produced and sent, as each provider documents it.
#[derive(Debug, Clone)]
pub enum CredentialScheme {
    /// A static header: Didit `x-api-key`, Persona `Authorization: Bearer`, Onfido
    /// `Authorization: Token token=`.
    Header {
        header: HeaderName,
        /// Put before the secret in the header value, e.g. `Bearer ` or `Token token=`.
        prefix: String,
        secret: SecretRef,
    },
    /// Sumsub: `X-App-Token`, `X-App-Access-Ts` and `X-App-Access-Sig` = HMAC-SHA256 over
    /// ts + METHOD + path_with_query + body.
    Sumsub {
        app_token: SecretRef,
        secret: SecretRef,
    },
    /// Veriff: `X-AUTH-CLIENT` and `X-HMAC-SIGNATURE` = HMAC-SHA256 over the body (POST,
    /// PATCH, PUT) or the session id (GET, DELETE).
    Veriff {
        client: SecretRef,
        secret: SecretRef,
    },
    /// A bearer token from the provider's OAuth2 token endpoint (client credentials grant).
    OAuth2ClientCredentials {
        token_url: Uri,
        client_id: String,
        client_secret: SecretRef,
        scope: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct CredentialConfig {
    pub scheme: CredentialScheme,
    /// The name under which uses of this credential are counted and logged.
    pub label: String,
    /// How often the secret's source is checked for a new version.
    pub refresh_interval: Duration,
    /// How long after a rotation a request that started before it may still use the old
    /// value.
    pub overlap: Duration,
}

impl CredentialConfig {
    /// Every header this credential is sent in: a caller's copies of them are removed.
    pub fn headers(&self) -> Vec<HeaderName> {
        match &self.scheme {
            CredentialScheme::Header { header, .. } => vec![header.clone()],
            CredentialScheme::Sumsub { .. } => vec![
                HeaderName::from_static("x-app-token"),
                HeaderName::from_static("x-app-access-ts"),
                HeaderName::from_static("x-app-access-sig"),
            ],
            CredentialScheme::Veriff { .. } => {
                vec![
                    HeaderName::from_static("x-auth-client"),
                    HeaderName::from_static("x-hmac-signature"),
                ]
            }
            CredentialScheme::OAuth2ClientCredentials { .. } => vec![http::header::AUTHORIZATION],
        }
    }
}

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
    /// An OAuth2 scheme was loaded without a client to reach its token endpoint.
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

/// Told of every rotation a credential's background refresh finds, by the credential's
/// label (the gateway counts them).
pub trait Rotations: Send + Sync + 'static {
    fn credential_rotated(&self, label: &str);
}

enum Scheme {
    Header {
        header: HeaderName,
        value: LiveHeader,
    },
    /// The app token and the HMAC key, as one pair.
    Sumsub(SignedPair),
    /// The client id and the HMAC key, as one pair.
    Veriff(SignedPair),
    OAuth2(Arc<TokenSource>),
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
    /// The OAuth2 token sent, for [`Credential::rejected`].
    pub issued: Option<crate::oauth2::Issued>,
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
        oauth_client: Option<TokenClient>,
    ) -> Result<Self, CredentialLoadError> {
        let err = |field: &'static str| {
            move |source: SecretError| CredentialLoadError::Secret {
                label: cfg.label.clone(),
                field,
                source,
            }
        };
        let pair = |id: &SecretRef, id_field: &'static str, secret: &SecretRef| {
            SignedPair::load(id, secret, cfg.overlap).map_err(|(half, source)| match half {
                Half::Id => err(id_field)(source),
                Half::Key => err("secret")(source),
            })
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
            CredentialScheme::Sumsub { app_token, secret } => {
                Scheme::Sumsub(pair(app_token, "app_token", secret)?)
            }
            CredentialScheme::Veriff { client, secret } => {
                Scheme::Veriff(pair(client, "client", secret)?)
            }
            CredentialScheme::OAuth2ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let client = oauth_client.ok_or_else(|| CredentialLoadError::NoHttpClient {
                    label: cfg.label.clone(),
                })?;
                Scheme::OAuth2(Arc::new(
                    TokenSource::new(
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
        matches!(self.scheme, Scheme::Sumsub(_) | Scheme::Veriff(_))
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
                    issued: None,
                })
            }
            Scheme::Sumsub(pair) => {
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
                    .to_string();
                let mut data = Vec::with_capacity(ts.len() + 8 + path_and_query.len() + body.len());
                data.extend_from_slice(ts.as_bytes());
                data.extend_from_slice(method.as_str().as_bytes());
                data.extend_from_slice(path_and_query.as_bytes());
                data.extend_from_slice(body);
                let signed = pair
                    .sign(started, data)
                    .await
                    .map_err(|source| self.sign_err(source))?;
                headers.insert(X_APP_TOKEN, signed.id);
                headers.insert(
                    X_APP_ACCESS_TS,
                    HeaderValue::from_str(&ts).unwrap_or(HeaderValue::from_static("0")),
                );
                headers.insert(X_APP_ACCESS_SIG, hex_header(signed.signature));
                Ok(Use {
                    version: signed.version,
                    issued: None,
                })
            }
            Scheme::Veriff(pair) => {
                // As the provider documents it: the body for requests that carry one, the session id for
                // GET and DELETE.
                let data = if matches!(*method, Method::GET | Method::DELETE | Method::HEAD) {
                    veriff_session_id(path_and_query).as_bytes().to_vec()
                } else {
                    body.to_vec()
                };
                let signed = pair
                    .sign(started, data)
                    .await
                    .map_err(|source| self.sign_err(source))?;
                headers.insert(X_AUTH_CLIENT, signed.id);
                headers.insert(X_HMAC_SIGNATURE, hex_header(signed.signature));
                Ok(Use {
                    version: signed.version,
                    issued: None,
                })
            }
            Scheme::OAuth2(source) => {
                let (value, version, issued) =
                    source
                        .token()
                        .await
                        .map_err(|source| CredentialError::Token {
                            label: self.label.to_string(),
                            source,
                        })?;
                headers.insert(http::header::AUTHORIZATION, value);
                Ok(Use {
                    version,
                    issued: Some(issued),
                })
            }
        }
    }

    /// The upstream answered 401 to a request sent with the OAuth2 token `issued` (a
    /// [`Use`]'s): another is fetched for the next request (see
    /// [`crate::oauth2::TokenSource::rejected`]).
    pub fn rejected(&self, issued: &crate::oauth2::Issued) {
        if let Scheme::OAuth2(source) = &self.scheme {
            source.rejected(issued);
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
        match &self.scheme {
            Scheme::Header { value, .. } => value.refresh(),
            Scheme::Sumsub(pair) | Scheme::Veriff(pair) => pair.refresh(),
            Scheme::OAuth2(_) => Ok(false),
        }
    }

    /// Starts the background refresh of this credential's sources.
    pub fn spawn_refresh<R: Rotations>(self: &Arc<Self>, rotations: Arc<R>) {
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
                        rotations.credential_rotated(&cred.label);
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

/// A signature header: not a secret, but kept out of HPACK's index and `Debug` all the same.
fn hex_header(s: String) -> HeaderValue {
    let mut v = HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
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
}
