//! State that outlives a request, behind async traits with one implementation per backend.
//!
//! | Trait | For | Atomic promise |
//! |---|---|---|
//! | [`ApiKeyStore`] | caller API keys | each write; a rotation changes both keys at once |
//! | [`Counters`] | rate limits (GCRA), failed-login windows and lockouts | each increment or check |
//! | [`Nonces`] | webhook replay protection | one `insert_if_absent` winner per window |
//! | [`Ownership`] | which caller created which provider object | first owner wins while live |
//! | [`Queue`] | the webhook outbox | one lease holder per message; ack/nack with a stale lease refused |
//!
//! Backends: [`MemoryStore`] (tests, a single process; bounded, lost on exit),
//! [`RedbStore`] (an embedded file, durable, shared by the gateway and the `idgate` CLI),
//! and, with the feature `redis`, `RedisStore` (a Redis server or Redis Cluster shared by
//! every replica; see `docs/state.md`). The `conformance` suites (feature `conformance`)
//! are what every backend passes; with both features, `redis_testing` starts real Redis
//! servers and clusters for tests. [`StateStore`] is whichever of them the configuration
//! picks, with every trait statically dispatched.
//!
//! Time is passed in (`now`) rather than read, so that expiry is testable without sleeping
//! and so that every replica's decision uses the same arithmetic. Expired entries are
//! ignored on read, swept a few at a time by writes, and wholly by each trait's `sweep`.
//!
//! redb calls block on file I/O: inside a tokio runtime they run on its blocking pool, and
//! its state writes on one writer thread per file with a bounded queue; a synchronous
//! caller drives a store future with [`block_on`].
//!
//! API keys: only a keyed hash of each key is kept; the key itself is shown once, when it is
//! created, and never stored.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod any;
mod api_keys;
mod blocking;
mod counters;
mod gcra_leases;
mod key_hash;
mod local_limiter;
mod memory;
mod nonces;
mod queue;
mod redb_store;
#[cfg(feature = "redis")]
mod redis_store;
mod state;
mod types;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use std::path::PathBuf;

pub use any::StateStore;
pub use api_keys::{AnyApiKeyStore, ApiKeyStore, KeyState, StoreVersion, StoredKey};
pub use blocking::block_on;
pub use counters::{Counters, GcraCheck, GcraDecision, GcraLimit, GcraTake, WindowCount};
pub use gcra_leases::{
    ASK_TIMEOUT, DEFAULT_LEASE_CAPACITY, GcraLeases, LEASE_LIFE, LEASE_SPAN, LeaseKey, Leased,
    lease_size,
};
pub use local_limiter::{DEFAULT_LIMITER_CAPACITY, LocalLimiter};
pub use memory::{DEFAULT_QUEUE_CAPACITY, DEFAULT_STATE_CAPACITY, MemoryStore};
pub use nonces::{Nonces, OwnerRecord, Ownership};
pub use queue::{
    Backoff, CLAIM_BYTES, Claimed, Lease, MessageId, MessageInfo, MessageState, NackOutcome,
    NewMessage, Queue, QueueStats,
};
/// A redb file's write lock held as another process would hold it, for tests.
#[cfg(any(test, feature = "conformance"))]
pub use redb_store::testing as redb_testing;
pub use redb_store::{DEFAULT_WAIT, RedbStore};
/// Real `redis-server` processes for tests (a server, a six-node Cluster).
#[cfg(all(feature = "redis", feature = "conformance"))]
pub use redis_store::testing as redis_testing;
#[cfg(feature = "redis")]
pub use redis_store::{DEFAULT_PREFIX, DEFAULT_TIMEOUT, RedisMode, RedisOptions, RedisStore};
pub use types::{CounterKey, MAX_KEY_LEN, Nonce, ObjectId, Owner, QueueName};

/// The readers of what the backends hold, for the fuzz targets (`fuzz/fuzz_targets/`); not
/// part of the crate's interface. Each function is the production reader, with no other
/// logic.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{StoreError, StoredKey};

    /// An API key record as a backend reads it back, stored under `id`.
    pub fn api_key_record(id: &str, bytes: &[u8]) -> Result<StoredKey, StoreError> {
        StoredKey::decode(id, bytes)
    }

    /// An API key record's bytes, as a backend writes them.
    pub fn api_key_bytes(key: &StoredKey) -> Vec<u8> {
        key.encode()
    }

    #[cfg(feature = "redis")]
    pub use crate::redis_store::fuzzing::*;
}

/// Why a store operation failed. Never carries a key, a hash or a payload.
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
    /// A row that cannot be read. `key` names it by what the store gave it (a queue and a
    /// sequence number), or by a keyed hash of an id that came from a request (an object's).
    #[error("{what} {key} cannot be read: {reason}")]
    CorruptRow {
        what: &'static str,
        key: String,
        reason: String,
    },
    #[error("not a valid {what}: {reason}")]
    InvalidKey {
        what: &'static str,
        reason: &'static str,
    },
    #[error("not a valid limit: {reason}")]
    InvalidLimit { reason: &'static str },
    #[error("the store holds its maximum of {capacity} {what}")]
    Full { what: &'static str, capacity: usize },
    #[error("no queued message {0}")]
    NoMessage(MessageId),
    #[error("the lease on message {0} ran out and was taken over, or the message is gone")]
    LeaseLost(MessageId),
    /// A redb file's writer has this many writes waiting already (the file is slow or held
    /// by another process): the write is refused rather than queued without end.
    #[error("{capacity} state writes are already waiting for the file; this one was refused")]
    Overloaded { capacity: usize },
    #[error("the store's worker thread stopped: {0}")]
    Interrupted(String),
    /// The shared state backend did not answer in time or at all (a Redis outage); the
    /// reason names no key and no secret.
    #[error("the state store is unavailable: {reason}")]
    Unavailable { reason: String },
    /// Options for the Redis backend that can never work.
    #[error("the Redis options are invalid: {reason}")]
    RedisConfig { reason: String },
    #[error("{what} is not built into this binary")]
    Unsupported { what: &'static str },
}
