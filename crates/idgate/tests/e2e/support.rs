//! Test support: a real PKI on disk, the real `idgate` binary on loopback ports, an
//! HTTPS upstream that records what it receives, and an mTLS client speaking HTTP/1.1 or 2.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use idgate_tls::SpiffeId;
use idgate_tls::devpki::{self, DevPkiFiles, DevPkiRequest};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// Retries an assertion until it holds or the time is up, instead of sleeping.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_idgate")
}

/// A free loopback port (bound then released; fine on loopback for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A development PKI in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub files: DevPkiFiles,
}

pub const TD: &str = "example.org";
pub const ONBOARDING: &str = "spiffe://example.org/ns/kyc/sa/onboarding";
pub const FRONTEND: &str = "spiffe://example.org/ns/web/sa/frontend";

impl Pki {
    pub fn new(trust_domain: &str, workloads: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Self::generate_into(dir.path(), trust_domain, workloads);
        Self { dir, files }
    }

    pub fn generate_into(dir: &Path, trust_domain: &str, workloads: &[&str]) -> DevPkiFiles {
        devpki::generate(
            dir,
            &DevPkiRequest {
                trust_domain: trust_domain.parse().expect("trust domain"),
                workloads: workloads
                    .iter()
                    .map(|w| SpiffeId::new(w).expect("id"))
                    .collect(),
                validity: Duration::from_secs(3600),
            },
        )
        .expect("dev pki")
    }

    /// The default PKI: trust domain example.org, an onboarding and a frontend workload.
    pub fn default_pki() -> Self {
        Self::new(TD, &[ONBOARDING, FRONTEND])
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// (cert, key) of a workload by SPIFFE ID.
    pub fn workload(&self, id: &str) -> (PathBuf, PathBuf) {
        self.files
            .workloads
            .iter()
            .find(|(w, _, _)| w.as_str() == id)
            .map(|(_, c, k)| (c.clone(), k.clone()))
            .expect("workload in PKI")
    }
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamMode {
    /// Answer 200 with a JSON body naming the path.
    Echo,
    /// Wait this long before answering.
    Delay(Duration),
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
                    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let pq = parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default();
                            seen.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                path_and_query: pq.clone(),
                                version: parts.version,
                                headers: parts.headers.clone(),
                                body,
                            });
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

/// The `[listener]`, `[identity]` and `[admin]` part of a config for a PKI.
pub fn base_config(pki: &Pki, port: u16, admin_port: u16) -> String {
    format!(
        r#"workers = 1

[listener]
bind = "127.0.0.1:{port}"
client_auth = "required"

[identity]
svid_cert = "{cert}"
svid_key = "{key}"
poll_interval = "1s"

[[identity.trust_bundles]]
trust_domain = "{TD}"
bundle = "{bundle}"

[admin]
bind = "127.0.0.1:{admin_port}"

[log]
format = "json"
level = "info"
"#,
        cert = pki.files.gateway_cert.display(),
        key = pki.files.gateway_key.display(),
        bundle = pki.files.bundle.display(),
    )
}

/// A running `idgate serve` child process with its output captured.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    output: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Writes `config` (which must bind `port`/`admin_port`) and starts the gateway, waiting
    /// for `/readyz`.
    pub async fn start(config: &str, port: u16, admin_port: u16, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("idgate.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut cmd = Command::new(bin());
        cmd.arg("serve").arg("--config").arg(&config_path);
        cmd.env_remove("IDGATE_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn idgate");
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let gw = Self {
            child,
            port,
            admin_port,
            config_path,
            output,
            _dir: dir,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = admin_get(self.admin_port, "/readyz").await {
                return;
            }
            if Instant::now() > deadline {
                panic!("idgate did not become ready; output:\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }
}

/// A plain HTTP/1.1 GET to the admin listener: (status, body).
pub async fn admin_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
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

/// How the test client connects.
#[derive(Clone)]
pub struct Client {
    pub config: Arc<rustls::ClientConfig>,
    pub port: u16,
    pub h2: bool,
}

/// A rustls client config trusting `bundle`, presenting `identity` (cert, key) if given.
pub fn tls_client_config(
    bundle: &Path,
    identity: Option<(&Path, &Path)>,
    alpn_h2: bool,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(bundle).expect("bundle") {
        roots.add(c.expect("pem")).expect("root");
    }
    let builder = rustls::ClientConfig::builder_with_provider(idgate_tls::crypto_provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("cert pem");
            let key = PrivateKeyDer::from_pem_file(key).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = if alpn_h2 {
        vec![b"h2".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Arc::new(cfg)
}

impl Client {
    /// A client presenting the PKI workload `id`'s SVID (or none).
    pub fn new(pki: &Pki, id: Option<&str>, port: u16, h2: bool) -> Self {
        let ident = id.map(|id| pki.workload(id));
        let config = tls_client_config(
            &pki.files.bundle,
            ident.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            h2,
            rustls::DEFAULT_VERSIONS,
        );
        Self { config, port, h2 }
    }

    /// Connects (TLS handshake); errors are returned as text.
    pub async fn connect(&self) -> Result<Connection, String> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let io = TokioIo::new(tls);
        let sender = if self.h2 {
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H2(s)
        } else {
            let (s, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Sender::H1(s)
        };
        Ok(Connection { sender })
    }

    /// One request on a new connection.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        self.connect()
            .await?
            .send(method, path, headers, body)
            .await
    }

    pub async fn get(&self, path: &str) -> Result<Reply, String> {
        self.send("GET", path, &[], "").await
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// One established connection; several requests may be sent on it.
pub struct Connection {
    sender: Sender,
}

impl Connection {
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Reply, String> {
        let mut b = http::Request::builder().method(method);
        b = match &self.sender {
            Sender::H1(_) => b.uri(path).header("host", "localhost"),
            Sender::H2(_) => b.uri(format!("https://localhost{path}")),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b
            .body(Full::new(Bytes::from(body.to_owned())))
            .map_err(|e| e.to_string())?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Reply {
            status,
            version,
            headers,
            body,
        })
    }
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("run command");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parses the gateway's JSON log lines.
pub fn json_lines(output: &str) -> Vec<HashMap<String, serde_json::Value>> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
