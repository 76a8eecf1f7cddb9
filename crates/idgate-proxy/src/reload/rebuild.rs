//! What a reload builds: the new configuration loaded and validated as `idgate check` does,
//! its snapshot built, and the parts it changes that only a restart puts into use.

use std::sync::Arc;

use idgate_config::{ApiKeyStoreConfig, Config};
use idgate_store::StateStore;
use idgate_tls::{MaterialSpec, TlsMaterial};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;

use crate::snapshot::{BuildError, BuildProblem, Shared, Snapshot};

/// A part of the configuration that a reload leaves as it is: it takes effect at restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartOnly {
    /// `[listener]`: the bound socket and the connection caps.
    Listener,
    /// `[identity] poll_interval`: the TLS material's watch is started once.
    Identity,
    /// `[admin]`: the bound socket.
    Admin,
    /// `[log] format`: the subscriber and the access log writer are installed once.
    Log,
    /// `workers`: the runtime's threads.
    Workers,
    /// `[vault]`: the process-wide client.
    Vault,
    /// `[state]`: the backend, opened once so that counters and ownership survive reloads.
    State,
    /// `[audit]`'s writer: its directory, rotation, checkpoints, keys, sync interval and
    /// queue (its `on_audit_full` and `block_timeout` change live).
    Audit,
    /// `[incidents]`: the detector, its store and notifier start once.
    Incidents,
    /// `[siem]`: the sinks start once, before the audit trail.
    Siem,
}

impl RestartOnly {
    /// The configuration key it stands for.
    pub fn key(self) -> &'static str {
        match self {
            Self::Listener => "listener",
            Self::Identity => "identity",
            Self::Admin => "admin",
            Self::Log => "log",
            Self::Workers => "workers",
            Self::Vault => "vault",
            Self::State => "state",
            Self::Audit => "audit",
            Self::Incidents => "incidents",
            Self::Siem => "siem",
        }
    }
}

impl std::fmt::Display for RestartOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// What of `[listener]` goes with its socket: the address, and the connection caps sized
/// once (the rest changes with a reload, for new connections).
fn listener_socket(
    l: &idgate_config::ListenerConfig,
) -> (std::net::SocketAddr, usize, usize, usize) {
    (
        l.bind,
        l.max_connections,
        l.max_connections_per_ip,
        l.max_connections_per_identity,
    )
}

/// The parts of `new` that differ from `running` but take effect only at restart.
pub fn restart_required(running: &Config, new: &Config) -> Vec<RestartOnly> {
    [
        (
            listener_socket(&running.listener) != listener_socket(&new.listener),
            RestartOnly::Listener,
        ),
        // The files and trust domains change live (see `identity_for`); the source (files
        // or which Workload API) only at restart.
        (
            running.identity.poll_interval != new.identity.poll_interval
                || running.identity.workload_api() != new.identity.workload_api()
                || running.identity.svid_hint != new.identity.svid_hint,
            RestartOnly::Identity,
        ),
        (running.admin != new.admin, RestartOnly::Admin),
        // The level changes live (see `LogFilter`).
        (running.log.format != new.log.format, RestartOnly::Log),
        (running.workers != new.workers, RestartOnly::Workers),
        (running.vault != new.vault, RestartOnly::Vault),
        (running.state != new.state, RestartOnly::State),
        (
            running.audit.as_ref().map(|a| &a.writer) != new.audit.as_ref().map(|a| &a.writer),
            RestartOnly::Audit,
        ),
        (running.incidents != new.incidents, RestartOnly::Incidents),
        (running.siem != new.siem, RestartOnly::Siem),
    ]
    .into_iter()
    .filter_map(|(changed, part)| changed.then_some(part))
    .collect()
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug)]
pub(crate) enum ReloadRefused {
    Invalid(idgate_config::ConfigErrors),
    Unusable(Vec<BuildError>),
}

impl ReloadRefused {
    /// Each problem as (file, key, reason).
    pub(crate) fn problems(&self) -> Vec<(String, String, String)> {
        match self {
            Self::Invalid(errors) => errors
                .0
                .iter()
                .map(|e| {
                    (
                        e.file.display().to_string(),
                        e.key.clone(),
                        e.reason.clone(),
                    )
                })
                .collect(),
            Self::Unusable(errors) => errors
                .iter()
                .map(|e| (e.file.display().to_string(), e.key.clone(), e.reason()))
                .collect(),
        }
    }
}

