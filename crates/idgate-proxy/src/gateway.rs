//! Putting it together: [`Gateway::prepare`] builds everything a configuration describes
//! without opening a socket (so `idgate check` and `idgate serve` agree on what is valid);
//! [`Gateway::run`] binds, serves, reloads on SIGHUP and drains on shutdown (see
//! `lifecycle.rs`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use idgate_config::{ClientAuth, Config, IdentitySource};
use idgate_store::{MemoryStore, StateStore};

use crate::state::open_state;
use idgate_tls::{MaterialSpec, TlsMaterial, WorkloadApi, watch::spawn_watcher};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLog;
use crate::audit::AuditSetup;
use crate::lifecycle::{BackgroundWriters, Drain};
use crate::listener::{ListenerLive, ListenerShared, accept_loop};
use crate::reload::{ConfigWatch, ReloadMetrics, Reloader, config_fingerprint, identity_key};
pub use crate::reload::{LogFilter, LogFilterError, RestartOnly, restart_required};
use crate::service::Services;
use crate::snapshot::{BuildError, BuildProblem, Shared, Snapshot};

/// A gateway ready to bind.
pub struct Gateway {
    config: Config,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    material: Arc<TlsMaterial>,
    /// What every snapshot shares, reloads included.
    shared: Shared,
    server_config: Arc<rustls::ServerConfig>,
    snapshot: Snapshot,
    access_log: Option<Arc<AccessLog>>,
    state: StateStore,
    /// `[audit]` with its keys read; the writer starts in `run`.
    audit: Option<AuditSetup>,
    /// Handed each audit line once written (a SIEM exporter).
    audit_export: Option<Arc<dyn idgate_audit::Export>>,
    /// The process's log filter, for reloads.
    log_filter: Option<Arc<dyn LogFilter>>,
    /// What the configuration's files held when they were read, for the reloads' watch.
    config_seen: u64,
    /// SIGHUP, caught since before `prepare`: one that came meanwhile reloads once running.
    hangup: Option<Signal>,
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
        // First: a change made while the rest loads is then one the watch reloads.
        let config_seen = config_fingerprint(&config);
        let provider = idgate_tls::crypto_provider();
        let mut errors = Vec::new();
        let material = match &config.identity.source {
            IdentitySource::Files(files) => {
                let spec = MaterialSpec {
                    svid_cert: files.svid_cert.clone(),
                    svid_key: files.svid_key.clone(),
                    bundles: files.trust_bundles.clone(),
                };
                TlsMaterial::load(spec, provider.clone())
                    .map_err(|errs| {
                        errors.extend(errs.into_iter().map(|e| {
                            BuildError::new(
                                &config,
                                identity_key(&config, &e),
                                BuildProblem::Identity(e),
                            )
                        }))
                    })
                    .ok()
            }
            // Filled in by the Workload API once `run` starts streaming.
            IdentitySource::WorkloadApi(_) => Some(TlsMaterial::pending(provider.clone())),
        };
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
        // What every snapshot shares; without material (it failed to load) the rest is still
        // built against a placeholder, so that every problem is reported.
        let material = material.map(Arc::new);
        let shared = Shared::new(
            material
                .clone()
                .unwrap_or_else(|| Arc::new(TlsMaterial::pending(provider.clone()))),
        );
        let snapshot = Snapshot::build(&config, &roots, &provider, state_for_build, &shared)
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
            material,
            shared,
            server_config: Arc::new(server_config),
            snapshot,
            access_log: None,
            state,
            audit,
            audit_export: None,
            log_filter: None,
            config_seen,
            hangup: None,
        })
    }

    /// Reloads on `hangup` (SIGHUP) once running. A process that catches SIGHUP before it
    /// starts preparing is not ended by one that comes meanwhile (its default action), and
    /// that one is not lost: the gateway reloads as soon as it runs. Without it, `run`
    /// catches SIGHUP itself.
    pub fn with_hangup(mut self, hangup: Signal) -> Self {
        self.hangup = Some(hangup);
        self
    }

    /// Hands each line of the audit trail, once written, to `export` (see
    /// [`idgate_audit::Export`]: it runs on the writer thread and must not block).
    pub fn with_audit_export(mut self, export: Arc<dyn idgate_audit::Export>) -> Self {
        self.audit_export = Some(export);
        self
    }

    /// Lets a reload change the log level through `filter`; without one, `[log]` changes
    /// only at restart.
    pub fn with_log_filter(mut self, filter: Arc<dyn LogFilter>) -> Self {
        self.log_filter = Some(filter);
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
    /// to finish (then the connections left are cut, and [`CUT_WAIT`] lets their requests
    /// record themselves), and the background writers flush in order (audit trail, SIEM
    /// export).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        on_bound: impl FnOnce(Bound),
    ) -> std::io::Result<()> {
        let cfg = &self.config;
        let mut shutdown = std::pin::pin!(shutdown);
        // A reload may change it; the one in force when the signal comes is used.
        let drain = Arc::new(ArcSwap::from_pointee(Drain::from(&cfg.lifecycle)));
        let admin = TcpListener::bind(cfg.admin.bind).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("admin.bind {}: {e}", cfg.admin.bind))
        })?;
        let admin_addr = admin.local_addr()?;
        // With its material loaded (files), the listener is bound now, before anything
        // starts: a taken port is reported with nothing to undo.
        let mut listener = if self.material.is_ready() {
            Some(bind_listener(cfg).await?)
        } else {
            None
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
        let incidents = match cfg.incidents.clone() {
            // On a blocking thread: it reads the incidents directory and the notifier's
            // secret, which for a `vault:` or `pkcs11:` one waits on Vault or the token.
            Some(i) => {
                let audit = audit.clone();
                let started = tokio::task::spawn_blocking(move || {
                    idgate_incidents::IncidentService::start(&i, audit)
                })
                .await
                .map_err(std::io::Error::other)?;
                Some(started.map_err(|e| std::io::Error::other(e.to_string()))?)
            }
            None => None,
        };
        if let Some(incidents) = &incidents {
            services = services.with_incidents(incidents.clone());
        }
        let reloads = ReloadMetrics::new();
        if let Some(metrics) = Arc::get_mut(&mut services.metrics) {
            reloads.register(metrics.registry_mut());
        }
        let services = Arc::new(services);
        if let Some(incidents) = &incidents {
            let events = services.resilience.subscribe();
            tokio::spawn(crate::resilience::feed_incidents(
                events,
                incidents.feed().clone(),
            ));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        services.metrics.certificates_of(self.material.clone());
        if let IdentitySource::WorkloadApi(endpoint) = &cfg.identity.source {
            // The JWT bundles are streamed too: a `[jwt_svid]` without bundle files, now or
            // after a reload, verifies with them.
            let workload = WorkloadApi::spawn(
                endpoint.clone(),
                cfg.identity.svid_hint.clone(),
                self.material.clone(),
                true,
                stop_rx.clone(),
            );
            services.metrics.workload_api(workload.status().clone());
            tokio::spawn(crate::workload_jwt::feed_jwt_bundles(
                workload.jwt_bundles(),
                self.shared.jwt_bundles.clone(),
                workload.status().clone(),
            ));
        }
        tokio::spawn(sweep_limiter(Arc::downgrade(&services)));
        self.snapshot.start_background(&services.metrics);
        let deliverer = start_deliverer(&services, &self.material, &self.snapshot, stop_rx.clone());
        services.resilience.install(&self.snapshot.upstreams);
        if let Some(incidents) = &incidents {
            incidents.feed().install(cfg);
        }
        let snapshot = Arc::new(ArcSwap::from_pointee(self.snapshot));
        let watch_handle = spawn_watcher(self.material.clone(), cfg.identity.poll_interval);
        let ready = Arc::new(AtomicBool::new(false));

        let listener_live = Arc::new(ArcSwap::from_pointee(ListenerLive::new(
            cfg.listener.clone(),
            TlsAcceptor::from(self.server_config.clone()),
            &services.metrics,
        )));
        // Caught before the gateway reports ready (`serve` catches it before `prepare`): an
        // unhandled SIGHUP would end the process. The reloader also watches the
        // configuration file.
        let hup = match self.hangup {
            Some(hup) => hup,
            None => tokio::signal::unix::signal(SignalKind::hangup()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen for SIGHUP: {e}"))
            })?,
        };
        let config_watch = ConfigWatch::start(cfg, self.config_seen).await;
        tokio::spawn(
            Reloader {
                snapshot: snapshot.clone(),
                roots: self.roots.clone(),
                provider: self.provider.clone(),
                material: watch_handle,
                metrics: services.metrics.clone(),
                reloads,
                running: Arc::new(cfg.clone()),
                identity_in_use: std::sync::Mutex::new(cfg.identity.source.clone()),
                state: self.state.clone(),
                deliverer,
                resilience: services.resilience.clone(),
                incidents: incidents.as_ref().map(|i| i.feed().clone()),
                log: self.log_filter.map(|f| (f, cfg.log.level.clone())),
                listener: listener_live.clone(),
                tls: self.material.clone(),
                shared: self.shared.clone(),
                drain: drain.clone(),
            }
            .run(
                hup,
                stop_rx.clone(),
                cfg.identity.poll_interval,
                config_watch,
            ),
        );
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let admin_task = tokio::spawn(crate::admin::serve_admin(
            admin,
            crate::admin::AdminState {
                ready: ready.clone(),
                metrics: services.metrics.clone(),
                incidents: incidents.clone(),
                material: self.material.clone(),
                audit: audit.clone(),
                allowed_hosts: crate::admin::AllowedHosts::new(&cfg.admin.allowed_hosts),
            },
            crate::admin::AdminLimits::new(cfg.admin.max_connections),
            admin_stop_rx,
        ));

        // The TLS listener is bound only once there is an SVID to present (at once with
        // files): until the Workload API delivered one, /readyz says not ready and no caller
        // meets a handshake that must fail. A shutdown meanwhile skips serving and draining.
        let mut outcome = Ok(());
        // The listener's shared state once serving: what the drain waits for.
        let mut served = None;
        let material_ready = self.material.is_ready()
            || {
                tracing::info!(
                    admin = %admin_addr,
                    "waiting for the gateway's SVID from the SPIFFE Workload API; not ready until it comes"
                );
                tokio::select! {
                    () = self.material.wait_ready() => true,
                    () = &mut shutdown => false,
                }
            };
        // Bound after the wait (Workload API): a taken port then ends the gateway as a
        // shutdown does, so that the writers started above flush.
        if material_ready && listener.is_none() {
            match bind_listener(cfg).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    tracing::error!(error = %e, "cannot bind the listener");
                    outcome = Err(e);
                }
            }
        }
        if let Some(listener) = listener {
            let bound = Bound {
                listener: listener.local_addr()?,
                admin: admin_addr,
            };
            let shared = Arc::new(ListenerShared::new(snapshot, services, listener_live));
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
            let drain = **drain.load();
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
            // Every connection was told by the stop signal (HTTP/1.1 answers its next
            // response with `Connection: close`, HTTP/2 sends GOAWAY); they end as their
            // requests do.
            if shared.drained(drain.timeout).await {
                tracing::info!("all connections drained");
            } else {
                cut_the_rest(&shared).await;
            }
            served = Some(shared);
        } else {
            if material_ready {
                tracing::info!("shutting down: nothing was served");
            } else {
                tracing::info!("shutting down before the SVID arrived: nothing was served");
            }
            let _ = stop_tx.send(true);
        }
        // The admin listener answers (not ready) until the drain is over.
        let _ = admin_stop.send(true);
        let _ = admin_task.await;
        if let Some(incidents) = &incidents {
            // The last tick's changes are stored; its notifications get a short while to go.
            incidents
                .shutdown(idgate_incidents::service::SHUTDOWN_NOTIFY)
                .await;
        }
        // Every request has ended (or been given up on): the background writers flush in
        // the order their data flows.
        let mut writers = BackgroundWriters::default();
        if let Some(trail) = audit.clone() {
            // Requests still running now will come too late for the trail: it says how many.
            let unrecorded = served.as_ref().map_or(0, |s| s.requests_in_flight());
            // The last batch is written and the file closed with a signed checkpoint.
            writers.then("audit trail", async move {
                if unrecorded > 0 {
                    tracing::error!(
                        requests = unrecorded,
                        "requests still running as the audit trail closes: their records are lost, and the trail says how many (a dropped entry)"
                    );
                    trail.note_lost(unrecorded as u64);
                }
                let _ = tokio::task::spawn_blocking(move || trail.close()).await;
                tracing::info!("audit trail closed");
            });
        }
        if let Some(siem) = siem {
            writers.then("SIEM export", crate::siem::stop(siem));
        }
        // Writers fed by the requests (an outbox, say) register here, after the SIEM export.
        writers.flush().await;
        if let Some(trail) = audit {
            let untold = trail.dropped_untold();
            if untold > 0 {
                tracing::error!(
                    records = untold,
                    "audit records came after the trail closed: they are lost, and the trail does not say so"
                );
            }
        }
        outcome
    }
}

