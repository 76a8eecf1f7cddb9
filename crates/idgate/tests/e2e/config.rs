//! Gateway configurations for the tests, built from typed values and written with the `toml`
//! serializer: a path, a SPIFFE ID or a duration cannot break the file's syntax, and a test
//! says what it changes (`config.listener.client_auth = ClientAuth::Optional`) instead of
//! editing text. The listeners bind port 0 unless a test says otherwise; the gateway reports
//! the ports it got (see `Gateway::start`).
//!
//! The types model the keys the tests use; anything else goes in an `extra` table of the
//! section it belongs to, still as typed TOML values.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::support::{ONBOARDING, Pki, TD};

/// Loopback, port 0: the system picks a free port when the gateway binds.
pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A whole `idgate.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct GatewayConfig {
    pub workers: u32,
    /// Top-level keys the typed fields do not model (kept before the tables, as TOML
    /// requires of plain keys).
    #[serde(flatten)]
    pub top_level: toml::Table,
    pub listener: ListenerSpec,
    pub identity: IdentitySpec,
    pub admin: AdminSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<LogSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vault: Option<VaultSpec>,
    /// Whole sections the typed fields do not model (`[auth]`, `[api_keys]`, …), by name.
    #[serde(flatten)]
    pub sections: toml::Table,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstreams: Vec<UpstreamSpec>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
}

impl GatewayConfig {
    /// One worker; a listener requiring client certificates and an admin listener, both on
    /// port 0; the gateway's SVID; no trust bundle, no log section, no upstream, no route.
    pub fn new(svid_cert: &Path, svid_key: &Path) -> Self {
        Self {
            workers: 1,
            top_level: toml::Table::new(),
            listener: ListenerSpec {
                bind: any_port(),
                client_auth: ClientAuth::Required,
                tls_min_version: None,
                extra: toml::Table::new(),
            },
            identity: IdentitySpec {
                svid_cert: Some(svid_cert.to_owned()),
                svid_key: Some(svid_key.to_owned()),
                workload_api: None,
                svid_hint: None,
                poll_interval: None,
                trust_bundles: Vec::new(),
            },
            admin: AdminSpec { bind: any_port() },
            log: None,
            vault: None,
            sections: toml::Table::new(),
            upstreams: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// The configuration most tests start from: the PKI's gateway SVID, its bundle for
    /// `example.org`, files polled every second, JSON logs at `info`.
    pub fn for_pki(pki: &Pki) -> Self {
        Self::new(&pki.files.gateway_cert, &pki.files.gateway_key)
            .trust(TD, &pki.files.bundle)
            .poll_interval("1s")
            .json_log("info")
    }

    /// The SVID and trust bundles from the Workload API at `endpoint` instead of files.
    pub fn workload_api(mut self, endpoint: &str) -> Self {
        self.identity.svid_cert = None;
        self.identity.svid_key = None;
        self.identity.trust_bundles.clear();
        self.identity.workload_api = Some(endpoint.to_owned());
        self
    }

    /// Adds a trust bundle for `trust_domain`.
    pub fn trust(mut self, trust_domain: &str, bundle: &Path) -> Self {
        self.identity.trust_bundles.push(TrustBundleSpec {
            trust_domain: trust_domain.to_owned(),
            bundle: bundle.to_owned(),
        });
        self
    }

    pub fn poll_interval(mut self, every: &str) -> Self {
        self.identity.poll_interval = Some(every.to_owned());
        self
    }

    /// JSON logs at `level` (the tests read the gateway's log lines as JSON).
    pub fn json_log(mut self, level: &str) -> Self {
        self.log = Some(LogSpec::json(level));
        self
    }

    pub fn upstream(mut self, upstream: UpstreamSpec) -> Self {
        self.upstreams.push(upstream);
        self
    }

    pub fn route(mut self, route: RouteSpec) -> Self {
        self.routes.push(route);
        self
    }

    /// Adds a whole section the typed fields do not model: a table such as `[api_keys]`,
    /// or an array of tables such as `[[jwt_issuers]]`.
    pub fn section(mut self, name: &str, value: impl Into<toml::Value>) -> Self {
        self.sections.insert(name.to_owned(), value.into());
        self
    }

    /// The configuration file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a test configuration serializes to TOML")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Required,
    Optional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    V1_2,
    #[serde(rename = "1.3")]
    V1_3,
}

/// `[listener]`.
#[derive(Debug, Clone, Serialize)]
pub struct ListenerSpec {
    pub bind: SocketAddr,
    pub client_auth: ClientAuth,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_min_version: Option<TlsVersion>,
    #[serde(flatten)]
    pub extra: toml::Table,
}

/// `[identity]`.
#[derive(Debug, Clone, Serialize)]
pub struct IdentitySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svid_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svid_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload_api: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub svid_hint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub poll_interval: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trust_bundles: Vec<TrustBundleSpec>,
}

/// One `[[identity.trust_bundles]]`.
#[derive(Debug, Clone, Serialize)]
pub struct TrustBundleSpec {
    pub trust_domain: String,
    pub bundle: PathBuf,
}

/// `[admin]`.
#[derive(Debug, Clone, Serialize)]
pub struct AdminSpec {
    pub bind: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// `[log]`.
#[derive(Debug, Clone, Serialize)]
pub struct LogSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
}

impl LogSpec {
    /// JSON lines at `level` (a filter such as `info,rustls=debug`).
    pub fn json(level: &str) -> Self {
        Self {
            format: Some(LogFormat::Json),
            level: Some(level.to_owned()),
        }
    }
}

/// `[vault]`: where `vault:` secret references are read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VaultSpec {
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// A secret reference for a token (`env:VAULT_TOKEN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Other keys (AppRole login, namespaces, …).
    #[serde(flatten)]
    pub extra: toml::Table,
}

