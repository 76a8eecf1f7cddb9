//! State that outlives a request, behind traits with one implementation per backend:
//! in memory (tests, a single process) and embedded in a file with redb (one machine, shared
//! by the gateway and the `idgate` CLI). A Redis backend for several replicas comes later,
//! behind the same traits.
//!
//! Every call is synchronous and may block on file I/O: call from a blocking thread
//! (`tokio::task::spawn_blocking`) when inside an async runtime.
//!
//! What is stored now: caller API keys ([`ApiKeyStore`]). Only a keyed hash of each key is
//! kept; the key itself is shown once, when it is created, and never stored.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod api_keys;
mod memory;
mod redb_store;

use std::path::PathBuf;

pub use api_keys::{ApiKeyStore, KeyState, StoreVersion, StoredKey};
pub use memory::MemoryStore;
pub use redb_store::{DEFAULT_WAIT, RedbStore};

/// Why a store operation failed. Never carries a key or a hash.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no API key with id {0}")]
    NotFound(String),
    #[error("an API key with id {0} already exists")]
    Exists(String),
    #[error("API key {0} is revoked")]
    Revoked(String),
    #[error("API key {id} was already rotated (its replacement is {by}); rotate {by} instead")]
    AlreadyRotated { id: String, by: String },
    #[error("this store was opened read-only")]
    ReadOnly,
    #[error(
        "{path}: the database is held by another process that does not share it (still busy after {waited_ms} ms)"
    )]
    Busy { path: PathBuf, waited_ms: u128 },
    #[error("{path}: mode {mode:o} lets group or others read it; restrict it (chmod 600)")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Database { path: PathBuf, reason: String },
    #[error("API key record {id} cannot be read: {reason}")]
    Corrupt { id: String, reason: String },
}
