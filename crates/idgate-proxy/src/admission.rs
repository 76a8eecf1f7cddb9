//! The checks a request meets before anyone is authenticated, cheap and decided on what it
//! arrived with: how many header fields it has and their size (`listener.max_header_count`,
//! `max_header_bytes`), its client address and user agent against `[network]` (the address
//! again for each request, so that a reloaded rule reaches open connections) and the
//! route's rules, and a body length announced past the route's `max_body_bytes` (refused
//! before any of it is read or sent).

use http::header::{CONTENT_LENGTH, USER_AGENT};
use http::request::Parts;
use idgate_config::{CidrRules, UserAgentPattern};

use crate::ctx::RequestCtx;
use crate::problem::Refusal;
use crate::routes::Route;

/// Before routing: the global address rules, the header count and the global user-agent
/// rules. The address was admitted when its connection was; it is asked again here so that
/// a `[network]` rule added by a reload reaches connections already open (kept alive, or
/// an HTTP/2 connection's next stream).
pub(crate) fn on_arrival(ctx: &RequestCtx<'_>, req: &Parts) -> Result<(), Refusal> {
    let cidrs = &ctx.snapshot.network.cidrs;
    if !cidrs.is_empty() && !cidrs.permits(ctx.conn.remote.ip()) {
        return Err(Refusal::ForbiddenNetwork {
            reason: "client address not allowed",
        });
    }
    let limit = ctx.snapshot.request_limits.max_header_count;
    // HTTP/1.1 heads over the limit never get here (hyper answers 431); HTTP/2 ones do.
    if req.headers.len() > limit {
        return Err(Refusal::TooManyHeaders { limit });
    }
    // hyper's HTTP/1.1 buffer cannot be under 8 KiB, so a smaller limit is checked here;
    // sizes are counted as HTTP/2 does (RFC 9113 §6.5.2: name, value and 32 per field).
    let limit = ctx.snapshot.request_limits.max_header_bytes;
    let size: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 32)
        .sum();
    if size > limit {
        return Err(Refusal::HeadersTooLarge { limit });
    }
    user_agent(&ctx.snapshot.network.deny_user_agents, req, "network")
}

/// After routing: the route's network rules, then its body limit on the announced length.
pub(crate) fn on_route(ctx: &RequestCtx<'_>, route: &Route, req: &Parts) -> Result<(), Refusal> {
    if let Some(rules) = &route.network {
        address(&rules.cidrs, ctx)?;
        user_agent(&rules.deny_user_agents, req, "route")?;
    }
    if announced_length(req).is_some_and(|n| n > route.max_body_bytes) {
        return Err(Refusal::BodyTooLarge);
    }
    Ok(())
}

fn address(rules: &CidrRules, ctx: &RequestCtx<'_>) -> Result<(), Refusal> {
    if rules.permits(ctx.conn.remote.ip()) {
        Ok(())
    } else {
        Err(Refusal::ForbiddenNetwork {
            reason: "client address not allowed on this route",
        })
    }
}

fn user_agent(
    patterns: &[UserAgentPattern],
    req: &Parts,
    level: &'static str,
) -> Result<(), Refusal> {
    if patterns.is_empty() {
        return Ok(());
    }
    let denied = req
        .headers
        .get_all(USER_AGENT)
        .iter()
        .any(|ua| patterns.iter().any(|p| p.matches(ua.as_bytes())));
    if denied {
        return Err(Refusal::ForbiddenNetwork {
            reason: match level {
                "route" => "user agent denied on this route",
                _ => "user agent denied",
            },
        });
    }
    Ok(())
}

/// The body length the request announces, if it announces one hyper accepted.
fn announced_length(req: &Parts) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
