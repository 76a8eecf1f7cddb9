//! A durable queue with leases (the webhook outbox): push, claim for a while, then ack, or
//! nack to retry later; a message that used up its attempts goes to the dead letters.
//!
//! The logic is written once over [`QueueRows`] (in `rows`), which each backend provides
//! inside one lock or write transaction.

use std::fmt;
use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::StoreError;
use crate::types::QueueName;

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
    /// When its current run of attempts began: when it was pushed, or when it was last
    /// revived (a retry policy's maximum age counts from then).
    pub attempts_since: SystemTime,
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
    /// When its current run of attempts began: when it was pushed, or when it was last
    /// revived.
    pub attempts_since: SystemTime,
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

/// What the payloads of one claim may add up to before a networked backend (Redis) stops
/// handing out more: a claim of many large events would otherwise be one long answer.
pub const CLAIM_BYTES: usize = 4 << 20;

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
    /// lease ran out on its last attempt goes to the dead letters instead. A backend that
    /// sends payloads over the network hands out fewer once they add up to
    /// [`CLAIM_BYTES`] (always at least one), so that a claim's answer stays short.
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

    /// Makes a dead letter claimable again at `now` with its attempts reset, its run of
    /// attempts starting at `now` ([`Claimed::attempts_since`]); `false` when `id` is not a
    /// dead letter.
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

    /// Deletes a dead letter, checked in the same step; `false` when `id` is not (or no
    /// longer) one: a message revived since it was listed stays.
    fn delete_dead(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes up to `max` claimable messages, oldest first, without reading their payloads
    /// (a queue of copies, each kept until it comes due); how many went.
    fn purge_due(
        &self,
        queue: &QueueName,
        max: usize,
        now: SystemTime,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send;

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

mod rows;

pub(crate) use rows::{
    Meta, QueueRows, ReadQueueRows, ack, bury, claim, dead_letters, delete_dead, delete_message,
    info, messages, nack, peek, purge_due, push, release, revive, stats,
};

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
