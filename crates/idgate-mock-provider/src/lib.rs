//! A local identity-verification provider for idgate's demo and end-to-end tests.
//!
//! It speaks the Didit v3 API (and v2, the same API with single-object decisions) from
//! memory: sessions with `vendor_data` idempotency, decisions carrying realistic (specimen)
//! personal data, listing, status updates, deletion and workflows. It checks credentials
//! exactly as the real providers document them — Didit's `x-api-key`, or Sumsub's and
//! Veriff's HMAC request signatures when started in that mode (see [`auth`]) — and can send
//! `status.updated` webhooks as Didit does, signed with all three of its schemes (see
//! [`didit_webhook`]), with its retry schedule scaled down for tests. It serves HTTPS
//! (HTTP/1.1 and HTTP/2) with a certificate such as the one `idgate dev-pki` writes, or
//! plain HTTP on loopback.
//!
//! Sessions move as Didit's do: the verifying user (simulated by [`MockHandle::advance`]
//! or `POST /mock/session/{id}/status/`, which are not Didit's API) takes a session from
//! Not Started through In Progress to a result, and the customer's `update-status` only
//! decides a finished one. A decision's check blocks are `null` until the checks ran.
//!
//! ```no_run
//! # async fn demo() -> Result<(), idgate_mock_provider::MockError> {
//! use idgate_mock_provider::{AuthMode, MockConfig, start};
//! let config = MockConfig::new(
//!     "127.0.0.1:0".parse().unwrap(),
//!     AuthMode::DiditApiKey("test-key".into()),
//! );
//! let mock = start(config).await?;
//! println!("provider at {}", mock.url());
//! // ... point the gateway's upstream at mock.url(), run requests ...
//! assert!(mock.state().total_requests() > 0);
//! mock.shutdown().await;
//! # Ok(()) }
//! ```

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod api;
pub mod auth;
mod cli;
mod data;
pub mod didit_webhook;
mod flow;
mod list;
mod server;
mod status;
mod store;
mod util;
mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::SecretString;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::AuthMode;
pub use cli::{LogFormat, MockArgs, Mode, config_from_args, run_from_args};
pub use flow::FlowError;
pub use store::{DEFAULT_WORKFLOW_ID, DeliveryOutcome, MockState, SeenRequest, WebhookDelivery};
pub use webhook::{
    MAX_ATTEMPTS as WEBHOOK_MAX_ATTEMPTS, RETRY_DELAYS as WEBHOOK_RETRY_DELAYS,
    USER_AGENT_VALUE as WEBHOOK_USER_AGENT,
};

/// The one cryptographic provider of the mock: the gateway's.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    idgate_tls::crypto_provider()
}

/// The server's certificate chain and private key, PEM files (such as `gateway.crt` and
/// `gateway.key` from `idgate dev-pki`, valid for localhost and 127.0.0.1).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_chain: PathBuf,
    pub key: PathBuf,
}

/// Where status webhooks go and how they are signed.
#[derive(Debug, Clone)]
pub struct WebhookTarget {
    /// `https://...`, or `http://` to a loopback host.
    pub url: String,
    /// The HMAC secret for `X-Signature`, `X-Signature-V2` and `X-Signature-Simple`.
    pub secret: SecretString,
    /// Extra roots (PEM) to trust for the receiver, besides the platform's.
    pub ca: Option<PathBuf>,
    /// Multiplies Didit's retry delays ([`WEBHOOK_RETRY_DELAYS`], about 1 and 4 minutes):
    /// 1 is the provider's schedule, 0.001 turns it into 60 and 240 ms for tests. From 0
    /// to 1.
    pub retry_scale: f64,
}

impl WebhookTarget {
    /// Webhooks to `url` signed with `secret`, the platform's roots, Didit's schedule.
    pub fn new(url: impl Into<String>, secret: SecretString) -> Self {
        Self {
            url: url.into(),
            secret,
            ca: None,
            retry_scale: 1.0,
        }
    }

    pub fn with_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.ca = Some(ca.into());
        self
    }

    pub fn with_retry_scale(mut self, scale: f64) -> Self {
        self.retry_scale = scale;
        self
    }
}

/// Everything the mock needs to run.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Port 0 picks a free port; [`MockHandle::addr`] tells which.
    pub listen: SocketAddr,
    /// HTTPS when set; plain HTTP (loopback `listen` only) when not.
    pub tls: Option<TlsFiles>,
    pub auth: AuthMode,
    pub webhook: Option<WebhookTarget>,
    /// Prefix of a session's `url`; the session token is appended.
    pub session_url_base: String,
    /// The `application_id` webhooks carry; a random UUID when not set.
    pub application_id: Option<String>,
    /// The `code` of an abandoned session's Veriff decision, which Veriff's documents do not
    /// settle: `null` when not set.
    pub veriff_abandoned_code: Option<u16>,
}

