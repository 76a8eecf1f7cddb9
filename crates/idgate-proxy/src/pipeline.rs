//! The request's way through the gateway, in one place:
//!
//! ```text
//!   connection  (listener.rs)  TLS handshake; the client's X.509-SVID verified against the
//!                              bundle of its own trust domain → peer SPIFFE ID
//!   1. path       rewrite the path into its one canonical form (path.rs); refuse paths
//!                 that could still be read differently here and upstream         (400)
//!   2. built-in   a built-in target's paths (the token endpoint and its discovery
//!                 documents, when configured) → its route
//!   3. route      method + path template → route and its path parameters
//!                                                      (404 / 405, before any auth detail)
//!      the route's target: the token endpoint answers here; an upstream goes on
//!   4. authenticate  the route's layers — mtls, api_key, jwt, or any of several —
//!                 → one Caller                         (401 with a challenge, or 400)
//!   5. authorize  one principal on the route's allow list holding the method's scopes
//!                                                             (403, default deny)
//!   6. body       no body on a GET (HEAD, OPTIONS, DELETE) unless the route allows one (400)
//!   7. forward    (forward.rs) strip hop-by-hop headers and the caller's credentials,
//!                 inject or sign with the upstream credential (503 when it cannot be produced), set
//!                 x-request-id and x-forwarded-for (appended to only for a trusted proxy),
//!                 call the upstream with its timeouts
//!                                                             (502 / 504)
//!   8. respond    strip hop-by-hop headers; add the context's response headers and
//!                 x-request-id
//!   9. record     the context becomes the request's record: access log, metrics
//! ```
//!
//! Each stage is a small function that reads and writes the request's [`RequestCtx`] and
//! either hands on or returns a [`Refusal`]; only `problem.rs` turns a refusal into a
//! response. `docs/architecture.md` says how to add one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use idgate_tls::SpiffeId;

use crate::access_log::{AccessLog, Decision};
use crate::authn::{self, FailedAttempts};
use crate::ctx::{Authorized, RequestCtx};
use crate::forward::{forward, strip_response};
use crate::h1;
use crate::limit::Held;
use crate::lingering_close::LingerOnClose;
use crate::metrics::Metrics;
use crate::path::{self, BadEncoding};
use crate::problem::Refusal;
use crate::routes::{Route, RouteMiss, Target};
use crate::snapshot::Snapshot;
use crate::upstream::Upstream;
use idgate_auth::{AuthFailure, Principal};

/// An upstream's response body: from hyper's client (`http2 = true`, `client = "hyper"`;
/// holding its place under the upstream's cap), or from the gateway's own HTTP/1.1 client.
pub type UpstreamResponseBody = Either<Held<Incoming>, h1::ResponseBody>;

/// What the gateway answers with: the upstream's body, or one of its own.
pub type ProxyBody = Either<UpstreamResponseBody, Full<Bytes>>;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What the connection established, shared by all its requests.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: Option<SpiffeId>,
    pub remote: SocketAddr,
    /// The client's IP as a header value, made once per connection for `x-forwarded-for`.
    pub remote_ip: HeaderValue,
    /// Whether the peer is one of `listener.trusted_proxies`, whose forwarding headers are
    /// passed on.
    pub trusted_proxy: bool,
    /// RFC 8705 thumbprint of the client certificate (`x5t#S256`), for bound tokens.
    pub cert_thumbprint: Option<String>,
    /// Asked for when an HTTP/1.1 answer leaves the caller still sending.
    pub(crate) linger_on_close: LingerOnClose,
}

/// Request IDs: a random per-process prefix and a counter — unique, cheap, unguessable
/// across restarts.
#[derive(Debug)]
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        let mut seed = [0u8; 16];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        let (a, b) = seed.split_at(8);
        Self {
            prefix: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            counter: AtomicU64::new(u64::from_le_bytes(b.try_into().unwrap_or_default())),
        }
    }

    pub(crate) fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex_into(&mut buf[..16], self.prefix);
        hex_into(&mut buf[16..], n);
        HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

