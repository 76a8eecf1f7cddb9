//! The public listener: TCP accept and admission ([`accept`]: connection caps, network
//! rules, a load balancer's PROXY header, load shedding, a place among the handshakes in
//! progress), the TLS handshake (where the client's SVID is verified, then its identity's
//! connection cap), then HTTP/1.1 or HTTP/2 on the connection, every request through the
//! pipeline. An HTTP/1.1 connection gets its HTTP state when its caller's first bytes arrive
//! ([`first_bytes`]). Refused connections are recorded in the audit trail at a bounded rate
//! ([`records`]). At shutdown, what `drain_timeout` leaves open is cut ([`cut`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use idgate_config::ListenerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::conn::{ConnInfo, LingerOnClose};
use crate::lingering_close::{Bounds, LingeringClose};
use crate::metrics::Metrics;
use crate::pipeline::handle;
use crate::send_timeout::{Activity, SendDeadline, Sending, StreamExecutor};
use crate::service::Services;
use crate::snapshot::Snapshot;
use cut::Requests;
use drive::{Ends, MIN_GRACE, drive, stopped};
use first_bytes::{Waited, first_bytes};
use limits::{Handshakes, Handshaking, PerKey, RefusalLog};
use records::RefusalRecords;

pub(crate) use accept::accept_loop;
pub(crate) use limits::LogBudget;

mod accept;
mod cut;
mod drive;
mod first_bytes;
mod limits;
mod proxy_header;
mod records;
mod shed;
mod woken;

/// Lines about failed handshakes: a burst at once (a few clients with a bad certificate
/// are each logged), then one a second, each saying how many were held back.
const HANDSHAKE_LOG_BURST: u32 = 20;

/// The listener's settings that do not need a new socket, with what is built from them:
/// a reload swaps them, and each new connection takes those in force when it arrives.
pub(crate) struct ListenerLive {
    pub(crate) config: ListenerConfig,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) http: HttpBuilders,
}

impl ListenerLive {
    pub(crate) fn new(
        config: ListenerConfig,
        acceptor: TlsAcceptor,
        metrics: &Arc<Metrics>,
    ) -> Self {
        Self {
            http: http_builder(&config, metrics),
            acceptor,
            config,
        }
    }
}

/// What every connection task of the listener shares.
pub(crate) struct ListenerShared {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) services: Arc<Services>,
    pub(crate) live: Arc<ArcSwap<ListenerLive>>,
    /// `max_connections` as the process started: the permits below.
    max_connections: usize,
    /// One permit per open connection, `max_connections` in all: when every permit is
    /// back, every connection has ended.
    pub(crate) connections: Arc<Semaphore>,
    /// Open connections per client address (`max_connections_per_ip`).
    per_ip: Arc<PerKey<std::net::IpAddr>>,
    /// Open connections per SPIFFE ID (`max_connections_per_identity`).
    per_identity: Arc<PerKey<idgate_tls::SpiffeId>>,
    /// Connections in their handshake (`max_handshakes`, `max_handshakes_per_ip`).
    handshakes: Handshakes,
    refusals: RefusalLog,
    /// The log lines of failed handshakes.
    handshake_log: LogBudget,
    /// The audit records of refused connections, at a bounded rate.
    records: RefusalRecords,
    /// Connections over `max_connections` being answered 503 (see `shed.rs`).
    shedding: Arc<Semaphore>,
    /// The requests in the pipeline, whose records are still to come.
    requests: Arc<Requests>,
    /// Raised when the drain gives up: every connection still open is closed at once.
    cut: watch::Sender<bool>,
}

