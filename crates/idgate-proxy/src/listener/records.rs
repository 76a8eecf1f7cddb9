//! The audit records of refused connections. Each refusal gets a record of its own while
//! they come no faster than `[audit] connection_records_per_second` (a bucket holding one
//! second's worth); past it, refusals are counted by kind (outcome, reason, stage) and, a
//! second after the first one counted, one summary record per kind says how many came. A
//! peer that connects and closes in a loop thus writes a bounded amount of trail, and every
//! refusal is still in it: a record of its own, or counted in a summary. The drain writes
//! what is still counted when it ends ([`RefusalRecords::flush`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use idgate_audit::{AuditTrail, ConnectionOutcome, ConnectionSummary};

use crate::audit::Refused;
use crate::metrics::Metrics;

/// How long refusals are counted before their summary is written.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(1);

/// What a summary counts together. The reasons and stages are the listener's own words, so
/// there are few kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Kind {
    handshake: bool,
    reason: &'static str,
    stage: &'static str,
}

#[derive(Default)]
struct State {
    /// Records that may be made one by one now; `None` until the first refusal.
    tokens: Option<f64>,
    refilled: Option<Instant>,
    /// When the refusals being counted began, and how many of each kind.
    since: Option<SystemTime>,
    counted: Vec<(Kind, u64)>,
}

/// See the module's documentation. Clones share their state.
#[derive(Clone, Default)]
pub(super) struct RefusalRecords {
    state: Arc<Mutex<State>>,
}

impl RefusalRecords {
    /// Records `refused` in `trail` when its rate allows (`per_second`), else counts it for
    /// the next summary.
    pub(super) fn record(
        &self,
        trail: &Arc<AuditTrail>,
        metrics: &Metrics,
        per_second: u32,
        refused: Refused<'_>,
    ) {
        let now = Instant::now();
        let rate = f64::from(per_second.max(1));
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let earned = s
            .refilled
            .map_or(rate, |then| now.duration_since(then).as_secs_f64() * rate);
        let tokens = (s.tokens.unwrap_or(0.0) + earned).min(rate);
        s.refilled = Some(now);
        if tokens >= 1.0 {
            s.tokens = Some(tokens - 1.0);
            drop(s);
            crate::audit::connection(trail, refused);
            return;
        }
        s.tokens = Some(tokens);
        let kind = Kind {
            handshake: refused.handshake,
            reason: refused.reason,
            stage: refused.stage,
        };
        match s.counted.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += 1,
            None => s.counted.push((kind, 1)),
        }
        let first = s.since.is_none();
        if first {
            s.since = Some(SystemTime::now());
        }
        drop(s);
        metrics.connection_record_summarized(refused.reason);
        if first {
            let records = self.clone();
            let trail = trail.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move {
                        tokio::time::sleep(SUMMARY_INTERVAL).await;
                        records.flush(&trail);
                    });
                }
                Err(_) => records.flush(&trail),
            }
        }
    }

    /// Writes one summary record per kind of refusal counted since the last, if any.
    pub(super) fn flush(&self, trail: &AuditTrail) {
        let (since, counted) = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            (s.since.take(), std::mem::take(&mut s.counted))
        };
        let Some(start) = since else {
            return;
        };
        let end = SystemTime::now();
        for (kind, count) in counted {
            trail.connection_summary(&ConnectionSummary {
                start,
                end,
                outcome: if kind.handshake {
                    ConnectionOutcome::HandshakeFailed
                } else {
                    ConnectionOutcome::Refused
                },
                reason: kind.reason,
                stage: kind.stage,
                count,
            });
        }
    }
}
