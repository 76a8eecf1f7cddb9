//! The bounded queue between the request path and the writer thread, and the trail's
//! handle ([`AuditTrail`]) the gateway holds.
//!
//! A record's members are serialized once, on the caller's thread, into a buffer the thread
//! reuses, and appended to one pending batch that the writer takes whole. Room in the queue
//! comes from two pools of `queue_capacity` places each:
//!
//! - **reserved**: a request that is about to be forwarded takes a [`Permit`] first; its record
//!   then always has a place, so no request is served unrecorded. When none is free, the
//!   route's policy decides (wait briefly, or refuse with 503); the caller counts which.
//! - **unreserved**: records of requests refused before that point, and of refused
//!   connections. A flood of those cannot take the places of requests that are served;
//!   past this pool, records are dropped, counted, and the trail itself says how many
//!   (a `dropped` entry).
//!
//! A place is given back once the writer has written the record.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::record::{ApiActivity, ConnectionEvent, ConnectionSummary};
use crate::writer::Halt;

/// The trail's counters, registered by the gateway on its metrics registry.
#[derive(Debug, Clone, Default)]
pub struct AuditMetrics {
    /// Records waiting for the writer.
    pub depth: Gauge,
    /// Records lost: the unreserved pool was full, the trail had closed, or a write failed
    /// for good at shutdown.
    pub dropped: Counter,
    /// Requests refused (503) on `block` routes: no place freed up within the wait.
    pub refused_block: Counter,
    /// Requests refused (503) on `fail_closed` routes: no place was free.
    pub refused_fail_closed: Counter,
    /// Writes and syncs of the trail's files that failed (a failed write is retried; a
    /// failed sync stops the writer).
    pub write_errors: Counter,
    /// 1 once the writer has stopped for good ([`AuditTrail::halted`]): every request that
    /// needs a record is refused until a restart.
    pub halted: Gauge,
}

/// A reserved place in the queue for one request's record.
#[derive(Debug)]
pub struct Permit(OwnedSemaphorePermit);

/// A pending batch this large is written at once rather than at the next sync: under load a
/// batch then stays in buffers that are reused from one batch to the next (a batch of
/// `sync_interval`'s records, megabytes at a few ten thousand requests per second, would be
/// grown anew on the request path, page by page, each time).
pub(crate) const WRITE_AT: usize = 256 << 10;

/// Whether an item took a reserved place.
const RESERVED: u8 = 1;
const UNRESERVED: u8 = 0;

/// The pending batch: items of `[pool: u8][len: u32 LE][members]`.
#[derive(Default)]
pub(crate) struct Pending {
    pub(crate) buf: Vec<u8>,
    pub(crate) items: usize,
    /// Records lost since the writer last said so in the trail.
    pub(crate) dropped: u64,
    /// The writer has taken its last batch: nothing more is accepted.
    pub(crate) closed: bool,
}

/// What the writer thread shares with the handle.
pub(crate) struct Shared {
    pub(crate) pending: Mutex<Pending>,
    pub(crate) reserved: Arc<Semaphore>,
    pub(crate) unreserved: AtomicUsize,
    pub(crate) capacity: usize,
    pub(crate) closing: AtomicBool,
    pub(crate) writer: Thread,
    pub(crate) metrics: AuditMetrics,
    /// The `seq` of the last entry written and synced (0 before the first).
    pub(crate) last_seq: AtomicU64,
    /// Why the writer stopped for good ([`Halt::code`]), 0 while it runs.
    pub(crate) halted: AtomicU8,
}

