//! Reloads of the configuration, on SIGHUP and when the configuration file (or a file it
//! names that is read with it, such as a route's schema) changes: the new configuration is
//! loaded and validated as `idgate check` does, built, and swapped in atomically; a request
//! keeps the snapshot it started with. A configuration that does not validate or cannot be
//! built is refused with every problem logged, and the running one stays.
//!
//! A change is noticed by the directory watch the TLS material uses (which sees an editor's
//! rename-over and a Kubernetes `..data` swap), with a periodic check as a backstop. The
//! files must be quiet for a moment before they are read, and a content already tried is not
//! tried again: a file caught half-written is refused like any invalid one, and the next
//! write, which changes its content, is tried anew.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use idgate_config::{ClientAuth, Config, IdentitySource};
use idgate_store::StateStore;
use idgate_tls::TlsMaterial;
use idgate_tls::watch::{FileWatch, WatchHandle};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use crate::lifecycle::Drain;
use crate::listener::ListenerLive;
use crate::metrics::Metrics;
use crate::snapshot::{BuildError, BuildProblem, Snapshot};
pub(crate) use metrics::{Outcome, ReloadMetrics};
pub(crate) use rebuild::identity_key;
use rebuild::{Rebuilt, ReloadRefused, identity_for, rebuild};
pub use rebuild::{RestartOnly, restart_required};

mod metrics;
mod rebuild;

/// How long the watched files must go unchanged before they are read: an editor or a
/// deployment tool writes in several steps.
const SETTLE: Duration = Duration::from_millis(250);
/// The most settling rounds before the files are read anyway (a file written without end).
const MAX_SETTLE_ROUNDS: u32 = 20;

/// Puts a new `[log] level` into use: the process's log filter, which whoever installed
/// the log subscriber owns.
pub trait LogFilter: Send + Sync {
    /// `level` is a filter directive the configuration validated (`info`,
    /// `info,idgate_proxy=debug`).
    fn set_level(&self, level: &str) -> Result<(), LogFilterError>;
}

/// Why the log filter could not be replaced; the previous one stays.
#[derive(Debug, thiserror::Error)]
#[error("the log filter could not be replaced: {0}")]
pub struct LogFilterError(pub String);

/// What a reload needs, for the life of the gateway.
pub(crate) struct Reloader {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) provider: Arc<CryptoProvider>,
    /// The TLS material's watch, triggered by SIGHUP.
    pub(crate) material: WatchHandle,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) reloads: ReloadMetrics,
    /// The configuration the process started with: what a reload cannot change stays as
    /// it says.
    pub(crate) running: Arc<Config>,
    /// The identity source in use: the start's, then the files of each applied reload. A
    /// reload that names another kind of source keeps this one, never the start's files.
    pub(crate) identity_in_use: std::sync::Mutex<IdentitySource>,
    /// The process's state backend, which every snapshot uses.
    pub(crate) state: StateStore,
    /// The log filter and the `[log] level` it has, when it can be changed.
    pub(crate) log: Option<(Arc<dyn LogFilter>, String)>,
    /// The listener's settings for new connections.
    pub(crate) listener: Arc<ArcSwap<ListenerLive>>,
    /// The TLS material a new listener TLS configuration serves.
    pub(crate) tls: Arc<TlsMaterial>,
    /// What every snapshot shares (the material, the Workload API's JWT bundles).
    pub(crate) shared: crate::snapshot::Shared,
    /// `[lifecycle]`, read when the gateway is told to stop.
    pub(crate) drain: Arc<ArcSwap<Drain>>,
    /// Breakers, budgets and endpoint health: kept across reloads, dropped with their
    /// upstream.
    pub(crate) resilience: Arc<crate::resilience::Resilience>,
    /// Delivers the webhooks of the snapshot in force.
    pub(crate) deliverer: Arc<idgate_webhooks::Deliverer>,
    /// Incident detection's counters, when `[incidents]` is on: kept for the routes and
    /// upstreams each configuration still has.
    pub(crate) incidents: Option<Arc<idgate_incidents::Feed>>,
}

/// The files a configuration is read from: itself, the route schemas and the JWT-SVID
/// bundles it names.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files = vec![config.file.clone()];
    files.extend(
        config
            .routes
            .iter()
            .filter_map(|r| r.schema.as_ref().map(|s| s.path.clone())),
    );
    files.extend(
        config
            .jwt_svid
            .iter()
            .flat_map(|j| &j.bundles)
            .map(|b| b.file.clone()),
    );
    files
}

