//! The gateway's HTTP/1.1 client for upstreams, over TLS or cleartext, driven inside the
//! request's own task (every upstream but those with `http2 = true`).
//!
//! A proxied request costs two wake-ups here: the caller's bytes arrive, the upstream's
//! answer arrives. The request head is written with the body in one `write`, the
//! response head is parsed where it was read, and a body that came with its head (the
//! usual case for an API) goes back to the caller without another trip through the
//! runtime; larger bodies stream from the upstream connection as the caller reads them.
//! Connections are kept in a per-upstream pool, most recently used first, and reused only
//! after an exchange that is provably over on both sides: never after a request body (see
//! `Pool::exchange`), and only if nothing arrived while the connection was idle.
//!
//! Framing is strict both ways ([`parse`]): the gateway frames the body it sends itself
//! (`Content-Length`, or chunked when the caller's length is unknown), and a response whose
//! framing could be read two ways is refused with a 502 rather than guessed at.
//!
//! A request that fails on a reused connection before any byte of the answer arrived
//! (the upstream closed an idle connection at the moment it was taken) is sent again once
//! on a new connection, when its method is idempotent and its body can be sent again, as
//! nginx's `proxy_next_upstream error` does.
//!
//! The per-upstream connection cap and its wait queue ([`limit`]) live here too: the pool
//! counts its idle connections under the cap, and the gateway's other client (hyper's, for
//! `http2 = true` upstreams) takes a slot per request from the same cap.
//!
//! On a current-thread runtime (one worker), a request lets the tasks already ready run
//! before it takes a connection and writes, so that the writes of a busy moment reach the
//! upstream together (`batch`).
//!
//! An exchange reports its [`Progress`] (waiting for a connection, connecting, sending,
//! sent) to the gateway, which bounds it from outside and must tell whose time ran out.
//!
//! The modules: [`parse`] reads what the upstream sends, `write` puts the request on the
//! wire, `pool` keeps connections and runs one exchange, `conn` is one connection and
//! `body` a response body streamed from it.

mod batch;
mod body;
mod caller_body;
mod conn;
pub mod limit;
pub mod parse;
mod pool;
mod progress;
#[cfg(test)]
mod tests;
mod write;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;
use rustls::pki_types::ServerName;

pub use self::body::{BodyError, ResponseBody, Timed};
pub use self::caller_body::{CallerBody, CallerBodyError, TrailerFilter};
use self::limit::{ConnLimit, Saturated};
use self::parse::ProtocolError;
pub use self::pool::Pool;
pub use self::progress::{Progress, Stage};

/// Read granularity on upstream connections.
pub(crate) const READ_CHUNK: usize = 8 * 1024;
/// Request bytes gathered before a `write`: the head and a small body go out together.
pub(crate) const WRITE_COALESCE: usize = 64 * 1024;
/// A chunk's size line and the line end after its data, at most.
pub(crate) const CHUNK_FRAMING: usize = 16 + 2 + 2;

/// Where and how to connect, and how many idle connections to keep.
#[derive(Clone)]
pub struct PoolConfig {
    /// `host:port` of the upstream.
    pub address: String,
    /// For `https://` upstreams: the TLS client (its ALPN offers `http/1.1` only) and the
    /// name the certificate must have.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// The `Host` header sent upstream.
    pub host: String,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle: usize,
    /// The longest wait for the next bytes of a response body that streams.
    pub body_read_timeout: Duration,
    /// The longest a streaming response body may take, from its head to its last byte.
    pub body_timeout: Duration,
    /// The upstream's connection cap: idle connections count too.
    pub limit: Arc<ConnLimit>,
}

impl std::fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolConfig")
            .field("address", &self.address)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// The body of a request to the upstream.
pub enum RequestBody {
    /// The caller's body, streamed through within its limits.
    Stream(CallerBody),
    /// A body read whole first (a signature covers it).
    Buffered(Bytes),
}

/// Names the kind and size only: a body is the caller's data, never for a log.
impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stream(b) => write!(f, "RequestBody::Stream({:?})", b.size_hint().exact()),
            Self::Buffered(b) => write!(f, "RequestBody::Buffered({} bytes)", b.len()),
        }
    }
}

impl RequestBody {
    /// Whether the body can be sent again on a second connection.
    pub(crate) fn replayable(&self) -> bool {
        match self {
            Self::Stream(b) => b.is_end_stream(),
            Self::Buffered(_) => true,
        }
    }
}

/// Why [`Pool::send`] failed, and the caller's body when none of it was sent (no connection
/// could be had): the gateway can then still read it away beside its refusal.
#[derive(Debug)]
pub struct SendError {
    pub error: Error,
    pub unsent: Option<RequestBody>,
}

impl From<Error> for SendError {
    fn from(error: Error) -> Self {
        Self {
            error,
            unsent: None,
        }
    }
}

/// Why a request to the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("TLS: {0}")]
    Tls(io::Error),
    #[error("connection closed before the response was complete")]
    Closed,
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The caller's body could not be read; not the upstream's fault.
    #[error("reading the request body: {0}")]
    CallerBody(Box<dyn std::error::Error + Send + Sync>),
    /// The caller's body ended before (or went past) the length announced for it.
    #[error("the request body did not match its declared length")]
    BodyLength,
    /// Every connection the upstream may have is busy, and the wait for one failed.
    #[error("{0}")]
    Saturated(#[from] Saturated),
}
