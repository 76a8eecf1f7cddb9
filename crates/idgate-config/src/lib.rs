//! The idgate configuration: the TOML schema, loading, and validation that names the file,
//! the key path and the reason for every problem it finds.
//!
//! Loading turns the file into a [`Config`] of typed values (`SocketAddr`, `SpiffeIdPattern`,
//! `SecretRef`, `Duration`, …); nothing downstream parses strings again. Validation goes on
//! past the first problem so that `idgate check` can report them all at once.

mod admin;
mod audit;
mod auth;
mod context;
mod credential;
mod duration;
mod error;
mod identity;
mod incidents;
mod json_path;
mod jwt_svid;
mod lifecycle;
mod limits;
mod listener;
mod log;
mod masking;
mod network;
mod ownership;
mod proxies;
mod raw;
mod resilience;
mod routes;
mod routing;
mod schema;
mod siem;
mod state;
#[cfg(test)]
mod test_support;
mod upstream_resilience;
mod upstreams;
pub mod vault;
mod webhooks;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use idgate_tls::TrustDomain;
use serde::de::DeserializeOwned;

use context::{Ctx, io_reason};

pub use admin::AdminConfig;
pub use audit::{AuditConfig, AuditWriterConfig, OnAuditFull, RouteAudit};
pub use auth::{
    ApiKeyStoreConfig, ApiKeysConfig, JwtIssuerConfig, TokenClientConfig, TokenEndpointConfig,
};
pub use credential::{CredentialConfig, CredentialScheme};
pub use duration::{DurationError, parse_duration};
pub use error::{ConfigError, ConfigErrors};
pub use identity::{FileIdentity, IdentityConfig, IdentitySource};
pub use idgate_auth::policy::{AllowEntry, AuthLayer, Requirement, RouteAuth, ScopeRule};
pub use incidents::{
    IncidentSeverity, IncidentsConfig, NotifyConfig as IncidentNotifyConfig, RuleSeverities,
};
pub use json_path::{JsonPath, JsonPathError, JsonStep};
pub use jwt_svid::{JwtSvidBundleFile, JwtSvidConfig};
pub use lifecycle::LifecycleConfig;
pub use limits::{
    LimitKeyPart, LockoutBy, LockoutConfig, OnStateError, Rate, RateLimitConfig, TierMatch,
    TierRule,
};
pub use listener::{ClientAuth, ListenerConfig, ProxyProtocolConfig};
pub use log::{LogConfig, LogFilterError, LogFormat, check_log_filter};
pub use masking::{
    CallerMasking, MIN_PSEUDONYM_KEY_BYTES, MaskProfileConfig, MaskingConfig, NonJson,
    ProfileChoice, RouteMasking,
};
pub use network::{CidrRules, NetworkConfig, UserAgentPattern, UserAgentPatternError};
pub use ownership::{
    DEFAULT_RETENTION, ListOwnership, ListRule, MAX_NAMESPACE_LEN, OwnershipConfig,
    OwnershipNamespace, RouteOwnership, ShareGroup,
};
pub use proxies::{TrustedProxies, TrustedProxyError};
pub use resilience::{FallbackCache, FallbackConfig, Faults, RouteResilience, TestingConfig};
pub use routes::{RouteConfig, RouteNetwork, body_needs_opt_in};
pub use routing::fold_template;
pub use schema::{RouteSchema, SchemaError, compile_schema};
pub use siem::{
    BufferLimits, Facility, OnFull, Severity, SiemConfig, SiemSink, SinkKind, SyslogSinkConfig,
    SyslogTls,
};
pub use state::{RedisConfig, RedisNodes, StateBackend};
pub use upstream_resilience::{
    BreakerConfig, HealthConfig, RetryBudgetConfig, RetryConfig, RetryOn,
};
pub use upstreams::{ClientKind, UpstreamConfig};
pub use webhooks::{
    DEFAULT_TOLERANCE, DEFAULT_WEBHOOK_BODY, EventTimeConfig, EventTimeFormat, RetryPolicy,
    SubscriberConfig, WebhookConfig, WebhookScheme,
};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub workers: usize,
    pub listener: ListenerConfig,
    pub identity: IdentityConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub api_keys: Option<ApiKeysConfig>,
    pub jwt_issuers: Vec<JwtIssuerConfig>,
    pub token_endpoint: Option<TokenEndpointConfig>,
    /// `[jwt_svid]`: SPIFFE JWT-SVIDs for routes listing the `jwt_svid` layer.
    pub jwt_svid: Option<JwtSvidConfig>,
    /// Where Vault is and how to log in, for `vault:` references.
    pub vault: Option<vault::VaultConfig>,
    /// Where shared state (counters, lockouts, ownership, the outbox) is kept.
    pub state: StateBackend,
    /// `[network]`: address and user-agent rules for every caller.
    pub network: NetworkConfig,
    /// Named rate limits, which routes apply by name.
    pub rate_limits: Vec<RateLimitConfig>,
    /// Which callers are in which rate-limit tier; the first match wins.
    pub tiers: Vec<TierRule>,
    /// Lockouts after failed authentications; none without a `[lockout]` section.
    pub lockout: Option<LockoutConfig>,
    /// Object ownership: the default retention and the sharing groups.
    pub ownership: OwnershipConfig,
    /// Response masking: the named profiles routes apply.
    pub masking: MaskingConfig,
    /// `[siem]`: where audit events are exported; none without the section.
    pub siem: Option<SiemConfig>,
    /// Provider webhooks: their endpoints, outboxes and subscribers.
    pub webhooks: Vec<WebhookConfig>,
    /// `[audit]`: the tamper-evident audit trail; `None` when absent or disabled.
    pub audit: Option<AuditConfig>,
    /// `[incidents]`: incident detection, storage and notification; none without the section.
    pub incidents: Option<IncidentsConfig>,
    /// `[lifecycle]`: how the gateway drains when told to stop.
    pub lifecycle: LifecycleConfig,
    /// Things that work but deserve a word at start-up (`http://` upstreams, say).
    pub warnings: Vec<String>,
    /// `[fallback]`: the key and bounds of the cache of last good answers.
    pub fallback: Option<FallbackConfig>,
    /// `[testing]`: rehearsal switches (fault injection).
    pub testing: TestingConfig,
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "workers",
    "listener",
    "identity",
    "admin",
    "log",
    "upstreams",
    "routes",
    "api_keys",
    "jwt_issuers",
    "token_endpoint",
    "jwt_svid",
    "vault",
    "state",
    "network",
    "rate_limits",
    "tiers",
    "lockout",
    "ownership",
    "masking",
    "siem",
    "webhooks",
    "audit",
    "fallback",
    "testing",
    "incidents",
    "lifecycle",
];

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Reads and validates a configuration file.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    parse(file, &read(file)?)
}

