//! The idle connections of one upstream, and one exchange on a connection: the request
//! written, the response head read, the connection given back when the exchange is provably
//! over on both sides.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Response, Version};
use http_body::Body as _;
use tokio::net::TcpStream;
use zeroize::{Zeroize as _, Zeroizing};

use crate::body::{BodyClock, BodyFraming, ResponseBody, Streaming};
use crate::conn::{Conn, Io, ReadIo, WriteIo};
use crate::limit::{Acquired, Slot};
use crate::parse::{ChunkedDecoder, Framing, HeadParser};
use crate::write::{ReqFraming, RequestHead, Sent, request_framing, write_request};
use crate::{
    Error, PoolConfig, Progress, READ_CHUNK, RequestBody, SendError, Stage, WRITE_COALESCE,
};

/// The idle connections of one upstream.
#[derive(Debug)]
pub struct Pool {
    pub(crate) inner: Arc<PoolInner>,
}

#[derive(Debug)]
pub(crate) struct PoolInner {
    pub(crate) config: PoolConfig,
    pub(crate) idle: Mutex<Vec<Conn>>,
    pub(crate) sweeper: AtomicBool,
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
    /// `Expect` headers are the client's own). `progress` follows the exchange (the caller
    /// bounds it in time).
    pub async fn send(
        &self,
        method: &Method,
        path_and_query: &str,
        headers: &HeaderMap,
        body: RequestBody,
        progress: &Progress,
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
        // Before a connection is taken, so that none sits idle while the others run.
        crate::batch::after_ready_tasks().await;
        loop {
            progress.set(Stage::Queued);
            let (conn, reused) = match self.inner.obtain(fresh, progress).await {
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
            // A body still streaming in from the caller goes at the caller's pace.
            progress.set(match &this_body {
                RequestBody::Stream(b) if !b.is_end_stream() => Stage::Streaming,
                _ => Stage::Sending,
            });
            match self
                .exchange(conn, &request, this_body, head_request, progress)
                .await
            {
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
        progress: &Progress,
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
        progress.set(Stage::Sent);
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
                clock: BodyClock::start(
                    self.inner.config.body_read_timeout,
                    self.inner.config.body_timeout,
                ),
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
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) answered: bool,
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
    pub(crate) fn idle(&self) -> MutexGuard<'_, Vec<Conn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle connection (unless `fresh`), or a new one once the cap allows.
    pub(crate) async fn obtain(
        &self,
        fresh: bool,
        progress: &Progress,
    ) -> Result<(Conn, bool), Error> {
        let idle = || if fresh { None } else { self.checkout() };
        match self.config.limit.acquire(idle).await? {
            Acquired::Reused(conn) => Ok((conn, true)),
            Acquired::New(slot) => {
                progress.set(Stage::Connecting);
                Ok((self.connect(slot).await?, false))
            }
        }
    }

    pub(crate) fn checkout(&self) -> Option<Conn> {
        let now = Instant::now();
        loop {
            let mut conn = self.idle().pop()?;
            if now.duration_since(conn.idle_since) < self.config.idle_timeout && conn.still_open() {
                return Some(conn);
            }
        }
    }

    pub(crate) fn checkin(self: &Arc<Self>, mut conn: Conn, reusable: bool) {
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
    pub(crate) fn start_sweeper(self: &Arc<Self>) {
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

    pub(crate) async fn connect(&self, slot: Slot) -> Result<Conn, Error> {
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
