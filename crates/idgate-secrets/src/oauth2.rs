//! OAuth2 client-credentials tokens for upstreams that want a bearer token (RFC 6749 §4.4):
//! fetched from the provider's token endpoint with `client_secret_basic`, cached until
//! shortly before they expire, and refreshed by one request however many wait for it.
//!
//! Past the refresh point, one request fetches the next token while the others keep using
//! the current one, which is still valid; only when no valid token is left do they wait. A
//! failed fetch is shared the same way: requests within `FAILURE_BACKOFF` (a second) get the same
//! answer (the still-valid token, or the error) instead of queueing one fetch each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use idgate_tls::client::HttpsClient;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::zeroizing::{JsonSecret, sensitive_header};
use crate::{ExposeSecret, SecretError, SecretRef};

/// The HTTPS client token requests go out with.
pub type TokenClient = HttpsClient<Full<Bytes>>;

/// Longest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Time allowed for one token request.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a failed fetch is the answer before the endpoint is asked again.
const FAILURE_BACKOFF: Duration = Duration::from_secs(1);
/// Lifetime assumed when the endpoint does not say (`expires_in` is only RECOMMENDED).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

struct Cached {
    header: HeaderValue,
    /// When one request starts fetching the next token.
    refresh_at: Instant,
    /// When this one is no longer sent.
    expires_at: Instant,
    version: Arc<str>,
}

impl Cached {
    fn out(self: &Arc<Self>) -> (HeaderValue, Arc<str>, Issued) {
        (
            self.header.clone(),
            self.version.clone(),
            Issued(self.clone()),
        )
    }
}

/// Which token a request was sent with: handed back to [`TokenSource::rejected`] when the
/// upstream refused it. Says nothing of the token.
#[derive(Clone)]
pub struct Issued(Arc<Cached>);

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issued(..)")
    }
}

/// The last failed fetch, shared with the requests that arrive soon after it.
struct Failure {
    at: Instant,
    reason: Arc<TokenError>,
}