fn hex_into(out: &mut [u8], v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// A caller's own request id is kept when it is short and plain, so it can tie their logs
/// to ours; anything else is replaced.
pub(crate) fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// What every request shares, whatever the configuration snapshot.
/// All request bodies buffered at once (for signature schemes), in KiB: 256 MiB.
pub(crate) const BODY_BUDGET_KIB: u32 = 256 * 1024;

#[derive(Debug)]
pub struct Services {
    pub ids: RequestIds,
    pub metrics: Arc<Metrics>,
    pub failed_attempts: FailedAttempts,
    /// Where each request's record goes; `None` when the log filter leaves access lines out.
    pub access_log: Option<Arc<AccessLog>>,
    /// Bounds the memory of buffered request bodies, in KiB.
    pub(crate) body_budget: tokio::sync::Semaphore,
    /// The route label of requests that match no route.
    pub(crate) route_none: Arc<str>,
}

impl Default for Services {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Services {
    pub fn new(access_log: Option<Arc<AccessLog>>) -> Self {
        let mut metrics = Metrics::new();
        metrics.count_access_log_drops(
            access_log
                .as_ref()
                .map_or_else(Default::default, |log| log.dropped().clone()),
        );
        Self {
            ids: RequestIds::default(),
            metrics: Arc::new(metrics),
            failed_attempts: FailedAttempts::default(),
            access_log,
            body_budget: tokio::sync::Semaphore::new(BODY_BUDGET_KIB as usize),
            route_none: "-".into(),
        }
    }

    /// Counts a failed authentication attempt against its source and turns the failure into
    /// the refusal the caller sees.
    fn auth_failed(&self, conn: &ConnInfo, failure: AuthFailure) -> Refusal {
        if failure.is_failed_attempt() {
            self.failed_attempt(conn, failure.slug());
        }
        Refusal::Auth(failure)
    }

    /// Records a wrong credential from the connection's source.
    fn failed_attempt(&self, conn: &ConnInfo, reason: &'static str) {
        let n = self.failed_attempts.record(conn.remote.ip().to_canonical());
        self.metrics.auth_failed(reason);
        tracing::info!(remote = %conn.remote.ip(), reason, failures_in_window = n, "authentication failed");
    }
}

/// Runs one request through the pipeline. Never fails: refusals become problem responses.
pub async fn handle(
    snapshot: Arc<Snapshot>,
    conn: Arc<ConnInfo>,
    services: Arc<Services>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let mut ctx = RequestCtx::new(&snapshot, &conn, &services, &parts, body);
    let result = stages(&mut ctx, parts).await;
    let mut resp = match result {
        Ok(resp) => resp,
        Err(refusal) => refuse(&mut ctx, refusal),
    };
    respond(&mut ctx, &mut resp);
    ctx.record(resp.status());
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), ctx.request_id);
    resp
}

/// The stage list, up to the response.
async fn stages(
    ctx: &mut RequestCtx<'_>,
    mut req: http::request::Parts,
) -> Result<Response<ProxyBody>, Refusal> {
    path::canonicalize(&mut req.uri)?;
    let route = match built_in(ctx, &req) {
        Some(route) => route,
        None => route(ctx, &req)?,
    };
    let upstream = match route.target {
        Target::TokenEndpoint => return token_endpoint(ctx, &req).await,
        Target::Upstream(i) => ctx.snapshot.upstreams.get(i).ok_or(Refusal::Internal {
            reason: format!("route {} names no upstream", route.name),
        })?,
    };
    authenticate(ctx, route, &req).await?;
    authorize(ctx, route, &req)?;
    refuse_unexpected_body(ctx, route, upstream, &req).await?;
    let resp = forward(ctx, upstream, req).await?;
    Ok(strip_response(resp))
}

/// Stage 2: a built-in target's paths are its own, whatever the configured routes.
fn built_in<'r>(ctx: &mut RequestCtx<'r>, req: &http::request::Parts) -> Option<&'r Route> {
    let route = ctx.snapshot.routes.built_in(req.uri.path())?;
    ctx.route = Some(route);
    Some(route)
}

/// Stage 3.
fn route<'r>(ctx: &mut RequestCtx<'r>, req: &http::request::Parts) -> Result<&'r Route, Refusal> {
    let snapshot: &'r Snapshot = ctx.snapshot;
    let matched = snapshot
        .routes
        .find(&req.method, req.uri.path())
        .map_err(|miss| match miss {
            RouteMiss::NoPath => Refusal::NoRoute,
            RouteMiss::WrongMethod(allow) => Refusal::MethodNotAllowed {
                allow: allow.clone(),
            },
        })?;
    let route = matched.route;
    ctx.route = Some(route);
    ctx.params = matched.params;
    // An upstream that ignores case may fold more than ASCII (`ı`, `ſ` and the Kelvin sign
    // are `i`, `s` and `k` to Java's equalsIgnoreCase): the gateway folds ASCII only, so on
    // such a route a path with characters beyond ASCII could mean a literal it did not match.
    if route.case_insensitive && path::has_non_ascii_escape(req.uri.path()) {
        return Err(Refusal::InvalidEncoding(BadEncoding::NonAsciiCaseFolded));
    }
    Ok(route)
}

/// The token endpoint's target: it authenticates its clients itself and answers in OAuth
/// terms (RFC 6749 errors, not problems).
async fn token_endpoint(
    ctx: &mut RequestCtx<'_>,
    req: &http::request::Parts,
) -> Result<Response<ProxyBody>, Refusal> {
    let (Some(endpoint), Some(body)) = (&ctx.snapshot.token_endpoint, ctx.body.take()) else {
        return Err(Refusal::Internal {
            reason: "the token endpoint is not loaded, or the body was taken".to_owned(),
        });
    };
    let (resp, decision) = endpoint
        .handle(
            ctx.conn,
            &req.method,
            req.uri.path(),
            &req.headers,
            body,
            ctx.request_id(),
        )
        .await;
    if decision == Decision::Denied("invalid_client") {
        ctx.services
            .failed_attempt(ctx.conn, "oauth-invalid-client");
    }
    ctx.decision = decision;
    Ok(resp.map(Either::Right))
}

