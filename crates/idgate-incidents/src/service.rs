//! The running detector: a ticker task that once a second drains the [`Feed`], ticks the
//! [`Detector`], writes each changed incident to the [`Store`], announces what matters and
//! keeps the incidents the admin listener serves: the open ones and the
//! [`HELD_CLOSED`] closed ones opened last. The store keeps every incident; an older one is
//! read from it when asked for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use idgate_audit::AuditTrail;
use idgate_config::IncidentsConfig;
use tokio::sync::watch;

use crate::detect::{AuditState, ChangeKind, Detector, Tick};
use crate::feed::Feed;
use crate::incident::{Incident, Millis};
use crate::metrics::IncidentMetrics;
use crate::notify::{Notifier, NotifyError};
use crate::store::{Store, StoreError};

const TICK: Duration = Duration::from_secs(1);

/// How long the notifications queued when the gateway stops may still take to go out.
pub const SHUTDOWN_NOTIFY: Duration = Duration::from_secs(5);

/// Closed incidents held in memory and listed, the ones opened last.
pub const HELD_CLOSED: usize = 1000;

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

/// The incidents the service holds, as last written: every open one and the newest
/// closed ones.
#[derive(Debug)]
struct Held {
    /// By id: ids begin with the opening time, so they sort oldest first.
    incidents: BTreeMap<String, Incident>,
    /// The ids of the closed ones among them.
    closed: BTreeSet<String>,
    max_closed: usize,
}

impl Held {
    fn new(max_closed: usize) -> Self {
        Self {
            incidents: BTreeMap::new(),
            closed: BTreeSet::new(),
            max_closed,
        }
    }

