//! HashiCorp Vault as a secret source: `vault:<mount>/<path>[?version=N]#<field>` names one
//! field of a KV version 2 secret, read over HTTPS with a token or an AppRole login.
//!
//! The reference says *what* to read; *where* Vault is and how to log in come from the
//! configuration's `[vault]` section, so a process-wide [`VaultClient`] is [`install`]ed at
//! start-up and [`crate::SecretRef::fetch`] uses it. The version reported with a value is the
//! KV version (`data.metadata.version`), so a periodic refresh notices a new version.
//!
//! The client runs its requests on a small runtime of its own (one thread): the synchronous
//! [`VaultClient::read_blocking`] can then be called from a blocking thread of any runtime,
//! or before any runtime exists, and its pooled connections outlive neither.
//!
//! Tokens: an AppRole login's token is replaced by a new login when two thirds of its lease
//! have passed, and the replaced one is revoked (`revoke-self`) once no read can still be
//! using it; a configured token is looked up once (`lookup-self`) and, when it has a TTL and
//! is renewable, renewed (`renew-self`) at two thirds of it. After a 403 the token is looked
//! up: one Vault no longer accepts is dropped, and the read is tried once more after a new
//! login (or a new read of the token's source); one it still accepts stays, the 403 being the
//! policy's answer for that path. No error or log line carries a token, a `secret_id` or a
//! secret value.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use idgate_tls::client::{HttpsClient, OutboundClient};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use crate::SecretRef;
use crate::zeroizing::{JsonSecret, sensitive_header};

mod error;
mod reference;
mod wire;

pub use error::VaultError;
pub use reference::VaultRef;

/// Leases and TTLs from Vault are clamped to a week: beyond that the arithmetic on the
/// clock could overflow, and a re-login a week later costs nothing.
const MAX_LEASE_SECS: u64 = 7 * 24 * 3600;
/// Longest Vault response read.
const MAX_RESPONSE: usize = 1024 * 1024;
const X_VAULT_TOKEN: HeaderName = HeaderName::from_static("x-vault-token");
const X_VAULT_NAMESPACE: HeaderName = HeaderName::from_static("x-vault-namespace");
const X_VAULT_REQUEST: HeaderName = HeaderName::from_static("x-vault-request");

/// How the client logs in to Vault.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum VaultAuth {
    /// A token read from its reference (`env:VAULT_TOKEN`, `file:`, `pkcs11:`), sent as
    /// `X-Vault-Token`.
    Token(SecretRef),
    /// `POST /v1/auth/<mount>/login` with a `role_id` and a `secret_id`.
    AppRole {
        role_id: SecretRef,
        secret_id: SecretRef,
        /// Where the AppRole auth method is mounted; `approle` by default.
        mount: String,
    },
}

/// Where Vault is and how to reach it: the validated `[vault]` section.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct VaultSettings {
    /// `https://vault.example:8200` (or `http://` on loopback).
    pub address: Uri,
    /// Extra trusted roots (PEM), besides the platform's.
    pub ca: Option<PathBuf>,
    /// Vault Enterprise / HCP namespace, sent as `X-Vault-Namespace`.
    pub namespace: Option<String>,
    /// Time allowed for each request to Vault.
    pub timeout: Duration,
    pub auth: VaultAuth,
}

static INSTALLED: RwLock<Option<Arc<VaultClient>>> = RwLock::new(None);

/// Makes `client` the one that `vault:` references are read with, for the whole process.
/// Called at start-up from the configuration's `[vault]` section.
pub fn install(client: Arc<VaultClient>) {
    if let Ok(mut slot) = INSTALLED.write() {
        *slot = Some(client);
    }
}

/// The client [`install`]ed at start-up, if any.
pub fn installed() -> Option<Arc<VaultClient>> {
    INSTALLED.read().ok().and_then(|c| c.clone())
}

/// A value read from Vault and its KV version.
pub struct VaultSecret {
    pub value: SecretString,
    pub version: u64,
}

impl fmt::Debug for VaultSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSecret")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

type HttpClient = HttpsClient<Full<Bytes>>;

/// A Vault client with its own one-thread runtime.
pub struct VaultClient {
    inner: Arc<Inner>,
    runtime: OwnedRuntime,
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultClient")
            .field("address", &self.inner.base)
            .finish_non_exhaustive()
    }
}