/// Why no token was had from the provider's token endpoint. Never carries the client
/// secret, a token or the response body.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("the client secret is not UTF-8")]
    SecretNotUtf8,
    #[error("client credentials are not header-safe")]
    CredentialsNotHeaderSafe,
    #[error("{0}")]
    Request(#[from] http::Error),
    #[error("request failed: {0}")]
    Send(#[from] idgate_tls::client::RequestError),
    #[error("reading the response: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    /// `code` is the endpoint's RFC 6749 error code in parentheses, or empty.
    #[error("status {status}{code}")]
    Status { status: u16, code: String },
    #[error("the response is not JSON")]
    NotJson,
    #[error("the response has no access_token")]
    NoAccessToken,
    #[error("the token_type is not Bearer")]
    NotBearer,
    #[error("the token is not header-safe")]
    TokenNotHeaderSafe,
    #[error("the token endpoint did not answer in time")]
    Timeout,
}

pub(crate) struct TokenSource {
    client: TokenClient,
    token_url: Uri,
    client_id: String,
    client_secret: SecretRef,
    scope: Option<String>,
    cached: ArcSwapOption<Cached>,
    /// Held by the request that fetches; holds the last failure.
    refreshing: Arc<tokio::sync::Mutex<Option<Failure>>>,
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 Appendix B, which
/// `client_secret_basic` and the request body both use): space as `+`, and every byte
/// outside `*-._` and ASCII letters and digits percent-encoded.
fn form_encode(s: &str) -> String {
    idgate_codec::percent::encode_form(s, idgate_codec::percent::is_form_plain)
}

/// [`form_encode`] appended to `out`, which must have room for three bytes per byte of `s`:
/// it never grows, so no reallocation leaves part of a secret behind in freed memory.
fn form_encode_into(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    debug_assert!(out.capacity() - out.len() >= 3 * s.len());
    for b in s.bytes() {
        if idgate_codec::percent::is_form_plain(b) {
            out.push(b);
        } else if b == b' ' {
            out.push(b'+');
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// The `Authorization` value of `client_secret_basic` (RFC 6749 §2.3.1): `Basic` and the
/// base64 of the form-encoded id and secret joined by `:`. Built in zeroizing buffers sized
/// up front, and held over the last of them; `None` if it is not a header value.
fn basic_credentials(client_id: &str, secret: &str) -> Option<HeaderValue> {
    let mut pair = Zeroizing::new(Vec::with_capacity(3 * (client_id.len() + secret.len()) + 1));
    form_encode_into(&mut pair, client_id);
    pair.push(b':');
    form_encode_into(&mut pair, secret);
    const BASIC: &[u8] = b"Basic ";
    let encoded = base64::encoded_len(pair.len(), true)?;
    let mut value = Zeroizing::new(vec![0u8; BASIC.len() + encoded]);
    value[..BASIC.len()].copy_from_slice(BASIC);
    base64::engine::general_purpose::STANDARD
        .encode_slice(pair.as_slice(), &mut value[BASIC.len()..])
        .ok()?;
    sensitive_header(value)
}

/// The parts of a token endpoint's answer that are read; any other field is skipped unread.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<JsonSecret>,
    token_type: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
}

/// When to fetch the next token: a tenth of the lifetime before expiry, but at least a
/// second (or half the lifetime, for very short ones) and at most a minute.
pub(crate) fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).clamp(
        Duration::from_secs(1).min(lifetime / 2),
        Duration::from_secs(60),
    )
}

/// An RFC 6749 §5.2 error code is a short token of printable ASCII; anything else from the
/// endpoint is not repeated in logs.
pub(crate) fn error_code(v: &serde_json::Value) -> String {
    v.get("error")
        .and_then(|e| e.as_str())
        .filter(|e| {
            e.len() <= 64
                && e.bytes()
                    .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        })
        .map(|e| format!(" ({e})"))
        .unwrap_or_default()
}

impl TokenSource {
    /// Checks that the client secret can be read now, so a bad reference fails at start-up.
    pub(crate) fn new(
        client: TokenClient,
        token_url: Uri,
        client_id: String,
        client_secret: &SecretRef,
        scope: Option<String>,
    ) -> Result<Self, SecretError> {
        client_secret.resolve()?;
        Ok(Self {
            client,
            token_url,
            client_id,
            client_secret: client_secret.clone(),
            scope,
            cached: ArcSwapOption::empty(),
            refreshing: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// The `Authorization` value to send, and the version of the client secret it was
    /// obtained with (a bounded label for metrics, unlike the tokens themselves).
    pub(crate) async fn token(
        self: &Arc<Self>,
    ) -> Result<(HeaderValue, Arc<str>, Issued), Arc<TokenError>> {
        let current = self.cached.load_full();
        let now = Instant::now();
        if let Some(c) = current.as_ref().filter(|c| now < c.refresh_at) {
            return Ok(c.out());
        }
        let valid = current.as_ref().filter(|c| now < c.expires_at);
        let last_failure = match (self.refreshing.clone().try_lock_owned(), valid) {
            (Ok(guard), _) => guard,
            // Someone is fetching the next token; this one is still good meanwhile.
            (Err(_), Some(c)) => return Ok(c.out()),
            (Err(_), None) => self.refreshing.clone().lock_owned().await,
        };
        // The fetch runs in a task of its own, which this request waits for: a request that
        // goes away does not cut it short (its token, or its failure and the backoff, would
        // be lost, and the next request would send the secret again).
        let this = self.clone();
        tokio::spawn(async move { this.fetch_locked(last_failure, current).await })
            .await
            .unwrap_or_else(|e| Err(Arc::new(TokenError::Task(e))))
    }

    /// [`TokenSource::token`] once it holds the fetch lock, `last_failure`; `seen` is the
    /// token it saw before.
    async fn fetch_locked(
        &self,
        mut last_failure: tokio::sync::OwnedMutexGuard<Option<Failure>>,
        seen: Option<Arc<Cached>>,
    ) -> Result<(HeaderValue, Arc<str>, Issued), Arc<TokenError>> {
        // While this request waited, another may have fetched a token or failed to. A token
        // fetched meanwhile is used while it is valid, even past its refresh point: the
        // requests queued behind a fetch take its result instead of each fetching again.
        let current = self.cached.load_full();
        let now = Instant::now();
        let fetched_meanwhile = match (&seen, &current) {
            (Some(seen), Some(current)) => !Arc::ptr_eq(seen, current),
            (None, Some(_)) => true,
            _ => false,
        };
        if let Some(c) = current
            .as_ref()
            .filter(|c| now < c.refresh_at || (fetched_meanwhile && now < c.expires_at))
        {
            return Ok(c.out());
        }
        let valid = current.filter(|c| now < c.expires_at);
        if let Some(f) = last_failure
            .as_ref()
            .filter(|f| f.at.elapsed() < FAILURE_BACKOFF)
        {
            return match valid {
                Some(c) => Ok(c.out()),
                None => Err(f.reason.clone()),
            };
        }
        let fetched = tokio::time::timeout(TOKEN_TIMEOUT, self.fetch())
            .await
            .unwrap_or(Err(TokenError::Timeout))
            .map_err(Arc::new);
        match fetched {
            Ok(cached) => {
                *last_failure = None;
                let cached = Arc::new(cached);
                let out = cached.out();
                self.cached.store(Some(cached));
                Ok(out)
            }
            Err(reason) => {
                *last_failure = Some(Failure {
                    at: Instant::now(),
                    reason: reason.clone(),
                });
                match valid.filter(|c| Instant::now() < c.expires_at) {
                    Some(c) => {
                        tracing::warn!(
                            token_endpoint = self.token_url.host().unwrap_or("-"),
                            error = %reason,
                            "cannot fetch the next OAuth2 token; the current one stays in use until it expires"
                        );
                        Ok(c.out())
                    }
                    None => Err(reason),
                }
            }
        }
    }

    /// The upstream refused the token `issued` (401): the next request fetches another,
    /// rather than send it until its refresh point, up to a day away. Only the token in use
    /// is marked: the refusals of a burst sent with it mark it once, and a refusal of an
    /// older token, already replaced, changes nothing. Until the next token comes (or while
    /// the endpoint fails, for [`FAILURE_BACKOFF`] at a time) this one is still sent.
    pub(crate) fn rejected(&self, issued: &Issued) {
        let current = self.cached.load();
        let Some(c) = current.as_ref().filter(|c| Arc::ptr_eq(c, &issued.0)) else {
            return;
        };
        let now = Instant::now();
        if now >= c.refresh_at {
            return;
        }
        tracing::warn!(
            token_endpoint = self.token_url.host().unwrap_or("-"),
            "the upstream refused the OAuth2 token (401): the next request fetches another"
        );
        let marked = Arc::new(Cached {
            header: c.header.clone(),
            refresh_at: now,
            expires_at: c.expires_at,
            version: c.version.clone(),
        });
        self.cached.compare_and_swap(&*current, Some(marked));
    }

    async fn fetch(&self) -> Result<Cached, TokenError> {
        let secret = {
            let r = self.client_secret.clone();
            tokio::task::spawn_blocking(move || r.fetch()).await??
        };
        let secret_text = std::str::from_utf8(secret.value.expose_secret())
            .map_err(|_| TokenError::SecretNotUtf8)?;
        let auth = basic_credentials(&self.client_id, secret_text)
            .ok_or(TokenError::CredentialsNotHeaderSafe)?;
        let mut body = "grant_type=client_credentials".to_owned();
        if let Some(scope) = &self.scope {
            body.push_str("&scope=");
            body.push_str(&form_encode(scope));
        }
        let req = Request::post(self.token_url.clone())
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        // The token's lifetime runs from when it was asked for: the answer took some of it.
        let asked = Instant::now();
        let resp = self.client.request(req).await?;
        let status = resp.status();
        let bytes = Zeroizing::new(Vec::from(
            Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
                .collect()
                .await
                .map_err(TokenError::Body)?
                .to_bytes(),
        ));
        if !status.is_success() {
            // The endpoint's error code helps the operator; the body is not echoed further.
            let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                .map(|v| error_code(&v))
                .unwrap_or_default();
            return Err(TokenError::Status {
                status: status.as_u16(),
                code,
            });
        }
        let (header, lifetime) = read_answer(&bytes)?;
        Ok(Cached {
            header,
            refresh_at: asked + lifetime.saturating_sub(refresh_margin(lifetime)),
            expires_at: asked + lifetime,
            version: secret.version.into(),
        })
    }
}

/// What a token endpoint's successful answer gives: the `Authorization` value to send and
/// the token's lifetime.
pub(crate) fn read_answer(bytes: &[u8]) -> Result<(HeaderValue, Duration), TokenError> {
    let answer: TokenAnswer = serde_json::from_slice(bytes).map_err(|_| TokenError::NotJson)?;
    let token = match &answer.access_token {
        Some(JsonSecret::Text(t)) if !t.expose_secret().is_empty() => t,
        _ => return Err(TokenError::NoAccessToken),
    };
    let token_type = answer
        .token_type
        .as_ref()
        .and_then(|t| t.as_str())
        .unwrap_or("Bearer");
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::NotBearer);
    }
    // A number per RFC 6749; some endpoints send it as a string. Zero is no lifetime at all
    // (some endpoints send it for a token that does not expire): taken as not given, since
    // it would have every request fetch a token, each waiting in line for the one before.
    let lifetime = match &answer.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|secs| *secs > 0)
    // A peer-supplied lifetime is clamped: a day is more than any access token needs, and an
    // absurd value must not overflow the clock arithmetic of the caller.
    .map_or(DEFAULT_LIFETIME, |secs| {
        Duration::from_secs(secs.min(86_400))
    });
    let header = bearer(token.expose_secret()).ok_or(TokenError::TokenNotHeaderSafe)?;
    Ok((header, lifetime))
}

/// `Bearer <token>`, held over a zeroizing buffer of its own.
fn bearer(token: &str) -> Option<HeaderValue> {
    const BEARER: &[u8] = b"Bearer ";
    let mut value = Zeroizing::new(Vec::with_capacity(BEARER.len() + token.len()));
    value.extend_from_slice(BEARER);
    value.extend_from_slice(token.as_bytes());
    sensitive_header(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_follows_rfc6749_appendix_b() {
        assert_eq!(form_encode("a b:c/ü"), "a+b%3Ac%2F%C3%BC");
        assert_eq!(form_encode("Az09-._*"), "Az09-._*");
        assert_eq!(form_encode("~+%"), "%7E%2B%25");
        for s in ["a b:c/ü", "Az09-._*", "~+%", ""] {
            let mut out = Vec::with_capacity(3 * s.len());
            form_encode_into(&mut out, s);
            assert_eq!(out, form_encode(s).as_bytes());
        }
    }

    #[test]
    fn basic_credentials_are_the_form_encoded_pair_in_base64() {
        let v = basic_credentials("id:1", "s3cr t/ü").unwrap();
        let expected = base64::engine::general_purpose::STANDARD.encode("id%3A1:s3cr+t%2F%C3%BC");
        assert_eq!(v.to_str().unwrap(), format!("Basic {expected}"));
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains(&expected));
    }

    /// The client secret, form-encoded and joined to the id, and the header made of them
    /// leave no copy in memory once the token request is done with them.
    #[test]
    fn the_client_secret_leaves_no_copy_in_memory_once_the_header_is_dropped() {
        const SECRET: &str = "oauth2-client-secret-000000000000000000000-tail-3f9b6e1d7a2c5804e4";
        // `Basic ` and the base64 of `client:SECRET`: the header value.
        const HEADER: &str = "Basic Y2xpZW50Om9hdXRoMi1jbGllbnQtc2VjcmV0LTAwMDAwMDAwMDAwMDAwMDAwMDAwMC10YWlsLTNmOWI2ZTFkN2EyYzU4MDRlNA==";
        let mut scanner = crate::zeroizing::freed::Scanner::new();
        let header = basic_credentials("client", SECRET).unwrap();
        assert_eq!(header.as_bytes(), HEADER.as_bytes());
        let sent = header.clone();
        drop(header);
        drop(sent);
        assert!(
            !scanner.finds(crate::zeroizing::tail(SECRET)),
            "a copy of the client secret was left in memory"
        );
        assert!(
            !scanner.finds(crate::zeroizing::tail(HEADER)),
            "a copy of the header value was left in memory"
        );
    }

    #[test]
    fn tokens_are_refreshed_before_they_expire_even_short_ones() {
        let m = |s: u64| refresh_margin(Duration::from_secs(s));
        assert_eq!(m(3600), Duration::from_secs(60));
        assert_eq!(m(300), Duration::from_secs(30));
        assert_eq!(m(3), Duration::from_secs(1));
        assert_eq!(m(1), Duration::from_millis(500));
        assert_eq!(m(0), Duration::ZERO);
    }

    /// A token endpoint on loopback whose every token is `expires_in: 0`; counts the token
    /// requests it answers, each after `delay`.
    fn zero_lifetime_endpoint(delay: Duration) -> (Uri, Arc<std::sync::atomic::AtomicU32>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let issued = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let count = issued.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                }
                let length = String::from_utf8_lossy(&head)
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                if conn.read_exact(&mut body).is_err() {
                    continue;
                }
                std::thread::sleep(delay);
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let answer = format!(
                    r#"{{"access_token":"token-{n}","token_type":"Bearer","expires_in":0}}"#
                );
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        (url.parse().unwrap(), issued)
    }

    /// A token source for `url`, its client secret in a file of the directory returned.
    fn source_for(url: Uri) -> (tempfile::TempDir, Arc<TokenSource>) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "client-secret").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let client = idgate_tls::client::OutboundClient::new(
            rustls::RootCertStore::empty(),
            Duration::from_secs(5),
        )
        .http1_only()
        .build()
        .unwrap();
        let source =
            TokenSource::new(client, url, "client".into(), &SecretRef::File(secret), None).unwrap();
        (dir, Arc::new(source))
    }

    #[test]
    fn an_expires_in_of_zero_does_not_fetch_a_token_per_request() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let (url, issued) = zero_lifetime_endpoint(Duration::from_millis(200));
        let (_dir, source) = source_for(url);
        rt.block_on(async {
            // Twenty first requests at once: one fetches, the others wait for it.
            let first: Vec<_> = (0..20)
                .map(|_| {
                    let source = source.clone();
                    tokio::spawn(async move { source.token().await })
                })
                .collect();
            for request in first {
                let (header, _, _) = request.await.unwrap().unwrap();
                assert_eq!(header.to_str().unwrap(), "Bearer token-1");
            }
            // And the requests after them.
            for _ in 0..50 {
                let (header, _, _) = source.token().await.unwrap();
                assert_eq!(header.to_str().unwrap(), "Bearer token-1");
            }
        });
        assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_token_the_upstream_refused_is_replaced_at_the_next_request_and_only_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (url, issued) = zero_lifetime_endpoint(Duration::ZERO);
        let (_dir, source) = source_for(url);
        rt.block_on(async {
            let (first, _, sent) = source.token().await.unwrap();
            assert_eq!(first.to_str().unwrap(), "Bearer token-1");
            // A burst of refusals of the token in use: one new token.
            source.rejected(&sent);
            source.rejected(&sent);
            let (second, _, sent_second) = source.token().await.unwrap();
            assert_eq!(second.to_str().unwrap(), "Bearer token-2");
            // A late refusal of the token already replaced changes nothing.
            source.rejected(&sent);
            let (still, _, _) = source.token().await.unwrap();
            assert_eq!(still.to_str().unwrap(), "Bearer token-2");
            drop(sent_second);
        });
        assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn a_token_fetch_whose_request_went_away_is_made_whole() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (url, issued) = zero_lifetime_endpoint(Duration::from_millis(300));
        let (_dir, source) = source_for(url);
        rt.block_on(async {
            // The first request goes away while its token is being fetched.
            let gone = {
                let source = source.clone();
                tokio::spawn(async move { source.token().await })
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            gone.abort();
            tokio::time::sleep(Duration::from_millis(500)).await;
            // The token it asked for came, and serves the next request.
            let (header, _, _) = source.token().await.unwrap();
            assert_eq!(header.to_str().unwrap(), "Bearer token-1");
        });
        assert_eq!(issued.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn an_expires_in_of_zero_is_taken_as_not_given() {
        let lifetime = |expires_in: &str| {
            let answer = format!(r#"{{"access_token":"t","expires_in":{expires_in}}}"#);
            read_answer(answer.as_bytes()).unwrap().1
        };
        assert_eq!(lifetime("0"), DEFAULT_LIFETIME);
        assert_eq!(lifetime("\"0\""), DEFAULT_LIFETIME);
        assert_eq!(lifetime("null"), DEFAULT_LIFETIME);
        assert_eq!(lifetime("1"), Duration::from_secs(1));
        assert_eq!(lifetime("3600"), Duration::from_secs(3600));
        assert_eq!(lifetime("99999999999"), Duration::from_secs(86_400));
    }

    #[test]
    fn only_plain_error_codes_are_repeated() {
        let v = serde_json::json!({"error": "invalid_client"});
        assert_eq!(error_code(&v), " (invalid_client)");
        let v = serde_json::json!({"error": "x\ny"});
        assert_eq!(error_code(&v), "");
        let v = serde_json::json!({"error": "a".repeat(100)});
        assert_eq!(error_code(&v), "");
    }
}
