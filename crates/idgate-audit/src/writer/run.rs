//! The writer thread's loop: wait for records (or a timed checkpoint, rotation or sync), take
//! the pending batch, chain it, write it with one `write`, hand its lines to the exporter,
//! give the queue's places back, and sync the file when `sync_interval` has passed since the
//! last sync. A batch is taken `sync_interval` after the last sync, or as soon as it holds
//! [`WRITE_AT`] bytes: under load several batches are written between two syncs, each small
//! enough for its buffers to be reused.
//!
//! A batch that cannot be written (a full disk) is kept and written again every second, in
//! the same order, before anything newer: meanwhile the queue fills and requests are refused
//! by their routes' policy rather than served unrecorded. A failed sync is not retried: it
//! stops the writer for good ([`Writer::halt`]), as does a chain at its last number.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::{Built, Halt, MAX_RECORD, Writer, open_file, oversized};
use crate::chain::EntryKind;
use crate::checkpoint::Close;
use crate::queue::{self, Shared, WRITE_AT};

/// How long a batch that could not be written waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often, at most, the same kind of failure is logged.
const REPORT_EVERY: Duration = Duration::from_secs(10);

impl Writer {
    pub(super) fn run(mut self, shared: &Shared) {
        let mut stuck: Option<Built> = None;
        let mut last_report: Option<Instant> = None;
        loop {
            if let Some(stop) = self.stop {
                self.halt(shared, stop, stuck.as_ref());
                return;
            }
            if !shared.closing.load(Ordering::Acquire) {
                self.wait(shared, stuck.is_some());
            }
            let closing = shared.closing.load(Ordering::Acquire);
            if let Some(built) = stuck.take()
                && let Err(built) = self.commit(shared, built, closing, &mut last_report)
            {
                if closing {
                    self.give_up(shared, &built);
                    return;
                }
                stuck = Some(built);
                continue;
            }
            // A sync that failed stops the writer before anything more is written, at
            // shutdown too: the loop's top halts it, noting the failure for the next start.
            if self.stop.is_some() {
                continue;
            }
            let built = self.build(shared, closing, &mut last_report);
            if let Err(built) = self.commit(shared, built, closing, &mut last_report) {
                stuck = Some(built);
                if !closing {
                    continue;
                }
                // One more try at the end, then the records are counted as lost.
                std::thread::sleep(RETRY_AFTER);
                if let Some(built) = stuck.take()
                    && let Err(built) = self.commit(shared, built, true, &mut last_report)
                {
                    self.give_up(shared, &built);
                    return;
                }
            }
            if self.stop.is_some() {
                continue;
            }
            if closing {
                self.finish(shared, &mut last_report);
                if self.stop.is_some() {
                    continue;
                }
                return;
            }
            if let Err(opening) = self.rotate_if_due(shared, &mut last_report) {
                stuck = Some(opening);
            }
        }
    }

    /// Sleeps until there is something to do: records (the first one wakes the thread, then
    /// the batch gathers until `sync_interval` after the last sync, or until it holds
    /// [`WRITE_AT`] bytes or half the queue), a sync of what was written early, a timed
    /// checkpoint, a rotation by age, a retry, or the close.
    fn wait(&self, shared: &Shared, stuck: bool) {
        if stuck {
            std::thread::park_timeout(RETRY_AFTER);
            return;
        }
        let due = self.sync.last + self.settings.sync_interval;
        if shared.pending().items == 0 {
            let checkpoint = (self.chain.since_checkpoint > 0)
                .then(|| self.chain.last_checkpoint + self.settings.checkpoint_interval);
            let rotation =
                (self.current.entries > 0).then(|| self.current.opened + self.settings.rotate_age);
            let sync = self.sync.unsynced.then_some(due);
            match checkpoint.into_iter().chain(rotation).chain(sync).min() {
                Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
                None => std::thread::park(),
            }
        }
        let now = Instant::now();
        let small = || {
            let p = shared.pending();
            p.items < (shared.capacity / 2).max(1) && p.buf.len() < WRITE_AT
        };
        if now < due && !shared.closing.load(Ordering::Acquire) && small() {
            std::thread::park_timeout(due - now);
        }
    }