/// A runtime that may be dropped anywhere, even inside another runtime.
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The token in use and when to renew or replace it.
struct Session {
    token: SecretString,
    /// When to renew (a configured token) or log in again (AppRole); `None`: never expires.
    renew_at: Option<Instant>,
    /// When Vault stops accepting it; `None`: never.
    expires_at: Option<Instant>,
    renewable: bool,
}

struct Inner {
    http: HttpClient,
    /// `scheme://authority`, no trailing slash.
    base: String,
    namespace: Option<HeaderValue>,
    timeout: Duration,
    auth: VaultAuth,
    session: tokio::sync::Mutex<Option<Session>>,
}

fn load_roots(ca: Option<&PathBuf>) -> Result<rustls::RootCertStore, VaultError> {
    idgate_tls::roots::roots_with_ca(ca.map(PathBuf::as_path))
        .map_err(|e| VaultError::Setup(format!("ca {e}")))
}

/// Two thirds of a lifetime from now: early enough to renew or log in again calmly.
fn renew_point(now: Instant, lifetime: Duration) -> Instant {
    now + lifetime * 2 / 3
}

impl VaultClient {
    /// Builds the client (TLS roots, runtime); nothing is sent to Vault yet.
    pub fn new(settings: VaultSettings) -> Result<Arc<Self>, VaultError> {
        let scheme = settings
            .address
            .scheme_str()
            .filter(|s| matches!(*s, "https" | "http"))
            .ok_or_else(|| VaultError::Setup("address must be https://".to_owned()))?;
        let authority = settings
            .address
            .authority()
            .ok_or_else(|| VaultError::Setup("address has no host".to_owned()))?;
        let base = format!("{scheme}://{authority}");
        let namespace = settings
            .namespace
            .as_deref()
            .map(HeaderValue::from_str)
            .transpose()
            .map_err(|_| VaultError::Setup("namespace is not a valid header value".to_owned()))?;

        let roots = load_roots(settings.ca.as_ref())?;
        let http = OutboundClient::new(roots, settings.timeout)
            .http1_only()
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build()
            .map_err(|e| VaultError::Setup(e.to_string()))?;

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("idgate-vault")
            .enable_all()
            .build()
            .map_err(|e| VaultError::Setup(format!("cannot start its runtime: {e}")))?;
        Ok(Arc::new(Self {
            inner: Arc::new(Inner {
                http,
                base,
                namespace,
                timeout: settings.timeout,
                auth: settings.auth,
                session: tokio::sync::Mutex::new(None),
            }),
            runtime: OwnedRuntime(Some(runtime)),
        }))
    }

    /// Reads one field. Blocking: call from a blocking thread or before any runtime runs.
    pub fn read_blocking(&self, reference: &VaultRef) -> Result<VaultSecret, VaultError> {
        let Some(rt) = &self.runtime.0 else {
            return Err(VaultError::Setup("the client is shut down".to_owned()));
        };
        let budget = self.inner.read_budget();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (inner, reference) = (self.inner.clone(), reference.clone());
        rt.spawn(async move {
            let r = tokio::time::timeout(budget, inner.read(&reference))
                .await
                .unwrap_or(Err(VaultError::Timeout(budget)));
            let _ = tx.send(r);
        });
        rx.recv_timeout(budget + Duration::from_secs(1))
            .unwrap_or(Err(VaultError::Timeout(budget)))
    }
}

/// Vault's `errors` array, flattened to one short line for logs (never request data).
fn error_detail(body: &[u8]) -> String {
    let errors = serde_json::from_slice::<wire::Errors>(body)
        .map(|e| e.errors)
        .unwrap_or_default();
    let joined = errors.join("; ");
    let clean: String = joined
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match clean.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &clean[..i]),
        None if clean.is_empty() => "no detail".to_owned(),
        None => clean,
    }
}

fn status_error(status: StatusCode, body: &[u8]) -> VaultError {
    if status == StatusCode::FORBIDDEN {
        VaultError::PermissionDenied
    } else {
        VaultError::Status {
            status: status.as_u16(),
            detail: error_detail(body),
        }
    }
}

