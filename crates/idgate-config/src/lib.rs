//! The idgate configuration: the TOML schema, loading, and validation that names the file,
//! the key path and the reason for every problem it finds.
//!
//! Loading turns the file into a [`Config`] of typed values (`SocketAddr`, `SpiffeIdPattern`,
//! `SecretRef`, `Duration`, …); nothing downstream parses strings again. Validation goes on
//! past the first problem so that `idgate check` can report them all at once.

mod auth;
mod duration;
mod proxies;
mod raw;
mod routing;
pub mod vault;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use http::uri::{Scheme, Uri};
use idgate_secrets::SecretRef;
use idgate_tls::{SpiffeIdPattern, TlsVersion, TrustDomain};
use serde::de::DeserializeOwned;

pub use auth::{ApiKeysConfig, JwtIssuerConfig, TokenClientConfig, TokenEndpointConfig};
pub use duration::parse_duration;
pub use idgate_auth::policy::{AllowEntry, AuthLayer, Requirement, RouteAuth, ScopeRule};
pub use proxies::TrustedProxies;
pub use routing::fold_template;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key path, with array indexes: `routes[2].allow[0]`. Empty for the whole file.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason)
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Whether the listener demands a client certificate during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub bind: SocketAddr,
    pub tls_min_version: TlsVersion,
    pub client_auth: ClientAuth,
    pub handshake_timeout: Duration,
    /// HTTP/1.1: a keep-alive connection with no request for this long is closed.
    /// HTTP/2: the interval of keep-alive pings (a peer that does not answer is dropped).
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_ip: usize,
    /// A connection older than this is closed once its in-flight requests end (HTTP/1.1)
    /// or told to go away (HTTP/2); `None`: only the client certificate's expiry ends it.
    pub max_connection_age: Option<Duration>,
    pub max_header_bytes: usize,
    /// A response the caller stops reading: when writing to it makes no progress for this
    /// long, the HTTP/1.1 connection is closed or the HTTP/2 stream reset.
    pub send_timeout: Duration,
    /// Proxies whose `x-forwarded-for` (and other forwarding headers) are passed on; from
    /// any other peer they are replaced by the peer's own address.
    pub trusted_proxies: TrustedProxies,
}

#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub svid_cert: PathBuf,
    pub svid_key: PathBuf,
    pub trust_bundles: Vec<(TrustDomain, PathBuf)>,
    /// How often the files are checked for changes besides the directory watch.
    pub poll_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter directive, such as `info` or `info,idgate_proxy=debug`.
    pub level: String,
}

pub use idgate_secrets::credential::{CredentialConfig, CredentialScheme};

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// Scheme and authority of the upstream, such as `https://verification.didit.me`.
    pub origin: Uri,
    /// Path prefix put before every forwarded path (empty or `/v1`, never ending in `/`).
    pub base_path: String,
    pub ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle: usize,
    /// Connections open to the upstream at once, in use or idle (`http2 = true`: requests
    /// in flight).
    pub max_connections: usize,
    /// Requests that may wait for a connection when all are busy.
    pub max_pending: usize,
    /// The longest such a wait.
    pub pending_timeout: Duration,
    /// Largest request body buffered for signing (signature schemes need the whole body).
    pub max_body_bytes: u64,
    /// Whether the caller's address is sent in `x-forwarded-for` (default: yes). Turn it off
    /// for outside providers that have no need for internal addresses.
    pub forwarded_for: bool,
    /// `https://` only: offer HTTP/2 by ALPN (one multiplexed connection) instead of the
    /// gateway's own HTTP/1.1 client.
    pub http2: bool,
    /// Which HTTP/1.1 client talks to the upstream.
    pub client: ClientKind,
    /// The upstream reads paths without regard to case (`/Export` is `/export` to it), so
    /// the literal segments of its routes are matched without case too.
    pub case_insensitive_paths: bool,
    pub credential: Option<CredentialConfig>,
}

/// The HTTP/1.1 client of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientKind {
    /// The gateway's own client (strict framing, run in the request's task).
    #[default]
    Native,
    /// hyper's client, as upstreams with `http2 = true` use: the fallback.
    Hyper,
}

