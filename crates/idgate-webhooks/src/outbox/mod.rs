//! The outbox: verified events kept durably, one message per subscriber, in the state
//! store's queues (see `idgate_store::Queue`), sealed at rest ([`seal`]).
//!
//! Queues, per webhook and subscriber:
//!
//! | queue | holds |
//! |---|---|
//! | `webhook.WEBHOOK.SUBSCRIBER` | events to deliver, ordered by session id; dead letters |
//! | `webhook.WEBHOOK.SUBSCRIBER.delivered` | copies of delivered events, each until its retention ends |
//!
//! An event is written *held* (not deliverable before [`HOLD`] has passed) and released
//! once the replay check has passed; a replay's copies are deleted instead. A gateway that
//! dies between the two leaves the event held, and it is delivered when the hold ends: no
//! accepted event depends on a step after its write.

pub mod seal;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idgate_store::{MessageId, NewMessage, Queue, QueueName, StoreError};
use ring::digest::{SHA256, digest};

pub use seal::{Header, KeyError, OpenError, OutboxKeys, SealError, read_header};

/// How long a new event waits for its replay check before it may be delivered anyway: far
/// longer than the check takes (a store call), short enough that the event of a gateway
/// killed in between goes out soon after (and holds its session up no longer).
pub const HOLD: Duration = Duration::from_secs(5);

/// The suffix of the queue that keeps delivered events.
const DELIVERED: &str = ".delivered";

/// A subscriber's outbox queue.
pub fn queue(webhook: &str, subscriber: &str) -> Result<QueueName, StoreError> {
    QueueName::new(format!("webhook.{webhook}.{subscriber}"))
}

/// Where a subscriber's delivered events are kept for their retention.
pub fn delivered_queue(webhook: &str, subscriber: &str) -> Result<QueueName, StoreError> {
    QueueName::new(format!("webhook.{webhook}.{subscriber}{DELIVERED}"))
}

/// The idempotency key of an event, sent to subscribers as `idgate-event-id`: derived from
/// the provider's event id when it has one (so a provider's retry of the event gets the same
/// key), from the body otherwise. `evt_` and 32 hex digits.
pub fn event_key(webhook: &str, event_id: Option<&str>, body: &[u8]) -> String {
    let mut input = Vec::with_capacity(64 + body.len());
    input.extend_from_slice(b"idgate webhook event\0");
    input.extend_from_slice(webhook.as_bytes());
    match event_id {
        Some(id) => {
            input.extend_from_slice(b"\0id\0");
            input.extend_from_slice(id.as_bytes());
        }
        None => {
            input.extend_from_slice(b"\0body\0");
            input.extend_from_slice(body);
        }
    }
    let d = digest(&SHA256, &input);
    format!("evt_{}", idgate_codec::hex::encode(&d.as_ref()[..16]))
}

/// Why an event could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// A verified event, as written to each subscriber's queue.
#[derive(Debug, Clone, Copy)]
pub struct NewEvent<'a> {
    pub webhook: &'a str,
    pub key: &'a str,
    pub event_type: Option<&'a str>,
    /// Events of one session are delivered in the order they arrived.
    pub session: Option<&'a str>,
    pub body: &'a [u8],
}

/// A message written for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub queue: QueueName,
    pub id: MessageId,
}

/// Writes `event` to the queue of each of `subscribers` (names), held until `now + HOLD`.
/// On a failure, what was written is deleted again (as far as the store lets it).
pub async fn hold(
    store: &impl Queue,
    keys: &OutboxKeys,
    event: NewEvent<'_>,
    subscribers: &[&str],
    now: SystemTime,
) -> Result<Vec<Held>, OutboxError> {
    let mut held = Vec::with_capacity(subscribers.len());
    for subscriber in subscribers {
        match hold_one(store, keys, event, subscriber, now).await {
            Ok(h) => held.push(h),
            Err(e) => {
                discard(store, &held, now).await;
                return Err(e);
            }
        }
    }
    Ok(held)
}

