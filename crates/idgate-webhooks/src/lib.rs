//! Provider webhooks: what a provider posts to the gateway, checked before anything else
//! looks at it.
//!
//! - [`verify`]: each provider's signature scheme (Didit's three, Sumsub's digest, Veriff,
//!   Onfido, Persona), checked in constant time against the current secret and, during a
//!   rotation, the previous one; the signed timestamp against a tolerance; and the event's
//!   id, session id and type read from what the signature covers. Pure: no I/O, no clock
//!   of its own, bounded work on any input.

pub mod verify;
