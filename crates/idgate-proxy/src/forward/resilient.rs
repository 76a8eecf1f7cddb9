//! The forward stage through an upstream's breaker, balancer and retries (their state is
//! in `resilience`): the request is let through the breaker (or refused `circuit-open`
//! without touching the upstream), each attempt goes to an endpoint the balancer picks,
//! a failed one is sent again when that is safe and the budget allows, and the request's
//! outcome is recorded.
//!
//! A retry is safe when the body can be sent again — it is empty or was buffered whole,
//! never a stream already handed on — and the upstream cannot have acted on the request:
//! the connection was never made, or the request is idempotent (`GET`, `HEAD`, `OPTIONS`,
//! `PUT`, `DELETE`, `TRACE`), or it carries a non-empty `Idempotency-Key` and the upstream
//! is configured as deduplicating by it (`retry.idempotency_key`).

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{Method, Response};
use http_body::Body as _;
use idgate_config::{RetryConfig, RetryOn};
use idgate_h1::RequestBody;

use super::{Forwarded, Limits};
use crate::body::UpstreamResponseBody;
use crate::ctx::RequestCtx;
use crate::problem::Refusal;
use crate::resilience::Outcome;
use crate::upstream::Upstream;

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

type Answer = Result<Response<UpstreamResponseBody>, Refusal>;

/// Sends the request to `upstream` through its breaker and retries (see the module).
pub(crate) async fn send(
    ctx: &mut RequestCtx<'_>,
    upstream: &Upstream,
    parts: http::request::Parts,
    path_and_query: PathAndQuery,
    body: RequestBody,
) -> Forwarded {
    let limits = Limits::of(upstream, Instant::now());
    let plain = upstream.breaker.is_none()
        && upstream.retry.is_none()
        && upstream.health.is_none()
        && upstream.endpoints.len() == 1;
    if let (true, Some(endpoint)) = (plain, upstream.endpoints.first()) {
        return super::send(ctx, upstream, endpoint, limits, parts, path_and_query, body).await;
    }
    let resilience = &ctx.services.resilience;
    // The breaker counts requests, not attempts: a request that a retry on another endpoint
    // saved did not fail.
    let permit = match &upstream.breaker {
        None => None,
        Some(cfg) => match resilience.admit(upstream, cfg) {
            Ok(p) => Some(p),
            Err(u) => {
                // Nothing went upstream: a route's failover may still take the request.
                ctx.give_back(body);
                return Forwarded::unsent(u.refusal(&upstream.name));
            }
        },
    };
    // Boxed: the retry loop's future is half again the plain exchange's, and only the
    // upstreams with a breaker, retries, health checks or several endpoints need it.
    let sent =
        crate::boxed::pinned(|| attempts(ctx, upstream, limits, parts, path_and_query, body)).await;
    if let Some(p) = permit {
        p.record(classify(&sent.answer).0);
    }
    sent
}

