//! Taking a verified event in: written to the outbox for each subscriber that wants it,
//! then checked against replays, then released for delivery — in that order, so that a
//! gateway killed at any point either kept the event or let the provider's retry keep it:
//!
//! ```text
//! hold (write, not deliverable yet) ──▶ replay check (nonce) ──▶ fresh:  release ──▶ 2xx
//!                                                            └─▶ replay: discard ──▶ 401
//! ```
//!
//! - killed before the write: nothing kept, no nonce; the provider's retry is fresh;
//! - killed after the write, before the nonce: the held copy is delivered when its hold
//!   ends, and the retry writes another with the same idempotency key (a duplicate that
//!   subscribers drop);
//! - killed after the nonce: the event is kept (released, or delivered when its hold ends);
//!   the retry is refused as a replay, which is right: the event is in.
//!
//! The write is followed by a record of each subscriber written for (see the subscriber
//! registry of `delivery`), so that an event written for a subscriber a reload removed
//! meanwhile is still found, purged or delivered; it is part of the write.
//!
//! A store that fails the write answers 5xx with nothing kept (what was held is discarded),
//! so the provider's retry is taken as new. One that fails the replay check answers 5xx too,
//! but keeps what it held: the check may have been recorded all the same, and the retry
//! refused as a replay; the held copies are delivered when their hold ends.

use std::time::SystemTime;

use idgate_store::{Nonce, Nonces, Queue, StoreError};
use ring::digest::{SHA256, digest};

use crate::delivery;
use crate::outbox::{self, NewEvent, OutboxError};
use crate::setup::Endpoint;

/// What the verifier read from a genuine event.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    pub event_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
    /// What makes this event, or this delivery of it, unique (an event id, a signature).
    pub replay_key: &'a str,
}

/// What became of a genuine event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Intake {
    /// Kept for every subscriber that wants it (none may).
    Accepted {
        /// The idempotency key subscribers get as `idgate-event-id`.
        key: String,
        subscribers: usize,
    },
    /// Seen within the replay window: refused, nothing kept.
    Replayed,
}

/// Why an event could not be taken in; the provider should retry.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the event could not be written to the outbox: {0}")]
    Outbox(#[from] OutboxError),
    #[error("the replay check could not be made: {0}")]
    Nonce(StoreError),
}

/// The nonce of an event: the webhook's name and a digest of its replay key (which may be
/// long, or hold characters a key may not).
fn nonce(endpoint: &Endpoint, replay_key: &str) -> Result<Nonce, StoreError> {
    let d = digest(&SHA256, replay_key.as_bytes());
    Nonce::new(format!(
        "webhook:{}:{}",
        endpoint.name,
        idgate_codec::hex::encode(&d.as_ref()[..16])
    ))
}

/// Takes a verified event in; see the module documentation for the order of the steps.
pub async fn accept<S: Queue + Nonces>(
    store: &S,
    endpoint: &Endpoint,
    event: Event<'_>,
    body: &[u8],
    now: SystemTime,
) -> Result<Intake, IntakeError> {
    let key = outbox::event_key(&endpoint.name, event.event_id, body);
    let subscribers = endpoint.subscribers_for(event.event_type);
    let held = outbox::hold(
        store,
        &endpoint.keys,
        NewEvent {
            webhook: &endpoint.name,
            key: &key,
            event_type: event.event_type,
            session: event.session_id,
            body,
        },
        &subscribers,
        now,
    )
    .await?;
    if let Err(e) =
        delivery::record_written(store, &endpoint.name, &subscribers, endpoint.keep, now).await
    {
        outbox::discard(store, &held, now).await;
        return Err(IntakeError::Outbox(e.into()));
    }
    let nonce = nonce(endpoint, event.replay_key).map_err(IntakeError::Nonce)?;
    match store
        .insert_if_absent(&nonce, endpoint.replay_window, now)
        .await
    {
        Ok(true) => {
            if let Err(e) = outbox::release(store, &held, now).await {
                // Kept all the same: delivered once its hold ends.
                tracing::warn!(webhook = &*endpoint.name, error = %e, "a webhook event could not be released at once; it is delivered when its hold ends");
            }
            Ok(Intake::Accepted {
                key,
                subscribers: held.len(),
            })
        }
        Ok(false) => {
            outbox::discard(store, &held, now).await;
            Ok(Intake::Replayed)
        }
        // Refused before it was made: the store holds no nonce, so the held copies go (a
        // replay sent while the store refuses writes is never delivered), and the
        // provider's retry is checked anew.
        Err(e) if never_written(&e) => {
            outbox::discard(store, &held, now).await;
            Err(IntakeError::Nonce(e))
        }
        // The insert may have been applied all the same (an answer that came too late), and
        // then the provider's retry is refused as a replay: the held copies stay, to be
        // delivered when their hold ends. At worst the event arrives twice, under one
        // idempotency key; it is never lost.
        Err(e) => Err(IntakeError::Nonce(e)),
    }
}

/// Whether the store refused a write without making it: a redb file with too many writes
/// waiting, a full or read-only store, a key it cannot hold. Anything else (a timeout, an
/// I/O error) may have been applied.
fn never_written(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Overloaded { .. }
            | StoreError::Full { .. }
            | StoreError::ReadOnly
            | StoreError::InvalidKey { .. }
    )
}

#[cfg(test)]
mod tests;
