//! One connection to an upstream: its two directions, cleartext or TLS, the bytes read from
//! it and not yet used, and the bytes gathered for its next write.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_rustls::client::TlsStream;
use zeroize::Zeroizing;

use crate::READ_CHUNK;
use crate::limit::Slot;

/// The two directions of an upstream connection, cleartext or TLS. Split, so that the
/// upstream can be heard while a request is still being written.
pub(crate) struct Io {
    pub(crate) r: ReadIo,
    pub(crate) w: WriteIo,
}

pub(crate) enum ReadIo {
    Plain(OwnedReadHalf),
    /// With a second handle on the socket, to look at it under the TLS layer.
    Tls(ReadHalf<TlsStream<TcpStream>>, socket2::Socket),
}

pub(crate) enum WriteIo {
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
    pub(crate) fn bytes_waiting(&self) -> bool {
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
pub(crate) struct Conn {
    pub(crate) io: Io,
    pub(crate) buf: BytesMut,
    /// Bytes gathered for the next `write`, kept from request to request. Zeroed when the
    /// connection goes idle or away: the last request head holds the injected credential.
    pub(crate) out: Zeroizing<Vec<u8>>,
    pub(crate) idle_since: Instant,
    /// Its place under the upstream's connection cap, freed when it closes.
    pub(crate) _slot: Option<Slot>,
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
    pub(crate) fn still_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut rb = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        matches!(
            Pin::new(&mut self.io.r).poll_read(&mut cx, &mut rb),
            Poll::Pending
        ) && !self.io.r.bytes_waiting()
    }

    pub(crate) async fn read_more(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK);
        tokio::io::AsyncReadExt::read_buf(&mut self.io.r, &mut self.buf).await
    }
}
