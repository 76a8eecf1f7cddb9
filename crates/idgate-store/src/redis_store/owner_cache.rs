//! Ownership records this process has read or written in Redis, kept for a few seconds so
//! that an object its caller reads again and again (a session polled for its decision)
//! costs no round trip.
//!
//! Why a cached record is as good as Redis's: a live record never changes owner (the first
//! owner keeps it; `put` by another returns it unchanged), so a record read here is the one
//! Redis holds for as long as it lives. Only three things end it, and each is covered:
//! - its retention passes: a cached record is never used past its own `expires_at` (the
//!   caller's `now` decides, as in Redis), so a renewal elsewhere is only seen later, never
//!   an expiry missed;
//! - a `DELETE` through this process: `remove` drops it here too;
//! - a `DELETE` through another replica: the object is gone at the provider, so the owner
//!   this process still names can only be answered the provider's own `404` — and nobody
//!   else can own that id again before [`TTL`] passes, since providers do not reuse ids.
//!
//! What is not in Redis is never cached: another replica may record it a moment later.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::{ObjectId, OwnerRecord};

/// How long a record read from Redis is used without asking again.
pub(crate) const TTL: Duration = Duration::from_secs(10);
const SHARDS: usize = 16;
/// Records per shard; a full shard forgets its stale records, and then all of them, so the
/// cache stays within about 16,384 records (a few megabytes) whatever callers ask for.
const SHARD_CAPACITY: usize = 1024;

pub(crate) struct OwnerCache {
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<ObjectId, Cached>>]>,
}

struct Cached {
    record: OwnerRecord,
    fetched: Instant,
}

impl OwnerCache {
    pub(crate) fn new() -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, object: &ObjectId) -> std::sync::MutexGuard<'_, HashMap<ObjectId, Cached>> {
        // usize fits u64 on every supported target; the modulo keeps the index in range.
        let i = (self.hasher.hash_one(object) % SHARDS as u64) as usize;
        // A panic while holding the lock cannot leave a record half-written: keep going.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The record for `object` if one is cached, fresh, and still live at `now`.
    pub(crate) fn get(&self, object: &ObjectId, now: SystemTime) -> Option<OwnerRecord> {
        let shard = self.shard(object);
        let cached = shard.get(object)?;
        (cached.fetched.elapsed() < TTL && cached.record.expires_at > now)
            .then(|| cached.record.clone())
    }

    /// Keeps the record Redis holds for `object`.
    pub(crate) fn put(&self, object: &ObjectId, record: &OwnerRecord) {
        let mut shard = self.shard(object);
        if shard.len() >= SHARD_CAPACITY && !shard.contains_key(object) {
            shard.retain(|_, c| c.fetched.elapsed() < TTL);
            if shard.len() >= SHARD_CAPACITY {
                shard.clear();
            }
        }
        shard.insert(
            object.clone(),
            Cached {
                record: record.clone(),
                fetched: Instant::now(),
            },
        );
    }

    pub(crate) fn forget(&self, object: &ObjectId) {
        self.shard(object).remove(object);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.len()))
            .sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::Owner;

    fn record(owner: &str, expires_at: SystemTime) -> OwnerRecord {
        OwnerRecord {
            owner: Owner::new(owner).unwrap(),
            expires_at,
        }
    }

    #[test]
    fn a_cached_record_is_never_used_past_its_retention() {
        let cache = OwnerCache::new();
        let id = ObjectId::new("s-1").unwrap();
        let now = SystemTime::now();
        let rec = record("apikey:a", now + Duration::from_secs(60));
        cache.put(&id, &rec);
        assert_eq!(cache.get(&id, now), Some(rec.clone()));
        assert_eq!(cache.get(&id, rec.expires_at), None);
        cache.forget(&id);
        assert_eq!(cache.get(&id, now), None);
    }

    #[test]
    fn the_cache_stays_bounded_whatever_is_asked() {
        let cache = OwnerCache::new();
        let far = SystemTime::now() + Duration::from_secs(3600);
        for i in 0..(SHARDS * SHARD_CAPACITY * 3) {
            let id = ObjectId::new(format!("s-{i}")).unwrap();
            cache.put(&id, &record("apikey:a", far));
        }
        assert!(cache.len() <= SHARDS * SHARD_CAPACITY);
    }
}
