//! The running detector: a ticker task that once a second drains the [`Feed`], ticks the
//! [`Detector`], writes each changed incident to the [`Store`], announces what matters and
//! keeps the incidents the admin listener serves.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use idgate_audit::AuditTrail;
use idgate_config::IncidentsConfig;
use tokio::sync::watch;

use crate::detect::{AuditState, ChangeKind, Detector};
use crate::feed::Feed;
use crate::incident::{Incident, Millis};
use crate::metrics::IncidentMetrics;
use crate::notify::{Notifier, NotifyError};
use crate::store::{Store, StoreError};

const TICK: Duration = Duration::from_secs(1);

/// Why incident detection could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("incidents.dir: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
}

pub fn now() -> Millis {
    Millis(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    )
}

/// See the module documentation.
#[derive(Debug)]
pub struct IncidentService {
    feed: Arc<Feed>,
    /// Every stored incident by id, as last written.
    incidents: RwLock<BTreeMap<String, Incident>>,
    notifier: Option<Notifier>,
    metrics: IncidentMetrics,
    stop: watch::Sender<bool>,
}

impl IncidentService {
    /// Opens the store (closing incidents a stopped gateway left open), starts the notifier
    /// and the ticker on the current tokio runtime.
    pub fn start(
        cfg: &IncidentsConfig,
        audit: Option<Arc<AuditTrail>>,
    ) -> Result<Arc<Self>, StartError> {
        let store = Store::open(&cfg.dir)?;
        for i in store.close_interrupted(now())? {
            tracing::warn!(incident = %i.id, "incident left open by a stopped gateway: closed as interrupted");
        }
        let incidents = store
            .load_all()?
            .into_iter()
            .map(|i| (i.id.clone(), i))
            .collect();
        let metrics = IncidentMetrics::default();
        let notifier = cfg
            .notify
            .as_ref()
            .map(|n| Notifier::start(n, &metrics))
            .transpose()?;
        let (stop, stopped) = watch::channel(false);
        let service = Arc::new(Self {
            feed: Arc::new(Feed::new(cfg.max_callers)),
            incidents: RwLock::new(incidents),
            notifier,
            metrics,
            stop,
        });
        let detector = Detector::new(cfg.clone());
        tokio::spawn(ticker(
            Arc::downgrade(&service),
            detector,
            store,
            audit,
            stopped,
        ));
        Ok(service)
    }

    /// Its counters, for the gateway's registry.
    pub fn metrics(&self) -> &IncidentMetrics {
        &self.metrics
    }

    /// What the request path feeds.
    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }

    /// Stops the ticker; open incidents stay open in the store (closed as interrupted at the
    /// next start).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// `GET /incidents`: every incident, newest first, in short.
    pub fn list_json(&self) -> Vec<u8> {
        let incidents = self.incidents.read().unwrap_or_else(|e| e.into_inner());
        let list: Vec<_> = incidents
            .values()
            .rev()
            .map(|i| {
                serde_json::json!({
                    "id": i.id,
                    "rule": i.rule,
                    "subject": i.subject,
                    "severity": i.severity,
                    "state": i.state,
                    "opened_at": i.opened_at,
                    "closed_at": i.closed_at,
                    "requests_failed": i.requests_failed,
                    "summary": i.summary,
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "incidents": list })).unwrap_or_default()
    }

    /// `GET /incidents/{id}`: the whole incident; an open one's `duration_secs` counted to
    /// now (it is stored as of its last change).
    pub fn get_json(&self, id: &str) -> Option<Vec<u8>> {
        let mut incident = self
            .incidents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)?
            .clone();
        if !incident.state.is_closed() {
            incident.classification.duration_secs = incident.opened_at.secs_until(now());
        }
        serde_json::to_vec(&incident).ok()
    }

    fn changed(&self, kind: ChangeKind, incident: Incident) {
        match kind {
            ChangeKind::Opened => {
                self.metrics.open.inc();
                self.metrics
                    .opened
                    .get_or_create(&crate::metrics::OpenedLabels {
                        rule: incident.rule.as_str(),
                        severity: incident.severity.0.as_str(),
                    })
                    .inc();
            }
            ChangeKind::Closed => {
                self.metrics.open.dec();
            }
            ChangeKind::SeverityChanged | ChangeKind::Updated => {}
        }
        if kind.notifies()
            && let Some(n) = &self.notifier
        {
            n.send(kind, &incident);
        }
        self.incidents
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(incident.id.clone(), incident);
    }
}

fn audit_state(trail: &AuditTrail) -> AuditState {
    let m = trail.metrics();
    AuditState {
        depth: u64::try_from(m.depth.get()).unwrap_or(0),
        capacity: trail.capacity() as u64,
        last_seq: trail.last_seq(),
        dropped: m.dropped.get(),
    }
}

async fn ticker(
    service: std::sync::Weak<IncidentService>,
    mut detector: Detector,
    store: Store,
    audit: Option<Arc<AuditTrail>>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: nothing to drain yet.
    interval.tick().await;
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            _ = interval.tick() => {}
        }
        let Some(service) = service.upgrade() else {
            return;
        };
        let sample = service.feed.drain();
        let changes = detector.tick(now(), sample, audit.as_deref().map(audit_state));
        if changes.is_empty() {
            continue;
        }
        let store = store.clone();
        let written = changes.clone();
        let store_errors = service.metrics.store_errors.clone();
        // fsync is slow: off the runtime's worker threads.
        let saved = tokio::task::spawn_blocking(move || {
            for (_, i) in &written {
                if let Err(e) = store.save(i) {
                    store_errors.inc();
                    tracing::error!(incident = %i.id, error = %e, "cannot store the incident");
                }
            }
        })
        .await;
        if saved.is_err() {
            tracing::error!("storing incidents panicked");
        }
        for (kind, incident) in changes {
            match kind {
                ChangeKind::Opened => {
                    tracing::warn!(incident = %incident.id, severity = %incident.severity, summary = %incident.summary, "incident opened")
                }
                ChangeKind::SeverityChanged => {
                    tracing::warn!(incident = %incident.id, severity = %incident.severity, "incident severity changed")
                }
                ChangeKind::Closed => {
                    tracing::info!(incident = %incident.id, requests_failed = incident.requests_failed, "incident closed")
                }
                ChangeKind::Updated => {}
            }
            service.changed(kind, incident);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::State;

    #[test]
    fn an_open_incidents_duration_is_counted_to_the_moment_it_is_served() {
        let stored: Incident =
            serde_json::from_str(include_str!("../tests/fixtures/incident.json"))
                .unwrap_or_else(|e| panic!("fixture: {e}"));
        let mut open = stored.clone();
        open.opened_at = Millis(now().0 - 90_000);
        let mut closed = stored;
        closed.id = "20251201T000000000Z-upstream_errors-idv".into();
        closed.state = State::Closed;
        closed.classification.duration_secs = 42;
        let (stop, _) = watch::channel(false);
        let service = IncidentService {
            feed: Arc::new(Feed::new(2)),
            incidents: RwLock::new(BTreeMap::from([
                (open.id.clone(), open.clone()),
                (closed.id.clone(), closed.clone()),
            ])),
            notifier: None,
            metrics: IncidentMetrics::default(),
            stop,
        };
        let served = |id: &str| -> Incident {
            let body = service.get_json(id).unwrap_or_default();
            serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{id}: {e}"))
        };
        assert_eq!(open.classification.duration_secs, 0, "as stored");
        assert!(served(&open.id).classification.duration_secs >= 90);
        assert_eq!(served(&closed.id).classification.duration_secs, 42);
    }
}
