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
//! Over HTTP/2 a body is handed to hyper at most [`H2_FRAME`] bytes at a time: hyper gives
//! a data frame to h2 as soon as the stream has one byte of window, and h2 then holds
//! whatever does not fit for as long as the caller keeps the window shut. A large answer
//! made in one piece (masked, checked, cached) would otherwise be held whole, its stream
//! open until the connection ends, out of the watch's reach. Each piece of such an answer
//! is a copy, so a piece h2 holds keeps only its own bytes alive, not the whole answer; and
//! its last byte is handed alone, with the end of the stream: hyper hands over a piece only
//! once the stream's window covers all it has handed before, so the stream's task (and its
//! watch) lasts until the caller has taken all but that byte, which needs no more window
//! than the one hyper waited for.
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

use bytes::{Buf, Bytes};
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
    /// HTTP/2: told when the first bytes are read from the caller, then let go.
    unheard: Option<Arc<Activity>>,
}

impl<T> SendDeadline<T> {
    pub(crate) fn new(io: T, timeout: Duration, metrics: Arc<Metrics>, remote: SocketAddr) -> Self {
        Self {
            io,
            timeout,
            deadline: Deadline::default(),
            metrics,
            remote,
            unheard: None,
        }
    }

    /// Tells `activity` when the caller's first bytes are read, so that an idle connection
    /// that has heard its client's preface is told to go away rather than dropped.
    pub(crate) fn telling(mut self, activity: Arc<Activity>) -> Self {
        self.unheard = Some(activity);
        self
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
        let this = self.get_mut();
        let Some(activity) = &this.unheard else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            activity.heard.store(true, Ordering::Relaxed);
            this.unheard = None;
        }
        r
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

/// The most bytes of an HTTP/2 response body handed to hyper at once (h2's default largest
/// frame): what h2 may hold for a caller whose window stays shut, per stream.
const H2_FRAME: usize = 16 * 1024;

/// A response body that reports to its stream's watch (HTTP/2; over HTTP/1.1 it reports to
/// nothing and [`SendDeadline`] does the work).
pub(crate) struct Sending<B> {
    body: B,
    watch: Option<Arc<StreamWatch>>,
    /// HTTP/2: what is left of a data frame larger than [`H2_FRAME`], handed on before the
    /// body is asked for more.
    rest: Bytes,
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
            rest: Bytes::new(),
            _request: request,
        }
    }
}

/// The first piece of `data` to hand hyper, what is left of it in `rest`; a frame of at
/// most [`H2_FRAME`] bytes is passed as it is. A larger one goes in copies of at most
/// [`H2_FRAME`] bytes: h2 may hold a piece for as long as the caller's window stays shut,
/// and a slice would keep the whole frame alive with it. When the body `ends` with this
/// frame, its last byte is a piece of its own, the one sent with the end of the stream.
fn first_piece(data: Bytes, rest: &mut Bytes, ends: bool) -> Bytes {
    if data.len() > H2_FRAME {
        *rest = data;
        next_piece(rest, ends)
    } else {
        data
    }
}

/// The next copied piece of `rest` (not empty), as [`first_piece`] cuts it.
fn next_piece(rest: &mut Bytes, ends: bool) -> Bytes {
    let most = if ends {
        rest.len().saturating_sub(1)
    } else {
        rest.len()
    };
    let n = most.clamp(1, H2_FRAME);
    let piece = Bytes::copy_from_slice(&rest[..n]);
    if n == rest.len() {
        // An empty slice would still hold the frame's allocation.
        *rest = Bytes::new();
    } else {
        rest.advance(n);
    }
    piece
}

impl<B: Body<Data = Bytes> + Unpin> Body for Sending<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let Some(w) = &this.watch else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        // The stream task polls both this body and its watch, so relaxed order is enough.
        w.waiting.store(false, Ordering::Relaxed);
        let r = if this.rest.is_empty() {
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let ends = this.body.is_end_stream();
                        Poll::Ready(Some(Ok(Frame::data(first_piece(
                            data,
                            &mut this.rest,
                            ends,
                        )))))
                    }
                    Err(other) => return Poll::Ready(Some(Ok(other))),
                },
                other => return other,
            }
        } else {
            let ends = this.body.is_end_stream();
            Poll::Ready(Some(Ok(Frame::data(next_piece(&mut this.rest, ends)))))
        };
        w.frames.fetch_add(1, Ordering::Relaxed);
        w.waiting.store(true, Ordering::Relaxed);
        r
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.body.size_hint();
        if self.rest.is_empty() {
            return hint;
        }
        let rest = self.rest.len() as u64;
        let mut more = SizeHint::new();
        more.set_lower(hint.lower().saturating_add(rest));
        if let Some(upper) = hint.upper() {
            more.set_upper(upper.saturating_add(rest));
        }
        more
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

