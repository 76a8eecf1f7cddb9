//! One immutable view of the routing configuration, swapped atomically on reload. A request
//! takes the snapshot in force when it arrives and keeps it to the end.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use http::header::{self, HeaderName};
use idgate_config::Config;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;

use crate::authn::{AuthServices, AuthSetupError};
use crate::limit_state::Limits;
use crate::masking::{MaskingKeyError, MaskingProfiles};
use crate::metrics::Metrics;
use crate::routes::{RouteTable, RouteTableError};
use crate::token_endpoint::{TokenEndpoint, TokenEndpointError};
use crate::upstream::{Upstream, UpstreamError};
use idgate_auth::jwt::IssuerKeyCache;
use idgate_auth::jwt_svid::JwtBundleStore;

/// A setting of a configuration that validated, which the gateway still could not put into
/// use: a secret it cannot read, a CA file without a certificate, a signing key of the
/// wrong kind. Like a configuration error it names the file and the key path, at start-up
/// and at reload alike.
#[derive(Debug, thiserror::Error)]
pub struct BuildError {
    pub file: PathBuf,
    /// Dotted key path, with array indexes: `upstreams[0].credential.secret`.
    pub key: String,
    #[source]
    pub problem: BuildProblem,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.problem)
        }
    }
}

/// What could not be put into use, by the part that refused it.
#[derive(Debug, thiserror::Error)]
pub enum BuildProblem {
    #[error(transparent)]
    Identity(idgate_tls::MaterialError),
    #[error(transparent)]
    Listener(rustls::Error),
    #[error(transparent)]
    Vault(idgate_secrets::vault::VaultError),
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error(transparent)]
    Routes(RouteTableError),
    #[error(transparent)]
    TokenEndpoint(TokenEndpointError),
    #[error(transparent)]
    Auth(AuthSetupError),
    #[error(
        "the API keys in the shared state store could not be read; the running configuration and its keys stay"
    )]
    ApiKeysUnread,
    #[error(
        "the keys are to be kept in the shared [state], which this process did not open: restart to change [state]"
    )]
    ApiKeysNeedRestart,
    #[error(
        "webhooks keep their outbox and replay keys in [state], and this process runs on the in-memory backend it opened at start, which loses them at exit: restart to change [state]"
    )]
    WebhooksNeedRestart,
    #[error(
        "names no bundle files, so the JWT bundles are to come from the Workload API, which this process does not stream: restart to change [identity], or name the bundle files"
    )]
    JwtSvidBundlesNeedRestart,
    #[error("cannot open the state backend: {0}")]
    State(crate::state::StateOpenError),
    #[error("{0}")]
    RateLimit(idgate_store::StoreError),
    #[error(transparent)]
    Masking(MaskingKeyError),
    #[error(transparent)]
    Webhook(idgate_webhooks::SetupError),
    #[error("{0}")]
    Audit(crate::audit::AuditSetupError),
    #[error(transparent)]
    Fallback(crate::fallback_cache::FallbackKeyError),
}

impl BuildError {
    pub(crate) fn new(config: &Config, key: impl Into<String>, problem: BuildProblem) -> Self {
        Self {
            file: config.file.clone(),
            key: key.into(),
            problem,
        }
    }

    /// The reason alone, without the file and key.
    pub fn reason(&self) -> String {
        self.problem.to_string()
    }
}

/// What every snapshot of the process shares, whatever its configuration: the gateway's TLS
/// material (its SVID, presented to upstreams that ask), the JWT bundles the SPIFFE
/// Workload API keeps current, and the keys fetched from the outside token issuers (a
/// reload keeps them, also while an issuer is down).
#[derive(Debug, Clone)]
pub struct Shared {
    pub material: Arc<idgate_tls::TlsMaterial>,
    pub jwt_bundles: JwtBundleStore,
    pub jwt_issuer_keys: IssuerKeyCache,
}

impl Shared {
    pub fn new(material: Arc<idgate_tls::TlsMaterial>) -> Self {
        Self {
            material,
            jwt_bundles: JwtBundleStore::default(),
            jwt_issuer_keys: IssuerKeyCache::default(),
        }
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub routes: RouteTable,
    pub upstreams: Vec<Upstream>,
    /// Removed before forwarding: the hop-by-hop headers, the caller's credentials
    /// (`x-api-key`, `authorization`, `cookie` and every header any upstream credential is
    /// sent in), headers that would let a caller override the method or URL an upstream
    /// sees, and the forwarding headers of a caller that is not a trusted proxy.
    pub(crate) strip_headers: crate::header_set::RequestStrip,
    /// The API key and JWT verifiers of this configuration.
    pub auth: AuthServices,
    /// The built-in OAuth2 token endpoint, when configured.
    pub token_endpoint: Option<TokenEndpoint>,
    /// The rate limits, tiers and lockout settings.
    pub limits: Limits,
    api_key_reload: Option<std::time::Duration>,
    /// `[network]`: checked at accept (addresses) and on every request (user agents).
    pub network: idgate_config::NetworkConfig,
    /// The listener's limits on one request.
    pub request_limits: RequestLimits,
    /// The masking profiles routes apply, with their pseudonym keys.
    pub masking: MaskingProfiles,
    /// Provider webhooks: their endpoints and their subscribers' delivery plan.
    pub webhooks: idgate_webhooks::Webhooks,
    /// What requests do when the audit queue is full, unless their route says otherwise.
    pub audit: crate::audit::AuditPolicy,
    /// `[fallback]`: the key that seals cached answers, and the cache's bounds.
    pub fallback: Option<crate::fallback_cache::FallbackSettings>,
    /// `[testing] fault_injection`: routes may inject faults.
    pub fault_injection: bool,
}

/// The listener's limits that the pipeline enforces on each request.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// `listener.max_header_count`.
    pub max_header_count: usize,
    /// `listener.max_header_bytes`.
    pub max_header_bytes: usize,
    /// `listener.body_timeout`.
    pub body_timeout: std::time::Duration,
}

