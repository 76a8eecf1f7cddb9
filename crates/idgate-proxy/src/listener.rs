//! The public listener: TCP accept, the TLS handshake (where the client's SVID is verified),
//! then HTTP/1.1 or HTTP/2 on the connection, every request through the pipeline.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use idgate_config::ListenerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::pipeline::{ConnInfo, Services, handle};
use crate::snapshot::Snapshot;

/// What every connection task of the listener shares.
pub(crate) struct ListenerShared {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) services: Arc<Services>,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) http: HttpBuilders,
    pub(crate) config: ListenerConfig,
}

/// One HTTP/1.1 and one HTTP/2 server configuration; ALPN picks between them per
/// connection, so no connection pays for sniffing its protocol.
pub(crate) struct HttpBuilders {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
}

pub(crate) fn http_builder(cfg: &ListenerConfig) -> HttpBuilders {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        // Also bounds how long an idle keep-alive connection may wait for its next request.
        .header_read_timeout(cfg.idle_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(100)
        .keep_alive_interval(Some(cfg.idle_timeout))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    HttpBuilders { h1, h2 }
}

/// Accepts connections until `stop` turns true.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
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
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(remote = %remote.ip(), "connection limit reached; closing new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            serve_connection(tcp, remote, shared, watcher).await;
            drop(permit);
        });
    }
}

async fn serve_connection(
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    shared: Arc<ListenerShared>,
    watcher: Watcher,
) {
    let handshake =
        tokio::time::timeout(shared.config.handshake_timeout, shared.acceptor.accept(tcp)).await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(target: "idgate::tls", remote = %remote.ip(), error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            tracing::info!(target: "idgate::tls", remote = %remote.ip(), "TLS handshake timed out");
            return;
        }
    };
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    // Already verified in the handshake; this reads the ID back out of the leaf.
    let peer = leaf.and_then(|leaf| idgate_tls::leaf_spiffe_id(leaf).ok());
    let cert_thumbprint = leaf.map(|leaf| idgate_auth::issuer::cert_thumbprint(leaf));
    let expires_in = leaf.and_then(|leaf| idgate_tls::not_after(leaf)).map(|t| {
        t.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
    });
    let remote_ip = HeaderValue::from_str(&remote.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let conn = Arc::new(ConnInfo {
        peer,
        remote,
        remote_ip,
        cert_thumbprint,
    });

    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let snapshot = service_shared.snapshot.load_full();
        let services = service_shared.services.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(snapshot, conn, services, req).await) }
    });
    // The listener offers h2 and http/1.1; a client that negotiated nothing speaks HTTP/1.1.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if h2 {
        let connection = shared.http.h2.serve_connection(io, service);
        drive(watcher.watch(connection), expires_in, remote).await;
    } else {
        let connection = shared.http.h1.serve_connection(io, service);
        drive(watcher.watch(connection), expires_in, remote).await;
    }
}

/// Runs a connection to its end. A connection speaks for its certificate only while the
/// certificate is valid: a keep-alive or HTTP/2 connection is closed when its client SVID
/// expires.
async fn drive<E: std::fmt::Display>(
    connection: impl Future<Output = Result<(), E>>,
    expires_in: Option<std::time::Duration>,
    remote: std::net::SocketAddr,
) {
    let expiry = async {
        match expires_in {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                tracing::debug!(remote = %remote.ip(), error = %e, "connection ended with an error");
            }
        }
        () = expiry => {
            tracing::info!(target: "idgate::tls", remote = %remote.ip(), "client certificate expired: connection closed");
        }
    }
}
