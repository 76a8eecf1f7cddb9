//! Putting it together: [`Gateway::prepare`] builds everything a configuration describes
//! without opening a socket (so `idgate check` and `idgate serve` agree on what is valid);
//! [`Gateway::run`] binds, serves, reloads on SIGHUP and drains on shutdown (see
//! `lifecycle.rs`).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use idgate_config::{ApiKeyStoreConfig, ClientAuth, Config};
use idgate_store::{MemoryStore, StateStore};

use crate::state::open_state;
use idgate_tls::{MaterialSpec, TlsMaterial, watch::spawn_watcher};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLog;
use crate::audit::AuditSetup;
use crate::lifecycle::{BackgroundWriters, Drain};
use crate::listener::{ListenerShared, accept_loop};
use crate::metrics::Metrics;
use crate::service::Services;
use crate::snapshot::{BuildError, BuildProblem, Snapshot};

/// A gateway ready to bind.
pub struct Gateway {
    config: Config,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    material: Arc<TlsMaterial>,
    server_config: Arc<rustls::ServerConfig>,
    snapshot: Snapshot,
    access_log: Option<Arc<AccessLog>>,
    state: StateStore,
    /// `[audit]` with its keys read; the writer starts in `run`.
    audit: Option<AuditSetup>,
    /// Handed each audit line once written (a SIEM exporter).
    audit_export: Option<Arc<dyn idgate_audit::Export>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config.file)
            .finish_non_exhaustive()
    }
}

/// Where `run` listens, once bound.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub listener: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
}

impl Gateway {
    /// Loads the TLS material, the upstream clients and credentials. Blocking; every
    /// problem is returned, each naming the configuration file and the key at fault.
    pub fn prepare(config: Config) -> Result<Self, Vec<BuildError>> {
        let provider = idgate_tls::crypto_provider();
        let spec = MaterialSpec {
            svid_cert: config.identity.svid_cert.clone(),
            svid_key: config.identity.svid_key.clone(),
            bundles: config.identity.trust_bundles.clone(),
        };
        let mut errors = Vec::new();
        let material = TlsMaterial::load(spec, provider.clone())
            .map_err(|errs| {
                errors.extend(errs.into_iter().map(|e| {
                    BuildError::new(
                        &config,
                        identity_key(&config, &e),
                        BuildProblem::Identity(e),
                    )
                }))
            })
            .ok();
        // `vault:` references are read through the process-wide client: it must be in place
        // before the credentials load. A changed [vault] section takes effect at restart.
        if let Some(v) = &config.vault {
            match idgate_secrets::vault::VaultClient::new(v.clone()) {
                Ok(client) => idgate_secrets::vault::install(client),
                Err(e) => errors.push(BuildError::new(&config, "vault", BuildProblem::Vault(e))),
            }
        }
        let state = open_state(&config.state)
            .map_err(|e| errors.push(BuildError::new(&config, "state", BuildProblem::State(e))))
            .ok();
        let roots = Arc::new(idgate_tls::roots::platform_roots().clone());
        // Without the backend the rest is still built, so that every problem is reported.
        let scratch;
        let state_for_build = match &state {
            Some(s) => s,
            None => {
                scratch = StateStore::from(MemoryStore::new());
                &scratch
            }
        };
        let snapshot = Snapshot::build(&config, &roots, &provider, state_for_build)
            .map_err(|errs| errors.extend(errs))
            .ok();
        // The trail's keys are read now, so that `check` finds their problems too.
        let audit = match config.audit.as_ref().map(AuditSetup::load) {
            None => Some(None),
            Some(Ok(setup)) => Some(Some(setup)),
            Some(Err(e)) => {
                errors.push(BuildError::new(&config, e.key(), BuildProblem::Audit(e)));
                None
            }
        };
        let (Some(material), Some(snapshot), Some(state), Some(audit)) =
            (material, snapshot, state, audit)
        else {
            return Err(errors);
        };
        let server_config = material
            .server_config(
                config.listener.tls_min_version,
                config.listener.client_auth == ClientAuth::Required,
            )
            .map_err(|e| {
                vec![BuildError::new(
                    &config,
                    "listener",
                    BuildProblem::Listener(e),
                )]
            })?;
        Ok(Self {
            config,
            provider,
            roots,
            material: Arc::new(material),
            server_config: Arc::new(server_config),
            snapshot,
            access_log: None,
            state,
            audit,
            audit_export: None,
        })
    }

