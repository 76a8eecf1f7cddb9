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

pub mod parse;

use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::client::TlsStream;
use zeroize::{Zeroize as _, Zeroizing};

use self::parse::{Chunk, ChunkedDecoder, Framing, HeadParser, ProtocolError};
use crate::limit::{Acquired, ConnLimit, Saturated, Slot};

/// Read granularity on upstream connections.
const READ_CHUNK: usize = 8 * 1024;
/// Request bytes gathered before a `write`: the head and a small body go out together.
const WRITE_COALESCE: usize = 64 * 1024;
/// A chunk's size line and the line end after its data, at most.
const CHUNK_FRAMING: usize = 16 + 2 + 2;

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
    /// The caller's body, streamed through.
    Stream(Incoming),
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
    fn replayable(&self) -> bool {
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

/// The two directions of an upstream connection, cleartext or TLS. Split, so that the
/// upstream can be heard while a request is still being written.
struct Io {
    r: ReadIo,
    w: WriteIo,
}

enum ReadIo {
    Plain(OwnedReadHalf),
    /// With a second handle on the socket, to look at it under the TLS layer.
    Tls(ReadHalf<TlsStream<TcpStream>>, socket2::Socket),
}

enum WriteIo {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.r {
            ReadIo::Plain(_) => "Io(plain)",
            ReadIo::Tls(..) => "Io(tls)",
        })
    }
}

impl AsyncRead for ReadIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(r) => Pin::new(r).poll_read(cx, buf),
            Self::Tls(r, _) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

impl ReadIo {
    /// Whether the socket holds bytes (or the peer's close) not yet read, asked of the
    /// kernel itself: the runtime learns of arrivals only when it next polls for events.
    fn bytes_waiting(&self) -> bool {
        let socket = match self {
            Self::Plain(r) => socket2::SockRef::from(r.as_ref()),
            Self::Tls(_, socket) => socket2::SockRef::from(socket),
        };
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        // The socket is non-blocking: nothing there is `WouldBlock`.
        !matches!(socket.peek(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl AsyncWrite for WriteIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_write(cx, buf),
            Self::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_flush(cx),
            Self::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(w) => Pin::new(w).poll_shutdown(cx),
            Self::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// One connection to the upstream, with the bytes read from it and not yet used.
struct Conn {
    io: Io,
    buf: BytesMut,
    /// Bytes gathered for the next `write`, kept from request to request. Zeroed when the
    /// connection goes idle or away: the last request head holds the injected credential.
    out: Zeroizing<Vec<u8>>,
    idle_since: Instant,
    /// Its place under the upstream's connection cap, freed when it closes.
    _slot: Option<Slot>,
}

/// Lengths only: `out` holds the last request head, injected credential included, and
/// `buf` the upstream's bytes.
impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("io", &self.io)
            .field("buffered", &self.buf.len())
            .field("idle_since", &self.idle_since)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Whether an idle connection can carry the next request: nothing arrived while it was
    /// idle, neither the upstream's close nor stray bytes (the late rest of an answer would
    /// be read as the answer to the next request). Asked right before the request is
    /// written: of the runtime's readiness (and the TLS layer's buffer), then of the
    /// socket, which one `recv` costs.
    fn still_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.io.r).poll_read(&mut cx, &mut rb),
            Poll::Pending
        ) && !self.io.r.bytes_waiting()
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        tokio::io::AsyncReadExt::read_buf(&mut self.io.r, &mut self.buf).await
    }
}

/// The idle connections of one upstream.
#[derive(Debug)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

