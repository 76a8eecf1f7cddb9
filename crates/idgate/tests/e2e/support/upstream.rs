//! [`TestUpstream`]: an HTTPS (or plain HTTP) upstream on loopback that records what it
//! receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::Pki;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The trailer fields after the body, if any came.
    pub trailers: Option<http::HeaderMap>,
    /// The leaf certificate the client presented (mutual TLS only).
    pub client_cert: Option<CertificateDer<'static>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamMode {
    /// Answer 200 with a JSON body naming the path.
    Echo,
    /// Wait this long before answering.
    Delay(Duration),
    /// Answer the first this many requests `401 Unauthorized`, then as `Echo`.
    UnauthorizedFirst(usize),
}

/// An HTTPS (or plain HTTP) upstream on loopback that records every request.
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    /// HTTPS with the PKI's gateway certificate (valid for 127.0.0.1/localhost); the gateway
    /// trusts it through `ca = bundle.pem`.
    pub async fn https(pki: &Pki, mode: UpstreamMode) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&pki.files.gateway_cert)
                .expect("cert")
                .collect::<Result<_, _>>()
                .expect("cert pem");
        let key = PrivateKeyDer::from_pem_file(&pki.files.gateway_key).expect("key");
        let mut cfg = rustls::ServerConfig::builder_with_provider(idgate_tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))), mode).await
    }

    /// HTTPS presenting `chain` and `key` that requires a client certificate issued under
    /// `client_roots`, and records the one presented.
    pub async fn mutual_tls(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_roots: rustls::RootCertStore,
        mode: UpstreamMode,
    ) -> Self {
        let provider = idgate_tls::crypto_provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(client_roots),
            provider.clone(),
        )
        .build()
        .expect("client verifier");
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .expect("server cert");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))), mode).await
    }

    pub async fn http(mode: UpstreamMode) -> Self {
        Self::start(None, mode).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>, mode: UpstreamMode) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let (tls_stream, plain) = match tls {
                        Some(acc) => match acc.accept(tcp).await {
                            Ok(s) => (Some(s), None),
                            Err(_) => return,
                        },
                        None => (None, Some(tcp)),
                    };
                    let client_cert = tls_stream.as_ref().and_then(|s| {
                        s.get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.clone().into_owned())
                    });
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let seen = seen.clone();
                        let client_cert = client_cert.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let collected = body.collect().await.ok();
                            let trailers = collected.as_ref().and_then(|c| c.trailers().cloned());
                            let body = collected.map(|b| b.to_bytes()).unwrap_or_default();
                            let pq = parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            let count = {
                                let mut all = seen.lock().unwrap();
                                all.push(Seen {
                                    method: parts.method.to_string(),
                                    path_and_query: pq.clone(),
                                    version: parts.version,
                                    headers: parts.headers.clone(),
                                    body,
                                    trailers,
                                    client_cert,
                                });
                                all.len()
                            };
                            if let UpstreamMode::UnauthorizedFirst(n) = mode
                                && count <= n
                            {
                                let resp = http::Response::builder()
                                    .status(401)
                                    .header("www-authenticate", "Bearer error=\"invalid_token\"")
                                    .body(Full::new(Bytes::from_static(b"{}")))
                                    .unwrap();
                                return Ok::<_, std::convert::Infallible>(resp);
                            }
                            if let UpstreamMode::Delay(d) = mode {
                                tokio::time::sleep(d).await;
                            }
                            let body =
                                serde_json::json!({"upstream": "test", "path": pq}).to_string();
                            let resp = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/json")
                                .header("x-upstream", "test")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match (tls_stream, plain) {
                        (Some(s), _) => {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                        (None, Some(tcp)) => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        (None, None) => {}
                    }
                });
            }
        });
        Self { addr, seen, task }
    }

    pub fn url(&self, https: bool) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if https { "https" } else { "http" },
            self.addr.port()
        )
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.requests()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}
