//! Stage 7 with a route's resilience around it: its `faults` first (an abort answers
//! `fault-injected` without calling the upstream, a delay waits), then the request goes
//! upstream; when the upstream fails (it cannot be reached, times out, is busy, its
//! credential cannot be produced, or it answers 5xx), the route's `failover` upstream
//! takes the request if it may, else the caller's last good answer from the cache is
//! served, stale, if it is young enough; else the failure stands. A good answer (200) to a
//! GET on a caching route is kept for the next failure. A route with none of it forwards
//! as it always did, at no cost.
//!
//! Which refusals mean "the upstream failed" is [`upstream_failed`]: a refusal added for
//! an upstream's own failures (a circuit breaker's, say) belongs there.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Either, Full};
use idgate_config::{FallbackCache, RouteResilience};

use crate::access_log::Decision;
use crate::body::ProxyBody;
use crate::checks::ownership::owner_name;
use crate::ctx::RequestCtx;
use crate::fallback_cache::{Answer, EntryName, FallbackSettings};
use crate::faults::{self, Fault};
use crate::forward::{forward as send_upstream, strip_response};
use crate::problem::Refusal;
use crate::routes::Route;
use crate::upstream::Upstream;

pub(crate) use crate::access_log::{FALLBACK_CACHE, FALLBACK_FAILOVER};

static WARNING: HeaderName = HeaderName::from_static("warning");
static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Whether a refusal of the forward stage means the upstream failed, rather than the
/// request or the caller.
pub(crate) fn upstream_failed(refusal: &Refusal) -> bool {
    matches!(
        refusal,
        Refusal::UpstreamUnreachable { .. }
            | Refusal::UpstreamTimeout
            | Refusal::UpstreamBusy { .. }
            | Refusal::CredentialUnavailable { .. }
            | Refusal::CircuitOpen { .. }
            | Refusal::UpstreamUnavailable { .. }
    )
}

/// Stage 7, for the route's upstream; the answer without its hop-by-hop headers.
pub(crate) async fn forward<'r>(
    ctx: &mut RequestCtx<'r>,
    route: &'r Route,
    upstream: &'r Upstream,
    req: http::request::Parts,
) -> Result<Response<ProxyBody>, Refusal> {
    let Some(plan) = route.resilience.as_deref() else {
        let method = req.method.clone();
        return send_upstream(ctx, upstream, req)
            .await
            .answer
            .map(|resp| strip_response(ctx, upstream, &method, resp));
    };
    // In a box of its own: the attempts, failover and cache make a future three times the
    // plain exchange's, and every route's request would otherwise carry (and copy) its room.
    crate::boxed::pinned(|| forward_with_plan(ctx, route, upstream, req, plan)).await
}

/// [`forward`] for a route with a resilience plan: faults, the failover upstream, the cache.
async fn forward_with_plan<'r>(
    ctx: &mut RequestCtx<'r>,
    route: &'r Route,
    upstream: &'r Upstream,
    req: http::request::Parts,
    plan: &'r RouteResilience,
) -> Result<Response<ProxyBody>, Refusal> {
    if let Some(faults) = &plan.faults {
        match faults::draw(faults) {
            Fault::Abort(status) => return Err(Refusal::FaultInjected { status }),
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::None => {}
        }
    }
    let cached = Cached::of(ctx, plan, &req);
    let again = plan.failover.map(|i| (i, Resend::of(ctx, &req)));
    let (failure, reached) = match attempt(ctx, upstream, req, cached.as_ref()).await {
        Outcome::Good(resp) => return Ok(resp),
        Outcome::Refused(r) => return Err(r),
        Outcome::Failed { failure, reached } => (failure, reached),
    };
    ctx.primary_failed = Some((upstream, ctx.upstream_latency));
    let answer = fall_back(ctx, route, again, cached.as_ref(), failure, reached).await;
    // Once the failover upstream took the request, its record names the secondary alone:
    // incident detection hears of the primary's failure here, or with the record when the
    // caller goes away first (`RequestCtx::primary_failed`).
    if ctx.failover.is_some() {
        let served = matches!(
            ctx.decision,
            Decision::AllowedBy(FALLBACK_FAILOVER | FALLBACK_CACHE)
        );
        ctx.feed_failed_over(served);
    }
    ctx.primary_failed = None;
    answer
}