/// The TLS material `config` names, loaded whole, when it names other files or trust
/// domains than `current` serves; `None` when it names the same, or when either streams
/// from the Workload API (a change of source waits for a restart: see
/// [`restart_required`]). Blocking.
pub(crate) fn identity_for(
    config: &Config,
    current: &TlsMaterial,
    provider: &Arc<CryptoProvider>,
) -> Result<Option<TlsMaterial>, ReloadRefused> {
    let (Some(id), Some(now)) = (config.identity.files(), current.spec()) else {
        return Ok(None);
    };
    if now.svid_cert == id.svid_cert
        && now.svid_key == id.svid_key
        && now.bundles == id.trust_bundles
    {
        return Ok(None);
    }
    let spec = MaterialSpec {
        svid_cert: id.svid_cert.clone(),
        svid_key: id.svid_key.clone(),
        bundles: id.trust_bundles.clone(),
    };
    TlsMaterial::load(spec, provider.clone())
        .map(Some)
        .map_err(|errors| {
            ReloadRefused::Unusable(
                errors
                    .into_iter()
                    .map(|e| {
                        BuildError::new(config, identity_key(config, &e), BuildProblem::Identity(e))
                    })
                    .collect(),
            )
        })
}

/// The key of `[identity]` a TLS material problem is about, found by its file.
pub(crate) fn identity_key(config: &Config, e: &idgate_tls::MaterialError) -> String {
    let path = match e {
        idgate_tls::MaterialError::Read { path, .. }
        | idgate_tls::MaterialError::Invalid { path, .. } => path,
    };
    let Some(id) = config.identity.files() else {
        return "identity".to_owned();
    };
    if *path == id.svid_cert {
        "identity.svid_cert".to_owned()
    } else if *path == id.svid_key {
        "identity.svid_key".to_owned()
    } else if let Some(i) = id.trust_bundles.iter().position(|(_, p)| p == path) {
        format!("identity.trust_bundles[{i}].bundle")
    } else {
        "identity".to_owned()
    }
}

/// A new configuration ready to serve.
pub(crate) struct Rebuilt {
    pub(crate) snapshot: Snapshot,
    /// What it changes that waits for a restart.
    pub(crate) restart: Vec<RestartOnly>,
    pub(crate) config: Config,
}

