//! The Redis backend: state shared by every gateway replica that points at one Redis
//! (standalone) or one Redis Cluster.
//!
//! Each write is one Lua script run atomically by Redis (EVALSHA, falling back to EVAL when
//! the server does not know the script yet). Times are passed in by the caller (`now`, in
//! microseconds) and never read from Redis, so that every replica decides with the same
//! arithmetic as the in-memory and redb backends; the decisions themselves are made by the
//! same Rust functions wherever a script can hand back what it read. State with a lifetime
//! carries a Redis expiry (PEXPIREAT) a little after its logical deadline, so expired state
//! vanishes by itself and every `sweep` returns 0.
//!
//! Key layout, under a configurable prefix (`idgate:` by default); the part in braces is the
//! Redis Cluster hash tag, so every key one script touches lives in one slot:
//!
//! | Keys | What |
//! |---|---|
//! | `P{keys}:records`, `P{keys}:version` | API key records (id → versioned JSON), a write counter |
//! | `Pw:{KEY}` | a fixed window: hash of count `n` and deadline `d` |
//! | `Pg:{KEY}` | GCRA: the theoretical arrival time |
//! | `Pn:{NONCE}` | a nonce: its deadline |
//! | `Po:{OBJECT}` | an ownership record: hash of owner `o` and deadline `d` |
//! | `Pq:{NAME}:…` | one queue: a stream, its consumer group, side sets (see the `queue` module) |
//!
//! Every call is bounded by a timeout (50 ms by default): a Redis that is slow, paused or
//! gone answers [`StoreError::Unavailable`] instead of holding the request up. The store is
//! built without connecting; the connection is made on first use and re-made by itself
//! after Redis comes back. A standalone server's connection is also made anew (at most once
//! a second) after a refused login, which the client would otherwise keep answering for
//! ever, and after a READONLY reply, which says the server was demoted to a replica while
//! the connection stayed open (a failover behind a name or an address that moved).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use self::owner_cache::OwnerCache;
use arc_swap::ArcSwap;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::io::tcp::socket2::TcpKeepalive;
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, ServerErrorKind,
    TlsCertificates, Value,
};
use secrecy::{ExposeSecret, SecretString};

use crate::StoreError;

mod api_keys;
mod counters;
pub(crate) mod fuzzing;
mod owner_cache;
mod queue;
mod reply;

#[cfg(feature = "conformance")]
pub mod testing;

#[cfg(test)]
mod queue_tests;
#[cfg(test)]
mod tests;

/// The per-call timeout unless configured otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// The prefix of every key unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "idgate:";

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisMode {
    /// One server: `redis://host:port` or `rediss://host:port` (TLS).
    Standalone { url: String },
    /// A Redis Cluster, found from any of these nodes (same URL syntax).
    Cluster { seeds: Vec<String> },
}

/// How to reach Redis. URLs carry no password: it is given as [`RedisOptions::password`],
/// which never shows in `Debug`, errors or logs.
#[derive(Clone)]
pub struct RedisOptions {
    pub mode: RedisMode,
    /// An ACL user (Redis 6+); without one, the password is the default user's.
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// The database number (standalone only; a Cluster has only database 0). `None` keeps
    /// the URL's (`redis://host:port/N`, 0 without one).
    pub database: Option<u32>,
    /// A PEM file of the CAs a `rediss://` server's certificate must chain to; without one,
    /// the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How long one call may take, connecting included, before it fails with
    /// [`StoreError::Unavailable`].
    pub timeout: Duration,
    /// Put before every key (no braces: they would change the Cluster hash tags).
    pub prefix: String,
}

impl RedisOptions {
    pub fn standalone(url: impl Into<String>) -> Self {
        Self::new(RedisMode::Standalone { url: url.into() })
    }

    pub fn cluster(seeds: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self::new(RedisMode::Cluster {
            seeds: seeds.into_iter().map(Into::into).collect(),
        })
    }

