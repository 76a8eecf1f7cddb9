//! Counters (fixed windows, GCRA), nonces and ownership records over Redis: one key per
//! value, its own hash tag, one script per write.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use redis::cluster_routing::Slot;
use redis::{ErrorKind, RedisResult, Script, ServerErrorKind, Value};
use tokio::task::JoinSet;

use super::RedisStore;
use super::reply::{array, bad, exact, expire_at_ms, int, opt_int, opt_string, string};
use crate::StoreError;
use crate::counters::{
    Counters, GcraCheck, GcraDecision, GcraLimit, GcraTake, WindowCount, gcra, window_count,
};
use crate::nonces::{Nonces, OwnerRecord, Ownership};
use crate::types::{CounterKey, Nonce, ObjectId, Owner, duration_micros, from_micros, micros};

/// Adds to a live window, or starts a new one. ARGV: now, by, the new window's deadline, its
/// expiry (ms). Returns the count and the deadline.
static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local d = redis.call('HGET', KEYS[1], 'd')
if d and tonumber(d) > tonumber(ARGV[1]) then
  return {redis.call('HINCRBY', KEYS[1], 'n', ARGV[2]), d}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'n', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return {ARGV[2], ARGV[3]}
",
    )
});

/// GCRA: takes as many requests' worth as there is room for, between a least and a most,
/// and stores the new arrival time. ARGV: now, the emission interval, the tolerance (all in
/// microseconds), the least, the most, the expiry grace (ms). Returns how many it took (0
/// when refused) and the arrival time it found (nil for none): the caller computes the
/// decision from that with the same function as every other backend. Lua numbers are
/// doubles, so the quotient is corrected with exact products (all below 2^53).
pub(super) static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));

/// The GCRA script's text, for [`GCRA`] and for EVAL when a server does not know it yet.
const GCRA_LUA: &str = r"
local now = tonumber(ARGV[1])
local t = tonumber(ARGV[2])
local found = redis.call('GET', KEYS[1])
local tat = now
if found and tonumber(found) > now then tat = tonumber(found) end
local free = tonumber(ARGV[3]) - (tat - now)
local k = 0
if free > 0 then
  k = math.floor(free / t)
  if k * t > free then k = k - 1 end
  if (k + 1) * t <= free then k = k + 1 end
end
k = math.min(k, tonumber(ARGV[5]))
if k < tonumber(ARGV[4]) then return {0, found} end
local new = tat + k * t
local dead = math.max(new, now + 1)
redis.call('SET', KEYS[1], string.format('%.0f', new),
  'PXAT', string.format('%.0f', math.ceil(dead / 1000) + tonumber(ARGV[6])))
return {k, found}
";

/// Records a nonce unless it is live. ARGV: now, its deadline, its expiry (ms).
static NONCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local d = redis.call('GET', KEYS[1])
if d and tonumber(d) > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PXAT', ARGV[3])
return 1
",
    )
});

/// Records an owner unless another one's record is live. ARGV: now, the owner, the deadline,
/// the expiry (ms). Returns the record in force: owner and deadline.
static OWNER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HMGET', KEYS[1], 'o', 'd')
if cur[1] and cur[2] and tonumber(cur[2]) > tonumber(ARGV[1]) and cur[1] ~= ARGV[2] then
  return cur
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'o', ARGV[2], 'd', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return {ARGV[2], ARGV[3]}
",
    )
});

/// `now + span` as every backend computes a deadline (a zero span still gives a moment).
fn deadline(now: u64, span: Duration) -> u64 {
    exact(now.saturating_add(duration_micros(span).max(1)))
}

/// The GCRA script's arguments for one check: now, emission interval, tolerance
/// (microseconds), least, most, expiry grace.
fn gcra_args(limit: &GcraLimit, take: GcraTake, now: u64) -> [u64; 6] {
    let t = duration_micros(limit.emission_interval()).max(1);
    [
        now,
        exact(t),
        exact(t.saturating_mul(u64::from(limit.burst()))),
        u64::from(take.least()),
        u64::from(take.most()),
        super::reply::EXPIRY_GRACE_MS,
    ]
}