/// Stage 4.
async fn authenticate(
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    req: &http::request::Parts,
) -> Result<(), Refusal> {
    let caller = authn::authenticate(route, ctx.conn, req, &ctx.snapshot.auth)
        .await
        .map_err(|f| ctx.services.auth_failed(ctx.conn, f))?;
    ctx.caller = Some(caller);
    Ok(())
}

/// Stage 5.
fn authorize(
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    req: &http::request::Parts,
) -> Result<(), Refusal> {
    let Some(caller) = &ctx.caller else {
        return Err(Refusal::Internal {
            reason: "authorization before authentication".to_owned(),
        });
    };
    let authorized = match authn::authorize(route, &req.method, caller) {
        Ok(Principal::Workload(_)) => Authorized::Workload,
        Ok(Principal::ApiKey(_)) => Authorized::ApiKey,
        Ok(Principal::Token(_)) => Authorized::Token,
        Err(f) => return Err(ctx.services.auth_failed(ctx.conn, f)),
    };
    ctx.authorized = Some(authorized);
    Ok(())
}

/// Stage 6: refused before anything goes upstream, because an upstream that ignores the
/// body of a GET would read it as the next request on its connection.
async fn refuse_unexpected_body(
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    upstream: &Upstream,
    req: &http::request::Parts,
) -> Result<(), Refusal> {
    if !route.allow_body
        && idgate_config::body_needs_opt_in(&req.method)
        && let Some(body) = ctx.body.as_mut()
        && carries_body(body)
        && !turns_out_empty(body, upstream.request_timeout).await
    {
        return Err(Refusal::BodyNotAllowed {
            method: req.method.clone(),
        });
    }
    Ok(())
}

/// A refusal becomes its problem response; the body nobody read is read away beside it.
fn refuse(ctx: &mut RequestCtx<'_>, refusal: Refusal) -> Response<ProxyBody> {
    ctx.decision = refusal.decision();
    let request_id = ctx.request_id();
    if let Some(reason) = refusal.log_reason() {
        tracing::warn!(
            request_id,
            route = &**ctx.route_name(),
            problem = refusal.slug(),
            reason,
            "request refused"
        );
    }
    let mut resp = refusal.into_response(request_id).map(Either::Right);
    if let Some(body) = ctx.body.take()
        && !linger(body, ctx.expects_continue, ctx.conn)
        && ctx.version < Version::HTTP_2
    {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        ctx.conn.linger_on_close.request();
    }
    resp
}

/// Stage 8: the headers stages add to the answer, whoever made it.
fn respond(ctx: &mut RequestCtx<'_>, resp: &mut Response<ProxyBody>) {
    if !ctx.response_headers.is_empty() {
        let added = std::mem::take(&mut ctx.response_headers);
        resp.headers_mut().extend(added);
    }
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

/// How much of a refused request's body is read and thrown away, and for how long at most.
const LINGER_BYTES: u64 = 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Reads away the unread body of a refused request, beside the answer, as nginx's lingering
/// close does. A client still sending does not read the answer yet: over HTTP/1.1, closing
/// with its bytes unread makes the kernel reset the connection, which can destroy the answer
/// before the client reads it; over HTTP/2, the stream would be reset while the client is
/// still sending, which some clients (curl 7.88) report as an error instead of the answer.
/// Read to its end, the body leaves neither: the HTTP/1.1 connection even stays usable.
///
/// Returns whether the body is known to be read to its end (its announced length is within
/// the bound); if not, an HTTP/1.1 answer should close the connection so that the client
/// stops sending, since a body of unknown length (chunked) may outgrow the bound, and the
/// close should linger (see `lingering_close`). A body announced with
/// `Expect: 100-continue` is never invited: it is not read at all.
fn linger(body: Incoming, expects_continue: bool, conn: &Arc<ConnInfo>) -> bool {
    use http_body::Body as _;
    use http_body_util::BodyExt as _;
    if body.is_end_stream() {
        return true;
    }
    if expects_continue || body.size_hint().lower() > LINGER_BYTES {
        return false;
    }
    let whole = body.size_hint().exact().is_some_and(|n| n <= LINGER_BYTES);
    let conn = conn.clone();
    tokio::spawn(async move {
        let mut body = body;
        let mut left = LINGER_BYTES;
        let read_to_end = tokio::time::timeout(LINGER_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                match left.checked_sub(n) {
                    Some(l) => left = l,
                    None => return false,
                }
            }
            true
        })
        .await;
        // Given up on, the body is dropped unread and the HTTP/1.1 connection closes.
        if !matches!(read_to_end, Ok(true)) {
            conn.linger_on_close.request();
        }
    });
    whole
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_chars_and_distinct() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(valid_request_id(&a));
        assert!(!valid_request_id(&HeaderValue::from_static("a b")));
    }
}
