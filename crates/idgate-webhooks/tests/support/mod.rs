//! What the delivery tests share: a PKI made with rcgen (a CA, a subscriber's server
//! certificate, the gateway's client certificate), and a subscriber: an HTTPS server over
//! real sockets that requires the client certificate, checks `idgate-signature` and
//! records what it got.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use idgate_webhooks::delivery::signature;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::sign::CertifiedKey;

pub const SUBSCRIBER_SECRET: &str = "subscriber-secret-of-some-length!";

/// A CA, the subscriber's server certificate (localhost) and the gateway's client
/// certificate, with the subscriber's HMAC secret, in a directory of their own.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut server = CertificateParams::default();
        server.subject_alt_names = vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate().unwrap();
        let server_cert = server.signed_by(&server_key, &ca).unwrap();
        let mut client = CertificateParams::default();
        client.subject_alt_names = vec![SanType::URI(
            "spiffe://example.org/gateway".try_into().unwrap(),
        )];
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client_cert = client.signed_by(&client_key, &ca).unwrap();
        let w = |name: &str, data: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, data).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        };
        w("ca.pem", &ca.pem());
        w("server.pem", &server_cert.pem());
        w("server.key", &server_key.serialize_pem());
        w("client.pem", &client_cert.pem());
        w("client.key", &client_key.serialize_pem());
        w("subscriber.secret", SUBSCRIBER_SECRET);
        Self { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The gateway's client certificate, as its SVID.
    pub fn client_key(&self) -> Arc<CertifiedKey> {
        let read = |n: &str| std::fs::read(self.path(n)).unwrap();
        Arc::new(
            idgate_tls::material::parse_svid(
                &self.path("client.pem"),
                &read("client.pem"),
                &self.path("client.key"),
                &read("client.key"),
                &idgate_tls::crypto_provider(),
            )
            .unwrap(),
        )
    }

    /// The subscriber's TLS: its server certificate, a client certificate of the CA required.
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let chain = vec![CertificateDer::from_pem_file(self.path("server.pem")).unwrap()];
        let key = PrivateKeyDer::from_pem_file(self.path("server.key")).unwrap();
        let provider = idgate_tls::crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.path("ca.pem")).unwrap())
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)
                .unwrap(),
        )
    }
}

/// One request the subscriber got.
#[derive(Debug, Clone)]
pub struct Received {
    pub event_id: String,
    pub signature_ok: bool,
    pub body: serde_json::Value,
    /// The body's bytes, as they came.
    pub raw: Vec<u8>,
    /// The status it answered.
    pub status: u16,
}

/// A subscriber on a loopback port: answers each request with the next status queued
/// (200 when none is), with `Retry-After` on every other answer when one is set, and
/// records what it got.
pub struct SubscriberServer {
    pub port: u16,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub statuses: Arc<Mutex<VecDeque<u16>>>,
    pub retry_after: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SubscriberServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SubscriberServer {
    pub async fn start(pki: &Pki) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
        let received = Arc::new(Mutex::new(Vec::new()));
        let statuses = Arc::new(Mutex::new(VecDeque::new()));
        let retry_after = Arc::new(Mutex::new(None::<String>));
        let (rec, st, ra) = (received.clone(), statuses.clone(), retry_after.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, rec, st, ra) =
                    (acceptor.clone(), rec.clone(), st.clone(), ra.clone());
                tokio::spawn(async move {
                    // A handshake without the client certificate fails here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (rec, st, ra) = (rec.clone(), st.clone(), ra.clone());
                        async move {
                            let sig = req
                                .headers()
                                .get(signature::SIGNATURE_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let event_id = req
                                .headers()
                                .get(signature::EVENT_ID_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let secret = SUBSCRIBER_SECRET.as_bytes();
                            let (now, tolerance) = (SystemTime::now(), Duration::from_secs(300));
                            let signature_ok =
                                signature::verify(secret, &sig, &body, now, tolerance)
                                    && signature::verify_v2(
                                        secret, &sig, &event_id, &body, now, tolerance,
                                    );
                            let status = st.lock().unwrap().pop_front().unwrap_or(200);
                            rec.lock().unwrap().push(Received {
                                event_id,
                                signature_ok,
                                body: serde_json::from_slice(&body).unwrap_or_default(),
                                raw: body.to_vec(),
                                status,
                            });
                            let mut answer = http::Response::builder().status(status);
                            if let Some(after) = ra.lock().unwrap().clone()
                                && !(200..300).contains(&status)
                            {
                                answer = answer.header(http::header::RETRY_AFTER, after);
                            }
                            Ok::<_, hyper::Error>(answer.body(Full::new(Bytes::new())).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            port,
            received,
            statuses,
            retry_after,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}/events", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Queues statuses for the next requests.
    pub fn answer(&self, statuses: &[u16]) {
        self.statuses.lock().unwrap().extend(statuses);
    }
}

/// Waits until `cond` holds, for at most `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