/// Reads and validates a configuration file as [`load`] does, except that no secret is
/// looked at: secret references are parsed, not checked (an environment variable set, a
/// file readable, a token's module and PIN there). For a tool that uses one section without
/// the gateway's environment (`idgate audit verify --config` needs no upstream secret), and
/// reads what it needs itself.
pub fn load_without_secrets(file: &Path) -> Result<Config, ConfigErrors> {
    let env_socket = std::env::var(idgate_tls::WorkloadEndpoint::ENV).ok();
    let env_socket = env_socket.as_deref().filter(|s| !s.is_empty());
    parse_checked(file, &read(file)?, env_socket, false)
}

fn read(file: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            key: String::new(),
            reason: format!("cannot read: {}", io_reason(&e)),
        }])
    })
}

/// Validates configuration text; `file` names it in errors and anchors relative paths.
/// `SPIFFE_ENDPOINT_SOCKET` is read from the process's environment.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let env_socket = std::env::var(idgate_tls::WorkloadEndpoint::ENV).ok();
    parse_with_env(file, text, env_socket.as_deref().filter(|s| !s.is_empty()))
}

/// [`parse`] with the value `SPIFFE_ENDPOINT_SOCKET` has, for tests.
pub fn parse_with_env(
    file: &Path,
    text: &str,
    env_socket: Option<&str>,
) -> Result<Config, ConfigErrors> {
    parse_checked(file, text, env_socket, true)
}