#[derive(Debug)]
struct PoolInner {
    config: PoolConfig,
    idle: Mutex<Vec<Conn>>,
    sweeper: AtomicBool,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                config,
                idle: Mutex::new(Vec::new()),
                sweeper: AtomicBool::new(false),
            }),
        }
    }

    /// Sends one request and reads the response head. The path and query are sent as
    /// given; `headers` must already be what the upstream may see (the Host, framing and
    /// `Expect` headers are the client's own).
    pub async fn send(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: RequestBody,
    ) -> Result<Response<ResponseBody>, SendError> {
        let head_request = *method == Method::HEAD;
        let retry_allowed = method.is_idempotent() && body.replayable();
        let framing = request_framing(method, &body);
        let request = RequestHead {
            method,
            path_and_query,
            host: &self.inner.config.host,
            headers,
            framing,
        };

        // What a retry sends: the same bytes again (an empty streamed body is nothing).
        let replay = retry_allowed.then(|| match &body {
            RequestBody::Buffered(b) => b.clone(),
            RequestBody::Stream(_) => Bytes::new(),
        });
        let mut body = Some(body);
        let mut fresh = false;
        loop {
            let (conn, reused) = match self.inner.obtain(fresh).await {
                Ok(c) => c,
                Err(error) => {
                    return Err(SendError {
                        error,
                        unsent: body.take(),
                    });
                }
            };
            fresh = true;
            let Some(this_body) = body
                .take()
                .or_else(|| replay.clone().map(RequestBody::Buffered))
            else {
                return Err(Error::Closed.into());
            };
            match self.exchange(conn, &request, this_body, head_request).await {
                Ok(resp) => return Ok(resp),
                // Once, and on a new connection: the pool's other idle connections may have
                // been closed by the same upstream restart.
                Err(Failure {
                    error: error @ (Error::Io(_) | Error::Closed),
                    answered: false,
                }) if reused && replay.is_some() => {
                    tracing::debug!(error = %error, "reused upstream connection failed; retrying on a new one");
                }
                Err(f) => return Err(f.error.into()),
            }
        }
    }

    async fn exchange(
        &self,
        mut conn: Conn,
        request: &RequestHead<'_>,
        body: RequestBody,
        head_request: bool,
    ) -> Result<Response<ResponseBody>, Failure> {
        request.write(&mut conn.out, &body);
        // Interim heads that arrive during the upload are taken by the same parser.
        let mut head = HeadParser::new();
        let sent = match write_request(&mut conn, &mut head, request.framing, body).await {
            Ok(sent) => sent,
            Err(e @ Error::Protocol(_)) => return Err(Failure::answered(e)),
            Err(e) => {
                return Err(Failure {
                    error: e,
                    answered: head.saw_interim() || !conn.buf.is_empty(),
                });
            }
        };
        // An upstream that answered before the whole request went out has bytes here.
        let early = !conn.buf.is_empty();
        let mut answered = early || head.saw_interim();
        let parsed = loop {
            match head.parse(&mut conn.buf, head_request) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => return Err(Failure::answered(e.into())),
            }
            match conn.read_more().await {
                Ok(0) => {
                    return Err(Failure {
                        error: Error::Closed,
                        answered,
                    });
                }
                Ok(_) => answered = true,
                Err(e) => {
                    return Err(Failure {
                        error: Error::Io(e),
                        answered,
                    });
                }
            }
        };
        let mut resp = Response::new(ResponseBody::empty());
        *resp.status_mut() = parsed.status;
        *resp.version_mut() = Version::HTTP_11;
        *resp.headers_mut() = parsed.headers;
        // The connection carries another request only when this exchange is provably over
        // on both sides. A request cut short leaves the upstream waiting for the rest of its
        // body. An answer that came before the request was written did not wait for all of
        // it. And nothing proves that an upstream read a body before it answered: one that
        // did not reads the body as the start of the next request, which then carries
        // the next caller's credential to wherever the body pointed. So a request that
        // carried body bytes is the last on its connection.
        let carried_body = !matches!(request.framing, ReqFraming::None | ReqFraming::Length(0));
        let reusable = parsed.reusable && sent == Sent::Whole && !early && !carried_body;
        let body = match parsed.framing {
            Framing::Empty | Framing::Length(0) => {
                self.inner.checkin(conn, reusable);
                ResponseBody::empty()
            }
            Framing::Length(n) if conn.buf.len() as u64 >= n => {
                // The whole body came with the head: hand it over and free the connection.
                let data = conn.buf.split_to(n as usize).freeze();
                self.inner.checkin(conn, reusable);
                ResponseBody::full(data)
            }
            framing => ResponseBody::streaming(Streaming {
                conn: Some(conn),
                pool: Arc::downgrade(&self.inner),
                reusable,
                read_timeout: self.inner.config.body_read_timeout,
                timer: None,
                framing: match framing {
                    Framing::Length(n) => BodyFraming::Length(n),
                    Framing::Chunked => BodyFraming::Chunked(ChunkedDecoder::new()),
                    _ => BodyFraming::UntilClose,
                },
            }),
        };
        *resp.body_mut() = body;
        Ok(resp)
    }
}

