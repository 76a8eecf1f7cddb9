//! Test support: a real PKI on disk, the real `idgate` binary on loopback ports it picks
//! itself (port 0, reported in its ready file), an HTTPS upstream that records what it
//! receives, and an mTLS client speaking HTTP/1.1 or 2. Configurations are built from typed
//! values (see `config.rs`).

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

pub use crate::config::*;

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

/// How long an end-to-end test may take before it fails as hung: the test clients
/// themselves have no timeouts.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs `test`, failing it if it takes longer than [`TEST_LIMIT`].
pub async fn within<T>(test: impl Future<Output = T>) -> T {
    within_limit(TEST_LIMIT, test).await
}

/// Runs `test`, failing it if it takes longer than `limit`.
pub async fn within_limit<T>(limit: Duration, test: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, test)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {limit:?}"))
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_idgate")
}

/// A loopback port where nothing listens, held for as long as the value lives: the socket
/// is bound but never listens, so a connection to it is refused and no other socket (another
/// test's port 0, say) can take the port meanwhile.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind a port");
        let port = socket.local_addr().expect("bound address").port();
        Self {
            _socket: socket,
            port,
        }
    }

    /// `scheme://127.0.0.1:PORT`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
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

/// The configuration most tests start from (see [`GatewayConfig::for_pki`]): listeners on
/// port 0, the PKI's gateway SVID and bundle, JSON logs at `info`.
pub fn base_config(pki: &Pki) -> GatewayConfig {
    GatewayConfig::for_pki(pki)
}

/// What `idgate serve --ready-file` wrote once it served.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
pub struct Ready {
    pub pid: u32,
    pub listener: SocketAddr,
    pub admin: SocketAddr,
}