/// The decision for what the GCRA script found, which must be what it did.
pub(super) fn gcra_decision(
    reply: Value,
    limit: &GcraLimit,
    take: GcraTake,
    now: SystemTime,
) -> Result<GcraDecision, StoreError> {
    let mut items = array(reply)?.into_iter();
    let (Some(taken), Some(found)) = (items.next(), items.next()) else {
        return Err(bad("a GCRA reply"));
    };
    let taken = int(&taken)?;
    let (decision, _) = gcra(opt_int(&found)?, limit, take, now);
    // A refusal takes nothing; `exactly(0)` admits and takes nothing too.
    let agrees = if decision.allowed {
        u64::from(decision.granted) == taken && (taken > 0 || take.least() == 0)
    } else {
        taken == 0
    };
    if !agrees {
        // Only for spans beyond the year 2255, where Lua's doubles round.
        return Err(bad("a GCRA decision the store disagrees with"));
    }
    Ok(decision)
}

/// The count and end of a window, as the increment script replies them.
pub(super) fn window_reply(reply: Value) -> Result<WindowCount, StoreError> {
    let items = array(reply)?;
    match items.as_slice() {
        [count, end] => Ok(window_count(int(count)?, int(end)?)),
        _ => Err(bad("a window reply")),
    }
}

pub(super) fn owner_record(object: &ObjectId, reply: Value) -> Result<OwnerRecord, StoreError> {
    let mut items = array(reply)?.into_iter();
    let (Some(owner), Some(deadline)) = (items.next(), items.next()) else {
        return Err(bad("an ownership reply"));
    };
    let owner =
        Owner::new(string(owner)?).map_err(|_| crate::state::corrupt_owner(object.as_str()))?;
    Ok(OwnerRecord {
        owner,
        expires_at: from_micros(int(&deadline)?),
    })
}

impl RedisStore {
    pub(super) fn window_key(&self, key: &CounterKey) -> String {
        self.tagged("w", key.as_str())
    }

    pub(super) fn gcra_key(&self, key: &CounterKey) -> String {
        self.tagged("g", key.as_str())
    }
}

impl RedisStore {
    /// EVALSHA of the GCRA script for each `(key, args)`, pipelined: each call's reply, in
    /// order. In a Cluster, the calls of each hash slot go in a pipeline of their own, each
    /// bounded by the store's timeout on its own: a node that fails or does not answer fails
    /// its calls only (the outer error), and a call the server refused has the server's
    /// error (the inner one).
    async fn pipelined(
        &self,
        calls: &[(String, [u64; 6])],
    ) -> Vec<Result<RedisResult<Value>, StoreError>> {
        // Which calls go together: all of them, or those of one Cluster slot.
        let mut groups: Vec<(Option<Slot>, Vec<usize>)> = Vec::new();
        for (i, (key, _)) in calls.iter().enumerate() {
            let slot = self.link.is_cluster().then(|| Slot::for_key(key));
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, members)) => members.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        let timeout = self.timeout;
        let mut set = JoinSet::new();
        for (_, members) in groups {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for &i in &members {
                let (key, args) = &calls[i];
                pipe.cmd("EVALSHA")
                    .arg(GCRA.get_hash())
                    .arg(1)
                    .arg(key)
                    .arg(&args[..]);
            }
            let (mut conn, origin) = self.link.take();
            set.spawn(async move {
                let query = pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn);
                let replies = match tokio::time::timeout(timeout, query).await {
                    Ok(Ok(replies)) if replies.len() == members.len() => {
                        // A call the server refused may say the connection must be made anew.
                        for e in replies.iter().filter_map(|r| r.as_ref().err()) {
                            origin.failed(e);
                        }
                        Ok(replies)
                    }
                    // Why the calls failed, as `StoreError::Unavailable` gives it.
                    Ok(Ok(_)) => Err("Redis answered a pipeline of another length".to_owned()),
                    Ok(Err(e)) => {
                        origin.failed(&e);
                        Err(super::describe(&e))
                    }
                    Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
                };
                (members, replies)
            });
        }
        let mut out: Vec<Option<Result<RedisResult<Value>, StoreError>>> =
            calls.iter().map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            // A task that panicked leaves its calls without a reply, failed below.
            let Ok((members, replies)) = joined else {
                continue;
            };
            match replies {
                Ok(replies) => {
                    for (i, reply) in members.into_iter().zip(replies) {
                        out[i] = Some(Ok(reply));
                    }
                }
                Err(reason) => {
                    for i in members {
                        out[i] = Some(Err(StoreError::Unavailable {
                            reason: reason.clone(),
                        }));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(bad("a pipeline task failed"))))
            .collect()
    }
}