/// A failed exchange, and whether any of the answer had arrived.
struct Failure {
    error: Error,
    answered: bool,
}

impl Failure {
    fn answered(error: Error) -> Self {
        Self {
            error,
            answered: true,
        }
    }
}

impl PoolInner {
    /// The idle list; a panic elsewhere while it was held leaves it usable.
    fn idle(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection (unless `fresh`), or a new one once the cap allows.
    async fn obtain(&self, fresh: bool) -> Result<(Conn, bool), Error> {
        let idle = || if fresh { None } else { self.checkout() };
        match self.config.limit.acquire(idle).await? {
            Acquired::Reused(conn) => Ok((conn, true)),
            Acquired::New(slot) => Ok((self.connect(slot).await?, false)),
        }
    }

    fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        loop {
            let mut conn = self.idle().pop()?;
            if now.duration_since(conn.idle_since) < self.config.idle_timeout && conn.still_open() {
                return Some(conn);
            }
        }
    }

    fn checkin(self: &Arc<Self>, mut conn: Conn, reusable: bool) {
        // Bytes after a complete response are a protocol violation: never reuse that.
        if !reusable || !conn.buf.is_empty() {
            return;
        }
        conn.idle_since = Instant::now();
        // One large body must not pin its buffers for the life of the connection.
        if conn.out.capacity() > WRITE_COALESCE + READ_CHUNK {
            conn.out = Zeroizing::new(Vec::with_capacity(1024));
        } else {
            conn.out.zeroize();
        }
        if conn.buf.capacity() > 8 * READ_CHUNK {
            conn.buf = BytesMut::with_capacity(READ_CHUNK);
        }
        {
            let mut idle = self.idle();
            if idle.len() < self.config.max_idle {
                idle.push(conn);
            }
        }
        self.config.limit.idle_returned();
        if !self.sweeper.swap(true, Ordering::Relaxed) {
            self.start_sweeper();
        }
    }

    /// Closes connections idle for longer than the idle timeout, even without traffic.
    fn start_sweeper(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.sweeper.store(false, Ordering::Relaxed);
            return;
        };
        let weak: Weak<Self> = Arc::downgrade(self);
        let period = (self.config.idle_timeout / 2).max(Duration::from_secs(1));
        handle.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                let now = Instant::now();
                pool.idle()
                    .retain(|c| now.duration_since(c.idle_since) < pool.config.idle_timeout);
            }
        });
    }

    async fn connect(&self, slot: Slot) -> Result<Conn, Error> {
        let connect = async {
            let mut last = None;
            for addr in tokio::net::lookup_host(&self.config.address)
                .await
                .map_err(Error::Connect)?
            {
                match TcpStream::connect(addr).await {
                    Ok(io) => return Ok(io),
                    Err(e) => last = Some(e),
                }
            }
            Err(Error::Connect(last.unwrap_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no address for the upstream host")
            })))
        };
        // The TCP connect and the TLS handshake together stay within the connect timeout.
        let connect = async {
            let tcp = connect.await?;
            let _ = tcp.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
            let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
            Ok::<_, Error>(match &self.config.tls {
                None => {
                    let (r, w) = tcp.into_split();
                    Io {
                        r: ReadIo::Plain(r),
                        w: WriteIo::Plain(w),
                    }
                }
                Some((tls, name)) => {
                    let socket = socket2::SockRef::from(&tcp)
                        .try_clone()
                        .map_err(Error::Connect)?;
                    let stream = tls.connect(name.clone(), tcp).await.map_err(Error::Tls)?;
                    let (r, w) = tokio::io::split(stream);
                    Io {
                        r: ReadIo::Tls(r, socket),
                        w: WriteIo::Tls(w),
                    }
                }
            })
        };
        let io = tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .map_err(|_| Error::ConnectTimeout)??;
        tracing::debug!(upstream = %self.config.address, tls = self.config.tls.is_some(), "new upstream connection");
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_CHUNK),
            out: Zeroizing::new(Vec::with_capacity(1024)),
            idle_since: Instant::now(),
            _slot: Some(slot),
        })
    }
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