    /// Takes `incident` (new, or a newer version), and lets go of the closed ones opened
    /// first past the bound.
    fn put(&mut self, incident: Incident) {
        if incident.state.is_closed() {
            self.closed.insert(incident.id.clone());
        } else {
            self.closed.remove(&incident.id);
        }
        self.incidents.insert(incident.id.clone(), incident);
        while self.closed.len() > self.max_closed {
            if let Some(oldest) = self.closed.pop_first() {
                self.incidents.remove(&oldest);
            }
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct IncidentService {
    feed: Arc<Feed>,
    /// `latency_p99`: a request still unanswered after it says so much of its upstream.
    latency_threshold: Duration,
    held: RwLock<Held>,
    /// Where the incidents not held are read from.
    store: Store,
    notifier: Option<Notifier>,
    metrics: IncidentMetrics,
    stop: watch::Sender<bool>,
    ticker: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl IncidentService {
    /// Opens the store, starts the notifier, closes the incidents a stopped gateway left
    /// open (announcing each closing), and starts the ticker on the current tokio runtime.
    pub fn start(
        cfg: &IncidentsConfig,
        audit: Option<Arc<AuditTrail>>,
    ) -> Result<Arc<Self>, StartError> {
        let store = Store::open(&cfg.dir)?;
        let metrics = IncidentMetrics::default();
        let notifier = cfg
            .notify
            .as_ref()
            .map(|n| Notifier::start(n, &metrics))
            .transpose()?;
        let mut unreadable = BTreeMap::new();
        for i in store.close_interrupted(now(), &mut unreadable)? {
            tracing::warn!(incident = %i.id, "incident left open by a stopped gateway: closed as interrupted");
            if let Some(n) = &notifier {
                n.send(ChangeKind::Closed, &i);
            }
        }
        let mut held = Held::new(HELD_CLOSED);
        for i in store.load_newest(HELD_CLOSED, &mut unreadable)? {
            held.put(i);
        }
        // A stray or damaged file does not keep the gateway from starting (nor detection
        // from running): it is named, counted, and left as it is.
        for error in unreadable.values() {
            metrics.store_unreadable.inc();
            tracing::error!(%error, "a file in the incidents directory is not an incident: skipped");
        }
        let (stop, stopped) = watch::channel(false);
        let service = Arc::new(Self {
            feed: Arc::new(Feed::new(cfg.max_callers)),
            latency_threshold: cfg.latency_p99,
            held: RwLock::new(held),
            store: store.clone(),
            notifier,
            metrics,
            stop,
            ticker: std::sync::Mutex::new(None),
        });
        let detector = Detector::new(cfg.clone());
        let task = tokio::spawn(ticker(
            Arc::downgrade(&service),
            detector,
            store,
            audit,
            stopped,
        ));
        *service.ticker.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
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

    /// The upstream latency (`latency_p99`) past which a request its caller gave up on
    /// before the upstream answered counts, with the time it waited, as a slow answer.
    pub fn latency_threshold(&self) -> Duration {
        self.latency_threshold
    }

    /// Stops the ticker; open incidents stay open in the store (closed as interrupted at the
    /// next start).
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops the ticker once it is done with its tick, then sends the notifications still
    /// queued (an incident the last tick closed, say) for at most `within`; the ones left
    /// are counted and logged. Returns how many were left.
    pub async fn shutdown(&self, within: Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + within;
        self.stop();
        let ticker = self.ticker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(ticker) = ticker {
            let _ = tokio::time::timeout_at(deadline, ticker).await;
        }
        match &self.notifier {
            Some(n) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                n.drain(left).await
            }
            None => 0,
        }
    }

    /// `GET /incidents`: the incidents held (every open one and the [`HELD_CLOSED`] closed
    /// ones opened last), newest first, in short; `limit=N` in `query` keeps the newest
    /// `N` (a `limit` that is not a number is ignored).
    pub fn list_json(&self, query: Option<&str>) -> Vec<u8> {
        let limit = query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .filter_map(|pair| pair.strip_prefix("limit="))
            .find_map(|n| n.parse::<usize>().ok())
            .unwrap_or(usize::MAX);
        let held = self.held.read().unwrap_or_else(|e| e.into_inner());
        let list: Vec<_> = held
            .incidents
            .values()
            .rev()
            .take(limit)
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

    /// `GET /incidents/{id}`: the whole incident, from memory or else from the store (on a
    /// blocking thread); an open one's `duration_secs` counted to now (it is stored as of
    /// its last change).
    pub async fn get_json(&self, id: &str) -> Option<Vec<u8>> {
        let held = self
            .held
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .incidents
            .get(id)
            .cloned();
        let mut incident = match held {
            Some(i) => i,
            None => self.stored(id).await?,
        };
        if !incident.state.is_closed() {
            incident.classification.duration_secs = incident.opened_at.secs_until(now());
        }
        serde_json::to_vec(&incident).ok()
    }

    /// An incident not held, read from the store.
    async fn stored(&self, id: &str) -> Option<Incident> {
        let (store, wanted) = (self.store.clone(), id.to_owned());
        match tokio::task::spawn_blocking(move || store.load(&wanted)).await {
            Ok(Ok(i)) => Some(i),
            Ok(Err(StoreError::NotFound(_))) => None,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read a stored incident");
                None
            }
            Err(_) => {
                tracing::error!("reading a stored incident panicked");
                None
            }
        }
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
        self.held
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .put(incident);
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
        let changes = detector.tick(Tick::now(), sample, audit.as_deref().map(audit_state));
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
    use crate::detect::incident_id;
    use crate::incident::{Rule, State};

    fn fixture() -> Incident {
        serde_json::from_str(include_str!("../tests/fixtures/incident.json"))
            .unwrap_or_else(|e| panic!("fixture: {e}"))
    }

    fn service_over(dir: &std::path::Path) -> Arc<IncidentService> {
        let cfg = IncidentsConfig {
            dir: dir.to_owned(),
            window: Duration::from_secs(10),
            close_after: Duration::from_secs(5),
            min_requests: 20,
            error_ratio: 0.5,
            latency_p99: Duration::from_millis(400),
            tls_failures: 30,
            auth_failures: 30,
            audit_backlog: 0.8,
            severities: idgate_config::RuleSeverities::default(),
            critical_routes: vec![],
            region: None,
            max_callers: 2,
            notify: None,
        };
        IncidentService::start(&cfg, None).unwrap_or_else(|e| panic!("start: {e}"))
    }

    fn listed(service: &IncidentService, query: Option<&str>) -> Vec<String> {
        let list: serde_json::Value = serde_json::from_slice(&service.list_json(query))
            .unwrap_or_else(|e| panic!("list: {e}"));
        list["incidents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|i| i["id"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn served(service: &IncidentService, id: &str) -> Incident {
        let body = service.get_json(id).await.unwrap_or_default();
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{id}: {e}"))
    }

    #[tokio::test]
    async fn an_open_incidents_duration_is_counted_to_the_moment_it_is_served() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let service = service_over(dir.path());
        let mut open = fixture();
        open.opened_at = Millis(now().0 - 90_000);
        let mut closed = fixture();
        closed.id = "20251201T000000000Z-upstream_errors-idv".into();
        closed.state = State::Closed;
        closed.classification.duration_secs = 42;
        service.changed(ChangeKind::Opened, open.clone());
        service.changed(ChangeKind::Closed, closed.clone());
        assert_eq!(open.classification.duration_secs, 0, "as stored");
        assert!(
            served(&service, &open.id)
                .await
                .classification
                .duration_secs
                >= 90
        );
        assert_eq!(
            served(&service, &closed.id)
                .await
                .classification
                .duration_secs,
            42
        );
        service.stop();
    }

    #[tokio::test]
    async fn the_incidents_held_in_memory_and_listed_are_bounded() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        // A year of a flapping rule: more closed incidents than the service holds.
        let stored = HELD_CLOSED + 50;
        let opened = |n: usize| Millis(1_764_663_300_000 + n as u64 * 180_000);
        let id_of = |n: usize| incident_id(opened(n), Rule::TlsFailures, None);
        for n in 0..stored {
            let mut i = fixture();
            i.id = id_of(n);
            i.rule = Rule::TlsFailures;
            i.opened_at = opened(n);
            i.state = State::Closed;
            let body = serde_json::to_vec(&i).unwrap_or_default();
            std::fs::write(dir.path().join(format!("{}.json", i.id)), body)
                .unwrap_or_else(|e| panic!("write: {e}"));
        }
        let service = service_over(dir.path());

        let all = listed(&service, None);
        assert_eq!(all.len(), HELD_CLOSED);
        assert_eq!(all.first(), Some(&id_of(stored - 1)), "newest first");
        assert_eq!(all.last(), Some(&id_of(50)));
        assert_eq!(
            listed(&service, Some("limit=3")),
            [id_of(stored - 1), id_of(stored - 2), id_of(stored - 3)]
        );
        assert_eq!(listed(&service, Some("limit=x")).len(), HELD_CLOSED);
        // One not held is read from the store; one that does not exist is not found.
        assert_eq!(served(&service, &id_of(0)).await.id, id_of(0));
        assert!(service.get_json("20991231T000000000Z-nope").await.is_none());

        // An open incident is held besides; once closed, it pushes the oldest out.
        let mut new = fixture();
        new.id = id_of(stored);
        new.opened_at = opened(stored);
        service.changed(ChangeKind::Opened, new.clone());
        assert_eq!(listed(&service, None).len(), HELD_CLOSED + 1);
        new.state = State::Closed;
        service.changed(ChangeKind::Closed, new.clone());
        let all = listed(&service, None);
        assert_eq!(all.len(), HELD_CLOSED);
        assert_eq!(all.first(), Some(&new.id));
        assert_eq!(all.last(), Some(&id_of(51)));
        service.stop();
    }
}