/// The attempts of one request: each on an endpoint the balancer picks (another than the
/// last one's, when another is healthy), retried while that is safe and the budget allows.
/// Whether the request reached the upstream is the attempts' together: once one attempt
/// may have delivered any of it, a later one that sends nothing does not undo that.
async fn attempts(
    ctx: &mut RequestCtx<'_>,
    upstream: &Upstream,
    limits: Limits,
    parts: http::request::Parts,
    path_and_query: PathAndQuery,
    body: RequestBody,
) -> Forwarded {
    let resilience = &ctx.services.resilience;
    let retry = upstream.retry.as_ref();
    if let Some(r) = retry {
        resilience.count_request(upstream, &r.budget);
    }
    // What a retry sends: the buffered bytes again, or nothing for an empty body. A body
    // streamed on is never sent again.
    let replay = retry.and(match &body {
        RequestBody::Buffered(b) => Some(b.clone()),
        RequestBody::Stream(b) if b.is_end_stream() => Some(Bytes::new()),
        RequestBody::Stream(_) => None,
    });
    // A key counts only where the upstream is known to deduplicate by it: an upstream that
    // ignores it would act on the request twice.
    let acted_on_is_harmless = idempotent(&parts.method)
        || (retry.is_some_and(|r| r.idempotency_key)
            && parts
                .headers
                .get(&IDEMPOTENCY_KEY)
                .is_some_and(|k| !k.as_bytes().trim_ascii().is_empty()));
    let (mut parts, mut body) = (parts, body);
    let mut retries = 0;
    let mut avoid = None;
    let mut reached = false;
    loop {
        let (index, in_flight) = match resilience.pick(upstream, avoid) {
            Ok(picked) => picked,
            Err(u) => {
                ctx.give_back(body);
                return Forwarded {
                    answer: Err(u.refusal(&upstream.name)),
                    reached,
                };
            }
        };
        let Some(endpoint) = upstream.endpoints.get(index) else {
            return Forwarded {
                answer: Err(Refusal::Internal {
                    reason: "the balancer picked no endpoint".to_owned(),
                }),
                reached,
            };
        };
        let head = replay.as_ref().map(|_| copy_parts(&parts));
        // Each attempt waits `first_byte_timeout` for its answer, and all of them together
        // end at the request's deadline (`request_timeout` from the first one's start).
        let mut sent = super::send(
            ctx,
            upstream,
            endpoint,
            limits,
            parts,
            path_and_query.clone(),
            body,
        )
        .await;
        drop(in_flight);
        reached |= sent.reached;
        sent.reached = reached;
        let (_, failure) = classify(&sent.answer);
        let (Some(r), Some(head), Some(bytes)) = (retry, head, &replay) else {
            return sent;
        };
        let Some(reason) = failure.filter(|f| wanted(r, *f, &sent.answer)) else {
            return sent;
        };
        let safe = reason == Failure::Connect || acted_on_is_harmless;
        if !safe || retries >= r.attempts {
            return sent;
        }
        let wait = backoff(r, retries);
        if Instant::now() + wait >= limits.deadline {
            return sent;
        }
        if !resilience.take_retry(upstream, &r.budget, reason.as_str()) {
            return sent;
        }
        // The failed answer (and its connection) goes before the retry.
        drop(sent);
        (parts, body) = (head, RequestBody::Buffered(bytes.clone()));
        avoid = Some(index);
        retries += 1;
        tokio::time::sleep(wait).await;
    }
}

/// The request head again, for a retry (extensions are the caller's connection's and stay
/// behind).
fn copy_parts(p: &http::request::Parts) -> http::request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = p.method.clone();
    parts.uri = p.uri.clone();
    parts.version = p.version;
    parts.headers = p.headers.clone();
    parts
}

/// What a failed attempt met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Status,
    Connect,
    Timeout,
    Reset,
}

impl Failure {
    fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
        }
    }
}

/// How an attempt went for the breaker, and what failed if the upstream failed. A refusal
/// of the gateway's own (the caller's body, a full connection queue, the credential) says
/// nothing of the upstream.
fn classify(sent: &Answer) -> (Outcome, Option<Failure>) {
    match sent {
        Ok(resp) if resp.status().is_server_error() => (Outcome::Failure, Some(Failure::Status)),
        Ok(_) => (Outcome::Success, None),
        Err(Refusal::UpstreamUnreachable { connect: true, .. }) => {
            (Outcome::Failure, Some(Failure::Connect))
        }
        Err(Refusal::UpstreamUnreachable { connect: false, .. }) => {
            (Outcome::Failure, Some(Failure::Reset))
        }
        Err(Refusal::UpstreamTimeout) => (Outcome::Failure, Some(Failure::Timeout)),
        Err(_) => (Outcome::Neutral, None),
    }
}

/// Whether the retry configuration retries this failure.
fn wanted(r: &RetryConfig, f: Failure, sent: &Answer) -> bool {
    match f {
        Failure::Status => sent
            .as_ref()
            .is_ok_and(|resp| r.statuses.contains(&resp.status().as_u16())),
        Failure::Connect => r.on.contains(&RetryOn::Connect),
        Failure::Timeout => r.on.contains(&RetryOn::Timeout),
        Failure::Reset => r.on.contains(&RetryOn::Reset),
    }
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Exponential backoff with full jitter: a random wait up to `backoff · 2^n`, at most
/// `backoff_max`.
fn backoff(r: &RetryConfig, n: u32) -> Duration {
    let ceiling = r
        .backoff
        .saturating_mul(1u32 << n.min(16))
        .min(r.backoff_max);
    // Randomly keyed per call: enough to spread retries apart, nothing secret.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(n);
    let fraction = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    ceiling.mul_f64(fraction)
}
