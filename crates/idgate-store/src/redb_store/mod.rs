//! The embedded backend: one redb file on the gateway's machine, shared by the running
//! gateway (which reads it) and the `idgate keys` CLI (which writes it).
//!
//! redb's default concurrency mode locks the whole file for one process. Every handle here is
//! opened in [`ConcurrencyMode::MultiWriter`] instead (redb 4.5+): any number of processes may
//! have the file open, read-only or for writing, with one write transaction at a time, each
//! waiting for the one before. A reader opens the file only for the moment it reads and closes
//! it right after, so the gateway never holds the file between polls. Should the file be held
//! by a process that does not share it (another tool in redb's default mode), opens are retried
//! for a while before [`StoreError::Busy`].
//!
//! The file is created with mode 0600 and refused when group or others may read it.
//!
//! A writable store holds its file open for its life, and gets over a failed disk
//! operation without a restart: once redb has failed a write, a sync or a read (a full disk,
//! an I/O error), the handle answers every later call with that failure, reads too. The
//! call that meets it closes the handle, and the next call opens the file again, which
//! repairs what the failed commit left. Damage inside the file that redb cannot read past
//! (it panics) fails the call with an error naming the file; a read leaves the handle as it
//! was, a write leaves it working but with pages to reclaim, so it is reopened the same way.
//!
//! Opening the file again is costly (closing syncs it, and after a panic the open rebuilds
//! redb's record of free pages), and a permanent fault would bring it about on every call.
//! So opens are paced: after each, the next waits 50 ms, doubling up to 5 s, whether the
//! open failed or the file failed again once open. The wait drops back to 50 ms only once a
//! call succeeds on a handle that has worked for 5 s (the longest wait) past its own wait
//! with nothing left to repair: a fault that comes back at intervals shorter than that
//! keeps the pace slow, however many calls succeed in between. A handle a write panicked
//! on before its wait was over keeps serving calls until then.
//!
//! One file can hold every kind of state (API keys here, counters, nonces and ownership in
//! `state`, queues in `queue`), each call one transaction. The API keys are best kept in a
//! file of their own: their [`StoreVersion`] is the file's change time, so any other write
//! to the same file would make every gateway re-read its keys.
//!
//! Every call blocks on the file: the async trait methods run reads, API key writes and
//! queue writes on the runtime's blocking threads (see `crate::blocking`), and the state
//! writes (counters, nonces, ownership) on the file's own writer thread, which waits for
//! the file where the blocking pool would otherwise fill up with writes (see `writer`).

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::ops::Deref;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use redb::backends::FileBackend;
use redb::{
    Builder, ConcurrencyMode, Database, Key, ReadOnlyTable, ReadableDatabase, ReadableTable,
    StorageError, TableDefinition, TableError, TransactionError, Value, WriteTransaction,
};

use crate::StoreError;
use crate::api_keys::{ApiKeyStore, StoreVersion, StoredKey, VersionInner, sort_keys};
use crate::blocking::run_blocking;

mod queue;
mod state;
#[cfg(any(test, feature = "conformance"))]
pub mod testing;
mod writer;

/// API key records by id: versioned JSON (see `StoredKey::encode`).
const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys");

/// The records are small; redb's default cache of 1 GiB is a ceiling, but there is no reason
/// to let it grow that far.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

/// How long an open waits for a process holding the file exclusively, by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// A redb file. Opened for writing with [`RedbStore::open`], or as a reader that opens the
/// file read-only for each call with [`RedbStore::reader`]. Cheap to clone: clones share the
/// open file.
#[derive(Clone)]
pub struct RedbStore {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) path: PathBuf,
    /// The open file, when writable.
    db: Option<Handle>,
    wait: Duration,
    /// The thread making the state writes (see `writer`), once one was made.
    writer: writer::Writer,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .field("writable", &self.inner.writable())
            .finish()
    }
}

/// Makes a database of the opened file: [`RedbStore::database`], or in tests one whose disk
/// fails on demand (see `testing`).
pub(crate) type MakeDb = Arc<dyn Fn(&Path, File) -> Result<Database, StoreError> + Send + Sync>;

/// A writable store's open file, and what reopens it after a failed disk operation.
struct Handle {
    slot: RwLock<Slot>,
    make: MakeDb,
}

struct Slot {
    /// `None` once a failed disk operation closed the file, until it is opened again.
    db: Option<Arc<Opened>>,
    /// Why the file was closed, while it is.
    closed_because: String,
    /// Why the last open since failed.
    reopen_failed: Option<String>,
    /// The earliest time for the next open: the wait after the last one is over.
    retry_at: Option<Instant>,
    /// The wait after the next open.
    pause: Duration,
}

