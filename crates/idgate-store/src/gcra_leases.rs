//! [`GcraLeases`]: a replica's share of a shared rate limit, taken from the backend ahead
//! of the requests that use it, so that most requests under a high limit are decided
//! without a round trip, and refusals are repeated without asking again.
//!
//! How it stays exact enough to be a limit:
//!
//! - **A lease is taken, never made up.** When a key has no lease, the request asks the
//!   backend for up to [`lease_size`] requests' worth ([`GcraTake::up_to`]): the backend's
//!   GCRA takes them as it would take that many requests at once, atomically with every
//!   other replica's checks. The request uses one; the rest are held here for the next
//!   requests of the same key. Every request this replica admits was taken from the
//!   backend first, so over any span the replicas together admit at most what the limit
//!   admits, plus what was leased before the span and used in it: at most one lease per
//!   replica, at most 10 ms of the limit's rate (and never more than an eighth of its
//!   burst). A limit whose 10 ms are less than two requests is not leased: every admission
//!   is decided by the backend, as without leases.
//! - **A lease is short-lived.** What is left of it after [`LEASE_LIFE`] is dropped, so a
//!   request is never admitted on a share taken more than a second earlier. A dropped rest
//!   was counted by the backend without being used: at most one lease a second per key and
//!   replica, 1% of the limit's rate, which only matters to a caller already near its limit.
//! - **One request asks for a key's lease at a time.** The request that finds three
//!   quarters of the key's lease used tops it up to a whole lease, while the others go on using the rest;
//!   the requests that find no lease while another one is being asked for are decided by
//!   the backend one at a time. So a replica never holds more than one lease of a key,
//!   and a burst of concurrent requests never takes a lease each. Only the request that
//!   set the mark clears it (answered, failed, or dropped); an ask slower than the state
//!   timeout (at least [`ASK_TIMEOUT`]) lets another request ask.
//! - **A refusal is kept until it ends.** When the backend refuses, the refusal holds until
//!   its `Retry-After` has passed: arrival times only move forward, so no replica can make
//!   room earlier. The same refusal is answered here without asking, for at most
//!   [`LEASE_LIFE`] (a daily limit's refusal is asked about again each second, not held
//!   for hours). What the replica still holds of a lease is used first.
//!
//! Keys are held as a 64-bit hash (keyed per process, as in [`crate::LocalLimiter`]) of
//! the caller's key and the limit's parameters, so a reload that changes a rate starts
//! afresh. Memory is bounded: a full shard drops ended entries (scanning itself at most
//! every 100 ms), and when it is still full the request is simply decided by the backend.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use crate::counters::{GcraDecision, GcraLimit, GcraTake};
use crate::local_limiter::PassThrough;
use crate::types::{duration_micros, micros};

/// How much of a limit one lease is: its rate over this span.
pub const LEASE_SPAN: Duration = Duration::from_millis(10);

/// How long the rest of a lease may be used.
pub const LEASE_LIFE: Duration = Duration::from_secs(1);

/// How long a request asking for a key's lease keeps others from asking, at least (the
/// caller passes its state timeout, when longer): past it (the request was dropped, or the
/// backend is slow), another one may.
pub const ASK_TIMEOUT: Duration = Duration::from_millis(250);

/// How often a full shard may scan itself for ended entries: a flood of new keys into a
/// shard full of live ones costs one scan per interval, not one per request.
const FULL_SWEEP_EVERY: Duration = Duration::from_millis(100);

/// What a lease may take of the limit's burst, at most: one part in this many.
const BURST_SHARE: u32 = 8;

const SHARDS: usize = 64;

/// The default capacity: as many keys as the in-process limiter holds.
pub const DEFAULT_LEASE_CAPACITY: usize = crate::DEFAULT_LIMITER_CAPACITY;

/// How many requests' worth one lease of `limit` asks for: 10 ms of its rate, at most an
/// eighth of its burst, at least one (no lease: the backend decides every request).
pub fn lease_size(limit: &GcraLimit) -> u32 {
    let t = duration_micros(limit.emission_interval()).max(1);
    let per_span = duration_micros(LEASE_SPAN) / t;
    let size = per_span.min(u64::from(limit.burst() / BURST_SHARE));
    u32::try_from(size).unwrap_or(u32::MAX).max(1)
}