/// A check to run again: its place among the checks, and its script arguments.
type Rerun = (usize, [u64; 6]);

impl Counters for RedisStore {
    async fn increment(
        &self,
        key: &CounterKey,
        by: u64,
        window: Duration,
        now: SystemTime,
    ) -> Result<WindowCount, StoreError> {
        let now = exact(micros(now));
        let end = deadline(now, window);
        let key = self.window_key(key);
        // HINCRBY counts in signed 64 bits.
        let by = by.min(i64::MAX as u64);
        let reply: Value = self
            .call(|mut c| async move {
                INCREMENT
                    .key(&key)
                    .arg(now)
                    .arg(by)
                    .arg(end)
                    .arg(expire_at_ms(end))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        window_reply(reply)
    }

    async fn get(
        &self,
        key: &CounterKey,
        now: SystemTime,
    ) -> Result<Option<WindowCount>, StoreError> {
        let key = self.window_key(key);
        let reply: Value = self
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("n")
                    .arg("d")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let items = array(reply)?;
        let [count, end] = items.as_slice() else {
            return Err(bad("a window reply"));
        };
        match (opt_int(count)?, opt_int(end)?) {
            (Some(count), Some(end)) if end > micros(now) => Ok(Some(window_count(count, end))),
            _ => Ok(None),
        }
    }

    async fn reset(&self, key: &CounterKey) -> Result<bool, StoreError> {
        let key = self.window_key(key);
        let removed: u64 = self
            .call(|mut c| async move { redis::cmd("DEL").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(removed > 0)
    }

    async fn gcra(
        &self,
        key: &CounterKey,
        limit: &GcraLimit,
        take: GcraTake,
        now: SystemTime,
    ) -> Result<GcraDecision, StoreError> {
        let args = gcra_args(limit, take, exact(micros(now)));
        let key = self.gcra_key(key);
        let reply: Value = self
            .call(|mut c| async move { GCRA.key(&key).arg(&args[..]).invoke_async(&mut c).await })
            .await?;
        gcra_decision(reply, limit, take, now)
    }

    /// All checks in one pipelined round trip. In a Cluster a pipeline goes to one node,
    /// so the checks are grouped by hash slot and the groups' pipelines sent at once: still
    /// one round trip of waiting, each bounded by the timeout on its own, so that the
    /// checks of a node that does not answer fail while the others are decided. A check the
    /// server had no cached script for (NOSCRIPT: it did not run) runs once more with the
    /// script's text (EVAL, which caches it), sent to its key's node only and at the same
    /// time as the other such checks: loading the script everywhere first would wait for
    /// every node of a Cluster, one that stalls included.
    async fn gcra_many(
        &self,
        checks: &[GcraCheck<'_>],
        now: SystemTime,
    ) -> Vec<Result<GcraDecision, StoreError>> {
        let now_us = exact(micros(now));
        let calls: Vec<(String, [u64; 6])> = checks
            .iter()
            .map(|(key, limit, take)| (self.gcra_key(key), gcra_args(limit, *take, now_us)))
            .collect();
        let replies = self.pipelined(&calls).await;
        let mut out: Vec<Result<Value, StoreError>> = Vec::with_capacity(checks.len());
        // The checks to run again, by key: those of one key in their order, each key's at
        // the same time as the others'.
        let mut again: Vec<(String, Vec<Rerun>)> = Vec::new();
        for (i, ((key, args), reply)) in calls.into_iter().zip(replies).enumerate() {
            out.push(match reply {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(e)) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    match again.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, runs)) => runs.push((i, args)),
                        None => again.push((key, vec![(i, args)])),
                    }
                    // Replaced by the reply below.
                    Err(bad("a GCRA check run again"))
                }
                Ok(Err(e)) => Err(StoreError::Unavailable {
                    reason: super::describe(&e),
                }),
                Err(e) => Err(e),
            });
        }
        let mut set = JoinSet::new();
        for (key, runs) in again {
            let store = self.clone();
            set.spawn(async move {
                let mut replies = Vec::with_capacity(runs.len());
                for (i, args) in runs {
                    let mut eval = redis::cmd("EVAL");
                    eval.arg(GCRA_LUA).arg(1).arg(&key).arg(&args[..]);
                    let reply = store
                        .call(|mut c| async move { eval.query_async(&mut c).await })
                        .await;
                    replies.push((i, reply));
                }
                replies
            });
        }
        // A task that panicked leaves its checks with the error put in their place above.
        while let Some(joined) = set.join_next().await {
            for (i, reply) in joined.unwrap_or_default() {
                out[i] = reply;
            }
        }
        checks
            .iter()
            .zip(out)
            .map(|((_, limit, take), reply)| {
                reply.and_then(|reply| gcra_decision(reply, limit, *take, now))
            })
            .collect()
    }

