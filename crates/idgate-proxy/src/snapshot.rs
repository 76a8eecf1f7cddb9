//! One immutable view of the routing configuration, swapped atomically on reload. A request
//! takes the snapshot in force when it arrives and keeps it to the end.

use std::sync::Arc;

use http::header::{self, HeaderName};
use idgate_config::Config;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;

use crate::authn::AuthServices;
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::token_endpoint::TokenEndpoint;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    pub routes: RouteTable,
    pub upstreams: Vec<Upstream>,
    /// Removed before forwarding: the caller's credentials (`x-api-key`, `authorization`,
    /// `cookie` and every header any upstream credential is sent in), and headers that would
    /// let a caller override the method or URL an upstream sees.
    pub strip_headers: Vec<HeaderName>,
    /// The API key and JWT verifiers of this configuration.
    pub auth: AuthServices,
    /// The built-in OAuth2 token endpoint, when configured.
    pub token_endpoint: Option<TokenEndpoint>,
    api_key_reload: Option<std::time::Duration>,
}

impl Snapshot {
    /// Starts the background work of this snapshot (credential refresh). The tasks end by
    /// themselves once the snapshot is replaced and dropped.
    pub fn start_background(&self, metrics: &Arc<Metrics>) {
        for c in self.upstreams.iter().filter_map(|u| u.credential.as_ref()) {
            c.spawn_refresh(metrics.clone());
        }
        self.auth.start_background(self.api_key_reload);
    }

    /// Builds the routes and upstream clients and resolves the upstream credentials.
    /// Blocking (reads files and secrets). Errors name the upstream or route.
    pub fn build(
        config: &Config,
        roots: &Arc<RootCertStore>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            match Upstream::new(u, roots, provider) {
                Ok(u) => upstreams.push(u),
                Err(e) => errors.push(e),
            }
        }
        let routes = RouteTable::new(&config.routes, config.token_endpoint.is_some())
            .map_err(|e| errors.push(e))
            .ok();
        let token_endpoint = match &config.token_endpoint {
            None => None,
            Some(t) => TokenEndpoint::load(t).map_err(|e| errors.push(e)).ok(),
        };
        let auth = AuthServices::build(config, token_endpoint.as_ref().map(|t| &t.issuer))
            .map_err(|e| errors.push(e))
            .ok();
        let mut strip_headers = vec![
            HeaderName::from_static("x-api-key"),
            header::AUTHORIZATION,
            header::COOKIE,
        ];
        // Headers an upstream may trust to change what the request means (its method, its
        // URL) are the gateway's to set, never the caller's. Who sent it is the forwarding
        // headers' business, which only a trusted proxy may pass on (see `pipeline.rs`).
        strip_headers.extend(
            [
                "x-original-url",
                "x-rewrite-url",
                "x-http-method-override",
                "x-http-method",
                "x-method-override",
            ]
            .map(HeaderName::from_static),
        );
        for c in config
            .upstreams
            .iter()
            .filter_map(|u| u.credential.as_ref())
        {
            for h in c.headers() {
                if !strip_headers.contains(&h) {
                    strip_headers.push(h);
                }
            }
        }
        match (routes, auth) {
            (Some(routes), Some(auth)) if errors.is_empty() => Ok(Self {
                routes,
                upstreams,
                strip_headers,
                auth,
                token_endpoint,
                api_key_reload: config.api_keys.as_ref().map(|a| a.reload_interval),
            }),
            _ => Err(errors),
        }
    }
}