fn request_framing(method: &Method, body: &RequestBody) -> ReqFraming {
    let (empty, exact) = match body {
        RequestBody::Buffered(b) => (b.is_empty(), Some(b.len() as u64)),
        RequestBody::Stream(b) => (b.is_end_stream(), b.size_hint().exact()),
    };
    if empty {
        // A method that defines a body says its length, even when it is nothing.
        return if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            ReqFraming::Length(0)
        } else {
            ReqFraming::None
        };
    }
    exact.map_or(ReqFraming::Chunked, ReqFraming::Length)
}

/// What goes into the request head.
struct RequestHead<'a> {
    method: &'a Method,
    path_and_query: &'a str,
    host: &'a str,
    headers: &'a HeaderMap,
    framing: ReqFraming,
}

impl RequestHead<'_> {
    /// Hands the head's bytes to `put`, piece by piece.
    fn emit(&self, mut put: impl FnMut(&[u8])) {
        put(self.method.as_str().as_bytes());
        put(b" ");
        put(self.path_and_query.as_bytes());
        put(b" HTTP/1.1\r\nhost: ");
        put(self.host.as_bytes());
        put(b"\r\n");
        for (name, value) in self.headers {
            // HeaderValue cannot hold CR, LF or NUL: nothing here can end a line early.
            if name == HOST || name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == EXPECT
            {
                continue;
            }
            put(name.as_str().as_bytes());
            put(b": ");
            put(value.as_bytes());
            put(b"\r\n");
        }
        match self.framing {
            ReqFraming::None => {}
            ReqFraming::Length(n) => {
                put(b"content-length: ");
                put(itoa_buf(n).as_bytes());
                put(b"\r\n");
            }
            ReqFraming::Chunked => put(b"transfer-encoding: chunked\r\n"),
        }
        put(b"\r\n");
    }

    fn len(&self) -> usize {
        let mut len = 0;
        self.emit(|part| len += part.len());
        len
    }

    /// Puts the head in `out`, with room for what of `body` goes out with it, so that `out`
    /// is not reallocated while it holds the head (and the credential in it).
    fn write(&self, out: &mut Zeroizing<Vec<u8>>, body: &RequestBody) {
        let len = self.len();
        let coalesced = match body {
            RequestBody::Buffered(b) if len + b.len() <= WRITE_COALESCE => b.len(),
            _ => 0,
        };
        out.clear();
        make_room(out, len + coalesced);
        self.emit(|part| out.extend_from_slice(part));
    }
}

/// Makes room for `more` bytes in `out`. A buffer that grew in place would leave a copy of
/// what it held (a request head, credential included) in the memory it frees: this one is
/// replaced instead, and the old one zeroed as it drops.
fn make_room(out: &mut Zeroizing<Vec<u8>>, more: usize) {
    if out.capacity() - out.len() >= more {
        return;
    }
    let mut bigger = Vec::with_capacity((out.len() + more).max(2 * out.capacity()));
    bigger.extend_from_slice(out);
    *out = Zeroizing::new(bigger);
}

/// A number's decimal digits without a heap allocation.
struct Digits {
    buf: [u8; 20],
    start: usize,
}

impl Digits {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(mut n: u64) -> Digits {
    let mut d = Digits {
        buf: [0; 20],
        start: 20,
    };
    loop {
        d.start -= 1;
        d.buf[d.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return d;
        }
    }
}

/// Whether all of the request went out, or the upstream answered or closed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Whole,
    Cut,
}

