//! A redb file held by another writer, for tests: what the gateway's writes meet when the
//! `idgate` CLI, or a slow disk, keeps the file's write lock.
//!
//! Exposed as `idgate_store::redb_testing` with the feature `conformance`, so that other
//! crates' end-to-end tests can hold a running gateway's state file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::RedbStore;

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
            let db = holder.inner.db.as_ref().unwrap();
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
