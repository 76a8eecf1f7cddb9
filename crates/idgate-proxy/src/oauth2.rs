//! OAuth2 client-credentials tokens for upstreams that want a bearer token (RFC 6749 §4.4):
//! fetched from the provider's token endpoint with `client_secret_basic`, cached until
//! shortly before they expire, and refreshed by one request however many wait for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Uri};
use http_body_util::{BodyExt, Either, Full, Limited};
use idgate_secrets::{ExposeSecret, SecretError, SecretRef};

use crate::upstream::UpstreamClient;

pub type TokenClient = UpstreamClient;

/// Longest token response read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;
/// Time allowed for one token request.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

struct Cached {
    header: HeaderValue,
    refresh_at: Instant,
    version: Arc<str>,
}

pub struct TokenSource {
    client: TokenClient,
    token_url: Uri,
    client_id: String,
    client_secret: SecretRef,
    scope: Option<String>,
    cached: ArcSwapOption<Cached>,
    refreshing: tokio::sync::Mutex<()>,
    fetched: AtomicU64,
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TokenSource {
    /// Checks that the client secret can be read now, so a bad reference fails at start-up.
    pub fn new(
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
            refreshing: tokio::sync::Mutex::new(()),
            fetched: AtomicU64::new(0),
        })
    }

    fn fresh(&self) -> Option<(HeaderValue, Arc<str>)> {
        let c = self.cached.load();
        c.as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| (c.header.clone(), c.version.clone()))
    }

    /// The `Authorization` value to send, and which token (a counter) it is.
    pub async fn token(&self) -> Result<(HeaderValue, Arc<str>), String> {
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        // One request refreshes; the others wait for it and then use its token.
        let _guard = self.refreshing.lock().await;
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let cached = tokio::time::timeout(TOKEN_TIMEOUT, self.fetch())
            .await
            .map_err(|_| "the token endpoint did not answer in time".to_owned())??;
        let out = (cached.header.clone(), cached.version.clone());
        self.cached.store(Some(Arc::new(cached)));
        Ok(out)
    }

    async fn fetch(&self) -> Result<Cached, String> {
        let secret = {
            let r = self.client_secret.clone();
            tokio::task::spawn_blocking(move || r.resolve())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?
        };
        let basic = zeroize::Zeroizing::new(format!(
            "{}:{}",
            form_encode(&self.client_id),
            form_encode(secret.expose_secret())
        ));
        let mut auth = HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(basic.as_bytes())
        ))
        .map_err(|_| "client credentials are not header-safe".to_owned())?;
        auth.set_sensitive(true);
        let mut body = "grant_type=client_credentials".to_owned();
        if let Some(scope) = &self.scope {
            body.push_str("&scope=");
            body.push_str(&form_encode(scope));
        }
        let req = Request::post(self.token_url.clone())
            .header(header::AUTHORIZATION, auth)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Either::Right(Full::new(Bytes::from(body))))
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
            .collect()
            .await
            .map_err(|e| format!("reading the response: {e}"))?
            .to_bytes();
        if !status.is_success() {
            // The endpoint's error code helps the operator; the body is not echoed further.
            let code = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_default();
            return Err(format!("status {status} {code}"));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| "the response is not JSON".to_owned())?;
        let token = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or("the response has no access_token")?;
        let token_type = v
            .get("token_type")
            .and_then(|t| t.as_str())
            .unwrap_or("Bearer");
        if !token_type.eq_ignore_ascii_case("bearer") {
            return Err(format!("token_type {token_type} is not Bearer"));
        }
        let expires_in = v
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(300);
        // Refresh ahead of expiry: a tenth of the lifetime, at most a minute.
        let margin = (expires_in / 10).min(60);
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "the token is not header-safe".to_owned())?;
        header.set_sensitive(true);
        let n = self.fetched.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Cached {
            header,
            refresh_at: Instant::now() + Duration::from_secs(expires_in.saturating_sub(margin)),
            version: format!("token-{n}").into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_escapes_reserved_bytes() {
        assert_eq!(form_encode("a b:c/ü"), "a%20b%3Ac%2F%C3%BC");
        assert_eq!(form_encode("Az09-._~"), "Az09-._~");
    }
}
