//! Provider webhooks: what a provider posts to the gateway, checked before anything else
//! looks at it, then kept and delivered to the services that need it.
//!
//! - [`verify`]: each provider's signature scheme (Didit's three, Sumsub's digest, Veriff,
//!   Onfido, Persona), checked in constant time against the current secret and, during a
//!   rotation, the previous one; the signed timestamp against a tolerance; and the event's
//!   id, session id and type read from what the signature covers. Pure: no I/O, no clock
//!   of its own, bounded work on any input.
//! - [`outbox`]: verified events in the state store's queues, one message per subscriber,
//!   sealed with AES-256-GCM at rest, held until their replay check passed.
//! - [`intake`]: a verified event written, checked against replays, released — in an order
//!   that loses nothing when the gateway is killed at any point.
//! - [`delivery`]: the process's deliverer, which claims messages with a lease and posts
//!   them to each subscriber over mutual TLS, signed (`idgate-signature`), retried with
//!   backoff until the event's maximum age, in order per session.
//! - [`setup`]: the webhooks of a configuration, put into use.
//! - [`metrics`]: deliveries by outcome and the outbox's depth.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod delivery;
pub mod intake;
pub mod metrics;
pub mod outbox;
pub mod setup;
pub mod verify;

pub use delivery::{Deliverer, Plan, Subscriber, SubscriberMask, SvidSource};
pub use metrics::DeliveryMetrics;
pub use setup::{Endpoint, SetupError, Webhooks};
