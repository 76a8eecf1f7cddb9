//! The queue over Redis: per queue, one hash per message and three sorted sets, all under
//! the queue's hash tag (`Pq:{NAME}:…`, one Cluster slot per queue):
//!
//! | Key | What |
//! |---|---|
//! | `…:seq` | the last message id given out (INCR) |
//! | `…:m:ID` | a message: attempts `a`, max attempts `m`, enqueued `e`, ready at `r`, lease until `l`, dead `x`, order key `k`, last error `err`, payload `p` |
//! | `…:live` | every message that is not a dead letter, by id (push order) |
//! | `…:leased` | messages with a lease, by its end: the order keys held up are read from the live leases without a scan |
//! | `…:dead` | dead letters, by id |
//!
//! Why not Redis Streams: the trait's semantics (a lease per claim that a later claim makes
//! stale, at most one message per order key out at a time, retries at a given time, dead
//! letters that can be revived) are not those of consumer groups, whose pending entries
//! know no order keys and no retry times. Hashes and sorted sets let each operation be one
//! script that applies exactly the rules of the other backends (`crate::queue`), including
//! the states, which are computed by the same `Meta::state` wherever a reply is read.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use redis::{Script, Value};

use super::RedisStore;
use super::reply::{array, bad, exact, int, opt_bytes, opt_int, opt_string};
use crate::StoreError;
use crate::queue::{
    Claimed, Lease, MessageId, MessageInfo, MessageState, Meta, NackOutcome, NewMessage, Queue,
    QueueStats,
};
use crate::types::{QueueName, duration_micros, from_micros, micros};

/// KEYS: seq, live. ARGV: message prefix, enqueued, ready at, max attempts, payload, whether
/// there is an order key ('1'), the order key.
static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local seq = redis.call('INCR', KEYS[1])
local m = ARGV[1] .. seq
redis.call('HSET', m, 'a', '0', 'm', ARGV[4], 'e', ARGV[2], 'r', ARGV[3], 'p', ARGV[5])
if ARGV[6] == '1' then redis.call('HSET', m, 'k', ARGV[7]) end
redis.call('ZADD', KEYS[2], seq, seq)
return seq
",
    )
});

/// KEYS: live, dead, leased. ARGV: message prefix, now, lease until, max. The rules of
/// `crate::queue::claim`: oldest first; per order key only the oldest message that is not
/// a dead letter, and none while one of the key is leased; a message whose last lease ran
/// out becomes a dead letter. Returns {id, attempt, payload, order key, enqueued} each.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local mp, now, max = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[4])
local blocked, chosen, exhausted = {}, {}, {}
if max > 0 then
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[2], '+inf')) do
    local k = redis.call('HGET', mp .. s, 'k')
    if k then blocked[k] = true end
  end
  local off, done = 0, false
  while not done do
    local batch = redis.call('ZRANGE', KEYS[1], off, off + 99)
    if #batch == 0 then break end
    off = off + 100
    for _, s in ipairs(batch) do
      local f = redis.call('HMGET', mp .. s, 'a', 'm', 'r', 'l', 'k')
      if f[1] then
        local leased = f[4] and tonumber(f[4]) > now
        if not leased and tonumber(f[1]) >= tonumber(f[2]) then
          table.insert(exhausted, s)
        else
          local k = f[5]
          local claimable = not leased and tonumber(f[3]) <= now and not (k and blocked[k])
          if k then blocked[k] = true end
          if claimable then
            table.insert(chosen, s)
            if #chosen >= max then done = true break end
          end
        end
      end
    end
  end
end
for _, s in ipairs(exhausted) do
  local m = mp .. s
  redis.call('HSET', m, 'x', '1')
  redis.call('HDEL', m, 'l')
  if redis.call('HEXISTS', m, 'err') == 0 then
    redis.call('HSET', m, 'err', 'the last lease ran out without an answer')
  end
  redis.call('ZREM', KEYS[1], s)
  redis.call('ZREM', KEYS[3], s)
  redis.call('ZADD', KEYS[2], s, s)
