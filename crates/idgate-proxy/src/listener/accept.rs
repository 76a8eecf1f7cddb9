//! The accept loop: each TCP connection is admitted (or closed) before any TLS.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::limits::{Admission, PerKey, RefusalLog, source_key};
use super::{ListenerShared, serve_connection};

/// Accepts connections until `stop` turns true; each connection is told to finish when it
/// does.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    mut stop: watch::Receiver<bool>,
) {
    let per_ip = PerKey::new(shared.config.max_connections_per_ip);
    let refusals = RefusalLog::default();
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = remote.ip().to_canonical();
        let source = source_key(ip);
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            shared
                .services
                .metrics
                .connection_refused("max_connections");
            refusals.refused(ip, "max_connections", "at accept");
            continue;
        };
        let Some(slot) = per_ip.acquire(&source) else {
            shared
                .services
                .metrics
                .connection_refused("max_connections_per_ip");
            refusals.refused(ip, "max_connections_per_ip", "at accept");
            continue;
        };
        let admission = Admission {
            _permit: permit,
            _slot: slot,
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            serve_connection(tcp, remote, shared, stop).await;
            drop(admission);
        });
    }
}
