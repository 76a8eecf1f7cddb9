//! [`LocalLimiter`]: GCRA state for the rate limits of one process, in memory, with bounded
//! memory and no global lock.
//!
//! When the state backend is not shared between replicas (memory, redb), rate limits are
//! decided here rather than in the backend: a redb write per request would put a disk
//! transaction on every request's path, and the in-memory store's one lock would serialize
//! every worker. Here the state is split into shards by the key's hash, each behind a lock
//! of its own, so workers only meet when their keys fall in the same shard.
//!
//! A key is never stored: only a 64-bit hash of it, keyed with a random per-process key
//! (SipHash-1-3 through [`RandomState`]), so neither a secret nor a caller-chosen string sits
//! in memory, a key costs the same whatever its length, and nobody outside the process can
//! aim two keys at one hash. With a million live keys the chance that two share a hash is
//! about 3·10⁻⁸.
//!
//! Memory: an entry is the hash and the theoretical arrival time (TAT), 16 bytes plus the
//! table's overhead (measured in the tests: see `docs/configuration.md`). An entry whose TAT
//! has passed holds nothing a fresh key would not (GCRA starts an unknown key at `now`), so
//! it is dead and evicted: by [`LocalLimiter::sweep`], which the gateway runs periodically,
//! and by a shard that is full when a new key arrives. If a shard is still full of live
//! keys, the check fails with [`StoreError::Full`] and the caller's failure policy decides.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use crate::StoreError;
use crate::counters::{GcraDecision, GcraLimit, GcraTake, gcra};
use crate::types::micros;

/// How many shards: enough that the workers of a large machine rarely meet on one lock.
const SHARDS: usize = 64;

/// How often a full shard may scan itself for dead entries: a flood of new keys into a
/// shard full of live ones costs one scan per interval, not one per request.
const FULL_SWEEP_EVERY: Duration = Duration::from_millis(100);

/// The default capacity: a million live keys (about 32 MiB at most, see the module docs).
pub const DEFAULT_LIMITER_CAPACITY: usize = 1_000_000;

/// The entries are keyed by a hash already: hashing it again would be wasted work (the
/// lease table uses it too).
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else still hashes, if poorly.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Table = HashMap<u64, u64, BuildHasherDefault<PassThrough>>;

struct Shard {
    /// Key hash → TAT in microseconds since the epoch.
    entries: Table,
    /// When this shard last scanned itself because it was full (microseconds).
    last_full_sweep: u64,
}

/// Per-process GCRA state, sharded by key hash, bounded (see the module docs).
pub struct LocalLimiter {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_LIMITER_CAPACITY)
    }
}