/// How long a gateway may take to start before its test fails.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A running `idgate serve` child process with its output captured.
pub struct Gateway {
    pub child: Child,
    /// The port the listener bound (the configuration asks for port 0).
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    /// Where the gateway reports its addresses (`--ready-file`).
    pub ready_file: PathBuf,
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
    /// Writes `config` and starts the gateway with `env`, waiting until it reports the
    /// addresses it bound.
    pub async fn start(config: &GatewayConfig, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("idgate.toml");
        let ready_file = dir.path().join("ready.json");
        std::fs::write(&config_path, config.to_toml()).expect("write config");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready_file);
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
        let mut gw = Self {
            child,
            port: 0,
            admin_port: 0,
            config_path,
            ready_file,
            output,
            _dir: dir,
        };
        let ready = gw.wait_ready().await;
        gw.port = ready.listener.port();
        gw.admin_port = ready.admin.port();
        gw
    }

    /// Waits for the ready file (written whole, by a rename), failing with the gateway's
    /// output if it exits first or takes longer than [`START_LIMIT`].
    async fn wait_ready(&mut self) -> Ready {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Ok(text) = std::fs::read(&self.ready_file) {
                let ready: Ready = serde_json::from_slice(&text).unwrap_or_else(|e| {
                    panic!(
                        "the ready file is not the expected JSON ({e}): {}",
                        String::from_utf8_lossy(&text)
                    )
                });
                assert_eq!(
                    ready.pid,
                    self.child.id(),
                    "the ready file names another process"
                );
                return ready;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the output readers a moment to catch the last lines.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "idgate exited during start-up ({status}); output:\n{}",
                    self.output()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "idgate did not report ready within {START_LIMIT:?}; output:\n{}",
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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

// ---------------------------------------------------------------------------------------
// A PKI made with the `openssl` command line, independent of idgate's own dev PKI, so that
// the verifier is tested against certificates it had no hand in making.

/// A certificate and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs `openssl` with `args`, panicking with its output when it fails.
pub fn openssl(args: &[&str]) {
    let (code, out, err) = run(Command::new("openssl").args(args));
    assert_eq!(code, 0, "openssl {args:?} failed:\n{out}\n{err}");
}

/// A new EC P-256 private key (SEC1 PEM) at `path`.
pub fn openssl_ec_key(path: &Path) {
    let p = path.to_str().expect("utf-8 path");
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        p,
    ]);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The time `ago` before now, as `openssl ca -startdate/-enddate` takes it.
pub fn openssl_time_ago(ago: Duration) -> String {
    openssl_time(unix_now() - ago.as_secs())
}

/// The time `later` after now, as `openssl ca -startdate/-enddate` takes it.
pub fn openssl_time_in(later: Duration) -> String {
    openssl_time(unix_now() + later.as_secs())
}

/// A UNIX time as `YYYYMMDDHHMMSSZ`.
fn openssl_time(t: u64) -> String {
    let (days, secs) = ((t / 86_400) as i64, t % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The extensions of a well-formed X.509-SVID for `id` (client and server auth).
pub fn svid_extensions(id: &str) -> String {
    format!(
        "subjectAltName = URI:{id}\n\
         basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature\n\
         extendedKeyUsage = clientAuth,serverAuth\n"
    )
}

/// A self-signed certificate for a new P-256 key, with subject `CN=<cn>` and the given
/// extension lines, valid from a day ago for thirty days. Files: `<dir>/<name>.crt|.key`.
pub fn openssl_self_signed(dir: &Path, name: &str, cn: &str, extensions: &str) -> CertKey {
    let out = CertKey {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    openssl_ec_key(&out.key);
    let cnf = dir.join(format!("{name}.req.cnf"));
    std::fs::write(
        &cnf,
        format!(
            "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = {cn}\n[ext]\n{extensions}"
        ),
    )
    .expect("write req config");
    let start = openssl_time_ago(Duration::from_secs(86_400));
    let end = openssl_time_in(Duration::from_secs(30 * 86_400));
    let csr = dir.join(format!("{name}.csr"));
    openssl(&[
        "req",
        "-new",
        "-key",
        path_str(&out.key),
        "-config",
        path_str(&cnf),
        "-out",
        path_str(&csr),
    ]);
    // `openssl ca -selfsign` rather than `req -x509`: it sets both dates, as the issued
    // certificates below do.
    sign_with_openssl_ca(
        dir, name, &csr, &out.key, None, &cnf, "ext", &start, &end, &out.cert,
    );
    out
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[allow(clippy::too_many_arguments)]
fn sign_with_openssl_ca(
    dir: &Path,
    name: &str,
    csr: &Path,
    signing_key: &Path,
    issuer_cert: Option<&Path>,
    ext_file: &Path,
    ext_section: &str,
    start: &str,
    end: &str,
    out: &Path,
) {
    // A throwaway `openssl ca` database per certificate: nothing is shared between calls, so
    // the same subject may be issued any number of times.
    let db = dir.join(format!("{name}.index"));
    std::fs::write(&db, "").expect("write ca database");
    let cnf = dir.join(format!("{name}.ca.cnf"));
    std::fs::write(
        &cnf,
        format!(
            "[ca]\ndefault_ca = this\n[this]\ndatabase = {db}\nnew_certs_dir = {dir}\n\
             rand_serial = yes\ndefault_md = sha256\npolicy = any\nunique_subject = no\n\
             email_in_dn = no\n[any]\ncommonName = optional\n",
            db = db.display(),
            dir = dir.display(),
        ),
    )
    .expect("write ca config");
    let mut args = vec![
        "ca",
        "-batch",
        "-notext",
        "-config",
        path_str(&cnf),
        "-keyfile",
        path_str(signing_key),
        "-in",
        path_str(csr),
        "-out",
        path_str(out),
        "-extfile",
        path_str(ext_file),
        "-extensions",
        ext_section,
        "-startdate",
        start,
        "-enddate",
        end,
    ];
    match issuer_cert {
        Some(cert) => args.extend(["-cert", path_str(cert)]),
        None => args.push("-selfsign"),
    }
    openssl(&args);
}

/// A certificate authority made with the `openssl` command line.
#[derive(Debug, Clone)]
pub struct OpenSslCa {
    pub dir: PathBuf,
    pub ca: CertKey,
}

impl OpenSslCa {
    /// A new self-signed P-256 CA for `trust_domain` (its SPIFFE ID as URI SAN, as SPIRE
    /// does), files `<dir>/<name>.crt|.key`.
    pub fn new(dir: &Path, name: &str, trust_domain: &str) -> Self {
        let ca = openssl_self_signed(
            dir,
            name,
            &format!("{trust_domain} CA"),
            &format!(
                "basicConstraints = critical,CA:TRUE\n\
                 keyUsage = critical,keyCertSign,cRLSign\n\
                 subjectKeyIdentifier = hash\n\
                 subjectAltName = URI:spiffe://{trust_domain}\n"
            ),
        );
        Self {
            dir: dir.to_owned(),
            ca,
        }
    }

    /// An existing CA (the dev PKI's `bundle.pem` and `ca.key`, say), issuing into `dir`.
    pub fn existing(dir: &Path, cert: &Path, key: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            ca: CertKey {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
        }
    }

    /// Issues a certificate for a new P-256 key with the given extension lines, valid from
    /// `not_before` to `not_after` (see [`openssl_time_ago`] and [`openssl_time_in`]).
    pub fn issue_between(
        &self,
        name: &str,
        extensions: &str,
        not_before: &str,
        not_after: &str,
    ) -> CertKey {
        let out = CertKey {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        openssl_ec_key(&out.key);
        let csr = self.dir.join(format!("{name}.csr"));
        openssl(&[
            "req",
            "-new",
            "-key",
            path_str(&out.key),
            "-subj",
            &format!("/CN={name}"),
            "-out",
            path_str(&csr),
        ]);
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(&ext, format!("[ext]\n{extensions}")).expect("write extensions");
        sign_with_openssl_ca(
            &self.dir,
            name,
            &csr,
            &self.ca.key,
            Some(&self.ca.cert),
            &ext,
            "ext",
            not_before,
            not_after,
            &out.cert,
        );
        out
    }

    /// Issues a certificate valid from an hour ago for a day.
    pub fn issue(&self, name: &str, extensions: &str) -> CertKey {
        self.issue_between(
            name,
            extensions,
            &openssl_time_ago(Duration::from_secs(3600)),
            &openssl_time_in(Duration::from_secs(86_400)),
        )
    }
}

impl Client {
    /// A client trusting `server_roots` for the gateway's certificate and presenting
    /// `identity`, over HTTP/1.1 with the given TLS versions.
    pub fn with_identity(
        server_roots: &Path,
        identity: &CertKey,
        port: u16,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Self {
        Self {
            config: tls_client_config(
                server_roots,
                Some((&identity.cert, &identity.key)),
                false,
                versions,
            ),
            port,
            h2: false,
        }
    }
}

/// A gateway with one upstream and one route to it, the shape most end-to-end tests need.
/// `Default`: no credential, and `GET /v1/{*rest}` allowed for [`ONBOARDING`].
pub struct OneRoute<'a> {
    /// The upstream's URL; an `https://` one is trusted through the PKI's bundle.
    pub url: &'a str,
    /// More keys for the `[[upstreams]]` table (`request_timeout = "1s"`).
    pub upstream_extra: toml::Table,
    pub credential: Option<CredentialSpec>,
    pub methods: &'a [&'a str],
    pub path: &'a str,
    pub allow: &'a [&'a str],
    /// More keys for `[listener]`.
    pub listener_extra: toml::Table,
}

impl Default for OneRoute<'_> {
    fn default() -> Self {
        Self {
            url: "",
            upstream_extra: toml::Table::new(),
            credential: None,
            methods: &["GET"],
            path: "/v1/{*rest}",
            allow: &[ONBOARDING],
            listener_extra: toml::Table::new(),
        }
    }
}

impl<'a> OneRoute<'a> {
    /// `GET /v3/session/{session_id}/decision/` on `url` for every `ns/kyc/*` workload, with
    /// the provider key from the environment variable `TEST_PROVIDER_KEY` in `x-api-key`.
    pub fn kyc_decision(url: &'a str) -> Self {
        Self {
            url,
            credential: Some(CredentialSpec::header("x-api-key", "env:TEST_PROVIDER_KEY")),
            path: "/v3/session/{session_id}/decision/",
            allow: &["spiffe://example.org/ns/kyc/*"],
            ..Self::default()
        }
    }

    /// The configuration: the upstream `provider` and the route `route` to it.
    pub fn config(&self, pki: &Pki) -> GatewayConfig {
        let mut config = base_config(pki);
        config.listener.extra.extend(self.listener_extra.clone());
        let mut upstream = UpstreamSpec::new("provider", self.url);
        if self.url.starts_with("https://") {
            upstream = upstream.ca(&pki.files.bundle);
        }
        upstream.extra = self.upstream_extra.clone();
        upstream.credential = self.credential.clone();
        config.upstream(upstream).route(RouteSpec::new(
            "route",
            self.methods,
            self.path,
            "provider",
            self.allow,
        ))
    }

    /// Starts the gateway with `env`.
    pub async fn start(&self, pki: &Pki, env: &[(&str, &str)]) -> Gateway {
        Gateway::start(&self.config(pki), env).await
    }
}

/// A gateway configuration from its identity: the gateway's SVID, one bundle per trust
/// domain and how often the files are polled; JSON logs at `info`, no upstream, no route.
pub fn gateway_config(
    svid: (&Path, &Path),
    bundles: &[(&str, &Path)],
    poll_interval: &str,
) -> GatewayConfig {
    bundles.iter().fold(
        GatewayConfig::new(svid.0, svid.1)
            .poll_interval(poll_interval)
            .json_log("info"),
        |config, (trust_domain, bundle)| config.trust(trust_domain, bundle),
    )
}

/// The gateway's JSON log lines of `target` whose message is `message`.
pub fn log_lines(
    gw: &Gateway,
    target: &str,
    message: &str,
) -> Vec<HashMap<String, serde_json::Value>> {
    json_lines(&gw.output())
        .into_iter()
        .filter(|l| {
            l.get("target").and_then(|t| t.as_str()) == Some(target)
                && l.get("message").and_then(|m| m.as_str()) == Some(message)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Outside processes with a deadline (curl, python3, openssl, the `idgate` CLI itself).

/// Waits up to `timeout` for `child` to exit; `None` if it is still running then. Polls,
/// because a child process has no future to await.
pub fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command with stdin closed and a deadline: (exit code, stdout, stderr). A command
/// still running at the deadline is killed and reported with code -1 and a note in stderr.
/// Blocking: call it from `spawn_blocking` in async tests.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> (i32, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .map(|stream| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut s) = stream {
                let _ = std::io::Read::read_to_end(&mut s, &mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    });
    let status = wait_for_exit(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let [out, err] = readers.map(|r| r.join().unwrap_or_default());
    match status {
        Some(s) => (s.code().unwrap_or(-1), out, err),
        None => (-1, out, format!("{err}\n(killed after {timeout:?})")),
    }
}

/// The SoftHSM2 PKCS#11 module (Debian's `softhsm2` package).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 token store in a temporary directory, with one token labelled `idgate` whose
/// user PIN is in a 0600 file.
pub struct SoftHsmToken {
    pub dir: tempfile::TempDir,
}

impl SoftHsmToken {
    /// A token labelled `idgate` (user PIN 1234, SO PIN 5678), initialised with
    /// `idgate hsm init-token` in a store of its own.
    pub fn new() -> Self {
        let t = Self::empty();
        let (code, out, err) = t.hsm(
            &[
                "init-token",
                "--module-path",
                SOFTHSM_MODULE,
                "--label",
                "idgate",
            ],
            "5678\n1234\n",
        );
        assert_eq!(code, 0, "{out}{err}");
        write_private(&t.dir.path().join("pin"), b"1234");
        t
    }

    /// A SoftHSM2 store of its own (`SOFTHSM2_CONF` and token directory) with no token yet.
    pub fn empty() -> Self {
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "SoftHSM2 is not installed: run scripts/setup-test-deps.sh"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("tokens")).expect("token dir");
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!("directories.tokendir = {}/tokens\n", dir.path().display()),
        )
        .expect("softhsm2.conf");
        Self { dir }
    }

    /// The `SOFTHSM2_CONF` file to give every process that opens the token.
    pub fn conf(&self) -> PathBuf {
        self.dir.path().join("softhsm2.conf")
    }

    /// The `pkcs11:` reference of `object` in this token.
    pub fn uri(&self, object: &str) -> String {
        format!(
            "pkcs11:token=idgate;object={object}?module-path={SOFTHSM_MODULE}&pin-source=file:{}",
            self.dir.path().join("pin").display()
        )
    }

    /// Runs `idgate hsm <args>` with `stdin` as the secret: (exit code, stdout, stderr).
    pub fn hsm(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        use std::io::Write;
        let mut child = Command::new(bin())
            .arg("hsm")
            .args(args)
            .env("SOFTHSM2_CONF", self.conf())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("idgate hsm");
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("idgate hsm output");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs `idgate hsm <args> --uri <object's URI>` and insists it succeeds.
    pub fn hsm_ok(&self, args: &[&str], object: &str, stdin: &str) {
        let uri = self.uri(object);
        let mut all = args.to_vec();
        all.extend(["--uri", uri.as_str()]);
        let (code, out, err) = self.hsm(&all, stdin);
        assert_eq!(code, 0, "idgate hsm {args:?}: {out}{err}");
    }

    /// The token's own directory in the store (SoftHSM2 names it after a UUID).
    pub fn token_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("tokens"))
            .expect("token store")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "one token directory expected: {dirs:?}");
        dirs.remove(0)
    }
}

/// Writes a file only its owner can read, as secret files must be.
pub fn write_private(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
}

/// Lowercase hex HMAC-SHA256, computed independently of the gateway.
pub fn hex_hmac(key: &str, data: &[u8]) -> String {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    ring::hmac::sign(&k, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
