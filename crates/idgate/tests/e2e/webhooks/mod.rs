//! Provider webhooks end to end: the real gateway receives Didit-signed events on its
//! webhook endpoint, keeps them in a redb outbox and delivers them to a subscriber: an
//! in-test HTTPS server that requires the gateway's SVID as client certificate, checks
//! `idgate-signature` and drops repeats of an `idgate-event-id`, as a subscriber should.

mod cli;
mod crash;
mod delivery;
mod example_profiles;
mod lifetimes;
mod mock_provider;
mod refusals;
mod reload;

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use idgate_mock_provider::didit_webhook;
use idgate_webhooks::delivery::signature;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use crate::support::*;

pub(crate) const DIDIT_SECRET: &str = "didit-webhook-secret-for-the-tests";
pub(crate) const SUBSCRIBER_SECRET: &str = "subscriber-hmac-secret-for-the-tests";
pub(crate) const WEBHOOK_PATH: &str = "/webhooks/didit";

/// Secret files, the outbox key and the state file of a webhook gateway, in `dir`.
pub(crate) fn write_secrets(dir: &Path) {
    write_private(&dir.join("didit.secret"), DIDIT_SECRET.as_bytes());
    write_private(&dir.join("subscriber.secret"), SUBSCRIBER_SECRET.as_bytes());
    write_private(&dir.join("outbox.key"), "5a".repeat(32).as_bytes());
}

/// A gateway with one Didit webhook delivering to `subscriber_url`, its outbox in
/// `dir/state.redb`; `webhook` adds or replaces keys of the `[[webhooks]]` table.
pub(crate) fn webhook_config(
    pki: &Pki,
    dir: &Path,
    subscriber_url: &str,
    webhook: toml::Table,
) -> GatewayConfig {
    write_secrets(dir);
    let mut config = base_config(pki);
    // Providers present no client certificate; routes still require theirs.
    config.listener.client_auth = ClientAuth::Optional;
    let file = |name: &str| format!("file:{}", dir.join(name).display());
    let mut w = toml::Table::new();
    w.insert("name".into(), "didit".into());
    w.insert("path".into(), WEBHOOK_PATH.into());
    w.insert("scheme".into(), "didit".into());
    w.insert("secret".into(), file("didit.secret").into());
    w.insert("outbox_key".into(), file("outbox.key").into());
    w.insert("delivery_timeout".into(), "2s".into());
    let mut retry = toml::Table::new();
    retry.insert("base".into(), "50ms".into());
    retry.insert("max".into(), "500ms".into());
    retry.insert("max_age".into(), "10m".into());
    w.insert("retry".into(), retry.into());
    let mut sub = toml::Table::new();
    sub.insert("name".into(), "kyc".into());
    sub.insert("url".into(), subscriber_url.into());
    sub.insert("secret".into(), file("subscriber.secret").into());
    sub.insert("ca".into(), pki.files.bundle.display().to_string().into());
    w.insert("subscribers".into(), toml::Value::Array(vec![sub.into()]));
    w.extend(webhook);
    let mut state = toml::Table::new();
    state.insert("backend".into(), "redb".into());
    state.insert(
        "path".into(),
        dir.join("state.redb").display().to_string().into(),
    );
    config
        .section("state", state)
        .section("webhooks", toml::Value::Array(vec![w.into()]))
}

/// A Didit `status.updated` envelope for `session`, numbered `seq` in its metadata.
pub(crate) fn envelope(event_id: &str, session: &str, seq: u64, timestamp: u64) -> Value {
    json!({
        "event_id": event_id,
        "webhook_type": "status.updated",
        "timestamp": timestamp,
        "created_at": timestamp,
        "session_id": session,
        "status": "In Progress",
        "workflow_id": "wf-1",
        "metadata": {"seq": seq},
    })
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Posts an event signed as Didit signs it with `secret`: the answer's status and body.
pub(crate) async fn post_signed(
    client: &Client,
    secret: &str,
    envelope: &Value,
) -> Result<Reply, String> {
    let signed = didit_webhook::sign(secret, envelope);
    let mut headers: Vec<(&str, &str)> = signed.headers().to_vec();
    headers.push(("content-type", "application/json"));
    headers.push(("user-agent", "DiditWebhook/2.0 +https://didit.me"));
    let body = String::from_utf8(signed.body.clone()).unwrap();
    client.send("POST", WEBHOOK_PATH, &headers, &body).await
}

/// A client of the gateway without a client certificate, as a provider is.
pub(crate) fn provider_client(pki: &Pki, port: u16) -> Client {
    Client::new(pki, None, port, false)
}

/// One request the subscriber got.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) event_id: String,
    pub(crate) body: Value,
    pub(crate) signature_ok: bool,
    /// The SPIFFE ID of the client certificate.
    pub(crate) peer: Option<String>,
}