/// What the files hold now, as a hash: equal when no file changed (a missing file counts as
/// its own content). Blocking.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        std::fs::read(f).ok().hash(&mut h);
    }
    h.finish()
}

/// The reload's log lines keep the target they have always had: filters and alerts select
/// on it.
const LOG_TARGET: &str = "idgate_proxy::gateway";

/// Waits until no change has been reported for [`SETTLE`]. A SIGHUP meanwhile (a deployment
/// tool writes the file, then signals) joins this reload rather than making another one;
/// returns whether one came.
async fn settle(changes: &mut mpsc::Receiver<()>, hup: &mut tokio::signal::unix::Signal) -> bool {
    let mut signalled = false;
    for _ in 0..MAX_SETTLE_ROUNDS {
        let quiet = tokio::select! {
            () = tokio::time::sleep(SETTLE) => true,
            s = hup.recv() => {
                signalled |= s.is_some();
                false
            }
        };
        let mut changed = false;
        while changes.try_recv().is_ok() {
            changed = true;
        }
        if quiet && !changed {
            break;
        }
    }
    signalled
}

/// The watch on the configuration's files, started before the gateway reports ready so that
/// no change after that is missed.
pub(crate) struct ConfigWatch {
    files: Vec<PathBuf>,
    watch: Option<Arc<FileWatch>>,
    changes: mpsc::Receiver<()>,
    /// The files' content when the configuration was loaded.
    seen: u64,
}

impl ConfigWatch {
    /// Watches the files `config` was read from; `seen` is their [`config_fingerprint`] at
    /// load time.
    pub(crate) async fn start(config: &Config, seen: u64) -> Self {
        let files = watched_files(config);
        let (changed_tx, changes) = mpsc::channel(1);
        let watch = {
            let files = files.clone();
            tokio::task::spawn_blocking(move || FileWatch::new(&files, changed_tx)).await
        };
        let watch = match watch {
            Ok(Ok(watch)) => Some(Arc::new(watch)),
            Ok(Err(e)) => {
                tracing::warn!(target: LOG_TARGET, error = %e, "cannot watch the configuration file; it is reloaded on SIGHUP and checked every identity.poll_interval");
                None
            }
            Err(e) => {
                tracing::warn!(target: LOG_TARGET, error = %e, "cannot watch the configuration file");
                None
            }
        };
        Self {
            files,
            watch,
            changes,
            seen,
        }
    }
}

/// What the files `config` was read from hold now (see [`ConfigWatch`]). Blocking.
pub(crate) fn config_fingerprint(config: &Config) -> u64 {
    fingerprint(&watched_files(config))
}

