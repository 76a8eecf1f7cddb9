//! The listener: TCP accept, the TLS handshake when configured, then HTTP/1.1 or HTTP/2
//! (ALPN) on each connection, every request through [`crate::api::handle`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::api::{App, handle};
use crate::{MockError, TlsFiles};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutting down waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, MockError> {
    let bad = |path: &Path, reason: String| MockError::TlsFile {
        path: path.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert_chain)
        .map_err(|e| bad(&files.cert_chain, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert_chain, format!("bad PEM: {e}")))?;
    if chain.is_empty() {
        return Err(bad(
            &files.cert_chain,
            "no CERTIFICATE block found".to_owned(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| MockError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| MockError::Tls(format!("certificate and key do not fit: {e}")))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    b
}

/// Accepts connections until `stop` turns true, then drains in-flight requests.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let http = Arc::new(http_builder());
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let (tls, app, http) = (tls.clone(), app.clone(), http.clone());
        tokio::spawn(serve_connection(tcp, remote, tls, app, http, watcher));
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time");
    }
}

async fn serve_connection(
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<TlsAcceptor>,
    app: Arc<App>,
    http: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) {
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(handle(app, req).await) }
    });
    let result = match tls {
        Some(acceptor) => {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(remote = %remote.ip(), error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(remote = %remote.ip(), "TLS handshake timed out");
                    return;
                }
            };
            watcher
                .watch(http.serve_connection(TokioIo::new(stream), service))
                .await
        }
        None => {
            watcher
                .watch(http.serve_connection(TokioIo::new(tcp), service))
                .await
        }
    };
    if let Err(e) = result {
        tracing::debug!(remote = %remote.ip(), error = %e, "connection ended with an error");
    }
}