end
local out = {}
for _, s in ipairs(chosen) do
  local m = mp .. s
  local a = redis.call('HINCRBY', m, 'a', 1)
  redis.call('HSET', m, 'l', ARGV[3])
  redis.call('ZADD', KEYS[3], ARGV[3], s)
  local f = redis.call('HMGET', m, 'p', 'k', 'e')
  table.insert(out, {s, a, f[1], f[2], f[3]})
end
return out
",
    )
});

/// The check shared by ack and nack: the message exists, is no dead letter, and its latest
/// claim is the lease's (`crate::queue::leased`).
const LEASED: &str = r"
local m = ARGV[1] .. ARGV[2]
local f = redis.call('HMGET', m, 'a', 'l', 'x', 'm')
if not f[1] or f[3] or not f[2] or f[1] ~= ARGV[3] then return -1 end
";

/// KEYS: live, leased. ARGV: message prefix, id, attempt. 1 when acked, -1 for a stale lease.
static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LEASED}
redis.call('DEL', m)
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"
    ))
});

/// KEYS: live, dead, leased. ARGV: message prefix, id, attempt, retry at, reason. 1 for a
/// retry, 0 for a dead letter, -1 for a stale lease.
static NACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LEASED}
redis.call('HDEL', m, 'l')
redis.call('HSET', m, 'err', ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[2])
if tonumber(f[1]) >= tonumber(f[4]) then
  redis.call('HSET', m, 'x', '1')
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
  return 0
end
redis.call('HSET', m, 'r', ARGV[4])
return 1
"
    ))
});

/// KEYS: live, dead, leased. ARGV: message prefix, id, now. 1 when a dead letter was made
/// claimable again with its attempts reset.
static REVIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local m = ARGV[1] .. ARGV[2]
local f = redis.call('HMGET', m, 'a', 'm', 'l', 'x')
if not f[1] then return 0 end
local leased = f[3] and tonumber(f[3]) > tonumber(ARGV[3])
if not (f[4] or (not leased and tonumber(f[1]) >= tonumber(f[2]))) then return 0 end
redis.call('HDEL', m, 'x', 'l')
redis.call('HSET', m, 'a', '0', 'r', ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[2])
return 1
",
    )
});

/// KEYS: live, dead, leased. ARGV: message prefix, id, attempt, reason. 1 when the
/// message is a dead letter now, -1 for a stale lease.
static BURY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{LEASED}
redis.call('HDEL', m, 'l')
redis.call('HSET', m, 'err', ARGV[4], 'x', '1')
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[2])
return 1
"
    ))
});

/// KEYS: live (for the Cluster slot). ARGV: message prefix, id, now. 1 when a waiting message was made ready
/// (`crate::queue::release`).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local m = ARGV[1] .. ARGV[2]
local f = redis.call('HMGET', m, 'a', 'm', 'r', 'l', 'x')
if not f[1] or f[5] then return 0 end
local now = tonumber(ARGV[3])
if f[4] and tonumber(f[4]) > now then return 0 end
if tonumber(f[1]) >= tonumber(f[2]) or tonumber(f[3]) <= now then return 0 end
redis.call('HSET', m, 'r', ARGV[3])
return 1
",
    )
});

/// KEYS: live, dead, leased. ARGV: message prefix, id, now. 1 when the message was
/// deleted, 0 when there is none or it is leased (`crate::queue::remove`).
static REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local m = ARGV[1] .. ARGV[2]
local f = redis.call('HMGET', m, 'a', 'l', 'x')
if not f[1] then return 0 end
if not f[3] and f[2] and tonumber(f[2]) > tonumber(ARGV[3]) then return 0 end
redis.call('DEL', m)
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
",
    )
});

/// KEYS: live, dead. ARGV: message prefix, after (an id, 0 for the start), limit. Up to
/// `limit` messages after `after`, live or dead, by id, as {id, META_FIELDS…}.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local mp, limit = ARGV[1], tonumber(ARGV[3])
local from = '(' .. ARGV[2]
local ids = {}
for _, set in ipairs({KEYS[1], KEYS[2]}) do
  for _, s in ipairs(redis.call('ZRANGEBYSCORE', set, from, '+inf', 'LIMIT', 0, limit)) do
    table.insert(ids, s)
  end
