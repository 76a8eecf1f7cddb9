//! The in-memory backend: for tests and for a single process that needs nothing to survive
//! a restart. Every call completes at once (there is no I/O); atomicity comes from one lock
//! per kind of state. Memory is bounded: expired entries are swept as writes go, and a write
//! that would go past the capacity after a full sweep fails with [`StoreError::Full`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::StoreError;
use crate::api_keys::{ApiKeyStore, StoreVersion, StoredKey, VersionInner, sort_keys};
use crate::counters::{Counters, GcraDecision, GcraLimit, GcraTake, WindowCount};
use crate::nonces::{Nonces, OwnerRecord, Ownership};
use crate::state::{self, ALL_KINDS, COUNTER_KINDS, Kind, ReadRows, Row, Rows};
use crate::types::{CounterKey, Nonce, ObjectId, Owner, micros};

mod queue;
use queue::QueueTables;

/// Entries (counters, nonces and ownership records together) held at most, by default.
pub const DEFAULT_STATE_CAPACITY: usize = 1_000_000;
/// Queued messages held at most, by default.
pub const DEFAULT_QUEUE_CAPACITY: usize = 100_000;

#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    state: Mutex<StateRows>,
    queues: Mutex<QueueTables>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_STATE_CAPACITY, DEFAULT_QUEUE_CAPACITY)
    }
}

