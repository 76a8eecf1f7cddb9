//! What a reload builds: the new configuration loaded and validated as `idgate check` does,
//! its snapshot built, and the parts it changes that only a restart puts into use.

use std::sync::Arc;

use idgate_config::{ApiKeyStoreConfig, AuditConfig, Config, RedisNodes, StateBackend};
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

    /// The keys under this part that differ between `running` and `new`: what a reload
    /// leaves waiting for a restart (the part's own key when it is compared whole).
    pub fn changed_keys(self, running: &Config, new: &Config) -> Vec<&'static str> {
        let changed = |pairs: &[(bool, &'static str)]| -> Vec<&'static str> {
            pairs.iter().filter(|(c, _)| *c).map(|(_, k)| *k).collect()
        };
        let keys = match self {
            Self::Listener => {
                let (a, b) = (&running.listener, &new.listener);
                changed(&[
                    (a.bind != b.bind, "listener.bind"),
                    (
                        a.max_connections != b.max_connections,
                        "listener.max_connections",
                    ),
                    (
                        a.max_connections_per_ip != b.max_connections_per_ip,
                        "listener.max_connections_per_ip",
                    ),
                    (
                        a.max_connections_per_identity != b.max_connections_per_identity,
                        "listener.max_connections_per_identity",
                    ),
                ])
            }
            Self::Identity => {
                let (a, b) = (&running.identity, &new.identity);
                changed(&[
                    (a.poll_interval != b.poll_interval, "identity.poll_interval"),
                    (
                        a.workload_api() != b.workload_api(),
                        "identity.workload_api",
                    ),
                    (a.svid_hint != b.svid_hint, "identity.svid_hint"),
                ])
            }
            Self::Admin => changed(&[(running.admin.bind != new.admin.bind, "admin.bind")]),
            Self::Log => vec!["log.format"],
            Self::State => state_keys(&running.state, &new.state),
            Self::Audit => match (&running.audit, &new.audit) {
                (Some(a), Some(b)) => {
                    let (a, b) = (&a.writer, &b.writer);
                    changed(&[
                        (a.dir != b.dir, "audit.dir"),
                        (a.rotate_size != b.rotate_size, "audit.rotate_size"),
                        (a.rotate_age != b.rotate_age, "audit.rotate_age"),
                        (
                            a.checkpoint_every != b.checkpoint_every,
                            "audit.checkpoint_every",
                        ),
                        (
                            a.checkpoint_interval != b.checkpoint_interval,
                            "audit.checkpoint_interval",
                        ),
                        (a.sync_interval != b.sync_interval, "audit.sync_interval"),
                        (a.queue_capacity != b.queue_capacity, "audit.queue_capacity"),
                        (a.signing_key != b.signing_key, "audit.signing_key"),
                        (a.public_keys != b.public_keys, "audit.public_keys"),
                        (a.encryption_key != b.encryption_key, "audit.encryption_key"),
                        (
                            a.previous_encryption_keys != b.previous_encryption_keys,
                            "audit.previous_encryption_keys",
                        ),
                    ])
                }
                // Enabled or disabled: the whole section.
                _ => Vec::new(),
            },
            Self::Workers | Self::Vault | Self::Incidents | Self::Siem => Vec::new(),
        };
        if keys.is_empty() {
            vec![self.key()]
        } else {
            keys
        }
    }
}