impl LocalLimiter {
    /// A limiter holding at most about `capacity` live keys (rounded up to a multiple of
    /// the shard count; at least one per shard).
    pub fn with_capacity(capacity: usize) -> Self {
        let shard_capacity = capacity.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    entries: Table::default(),
                    last_full_sweep: 0,
                })
            })
            .collect();
        Self {
            hasher: RandomState::new(),
            shards,
            shard_capacity,
        }
    }

    /// The time to count by: the system clock as it read when first asked, advanced by the
    /// monotonic clock since, so that it never steps. The state is this process's alone,
    /// and a step of the system clock must not move it: set back by an hour, every key
    /// counted would be refused for that hour; set forward, every caller's spent burst
    /// would be forgiven at once.
    pub fn clock() -> SystemTime {
        static ANCHOR: OnceLock<(SystemTime, Instant)> = OnceLock::new();
        let (wall, mono) = *ANCHOR.get_or_init(|| (SystemTime::now(), Instant::now()));
        wall.checked_add(mono.elapsed()).unwrap_or(wall)
    }

    /// The most live keys it holds.
    pub fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Shard> {
        // A shard's update is one insert or remove of plain integers: a panic elsewhere
        // while it was held cannot leave it half-written.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// One GCRA check of `cost` requests against `limit` for `key` (any hashable value: a
    /// tuple of the limit and the caller's parts, say, so that nothing is allocated). The
    /// state advances only when the request is admitted. [`StoreError::Full`] when the key
    /// is new and its shard is full of live keys.
    pub fn check(
        &self,
        key: &impl Hash,
        limit: &GcraLimit,
        cost: u32,
        now: SystemTime,
    ) -> Result<GcraDecision, StoreError> {
        let hash = crate::key_hash::hash_one(&self.hasher, key);
        // Middle bits pick the shard: the table takes its bucket from the low bits and its
        // control byte from the top ones, which must still vary within a shard.
        let index = ((hash >> 32) as usize) % SHARDS;
        let now_us = micros(now);
        let mut shard = self.shard(index);
        let tat = shard.entries.get(&hash).copied().filter(|&t| t > now_us);
        let (decision, new_tat) = gcra(tat, limit, GcraTake::exactly(cost), now);
        let Some(new_tat) = new_tat else {
            return Ok(decision);
        };
        if tat.is_none()
            && !shard.entries.contains_key(&hash)
            && shard.entries.len() >= self.shard_capacity
        {
            if now_us.saturating_sub(shard.last_full_sweep) >= FULL_SWEEP_EVERY.as_micros() as u64 {
                shard.last_full_sweep = now_us;
                shard.entries.retain(|_, &mut t| t > now_us);
            }
            if shard.entries.len() >= self.shard_capacity {
                return Err(StoreError::Full {
                    what: "rate-limit keys",
                    capacity: self.capacity(),
                });
            }
        }
        shard.entries.insert(hash, new_tat);
        Ok(decision)
    }

    /// Removes every dead entry (TAT at or before `now`) and gives back the memory of a
    /// table that has shrunk to a quarter of its size; returns how many entries went. Each
    /// shard is locked in turn, never all at once.
    pub fn sweep(&self, now: SystemTime) -> u64 {
        let now_us = micros(now);
        let mut removed = 0;
        for i in 0..SHARDS {
            let mut shard = self.shard(i);
            let before = shard.entries.len();
            shard.entries.retain(|_, &mut t| t > now_us);
            removed += (before - shard.entries.len()) as u64;
            if shard.entries.len() < shard.entries.capacity() / 4 {
                shard.entries.shrink_to_fit();
            }
        }
        removed
    }

    /// Entries held, live or dead.
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i).entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the tables hold (their buckets and control bytes), as the standard
    /// library's table lays them out: one bucket of 16 bytes and one control byte per slot,
    /// with slots a power of two at most 7/8 full.
    pub fn table_bytes(&self) -> usize {
        (0..SHARDS)
            .map(|i| {
                let cap = self.shard(i).entries.capacity();
                if cap == 0 {
                    0
                } else {
                    let buckets = (cap * 8 / 7).next_power_of_two();
                    buckets * (size_of::<(u64, u64)>() + 1)
                }
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_millis(ms)
    }

    #[test]
    fn keys_are_limited_apart() {
        let l = LocalLimiter::with_capacity(100);
        let limit = GcraLimit::per(1, Duration::from_secs(1), 2).unwrap();
        for _ in 0..2 {
            assert!(l.check(&"a", &limit, 1, at(0)).unwrap().allowed);
        }
        let refused = l.check(&"a", &limit, 1, at(0)).unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(l.check(&"b", &limit, 1, at(0)).unwrap().allowed);
        assert!(l.check(&"a", &limit, 1, at(1000)).unwrap().allowed);
    }

    #[test]
    fn a_full_limiter_evicts_dead_keys_and_refuses_when_all_are_live() {
        let l = LocalLimiter::with_capacity(SHARDS * 4);
        let limit = GcraLimit::per(1, Duration::from_secs(1), 1).unwrap();
        let mut full = 0;
        for k in 0..SHARDS * 8 {
            match l.check(&k, &limit, 1, at(0)) {
                Ok(d) => assert!(d.allowed),
                Err(StoreError::Full { .. }) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full >= SHARDS * 4, "{full} refused");
        assert!(l.len() <= l.capacity());
        // A second later every key is dead: new keys take their place (but for the few
        // that hash into a shard already holding four of them).
        let admitted = (SHARDS * 8..SHARDS * 10)
            .filter(|k| l.check(k, &limit, 1, at(1000)).is_ok())
            .count();
        assert!(admitted >= SHARDS * 3 / 2, "{admitted} admitted");
        assert!(l.len() <= l.capacity());
    }

    /// A million distinct keys, as a scan of sources or keys would make: memory stays
    /// within the capacity while they live, and goes once they are dead.
    #[test]
    fn a_million_keys_stay_bounded_and_are_swept() {
        const KEYS: u64 = 1_000_000;
        let l = LocalLimiter::with_capacity(KEYS as usize);
        // 10 a second: each key's state lives 100 ms after its one request.
        let limit = GcraLimit::per(10, Duration::from_secs(1), 5).unwrap();
        let mut refused = 0;
        for k in 0..KEYS {
            if l.check(&k, &limit, 1, at(0)).is_err() {
                refused += 1;
            }
        }
        let live = l.len();
        assert!(live <= l.capacity(), "{live} entries");
        // Hashes spread unevenly over shards: a few keys find theirs full.
        assert!(
            live as u64 + refused == KEYS && refused < KEYS / 100,
            "{refused}"
        );
        let bytes = l.table_bytes();
        let per_key = bytes / live;
        assert!(per_key <= 40, "{per_key} bytes per key");
        // Another million, once the first are dead: room is made, nothing grows.
        let refused_later = (KEYS..2 * KEYS)
            .filter(|k| l.check(k, &limit, 1, at(200)).is_err())
            .count();
        assert!(refused_later < (KEYS / 100) as usize, "{refused_later}");
        assert!(l.len() <= l.capacity());
        assert!(
            l.table_bytes() <= bytes,
            "the tables did not grow past the cap"
        );
        // Swept when all are dead: nothing is left, and the memory goes back.
        assert!(l.sweep(at(1000)) > 0);
        assert_eq!(l.len(), 0);
        assert!(l.table_bytes() < bytes / 100);
        println!(
            "{live} live keys: {bytes} bytes of tables, {per_key} bytes per key; {refused} refused"
        );
    }
}