    /// Hands each line of the audit trail, once written, to `export` (see
    /// [`idgate_audit::Export`]: it runs on the writer thread and must not block).
    pub fn with_audit_export(mut self, export: Arc<dyn idgate_audit::Export>) -> Self {
        self.audit_export = Some(export);
        self
    }

    /// Writes each request's record to `log`; without one, requests are not logged.
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Self {
        self.access_log = Some(log);
        self
    }

    /// Binds the listener and the admin listener, then serves until `shutdown` completes;
    /// `on_bound` learns the bound addresses (useful with port 0).
    ///
    /// Then it drains (`[lifecycle]`): `/readyz` answers 503 at once, the listener keeps
    /// accepting for `drain_delay` and then closes, in-flight requests get `drain_timeout`
    /// to finish, and the background writers flush in order (audit trail, SIEM export).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        on_bound: impl FnOnce(Bound),
    ) -> std::io::Result<()> {
        let cfg = &self.config;
        let drain = Drain::from(&cfg.lifecycle);
        let listener = TcpListener::bind(cfg.listener.bind).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("listener.bind {}: {e}", cfg.listener.bind),
            )
        })?;
        let admin = TcpListener::bind(cfg.admin.bind).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("admin.bind {}: {e}", cfg.admin.bind))
        })?;
        let bound = Bound {
            listener: listener.local_addr()?,
            admin: admin.local_addr()?,
        };

        // The SIEM sinks start first: the trail's start may already write entries (a gap).
        let siem = crate::siem::start(cfg).await?;
        let export = match (&self.audit_export, &siem) {
            (Some(export), _) => Some(export.clone()),
            (None, Some(siem)) => Some(siem.clone() as Arc<dyn idgate_audit::Export>),
            (None, None) => None,
        };
        let audit = match self.audit {
            Some(setup) => Some(crate::audit::start(setup, export, cfg).await?),
            None => None,
        };
        let mut services = Services::new(self.access_log.clone(), self.state.clone());
        if let Some(trail) = &audit {
            services = services.with_audit(trail.clone());
        }
        if let Some(siem) = &siem {
            services = services.with_siem(siem.metrics());
        }
        let services = Arc::new(services);
        services.metrics.certificates_of(self.material.clone());
        tokio::spawn(sweep_limiter(Arc::downgrade(&services)));
        self.snapshot.start_background(&services.metrics);
        let snapshot = Arc::new(ArcSwap::from_pointee(self.snapshot));
        let watch_handle = spawn_watcher(self.material.clone(), cfg.identity.poll_interval);
        let (stop_tx, stop_rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));

        // Registered before the gateway reports ready: an unhandled SIGHUP would end the
        // process.
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen for SIGHUP: {e}")))?;
        tokio::spawn(
            Reloader {
                file: cfg.file.clone(),
                snapshot: snapshot.clone(),
                roots: self.roots.clone(),
                provider: self.provider.clone(),
                material: watch_handle,
                metrics: services.metrics.clone(),
                running: cfg.clone(),
                state: self.state.clone(),
            }
            .on_sighup(hup, stop_rx.clone()),
        );
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(crate::admin::serve_admin(
            admin,
            ready.clone(),
            services.metrics.clone(),
            admin_stop_rx,
        ));

        let shared = Arc::new(ListenerShared::new(
            snapshot,
            services,
            TlsAcceptor::from(self.server_config.clone()),
            cfg.listener.clone(),
        ));
        let accept = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx));

        tracing::info!(
            listener = %bound.listener,
            admin = %bound.admin,
            workers = cfg.workers,
            routes = cfg.routes.len(),
            upstreams = cfg.upstreams.len(),
            "idgate is serving"
        );
        ready.store(true, Ordering::Release);
        on_bound(bound);

        shutdown.await;
        // Not ready first, while still accepting: a load balancer polling /readyz stops
        // sending here before any connection is refused.
        ready.store(false, Ordering::Release);
        tracing::info!(
            drain_delay = ?drain.delay,
            drain_timeout = ?drain.timeout,
            "shutting down: not ready; the listener closes after drain_delay"
        );
        tokio::time::sleep(drain.delay).await;
        tracing::info!("listener closed: draining in-flight requests");
        let _ = stop_tx.send(true);
        let _ = accept.await;
        // Every connection was told by the stop signal (HTTP/1.1 answers its next response
        // with `Connection: close`, HTTP/2 sends GOAWAY); they end as their requests do.
        if shared.drained(drain.timeout).await {
            tracing::info!("all connections drained");
        } else {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
        // The admin listener answers (not ready) until the drain is over.
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        // Every request has ended (or been given up on): the background writers flush in
        // the order their data flows.
        let mut writers = BackgroundWriters::default();
        if let Some(trail) = audit {
            // The last batch is written and the file closed with a signed checkpoint.
            writers.then("audit trail", async move {
                let _ = tokio::task::spawn_blocking(move || trail.close()).await;
                tracing::info!("audit trail closed");
            });
        }
        if let Some(siem) = siem {
            writers.then("SIEM export", crate::siem::stop(siem));
        }
        // Writers fed by the requests (an outbox, say) register here, after the SIEM export.
        writers.flush().await;
        Ok(())
    }
}

