//! `[state]`: where the state that outlives a request is kept (rate-limit counters,
//! lockouts, object ownership, nonces, the webhook outbox, and with Redis the API keys), so
//! that several replicas can share it.

use std::path::PathBuf;
use std::time::Duration;

use idgate_secrets::SecretRef;
use serde::Deserialize;

use crate::context::Ctx;

/// The backend and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateBackend {
    /// In the gateway's memory: not shared, lost on restart. The default.
    #[default]
    Memory,
    /// An embedded database file: durable, one machine.
    Redb { path: PathBuf },
    /// A Redis server or cluster shared by every replica.
    Redis(Box<RedisConfig>),
}

impl StateBackend {
    /// The backend's name, as `backend` writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redb { .. } => "redb",
            Self::Redis(_) => "redis",
        }
    }
}

/// How to reach Redis. `Debug` shows the password's reference (a path or a Vault
/// location), never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// Where to connect: one URL for a server, or the seed nodes of a Redis Cluster.
    pub nodes: RedisNodes,
    pub username: Option<String>,
    pub password: Option<SecretRef>,
    /// A CA bundle for `rediss://` servers signed by a private CA; the platform's roots
    /// otherwise.
    pub ca: Option<PathBuf>,
    /// How long one state operation may take before the request goes on without it (the
    /// route's `on_state_error` then decides).
    pub timeout: Duration,
    /// Put before every key, so that several gateways (or other users) can share a server.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisNodes {
    Server(String),
    Cluster(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawState {
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    cluster: Option<Vec<String>>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    ca: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

pub(crate) fn parse(cx: &mut Ctx<'_>, s: RawState) -> StateBackend {
    let backend = s.backend.as_deref().unwrap_or("memory");
    let redis_only = [
        ("url", s.url.is_some()),
        ("cluster", s.cluster.is_some()),
        ("username", s.username.is_some()),
        ("password", s.password.is_some()),
        ("ca", s.ca.is_some()),
        ("timeout", s.timeout.is_some()),
        ("prefix", s.prefix.is_some()),
    ];
    if backend != "redis" {
        for (key, set) in redis_only {
            if set {
                cx.err(
                    format!("state.{key}"),
                    format!("only for backend = \"redis\" (this is \"{backend}\")"),
                );
            }
        }
    }
    if backend != "redb" && s.path.is_some() {
        cx.err(
            "state.path",
            format!("only for backend = \"redb\" (this is \"{backend}\")"),
        );
    }
    match backend {
        "memory" => StateBackend::Memory,
        "redb" => match s.path {
            Some(p) => StateBackend::Redb { path: cx.path(&p) },
            None => {
                cx.err("state.path", "missing: the redb backend needs a file path");
                StateBackend::Memory
            }
        },
        "redis" => redis(cx, s),
        other => {
            cx.err(
                "state.backend",
                format!("\"{other}\" is not a backend: use \"memory\", \"redb\" or \"redis\""),
            );
            StateBackend::Memory
        }
    }
}

fn redis(cx: &mut Ctx<'_>, s: RawState) -> StateBackend {
    let nodes = match (s.url, s.cluster) {
        (Some(url), None) => {
            check_url(cx, "state.url", &url);
            RedisNodes::Server(url)
        }
        (None, Some(nodes)) if !nodes.is_empty() => {
            for (i, url) in nodes.iter().enumerate() {
                check_url(cx, &format!("state.cluster[{i}]"), url);
            }
            RedisNodes::Cluster(nodes)
        }
        (None, Some(_)) => {
            cx.err("state.cluster", "must name at least one node");
            RedisNodes::Cluster(Vec::new())
        }
        (Some(_), Some(_)) => {
            cx.err(
                "state.url",
                "give either url (one server) or cluster (a Redis Cluster's nodes), not both",
            );
            RedisNodes::Server(String::new())
        }
        (None, None) => {
            cx.err(
                "state.url",
                "missing: the redis backend needs url (one server) or cluster (a Redis Cluster's nodes)",
            );
            RedisNodes::Server(String::new())
        }
    };
    let password = s.password.and_then(|p| {
        let r = SecretRef::parse(&p, cx.base)
            .map_err(|e| cx.err("state.password", e.to_string()))
            .ok()?;
        cx.secret_available("state.password", &r);
        Some(r)
    });
    let ca = s.ca.map(|p| cx.existing_file("state.ca", &p));
    if ca.is_some() {
        check_tls_everywhere(cx, &nodes);
    }
    let timeout = cx.duration("state.timeout", s.timeout, DEFAULT_TIMEOUT);
    let prefix = s.prefix.unwrap_or_else(|| "idgate:".to_owned());
    if prefix.contains(['{', '}']) || prefix.chars().any(char::is_control) {
        cx.err(
            "state.prefix",
            "must not hold braces (they would change Redis Cluster hash slots) or control characters",
        );
    }
    StateBackend::Redis(Box::new(RedisConfig {
        nodes,
        username: s.username,
        password,
        ca,
        timeout,
        prefix,
    }))
}

/// A CA is only used over TLS: with a `redis://` URL it would be ignored and the password
/// sent in clear (a Redis Cluster client takes TLS or not from its first seed alone).
fn check_tls_everywhere(cx: &mut Ctx<'_>, nodes: &RedisNodes) {
    // A URL without a scheme is reported by `check_url` already.
    let plain = |url: &String| {
        url.split_once("://")
            .is_some_and(|(scheme, _)| scheme != "rediss")
    };
    match nodes {
        RedisNodes::Server(url) if plain(url) => cx.err(
            "state.ca",
            "is for TLS, but state.url is not a rediss:// URL: write rediss://HOST:PORT, or remove ca",
        ),
        RedisNodes::Cluster(urls) => {
            if let Some(i) = urls.iter().position(plain) {
                cx.err(
                    "state.ca",
                    format!(
                        "is for TLS, but state.cluster[{i}] is not a rediss:// URL: every node must be rediss://HOST:PORT, or remove ca"
                    ),
                );
            }
        }
        RedisNodes::Server(_) => {}
    }
}

/// A Redis URL names the scheme, host and port (and for a server, the database). The URL
/// itself is never echoed: a password may have been pasted into it.
fn check_url(cx: &mut Ctx<'_>, key: &str, url: &str) {
    let Some((scheme, rest)) = url.split_once("://") else {
        cx.err(
            key,
            "not a URL: write redis://HOST:PORT or rediss://HOST:PORT",
        );
        return;
    };
    if scheme != "redis" && scheme != "rediss" {
        cx.err(
            key,
            format!("the scheme \"{scheme}\" is not redis or rediss (rediss:// is Redis over TLS)"),
        );
    }
    let authority = rest.split('/').next().unwrap_or_default();
    // The whole rest, not only the authority: a password holding a '/' would otherwise end
    // the authority early and slip through.
    if let Some((userinfo, _)) = rest.rsplit_once('@')
        && userinfo.contains(':')
    {
        cx.err(
            key,
            "holds a password: give it in state.password as a secret reference (file:… or vault:…) instead",
        );
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        cx.err(key, "names no host");
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn parse_text(text: &str) -> Result<StateBackend, Vec<String>> {
        let mut cx = Ctx {
            file: Path::new("/etc/idgate/idgate.toml"),
            base: Path::new("/etc/idgate"),
            errors: Vec::new(),
            check_secrets: true,
        };
        let raw: RawState = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let out = parse(&mut cx, raw);
        cx.finish(out)
    }

    #[test]
    fn memory_is_the_default_and_redb_needs_a_path() {
        assert_eq!(parse_text("").unwrap(), StateBackend::Memory);
        assert_eq!(
            parse_text("backend = \"redb\"\npath = \"state.redb\"").unwrap(),
            StateBackend::Redb {
                path: PathBuf::from("/etc/idgate/state.redb")
            }
        );
        let errs = parse_text("backend = \"redb\"").unwrap_err();
        assert!(errs[0].starts_with("state.path: missing"), "{errs:?}");
    }

    #[test]
    fn redis_takes_a_server_or_a_cluster_with_defaults() {
        let StateBackend::Redis(r) =
            parse_text("backend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"").unwrap()
        else {
            panic!("not redis");
        };
        assert_eq!(
            r.nodes,
            RedisNodes::Server("redis://127.0.0.1:6379/0".into())
        );
        assert_eq!(r.timeout, Duration::from_millis(50));
        assert_eq!(r.prefix, "idgate:");
        let StateBackend::Redis(r) = parse_text(
            "backend = \"redis\"\ncluster = [\"redis://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\ntimeout = \"20ms\"",
        )
        .unwrap() else {
            panic!("not redis");
        };
        assert!(matches!(r.nodes, RedisNodes::Cluster(ref n) if n.len() == 2));
        assert_eq!(r.timeout, Duration::from_millis(20));
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        let errs = parse_text("backend = \"redis\"\nurl = \"redis://app:hunter2@10.0.0.1:6379\"")
            .unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.contains("state.url: holds a password")),
            "{errs:?}"
        );
        assert!(errs.iter().all(|e| !e.contains("hunter2")), "{errs:?}");
        let errs = parse_text("backend = \"redis\"\nurl = \"redis://app:hun/ter2@10.0.0.1:6379\"")
            .unwrap_err();
        assert!(
            errs.iter().any(|e| e.contains("holds a password")),
            "{errs:?}"
        );
        assert!(errs.iter().all(|e| !e.contains("ter2")), "{errs:?}");
    }

    #[test]
    fn a_ca_file_with_plain_cluster_seeds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let ca = ca.display();
        let errs = parse_text(&format!(
            "backend = \"redis\"\ncluster = [\"rediss://10.0.0.1:7000\", \"redis://10.0.0.2:7000\"]\nca = \"{ca}\""
        ))
        .unwrap_err();
        assert!(
            errs.iter().any(|e| e.starts_with("state.ca:")
                && e.contains("state.cluster[1] is not a rediss:// URL")),
            "{errs:?}"
        );
        let errs = parse_text(&format!(
            "backend = \"redis\"\nurl = \"redis://10.0.0.1:6379\"\nca = \"{ca}\""
        ))
        .unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.starts_with("state.ca:") && e.contains("state.url is not a rediss://")),
            "{errs:?}"
        );
        let StateBackend::Redis(r) = parse_text(&format!(
            "backend = \"redis\"\ncluster = [\"rediss://10.0.0.1:7000\", \"rediss://10.0.0.2:7000\"]\nca = \"{ca}\""
        ))
        .unwrap() else {
            panic!("not redis");
        };
        assert!(r.ca.is_some());
    }

    #[test]
    fn keys_of_another_backend_and_bad_values_are_refused() {
        let errs = parse_text("url = \"redis://h:1\"\npath = \"x\"").unwrap_err();
        assert!(
            errs.iter()
                .any(|e| e.starts_with("state.url: only for backend = \"redis\""))
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("state.path: only for backend = \"redb\""))
        );
        let errs = parse_text("backend = \"etcd\"").unwrap_err();
        assert!(errs[0].starts_with("state.backend:"), "{errs:?}");
        let errs = parse_text("backend = \"redis\"").unwrap_err();
        assert!(errs[0].starts_with("state.url: missing"), "{errs:?}");
        let errs =
            parse_text("backend = \"redis\"\nurl = \"http://h:1\"\nprefix = \"{x}\"").unwrap_err();
        assert!(
            errs.iter().any(|e| e.starts_with("state.url: the scheme")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("state.prefix:")),
            "{errs:?}"
        );
    }
}
