//! The queue over Redis Streams: per queue, a stream holding every message that is not
//! acknowledged, and a consumer group in which each gateway process is a consumer, so that
//! any replica hands out messages and a replica that died leaves none stuck. The Lua scripts
//! are in `queue/` (`prelude.lua` is shared by all of them); every write is one script,
//! and every key of a queue is under the queue's hash tag (one Cluster slot). Why Streams,
//! and what they cost in memory: `docs/state.md`.
//!
//! | Key (`Pq:{NAME}…`) | Type | What |
//! |---|---|---|
//! | `:seq` | string | the last message id given out (INCR) |
//! | `:s` | stream | message N is entry `N-0`: payload `p`, max attempts `m`, enqueued `e`, first ready `r`, order key `k` |
//! | group `idgate` on `:s` | consumer group | its pending entries are the messages taken in; their delivery count is the attempts |
//! | `:lease` | sorted set | messages whose latest claim is unanswered, by the lease's end |
//! | `:wait` | sorted set | taken in, the next of their order key when put there (or without one), by when they are due |
//! | `:ready` | sorted set | the same once due, by id: what a claim hands out first (a revived dead letter can go before one of them: a claim checks each one's turn) |
//! | `:parked` | sorted set | taken in, behind an older message of their order key, by when they are due |
//! | `:holder` | hash | order key → the message of the key whose claim is unanswered |
//! | `:err` | hash | message id → the reason of its last nack |
//! | `:revived` | hash | message id → when it was last revived (its attempts count from then) |
//! | `:k:KEY` | sorted set | the messages of order key KEY that are neither acked nor dead, by id |
//!
//! Consumers: each store built by [`RedisStore::new`] (one per process) has a name of its
//! own, host, process id and a random part. A claim reads new messages with `XREADGROUP` as
//! that consumer; `XCLAIM` moves a message whose lease ran out to the consumer that claims
//! it next, so a dead replica's claims are taken over by whichever replica claims after
//! the lease. Two consumers that are no process hold the rest: `(waiting)` what was taken
//! in and waits for its time or its turn, `(dead)` the dead letters; a consumer stays in
//! the group only while it holds something.
//!
//! What decides is the trait's rules, with the caller's `now` (`crate::queue`): a lease is
//! its own end in `:lease`, not the entry's idle time in the group, because each claim
//! gives its own lease and the caller's clock, not the server's, is the one every backend
//! decides with. So the scripts pick the messages whose leases ran out and move them with
//! `XCLAIM`, rather than letting `XAUTOCLAIM` pick by idle time.
//!
//! An ack deletes the entry (`XACK`, then `XDEL`): the stream holds no acknowledged message.
//!
//! A claim's answer carries the payloads, so it stops at [`CLAIM_BYTES`] of them (after at
//! least one message); a purge claims without them.

use std::hash::{BuildHasher, RandomState};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use redis::{Script, ScriptInvocation, Value};

use super::RedisStore;
use super::reply::{array, bad, exact, int, opt_bytes, opt_int, opt_string, string};
use crate::StoreError;
use crate::queue::{
    CLAIM_BYTES, Claimed, Lease, MessageId, MessageInfo, MessageState, Meta, NackOutcome,
    NewMessage, Queue, QueueStats,
};
use crate::types::{QueueName, duration_micros, from_micros, micros};

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("queue/prelude.lua"),
                include_str!(concat!("queue/", $file))
            ))
        })
    };
}

static PUSH: LazyLock<Script> = script!("push.lua");
static CLAIM: LazyLock<Script> = script!("claim.lua");
static ACK: LazyLock<Script> = script!("ack.lua");
static NACK: LazyLock<Script> = script!("nack.lua");
static REVIVE: LazyLock<Script> = script!("revive.lua");
static INFO: LazyLock<Script> = script!("info.lua");
static DEAD: LazyLock<Script> = script!("dead.lua");
static STATS: LazyLock<Script> = script!("stats.lua");
static BURY: LazyLock<Script> = script!("bury.lua");
static RELEASE: LazyLock<Script> = script!("release.lua");
static PEEK: LazyLock<Script> = script!("peek.lua");
static DELETE: LazyLock<Script> = script!("delete.lua");
static MESSAGES: LazyLock<Script> = script!("messages.lua");