impl ListenerShared {
    /// The connection caps are those of `live` now; they change only at restart.
    pub(crate) fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        services: Arc<Services>,
        live: Arc<ArcSwap<ListenerLive>>,
    ) -> Self {
        let config = live.load();
        Self {
            snapshot,
            services,
            max_connections: config.config.max_connections,
            connections: Arc::new(Semaphore::new(config.config.max_connections)),
            per_ip: PerKey::new(config.config.max_connections_per_ip),
            per_identity: PerKey::new(config.config.max_connections_per_identity),
            handshakes: Handshakes::new(),
            refusals: RefusalLog::default(),
            handshake_log: LogBudget::new(HANDSHAKE_LOG_BURST, 1),
            records: RefusalRecords::default(),
            shedding: Arc::new(Semaphore::new(shed::SHED_SLOTS)),
            live: live.clone(),
            requests: Arc::default(),
            cut: watch::Sender::new(false),
        }
    }

    /// Records a failed handshake in the audit trail, if there is one.
    fn audit_handshake(
        &self,
        remote: std::net::SocketAddr,
        via: Option<std::net::SocketAddr>,
        reason: &'static str,
        detail: Option<&str>,
    ) {
        self.audit_refused(crate::audit::Refused {
            remote: remote.ip(),
            port: Some(remote.port()),
            via,
            peer: None,
            handshake: true,
            reason,
            stage: "during TLS",
            detail,
        });
    }

    /// Waits until every connection and every request has ended (an HTTP/2 stream's task
    /// may outlive its connection by a moment), or `limit` has passed. Returns whether all
    /// ended. Refusals still counted for a summary record are then written to the trail.
    pub(crate) async fn drained(&self, limit: Duration) -> bool {
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        let ended = async {
            let Ok(_all) = self.connections.acquire_many(all).await else {
                return false;
            };
            self.requests.ended().await;
            true
        };
        let drained = tokio::time::timeout(limit, ended).await.unwrap_or(false);
        if let Some(trail) = &self.services.audit {
            self.records.flush(trail);
        }
        drained
    }

    /// Connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.connections.available_permits())
    }

    /// Requests in the pipeline now: answered requests whose response is still being sent
    /// are not counted (their records are made).
    pub(crate) fn requests_in_flight(&self) -> usize {
        self.requests.in_flight()
    }

    /// Closes every connection still open, with what it serves.
    pub(crate) fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Runs a connection's task until it ends, or until [`ListenerShared::cut`]. The task
    /// comes pinned where its caller holds it: taken by value, it would be kept twice in
    /// this future (as the argument, and moved into the `select!`), 3 KiB more for every
    /// open connection.
    async fn until_cut<F: Future<Output = ()>>(&self, task: std::pin::Pin<&mut F>) {
        let cut = stopped(self.cut.subscribe());
        tokio::select! {
            biased;
            () = task => {}
            () = cut => {}
        }
    }
}

/// One HTTP/1.1 and one HTTP/2 server configuration; ALPN picks between them per
/// connection, so no connection pays for sniffing its protocol.
pub(crate) struct HttpBuilders {
    h1: http1::Builder,
    h2: http2::Builder<StreamExecutor>,
}

