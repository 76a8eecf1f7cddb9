//! The one way the gateway builds an outbound HTTPS client — to upstreams, token endpoints,
//! Vault, JWKS servers and webhook receivers: rustls with the one crypto provider and the
//! safe default protocol versions, the destination's roots, ALPN, a connect timeout and the
//! pool's limits.
//!
//! ```ignore
//! let client: HttpsClient<Full<Bytes>> = OutboundClient::new(roots, Duration::from_secs(5))
//!     .http1_only()
//!     .pool_max_idle_per_host(4)
//!     .build()?;
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use tower_service::Service;

/// hyper's pooled client over the connector [`OutboundClient`] builds.
pub type HttpsClient<B> = Client<Connector, B>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The connector [`OutboundClient`] builds: name lookup, TCP connect and TLS handshake
/// together within the connect timeout. `HttpConnector`'s own timeout covers the TCP
/// connect alone, and hyper-rustls sets none on the handshake: a server that accepts and
/// never answers the `ClientHello` would otherwise hold the request until whatever bounds
/// it from outside, and it would not fail as a connect failure.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: HttpsConnector<HttpConnector>,
    timeout: Duration,
}

/// No connection was established within the connect timeout. The client reports it as a
/// connect error (`is_connect()`), as it does a refused connection: nothing was sent.
#[derive(Debug, thiserror::Error)]
#[error("connection not established within the connect timeout ({0:?})")]
pub struct ConnectTimeout(Duration);

impl Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let connecting = self.inner.call(dst);
        let timeout = self.timeout;
        Box::pin(async move {
            tokio::time::timeout(timeout, connecting)
                .await
                .unwrap_or_else(|_| Err(ConnectTimeout(timeout).into()))
        })
    }
}

/// Why a request of an [`HttpsClient`] failed.
pub use hyper_util::client::legacy::Error as RequestError;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Which HTTP versions the client speaks, offered by ALPN over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpVersions {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 or HTTP/1.1, as the server picks.
    Any,
    /// No HTTP at all (a syslog collector): no ALPN is offered.
    None,
}

/// How an outbound HTTPS client is made; see the module documentation.
#[derive(Clone)]
pub struct OutboundClient {
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
    versions: HttpVersions,
    connect_timeout: Duration,
    tcp_keepalive: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: Option<usize>,
    client_certificate: Option<Arc<dyn rustls::client::ResolvesClientCert>>,
    /// The client certificate follows the gateway's SVID: no session resumption.
    rotating_identity: bool,
}

impl std::fmt::Debug for OutboundClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundClient")
            .field("roots", &self.roots.len())
            .field("versions", &self.versions)
            .field("connect_timeout", &self.connect_timeout)
            .field("client_certificate", &self.client_certificate.is_some())
            .finish_non_exhaustive()
    }
}

impl OutboundClient {
    /// A client that trusts `roots` and gives up connecting (TCP and TLS) after
    /// `connect_timeout`; HTTP/2 or HTTP/1.1, no client certificate, hyper's pool defaults.
    pub fn new(roots: RootCertStore, connect_timeout: Duration) -> Self {
        Self {
            roots,
            provider: crate::crypto_provider(),
            versions: HttpVersions::Any,
            connect_timeout,
            tcp_keepalive: None,
            pool_idle_timeout: None,
            pool_max_idle_per_host: None,
            client_certificate: None,
            rotating_identity: false,
        }
    }

    /// The crypto provider, when the caller already holds the process's one.
    pub fn provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = provider;
        self
    }

    /// Speaks (and offers by ALPN) HTTP/1.1 only.
    pub fn http1_only(mut self) -> Self {
        self.versions = HttpVersions::Http1;
        self
    }

    /// Sends TCP keep-alive probes after this much silence.
    pub fn tcp_keepalive(mut self, idle: Duration) -> Self {
        self.tcp_keepalive = Some(idle);
        self
    }

    /// Closes pooled connections idle for this long.
    pub fn pool_idle_timeout(mut self, idle: Duration) -> Self {
        self.pool_idle_timeout = Some(idle);
        self
    }

    /// Keeps at most this many idle connections per host.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.pool_max_idle_per_host = Some(n);
        self
    }

    /// Offers no ALPN protocol, for a destination that does not speak HTTP (a syslog
    /// collector over TLS, RFC 5425).
    pub fn no_alpn(mut self) -> Self {
        self.versions = HttpVersions::None;
        self
    }

    /// Presents this certificate chain and key when the server asks for one (mutual TLS,
    /// say to a syslog collector that authenticates its senders).
    pub fn client_certificate(mut self, key: Arc<CertifiedKey>) -> Self {
        self.client_certificate = Some(Arc::new(OneClientCert(key)));
        self
    }

    /// Presents the gateway's SVID, as it is at each handshake (it follows rotations), when
    /// the server asks for a certificate.
    pub fn client_svid(mut self, material: Arc<crate::TlsMaterial>) -> Self {
        self.client_certificate = Some(Arc::new(CurrentSvid(material)));
        self.rotating_identity = true;
        self
    }

    /// The rustls configuration, with ALPN for the HTTP versions spoken.
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.client_certificate {
            None => builder.with_no_client_auth(),
            Some(resolver) => builder.with_client_cert_resolver(resolver.clone()),
        };
        if self.rotating_identity {
            // A resumed session would carry the identity of the handshake it came from: the
            // server would take the connection for the SVID in force back then.
            config.resumption = rustls::client::Resumption::disabled();
        }
        config.alpn_protocols = match self.versions {
            HttpVersions::Http1 => vec![b"http/1.1".to_vec()],
            HttpVersions::Any => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            HttpVersions::None => Vec::new(),
        };
        Ok(config)
    }

    /// The connector: TCP with `TCP_NODELAY`, then TLS for `https://` (and cleartext for
    /// `http://`, which the callers allow only where they choose to), all within the
    /// connect timeout.
    pub fn connector(&self) -> Result<Connector, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        if let Some(idle) = self.tcp_keepalive {
            http.set_keepalive(Some(idle));
        }
        // Built from the configuration itself, so the connector offers exactly its ALPN:
        // hyper-rustls's builder would leave ALPN empty for HTTP/1.1 alone. Whether HTTP/2
        // is spoken follows from what the server picks.
        Ok(Connector {
            inner: HttpsConnector::from((http, Arc::new(self.tls_config()?))),
            timeout: self.connect_timeout,
        })
    }

    /// A pooled client over a new connector.
    pub fn build<B>(&self) -> Result<HttpsClient<B>, ClientError>
    where
        B: http_body::Body + Send,
        B::Data: Send,
    {
        Ok(self.build_on(self.connector()?))
    }

    /// A pooled client over `connector`, for clients of one destination that differ only in
    /// the bodies they send.
    pub fn build_on<B>(&self, connector: Connector) -> HttpsClient<B>
    where
        B: http_body::Body + Send,
        B::Data: Send,
    {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new());
        if let Some(idle) = self.pool_idle_timeout {
            builder.pool_idle_timeout(idle);
        }
        if let Some(n) = self.pool_max_idle_per_host {
            builder.pool_max_idle_per_host(n);
        }
        builder.build(connector)
    }
}