/// What this replica holds of one key (times in microseconds since the epoch).
#[derive(Debug, Clone, Copy, Default)]
struct Lease {
    /// Requests' worth taken from the backend and not used yet.
    tokens: u32,
    /// The key's arrival time in the backend after the last grant or refusal seen here.
    tat: u64,
    /// When the rest of the lease is dropped.
    expires: u64,
    /// Until when the backend refuses (zero: it did not).
    refused_until: u64,
    /// Until when that refusal is answered here: at most [`LEASE_LIFE`] after it came, so
    /// that a long refusal (a daily limit) is asked about again now and then rather than
    /// held for hours.
    refusal_kept_until: u64,
    /// When the request now asking for the next lease asked (zero: none is); it is known
    /// by that time, so that only it clears the mark.
    asking_since: u64,
    /// Until when that ask keeps others from asking.
    asking_until: u64,
    /// No renewal before this: the backend refused the last one until then.
    renew_after: u64,
}

impl Lease {
    fn live(&self, now: u64) -> bool {
        self.has_tokens(now) || self.refused(now) || self.asking(now)
    }

    fn has_tokens(&self, now: u64) -> bool {
        self.tokens > 0 && self.expires > now
    }

    fn refused(&self, now: u64) -> bool {
        self.refused_until > now && self.refusal_kept_until > now
    }

    fn asking(&self, now: u64) -> bool {
        self.asking_since != 0 && now < self.asking_until
    }

    fn ask(&mut self, now: u64, timeout: u64) {
        self.asking_since = now;
        self.asking_until = now.saturating_add(timeout);
    }

    /// Clears the mark if the ask made at `since` is the one that set it.
    fn answered(&mut self, since: u64) {
        if self.asking_since == since {
            self.asking_since = 0;
            self.asking_until = 0;
        }
    }
}

/// What [`GcraLeases::decide`] made of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leased {
    /// Decided here: from the lease, or the backend's refusal while it holds.
    Decided(GcraDecision),
    /// Decided here from the lease, which is running low: ask the backend with the
    /// [`GcraTake`] for the next one and hand the answer to [`GcraLeases::refill`].
    Renew(GcraDecision, GcraTake),
    /// Ask the backend with the [`GcraTake`] and hand the answer to
    /// [`GcraLeases::record`] for the request's decision.
    Ask(GcraTake),
}

type Table = HashMap<u64, Lease, BuildHasherDefault<PassThrough>>;

struct Shard {
    entries: Table,
    /// When this shard last scanned itself because it was full (microseconds).
    last_full_sweep: u64,
}

/// A key, hashed with its limit: see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseKey(u64);

/// The leases of one process, sharded by key hash, bounded.
pub struct GcraLeases {
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    shard_capacity: usize,
}

impl std::fmt::Debug for GcraLeases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcraLeases")
            .field("capacity", &(self.shard_capacity * SHARDS))
            .finish_non_exhaustive()
    }
}

impl Default for GcraLeases {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_LEASE_CAPACITY)
    }
}