    fn checkpoint_due(&self) -> bool {
        let c = &self.chain;
        c.since_checkpoint >= self.settings.checkpoint_every.max(1)
            || (c.since_checkpoint > 0
                && c.last_checkpoint.elapsed() >= self.settings.checkpoint_interval)
    }

    /// Takes the pending batch and chains it, with a `dropped` entry for records lost since
    /// the last one and a checkpoint when one is due.
    fn build(
        &mut self,
        shared: &Shared,
        closing: bool,
        last_report: &mut Option<Instant>,
    ) -> Built {
        // The queue goes on in the buffer of the batch before, emptied, so the request path
        // does not grow one from nothing after every batch.
        let spare = std::mem::take(&mut self.spare.batch);
        let (batch, items, dropped) = {
            let mut p = shared.pending();
            let items = std::mem::take(&mut p.items);
            if closing {
                p.closed = true;
            }
            (
                std::mem::replace(&mut p.buf, spare),
                items,
                std::mem::take(&mut p.dropped),
            )
        };
        // An entry is its record and about 200 bytes of chaining.
        let mut built = self
            .spare
            .built(batch.len() + items * 200, self.encrypted());
        for (reserved, members) in queue::items(&batch) {
            if reserved {
                built.reserved += 1;
            } else {
                built.unreserved += 1;
            }
            // A record no reader could take back is written in a bounded form instead: the
            // chain goes on through it, and the trail says what was cut.
            let appended = if members.len() > MAX_RECORD {
                report(last_report, || {
                    tracing::error!(
                        bytes = members.len(),
                        max = MAX_RECORD,
                        "an audit record is too large for the trail; it is written in a bounded form (its size, SHA-256 and beginning)"
                    )
                });
                self.append(&mut built, EntryKind::Record, &oversized(members))
            } else {
                self.append(&mut built, EntryKind::Record, members)
            };
            if let Err(e) = appended {
                shared.metrics.dropped.inc();
                report(
                    last_report,
                    || tracing::error!(error = %e, "an audit record could not be added to the trail; it is lost"),
                );
            }
            // Every `checkpoint_every` entries, within the batch too.
            if self.chain.since_checkpoint >= self.settings.checkpoint_every.max(1)
                && let Err(e) = self.append_checkpoint(&mut built, None)
            {
                report(
                    last_report,
                    || tracing::error!(error = %e, "an audit checkpoint could not be signed; the next one covers these records"),
                );
            }
        }
        self.spare.batch = super::keep(batch);
        if dropped > 0 {
            let mut m = b"\"dropped\":{\"count\":".to_vec();
            crate::json::num(&mut m, dropped);
            m.extend_from_slice(
                b",\"reason\":\"the audit queue was full, or the trail was closing\"}",
            );
            if let Err(e) = self.append(&mut built, EntryKind::Dropped, &m) {
                report(
                    last_report,
                    || tracing::error!(error = %e, "the dropped-records entry could not be written"),
                );
            }
        }
        if self.checkpoint_due()
            && let Err(e) = self.append_checkpoint(&mut built, None)
        {
            report(
                last_report,
                || tracing::error!(error = %e, "an audit checkpoint could not be signed; the next one covers these records"),
            );
        }
        built
    }

