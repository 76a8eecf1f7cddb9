//! A durable queue with leases (the webhook outbox): push, claim for a while, then ack, or
//! nack to retry later; a message that used up its attempts goes to the dead letters.
//!
//! The logic is written once over [`QueueRows`], which each backend provides inside one lock
//! or write transaction.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::StoreError;
use crate::types::{QueueName, duration_micros, from_micros, micros};

/// A message's id within its queue; ids grow in push order. Opaque to callers.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    /// Takes an id back from its text (as `idgate webhooks show ID` gets it).
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        match text.parse::<u64>() {
            Ok(_) => Ok(Self(text.to_owned())),
            Err(_) => Err(StoreError::InvalidKey {
                what: "message id",
                reason: "it is not a message id",
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_seq(seq: u64) -> Self {
        Self(seq.to_string())
    }

    pub(crate) fn seq(&self) -> Result<u64, StoreError> {
        self.0
            .parse()
            .map_err(|_| StoreError::NoMessage(self.clone()))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.0)
    }
}

/// A message to push.
#[derive(Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Stored as given: a caller with personal data encrypts it first.
    pub payload: Vec<u8>,
    /// Messages with the same order key are handed out one at a time, oldest first: none is
    /// claimable while another of its key is leased, nor while an older one waits for its
    /// retry. Dead letters hold nothing up.
    pub order_key: Option<String>,
    /// Claims allowed before the message goes to the dead letters (at least 1).
    pub max_attempts: u32,
    /// Not claimable before then; `None` for at once.
    pub not_before: Option<SystemTime>,
}

impl fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The payload may hold personal data: only its size is shown.
        f.debug_struct("NewMessage")
            .field("payload_len", &self.payload.len())
            .field("order_key", &self.order_key)
            .field("max_attempts", &self.max_attempts)
            .field("not_before", &self.not_before)
            .finish()
    }
}

/// The right to ack or nack one claim of a message. A later claim of the same message (after
/// this lease ran out) makes it stale; until then it still works, even past `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: MessageId,
    /// Which claim this is, from 1.
    pub attempt: u32,
    pub until: SystemTime,
}

/// A claimed message.
#[derive(Clone, PartialEq, Eq)]
pub struct Claimed {
    pub lease: Lease,
    pub payload: Vec<u8>,
    pub order_key: Option<String>,
    pub enqueued_at: SystemTime,
}

impl fmt::Debug for Claimed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claimed")
            .field("lease", &self.lease)
            .field("payload_len", &self.payload.len())
            .field("order_key", &self.order_key)
            .finish_non_exhaustive()
    }
}

/// Where a message stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    Ready,
    /// Not claimable before `until` (pushed for later, or nacked).
    Waiting {
        until: SystemTime,
    },
    Leased {
        until: SystemTime,
    },
    Dead,
}

/// What `show` and the dead-letter list tell about a message, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    pub id: MessageId,
    pub state: MessageState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub order_key: Option<String>,
    pub enqueued_at: SystemTime,
    /// The reason given with the last nack.
    pub last_error: Option<String>,
}

/// Messages by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub ready: u64,
    pub waiting: u64,
    pub leased: u64,
    pub dead: u64,
}

/// What a nack did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NackOutcome {
    Retry {
        at: SystemTime,
    },
    /// The attempts are used up: the message is a dead letter now.
    Dead,
}

/// Exponential backoff: `first`, doubled for each further attempt, at most `max`. Jitter is
/// the caller's to add (it owns the randomness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after the `attempt`-th failure (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.first
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// A durable queue of messages, in several named queues.
///
/// Atomicity: a message is leased to one claimer at a time; a claim, an ack and a nack are
/// each atomic; an ack or nack with a stale lease changes nothing and fails with
/// [`StoreError::LeaseLost`]. A message whose lease runs out without an ack is claimable
/// again (delivery is at least once). Pushed messages and leases survive a restart in a
/// durable backend.
pub trait Queue: Send + Sync {
    fn push(
        &self,
        queue: &QueueName,
        message: NewMessage,
        now: SystemTime,
    ) -> impl Future<Output = Result<MessageId, StoreError>> + Send;

    /// Leases up to `max` claimable messages, oldest first, for `lease`. A message whose
    /// lease ran out on its last attempt goes to the dead letters instead.
    fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send;

