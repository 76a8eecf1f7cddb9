//! Counters, nonces and ownership records in the redb file. Each write is made by the
//! file's writer thread (see `writer`), inside a write transaction, so it is atomic against
//! every other task and process sharing the file, and durable once it returns; a lookup is
//! one read transaction.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};

use super::writer::{self, Done, Op};
use super::{Inner, RedbStore, db_err};
use crate::StoreError;
use crate::counters::{Counters, GcraDecision, GcraLimit, GcraTake, WindowCount};
use crate::nonces::{Nonces, OwnerRecord, Ownership};
use crate::state::{self, ALL_KINDS, COUNTER_KINDS, Kind, ReadRows, Row, Rows};
use crate::types::{CounterKey, Nonce, ObjectId, Owner, micros};

/// Rows by (kind, key): (deadline, number, text); see `state::Row`.
const STATE: TableDefinition<(u8, &str), (u64, u64, &str)> = TableDefinition::new("state");
/// The same rows by deadline, for sweeping.
const DEADLINES: TableDefinition<(u64, u8, &str), ()> = TableDefinition::new("state_deadlines");

fn kind_of(tag: u8) -> Option<Kind> {
    ALL_KINDS.iter().copied().find(|k| k.tag() == tag)
}

pub(super) struct StateTables<'t, 'p> {
    rows: Table<'t, (u8, &'static str), (u64, u64, &'static str)>,
    deadlines: Table<'t, (u64, u8, &'static str), ()>,
    path: &'p Path,
}

impl<'t, 'p> StateTables<'t, 'p> {
    fn open(txn: &'t WriteTransaction, path: &'p Path) -> Result<Self, StoreError> {
        Ok(Self {
            rows: txn.open_table(STATE).map_err(|e| db_err(path, e))?,
            deadlines: txn.open_table(DEADLINES).map_err(|e| db_err(path, e))?,
            path,
        })
    }
}

fn read_row(
    table: &impl ReadableTable<(u8, &'static str), (u64, u64, &'static str)>,
    path: &Path,
    kind: Kind,
    key: &str,
) -> Result<Option<Row>, StoreError> {
    Ok(table
        .get((kind.tag(), key))
        .map_err(|e| db_err(path, e))?
        .map(|v| {
            let (deadline, number, text) = v.value();
            Row {
                deadline,
                number,
                text: text.to_owned(),
            }
        }))
}

impl ReadRows for StateTables<'_, '_> {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Row>, StoreError> {
        read_row(&self.rows, self.path, kind, key)
    }
}

impl Rows for StateTables<'_, '_> {
    fn put(&mut self, kind: Kind, key: &str, row: Row) -> Result<(), StoreError> {
        let path = self.path;
        let old = self
            .rows
            .insert(
                (kind.tag(), key),
                (row.deadline, row.number, row.text.as_str()),
            )
            .map_err(|e| db_err(path, e))?
            .map(|v| v.value().0);
        if let Some(old) = old {
            self.deadlines
                .remove((old, kind.tag(), key))
                .map_err(|e| db_err(path, e))?;
        }
        self.deadlines
            .insert((row.deadline, kind.tag(), key), ())
            .map_err(|e| db_err(path, e))?;
        Ok(())
    }

    fn remove(&mut self, kind: Kind, key: &str) -> Result<bool, StoreError> {
        let path = self.path;
        let old = self
            .rows
            .remove((kind.tag(), key))
            .map_err(|e| db_err(path, e))?
            .map(|v| v.value().0);
        match old {
            Some(deadline) => {
                self.deadlines
                    .remove((deadline, kind.tag(), key))
                    .map_err(|e| db_err(path, e))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn sweep(&mut self, kinds: &[Kind], now: u64, limit: usize) -> Result<u64, StoreError> {
        let path = self.path;
        let mut due: Vec<(u64, u8, String)> = Vec::new();
        let range = self
            .deadlines
            .range(..(now.saturating_add(1), 0u8, ""))
            .map_err(|e| db_err(path, e))?;
        for entry in range {
            if due.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(|e| db_err(path, e))?;
            let (deadline, tag, name) = key.value();
            if kind_of(tag).is_some_and(|k| kinds.contains(&k)) {
                due.push((deadline, tag, name.to_owned()));
            }
        }
        for (deadline, tag, name) in &due {
            self.deadlines
                .remove((*deadline, *tag, name.as_str()))
                .map_err(|e| db_err(path, e))?;
            self.rows
                .remove((*tag, name.as_str()))
                .map_err(|e| db_err(path, e))?;
        }
        Ok(due.len() as u64)
    }
}

/// The state table as a read transaction sees it.
struct ReadState<'a> {
    table: &'a redb::ReadOnlyTable<(u8, &'static str), (u64, u64, &'static str)>,
    path: &'a Path,
}

impl ReadRows for ReadState<'_> {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Row>, StoreError> {
        read_row(self.table, self.path, kind, key)
    }
}

