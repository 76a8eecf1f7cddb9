//! A response body from an upstream connection: handed over whole when it came with its
//! head, streamed from the connection otherwise, with a timeout on every wait for more and
//! a deadline for the whole body. [`Timed`] puts the same two limits on a body from another
//! client (hyper's).

use std::io;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::READ_CHUNK;
use crate::conn::Conn;
use crate::parse::{Chunk, ChunkedDecoder, ProtocolError};
use crate::pool::PoolInner;

/// A response body from an upstream connection. When the body is read to its end, the
/// connection goes back to the pool; a body dropped early closes it.
pub struct ResponseBody {
    pub(crate) state: BodyState,
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

pub(crate) enum BodyState {
    Done,
    Full(Bytes),
    Streaming(Box<Streaming>),
}

pub(crate) struct Streaming {
    pub(crate) conn: Option<Conn>,
    pub(crate) pool: Weak<PoolInner>,
    pub(crate) reusable: bool,
    pub(crate) framing: BodyFraming,
    pub(crate) clock: BodyClock,
}

/// How long a streaming body may take: each wait for more bytes at most `read_timeout`, and
/// the whole body, from its head, at most its `body_timeout`. A body that trickles a byte
/// now and then would otherwise hold its upstream connection, and its caller's, for ever.
/// No timer is made while reads complete without waiting; each read that brought bytes
/// costs one clock reading.
pub(crate) struct BodyClock {
    read_timeout: Duration,
    deadline: Instant,
    /// Made on the first read that has to wait; reset after each read that brought bytes.
    timer: Option<Pin<Box<Sleep>>>,
}

impl BodyClock {
    /// The clock of a body whose head arrived now.
    pub(crate) fn start(read_timeout: Duration, body_timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            read_timeout,
            // An absurd timeout is as good as none (a year from now is past every deadline
            // a configuration can mean).
            deadline: now
                .checked_add(body_timeout)
                .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600)),
            timer: None,
        }
    }

    fn wake_at(&self, now: Instant) -> Instant {
        now.checked_add(self.read_timeout)
            .map_or(self.deadline, |at| at.min(self.deadline))
    }

    /// A read has to wait: ready with the error once the wait, or the body, is out of time.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<BodyError> {
        let timer = match &mut self.timer {
            Some(timer) => timer,
            None => {
                let at = self.wake_at(Instant::now());
                self.timer.insert(Box::pin(tokio::time::sleep_until(at)))
            }
        };
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(if Instant::now() >= self.deadline {
            BodyError::Deadline
        } else {
            BodyError::Timeout
        })
    }

    /// A read brought bytes: the wait for more starts over, unless the body is out of time.
    fn progressed(&mut self) -> Result<(), BodyError> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(BodyError::Deadline);
        }
        let at = self.wake_at(now);
        if let Some(timer) = &mut self.timer {
            timer.as_mut().reset(at);
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) enum BodyFraming {
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
    #[error("upstream body: not complete within response_body_timeout")]
    Deadline,
    /// Another client's body failed.
    #[error("upstream body: {0}")]
    Upstream(Box<dyn std::error::Error + Send + Sync>),
}

impl ResponseBody {
    pub(crate) fn empty() -> Self {
        Self {
            state: BodyState::Done,
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            state: BodyState::Full(data),
        }
    }

    pub(crate) fn streaming(s: Streaming) -> Self {
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
                    let e = ready!(self.clock.poll_stalled(cx));
                    self.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if n == 0 {
                self.conn = None;
                return match self.framing {
                    BodyFraming::UntilClose => Poll::Ready(None),
                    _ => Poll::Ready(Some(Err(BodyError::Truncated))),
                };
            }
            if let Err(e) = self.clock.progressed() {
                self.conn = None;
                return Poll::Ready(Some(Err(e)));
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

/// Another client's response body under the same limits as the own client's: each wait for
/// more at most `read_timeout`, the whole body at most `body_timeout` from its head.
pub struct Timed<B> {
    body: B,
    clock: BodyClock,
    /// Out of time (`Some(true)`: the whole body's deadline): every later poll says so again.
    expired: Option<bool>,
}

impl<B> Timed<B> {
    /// `body` is the body of a response whose head arrived now.
    pub fn new(body: B, read_timeout: Duration, body_timeout: Duration) -> Self {
        Self {
            body,
            clock: BodyClock::start(read_timeout, body_timeout),
            expired: None,
        }
    }
}

/// The state only: the body is the upstream's data.
impl<B> std::fmt::Debug for Timed<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timed")
            .field("expired", &self.expired)
            .finish_non_exhaustive()
    }
}

impl<B> Body for Timed<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BodyError>>> {
        let this = self.get_mut();
        let expired = |deadline| match deadline {
            true => BodyError::Deadline,
            false => BodyError::Timeout,
        };
        if let Some(deadline) = this.expired {
            return Poll::Ready(Some(Err(expired(deadline))));
        }
        let e = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match this.clock.progressed() {
                Ok(()) => return Poll::Ready(Some(Ok(frame))),
                Err(e) => e,
            },
            Poll::Ready(Some(Err(e))) => {
                return Poll::Ready(Some(Err(BodyError::Upstream(e.into()))));
            }
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => ready!(this.clock.poll_stalled(cx)),
        };
        this.expired = Some(matches!(e, BodyError::Deadline));
        Poll::Ready(Some(Err(e)))
    }

    fn is_end_stream(&self) -> bool {
        self.expired.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
