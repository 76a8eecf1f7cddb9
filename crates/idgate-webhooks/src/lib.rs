//! Provider webhooks: what a provider posts to the gateway, kept and delivered to the
//! services that need it.
//!
//! - [`outbox`]: verified events in the state store's queues, one message per subscriber,
//!   sealed with AES-256-GCM at rest, held until their replay check passed.
//! - [`delivery`]: the process's deliverer, which claims messages with a lease and posts
//!   them to each subscriber over mutual TLS, signed (`idgate-signature`), retried with
//!   backoff until the event's maximum age, in order per session.
//! - [`metrics`]: deliveries by outcome and the outbox's depth.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod delivery;
pub mod metrics;
pub mod outbox;

pub use delivery::{Deliverer, Plan, Subscriber, SubscriberMask, SvidSource};
pub use metrics::DeliveryMetrics;
