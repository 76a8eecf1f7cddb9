//! The test client: mTLS over HTTP/1.1 or HTTP/2, one request or several on a connection.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use super::{CertKey, Pki};

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

/// A TLS connection to the gateway as `ONBOARDING`, offering `h2` or `http/1.1`.
pub async fn tls_to(
    pki: &Pki,
    gw: &super::Gateway,
    h2: bool,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let (cert, key) = pki.workload(super::ONBOARDING);
    let config = tls_client_config(
        &pki.files.bundle,
        Some((&cert, &key)),
        h2,
        rustls::DEFAULT_VERSIONS,
    );
    let tcp = TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .expect("connect to the gateway");
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake with the gateway")
}
