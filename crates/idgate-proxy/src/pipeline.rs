//! The request's way through the gateway, in one place:
//!
//! ```text
//!   connection  (listener.rs)  TLS handshake; the client's X.509-SVID verified against the
//!                              bundle of its own trust domain → peer SPIFFE ID
//!   1. path       rewrite the path into its one canonical form (path.rs); refuse paths
//!                 that could still be read differently here and upstream         (400)
//!      admission  (admission.rs) header count and size, [network] user agents (431 / 403)
//!   2. built-in   a built-in target's paths (the token endpoint and its discovery
//!                 documents, when configured; each webhook's path) → its route
//!   3. route      method + path template → route and its path parameters
//!                                                      (404 / 405, before any auth detail)
//!      admission  the route's address and user-agent rules; a Content-Length past its
//!                 max_body_bytes                                        (403 / 413)
//!      the route's target: the token endpoint answers here; a webhook checks the
//!                 provider's signature, keeps the event and answers here
//!                 (webhook_endpoint.rs: 401 / 503); an upstream goes on. Each takes
//!                 its record's place in the audit queue (below) only once it will
//!                 serve: a token once its client is authenticated, an event once its
//!                 signature is verified
//!   4. authenticate  a locked-out source, key or client first (429, lockout.rs); then the
//!                 route's layers — mtls, api_key, jwt, or any of several —
//!                 → one Caller                         (401 with a challenge, or 400)
//!   5. authorize  one principal on the route's allow list holding the method's scopes
//!                                                             (403, default deny)
//!   6. guards     the route's guards on the request (guards.rs), compiled from its
//!                 configuration: its rate limits (429, or 503 on a fail_closed route
//!                 without state); no body on a GET (HEAD, OPTIONS, DELETE) unless the
//!                 route allows one (400); the object a path parameter names must be
//!                 the caller's (404); the body must match the route's JSON Schema
//!                                                             (415 / 400 / 422)
//!                 then a place in the audit queue for the request's record, when there
//!                 is an audit trail: a full queue waits or refuses by the route's
//!                 on_audit_full; a request refused before has no place, its record
//!                 goes to the queue's unreserved pool                        (503)
//!   7. forward    (forward.rs) strip hop-by-hop headers and the caller's credentials,
//!                 inject or sign with the upstream credential (503 when it cannot be produced), set
//!                 x-request-id and x-forwarded-for (appended to only for a trusted proxy),
//!                 call the upstream with its timeouts
//!                                                             (502 / 504)
//!                 (resilience.rs) a route's faults first; when the upstream fails, its
//!                 failover upstream, else the caller's cached last good answer, stale
//!   8. guards     the route's guards on the upstream's response (record or forget an
//!                 object's owner, keep a list to the caller's objects; last, mask the
//!                 answer with the caller's profile); strip hop-by-hop headers
//!                                                                 (403 / 502 / 503)
//!   9. respond    add the context's response headers and x-request-id
//!  10. record     the context becomes the request's record: access log, audit trail,
//!                 metrics
//! ```
//!
//! Each stage is a small function that reads and writes the request's [`RequestCtx`] and
//! either hands on or returns a [`Refusal`]; only `problem.rs` turns a refusal into a
//! response. `docs/architecture.md` says how to add one.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use idgate_auth::Principal;
use idgate_config::{OnAuditFull, OnStateError};

use crate::access_log::Decision;
use crate::admission;
use crate::authn;
use crate::body::ProxyBody;
use crate::checks;
use crate::conn::ConnInfo;
use crate::ctx::{Authorized, RequestCtx};
use crate::fallback;
use crate::lockout;
use crate::path::{self, BadEncoding};
use crate::problem::Refusal;
use crate::routes::{Route, RouteMiss, Target};
use crate::service::{Services, X_REQUEST_ID};
use crate::snapshot::Snapshot;
use crate::token_endpoint::Prepared;
use crate::upstream::Upstream;
use crate::webhook_endpoint;

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
    if ctx.method == http::Method::HEAD {
        without_content(&mut resp);
    }
    ctx.bytes_out = http_body::Body::size_hint(resp.body()).exact();
    ctx.record(resp.status());
    resp.headers_mut()
        .insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    resp
}

