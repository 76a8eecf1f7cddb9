//! A redb file held by another writer, for tests: what the gateway's writes meet when the
//! `idgate` CLI, or a slow disk, keeps the file's write lock. A store on a disk that
//! fills up on demand, and one that counts how often its file is opened.
//!
//! Exposed as `idgate_store::redb_testing` with the feature `conformance`, so that other
//! crates' end-to-end tests can hold a running gateway's state file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use super::{RedbStore, builder, check_mode, db_err};

/// Holds the write lock of a redb file (an open write transaction, from a handle of its
/// own, as another process would) until dropped.
#[derive(Debug)]
pub struct HeldWrites {
    release: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl HeldWrites {
    /// Opens `path` and begins a write transaction on it; returns once it is held.
    pub fn on(path: &Path) -> Self {
        let holder = RedbStore::open(path, crate::DEFAULT_WAIT).unwrap();
        let (held_tx, held) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let db = holder.inner.handle().unwrap().unwrap();
            let txn = db.begin_write().unwrap();
            held_tx.send(()).unwrap();
            let _ = released.recv();
            drop(txn);
        });
        held.recv().unwrap();
        Self {
            release: Some(release),
            thread: Some(thread),
        }
    }
}

impl Drop for HeldWrites {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Opens `path` as [`RedbStore::open`] does, on a disk that is full while `full` is set:
/// each write, resize and sync of the file then fails with `ENOSPC`, as redb meets a full
/// disk. Reads still work. The file's later opens (after a failure) go through it too.
pub fn open_on_a_disk_filling_up(path: &Path, full: Arc<AtomicBool>) -> RedbStore {
    let make = move |path: &Path, file: File| {
        check_mode(path, &file)?;
        let file = FileBackend::new(file).map_err(|e| db_err(path, e))?;
        builder()
            .create_with_backend(FillingDisk {
                file,
                full: full.clone(),
            })
            .map_err(|e| db_err(path, e))
    };
    RedbStore::open_with(path, crate::DEFAULT_WAIT, Arc::new(make)).unwrap()
}

/// Opens `path` as [`RedbStore::open`] does, counting in `opens` each open of the file:
/// the first, and each after a failure closed it.
pub fn open_counting_opens(path: &Path, opens: Arc<AtomicUsize>) -> RedbStore {
    let make = move |path: &Path, file: File| {
        opens.fetch_add(1, Ordering::SeqCst);
        RedbStore::database(path, file)
    };
    RedbStore::open_with(path, crate::DEFAULT_WAIT, Arc::new(make)).unwrap()
}

#[derive(Debug)]
struct FillingDisk {
    file: FileBackend,
    full: Arc<AtomicBool>,
}

impl FillingDisk {
    fn room(&self) -> std::io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))
        } else {
            Ok(())
        }
    }
}

impl StorageBackend for FillingDisk {
    fn len(&self) -> std::io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.room()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.room()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.room()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> std::io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