/// What Vault's answer to a KV version 2 read (`status`, `body`) gives for `r`: the field's
/// value and its version, or why there is none.
pub(crate) fn kv_answer(
    status: StatusCode,
    body: &[u8],
    r: &VaultRef,
) -> Result<VaultSecret, VaultError> {
    if status == StatusCode::NOT_FOUND {
        // A deleted version answers 404 with its metadata; a missing path with no data.
        return Err(
            match wire::kv_read(body, &r.field).ok().and_then(|k| k.metadata) {
                Some(m) => VaultError::Deleted(m.version),
                None => VaultError::NotFound,
            },
        );
    }
    if !status.is_success() {
        return Err(status_error(status, body));
    }
    let kv = wire::kv_read(body, &r.field)
        .map_err(|_| VaultError::BadResponse("not a KV version 2 answer"))?;
    let metadata = kv.metadata.ok_or(VaultError::BadResponse(
        "no data.metadata: is this a KV version 2 mount?",
    ))?;
    if metadata.destroyed || !metadata.deletion_time.is_empty() {
        return Err(VaultError::Deleted(metadata.version));
    }
    match kv.field {
        wire::KvField::Present(JsonSecret::Text(value)) if !value.expose_secret().is_empty() => {
            Ok(VaultSecret {
                value,
                version: metadata.version,
            })
        }
        wire::KvField::Present(_) => Err(VaultError::NotAString(r.field.clone())),
        wire::KvField::Missing => Err(VaultError::NoField(r.field.clone())),
        wire::KvField::NoData => Err(VaultError::Deleted(metadata.version)),
    }
}