impl UpstreamConfig {
    pub fn is_tls(&self) -> bool {
        self.origin.scheme() == Some(&Scheme::HTTPS)
    }
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub methods: Vec<Method>,
    /// A path template: `/v3/session/{session_id}/decision/`.
    pub path: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Literal segments match without case: the upstream's `case_insensitive_paths`.
    pub case_insensitive: bool,
    /// Who may use the route (default deny): SPIFFE IDs and patterns, `apikey:NAME`,
    /// `client:ID`, `sub:SUBJECT`.
    pub allow: Vec<AllowEntry>,
    /// The authentication layers the route requires (default: mutual TLS).
    pub auth: RouteAuth,
    /// The scopes the route requires, per method.
    pub scopes: ScopeRule,
    /// Whether a `GET`, `HEAD`, `OPTIONS` or `DELETE` request may carry a body.
    pub allow_body: bool,
}

/// Methods whose requests carry no body unless a route says otherwise: their semantics
/// define none, and an upstream that ignores one leaves its bytes to the next request.
pub fn body_needs_opt_in(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE
    )
}

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
    /// Where Vault is and how to log in, for `vault:` references.
    pub vault: Option<vault::VaultConfig>,
    /// Things that work but deserve a word at start-up (`http://` upstreams, say).
    pub warnings: Vec<String>,
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
    "vault",
];

struct Ctx<'a> {
    file: &'a Path,
    base: &'a Path,
    errors: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn err(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            key: key.into(),
            reason: reason.into(),
        });
    }

    /// Deserializes one section, recording a serde error with its full key path.
    fn section<T: DeserializeOwned>(&mut self, key: &str, value: toml::Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let path = if inner == "." || inner.is_empty() {
                    key.to_owned()
                } else {
                    format!("{key}.{inner}")
                };
                let reason = without_values(&e.into_inner().to_string());
                self.err(path, reason);
                None
            }
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.base.join(p)
    }

    fn existing_file(&mut self, key: &str, p: &str) -> PathBuf {
        let path = self.path(p);
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => self.err(key, format!("{} is not a regular file", path.display())),
            Err(e) => self.err(
                key,
                format!("cannot read {}: {}", path.display(), io_reason(&e)),
            ),
        }
        path
    }

    fn duration(&mut self, key: &str, v: Option<String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(&s) {
                Ok(d) if d.is_zero() => {
                    self.err(key, "must be more than zero");
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.err(key, e);
                    default
                }
            },
        }
    }

    fn socket_addr(&mut self, key: &str, s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| {
            self.err(
                key,
                format!("\"{s}\" is not an address:port like \"127.0.0.1:8443\""),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }
}

/// serde's type errors quote the value they found (`invalid type: string "sk_live_…",
/// expected …`); a misplaced secret must not be printed, so only the expectation is kept.
fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return match rest.rsplit_once(", expected ") {
                Some((_, expected)) => format!(
                    "wrong {}: expected {expected}",
                    prefix.trim_end_matches([':', ' '])
                ),
                None => format!("wrong {}", prefix.trim_end_matches([':', ' '])),
            };
        }
    }
    message.to_owned()
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => e.to_string(),
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Reads and validates a configuration file.
pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            key: String::new(),
            reason: format!("cannot read: {}", io_reason(&e)),
        }])
    })?;
    parse(file, &text)
}

