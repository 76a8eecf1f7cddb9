//! The admin listener (loopback by default): `/healthz` says the process is alive,
//! `/readyz` says it is ready for traffic (listener bound, material loaded, the SVID not
//! expired, not draining),
//! `/metrics` serves Prometheus metrics, `/incidents` and `/incidents/{id}` the incidents
//! (JSON) when `[incidents]` is configured. Anything else gets a problem from the one mapping
//! (`problem.rs`).
//! `/readyz` fails (503, with the reason) once the audit writer has stopped for good (a
//! failed sync, an exhausted chain): every request that needs a record is refused, so the
//! orchestrator takes the replica out of service. After a failed sync `/healthz` fails
//! too, so that it is restarted (the restart records the gap in the trail); an exhausted
//! chain refuses every start until its files are moved aside, so liveness stays up.
//! Never served on the public listener.
//!
//! A request is answered only when the `Host` it names (its `Host` field, or the authority of
//! an absolute-form target) is absent, an IP address, `localhost` or a name in
//! `admin.allowed_hosts`; any other gets a 421 problem. A web page the operator opens on the
//! same host could otherwise point a name it controls at the listener (DNS rebinding) and read
//! `/metrics` and `/incidents` through the browser, which sends that name as `Host`. It
//! cannot make the browser send an IP address or `localhost` for its own origin.
//!
//! Whoever reaches the listener is not authenticated, so its connections are bounded like
//! the public listener's: so many at once (`admin.max_connections`, more are closed at
//! accept), an eighth of them from one address (so that one client holding its share
//! leaves room for the kubelet's probes and the scraper, which come from elsewhere), a response the client does not read for [`AdminLimits::send_timeout`] closes
//! its connection, and a connection is retired at [`AdminLimits::max_age`] however busy it
//! is kept. Without them, connections kept open would hold file descriptors until the
//! process had none left for the public listener.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HOST, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::listener::LogBudget;
use crate::metrics::Metrics;
use crate::problem::{MISDIRECTED_DETAIL, ProblemKind};
use crate::send_timeout::SendDeadline;

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn json_bytes(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// Whether a restart brings a stopped audit writer back: after a failed sync it does (the
/// start records the gap and opens a new file); an exhausted chain stops every start too
/// (its files must be moved aside), so failing liveness would only make a restart loop of
/// a process that still serves what needs no record.
fn restart_helps(halt: idgate_audit::Halt) -> bool {
    matches!(halt, idgate_audit::Halt::SyncFailed)
}

/// The answer of probe `path` (`/readyz` or `/healthz`) when the audit writer has stopped
/// with `halt`, if the stop fails it: readiness for either reason, liveness where a restart
/// mends it.
fn halted_probe(path: &str, halt: Option<idgate_audit::Halt>) -> Option<Response<Full<Bytes>>> {
    let halt = halt?;
    (path == "/readyz" || restart_helps(halt)).then(|| halted(path, halt))
}

/// A probe's answer once the audit writer has stopped: 503 with the reason. The words are
/// the trail's own fixed ones, with nothing to escape.
fn halted(path: &str, halt: idgate_audit::Halt) -> Response<Full<Bytes>> {
    let status = if path == "/readyz" {
        "not ready"
    } else {
        "audit writer stopped"
    };
    let body = format!(
        r#"{{"status":"{status}","reason":"{}","detail":"{}"}}"#,
        halt.as_str(),
        halt.explain()
    );
    let mut resp = json_bytes(body.into_bytes());
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp
}

/// The shared parts the admin listener answers from.
#[derive(Debug, Clone)]
pub(crate) struct AdminState {
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) incidents: Option<Arc<idgate_incidents::IncidentService>>,
    /// The gateway's TLS material: an SVID that has expired (the SPIRE agent gone for
    /// longer than its lifetime, say) fails every handshake, so the gateway is not ready.
    pub(crate) material: Arc<idgate_tls::TlsMaterial>,
    /// The audit trail, when `[audit]` is configured: a writer stopped for good (a failed
    /// sync, an exhausted chain) fails both probes.
    pub(crate) audit: Option<Arc<idgate_audit::AuditTrail>>,
    /// The names a request's `Host` may give besides an IP address and `localhost`.
    pub(crate) allowed_hosts: AllowedHosts,
}