async fn hold_one(
    store: &impl Queue,
    keys: &OutboxKeys,
    event: NewEvent<'_>,
    subscriber: &str,
    now: SystemTime,
) -> Result<Held, OutboxError> {
    let queue = queue(event.webhook, subscriber)?;
    let header = Header {
        webhook: event.webhook.to_owned(),
        subscriber: subscriber.to_owned(),
        queue: queue.as_str().to_owned(),
        key: String::new(),
        event: event.key.to_owned(),
        event_type: event.event_type.map(str::to_owned),
        received_at: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
    };
    let message = NewMessage {
        payload: keys.seal(header, event.body)?,
        order_key: event.session.map(str::to_owned),
        // Retries end by the event's age (the deliverer buries it), not by a count.
        max_attempts: u32::MAX,
        not_before: Some(now + HOLD),
    };
    let id = store.push(&queue, message, now).await?;
    Ok(Held { queue, id })
}

/// Makes held messages deliverable now.
pub async fn release(store: &impl Queue, held: &[Held], now: SystemTime) -> Result<(), StoreError> {
    for h in held {
        store.release(&h.queue, &h.id, now).await?;
    }
    Ok(())
}

/// Deletes held messages (a replay, or an event that could not be written whole). A
/// message the store cannot delete now is delivered when its hold ends, with the idempotency
/// key of the event it copies: subscribers that deduplicate see it once.
pub async fn discard(store: &impl Queue, held: &[Held], now: SystemTime) {
    for h in held {
        match store.delete_message(&h.queue, &h.id, now).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                queue = h.queue.as_str(),
                id = h.id.as_str(),
                "an outbox message to discard was already taken for delivery"
            ),
            Err(e) => tracing::warn!(
                queue = h.queue.as_str(),
                id = h.id.as_str(),
                error = %e,
                "an outbox message to discard could not be deleted; it is delivered when its hold ends"
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use idgate_store::{MemoryStore, MessageState};

    use super::*;

    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn the_idempotency_key_follows_the_event_id_or_else_the_body() {
        let a = event_key("didit", Some("evt-1"), b"{}");
        assert_eq!(a, event_key("didit", Some("evt-1"), b"{\"retry\":1}"));
        assert_ne!(a, event_key("didit", Some("evt-2"), b"{}"));
        assert_ne!(a, event_key("other", Some("evt-1"), b"{}"));
        assert_ne!(a, event_key("didit", None, b"{}"));
        assert_eq!(
            event_key("didit", None, b"x"),
            event_key("didit", None, b"x")
        );
        assert!(a.starts_with("evt_") && a.len() == 36, "{a}");
    }

    #[tokio::test]
    async fn an_event_is_held_per_subscriber_until_released_or_discarded() {
        let store = MemoryStore::new();
        let keys = OutboxKeys::from_keys(&[[3u8; 32]]).unwrap();
        let key = event_key("didit", Some("e1"), b"{}");
        let event = NewEvent {
            webhook: "didit",
            key: &key,
            event_type: Some("status.updated"),
            session: Some("s-1"),
            body: b"{\"status\":\"Approved\"}",
        };
        let held = hold(&store, &keys, event, &["kyc", "crm"], start())
            .await
            .unwrap();
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].queue.as_str(), "webhook.didit.kyc");
        let lease = Duration::from_secs(30);
        assert!(
            store
                .claim(&held[0].queue, 10, lease, start())
                .await
                .unwrap()
                .is_empty(),
            "held"
        );
        let (info, payload) = store
            .peek(&held[0].queue, &held[0].id, start())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            info.state,
            MessageState::Waiting {
                until: start() + HOLD
            }
        );
        assert_eq!(info.order_key.as_deref(), Some("s-1"));
        let (header, body) = keys.open("webhook.didit.kyc", &payload).unwrap();
        assert_eq!((header.event, body), (key.clone(), event.body.to_vec()));

        release(&store, &held[..1], start()).await.unwrap();
        discard(&store, &held[1..], start()).await;
        assert_eq!(
            store
                .claim(&held[0].queue, 10, lease, start())
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(
            store
                .peek(&held[1].queue, &held[1].id, start())
                .await
                .unwrap()
                .is_none()
        );
        // Unreleased, a held event is delivered when its hold ends.
        let later = hold(&store, &keys, event, &["crm"], start()).await.unwrap();
        assert_eq!(
            store
                .claim(&later[0].queue, 10, lease, start() + HOLD)
                .await
                .unwrap()
                .len(),
            1
        );
    }
}
