//! The request's way through the gateway, in one place:
//!
//! ```text
//!   connection  (listener.rs)  TLS handshake; the client's X.509-SVID verified against the
//!                              bundle of its own trust domain → peer SPIFFE ID
//!   1. path       rewrite the path into its one canonical form (path.rs); refuse paths
//!                 that could still be read differently here and upstream         (400)
//!      (the built-in token endpoint and its discovery documents answer here, when configured)
//!   2. route      method + path template → route      (404 / 405, before any auth detail)
//!   3. authenticate  the route's layers — mtls, api_key, jwt, or any of several —
//!                 → one Caller                         (401 with a challenge, or 400)
//!   4. authorize  one principal on the route's allow list holding the method's scopes
//!                                                             (403, default deny)
//!   5. forward    strip hop-by-hop headers and the caller's credentials, inject or sign
//!                 with the upstream credential (503 when it cannot be produced), set
//!                 x-request-id and x-forwarded-for (appended to only for a trusted proxy),
//!                 call the upstream with its timeouts
//!                                                             (502 / 504)
//!   6. respond    strip hop-by-hop headers, return x-request-id; one access-log line
//! ```
//!
//! Each stage is a small function that either hands on or returns a [`Refusal`]; only
//! `problem.rs` turns a refusal into a response.

use std::borrow::Borrow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use idgate_tls::SpiffeId;

use crate::authn::{self, FailedAttempts};
use crate::h1::{self, RequestBody};
use crate::limit::{Held, Saturated};
use crate::lingering_close::LingerOnClose;
use crate::metrics::Metrics;
use crate::path::{self, BadEncoding};
use crate::problem::Refusal;
use crate::routes::{Route, RouteMiss};
use crate::snapshot::Snapshot;
use crate::token_endpoint::TokenEndpoint;
use crate::upstream::Upstream;
use idgate_auth::{AuthFailure, Principal};

/// An upstream's response body: from hyper's client (`http2 = true`, `client = "hyper"`;
/// holding its place under the upstream's cap), or from the gateway's own HTTP/1.1 client.
pub type UpstreamResponseBody = Either<Held<Incoming>, h1::ResponseBody>;

