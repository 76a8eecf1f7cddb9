//! The idgate proxy: the public listener, the request pipeline (see [`pipeline`]), the
//! upstream client, the admin listener and reloads.

pub mod access_log;
pub mod admin;
mod admission;
pub mod audit;
pub mod authn;
pub mod body;
mod boxed;
pub mod checks;
pub mod conn;
pub mod ctx;
mod fallback;
pub mod fallback_cache;
mod faults;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod guards;
mod header_set;
mod lifecycle;
pub mod limit_state;
mod lingering_close;
pub mod listener;
mod lockout;
pub mod masking;
pub mod metrics;
pub mod path;
pub mod pipeline;
pub mod problem;
pub mod proxy_protocol;
mod reload;
pub mod request_id;
pub mod resilience;
pub mod routes;
mod send_timeout;
pub mod service;
mod siem;
pub mod snapshot;
pub mod state;
pub mod token_endpoint;
pub mod upstream;
mod webhook_endpoint;
pub mod webhooks;
mod workload_jwt;

pub use gateway::{Bound, Gateway};
pub use problem::Refusal;
