//! `send_timeout`: a response the caller does not read must not hold its connection, its
//! HTTP/2 stream or its upstream connection for ever.
//!
//! Two places can stall. The socket: the caller stops reading, the kernel's buffers fill,
//! and writing to the connection returns `Pending` ([`SendDeadline`], any protocol; the
//! connection is closed). The HTTP/2 stream: the caller keeps the connection alive but never
//! opens the stream's flow-control window, so hyper holds the next chunk and stops asking
//! the body for more ([`watch_stream`] with [`Sending`]; the stream is reset). Either way
//! the response body is dropped, and with it the upstream connection it was reading from,
//! which is closed rather than pooled because its body is incomplete.
//!
//! No timer runs while writes complete: a deadline is armed only when a write returns
//! `Pending` (or a stream starts waiting for window), and a write that completes disarms it
//! with one store. An HTTP/2 stream costs one small allocation for its watch.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// A deadline armed when progress stops and disarmed when it resumes; its timer is made
/// once, on the first stall, and reset after that.
#[derive(Debug, Default)]
struct Deadline {
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Deadline {
    /// Arms the deadline if it is not, and tells whether it has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>, after: Duration) -> bool {
        if !self.armed {
            let at = Instant::now() + after;
            match &mut self.timer {
                Some(t) => t.as_mut().reset(at),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            self.armed = true;
        }
        self.timer
            .as_mut()
            .is_some_and(|t| t.as_mut().poll(cx).is_ready())
    }
}

/// The caller's connection, failing a write that has made no progress for `timeout`.
pub(crate) struct SendDeadline<T> {
    io: T,
    timeout: Duration,
    deadline: Deadline,
    metrics: Arc<Metrics>,
    remote: SocketAddr,
}

impl<T> SendDeadline<T> {
    pub(crate) fn new(io: T, timeout: Duration, metrics: Arc<Metrics>, remote: SocketAddr) -> Self {
        Self {
            io,
            timeout,
            deadline: Deadline::default(),
            metrics,
            remote,
        }
    }

    fn track<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.deadline.armed = false;
            return r;
        }
        if !self.deadline.poll_expired(cx, self.timeout) {
            return Poll::Pending;
        }
        self.deadline.armed = false;
        self.metrics.send_timed_out("connection");
        tracing::info!(remote = %self.remote.ip(), "caller did not read the response within send_timeout: connection closed");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the caller read nothing within send_timeout",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendDeadline<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendDeadline<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.track(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.track(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.track(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.track(cx, r)
    }
}

/// What an HTTP/2 stream's response body tells the task that sends it.
#[derive(Debug, Default)]
pub(crate) struct StreamWatch {
    /// Data frames handed to hyper so far.
    frames: AtomicU64,
    /// The response head or a frame is with hyper and the body has not been asked for the
    /// next frame since: hyper is waiting for the caller's flow-control window.
    waiting: AtomicBool,
}

tokio::task_local! {
    /// The watch of the HTTP/2 stream whose task is running.
    static STREAM: Arc<StreamWatch>;
}

/// A response body that reports to its stream's watch (HTTP/2; over HTTP/1.1 it reports to
/// nothing and [`SendDeadline`] does the work).
pub(crate) struct Sending<B> {
    body: B,
    watch: Option<Arc<StreamWatch>>,
    /// HTTP/2: the request counts as in progress until hyper drops its body, at its end or
    /// at the stream's reset.
    _request: Option<InFlight>,
}

impl<B> Sending<B> {
    /// Wraps a response made in the stream's task. From here until hyper first asks for the
    /// body, the stream counts as waiting for the caller: hyper may wait for window before it
    /// asks, and a caller whose window stays closed must not hold the stream for ever.
    pub(crate) fn new(body: B, request: Option<InFlight>) -> Self {
        let watch = STREAM.try_with(Arc::clone).ok();
        if let Some(w) = &watch {
            w.waiting.store(true, Ordering::Relaxed);
        }
        Self {
            body,
            watch,
            _request: request,
        }
    }
}

