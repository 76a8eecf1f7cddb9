//! The one way the gateway builds an outbound HTTPS client — to upstreams, token endpoints,
//! Vault, JWKS servers and webhook receivers: rustls with the one crypto provider and the
//! safe default protocol versions, the destination's roots, a client certificate when one is
//! presented, ALPN, a connect timeout and the pool's limits.
//!
//! ```ignore
//! let client: HttpsClient<Full<Bytes>> = OutboundClient::new(roots, Duration::from_secs(5))
//!     .http1_only()
//!     .pool_max_idle_per_host(4)
//!     .build()?;
//! ```

use std::sync::Arc;
use std::time::Duration;

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// hyper's pooled client over the connector [`OutboundClient`] builds.
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

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
pub enum HttpVersions {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 or HTTP/1.1, as the server picks.
    Any,
}

/// How an outbound HTTPS client is made; see the module documentation.
#[derive(Clone)]
pub struct OutboundClient {
    roots: RootCertStore,
    provider: Arc<CryptoProvider>,
    client_cert: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    versions: HttpVersions,
    connect_timeout: Duration,
    tcp_keepalive: Option<Duration>,
    pool_idle_timeout: Option<Duration>,
    pool_max_idle_per_host: Option<usize>,
}

/// Never shows the private key.
impl std::fmt::Debug for OutboundClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundClient")
            .field("roots", &self.roots.len())
            .field("client_cert", &self.client_cert.is_some())
            .field("versions", &self.versions)
            .field("connect_timeout", &self.connect_timeout)
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
            client_cert: None,
            versions: HttpVersions::Any,
            connect_timeout,
            tcp_keepalive: None,
            pool_idle_timeout: None,
            pool_max_idle_per_host: None,
        }
    }

    /// The crypto provider, when the caller already holds the process's one.
    pub fn provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = provider;
        self
    }

    /// Presents this certificate chain and key to servers that ask for one.
    pub fn client_cert(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.client_cert = Some((chain, Arc::new(key)));
        self
    }

    /// Speaks (and offers by ALPN) HTTP/1.1 only.
    pub fn http1_only(mut self) -> Self {
        self.versions = HttpVersions::Http1;
        self
    }

    pub fn versions(&self) -> HttpVersions {
        self.versions
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

    /// The rustls configuration, with ALPN for the HTTP versions spoken.
    pub fn tls_config(&self) -> Result<rustls::ClientConfig, ClientError> {
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone());
        let mut config = match &self.client_cert {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => builder.with_client_auth_cert(chain.clone(), key.clone_key())?,
        };
        config.alpn_protocols = match self.versions {
            HttpVersions::Http1 => vec![b"http/1.1".to_vec()],
            HttpVersions::Any => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        Ok(config)
    }

    /// The connector: TCP with `TCP_NODELAY` and the connect timeout, then TLS for
    /// `https://` (and cleartext for `http://`, which the callers allow only where they
    /// choose to).
    pub fn connector(&self) -> Result<HttpsConnector<HttpConnector>, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        if let Some(idle) = self.tcp_keepalive {
            http.set_keepalive(Some(idle));
        }
        // hyper-rustls sets ALPN itself from the versions enabled below (and refuses a
        // configuration that already has it).
        let mut tls = self.tls_config()?;
        tls.alpn_protocols.clear();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        Ok(match self.versions {
            HttpVersions::Http1 => https.enable_http1().wrap_connector(http),
            HttpVersions::Any => https.enable_all_versions().wrap_connector(http),
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
    pub fn build_on<B>(&self, connector: HttpsConnector<HttpConnector>) -> HttpsClient<B>
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_follows_the_http_versions() {
        let roots = crate::roots::platform_roots().clone();
        let any = OutboundClient::new(roots, Duration::from_secs(1));
        assert_eq!(
            any.tls_config().unwrap().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let h1 = any.clone().http1_only();
        assert_eq!(h1.versions(), HttpVersions::Http1);
        let _connector = h1.connector().unwrap();
        assert_eq!(
            h1.tls_config().unwrap().alpn_protocols,
            [b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn a_client_certificate_is_presented_when_given() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["client.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let roots = crate::roots::platform_roots().clone();
        let without = OutboundClient::new(roots, Duration::from_secs(1));
        assert!(
            !without
                .tls_config()
                .unwrap()
                .client_auth_cert_resolver
                .has_certs()
        );
        let with = without.client_cert(vec![cert.der().clone()], key);
        assert!(
            with.tls_config()
                .unwrap()
                .client_auth_cert_resolver
                .has_certs()
        );
        assert!(format!("{with:?}").contains("client_cert: true"));
    }
}