    fn new(mode: RedisMode) -> Self {
        Self {
            mode,
            username: None,
            password: None,
            database: None,
            ca_file: None,
            timeout: DEFAULT_TIMEOUT,
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

/// A URL with any password in it replaced: such a URL is refused by [`RedisStore::new`], but
/// options holding one may be printed before that.
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:<redacted>@{host}{path}")
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match &self.mode {
            RedisMode::Standalone { url } => RedisMode::Standalone {
                url: redacted_url(url),
            },
            RedisMode::Cluster { seeds } => RedisMode::Cluster {
                seeds: seeds.iter().map(|u| redacted_url(u)).collect(),
            },
        };
        f.debug_struct("RedisOptions")
            .field("mode", &mode)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The store over Redis. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct RedisStore {
    link: Link,
    prefix: Arc<str>,
    timeout: Duration,
    /// Ownership records read or written here, shared by every copy of this store.
    owners: Arc<OwnerCache>,
    /// This store's name among the consumers of every queue's group (see the `queue`
    /// module): its own, shared by every copy of this store.
    consumer: Arc<str>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.link {
            Link::Single(_) => "standalone",
            Link::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("mode", &mode)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

fn config_error(reason: impl Into<String>) -> StoreError {
    StoreError::RedisConfig {
        reason: reason.into(),
    }
}

impl RedisStore {
    /// Builds the store without connecting: a Redis that is down at start makes the first
    /// calls fail with [`StoreError::Unavailable`], and later ones work once it is up.
    /// Fails only on options that can never work.
    ///
    /// Call it within a tokio runtime, which then drives the connections: the store's
    /// futures make progress only while that runtime runs (a multi-threaded one, or a
    /// current-thread one being driven). A synchronous caller (the CLI) builds the store
    /// and awaits its calls inside such a runtime's `block_on`.
    pub fn new(options: &RedisOptions) -> Result<Self, StoreError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(config_error(
                "the Redis store must be built inside a tokio runtime",
            ));
        }
        if options.prefix.contains(['{', '}']) {
            return Err(config_error(
                "the key prefix must not hold braces (they would change the Cluster hash tags)",
            ));
        }
        if options.timeout.is_zero() {
            return Err(config_error("the timeout must be above zero"));
        }
        let certificates = match &options.ca_file {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| {
                    config_error(format!("cannot read the CA file {}: {e}", path.display()))
                })?),
            }),
            None => None,
        };
        let link = match &options.mode {
            RedisMode::Standalone { url } => {
                let client = standalone_client(url, options, certificates)?;
                // Each attempt to (re)connect is bounded too; the per-call timeout bounds
                // what a caller waits in any case.
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(options.timeout.max(CONNECT_TIMEOUT)))
                    .set_response_timeout(None)
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                let manager =
                    ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                        .map_err(|e| config_error(describe(&e)))?;
                Link::Single(Arc::new(Single {
                    client,
                    config,
                    current: ArcSwap::from_pointee(Current {
                        manager,
                        generation: 0,
                    }),
                    remade_at: Mutex::new(None),
                }))
            }
            RedisMode::Cluster { seeds } => {
                if options.database.is_some_and(|db| db != 0) {
                    return Err(config_error("a Redis Cluster has only database 0"));
                }
                if seeds.is_empty() {
                    return Err(config_error("a Redis Cluster needs at least one seed node"));
                }
                let mut infos = Vec::with_capacity(seeds.len());
                for url in seeds {
                    infos.push(connection_info(url)?);
                }
                // The Cluster client takes TLS or not from the first seed and then ignores
                // the CA: with `redis://` seeds it would speak (and log in) in clear.
                if options.ca_file.is_some()
                    && !infos
                        .iter()
                        .all(|i| matches!(i.addr(), redis::ConnectionAddr::TcpTls { .. }))
                {
                    return Err(config_error(
                        "a CA file is for TLS: every seed must be a rediss:// URL",
                    ));
                }
                let mut builder = ClusterClientBuilder::new(infos)
                    .retries(2)
                    .tcp_settings(tcp_settings());
                if let Some(user) = &options.username {
                    builder = builder.username(user);
                }
                if let Some(password) = &options.password {
                    builder = builder.password(password.expose_secret());
                }
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                let client = builder.build().map_err(|e| config_error(describe(&e)))?;
                let config = ClusterConfig::new()
                    .set_connection_timeout(options.timeout.max(CONNECT_TIMEOUT))
                    .set_response_timeout(options.timeout.max(CONNECT_TIMEOUT));
                Link::Cluster(client.get_pending_async_connection_with_config(config))
            }
        };
        Ok(Self {
            link,
            prefix: options.prefix.as_str().into(),
            timeout: options.timeout,
            owners: Arc::new(OwnerCache::new()),
            consumer: queue::consumer_name().into(),
        })
    }

    /// `P` + `name`: a key of the store.
    pub(crate) fn key(&self, name: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + name.len());
        out.push_str(&self.prefix);
        out.push_str(name);
        out
    }

    /// `P` + `kind` + `:{` + `id` + `}`: a key whose hash tag is the caller's id.
    pub(crate) fn tagged(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{{{id}}}", self.prefix)
    }

    /// The same store (sharing its connection) with another bound on each call: for callers
    /// off the request path that may wait longer, such as reading every API key or the CLI.
    pub fn with_timeout(&self, timeout: Duration) -> Self {
        Self {
            link: self.link.clone(),
            prefix: self.prefix.clone(),
            timeout: timeout.max(Duration::from_millis(1)),
            owners: self.owners.clone(),
            consumer: self.consumer.clone(),
        }
    }

    /// Runs one call against Redis within the timeout.
    pub(crate) async fn call<T, F>(&self, f: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        let (conn, origin) = self.link.take();
        match tokio::time::timeout(self.timeout, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                origin.failed(&e);
                Err(StoreError::Unavailable {
                    reason: describe(&e),
                })
            }
            Err(_) => Err(StoreError::Unavailable {
                reason: format!("no answer within {} ms", self.timeout.as_millis()),
            }),
        }
    }
}

