//! The request on the wire: its head written with as much of its body as fits in one
//! `write`, the body framed as announced (`Content-Length`, or chunked), and the upstream
//! heard while the request is still going out.

use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method};
use http_body::Body;
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use crate::conn::{Conn, Io, ReadIo};
use crate::parse::HeadParser;
use crate::{CHUNK_FRAMING, Error, READ_CHUNK, RequestBody, WRITE_COALESCE};

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReqFraming {
    None,
    Length(u64),
    Chunked,
}

pub(crate) fn request_framing(method: &Method, body: &RequestBody) -> ReqFraming {
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
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path_and_query: &'a str,
    pub(crate) host: &'a str,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) framing: ReqFraming,
}

impl RequestHead<'_> {
    /// Hands the head's bytes to `put`, piece by piece.
    pub(crate) fn emit(&self, mut put: impl FnMut(&[u8])) {
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

    pub(crate) fn len(&self) -> usize {
        let mut len = 0;
        self.emit(|part| len += part.len());
        len
    }

    /// Puts the head in `out`, with room for what of `body` goes out with it, so that `out`
    /// is not reallocated while it holds the head (and the credential in it).
    pub(crate) fn write(&self, out: &mut Zeroizing<Vec<u8>>, body: &RequestBody) {
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
pub(crate) fn make_room(out: &mut Zeroizing<Vec<u8>>, more: usize) {
    if out.capacity() - out.len() >= more {
        return;
    }
    let mut bigger = Vec::with_capacity((out.len() + more).max(2 * out.capacity()));
    bigger.extend_from_slice(out);
    *out = Zeroizing::new(bigger);
}

/// A number's decimal digits without a heap allocation.
pub(crate) struct Digits {
    pub(crate) buf: [u8; 20],
    pub(crate) start: usize,
}

impl Digits {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

pub(crate) fn itoa_buf(mut n: u64) -> Digits {
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
pub(crate) enum Sent {
    Whole,
    Cut,
}

/// Writes the head gathered in `conn.out` and the body after it. Stops early when the
/// upstream answers (or closes) while the request is still going out: an upstream that
/// refuses a request before reading its body gets heard, not blocked on. The body must
/// match the framing announced in the head, or the request fails.
pub(crate) async fn write_request(
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
pub(crate) async fn write_streamed<B>(
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
pub(crate) async fn send(
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
pub(crate) async fn answered(
    r: &mut ReadIo,
    buf: &mut BytesMut,
    head: &mut HeadParser,
) -> Result<(), Error> {
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