/// One open of a writable store's file.
pub(crate) struct Opened {
    db: Database,
    /// When the wait after this open is over (see [`Inner::handle`]).
    settled_at: Instant,
    /// Whether a call succeeded on it [`PROVEN_AFTER`] past `settled_at`, with nothing to
    /// repair, which resets the wait between opens; the first open of the file needs no
    /// proof.
    proven: AtomicBool,
    /// Set by a panic in a write: the handle still works, but leaked the pages of the
    /// transaction the panic dropped, which only an open reclaims. Opened again by the
    /// first call after `settled_at`.
    repair_due: AtomicBool,
}

impl Opened {
    fn new(db: Database, settled_at: Instant, proven: bool) -> Self {
        Self {
            db,
            settled_at,
            proven: AtomicBool::new(proven),
            repair_due: AtomicBool::new(false),
        }
    }

    /// Whether a call should open the file again rather than use this handle, at `now`.
    fn due_for_repair(&self, now: impl FnOnce() -> Instant) -> bool {
        self.repair_due.load(Ordering::Relaxed) && now() >= self.settled_at
    }
}

impl Deref for Opened {
    type Target = Database;

    fn deref(&self) -> &Database {
        &self.db
    }
}

/// The wait after an open of the file before the next, doubled after each until
/// [`REOPEN_PAUSE_MAX`], and reset once the file works again.
const REOPEN_PAUSE: Duration = Duration::from_millis(50);
const REOPEN_PAUSE_MAX: Duration = Duration::from_secs(5);

/// How long an open must work past its wait, with nothing to repair, before the wait between
/// opens drops back to [`REOPEN_PAUSE`]. As long as the longest wait, so that a fault coming
/// back at any shorter interval has the wait grow to it rather than the file opened again
/// each time, however many calls succeed in between.
const PROVEN_AFTER: Duration = REOPEN_PAUSE_MAX;

/// Why a writable store's file was closed after a panic in redb.
const DAMAGED_REASON: &str = "the file is damaged: its data could not be read";

fn builder() -> Builder {
    let mut b = Builder::new();
    b.set_concurrency_mode(ConcurrencyMode::MultiWriter)
        .set_cache_size(CACHE_BYTES);
    b
}

impl RedbStore {
    /// Opens the store for reading and writing, creating the file (mode 0600) if it does not
    /// exist. Waits up to `wait` while another process holds the file exclusively.
    pub fn open(path: impl AsRef<Path>, wait: Duration) -> Result<Self, StoreError> {
        Self::open_with(path.as_ref(), wait, Arc::new(Self::database))
    }

    pub(crate) fn open_with(path: &Path, wait: Duration, make: MakeDb) -> Result<Self, StoreError> {
        let path = path.to_owned();
        let db = retry_busy(&path, wait, || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            opening(&path, || make(&path, file))
        })?;
        Ok(Self::writable(path, db, wait, make))
    }

    /// Opens an existing store for reading and writing; `None` when there is no file. For
    /// a writer that must not create the file, whose owner and mode would then be its own
    /// (an administrator's command run as root before the store exists).
    pub fn open_existing(
        path: impl AsRef<Path>,
        wait: Duration,
    ) -> Result<Option<Self>, StoreError> {
        let path = path.as_ref().to_owned();
        let db = retry_busy(&path, wait, || {
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(&path, e)),
            };
            opening(&path, || Self::database(&path, file)).map(Some)
        })?;
        Ok(db.map(|db| Self::writable(path, db, wait, Arc::new(Self::database))))
    }

    fn database(path: &Path, file: File) -> Result<Database, StoreError> {
        check_mode(path, &file)?;
        let backend = FileBackend::new(file).map_err(|e| db_err(path, e))?;
        builder()
            .create_with_backend(backend)
            .map_err(|e| db_err(path, e))
    }

    fn writable(path: PathBuf, db: Database, wait: Duration, make: MakeDb) -> Self {
        let slot = Slot {
            db: Some(Arc::new(Opened::new(db, Instant::now(), true))),
            closed_because: String::new(),
            reopen_failed: None,
            retry_at: None,
            pause: REOPEN_PAUSE,
        };
        Self::from(Inner {
            path,
            db: Some(Handle {
                slot: RwLock::new(slot),
                make,
            }),
            wait,
            writer: writer::Writer::new(),
        })
    }

    /// A read-only view that opens the file for each read and closes it right after. A missing
    /// (or still empty) file reads as a store without keys.
    pub fn reader(path: impl AsRef<Path>) -> Self {
        Self::from(Inner {
            path: path.as_ref().to_owned(),
            db: None,
            wait: Duration::from_millis(200),
            writer: writer::Writer::new(),
        })
    }

    /// How long a reader's opens wait for a process holding the file exclusively.
    pub fn with_wait(self, wait: Duration) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.wait = wait;
                Self::from(inner)
            }
            // Shared already: the clones keep the wait they were made with.
            Err(inner) => Self { inner },
        }
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `work` with this store on a thread that may block (see [`run_blocking`]).
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        run_blocking(move || work(&inner)).await
    }
}