    /// Writes a batch, exports its lines, gives back its places, and syncs the file when
    /// `sync_interval` has passed since the last sync (or `sync_now`). A batch that cannot be
    /// written comes back, to be tried again.
    fn commit(
        &mut self,
        shared: &Shared,
        built: Built,
        sync_now: bool,
        last_report: &mut Option<Instant>,
    ) -> Result<(), Built> {
        if let Err(e) = self.write_built(&built) {
            shared.metrics.write_errors.inc();
            let path = self.current.path.display().to_string();
            report(
                last_report,
                || tracing::error!(file = %path, error = %e, "cannot write the audit trail; retrying (requests are refused as the queue fills)"),
            );
            return Err(built);
        }
        if !built.plain.is_empty() {
            self.sync.unsynced = true;
        }
        if let Some(export) = &self.export {
            for line in built.plain.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                export.export(line);
            }
        }
        shared.release(built.reserved, built.unreserved);
        self.spare.give_back(built);
        if self.sync.unsynced
            && (sync_now || self.sync.last.elapsed() >= self.settings.sync_interval)
        {
            self.sync_file(shared);
        }
        Ok(())
    }

    /// Syncs what was written to the current file, and makes it the trail's last entry. A
    /// failed sync is not tried again: the kernel reports it once and may have dropped the
    /// data it could not write, so a later sync that succeeds would prove nothing. The
    /// writer stops ([`Halt::SyncFailed`]), noting where (see [`Writer::note_sync_failed`]);
    /// the next start continues from the last entry synced, and records the gap.
    fn sync_file(&mut self, shared: &Shared) {
        self.sync.last = Instant::now();
        if let Err(e) = self.sync() {
            shared.metrics.write_errors.inc();
            let path = self.current.path.display().to_string();
            tracing::error!(file = %path, error = %e, after = self.chain.seq, "cannot sync the audit trail: entries written since the last sync may be lost");
            self.stop = Some(Halt::SyncFailed);
            return;
        }
        self.sync.unsynced = false;
        self.sync.synced_seq = self.chain.seq;
        shared.last_seq.store(self.chain.seq, Ordering::Release);
        self.let_go_of_synced_pages();
    }

    /// The synced whole pages of the current file are on disk, and the trail is not read
    /// back while it is written: the kernel may drop them from its cache now rather than
    /// when memory runs short, so that the trail does not crowd out what is read (the
    /// configuration, keys, the other files), and the next batches reuse the memory they
    /// free. The last page, if partly written, stays: the next write would read it back.
    /// Advice only: a kernel that does not take it changes nothing.
    fn let_go_of_synced_pages(&mut self) {
        const PAGE: u64 = 4096;
        let whole = self.current.len / PAGE * PAGE;
        let from = self.current.dropped_to.min(whole);
        if whole > from {
            let len = std::num::NonZeroU64::new(whole - from);
            let _ =
                rustix::fs::fadvise(&self.current.file, from, len, rustix::fs::Advice::DontNeed);
            self.current.dropped_to = whole;
        }
    }

    /// Stops taking records for good: the trail says why ([`crate::AuditTrail::halted`],
    /// and the `halted` gauge: the gateway's probes fail, so an orchestrator restarts it),
    /// reservations fail from now on (requests that need a record are refused, as when the
    /// queue is full), and the records still queued or unwritten are counted as lost.
    fn halt(&self, shared: &Shared, stop: Halt, stuck: Option<&Built>) {
        // Said before the queue closes: whoever is refused a place can see why.
        shared.halted.store(stop.code(), Ordering::Release);
        shared.metrics.halted.set(1);
        shared.reserved.close();
        match stop {
            Halt::Exhausted => tracing::error!(
                last_seq = self.chain.seq,
                "the audit trail's sequence numbers are exhausted: nothing more can be recorded, requests that need a record are refused, and the gateway reports itself neither ready nor live; move the trail's files aside and restart to begin a new chain"
            ),
            Halt::SyncFailed => {
                tracing::error!(
                    file = %self.current.path.display(),
                    "the audit file could not be synced, and is not written again: requests that need a record are refused, and the gateway reports itself neither ready nor live, until a restart, which records the gap"
                );
                self.note_sync_failed();
            }
        }
        self.give_up(shared, stuck.unwrap_or(&Built::default()));
    }

    /// Leaves the next start a note of where the sync failed: the kernel may keep what it
    /// could not write readable for a while, and a start that took it as written would
    /// sign entries that can vanish. If even the note cannot be made durable, nothing more
    /// can be done here.
    fn note_sync_failed(&self) {
        let synced = crate::files::Synced {
            file: self.current.path.clone(),
            seq: self.sync.synced_seq,
        };
        if let Err(e) = crate::files::note_sync_failed(&self.settings.dir, &synced) {
            tracing::error!(
                error = %e,
                synced_seq = synced.seq,
                "the failed sync could not be noted for the next start: a start before the kernel drops the unwritten entries continues after them"
            );
        }
    }

    /// Records that can never be written (this batch, and any still pending at the exit):
    /// counted as lost, their places given back.
    fn give_up(&self, shared: &Shared, built: &Built) {
        let (reserved, unreserved) = {
            let mut p = shared.pending();
            p.closed = true;
            p.items = 0;
            let batch = std::mem::take(&mut p.buf);
            queue::items(&batch).fold((built.reserved, built.unreserved), |(r, u), (res, _)| {
                if res { (r + 1, u) } else { (r, u + 1) }
            })
        };
        let lost = reserved + unreserved;
        shared.metrics.dropped.inc_by(lost as u64);
        shared.release(reserved, unreserved);
        if lost > 0 {
            tracing::error!(lost, "audit records could not be written; they are lost");
        }
    }

    /// Closes the file with a rotation checkpoint and goes on in a new one, when the file is
    /// past its size or age. The new file is created first: if it cannot be, the current one
    /// stays open and the rotation is tried after the next batch. A new file's opening entry
    /// that cannot be written comes back, to be tried again before anything newer.
    fn rotate_if_due(
        &mut self,
        shared: &Shared,
        last_report: &mut Option<Instant>,
    ) -> Result<(), Built> {
        let c = &self.current;
        if self.stop.is_some()
            || c.entries == 0
            || (c.len < self.settings.rotate_bytes && c.opened.elapsed() < self.settings.rotate_age)
        {
            return Ok(());
        }
        // The rotation's checkpoint, then the new file's opening: its first entry.
        let Some(first) = self.chain.seq.checked_add(2) else {
            report(last_report, || {
                tracing::error!(
                    last_seq = self.chain.seq,
                    "the audit trail's sequence numbers are exhausted; the current file stays open"
                )
            });
            return Ok(());
        };
        let next = match open_file(
            &self.settings.dir,
            first,
            SystemTime::now(),
            self.keys.encryption.as_ref(),
        ) {
            Ok(next) => next,
            Err(e) => {
                shared.metrics.write_errors.inc();
                report(
                    last_report,
                    || tracing::error!(error = %e, "cannot open the next audit file; the current one stays open"),
                );
                return Ok(());
            }
        };
        let saved = self.chain.clone();
        let mut closing = Built::default();
        let closed = self
            .append_checkpoint(&mut closing, Some(Close::Rotate))
            .map_err(|e| e.to_string())
            .and_then(|()| self.write_built(&closing).map_err(|e| e.to_string()));
        if let Err(e) = closed {
            self.chain = saved;
            let _ = std::fs::remove_file(&next.path);
            shared.metrics.write_errors.inc();
            report(
                last_report,
                || tracing::error!(error = %e, "cannot close the audit file for rotation; it stays open"),
            );
            return Ok(());
        }
        self.sync_file(shared);
        if self.stop.is_some() {
            let _ = std::fs::remove_file(&next.path);
            return Ok(());
        }
        let old = std::mem::replace(&mut self.current, next);
        let mut opening = Built::default();
        if let Err(e) = self.append_open(&mut opening, "rotate", Some(&old.path)) {
            report(
                last_report,
                || tracing::error!(error = %e, "cannot open the next audit file"),
            );
        }
        let _ = crate::files::sync_dir(&self.settings.dir);
        if let Some(export) = &self.export {
            for line in closing
                .plain
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
            {
                export.export(line);
            }
        }
        // The opening entry goes out like any batch.
        self.commit(shared, opening, false, last_report)
    }

    /// Closes the last file with a signed `shutdown` checkpoint.
    fn finish(&mut self, shared: &Shared, last_report: &mut Option<Instant>) {
        if self.stop.is_some() {
            return;
        }
        let mut built = Built::default();
        if let Err(e) = self.append_checkpoint(&mut built, Some(Close::Shutdown)) {
            tracing::error!(error = %e, "the audit file could not be closed with a signed checkpoint; the next start records a gap");
            return;
        }
        for _ in 0..3 {
            match self.commit(shared, built, true, last_report) {
                Ok(()) => return,
                Err(b) => {
                    built = b;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        tracing::error!(
            "the audit file's closing checkpoint could not be written; the next start records a gap"
        );
    }
}

/// Runs `log` at most once per [`REPORT_EVERY`].
fn report(last: &mut Option<Instant>, log: impl FnOnce()) {
    if last.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
        log();
        *last = Some(Instant::now());
    }
}