#[derive(Default)]
struct SubState {
    got: Vec<Delivery>,
    /// Deliveries with an event id not seen before: what a deduplicating subscriber acts on.
    processed: Vec<Delivery>,
    seen: HashSet<String>,
    /// Statuses to answer with next (200 when none is queued).
    statuses: VecDeque<u16>,
    /// Connection tasks, aborted when the subscriber goes down.
    conns: Vec<tokio::task::AbortHandle>,
}

/// The subscriber; see the module documentation. [`Subscriber::down`] and
/// [`Subscriber::up`] take it off the network and back on the same port.
pub(crate) struct Subscriber {
    pub(crate) port: u16,
    state: Arc<Mutex<SubState>>,
    acceptor: tokio_rustls::TlsAcceptor,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.down();
    }
}

impl Subscriber {
    pub(crate) async fn start(pki: &Pki) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&pki.files.gateway_cert)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(&pki.files.gateway_key).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&pki.files.bundle).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = idgate_tls::crypto_provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let mut sub = Self {
            port: 0,
            state: Arc::default(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            task: None,
        };
        sub.up().await;
        sub
    }

    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}/events", self.port)
    }

    /// Listening (again, on the same port once it had one).
    pub(crate) async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.port = listener.local_addr().unwrap().port();
        let (state, acceptor) = (self.state.clone(), self.acceptor.clone());
        self.task = Some(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (st, acceptor) = (state.clone(), acceptor.clone());
                let conn = tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| idgate_tls::leaf_spiffe_id(c).ok())
                        .map(|id| id.to_string());
                    let svc = hyper::service::service_fn(move |req| {
                        let (st, peer) = (st.clone(), peer.clone());
                        async move { Ok::<_, hyper::Error>(answer(&st, peer, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
                state.lock().unwrap().conns.push(conn.abort_handle());
            }
        }));
    }

    /// Off the network: the port refuses connections, open ones are cut.
    pub(crate) fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for c in std::mem::take(&mut self.state.lock().unwrap().conns) {
            c.abort();
        }
    }

    /// Statuses to answer the next requests with.
    pub(crate) fn answer(&self, statuses: &[u16]) {
        self.state.lock().unwrap().statuses.extend(statuses);
    }

    pub(crate) fn got(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().got.clone()
    }

    pub(crate) fn processed(&self) -> Vec<Delivery> {
        self.state.lock().unwrap().processed.clone()
    }
}

/// `idgate-signature: t=T,v1=HEX1,v2=HEX2` checked as docs/webhooks.md tells subscribers
/// to, apart from the gateway's code: HEX1 is HMAC-SHA256(secret, "T." + body), HEX2
/// HMAC-SHA256(secret, "T." + event id + "." + body), T within 300 s. Both must hold.
fn check_signature(header: &str, event_id: &str, body: &[u8]) -> bool {
    let mut t = None;
    let (mut v1, mut v2) = (None, None);
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v.to_owned()),
            Some(("v2", v)) => v2 = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(v1), Some(v2)) = (t, v1, v2) else {
        return false;
    };
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let mut signed_v2 = format!("{t}.{event_id}.").into_bytes();
    signed_v2.extend_from_slice(body);
    now_secs().abs_diff(t) <= 300
        && hex_hmac(SUBSCRIBER_SECRET, &signed) == v1
        && hex_hmac(SUBSCRIBER_SECRET, &signed_v2) == v2
}

async fn answer(
    state: &Mutex<SubState>,
    peer: Option<String>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (sig, event_id) = (
        header(signature::SIGNATURE_HEADER),
        header(signature::EVENT_ID_HEADER),
    );
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let signature_ok = check_signature(&sig, &event_id, &body);
    let mut st = state.lock().unwrap();
    let status = st.statuses.pop_front().unwrap_or(200);
    let d = Delivery {
        event_id: event_id.clone(),
        body: serde_json::from_slice(&body).unwrap_or_default(),
        signature_ok,
        peer,
    };
    st.got.push(d.clone());
    if status == 200 && st.seen.insert(event_id) {
        st.processed.push(d);
    }
    http::Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .unwrap()
}
