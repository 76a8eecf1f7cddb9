//! What every request shares whatever the configuration snapshot: request ids, metrics,
//! the failed-attempt counter, the access log, the budget for buffered bodies and the
//! state store (which a reload must not reset: counters and ownership outlive snapshots).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderName, HeaderValue};
use idgate_auth::AuthFailure;
use idgate_store::{GcraLeases, LocalLimiter, MemoryStore, StateStore};

use crate::access_log::AccessLog;
use crate::authn::FailedAttempts;
use crate::conn::ConnInfo;
use crate::limit_state::{LimitMetrics, StateErrors};
use crate::metrics::Metrics;
use crate::problem::Refusal;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request IDs: a random per-process prefix and a counter under a keyed permutation —
/// unique, cheap, unguessable across restarts, and not counting up within one process.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
    /// Hides the counter in the ID (see [`crate::request_id`]).
    hide: crate::request_id::Permutation,
}

impl RequestIds {
    pub fn new() -> Self {
        Self::with_source(&crate::request_id::SystemRandom)
    }

    /// Seeded from `source`; a failing source does not stop the gateway (see
    /// [`crate::request_id`]).
    pub fn with_source(source: &dyn crate::request_id::RandomSource) -> Self {
        let seed = crate::request_id::seed(source);
        Self {
            prefix: seed.prefix,
            counter: AtomicU64::new(seed.counter),
            hide: crate::request_id::Permutation::new(seed.key),
        }
    }