fn http_builder(cfg: &ListenerConfig, metrics: &Arc<Metrics>) -> HttpBuilders {
    let mut h1 = http1::Builder::new();
    // No header read timeout: hyper would set a timer for every request's head and drop it
    // when the head is in (an allocation and the timer wheel twice a request). The
    // connection's task bounds the same wait, a request's head or an idle keep-alive
    // connection's next one, to `idle_timeout` after the last response, with one timer
    // moved only when it is due (`drive::Ends::idle`).
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .max_headers(cfg.max_header_count)
        .keep_alive(true);
    // Each stream's task is watched for a response the caller's window holds up.
    let mut h2 = http2::Builder::new(StreamExecutor {
        timeout: cfg.send_timeout,
        metrics: metrics.clone(),
    });
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .keep_alive_interval(Some(cfg.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    HttpBuilders { h1, h2 }
}

/// Serves one admitted connection. `remote` is the client's address: the peer's, or the one
/// a load balancer at `via` named in its PROXY header.
async fn serve_connection(
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    via: Option<std::net::SocketAddr>,
    handshaking: Handshaking,
    shared: Arc<ListenerShared>,
    stop: watch::Receiver<bool>,
) {
    let accepted_at = tokio::time::Instant::now();
    // The settings in force now serve this connection to its end.
    let live = shared.live.load_full();
    // The connection's task lives as long as the connection and is as large as the largest
    // state it passes through. The handshake's state (a TLS session being set up) is boxed
    // and freed once done; the TLS session and hyper's connection are boxed once each, so
    // the task holds pointers to them and not copies left behind by moves.
    let handshake = crate::boxed::pinned(|| {
        tokio::time::timeout(live.config.handshake_timeout, live.acceptor.accept(tcp))
    })
    .await;
    // The handshake is over, whichever way: its place goes to the next.
    drop(handshaking);
    let mut tls = match handshake {
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err(e)) => {
            let reason = idgate_tls::HandshakeFailure::of(&e);
            shared.services.metrics.tls_handshake_failed(reason);
            if let Some(incidents) = &shared.services.incidents {
                incidents.feed().tls_failure();
            }
            if let Some(also_failed) = shared.handshake_log.admit() {
                tracing::info!(target: "idgate::tls", remote = %remote.ip(), error = %e, %reason, also_failed, "TLS handshake refused");
            }
            shared.audit_handshake(remote, via, "tls_handshake", Some(&e.to_string()));
            return;
        }
        Err(_) => {
            let reason = idgate_tls::HandshakeFailure::Timeout;
            shared.services.metrics.tls_handshake_failed(reason);
            if let Some(incidents) = &shared.services.incidents {
                incidents.feed().tls_failure();
            }
            if let Some(also_failed) = shared.handshake_log.admit() {
                tracing::info!(target: "idgate::tls", remote = %remote.ip(), also_failed, "TLS handshake timed out");
            }
            shared.audit_handshake(remote, via, "tls_handshake_timeout", None);
            return;
        }
    };
    let chain = tls.get_ref().1.peer_certificates().unwrap_or_default();
    let leaf = chain.first();
    // Already verified in the handshake; this reads the ID and the expiry back out of the
    // leaf, parsed once.
    let (peer, not_after) = leaf.map_or((None, None), |leaf| {
        let (id, not_after) = idgate_tls::leaf_facts(leaf);
        (id.ok(), not_after)
    });
    // The trust the handshake found ends with the first certificate of the chain to expire:
    // an intermediate may end before the leaf it issued.
    let not_after = chain
        .iter()
        .skip(1)
        .filter_map(|cert| idgate_tls::not_after(cert))
        .fold(not_after, |end, t| Some(end.map_or(t, |e| e.min(t))));
    // One workload may hold only its share of the connections, whatever address it comes
    // from: many workloads behind one load balancer each get theirs.
    let _identity_slot = match &peer {
        Some(id) => match shared.per_identity.acquire(id) {
            Some(slot) => Some(slot),
            None => {
                shared.refuse(
                    remote.ip(),
                    "max_connections_per_identity",
                    "after the handshake",
                );
                tracing::debug!(peer = %id, "max_connections_per_identity reached: closed");
                let _ = tokio::time::timeout(live.config.send_timeout, tls.shutdown()).await;
                return;
            }
        },
        None => None,
    };
    let cert_thumbprint = leaf.map(|leaf| idgate_auth::issuer::cert_thumbprint(leaf));
    let expires_at = not_after.map(|t| {
        tokio::time::Instant::now()
            + t.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
    });
    let remote_ip = HeaderValue::from_str(&remote.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let conn = Arc::new(ConnInfo {
        peer,
        remote,
        via,
        remote_ip,
        trusted_proxy: live.config.trusted_proxies.contains(remote.ip()),
        cert_thumbprint,
        linger_on_close: LingerOnClose::default(),
    });

    // The listener offers h2 and http/1.1; a client that negotiated nothing speaks HTTP/1.1.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    // Requests are watched here, each until its response body ends: with none in progress
    // for idle_timeout, the connection goes away.
    let activity = Arc::new(Activity::new(accepted_at));
    let mut ends = Ends {
        expires_at,
        retire_at: live.config.max_connection_age.map(|age| accepted_at + age),
        idle: Some((activity.clone(), live.config.idle_timeout)),
        first_request: None,
        stop,
        grace: live.config.idle_timeout.max(MIN_GRACE),
        remote,
    };
    let mut seen = None;
    if !h2 {
        let by = tokio::time::Instant::now() + live.config.idle_timeout;
        match first_bytes(&tls, by, &mut ends).await {
            Waited::Arrived => {}
            Waited::Closed => return,
            Waited::GoingAway => {
                let _ = tokio::time::timeout(live.config.send_timeout, tls.shutdown()).await;
                return;
            }
        }
        // The first request's head must still be in within idle_timeout of the handshake,
        // and within header_timeout of its first bytes (a head trickled in byte by byte
        // holds a connection no longer).
        let flag = Arc::new(AtomicBool::new(false));
        let head_by = by.min(tokio::time::Instant::now() + live.config.header_timeout);
        ends.first_request = Some((flag.clone(), head_by));
        seen = Some(flag);
    }
    let service_shared = shared.clone();
    let closing = conn.clone();
    let service = counted(activity.clone(), move |req| {
        let snapshot = service_shared.snapshot.load_full();
        let services = service_shared.services.clone();
        let requests = service_shared.requests.clone();
        let conn = conn.clone();
        if let Some(seen) = &seen {
            seen.store(true, Ordering::Relaxed);
        }
        // hyper keeps the room for this future in a box of its own for the connection's
        // life: boxing the pipeline's (about 5 KiB) per request lets an idle connection hold
        // only a pointer's worth. The allocation comes from the thread's free list. Counted
        // until answered or dropped, for the drain.
        async move {
            requests
                .count(crate::boxed::pinned(|| {
                    handle(snapshot, conn, services, req)
                }))
                .await
        }
    });
    let io = SendDeadline::new(
        tls,
        live.config.send_timeout,
        shared.services.metrics.clone(),
        remote,
    )
    .telling(activity);
    if h2 {
        let connection =
            crate::boxed::pinned(|| live.http.h2.serve_connection(TokioIo::new(io), service));
        drive(connection, |c| c.graceful_shutdown(), ends).await;
    } else {
        // Outside the send deadline: lingering reads, and the write side is already shut.
        let io = TokioIo::new(LingeringClose::new(io, closing, Bounds::DEFAULT));
        let connection = crate::boxed::pinned(|| live.http.h1.serve_connection(io, service));
        drive(connection, |c| c.graceful_shutdown(), ends).await;
    }
}

/// A connection's hyper service: `answer` answers each request. Over HTTP/2 the request
/// counts as in progress from the moment hyper takes it (see [`Activity`]) until its
/// response body is dropped, so an HTTP/2 stream still sending its body keeps the connection
/// from being taken for idle. It is begun here, in the connection's own poll where hyper
/// takes the request, and not in the stream's task: that may first run after the connection
/// has been checked for idleness in the same wake-up, which would then see nothing in
/// flight and send away (or close) a connection with a request on its way.
fn counted<A, F, B>(
    activity: Arc<Activity>,
    answer: A,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<Sending<B>>,
    Error = Infallible,
    Future: Send + 'static,
>
where
    A: Fn(http::Request<hyper::body::Incoming>) -> F,
    F: Future<Output = http::Response<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
{
    service_fn(move |req| {
        let request = Some(activity.clone().begin());
        let answered = answer(req);
        async move { Ok(answered.await.map(|body| Sending::new(body, request))) }
    })
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use http_body_util::Full;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::*;
    use crate::send_timeout::StreamExecutor;

    /// A client's bytes: its preface at once, then a request's HEADERS that can be read from
    /// `release` on. Nothing wakes a reader: the connection hears the request when its idle
    /// check wakes it, as a request that arrives with the idle tick does.
    struct Client {
        preface: Vec<u8>,
        request: Vec<u8>,
        release: tokio::time::Instant,
    }

    impl AsyncRead for Client {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let this = self.get_mut();
            let next = if !this.preface.is_empty() {
                &mut this.preface
            } else if !this.request.is_empty() && tokio::time::Instant::now() >= this.release {
                &mut this.request
            } else {
                return Poll::Pending;
            };
            let n = next.len().min(buf.remaining());
            buf.put_slice(&next[..n]);
            next.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Client {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn an_http2_request_taken_as_the_connection_goes_idle_keeps_it() {
        let idle = Duration::from_millis(400);
        let since = tokio::time::Instant::now();
        let activity = Arc::new(Activity::new(since));
        let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        // GET https / on stream 1, ending the stream and its headers.
        let request = vec![0, 0, 3, 1, 5, 0, 0, 0, 1, 0x82, 0x87, 0x84];
        let metrics = Arc::new(Metrics::new());
        let remote: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        let io = SendDeadline::new(
            Client {
                preface,
                request,
                release: since + idle,
            },
            Duration::from_secs(30),
            metrics.clone(),
            remote,
        )
        .telling(activity.clone());
        let answering = Arc::new(tokio::sync::Notify::new());
        let answered = answering.clone();
        // The request is being forwarded: its answer is still to come.
        let service = counted(activity.clone(), move |_| {
            let answering = answering.clone();
            async move {
                answering.notify_one();
                std::future::pending::<http::Response<Full<Bytes>>>().await
            }
        });
        let builder = http2::Builder::new(StreamExecutor {
            timeout: Duration::from_secs(30),
            metrics,
        });
        let connection = Box::pin(builder.serve_connection(TokioIo::new(io), service));
        let (_stop_tx, stop) = watch::channel(false);
        let told = Arc::new(AtomicBool::new(false));
        let told_too = told.clone();
        let ends = Ends {
            idle: Some((activity, idle)),
            first_request: None,
            expires_at: None,
            retire_at: None,
            stop,
            grace: MIN_GRACE,
            remote,
        };
        let driven = tokio::spawn(drive(
            connection,
            move |c| {
                told_too.store(true, Ordering::SeqCst);
                c.graceful_shutdown();
            },
            ends,
        ));
        tokio::time::timeout(Duration::from_secs(10), answered.notified())
            .await
            .expect("the request never reached its handler");
        assert!(
            !told.load(Ordering::SeqCst),
            "the connection was sent away with a request in flight"
        );
        assert!(!driven.is_finished(), "the connection was closed");
        driven.abort();
    }
}