impl GcraLeases {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: Table::default(),
                        last_full_sweep: 0,
                    })
                })
                .collect(),
            shard_capacity: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// The key of `key` under `limit` (any hashable value: the limit's name and the
    /// caller's parts, say).
    pub fn key(&self, key: &impl Hash, limit: &GcraLimit) -> LeaseKey {
        LeaseKey(crate::key_hash::hash_one(&self.hasher, &(key, limit)))
    }

    fn shard(&self, key: LeaseKey) -> MutexGuard<'_, Shard> {
        // Middle bits pick the shard (the table uses the low and the top ones). A shard's
        // update is plain integers: a panic elsewhere cannot leave it half-written.
        self.shards[((key.0 >> 32) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// What to do about one request of `key` under `limit` (see [`Leased`]). A request
    /// told to ask keeps others from asking for the key's lease for `ask_timeout` (at
    /// least [`ASK_TIMEOUT`]), or until its answer is recorded.
    pub fn decide(
        &self,
        key: LeaseKey,
        limit: &GcraLimit,
        now: SystemTime,
        ask_timeout: Duration,
    ) -> Leased {
        let size = lease_size(limit);
        let now = micros(now);
        let ask_timeout = duration_micros(ask_timeout.max(ASK_TIMEOUT));
        let mut shard = self.shard(key);
        let Some(lease) = shard.entries.get_mut(&key.0) else {
            if size == 1 || !self.make_room(&mut shard, now) {
                return Leased::Ask(GcraTake::EXACTLY_ONE);
            }
            // The first request of the key asks for its lease; the others are decided one
            // at a time until it is there.
            let mut asking = Lease::default();
            asking.ask(now, ask_timeout);
            shard.entries.insert(key.0, asking);
            return Leased::Ask(GcraTake::up_to(size));
        };
        if lease.has_tokens(now) {
            // What was leased is used first, even if a refusal came meanwhile: the backend
            // counted it already.
            lease.tokens -= 1;
            let decision = admitted(lease, limit, now);
            if lease.tokens <= size / 4 && !lease.asking(now) && lease.renew_after <= now {
                // Topped up to one lease: a replica never holds more.
                lease.ask(now, ask_timeout);
                return Leased::Renew(decision, GcraTake::up_to(size - lease.tokens));
            }
            return Leased::Decided(decision);
        }
        if lease.refused(now) {
            return Leased::Decided(GcraDecision {
                allowed: false,
                granted: 0,
                remaining: 0,
                retry_after: Duration::from_micros(lease.refused_until - now),
                reset_after: Duration::from_micros(lease.tat.saturating_sub(now)),
            });
        }
        if size == 1 || lease.asking(now) {
            return Leased::Ask(GcraTake::EXACTLY_ONE);
        }
        lease.ask(now, ask_timeout);
        Leased::Ask(GcraTake::up_to(size))
    }

    /// Keeps what the backend answered to [`Leased::Ask`] with `asked` for one request of
    /// `key` under `limit`, decided at `now`: the rest of a lease it granted (the request
    /// uses one), or its refusal. Returns the request's decision.
    ///
    /// A refusal holds until there is room for a whole lease again, not just one request:
    /// otherwise a key kept over its limit would be leased one request at a time, each
    /// after a round trip. The requests refused meanwhile lose nothing of the limit: what
    /// was freed is leased at once when the refusal ends, at most [`LEASE_SPAN`] later.
    pub fn record(
        &self,
        key: LeaseKey,
        limit: &GcraLimit,
        asked: GcraTake,
        answer: &GcraDecision,
        now: SystemTime,
    ) -> GcraDecision {
        let leasing = asked.most() > 1;
        let rest = answer.granted.saturating_sub(1);
        let mut mine = *answer;
        if answer.allowed {
            // What is held here is still the caller's to use.
            mine.granted = 1;
            mine.remaining = answer.remaining.saturating_add(rest);
            if rest == 0 && !leasing {
                // Nothing to hold: a limit decided one request at a time.
                return mine;
            }
        } else {
            let t = limit.emission_interval();
            let lease_more = t.saturating_mul(lease_size(limit).saturating_sub(1));
            mine.retry_after = answer.retry_after.saturating_add(lease_more);
        }
        let now = micros(now);
        let tat = now.saturating_add(duration_micros(answer.reset_after));
        let mut shard = self.shard(key);
        let known = shard.entries.contains_key(&key.0);
        let mut lease = shard
            .entries
            .get(&key.0)
            .copied()
            .filter(|l| l.live(now))
            .unwrap_or_default();
        if leasing {
            lease.answered(now);
        }
        lease.tat = lease.tat.max(tat);
        if answer.allowed {
            if lease.expires <= now {
                lease.tokens = 0;
            }
            lease.tokens = lease.tokens.saturating_add(rest);
            lease.expires = now.saturating_add(duration_micros(LEASE_LIFE));
            lease.refused_until = 0;
        } else {
            lease.refused_until = now.saturating_add(duration_micros(mine.retry_after));
            lease.refusal_kept_until = lease
                .refused_until
                .min(now.saturating_add(duration_micros(LEASE_LIFE)));
        }
        if !known && !self.make_room(&mut shard, now) {
            // Full of live leases: this one is not kept, and its key asks the backend
            // every time. The rest of the grant is counted there and goes unused.
            return mine;
        }
        shard.entries.insert(key.0, lease);
        mine
    }

    /// Keeps what the backend answered to [`Leased::Renew`] for `key` under `limit`, asked
    /// at `now`: the whole grant is added to the lease (the request was decided already).
    /// A refusal leaves the rest of the lease to be used, and no renewal is asked for until
    /// there is room for a whole lease again.
    pub fn refill(&self, key: LeaseKey, limit: &GcraLimit, answer: &GcraDecision, now: SystemTime) {
        let now = micros(now);
        let mut shard = self.shard(key);
        let Some(lease) = shard.entries.get_mut(&key.0) else {
            return;
        };
        lease.answered(now);
        let tat = now.saturating_add(duration_micros(answer.reset_after));
        lease.tat = lease.tat.max(tat);
        if answer.allowed {
            if lease.expires <= now {
                lease.tokens = 0;
            }
            lease.tokens = lease.tokens.saturating_add(answer.granted);
            lease.expires = now.saturating_add(duration_micros(LEASE_LIFE));
            lease.refused_until = 0;
        } else {
            let whole = duration_micros(answer.retry_after).saturating_add(
                duration_micros(limit.emission_interval())
                    .saturating_mul(u64::from(lease_size(limit).saturating_sub(1))),
            );
            lease.renew_after = now.saturating_add(whole);
        }
    }

    /// The backend could not be asked what `asked` asked for `key` at `now` (it failed,
    /// or the request went away): if that ask was the key's lease, another request may ask
    /// at once.
    pub fn abandon(&self, key: LeaseKey, asked: GcraTake, now: SystemTime) {
        if asked.most() > 1
            && let Some(lease) = self.shard(key).entries.get_mut(&key.0)
        {
            lease.answered(micros(now));
        }
    }

    /// Whether a new key fits in `shard`, after dropping what has ended if it is full (at
    /// most once every [`FULL_SWEEP_EVERY`]).
    fn make_room(&self, shard: &mut Shard, now: u64) -> bool {
        if shard.entries.len() < self.shard_capacity {
            return true;
        }
        if now.saturating_sub(shard.last_full_sweep) >= duration_micros(FULL_SWEEP_EVERY) {
            shard.last_full_sweep = now;
            shard.entries.retain(|_, l| l.live(now));
        }
        shard.entries.len() < self.shard_capacity
    }

    /// Drops every lease and refusal that has ended; returns how many went.
    pub fn sweep(&self, now: SystemTime) -> u64 {
        let now = micros(now);
        let mut removed = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let entries = &mut shard.entries;
            let before = entries.len();
            entries.retain(|_, l| l.live(now));
            removed += (before - entries.len()) as u64;
            if entries.len() < entries.capacity() / 4 {
                entries.shrink_to_fit();
            }
        }
        removed
    }

    /// Entries held, live or ended.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The decision for a request admitted from `lease`: what the backend would have room for
/// now, and what is still held here.
fn admitted(lease: &Lease, limit: &GcraLimit, now: u64) -> GcraDecision {
    let t = duration_micros(limit.emission_interval()).max(1);
    let tolerance = t.saturating_mul(u64::from(limit.burst()));
    let ahead = lease.tat.saturating_sub(now);
    let room = u32::try_from(tolerance.saturating_sub(ahead) / t).unwrap_or(u32::MAX);
    GcraDecision {
        allowed: true,
        granted: 1,
        remaining: room.saturating_add(lease.tokens),
        retry_after: Duration::ZERO,
        reset_after: Duration::from_micros(ahead),
    }
}

#[cfg(test)]
mod tests;