/// Reads and builds the configuration in `file` for a reload. Blocking.
pub(crate) fn rebuild(
    file: &std::path::Path,
    running: &Config,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    state: &StateStore,
    shared: &Shared,
) -> Result<Rebuilt, ReloadRefused> {
    let config = idgate_config::load(file).map_err(ReloadRefused::Invalid)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let restart = restart_required(running, &config);
    let snapshot = Snapshot::build(&config, roots, provider, state, shared)
        .map_err(ReloadRefused::Unusable)?;
    // Keys kept in [state] need the backend the process opened at start to be the shared
    // one the file names: a [state] change waits for a restart, and so do keys moving there.
    if matches!(
        config.api_keys.as_ref().map(|a| &a.store),
        Some(ApiKeyStoreConfig::State)
    ) && !state.is_shared()
    {
        return Err(ReloadRefused::Unusable(vec![BuildError::new(
            &config,
            "api_keys.store",
            BuildProblem::ApiKeysNeedRestart,
        )]));
    }
    // At start a shared store that does not answer leaves the gateway without keys until it
    // does; on a reload the running snapshot has them, and keeps serving with them.
    if snapshot
        .auth
        .api_keys
        .as_ref()
        .is_some_and(|v| !v.has_read())
    {
        return Err(ReloadRefused::Unusable(vec![BuildError::new(
            &config,
            "api_keys",
            BuildProblem::ApiKeysUnread,
        )]));
    }
    Ok(Rebuilt {
        snapshot,
        restart,
        config,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::snapshot::tests::{Dir, config};
    use idgate_store::MemoryStore;

    #[test]
    fn restart_required_names_each_setting_that_changed() {
        let dir = Dir::new("restart");
        let running = config(&dir, "");
        assert!(restart_required(&running, &running.clone()).is_empty());

        // Routes, upstreams and their credentials change live, and so do the listener's
        // timeouts and TLS versions: no restart.
        let mut new = running.clone();
        new.listener.idle_timeout = Duration::from_secs(1);
        new.listener.tls_min_version = idgate_tls::TlsVersion::Tls13;
        new.routes[0].allow.clear();
        new.upstreams[0].request_timeout = Duration::from_secs(1);
        assert!(restart_required(&running, &new).is_empty());

        let mut new = running.clone();
        new.listener.max_connections += 1;
        new.log.format = idgate_config::LogFormat::Json;
        new.workers += 1;
        assert_eq!(
            restart_required(&running, &new),
            [
                RestartOnly::Listener,
                RestartOnly::Log,
                RestartOnly::Workers
            ]
        );

        let mut new = running.clone();
        new.admin.bind.set_port(1);
        new.identity.poll_interval = Duration::from_secs(1);
        // Other files change live.
        if let idgate_config::IdentitySource::Files(f) = &mut new.identity.source {
            f.svid_cert = dir.0.join("other.pem");
        }
        assert_eq!(
            restart_required(&running, &new),
            [RestartOnly::Identity, RestartOnly::Admin]
        );
        assert_eq!(RestartOnly::Admin.to_string(), "admin");

        // Files to the Workload API: a restart.
        let mut new = running.clone();
        new.identity.source = idgate_config::IdentitySource::WorkloadApi(
            idgate_tls::WorkloadEndpoint::parse("unix:///run/spire/agent.sock").unwrap(),
        );
        assert_eq!(restart_required(&running, &new), [RestartOnly::Identity]);
    }

    #[test]
    fn the_audit_writer_needs_a_restart_and_its_policies_do_not() {
        let dir = Dir::new("restart-audit");
        dir.write("signing.pem", b"unused");
        let with = |extra: &str| {
            config(
                &dir,
                &format!("[audit]\ndir = \"trail\"\nsigning_key = \"file:signing.pem\"\n{extra}"),
            )
        };
        let running = with("");
        assert!(
            restart_required(
                &running,
                &with("on_audit_full = \"fail_closed\"\nblock_timeout = \"1s\"")
            )
            .is_empty()
        );
        assert_eq!(
            restart_required(&running, &with("sync_interval = \"1s\"")),
            [RestartOnly::Audit]
        );
        assert_eq!(
            restart_required(&running, &config(&dir, "")),
            [RestartOnly::Audit]
        );
    }

    #[test]
    fn a_reload_that_cannot_be_used_names_file_key_and_reason() {
        let dir = Dir::new("reload");
        let running = config(&dir, "");
        // The file now names a CA file without a certificate: it validates, but the
        // snapshot cannot be built.
        dir.write("ca.pem", b"no certificate here\n");
        let bad = config(&dir, "ca = \"ca.pem\"");
        let roots = Arc::new(RootCertStore::empty());
        let refused = match rebuild(
            &bad.file,
            &running,
            &roots,
            &idgate_tls::crypto_provider(),
            &StateStore::from(MemoryStore::new()),
            &Shared::new(Arc::new(
                TlsMaterial::pending(idgate_tls::crypto_provider()),
            )),
        ) {
            Ok(_) => panic!("the reload should be refused"),
            Err(refused) => refused,
        };
        let problems = refused.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        let (file, key, reason) = &problems[0];
        assert_eq!(*file, bad.file.display().to_string());
        assert_eq!(key, "upstreams[0].ca");
        assert!(reason.contains("no CERTIFICATE block"), "{reason}");

        // A file that does not validate names its key the same way.
        dir.write("idgate.toml", b"frobnicate = true\n");
        let refused = match rebuild(
            &bad.file,
            &running,
            &roots,
            &idgate_tls::crypto_provider(),
            &StateStore::from(MemoryStore::new()),
            &Shared::new(Arc::new(
                TlsMaterial::pending(idgate_tls::crypto_provider()),
            )),
        ) {
            Ok(_) => panic!("the reload should be refused"),
            Err(refused) => refused,
        };
        assert!(
            refused
                .problems()
                .iter()
                .any(|(_, key, reason)| key == "frobnicate" && reason.contains("unknown key")),
            "{:?}",
            refused.problems()
        );
    }
}