/// Validates configuration text; `file` names it in errors and anchors relative paths.
pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let base = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut cx = Ctx {
        file,
        base,
        errors: Vec::new(),
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
            .map(|l| listener(&mut cx, l)),
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
            .map(|i| identity(&mut cx, i)),
    };
    let admin = match table.remove("admin") {
        None => Some(AdminConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 9901)),
        }),
        Some(v) => cx.section::<raw::Admin>("admin", v).map(|a| AdminConfig {
            bind: cx.socket_addr("admin.bind", &a.bind),
        }),
    };
    let log = match table.remove("log") {
        None => Some(LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }),
        Some(v) => cx.section::<raw::Log>("log", v).map(|l| log(&mut cx, l)),
    };

    let mut warnings = Vec::new();
    if let Some(i) = &identity
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
    let vault = vault::section(&mut cx, &mut table, text, &mut warnings);
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
            let valid = upstream(&mut cx, i, u, &mut warnings);
            if valid.is_none() {
                broken_upstreams.insert(name);
            }
            valid
        })
        .collect::<Vec<_>>();
    let trust_domains: HashSet<TrustDomain> = identity
        .as_ref()
        .map(|i| i.trust_bundles.iter().map(|(td, _)| td.clone()).collect())
        .unwrap_or_default();
    let api_keys = table
        .remove("api_keys")
        .and_then(|v| cx.section::<raw::ApiKeys>("api_keys", v))
        .and_then(|a| auth::api_keys(&mut cx, a));
    let jwt_issuers = array::<raw::JwtIssuer>(&mut cx, &mut table, "jwt_issuers")
        .into_iter()
        .filter_map(|(i, j)| auth::jwt_issuer(&mut cx, i, j))
        .collect::<Vec<_>>();
    let token_endpoint = table
        .remove("token_endpoint")
        .and_then(|v| cx.section::<raw::TokenEndpoint>("token_endpoint", v))
        .and_then(|t| auth::token_endpoint(&mut cx, t));
    let raw_routes = array::<raw::Route>(&mut cx, &mut table, "routes");
    let mut issuers: auth::IssuerNames = jwt_issuers
        .iter()
        .map(|j| (j.name.clone(), j.issuer.clone()))
        .collect();
    if let Some(t) = &token_endpoint {
        issuers.push(("token_endpoint".to_owned(), t.issuer.clone()));
    }
    let layers = Layers {
        api_keys: api_keys.is_some(),
        jwt: !jwt_issuers.is_empty() || token_endpoint.is_some(),
        issuers,
    };
    let routes = routes(
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

    match (listener, identity, admin, log) {
        (Some(listener), Some(identity), Some(admin), Some(log)) if cx.errors.is_empty() => {
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
                vault,
                warnings,
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

fn listener(cx: &mut Ctx<'_>, l: raw::Listener) -> ListenerConfig {
    let bind = cx.socket_addr("listener.bind", &l.bind);
    let tls_min_version = match l.tls_min_version.as_deref() {
        None | Some("1.2") => TlsVersion::Tls12,
        Some("1.3") => TlsVersion::Tls13,
        Some(other) => {
            cx.err(
                "listener.tls_min_version",
                format!("\"{other}\" is not allowed: use \"1.2\" or \"1.3\" (older versions are insecure)"),
            );
            TlsVersion::Tls12
        }
    };
    let client_auth = match l.client_auth.as_deref() {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some(other) => {
            cx.err(
                "listener.client_auth",
                format!("\"{other}\" is not allowed: use \"required\" or \"optional\""),
            );
            ClientAuth::Required
        }
    };
    let max_connections = match l.max_connections {
        None => 10_000,
        Some(0) => {
            cx.err("listener.max_connections", "must be more than zero");
            1
        }
        Some(n) => n as usize,
    };
    let max_connections_per_ip = match l.max_connections_per_ip {
        None => 512.min(max_connections),
        Some(0) => {
            cx.err("listener.max_connections_per_ip", "must be more than zero");
            1
        }
        Some(n) if n as usize > max_connections => {
            cx.err(
                "listener.max_connections_per_ip",
                "must not be more than listener.max_connections",
            );
            max_connections
        }
        Some(n) => n as usize,
    };
    let max_connection_age = l.max_connection_age.map(|v| {
        cx.duration(
            "listener.max_connection_age",
            Some(v),
            Duration::from_secs(3600),
        )
    });
    let max_header_bytes = match l.max_header_bytes {
        None => 64 * 1024,
        Some(n) if n < 1024 => {
            cx.err("listener.max_header_bytes", "must be at least 1024");
            1024
        }
        Some(n) => n as usize,
    };
    let mut trusted = Vec::new();
    for (n, entry) in l.trusted_proxies.iter().enumerate() {
        match TrustedProxies::parse_entry(entry) {
            Ok(net) => trusted.push(net),
            Err(reason) => cx.err(format!("listener.trusted_proxies[{n}]"), reason),
        }
    }
    ListenerConfig {
        bind,
        tls_min_version,
        client_auth,
        handshake_timeout: cx.duration(
            "listener.handshake_timeout",
            l.handshake_timeout,
            Duration::from_secs(10),
        ),
        idle_timeout: cx.duration(
            "listener.idle_timeout",
            l.idle_timeout,
            Duration::from_secs(60),
        ),
        max_connections,
        max_connections_per_ip,
        max_connection_age,
        max_header_bytes,
        send_timeout: cx.duration(
            "listener.send_timeout",
            l.send_timeout,
            Duration::from_secs(30),
        ),
        trusted_proxies: TrustedProxies::new(trusted),
    }
}

fn identity(cx: &mut Ctx<'_>, i: raw::Identity) -> IdentityConfig {
    let svid_cert = cx.existing_file("identity.svid_cert", &i.svid_cert);
    let svid_key = cx.existing_file("identity.svid_key", &i.svid_key);
    if i.trust_bundles.is_empty() {
        cx.err(
            "identity.trust_bundles",
            "at least one [[identity.trust_bundles]] is needed to verify callers",
        );
    }
    let mut seen = HashSet::new();
    let mut trust_bundles = Vec::new();
    for (n, b) in i.trust_bundles.into_iter().enumerate() {
        let key = format!("identity.trust_bundles[{n}]");
        let path = cx.existing_file(&format!("{key}.bundle"), &b.bundle);
        match TrustDomain::new(&b.trust_domain) {
            Ok(td) => {
                if !seen.insert(td.clone()) {
                    cx.err(
                        format!("{key}.trust_domain"),
                        format!("trust domain {td} is configured twice"),
                    );
                }
                trust_bundles.push((td, path));
            }
            Err(e) => cx.err(
                format!("{key}.trust_domain"),
                format!("\"{}\" is not a trust domain: {e}", b.trust_domain),
            ),
        }
    }
    IdentityConfig {
        svid_cert,
        svid_key,
        trust_bundles,
        poll_interval: cx.duration(
            "identity.poll_interval",
            i.poll_interval,
            Duration::from_secs(10),
        ),
    }
}

fn log(cx: &mut Ctx<'_>, l: raw::Log) -> LogConfig {
    let format = match l.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            cx.err(
                "log.format",
                format!("\"{other}\" is not allowed: use \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let level = l.level.unwrap_or_else(|| "info".to_owned());
    if let Err(e) = check_log_filter(&level) {
        cx.err("log.level", e);
    }
    LogConfig { format, level }
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `tracing` filter such as `info` or `info,idgate_proxy=debug`. A bare word that is
/// not a level would be read as a target name and silence everything else, so it is refused.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("\"{directive}\" has no target before '='")),
            None => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "\"{directive}\" is not a level: use trace, debug, info, warn, error or off, optionally as target=level"
            ));
        }
    }
    Ok(())
}

fn upstream(
    cx: &mut Ctx<'_>,
    i: usize,
    u: raw::Upstream,
    warnings: &mut Vec<String>,
) -> Option<UpstreamConfig> {
    let key = format!("upstreams[{i}]");
    let before = cx.errors.len();
    if u.name.is_empty() {
        cx.err(format!("{key}.name"), "must not be empty");
    }
    let uri: Option<Uri> = match u.url.parse::<Uri>() {
        Ok(uri) => Some(uri),
        Err(_) => {
            cx.err(format!("{key}.url"), format!("\"{}\" is not a URL", u.url));
            None
        }
    };
    let client = match u.client.as_deref() {
        None => None,
        Some("native") => Some(ClientKind::Native),
        Some("hyper") => Some(ClientKind::Hyper),
        Some(other) => {
            cx.err(
                format!("{key}.client"),
                format!("\"{other}\" is not a client: use \"native\" or \"hyper\""),
            );
            None
        }
    };
    let mut origin = None;
    let mut base_path = String::new();
    if let Some(uri) = uri {
        let scheme_ok = matches!(uri.scheme_str(), Some("https" | "http"));
        if !scheme_ok {
            cx.err(
                format!("{key}.url"),
                "must start with https:// (or http:// for in-cluster services)",
            );
        } else if uri.host().is_none() {
            cx.err(format!("{key}.url"), "has no host");
        } else if uri.query().is_some() || u.url.contains('#') {
            cx.err(format!("{key}.url"), "must not have a query or fragment");
        } else if u.url.contains('@') {
            cx.err(
                format!("{key}.url"),
                "must not carry user info; use [upstreams.credential]",
            );
        } else if u.http2 == Some(true) && client == Some(ClientKind::Native) {
            cx.err(
                format!("{key}.client"),
                "http2 = true uses hyper's client: leave client out, or set it to \"hyper\"",
            );
        } else if u.http2 == Some(true) && uri.scheme_str() == Some("http") {
            cx.err(
                format!("{key}.http2"),
                "HTTP/2 is offered over TLS only: use an https:// url, or leave http2 out",
            );
        } else {
            base_path = uri.path().trim_end_matches('/').to_owned();
            if uri.scheme_str() == Some("http") {
                let loopback = uri
                    .host()
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                    .is_some_and(|h| {
                        h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
                    });
                if !loopback {
                    warnings.push(format!(
                        "upstream {}: {} is plain http://; traffic to it, including the injected credential, is not encrypted",
                        u.name, u.url
                    ));
                }
            }
            let mut parts = http::uri::Parts::default();
            parts.scheme = uri.scheme().cloned();
            parts.authority = uri.authority().cloned();
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            origin = Uri::from_parts(parts).ok();
        }
    }
    let ca =
        u.ca.as_deref()
            .map(|p| cx.existing_file(&format!("{key}.ca"), p));
    let credential = u.credential.and_then(|c| credential(cx, &key, &u.name, c));
    let pool_max_idle = u.pool_max_idle.map_or(64, |n| n as usize);
    let request_timeout = cx.duration(
        &format!("{key}.request_timeout"),
        u.request_timeout,
        Duration::from_secs(30),
    );
    let max_connections = match u.max_connections {
        None => 256,
        Some(0) => {
            cx.err(format!("{key}.max_connections"), "must be more than zero");
            1
        }
        Some(n) => n as usize,
    };
    let max_pending = u.max_pending.map_or(max_connections, |n| n as usize);
    // A wait past the request timeout would end in a 504 before it could end in a 503.
    let pending_timeout = match u.pending_timeout {
        None => request_timeout.min(Duration::from_secs(5)),
        set => {
            let d = cx.duration(
                &format!("{key}.pending_timeout"),
                set,
                Duration::from_secs(5),
            );
            if d > request_timeout {
                cx.err(
                    format!("{key}.pending_timeout"),
                    "must not be longer than request_timeout",
                );
            }
            d
        }
    };
    let out = UpstreamConfig {
        connect_timeout: cx.duration(
            &format!("{key}.connect_timeout"),
            u.connect_timeout,
            Duration::from_secs(5),
        ),
        request_timeout,
        max_connections,
        max_pending,
        pending_timeout,
        pool_idle_timeout: cx.duration(
            &format!("{key}.pool_idle_timeout"),
            u.pool_idle_timeout,
            Duration::from_secs(90),
        ),
        name: u.name,
        origin: origin?,
        base_path,
        ca,
        pool_max_idle,
        max_body_bytes: u.max_body_bytes.unwrap_or(10 * 1024 * 1024),
        forwarded_for: u.forwarded_for.unwrap_or(true),
        http2: u.http2.unwrap_or(false),
        client: client.unwrap_or_default(),
        case_insensitive_paths: u.case_insensitive_paths.unwrap_or(false),
        credential,
    };
    (cx.errors.len() == before).then_some(out)
}

fn credential(
    cx: &mut Ctx<'_>,
    key: &str,
    upstream: &str,
    c: raw::Credential,
) -> Option<CredentialConfig> {
    let key = format!("{key}.credential");
    let before = cx.errors.len();
    let scheme_name = c.scheme.as_deref().unwrap_or("header");
    // Each scheme takes its own keys; a key of another scheme is a mistake worth naming.
    let allowed: &[&str] = match scheme_name {
        "header" => &["header", "prefix", "secret"],
        "sumsub" => &["app_token", "secret"],
        "veriff" => &["client", "secret"],
        "oauth2_client_credentials" => &["token_url", "client_id", "client_secret", "scope"],
        other => {
            cx.err(
                format!("{key}.scheme"),
                format!("\"{other}\" is not a scheme: use header, sumsub, veriff or oauth2_client_credentials"),
            );
            return None;
        }
    };
    for (name, present) in [
        ("header", c.header.is_some()),
        ("prefix", c.prefix.is_some()),
        ("secret", c.secret.is_some()),
        ("app_token", c.app_token.is_some()),
        ("client", c.client.is_some()),
        ("token_url", c.token_url.is_some()),
        ("client_id", c.client_id.is_some()),
        ("client_secret", c.client_secret.is_some()),
        ("scope", c.scope.is_some()),
    ] {
        if present && !allowed.contains(&name) {
            cx.err(
                format!("{key}.{name}"),
                format!("not used by scheme \"{scheme_name}\""),
            );
        }
    }
    let secret_ref = |cx: &mut Ctx<'_>, name: &str, v: Option<String>| -> Option<SecretRef> {
        let Some(v) = v else {
            cx.err(
                format!("{key}.{name}"),
                format!("missing: scheme \"{scheme_name}\" needs it"),
            );
            return None;
        };
        let r = SecretRef::parse(&v, cx.base)
            .map_err(|e| cx.err(format!("{key}.{name}"), e.to_string()))
            .ok()?;
        if let Err(e) = r.check_available() {
            cx.err(format!("{key}.{name}"), e.to_string());
        }
        Some(r)
    };
    let scheme = match scheme_name {
        "header" => {
            let header = match c
                .header
                .as_deref()
                .map(|h| http::HeaderName::from_bytes(h.as_bytes()))
            {
                Some(Ok(h)) => Some(h),
                Some(Err(_)) => {
                    cx.err(format!("{key}.header"), "not a header name");
                    None
                }
                None => {
                    cx.err(
                        format!("{key}.header"),
                        "missing: name the header the secret is sent in",
                    );
                    None
                }
            };
            let prefix = c.prefix.unwrap_or_default();
            if prefix.bytes().any(|b| b.is_ascii_control()) {
                cx.err(
                    format!("{key}.prefix"),
                    "must not contain control characters",
                );
            }
            let secret = secret_ref(cx, "secret", c.secret);
            CredentialScheme::Header {
                header: header?,
                prefix,
                secret: secret?,
            }
        }
        "sumsub" => {
            let app_token = secret_ref(cx, "app_token", c.app_token);
            let secret = secret_ref(cx, "secret", c.secret);
            CredentialScheme::Sumsub {
                app_token: app_token?,
                secret: secret?,
            }
        }
        "veriff" => {
            let client = secret_ref(cx, "client", c.client);
            let secret = secret_ref(cx, "secret", c.secret);
            CredentialScheme::Veriff {
                client: client?,
                secret: secret?,
            }
        }
        _ => {
            let token_url = match c.token_url.as_deref().map(str::parse::<Uri>) {
                Some(Ok(u))
                    if u.host().is_some()
                        && (u.scheme_str() == Some("https")
                            || (u.scheme_str() == Some("http") && auth::is_loopback_uri(&u))) =>
                {
                    Some(u)
                }
                Some(_) => {
                    cx.err(
                        format!("{key}.token_url"),
                        "must be an https:// URL (http:// only on loopback): the client secret is sent to it",
                    );
                    None
                }
                None => {
                    cx.err(
                        format!("{key}.token_url"),
                        "missing: the provider's token endpoint",
                    );
                    None
                }
            };
            if c.client_id.as_deref().is_none_or(str::is_empty) {
                cx.err(format!("{key}.client_id"), "missing");
            }
            let client_secret = secret_ref(cx, "client_secret", c.client_secret);
            CredentialScheme::OAuth2ClientCredentials {
                token_url: token_url?,
                client_id: c.client_id.unwrap_or_default(),
                client_secret: client_secret?,
                scope: c.scope,
            }
        }
    };
    let refresh_interval = cx.duration(
        &format!("{key}.refresh_interval"),
        c.refresh_interval,
        Duration::from_secs(5),
    );
    let overlap = cx.duration(
        &format!("{key}.overlap"),
        c.overlap,
        Duration::from_secs(30),
    );
    (cx.errors.len() == before).then(|| CredentialConfig {
        scheme,
        label: c.label.unwrap_or_else(|| upstream.to_owned()),
        refresh_interval,
        overlap,
    })
}