/// The keys of `[state]` that differ: `state.backend` when it is another backend.
fn state_keys(a: &StateBackend, b: &StateBackend) -> Vec<&'static str> {
    match (a, b) {
        (StateBackend::Memory, StateBackend::Memory) => Vec::new(),
        (StateBackend::Redb { path: p }, StateBackend::Redb { path: q }) => {
            if p == q {
                Vec::new()
            } else {
                vec!["state.path"]
            }
        }
        (StateBackend::Redis(a), StateBackend::Redis(b)) => [
            (
                a.nodes != b.nodes,
                match b.nodes {
                    RedisNodes::Server(_) => "state.url",
                    RedisNodes::Cluster(_) => "state.cluster",
                },
            ),
            (a.username != b.username, "state.username"),
            (a.password != b.password, "state.password"),
            (a.ca != b.ca, "state.ca"),
            (a.timeout != b.timeout, "state.timeout"),
            (a.prefix != b.prefix, "state.prefix"),
        ]
        .into_iter()
        .filter_map(|(c, k)| c.then_some(k))
        .collect(),
        _ => vec!["state.backend"],
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
    /// What it changes that waits for a restart, with the keys under each.
    pub(crate) restart: Vec<(RestartOnly, Vec<&'static str>)>,
    /// The file's configuration as this process runs it (see [`as_running`]).
    pub(crate) config: Config,
}

/// `new` with the restart-only sections a snapshot or the listener is built from as the
/// process runs them: `[state]` (the backend opened at start, whose per-call timeout the
/// rate limits and lockouts use), the `[identity]` source (files or which Workload API,
/// whose JWT bundles a `[jwt_svid]` without bundle files reads), the listener's socket and
/// connection caps (the handshake caps, a share of them, are sized against those), and
/// whether there is an `[audit]` trail (its record rate and block timeout guard the trail
/// the process writes). Nothing of a change that waits for a restart is then put into use
/// by halves. Other files of the same source, and the trail's policies, change live.
fn as_running(mut new: Config, running: &Config) -> Result<Config, ReloadRefused> {
    new.state = running.state.clone();
    if new.identity.workload_api() != running.identity.workload_api() {
        new.identity.source = running.identity.source.clone();
    }
    new.identity.svid_hint = running.identity.svid_hint.clone();
    new.identity.poll_interval = running.identity.poll_interval;
    // The detector started with the running section: the counters feeding it follow the same
    // one (its critical routes), not half of each.
    new.incidents = running.incidents.clone();
    new.listener = new
        .listener
        .with_caps_of(&running.listener, &new.file)
        .map_err(ReloadRefused::Invalid)?;
    new.audit = match (&running.audit, new.audit.take()) {
        (None, _) => None,
        (Some(trail), None) => Some(trail.clone()),
        (Some(trail), Some(policies)) => Some(AuditConfig {
            writer: trail.writer.clone(),
            ..policies
        }),
    };
    Ok(new)
}

/// What `config` needs of the process that it did not start with: the problems that refuse
/// the reload until a restart.
fn needs_restart(config: &Config, running: &Config, state: &StateStore) -> Vec<BuildError> {
    let mut problems = Vec::new();
    // Keys kept in [state] need the backend the process opened at start to be the shared
    // one the file names: a [state] change waits for a restart, and so do keys moving there.
    if matches!(
        config.api_keys.as_ref().map(|a| &a.store),
        Some(ApiKeyStoreConfig::State)
    ) && !state.is_shared()
    {
        problems.push(BuildError::new(
            config,
            "api_keys.store",
            BuildProblem::ApiKeysNeedRestart,
        ));
    }
    // The file may name a durable [state] for them, but the events would go to the store
    // the process opened: answered 2xx, then lost at exit.
    if !config.webhooks.is_empty() && !state.is_durable() {
        problems.push(BuildError::new(
            config,
            "webhooks",
            BuildProblem::WebhooksNeedRestart,
        ));
    }
    // Validation lets a [jwt_svid] leave out its bundle files only with the Workload API; a
    // process that does not stream from it would refuse every JWT-SVID.
    if config
        .jwt_svid
        .as_ref()
        .is_some_and(|j| j.bundles.is_empty())
        && running.identity.workload_api().is_none()
    {
        problems.push(BuildError::new(
            config,
            "jwt_svid.bundles",
            BuildProblem::JwtSvidBundlesNeedRestart,
        ));
    }
    problems
}

/// What the next start would refuse in the restart-only parts `new` changes (`restart`),
/// found with the start's own builders where they change nothing: `[vault]`'s client
/// (built, nothing sent) and `[audit]`'s keys (read). A reload the next start would refuse
/// is refused now, while the running configuration still serves. The other parts' builders
/// are not run, and their problems show at restart: `[state]` (a redb file would be
/// created and locked, a Redis Cluster connected), `[siem]` and `[incidents]` (their sinks,
/// store and notifier open files and connections), `[listener]` and `[admin]` (sockets are
/// bound) and `[identity]`'s Workload API (a stream is opened). Blocking.
fn restart_checks(
    new: &Config,
    running: &Config,
    restart: &[(RestartOnly, Vec<&'static str>)],
) -> Vec<BuildError> {
    let changed = |part| restart.iter().any(|(p, _)| *p == part);
    let mut problems = Vec::new();
    if changed(RestartOnly::Vault)
        && let Some(vault) = &new.vault
        && let Err(e) = idgate_secrets::vault::VaultClient::new(vault.clone())
    {
        problems.push(BuildError::new(new, "vault", BuildProblem::Vault(e)));
    }
    // A `vault:` key would be read through the running client, not the one the new
    // [vault] section makes at the next start: it is left to the start.
    let read_elsewhere = |w: &idgate_config::AuditWriterConfig| {
        running.vault != new.vault
            && std::iter::once(&w.signing_key)
                .chain(&w.encryption_key)
                .chain(&w.previous_encryption_keys)
                .any(|k| matches!(k, idgate_secrets::SecretRef::Vault(_)))
    };
    if changed(RestartOnly::Audit)
        && let Some(audit) = &new.audit
        && !read_elsewhere(&audit.writer)
        && let Err(e) = crate::audit::AuditSetup::load(audit)
    {
        problems.push(BuildError::new(new, e.key(), BuildProblem::Audit(e)));
    }
    problems
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
    let loaded = idgate_config::load(file).map_err(ReloadRefused::Invalid)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let restart: Vec<_> = restart_required(running, &loaded)
        .into_iter()
        .map(|part| (part, part.changed_keys(running, &loaded)))
        .collect();
    let mut problems = restart_checks(&loaded, running, &restart);
    let config = as_running(loaded, running)?;
    problems.extend(needs_restart(&config, running, state));
    let snapshot = match Snapshot::build(&config, roots, provider, state, shared) {
        Ok(snapshot) if problems.is_empty() => snapshot,
        Ok(_) => return Err(ReloadRefused::Unusable(problems)),
        Err(errors) => {
            problems.splice(0..0, errors);
            return Err(ReloadRefused::Unusable(problems));
        }
    };
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
        // The warning names the keys that wait, not the whole section.
        assert_eq!(
            RestartOnly::Listener.changed_keys(&running, &new),
            ["listener.max_connections"]
        );
        assert_eq!(
            RestartOnly::Log.changed_keys(&running, &new),
            ["log.format"]
        );
        assert_eq!(
            RestartOnly::Workers.changed_keys(&running, &new),
            ["workers"]
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
        assert_eq!(
            RestartOnly::Identity.changed_keys(&running, &new),
            ["identity.poll_interval"]
        );
        assert_eq!(
            RestartOnly::Admin.changed_keys(&running, &new),
            ["admin.bind"]
        );
        assert_eq!(RestartOnly::Admin.to_string(), "admin");

        // Files to the Workload API: a restart.
        let mut new = running.clone();
        new.identity.source = idgate_config::IdentitySource::WorkloadApi(
            idgate_tls::WorkloadEndpoint::parse("unix:///run/spire/agent.sock").unwrap(),
        );
        assert_eq!(restart_required(&running, &new), [RestartOnly::Identity]);
        assert_eq!(
            RestartOnly::Identity.changed_keys(&running, &new),
            ["identity.workload_api"]
        );
    }

    #[test]
    fn incident_detection_keeps_the_section_it_started_with_until_a_restart() {
        let dir = Dir::new("restart-incidents");
        let with =
            |extra: &str| config(&dir, &format!("[incidents]\ndir = \"incidents\"\n{extra}"));
        let running = with("critical_routes = [\"kyc\"]");
        let new = with("");
        assert_eq!(restart_required(&running, &new), [RestartOnly::Incidents]);
        let kept = as_running(new, &running).unwrap();
        assert_eq!(kept.incidents, running.incidents);
        let without = as_running(config(&dir, ""), &running).unwrap();
        assert_eq!(without.incidents, running.incidents);
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
            RestartOnly::Audit.changed_keys(&running, &with("sync_interval = \"1s\"")),
            ["audit.sync_interval"]
        );
        assert_eq!(
            RestartOnly::Audit.changed_keys(&running, &config(&dir, "")),
            ["audit"]
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

    /// Rebuilds `file` for a process that runs `running` on the in-memory store.
    fn rebuild_for(file: &std::path::Path, running: &Config) -> Result<Rebuilt, ReloadRefused> {
        rebuild(
            file,
            running,
            &Arc::new(RootCertStore::empty()),
            &idgate_tls::crypto_provider(),
            &StateStore::from(MemoryStore::new()),
            &Shared::new(Arc::new(
                TlsMaterial::pending(idgate_tls::crypto_provider()),
            )),
        )
    }

    fn refused(result: Result<Rebuilt, ReloadRefused>) -> Vec<(String, String, String)> {
        match result {
            Ok(_) => panic!("the reload should be refused"),
            Err(refused) => refused.problems(),
        }
    }

    #[test]
    fn a_reload_that_changes_only_state_keeps_the_running_state_timeout() {
        let dir = Dir::new("reload-state");
        let running = config(&dir, "");
        // The file now names a Redis whose calls may take 50 ms: the process keeps the
        // in-memory store it opened, and its bound, until a restart.
        let redis = |timeout: &str| {
            format!(
                "[state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\ntimeout = \"{timeout}\""
            )
        };
        let new = config(&dir, &redis("50ms"));
        let rebuilt = rebuild_for(&new.file, &running).unwrap();
        assert_eq!(rebuilt.snapshot.limits.timeout, Duration::from_millis(500));
        assert_eq!(
            rebuilt.restart,
            [(RestartOnly::State, vec!["state.backend"])]
        );
        assert_eq!(rebuilt.config.state, running.state);

        // Between two Redis timeouts, the running one too.
        let running = config(&dir, &redis("200ms"));
        let new = config(&dir, &redis("50ms"));
        let rebuilt = rebuild_for(&new.file, &running).unwrap();
        assert_eq!(rebuilt.snapshot.limits.timeout, Duration::from_millis(200));
        assert_eq!(
            rebuilt.restart,
            [(RestartOnly::State, vec!["state.timeout"])]
        );
    }

    #[test]
    fn a_reload_whose_jwt_bundles_would_come_from_a_workload_api_not_streamed_is_refused() {
        let dir = Dir::new("reload-jwt-bundles");
        let running = config(&dir, "");
        // Files to the Workload API, with a [jwt_svid] that names no bundle file: its
        // bundles would come from a stream this process never opened.
        let text = std::fs::read_to_string(&running.file).unwrap();
        let start = text.find("[identity]").unwrap();
        let end = text.find("[[upstreams]]").unwrap();
        let new = format!(
            "{}[identity]\nworkload_api = \"unix:///run/spire/agent.sock\"\n\n[jwt_svid]\naudiences = [\"spiffe://example.org/idgate\"]\n\n{}",
            &text[..start],
            &text[end..]
        );
        let file = dir.write("idgate.toml", new.as_bytes());
        let problems = refused(rebuild_for(&file, &running));
        assert!(
            problems
                .iter()
                .any(|(_, key, reason)| key == "jwt_svid.bundles"
                    && reason.contains("does not stream")
                    && reason.contains("restart")),
            "{problems:?}"
        );
    }

    /// `config(dir, "")` with `keys` added to its `[listener]`, bound to `bind`.
    fn with_listener(dir: &Dir, bind: &str, keys: &str) -> Config {
        let file = config(dir, "").file;
        let text = std::fs::read_to_string(&file).unwrap().replacen(
            "bind = \"127.0.0.1:0\"\n",
            &format!("bind = \"{bind}\"\n{keys}\n"),
            1,
        );
        dir.write("idgate.toml", text.as_bytes());
        idgate_config::load(&file).unwrap()
    }

    #[test]
    fn a_reload_that_raises_max_connections_keeps_max_handshakes_within_the_running_cap() {
        let dir = Dir::new("reload-listener-caps");
        let running = with_listener(&dir, "127.0.0.1:0", "max_connections = 400");
        assert_eq!(
            (
                running.listener.max_handshakes,
                running.listener.max_handshakes_per_ip
            ),
            (100, 100)
        );
        // The semaphore keeps 400 places until a restart: the new file's defaults (10000
        // handshakes of 40000 connections) would let stalled handshakes take all 400.
        let new = with_listener(
            &dir,
            "127.0.0.1:1",
            "max_connections = 40000\nmax_connections_per_ip = 40000\nmax_connections_per_identity = 40000",
        );
        assert_eq!(new.listener.max_handshakes, 10_000);
        let rebuilt = rebuild_for(&new.file, &running).unwrap();
        let l = &rebuilt.config.listener;
        assert_eq!(
            (
                l.bind,
                l.max_connections,
                l.max_connections_per_ip,
                l.max_connections_per_identity
            ),
            (
                running.listener.bind,
                400,
                running.listener.max_connections_per_ip,
                running.listener.max_connections_per_identity
            )
        );
        assert_eq!((l.max_handshakes, l.max_handshakes_per_ip), (100, 100));
        assert_eq!(rebuilt.restart[0].0, RestartOnly::Listener);

        // A handshake cap the file writes is used when it fits the running cap…
        let new = with_listener(
            &dir,
            "127.0.0.1:0",
            "max_connections = 40000\nmax_handshakes = 50\nmax_handshakes_per_ip = 10",
        );
        let l = rebuild_for(&new.file, &running).unwrap().config.listener;
        assert_eq!(
            (l.max_connections, l.max_handshakes, l.max_handshakes_per_ip),
            (400, 50, 10)
        );
        // …and refused above it.
        let new = with_listener(
            &dir,
            "127.0.0.1:0",
            "max_connections = 40000\nmax_handshakes = 1000",
        );
        let problems = refused(rebuild_for(&new.file, &running));
        assert_eq!(
            problems,
            [(
                new.file.display().to_string(),
                "listener.max_handshakes".to_owned(),
                "must not be more than listener.max_connections the process runs with (400; a new value takes effect at restart)".to_owned()
            )]
        );
        // A per-address cap above the share the running caps leave, too.
        let new = with_listener(
            &dir,
            "127.0.0.1:0",
            "max_connections = 40000\nmax_handshakes_per_ip = 200",
        );
        let problems = refused(rebuild_for(&new.file, &running));
        assert_eq!(
            problems,
            [(
                new.file.display().to_string(),
                "listener.max_handshakes_per_ip".to_owned(),
                "must not be more than listener.max_handshakes (100, a share of the max_connections the process runs with)".to_owned()
            )]
        );
    }

    #[test]
    fn a_reload_that_removes_audit_keeps_the_running_trails_record_rate_and_block_timeout() {
        let dir = Dir::new("reload-audit-off");
        dir.write("signing.pem", b"unused");
        let audit = |extra: &str| {
            format!("[audit]\ndir = \"trail\"\nsigning_key = \"file:signing.pem\"\n{extra}\n")
        };
        let running = config(
            &dir,
            &audit("block_timeout = \"2s\"\nconnection_records_per_second = 5"),
        );
        for new in [config(&dir, ""), config(&dir, &audit("enabled = false"))] {
            let rebuilt = rebuild_for(&new.file, &running).unwrap();
            let policy = rebuilt.snapshot.audit;
            assert_eq!(policy.block_timeout, Duration::from_secs(2));
            assert_eq!(policy.connection_records_per_second, 5);
            assert_eq!(rebuilt.config.audit, running.audit);
            assert_eq!(rebuilt.restart, [(RestartOnly::Audit, vec!["audit"])]);
        }
        // The policies still change live.
        let new = config(
            &dir,
            &audit("block_timeout = \"1s\"\nconnection_records_per_second = 7"),
        );
        let policy = rebuild_for(&new.file, &running).unwrap().snapshot.audit;
        assert_eq!(policy.block_timeout, Duration::from_secs(1));
        assert_eq!(policy.connection_records_per_second, 7);
    }

    #[test]
    fn a_reload_whose_audit_keys_cannot_be_read_is_refused_naming_the_key() {
        let dir = Dir::new("reload-audit-keys");
        let running = config(&dir, "");
        let audit = "[audit]\ndir = \"trail\"\nsigning_key = \"file:signing.pem\"\n";
        // Readable (the file validates), but no key: the next start would refuse it.
        dir.write("signing.pem", b"not a key\n");
        let new = config(&dir, audit);
        let problems = refused(rebuild_for(&new.file, &running));
        assert_eq!(problems.len(), 1, "{problems:?}");
        let (file, key, reason) = &problems[0];
        assert_eq!(*file, new.file.display().to_string());
        assert_eq!(key, "audit.signing_key");
        assert!(
            reason.contains("not a PKCS#8 Ed25519 private key"),
            "{reason}"
        );
        assert!(!reason.contains("not a key"), "{reason}");

        // With a key it is applied, waiting for the restart whole; the trail's directory is
        // left to the start.
        let (pem, _) = idgate_audit::generate_signing_key().unwrap();
        dir.write("signing.pem", pem.as_bytes());
        let rebuilt = rebuild_for(&new.file, &running).unwrap();
        assert_eq!(rebuilt.restart, [(RestartOnly::Audit, vec!["audit"])]);
        assert_eq!(rebuilt.config.audit, None);
        assert!(!dir.0.join("trail").exists());
    }

    #[test]
    fn a_reload_whose_vault_client_cannot_be_built_is_refused_naming_the_key() {
        let dir = Dir::new("reload-vault-client");
        let running = config(&dir, "");
        dir.write("vault-token", b"s.token");
        // The CA file exists (the file validates) but holds no certificate.
        dir.write("vault-ca.pem", b"no certificate here\n");
        let new = config(
            &dir,
            "[vault]\naddress = \"https://vault.internal:8200\"\nca = \"vault-ca.pem\"\ntoken = \"file:vault-token\"\n",
        );
        let problems = refused(rebuild_for(&new.file, &running));
        assert!(
            problems
                .iter()
                .any(|(_, key, reason)| key == "vault" && reason.contains("Vault client")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_reload_that_adds_vault_says_a_restart_is_needed() {
        let dir = Dir::new("reload-vault-added");
        let running = config(&dir, "");
        dir.write("vault-token", b"s.token");
        let new = config(
            &dir,
            "[upstreams.credential]\nheader = \"x-api-key\"\nsecret = \"vault:secret/idgate/didit#api_key\"\n\n[vault]\naddress = \"https://vault.internal:8200\"\ntoken = \"file:vault-token\"\n",
        );
        let problems = refused(rebuild_for(&new.file, &running));
        assert_eq!(problems.len(), 1, "{problems:?}");
        let (_, key, reason) = &problems[0];
        assert_eq!(key, "upstreams[0].credential.secret");
        assert!(
            reason.contains("no Vault client is running")
                && reason.contains("restart after adding it")
                && !reason.contains("need a [vault] section"),
            "{reason}"
        );
    }
}
