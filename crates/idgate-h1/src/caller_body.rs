//! A caller's request body on its way upstream, held to the route's limits as it streams:
//! at most `max_body_bytes` in all, and no wait longer than `body_timeout` for its next
//! piece. A body over either ends with a [`CallerBodyError`] that the gateway answers as
//! 413 or 408. The caller's trailer fields are headers too, arriving after the gateway
//! stripped the head of what a caller may not send (a forged credential or forwarding
//! field): they are dropped, unless a [`TrailerFilter`] is given, which strips them the
//! same way before they go on (the HTTP/2 client forwards trailers; the gateway's own
//! HTTP/1.1 client writes none). A client that drives the body itself (hyper's) learns
//! from it when the whole body has gone on ([`CallerBody::with_progress`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use crate::{Progress, Stage};

/// Why a streamed caller body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum CallerBodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("no request body data for {0:?}")]
    Stalled(Duration),
    #[error("reading the request body failed: {0}")]
    Read(#[source] hyper::Error),
}

impl CallerBodyError {
    /// The first `CallerBodyError` in an error's chain, if any: the upstream client wraps it.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut cur = Some(e);
        while let Some(err) = cur {
            if let Some(found) = err.downcast_ref::<Self>() {
                return Some(found);
            }
            cur = err.source();
        }
        None
    }
}

/// What may go on of a caller's trailer fields: the filter removes the rest. Trailers it
/// leaves empty are not sent at all.
pub trait TrailerFilter: Send + Sync {
    fn filter(&self, trailers: &mut HeaderMap);
}

/// The caller's body with its limits.
pub struct CallerBody {
    inner: Incoming,
    left: u64,
    limit: u64,
    gap: Duration,
    /// Armed while waiting for the caller; disarmed by each piece that arrives.
    wait: Option<Pin<Box<Sleep>>>,
    /// `None`: the caller's trailers are dropped.
    trailers: Option<Arc<dyn TrailerFilter>>,
    /// Told [`Stage::Sent`] once the body's end was handed on.
    progress: Option<Arc<Progress>>,
}

impl CallerBody {
    pub fn new(inner: Incoming, limit: u64, gap: Duration) -> Self {
        Self {
            inner,
            left: limit,
            limit,
            gap,
            wait: None,
            trailers: None,
            progress: None,
        }
    }

    /// Tells `progress` how the body goes, for a client that reads it itself and says
    /// nothing of it: [`Stage::Streaming`] while the caller's next piece is awaited,
    /// [`Stage::Sending`] once a piece has been handed on, [`Stage::Sent`] once the end has.
    pub fn with_progress(mut self, progress: Arc<Progress>) -> Self {
        self.progress = Some(progress);
        self
    }

    fn stage(&self, stage: Stage) {
        if let Some(p) = &self.progress {
            p.set(stage);
        }
    }

    fn ended(&self) {
        self.stage(Stage::Sent);
    }

    /// Passes the caller's trailers on, through `filter`.
    pub fn with_trailers(mut self, filter: Arc<dyn TrailerFilter>) -> Self {
        self.trailers = Some(filter);
        self
    }

    /// The body itself, to be read away beside a refusal.
    pub fn into_inner(self) -> Incoming {
        self.inner
    }
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = CallerBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CallerBodyError>>> {
        let this = &mut *self;
        loop {
            return match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.wait = None;
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => {
                            // Trailers (see the module's note).
                            let (Ok(mut trailers), Some(keep)) =
                                (frame.into_trailers(), &this.trailers)
                            else {
                                continue;
                            };
                            keep.filter(&mut trailers);
                            if trailers.is_empty() {
                                continue;
                            }
                            // Trailers are a body's last frame.
                            this.ended();
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                    };
                    match this.left.checked_sub(data.len() as u64) {
                        Some(left) => {
                            this.left = left;
                            // A client may take the last piece without asking again.
                            if this.inner.is_end_stream() {
                                this.ended();
                            } else {
                                this.stage(Stage::Sending);
                            }
                            Poll::Ready(Some(Ok(Frame::data(data))))
                        }
                        None => Poll::Ready(Some(Err(CallerBodyError::TooLarge(this.limit)))),
                    }
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(CallerBodyError::Read(e)))),
                Poll::Ready(None) => {
                    this.ended();
                    Poll::Ready(None)
                }
                Poll::Pending => {
                    this.stage(Stage::Streaming);
                    let gap = this.gap;
                    let wait = this
                        .wait
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                    ready!(wait.as_mut().poll(cx));
                    Poll::Ready(Some(Err(CallerBodyError::Stalled(gap))))
                }
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
