//! Stage 7 of the pipeline: the request goes upstream. The caller's credentials and the
//! hop-by-hop headers are removed, the upstream credential is injected (or the request signed
//! with it), the forwarding headers set, and the request sent with the upstream's client
//! within its timeouts.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use idgate_h1::limit::{Held, Saturated};
use idgate_h1::{self as h1, Progress, RequestBody, Stage};

use crate::body::{ProxyBody, Reported, UpstreamResponseBody};
use crate::ctx::{CredentialUse, RequestCtx};
use crate::problem::Refusal;
use crate::service::{Services, X_REQUEST_ID};
use crate::upstream::{Endpoint, Upstream};

mod resilient;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// What the forward stage (or one attempt of it) came to: the upstream's answer or the
/// refusal, and whether any of the request may have reached the upstream.
pub(crate) struct Forwarded {
    pub(crate) answer: Result<Response<UpstreamResponseBody>, Refusal>,
    /// Some of the request may have reached the upstream, in this attempt or an earlier one
    /// of the same request: the upstream may have acted on it. Once true, it stays true over
    /// the request's later attempts.
    pub(crate) reached: bool,
}

impl Forwarded {
    /// Refused before anything went upstream.
    pub(crate) fn unsent(refusal: Refusal) -> Self {
        Self {
            answer: Err(refusal),
            reached: false,
        }
    }
}

/// One attempt's time limits: the request's end (`request_timeout` from its first
/// attempt), and the wait for the answer once the whole request is out
/// (`first_byte_timeout`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) deadline: Instant,
    pub(crate) first_byte: Duration,
}

impl Limits {
    /// The limits of a request whose first attempt starts at `started`.
    pub(crate) fn of(upstream: &Upstream, started: Instant) -> Self {
        Self {
            // A timeout past the clock's range is none: a year is as good.
            deadline: started
                .checked_add(upstream.request_timeout)
                .unwrap_or_else(|| started + Duration::from_secs(365 * 24 * 3600)),
            first_byte: upstream.first_byte_timeout,
        }
    }
}

/// Stage 7.
pub(crate) async fn forward<'r>(
    ctx: &mut RequestCtx<'r>,
    upstream: &'r Upstream,
    req: http::request::Parts,
) -> Forwarded {
    ctx.upstream_sent = None;
    let (parts, path_and_query, body) = match prepare(ctx, upstream, req).await {
        Ok(prepared) => prepared,
        Err(refusal) => return Forwarded::unsent(refusal),
    };
    let sent_at = Instant::now();
    ctx.upstream_sent = Some(sent_at);
    let forwarded = resilient::send(ctx, upstream, parts, path_and_query, body).await;
    if let Ok(resp) = &forwarded.answer {
        ctx.upstream_latency = Some(sent_at.elapsed());
        ctx.upstream_status = Some(resp.status());
        // The upstream refused the credential: a token is fetched anew for the next request.
        if resp.status() == StatusCode::UNAUTHORIZED
            && let (Some(cred), Some(used)) = (&upstream.credential, &ctx.credential)
            && let Some(issued) = &used.issued
        {
            cred.rejected(issued);
        }
    }
    forwarded
}

/// The request as the upstream gets it: its path under the base path, the caller's
/// credentials and hop-by-hop headers out, the forwarding headers and the upstream
/// credential in; and its body.
async fn prepare<'r>(
    ctx: &mut RequestCtx<'r>,
    upstream: &'r Upstream,
    req: http::request::Parts,
) -> Result<(http::request::Parts, PathAndQuery, RequestBody), Refusal> {
    let (conn, services) = (ctx.conn, ctx.services);
    let mut parts = req;

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
    // The caller's credentials are for the gateway, never for the provider. A caller that
    // is not a trusted proxy could name any address; and an upstream without
    // `forwarded_for` gets no address, the caller's or any it claims.
    let trusted = upstream.forwarded_for && conn.trusted_proxy;
    ctx.snapshot.strip_headers.for_request(trusted).strip(h);
    h.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
    if trusted {
        append_forwarded_for(h, &conn.remote_ip);
    } else if upstream.forwarded_for {
        h.insert(X_FORWARDED_FOR.clone(), conn.remote_ip.clone());
    }

    let body = match &upstream.credential {
        None => ctx.take_body()?,
        Some(cred) => {
            // Signature schemes cover the body, so it is read whole (bounded) first.
            let (body, bytes) = if cred.needs_body() {
                // `read_body` holds it to the route's limit as well.
                let bytes = ctx
                    .read_body(upstream.max_body_bytes, upstream.request_timeout)
                    .await?;
                (RequestBody::Buffered(bytes.clone()), bytes)
            } else {
                (ctx.take_body()?, Bytes::new())
            };
            match cred
                .apply(
                    ctx.start,
                    &parts.method,
                    path_and_query.as_str(),
                    &bytes,
                    &mut parts.headers,
                )
                .await
            {
                Ok(u) => {
                    services.metrics.credential_used(
                        &upstream.credential_counted,
                        &cred.label,
                        &u.version,
                    );
                    ctx.credential = Some(CredentialUse {
                        label: &cred.label,
                        version: u.version,
                        issued: u.issued,
                    });
                }
                Err(e) => {
                    services.metrics.credential_failed(&cred.label);
                    ctx.give_back(body);
                    return Err(Refusal::CredentialUnavailable {
                        reason: e.to_string(),
                    });
                }
            }
            body
        }
    };
    Ok((parts, path_and_query, body))
}