impl<B: Body + Unpin> Body for Sending<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        // The stream task polls both this body and its watch, so relaxed order is enough.
        if let Some(w) = &this.watch {
            w.waiting.store(false, Ordering::Relaxed);
        }
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let (Some(w), Poll::Ready(Some(Ok(frame)))) = (&this.watch, &r)
            && frame.is_data()
        {
            w.frames.fetch_add(1, Ordering::Relaxed);
            w.waiting.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Runs one HTTP/2 stream's task; when its response has waited `timeout` for the caller's
/// window without any progress, the task ends, which drops the stream (hyper then resets it)
/// and its response body.
async fn watch_stream<F: Future<Output = ()>>(stream: F, timeout: Duration, metrics: Arc<Metrics>) {
    let watch = Arc::new(StreamWatch::default());
    let mut stream = pin!(stream);
    let mut deadline = Deadline::default();
    let mut armed_at = 0;
    let stalled = poll_fn(|cx| {
        if STREAM
            .sync_scope(watch.clone(), || stream.as_mut().poll(cx))
            .is_ready()
        {
            return Poll::Ready(false);
        }
        if !watch.waiting.load(Ordering::Relaxed) {
            deadline.armed = false;
            return Poll::Pending;
        }
        // A frame sent since the deadline was armed is progress: arm it afresh.
        let frames = watch.frames.load(Ordering::Relaxed);
        if frames != armed_at {
            deadline.armed = false;
            armed_at = frames;
        }
        if deadline.poll_expired(cx, timeout) {
            Poll::Ready(true)
        } else {
            Poll::Pending
        }
    })
    .await;
    if stalled {
        metrics.send_timed_out("stream");
        tracing::info!(
            "caller did not open the HTTP/2 stream's window within send_timeout: stream reset"
        );
    }
}

/// Spawns hyper's HTTP/2 stream tasks, each under [`watch_stream`].
#[derive(Clone)]
pub(crate) struct StreamExecutor {
    pub(crate) timeout: Duration,
    pub(crate) metrics: Arc<Metrics>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(watch_stream(fut, self.timeout, self.metrics.clone()));
    }
}

/// Requests of an HTTP/2 connection in progress, and when one last started or ended.
pub(crate) struct Activity {
    since: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `since`.
    last: AtomicU64,
}

/// A request in progress: from its arrival until its response body has ended or been
/// dropped, since a connection still sending a response is not idle. Its end is activity
/// too.
pub(crate) struct InFlight(Arc<Activity>);

impl Activity {
    pub(crate) fn new(since: Instant) -> Self {
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

    pub(crate) fn begin(self: Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.touch();
        InFlight(self)
    }

    /// Whether no request has been in progress for `idle`.
    pub(crate) fn idle_for(&self, idle: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self
                .since
                .elapsed()
                .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
                >= idle
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::convert::Infallible;

    /// A response body whose upstream has not sent anything yet.
    struct Silent;

    impl Body for Silent {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    const TIMEOUT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_stream_whose_body_is_never_asked_for_after_its_head_ends_at_the_deadline() {
        // Made its response, then waits for window before it asks for the body.
        let stream = async {
            let _response = Sending::new(Silent, None);
            std::future::pending::<()>().await
        };
        let watched = watch_stream(stream, TIMEOUT, Arc::new(Metrics::new()));
        tokio::time::timeout(Duration::from_secs(10), watched)
            .await
            .expect("the stream was held past send_timeout");
    }

    #[tokio::test]
    async fn a_stream_whose_body_waits_for_its_upstream_is_left_running() {
        let stream = async {
            let mut body = Sending::new(Silent, None);
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        };
        let watched = watch_stream(stream, TIMEOUT, Arc::new(Metrics::new()));
        assert!(
            tokio::time::timeout(TIMEOUT * 10, watched).await.is_err(),
            "a stream waiting for its upstream was ended"
        );
    }
}