impl Shared {
    pub(crate) fn pending(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves at worst a partial item count: go on.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives back the places of written (or lost) records.
    pub(crate) fn release(&self, reserved: usize, unreserved: usize) {
        self.reserved.add_permits(reserved);
        self.unreserved.fetch_sub(unreserved, Ordering::AcqRel);
        self.metrics.depth.dec_by((reserved + unreserved) as i64);
    }

    fn lost(&self, n: u64) {
        self.metrics.dropped.inc_by(n);
        self.pending().dropped += n;
    }
}

/// Splits a taken batch into its items: (reserved, members).
pub(crate) fn items(buf: &[u8]) -> impl Iterator<Item = (bool, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        let (&pool, after) = rest.split_first()?;
        let len = u32::from_le_bytes(after.get(..4)?.try_into().ok()?) as usize;
        let members = after.get(4..4 + len)?;
        rest = &after[4 + len..];
        Some((pool == RESERVED, members))
    })
}

thread_local! {
    /// The record being serialized, reused by every record made on this thread.
    static MEMBERS: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
}

/// The trail: the queue's handle and the writer thread. Made by [`AuditTrail::start`].
pub struct AuditTrail {
    pub(crate) shared: Arc<Shared>,
    pub(crate) writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditTrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTrail")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

/// How long a clean exit waits for the writer to write, sign and sync the last batch.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

impl AuditTrail {
    /// The trail's counters.
    pub fn metrics(&self) -> &AuditMetrics {
        &self.shared.metrics
    }

    /// The `seq` of the last entry written to the trail (0 before the first): an incident
    /// notes it to name the records written while it was open.
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// Why the writer has stopped for good, once it has (a failed sync, an exhausted chain):
    /// from then on every request that needs a record is refused, so the gateway reports
    /// itself neither ready nor live and an orchestrator restarts it. `None` while it runs,
    /// and after a clean close.
    pub fn halted(&self) -> Option<Halt> {
        Halt::from_code(self.shared.halted.load(Ordering::Acquire))
    }

    /// How many records the queue holds (each of its two pools).
    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// A place for a request's record, if one is free now.
    pub fn try_reserve(&self) -> Option<Permit> {
        self.shared
            .reserved
            .clone()
            .try_acquire_owned()
            .ok()
            .map(Permit)
    }