/// Sends the request to the endpoint with the upstream's client, within `limits`: one
/// attempt (`resilient::send` decides whether to make it and whether to make another).
///
/// Only the upstream's own time counts against it as a timeout. The wait for a connection
/// under `max_connections` is bounded by `pending_timeout` and ends as `upstream-busy`; a
/// request whose body still streams in from the caller when the request's time runs out is
/// the caller's (`body-timeout`); `first_byte_timeout` starts once the whole request is out.
pub(crate) async fn send(
    ctx: &mut RequestCtx<'_>,
    upstream: &Upstream,
    endpoint: &Endpoint,
    limits: Limits,
    mut parts: http::request::Parts,
    path_and_query: PathAndQuery,
    body: RequestBody,
) -> Forwarded {
    if let Some(pool) = &endpoint.h1 {
        let progress = Progress::new();
        // Boxed: the exchange's future (a few KiB) is built in its box, rather than moved
        // into the timer and then into this future's state.
        let sent = crate::boxed::pinned(|| {
            pool.send(
                &parts.method,
                path_and_query.as_str(),
                &parts.headers,
                body,
                &progress,
            )
        });
        return match timed(sent, &progress, limits, MovedBy::Itself).await {
            None => Forwarded {
                answer: Err(ran_out(ctx.services, upstream, &progress)),
                reached: progress.reached(),
            },
            Some(Err(h1::SendError { error, unsent })) => {
                let reached = unsent.is_none();
                if let Some(body) = unsent {
                    ctx.give_back(body);
                }
                let refusal = match error {
                    h1::Error::CallerBody(e) => caller_body(&*e),
                    e @ h1::Error::BodyLength => Refusal::BadBody {
                        reason: e.to_string(),
                    },
                    h1::Error::Saturated(s) => saturated(ctx.services, upstream, s),
                    e => Refusal::UpstreamUnreachable {
                        connect: matches!(
                            e,
                            h1::Error::Connect(_) | h1::Error::ConnectTimeout | h1::Error::Tls(_)
                        ),
                        reason: format!("upstream {}: {e}", upstream.name),
                    },
                };
                Forwarded {
                    answer: Err(refusal),
                    reached,
                }
            }
            Some(Ok(resp)) => Forwarded {
                answer: Ok(resp.map(Either::Right)),
                reached: true,
            },
        };
    }

    // The Host is the upstream's, set by the client from the URI (the HTTP/1.1 client above
    // writes its own).
    parts.headers.remove(header::HOST);
    parts.uri = match Uri::builder()
        .scheme(upstream.scheme.clone())
        .authority(endpoint.authority.clone())
        .path_and_query(path_and_query)
        .build()
    {
        Ok(uri) => uri,
        Err(e) => {
            ctx.give_back(body);
            return Forwarded::unsent(Refusal::Internal {
                reason: format!("cannot build upstream URI: {e}"),
            });
        }
    };
    // The client picks HTTP/1.1 or HTTP/2 for the upstream connection by ALPN.
    parts.version = Version::HTTP_11;
    // hyper's HTTP/1.1 client sends a GET or HEAD body of unknown length as no body at all,
    // and the caller would get an answer to a request that never carried it. Asked for,
    // it goes chunked, as the own client sends it (HTTP/2 drops the field and sends DATA).
    // Only a route with `allow_body` lets such a body get here.
    if matches!(parts.method, Method::GET | Method::HEAD)
        && let RequestBody::Stream(b) = &body
        && !b.is_end_stream()
        && b.size_hint().exact().is_none()
    {
        parts.headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    // Shared with the caller's body, which hyper's client reads: it says when all of it
    // went on.
    let progress = Arc::new(Progress::new());
    let sent = async {
        // Taken before the body goes into the request, so that a refusal can still read it
        // away.
        let slot = match upstream.limit.request_slot().await {
            Ok(slot) => slot,
            Err(s) => {
                ctx.give_back(body);
                return Forwarded::unsent(saturated(ctx.services, upstream, s));
            }
        };
        let body = match body {
            // This client forwards trailers: they are stripped as the head was.
            RequestBody::Stream(b) => {
                let trusted = upstream.forwarded_for && ctx.conn.trusted_proxy;
                let strip = ctx.snapshot.strip_headers.for_request(trusted).clone();
                let b = b.with_trailers(strip);
                if b.is_end_stream() {
                    // Nothing of the caller's is awaited: the rest is the upstream's time.
                    progress.set(Stage::Sent);
                    Either::Left(b)
                } else {
                    // The connect and the head are the upstream's time; the body tells
                    // when the caller's is awaited.
                    progress.set(Stage::Sending);
                    Either::Left(b.with_progress(progress.clone()))
                }
            }
            RequestBody::Buffered(b) => {
                progress.set(Stage::Sent);
                Either::Right(Full::new(b))
            }
        };
        let answer = match upstream
            .client
            .request(Request::from_parts(parts, body))
            .await
        {
            // The caller's body went over a limit while it streamed.
            Err(e) if h1::CallerBodyError::find(&e).is_some() => Err(caller_body(&e)),
            // A connect failure, including a connect timeout, means the upstream is unreachable.
            Err(e) => {
                // hyper's client sends nothing before it is connected.
                let connect = e.is_connect();
                return Forwarded {
                    answer: Err(Refusal::UpstreamUnreachable {
                        connect,
                        reason: format!("upstream {}: {}", upstream.name, error_chain(&e)),
                    }),
                    reached: !connect,
                };
            }
            // What the own client refuses as it reads the head (RFC 9112 §6.3): hyper's
            // frames such a body as chunked but keeps the Content-Length, which a caller
            // (or masking) would take for the framing.
            Ok(resp) if framed_twice(resp.headers()) => Err(Refusal::UpstreamUnreachable {
                connect: false,
                reason: format!(
                    "upstream {}: both Transfer-Encoding and Content-Length",
                    upstream.name
                ),
            }),
            Ok(resp) => Ok(resp.map(|b| {
                let held = Held::new(b, slot);
                let timed = h1::Timed::new(
                    held,
                    upstream.request_timeout,
                    upstream.response_body_timeout,
                );
                Either::Left(timed)
            })),
        };
        Forwarded {
            answer,
            reached: true,
        }
    };
    match timed(sent, &progress, limits, MovedBy::Elsewhere).await {
        Some(forwarded) => forwarded,
        None => Forwarded {
            answer: Err(ran_out(ctx.services, upstream, &progress)),
            reached: progress.reached(),
        },
    }
}

/// Who moves an exchange's [`Progress`] on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MovedBy {
    /// The exchange's own future, polled by [`timed`]: its stage is read after each poll,
    /// and nothing needs waking (a wake from inside the poll would only poll the
    /// connection's task once more for nothing).
    Itself,
    /// Another task (hyper's connection, which reads the caller's body): [`timed`] is
    /// woken when the whole request is out.
    Elsewhere,
}