/// Why a login credential (a token, a `role_id` or `secret_id`) could not be read.
#[derive(Debug, thiserror::Error)]
enum LoginSecretError {
    #[error(transparent)]
    Secret(#[from] crate::SecretError),
    #[error("the task reading it failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Reads a secret reference on a blocking thread (files and tokens block).
async fn resolve(source: &SecretRef) -> Result<SecretString, LoginSecretError> {
    let source = source.clone();
    Ok(tokio::task::spawn_blocking(move || source.resolve()).await??)
}

impl Inner {
    /// The longest one read may take: six requests to Vault (a renewal, a login or a token
    /// lookup, the read, and after a 403 a lookup, a second login and a second read).
    fn read_budget(&self) -> Duration {
        self.timeout * 6
    }

    async fn read(self: &Arc<Self>, r: &VaultRef) -> Result<VaultSecret, VaultError> {
        let token = self.token().await?;
        match self.read_kv(&token, r).await {
            // The token may have been revoked or may have expired early, or the policy does
            // not allow this path: only in the first case does a new login help.
            Err(VaultError::PermissionDenied) if self.refused(&token).await? => {
                let token = self.token().await?;
                self.read_kv(&token, r).await
            }
            other => other,
        }
    }

    /// After a 403 with `token`: whether it is the token that Vault refuses (then dropped,
    /// so that the next [`Inner::token`] logs in again or re-reads its source), rather than
    /// the path. A token that still passes its own lookup (`lookup-self`, in Vault's default
    /// policy) is kept: its 403 is the policy's answer for that path, and a new login would
    /// get the same answer.
    async fn refused(&self, token: &SecretString) -> Result<bool, VaultError> {
        let current = {
            let session = self.session.lock().await;
            session
                .as_ref()
                .is_some_and(|s| s.token.expose_secret() == token.expose_secret())
        };
        // Another read replaced it meanwhile: the one in use now is worth a try.
        if !current {
            return Ok(true);
        }
        match self.lookup(token).await {
            Ok(_) => Ok(false),
            Err(VaultError::PermissionDenied) => {
                self.forget(token).await;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// `lookup-self`: the token's TTL and whether it is renewable.
    async fn lookup(&self, token: &SecretString) -> Result<wire::LookupData, VaultError> {
        let (status, answer) = self
            .call(Method::GET, "/v1/auth/token/lookup-self", Some(token), None)
            .await?;
        if !status.is_success() {
            return Err(status_error(status, &answer));
        }
        Ok(serde_json::from_slice::<wire::Lookup>(&answer)
            .map_err(|_| VaultError::BadResponse("no data in the token lookup answer"))?
            .data)
    }

    async fn read_kv(&self, token: &SecretString, r: &VaultRef) -> Result<VaultSecret, VaultError> {
        let (status, body) = self
            .call(Method::GET, &r.api_path(), Some(token), None)
            .await?;
        kv_answer(status, &body, r)
    }

    /// A token that Vault should accept now: the current one, renewed, or a new login.
    async fn token(self: &Arc<Self>) -> Result<SecretString, VaultError> {
        let mut session = self.session.lock().await;
        let now = Instant::now();
        if let Some(s) = session.as_mut() {
            if s.renew_at.is_none_or(|t| now < t) {
                return Ok(s.token.clone());
            }
            if matches!(self.auth, VaultAuth::Token(_)) && s.renewable {
                match self.renew_self(&s.token).await {
                    Ok(lease) => {
                        let now = Instant::now();
                        s.renew_at = (!lease.is_zero()).then(|| renew_point(now, lease));
                        s.expires_at = (!lease.is_zero()).then(|| now + lease);
                        tracing::debug!(lease_secs = lease.as_secs(), "vault: token renewed");
                        return Ok(s.token.clone());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "vault: cannot renew the token; reading its source again");
                    }
                }
            }
        }
        match self.login().await {
            Ok(s) => {
                let token = s.token.clone();
                if let Some(old) = session.replace(s) {
                    self.retire(old);
                }
                Ok(token)
            }
            // A token that is due for replacement but still valid is better than none.
            Err(e) => match session.as_ref() {
                Some(s) if s.expires_at.is_none_or(|t| Instant::now() < t) => {
                    tracing::warn!(error = %e, "vault: cannot log in again; the current token stays in use until it expires");
                    Ok(s.token.clone())
                }
                _ => Err(e),
            },
        }
    }

    /// Revokes the token of an AppRole session a new login replaced (`revoke-self`), so that
    /// tokens do not pile up in Vault until their TTLs end; best effort, in the background.
    /// It waits until no read can still be using it (the longest a read takes), and is
    /// skipped for a token that expires before then. A configured token is the operator's
    /// and is never revoked.
    fn retire(self: &Arc<Self>, old: Session) {
        if !matches!(self.auth, VaultAuth::AppRole { .. }) {
            return;
        }
        let grace = self.read_budget();
        if old.expires_at.is_some_and(|t| t <= Instant::now() + grace) {
            return;
        }
        let inner = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let Some(inner) = inner.upgrade() else { return };
            let revoked = inner
                .call(
                    Method::POST,
                    "/v1/auth/token/revoke-self",
                    Some(&old.token),
                    Some(Bytes::from_static(b"{}")),
                )
                .await;
            match revoked {
                Ok((status, _)) if status.is_success() => {
                    tracing::debug!("vault: the replaced AppRole token is revoked");
                }
                Ok((status, answer)) => tracing::debug!(
                    error = %status_error(status, &answer),
                    "vault: cannot revoke the replaced AppRole token; it expires with its TTL"
                ),
                Err(e) => tracing::debug!(
                    error = %e,
                    "vault: cannot revoke the replaced AppRole token; it expires with its TTL"
                ),
            }
        });
    }

    /// Drops the session if it still holds `token` (another task may have replaced it).
    async fn forget(&self, token: &SecretString) {
        let mut session = self.session.lock().await;
        if session
            .as_ref()
            .is_some_and(|s| s.token.expose_secret() == token.expose_secret())
        {
            *session = None;
        }
    }

    /// A new session: an AppRole login, or the configured token and its lookup.
    async fn login(&self) -> Result<Session, VaultError> {
        match &self.auth {
            VaultAuth::AppRole {
                role_id,
                secret_id,
                mount,
            } => {
                let role_id = resolve(role_id)
                    .await
                    .map_err(|e| VaultError::Login(format!("role_id: {e}")))?;
                let secret_id = resolve(secret_id)
                    .await
                    .map_err(|e| VaultError::Login(format!("secret_id: {e}")))?;
                let body = login_body(role_id.expose_secret(), secret_id.expose_secret())?;
                let (status, answer) = self
                    .call(
                        Method::POST,
                        &format!("/v1/auth/{mount}/login"),
                        None,
                        Some(body),
                    )
                    .await?;
                if !status.is_success() {
                    return Err(VaultError::Login(format!(
                        "AppRole login answered {}: {}",
                        status.as_u16(),
                        error_detail(&answer)
                    )));
                }
                let auth = serde_json::from_slice::<wire::AuthAnswer>(&answer)
                    .map_err(|_| {
                        VaultError::BadResponse("no auth.client_token in the login answer")
                    })?
                    .auth;
                let token = match auth.client_token {
                    JsonSecret::Text(t) if !t.expose_secret().is_empty() => t,
                    _ => return Err(VaultError::BadResponse("empty auth.client_token")),
                };
                let lease = Duration::from_secs(auth.lease_duration.min(MAX_LEASE_SECS));
                let now = Instant::now();
                tracing::info!(
                    lease_secs = auth.lease_duration,
                    "vault: logged in with AppRole"
                );
                Ok(Session {
                    token,
                    renew_at: (!lease.is_zero()).then(|| renew_point(now, lease)),
                    expires_at: (!lease.is_zero()).then(|| now + lease),
                    renewable: auth.renewable,
                })
            }
            VaultAuth::Token(source) => {
                let token = resolve(source)
                    .await
                    .map_err(|e| VaultError::Login(format!("token: {e}")))?;
                let data = self.lookup(&token).await.map_err(|e| match e {
                    VaultError::PermissionDenied => {
                        VaultError::Login("the token was refused (permission denied)".into())
                    }
                    e => e,
                })?;
                let ttl = Duration::from_secs(data.ttl.min(MAX_LEASE_SECS));
                let now = Instant::now();
                Ok(Session {
                    token,
                    // A token without a TTL never expires; one with a TTL that cannot be
                    // renewed is read from its source again when it nears its end.
                    renew_at: (!ttl.is_zero()).then(|| renew_point(now, ttl)),
                    expires_at: (!ttl.is_zero()).then(|| now + ttl),
                    renewable: data.renewable,
                })
            }
        }
    }

    /// `renew-self`: the token's new lease.
    async fn renew_self(&self, token: &SecretString) -> Result<Duration, VaultError> {
        let (status, answer) = self
            .call(
                Method::POST,
                "/v1/auth/token/renew-self",
                Some(token),
                Some(Bytes::from_static(b"{}")),
            )
            .await?;
        if !status.is_success() {
            return Err(status_error(status, &answer));
        }
        let auth = serde_json::from_slice::<wire::AuthAnswer>(&answer)
            .map_err(|_| VaultError::BadResponse("no auth in the renewal answer"))?
            .auth;
        Ok(Duration::from_secs(auth.lease_duration.min(MAX_LEASE_SECS)))
    }

    /// One request to Vault, bounded by the timeout; the answer's body is zeroized after use.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        token: Option<&SecretString>,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Zeroizing<Vec<u8>>), VaultError> {
        let uri: Uri = format!("{}{path_and_query}", self.base)
            .parse()
            .map_err(|_| VaultError::Setup("cannot build a request URL".to_owned()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .header(X_VAULT_REQUEST, "true");
        if let Some(ns) = &self.namespace {
            req = req.header(X_VAULT_NAMESPACE, ns.clone());
        }
        if let Some(token) = token {
            let raw = Zeroizing::new(token.expose_secret().as_bytes().to_vec());
            let v = sensitive_header(raw).ok_or_else(|| {
                VaultError::Login("the token contains characters not allowed in a header".into())
            })?;
            req = req.header(X_VAULT_TOKEN, v);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|_| VaultError::Setup("cannot build a request".to_owned()))?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| VaultError::Unreachable(error_chain(&e)))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| VaultError::Unreachable(format!("reading the answer: {e}")))?
                .to_bytes();
            Ok::<_, VaultError>((status, Zeroizing::new(Vec::from(bytes))))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| VaultError::Timeout(self.timeout))?
    }
}

/// The AppRole login body, `{"role_id":…,"secret_id":…}`, written into a zeroizing buffer
/// with room for the longest escaping of both, so that it is never reallocated (which would
/// leave a copy behind), and sent from that buffer, wiped once the request is done with it.
fn login_body(role_id: &str, secret_id: &str) -> Result<Bytes, VaultError> {
    #[derive(serde::Serialize)]
    struct Login<'a> {
        role_id: &'a str,
        secret_id: &'a str,
    }
    // A JSON escape is at most six bytes (`\u001f`) for one.
    let room = 6 * (role_id.len() + secret_id.len()) + 32;
    let mut body = Zeroizing::new(Vec::with_capacity(room));
    serde_json::to_writer(&mut *body, &Login { role_id, secret_id })
        .map_err(|_| VaultError::Login("cannot write the login request".into()))?;
    Ok(Bytes::from_owner(body))
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

#[cfg(test)]
mod tests;
