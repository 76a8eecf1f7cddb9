//! An HTTP/1.1 connection between its handshake and its caller's first bytes: it holds its
//! TLS session and nothing of HTTP yet.

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::drive::Ends;

/// How the wait for an HTTP/1.1 connection's first bytes ended.
pub(super) enum Waited {
    /// Bytes to read (or the caller's end of the stream): hyper takes over.
    Arrived,
    /// Silent past `idle_timeout`, its certificate expired, or the socket failed: closed
    /// at once, as an idle connection is closed (`drive::Ends::idle`).
    Closed,
    /// Shutdown or `max_connection_age`: closed cleanly, as hyper closes an idle connection
    /// that is told to finish.
    GoingAway,
}

/// Waits, holding no HTTP state, for an HTTP/1.1 caller's first bytes after the handshake.
/// hyper's read and write buffers (8 KiB each) are made once there is something to read, so
/// a connection that stays silent costs its TLS session alone. `by` is when the first
/// request's head must be in, as the connection's idle watch would have it.
pub(super) async fn first_bytes(
    tls: &TlsStream<TcpStream>,
    by: tokio::time::Instant,
    ends: &mut Ends,
) -> Waited {
    let (tcp, session) = tls.get_ref();
    // Plaintext that came with the handshake, or the caller's close_notify, is already in
    // rustls and no socket readiness will announce it.
    if !session.wants_read() {
        return Waited::Arrived;
    }
    tokio::select! {
        biased;
        ready = tcp.readable() => if ready.is_ok() { Waited::Arrived } else { Waited::Closed },
        () = tokio::time::sleep_until(by) => Waited::Closed,
        () = until(ends.expires_at) => {
            tracing::info!(target: "idgate::tls", remote = %ends.remote.ip(), "client certificate expired: connection closed");
            Waited::Closed
        }
        () = until(ends.retire_at) => Waited::GoingAway,
        _ = ends.stop.wait_for(|stop| *stop) => Waited::GoingAway,
    }
}

/// Sleeps until `at`, or for ever.
pub(super) async fn until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