    /// A place for a request's record, waiting at most `wait` for one to free up.
    pub async fn reserve(&self, wait: Duration) -> Option<Permit> {
        if let Some(p) = self.try_reserve() {
            return Some(p);
        }
        let acquire = self.shared.reserved.clone().acquire_owned();
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(p)) => Some(Permit(p)),
            _ => None,
        }
    }

    /// Queues a request's record, in its reserved place when it has one. Never blocks.
    pub fn api(&self, record: &ApiActivity<'_>, permit: Option<Permit>) {
        self.with_members(|m| record.write_members(m), permit);
    }

    /// Queues the record of a connection refused before or at TLS. Never blocks.
    pub fn connection(&self, event: &ConnectionEvent<'_>) {
        self.with_members(|m| event.write_members(m), None);
    }

    /// Queues the count of refused connections not recorded one by one. Never blocks.
    pub fn connection_summary(&self, summary: &ConnectionSummary<'_>) {
        self.with_members(|m| summary.write_members(m), None);
    }

    fn with_members(&self, write: impl FnOnce(&mut Vec<u8>), permit: Option<Permit>) {
        MEMBERS.with(|cell| match cell.try_borrow_mut() {
            Ok(mut members) => {
                members.clear();
                write(&mut members);
                self.push(&members, permit);
            }
            // Re-entered only if a record were made while one is serialized on this thread.
            Err(_) => {
                let mut members = Vec::new();
                write(&mut members);
                self.push(&members, permit);
            }
        });
    }

    fn push(&self, members: &[u8], permit: Option<Permit>) {
        let shared = &self.shared;
        let pool = match permit {
            Some(Permit(p)) => {
                // The place goes back when the writer has written the record.
                p.forget();
                RESERVED
            }
            None => {
                if shared.unreserved.fetch_add(1, Ordering::AcqRel) >= shared.capacity {
                    shared.unreserved.fetch_sub(1, Ordering::AcqRel);
                    shared.lost(1);
                    return;
                }
                UNRESERVED
            }
        };
        let Ok(len) = u32::try_from(members.len()) else {
            self.give_back(pool);
            shared.lost(1);
            return;
        };
        let mut pending = shared.pending();
        if pending.closed {
            pending.dropped += 1;
            drop(pending);
            shared.metrics.dropped.inc();
            self.give_back(pool);
            return;
        }
        let before = pending.buf.len();
        pending.buf.push(pool);
        pending.buf.extend_from_slice(&len.to_le_bytes());
        pending.buf.extend_from_slice(members);
        pending.items += 1;
        let items = pending.items;
        let after = pending.buf.len();
        drop(pending);
        shared.metrics.depth.inc();
        // The first record wakes an idle writer; half a queue's worth, or a batch of
        // `WRITE_AT` bytes, makes it write early.
        if items == 1
            || items == (shared.capacity / 2).max(1)
            || (before < WRITE_AT && after >= WRITE_AT)
        {
            shared.writer.unpark();
        }
    }

    /// Counts `n` records that will not come: requests still running when the trail must
    /// close. Before [`AuditTrail::close`], the trail tells them in its last `dropped` entry.
    pub fn note_lost(&self, n: u64) {
        if n > 0 {
            self.shared.lost(n);
        }
    }

    /// Records dropped that the trail does not tell: those that came after it closed (no
    /// entry can follow its closing checkpoint). 0 while it is open.
    pub fn dropped_untold(&self) -> u64 {
        let pending = self.shared.pending();
        if pending.closed { pending.dropped } else { 0 }
    }

    fn give_back(&self, pool: u8) {
        if pool == RESERVED {
            self.shared.reserved.add_permits(1);
        } else {
            self.shared.unreserved.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Writes every record queued so far, closes the file with a signed checkpoint and stops
    /// the writer, waiting for it at most [`CLOSE_WAIT`]. Records queued later are dropped
    /// and counted.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.writer.unpark();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let deadline = Instant::now() + CLOSE_WAIT;
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::error!(
                    "the audit writer did not finish within {CLOSE_WAIT:?}: the trail's last file is not closed"
                );
            }
        }
    }
}

impl Drop for AuditTrail {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_as_queued() {
        let mut buf = Vec::new();
        for (pool, m) in [(RESERVED, &b"a"[..]), (UNRESERVED, b""), (RESERVED, b"xyz")] {
            buf.push(pool);
            buf.extend_from_slice(&(m.len() as u32).to_le_bytes());
            buf.extend_from_slice(m);
        }
        let got: Vec<(bool, &[u8])> = items(&buf).collect();
        assert_eq!(got, [(true, &b"a"[..]), (false, b""), (true, b"xyz")]);
        // A cut batch yields what is whole.
        assert_eq!(items(&buf[..buf.len() - 1]).count(), 2);
    }

    #[test]
    fn records_noted_lost_before_the_close_are_told_by_the_trail_and_later_ones_are_counted() {
        use crate::record::tests::activity;
        use crate::writer::tests::{Keys, settings, verify};
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new();
        let (trail, _) =
            AuditTrail::start(settings(dir.path()), keys.audit_keys(None), None).unwrap();
        trail.api(&activity("rid-1", "/v1/x"), trail.try_reserve());
        // Two requests still running as the trail must close.
        trail.note_lost(2);
        assert_eq!(trail.dropped_untold(), 0);
        trail.close();
        // One that comes after all the same: refused, and nothing in the trail says so.
        trail.api(&activity("rid-2", "/v1/x"), trail.try_reserve());
        assert_eq!(trail.dropped_untold(), 1);
        assert_eq!(trail.metrics().dropped.get(), 3);
        let summary = verify(dir.path(), &[keys.public], &[]);
        assert_eq!(summary.records, 1);
        assert_eq!(summary.dropped, 2);
        assert_eq!(summary.end, crate::verify::End::Sealed);
    }
}