/// The stage list, up to the response.
async fn stages(
    ctx: &mut RequestCtx<'_>,
    mut req: http::request::Parts,
) -> Result<Response<ProxyBody>, Refusal> {
    path::canonicalize(&mut req.uri)?;
    if ctx.services.audit.is_some() {
        ctx.uri = Some(req.uri.clone());
    }
    admission::on_arrival(ctx, &req)?;
    let route = match built_in(ctx, &req) {
        Some(route) => route,
        None => route(ctx, &req)?,
    };
    admission::on_route(ctx, route, &req)?;
    let upstream = match route.target {
        Target::TokenEndpoint => return token_endpoint(ctx, route, &req).await,
        Target::Webhook(i) => {
            // The record's place is taken once the event is genuine, not before its body is
            // read: unsigned posts, and posts whose body never comes, are refusals.
            let event = webhook_endpoint::verify(ctx, &req, i).await?;
            audit_room(ctx, route).await?;
            return webhook_endpoint::keep(ctx, event).await;
        }
        Target::Upstream(i) => ctx
            .snapshot
            .upstreams
            .get(i)
            .ok_or_else(|| Refusal::Internal {
                reason: format!("route {} names no upstream", route.name),
            })?,
    };
    authenticate(ctx, route, &req).await?;
    authorize(ctx, route, &req)?;
    guard_request(ctx, route, upstream, &mut req).await?;
    audit_room(ctx, route).await?;
    let resp = fallback::forward(ctx, route, upstream, req).await?;
    guard_response(ctx, route, resp).await
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
/// terms (RFC 6749 errors, not problems). The record's place is taken once the endpoint has
/// something to serve (for a token, once the form is read and the client authenticated):
/// requests whose form never comes, or whose client fails, are refusals.
async fn token_endpoint(
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    req: &http::request::Parts,
) -> Result<Response<ProxyBody>, Refusal> {
    // The token endpoint's built-in route has no on_state_error of its own: it fails open.
    lockout::check(ctx, &req.headers, OnStateError::FailOpen).await?;
    let clients = lockout::TokenClients::new(ctx);
    let snapshot = ctx.snapshot;
    let (Some(endpoint), Some(body)) = (&snapshot.token_endpoint, ctx.body.take()) else {
        return Err(Refusal::Internal {
            reason: "the token endpoint is not loaded, or the body was taken".to_owned(),
        });
    };
    let prepared = endpoint
        .prepare(ctx.conn, req, body, ctx.request_id(), &clients)
        .await;
    // Settled as the secret is judged, before anything is awaited: a client or source this
    // process holds gets 429 whatever its secret was.
    let invalid_client =
        matches!(&prepared, Prepared::Refused(_, d) if *d == Decision::Denied("invalid_client"));
    let claimed = clients.claimed();
    let subjects = match lockout::judged(ctx, &req.headers, claimed.as_deref(), invalid_client) {
        Ok(subjects) => subjects,
        Err(locked) => {
            if invalid_client {
                ctx.services
                    .failed_attempt(ctx.conn, "oauth-invalid-client");
            }
            return Err(locked);
        }
    };
    let (resp, decision) = match prepared {
        Prepared::Refused(resp, decision) => {
            if decision == Decision::Denied("invalid_client") {
                // Decided before the lockout count is awaited, as in `authenticate`.
                ctx.decision = decision;
                ctx.services
                    .failed_attempt(ctx.conn, "oauth-invalid-client");
                lockout::failed(ctx, subjects).await;
            }
            (resp, decision)
        }
        Prepared::Serve(serve) => {
            audit_room(ctx, route).await?;
            endpoint.serve(serve, ctx.request_id()).await
        }
    };
    ctx.decision = decision;
    Ok(resp.map(Either::Right))
}

/// Stage 4.
async fn authenticate(
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    req: &http::request::Parts,
) -> Result<(), Refusal> {
    // A locked-out source is refused before its credential is even looked at.
    let on_error = ctx.snapshot.limits.on_state_error(&route.name);
    lockout::check(ctx, &req.headers, on_error).await?;
    let judged = authn::authenticate(route, ctx.conn, req, &ctx.snapshot.auth).await;
    // Settled as the credential is judged, before anything is awaited: guesses sent at once
    // get no more answers than the lockout allows (see `lockout::judged`).
    let failed = judged
        .as_ref()
        .is_err_and(idgate_auth::AuthFailure::is_failed_attempt);
    let held = lockout::judged(ctx, &req.headers, None, failed);
    let caller = match judged {
        Ok(caller) => caller,
        Err(f) => {
            // The refusal is decided before the lockout count is awaited: a caller that
            // goes away meanwhile is recorded as refused, never as allowed.
            let refusal = ctx.services.auth_failed(ctx.conn, f);
            let (refusal, count) = match held {
                // Held: the answer does not tell that the guess was wrong. The shared count
                // already has the failures that started the hold.
                Err(locked) => (locked, None),
                Ok(subjects) => (refusal, Some(subjects)),
            };
            ctx.decision = refusal.decision();
            if let Some(subjects) = count {
                lockout::failed(ctx, subjects).await;
            }
            return Err(refusal);
        }
    };
    held?;
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
        Ok(Principal::JwtSvid(_)) => Authorized::JwtSvid,
        Err(f) => return Err(ctx.services.auth_failed(ctx.conn, f)),
    };
    ctx.authorized = Some(authorized);
    Ok(())
}

