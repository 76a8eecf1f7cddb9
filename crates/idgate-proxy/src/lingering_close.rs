//! Lingering close for HTTP/1.1 connections, as nginx's `lingering_close` does.
//!
//! A socket closed with bytes of the caller's still unread makes the kernel send a reset,
//! and a reset can destroy the answer before the caller has read it: a caller still sending
//! a refused upload then sees `Connection reset` instead of the problem. So when the gateway
//! closes a connection while the caller may still be sending, [`LingeringClose`] shuts the
//! write side down (TLS `close_notify`, then TCP FIN: the answer is complete and ends
//! cleanly) and reads and discards what still arrives until the caller closes its side or
//! one of the [`Bounds`] is reached (a silence, a total time, an amount). Only then is the
//! socket closed.
//!
//! The caller may still be sending when the pipeline said so (an answer given before the
//! request body was read, see [`crate::conn::LingerOnClose`]) or when bytes are waiting to
//! be read at the close. A connection that closes normally costs one read attempt at most, none when the
//! caller closed first. The lingering happens inside the connection's task, so a lingering
//! connection keeps its place under `max_connections` and `max_connections_per_ip`, and the
//! bounds above keep it well inside the shutdown drain.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::conn::ConnInfo;

/// How long and how much a closing connection reads of what its caller still sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// The longest it lingers in all (nginx: `lingering_time`).
    pub(crate) time: Duration,
    /// The longest it waits for more (nginx: `lingering_timeout`): a caller that has read
    /// the answer stops sending at once.
    pub(crate) silence: Duration,
    /// The most it reads away: a caller still sending past this has not read the answer.
    pub(crate) bytes: usize,
}

impl Bounds {
    /// A few seconds, well inside the shutdown drain; more than what the kernel's buffers
    /// hold when the caller notices the answer.
    pub(crate) const DEFAULT: Self = Self {
        time: Duration::from_secs(5),
        silence: Duration::from_secs(1),
        bytes: 16 * 1024 * 1024,
    };
}

/// How one connection is closed.
#[derive(Debug)]
enum Closing {
    Open,
    Lingering(Linger),
    Closed,
}

#[derive(Debug)]
struct Linger {
    /// The end of the current silence, never past `ends`.
    timer: Pin<Box<Sleep>>,
    ends: Instant,
    silence: Duration,
    left: usize,
}

/// Why lingering stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// The caller closed its side (or reset the connection): nothing is left to reset.
    CallerDone,
    Silent,
    TimeUp,
    TooMuch,
}

impl Linger {
    fn start(bounds: Bounds, already_read: usize) -> Self {
        let now = Instant::now();
        let ends = now + bounds.time;
        Self {
            timer: Box::pin(tokio::time::sleep_until((now + bounds.silence).min(ends))),
            ends,
            silence: bounds.silence,
            left: bounds.bytes.saturating_sub(already_read),
        }
    }

    fn poll<T: AsyncRead + Unpin>(&mut self, io: &mut T, cx: &mut Context<'_>) -> Poll<Ended> {
        if self.left == 0 {
            return Poll::Ready(Ended::TooMuch);
        }
        loop {
            match discard(io, cx) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Ended::CallerDone),
                Poll::Ready(Ok(n)) => {
                    self.left = self.left.saturating_sub(n);
                    if self.left == 0 {
                        return Poll::Ready(Ended::TooMuch);
                    }
                    let at = (Instant::now() + self.silence).min(self.ends);
                    self.timer.as_mut().reset(at);
                }
                Poll::Pending => break,
            }
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        Poll::Ready(if Instant::now() >= self.ends {
            Ended::TimeUp
        } else {
            Ended::Silent
        })
    }
}

/// Reads what is there and throws it away; `Ok(0)` is the caller's end of the stream.
fn discard<T: AsyncRead + Unpin>(io: &mut T, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
    let mut scratch = [MaybeUninit::<u8>::uninit(); 8192];
    let mut buf = ReadBuf::uninit(&mut scratch);
    ready!(Pin::new(io).poll_read(cx, &mut buf))?;
    Poll::Ready(Ok(buf.filled().len()))
}

/// An HTTP/1.1 connection whose shutdown lingers while its caller may still be sending.
pub(crate) struct LingeringClose<T> {
    io: T,
    conn: Arc<ConnInfo>,
    bounds: Bounds,
    /// The caller closed its side: there is nothing to linger for.
    read_eof: bool,
    closing: Closing,
}