/// What the gateway answers with: the upstream's body, or one of its own.
pub type ProxyBody = Either<UpstreamResponseBody, Full<Bytes>>;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Headers that tell an upstream who sent a request and how it arrived. Only a trusted proxy
/// may pass them on; from anyone else they are claims the caller made about itself. Besides
/// the standard ones, the client-address headers of common CDNs and load balancers, which
/// frameworks (and libraries such as `request-ip`) read before `x-forwarded-for`.
static FORWARDING: [HeaderName; 15] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded"),
    HeaderName::from_static("forwarded-for"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("fastly-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-original-forwarded-for"),
    HeaderName::from_static("x-appengine-user-ip"),
];
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

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

    fn next(&self) -> HeaderValue {
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
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// What every request shares, whatever the configuration snapshot.
/// All request bodies buffered at once (for signature schemes), in KiB: 256 MiB.
const BODY_BUDGET_KIB: u32 = 256 * 1024;

#[derive(Debug)]
pub struct Services {
    pub ids: RequestIds,
    pub metrics: Arc<Metrics>,
    pub failed_attempts: FailedAttempts,
    /// Bounds the memory of buffered request bodies, in KiB.
    body_budget: tokio::sync::Semaphore,
    /// Route labels for requests that match no configured route.
    route_none: Arc<str>,
    route_oauth2: Arc<str>,
}

impl Default for Services {
    fn default() -> Self {
        Self {
            ids: RequestIds::default(),
            metrics: Arc::default(),
            failed_attempts: FailedAttempts::default(),
            body_budget: tokio::sync::Semaphore::new(BODY_BUDGET_KIB as usize),
            route_none: "-".into(),
            route_oauth2: "oauth2".into(),
        }
    }
}

impl Services {
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
    let start = Instant::now();
    let request_id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => services.ids.next(),
    };
    let method = req.method().clone();
    let version = req.version();
    let mut route_name: &Arc<str> = &services.route_none;
    let mut upstream_status = None;
    let mut credential: Option<(&str, Arc<str>)> = None;
    let mut caller_label: Option<String> = None;
    // The request body while nothing has read it: a refusal reads it away (see `linger`).
    let expects_continue = req.headers().contains_key(header::EXPECT);
    let (mut parts, body) = req.into_parts();
    let mut unread = Some(body);

    let result = async {
        path::canonicalize(&mut parts.uri)?;
        if let Some(endpoint) = &snapshot.token_endpoint
            && TokenEndpoint::handles(parts.uri.path())
            && let Some(body) = unread.take()
        {
            route_name = &services.route_oauth2;
            let rid = request_id.to_str().unwrap_or("-");
            let (resp, client_auth_failed) = endpoint
                .handle(
                    &conn,
                    &parts.method,
                    parts.uri.path(),
                    &parts.headers,
                    body,
                    rid,
                )
                .await;
            if client_auth_failed {
                services.failed_attempt(&conn, "oauth-invalid-client");
            }
            return Ok(resp.map(Either::Right));
        }
        let route = route(&snapshot, &parts)?;
        route_name = &route.name;
        let caller = authn::authenticate(route, &conn, &parts, &snapshot.auth)
            .await
            .map_err(|f| services.auth_failed(&conn, f))?;
        // The access line names the principal that was authorized, or every one refused.
        match authn::authorize(route, &parts.method, &caller) {
            // The peer, which the line names anyway: no label to make.
            Ok(Principal::Workload(_)) => {}
            Ok(principal) => caller_label = Some(principal.to_string()),
            Err(f) => {
                caller_label = caller.label();
                return Err(services.auth_failed(&conn, f));
            }
        }
        let upstream = &snapshot.upstreams[route.upstream];
        // Refused before anything goes upstream: an upstream that ignores the body of a GET
        // would read it as the next request on its connection.
        if !route.allow_body
            && idgate_config::body_needs_opt_in(&parts.method)
            && let Some(body) = unread.as_mut()
            && carries_body(body)
            && !turns_out_empty(body, upstream.request_timeout).await
        {
            return Err(Refusal::BodyNotAllowed {
                method: parts.method,
            });
        }
        let Some(body) = unread.take() else {
            return Err(Refusal::Internal {
                reason: "the request body was taken before forwarding".to_owned(),
            });
        };
        let req = Request::from_parts(parts, body);
        let resp = forward(
            upstream,
            &snapshot.strip_headers,
            &conn,
            &request_id,
            start,
            &services,
            &mut credential,
            &mut unread,
            req,
        )
        .await?;
        upstream_status = Some(resp.status().as_u16());
        Ok::<_, Refusal>(respond(resp))
    }
    .await;

    let request_id_str = request_id.to_str().unwrap_or("-");
    let mut resp = match result {
        Ok(resp) => resp,
        Err(refusal) => {
            if let Some(reason) = refusal.log_reason() {
                tracing::warn!(
                    request_id = request_id_str,
                    route = &**route_name,
                    problem = refusal.slug(),
                    reason,
                    "request refused"
                );
            }
            let mut resp = refusal.into_response(request_id_str).map(Either::Right);
            if let Some(body) = unread.take()
                && !linger(body, expects_continue, &conn)
                && version < Version::HTTP_2
            {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                conn.linger_on_close.request();
            }
            resp
        }
    };
    let status = resp.status().as_u16();
    let peer = conn.peer.as_ref().map_or("-", |p| p.as_str());
    tracing::info!(
        target: "idgate::access",
        request_id = request_id_str,
        peer,
        // Before authorization (and on mTLS alone), the peer is all that is known.
        caller = caller_label.as_deref().unwrap_or(peer),
        remote = %conn.remote.ip(),
        method = method.as_str(),
        version = ?version,
        route = &**route_name,
        status,
        upstream_status,
        credential = credential.as_ref().map(|c| c.0),
        credential_version = credential.as_ref().map(|c| &*c.1),
        latency_us = start.elapsed().as_micros() as u64,
        "request"
    );
    services.metrics.request(route_name, status);
    resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
    resp
}

/// Stage 2.
fn route<'s>(snapshot: &'s Snapshot, req: &http::request::Parts) -> Result<&'s Route, Refusal> {
    let route = snapshot
        .routes
        .find(&req.method, req.uri.path())
        .map_err(|miss| match miss {
            RouteMiss::NoPath => Refusal::NoRoute,
            RouteMiss::WrongMethod(allow) => Refusal::MethodNotAllowed {
                allow: allow.clone(),
            },
        })?;
    // An upstream that ignores case may fold more than ASCII (`ı`, `ſ` and the Kelvin sign
    // are `i`, `s` and `k` to Java's equalsIgnoreCase): the gateway folds ASCII only, so on
    // such a route a path with characters beyond ASCII could mean a literal it did not match.
    if route.case_insensitive && path::has_non_ascii_escape(req.uri.path()) {
        return Err(Refusal::InvalidEncoding(BadEncoding::NonAsciiCaseFolded));
    }
    Ok(route)
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), plus the proxy ones.
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    &header::PROXY_AUTHENTICATE,
];