/// A consumer name no other process has: the host, the process id, and a random part,
/// since a restarted container often comes back with the same host name and pid.
pub(super) fn consumer_name() -> String {
    static MADE: AtomicU64 = AtomicU64::new(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let host = if host.is_empty() { "host" } else { &host };
    // The std hasher's keys come from the system's randomness once per thread; hashing the
    // time and a counter with them gives each store a part nobody can guess or repeat.
    let random =
        RandomState::new().hash_one((SystemTime::now(), MADE.fetch_add(1, Ordering::Relaxed)));
    format!("{host}/{}/{random:016x}", std::process::id())
}

/// The keys of one queue, in the order the scripts read them (`prelude.lua`).
pub(crate) struct QueueKeys {
    keys: [String; 9],
    /// Followed by an order key: that key's messages.
    by_key: String,
}

impl QueueKeys {
    #[cfg(test)]
    pub(crate) fn stream(&self) -> &str {
        &self.keys[1]
    }
}

impl RedisStore {
    #[cfg(test)]
    pub(crate) fn consumer(&self) -> &str {
        &self.consumer
    }

    pub(crate) fn queue_keys(&self, queue: &QueueName) -> QueueKeys {
        let base = self.tagged("q", queue.as_str());
        QueueKeys {
            keys: [
                "seq", "s", "lease", "wait", "ready", "parked", "err", "holder", "revived",
            ]
            .map(|k| format!("{base}:{k}")),
            by_key: format!("{base}:k:"),
        }
    }
}

/// A call of `script` on the queue's keys; the scripts' own arguments follow.
fn invocation(script: &'static Script, keys: &QueueKeys) -> ScriptInvocation<'static> {
    let mut call = script.prepare_invoke();
    for key in &keys.keys {
        call.key(key);
    }
    call.arg(&keys.by_key);
    call
}

impl RedisStore {
    async fn run<T: redis::FromRedisValue + Send>(
        &self,
        call: ScriptInvocation<'static>,
    ) -> Result<T, StoreError> {
        self.call(|mut c| async move { call.invoke_async(&mut c).await })
            .await
    }
}

/// A message's bookkeeping from its record (`record` in `prelude.lua`): the id, then the
/// fields in the order of [`Meta`].
pub(super) fn record(reply: Value) -> Result<(u64, Meta), StoreError> {
    let fields = array(reply)?;
    let [n, a, m, e, r, l, x, k, err, revived] = fields.as_slice() else {
        return Err(bad("a message of another shape"));
    };
    let small = |v: &Value| u32::try_from(int(v)?).map_err(|_| bad("a count out of range"));
    let meta = Meta {
        v: 1,
        attempts: small(a)?,
        max_attempts: small(m)?,
        enqueued_at: int(e)?,
        ready_at: int(r)?,
        lease_until: opt_int(l)?,
        dead: !matches!(x, Value::Nil),
        order_key: opt_string(k.clone())?,
        last_error: opt_string(err.clone())?,
        revived_at: opt_int(revived)?,
    };
    Ok((int(n)?, meta))
}

impl RedisStore {
    /// A claim; with `payloads` false, the messages come without them (their `payload` is
    /// empty) and any number of them fits in the answer.
    async fn claim_with(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
        now: SystemTime,
        payloads: bool,
    ) -> Result<Vec<Claimed>, StoreError> {
        let now = exact(micros(now));
        let until = exact(now.saturating_add(duration_micros(lease).max(1)));
        let mut call = invocation(&CLAIM, &self.queue_keys(queue));
        call.arg(now)
            .arg(until)
            .arg(max)
            .arg(&*self.consumer)
            .arg(CLAIM_BYTES)
            .arg(if payloads { "0" } else { "1" });
        let reply: Value = self.run(call).await?;
        let mut out = Vec::new();
        for item in array(reply)? {
            let fields = array(item)?;
            let [id, attempt, payload, order_key, enqueued, since] = fields.as_slice() else {
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
                attempts_since: from_micros(int(since)?),
            });
        }
        Ok(out)
    }

    async fn delete_with(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
        only_dead: bool,
    ) -> Result<bool, StoreError> {
        let Ok(seq) = id.seq() else { return Ok(false) };
        let mut call = invocation(&DELETE, &self.queue_keys(queue));
        call.arg(seq)
            .arg(exact(micros(now)))
            .arg(if only_dead { "1" } else { "0" });
        Ok(self.run::<i64>(call).await? == 1)
    }
}

impl Queue for RedisStore {
    async fn push(
        &self,
        queue: &QueueName,
        message: NewMessage,
        now: SystemTime,
    ) -> Result<MessageId, StoreError> {
        let now = exact(micros(now));
        let ready = message.not_before.map_or(now, |t| exact(micros(t)));
        let mut call = invocation(&PUSH, &self.queue_keys(queue));
        call.arg(now)
            .arg(ready)
            .arg(message.max_attempts.max(1))
            .arg(message.payload.as_slice());
        if let Some(key) = &message.order_key {
            call.arg(key.as_str());
        }
        let id: Value = self.run(call).await?;
        let id = string(id)?;
        let seq = id.parse().map_err(|_| bad("a message id"))?;
        Ok(MessageId::from_seq(seq))
    }

    async fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
        now: SystemTime,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.claim_with(queue, max, lease, now, true).await
    }

    async fn ack(&self, queue: &QueueName, lease: &Lease) -> Result<(), StoreError> {
        let mut call = invocation(&ACK, &self.queue_keys(queue));
        call.arg(lease.id.seq()?).arg(lease.attempt);
        match self.run::<i64>(call).await? {
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
        let mut call = invocation(&NACK, &self.queue_keys(queue));
        call.arg(lease.id.seq()?)
            .arg(lease.attempt)
            .arg(exact(micros(retry_at)))
            .arg(reason);
        match self.run::<i64>(call).await? {
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
        let mut call = invocation(&INFO, &self.queue_keys(queue));
        call.arg(seq);
        let reply: Value = self.run(call).await?;
        if matches!(reply, Value::Nil) {
            return Ok(None);
        }
        let (seq, meta) = record(reply)?;
        Ok(Some(meta.info(seq, micros(now))))
    }

    async fn stats(&self, queue: &QueueName, now: SystemTime) -> Result<QueueStats, StoreError> {
        let mut call = invocation(&STATS, &self.queue_keys(queue));
        call.arg(exact(micros(now)));
        let counts = array(self.run(call).await?)?;
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
        let now = exact(micros(now));
        let mut call = invocation(&DEAD, &self.queue_keys(queue));
        call.arg(now);
        let mut out = Vec::new();
        for item in array(self.run(call).await?)? {
            let (seq, meta) = record(item)?;
            // The script also hands back every run-out lease; only those on their last
            // attempt are dead.
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
        let mut call = invocation(&REVIVE, &self.queue_keys(queue));
        call.arg(seq).arg(exact(micros(now)));
        Ok(self.run::<i64>(call).await? == 1)
    }

    async fn bury(&self, queue: &QueueName, lease: &Lease, reason: &str) -> Result<(), StoreError> {
        let mut call = invocation(&BURY, &self.queue_keys(queue));
        call.arg(lease.id.seq()?).arg(lease.attempt).arg(reason);
        match self.run::<i64>(call).await? {
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
        let mut call = invocation(&RELEASE, &self.queue_keys(queue));
        call.arg(seq).arg(exact(micros(now)));
        Ok(self.run::<i64>(call).await? == 1)
    }

    async fn peek(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<Option<(MessageInfo, Vec<u8>)>, StoreError> {
        let Ok(seq) = id.seq() else { return Ok(None) };
        let mut call = invocation(&PEEK, &self.queue_keys(queue));
        call.arg(seq);
        let reply: Value = self.run(call).await?;
        if matches!(reply, Value::Nil) {
            return Ok(None);
        }
        let mut fields = array(reply)?;
        let payload = fields
            .pop()
            .ok_or_else(|| bad("a message without a payload"))?;
        let (seq, meta) = record(Value::Array(fields))?;
        Ok(Some((
            meta.info(seq, micros(now)),
            opt_bytes(payload)?.unwrap_or_default(),
        )))
    }

    async fn delete_message(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        self.delete_with(queue, id, now, false).await
    }

    async fn delete_dead(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> Result<bool, StoreError> {
        self.delete_with(queue, id, now, true).await
    }

    async fn purge_due(
        &self,
        queue: &QueueName,
        max: usize,
        now: SystemTime,
    ) -> Result<usize, StoreError> {
        // Claimed without their payloads, then acked: a purge reads no event.
        let due = self
            .claim_with(queue, max, Duration::from_secs(60), now, false)
            .await?;
        for c in &due {
            self.ack(queue, &c.lease).await?;
        }
        Ok(due.len())
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
        let mut call = invocation(&MESSAGES, &self.queue_keys(queue));
        call.arg(after).arg(limit);
        let now = micros(now);
        array(self.run(call).await?)?
            .into_iter()
            .map(|item| record(item).map(|(seq, meta)| meta.info(seq, now)))
            .collect()
    }
}
