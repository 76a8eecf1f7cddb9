//! The route's rate limits (GCRA), each decided on every request: the request is refused
//! when any refuses it. Limits run after authorization, so that they can count by the
//! identity the caller proved (SPIFFE ID, API key id, token client), and before anything
//! goes upstream.
//!
//! Where the state is: with a backend shared between replicas (Redis), one atomic check
//! per limit in the backend, bounded by `[state] timeout`; otherwise in this process's
//! [`idgate_store::LocalLimiter`], never in a file. A backend that fails or is slow, or a
//! local limiter full of live keys, is a state error: the route's `on_state_error` says
//! whether the request goes on without that limit (fail_open) or gets 503.
//!
//! Every answer on a limited route carries the `RateLimit-Policy` and `RateLimit` fields
//! of draft-ietf-httpapi-ratelimit-headers-10, one list member per limit that applied.
//! When several limits apply and one refuses, the ones before it have still counted the
//! request (as Envoy's and Kong's do): the check of each is atomic, not of all together.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderName, HeaderValue};
use idgate_config::OnStateError;
use idgate_store::{Counters as _, GcraDecision};

use crate::ctx::RequestCtx;
use crate::limit_state::{Limit, Part, StateFailure, Tiered, bounded, key_parts, shared_key};
use crate::problem::Refusal;
use crate::service::Services;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

pub(super) async fn check(ctx: &mut RequestCtx<'_>) -> Result<(), Refusal> {
    let snapshot = ctx.snapshot;
    let limits = &snapshot.limits;
    let route = ctx.route_name();
    let Some(route_limits) = limits.route(route) else {
        return Ok(());
    };
    let services = ctx.services;
    let tier = limits.tier(ctx.caller.as_ref(), ctx.conn.peer.as_ref());
    let now = SystemTime::now();
    let mut policy = String::new();
    let mut state = String::new();
    let mut refused: Option<(&Arc<str>, Duration)> = None;
    for &i in &route_limits.limits {
        let Some(limit) = limits.defs.get(i) else {
            continue;
        };
        let Some(parts) = key_parts(
            limit,
            ctx.caller.as_ref(),
            ctx.conn.peer.as_ref(),
            ctx.conn.remote.ip(),
            route,
        ) else {
            continue;
        };
        let rate = limit.rate(tier);
        let decision = match decide(services, limits.timeout, limit, rate, &parts, now).await {
            Ok(d) => d,
            Err(e) => {
                let backend = if services.state.is_shared() {
                    services.state.kind()
                } else {
                    "local"
                };
                services
                    .state_errors
                    .failed(&services.limit_metrics, "gcra", backend, &e);
                match route_limits.on_state_error {
                    OnStateError::FailOpen => continue,
                    OnStateError::FailClosed => return Err(Refusal::StateUnavailable),
                }
            }
        };
        add_items(&mut policy, &mut state, limit, rate, &decision);
        if !decision.allowed && refused.is_none() {
            refused = Some((&limit.name, decision.retry_after));
        }
    }
    for (name, value) in [(&RATELIMIT_POLICY, policy), (&RATELIMIT, state)] {
        if let Ok(v) = HeaderValue::try_from(value)
            && !v.is_empty()
        {
            ctx.response_headers.insert(name.clone(), v);
        }
    }
    match refused {
        None => Ok(()),
        Some((limit, retry_after)) => {
            services.limit_metrics.rate_limited(route, limit);
            Err(Refusal::RateLimited {
                limit: limit.clone(),
                retry_after,
            })
        }
    }
}

async fn decide(
    services: &Services,
    timeout: Duration,
    limit: &Limit,
    rate: &Tiered,
    parts: &[Option<Part<'_>>; 5],
    now: SystemTime,
) -> Result<GcraDecision, StateFailure> {
    if services.state.is_shared() {
        let key = shared_key(limit, parts)?;
        let decision = bounded(timeout, services.state.gcra(&key, &rate.gcra, 1, now)).await?;
        services.state_errors.succeeded(services.state.kind());
        Ok(decision)
    } else {
        // The limit's name is part of the key: two limits counting by the same parts keep
        // apart, and a reload that keeps a limit keeps its state.
        Ok(services
            .limiter
            .check(&(&*limit.name, parts), &rate.gcra, 1, now)?)
    }
}

/// One member of each field: `"name";q=100;w=1` and `"name";r=42;t=3`. `t` is when the
/// caller may send again when refused, and when the whole burst is back otherwise.
fn add_items(
    policy: &mut String,
    state: &mut String,
    limit: &Limit,
    rate: &Tiered,
    d: &GcraDecision,
) {
    use std::fmt::Write as _;
    if !policy.is_empty() {
        policy.push_str(", ");
        state.push_str(", ");
    }
    policy.push_str(&rate.policy);
    let t = if d.allowed {
        d.reset_after
    } else {
        d.retry_after
    };
    let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
    let _ = write!(state, "\"{}\";r={};t={secs}", limit.name, d.remaining);
}