/// After the primary failed: the failover upstream if it may take the request, else (or
/// when it fails too) the caller's cached answer, else the failure as it stands.
async fn fall_back<'r>(
    ctx: &mut RequestCtx<'r>,
    route: &'r Route,
    again: Option<(usize, Resend)>,
    cached: Option<&Cached<'r>>,
    failure: Failure,
    reached: bool,
) -> Result<Response<ProxyBody>, Refusal> {
    let failure = match again {
        Some((i, again)) if again.may_go(ctx, &failure, reached) => {
            let secondary = ctx
                .snapshot
                .upstreams
                .get(i)
                .ok_or_else(|| Refusal::Internal {
                    reason: format!("route {} names no failover upstream", route.name),
                })?;
            // The primary's answer (its connection) goes before the secondary is asked.
            drop(failure);
            // What the record says of the upstream is the secondary's from here: its
            // status, its latency, and its credential (none, if it has none).
            ctx.upstream_status = None;
            ctx.upstream_latency = None;
            ctx.credential = None;
            ctx.failover = Some(secondary);
            tracing::info!(
                request_id = ctx.request_id(),
                route = &*route.name,
                upstream = &*secondary.name,
                "upstream failed; the request goes to the failover upstream"
            );
            match attempt(ctx, secondary, again.into_parts(), cached).await {
                Outcome::Good(resp) => {
                    ctx.decision = Decision::AllowedBy(FALLBACK_FAILOVER);
                    return Ok(resp);
                }
                Outcome::Refused(r) => return Err(r),
                Outcome::Failed { failure, .. } => failure,
            }
        }
        _ => failure,
    };
    if let Some(c) = cached
        && let Some((answer, age)) = ctx
            .services
            .fallback
            .get(c.settings, &c.name, c.cache.max_age)
    {
        ctx.decision = Decision::AllowedBy(FALLBACK_CACHE);
        return Ok(stale(answer, age));
    }
    match failure {
        Failure::Answer(resp) => Ok(resp),
        Failure::Refusal(r) => Err(r),
    }
}

enum Outcome {
    /// An answer to pass on.
    Good(Response<ProxyBody>),
    /// The upstream failed; `reached`: some of the request may have reached it.
    Failed { failure: Failure, reached: bool },
    /// Refused for the request's or the caller's sake: no fallback changes that.
    Refused(Refusal),
}

enum Failure {
    /// A 5xx answer, passed on when nothing better can be.
    Answer(Response<ProxyBody>),
    Refusal(Refusal),
}

/// Sends the request to `upstream`; a good answer is kept when the route caches.
async fn attempt<'r>(
    ctx: &mut RequestCtx<'r>,
    upstream: &'r Upstream,
    req: http::request::Parts,
    cached: Option<&Cached<'r>>,
) -> Outcome {
    let method = req.method.clone();
    let forwarded = send_upstream(ctx, upstream, req).await;
    let failed = |failure| Outcome::Failed {
        failure,
        reached: forwarded.reached,
    };
    match forwarded.answer {
        Ok(resp) if resp.status().is_server_error() => failed(Failure::Answer(strip_response(
            ctx, upstream, &method, resp,
        ))),
        Ok(resp) => {
            let resp = strip_response(ctx, upstream, &method, resp);
            match keep(ctx, cached, resp, upstream).await {
                Ok(resp) => Outcome::Good(resp),
                Err(r) => failed(Failure::Refusal(r)),
            }
        }
        Err(r) if upstream_failed(&r) => failed(Failure::Refusal(r)),
        Err(r) => Outcome::Refused(r),
    }
}

