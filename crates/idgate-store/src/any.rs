//! [`StateStore`]: the backend the configuration picks, behind every trait at once.
//!
//! The gateway learns its backend at start-up, but the counters, nonces and ownership
//! records are used on the request path, where a boxed future per call is a cost worth
//! avoiding. So the choice is an enum and each call a `match` that forwards to the
//! backend: static dispatch, no allocation. Adding a backend is a variant and one arm per
//! method (the `forward!` macro writes them).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::StoreError;
use crate::api_keys::{ApiKeyStore, StoreVersion, StoredKey};
use crate::counters::{Counters, GcraCheck, GcraDecision, GcraLimit, GcraTake, WindowCount};
use crate::memory::MemoryStore;
use crate::nonces::{Nonces, OwnerRecord, Ownership};
use crate::queue::{
    Claimed, Lease, MessageId, MessageInfo, NackOutcome, NewMessage, Queue, QueueStats,
};
use crate::redb_store::RedbStore;
#[cfg(feature = "redis")]
use crate::redis_store::RedisStore;
use crate::types::{CounterKey, Nonce, ObjectId, Owner, QueueName};

/// One of the backends, chosen at run time. Cheap to clone: clones share the backend.
#[derive(Debug, Clone)]
pub enum StateStore {
    /// In this process only: lost on exit, not shared between replicas.
    Memory(Arc<MemoryStore>),
    /// An embedded file: durable, shared by the processes of one machine.
    Redb(Arc<RedbStore>),
    /// A Redis server or Cluster: shared by every replica. Cheap to clone by itself.
    #[cfg(feature = "redis")]
    Redis(RedisStore),
}

impl StateStore {
    /// Which backend this is, as the configuration and the metrics name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redb(_) => "redb",
            #[cfg(feature = "redis")]
            Self::Redis(_) => "redis",
        }
    }

    /// The same backend with calls bounded by at least `timeout` (Redis; the others have no
    /// per-call bound): for callers off the request path, which may wait longer than a
    /// request should.
    #[cfg_attr(not(feature = "redis"), allow(unused_variables))]
    pub fn patient(&self, timeout: Duration) -> Self {
        match self {
            #[cfg(feature = "redis")]
            Self::Redis(r) => Self::Redis(r.with_timeout(timeout)),
            other => other.clone(),
        }
    }

    /// Whether every replica sharing the configuration sees the same state (a process-local
    /// backend does not: each replica counts on its own).
    pub fn is_shared(&self) -> bool {
        match self {
            Self::Memory(_) | Self::Redb(_) => false,
            #[cfg(feature = "redis")]
            Self::Redis(_) => true,
        }
    }

    /// Whether what is written outlives the process (the in-memory backend loses it at
    /// exit): what the webhook outbox and its replay keys need.
    pub fn is_durable(&self) -> bool {
        match self {
            Self::Memory(_) => false,
            Self::Redb(_) => true,
            #[cfg(feature = "redis")]
            Self::Redis(_) => true,
        }
    }
}

impl From<MemoryStore> for StateStore {
    fn from(store: MemoryStore) -> Self {
        Self::Memory(Arc::new(store))
    }
}

impl From<RedbStore> for StateStore {
    fn from(store: RedbStore) -> Self {
        Self::Redb(Arc::new(store))
    }
}

#[cfg(feature = "redis")]
impl From<RedisStore> for StateStore {
    fn from(store: RedisStore) -> Self {
        Self::Redis(store)
    }
}

/// Forwards a trait method to whichever backend `self` holds.
macro_rules! forward {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            StateStore::Memory($s) => $call.await,
            StateStore::Redb($s) => $call.await,
            // One more reference, so that `&**s` names the backend as for the `Arc`s.
            #[cfg(feature = "redis")]
            StateStore::Redis(store) => {
                let $s = &store;
                $call.await
            }
        }
    };
}

impl ApiKeyStore for StateStore {
    async fn insert(&self, key: &StoredKey) -> Result<(), StoreError> {
        forward!(self, s => s.insert(key))
    }

    async fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        forward!(self, s => ApiKeyStore::get(&**s, id))
    }

    async fn list(&self) -> Result<Vec<StoredKey>, StoreError> {
        forward!(self, s => s.list())
    }

    async fn revoke(&self, id: &str, at: SystemTime) -> Result<StoredKey, StoreError> {
        forward!(self, s => s.revoke(id, at))
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> Result<StoredKey, StoreError> {
        forward!(self, s => s.rotate(old_id, new, old_valid_until))
    }

    async fn version(&self) -> Result<StoreVersion, StoreError> {
        forward!(self, s => s.version())
    }
}

impl Counters for StateStore {
    async fn increment(
        &self,
        key: &CounterKey,
        by: u64,
        window: Duration,
        now: SystemTime,
    ) -> Result<WindowCount, StoreError> {
        forward!(self, s => s.increment(key, by, window, now))
    }

    async fn get(
        &self,
        key: &CounterKey,
        now: SystemTime,
    ) -> Result<Option<WindowCount>, StoreError> {
        forward!(self, s => Counters::get(&**s, key, now))
    }

    async fn reset(&self, key: &CounterKey) -> Result<bool, StoreError> {
        forward!(self, s => s.reset(key))
    }

    async fn gcra(
        &self,
        key: &CounterKey,
        limit: &GcraLimit,
        take: GcraTake,
        now: SystemTime,
    ) -> Result<GcraDecision, StoreError> {
        forward!(self, s => s.gcra(key, limit, take, now))
    }

