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
    pub(crate) max_connections_per_ip: Option<u32>,
    #[serde(default)]
    pub(crate) max_connection_age: Option<String>,
    #[serde(default)]
    pub(crate) max_header_bytes: Option<u32>,
    pub(crate) send_timeout: Option<String>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<String>,
    #[serde(default)]
    pub(crate) proxy_protocol: Option<ProxyProtocol>,
    #[serde(default)]
    pub(crate) max_connections_per_identity: Option<u32>,
    #[serde(default)]
    pub(crate) max_header_count: Option<u32>,
    #[serde(default)]
    pub(crate) header_timeout: Option<String>,
    #[serde(default)]
    pub(crate) body_timeout: Option<String>,
    #[serde(default)]
    pub(crate) max_concurrent_streams: Option<u32>,
    #[serde(default)]
    pub(crate) max_handshakes: Option<u32>,
    #[serde(default)]
    pub(crate) max_handshakes_per_ip: Option<u32>,
}

/// `listener.proxy_protocol = { from = [...], timeout = "5s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyProtocol {
    pub(crate) from: Vec<String>,
    #[serde(default)]
    pub(crate) timeout: Option<String>,
}

/// `[network]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Network {
    #[serde(default)]
    pub(crate) allow: Vec<String>,
    #[serde(default)]
    pub(crate) deny: Vec<String>,
    #[serde(default)]
    pub(crate) deny_user_agents: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Identity {
    #[serde(default)]
    pub(crate) svid_cert: Option<String>,
    #[serde(default)]
    pub(crate) svid_key: Option<String>,
    #[serde(default)]
    pub(crate) workload_api: Option<String>,
    #[serde(default)]
    pub(crate) svid_hint: Option<String>,
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
    #[serde(default)]
    pub(crate) max_connections: Option<u32>,
    #[serde(default)]
    pub(crate) allowed_hosts: Vec<String>,
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
    #[serde(default)]
    pub(crate) url: Option<String>,
    #[serde(default)]
    pub(crate) endpoints: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) health: Option<crate::upstream_resilience::RawHealth>,
    #[serde(default)]
    pub(crate) ca: Option<String>,
    #[serde(default)]
    pub(crate) client_certificate: Option<String>,
    #[serde(default)]
    pub(crate) connect_timeout: Option<String>,
    #[serde(default)]
    pub(crate) request_timeout: Option<String>,
    #[serde(default)]
    pub(crate) first_byte_timeout: Option<String>,
    #[serde(default)]
    pub(crate) response_body_timeout: Option<String>,
    #[serde(default)]
    pub(crate) pool_idle_timeout: Option<String>,
    #[serde(default)]
    pub(crate) pool_max_idle: Option<u32>,
    #[serde(default)]
    pub(crate) max_connections: Option<u32>,
    #[serde(default)]
    pub(crate) max_pending: Option<u32>,
    #[serde(default)]
    pub(crate) pending_timeout: Option<String>,
    #[serde(default)]
    pub(crate) max_body_bytes: Option<u64>,
    #[serde(default)]
    pub(crate) forwarded_for: Option<bool>,
    #[serde(default)]
    pub(crate) http2: Option<bool>,
    #[serde(default)]
    pub(crate) client: Option<String>,
    pub(crate) case_insensitive_paths: Option<bool>,
    #[serde(default)]
    pub(crate) credential: Option<Credential>,
    #[serde(default)]
    pub(crate) breaker: Option<crate::upstream_resilience::RawBreaker>,
    #[serde(default)]
    pub(crate) retry: Option<crate::upstream_resilience::RawRetry>,
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
    #[serde(default)]
    pub(crate) auth: Option<Vec<AuthItem>>,
    #[serde(default)]
    pub(crate) scopes: Option<Scopes>,
    #[serde(default)]
    pub(crate) allow_body: Option<bool>,
    #[serde(default)]
    pub(crate) allow_cidrs: Vec<String>,
    #[serde(default)]
    pub(crate) deny_cidrs: Vec<String>,
    #[serde(default)]
    pub(crate) deny_user_agents: Vec<String>,
    #[serde(default)]
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) rate_limits: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) on_state_error: Option<String>,
    #[serde(default)]
    pub(crate) owns: Option<String>,
    #[serde(default)]
    pub(crate) owner_param: Option<String>,
    #[serde(default)]
    pub(crate) list: Option<String>,
    #[serde(default)]
    pub(crate) list_items: Option<String>,
    #[serde(default)]
    pub(crate) list_id: Option<String>,
    #[serde(default)]
    pub(crate) ownership_retention: Option<String>,
    #[serde(default)]
    pub(crate) ownership_namespace: Option<String>,
    #[serde(default)]
    pub(crate) schema: Option<String>,
    /// A profile name or a table: read by `masking::route`, which names its keys.
    #[serde(default)]
    pub(crate) masking: Option<toml::Value>,
    #[serde(default)]
    pub(crate) on_audit_full: Option<String>,
    #[serde(default)]
    pub(crate) personal_path_params: Option<bool>,
    /// A table: read by `resilience::route`, which names its keys.
    #[serde(default)]
    pub(crate) fallback: Option<toml::Value>,
    #[serde(default)]
    pub(crate) failover: Option<String>,
    /// A table: read by `resilience::route`, which names its keys.
    #[serde(default)]
    pub(crate) faults: Option<toml::Value>,
}

/// Kept so that an unknown top-level table gets the same message as any other unknown key.
pub(crate) type Table = BTreeMap<String, toml::Value>;

/// One entry of a route's `auth` list: `"mtls"` or `{ any = ["api_key", "jwt"] }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum AuthItem {
    Layer(String),
    Any(AnyOf),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AnyOf {
    pub(crate) any: Vec<String>,
}

/// `scopes = ["a"]` or `scopes = { POST = ["a"], GET = ["b"] }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Scopes {
    All(Vec<String>),
    PerMethod(BTreeMap<String, Vec<String>>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApiKeys {
    #[serde(default)]
    pub(crate) store: Option<String>,
    pub(crate) pepper: String,
    #[serde(default)]
    pub(crate) reload_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtIssuer {
    pub(crate) name: String,
    pub(crate) issuer: String,
    #[serde(default)]
    pub(crate) jwks_uri: Option<String>,
    #[serde(default)]
    pub(crate) discovery: Option<bool>,
    pub(crate) audiences: Vec<String>,
    #[serde(default)]
    pub(crate) algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) leeway: Option<String>,
    #[serde(default)]
    pub(crate) ca: Option<String>,
    #[serde(default)]
    pub(crate) jwks_refresh_interval: Option<String>,
    #[serde(default)]
    pub(crate) min_refresh_interval: Option<String>,
    #[serde(default)]
    pub(crate) require_typ: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenEndpoint {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) signing_key: String,
    #[serde(default)]
    pub(crate) previous_signing_keys: Vec<String>,
    #[serde(default)]
    pub(crate) token_ttl: Option<String>,
    #[serde(default)]
    pub(crate) clients: Vec<TokenClient>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenClient {
    pub(crate) client_id: String,
    #[serde(default)]
    pub(crate) spiffe_id: Option<String>,
    #[serde(default)]
    pub(crate) client_secret: Option<String>,
    #[serde(default)]
    pub(crate) scopes: Vec<String>,
    #[serde(default)]
    pub(crate) tier: Option<String>,
}