#[derive(Debug, Default)]
struct Inner {
    keys: BTreeMap<String, StoredKey>,
    /// Bumped on every write.
    version: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding at most `state` counters, nonces and ownership records together, and
    /// at most `messages` queued messages.
    pub fn with_capacity(state: usize, messages: usize) -> Self {
        Self {
            inner: Mutex::default(),
            state: Mutex::new(StateRows {
                rows: HashMap::new(),
                deadlines: BTreeSet::new(),
                capacity: state,
            }),
            queues: Mutex::new(QueueTables {
                messages: BTreeMap::new(),
                seqs: HashMap::new(),
                capacity: messages,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every write below completes or leaves the map as it was, so a panic elsewhere while
        // the lock was held leaves nothing half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self) -> MutexGuard<'_, StateRows> {
        // As above: a write checks everything before it changes anything.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn queues(&self) -> MutexGuard<'_, QueueTables> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryStore {
    fn insert_key(&self, key: &StoredKey) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.keys.contains_key(&key.id) {
            return Err(StoreError::Exists(key.id.clone()));
        }
        inner.keys.insert(key.id.clone(), key.clone());
        inner.version += 1;
        Ok(())
    }

    fn list_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let mut keys: Vec<StoredKey> = self.lock().keys.values().cloned().collect();
        sort_keys(&mut keys);
        Ok(keys)
    }

    fn revoke_key(&self, id: &str, at: SystemTime) -> Result<StoredKey, StoreError> {
        let mut inner = self.lock();
        let key = inner
            .keys
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        key.apply_revoke(at);
        let out = key.clone();
        inner.version += 1;
        Ok(out)
    }

    fn rotate_key(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> Result<StoredKey, StoreError> {
        let mut inner = self.lock();
        let mut old = inner
            .keys
            .get(old_id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(old_id.to_owned()))?;
        if inner.keys.contains_key(&new.id) {
            return Err(StoreError::Exists(new.id.clone()));
        }
        old.apply_rotation(&new.id, old_valid_until)?;
        inner.keys.insert(old.id.clone(), old.clone());
        inner.keys.insert(new.id.clone(), new.clone());
        inner.version += 1;
        Ok(old)
    }
}

// The memory backend never waits, so each future is ready at its first poll.
impl ApiKeyStore for MemoryStore {
    fn insert(&self, key: &StoredKey) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(self.insert_key(key))
    }

    fn get(&self, id: &str) -> impl Future<Output = Result<Option<StoredKey>, StoreError>> + Send {
        std::future::ready(Ok(self.lock().keys.get(id).cloned()))
    }

    fn list(&self) -> impl Future<Output = Result<Vec<StoredKey>, StoreError>> + Send {
        std::future::ready(self.list_keys())
    }

    fn revoke(
        &self,
        id: &str,
        at: SystemTime,
    ) -> impl Future<Output = Result<StoredKey, StoreError>> + Send {
        std::future::ready(self.revoke_key(id, at))
    }

    fn rotate(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> impl Future<Output = Result<StoredKey, StoreError>> + Send {
        std::future::ready(self.rotate_key(old_id, new, old_valid_until))
    }

    fn version(&self) -> impl Future<Output = Result<StoreVersion, StoreError>> + Send {
        std::future::ready(Ok(StoreVersion(VersionInner::Counter(self.lock().version))))
    }
}

/// Counters, nonces and ownership records, with an index by deadline for sweeping.
#[derive(Debug)]
struct StateRows {
    rows: HashMap<(Kind, String), Row>,
    deadlines: BTreeSet<(u64, Kind, String)>,
    capacity: usize,
}

impl ReadRows for StateRows {
    fn get(&self, kind: Kind, key: &str) -> Result<Option<Row>, StoreError> {
        Ok(self.rows.get(&(kind, key.to_owned())).cloned())
    }
}

impl Rows for StateRows {
    fn put(&mut self, kind: Kind, key: &str, row: Row) -> Result<(), StoreError> {
        let id = (kind, key.to_owned());
        if !self.rows.contains_key(&id) && self.rows.len() >= self.capacity {
            // `MemoryStore::with_state` has already swept all it could.
            return Err(StoreError::Full {
                what: "state entries",
                capacity: self.capacity,
            });
        }
        if let Some(old) = self.rows.insert(id.clone(), row.clone()) {
            self.deadlines.remove(&(old.deadline, kind, id.1.clone()));
        }
        self.deadlines.insert((row.deadline, kind, id.1));
        Ok(())
    }

    fn remove(&mut self, kind: Kind, key: &str) -> Result<bool, StoreError> {
        match self.rows.remove(&(kind, key.to_owned())) {
            Some(old) => {
                self.deadlines.remove(&(old.deadline, kind, key.to_owned()));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn sweep(&mut self, kinds: &[Kind], now: u64, limit: usize) -> Result<u64, StoreError> {
        let due: Vec<(u64, Kind, String)> = self
            .deadlines
            .range(..(now.saturating_add(1), Kind::Window, String::new()))
            .filter(|(_, kind, _)| kinds.contains(kind))
            .take(limit)
            .cloned()
            .collect();
        for entry in &due {
            self.deadlines.remove(entry);
            self.rows.remove(&(entry.1, entry.2.clone()));
        }
        Ok(due.len() as u64)
    }
}

impl MemoryStore {
    /// Runs `f` on the rows under the lock, after a full sweep when they are at capacity.
    fn with_state<T>(
        &self,
        now: SystemTime,
        f: impl FnOnce(&mut StateRows) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut rows = self.state();
        if rows.rows.len() >= rows.capacity {
            rows.sweep(ALL_KINDS, micros(now), usize::MAX)?;
        }
        f(&mut rows)
    }
}

impl Counters for MemoryStore {
    fn increment(
        &self,
        key: &CounterKey,
        by: u64,
        window: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<WindowCount, StoreError>> + Send {
        std::future::ready(self.with_state(now, |rows| {
            state::increment(rows, key.as_str(), by, window, now)
        }))
    }

    fn get(
        &self,
        key: &CounterKey,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<WindowCount>, StoreError>> + Send {
        std::future::ready(state::get_window(&*self.state(), key.as_str(), now))
    }

    fn reset(&self, key: &CounterKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(self.state().remove(Kind::Window, key.as_str()))
    }

    fn gcra(
        &self,
        key: &CounterKey,
        limit: &GcraLimit,
        take: GcraTake,
        now: SystemTime,
    ) -> impl Future<Output = Result<GcraDecision, StoreError>> + Send {
        std::future::ready(self.with_state(now, |rows| {
            state::check_gcra(rows, key.as_str(), limit, take, now)
        }))
    }

    fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(self.state().sweep(COUNTER_KINDS, micros(now), usize::MAX))
    }
}

impl Nonces for MemoryStore {
    fn insert_if_absent(
        &self,
        nonce: &Nonce,
        window: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(self.with_state(now, |rows| {
            state::insert_nonce(rows, nonce.as_str(), window, now)
        }))
    }

    fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(self.state().sweep(&[Kind::Nonce], micros(now), usize::MAX))
    }
}

impl Ownership for MemoryStore {
    fn put(
        &self,
        object: &ObjectId,
        owner: &Owner,
        retention: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<OwnerRecord, StoreError>> + Send {
        std::future::ready(self.with_state(now, |rows| {
            state::put_owner(rows, object.as_str(), owner, retention, now)
        }))
    }

    fn get(
        &self,
        object: &ObjectId,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<OwnerRecord>, StoreError>> + Send {
        std::future::ready(state::get_owner(&*self.state(), object.as_str(), now))
    }

    fn remove(&self, object: &ObjectId) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(self.state().remove(Kind::Owner, object.as_str()))
    }

    fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send {
        std::future::ready(self.state().sweep(&[Kind::Owner], micros(now), usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::{NewMessage, Queue, QueueName, conformance};

    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[tokio::test]
    async fn meets_the_api_key_contract() {
        conformance::api_keys(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn meets_the_counter_contract() {
        conformance::counters(&MemoryStore::new(), start()).await;
    }

    #[tokio::test]
    async fn meets_the_gcra_many_contract() {
        conformance::gcra_many(&MemoryStore::new(), start()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn counts_exactly_under_concurrent_increments() {
        conformance::counters_concurrently(Arc::new(MemoryStore::new()), start()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn meets_the_nonce_contract() {
        conformance::nonces(Arc::new(MemoryStore::new()), start()).await;
    }

    #[tokio::test]
    async fn meets_the_ownership_contract() {
        conformance::ownership(&MemoryStore::new(), start()).await;
    }

    #[tokio::test]
    async fn stays_within_its_capacity_and_makes_room_from_expired_entries() {
        let store = MemoryStore::with_capacity(3, 2);
        let (t0, window) = (start(), Duration::from_secs(10));
        for name in ["a", "b", "c"] {
            let n = Nonce::new(name).unwrap();
            assert!(store.insert_if_absent(&n, window, t0).await.unwrap());
        }
        let d = Nonce::new("d").unwrap();
        assert!(matches!(
            store.insert_if_absent(&d, window, t0).await,
            Err(StoreError::Full { capacity: 3, .. })
        ));
        // Once the others expire, there is room again.
        assert!(
            store
                .insert_if_absent(&d, window, t0 + window)
                .await
                .unwrap()
        );
        assert_eq!(
            store.state().rows.len(),
            1,
            "the full sweep removed all three"
        );

        let q = QueueName::new("q").unwrap();
        let m = || NewMessage {
            payload: b"p".to_vec(),
            order_key: None,
            max_attempts: 1,
            not_before: None,
        };
        store.push(&q, m(), t0).await.unwrap();
        store.push(&q, m(), t0).await.unwrap();
        assert!(matches!(
            store.push(&q, m(), t0).await,
            Err(StoreError::Full { capacity: 2, .. })
        ));
    }

    #[tokio::test]
    async fn writes_sweep_expired_entries_as_they_go() {
        let store = MemoryStore::new();
        let t0 = start();
        for i in 0..100 {
            let n = Nonce::new(format!("n{i}")).unwrap();
            store
                .insert_if_absent(&n, Duration::from_secs(1), t0)
                .await
                .unwrap();
        }
        let later = t0 + Duration::from_secs(2);
        let k = CounterKey::new("k").unwrap();
        store
            .increment(&k, 1, Duration::from_secs(60), later)
            .await
            .unwrap();
        assert_eq!(
            store.state().rows.len(),
            100 - state::SWEEP_PER_WRITE + 1,
            "one write removed a batch of expired nonces"
        );
        assert_eq!(
            Nonces::sweep(&store, later).await.unwrap(),
            (100 - state::SWEEP_PER_WRITE) as u64
        );
        assert_eq!(
            store.state().deadlines.len(),
            1,
            "the index follows the rows"
        );
    }
}
