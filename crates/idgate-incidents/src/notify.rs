//! The notification webhook: each opened, regraded and closed incident is POSTed as JSON to
//! `[incidents.notify] url`, signed like the gateway's other webhooks —
//! `idgate-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` — and retried
//! with backoff. Detection never waits for it: notifications go through a bounded queue
//! that a full one drops from (counted and logged). At shutdown the queue is sent on for a
//! short while ([`Notifier::drain`]); what is still unsent then is counted and logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http_body_util::Full;
use idgate_config::IncidentNotifyConfig;
use idgate_tls::client::{HttpsClient, OutboundClient};
use secrecy::{ExposeSecret, SecretString};

use crate::detect::ChangeKind;
use crate::incident::Incident;
use crate::metrics::IncidentMetrics;
use prometheus_client::metrics::counter::Counter;

pub static SIGNATURE: HeaderName = HeaderName::from_static("idgate-signature");

/// Notifications waiting to be sent; more are dropped.
const QUEUE: usize = 256;

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("incidents.notify.secret: {0}")]
    Secret(#[from] idgate_secrets::SecretError),
    #[error("incidents.notify.ca: {0}")]
    Ca(#[from] idgate_tls::roots::CaFileError),
    #[error("incidents.notify: {0}")]
    Client(#[from] idgate_tls::client::ClientError),
}

/// The header value for `body` sent at `t` (Unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!("t={t},v1={}", idgate_codec::hex::encode(tag.as_ref()))
}

/// The body of one notification.
pub fn body(kind: ChangeKind, incident: &Incident) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event": kind.as_str(),
        "incident": incident,
    }))
    .unwrap_or_default()
}

/// The sending side; see the module documentation.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    dropped: Counter,
    unsent: Counter,
    /// Queued and not yet sent or given up.
    pending: Arc<AtomicU64>,
    /// Told once the gateway stops: the queue takes no more, the sender ends once it is
    /// empty.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    sender: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Notifier {
    /// Reads the secret and starts the sender task (on the current tokio runtime).
    /// Blocking: a `vault:` or `pkcs11:` secret waits on Vault or the token, so call it from
    /// a blocking thread of the runtime (`spawn_blocking`), as the gateway does.
    pub fn start(
        cfg: &IncidentNotifyConfig,
        metrics: &IncidentMetrics,
    ) -> Result<Self, NotifyError> {
        let secret = cfg.secret.resolve()?;
        let roots = idgate_tls::roots::roots_with_ca(cfg.ca.as_deref())?;
        let client: HttpsClient<Full<Bytes>> = OutboundClient::new(roots, cfg.timeout)
            .http1_only()
            .pool_max_idle_per_host(1)
            .build()?;
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let (closing, closed) = tokio::sync::watch::channel(false);
        let pending = Arc::new(AtomicU64::new(0));
        let sender = tokio::spawn(send_loop(
            rx,
            closed,
            client,
            cfg.clone(),
            secret,
            metrics.notify_failed.clone(),
            pending.clone(),
        ));
        Ok(Self {
            tx,
            dropped: metrics.notify_dropped.clone(),
            unsent: metrics.notify_unsent.clone(),
            pending,
            closing: Arc::new(closing),
            sender: Arc::new(Mutex::new(Some(sender))),
        })
    }

    /// Queues a notification; never waits.
    pub fn send(&self, kind: ChangeKind, incident: &Incident) {
        use tokio::sync::mpsc::error::TrySendError;
        // Counted before it is queued: the sender may be done with it at once.
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(body(kind, incident)) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            self.dropped.inc();
            let why = match e {
                TrySendError::Full(_) => "the queue is full",
                TrySendError::Closed(_) => "the gateway is stopping",
            };
            tracing::warn!(incident = %incident.id, event = kind.as_str(), "incident notification dropped: {why}");
        }
    }

    /// At shutdown: the queue takes no more, and what it holds is sent for at most
    /// `within`. Returns how many notifications were left unsent (counted and logged).
    pub async fn drain(&self, within: Duration) -> u64 {
        let _ = self.closing.send(true);
        let sender = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut sender) = sender
            && tokio::time::timeout(within, &mut sender).await.is_err()
        {
            sender.abort();
            // Ended (cancelled at its next await) before what it left is counted.
            let _ = sender.await;
        }
        let left = self.pending.swap(0, Ordering::SeqCst);
        if left > 0 {
            self.unsent.inc_by(left);
            tracing::error!(
                notifications = left,
                "incident notifications not sent before the gateway stopped"
            );
        }
        left
    }
}

async fn send_loop(
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut closing: tokio::sync::watch::Receiver<bool>,
    client: HttpsClient<Full<Bytes>>,
    cfg: IncidentNotifyConfig,
    secret: SecretString,
    failed: Counter,
    pending: Arc<AtomicU64>,
) {
    // The receiver is named in logs by its host alone: never the user info or query a URL
    // can carry.
    let host = cfg.url.host().unwrap_or("-").to_owned();
    let mut open = true;
    loop {
        let next = tokio::select! {
            next = rx.recv() => next,
            // Stopping: nothing more comes in; what is queued still goes out (`recv` ends
            // once it is empty).
            _ = closing.wait_for(|c| *c), if open => {
                open = false;
                rx.close();
                continue;
            }
        };
        let Some(body) = next else { return };
        deliver(&client, &cfg, &secret, &failed, &host, Bytes::from(body)).await;
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One notification, with its retries.
async fn deliver(
    client: &HttpsClient<Full<Bytes>>,
    cfg: &IncidentNotifyConfig,
    secret: &SecretString,
    failed: &Counter,
    host: &str,
    body: Bytes,
) {
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=cfg.attempts {
        match post(client, cfg, secret.expose_secret().as_bytes(), body.clone()).await {
            Ok(()) => break,
            Err(reason) if attempt == cfg.attempts => {
                failed.inc();
                tracing::error!(host = %host, attempts = attempt, reason, "incident notification given up");
            }
            Err(reason) => {
                tracing::warn!(host = %host, attempt, reason, "incident notification failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn post(
    client: &HttpsClient<Full<Bytes>>,
    cfg: &IncidentNotifyConfig,
    secret: &[u8],
    body: Bytes,
) -> Result<(), String> {
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let sig = HeaderValue::try_from(signature(secret, t, &body)).map_err(|e| e.to_string())?;
    let req = http::Request::post(cfg.url.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header(&SIGNATURE, sig)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(cfg.timeout, client.request(req)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
        Ok(Ok(resp)) => Err(format!("status {}", resp.status())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_t_dot_body_in_hex() {
        // HMAC-SHA256("key", "1700000000.{}"), computed independently with openssl.
        assert_eq!(
            signature(b"key", 1_700_000_000, b"{}"),
            "t=1700000000,v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