end
table.sort(ids, function(a, b) return tonumber(a) < tonumber(b) end)
local out = {}
for i, s in ipairs(ids) do
  if i > limit then break end
  local f = redis.call('HMGET', mp .. s, 'a', 'm', 'e', 'r', 'l', 'x', 'k', 'err')
  if f[1] then table.insert(out, {s, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]}) end
end
return out
",
    )
});

/// The fields of a message's bookkeeping, in the order `meta` reads them.
const META_FIELDS: [&str; 8] = ["a", "m", "e", "r", "l", "x", "k", "err"];

/// KEYS: live, dead. ARGV: message prefix, now. Every message that is a dead letter by
/// `Meta::state`, as {id, META_FIELDS…}; the caller keeps those whose state says so.
static DEAD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local mp, now, out = ARGV[1], tonumber(ARGV[2]), {}
local function add(s)
  local f = redis.call('HMGET', mp .. s, 'a', 'm', 'e', 'r', 'l', 'x', 'k', 'err')
  if f[1] then table.insert(out, {s, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8]}) end
end
for _, s in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do add(s) end
for _, s in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', mp .. s, 'a', 'm', 'l')
  if f[1] and not (f[3] and tonumber(f[3]) > now) and tonumber(f[1]) >= tonumber(f[2]) then
    add(s)
  end
end
return out
",
    )
});

/// KEYS: live, dead. ARGV: message prefix, now. {ready, waiting, leased, dead}, by the
/// states of `Meta::state`.
static STATS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local mp, now = ARGV[1], tonumber(ARGV[2])
local ready, waiting, leased, dead = 0, 0, 0, redis.call('ZCARD', KEYS[2])
for _, s in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local f = redis.call('HMGET', mp .. s, 'a', 'm', 'r', 'l')
  if f[1] then
    if f[4] and tonumber(f[4]) > now then leased = leased + 1
    elseif tonumber(f[1]) >= tonumber(f[2]) then dead = dead + 1
    elseif tonumber(f[3]) > now then waiting = waiting + 1
    else ready = ready + 1 end
  end
end
return {ready, waiting, leased, dead}
",
    )
});

/// The keys of one queue.
struct QueueKeys {
    seq: String,
    live: String,
    dead: String,
    leased: String,
    /// Followed by a message id: that message's hash.
    message: String,
}

impl RedisStore {
    fn queue_keys(&self, queue: &QueueName) -> QueueKeys {
        let base = self.tagged("q", queue.as_str());
        QueueKeys {
            seq: format!("{base}:seq"),
            live: format!("{base}:live"),
            dead: format!("{base}:dead"),
            leased: format!("{base}:leased"),
            message: format!("{base}:m:"),
        }
    }
}

/// A message's bookkeeping from its fields (in the order of [`META_FIELDS`]).
fn meta(fields: &[Value]) -> Result<Meta, StoreError> {
    let [a, m, e, r, l, x, k, err] = fields else {
        return Err(bad("a message of another shape"));
    };
    let small = |v: &Value| u32::try_from(int(v)?).map_err(|_| bad("a count out of range"));
    Ok(Meta {
        v: 1,
        attempts: small(a)?,
        max_attempts: small(m)?,
        enqueued_at: int(e)?,
        ready_at: int(r)?,
        lease_until: opt_int(l)?,
        dead: !matches!(x, Value::Nil),
        order_key: opt_string(k.clone())?,
        last_error: opt_string(err.clone())?,
    })
}