    pub(crate) fn next(&self) -> HeaderValue {
        let n = self
            .hide
            .apply(self.counter.fetch_add(1, Ordering::Relaxed));
        let mut buf = [0u8; 32];
        idgate_codec::hex::encode_to_slice(&self.prefix.to_be_bytes(), &mut buf[..16]);
        idgate_codec::hex::encode_to_slice(&n.to_be_bytes(), &mut buf[16..]);
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// A caller's own request id is kept when it is short and plain, so it can tie their logs
/// to ours; anything else is replaced.
pub(crate) fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// All request bodies buffered at once (for signature schemes, schemas and webhooks), in
/// KiB: 256 MiB.
pub(crate) const BODY_BUDGET_KIB: u32 = 256 * 1024;

/// The memory all buffered request bodies may hold together, in KiB. A body takes its share
/// as its bytes arrive (see [`crate::ctx::RequestCtx::read_body`]), never for what it only
/// announced: one that stalls holds room for what it sent, not its route's whole limit.
#[derive(Debug)]
pub(crate) struct BodyBudget {
    kib: Arc<tokio::sync::Semaphore>,
    total_kib: u32,
}

impl BodyBudget {
    pub(crate) fn new(total_kib: u32) -> Self {
        Self {
            kib: Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    /// A share that holds nothing yet.
    pub(crate) fn share(&self) -> BodyShare {
        BodyShare {
            kib: Arc::clone(&self.kib),
            total_kib: self.total_kib,
            held: None,
        }
    }

    /// What no body holds now, in KiB.
    #[cfg(test)]
    pub(crate) fn available_kib(&self) -> usize {
        self.kib.available_permits()
    }
}

/// One body's share of the [`BodyBudget`]: it grows with the body and goes back when dropped.
/// It owns what it holds, so a job that still reads the body (a webhook's verification on a
/// blocking thread) can hold it past the request.
#[derive(Debug)]
pub(crate) struct BodyShare {
    kib: Arc<tokio::sync::Semaphore>,
    total_kib: u32,
    held: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl BodyShare {
    /// Grows the share to cover `bytes` (in whole KiB), waiting at most `wait` for the
    /// budget to have room; false when it had none. One body larger than the whole budget
    /// may hold all of it, never more.
    pub(crate) async fn cover(&mut self, bytes: usize, wait: std::time::Duration) -> bool {
        let want = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total_kib);
        let more = want.saturating_sub(self.kib());
        if more == 0 {
            return true;
        }
        let kib = &self.kib;
        let permit = match Arc::clone(kib).try_acquire_many_owned(more) {
            Ok(permit) => permit,
            Err(_) => {
                match tokio::time::timeout(wait, Arc::clone(kib).acquire_many_owned(more)).await {
                    Ok(Ok(permit)) => permit,
                    _ => return false,
                }
            }
        };
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        true
    }

    /// What the share holds, in KiB.
    pub(crate) fn kib(&self) -> u32 {
        self.held.as_ref().map_or(0, |p| {
            u32::try_from(p.num_permits()).unwrap_or(self.total_kib)
        })
    }
}

/// What every request shares, whatever the configuration snapshot.
#[derive(Debug)]
pub struct Services {
    pub ids: RequestIds,
    pub metrics: Arc<Metrics>,
    pub failed_attempts: FailedAttempts,
    /// Where each request's record goes; `None` when the log filter leaves access lines out.
    pub access_log: Option<Arc<AccessLog>>,
    /// Bounds the memory of buffered request bodies.
    pub(crate) body_budget: BodyBudget,
    /// The route label of requests that match no route.
    pub(crate) route_none: Arc<str>,
    /// Counters, lockouts, ownership records and the outbox, in the backend `[state]` names.
    pub state: StateStore,
    /// Rate-limit state when the backend is not shared between replicas (see
    /// `checks/rate_limit.rs`): in memory, never written to a file per request.
    pub limiter: LocalLimiter,
    /// This replica's leases of the shared backend's rate limits (see `GcraLeases`).
    pub leases: GcraLeases,
    pub limit_metrics: LimitMetrics,
    /// This process's own count of failed authentications, taken as each is judged (see
    /// `lockout.rs`): it outlives reloads, as the shared count does.
    pub(crate) local_failures: crate::lockout::LocalFailures,
    /// Failures of the state backend: counted, and logged a line at a time.
    pub state_errors: StateErrors,
    /// Webhook deliveries and the outbox's depth.
    pub webhook_metrics: idgate_webhooks::DeliveryMetrics,
    /// The process's webhook deliverer, once the gateway runs: woken when an event is kept.
    pub deliverer: std::sync::OnceLock<Arc<idgate_webhooks::Deliverer>>,
    /// The audit trail, when `[audit]` is enabled: each request's and each refused
    /// connection's record goes there too.
    pub audit: Option<Arc<idgate_audit::AuditTrail>>,
    /// The last good answers of caching routes, kept across reloads (`fallback_cache.rs`).
    pub fallback: crate::fallback_cache::FallbackStore,
    /// Every upstream's circuit breaker and retry budget: they outlive reloads.
    pub resilience: Arc<crate::resilience::Resilience>,
    /// Incident detection, when `[incidents]` is configured: each request, TLS handshake
    /// failure and failed authentication is counted in its feed.
    pub incidents: Option<Arc<idgate_incidents::IncidentService>>,
}

impl Default for Services {
    fn default() -> Self {
        Self::new(None, StateStore::from(MemoryStore::new()))
    }
}

impl Services {
    pub fn new(access_log: Option<Arc<AccessLog>>, state: StateStore) -> Self {
        let mut metrics = Metrics::new();
        metrics.count_access_log_drops(
            access_log
                .as_ref()
                .map_or_else(Default::default, |log| log.dropped().clone()),
        );
        let limit_metrics = LimitMetrics::register(metrics.registry_mut());
        let webhook_metrics = idgate_webhooks::DeliveryMetrics::register(metrics.registry_mut());
        let resilience = Arc::new(crate::resilience::Resilience::new(metrics.registry_mut()));
        Self {
            ids: RequestIds::default(),
            metrics: Arc::new(metrics),
            failed_attempts: FailedAttempts::default(),
            access_log,
            body_budget: BodyBudget::new(BODY_BUDGET_KIB),
            route_none: "-".into(),
            state,
            limiter: LocalLimiter::default(),
            leases: GcraLeases::default(),
            limit_metrics,
            local_failures: Default::default(),
            state_errors: StateErrors::default(),
            webhook_metrics,
            deliverer: std::sync::OnceLock::new(),
            audit: None,
            fallback: Default::default(),
            resilience,
            incidents: None,
        }
    }

    /// Records every request and refused connection in `trail` too, and counts its queue in
    /// the metrics.
    pub fn with_audit(mut self, trail: Arc<idgate_audit::AuditTrail>) -> Self {
        if let Some(metrics) = Arc::get_mut(&mut self.metrics) {
            metrics.count_audit(trail.metrics());
        }
        self.audit = Some(trail);
        self
    }

    /// Feeds each request, TLS handshake failure and failed authentication to incident
    /// detection, and counts its incidents in the metrics.
    pub fn with_incidents(mut self, incidents: Arc<idgate_incidents::IncidentService>) -> Self {
        if let Some(metrics) = Arc::get_mut(&mut self.metrics) {
            incidents.metrics().register(metrics.registry_mut());
        }
        self.incidents = Some(incidents);
        self
    }

    /// Counts what the SIEM export's sinks send, buffer and drop.
    pub(crate) fn with_siem(mut self, siem: &idgate_siem::SiemMetrics) -> Self {
        if let Some(metrics) = Arc::get_mut(&mut self.metrics) {
            metrics.count_siem(siem);
        }
        self
    }

    /// Counts a failed authentication attempt against its source and turns the failure into
    /// the refusal the caller sees.
    pub(crate) fn auth_failed(&self, conn: &ConnInfo, failure: AuthFailure) -> Refusal {
        if failure.is_failed_attempt() {
            self.failed_attempt(conn, failure.slug());
        }
        Refusal::Auth(failure)
    }

    /// Records a wrong credential from the connection's source.
    pub(crate) fn failed_attempt(&self, conn: &ConnInfo, reason: &'static str) {
        let n = self.failed_attempts.record(conn.remote.ip().to_canonical());
        self.metrics.auth_failed(reason);
        if let Some(incidents) = &self.incidents {
            incidents.feed().auth_failure();
        }
        tracing::info!(remote = %conn.remote.ip(), reason, failures_in_window = n, "authentication failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_chars_and_distinct() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(valid_request_id(&a));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
    }
}
