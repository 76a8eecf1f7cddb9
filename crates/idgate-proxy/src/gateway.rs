//! Putting it together: [`Gateway::prepare`] builds everything a configuration describes
//! without opening a socket (so `idgate check` and `idgate serve` agree on what is valid);
//! [`Gateway::run`] binds, serves, reloads on SIGHUP and drains on shutdown.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use idgate_config::{ClientAuth, Config};
use idgate_tls::{MaterialSpec, TlsMaterial, watch::spawn_watcher};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLog;
use crate::listener::{ListenerShared, accept_loop};
use crate::metrics::Metrics;
use crate::pipeline::Services;
use crate::snapshot::Snapshot;

/// How long in-flight requests get to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// A gateway ready to bind.
pub struct Gateway {
    config: Config,
    provider: Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    material: Arc<TlsMaterial>,
    server_config: Arc<rustls::ServerConfig>,
    snapshot: Snapshot,
    access_log: Option<Arc<AccessLog>>,
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
    /// problem is returned, each naming its file or section.
    pub fn prepare(config: Config) -> Result<Self, Vec<String>> {
        let provider = idgate_tls::crypto_provider();
        let spec = MaterialSpec {
            svid_cert: config.identity.svid_cert.clone(),
            svid_key: config.identity.svid_key.clone(),
            bundles: config.identity.trust_bundles.clone(),
        };
        let mut errors = Vec::new();
        let material = TlsMaterial::load(spec, provider.clone())
            .map_err(|errs| errors.extend(errs.into_iter().map(|e| format!("identity: {e}"))))
            .ok();
        // `vault:` references are read through the process-wide client: it must be in place
        // before the credentials load. A changed [vault] section takes effect at restart.
        if let Some(v) = &config.vault {
            match idgate_secrets::vault::VaultClient::new(v.clone()) {
                Ok(client) => idgate_secrets::vault::install(client),
                Err(e) => errors.push(format!("vault: {e}")),
            }
        }
        let roots = Arc::new(idgate_tls::roots::platform_roots().clone());
        let snapshot = Snapshot::build(&config, &roots, &provider)
            .map_err(|errs| errors.extend(errs))
            .ok();
        let (Some(material), Some(snapshot)) = (material, snapshot) else {
            return Err(errors);
        };
        let server_config = material
            .server_config(
                config.listener.tls_min_version,
                config.listener.client_auth == ClientAuth::Required,
            )
            .map_err(|e| vec![format!("listener: {e}")])?;
        Ok(Self {
            config,
            provider,
            roots,
            material: Arc::new(material),
            server_config: Arc::new(server_config),
            snapshot,
            access_log: None,
        })
    }

    /// Writes each request's record to `log`; without one, requests are not logged.
    pub fn with_access_log(mut self, log: Arc<AccessLog>) -> Self {
        self.access_log = Some(log);
        self
    }

    /// Binds the listener and the admin listener, then serves until `shutdown` completes;
    /// `on_bound` learns the bound addresses (useful with port 0).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        on_bound: impl FnOnce(Bound),
    ) -> std::io::Result<()> {
        let cfg = &self.config;
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

        let services = Arc::new(Services::new(self.access_log.clone()));
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
                restart_only: restart_only(cfg),
            }
            .on_sighup(hup, stop_rx.clone()),
        );
        let admin_task = tokio::spawn(crate::admin::serve_admin(
            admin,
            ready.clone(),
            services.metrics.clone(),
            stop_rx.clone(),
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
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        ready.store(false, Ordering::Release);
        let _ = stop_tx.send(true);
        let _ = accept.await;
        // Every connection was told by the stop signal; they end as their requests do.
        if shared.drained(DRAIN_TIMEOUT).await {
            tracing::info!("all connections drained");
        } else {
            tracing::warn!("drain timeout reached; closing the remaining connections");
        }
        let _ = admin_task.await;
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
    /// The settings a reload cannot change, as running.
    restart_only: String,
}

/// The settings that take effect only at restart: the listener, the identity (paths and
/// trust domains), the admin listener, logging, workers and Vault.
fn restart_only(c: &Config) -> String {
    format!(
        "{:?}|{:?}|{:?}|{:?}|{}|{:?}",
        c.listener, c.identity, c.admin, c.log, c.workers, c.vault
    )
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
            restart_only: running,
        } = self;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                s = hup.recv() => if s.is_none() { return },
            }
            tracing::info!("SIGHUP: reloading TLS material and configuration");
            material.trigger();
            let (file, roots, provider) = (file.clone(), roots.clone(), provider.clone());
            let running = running.clone();
            let built = tokio::task::spawn_blocking(move || {
                let config = idgate_config::load(&file)
                    .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())?;
                for w in &config.warnings {
                    tracing::warn!("{w}");
                }
                let needs_restart = restart_only(&config) != running;
                Snapshot::build(&config, &roots, &provider).map(|s| (s, needs_restart))
            })
            .await;
            match built {
                Ok(Ok((new, needs_restart))) => {
                    new.start_background(&metrics);
                    snapshot.store(Arc::new(new));
                    tracing::info!(
                        "configuration reloaded: routes, upstreams, credentials and authentication replaced"
                    );
                    if needs_restart {
                        tracing::warn!(
                            "the new configuration also changes [listener], [identity], [admin], [log], workers or [vault]: those changes take effect only at restart"
                        );
                    }
                }
                Ok(Err(errors)) => {
                    for e in errors {
                        tracing::error!(problem = %e, "configuration reload refused; the running configuration stays");
                    }
                }
                Err(e) => tracing::error!(error = %e, "configuration reload task failed"),
            }
        }
    }
}