/// Writes the head gathered in `conn.out` and the body after it. Stops early when the
/// upstream answers (or closes) while the request is still going out: an upstream that
/// refuses a request before reading its body gets heard, not blocked on. The body must
/// match the framing announced in the head, or the request fails.
async fn write_request(
    conn: &mut Conn,
    head: &mut HeadParser,
    framing: ReqFraming,
    body: RequestBody,
) -> Result<Sent, Error> {
    let Conn { io, out, buf, .. } = conn;
    match body {
        RequestBody::Stream(b) => write_streamed(conn, head, framing, b).await,
        RequestBody::Buffered(b) if out.len() + b.len() <= WRITE_COALESCE => {
            out.extend_from_slice(&b);
            send(io, buf, head, out).await
        }
        RequestBody::Buffered(b) => {
            if send(io, buf, head, out).await? == Sent::Cut {
                return Ok(Sent::Cut);
            }
            send(io, buf, head, &b).await
        }
    }
}

/// Streams a body of unknown or announced length; see [`write_request`].
async fn write_streamed<B>(
    conn: &mut Conn,
    head: &mut HeadParser,
    framing: ReqFraming,
    body: B,
) -> Result<Sent, Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Conn { io, out, buf, .. } = conn;
    if matches!(framing, ReqFraming::None) {
        // An empty body (the framing was chosen from it): the head is all.
        return send(io, buf, head, out).await;
    }
    let mut b = body;
    let chunked = framing == ReqFraming::Chunked;
    let mut sent: u64 = 0;
    // The head, and whatever of the body is already here, go out together.
    loop {
        let ready = {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            Pin::new(&mut b).poll_frame(&mut cx)
        };
        let next = match ready {
            Poll::Ready(next) => next,
            Poll::Pending => {
                // Nothing more yet: send what there is before waiting.
                if !out.is_empty() {
                    if send(io, buf, head, out).await? == Sent::Cut {
                        return Ok(Sent::Cut);
                    }
                    out.clear();
                }
                tokio::select! {
                    next = http_body_util::BodyExt::frame(&mut b) => next,
                    early = answered(&mut io.r, buf, head) => {
                        early?;
                        return Ok(Sent::Cut);
                    }
                }
            }
        };
        let Some(frame) = next else { break };
        // Trailers from the caller are not forwarded.
        let Ok(data) = frame.map_err(|e| Error::CallerBody(e.into()))?.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent = sent.saturating_add(data.len() as u64);
        if matches!(framing, ReqFraming::Length(n) if sent > n) {
            return Err(Error::BodyLength);
        }
        make_room(out, CHUNK_FRAMING + data.len().min(WRITE_COALESCE));
        if chunked {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        if data.len() > WRITE_COALESCE {
            if send(io, buf, head, out).await? == Sent::Cut
                || send(io, buf, head, &data).await? == Sent::Cut
            {
                return Ok(Sent::Cut);
            }
            out.clear();
        } else {
            out.extend_from_slice(&data);
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= WRITE_COALESCE {
            if send(io, buf, head, out).await? == Sent::Cut {
                return Ok(Sent::Cut);
            }
            out.clear();
        }
    }
    // A body that ended short of its announced length (an HTTP/2 caller can reset its
    // stream mid-body) would leave the upstream reading the next request as its rest.
    if matches!(framing, ReqFraming::Length(n) if sent != n) {
        return Err(Error::BodyLength);
    }
    if chunked {
        make_room(out, CHUNK_FRAMING);
        out.extend_from_slice(b"0\r\n\r\n");
    }
    send(io, buf, head, out).await
}

/// Writes all of `data`, unless the upstream answers or closes first.
async fn send(
    io: &mut Io,
    buf: &mut BytesMut,
    head: &mut HeadParser,
    data: &[u8],
) -> Result<Sent, Error> {
    if data.is_empty() {
        return Ok(Sent::Whole);
    }
    let Io { r, w } = io;
    tokio::select! {
        // The write first: it nearly always completes at once, with nothing to hear yet.
        biased;
        written = async {
            w.write_all(data).await?;
            // TLS records the socket could not take yet must go out too.
            w.flush().await
        } => {
            written.map_err(Error::Io)?;
            Ok(Sent::Whole)
        }
        early = answered(r, buf, head) => {
            early?;
            Ok(Sent::Cut)
        }
    }
}

/// Resolves once the upstream has sent a final response head, or closed, while the request
/// is still going out; what it sent is kept in `buf` for the response parser. Interim heads
/// (`100 Continue`, `103 Early Hints`) are taken as they complete and the sending goes on:
/// an upstream that sends one still reads the rest of the body.
async fn answered(r: &mut ReadIo, buf: &mut BytesMut, head: &mut HeadParser) -> Result<(), Error> {
    loop {
        buf.reserve(READ_CHUNK);
        let n = tokio::io::AsyncReadExt::read_buf(r, buf)
            .await
            .map_err(Error::Io)?;
        if n == 0 || head.skip_interim(buf)? {
            return Ok(());
        }
    }
}

/// A response body from an upstream connection. When the body is read to its end, the
/// connection goes back to the pool; a body dropped early closes it.
pub struct ResponseBody {
    state: BodyState,
}

/// The state only: the body is the upstream's data, never for a log.
impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.state {
            BodyState::Done => "ResponseBody::Done",
            BodyState::Full(_) => "ResponseBody::Full",
            BodyState::Streaming(_) => "ResponseBody::Streaming",
        })
    }
}