impl AdminState {
    fn audit_halted(&self) -> Option<idgate_audit::Halt> {
        self.audit.as_ref().and_then(|a| a.halted())
    }

    fn svid_valid(&self) -> bool {
        self.material
            .expiry()
            .svid
            .is_some_and(|(_, until)| until > std::time::SystemTime::now())
    }
}

/// The host names the admin listener answers to besides IP addresses and `localhost`
/// (`admin.allowed_hosts`), in lower case.
#[derive(Debug, Clone)]
pub(crate) struct AllowedHosts(Arc<[String]>);

impl AllowedHosts {
    /// `names` as the configuration gives them (checked DNS names); compared without case.
    pub(crate) fn new(names: &[String]) -> Self {
        Self(names.into())
    }

    /// Whether the name `name` is answered: `localhost` or one of these, in any case.
    fn answer(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case("localhost")
            || self.0.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Why a request's `Host` is refused: fixed words for the log, never the value sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostRefusal {
    /// More than one `Host` field.
    Several,
    /// Not `host[:port]` with a well-formed port, or not text.
    Malformed,
    /// A name that is not `localhost` or in `admin.allowed_hosts`.
    NotAllowed,
}

impl HostRefusal {
    fn as_str(self) -> &'static str {
        match self {
            Self::Several => "several Host fields",
            Self::Malformed => "malformed Host",
            Self::NotAllowed => "Host names a host not in admin.allowed_hosts",
        }
    }
}

/// What a well-formed `host[:port]` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostName<'a> {
    /// An IPv4 address or a bracketed IPv6 address.
    Ip,
    Name(&'a str),
}

/// Reads `value` as `host[:port]` (RFC 9110 §7.2): an IPv4 address, a bracketed IPv6
/// address or a name, and a port of one to five digits when there is a `:`. `None` when it is
/// not that shape.
fn host_name(value: &[u8]) -> Option<HostName<'_>> {
    let value = std::str::from_utf8(value).ok()?;
    let (host, port) = match value.strip_prefix('[') {
        Some(rest) => {
            let (inner, port) = rest.split_once(']')?;
            inner.parse::<std::net::Ipv6Addr>().ok()?;
            (HostName::Ip, port)
        }
        None => {
            let (host, port) = value.split_at(value.find(':').unwrap_or(value.len()));
            if host.parse::<std::net::Ipv4Addr>().is_ok() {
                (HostName::Ip, port)
            } else {
                (HostName::Name(host), port)
            }
        }
    };
    let port_ok = port.is_empty()
        || port.strip_prefix(':').is_some_and(|digits| {
            (1..=5).contains(&digits.len())
                && digits.bytes().all(|b| b.is_ascii_digit())
                && digits.parse::<u16>().is_ok()
        });
    port_ok.then_some(host)
}

/// Whether the admin listener answers a request with this target and these header fields:
/// every `Host` it names (at most one `Host` field, and the authority of an absolute-form
/// target) must be an IP address, `localhost` or one of `allowed`, whatever the port. A
/// request that names none (HTTP/1.0) is answered.
fn check_host(uri: &Uri, headers: &HeaderMap, allowed: &AllowedHosts) -> Result<(), HostRefusal> {
    let mut fields = headers.get_all(HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(HostRefusal::Several);
    }
    let named = uri
        .authority()
        .map(|a| a.as_str().as_bytes())
        .into_iter()
        .chain(field.map(HeaderValue::as_bytes));
    for value in named {
        match host_name(value) {
            None => return Err(HostRefusal::Malformed),
            Some(HostName::Ip) => {}
            Some(HostName::Name(name)) if allowed.answer(name) => {}
            Some(HostName::Name(_)) => return Err(HostRefusal::NotAllowed),
        }
    }
    Ok(())
}

