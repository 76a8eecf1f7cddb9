//! The metrics of rate limits, lockouts and state-backend failures, and the throttled log
//! line of the latter. Labels are configuration names and fixed words, never a caller's
//! identity or key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::metrics::RouteLabel;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLimit {
    route: RouteLabel,
    limit: RouteLabel,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct By {
    by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Operation {
    operation: &'static str,
}

/// `idgate_rate_limited_total{route,limit}`, `idgate_lockouts_total{by}`,
/// `idgate_lockout_refusals_total{by}` and `idgate_state_errors_total{operation}`.
#[derive(Debug, Default, Clone)]
pub struct LimitMetrics {
    rate_limited: Family<RouteLimit, Counter>,
    lockouts: Family<By, Counter>,
    lockout_refusals: Family<By, Counter>,
    state_errors: Family<Operation, Counter>,
}

impl LimitMetrics {
    /// The families, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by route and limit",
            m.rate_limited.clone(),
        );
        registry.register(
            "lockouts",
            "Lockouts started after repeated failed authentications, by what was locked out",
            m.lockouts.clone(),
        );
        registry.register(
            "lockout_refusals",
            "Requests refused because their source, API key or token client was locked out, by what was locked out",
            m.lockout_refusals.clone(),
        );
        registry.register(
            "state_errors",
            "State backend calls that failed or timed out, by operation",
            m.state_errors.clone(),
        );
        m
    }

    pub fn rate_limited(&self, route: &Arc<str>, limit: &Arc<str>) {
        self.rate_limited
            .get_or_create(&RouteLimit {
                route: RouteLabel(route.clone()),
                limit: RouteLabel(limit.clone()),
            })
            .inc();
    }

    pub fn locked_out(&self, by: &'static str) {
        self.lockouts.get_or_create(&By { by }).inc();
    }

    pub fn lockout_refused(&self, by: &'static str) {
        self.lockout_refusals.get_or_create(&By { by }).inc();
    }

    fn state_error(&self, operation: &'static str) {
        self.state_errors
            .get_or_create(&Operation { operation })
            .inc();
    }
}

/// How often a failing backend is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Failures of the state backend: every one counted, at most one log line per
/// [`LOG_EVERY`] with the number left unlogged since the last, and one line when the
/// backend answers again. Nothing to reset by hand: the next successful call is the
/// recovery.
#[derive(Debug)]
pub struct StateErrors {
    start: Instant,
    /// Milliseconds since `start` of the last line logged; `u64::MAX` before the first.
    last_logged: AtomicU64,
    suppressed: AtomicU64,
    /// Failures since the backend last answered (0: it is answering).
    failing: AtomicU64,
}

impl Default for StateErrors {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            last_logged: AtomicU64::new(u64::MAX),
            suppressed: AtomicU64::new(0),
            failing: AtomicU64::new(0),
        }
    }
}

impl StateErrors {
    /// Counts a failed call of `operation` and logs it unless a line went out within
    /// [`LOG_EVERY`].
    pub fn failed(
        &self,
        metrics: &LimitMetrics,
        operation: &'static str,
        backend: &'static str,
        reason: &dyn std::fmt::Display,
    ) {
        metrics.state_error(operation);
        self.failing.fetch_add(1, Ordering::Relaxed);
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last_logged.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64;
        if due
            && self
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                operation,
                backend,
                suppressed,
                reason = %reason,
                "the state backend failed; each route follows its on_state_error"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A call succeeded: if the backend was failing, say it is back.
    pub fn succeeded(&self, backend: &'static str) {
        // One load on the hot path while all is well.
        if self.failing.load(Ordering::Relaxed) == 0 {
            return;
        }
        let failures = self.failing.swap(0, Ordering::Relaxed);
        if failures > 0 {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            self.last_logged.store(u64::MAX, Ordering::Relaxed);
            tracing::info!(
                backend,
                failures,
                suppressed,
                "the state backend answers again"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_all_counted_and_logged_once_per_interval() {
        let mut registry = Registry::default();
        let metrics = LimitMetrics::register(&mut registry);
        let errors = StateErrors::default();
        for _ in 0..5 {
            errors.failed(&metrics, "gcra", "redis", &"timed out");
        }
        assert_eq!(errors.suppressed.load(Ordering::Relaxed), 4);
        assert_eq!(errors.failing.load(Ordering::Relaxed), 5);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("state_errors_total{operation=\"gcra\"} 5"),
            "{text}"
        );
        errors.succeeded("redis");
        assert_eq!(errors.failing.load(Ordering::Relaxed), 0);
        assert_eq!(errors.last_logged.load(Ordering::Relaxed), u64::MAX);
    }
}