/// How long the tasks of the connections cut at the drain timeout get to end: dropping a
/// connection ends its requests at once, each making its record.
pub const CUT_WAIT: Duration = Duration::from_secs(2);

/// The drain timeout has passed: closes every connection still open, with its requests
/// (each recorded with status 499), and waits at most [`CUT_WAIT`] for their tasks to end.
async fn cut_the_rest(shared: &ListenerShared) {
    tracing::warn!(
        connections = shared.open_connections(),
        requests = shared.requests_in_flight(),
        "drain timeout reached; closing the remaining connections"
    );
    shared.cut();
    if shared.drained(CUT_WAIT).await {
        tracing::info!(
            "remaining connections closed; their unanswered requests are recorded with status 499"
        );
    } else {
        tracing::error!(
            connections = shared.open_connections(),
            requests = shared.requests_in_flight(),
            "connections still open {CUT_WAIT:?} after they were closed"
        );
    }
}

async fn bind_listener(cfg: &Config) -> std::io::Result<TcpListener> {
    TcpListener::bind(cfg.listener.bind).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("listener.bind {}: {e}", cfg.listener.bind),
        )
    })
}

/// Starts the process's webhook deliverer on the snapshot's subscribers, presenting the
/// gateway's SVID (as it rotates) to them.
fn start_deliverer(
    services: &Services,
    material: &Arc<TlsMaterial>,
    snapshot: &Snapshot,
    stop: watch::Receiver<bool>,
) -> Arc<idgate_webhooks::Deliverer> {
    let material = material.clone();
    let deliverer = idgate_webhooks::Deliverer::new(
        services.state.clone(),
        Arc::new(move || material.current_svid()),
        services.webhook_metrics.clone(),
    );
    deliverer.set_plan(snapshot.webhooks.plan.clone());
    deliverer.spawn(stop);
    let _ = services.deliverer.set(deliverer.clone());
    deliverer
}

/// Removes the dead keys of the in-process rate limiter, the ended leases and the cached
/// fallback answers past their `max_age` every few seconds, so that their memory follows
/// the callers of the moment and no answer outlives its time; ends with the gateway.
async fn sweep_limiter(services: std::sync::Weak<Services>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(services) = services.upgrade() else {
            return;
        };
        services.limiter.sweep(idgate_store::LocalLimiter::clock());
        services.leases.sweep(std::time::SystemTime::now());
        services.fallback.sweep(std::time::Instant::now());
    }
}