    async fn sweep(&self, _now: SystemTime) -> Result<u64, StoreError> {
        // Every key carries its own expiry.
        Ok(0)
    }
}

impl Nonces for RedisStore {
    async fn insert_if_absent(
        &self,
        nonce: &Nonce,
        window: Duration,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let now = exact(micros(now));
        let end = deadline(now, window);
        let key = self.tagged("n", nonce.as_str());
        let fresh: u64 = self
            .call(|mut c| async move {
                NONCE
                    .key(&key)
                    .arg(now)
                    .arg(end)
                    .arg(expire_at_ms(end))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(fresh == 1)
    }

    async fn sweep(&self, _now: SystemTime) -> Result<u64, StoreError> {
        Ok(0)
    }
}

impl Ownership for RedisStore {
    async fn put(
        &self,
        object: &ObjectId,
        owner: &Owner,
        retention: Duration,
        now: SystemTime,
    ) -> Result<OwnerRecord, StoreError> {
        let now = exact(micros(now));
        let end = deadline(now, retention);
        let key = self.tagged("o", object.as_str());
        let owner = owner.as_str().to_owned();
        let reply: Value = self
            .call(|mut c| async move {
                OWNER
                    .key(&key)
                    .arg(now)
                    .arg(&owner)
                    .arg(end)
                    .arg(expire_at_ms(end))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let record = owner_record(object, reply)?;
        self.owners.put(object, &record);
        Ok(record)
    }

    async fn get(
        &self,
        object: &ObjectId,
        now: SystemTime,
    ) -> Result<Option<OwnerRecord>, StoreError> {
        if let Some(record) = self.owners.get(object, now) {
            return Ok(Some(record));
        }
        self.read_owner(object, now).await
    }

    async fn get_for(
        &self,
        object: &ObjectId,
        asker: &Owner,
        now: SystemTime,
    ) -> Result<Option<OwnerRecord>, StoreError> {
        // The copy kept here answers its owner only: anyone else waits for Redis, as for
        // an object that does not exist.
        if let Some(record) = self.owners.get(object, now)
            && record.owner == *asker
        {
            return Ok(Some(record));
        }
        self.read_owner(object, now).await
    }

    async fn remove(&self, object: &ObjectId) -> Result<bool, StoreError> {
        // Forgotten here even if Redis cannot be reached: the object is gone upstream.
        self.owners.forget(object);
        let key = self.tagged("o", object.as_str());
        let removed: u64 = self
            .call(|mut c| async move { redis::cmd("DEL").arg(&key).query_async(&mut c).await })
            .await?;
        Ok(removed > 0)
    }

    async fn sweep(&self, _now: SystemTime) -> Result<u64, StoreError> {
        Ok(0)
    }
}

impl RedisStore {
    /// The live record Redis holds for `object`, kept in the copy of records read.
    async fn read_owner(
        &self,
        object: &ObjectId,
        now: SystemTime,
    ) -> Result<Option<OwnerRecord>, StoreError> {
        let key = self.tagged("o", object.as_str());
        let reply: Value = self
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg("o")
                    .arg("d")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let items = array(reply)?;
        let [owner, end] = items.as_slice() else {
            return Err(bad("an ownership reply"));
        };
        match (opt_int(end)?, opt_string(owner.clone())?) {
            (Some(end), Some(_)) if end > micros(now) => {
                let record = owner_record(object, Value::Array(items))?;
                self.owners.put(object, &record);
                Ok(Some(record))
            }
            _ => Ok(None),
        }
    }
}