impl From<Inner> for RedbStore {
    fn from(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }
}

impl Inner {
    pub(crate) fn writable(&self) -> bool {
        self.db.is_some()
    }

    /// The open file of a writable store (`None` for a reader), opened again first when a
    /// failed disk operation closed it, or a panic left pages to reclaim, and the wait after
    /// the last open is over.
    pub(crate) fn handle(&self) -> Result<Option<Arc<Opened>>, StoreError> {
        let Some(handle) = &self.db else {
            return Ok(None);
        };
        if let Some(db) = &handle
            .slot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .db
            && !db.due_for_repair(Instant::now)
        {
            return Ok(Some(db.clone()));
        }
        let mut slot = handle.slot.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = &slot.db {
            if !db.due_for_repair(Instant::now) {
                // Opened by another call meanwhile.
                return Ok(Some(db.clone()));
            }
            // Closed once the calls still using it are done.
            slot.db = None;
            DAMAGED_REASON.clone_into(&mut slot.closed_because);
        }
        if slot.retry_at.is_some_and(|at| Instant::now() < at) {
            let reason = match &slot.reopen_failed {
                Some(e) => format!("{}; opening it again failed: {e}", slot.closed_because),
                None => slot.closed_because.clone(),
            };
            return Err(StoreError::Database {
                path: self.path.clone(),
                reason,
            });
        }
        let opened = self.reopen(&handle.make);
        // Counted from the end of the open, which may have been a long repair. Doubled
        // whether or not the open worked: a fault the open does not clear (a full disk,
        // damage) would otherwise have the file opened again on every call.
        let settled_at = Instant::now() + slot.pause;
        slot.retry_at = Some(settled_at);
        slot.pause = (slot.pause * 2).min(REOPEN_PAUSE_MAX);
        match opened {
            Ok(db) => {
                let db = Arc::new(Opened::new(db, settled_at, false));
                slot.db = Some(db.clone());
                slot.reopen_failed = None;
                Ok(Some(db))
            }
            Err(e) => {
                slot.reopen_failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Opens the file again, as it was first opened (but never creating it).
    fn reopen(&self, make: &MakeDb) -> Result<Database, StoreError> {
        let path = &self.path;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        opening(path, || make(path, file))
    }

    /// Closes `db` when it failed for good: redb answers every call on a handle whose disk
    /// operation failed with that failure. The next call opens the file again (see
    /// [`Inner::handle`]).
    fn close_if_failed(&self, db: &Arc<Opened>) {
        let Some(handle) = &self.db else { return };
        if !matches!(
            db.begin_read(),
            Err(TransactionError::Storage(StorageError::PreviousIo))
        ) {
            return;
        }
        let mut slot = handle.slot.write().unwrap_or_else(PoisonError::into_inner);
        if slot
            .db
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, db))
        {
            // Closed once the calls still using it are done.
            slot.db = None;
            "a disk operation on the file failed (a full disk, an I/O error)"
                .clone_into(&mut slot.closed_because);
        }
    }

    /// Notes a call that succeeded on `db`: once the handle has worked for [`PROVEN_AFTER`]
    /// past the wait after its open with nothing to repair, the file works again, and the
    /// wait between opens drops back to its start. A handle that failed in that time was
    /// closed, and one a write panicked on is due for repair, so neither is proven.
    fn worked(&self, db: &Arc<Opened>) {
        if db.proven.load(Ordering::Relaxed)
            || db.repair_due.load(Ordering::Relaxed)
            || Instant::now() < db.settled_at + PROVEN_AFTER
        {
            return;
        }
        let Some(handle) = &self.db else { return };
        let mut slot = handle.slot.write().unwrap_or_else(PoisonError::into_inner);
        if slot
            .db
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, db))
            && !db.proven.swap(true, Ordering::Relaxed)
        {
            slot.pause = REOPEN_PAUSE;
        }
    }

    /// Runs `work` on the open file, closing it when it failed for good (see
    /// [`Inner::close_if_failed`]); a panic in redb is an error naming the file. A panic in
    /// a write (`writes`) has the file opened again once the wait after its last open is
    /// over (see [`Opened::repair_due`]); one in a read leaves the handle as it was.
    fn on_database<T>(
        &self,
        db: &Arc<Opened>,
        writes: bool,
        work: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        match catch_unwind(AssertUnwindSafe(|| work(&db.db))) {
            Ok(Ok(v)) => {
                self.worked(db);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.close_if_failed(db);
                Err(e)
            }
            Err(_) => {
                if writes {
                    db.repair_due.store(true, Ordering::Relaxed);
                }
                Err(damaged(&self.path))
            }
        }
    }

    /// Runs `f` on a read transaction's table `def`; `None` when there is no such table (or
    /// no file).
    pub(crate) fn read<K: Key + 'static, V: Value + 'static, T>(
        &self,
        def: TableDefinition<'static, K, V>,
        f: impl FnOnce(&ReadOnlyTable<K, V>) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let path = &self.path;
        if let Some(db) = self.handle()? {
            return self.on_database(&db, false, |db| {
                let txn = db.begin_read().map_err(|e| db_err(path, e))?;
                match txn.open_table(def) {
                    Ok(table) => f(&table).map(Some),
                    Err(TableError::TableDoesNotExist(_)) => Ok(None),
                    Err(e) => Err(db_err(path, e)),
                }
            });
        }
        let db = retry_busy(path, self.wait, || {
            let file = match File::open(path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err(path, e)),
            };
            let meta = check_mode(path, &file)?;
            if meta.len() == 0 {
                // Created by a writer that has not initialised it yet.
                return Ok(None);
            }
            let backend = FileBackend::new(file).map_err(|e| db_err(path, e))?;
            opening(path, || {
                builder()
                    .open_read_only_with_backend(backend)
                    .map_err(|e| db_err(path, e))
            })
            .map(Some)
        })?;
        let Some(db) = db else { return Ok(None) };
        let out = catch_unwind(AssertUnwindSafe(|| {
            let txn = db.begin_read().map_err(|e| db_err(path, e))?;
            match txn.open_table(def) {
                Ok(table) => f(&table).map(Some),
                Err(TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(db_err(path, e)),
            }
        }))
        .unwrap_or_else(|_| Err(damaged(path)));
        // The data is read; a failure to release the file changes nothing for this read, and
        // the next open reports anything that matters.
        let _ = db.close();
        out
    }

    /// Runs `f` in a write transaction, committed when `f` succeeds.
    pub(crate) fn transact<T>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        let db = self.handle()?.ok_or(StoreError::ReadOnly)?;
        self.on_database(&db, true, |db| {
            let txn = db.begin_write().map_err(|e| db_err(path, e))?;
            match f(&txn) {
                Ok(v) => {
                    txn.commit().map_err(|e| db_err(path, e))?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = txn.abort();
                    Err(e)
                }
            }
        })
    }

    /// Runs `f` on the API key table in a write transaction, committed when `f` succeeds.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(|txn| {
            let mut table = txn
                .open_table(API_KEYS)
                .map_err(|e| db_err(&self.path, e))?;
            f(&mut table)
        })
    }
}

