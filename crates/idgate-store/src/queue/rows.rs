//! The queue's logic, written once over [`QueueRows`]: each backend that keeps messages as
//! rows (redb) provides them inside one write or read transaction, and these functions
//! decide what a push, claim, ack or nack does to them.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{
    Claimed, Lease, MessageId, MessageInfo, MessageState, NackOutcome, NewMessage, QueueStats,
};
use crate::StoreError;
use crate::types::{duration_micros, from_micros, micros};

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
    /// When it was last revived: its run of attempts began then, not at `enqueued_at`.
    #[serde(default)]
    pub(crate) revived_at: Option<u64>,
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
            attempts_since: from_micros(self.attempts_since()),
            last_error: self.last_error.clone(),
        }
    }

    /// When the current run of attempts began.
    pub(crate) fn attempts_since(&self) -> u64 {
        self.revived_at.unwrap_or(self.enqueued_at)
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
        revived_at: None,
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
            attempts_since: from_micros(meta.attempts_since()),
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
            meta.revived_at = Some(micros(now));
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

pub(crate) fn delete_dead(
    rows: &mut impl QueueRows,
    queue: &str,
    id: &MessageId,
    now: SystemTime,
) -> Result<bool, StoreError> {
    let Ok(seq) = id.seq() else { return Ok(false) };
    match rows.meta(queue, seq)? {
        Some(meta) if meta.state(micros(now)) == MessageState::Dead => {
            rows.delete(queue, seq)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// What a claim would hand out, deleted instead (in the same transaction: the payloads
/// read are local).
pub(crate) fn purge_due(
    rows: &mut impl QueueRows,
    queue: &str,
    max: usize,
    now: SystemTime,
) -> Result<usize, StoreError> {
    let due = claim(rows, queue, max, Duration::from_secs(1), now)?;
    for c in &due {
        ack(rows, queue, &c.lease)?;
    }
    Ok(due.len())
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
