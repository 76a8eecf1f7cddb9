//! idgate's incident detection (DORA's detection, classification and reporting of ICT
//! incidents, as far as the gateway sees them).
//!
//! The request path feeds cheap counters ([`feed`]); once a second a ticker drains them into
//! the detectors' sliding window ([`detect`]), whose rules open, update and close
//! [`incident::Incident`]s. Each change is written to the incident's own JSON file
//! ([`store`]) and the ones that matter are announced to a webhook ([`notify`]);
//! [`service`] runs it all and answers the admin listener; [`report`] renders an incident
//! for a compliance officer. `docs/incidents.md` describes the rules, fields and tools.

pub mod detect;
pub mod feed;
pub mod incident;
pub mod metrics;
pub mod notify;
pub mod report;
pub mod service;
pub mod store;

pub use detect::{AuditState, ChangeKind, Detector, Tick};
pub use feed::{BreakerEvent, Feed, RequestEvent};
pub use incident::{Incident, Millis, Rule, State};
pub use metrics::IncidentMetrics;
pub use service::{IncidentService, StartError};
pub use store::{Store, StoreError};