fn get_in(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    path: &Path,
    id: &str,
) -> Result<Option<StoredKey>, StoreError> {
    match table.get(id).map_err(|e| db_err(path, e))? {
        Some(v) => StoredKey::decode(id, v.value()).map(Some),
        None => Ok(None),
    }
}

impl Inner {
    fn insert_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        let path = self.path.clone();
        self.write(|t| {
            if t.get(key.id.as_str())
                .map_err(|e| db_err(&path, e))?
                .is_some()
            {
                return Err(StoreError::Exists(key.id.clone()));
            }
            t.insert(key.id.as_str(), key.encode().as_slice())
                .map_err(|e| db_err(&path, e))?;
            Ok(())
        })
    }

    fn get_key(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        Ok(self
            .read(API_KEYS, |t| get_in(t, &self.path, id))?
            .flatten())
    }

    fn list_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let keys = self.read(API_KEYS, |t| {
            let mut keys = Vec::new();
            for entry in t.iter().map_err(|e| db_err(&self.path, e))? {
                let (id, value) = entry.map_err(|e| db_err(&self.path, e))?;
                keys.push(StoredKey::decode(id.value(), value.value())?);
            }
            Ok(keys)
        })?;
        let mut keys = keys.unwrap_or_default();
        sort_keys(&mut keys);
        Ok(keys)
    }

    fn revoke_key(&self, id: &str, at: SystemTime) -> Result<StoredKey, StoreError> {
        let path = self.path.clone();
        self.write(|t| {
            let mut key =
                get_in(t, &path, id)?.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            key.apply_revoke(at);
            t.insert(id, key.encode().as_slice())
                .map_err(|e| db_err(&path, e))?;
            Ok(key)
        })
    }

    fn rotate_key(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> Result<StoredKey, StoreError> {
        let path = self.path.clone();
        self.write(|t| {
            let mut old =
                get_in(t, &path, old_id)?.ok_or_else(|| StoreError::NotFound(old_id.to_owned()))?;
            if t.get(new.id.as_str())
                .map_err(|e| db_err(&path, e))?
                .is_some()
            {
                return Err(StoreError::Exists(new.id.clone()));
            }
            old.apply_rotation(&new.id, old_valid_until)?;
            t.insert(old_id, old.encode().as_slice())
                .map_err(|e| db_err(&path, e))?;
            t.insert(new.id.as_str(), new.encode().as_slice())
                .map_err(|e| db_err(&path, e))?;
            Ok(old)
        })
    }

    fn file_version(&self) -> Result<StoreVersion, StoreError> {
        match std::fs::metadata(&self.path) {
            Ok(m) => Ok(StoreVersion(VersionInner::File {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(StoreVersion(VersionInner::Missing))
            }
            Err(e) => Err(io_err(&self.path, e)),
        }
    }
}

// Each call runs on a thread that may block: redb waits on the file and on other writers.
impl ApiKeyStore for RedbStore {
    fn insert(&self, key: &StoredKey) -> impl Future<Output = Result<(), StoreError>> + Send {
        let key = key.clone();
        self.blocking(move |s| s.insert_key(&key))
    }

    fn get(&self, id: &str) -> impl Future<Output = Result<Option<StoredKey>, StoreError>> + Send {
        let id = id.to_owned();
        self.blocking(move |s| s.get_key(&id))
    }

    fn list(&self) -> impl Future<Output = Result<Vec<StoredKey>, StoreError>> + Send {
        self.blocking(Inner::list_keys)
    }

    fn revoke(
        &self,
        id: &str,
        at: SystemTime,
    ) -> impl Future<Output = Result<StoredKey, StoreError>> + Send {
        let id = id.to_owned();
        self.blocking(move |s| s.revoke_key(&id, at))
    }

    fn rotate(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> impl Future<Output = Result<StoredKey, StoreError>> + Send {
        let (old_id, new) = (old_id.to_owned(), new.clone());
        self.blocking(move |s| s.rotate_key(&old_id, &new, old_valid_until))
    }

    fn version(&self) -> impl Future<Output = Result<StoreVersion, StoreError>> + Send {
        // A `stat` of the file: quick enough to run in place.
        std::future::ready(self.inner.file_version())
    }
}

/// Runs `open` until it succeeds, fails otherwise than with "already open", or `wait` is over.
fn retry_busy<T>(
    path: &Path,
    wait: Duration,
    mut open: impl FnMut() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        match open() {
            Err(StoreError::Busy { .. }) if start.elapsed() < wait => {
                std::thread::sleep(pause.min(wait.saturating_sub(start.elapsed())));
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(StoreError::Busy { .. }) => {
                return Err(StoreError::Busy {
                    path: path.to_owned(),
                    waited_ms: start.elapsed().as_millis(),
                });
            }
            other => return other,
        }
    }
}

fn check_mode(path: &Path, file: &File) -> Result<std::fs::Metadata, StoreError> {
    let meta = file.metadata().map_err(|e| io_err(path, e))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StoreError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(meta)
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs an open of the file, a panic in redb (damage it cannot read past) made an error.
fn opening<T>(path: &Path, open: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    catch_unwind(AssertUnwindSafe(open)).unwrap_or_else(|_| Err(damaged(path)))
}

/// What a panic in redb means: data in the file it could not read.
fn damaged(path: &Path) -> StoreError {
    StoreError::Database {
        path: path.to_owned(),
        reason: "the file is damaged: redb could not read its data; restore it from a backup, \
                 or move it aside to start with empty state"
            .to_owned(),
    }
}

pub(crate) fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen => StoreError::Busy {
            path: path.to_owned(),
            waited_ms: 0,
        },
        redb::Error::RepairAborted => StoreError::Database {
            path: path.to_owned(),
            reason: "the database needs a repair after an interrupted write; any `idgate keys` \
                     command repairs it"
                .to_owned(),
        },
        e => StoreError::Database {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    }
}

/// What the redb tests share: a fixed start time and a store in a fresh file.
#[cfg(test)]
pub(crate) mod test_support {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::RedbStore;
    use crate::DEFAULT_WAIT;

    pub(crate) fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    pub(crate) fn open() -> (tempfile::TempDir, RedbStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("state.redb"), DEFAULT_WAIT).unwrap();
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::api_keys::tests::key;
    use crate::block_on;

    #[tokio::test]
    async fn meets_the_api_key_contract_and_creates_the_file_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.redb");
        let store = RedbStore::open(&path, DEFAULT_WAIT).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        crate::conformance::api_keys(&store).await;
    }

    #[test]
    fn open_existing_opens_a_store_and_never_creates_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.redb");
        assert!(
            RedbStore::open_existing(&path, DEFAULT_WAIT)
                .unwrap()
                .is_none()
        );
        assert!(!path.exists(), "no file was created");
        let made = RedbStore::open(&path, DEFAULT_WAIT).unwrap();
        block_on(made.insert(&key("aaaa", "a"))).unwrap();
        let existing = RedbStore::open_existing(&path, DEFAULT_WAIT)
            .unwrap()
            .unwrap();
        block_on(existing.revoke("aaaa", SystemTime::now())).unwrap();
        assert!(
            block_on(made.get("aaaa"))
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            RedbStore::open_existing(&path, DEFAULT_WAIT),
            Err(StoreError::TooOpen { .. })
        ));
    }

    // Synchronous, as the CLI and the gateway's start-up use the store.
    #[test]
    fn a_reader_sees_commits_while_a_writer_has_the_file_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.redb");
        let reader = RedbStore::reader(&path);
        assert_eq!(
            block_on(reader.version()).unwrap(),
            StoreVersion(VersionInner::Missing)
        );
        assert!(
            block_on(reader.list()).unwrap().is_empty(),
            "no file reads as no keys"
        );

        let writer = RedbStore::open(&path, DEFAULT_WAIT).unwrap();
        assert!(
            block_on(reader.list()).unwrap().is_empty(),
            "no table reads as no keys"
        );
        let before = block_on(reader.version()).unwrap();
        block_on(writer.insert(&key("aaaa", "a"))).unwrap();
        assert_ne!(block_on(reader.version()).unwrap(), before);
        assert_eq!(
            block_on(reader.get("aaaa")).unwrap().map(|k| k.name),
            Some("a".into())
        );

        // A second writer (another `idgate keys` run) shares the file too.
        let second = RedbStore::open(&path, Duration::ZERO).unwrap();
        block_on(second.revoke("aaaa", SystemTime::now())).unwrap();
        assert!(
            block_on(reader.get("aaaa"))
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        );
        assert!(
            block_on(writer.get("aaaa"))
                .unwrap()
                .unwrap()
                .revoked_at
                .is_some()
        );
        assert!(matches!(
            block_on(reader.insert(&key("bbbb", "b"))),
            Err(StoreError::ReadOnly)
        ));
    }

    #[test]
    fn an_exclusive_holder_makes_opens_wait_then_give_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.redb");
        drop(RedbStore::open(&path, DEFAULT_WAIT).unwrap());
        // Another tool opening the file in redb's default (exclusive) mode.
        let exclusive = Builder::new().open(&path).unwrap();
        let start = Instant::now();
        let err = RedbStore::open(&path, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, StoreError::Busy { .. }), "{err}");
        assert!(start.elapsed() >= Duration::from_millis(300));
        drop(exclusive);
        RedbStore::open(&path, Duration::from_millis(300)).unwrap();
    }

    #[test]
    fn refuses_a_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.redb");
        drop(RedbStore::open(&path, DEFAULT_WAIT).unwrap());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            RedbStore::open(&path, DEFAULT_WAIT),
            Err(StoreError::TooOpen { mode: 0o644, .. })
        ));
        assert!(matches!(
            block_on(RedbStore::reader(&path).list()),
            Err(StoreError::TooOpen { .. })
        ));
    }
}