/// Requests of a connection in progress, and when one last ended.
pub(crate) struct Activity {
    since: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended, in milliseconds after `since` (0: none has).
    last: AtomicU64,
    /// Whether the client has sent a byte since the TLS handshake (its preface first).
    heard: AtomicBool,
    /// Whether a request has begun on the connection.
    began: AtomicBool,
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
            heard: AtomicBool::new(false),
            began: AtomicBool::new(false),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// No clock is read here: while a request is in progress the connection is not idle,
    /// and its idleness starts when the last one ends.
    pub(crate) fn begin(self: Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        if !self.began.load(Ordering::Relaxed) {
            self.began.store(true, Ordering::Relaxed);
        }
        InFlight(self)
    }

    /// Whether no request has begun on the connection yet.
    pub(crate) fn never_began(&self) -> bool {
        !self.began.load(Ordering::Relaxed)
    }

    /// Whether the client has sent nothing since the TLS handshake, not even its connection
    /// preface: no request can have begun, and it cannot be told to go away. (Set by the
    /// connection's reads, see [`SendDeadline::telling`].)
    pub(crate) fn silent(&self) -> bool {
        !self.heard.load(Ordering::Relaxed)
    }

    /// When the connection will have had no request in progress for `idle`, as things
    /// stand; `None` while one is in progress.
    pub(crate) fn idle_at(&self, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Relaxed) != 0 {
            return None;
        }
        Some(self.since + Duration::from_millis(self.last.load(Ordering::Relaxed)) + idle)
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
    use http_body_util::Full;
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

    /// The data frames `body` hands to hyper on an HTTP/2 stream, and whether it says it has
    /// ended after the last.
    async fn frames_on_a_stream(body: Full<Bytes>) -> (Vec<Bytes>, bool) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stream = async move {
            let mut body = Sending::new(body, None);
            let mut frames = Vec::new();
            while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                if let Ok(data) = frame.unwrap().into_data() {
                    frames.push(data);
                }
                if body.is_end_stream() {
                    break;
                }
            }
            let _ = tx.send((frames, body.is_end_stream()));
        };
        watch_stream(stream, TIMEOUT, Arc::new(Metrics::new())).await;
        rx.await.unwrap()
    }

    #[tokio::test]
    async fn a_small_answer_goes_to_an_http2_stream_whole_and_untouched() {
        let answer = Bytes::from(vec![b'x'; H2_FRAME]);
        let (frames, ended) = frames_on_a_stream(Full::new(answer.clone())).await;
        assert_eq!(frames.len(), 1);
        // The very same bytes: not copied, not split.
        assert_eq!(frames[0].as_ptr(), answer.as_ptr());
        assert_eq!(frames[0].len(), answer.len());
        assert!(ended);
    }

    #[tokio::test]
    async fn a_large_answer_goes_to_an_http2_stream_in_frames_of_at_most_16_kib() {
        let answer: Bytes = (0..H2_FRAME * 5 + 7)
            .map(|i| i as u8)
            .collect::<Vec<u8>>()
            .into();
        let body = Full::new(answer.clone());
        assert_eq!(body.size_hint().exact(), Some(answer.len() as u64));
        let (frames, ended) = frames_on_a_stream(body).await;
        // Five full frames, the six bytes after them, and the last byte alone.
        let sizes: Vec<usize> = frames.iter().map(Bytes::len).collect();
        assert_eq!(
            sizes,
            [H2_FRAME, H2_FRAME, H2_FRAME, H2_FRAME, H2_FRAME, 6, 1]
        );
        assert_eq!(frames.concat(), answer);
        assert!(ended);
    }

    /// An answer's bytes that say when the answer's allocation is freed.
    struct Owned(Vec<u8>, Arc<AtomicBool>);

    impl AsRef<[u8]> for Owned {
        fn as_ref(&self) -> &[u8] {
            &self.0
        }
    }

    impl Drop for Owned {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_last_piece_of_a_large_answer_holds_only_its_own_bytes() {
        let freed = Arc::new(AtomicBool::new(false));
        let answer = Bytes::from_owner(Owned(vec![b'x'; 64 * H2_FRAME], freed.clone()));
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stream = async move {
            let mut body = Sending::new(Full::new(answer), None);
            let mut last = None;
            while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                // Each piece is let go as the next is taken, as h2 does once it is sent.
                last = frame.unwrap().into_data().ok();
                if body.is_end_stream() {
                    break;
                }
            }
            // The body has ended but lives on with its stream, and h2 holds its last piece
            // for a caller who never opens the window for it.
            let _ = tx.send((last, body.is_end_stream(), body));
        };
        watch_stream(stream, TIMEOUT, Arc::new(Metrics::new())).await;
        let (last, ended, _body) = rx.await.unwrap();
        assert!(ended);
        assert_eq!(last.map(|b| b.len()), Some(1), "the last byte goes alone");
        assert!(
            freed.load(Ordering::SeqCst),
            "a piece of the answer still holds all of it"
        );
    }

    #[test]
    fn over_http1_an_answer_is_passed_as_it_is() {
        let answer = Bytes::from(vec![b'x'; H2_FRAME * 4]);
        let mut body = Sending::new(Full::new(answer.clone()), None);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) else {
            panic!("no frame");
        };
        assert_eq!(frame.into_data().unwrap(), answer);
        assert!(body.is_end_stream());
    }
}