/// SIGHUP: reload the TLS material now, and the routes and upstreams from the configuration
/// file. A configuration that does not validate is logged and the running one stays.
/// What a SIGHUP reload needs.
struct Reloader {
    file: PathBuf,
    snapshot: Arc<ArcSwap<Snapshot>>,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    material: idgate_tls::watch::WatchHandle,
    metrics: Arc<Metrics>,
    /// The configuration the process started with: what a reload cannot change stays as
    /// it says.
    running: Config,
    /// The process's state backend, which every snapshot uses.
    state: StateStore,
}

/// Removes the dead keys of the in-process rate limiter every few seconds, so that its
/// memory follows the callers of the moment; ends with the gateway.
async fn sweep_limiter(services: std::sync::Weak<Services>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(services) = services.upgrade() else {
            return;
        };
        services.limiter.sweep(std::time::SystemTime::now());
    }
}

/// The key of `[identity]` a TLS material problem is about, found by its file.
fn identity_key(config: &Config, e: &idgate_tls::MaterialError) -> String {
    let path = match e {
        idgate_tls::MaterialError::Read { path, .. }
        | idgate_tls::MaterialError::Invalid { path, .. } => path,
    };
    let id = &config.identity;
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

/// A part of the configuration that a reload leaves as it is: it takes effect at restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartOnly {
    /// `[listener]`: the bound socket, TLS versions and connection limits.
    Listener,
    /// `[identity]`: the SVID's and trust bundles' files and trust domains (their contents
    /// are reloaded).
    Identity,
    /// `[admin]`: the bound socket.
    Admin,
    /// `[log]`: the subscriber is installed once.
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
        }
    }
}

