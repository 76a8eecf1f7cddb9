//! The bodies that cross the gateway: what is sent upstream, what an upstream answers with,
//! and what the gateway answers its caller with.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use idgate_h1 as h1;
use idgate_h1::limit::Held;
use idgate_tls::client::HttpsClient;

use crate::metrics::Metrics;

/// The body sent upstream: the caller's body streamed through, or buffered (when a signature
/// scheme needs all of it, or for the gateway's own requests).
pub type UpstreamBody = Either<idgate_h1::CallerBody, Full<Bytes>>;

/// hyper's pooled client, as upstreams use it.
pub type UpstreamClient = HttpsClient<UpstreamBody>;

/// An upstream's response body: from hyper's client (`http2 = true`, `client = "hyper"`;
/// holding its place under the upstream's cap, under the own client's time limits), or from
/// the gateway's own HTTP/1.1 client.
pub type UpstreamResponseBody = Either<h1::Timed<Held<Incoming>>, h1::ResponseBody>;

/// What the gateway answers with: the upstream's body, or one of its own.
pub type ProxyBody = Either<Reported<UpstreamResponseBody>, Full<Bytes>>;

/// An upstream's body on its way to the caller. The access line and the trail's record are
/// made as the head goes out; a body that breaks off after that (the upstream resets its
/// connection or stream, closes early, sends a malformed frame, goes quiet past
/// `request_timeout` or runs past `response_body_timeout`) is cut short at the caller too,
/// and nothing else would tell. This counts it in `idgate_upstream_body_errors_total`
/// and logs it once, with the request's id. (A stage that reads the answer whole, such as
/// masking, answers `502` for such a body, with an access line of its own; it is counted
/// here all the same.)
pub struct Reported<B> {
    body: B,
    /// Boxed: every answer's future carries the body, and is moved several times.
    report: Option<Box<Report>>,
}

/// Whom [`Reported`] reports to; taken when it does.
struct Report {
    request_id: HeaderValue,
    upstream: Arc<str>,
    metrics: Arc<Metrics>,
}

impl<B> Reported<B> {
    pub(crate) fn new(
        body: B,
        request_id: HeaderValue,
        upstream: Arc<str>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            body,
            report: Some(Box::new(Report {
                request_id,
                upstream,
                metrics,
            })),
        }
    }
}

/// The metric's `reason` for a body's error.
fn reason(e: &(dyn std::error::Error + 'static)) -> &'static str {
    match e.downcast_ref::<h1::BodyError>() {
        Some(h1::BodyError::Timeout) => "read_timeout",
        Some(h1::BodyError::Deadline) => "body_timeout",
        Some(h1::BodyError::Truncated) => "truncated",
        Some(h1::BodyError::Protocol(_)) => "malformed",
        Some(h1::BodyError::Io(_) | h1::BodyError::Upstream(_)) | None => "reset",
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Body for Reported<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        if let Some(Err(e)) = &frame
            && let Some(report) = this.report.take()
        {
            let reason = reason(&**e);
            report
                .metrics
                .upstream_body_failed(&report.upstream, reason);
            tracing::warn!(
                request_id = report.request_id.to_str().unwrap_or("-"),
                upstream = %report.upstream,
                reason,
                error = %e,
                "the upstream's body broke off: the caller's answer was cut short"
            );
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
