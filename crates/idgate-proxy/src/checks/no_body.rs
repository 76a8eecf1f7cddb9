//! No body on a `GET`, `HEAD`, `OPTIONS` or `DELETE` request unless the route allows one:
//! an upstream that ignores the body of a GET would read it as the next request on its
//! connection.

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use hyper::body::Incoming;

use crate::ctx::RequestCtx;
use crate::problem::Refusal;

/// Refuses a body on a method whose requests carry none; a body of unknown length that
/// turns out empty within `wait` is none.
pub(super) async fn check(
    ctx: &mut RequestCtx<'_>,
    wait: Duration,
    method: &Method,
) -> Result<(), Refusal> {
    if idgate_config::body_needs_opt_in(method)
        && let Some(body) = ctx.body.as_mut()
        && carries_body(body)
    {
        if !turns_out_empty(body, wait).await {
            return Err(Refusal::BodyNotAllowed {
                method: method.clone(),
            });
        }
        // Read to its end, it is no body, and goes upstream as none: still a stream, it
        // would be framed as one of unknown length (`Transfer-Encoding: chunked` on a GET),
        // which is what this check keeps from upstreams.
        ctx.body = None;
        ctx.buffered_body = Some(Bytes::new());
    }
    Ok(())
}

/// Whether a request has a body: an announced length of 0 is none, a chunked body is one
/// even before its first chunk.
fn carries_body(body: &Incoming) -> bool {
    use http_body::Body as _;
    !body.is_end_stream() && body.size_hint().exact() != Some(0)
}

/// Whether a body of unknown length ends with no data, which some clients send with a `GET`
/// (an HTTP/2 DATA frame with END_STREAM and nothing in it, a chunked body of one `0`
/// chunk). It is read with room for nothing, within `wait`; a byte of data is a body.
async fn turns_out_empty(body: &mut Incoming, wait: Duration) -> bool {
    use http_body::Body as _;
    body.size_hint().exact().is_none()
        && matches!(
            tokio::time::timeout(wait, crate::ctx::read_whole(body, 0)).await,
            Ok(Ok(bytes)) if bytes.is_empty()
        )
}
