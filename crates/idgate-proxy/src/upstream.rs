//! Upstream services: a pooled HTTP/1.1 and HTTP/2 client per upstream (rustls, the
//! platform's roots plus the upstream's own `ca`), its timeouts and its credential.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use http::header;
use http::uri::{Authority, Scheme};
use idgate_config::{ClientKind, UpstreamConfig};
use idgate_h1 as h1;
use idgate_h1::limit::ConnLimit;
use idgate_secrets::credential::Credential;
use idgate_secrets::oauth2::TokenClient;
use idgate_tls::client::OutboundClient;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;

use crate::body::UpstreamClient;
use crate::header_set::{HOP_BY_HOP, HeaderSet};
use idgate_secrets::credential::CredentialLoadError;

/// Why an upstream's client or credential cannot be set up.
#[derive(Debug, thiserror::Error)]
#[error("upstream {name}: {problem}")]
pub struct UpstreamError {
    pub name: String,
    #[source]
    pub problem: Box<UpstreamProblem>,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamProblem {
    #[error("ca: {0}")]
    Ca(idgate_tls::roots::CaFileError),
    #[error("{0}")]
    Client(idgate_tls::client::ClientError),
    #[error("{0}")]
    Credential(CredentialLoadError),
    #[error("the URL has no host")]
    NoHost,
    #[error("host name: {0}")]
    HostName(rustls::pki_types::InvalidDnsNameError),
}

impl UpstreamError {
    /// The key of the setting at fault under the upstream's own: `ca`,
    /// `credential.secret`; empty for the upstream as a whole.
    pub fn key(&self) -> String {
        match &*self.problem {
            UpstreamProblem::Ca(_) => "ca".to_owned(),
            UpstreamProblem::Client(_) => String::new(),
            UpstreamProblem::Credential(c) => match c.key() {
                "" => "credential".to_owned(),
                field => format!("credential.{field}"),
            },
            UpstreamProblem::NoHost | UpstreamProblem::HostName(_) => "url".to_owned(),
        }
    }
}

/// One of an upstream's endpoints (its `url`, or one of its `endpoints`).
#[derive(Debug)]
pub struct Endpoint {
    pub authority: Authority,
    /// `host:port` as configured: the endpoint's name in metrics, logs and the registry.
    pub label: Arc<str>,
    /// The gateway's own HTTP/1.1 client for this endpoint, when the upstream uses it.
    pub h1: Option<h1::Pool>,
}

#[derive(Debug)]
pub struct Upstream {
    /// Shared with metrics labels.
    pub name: Arc<str>,
    pub scheme: Scheme,
    /// At least one; requests are balanced over the healthy ones (see `resilience`).
    pub endpoints: Vec<Endpoint>,
    pub base_path: String,
    pub request_timeout: Duration,
    /// One attempt's wait for the response head.
    pub first_byte_timeout: Duration,
    /// A response body's time from its head to its last byte.
    pub response_body_timeout: Duration,
    pub max_body_bytes: u64,
    pub forwarded_for: bool,
    pub credential: Option<Arc<Credential>>,
    /// What its answers are stripped of: the hop-by-hop headers, and every header its
    /// credential is sent in (with `Authorization` and `x-api-key`): an upstream, or a layer
    /// before it, that echoes them would hand the gateway's credential to the caller.
    pub(crate) response_strip: HeaderSet,
    /// The credential version counted last, for `upstream_credential_uses`.
    pub credential_counted: crate::metrics::LastUse,
    /// Its latency histogram, kept from its first answer.
    pub latency_kept: crate::metrics::KeptLatency,
    /// hyper's client: for `https://` upstreams with `http2 = true` (HTTP/2 or HTTP/1.1 by
    /// ALPN), upstreams with `client = "hyper"`, and the gateway's own calls such as OAuth2
    /// token requests.
    pub client: UpstreamClient,
    /// `max_connections` and its wait queue, for either client.
    pub limit: Arc<ConnLimit>,
    /// `[upstreams.breaker]`: the thresholds; the state lives in [`crate::resilience`].
    pub breaker: Option<idgate_config::BreakerConfig>,
    /// `[upstreams.retry]`.
    pub retry: Option<idgate_config::RetryConfig>,
    /// `[upstreams.health]`.
    pub health: Option<idgate_config::HealthConfig>,
}

/// See [`Upstream::response_strip`].
fn response_strip(credential: Option<&idgate_secrets::credential::CredentialConfig>) -> HeaderSet {
    let mut names: Vec<HeaderName> = HOP_BY_HOP.iter().map(|&n| n.clone()).collect();
    let credential_headers = credential.map(|c| c.headers()).unwrap_or_default();
    for name in [header::AUTHORIZATION, HeaderName::from_static("x-api-key")]
        .into_iter()
        .chain(credential_headers)
    {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    HeaderSet::new(names)
}

impl Upstream {
    /// Builds the client and resolves the credential. Blocking (reads files and secrets).
    /// `material`: the gateway's SVID, presented when `client_certificate = "svid"`.
    pub fn new(
        cfg: &UpstreamConfig,
        roots: &Arc<RootCertStore>,
        provider: &Arc<CryptoProvider>,
        material: &Arc<idgate_tls::TlsMaterial>,
    ) -> Result<Self, UpstreamError> {
        let err = |problem| UpstreamError {
            name: cfg.name.clone(),
            problem: Box::new(problem),
        };
        let store = match &cfg.ca {
            None => RootCertStore::clone(roots),
            Some(ca) => idgate_tls::roots::roots_with_ca(Some(ca))
                .map_err(|e| err(UpstreamProblem::Ca(e)))?,
        };
        let outbound = OutboundClient::new(store, cfg.connect_timeout)
            .provider(provider.clone())
            .tcp_keepalive(Duration::from_secs(60))
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle);
        // hyper's client in place of the own one speaks the own one's HTTP/1.1 only.
        let outbound = if cfg.client == ClientKind::Hyper && !cfg.http2 {
            outbound.http1_only()
        } else {
            outbound
        };
        let outbound = if cfg.client_svid {
            outbound.client_svid(material.clone())
        } else {
            outbound
        };
        let connector = outbound
            .connector()
            .map_err(|e| err(UpstreamProblem::Client(e)))?;
        let client: UpstreamClient = outbound.build_on(connector.clone());
        // The gateway's own HTTP/1.1 client says so in ALPN.
        let h1_tls = outbound
            .clone()
            .http1_only()
            .tls_config()
            .map_err(|e| err(UpstreamProblem::Client(e)))?;

        let credential = match &cfg.credential {
            None => None,
            Some(c) => {
                // Token requests go out as the upstream's own requests would: same roots,
                // same timeouts, same protocols.
                let token_client: TokenClient = outbound.build_on(connector);
                Some(Arc::new(
                    Credential::load(c, Some(token_client))
                        .map_err(|e| err(UpstreamProblem::Credential(e)))?,
                ))
            }
        };

        let scheme = cfg.origin.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let limit = Arc::new(ConnLimit::new(
            cfg.max_connections,
            cfg.max_pending,
            cfg.pending_timeout,
        ));
        let own_client =
            !((scheme == Scheme::HTTPS && cfg.http2) || cfg.client == ClientKind::Hyper);
        let h1_tls = Arc::new(h1_tls);
        let mut endpoints = Vec::with_capacity(cfg.endpoints.len());
        for origin in &cfg.endpoints {
            let authority = origin
                .authority()
                .cloned()
                .ok_or_else(|| err(UpstreamProblem::NoHost))?;
            let h1 = if own_client {
                Some(h1_pool(cfg, &scheme, &authority, &h1_tls, &limit).map_err(err)?)
            } else {
                None
            };
            endpoints.push(Endpoint {
                label: authority.as_str().into(),
                authority,
                h1,
            });
        }
        Ok(Self {
            name: cfg.name.as_str().into(),
            scheme,
            endpoints,
            base_path: cfg.base_path.clone(),
            request_timeout: cfg.request_timeout,
            first_byte_timeout: cfg.first_byte_timeout,
            response_body_timeout: cfg.response_body_timeout,
            max_body_bytes: cfg.max_body_bytes,
            forwarded_for: cfg.forwarded_for,
            credential,
            response_strip: response_strip(cfg.credential.as_ref()),
            credential_counted: Default::default(),
            latency_kept: Default::default(),
            client,
            limit,
            breaker: cfg.breaker.clone(),
            retry: cfg.retry.clone(),
            health: cfg.health.clone(),
        })
    }
}

/// The gateway's own HTTP/1.1 client for one endpoint, under the upstream's connection cap.
fn h1_pool(
    cfg: &UpstreamConfig,
    scheme: &Scheme,
    authority: &Authority,
    h1_tls: &Arc<rustls::ClientConfig>,
    limit: &Arc<ConnLimit>,
) -> Result<h1::Pool, UpstreamProblem> {
    let tls = if *scheme == Scheme::HTTPS {
        // The name the upstream's certificate must carry: its host, without the brackets
        // of an IPv6 literal.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(UpstreamProblem::HostName)?;
        Some((tokio_rustls::TlsConnector::from(h1_tls.clone()), name))
    } else {
        None
    };
    let address = match authority.port_u16() {
        Some(_) => authority.as_str().to_owned(),
        None if tls.is_some() => format!("{}:443", authority.as_str()),
        None => format!("{}:80", authority.as_str()),
    };
    Ok(h1::Pool::new(h1::PoolConfig {
        address,
        tls,
        host: authority.as_str().to_owned(),
        connect_timeout: cfg.connect_timeout,
        idle_timeout: cfg.pool_idle_timeout,
        max_idle: cfg.pool_max_idle,
        body_read_timeout: cfg.request_timeout,
        body_timeout: cfg.response_body_timeout,
        limit: limit.clone(),
    }))
}