/// One `[[upstreams]]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamSpec {
    pub name: String,
    /// Left out when empty (for an upstream with `endpoints` instead).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http2: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<String>,
    /// Other keys of the table.
    #[serde(flatten)]
    pub extra: toml::Table,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialSpec>,
}

impl UpstreamSpec {
    /// An upstream at `url` with no credential; an `https://` one trusts `ca`.
    pub fn new(name: &str, url: &str) -> Self {
        Self {
            name: name.to_owned(),
            url: url.to_owned(),
            ..Self::default()
        }
    }

    pub fn ca(mut self, ca: &Path) -> Self {
        self.ca = Some(ca.to_owned());
        self
    }

    pub fn credential(mut self, credential: CredentialSpec) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Sets a key the typed fields do not model.
    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
}

/// `[upstreams.credential]`: a header with a secret, or a signing scheme.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CredentialSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// A secret reference for a client identifier (`env:VERIFF_CLIENT`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// A secret reference (`env:…`, `file:…`, `vault:…`, `pkcs11:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_interval: Option<String>,
    /// Other keys of the table.
    #[serde(flatten)]
    pub extra: toml::Table,
}

impl CredentialSpec {
    /// The secret named by `secret` sent in the `header` request header.
    pub fn header(header: &str, secret: &str) -> Self {
        Self {
            header: Some(header.to_owned()),
            secret: Some(secret.to_owned()),
            ..Self::default()
        }
    }

    /// Requests signed with `scheme` (`veriff`, …) using the `client` and `secret`
    /// references.
    pub fn scheme(scheme: &str, client: &str, secret: &str) -> Self {
        Self {
            scheme: Some(scheme.to_owned()),
            client: Some(client.to_owned()),
            secret: Some(secret.to_owned()),
            ..Self::default()
        }
    }

    /// How often the secret is read again.
    pub fn refresh_every(mut self, interval: &str) -> Self {
        self.refresh_interval = Some(interval.to_owned());
        self
    }

    /// Sets a key the typed fields do not model.
    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
}

/// One `[[routes]]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteSpec {
    pub name: String,
    pub methods: Vec<String>,
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// The SPIFFE IDs (or `…/*` prefixes) allowed; left out when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Other keys of the table.
    #[serde(flatten)]
    pub extra: toml::Table,
}

impl RouteSpec {
    /// `methods path` to `upstream`, allowed for `allow`.
    pub fn new(name: &str, methods: &[&str], path: &str, upstream: &str, allow: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            path: path.to_owned(),
            upstream: Some(upstream.to_owned()),
            allow: allow.iter().map(|a| (*a).to_owned()).collect(),
            extra: toml::Table::new(),
        }
    }

    /// `GET path` to `upstream` for [`ONBOARDING`].
    pub fn get(name: &str, path: &str, upstream: &str) -> Self {
        Self::new(name, &["GET"], path, upstream, &[ONBOARDING])
    }

    /// Sets a key the typed fields do not model.
    pub fn with(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }
}

/// A TOML array of strings.
pub fn strings(items: &[&str]) -> toml::Value {
    toml::Value::Array(items.iter().map(|s| toml::Value::from(*s)).collect())
}

/// A TOML table from (key, value) pairs.
pub fn table<const N: usize>(entries: [(&str, toml::Value); N]) -> toml::Table {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// A path as a TOML string.
pub fn path_value(path: &Path) -> toml::Value {
    toml::Value::from(path.display().to_string())
}