/// Which authentication layers the configuration provides.
struct Layers {
    api_keys: bool,
    jwt: bool,
    issuers: auth::IssuerNames,
}

fn routes(
    cx: &mut Ctx<'_>,
    raw: Vec<(usize, raw::Route)>,
    (upstreams, broken_upstreams): (&[Option<UpstreamConfig>], &HashSet<String>),
    trust_domains: &HashSet<TrustDomain>,
    layers: &Layers,
) -> Vec<RouteConfig> {
    let upstream_index: HashMap<&str, usize> = upstreams
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, u)| (u.name.as_str(), i))
        .collect();
    let mut upstream_names = HashSet::new();
    for (i, u) in upstreams.iter().enumerate() {
        if let Some(u) = u
            && !upstream_names.insert(u.name.as_str())
        {
            cx.err(
                format!("upstreams[{i}].name"),
                format!("upstream \"{}\" is defined twice", u.name),
            );
        }
    }

    let mut names = HashSet::new();
    // Path template → methods already taken, to find two routes claiming the same request.
    let mut by_path: BTreeMap<String, Vec<(Method, usize)>> = BTreeMap::new();
    let mut router = matchit::Router::new();
    // Template folded for matching without case → (route, template, upstream ignores case).
    let mut folded: HashMap<String, (usize, String, bool)> = HashMap::new();
    let mut out = Vec::new();
    for (i, r) in raw {
        let key = format!("routes[{i}]");
        let before = cx.errors.len();
        if r.name.is_empty() {
            cx.err(format!("{key}.name"), "must not be empty");
        } else if !names.insert(r.name.clone()) {
            cx.err(
                format!("{key}.name"),
                format!("route \"{}\" is defined twice", r.name),
            );
        }
        let mut methods = Vec::new();
        if r.methods.is_empty() {
            cx.err(
                format!("{key}.methods"),
                "list at least one method, like [\"GET\"]",
            );
        }
        for (m, s) in r.methods.iter().enumerate() {
            match Method::from_bytes(s.as_bytes()) {
                // TRACE echoes the request, credentials injected by the gateway included;
                // CONNECT turns the connection into a tunnel no policy applies to.
                Ok(Method::TRACE | Method::CONNECT) => cx.err(
                    format!("{key}.methods[{m}]"),
                    format!("{s} is never forwarded: TRACE would echo the injected credential back, CONNECT would open a tunnel past every check"),
                ),
                Ok(method) if s.bytes().all(|b| b.is_ascii_uppercase()) => methods.push(method),
                _ => cx.err(
                    format!("{key}.methods[{m}]"),
                    format!("\"{s}\" is not an HTTP method (write it in capitals)"),
                ),
            }
        }
        if !r.path.starts_with('/') {
            cx.err(format!("{key}.path"), "must start with '/'");
        } else if r.path.contains('?') || r.path.contains('#') {
            cx.err(
                format!("{key}.path"),
                "must not contain a query or fragment",
            );
        } else if let Some(taken) = by_path.get_mut(&r.path) {
            for m in &methods {
                if let Some((_, other)) = taken.iter().find(|(t, _)| t == m) {
                    cx.err(
                        format!("{key}.methods"),
                        format!("{m} {} is already routed by routes[{other}]", r.path),
                    );
                }
            }
            taken.extend(methods.iter().map(|m| (m.clone(), i)));
        } else if let Err(e) = router.insert(r.path.as_str(), ()) {
            cx.err(
                format!("{key}.path"),
                format!("\"{}\" cannot be routed: {e}", r.path),
            );
        } else {
            by_path.insert(
                r.path.clone(),
                methods.iter().map(|m| (m.clone(), i)).collect(),
            );
        }
        let upstream = match upstream_index.get(r.upstream.as_str()) {
            Some(&u) => Some(u),
            None if broken_upstreams.contains(&r.upstream) => None,
            None => {
                cx.err(
                    format!("{key}.upstream"),
                    format!("no upstream is named \"{}\"", r.upstream),
                );
                None
            }
        };
        let case_insensitive = upstream
            .and_then(|u| upstreams.iter().flatten().nth(u))
            .is_some_and(|u| u.case_insensitive_paths);
        if r.path.starts_with('/') {
            let entry = folded.entry(fold_template(&r.path)).or_insert((
                i,
                r.path.clone(),
                case_insensitive,
            ));
            if entry.1 != r.path && (entry.2 || case_insensitive) {
                cx.err(
                    format!("{key}.path"),
                    format!(
                        "\"{}\" and the path of routes[{}], \"{}\", differ only in case or parameter names, \
                         and one of them goes to an upstream with case_insensitive_paths: no request could be told apart",
                        r.path, entry.0, entry.1
                    ),
                );
            }
            entry.2 |= case_insensitive;
        }
        if r.allow.is_empty() {
            cx.err(
                format!("{key}.allow"),
                "is empty, so no caller could ever use this route",
            );
        }
        let auth = auth::route_auth(cx, &key, r.auth);
        let scopes = auth::route_scopes(cx, &key, r.scopes, &methods);
        let mut allow = Vec::new();
        for (a, s) in r.allow.iter().enumerate() {
            let Some(entry) =
                auth::allow_entry(cx, format!("{key}.allow[{a}]"), s, &layers.issuers)
            else {
                continue;
            };
            let needs = match &entry {
                AllowEntry::Spiffe(p) => {
                    let td = match p {
                        SpiffeIdPattern::Exact(id) => id.trust_domain_name().to_owned(),
                        SpiffeIdPattern::Prefix(prefix) => prefix
                            .trim_start_matches("spiffe://")
                            .split('/')
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    };
                    if !trust_domains.is_empty() && !trust_domains.iter().any(|t| t.as_str() == td)
                    {
                        cx.err(
                            format!("{key}.allow[{a}]"),
                            format!("trust domain {td} has no [[identity.trust_bundles]] entry, so no caller could match"),
                        );
                    }
                    None
                }
                AllowEntry::ApiKey(_) => Some(AuthLayer::ApiKey),
                AllowEntry::Client(..) | AllowEntry::Subject(..) => Some(AuthLayer::Jwt),
            };
            if let Some(layer) = needs
                && !auth.uses(layer)
            {
                cx.err(
                    format!("{key}.allow[{a}]"),
                    format!("\"{s}\" can only match through the {layer} layer, which this route's auth does not list"),
                );
            }
            allow.push(entry);
        }
        for layer in [AuthLayer::ApiKey, AuthLayer::Jwt] {
            let configured = match layer {
                AuthLayer::ApiKey => layers.api_keys,
                _ => layers.jwt,
            };
            if auth.uses(layer) && !configured {
                cx.err(
                    format!("{key}.auth"),
                    match layer {
                        AuthLayer::ApiKey => "uses api_key, but there is no [api_keys] section",
                        _ => "uses jwt, but there is no [[jwt_issuers]] or [token_endpoint]",
                    },
                );
            }
        }
        let allow_body = r.allow_body.unwrap_or(false);
        if allow_body && !methods.iter().any(body_needs_opt_in) {
            cx.err(
                format!("{key}.allow_body"),
                "only concerns GET, HEAD, OPTIONS and DELETE, and this route lists none of them",
            );
        }
        if !scopes.is_empty() && !auth.uses(AuthLayer::ApiKey) && !auth.uses(AuthLayer::Jwt) {
            cx.err(
                format!("{key}.scopes"),
                "scopes come from API keys and tokens: add \"api_key\" or \"jwt\" to this route's auth",
            );
        }
        if let Some(upstream) = upstream
            && cx.errors.len() == before
        {
            out.push(RouteConfig {
                name: r.name,
                methods,
                path: r.path,
                upstream,
                case_insensitive,
                allow,
                auth,
                scopes,
                allow_body,
            });
        }
    }
    out
}