impl Inner {
    pub(super) fn write_state<T>(
        &self,
        f: impl FnOnce(&mut StateTables<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(|txn| f(&mut StateTables::open(txn, &self.path)?))
    }

    fn read_state<T: Default>(
        &self,
        f: impl FnOnce(&ReadState<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        Ok(self
            .read(STATE, |table| f(&ReadState { table, path }))?
            .unwrap_or_default())
    }
}

impl RedbStore {
    /// Makes `op` through the file's writer and takes its answer as `pick` says.
    async fn write_op<T>(&self, op: Op, pick: fn(Done) -> Option<T>) -> Result<T, StoreError> {
        let done = writer::write(&self.inner, op).await?;
        pick(done).ok_or_else(|| {
            StoreError::Interrupted("the state writer answered another write".to_owned())
        })
    }
}

impl Counters for RedbStore {
    fn increment(
        &self,
        key: &CounterKey,
        by: u64,
        window: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<WindowCount, StoreError>> + Send {
        let op = Op::Increment {
            key: key.as_str().to_owned(),
            by,
            window,
            now,
        };
        self.write_op(op, |d| match d {
            Done::Window(w) => Some(w),
            _ => None,
        })
    }

    fn get(
        &self,
        key: &CounterKey,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<WindowCount>, StoreError>> + Send {
        let key = key.clone();
        self.blocking(move |s| s.read_state(|rows| state::get_window(rows, key.as_str(), now)))
    }

    fn reset(&self, key: &CounterKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let op = Op::Remove {
            kind: Kind::Window,
            key: key.as_str().to_owned(),
        };
        self.write_op(op, removed)
    }

    fn gcra(
        &self,
        key: &CounterKey,
        limit: &GcraLimit,
        take: GcraTake,
        now: SystemTime,
    ) -> impl Future<Output = Result<GcraDecision, StoreError>> + Send {
        let op = Op::Gcra {
            key: key.as_str().to_owned(),
            limit: *limit,
            take,
            now,
        };
        self.write_op(op, |d| match d {
            Done::Gcra(g) => Some(g),
            _ => None,
        })
    }

    fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send {
        self.write_op(sweep(COUNTER_KINDS, now), swept)
    }
}

fn sweep(kinds: &'static [Kind], now: SystemTime) -> Op {
    Op::Sweep {
        kinds,
        now: micros(now),
    }
}

fn swept(done: Done) -> Option<u64> {
    match done {
        Done::Swept(n) => Some(n),
        _ => None,
    }
}

fn removed(done: Done) -> Option<bool> {
    match done {
        Done::Removed(r) => Some(r),
        _ => None,
    }
}

impl Nonces for RedbStore {
    fn insert_if_absent(
        &self,
        nonce: &Nonce,
        window: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let op = Op::Nonce {
            nonce: nonce.as_str().to_owned(),
            window,
            now,
        };
        self.write_op(op, |d| match d {
            Done::Fresh(f) => Some(f),
            _ => None,
        })
    }

    fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send {
        self.write_op(sweep(&[Kind::Nonce], now), swept)
    }
}

impl Ownership for RedbStore {
    fn put(
        &self,
        object: &ObjectId,
        owner: &Owner,
        retention: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<OwnerRecord, StoreError>> + Send {
        let op = Op::PutOwner {
            object: object.as_str().to_owned(),
            owner: owner.clone(),
            retention,
            now,
        };
        self.write_op(op, |d| match d {
            Done::Owner(r) => Some(r),
            _ => None,
        })
    }

    fn get(
        &self,
        object: &ObjectId,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<OwnerRecord>, StoreError>> + Send {
        let object = object.clone();
        self.blocking(move |s| s.read_state(|rows| state::get_owner(rows, object.as_str(), now)))
    }

    fn remove(&self, object: &ObjectId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let op = Op::Remove {
            kind: Kind::Owner,
            key: object.as_str().to_owned(),
        };
        self.write_op(op, removed)
    }

    fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send {
        self.write_op(sweep(&[Kind::Owner], now), swept)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    use redb::ReadableTableMetadata;

    use super::*;
    use crate::redb_store::test_support::{open, start};
    use crate::redb_store::testing::{open_counting_opens, open_on_a_disk_filling_up};
    use crate::{DEFAULT_WAIT, NewMessage, Queue, QueueName, QueueStats, StoreError, conformance};

    #[tokio::test]
    async fn meets_the_counter_contract() {
        let (_dir, store) = open();
        conformance::counters(&store, start()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn counts_exactly_under_concurrent_increments() {
        let (_dir, store) = open();
        conformance::counters_concurrently(Arc::new(store), start()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn meets_the_nonce_contract() {
        let (_dir, store) = open();
        conformance::nonces(Arc::new(store), start()).await;
    }

    #[tokio::test]
    async fn meets_the_ownership_contract() {
        let (_dir, store) = open();
        conformance::ownership(&store, start()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_handles_on_one_file_count_exactly_together() {
        // Two handles stand for two processes sharing the file (as the gateway and the CLI).
        let (dir, one) = open();
        let two = RedbStore::open(dir.path().join("state.redb"), DEFAULT_WAIT).unwrap();
        let key = CounterKey::new("shared").unwrap();
        let mut tasks = Vec::new();
        for store in [one.clone(), two.clone(), one.clone(), two] {
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    store
                        .increment(&key, 1, Duration::from_secs(60), start())
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let total = Counters::get(&one, &key, start()).await.unwrap().unwrap();
        assert_eq!(total.count, 80);
    }

    #[tokio::test]
    async fn state_and_leases_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let t0 = start();
        let (lease, hour) = (Duration::from_secs(30), Duration::from_secs(3600));
        let (k, n, o) = (
            CounterKey::new("fail:addr=192.0.2.7").unwrap(),
            Nonce::new("evt_1").unwrap(),
            ObjectId::new("session-1").unwrap(),
        );
        let owner = Owner::new("apikey:batch").unwrap();
        let q = QueueName::new("outbox").unwrap();
        let claimed = {
            let store = RedbStore::open(&path, DEFAULT_WAIT).unwrap();
            store.increment(&k, 2, hour, t0).await.unwrap();
            store.insert_if_absent(&n, hour, t0).await.unwrap();
            store.put(&o, &owner, hour, t0).await.unwrap();
            for p in ["first", "second"] {
                let m = NewMessage {
                    payload: p.as_bytes().to_vec(),
                    order_key: None,
                    max_attempts: 5,
                    not_before: None,
                };
                store.push(&q, m, t0).await.unwrap();
            }
            store.claim(&q, 1, lease, t0).await.unwrap()
        };
        assert_eq!(claimed.len(), 1);

        let store = RedbStore::open(&path, DEFAULT_WAIT).unwrap();
        let count = Counters::get(&store, &k, t0).await.unwrap().unwrap();
        assert_eq!((count.count, count.resets_at), (2, t0 + hour));
        assert!(!store.insert_if_absent(&n, hour, t0).await.unwrap());
        assert_eq!(
            Ownership::get(&store, &o, t0)
                .await
                .unwrap()
                .map(|r| r.owner),
            Some(owner)
        );
        // The lease held before the restart still holds: only the second message is free.
        let now = t0 + Duration::from_secs(1);
        let next = store.claim(&q, 10, lease, now).await.unwrap();
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].payload, b"second");
        assert!(store.claim(&q, 10, lease, now).await.unwrap().is_empty());
        // The lease taken before the restart can still be acked.
        store.ack(&q, &claimed[0].lease).await.unwrap();
        assert_eq!(store.stats(&q, now).await.unwrap().leased, 1);
    }

    #[tokio::test]
    async fn writes_sweep_expired_rows_and_the_index_follows() {
        let (_dir, store) = open();
        let t0 = start();
        for i in 0..40 {
            let n = Nonce::new(format!("n{i}")).unwrap();
            store
                .insert_if_absent(&n, Duration::from_secs(1), t0)
                .await
                .unwrap();
        }
        let later = t0 + Duration::from_secs(5);
        let k = CounterKey::new("k").unwrap();
        store
            .increment(&k, 1, Duration::from_secs(60), later)
            .await
            .unwrap();
        let left = Nonces::sweep(&store, later).await.unwrap();
        assert_eq!(left, (40 - state::SWEEP_PER_WRITE) as u64);
        let rows = store
            .inner
            .read(STATE, |t| Ok(t.len().unwrap_or(0)))
            .unwrap();
        let index = store
            .inner
            .read(DEADLINES, |t| Ok(t.len().unwrap_or(0)))
            .unwrap();
        assert_eq!((rows, index), (Some(1), Some(1)));
    }

    #[tokio::test]
    async fn a_state_write_that_failed_for_a_full_disk_leaves_the_store_working_once_there_is_room()
    {
        let dir = tempfile::tempdir().unwrap();
        let full = Arc::new(AtomicBool::new(false));
        let store = open_on_a_disk_filling_up(&dir.path().join("state.redb"), full.clone());
        let (k, window) = (
            CounterKey::new("authfail:k").unwrap(),
            Duration::from_secs(60),
        );
        store.increment(&k, 1, window, start()).await.unwrap();

        full.store(true, Ordering::SeqCst);
        let e = store.increment(&k, 1, window, start()).await.unwrap_err();
        assert!(matches!(e, StoreError::Database { .. }), "{e}");
        // Still full: refused again, and the commit that failed left nothing behind.
        store.increment(&k, 1, window, start()).await.unwrap_err();

        full.store(false, Ordering::SeqCst);
        // The first try after the disk has room may come before the wait after a failed
        // reopen is over; within a few of them, the store works again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let count = loop {
            match store.increment(&k, 1, window, start()).await {
                Ok(count) => break count,
                Err(e) if Instant::now() < deadline => {
                    assert!(matches!(e, StoreError::Database { .. }), "{e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("the store did not recover: {e}"),
            }
        };
        assert_eq!(count.count, 2);
        let got = Counters::get(&store, &k, start()).await.unwrap().unwrap();
        assert_eq!(got.count, 2);
        let n = Nonce::new("after").unwrap();
        assert!(store.insert_if_absent(&n, window, start()).await.unwrap());
    }

    /// Writes an owner of `object` to the file at `path`, then damages it there: one byte of
    /// the owner's text (every copy of it in the file) is no longer UTF-8.
    async fn write_a_damaged_owner(path: &Path, object: &ObjectId) {
        let marker = "apikey:owner-marker-5f1c2a";
        {
            let store = RedbStore::open(path, DEFAULT_WAIT).unwrap();
            let owner = Owner::new(marker).unwrap();
            let hour = Duration::from_secs(3600);
            store.put(object, &owner, hour, start()).await.unwrap();
        }
        let mut bytes = std::fs::read(path).unwrap();
        let mut damaged = 0;
        let mut at = 0;
        while let Some(i) = bytes[at..]
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
        {
            bytes[at + i + marker.len() - 1] = 0xFF;
            at += i + marker.len();
            damaged += 1;
        }
        assert!(damaged > 0, "the row is in the file");
        std::fs::write(path, &bytes).unwrap();
    }

    /// Asserts that `e` refuses a call for damage in the file at `path`, naming it.
    fn refused_as_damaged(path: &Path, e: StoreError) {
        let text = e.to_string();
        assert!(matches!(e, StoreError::Database { .. }), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("the file is damaged"), "{text}");
    }

    #[tokio::test]
    async fn a_state_file_with_a_damaged_row_is_refused_with_its_path_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let (object, hour) = (
            ObjectId::new("session-1").unwrap(),
            Duration::from_secs(3600),
        );
        write_a_damaged_owner(&path, &object).await;

        let store = RedbStore::open(&path, DEFAULT_WAIT).unwrap();
        let refused = |e: StoreError| refused_as_damaged(&path, e);
        refused(Ownership::get(&store, &object, start()).await.unwrap_err());
        let other = Owner::new("apikey:other").unwrap();
        refused(store.put(&object, &other, hour, start()).await.unwrap_err());
        // The rest of the file is still of use.
        let k = CounterKey::new("k").unwrap();
        let count = store.increment(&k, 1, hour, start()).await.unwrap();
        assert_eq!(count.count, 1);
    }

    #[tokio::test]
    async fn a_permanently_damaged_row_does_not_reopen_the_file_on_every_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let (object, hour) = (
            ObjectId::new("session-1").unwrap(),
            Duration::from_secs(3600),
        );
        write_a_damaged_owner(&path, &object).await;
        let opens = Arc::new(AtomicUsize::new(0));
        let store = open_counting_opens(&path, opens.clone());
        assert_eq!(opens.load(Ordering::SeqCst), 1);

        // A client polling the damaged row: a read that meets it leaves the file as it was.
        for _ in 0..20 {
            refused_as_damaged(
                &path,
                Ownership::get(&store, &object, start()).await.unwrap_err(),
            );
        }
        assert_eq!(opens.load(Ordering::SeqCst), 1, "a read reopened the file");

        // Writing it too, among other callers' writes, which keep working throughout.
        let (other, k) = (
            Owner::new("apikey:other").unwrap(),
            CounterKey::new("k").unwrap(),
        );
        let started = Instant::now();
        for i in 1..=40 {
            refused_as_damaged(
                &path,
                Ownership::get(&store, &object, start()).await.unwrap_err(),
            );
            let e = store.put(&object, &other, hour, start()).await.unwrap_err();
            refused_as_damaged(&path, e);
            let count = store.increment(&k, 1, hour, start()).await.unwrap();
            assert_eq!(count.count, i);
        }
        let elapsed = started.elapsed();
        // Each open waits for the one before: 50 ms, then 100 ms, ... up to 5 s after it.
        let (mut allowed, mut at, mut pause) = (0, Duration::ZERO, Duration::from_millis(50));
        while at <= elapsed {
            allowed += 1;
            at += pause;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        let reopens = opens.load(Ordering::SeqCst) - 1;
        assert!(
            (1..=allowed).contains(&reopens),
            "{reopens} reopens in {elapsed:?}, at most {allowed} expected"
        );
    }

    /// The wait before the next open of `store`'s file.
    fn reopen_pause(store: &RedbStore) -> Duration {
        let handle = store.inner.db.as_ref().unwrap();
        handle.slot.read().unwrap().pause
    }

    #[tokio::test]
    async fn an_intermittently_written_damaged_row_backs_off_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let (object, hour) = (
            ObjectId::new("session-1").unwrap(),
            Duration::from_secs(3600),
        );
        write_a_damaged_owner(&path, &object).await;
        let opens = Arc::new(AtomicUsize::new(0));
        let store = open_counting_opens(&path, opens.clone());
        let (other, k) = (
            Owner::new("apikey:other").unwrap(),
            CounterKey::new("k").unwrap(),
        );

        // A client writing the damaged row now and then, while other writes keep working,
        // well past the wait after each open.
        let started = Instant::now();
        let mut count = 0;
        for _ in 0..12 {
            let e = store.put(&object, &other, hour, start()).await.unwrap_err();
            refused_as_damaged(&path, e);
            for _ in 0..2 {
                count += 1;
                let got = store.increment(&k, 1, hour, start()).await.unwrap();
                assert_eq!(got.count, count);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        let elapsed = started.elapsed();
        // Each open waits for the one before: 50 ms, then 100 ms, ... up to 5 s after it.
        let (mut allowed, mut at, mut pause) = (0, Duration::ZERO, Duration::from_millis(50));
        while at <= elapsed {
            allowed += 1;
            at += pause;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
        let reopens = opens.load(Ordering::SeqCst) - 1;
        assert!(
            (1..=allowed).contains(&reopens),
            "{reopens} reopens for 12 writes in {elapsed:?}, at most {allowed} expected"
        );

        // Once the row is left alone, the file is opened again once more (reclaiming what
        // the last write left), and the wait drops back to 50 ms after it has worked a while.
        let deadline = Instant::now() + Duration::from_secs(20);
        while reopen_pause(&store) != Duration::from_millis(50) {
            assert!(
                Instant::now() < deadline,
                "the wait between opens stayed up"
            );
            count += 1;
            let got = store.increment(&k, 1, hour, start()).await.unwrap();
            assert_eq!(got.count, count);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_reader_refuses_writes_and_reads_no_state_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let reader = RedbStore::reader(dir.path().join("none.redb"));
        let k = CounterKey::new("k").unwrap();
        assert!(matches!(
            reader
                .increment(&k, 1, Duration::from_secs(1), start())
                .await,
            Err(StoreError::ReadOnly)
        ));
        assert_eq!(Counters::get(&reader, &k, start()).await.unwrap(), None);
        let q = QueueName::new("q").unwrap();
        assert_eq!(
            reader.stats(&q, start()).await.unwrap(),
            QueueStats::default()
        );
    }
}