impl Reloader {
    /// Reloads on SIGHUP and on changes of the configuration's files until `stop`.
    pub(crate) async fn run(
        mut self,
        mut hup: tokio::signal::unix::Signal,
        mut stop: watch::Receiver<bool>,
        poll_every: Duration,
        config_watch: ConfigWatch,
    ) {
        let ConfigWatch {
            mut files,
            watch,
            mut changes,
            mut seen,
        } = config_watch;
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            let signalled = tokio::select! {
                _ = stop.changed() => return,
                s = hup.recv() => match s {
                    None => return,
                    Some(()) => true,
                },
                Some(()) = changes.recv() => settle(&mut changes, &mut hup).await,
                _ = poll.tick() => false,
            };
            // Read before the reload reads them: a change made meanwhile is noticed anew.
            let now = {
                let files = files.clone();
                tokio::task::spawn_blocking(move || fingerprint(&files))
                    .await
                    .unwrap_or_default()
            };
            if signalled {
                tracing::info!(target: LOG_TARGET, "SIGHUP: reloading TLS material and configuration");
                self.material.trigger();
            } else if now == seen {
                continue;
            } else {
                tracing::info!(
                    target: LOG_TARGET,
                    file = %self.running.file.display(),
                    "configuration file changed: reloading"
                );
            }
            seen = now;
            if let Some(applied) = self.reload().await {
                self.set_log_level(&applied.log.level);
                files = watched_files(&applied);
            }
            // The files may now resolve through other directories (a symlink swap), or be
            // others (a schema added).
            if let Some(watch) = &watch {
                let (watch, files) = (watch.clone(), files.clone());
                let _ = tokio::task::spawn_blocking(move || watch.refresh(&files)).await;
            }
        }
    }

    /// The listener settings of `config`, when they differ from those in force; the TLS
    /// configuration for new handshakes is built anew for them.
    fn listener_for(&self, config: &Config) -> Result<Option<ListenerLive>, ReloadRefused> {
        let current = self.listener.load();
        if current.config == config.listener {
            return Ok(None);
        }
        let server = self
            .tls
            .server_config(
                config.listener.tls_min_version,
                config.listener.client_auth == ClientAuth::Required,
            )
            .map_err(|e| {
                ReloadRefused::Unusable(vec![BuildError::new(
                    config,
                    "listener",
                    BuildProblem::Listener(e),
                )])
            })?;
        Ok(Some(ListenerLive::new(
            config.listener.clone(),
            TlsAcceptor::from(Arc::new(server)),
            &self.metrics,
        )))
    }

    /// Logs every problem of a refused reload and counts it.
    fn refused(&self, refused: &ReloadRefused) {
        self.reloads.record(Outcome::Refused);
        for (file, key, reason) in refused.problems() {
            let problem = if key.is_empty() {
                format!("{file}: {reason}")
            } else {
                format!("{file}: {key}: {reason}")
            };
            tracing::error!(
                target: LOG_TARGET,
                %problem,
                %file,
                %key,
                %reason,
                "configuration reload refused; the running configuration stays"
            );
        }
    }

    /// Puts a changed `[log] level` into use.
    fn set_log_level(&mut self, level: &str) {
        let Some((filter, current)) = &mut self.log else {
            return;
        };
        if current == level {
            return;
        }
        // Said before the change: a higher level would hide it.
        tracing::info!(target: LOG_TARGET, level, "log level changed");
        match filter.set_level(level) {
            Ok(()) => *current = level.to_owned(),
            Err(e) => {
                tracing::error!(target: LOG_TARGET, error = %e, "the new log level was not put into use")
            }
        }
    }

    /// Loads, validates and builds the configuration file, and puts it into use; returns it
    /// when applied.
    async fn reload(&self) -> Option<Config> {
        let (file, roots, provider) = (
            self.running.file.clone(),
            self.roots.clone(),
            self.provider.clone(),
        );
        let running = {
            let in_use = self
                .identity_in_use
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut running = (*self.running).clone();
            running.identity.source = in_use;
            Arc::new(running)
        };
        let state = self.state.clone();
        let (tls, shared) = (self.tls.clone(), self.shared.clone());
        let built = tokio::task::spawn_blocking(move || {
            let rebuilt = rebuild(&file, &running, &roots, &provider, &state, &shared)?;
            let material = identity_for(&rebuilt.config, &tls, &provider)?;
            Ok((rebuilt, material))
        })
        .await;
        match built {
            Ok(Ok((
                Rebuilt {
                    snapshot,
                    restart,
                    config,
                },
                material,
            ))) => {
                let listener = match self.listener_for(&config) {
                    Ok(listener) => listener,
                    Err(refused) => {
                        self.refused(&refused);
                        return None;
                    }
                };
                snapshot.start_background(&self.metrics);
                self.deliverer.set_plan(snapshot.webhooks.plan.clone());
                self.resilience.install(&snapshot.upstreams);
                // Both at once, as near as can be: requests take the snapshot, connections
                // the listener settings, each when it starts.
                self.snapshot.store(Arc::new(snapshot));
                if let Some(feed) = &self.incidents {
                    feed.install(&config);
                }
                if let Some(material) = material {
                    self.tls.take_from(material);
                    // The watch follows the new files from its next round, now.
                    self.material.trigger();
                }
                *self
                    .identity_in_use
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = config.identity.source.clone();
                if let Some(listener) = listener {
                    self.listener.store(Arc::new(listener));
                }
                self.drain.store(Arc::new(Drain::from(&config.lifecycle)));
                self.reloads.record(Outcome::Applied);
                tracing::info!(
                    target: LOG_TARGET,
                    "configuration reloaded: routes, upstreams, credentials and authentication replaced"
                );
                for (part, keys) in restart {
                    for key in keys {
                        tracing::warn!(
                            target: LOG_TARGET,
                            setting = part.key(),
                            key,
                            "the new configuration changes `{key}`, which takes effect only at restart; the running one stays"
                        );
                    }
                }
                Some(config)
            }
            Ok(Err(refused)) => {
                self.refused(&refused);
                None
            }
            Err(e) => {
                self.reloads.record(Outcome::Refused);
                tracing::error!(target: LOG_TARGET, error = %e, "configuration reload task failed");
                None
            }
        }
    }
}