impl Queue for RedisStore {
    async fn push(
        &self,
        queue: &QueueName,
        message: NewMessage,
        now: SystemTime,
    ) -> Result<MessageId, StoreError> {
        let keys = self.queue_keys(queue);
        let now = exact(micros(now));
        let ready = message.not_before.map_or(now, |t| exact(micros(t)));
        let seq: u64 = self
            .call(|mut c| async move {
                PUSH.key(&keys.seq)
                    .key(&keys.live)
                    .arg(&keys.message)
                    .arg(now)
                    .arg(ready)
                    .arg(message.max_attempts.max(1))
                    .arg(message.payload.as_slice())
                    .arg(if message.order_key.is_some() {
                        "1"
                    } else {
                        "0"
                    })
                    .arg(message.order_key.as_deref().unwrap_or(""))
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(MessageId::from_seq(seq))
    }

    async fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<Claimed>, StoreError> {
        let keys = self.queue_keys(queue);
        let now = exact(micros(now));
        let until = exact(now.saturating_add(duration_micros(lease).max(1)));
        let reply: Value = self
            .call(|mut c| async move {
                CLAIM
                    .key(&keys.live)
                    .key(&keys.dead)
                    .key(&keys.leased)
                    .arg(&keys.message)
                    .arg(now)
                    .arg(until)
                    .arg(max)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::new();
        for item in array(reply)? {
            let fields = array(item)?;
            let [id, attempt, payload, order_key, enqueued] = fields.as_slice() else {
                return Err(bad("a claimed message of another shape"));
            };
            out.push(Claimed {
                lease: Lease {
                    id: MessageId::from_seq(int(id)?),
                    attempt: u32::try_from(int(attempt)?).map_err(|_| bad("an attempt"))?,
                    until: from_micros(until),
                },
                payload: opt_bytes(payload.clone())?.unwrap_or_default(),
                order_key: opt_string(order_key.clone())?,
                enqueued_at: from_micros(int(enqueued)?),
            });
        }
        Ok(out)
    }

    async fn ack(&self, queue: &QueueName, lease: &Lease) -> Result<(), StoreError> {
        let keys = self.queue_keys(queue);
        let seq = lease.id.seq()?;
        let done: i64 = self
            .call(|mut c| async move {
                ACK.key(&keys.live)
                    .key(&keys.leased)
                    .arg(&keys.message)
                    .arg(seq)
                    .arg(lease.attempt)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match done {
            1 => Ok(()),
            _ => Err(StoreError::LeaseLost(lease.id.clone())),
        }
    }

    async fn nack(
        &self,
        queue: &QueueName,
        lease: &Lease,
        retry_at: SystemTime,
        reason: &str,
    ) -> Result<NackOutcome, StoreError> {
        let keys = self.queue_keys(queue);
        let seq = lease.id.seq()?;
        let at = exact(micros(retry_at));
        let done: i64 = self
            .call(|mut c| async move {
                NACK.key(&keys.live)
                    .key(&keys.dead)
                    .key(&keys.leased)
                    .arg(&keys.message)
                    .arg(seq)
                    .arg(lease.attempt)
                    .arg(at)
                    .arg(reason)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match done {
            1 => Ok(NackOutcome::Retry { at: retry_at }),
            0 => Ok(NackOutcome::Dead),
            _ => Err(StoreError::LeaseLost(lease.id.clone())),
        }
    }

    async fn info(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<Option<MessageInfo>, StoreError> {
        let Ok(seq) = id.seq() else { return Ok(None) };
        let key = format!("{}{seq}", self.queue_keys(queue).message);
        let reply: Value = self
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&META_FIELDS[..])
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let fields = array(reply)?;
        if fields.first().is_none_or(|a| matches!(a, Value::Nil)) {
            return Ok(None);
        }
        Ok(Some(meta(&fields)?.info(seq, micros(now))))
    }

    async fn stats(&self, queue: &QueueName, now: SystemTime) -> Result<QueueStats, StoreError> {
        let keys = self.queue_keys(queue);
        let now = exact(micros(now));
        let reply: Value = self
            .call(|mut c| async move {
                STATS
                    .key(&keys.live)
                    .key(&keys.dead)
                    .arg(&keys.message)
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let counts = array(reply)?;
        let [ready, waiting, leased, dead] = counts.as_slice() else {
            return Err(bad("queue counts of another shape"));
        };
        Ok(QueueStats {
            ready: int(ready)?,
            waiting: int(waiting)?,
            leased: int(leased)?,
            dead: int(dead)?,
        })
    }

    async fn dead_letters(
        &self,
        queue: &QueueName,
        now: SystemTime,
    ) -> Result<Vec<MessageInfo>, StoreError> {
        let keys = self.queue_keys(queue);
        let now = exact(micros(now));
        let reply: Value = self
            .call(|mut c| async move {
                DEAD.key(&keys.live)
                    .key(&keys.dead)
                    .arg(&keys.message)
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let mut out = Vec::new();
        for item in array(reply)? {
            let fields = array(item)?;
            let Some((id, fields)) = fields.split_first() else {
                return Err(bad("a dead letter of another shape"));
            };
            let (seq, meta) = (int(id)?, meta(fields)?);
            if meta.state(now) == MessageState::Dead {
                out.push((seq, meta.info(seq, now)));
            }
        }
        // Oldest first, as the other backends list them.
        out.sort_by_key(|(seq, _)| *seq);
        Ok(out.into_iter().map(|(_, info)| info).collect())
    }

    async fn revive(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let Ok(seq) = id.seq() else { return Ok(false) };
        let keys = self.queue_keys(queue);
        let now = exact(micros(now));
        let done: i64 = self
            .call(|mut c| async move {
                REVIVE
                    .key(&keys.live)
                    .key(&keys.dead)
                    .key(&keys.leased)
                    .arg(&keys.message)
                    .arg(seq)
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(done == 1)
    }

    async fn bury(&self, queue: &QueueName, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        let keys = self.queue_keys(queue);
        let seq = lease.id.seq()?;
        let done: i64 = self
            .call(|mut c| async move {
                BURY.key(&keys.live)
                    .key(&keys.dead)
                    .key(&keys.leased)
                    .arg(&keys.message)
                    .arg(seq)
                    .arg(lease.attempt)
                    .arg(reason)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match done {
            1 => Ok(()),
            _ => Err(StoreError::LeaseLost(lease.id.clone())),
        }
    }

    async fn release(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let Ok(seq) = id.seq() else { return Ok(false) };
        let keys = self.queue_keys(queue);
        let now = exact(micros(now));
        let done: i64 = self
            .call(|mut c| async move {
                RELEASE
                    .key(&keys.live)
                    .arg(&keys.message)
                    .arg(seq)
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(done == 1)
    }

    async fn peek(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<Option<(MessageInfo, Vec<u8>)>, StoreError> {
        let Ok(seq) = id.seq() else { return Ok(None) };
        let key = format!("{}{seq}", self.queue_keys(queue).message);
        let reply: Value = self
            .call(|mut c| async move {
                redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&META_FIELDS[..])
                    .arg("p")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let mut fields = array(reply)?;
        if fields.first().is_none_or(|a| matches!(a, Value::Nil)) {
            return Ok(None);
        }
        let payload = fields
            .pop()
            .ok_or_else(|| bad("a message without a payload"))?;
        let info = meta(&fields)?.info(seq, micros(now));
        Ok(Some((info, opt_bytes(payload)?.unwrap_or_default())))
    }

    async fn delete_message(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        let Ok(seq) = id.seq() else { return Ok(false) };
        let keys = self.queue_keys(queue);
        let now = exact(micros(now));
        let done: i64 = self
            .call(|mut c| async move {
                REMOVE
                    .key(&keys.live)
                    .key(&keys.dead)
                    .key(&keys.leased)
                    .arg(&keys.message)
                    .arg(seq)
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(done == 1)
    }

    async fn messages(
        &self,
        queue: &QueueName,
        after: Option<&MessageId>,
        limit: usize,
        now: SystemTime,
    ) -> Result<Vec<MessageInfo>, StoreError> {
        let after = match after {
            Some(id) => id.seq()?,
            None => 0,
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let keys = self.queue_keys(queue);
        let reply: Value = self
            .call(|mut c| async move {
                LIST.key(&keys.live)
                    .key(&keys.dead)
                    .arg(&keys.message)
                    .arg(after)
                    .arg(limit)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let now = micros(now);
        let mut out = Vec::new();
        for item in array(reply)? {
            let fields = array(item)?;
            let Some((id, fields)) = fields.split_first() else {
                return Err(bad("a listed message of another shape"));
            };
            let seq = int(id)?;
            out.push(meta(fields)?.info(seq, now));
        }
        Ok(out)
    }
}