/// Where a caching route keeps this request's answer.
struct Cached<'r> {
    name: EntryName,
    cache: &'r FallbackCache,
    settings: &'r FallbackSettings,
}

impl<'r> Cached<'r> {
    /// Only GET answers are kept, each under its route, caller, and canonical path and query.
    fn of(
        ctx: &RequestCtx<'r>,
        plan: &'r RouteResilience,
        req: &http::request::Parts,
    ) -> Option<Self> {
        let cache = plan.cache.as_ref()?;
        let settings = ctx.snapshot.fallback.as_ref()?;
        if req.method != Method::GET {
            return None;
        }
        let caller = owner_name(ctx.principal()?, &[]);
        let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        Some(Self {
            name: EntryName::new(ctx.route_name(), &caller, &req.method, pq),
            cache,
            settings,
        })
    }
}

/// Keeps a good answer (200, of a known length within the route's `max_bytes`, not
/// `no-store`) in the cache and passes it on; any other answer passes as it is.
async fn keep(
    ctx: &mut RequestCtx<'_>,
    cached: Option<&Cached<'_>>,
    mut resp: Response<ProxyBody>,
    upstream: &Upstream,
) -> Result<Response<ProxyBody>, Refusal> {
    let Some(c) = cached else {
        return Ok(resp);
    };
    let length = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if resp.status() != StatusCode::OK
        || no_store(resp.headers())
        || length.is_none_or(|n| n > c.cache.max_bytes)
    {
        return Ok(resp);
    }
    let body = std::mem::replace(resp.body_mut(), Either::Right(Full::new(Bytes::new())));
    let bytes = match tokio::time::timeout(upstream.request_timeout, body.collect()).await {
        Err(_) => return Err(Refusal::UpstreamTimeout),
        Ok(Err(e)) => {
            return Err(Refusal::UpstreamUnreachable {
                connect: false,
                reason: format!("upstream {}: the answer broke off: {e}", upstream.name),
            });
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let mut headers = resp.headers().clone();
    for name in [header::SET_COOKIE, header::CONTENT_LENGTH, header::AGE] {
        headers.remove(name);
    }
    headers.remove(&WARNING);
    let answer = Answer {
        headers,
        body: bytes.clone(),
    };
    if let Err(e) = ctx
        .services
        .fallback
        .put(c.settings, &c.name, &answer, c.cache.max_age)
    {
        tracing::warn!(
            request_id = ctx.request_id(),
            route = &**ctx.route_name(),
            error = %e,
            "the answer could not be kept for fallback"
        );
    }
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    *resp.body_mut() = Either::Right(Full::new(bytes));
    Ok(resp)
}

/// `Cache-Control: no-store` from the upstream: the answer is never kept. (`private` is
/// kept: every entry is one caller's own.) The value is read as bytes: a byte outside
/// visible ASCII elsewhere in it (a quoted extension may hold one) does not hide the
/// directive.
pub(crate) fn no_store(h: &HeaderMap) -> bool {
    h.get_all(header::CACHE_CONTROL)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|d| d.trim_ascii().eq_ignore_ascii_case(b"no-store"))
}

/// A cached answer, served stale (RFC 9111 `Age`, RFC 7234 warn-code 110, RFC 9211
/// `Cache-Status`).
fn stale(answer: Answer, age: Duration) -> Response<ProxyBody> {
    let length = answer.body.len();
    let mut resp = Response::new(Either::Right(Full::new(answer.body)));
    *resp.headers_mut() = answer.headers;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    h.insert(header::AGE, HeaderValue::from(age.as_secs()));
    h.insert(
        WARNING.clone(),
        HeaderValue::from_static("110 - \"Response is Stale\""),
    );
    h.insert(
        CACHE_STATUS.clone(),
        HeaderValue::from_static("idgate; hit; detail=upstream-failed"),
    );
    resp
}

/// What the secondary upstream needs of a request sent to the primary: its head, and
/// whether its body could be sent again.
struct Resend {
    method: Method,
    uri: http::Uri,
    version: http::Version,
    headers: HeaderMap,
    /// The request has no body: an empty one can always be sent again.
    empty: bool,
}

impl Resend {
    fn of(ctx: &RequestCtx<'_>, req: &http::request::Parts) -> Self {
        let empty = match (&ctx.body, &ctx.buffered_body) {
            (Some(b), _) => http_body::Body::is_end_stream(b),
            (None, Some(b)) => b.is_empty(),
            (None, None) => false,
        };
        Self {
            method: req.method.clone(),
            uri: req.uri.clone(),
            version: req.version,
            headers: req.headers.clone(),
            empty,
        }
    }

    /// A request goes to the secondary when nothing of it reached the primary (in any of
    /// its attempts), or, for an idempotent method, after the primary failed it; never a
    /// non-idempotent request that may have reached the primary. Its body must still be at
    /// hand (given back unsent, read whole, or none).
    fn may_go(&self, ctx: &mut RequestCtx<'_>, failure: &Failure, reached: bool) -> bool {
        let unsent = matches!(failure, Failure::Refusal(_)) && !reached;
        if !unsent && !self.method.is_idempotent() {
            return false;
        }
        if ctx.body.is_some() || ctx.buffered_body.is_some() {
            return true;
        }
        if self.empty {
            ctx.buffered_body = Some(Bytes::new());
            return true;
        }
        false
    }

    fn into_parts(self) -> http::request::Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method;
        parts.uri = self.uri;
        parts.version = self.version;
        parts.headers = self.headers;
        parts
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn no_store_is_read_among_other_directives() {
        let mut h = HeaderMap::new();
        assert!(!no_store(&h));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=0"),
        );
        assert!(!no_store(&h));
        h.append(header::CACHE_CONTROL, HeaderValue::from_static("No-Store"));
        assert!(no_store(&h));
    }

    #[test]
    fn no_store_is_found_whatever_other_bytes_the_value_holds() {
        // A byte outside visible ASCII (allowed in a quoted extension) beside the directive.
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"no-store, ext=\"caf\xc3\xa9\"").unwrap(),
        );
        assert!(no_store(&h));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"private, ext=\"\xff\"").unwrap(),
        );
        assert!(!no_store(&h));
    }

    #[tokio::test]
    async fn a_stale_answer_says_so() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let resp = stale(
            Answer {
                headers,
                body: Bytes::from_static(b"hello"),
            },
            Duration::from_millis(61_500),
        );
        assert_eq!(resp.status(), StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h[header::AGE], "61");
        assert_eq!(h[&WARNING], "110 - \"Response is Stale\"");
        assert_eq!(h[header::CONTENT_LENGTH], "5");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"hello");
    }

    #[test]
    fn the_upstreams_own_failures_fall_back_and_the_callers_do_not() {
        assert!(upstream_failed(&Refusal::UpstreamTimeout));
        assert!(upstream_failed(&Refusal::UpstreamUnreachable {
            connect: true,
            reason: String::new()
        }));
        let (upstream, retry_after): (std::sync::Arc<str>, _) =
            ("didit".into(), Duration::from_secs(3));
        assert!(upstream_failed(&Refusal::CircuitOpen {
            upstream: upstream.clone(),
            retry_after
        }));
        assert!(upstream_failed(&Refusal::UpstreamUnavailable {
            upstream,
            retry_after
        }));
        assert!(!upstream_failed(&Refusal::BodyTooLarge));
        assert!(!upstream_failed(&Refusal::FaultInjected {
            status: StatusCode::SERVICE_UNAVAILABLE
        }));
    }
}