/// [`parse_with_env`], checking that secrets are available when `check_secrets`.
fn parse_checked(
    file: &Path,
    text: &str,
    env_socket: Option<&str>,
    check_secrets: bool,
) -> Result<Config, ConfigErrors> {
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut cx = Ctx {
        file,
        base,
        errors: Vec::new(),
        check_secrets,
    };
    let mut table: raw::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            // toml's own rendering quotes the offending line, which may hold a pasted
            // secret: only the position and the message are reported.
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {col}: ")
                })
                .unwrap_or_default();
            cx.err(
                "",
                format!("not valid TOML: {at}{}", e.message().trim_end()),
            );
            return Err(ConfigErrors(cx.errors));
        }
    };
    for key in table.keys() {
        if !TOP_LEVEL_KEYS.contains(&key.as_str()) {
            cx.errors.push(ConfigError {
                file: file.to_owned(),
                key: key.clone(),
                reason: format!(
                    "unknown key; expected one of: {}",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            });
        }
    }

    let workers = match table.remove("workers") {
        None => default_workers(),
        Some(v) => match cx.section::<i64>("workers", v) {
            Some(n @ 1..=1024) => n as usize,
            Some(_) => {
                cx.err("workers", "must be between 1 and 1024");
                1
            }
            None => 1,
        },
    };

    let listener = match table.remove("listener") {
        None => {
            cx.err(
                "listener",
                "missing: the gateway needs a [listener] with a bind address",
            );
            None
        }
        Some(v) => cx
            .section::<raw::Listener>("listener", v)
            .map(|l| listener::parse(&mut cx, l)),
    };
    let identity = match table.remove("identity") {
        None => {
            cx.err(
                "identity",
                "missing: the gateway needs [identity] with its SVID and trust bundles",
            );
            None
        }
        Some(v) => cx
            .section::<raw::Identity>("identity", v)
            .map(|i| identity::parse(&mut cx, i, env_socket)),
    };
    let admin = match table.remove("admin") {
        None => Some(AdminConfig::default()),
        Some(v) => cx
            .section::<raw::Admin>("admin", v)
            .map(|a| admin::parse(&mut cx, a)),
    };
    let log = match table.remove("log") {
        None => Some(LogConfig::default()),
        Some(v) => cx
            .section::<raw::Log>("log", v)
            .map(|l| log::parse(&mut cx, l)),
    };

    let mut warnings = Vec::new();
    if let Some(i) = identity.as_ref().and_then(IdentityConfig::files)
        && let Ok(meta) = std::fs::metadata(&i.svid_key)
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warnings.push(format!(
                "identity.svid_key {} has mode {mode:o}: group or others can read the gateway's private key (chmod 600)",
                i.svid_key.display()
            ));
        }
    }
    let network = match table.remove("network") {
        None => Some(NetworkConfig::default()),
        Some(v) => cx
            .section::<raw::Network>("network", v)
            .map(|n| network::parse(&mut cx, n)),
    };
    let vault = vault::section(&mut cx, &mut table, text, &mut warnings);
    let state = match table.remove("state") {
        None => StateBackend::default(),
        Some(v) => cx
            .section::<state::RawState>("state", v)
            .map_or_else(StateBackend::default, |s| state::parse(&mut cx, s)),
    };
    if let (Some(l), Some(a)) = (&listener, &admin)
        && l.bind.port() == a.bind.port()
        && l.bind.port() != 0
        && (l.bind.ip() == a.bind.ip()
            || l.bind.ip().is_unspecified()
            || a.bind.ip().is_unspecified())
    {
        // Caught here rather than as "address in use" when the second one is bound.
        cx.err(
            "listener.bind",
            format!(
                "{} overlaps admin.bind {} (the admin listener's default is 127.0.0.1:9901): give them different ports",
                l.bind, a.bind
            ),
        );
    }
    if let Some(a) = &admin
        && !a.bind.ip().is_loopback()
    {
        warnings.push(format!(
            "admin.bind {} is not a loopback address: health and metrics are reachable from the network",
            a.bind
        ));
    }

    // Upstreams that are there but invalid: their own errors say why, so routes naming them
    // add nothing.
    let mut broken_upstreams = HashSet::new();
    let upstreams = array::<raw::Upstream>(&mut cx, &mut table, "upstreams")
        .into_iter()
        .map(|(i, u)| {
            let name = u.name.clone();
            let valid = upstreams::parse(&mut cx, i, u, &mut warnings);
            if valid.is_none() {
                broken_upstreams.insert(name);
            }
            valid
        })
        .collect::<Vec<_>>();
    let mut trust_domains: HashSet<TrustDomain> = identity
        .as_ref()
        .map(IdentityConfig::configured_trust_domains)
        .unwrap_or_default();
    let api_keys = table
        .remove("api_keys")
        .and_then(|v| cx.section::<raw::ApiKeys>("api_keys", v))
        .and_then(|a| {
            let shared = matches!(state, StateBackend::Redis(_));
            auth::api_keys(&mut cx, a, shared, &mut warnings)
        });
    let raw_issuers = array::<raw::JwtIssuer>(&mut cx, &mut table, "jwt_issuers");
    let jwt_issuers = auth::jwt_issuers(&mut cx, raw_issuers);
    let token_endpoint = table
        .remove("token_endpoint")
        .and_then(|v| cx.section::<raw::TokenEndpoint>("token_endpoint", v))
        .and_then(|t| auth::token_endpoint(&mut cx, t));
    // With the Workload API (`identity.workload_api`) the JWT bundles may come from the
    // agent; otherwise `[[jwt_svid.bundles]]` is required.
    let bundles_from_agent = identity
        .as_ref()
        .is_some_and(|i| i.workload_api().is_some());
    let jwt_svid_section = table.remove("jwt_svid");
    let jwt_svid_present = jwt_svid_section.is_some();
    let jwt_svid = jwt_svid_section
        .and_then(|v| cx.section::<jwt_svid::RawJwtSvid>("jwt_svid", v))
        .and_then(|j| jwt_svid::parse(&mut cx, j, bundles_from_agent));
    let limits = limits::sections(&mut cx, &mut table);
    let siem = table
        .remove("siem")
        .and_then(|v| cx.section::<siem::RawSiem>("siem", v))
        .map(|s| siem::parse(&mut cx, s));
    let lifecycle = table
        .remove("lifecycle")
        .and_then(|v| cx.section::<lifecycle::RawLifecycle>("lifecycle", v))
        .map(|l| lifecycle::parse(&mut cx, l))
        .unwrap_or_default();
    let raw_routes = array::<raw::Route>(&mut cx, &mut table, "routes");
    let mut issuers: auth::IssuerNames = jwt_issuers
        .iter()
        .map(|j| (j.name.clone(), j.issuer.clone()))
        .collect();
    if let Some(t) = &token_endpoint {
        issuers.push((auth::TOKEN_ENDPOINT_ISSUER.to_owned(), t.issuer.clone()));
    }
    let ownership = table
        .remove("ownership")
        .and_then(|v| cx.section::<ownership::RawOwnership>("ownership", v))
        .map(|o| ownership::section(&mut cx, o, &issuers))
        .unwrap_or_default();
    let (masking, broken_profiles) = table
        .remove("masking")
        .and_then(|v| cx.section::<masking::RawMasking>("masking", v))
        .map(|m| masking::section(&mut cx, m, &mut warnings))
        .unwrap_or_default();
    let audit_section = table.remove("audit");
    let audit_present = audit_section.is_some();
    let audit = audit_section
        .and_then(|v| cx.section::<audit::RawAudit>("audit", v))
        .and_then(|a| audit::parse(&mut cx, a));
    // The SIEM export carries the audit trail's records: without a trail it would carry
    // nothing, silently. (A broken [audit] has its own errors already.)
    let audit_broken = audit_present && audit.is_none() && !cx.errors.is_empty();
    if siem.is_some() && audit.is_none() && !audit_broken {
        cx.err(
            "siem",
            "[siem] exports the audit trail's records: it needs an enabled [audit] section",
        );
    }
    let fallback_present = table.contains_key("fallback");
    let fallback = table
        .remove("fallback")
        .and_then(|v| cx.section::<resilience::RawFallbackSection>("fallback", v))
        .and_then(|f| resilience::section(&mut cx, f));
    let testing = table
        .remove("testing")
        .and_then(|v| cx.section::<resilience::RawTesting>("testing", v))
        .map(resilience::testing)
        .unwrap_or_default();
    let layers = routes::Layers {
        api_keys: api_keys.is_some(),
        jwt: !jwt_issuers.is_empty() || token_endpoint.is_some(),
        // A broken [jwt_svid] has its own errors: routes using it add none.
        jwt_svid: jwt_svid_present,
        issuers,
        rate_limits: limits.declared.clone(),
        ownership: ownership.clone(),
        masking: masking::ProfileNames {
            loaded: masking.profiles.iter().map(|p| p.name.clone()).collect(),
            broken: broken_profiles,
        },
        audit: audit.is_some() || (audit_present && !cx.errors.is_empty()),
        fallback: fallback_present,
        fault_injection: testing.fault_injection,
    };
    let raw_webhooks = array::<webhooks::RawWebhook>(&mut cx, &mut table, "webhooks");
    // A JWT-SVID's subject may be of a trust domain known by its JWT bundle only.
    trust_domains.extend(
        jwt_svid
            .iter()
            .flat_map(|j| &j.bundles)
            .map(|b| b.trust_domain.clone()),
    );
    let routes = routes::parse(
        &mut cx,
        raw_routes,
        (&upstreams, &broken_upstreams),
        &trust_domains,
        &layers,
    );
    let upstream_names: Vec<&str> = upstreams
        .iter()
        .flatten()
        .map(|u| u.name.as_str())
        .collect();
    warnings.extend(routing::shadow_warnings(&routes, &upstream_names));
    warnings.extend(resilience::fault_warning(testing, &routes));
    warnings.extend(ownership::namespace_warnings(&routes));
    let incidents = table
        .remove("incidents")
        .and_then(|v| cx.section::<incidents::RawIncidents>("incidents", v))
        .map(|i| {
            let names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
            incidents::parse(&mut cx, i, &names, &mut warnings)
        });
    if token_endpoint.is_some() {
        for r in &routes {
            if matches!(
                r.path.as_str(),
                "/oauth2/token"
                    | "/.well-known/jwks.json"
                    | "/.well-known/oauth-authorization-server"
            ) {
                cx.err(
                    "routes",
                    format!(
                        "route \"{}\": {} is served by the built-in [token_endpoint]; pick another path",
                        r.name, r.path
                    ),
                );
            }
        }
    }

    let webhooks = webhooks::section(
        &mut cx,
        raw_webhooks,
        &webhooks::Neighbours {
            routes: &routes,
            token_endpoint: token_endpoint.is_some(),
            profiles: &layers.masking,
            state: &state,
        },
    );
    if !webhooks.is_empty()
        && listener
            .as_ref()
            .is_some_and(|l| l.client_auth == ClientAuth::Required)
    {
        warnings.push(
            "webhooks: listener.client_auth is \"required\", so a provider must present a certificate from a trusted bundle to post events; providers usually cannot (set it to \"optional\": routes still require their own authentication)".to_owned(),
        );
    }

    match (listener, identity, admin, log, network) {
        (Some(listener), Some(identity), Some(admin), Some(log), Some(network))
            if cx.errors.is_empty() =>
        {
            Ok(Config {
                file: file.to_owned(),
                workers,
                listener,
                identity,
                admin,
                log,
                upstreams: upstreams.into_iter().flatten().collect(),
                routes,
                api_keys,
                jwt_issuers,
                token_endpoint,
                jwt_svid,
                vault,
                state,
                network,
                rate_limits: limits.rate_limits,
                tiers: limits.tiers,
                lockout: limits.lockout,
                ownership,
                masking,
                siem,
                webhooks,
                audit,
                incidents,
                lifecycle,
                warnings,
                fallback,
                testing,
            })
        }
        _ => Err(ConfigErrors(cx.errors)),
    }
}

/// Deserializes each element of an array of tables on its own, so one bad element does not
/// hide the problems of the others.
fn array<T: DeserializeOwned>(
    cx: &mut Ctx<'_>,
    table: &mut raw::Table,
    key: &str,
) -> Vec<(usize, T)> {
    match table.remove(key) {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, v)| cx.section::<T>(&format!("{key}[{i}]"), v).map(|t| (i, t)))
            .collect(),
        Some(_) => {
            cx.err(key, format!("must be an array of tables: write [[{key}]]"));
            Vec::new()
        }
    }
}
