//! Test support: a dev PKI, an HTTPS/HTTP client speaking HTTP/1.1 or 2, a webhook receiver,
//! and an HMAC computed by Python (an implementation independent of the crate's).

#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use idgate_mock_provider::{AuthMode, MockConfig, MockHandle, WebhookTarget};
use idgate_tls::devpki::{self, DevPkiFiles, DevPkiRequest};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// Retries a condition until it holds or 10 s pass, instead of sleeping.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }};
}

pub const API_KEY: &str = "didit-test-key-0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_mock_provider_test";

/// A development PKI (the same generator as `idgate dev-pki`) in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub files: DevPkiFiles,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = devpki::generate(
            dir.path(),
            &DevPkiRequest {
                trust_domain: "example.org".parse().expect("trust domain"),
                workloads: vec![],
                validity: Duration::from_secs(3600),
            },
        )
        .expect("dev pki");
        Self { dir, files }
    }

    pub fn cert(&self) -> PathBuf {
        self.files.gateway_cert.clone()
    }

    pub fn key(&self) -> PathBuf {
        self.files.gateway_key.clone()
    }

    pub fn bundle(&self) -> PathBuf {
        self.files.bundle.clone()
    }
}

/// A mock in `mode` on loopback port 0: the system picks the port when the mock binds, and
/// [`MockHandle::addr`] tells which. Plain HTTP unless `with_tls` is added.
pub fn loopback(mode: AuthMode) -> MockConfig {
    MockConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), mode)
}

/// Starts the mock `config` describes, failing the test if it cannot.
pub async fn start_mock(config: MockConfig) -> MockHandle {
    idgate_mock_provider::start(config)
        .await
        .expect("start mock")
}

/// Webhooks to `url` signed with [`WEBHOOK_SECRET`], trusting `ca` for the receiver,
/// retried after 60 and 240 ms rather than Didit's minutes.
pub fn webhook_to(url: String, ca: Option<PathBuf>) -> WebhookTarget {
    let target = WebhookTarget::new(url, WEBHOOK_SECRET.into()).with_retry_scale(0.001);
    match ca {
        Some(ca) => target.with_ca(ca),
        None => target,
    }
}

/// A lowercase, hyphenated version 4 UUID.
pub fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && [8, 13, 18, 23].iter().all(|i| b[*i] == b'-')
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
        && s.chars()
            .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// A Didit-mode mock over HTTPS on loopback.
pub async fn didit_mock(pki: &Pki, webhook: Option<WebhookTarget>) -> MockHandle {
    let mut config =
        loopback(AuthMode::DiditApiKey(API_KEY.into())).with_tls(pki.cert(), pki.key());
    config.webhook = webhook;
    start_mock(config).await
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client for the mock: HTTPS (trusting the PKI's bundle) or plain HTTP, HTTP/1.1 or 2.
#[derive(Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub h2: bool,
}

pub fn tls_config(bundle: &Path, h2: bool) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(bundle).expect("bundle") {
        roots.add(c.expect("pem")).expect("root");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = if h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(cfg)
}

impl Client {
    pub fn https(pki: &Pki, addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: Some(tls_config(&pki.bundle(), false)),
            h2: false,
        }
    }

    pub fn https_h2(pki: &Pki, addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: Some(tls_config(&pki.bundle(), true)),
            h2: true,
        }
    }

    pub fn http(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: None,
            h2: false,
        }
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        let mut b = http::Request::builder().method(method);
        b = if self.h2 {
            b.uri(format!("https://localhost:{}{path}", self.addr.port()))
        } else {
            b.uri(path)
                .header("host", format!("localhost:{}", self.addr.port()))
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        let resp = match &self.tls {
            Some(cfg) => {
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(ServerName::try_from("localhost").unwrap(), tcp)
                    .await
                    .expect("TLS handshake");
                send_on(TokioIo::new(tls), self.h2, req).await
            }
            None => send_on(TokioIo::new(tcp), false, req).await,
        };
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            version,
            headers,
            body,
        }
    }

    /// A Didit request carrying the test API key.
    pub async fn didit(&self, method: &str, path: &str, body: &serde_json::Value) -> Reply {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        self.send(
            method,
            path,
            &[("x-api-key", API_KEY), ("content-type", "application/json")],
            &body,
        )
        .await
    }
}

async fn send_on<IO>(
    io: TokioIo<IO>,
    h2: bool,
    req: http::Request<Full<Bytes>>,
) -> http::Response<Incoming>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        s.send_request(req).await.expect("request")
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        s.send_request(req).await.expect("request")
    }
}

/// One webhook as the receiver got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub at: std::time::Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("webhook without {name}"))
            .to_owned()
    }
}

/// A webhook receiver on loopback: answers each POST with the next status from `script`
/// (then 200), recording every request.
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    /// HTTPS with the PKI's gateway certificate.
    pub async fn https(pki: &Pki, script: Vec<u16>) -> Self {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pki.cert())
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.key()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::start(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))), script).await
    }

    pub async fn http(script: Vec<u16>) -> Self {
        Self::start(None, script).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>, script: Vec<u16>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.into_iter()));
        let got2 = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (got, script, tls) = (got2.clone(), script.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let (got, script) = (got.clone(), script.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            got.lock().unwrap().push(Received {
                                headers: parts.headers,
                                body,
                                at: std::time::Instant::now(),
                            });
                            let status = script.lock().unwrap().next().unwrap_or(200);
                            let resp = http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap();
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = acc.accept(tcp).await {
                                let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        });
        Self { addr, got, task }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// Lowercase hex HMAC-SHA256 computed by CPython's `hmac` module.
pub fn py_hmac(secret: &str, message: &[u8]) -> String {
    python(
        "import hmac, hashlib, sys\n\
         secret = sys.argv[1].encode()\n\
         print(hmac.new(secret, sys.stdin.buffer.read(), hashlib.sha256).hexdigest())",
        &[secret],
        message,
    )
}

/// Runs a Python program with `args`, feeding `stdin`; returns stdout, trimmed.
pub fn python(program: &str, args: &[&str], stdin: &[u8]) -> String {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (needed for independent HMAC checks)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
