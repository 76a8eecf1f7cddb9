//! A response body from an upstream connection: handed over whole when it came with its
//! head, streamed from the connection otherwise, with a timeout on every wait for more.

use std::io;
use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

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
    /// The longest wait for the next bytes, and its timer once a read had to wait.
    pub(crate) read_timeout: Duration,
    pub(crate) timer: Option<Pin<Box<tokio::time::Sleep>>>,
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
