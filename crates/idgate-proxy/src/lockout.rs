//! Lockouts: after `max_failures` failed authentications within `window` from one source
//! address (or for one API key id, or one token client), that source gets 429
//! (`locked-out`) for `cooldown`, before authentication is even tried, so a locked-out
//! guesser cannot keep guessing. Other callers are not affected.
//!
//! Both the failures and the lockout live in the state backend (`Counters` windows), so
//! every replica sharing it sees them: `authfail:BY=SUBJECT` counts failures in a fixed
//! window, `lockout:BY=SUBJECT` is a window that lasts the cool-down. Failures are written
//! only when they happen; a request that authenticates writes nothing, so a successful
//! authentication does not clear the failures counted against its key or address (they
//! expire with their window): clearing them would cost a write per request, and a key's
//! failures are most likely someone else's guesses.
//!
//! What is counted: the address always comes from the connection (canonical, IPv4-mapped
//! as IPv4). The API key id is the public part of a well-formed presented key; the token
//! client is the `client_id` of HTTP Basic client authentication at the token endpoint,
//! only for configured clients (a made-up id locks nothing and costs no state).

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use idgate_config::{LockoutBy, LockoutConfig, OnStateError};
use idgate_store::{CounterKey, Counters as _};

use crate::ctx::RequestCtx;
use crate::limit_state::{StateFailure, bounded, push_part};
use crate::problem::Refusal;

/// What a request's failures are counted against, for one `by`.
fn subject(
    by: LockoutBy,
    ctx: &RequestCtx<'_>,
    headers: &HeaderMap,
    client: Option<&str>,
) -> Option<String> {
    match by {
        LockoutBy::SourceIp => Some(ctx.conn.remote.ip().to_canonical().to_string()),
        LockoutBy::ApiKeyId => idgate_auth::api_key::presented_key(headers)
            .ok()
            .flatten()
            .and_then(idgate_auth::api_key::parse_key_id)
            .map(str::to_owned),
        LockoutBy::TokenClient => client.map(str::to_owned),
    }
}

fn key(prefix: &str, by: LockoutBy, subject: &str) -> Result<CounterKey, StateFailure> {
    let mut key = format!("{prefix}:{}=", by.as_str());
    push_part(&mut key, subject);
    Ok(CounterKey::new(key)?)
}

/// Refuses the request when any of its subjects is locked out. `client` is the token
/// client it authenticates as, at the token endpoint. A backend that does not answer
/// follows `on_error`.
pub(crate) async fn check(
    ctx: &RequestCtx<'_>,
    headers: &HeaderMap,
    client: Option<&str>,
    on_error: OnStateError,
) -> Result<(), Refusal> {
    let Some(cfg) = &ctx.snapshot.limits.lockout else {
        return Ok(());
    };
    let now = SystemTime::now();
    for &by in &cfg.by {
        let Some(subject) = subject(by, ctx, headers, client) else {
            continue;
        };
        match locked_until(ctx, by, &subject, now).await {
            Ok(None) => {}
            Ok(Some(left)) => return Err(Refusal::LockedOut { retry_after: left }),
            Err(e) => {
                state_failed(ctx, "lockout_check", &e);
                if on_error == OnStateError::FailClosed {
                    return Err(Refusal::StateUnavailable);
                }
            }
        }
    }
    Ok(())
}

async fn locked_until(
    ctx: &RequestCtx<'_>,
    by: LockoutBy,
    subject: &str,
    now: SystemTime,
) -> Result<Option<Duration>, StateFailure> {
    let key = key("lockout", by, subject)?;
    let state = &ctx.services.state;
    let window = bounded(ctx.snapshot.limits.timeout, state.get(&key, now)).await?;
    succeeded(ctx);
    Ok(window.map(|w| w.resets_at.duration_since(now).unwrap_or(Duration::ZERO)))
}

/// Counts one failed authentication against each of the request's subjects, and locks out
/// those that reach `max_failures`.
pub(crate) async fn failed(ctx: &RequestCtx<'_>, headers: &HeaderMap, client: Option<&str>) {
    let Some(cfg) = &ctx.snapshot.limits.lockout else {
        return;
    };
    let now = SystemTime::now();
    for &by in &cfg.by {
        let Some(subject) = subject(by, ctx, headers, client) else {
            continue;
        };
        if let Err(e) = count(ctx, cfg, by, &subject, now).await {
            state_failed(ctx, "lockout_record", &e);
        }
    }
}

async fn count(
    ctx: &RequestCtx<'_>,
    cfg: &LockoutConfig,
    by: LockoutBy,
    subject: &str,
    now: SystemTime,
) -> Result<(), StateFailure> {
    let timeout = ctx.snapshot.limits.timeout;
    let state = &ctx.services.state;
    let failures = key("authfail", by, subject)?;
    let n = bounded(timeout, state.increment(&failures, 1, cfg.window, now)).await?;
    succeeded(ctx);
    if n.count < u64::from(cfg.max_failures) {
        return Ok(());
    }
    let lock = key("lockout", by, subject)?;
    let lockout = bounded(timeout, state.increment(&lock, 1, cfg.cooldown, now)).await?;
    // The failures start again from zero once the cool-down is over.
    bounded(timeout, state.reset(&failures)).await?;
    if lockout.count == 1 {
        ctx.services.limit_metrics.locked_out(by.as_str());
        // The address is the connection's, as in every log line; a key id or client id is
        // public. Never a credential.
        tracing::warn!(
            by = by.as_str(),
            subject,
            failures = n.count,
            cooldown_s = cfg.cooldown.as_secs(),
            "locked out after failed authentications"
        );
    }
    Ok(())
}

fn succeeded(ctx: &RequestCtx<'_>) {
    ctx.services
        .state_errors
        .succeeded(ctx.services.state.kind());
}

fn state_failed(ctx: &RequestCtx<'_>, operation: &'static str, e: &StateFailure) {
    let services = ctx.services;
    services
        .state_errors
        .failed(&services.limit_metrics, operation, services.state.kind(), e);
}