impl Snapshot {
    /// Starts the background work of this snapshot (credential refresh). The tasks end by
    /// themselves once the snapshot is replaced and dropped.
    pub fn start_background(&self, metrics: &Arc<Metrics>) {
        for c in self.upstreams.iter().filter_map(|u| u.credential.as_ref()) {
            c.spawn_refresh(metrics.clone());
        }
        self.auth.start_background(self.api_key_reload);
        self.masking.start_background();
        metrics.fault_injection.set(i64::from(self.fault_injection));
    }

    /// Builds the routes and upstream clients and resolves the upstream credentials.
    /// Blocking (reads files and secrets). Errors name the upstream or route.
    ///
    /// `[state]` and the `[identity]` source are read as the process runs them (the state
    /// timeout of the rate limits, the JWT bundles the Workload API streams): a reload
    /// passes the running ones in place of those a restart is to bring.
    pub fn build(
        config: &Config,
        roots: &Arc<RootCertStore>,
        provider: &Arc<CryptoProvider>,
        state: &idgate_store::StateStore,
        shared: &Shared,
    ) -> Result<Self, Vec<BuildError>> {
        let mut errors = Vec::new();
        let mut upstreams = Vec::new();
        for (i, u) in config.upstreams.iter().enumerate() {
            match Upstream::new(u, roots, provider, &shared.material) {
                Ok(u) => upstreams.push(u),
                Err(e) => {
                    let key = match e.key() {
                        sub if sub.is_empty() => format!("upstreams[{i}]"),
                        sub => format!("upstreams[{i}].{sub}"),
                    };
                    errors.push(BuildError::new(config, key, BuildProblem::Upstream(e)));
                }
            }
        }
        let routes = RouteTable::new(
            &config.routes,
            config.token_endpoint.is_some(),
            &config.webhooks,
        )
        .map_err(|e| errors.push(BuildError::new(config, e.key(), BuildProblem::Routes(e))))
        .ok();
        let token_endpoint = match &config.token_endpoint {
            None => None,
            Some(t) => TokenEndpoint::load(t)
                .map_err(|e| {
                    errors.push(BuildError::new(
                        config,
                        e.key(),
                        BuildProblem::TokenEndpoint(e),
                    ))
                })
                .ok(),
        };
        // With the Workload API and no bundle files, JWT-SVIDs are verified with the bundles
        // the agent streams, kept in a store every snapshot shares.
        let agent_jwt_bundles = config.identity.workload_api().is_some()
            && config
                .jwt_svid
                .as_ref()
                .is_some_and(|j| j.bundles.is_empty());
        let auth = AuthServices::build(
            config,
            token_endpoint.as_ref().map(|t| &*t.issuer),
            state,
            &shared.jwt_issuer_keys,
        )
        .and_then(|a| {
            if agent_jwt_bundles {
                a.with_jwt_bundle_store(shared.jwt_bundles.clone())
            } else {
                Ok(a)
            }
        })
        .map_err(|e| errors.push(BuildError::new(config, e.key(), BuildProblem::Auth(e))))
        .ok();
        let limits = Limits::build(config)
            .map_err(|e| {
                errors.push(BuildError::new(
                    config,
                    "rate_limits",
                    BuildProblem::RateLimit(e),
                ))
            })
            .ok();
        // On errors the snapshot is not built: the empty set is never used.
        let masking = MaskingProfiles::load(&config.masking).unwrap_or_else(|es| {
            errors.extend(
                es.into_iter()
                    .map(|e| BuildError::new(config, e.key(), BuildProblem::Masking(e))),
            );
            MaskingProfiles::default()
        });
        let webhooks = crate::webhooks::load(config, &masking)
            .map_err(|es| {
                errors.extend(
                    es.into_iter()
                        .map(|e| BuildError::new(config, e.key.clone(), BuildProblem::Webhook(e))),
                )
            })
            .unwrap_or_default();
        let fallback = match &config.fallback {
            None => None,
            Some(f) => crate::fallback_cache::FallbackSettings::load(f)
                .map_err(|e| {
                    errors.push(BuildError::new(
                        config,
                        "fallback.key",
                        BuildProblem::Fallback(e),
                    ))
                })
                .ok(),
        };
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
        match (routes, auth, limits) {
            (Some(routes), Some(auth), Some(limits)) if errors.is_empty() => Ok(Self {
                routes,
                upstreams,
                strip_headers: crate::header_set::RequestStrip::new(&strip_headers),
                auth,
                token_endpoint,
                limits,
                api_key_reload: config.api_keys.as_ref().map(|a| a.reload_interval),
                network: config.network.clone(),
                request_limits: RequestLimits {
                    max_header_count: config.listener.max_header_count,
                    max_header_bytes: config.listener.max_header_bytes,
                    body_timeout: config.listener.body_timeout,
                },
                masking,
                webhooks,
                audit: crate::audit::AuditPolicy::of(config.audit.as_ref()),
                fallback,
                fault_injection: config.testing.fault_injection,
            }),
            _ => Err(errors),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use super::*;

    /// A directory of its own under the system's temporary one, removed when dropped.
    pub(crate) struct Dir(pub(crate) PathBuf);

    impl Dir {
        pub(crate) fn new(name: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let dir =
                std::env::temp_dir().join(format!("idgate-{name}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        pub(crate) fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A configuration that validates, with `upstream` as the body of its one upstream.
    pub(crate) fn config(dir: &Dir, upstream: &str) -> Config {
        for f in ["svid.pem", "svid.key", "bundle.pem"] {
            dir.write(f, b"placeholder");
        }
        let text = format!(
            r#"
[listener]
bind = "127.0.0.1:0"

[identity]
svid_cert = "svid.pem"
svid_key = "svid.key"
[[identity.trust_bundles]]
trust_domain = "example.org"
bundle = "bundle.pem"

[[upstreams]]
name = "didit"
url = "https://verification.didit.test"
{upstream}

[[routes]]
name = "kyc"
methods = ["GET"]
path = "/v1/kyc"
upstream = "didit"
allow = ["spiffe://example.org/ns/kyc/sa/onboarding"]
"#
        );
        let file = dir.write("idgate.toml", text.as_bytes());
        idgate_config::load(&file).unwrap()
    }

    fn build_errors(config: &Config) -> Vec<BuildError> {
        let roots = Arc::new(RootCertStore::empty());
        Snapshot::build(
            config,
            &roots,
            &idgate_tls::crypto_provider(),
            &idgate_store::StateStore::from(idgate_store::MemoryStore::new()),
            &Shared::new(Arc::new(idgate_tls::TlsMaterial::pending(
                idgate_tls::crypto_provider(),
            ))),
        )
        .expect_err("the snapshot should not build")
    }

    fn file_of(config: &Config) -> &Path {
        &config.file
    }

    #[test]
    fn an_unusable_upstream_ca_is_named_by_file_and_key() {
        let dir = Dir::new("snapshot-ca");
        dir.write("ca.pem", b"this file holds no certificate\n");
        let config = config(&dir, "ca = \"ca.pem\"");
        let errors = build_errors(&config);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(e.file, file_of(&config));
        assert_eq!(e.key, "upstreams[0].ca");
        assert!(
            matches!(e.problem, BuildProblem::Upstream(_)),
            "{:?}",
            e.problem
        );
        assert!(e.reason().contains("no CERTIFICATE block"), "{e}");
        assert_eq!(
            e.to_string(),
            format!("{}: upstreams[0].ca: {}", config.file.display(), e.reason())
        );
    }

    #[test]
    fn an_unusable_credential_secret_is_named_by_file_and_key() {
        let dir = Dir::new("snapshot-secret");
        // Readable, but a control character cannot go into a header.
        dir.write("api-key", b"sk_\x01live");
        let config = config(
            &dir,
            "[upstreams.credential]\nheader = \"x-api-key\"\nsecret = \"file:api-key\"",
        );
        let errors = build_errors(&config);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(e.file, file_of(&config));
        assert_eq!(e.key, "upstreams[0].credential.secret");
        assert!(
            e.reason().contains("upstream didit")
                && e.reason().contains("credential didit")
                && e.reason().contains("not allowed in an HTTP header"),
            "{e}"
        );
        assert!(!e.to_string().contains("sk_"), "{e}");
    }

    #[test]
    fn an_unusable_pseudonym_key_is_named_by_file_and_key() {
        let dir = Dir::new("snapshot-pseudonym");
        dir.write("pseudonym-key", b"too-short-a-key");
        let config = config(
            &dir,
            "[masking.profiles.kyc-minimal]\npseudonym_key = \"file:pseudonym-key\"\nrules = [{ path = \"$.vendor_data\", action = \"pseudonymize\" }]",
        );
        let errors = build_errors(&config);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let e = &errors[0];
        assert_eq!(e.key, "masking.profiles.kyc-minimal.pseudonym_key");
        assert!(
            e.reason().contains("15 bytes is too short") && e.reason().contains("kyc-minimal"),
            "{e}"
        );
        assert!(!e.to_string().contains("too-short-a-key"), "{e}");
    }
}