/// Removes every header named in `names` that is present. One pass over the (usually few)
/// headers first, so that a message without any of them costs no lookups.
pub(crate) fn remove_all<N: Borrow<HeaderName>>(headers: &mut HeaderMap, names: &[N]) {
    if headers
        .keys()
        .any(|k| names.iter().any(|n| n.borrow() == k))
    {
        for name in names {
            headers.remove(name.borrow());
        }
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including any the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut connection = headers.get_all(header::CONNECTION).iter();
    match (connection.next(), connection.next()) {
        (None, _) => {}
        // The usual case: one `Connection` header, its value shared, not copied.
        (Some(value), None) => {
            let value = value.clone();
            for name in value.to_str().into_iter().flat_map(|v| v.split(',')) {
                let name = name.trim();
                if !name.is_empty()
                    && !name.eq_ignore_ascii_case("keep-alive")
                    && !name.eq_ignore_ascii_case("close")
                {
                    headers.remove(name);
                }
            }
        }
        (Some(_), Some(_)) => {
            let named: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
                .collect();
            for name in named {
                headers.remove(name);
            }
        }
    }
    remove_all(headers, &HOP_BY_HOP);
}

/// Stage 5.
#[allow(clippy::too_many_arguments)]
async fn forward<'u>(
    upstream: &'u Upstream,
    strip: &[HeaderName],
    conn: &ConnInfo,
    request_id: &HeaderValue,
    started: Instant,
    services: &Services,
    used: &mut Option<(&'u str, Arc<str>)>,
    unread: &mut Option<Incoming>,
    req: Request<Incoming>,
) -> Result<Response<UpstreamResponseBody>, Refusal> {
    let (mut parts, mut body) = req.into_parts();

    // Forwarded as received: without a base path the received bytes are shared, not copied.
    let path_and_query = match (upstream.base_path.is_empty(), parts.uri.path_and_query()) {
        (true, Some(pq)) => Ok(pq.clone()),
        (_, pq) => PathAndQuery::try_from(format!(
            "{}{}",
            upstream.base_path,
            pq.map_or("/", PathAndQuery::as_str)
        )),
    }
    .map_err(|e| Refusal::Internal {
        reason: format!("cannot build upstream path: {e}"),
    })?;
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    // The caller's credentials are for the gateway, never for the provider.
    if h.keys().any(|k| strip.contains(k)) {
        for name in strip {
            h.remove(name);
        }
    }
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if upstream.forwarded_for && conn.trusted_proxy {
        append_forwarded_for(h, &conn.remote_ip);
    } else {
        // A caller that is not a trusted proxy could name any address; and an upstream
        // without `forwarded_for` gets no address, the caller's or any it claims.
        remove_all(h, &FORWARDING);
        if upstream.forwarded_for {
            h.insert(X_FORWARDED_FOR.clone(), conn.remote_ip.clone());
        }
    }

    let body = match &upstream.credential {
        None => RequestBody::Stream(body),
        Some(cred) => {
            // Signature schemes cover the body, so it is read whole (bounded) first.
            let mut _budget = None;
            let (body, bytes) = if cred.needs_body() {
                // All buffered bodies together stay within one budget: many streams each
                // sending the largest body must not exhaust memory.
                let want = http_body::Body::size_hint(&body)
                    .exact()
                    .unwrap_or(upstream.max_body_bytes)
                    .min(upstream.max_body_bytes);
                let kib = u32::try_from(want.div_ceil(1024).max(1))
                    .unwrap_or(BODY_BUDGET_KIB)
                    .min(BODY_BUDGET_KIB);
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    services.body_budget.acquire_many(kib),
                )
                .await
                {
                    Ok(Ok(permit)) => _budget = Some(permit),
                    _ => {
                        *unread = Some(body);
                        return Err(Refusal::Busy);
                    }
                }
                // A trickled body must not hold the connection (and its buffer) for ever.
                let read = tokio::time::timeout(
                    upstream.request_timeout,
                    read_body(&mut body, upstream.max_body_bytes),
                )
                .await
                .map_err(|_| Refusal::BadBody {
                    reason: "the request body did not arrive in time".to_owned(),
                })?;
                let bytes = match read {
                    Ok(bytes) => bytes,
                    Err(refusal) => {
                        // What is left of a body too large is read away beside the answer.
                        if matches!(refusal, Refusal::BodyTooLarge) {
                            *unread = Some(body);
                        }
                        return Err(refusal);
                    }
                };
                (RequestBody::Buffered(bytes.clone()), bytes)
            } else {
                (RequestBody::Stream(body), Bytes::new())
            };
            match cred
                .apply(
                    started,
                    &parts.method,
                    path_and_query.as_str(),
                    &bytes,
                    &mut parts.headers,
                )
                .await
            {
                Ok(u) => {
                    services.metrics.credential_used(&cred.label, &u.version);
                    *used = Some((&*cred.label, u.version));
                }
                Err(e) => {
                    services.metrics.credential_failed(&cred.label);
                    give_back(unread, body);
                    return Err(Refusal::CredentialUnavailable {
                        reason: e.to_string(),
                    });
                }
            }
            body
        }
    };

    if let Some(pool) = &upstream.h1 {
        let sent = pool.send(&parts.method, path_and_query.as_str(), &parts.headers, body);
        return match tokio::time::timeout(upstream.request_timeout, sent).await {
            Err(_) => Err(Refusal::UpstreamTimeout),
            Ok(Err(h1::SendError { error, unsent })) => {
                if let Some(body) = unsent {
                    give_back(unread, body);
                }
                Err(match error {
                    h1::Error::CallerBody(e) => Refusal::BadBody {
                        reason: e.to_string(),
                    },
                    e @ h1::Error::BodyLength => Refusal::BadBody {
                        reason: e.to_string(),
                    },
                    h1::Error::Saturated(s) => saturated(services, upstream, s),
                    e => Refusal::UpstreamUnreachable {
                        reason: format!("upstream {}: {e}", upstream.name),
                    },
                })
            }
            Ok(Ok(resp)) => Ok(resp.map(Either::Right)),
        };
    }

    // The Host is the upstream's, set by the client from the URI (the HTTP/1.1 client above
    // writes its own).
    parts.headers.remove(header::HOST);
    parts.uri = Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| Refusal::Internal {
            reason: format!("cannot build upstream URI: {e}"),
        })?;
    // The client picks HTTP/1.1 or HTTP/2 for the upstream connection by ALPN.
    parts.version = Version::HTTP_11;
    let sent = async {
        // Taken before the body goes into the request, so that a refusal can still read it
        // away.
        let slot = match upstream.limit.request_slot().await {
            Ok(slot) => slot,
            Err(s) => {
                give_back(unread, body);
                return Err(saturated(services, upstream, s));
            }
        };
        let body = match body {
            RequestBody::Stream(b) => Either::Left(b),
            RequestBody::Buffered(b) => Either::Right(Full::new(b)),
        };
        match upstream
            .client
            .request(Request::from_parts(parts, body))
            .await
        {
            // A connect failure, including a connect timeout, means the upstream is unreachable.
            Err(e) => Err(Refusal::UpstreamUnreachable {
                reason: format!("upstream {}: {}", upstream.name, error_chain(&e)),
            }),
            Ok(resp) => Ok(resp.map(|b| Either::Left(Held::new(b, slot)))),
        }
    };
    tokio::time::timeout(upstream.request_timeout, sent)
        .await
        .unwrap_or(Err(Refusal::UpstreamTimeout))
}