/// Runs one exchange within `limits`: until the whole request is out, within the
/// request's deadline; from then, within `first_byte` of that moment too. `None` when the
/// time ran out ([`ran_out`] says whose it was). One timer, moved once.
async fn timed<T>(
    exchange: impl Future<Output = T>,
    progress: &Progress,
    limits: Limits,
    moved_by: MovedBy,
) -> Option<T> {
    let mut exchange = std::pin::pin!(exchange);
    let deadline = tokio::time::Instant::from_std(limits.deadline);
    let mut timer = std::pin::pin!(tokio::time::sleep_until(deadline));
    // Polled only for an exchange moved on elsewhere, and never again once it is ready.
    let mut sent = std::pin::pin!(progress.sent());
    let mut first_byte_armed = false;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = exchange.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        if !first_byte_armed {
            let all_out = match moved_by {
                MovedBy::Itself => progress.stage() == Stage::Sent,
                MovedBy::Elsewhere => sent.as_mut().poll(cx).is_ready(),
            };
            if all_out {
                first_byte_armed = true;
                let first_byte = tokio::time::Instant::now()
                    .checked_add(limits.first_byte)
                    .map_or(deadline, |at| at.min(deadline));
                timer.as_mut().reset(first_byte);
            }
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// The refusal for an exchange whose time ran out, by whose time it was: the wait for a
/// connection is the gateway's own queue (`upstream-busy`), a body still streaming in is
/// the caller's (`body-timeout`), the rest is the upstream's (`upstream-timeout`).
fn ran_out(services: &Services, upstream: &Upstream, progress: &Progress) -> Refusal {
    match progress.stage() {
        Stage::Queued => saturated(services, upstream, Saturated::QueueTimeout),
        Stage::Streaming => Refusal::BodyTimeout,
        Stage::Connecting | Stage::Sending | Stage::Sent => Refusal::UpstreamTimeout,
    }
}

/// The refusal for a caller body that failed while it streamed upstream: over the route's
/// `max_body_bytes` (413), stalled past `body_timeout` (408), or broken off.
fn caller_body(e: &(dyn std::error::Error + 'static)) -> Refusal {
    match h1::CallerBodyError::find(e) {
        Some(h1::CallerBodyError::TooLarge(_)) => Refusal::BodyTooLarge,
        Some(h1::CallerBodyError::Stalled(_)) => Refusal::BodyTimeout,
        _ => Refusal::BadBody {
            reason: error_chain(e),
        },
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

/// Whether an answer's head gives both framings, `Transfer-Encoding` and
/// `Content-Length`: a sign of response smuggling, never passed on.
fn framed_twice(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING) && headers.contains_key(header::CONTENT_LENGTH)
}

/// The upstream's response to a request of `method`, without its hop-by-hop headers. An
/// answer framed both ways never gets here: each client refuses it (see [`framed_twice`]).
///
/// An answer that has no content (RFC 9110 §6.4.1: to `HEAD`, `204`, `304`) gets an
/// empty body whatever the upstream sent after its head: an HTTP/2 upstream can send DATA
/// after such a head, hyper's HTTP/2 server would pass it on to an HTTP/2 caller, and no
/// stage after this one expects bytes there to check. Its `Content-Length` stays on
/// `HEAD` and `304`, where it describes the representation a `GET` would have got; a
/// `204` may not have one (§8.6).
pub(crate) fn strip_response(
    ctx: &RequestCtx<'_>,
    upstream: &Upstream,
    method: &Method,
    resp: Response<UpstreamResponseBody>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    upstream.response_strip.strip(&mut parts.headers);
    if !has_content(method, parts.status) {
        if parts.status == StatusCode::NO_CONTENT {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        // Dropped unread: its connection's slot goes back at once (an HTTP/2 stream is
        // reset; the own client's bodiless answer has already ended).
        drop(body);
        return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
    }
    let body = Reported::new(
        body,
        ctx.request_id.clone(),
        upstream.name.clone(),
        ctx.services.metrics.clone(),
    );
    Response::from_parts(parts, Either::Left(body))
}

/// Whether an answer to `method` with `status` may have content (RFC 9110 §6.4.1).
fn has_content(method: &Method, status: StatusCode) -> bool {
    *method != Method::HEAD
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header_set::{FORWARDING, HOP_BY_HOP, RESPONSE_STRIP, RequestStrip};

    fn names(h: &HeaderMap) -> Vec<&str> {
        h.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_stripped_from_answers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        RESPONSE_STRIP.strip(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
    }

    #[test]
    fn requests_lose_forwarding_headers_unless_a_trusted_proxy_sent_them() {
        let strip = RequestStrip::new(&[HeaderName::from_static("x-api-key")]);
        let request = || {
            let mut h = HeaderMap::new();
            for name in HOP_BY_HOP
                .iter()
                .map(|&n| n.clone())
                .chain(FORWARDING.iter().cloned())
            {
                h.append(name, HeaderValue::from_static("a"));
            }
            h.append("x-api-key", HeaderValue::from_static("caller-secret"));
            h.append("x-kept", HeaderValue::from_static("1"));
            h
        };
        let mut h = request();
        strip.for_request(false).strip(&mut h);
        assert_eq!(names(&h), ["x-kept"]);
        let mut h = request();
        strip.for_request(true).strip(&mut h);
        let mut kept = names(&h);
        kept.sort_unstable();
        let mut expected: Vec<&str> = FORWARDING.iter().map(HeaderName::as_str).collect();
        expected.push("x-kept");
        expected.sort_unstable();
        assert_eq!(kept, expected);
    }

    #[test]
    fn requests_lose_every_header_named_with_an_underscore_even_from_a_trusted_proxy() {
        let strip = RequestStrip::new(&[HeaderName::from_static("x-api-key")]);
        for trusted in [false, true] {
            let mut h = HeaderMap::new();
            h.append("x_forwarded_for", HeaderValue::from_static("10.6.6.6"));
            h.append("x_api_key", HeaderValue::from_static("caller-chosen"));
            h.append("x-kept", HeaderValue::from_static("1"));
            strip.for_request(trusted).strip(&mut h);
            assert_eq!(names(&h), ["x-kept"], "trusted: {trusted}");
        }
        // Answers keep theirs: the stripping is for what a caller sends upstream.
        let mut h = HeaderMap::new();
        h.append("x_upstream", HeaderValue::from_static("1"));
        RESPONSE_STRIP.strip(&mut h);
        assert_eq!(names(&h), ["x_upstream"]);
    }
}
