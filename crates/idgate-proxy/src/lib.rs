//! The idgate proxy: the public listener, the request pipeline (see [`pipeline`]), the
//! upstream client, the admin listener and reloads.

pub mod access_log;
pub mod admin;
pub mod authn;
pub mod credential;
pub mod ctx;
mod forward;
pub mod gateway;
pub mod h1;
pub mod limit;
mod lingering_close;
pub mod listener;
pub mod metrics;
pub mod oauth2;
pub mod path;
pub mod pipeline;
pub mod problem;
pub mod routes;
mod send_timeout;
pub mod snapshot;
pub mod token_endpoint;
pub mod upstream;

pub use gateway::{Bound, Gateway};
pub use problem::Refusal;