/// The answer to a request whose `Host` is refused: a 421 problem with a fixed detail. The
/// warning names the client's address and why, never the `Host` sent (at most one a second,
/// saying how many were held back); the name itself is logged at debug, and only when it is
/// made of the characters of a DNS name, so that it cannot forge a line.
fn misdirected(
    why: HostRefusal,
    headers: &HeaderMap,
    remote: std::net::IpAddr,
    log: &LogBudget,
) -> Response<Full<Bytes>> {
    if let Some(also_refused) = log.admit() {
        tracing::warn!(
            remote = %remote,
            reason = why.as_str(),
            also_refused,
            "admin request refused: its Host is not an IP address, localhost or a name in admin.allowed_hosts"
        );
    }
    if let Some(name) = headers
        .get(HOST)
        .and_then(|v| host_name(v.as_bytes()))
        .and_then(|h| match h {
            HostName::Name(n) => Some(n),
            HostName::Ip => None,
        })
        .filter(|n| {
            n.len() <= 253
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
    {
        tracing::debug!(remote = %remote, host = name, "admin request refused for its Host");
    }
    ProblemKind::MisdirectedRequest.response(Some(MISDIRECTED_DETAIL), None)
}

async fn route(req: &Request<Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let (ready, metrics) = (&*state.ready, &*state.metrics);
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = ProblemKind::MethodNotAllowed.response(None, None);
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        path @ ("/readyz" | "/healthz")
            if let Some(resp) = halted_probe(path, state.audit_halted()) =>
        {
            resp
        }
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(metrics.encode())));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        "/readyz" if ready.load(Ordering::Acquire) && state.svid_valid() => {
            json(StatusCode::OK, r#"{"status":"ready"}"#)
        }
        "/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#),
        path => match (&state.incidents, path.strip_prefix("/incidents")) {
            (Some(incidents), Some("" | "/")) => json_bytes(incidents.list_json(req.uri().query())),
            (Some(incidents), Some(id)) => {
                let found = match id.strip_prefix('/') {
                    Some(id) => incidents.get_json(id).await,
                    None => None,
                };
                match found {
                    Some(body) => json_bytes(body),
                    None => ProblemKind::NoRoute.response(None, None),
                }
            }
            _ => ProblemKind::NoRoute.response(None, None),
        },
    }
}

/// What bounds the admin listener's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdminLimits {
    /// Open at once (`admin.max_connections`).
    pub(crate) max_connections: usize,
    /// Open at once from one address.
    pub(crate) max_per_source: usize,
    /// A response the client takes nothing of for this long closes its connection.
    pub(crate) send_timeout: Duration,
    /// The wait for a request's head, and for the next one on a kept-alive connection.
    pub(crate) header_timeout: Duration,
    /// A connection this old finishes the response in flight and closes…
    pub(crate) max_age: Duration,
    /// …within this long.
    pub(crate) grace: Duration,
}

impl AdminLimits {
    /// The admin listener's bounds, with `admin.max_connections`.
    pub(crate) fn new(max_connections: usize) -> Self {
        Self {
            max_connections,
            max_per_source: (max_connections / 8).max(1),
            send_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            max_age: Duration::from_secs(60),
            grace: Duration::from_secs(10),
        }
    }
}