/// The least a (re)connection attempt is given, even with a very short call timeout: the
/// attempt goes on in the background after the call that started it has given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long sent data may go unacknowledged before the connection counts as dead and is
/// made again: a Redis that vanished without closing its connections (a host gone, a
/// partition) would otherwise hold every later call until the kernel gives up, minutes
/// later. A Redis that is merely slow still acknowledges, and is only timed out per call.
const DEAD_PEER: Duration = Duration::from_secs(5);

fn tcp_settings() -> TcpSettings {
    // Small commands, each awaited: Nagle's algorithm would hold them back.
    let settings = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(TcpKeepalive::new().with_time(DEAD_PEER));
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(DEAD_PEER);
    settings
}

fn connection_info(url: &str) -> Result<redis::ConnectionInfo, StoreError> {
    // The URL is never echoed: it is the operator's to read, and it is kept free of
    // passwords by refusing them below.
    let info = url
        .into_connection_info()
        .map_err(|_| config_error("not a redis:// or rediss:// URL"))?;
    if info.redis_settings().password().is_some() {
        return Err(config_error(
            "the URL holds a password: give it as the password option instead",
        ));
    }
    Ok(info)
}

fn standalone_client(
    url: &str,
    options: &RedisOptions,
    certificates: Option<TlsCertificates>,
) -> Result<redis::Client, StoreError> {
    let info = connection_info(url)?;
    if certificates.is_some() && !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        return Err(config_error(
            "a CA file is for TLS: the URL must be rediss://",
        ));
    }
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &options.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &options.password {
        settings = settings.set_password(password.expose_secret());
    }
    if let Some(db) = options.database {
        settings = settings.set_db(i64::from(db));
    }
    let info = info
        .set_redis_settings(settings)
        .set_tcp_settings(tcp_settings());
    let client = match certificates {
        Some(certs) => redis::Client::build_with_tls(info, certs),
        None => redis::Client::open(info),
    };
    client.map_err(|e| config_error(describe(&e)))
}