/// Stage 6: the route's guards on the request, before anything goes upstream.
async fn guard_request(
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    upstream: &Upstream,
    req: &mut http::request::Parts,
) -> Result<(), Refusal> {
    for guard in route.guards.on_request() {
        checks::on_request(guard, ctx, upstream, req).await?;
    }
    Ok(())
}

/// Stage 6, last: a place in the audit queue for the request's record, taken before the
/// request is served so that it is never served unrecorded (once it is, the request is
/// admitted: the gateway has decided to serve it), and no earlier, so that a request
/// still to be refused (its body stalled, its credential wrong) cannot hold a place a served
/// request needs: its record goes to the queue's unreserved pool. When the queue is full, the
/// route's `on_audit_full` decides: wait up to `block_timeout` for a place, or refuse at once;
/// either way a request without a place is refused (503).
async fn audit_room(ctx: &mut RequestCtx<'_>, route: &Route) -> Result<(), Refusal> {
    let Some(trail) = &ctx.services.audit else {
        ctx.admitted = true;
        return Ok(());
    };
    if let Some(permit) = trail.try_reserve() {
        ctx.audit_permit = Some(permit);
        ctx.admitted = true;
        return Ok(());
    }
    let policy = ctx.snapshot.audit;
    let permit = match route.audit.on_full.unwrap_or(policy.on_full) {
        OnAuditFull::Block => {
            let permit = trail.reserve(policy.block_timeout).await;
            if permit.is_none() {
                trail.metrics().refused_block.inc();
            }
            permit
        }
        OnAuditFull::FailClosed => {
            trail.metrics().refused_fail_closed.inc();
            None
        }
    };
    ctx.audit_permit = Some(permit.ok_or(Refusal::AuditUnavailable)?);
    ctx.admitted = true;
    Ok(())
}

/// Stage 8: the route's guards on the upstream's response, before it goes back.
async fn guard_response(
    ctx: &mut RequestCtx<'_>,
    route: &Route,
    mut resp: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, Refusal> {
    for guard in route.guards.on_response() {
        checks::on_response(guard, ctx, &mut resp).await?;
    }
    Ok(resp)
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

/// Stage 9: the headers stages add to the answer, whoever made it.
fn respond(ctx: &mut RequestCtx<'_>, resp: &mut Response<ProxyBody>) {
    ctx.response_headers.move_into(resp.headers_mut());
}

/// An answer to `HEAD` has no content (RFC 9110 §9.3.2), whoever made it: hyper's HTTP/1.1
/// server leaves a body out by itself, its HTTP/2 server would send it as DATA, which a
/// client must treat as a stream error (RFC 9113 §8.1.1). Upstream answers are emptied as
/// they arrive (`forward::strip_response`); the gateway's own (problems, the token
/// endpoint's documents) are emptied here, keeping the length a `GET` would have had.
fn without_content(resp: &mut Response<ProxyBody>) {
    use http_body::Body as _;
    if resp.body().is_end_stream() {
        return;
    }
    if let Some(n) = resp.body().size_hint().exact()
        && !resp.headers().contains_key(header::CONTENT_LENGTH)
    {
        resp.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    *resp.body_mut() = Either::Right(http_body_util::Full::new(bytes::Bytes::new()));
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
