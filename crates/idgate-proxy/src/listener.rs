//! The public listener: TCP accept, the TLS handshake (where the client's SVID is verified),
//! then HTTP/1.1 or HTTP/2 on the connection, every request through the pipeline. An
//! HTTP/1.1 connection gets its HTTP state when its caller's first bytes arrive
//! ([`first_bytes`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use idgate_config::ListenerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::conn::{ConnInfo, LingerOnClose};
use crate::lingering_close::{Bounds, LingeringClose};
use crate::metrics::Metrics;
use crate::pipeline::handle;
use crate::send_timeout::{SendDeadline, Sending, StreamExecutor};
use crate::service::Services;
use crate::snapshot::Snapshot;
use first_bytes::{Waited, first_bytes, until};

mod first_bytes;

/// What every connection task of the listener shares.
pub(crate) struct ListenerShared {
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) services: Arc<Services>,
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) http: HttpBuilders,
    pub(crate) config: ListenerConfig,
    /// One permit per open connection, `max_connections` in all: when every permit is
    /// back, every connection has ended.
    pub(crate) connections: Arc<Semaphore>,
}

impl ListenerShared {
    pub(crate) fn new(
        snapshot: Arc<ArcSwap<Snapshot>>,
        services: Arc<Services>,
        acceptor: TlsAcceptor,
        config: ListenerConfig,
    ) -> Self {
        Self {
            http: http_builder(&config, &services.metrics),
            snapshot,
            services,
            acceptor,
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config,
        }
    }