pub(crate) async fn serve_admin(
    listener: TcpListener,
    state: AdminState,
    limits: AdminLimits,
    mut stop: watch::Receiver<bool>,
) {
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let sources = Sources::default();
    let refusals = LogBudget::new(1, 1);
    // Requests refused for their Host, logged at most once a second.
    let host_log = Arc::new(LogBudget::new(1, 1));
    loop {
        let (tcp, remote) = tokio::select! {
            _ = stop.changed() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let places = match sources.take(remote.ip(), limits.max_per_source) {
            None => Err((
                "admin_max_connections_per_ip",
                "an eighth of admin.max_connections",
            )),
            Some(share) => match open.clone().try_acquire_owned() {
                Ok(place) => Ok((share, place)),
                Err(_) => Err(("admin_max_connections", "admin.max_connections")),
            },
        };
        let places = match places {
            Ok(places) => places,
            Err((reason, limit)) => {
                // Closed at once: it holds nothing.
                drop(tcp);
                state.metrics.connection_refused(reason);
                if let Some(also_refused) = refusals.admit() {
                    tracing::warn!(
                        remote = %remote.ip(),
                        limit,
                        also_refused,
                        "admin connection refused at accept: limit reached"
                    );
                }
                continue;
            }
        };
        let state = state.clone();
        let host_log = host_log.clone();
        tokio::spawn(async move {
            serve_connection(tcp, remote, state, limits, host_log).await;
            drop(places);
        });
    }
}

/// The admin connections open from each address.
#[derive(Clone, Default)]
struct Sources(Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>);

/// One connection's place in its address's share; given back when dropped.
struct SourceShare {
    sources: Sources,
    ip: std::net::IpAddr,
}

impl Sources {
    /// A place for a connection from `ip`, if it has fewer than `max` open.
    fn take(&self, ip: std::net::IpAddr, max: usize) -> Option<SourceShare> {
        let ip = ip.to_canonical();
        let mut open = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceShare {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceShare {
    fn drop(&mut self) {
        let mut open = self
            .sources
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let std::collections::hash_map::Entry::Occupied(mut e) = open.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

/// Serves one admin connection until it ends, stalls on a response, or is retired.
async fn serve_connection(
    tcp: TcpStream,
    remote: std::net::SocketAddr,
    state: AdminState,
    limits: AdminLimits,
    host_log: Arc<LogBudget>,
) {
    // The same deadline as the public listener's: a client that stops reading (pipelined
    // requests whose answers it never takes) cannot hold the connection and its buffers.
    let io = SendDeadline::new(tcp, limits.send_timeout, state.metrics.clone(), remote);
    let service = service_fn(move |req: Request<Incoming>| {
        // An incident not held in memory is read from its file.
        let state = state.clone();
        let host_log = host_log.clone();
        async move {
            let resp = match check_host(req.uri(), req.headers(), &state.allowed_hosts) {
                Ok(()) => route(&req, &state).await,
                Err(why) => misdirected(why, req.headers(), remote.ip(), &host_log),
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let mut connection = pin!(
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(io), service)
    );
    // The header timeout starts again with every request: a request now and then would
    // keep a connection for ever without an age.
    tokio::select! {
        _ = connection.as_mut() => return,
        () = tokio::time::sleep(limits.max_age) => {}
    }
    connection.as_mut().graceful_shutdown();
    if tokio::time::timeout(limits.grace, connection)
        .await
        .is_err()
    {
        tracing::debug!(remote = %remote.ip(), "admin connection did not finish within its grace: closed");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpSocket;

    use super::*;

    #[test]
    fn liveness_fails_only_for_a_stopped_audit_writer_that_a_restart_mends() {
        use idgate_audit::Halt;
        let status = |path, halt| halted_probe(path, halt).map(|r| r.status().as_u16());
        assert_eq!(status("/readyz", None), None);
        assert_eq!(status("/healthz", None), None);
        assert_eq!(status("/readyz", Some(Halt::SyncFailed)), Some(503));
        assert_eq!(status("/healthz", Some(Halt::SyncFailed)), Some(503));
        assert_eq!(status("/readyz", Some(Halt::Exhausted)), Some(503));
        // Every start refuses an exhausted chain: a failing liveness probe would restart
        // the process in a loop.
        assert_eq!(status("/healthz", Some(Halt::Exhausted)), None);
    }

    /// An admin listener on loopback with `limits`; its address and metrics.
    async fn admin(limits: AdminLimits) -> (std::net::SocketAddr, Arc<Metrics>) {
        admin_for(limits, &[]).await
    }

    /// [`admin`] answering also to the host names `allowed` (`admin.allowed_hosts`).
    async fn admin_for(
        limits: AdminLimits,
        allowed: &[&str],
    ) -> (std::net::SocketAddr, Arc<Metrics>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let state = AdminState {
            ready: Arc::new(AtomicBool::new(true)),
            metrics: metrics.clone(),
            incidents: None,
            material: Arc::new(idgate_tls::TlsMaterial::pending(
                idgate_tls::crypto_provider(),
            )),
            audit: None,
            allowed_hosts: AllowedHosts::new(
                &allowed.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
            ),
        };
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            serve_admin(listener, state, limits, stop_rx).await;
            drop(stop);
        });
        (addr, metrics)
    }

    /// Sends `GET /healthz` on `tcp` and reads its answer; `false` if the connection ended.
    async fn healthz(tcp: &mut TcpStream) -> bool {
        if tcp
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.ends_with(br#"{"status":"ok"}"#) {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got.starts_with(b"HTTP/1.1 200 ")
    }

    /// Reads until the other end closes the connection (or resets it).
    async fn until_closed(tcp: &mut TcpStream) {
        let mut buf = [0u8; 64 * 1024];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    }

    async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond().await {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_admin_listener_caps_open_connections_and_closes_one_whose_responses_are_never_read()
     {
        let limits = AdminLimits {
            max_connections: 2,
            // Every connection here comes from one address: the cap in all is what refuses.
            max_per_source: 3,
            send_timeout: Duration::from_millis(300),
            ..AdminLimits::new(2)
        };
        let (addr, metrics) = admin(limits).await;

        // Two connections held open, saying nothing: a third is closed at accept (the
        // listener accepts in the order connections came), long before any timeout.
        let mut held = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let mut third = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), until_closed(&mut third))
            .await
            .expect("a connection past admin.max_connections was kept");
        assert!(healthz(&mut held[0]).await);
        assert!(
            metrics
                .encode()
                .lines()
                .any(|l| l
                    == r#"idgate_connections_refused_total{reason="admin_max_connections"} 1"#),
            "{}",
            metrics.encode()
        );
        drop(held);

        // A client that pipelines requests and never reads their answers: once the socket
        // buffers are full, the connection is closed at the send deadline. (Its first
        // request is answered: the places of the two above are back.)
        let mut stalled = served(addr, Some(4096)).await;
        let requests = b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n".repeat(5000);
        // The listener stops reading requests while their answers cannot be sent.
        let _ = tokio::time::timeout(Duration::from_secs(2), stalled.write_all(&requests)).await;
        let timed_out = r#"idgate_send_timeouts_total{kind="connection"} 1"#;
        eventually(
            "the stalled connection was kept past the send deadline",
            async || metrics.encode().lines().any(|l| l == timed_out),
        )
        .await;
        tokio::time::timeout(Duration::from_secs(5), until_closed(&mut stalled))
            .await
            .expect("the stalled connection is still open");
        // Its place is free again: two connections at once.
        let _one = served(addr, None).await;
        let _two = served(addr, None).await;
    }

    /// A connection to `addr` (with a receive buffer of `recv_buffer` bytes) whose
    /// `/healthz` was answered: places given back come back a moment after their
    /// connections close, and until then a new connection is closed at accept.
    async fn served(addr: std::net::SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let socket = TcpSocket::new_v4().unwrap();
            if let Some(bytes) = recv_buffer {
                socket.set_recv_buffer_size(bytes).unwrap();
            }
            let mut tcp = socket.connect(addr).await.unwrap();
            if healthz(&mut tcp).await {
                return tcp;
            }
            assert!(Instant::now() < deadline, "no admin connection was served");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connection to `addr` from the local address `from`, once the listener serves it.
    async fn served_from(addr: std::net::SocketAddr, from: [u8; 4]) -> Option<TcpStream> {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        healthz(&mut tcp).await.then_some(tcp)
    }

    #[tokio::test]
    async fn one_client_holding_its_share_of_admin_places_leaves_room_for_probes_from_elsewhere() {
        let (addr, metrics) = admin(AdminLimits::new(16)).await;
        // One address holds its share (two of sixteen) with connections that say nothing;
        // its next one is closed at accept, while other addresses (the kubelet's, the
        // scraper's) are still served.
        let _held = [
            TcpStream::connect(addr).await.unwrap(),
            TcpStream::connect(addr).await.unwrap(),
        ];
        let mut third = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), until_closed(&mut third))
            .await
            .expect("a connection past its address's share was kept");
        let refused =
            r#"idgate_connections_refused_total{reason="admin_max_connections_per_ip"} 1"#;
        assert!(
            metrics.encode().lines().any(|l| l == refused),
            "{}",
            metrics.encode()
        );
        let mut probe = served_from(addr, [127, 0, 0, 2])
            .await
            .expect("a probe from another address was refused");
        assert!(healthz(&mut probe).await);
    }

    #[tokio::test]
    async fn an_admin_connection_kept_busy_is_retired_at_its_age() {
        let limits = AdminLimits {
            max_age: Duration::from_millis(500),
            grace: Duration::from_secs(1),
            ..AdminLimits::new(4)
        };
        let (addr, _) = admin(limits).await;
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let opened = Instant::now();
        let deadline = opened + Duration::from_secs(5);
        // A request every 50 ms: never idle, yet retired.
        while healthz(&mut tcp).await {
            assert!(
                Instant::now() < deadline,
                "a busy admin connection outlived its age"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(opened.elapsed() >= Duration::from_millis(500));
        // A new connection is served as before.
        let mut next = TcpStream::connect(addr).await.unwrap();
        assert!(healthz(&mut next).await);
    }

    /// The outcome of the `Host` check for a request to `target` with the `Host` fields
    /// `hosts`, with `idgate-admin.monitoring.svc` in `admin.allowed_hosts`.
    fn host_check(target: &str, hosts: &[&[u8]]) -> Result<(), HostRefusal> {
        let allowed = AllowedHosts::new(&["idgate-admin.monitoring.svc".to_owned()]);
        let uri: Uri = target.parse().unwrap();
        let mut headers = HeaderMap::new();
        for host in hosts {
            headers.append(HOST, HeaderValue::from_bytes(host).unwrap());
        }
        check_host(&uri, &headers, &allowed)
    }

    #[test]
    fn the_admin_host_check_answers_ip_addresses_localhost_and_configured_names() {
        let answered: [&[u8]; 13] = [
            b"127.0.0.1",
            b"127.0.0.1:9901",
            b"10.42.0.17:9901",
            b"[::1]",
            b"[::1]:9901",
            b"[fe80::1:2]:80",
            b"localhost",
            b"localhost:9901",
            b"LOCALHOST",
            b"LocalHost:9901",
            b"idgate-admin.monitoring.svc",
            b"idgate-admin.monitoring.svc:9901",
            b"IDGATE-Admin.Monitoring.SVC:9901",
        ];
        for host in answered {
            assert_eq!(
                host_check("/metrics", &[host]),
                Ok(()),
                "{}",
                String::from_utf8_lossy(host)
            );
        }
        // HTTP/1.0 probes send no Host.
        assert_eq!(host_check("/healthz", &[]), Ok(()));
        // An absolute-form target names its host: both it and the field must be answered.
        assert_eq!(
            host_check("http://127.0.0.1:9901/metrics", &[b"127.0.0.1:9901"]),
            Ok(())
        );
        assert_eq!(host_check("http://localhost/metrics", &[]), Ok(()));
    }

    #[test]
    fn the_admin_host_check_refuses_rebinding_names_and_malformed_hosts() {
        use HostRefusal::{Malformed, NotAllowed, Several};
        let refused: [(&[u8], HostRefusal); 22] = [
            // A name a web page can point at 127.0.0.1.
            (b"evil.example", NotAllowed),
            (b"evil.example:9901", NotAllowed),
            (b"127.0.0.1.attacker.example", NotAllowed),
            (b"localhost.attacker.example", NotAllowed),
            (b"admin.idgate-admin.monitoring.svc", NotAllowed),
            // A trailing dot is another name, in no list.
            (b"localhost.", NotAllowed),
            (b"idgate-admin.monitoring.svc.", NotAllowed),
            // IPv4 in forms a browser rewrites to the dotted quad: not sent as such.
            (b"2130706433", NotAllowed),
            (b"0x7f.0.0.1", NotAllowed),
            (b"", NotAllowed),
            (b":9901", NotAllowed),
            (b"127.0.0.1:", Malformed),
            (b"127.0.0.1:99999", Malformed),
            (b"127.0.0.1:+80", Malformed),
            (b"127.0.0.1:9901:1", Malformed),
            (b"::1", Malformed),
            (b"[::1", Malformed),
            (b"[::1]9901", Malformed),
            (b"[evil.example]", Malformed),
            (b"[fe80::1%25eth0]:9901", Malformed),
            (b"user@127.0.0.1", NotAllowed),
            (b"\xff\xfe.example", Malformed),
        ];
        for (host, why) in refused {
            assert_eq!(
                host_check("/metrics", &[host]),
                Err(why),
                "{}",
                String::from_utf8_lossy(host)
            );
        }
        // Two Host fields, even two that would each be answered.
        assert_eq!(
            host_check("/metrics", &[b"127.0.0.1", b"127.0.0.1"]),
            Err(Several)
        );
        assert_eq!(
            host_check("/metrics", &[b"127.0.0.1", b"evil.example"]),
            Err(Several)
        );
        // An absolute-form target that names another host, whatever the field says.
        assert_eq!(
            host_check("http://evil.example/metrics", &[b"127.0.0.1"]),
            Err(NotAllowed)
        );
        assert_eq!(
            host_check("http://127.0.0.1/metrics", &[b"evil.example"]),
            Err(NotAllowed)
        );
    }

    /// Sends `request` on a connection of its own to `addr` and reads the answer until the
    /// listener closes it: (status, content type, body).
    async fn exchange(addr: std::net::SocketAddr, request: &str) -> (u16, String, String) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut got))
            .await
            .expect("the admin listener kept the connection open")
            .unwrap();
        let text = String::from_utf8(got).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head[9..12].parse().unwrap();
        let content_type = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(name, _)| name.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_default();
        (status, content_type, body.to_owned())
    }

    #[tokio::test]
    async fn the_admin_listener_refuses_a_host_a_rebinding_page_could_send_and_serves_ip_and_localhost()
     {
        let (addr, metrics) =
            admin_for(AdminLimits::new(16), &["idgate-admin.monitoring.svc"]).await;
        // Something in the metrics a rebinding page must not read.
        metrics.connection_refused("admin_max_connections");
        let get = |host: &str| format!("GET /metrics HTTP/1.1\r\n{host}connection: close\r\n\r\n");
        let port = addr.port();
        for host in [
            format!("host: 127.0.0.1:{port}\r\n"),
            format!("host: [::1]:{port}\r\n"),
            format!("host: localhost:{port}\r\n"),
            "host: LOCALHOST\r\n".to_owned(),
            format!("host: Idgate-Admin.monitoring.svc:{port}\r\n"),
        ] {
            let (status, content_type, body) = exchange(addr, &get(&host)).await;
            assert_eq!(status, 200, "{host}{body}");
            assert!(
                content_type.starts_with("application/openmetrics-text"),
                "{host}"
            );
            assert!(body.contains("admin_max_connections"), "{host}{body}");
        }
        // An HTTP/1.0 probe without Host.
        let (status, _, body) = exchange(addr, "GET /healthz HTTP/1.0\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));

        for request in [
            get(&format!("host: evil.example:{port}\r\n")),
            get("host: evil.example\r\n"),
            get(&format!("host: 127.0.0.1.attacker.example:{port}\r\n")),
            get("host: idgate-admin.monitoring.svc.\r\n"),
            get("host: \r\n"),
            get(&format!(
                "host: 127.0.0.1:{port}\r\nhost: 127.0.0.1:{port}\r\n"
            )),
            get(&format!("host: 127.0.0.1:{port}\r\nhost: evil.example\r\n")),
            format!(
                "GET http://evil.example:{port}/metrics HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n"
            ),
            "GET /incidents HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n".to_owned(),
            "GET /healthz HTTP/1.0\r\nhost: evil.example\r\n\r\n".to_owned(),
        ] {
            let (status, content_type, body) = exchange(addr, &request).await;
            assert_eq!(status, 421, "{request}{body}");
            assert_eq!(content_type, "application/problem+json", "{request}");
            let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                problem,
                serde_json::json!({
                    "type": "https://idgate.dev/problems/misdirected-request",
                    "title": "Host not allowed",
                    "status": 421,
                    "detail": MISDIRECTED_DETAIL,
                }),
                "{request}"
            );
            assert!(
                !body.contains("evil") && !body.contains("attacker"),
                "{body}"
            );
        }
    }
}