impl<T> LingeringClose<T> {
    /// `conn` is where the pipeline asks for a lingering close.
    pub(crate) fn new(io: T, conn: Arc<ConnInfo>, bounds: Bounds) -> Self {
        Self {
            io,
            conn,
            bounds,
            read_eof: false,
            closing: Closing::Open,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for LingeringClose<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() == before && buf.remaining() > 0 {
            this.read_eof = true;
        }
        r
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LingeringClose<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// Shuts the write side down, then lingers if the caller may still be sending; the
    /// socket closes when the connection is dropped after this returns.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.closing {
                Closing::Open => {
                    ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
                    this.closing = if this.read_eof {
                        Closing::Closed
                    } else if this.conn.linger_on_close.requested() {
                        Closing::Lingering(Linger::start(this.bounds, 0))
                    } else {
                        // Whatever is waiting now would be answered with a reset.
                        match discard(&mut this.io, cx) {
                            Poll::Ready(Ok(n)) if n > 0 => {
                                Closing::Lingering(Linger::start(this.bounds, n))
                            }
                            _ => Closing::Closed,
                        }
                    };
                }
                Closing::Lingering(linger) => {
                    let ended = ready!(linger.poll(&mut this.io, cx));
                    if ended != Ended::CallerDone {
                        tracing::debug!(
                            remote = %this.conn.remote.ip(),
                            why = ?ended,
                            "closed while the caller was still sending"
                        );
                    }
                    this.closing = Closing::Closed;
                }
                Closing::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::LingerOnClose;
    use http::HeaderValue;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Short bounds, so that the tests run in real time, yet long enough that a loaded
    /// machine's scheduling delays (a close "at once" that takes a few hundred ms, a
    /// trickling caller's pause stretched as much) never pass for a silence.
    const BOUNDS: Bounds = Bounds {
        time: Duration::from_secs(3),
        silence: Duration::from_secs(1),
        bytes: 1024 * 1024,
    };

    /// The gateway's end, and the caller's.
    fn pair(asked: bool) -> (LingeringClose<DuplexStream>, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let conn = Arc::new(ConnInfo {
            peer: None,
            remote: "127.0.0.1:1".parse().unwrap(),
            via: None,
            remote_ip: HeaderValue::from_static("127.0.0.1"),
            trusted_proxy: false,
            cert_thumbprint: None,
            linger_on_close: LingerOnClose::default(),
        });
        if asked {
            conn.linger_on_close.request();
        }
        (LingeringClose::new(ours, conn, BOUNDS), theirs)
    }

    /// A caller that sends `piece` every `every` until the gateway's end is gone.
    fn trickle(
        mut caller: DuplexStream,
        piece: usize,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let piece = vec![b'x'; piece];
            while caller.write_all(&piece).await.is_ok() {
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Shuts `ours` down; how long that took.
    async fn close(ours: &mut LingeringClose<DuplexStream>) -> Duration {
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), ours.shutdown())
            .await
            .expect("the close did not end")
            .unwrap();
        started.elapsed()
    }

    #[tokio::test]
    async fn a_close_nobody_asked_to_linger_with_nothing_waiting_is_at_once() {
        let (mut ours, mut caller) = pair(false);
        assert!(close(&mut ours).await < BOUNDS.silence);
        // The write side is shut: the caller sees the end of the stream.
        assert_eq!(caller.read(&mut [0u8; 16]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_caller_that_closed_first_is_not_waited_for() {
        let (mut ours, caller) = pair(true);
        drop(caller);
        assert_eq!(ours.read(&mut [0u8; 16]).await.unwrap(), 0);
        assert!(close(&mut ours).await < BOUNDS.silence);
    }

    #[tokio::test]
    async fn an_asked_for_close_reads_until_the_caller_has_the_answer_and_closes() {
        let (mut ours, mut caller) = pair(true);
        let sender = tokio::spawn(async move {
            for _ in 0..3 {
                caller.write_all(&[b'x'; 1000]).await.unwrap();
                tokio::time::sleep(BOUNDS.silence / 4).await;
            }
            // The caller reads to the answer's end, then closes.
            assert_eq!(caller.read(&mut [0u8; 16]).await.unwrap(), 0);
        });
        let took = close(&mut ours).await;
        sender.await.unwrap();
        // Through the caller's pauses, and not to the time bound.
        assert!(took >= BOUNDS.silence * 3 / 4, "{took:?}");
        assert!(took < BOUNDS.time, "{took:?}");
    }

    #[tokio::test]
    async fn bytes_waiting_at_the_close_make_it_linger_unasked() {
        let (mut ours, mut caller) = pair(false);
        caller.write_all(b"more of a body").await.unwrap();
        let took = close(&mut ours).await;
        assert!(took >= BOUNDS.silence, "{took:?}");
    }

    #[tokio::test]
    async fn lingering_ends_after_a_silence() {
        let (mut ours, _caller) = pair(true);
        let took = close(&mut ours).await;
        assert!(took >= BOUNDS.silence, "{took:?}");
        assert!(took < BOUNDS.time, "{took:?}");
    }

    #[tokio::test]
    async fn a_caller_that_never_stops_is_cut_off_after_the_lingering_time() {
        let (mut ours, caller) = pair(true);
        let sender = trickle(caller, 100, BOUNDS.silence / 4);
        let took = close(&mut ours).await;
        assert!(took >= BOUNDS.time, "{took:?}");
        drop(ours);
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_caller_that_sends_too_much_is_cut_off_after_the_bytes_bound() {
        let (mut ours, caller) = pair(true);
        // Never silent, and far more than the bound well within the lingering time.
        let sender = trickle(caller, 64 * 1024, Duration::from_millis(1));
        let took = close(&mut ours).await;
        assert!(took < BOUNDS.time, "{took:?}");
        drop(ours);
        sender.await.unwrap();
    }
}