    /// Waits until every connection has ended, or `limit` has passed. Returns whether all
    /// ended.
    pub(crate) async fn drained(&self, limit: Duration) -> bool {
        let all = u32::try_from(self.config.max_connections).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout(limit, self.connections.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }
}

/// What one source is, for `max_connections_per_ip`: an IPv4 address, or an IPv6 /64 (the
/// smallest network one host is given, whose addresses it can use at will).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

/// Open connections per client address, so that one source cannot take every connection.
struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count; given back on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        // Nothing panics while the table is held; were it poisoned, counting goes on.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// What a connection holds while it is open.
struct Admission {
    _permit: OwnedSemaphorePermit,
    _slot: IpSlot,
}

/// One HTTP/1.1 and one HTTP/2 server configuration; ALPN picks between them per
/// connection, so no connection pays for sniffing its protocol.
pub(crate) struct HttpBuilders {
    h1: http1::Builder,
    h2: http2::Builder<StreamExecutor>,
}

fn http_builder(cfg: &ListenerConfig, metrics: &Arc<Metrics>) -> HttpBuilders {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        // Also bounds how long an idle keep-alive connection may wait for its next request.
        .header_read_timeout(cfg.idle_timeout)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    // Each stream's task is watched for a response the caller's window holds up.
    let mut h2 = http2::Builder::new(StreamExecutor {
        timeout: cfg.send_timeout,
        metrics: metrics.clone(),
    });
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(100)
        .keep_alive_interval(Some(cfg.idle_timeout))
        .keep_alive_timeout(Duration::from_secs(20));
    HttpBuilders { h1, h2 }
}

/// Logs a refused connection at most once a second, so that a flood cannot flood the log.
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn refused(&mut self, remote: IpAddr, why: &'static str) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            remote = %remote,
            limit = why,
            also_refused = self.suppressed,
            "connection refused at accept: limit reached"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Accepts connections until `stop` turns true; each connection is told to finish when it
/// does.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    mut stop: watch::Receiver<bool>,
) {
    let per_ip = Arc::new(PerIp {
        limit: shared.config.max_connections_per_ip,
        open: Mutex::new(HashMap::new()),
    });
    let mut refusals = RefusalLog {
        last: None,
        suppressed: 0,
    };
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
            refusals.refused(ip, "max_connections");
            continue;
        };
        let Some(slot) = per_ip.acquire(source) else {
            shared
                .services
                .metrics
                .connection_refused("max_connections_per_ip");
            refusals.refused(ip, "max_connections_per_ip");
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

async fn serve_connection(
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    shared: Arc<ListenerShared>,
    stop: watch::Receiver<bool>,
) {
    let accepted_at = tokio::time::Instant::now();
    // The connection's task lives as long as the connection and is as large as the largest
    // state it passes through. The handshake's state (a TLS session being set up) is boxed
    // and freed once done; the TLS session and hyper's connection are boxed once each, so
    // the task holds pointers to them and not copies left behind by moves.
    let handshake = Box::pin(tokio::time::timeout(
        shared.config.handshake_timeout,
        shared.acceptor.accept(tcp),
    ))
    .await;
    let mut tls = match handshake {
        Ok(Ok(tls)) => Box::new(tls),
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
    let expires_at = leaf.and_then(|leaf| idgate_tls::not_after(leaf)).map(|t| {
        tokio::time::Instant::now()
            + t.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
    });
    let remote_ip = HeaderValue::from_str(&remote.ip().to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let conn = Arc::new(ConnInfo {
        peer,
        remote,
        remote_ip,
        trusted_proxy: shared.config.trusted_proxies.contains(remote.ip()),
        cert_thumbprint,
        linger_on_close: LingerOnClose::default(),
    });

    // The listener offers h2 and http/1.1; a client that negotiated nothing speaks HTTP/1.1.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    // HTTP/1.1 idleness is hyper's header read timeout; HTTP/2 requests are watched here.
    let activity = h2.then(|| Arc::new(Activity::new(accepted_at)));
    let mut ends = Ends {
        expires_at,
        retire_at: shared
            .config
            .max_connection_age
            .map(|age| accepted_at + age),
        idle: activity.clone().map(|a| (a, shared.config.idle_timeout)),
        first_request: None,
        stop,
        grace: shared.config.idle_timeout.max(MIN_GRACE),
        remote,
    };
    let mut seen = None;
    if !h2 {
        let by = tokio::time::Instant::now() + shared.config.idle_timeout;
        match first_bytes(&tls, by, &mut ends).await {
            Waited::Arrived => {}
            Waited::Closed => return,
            Waited::GoingAway => {
                let _ = tokio::time::timeout(shared.config.send_timeout, tls.shutdown()).await;
                return;
            }
        }
        // hyper's header read timeout starts now: the first request's head must still be
        // in within idle_timeout of the handshake.
        let flag = Arc::new(AtomicBool::new(false));
        ends.first_request = Some((flag.clone(), by));
        seen = Some(flag);
    }
    let service_shared = shared.clone();
    let service_activity = activity;
    let closing = conn.clone();
    let service = service_fn(move |req| {
        let snapshot = service_shared.snapshot.load_full();
        let services = service_shared.services.clone();
        let conn = conn.clone();
        let activity = service_activity.clone();
        if let Some(seen) = &seen {
            seen.store(true, Ordering::Relaxed);
        }
        async move {
            let _request = activity.as_ref().map(|a| a.begin());
            // hyper keeps the room for this future in a box of its own for the connection's
            // life: boxing the pipeline's (about 5 KiB) per request lets an idle connection
            // hold only a pointer's worth. The allocation comes from the thread's free list.
            let resp = Box::pin(handle(snapshot, conn, services, req)).await;
            Ok::<_, Infallible>(resp.map(Sending::new))
        }
    });
    let io = SendDeadline::new(
        tls,
        shared.config.send_timeout,
        shared.services.metrics.clone(),
        remote,
    );
    if h2 {
        let connection = Box::pin(shared.http.h2.serve_connection(TokioIo::new(io), service));
        drive(connection, |c| c.graceful_shutdown(), ends).await;
    } else {
        // Outside the send deadline: lingering reads, and the write side is already shut.
        let io = TokioIo::new(LingeringClose::new(io, closing, Bounds::DEFAULT));
        let connection = Box::pin(shared.http.h1.serve_connection(io, service));
        drive(connection, |c| c.graceful_shutdown(), ends).await;
    }
}

/// Requests of an HTTP/2 connection in the pipeline, and when one last started or ended.
struct Activity {
    since: tokio::time::Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `since`.
    last: AtomicU64,
}

/// A request in the pipeline; its end is activity too.
struct InFlight<'a>(&'a Activity);

impl Activity {
    fn new(since: tokio::time::Instant) -> Self {
        Self {
            since,
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self)
    }

    /// Whether nothing has been in the pipeline for `idle`.
    fn idle_for(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self
                .since
                .elapsed()
                .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
                >= idle
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What ends a connection besides its client.
struct Ends {
    /// HTTP/2: with no request for this long (keep-alive pings do not count), the
    /// connection is told to go away.
    idle: Option<(Arc<Activity>, Duration)>,
    /// HTTP/1.1 whose hyper started after the caller's first bytes: set once a request has
    /// begun, and the connection is closed if none has by then.
    first_request: Option<(Arc<AtomicBool>, tokio::time::Instant)>,
    /// The client certificate's expiry: the connection is closed then, in-flight or not.
    expires_at: Option<tokio::time::Instant>,
    /// `max_connection_age`: the connection finishes its in-flight requests and closes.
    retire_at: Option<tokio::time::Instant>,
    /// Shutdown: like retirement.
    stop: watch::Receiver<bool>,
    /// How long a retired or idle connection may take to finish what it has in flight.
    grace: Duration,
    remote: std::net::SocketAddr,
}

/// The least time a retired connection gets to finish its in-flight requests.
const MIN_GRACE: Duration = Duration::from_secs(30);

/// Runs a connection to its end. A connection speaks for its certificate only while the
/// certificate is valid: a keep-alive or HTTP/2 connection is closed when its client SVID
/// expires. At `max_connection_age` or shutdown it is shut down gracefully: HTTP/1.1 closes
/// after the response in flight, HTTP/2 sends GOAWAY and finishes its open streams.
async fn drive<C, E>(mut connection: Pin<Box<C>>, graceful: impl Fn(Pin<&mut C>), ends: Ends)
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Ends {
        expires_at,
        retire_at,
        idle,
        first_request,
        mut stop,
        grace,
        remote,
    } = ends;
    // Armed when the connection is told to finish: a client that keeps a response stalled
    // (an HTTP/2 window it never opens) must not hold the connection past it.
    let grace_end = tokio::time::sleep(Duration::from_secs(30 * 24 * 3600));
    let mut grace_end = pin!(grace_end);
    let idle_check = async {
        match &idle {
            Some((activity, limit)) => {
                let mut tick = tokio::time::interval((*limit / 4).max(Duration::from_millis(250)));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if activity.idle_for(*limit) {
                        return;
                    }
                }
            }
            None => std::future::pending().await,
        }
    };
    let mut idle_check = pin!(idle_check);
    let mut expiry = pin!(until(expires_at));
    let mut retire = pin!(until(retire_at));
    let mut first_request_due = first_request.is_some();
    let first_request = async {
        match &first_request {
            Some((seen, by)) => {
                tokio::time::sleep_until(*by).await;
                seen.load(Ordering::Relaxed)
            }
            None => std::future::pending().await,
        }
    };
    let mut first_request = pin!(first_request);
    let mut winding_down = false;
    if *stop.borrow_and_update() {
        graceful(connection.as_mut());
        winding_down = true;
    }
    loop {
        tokio::select! {
            // The connection first: it is what every wake-up is almost always for.
            biased;
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(remote = %remote.ip(), error = %e, "connection ended with an error");
                }
                return;
            }
            seen = &mut first_request, if first_request_due => {
                if !seen {
                    tracing::debug!(remote = %remote.ip(), "no request head within idle_timeout of the handshake: closed");
                    return;
                }
                first_request_due = false;
            }
            () = &mut expiry => {
                tracing::info!(target: "idgate::tls", remote = %remote.ip(), "client certificate expired: connection closed");
                return;
            }
            () = &mut idle_check, if !winding_down => {
                tracing::debug!(remote = %remote.ip(), "HTTP/2 connection idle: going away");
                graceful(connection.as_mut());
                winding_down = true;
                grace_end.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            () = &mut retire, if !winding_down => {
                tracing::debug!(remote = %remote.ip(), "max_connection_age reached: closing after in-flight requests");
                graceful(connection.as_mut());
                winding_down = true;
                grace_end.as_mut().reset(tokio::time::Instant::now() + grace);
            }
            () = &mut grace_end, if winding_down => {
                tracing::info!(remote = %remote.ip(), "connection did not finish within its grace period: closed");
                return;
            }
            changed = stop.changed(), if !winding_down => {
                // A dropped sender means the gateway is going away too.
                if changed.is_err() || *stop.borrow() {
                    graceful(connection.as_mut());
                    winding_down = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_ipv4_as_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped.to_canonical()), v4);
    }

    #[tokio::test]
    async fn a_retired_connection_that_never_finishes_is_closed_after_its_grace() {
        let (_stop_tx, stop) = watch::channel(false);
        let told = Arc::new(AtomicBool::new(false));
        let told2 = told.clone();
        // A connection that ignores being told to finish, as a client stalling a response
        // would make it.
        let stuck = std::future::pending::<Result<(), Infallible>>();
        let ends = Ends {
            idle: None,
            first_request: None,
            expires_at: None,
            retire_at: Some(tokio::time::Instant::now() + Duration::from_millis(20)),
            stop,
            grace: Duration::from_millis(100),
            remote: "127.0.0.1:1".parse().unwrap(),
        };
        let started = Instant::now();
        tokio::time::timeout(
            Duration::from_secs(10),
            drive(
                Box::pin(stuck),
                move |_| told2.store(true, Ordering::SeqCst),
                ends,
            ),
        )
        .await
        .expect("the connection outlived its grace");
        assert!(
            told.load(Ordering::SeqCst),
            "it was not told to finish first"
        );
        assert!(started.elapsed() >= Duration::from_millis(120));
    }
}