impl std::fmt::Display for RestartOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// The parts of `new` that differ from `running` but take effect only at restart.
pub fn restart_required(running: &Config, new: &Config) -> Vec<RestartOnly> {
    [
        (running.listener != new.listener, RestartOnly::Listener),
        (running.identity != new.identity, RestartOnly::Identity),
        (running.admin != new.admin, RestartOnly::Admin),
        (running.log != new.log, RestartOnly::Log),
        (running.workers != new.workers, RestartOnly::Workers),
        (running.vault != new.vault, RestartOnly::Vault),
        (running.state != new.state, RestartOnly::State),
        (
            running.audit.as_ref().map(|a| &a.writer) != new.audit.as_ref().map(|a| &a.writer),
            RestartOnly::Audit,
        ),
    ]
    .into_iter()
    .filter_map(|(changed, part)| changed.then_some(part))
    .collect()
}

/// Why a reload was refused; the running configuration stays.
#[derive(Debug)]
enum ReloadRefused {
    Invalid(idgate_config::ConfigErrors),
    Unusable(Vec<BuildError>),
}

impl ReloadRefused {
    /// Each problem as (file, key, reason).
    fn problems(&self) -> Vec<(String, String, String)> {
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

/// Reads and builds the configuration in `file` for a reload. Blocking.
fn rebuild(
    file: &std::path::Path,
    running: &Config,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    state: &StateStore,
) -> Result<(Snapshot, Vec<RestartOnly>), ReloadRefused> {
    let config = idgate_config::load(file).map_err(ReloadRefused::Invalid)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    let restart = restart_required(running, &config);
    let snapshot =
        Snapshot::build(&config, roots, provider, state).map_err(ReloadRefused::Unusable)?;
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
    Ok((snapshot, restart))
}

impl Reloader {
    async fn on_sighup(
        self,
        mut hup: tokio::signal::unix::Signal,
        mut stop: watch::Receiver<bool>,
    ) {
        let Self {
            file,
            snapshot,
            roots,
            provider,
            material,
            metrics,
            running,
            state,
        } = self;
        let running = Arc::new(running);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                s = hup.recv() => if s.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading TLS material and configuration");
            material.trigger();
            let (file, roots, provider) = (file.clone(), roots.clone(), provider.clone());
            let (running, state) = (running.clone(), state.clone());
            let built = tokio::task::spawn_blocking(move || {
                rebuild(&file, &running, &roots, &provider, &state)
            })
            .await;
            match built {
                Ok(Ok((new, restart))) => {
                    new.start_background(&metrics);
                    snapshot.store(Arc::new(new));
                    tracing::info!(
                        "configuration reloaded: routes, upstreams, credentials and authentication replaced"
                    );
                    for part in restart {
                        tracing::warn!(
                            setting = part.key(),
                            "the new configuration changes `{part}`, which takes effect only at restart; the running one stays"
                        );
                    }
                }
                Ok(Err(refused)) => {
                    for (file, key, reason) in refused.problems() {
                        let problem = if key.is_empty() {
                            format!("{file}: {reason}")
                        } else {
                            format!("{file}: {key}: {reason}")
                        };
                        tracing::error!(
                            %problem,
                            %file,
                            %key,
                            %reason,
                            "configuration reload refused; the running configuration stays"
                        );
                    }
                }
                Err(e) => tracing::error!(error = %e, "configuration reload task failed"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::snapshot::tests::{Dir, config};

    #[test]
    fn restart_required_names_each_setting_that_changed() {
        let dir = Dir::new("restart");
        let running = config(&dir, "");
        assert!(restart_required(&running, &running.clone()).is_empty());

        // Routes, upstreams and their credentials change live: no restart.
        let mut new = running.clone();
        new.routes[0].allow.clear();
        new.upstreams[0].request_timeout = Duration::from_secs(1);
        assert!(restart_required(&running, &new).is_empty());

        let mut new = running.clone();
        new.listener.idle_timeout = Duration::from_secs(1);
        new.log.level = "debug".to_owned();
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
        assert_eq!(
            restart_required(&running, &new),
            [RestartOnly::Identity, RestartOnly::Admin]
        );
        assert_eq!(RestartOnly::Admin.to_string(), "admin");
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