enum BodyState {
    Done,
    Full(Bytes),
    Streaming(Box<Streaming>),
}

struct Streaming {
    conn: Option<Conn>,
    pool: Weak<PoolInner>,
    reusable: bool,
    framing: BodyFraming,
    /// The longest wait for the next bytes, and its timer once a read had to wait.
    read_timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug)]
enum BodyFraming {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// An upstream response body that broke off or was malformed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body: {0}")]
    Io(#[from] io::Error),
    #[error("upstream body: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("upstream closed the connection before the body was complete")]
    Truncated,
    #[error("upstream body: no bytes for longer than the read timeout")]
    Timeout,
}

impl ResponseBody {
    fn empty() -> Self {
        Self {
            state: BodyState::Done,
        }
    }

    fn full(data: Bytes) -> Self {
        Self {
            state: BodyState::Full(data),
        }
    }

    fn streaming(s: Streaming) -> Self {
        Self {
            state: BodyState::Streaming(Box::new(s)),
        }
    }
}

impl BodyFraming {
    /// The next piece of the body out of what is already buffered, if any.
    fn take_buffered(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, BodyError> {
        match self {
            BodyFraming::Length(remaining) => {
                if buf.is_empty() || *remaining == 0 {
                    return Ok(None);
                }
                let n = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                *remaining -= n as u64;
                Ok(Some(buf.split_to(n).freeze()))
            }
            BodyFraming::Chunked(dec) => match dec.decode(buf)? {
                Chunk::Data(d) => Ok(Some(d)),
                Chunk::NeedMore | Chunk::Done => Ok(None),
            },
            BodyFraming::UntilClose => {
                if buf.is_empty() {
                    Ok(None)
                } else {
                    Ok(Some(buf.split().freeze()))
                }
            }
        }
    }

    fn complete(&self) -> bool {
        match self {
            BodyFraming::Length(remaining) => *remaining == 0,
            BodyFraming::Chunked(dec) => dec.is_done(),
            BodyFraming::UntilClose => false,
        }
    }
}

impl Streaming {
    fn finish(&mut self) {
        if let (Some(conn), Some(pool)) = (self.conn.take(), self.pool.upgrade()) {
            pool.checkin(conn, self.reusable);
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(data) = self.framing.take_buffered(&mut conn.buf)? {
                if self.framing.complete() {
                    self.finish();
                }
                return Poll::Ready(Some(Ok(data)));
            }
            if self.framing.complete() {
                self.finish();
                return Poll::Ready(None);
            }
            conn.buf.reserve(READ_CHUNK);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut conn.io.r), cx, &mut conn.buf);
            let n = match read {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    let deadline = tokio::time::Instant::now() + self.read_timeout;
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    ready!(timer.as_mut().poll(cx));
                    self.conn = None;
                    return Poll::Ready(Some(Err(BodyError::Timeout)));
                }
            };
            if let Some(timer) = &mut self.timer {
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + self.read_timeout);
            }
            if n == 0 {
                self.conn = None;
                return match self.framing {
                    BodyFraming::UntilClose => Poll::Ready(None),
                    _ => Poll::Ready(Some(Err(BodyError::Truncated))),
                };
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.state {
            BodyState::Done => Poll::Ready(None),
            BodyState::Full(_) => match std::mem::replace(&mut this.state, BodyState::Done) {
                BodyState::Full(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                _ => Poll::Ready(None),
            },
            BodyState::Streaming(s) => {
                let next = ready!(s.poll_next(cx));
                if !matches!(next, Some(Ok(_))) {
                    this.state = BodyState::Done;
                }
                Poll::Ready(next.map(|r| r.map(Frame::data)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Full(data) => SizeHint::with_exact(data.len() as u64),
            BodyState::Streaming(s) => match (&s.framing, &s.conn) {
                // What is left to yield, buffered or not.
                (BodyFraming::Length(n), Some(_)) => SizeHint::with_exact(*n),
                _ => SizeHint::default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;

    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A caller's body: these data frames, then its end.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|d| Ok(Frame::data(d))))
        }
    }

    /// A connection to a loopback peer, and the peer's end.
    /// A pool that keeps idle connections and never connects anywhere.
    fn idle_pool() -> Pool {
        Pool::new(PoolConfig {
            address: "127.0.0.1:9".to_owned(),
            tls: None,
            host: "x".to_owned(),
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            max_idle: 4,
            body_read_timeout: Duration::from_secs(1),
            limit: Arc::new(ConnLimit::new(4, 0, Duration::from_secs(1))),
        })
    }

    async fn pair() -> (Conn, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let io = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        let (r, w) = io.into_split();
        let conn = Conn {
            io: Io {
                r: ReadIo::Plain(r),
                w: WriteIo::Plain(w),
            },
            buf: BytesMut::new(),
            out: Zeroizing::new(
                b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n".to_vec(),
            ),
            idle_since: Instant::now(),
            _slot: None,
        };
        (conn, peer)
    }

    #[tokio::test]
    async fn debug_output_shows_no_request_head_and_no_body() {
        let (mut conn, _peer) = pair().await;
        conn.out
            .extend_from_slice(b"x-provider-token: s3cr3t-provider-key\r\n");
        conn.buf
            .extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nname=Ana");
        let shown = format!("{conn:?}");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("Ana"),
            "{shown}"
        );
        let bodies = format!(
            "{:?} {:?}",
            RequestBody::Buffered(Bytes::from_static(b"dob=1990-01-01")),
            ResponseBody::full(Bytes::from_static(b"name=Ana"))
        );
        assert!(
            !bodies.contains("1990") && !bodies.contains("Ana"),
            "{bodies}"
        );
    }

    #[tokio::test]
    async fn a_body_that_does_not_match_its_announced_length_fails_the_request() {
        for (announced, frames) in [(100, vec!["0123456789"]), (5, vec!["0123", "456789"])] {
            let (mut conn, _peer) = pair().await;
            let body = Frames(
                frames
                    .into_iter()
                    .map(|f: &'static str| Bytes::from_static(f.as_bytes()))
                    .collect(),
            );
            let r = write_streamed(
                &mut conn,
                &mut HeadParser::new(),
                ReqFraming::Length(announced),
                body,
            )
            .await;
            assert!(matches!(r, Err(Error::BodyLength)), "{announced}: {r:?}");
        }
        let (mut conn, _peer) = pair().await;
        let body = Frames([Bytes::from_static(b"0123456789")].into());
        let r = write_streamed(
            &mut conn,
            &mut HeadParser::new(),
            ReqFraming::Length(10),
            body,
        )
        .await;
        assert!(matches!(r, Ok(Sent::Whole)), "{r:?}");
    }

    #[tokio::test]
    async fn an_answer_before_the_body_is_sent_stops_the_sending() {
        let (mut conn, mut peer) = pair().await;
        // The peer answers at once and never reads: 64 MiB cannot fit in socket buffers.
        peer.write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        let mib = Bytes::from(vec![0u8; 1 << 20]);
        let body = Frames(std::iter::repeat_n(mib, 64).collect());
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            write_streamed(
                &mut conn,
                &mut HeadParser::new(),
                ReqFraming::Length(64 << 20),
                body,
            ),
        )
        .await
        .expect("the sending was not stopped by the answer");
        assert!(matches!(r, Ok(Sent::Cut)), "{r:?}");
        assert!(conn.buf.starts_with(b"HTTP/1.1 413"));
    }

    #[tokio::test]
    async fn interim_answers_during_an_upload_do_not_stop_it() {
        for interim in [
            &b"HTTP/1.1 103 Early Hints\r\nlink: </s.css>\r\n\r\n"[..],
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\n",
        ] {
            let (mut conn, mut peer) = pair().await;
            let head_len = conn.out.len();
            // 8 MiB cannot fit in socket buffers: the sending waits while the interim
            // answer arrives, and the peer reads it all only afterwards.
            let total = 8 << 20;
            let reader = tokio::spawn(async move {
                peer.write_all(interim).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut got = 0;
                let mut chunk = vec![0u8; 1 << 16];
                while got < head_len + total {
                    let n = tokio::io::AsyncReadExt::read(&mut peer, &mut chunk)
                        .await
                        .unwrap();
                    assert!(n > 0, "the upload stopped after {got} bytes");
                    got += n;
                }
                peer
            });
            let mib = Bytes::from(vec![7u8; 1 << 20]);
            let body = Frames(std::iter::repeat_n(mib, 8).collect());
            let mut head = HeadParser::new();
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                write_streamed(&mut conn, &mut head, ReqFraming::Length(total as u64), body),
            )
            .await
            .expect("the upload stalled");
            assert!(matches!(r, Ok(Sent::Whole)), "{r:?}");
            let _peer = reader.await.unwrap();
            assert!(head.saw_interim());
            // The parser goes on from where the upload left it.
            conn.buf
                .extend_from_slice(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n");
            let h = head.parse(&mut conn.buf, false).unwrap().unwrap();
            assert_eq!(h.status.as_u16(), 201);
        }
    }

    #[tokio::test]
    async fn a_request_head_and_its_small_body_are_gathered_in_one_buffer_that_never_grows() {
        let (mut conn, mut peer) = pair().await;
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-provider-token",
            http::HeaderValue::from_str(&"s3cr3t".repeat(500)).unwrap(),
        );
        let body = Bytes::from(vec![b'b'; 20_000]);
        let request = RequestHead {
            method: &Method::POST,
            path_and_query: "/v1/check",
            host: "provider.example",
            headers: &headers,
            framing: ReqFraming::Length(body.len() as u64),
        };
        let body = RequestBody::Buffered(body);
        request.write(&mut conn.out, &body);
        // Growing from here on could free a copy of the head without zeroing it.
        let total = conn.out.len() + 20_000;
        let (at, room) = (conn.out.as_ptr(), conn.out.capacity());
        assert!(room >= total, "room for {room} bytes of {total}");
        let r = write_request(&mut conn, &mut HeadParser::new(), request.framing, body).await;
        assert!(matches!(r, Ok(Sent::Whole)), "{r:?}");
        assert_eq!(
            (conn.out.as_ptr(), conn.out.capacity()),
            (at, room),
            "the buffer holding the head grew"
        );
        let mut got = vec![0u8; total];
        tokio::io::AsyncReadExt::read_exact(&mut peer, &mut got)
            .await
            .unwrap();
        assert!(got.starts_with(b"POST /v1/check HTTP/1.1\r\nhost: provider.example\r\n"));
        assert!(got.ends_with(&[b'b'; 20_000]));
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_no_request_head() {
        let (mut conn, _peer) = pair().await;
        conn.out
            .extend_from_slice(b"x-provider-token: s3cr3t-provider-key\r\n\r\n");
        let pool = idle_pool();
        pool.inner.checkin(conn, true);
        let conn = pool.inner.checkout().expect("the connection was pooled");
        assert!(conn.out.is_empty(), "{} bytes kept", conn.out.len());
    }

    #[tokio::test]
    async fn bytes_that_arrive_on_an_idle_connection_take_it_out_of_the_pool() {
        let (conn, mut peer) = pair().await;
        let pool = idle_pool();
        pool.inner.checkin(conn, true);
        // The late rest of an answer, arriving without the task yielding in between: the
        // runtime has not yet seen it, the socket has.
        peer.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nlate!")
            .await
            .unwrap();
        peer.flush().await.unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(pool.inner.checkout().is_none());
    }
}