/// What went wrong, in words that name no key and no secret: the error's kind and code
/// (the server's message may quote what it was given, so it is left out).
fn describe(e: &RedisError) -> String {
    if e.is_timeout() {
        return "Redis did not answer in time".to_owned();
    }
    if e.is_connection_refusal() {
        return "Redis refused the connection".to_owned();
    }
    if e.is_connection_dropped() {
        return "the connection to Redis dropped".to_owned();
    }
    match e.code() {
        Some(code) => format!("Redis answered {code} ({:?})", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}

/// The least time between two replacements of a standalone server's connection: a password
/// that stays wrong, or a server that stays a replica, costs one new connection a second,
/// not one per call.
const REMAKE_EVERY: Duration = Duration::from_secs(1);

/// How the store reaches Redis; clones share it.
#[derive(Clone)]
enum Link {
    Single(Arc<Single>),
    Cluster(ClusterConnection),
}

impl Link {
    /// The connection for one call, and where it came from.
    fn take(&self) -> (Conn, Origin) {
        match self {
            Self::Single(single) => {
                // A load, not a lock: every call of every worker thread comes here, and a
                // lock would have them all write the same cache line.
                let current = single.current.load();
                let conn = Conn::Single(current.manager.clone());
                (conn, Origin(Some((single.clone(), current.generation))))
            }
            Self::Cluster(c) => (Conn::Cluster(c.clone()), Origin(None)),
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }
}

/// One standalone server: the client's connection manager, and what it takes to replace it.
///
/// The manager makes its connection again by itself after an I/O error, but not after a
/// login the server refused (it answers that error for ever after), nor after a READONLY
/// reply (the server became a replica under an open connection, as in a failover behind a
/// DNS name or an address that moved). Either one makes a new manager here, whose
/// connection is made (and the login tried) on its first call.
struct Single {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The manager in use.
    current: ArcSwap<Current>,
    /// When the manager last replaced another (`None` before the first); held while
    /// replacing it, so that one call does.
    remade_at: Mutex<Option<Instant>>,
}

/// A standalone server's manager in use, and which one it is.
struct Current {
    manager: ConnectionManager,
    /// Counts the replacements: a failure is reported against the manager the call used,
    /// which another call may have replaced since.
    generation: u64,
}

impl Single {
    /// Replaces the manager of `generation`, which answered `error`, when the error calls
    /// for a new connection and no other call has replaced it already; at most once per
    /// [`REMAKE_EVERY`].
    fn failed(&self, generation: u64, error: &RedisError) {
        if !needs_new_connection(error) {
            return;
        }
        let mut remade_at = self
            .remade_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.current.load().generation != generation
            || remade_at.is_some_and(|t| t.elapsed() < REMAKE_EVERY)
        {
            return;
        }
        // Only fails on options checked when the store was built; the old manager stays then.
        if let Ok(manager) =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
        {
            self.current.store(Arc::new(Current {
                manager,
                generation: generation.wrapping_add(1),
            }));
            *remade_at = Some(Instant::now());
        }
    }
}

/// Whether an error leaves the connection manager unusable until it is replaced: a login
/// the server refused (kept by the manager for ever), or a server that no longer takes
/// writes (a demoted primary, which keeps its clients connected).
fn needs_new_connection(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::ReadOnly)
    ) || error.code() == Some("READONLY")
}

/// Where the connection of one call came from, to report a failure that needs a new one.
struct Origin(Option<(Arc<Single>, u64)>);

impl Origin {
    /// Tells the store that the call failed with `error`.
    fn failed(&self, error: &RedisError) {
        if let Some((single, generation)) = &self.0 {
            single.failed(*generation, error);
        }
    }
}

/// A connection to standalone Redis or to a Cluster; clones share it.
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod link_tests {
    use std::sync::mpsc;

    use super::*;

    #[tokio::test]
    async fn a_call_finds_its_connection_while_another_call_replaces_it() {
        // No server: the store connects on first use, and taking a connection connects not.
        let store = RedisStore::new(&RedisOptions::standalone("redis://127.0.0.1:1")).unwrap();
        let Link::Single(single) = &store.link else {
            panic!("a standalone store");
        };
        // A replacement under way, as after a refused login.
        let replacing = single
            .remade_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (taken, answer) = mpsc::channel();
        let link = store.link.clone();
        std::thread::spawn(move || {
            let (conn, _origin) = link.take();
            let _ = taken.send(matches!(conn, Conn::Single(_)));
        });
        let got = answer.recv_timeout(Duration::from_secs(10));
        drop(replacing);
        assert_eq!(got, Ok(true), "the call waited for the replacement");
    }
}