impl MockConfig {
    /// Plain HTTP on `listen`, no webhooks, the given credential check.
    pub fn new(listen: SocketAddr, auth: AuthMode) -> Self {
        Self {
            listen,
            tls: None,
            auth,
            webhook: None,
            session_url_base: "https://verify.didit.me/session/".to_owned(),
            application_id: None,
            veriff_abandoned_code: None,
        }
    }

    pub fn with_tls(mut self, cert_chain: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some(TlsFiles {
            cert_chain: cert_chain.into(),
            key: key.into(),
        });
        self
    }

    pub fn with_webhook(mut self, target: WebhookTarget) -> Self {
        self.webhook = Some(target);
        self
    }

    pub fn with_veriff_abandoned_code(mut self, code: u16) -> Self {
        self.veriff_abandoned_code = Some(code);
        self
    }
}

/// Why the mock could not start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    #[error(
        "refusing plain HTTP on {0}: without --tls-cert/--tls-key the mock listens on loopback only"
    )]
    PlainHttpNotLoopback(SocketAddr),
    #[error("{path}: {reason}")]
    TlsFile { path: PathBuf, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("webhook URL {0}")]
    WebhookUrl(String),
    #[error("webhook CA {0}")]
    WebhookCa(#[from] idgate_tls::roots::CaFileError),
    /// A command-line problem (missing secret, unreadable file, ...).
    #[error("{0}")]
    Usage(String),
}

/// A running mock provider. Dropping it stops the listener too.
pub struct MockHandle {
    addr: SocketAddr,
    tls: bool,
    mode: &'static str,
    app: Arc<api::App>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockHandle")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl MockHandle {
    /// The bound address (the real port when `listen` had port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT` (or `http://`), the base URL for an upstream.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// `didit`, `sumsub` or `veriff`.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// What the mock has seen, and failure injection for tests.
    pub fn state(&self) -> &Arc<MockState> {
        &self.app.state
    }

    /// Moves a session as the verifying user on Didit's hosted page would (or Didit's
    /// timers and reviewers): `"In Progress"` from Not Started, then `"Approved"`,
    /// `"Declined"`, `"In Review"` or `"Abandoned"`, and so on along Didit's transitions.
    /// Sends the status webhook, as every change does. Not part of Didit's API; the same
    /// over HTTP is `POST /mock/session/{id}/status/`.
    pub fn advance(&self, session_id: &str, status: &str) -> Result<(), FlowError> {
        flow::advance(&self.app, session_id, status).map(|_| ())
    }

    /// Stops accepting connections and waits (up to 5 s) for in-flight requests.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Runs until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds the listener and starts serving in the background. Must be called within a
/// Tokio runtime.
pub async fn start(config: MockConfig) -> Result<MockHandle, MockError> {
    if config.tls.is_none() && !config.listen.ip().is_loopback() {
        return Err(MockError::PlainHttpNotLoopback(config.listen));
    }
    let acceptor = config.tls.as_ref().map(server::tls_acceptor).transpose()?;
    let state = Arc::new(MockState::new());
    let application_id = config.application_id.clone().unwrap_or_else(util::uuid_v4);
    let webhook = config
        .webhook
        .as_ref()
        .map(|t| webhook::WebhookSender::new(t, application_id, state.clone()).map(Arc::new))
        .transpose()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| MockError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| MockError::Bind {
        addr: config.listen,
        source,
    })?;
    let tls = acceptor.is_some();
    let app = Arc::new(api::App {
        state: state.clone(),
        auth: auth::Authenticator::new(&config.auth),
        webhook,
        scheme: if tls { "https" } else { "http" },
        fallback_host: addr.to_string(),
        session_url_base: config.session_url_base.clone(),
        veriff_abandoned_code: config.veriff_abandoned_code,
    });
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(server::accept_loop(
        listener,
        acceptor,
        app.clone(),
        stop_rx,
    ));
    tracing::info!(
        %addr,
        mode = config.auth.name(),
        tls,
        webhooks = config.webhook.is_some(),
        "mock provider listening"
    );
    Ok(MockHandle {
        addr,
        tls,
        mode: config.auth.name(),
        app,
        stop,
        task: Some(task),
    })
}

/// Serves until `shutdown` completes.
pub async fn serve(
    config: MockConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), MockError> {
    start(config).await?.run_until(shutdown).await;
    Ok(())
}