    /// Done with: the message and its payload are removed.
    fn ack(
        &self,
        queue: &QueueName,
        lease: &Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Failed: claimable again at `retry_at`, or a dead letter when its attempts are used up.
    fn nack(
        &self,
        queue: &QueueName,
        lease: &Lease,
        retry_at: SystemTime,
        reason: &str,
    ) -> impl Future<Output = Result<NackOutcome, StoreError>> + Send;

    fn info(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<MessageInfo>, StoreError>> + Send;

    fn stats(
        &self,
        queue: &QueueName,
        now: SystemTime,
    ) -> impl Future<Output = Result<QueueStats, StoreError>> + Send;

    /// The dead letters, oldest first.
    fn dead_letters(
        &self,
        queue: &QueueName,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<MessageInfo>, StoreError>> + Send;

    /// Makes a dead letter claimable again at `now` with its attempts reset; `false` when
    /// `id` is not a dead letter.
    fn revive(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Failed for good (a receiver that refuses the message, a retry past its maximum age):
    /// the message is a dead letter now, whatever attempts it has left. A stale lease
    /// changes nothing and fails with [`StoreError::LeaseLost`].
    fn bury(
        &self,
        queue: &QueueName,
        lease: &Lease,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes a message that waits for its time (pushed for later, or nacked) claimable at
    /// once; `false` when it is not waiting (ready, leased, a dead letter, or gone).
    fn release(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// A message's bookkeeping and payload, without claiming it (to show or copy it).
    fn peek(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<(MessageInfo, Vec<u8>)>, StoreError>> + Send;

    /// Deletes a message in any state but leased (one being handled is left to its
    /// claimer); `false` when there is no such message or it is leased.
    fn delete_message(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Up to `limit` messages in every state, oldest first, starting after `after` (to page
    /// through a queue).
    fn messages(
        &self,
        queue: &QueueName,
        after: Option<&MessageId>,
        limit: usize,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<MessageInfo>, StoreError>> + Send;
}

/// A message's bookkeeping as stored (versioned JSON in redb); times in microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Meta {
    pub(crate) v: u32,
    pub(crate) attempts: u32,
    pub(crate) max_attempts: u32,
    pub(crate) enqueued_at: u64,
    pub(crate) ready_at: u64,
    #[serde(default)]
    pub(crate) lease_until: Option<u64>,
    #[serde(default)]
    pub(crate) dead: bool,
    #[serde(default)]
    pub(crate) order_key: Option<String>,
    #[serde(default)]
    pub(crate) last_error: Option<String>,
}

impl Meta {
    pub(crate) fn state(&self, now: u64) -> MessageState {
        match self.lease_until {
            _ if self.dead => MessageState::Dead,
            Some(until) if until > now => MessageState::Leased {
                until: from_micros(until),
            },
            // Its last lease ran out without an answer: it is not handed out again.
            _ if self.attempts >= self.max_attempts => MessageState::Dead,
            _ if self.ready_at > now => MessageState::Waiting {
                until: from_micros(self.ready_at),
            },
            _ => MessageState::Ready,
        }
    }

    pub(crate) fn info(&self, seq: u64, now: u64) -> MessageInfo {
        MessageInfo {
            id: MessageId::from_seq(seq),
            state: self.state(now),
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            order_key: self.order_key.clone(),
            enqueued_at: from_micros(self.enqueued_at),
            last_error: self.last_error.clone(),
        }
    }
}

/// The rows of the queues as each backend keeps them, read within one lock or transaction.
pub(crate) trait ReadQueueRows {
    fn meta(&self, queue: &str, seq: u64) -> Result<Option<Meta>, StoreError>;
    fn payload(&self, queue: &str, seq: u64) -> Result<Vec<u8>, StoreError>;
    /// Every message of `queue` in push order, until `f` returns `false`.
    fn scan(&self, queue: &str, f: &mut dyn FnMut(u64, &Meta) -> bool) -> Result<(), StoreError>;
}

/// The same, written within one lock or write transaction.
pub(crate) trait QueueRows: ReadQueueRows {
    fn next_seq(&mut self, queue: &str) -> Result<u64, StoreError>;
    fn set_meta(&mut self, queue: &str, seq: u64, meta: &Meta) -> Result<(), StoreError>;
    fn insert(
        &mut self,
        queue: &str,
        seq: u64,
        meta: &Meta,
        payload: &[u8],
    ) -> Result<(), StoreError>;
    fn delete(&mut self, queue: &str, seq: u64) -> Result<(), StoreError>;
}

pub(crate) fn push(
    rows: &mut impl QueueRows,
    queue: &str,
    message: &NewMessage,
    now: SystemTime,
) -> Result<MessageId, StoreError> {
    let now = micros(now);
    let seq = rows.next_seq(queue)?;
    let meta = Meta {
        v: 1,
        attempts: 0,
        max_attempts: message.max_attempts.max(1),
        enqueued_at: now,
        ready_at: message.not_before.map_or(now, micros),
        lease_until: None,
        dead: false,
        order_key: message.order_key.clone(),
        last_error: None,
    };
    rows.insert(queue, seq, &meta, &message.payload)?;
    Ok(MessageId::from_seq(seq))
}

pub(crate) fn claim(
    rows: &mut impl QueueRows,
    queue: &str,
    max: usize,
    lease: Duration,
    now: SystemTime,
) -> Result<Vec<Claimed>, StoreError> {
    let now = micros(now);
    let until = now.saturating_add(duration_micros(lease).max(1));
    let mut blocked: HashSet<String> = HashSet::new();
    let mut chosen: Vec<(u64, Meta)> = Vec::new();
    let mut exhausted: Vec<(u64, Meta)> = Vec::new();
    if max > 0 {
        // At most one message per order key is out at a time.
        rows.scan(queue, &mut |_, meta| {
            if let (MessageState::Leased { .. }, Some(k)) = (meta.state(now), &meta.order_key) {
                blocked.insert(k.clone());
            }
            true
        })?;
        rows.scan(queue, &mut |seq, meta| {
            let claimable = match meta.state(now) {
                MessageState::Dead => {
                    if !meta.dead {
                        exhausted.push((seq, meta.clone()));
                    }
                    return true;
                }
                MessageState::Ready => meta.order_key.as_ref().is_none_or(|k| !blocked.contains(k)),
                MessageState::Waiting { .. } | MessageState::Leased { .. } => false,
            };
            if let Some(k) = &meta.order_key {
                blocked.insert(k.clone());
            }
            if claimable {
                chosen.push((seq, meta.clone()));
            }
            chosen.len() < max
        })?;
    }
    for (seq, mut meta) in exhausted {
        meta.dead = true;
        meta.lease_until = None;
        if meta.last_error.is_none() {
            meta.last_error = Some("the last lease ran out without an answer".to_owned());
        }
        rows.set_meta(queue, seq, &meta)?;
    }
    let mut out = Vec::with_capacity(chosen.len());
    for (seq, mut meta) in chosen {
        meta.attempts = meta.attempts.saturating_add(1);
        meta.lease_until = Some(until);
        rows.set_meta(queue, seq, &meta)?;
        out.push(Claimed {
            lease: Lease {
                id: MessageId::from_seq(seq),
                attempt: meta.attempts,
                until: from_micros(until),
            },
            payload: rows.payload(queue, seq)?,
            order_key: meta.order_key,
            enqueued_at: from_micros(meta.enqueued_at),
        });
    }
    Ok(out)
}

/// The message `lease` names, if the lease is still the latest claim.
fn leased(
    rows: &impl ReadQueueRows,
    queue: &str,
    lease: &Lease,
) -> Result<(u64, Meta), StoreError> {
    let seq = lease.id.seq()?;
    match rows.meta(queue, seq)? {
        Some(meta)
            if !meta.dead && meta.attempts == lease.attempt && meta.lease_until.is_some() =>
        {
            Ok((seq, meta))
        }
        _ => Err(StoreError::LeaseLost(lease.id.clone())),
    }
}

pub(crate) fn ack(rows: &mut impl QueueRows, queue: &str, lease: &Lease) -> Result<(), StoreError> {
    let (seq, _) = leased(rows, queue, lease)?;
    rows.delete(queue, seq)
}

pub(crate) fn nack(
    rows: &mut impl QueueRows,
    queue: &str,
    lease: &Lease,
    retry_at: SystemTime,
    reason: &str,
) -> Result<NackOutcome, StoreError> {
    let (seq, mut meta) = leased(rows, queue, lease)?;
    meta.lease_until = None;
    meta.last_error = Some(reason.to_owned());
    let outcome = if meta.attempts >= meta.max_attempts {
        meta.dead = true;
        NackOutcome::Dead
    } else {
        meta.ready_at = micros(retry_at);
        NackOutcome::Retry { at: retry_at }
    };
    rows.set_meta(queue, seq, &meta)?;
    Ok(outcome)
}

pub(crate) fn info(
    rows: &impl ReadQueueRows,
    queue: &str,
    id: &MessageId,
    now: SystemTime,
) -> Result<Option<MessageInfo>, StoreError> {
    let Ok(seq) = id.seq() else { return Ok(None) };
    Ok(rows.meta(queue, seq)?.map(|m| m.info(seq, micros(now))))
}

pub(crate) fn stats(
    rows: &impl ReadQueueRows,
    queue: &str,
    now: SystemTime,
) -> Result<QueueStats, StoreError> {
    let now = micros(now);
    let mut stats = QueueStats::default();
    rows.scan(queue, &mut |_, meta| {
        let n = match meta.state(now) {
            MessageState::Ready => &mut stats.ready,
            MessageState::Waiting { .. } => &mut stats.waiting,
            MessageState::Leased { .. } => &mut stats.leased,
            MessageState::Dead => &mut stats.dead,
        };
        *n += 1;
        true
    })?;
    Ok(stats)
}

pub(crate) fn dead_letters(
    rows: &impl ReadQueueRows,
    queue: &str,
    now: SystemTime,
) -> Result<Vec<MessageInfo>, StoreError> {
    let now = micros(now);
    let mut out = Vec::new();
    rows.scan(queue, &mut |seq, meta| {
        if meta.state(now) == MessageState::Dead {
            out.push(meta.info(seq, now));
        }
        true
    })?;
    Ok(out)
}

pub(crate) fn revive(
    rows: &mut impl QueueRows,
    queue: &str,
    id: &MessageId,
    now: SystemTime,
) -> Result<bool, StoreError> {
    let Ok(seq) = id.seq() else { return Ok(false) };
    match rows.meta(queue, seq)? {
        Some(mut meta) if meta.state(micros(now)) == MessageState::Dead => {
            meta.dead = false;
            meta.attempts = 0;
            meta.ready_at = micros(now);
            meta.lease_until = None;
            rows.set_meta(queue, seq, &meta)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub(crate) fn bury(
    rows: &mut impl QueueRows,
    queue: &str,
    lease: &Lease,
    reason: &str,
) -> Result<(), StoreError> {
    let (seq, mut meta) = leased(rows, queue, lease)?;
    meta.lease_until = None;
    meta.dead = true;
    meta.last_error = Some(reason.to_owned());
    rows.set_meta(queue, seq, &meta)
}

pub(crate) fn release(
    rows: &mut impl QueueRows,
    queue: &str,
    id: &MessageId,
    now: SystemTime,
) -> Result<bool, StoreError> {
    let Ok(seq) = id.seq() else { return Ok(false) };
    let now = micros(now);
    match rows.meta(queue, seq)? {
        Some(mut meta) if matches!(meta.state(now), MessageState::Waiting { .. }) => {
            meta.ready_at = now;
            rows.set_meta(queue, seq, &meta)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub(crate) fn peek(
    rows: &impl ReadQueueRows,
    queue: &str,
    id: &MessageId,
    now: SystemTime,
) -> Result<Option<(MessageInfo, Vec<u8>)>, StoreError> {
    let Ok(seq) = id.seq() else { return Ok(None) };
    match rows.meta(queue, seq)? {
        Some(meta) => Ok(Some((
            meta.info(seq, micros(now)),
            rows.payload(queue, seq)?,
        ))),
        None => Ok(None),
    }
}

pub(crate) fn delete_message(
    rows: &mut impl QueueRows,
    queue: &str,
    id: &MessageId,
    now: SystemTime,
) -> Result<bool, StoreError> {
    let Ok(seq) = id.seq() else { return Ok(false) };
    match rows.meta(queue, seq)? {
        Some(meta) if !matches!(meta.state(micros(now)), MessageState::Leased { .. }) => {
            rows.delete(queue, seq)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub(crate) fn messages(
    rows: &impl ReadQueueRows,
    queue: &str,
    after: Option<&MessageId>,
    limit: usize,
    now: SystemTime,
) -> Result<Vec<MessageInfo>, StoreError> {
    let after = match after {
        Some(id) => id.seq()?,
        None => 0,
    };
    let now = micros(now);
    let mut out = Vec::new();
    if limit > 0 {
        rows.scan(queue, &mut |seq, meta| {
            if seq > after {
                out.push(meta.info(seq, now));
            }
            out.len() < limit
        })?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let b = Backoff {
            first: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        let delays: Vec<u64> = (1..=8).map(|a| b.delay(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(60));
        assert_eq!(b.delay(0), Duration::from_secs(1));
    }

    #[test]
    fn message_ids_parse_back_and_refuse_other_text() {
        let id = MessageId::from_seq(42);
        assert_eq!(MessageId::parse(id.as_str()).unwrap(), id);
        assert!(MessageId::parse("x42").is_err());
    }
}
