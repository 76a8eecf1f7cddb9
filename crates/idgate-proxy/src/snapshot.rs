//! One immutable view of the routing configuration, swapped atomically on reload. A request
//! takes the snapshot in force when it arrives and keeps it to the end.

use std::sync::Arc;

use http::header::{self, HeaderName};
use idgate_config::Config;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;

use crate::routes::RouteTable;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    pub routes: RouteTable,
    pub upstreams: Vec<Upstream>,
    /// Caller credentials removed before forwarding: `x-api-key`, `authorization`, `cookie`
    /// and every header any upstream credential is sent in.
    pub strip_headers: Vec<HeaderName>,
}

impl Snapshot {
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
        let routes = RouteTable::new(&config.routes)
            .map_err(|e| errors.push(e))
            .ok();
        let mut strip_headers = vec![
            HeaderName::from_static("x-api-key"),
            header::AUTHORIZATION,
            header::COOKIE,
        ];
        for u in &config.upstreams {
            if let Some(c) = &u.credential
                && !strip_headers.contains(&c.header)
            {
                strip_headers.push(c.header.clone());
            }
        }
        match routes {
            Some(routes) if errors.is_empty() => Ok(Self {
                routes,
                upstreams,
                strip_headers,
            }),
            _ => Err(errors),
        }
    }
}