    async fn gcra_many(
        &self,
        checks: &[GcraCheck<'_>],
        now: SystemTime,
    ) -> Vec<Result<GcraDecision, StoreError>> {
        forward!(self, s => s.gcra_many(checks, now))
    }

    async fn sweep(&self, now: SystemTime) -> Result<u64, StoreError> {
        forward!(self, s => Counters::sweep(&**s, now))
    }
}

impl Nonces for StateStore {
    async fn insert_if_absent(
        &self,
        nonce: &Nonce,
        window: Duration,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        forward!(self, s => s.insert_if_absent(nonce, window, now))
    }

    async fn sweep(&self, now: SystemTime) -> Result<u64, StoreError> {
        forward!(self, s => Nonces::sweep(&**s, now))
    }
}

impl Ownership for StateStore {
    async fn put(
        &self,
        object: &ObjectId,
        owner: &Owner,
        retention: Duration,
        now: SystemTime,
    ) -> Result<OwnerRecord, StoreError> {
        forward!(self, s => s.put(object, owner, retention, now))
    }

    async fn get(
        &self,
        object: &ObjectId,
        now: SystemTime,
    ) -> Result<Option<OwnerRecord>, StoreError> {
        forward!(self, s => Ownership::get(&**s, object, now))
    }

    async fn get_for(
        &self,
        object: &ObjectId,
        asker: &Owner,
        now: SystemTime,
    ) -> Result<Option<OwnerRecord>, StoreError> {
        forward!(self, s => s.get_for(object, asker, now))
    }

    async fn remove(&self, object: &ObjectId) -> Result<bool, StoreError> {
        forward!(self, s => s.remove(object))
    }

    async fn sweep(&self, now: SystemTime) -> Result<u64, StoreError> {
        forward!(self, s => Ownership::sweep(&**s, now))
    }
}

impl Queue for StateStore {
    async fn push(
        &self,
        queue: &QueueName,
        message: NewMessage,
        now: SystemTime,
    ) -> Result<MessageId, StoreError> {
        forward!(self, s => s.push(queue, message, now))
    }

    async fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<Claimed>, StoreError> {
        forward!(self, s => s.claim(queue, max, lease, now))
    }

    async fn ack(&self, queue: &QueueName, lease: &Lease) -> Result<(), StoreError> {
        forward!(self, s => s.ack(queue, lease))
    }

    async fn nack(
        &self,
        queue: &QueueName,
        lease: &Lease,
        retry_at: SystemTime,
        reason: &str,
    ) -> Result<NackOutcome, StoreError> {
        forward!(self, s => s.nack(queue, lease, retry_at, reason))
    }

    async fn info(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<Option<MessageInfo>, StoreError> {
        forward!(self, s => s.info(queue, id, now))
    }

    async fn stats(&self, queue: &QueueName, now: SystemTime) -> Result<QueueStats, StoreError> {
        forward!(self, s => s.stats(queue, now))
    }

    async fn dead_letters(
        &self,
        queue: &QueueName,
        now: SystemTime,
    ) -> Result<Vec<MessageInfo>, StoreError> {
        forward!(self, s => s.dead_letters(queue, now))
    }

    async fn revive(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        forward!(self, s => s.revive(queue, id, now))
    }

    async fn bury(&self, queue: &QueueName, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        forward!(self, s => s.bury(queue, lease, reason))
    }

    async fn release(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        forward!(self, s => s.release(queue, id, now))
    }

    async fn peek(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<Option<(MessageInfo, Vec<u8>)>, StoreError> {
        forward!(self, s => s.peek(queue, id, now))
    }

    async fn delete_message(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        forward!(self, s => s.delete_message(queue, id, now))
    }

    async fn delete_dead(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        forward!(self, s => s.delete_dead(queue, id, now))
    }

    async fn purge_due(
        &self,
        queue: &QueueName,
        max: usize,
        now: SystemTime,
    ) -> Result<usize, StoreError> {
        forward!(self, s => s.purge_due(queue, max, now))
    }

    async fn messages(
        &self,
        queue: &QueueName,
        after: Option<&MessageId>,
        limit: usize,
        now: SystemTime,
    ) -> Result<Vec<MessageInfo>, StoreError> {
        forward!(self, s => s.messages(queue, after, limit, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block_on;

    #[test]
    fn each_variant_forwards_to_its_backend() {
        let dir = tempfile::tempdir().unwrap();
        let stores = [
            StateStore::from(MemoryStore::new()),
            StateStore::from(
                RedbStore::open(dir.path().join("s.redb"), crate::DEFAULT_WAIT).unwrap(),
            ),
        ];
        for store in stores {
            let key = CounterKey::new("k").unwrap();
            let now = SystemTime::now();
            let w = block_on(store.increment(&key, 2, Duration::from_secs(60), now)).unwrap();
            assert_eq!(w.count, 2, "{}", store.kind());
            let w = block_on(Counters::get(&store, &key, now)).unwrap().unwrap();
            assert_eq!(w.count, 2, "{}", store.kind());
            assert!(!store.is_shared());
        }
    }

    #[test]
    fn only_the_in_memory_backend_is_not_durable() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!StateStore::from(MemoryStore::new()).is_durable());
        let redb = RedbStore::open(dir.path().join("s.redb"), crate::DEFAULT_WAIT).unwrap();
        assert!(StateStore::from(redb).is_durable());
    }
}