/// A body that was refused before any of it was read goes back to be read away beside the
/// answer (one read whole already needs nothing more).
fn give_back(unread: &mut Option<Incoming>, body: RequestBody) {
    if let RequestBody::Stream(b) = body {
        *unread = Some(b);
    }
}

/// Every connection to the upstream is busy and the request could not wait for one.
fn saturated(services: &Services, upstream: &Upstream, why: Saturated) -> Refusal {
    services
        .metrics
        .upstream_saturated(&upstream.name, why.reason());
    Refusal::UpstreamBusy {
        reason: format!("upstream {}: {why}", upstream.name),
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
            tokio::time::timeout(wait, read_body(body, 0)).await,
            Ok(Ok(bytes)) if bytes.is_empty()
        )
}

/// Reads the body whole, up to `limit`; on `BodyTooLarge` the rest is still in `body`.
async fn read_body(body: &mut Incoming, limit: u64) -> Result<Bytes, Refusal> {
    use http_body::Body as _;
    if body.size_hint().lower() > limit {
        return Err(Refusal::BodyTooLarge);
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match http_body_util::BodyExt::collect(limited).await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::BodyTooLarge),
        Err(e) => Err(Refusal::BadBody {
            reason: e.to_string(),
        }),
    }
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

fn append_forwarded_for(h: &mut HeaderMap, ip: &HeaderValue) {
    let prior: Vec<&[u8]> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if prior.is_empty() {
        h.insert(X_FORWARDED_FOR.clone(), ip.clone());
        return;
    }
    let mut joined = Vec::with_capacity(64);
    for p in prior {
        joined.extend_from_slice(p);
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(ip.as_bytes());
    match HeaderValue::from_bytes(&joined) {
        Ok(v) => {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        Err(_) => {
            h.insert(X_FORWARDED_FOR.clone(), ip.clone());
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        out.push_str(": ");
        out.push_str(&err.to_string());
        cur = err.source();
    }
    out
}

/// Stage 6.
fn respond(resp: Response<UpstreamResponseBody>) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Either::Left(body))
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

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