/// The one client certificate a client presents, whatever CA names the server hints at:
/// the server alone judges whether it accepts it.
struct OneClientCert(Arc<CertifiedKey>);

impl std::fmt::Debug for OneClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OneClientCert")
    }
}

impl rustls::client::ResolvesClientCert for OneClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The gateway's SVID in force at each handshake: a rotation reaches every new connection.
struct CurrentSvid(Arc<crate::TlsMaterial>);

impl std::fmt::Debug for CurrentSvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentSvid")
    }
}

impl rustls::client::ResolvesClientCert for CurrentSvid {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current_svid()
    }

    fn has_certs(&self) -> bool {
        self.0.is_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::PrivateKeyDer;

    #[test]
    fn alpn_follows_the_http_versions() {
        let roots = crate::roots::platform_roots().clone();
        let any = OutboundClient::new(roots, Duration::from_secs(1));
        assert_eq!(
            any.tls_config().unwrap().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let h1 = any.clone().http1_only();
        assert_eq!(
            h1.tls_config().unwrap().alpn_protocols,
            [b"http/1.1".to_vec()]
        );
        assert!(
            any.no_alpn()
                .tls_config()
                .unwrap()
                .alpn_protocols
                .is_empty()
        );
    }

    /// What a TLS server on loopback sees the client offer, for `client`'s connector:
    /// the protocol it negotiates when it would take either `h2` or `http/1.1`.
    async fn negotiated(client: OutboundClient) -> Option<Vec<u8>> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(tcp).await.unwrap();
            tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
        });
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = OutboundClient { roots, ..client };
        let http: HttpsClient<String> = client.build().unwrap();
        let req = http::Request::get(format!("https://localhost:{port}/"))
            .body(String::new())
            .unwrap();
        // The server closes after the handshake; only what was offered matters here.
        let _ = tokio::time::timeout(Duration::from_secs(5), http.request(req)).await;
        tokio::time::timeout(Duration::from_secs(5), accepted)
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn a_server_that_never_answers_the_client_hello_fails_at_connect_timeout_as_a_connect_error()
     {
        // Accepts, then says nothing: the TCP connect succeeds, the TLS handshake never ends.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                held.push(tcp);
            }
        });
        let connect_timeout = Duration::from_millis(300);
        for client in [
            OutboundClient::new(RootCertStore::empty(), connect_timeout),
            OutboundClient::new(RootCertStore::empty(), connect_timeout).http1_only(),
        ] {
            let http: HttpsClient<String> = client.build().unwrap();
            let req = http::Request::get(format!("https://localhost:{port}/"))
                .body(String::new())
                .unwrap();
            let started = std::time::Instant::now();
            let err = tokio::time::timeout(Duration::from_secs(10), http.request(req))
                .await
                .expect("the handshake was not bounded by the connect timeout")
                .expect_err("a silent server answered");
            assert!(err.is_connect(), "{err:?}");
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
            while let Some(e) = cause {
                if e.is::<ConnectTimeout>() {
                    break;
                }
                cause = e.source();
            }
            assert!(cause.is_some(), "not a connect timeout: {err:?}");
            assert!(
                started.elapsed() >= connect_timeout,
                "{:?}",
                started.elapsed()
            );
        }
        silent.abort();
    }

    #[tokio::test]
    async fn an_http1_only_client_offers_http11_by_alpn_and_a_client_of_any_version_offers_h2() {
        let roots = RootCertStore::empty();
        let any = OutboundClient::new(roots, Duration::from_secs(5));
        assert_eq!(
            negotiated(any.clone().http1_only()).await.as_deref(),
            Some(&b"http/1.1"[..])
        );
        assert_eq!(negotiated(any).await.as_deref(), Some(&b"h2"[..]));
    }
}
