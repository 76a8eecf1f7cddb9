//! The configuration file exactly as written: serde types with `deny_unknown_fields`, so a
//! misspelt key is an error rather than a silently ignored setting.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Listener {
    pub(crate) bind: String,
    #[serde(default)]
    pub(crate) tls_min_version: Option<String>,
    #[serde(default)]
    pub(crate) client_auth: Option<String>,
    #[serde(default)]
    pub(crate) handshake_timeout: Option<String>,
    #[serde(default)]
    pub(crate) idle_timeout: Option<String>,
    #[serde(default)]
    pub(crate) max_connections: Option<u32>,
    #[serde(default)]
    pub(crate) max_header_bytes: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Identity {
    pub(crate) svid_cert: String,
    pub(crate) svid_key: String,
    #[serde(default)]
    pub(crate) trust_bundles: Vec<TrustBundle>,
    #[serde(default)]
    pub(crate) poll_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrustBundle {
    pub(crate) trust_domain: String,
    pub(crate) bundle: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Admin {
    pub(crate) bind: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Log {
    #[serde(default)]
    pub(crate) format: Option<String>,
    #[serde(default)]
    pub(crate) level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) url: String,
    #[serde(default)]
    pub(crate) ca: Option<String>,
    #[serde(default)]
    pub(crate) connect_timeout: Option<String>,
    #[serde(default)]
    pub(crate) request_timeout: Option<String>,
    #[serde(default)]
    pub(crate) pool_idle_timeout: Option<String>,
    #[serde(default)]
    pub(crate) pool_max_idle: Option<u32>,
    #[serde(default)]
    pub(crate) max_body_bytes: Option<u64>,
    #[serde(default)]
    pub(crate) credential: Option<Credential>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credential {
    #[serde(default)]
    pub(crate) scheme: Option<String>,
    #[serde(default)]
    pub(crate) label: Option<String>,
    #[serde(default)]
    pub(crate) header: Option<String>,
    #[serde(default)]
    pub(crate) prefix: Option<String>,
    #[serde(default)]
    pub(crate) secret: Option<String>,
    #[serde(default)]
    pub(crate) app_token: Option<String>,
    #[serde(default)]
    pub(crate) client: Option<String>,
    #[serde(default)]
    pub(crate) token_url: Option<String>,
    #[serde(default)]
    pub(crate) client_id: Option<String>,
    #[serde(default)]
    pub(crate) client_secret: Option<String>,
    #[serde(default)]
    pub(crate) scope: Option<String>,
    #[serde(default)]
    pub(crate) refresh_interval: Option<String>,
    #[serde(default)]
    pub(crate) overlap: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Route {
    pub(crate) name: String,
    pub(crate) methods: Vec<String>,
    pub(crate) path: String,
    pub(crate) upstream: String,
    pub(crate) allow: Vec<String>,
}

/// Kept so that an unknown top-level table gets the same message as any other unknown key.
pub(crate) type Table = BTreeMap<String, toml::Value>;
