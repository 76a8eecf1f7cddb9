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
//! client is the `client_id` a request to the token endpoint claims with a client secret
//! (HTTP Basic or the form), which the endpoint asks about through [`ClientGate`] before it
//! compares the secret.
//!
//! Made-up ids: an id the API key table does not hold, or a client id the configuration
//! does not name, is counted in one of [`UNKNOWN_BUCKETS`] shared counters, picked by a
//! keyed hash of the id (its key made at random when the process starts), rather than under
//! a key of its own: a caller making up ids could otherwise add state-store keys without
//! end. A real id keeps its own counter. Either way the request makes the same calls to the
//! store; what is known is decided by an in-memory lookup, and the hash is computed for
//! every id, so the timing tells no more than that lookup does.
//!
//! Guesses sent at once: each reads the shared lockout before the others' failures are
//! written, so each process also counts its failures itself as they are judged
//! ([`LocalFailures`], see there), and refuses a subject it holds whatever its credential.

use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use idgate_auth::api_key::ApiKeyVerifier;
use idgate_config::{LockoutBy, LockoutConfig, OnStateError};
use idgate_store::{CounterKey, Counters as _};

use crate::conn::source_key;
use crate::ctx::RequestCtx;
use crate::limit_state::{Limits, StateFailure, bounded, push_part};
use crate::problem::Refusal;
use crate::service::Services;
use crate::token_endpoint::ClientGate;

mod local;
pub(crate) use local::LocalFailures;

/// What the lockout state is reached through: what every request shares, and the
/// configuration's settings.
#[derive(Clone, Copy)]
struct Env<'a> {
    services: &'a Services,
    limits: &'a Limits,
    /// The API keys that exist, as far as lockouts go.
    api_keys: Option<&'a ApiKeyVerifier>,
}

impl<'a> Env<'a> {
    fn of(ctx: &RequestCtx<'a>) -> Self {
        Self {
            services: ctx.services,
            limits: &ctx.snapshot.limits,
            api_keys: ctx.snapshot.auth.api_keys.as_ref(),
        }
    }

    fn succeeded(self) {
        self.services
            .state_errors
            .succeeded(self.services.state.kind());
    }

    fn failed(self, operation: &'static str, e: &StateFailure) {
        let s = self.services;
        s.state_errors
            .failed(&s.limit_metrics, operation, s.state.kind(), e);
    }
}

/// What a request's failures are counted against, for one `by`; a token client only when
/// the request names one.
fn subject(
    by: LockoutBy,
    ctx: &RequestCtx<'_>,
    env: Env<'_>,
    headers: &HeaderMap,
    client: Option<&str>,
) -> Option<String> {
    match by {
        LockoutBy::SourceIp => Some(source_subject(ctx.conn.remote.ip())),
        LockoutBy::ApiKeyId => idgate_auth::api_key::presented_key(headers)
            .ok()
            .flatten()
            .and_then(idgate_auth::api_key::parse_key_id)
            .map(|id| api_key_subject(env, id)),
        LockoutBy::TokenClient => client.map(|id| client_subject(env, id)),
    }
}

/// How many counters the ids that do not exist share, for each `by`.
pub(crate) const UNKNOWN_BUCKETS: u32 = 4096;

/// The key of the hash that spreads unknown ids over their counters: made at random, so
/// that nobody can pick ids that share one.
static BUCKET_KEY: LazyLock<ring::hmac::Key> = LazyLock::new(|| {
    let random = ring::rand::SystemRandom::new();
    ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &random).unwrap_or_else(|_| {
        // No system randomness (it is there on every supported system): a key from the
        // clock and the process, which still keeps the counters bounded.
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let seed = format!("{}.{}", now.as_nanos(), std::process::id());
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_bytes())
    })
});

/// An id's lockout subject: the id itself when it exists (`known`), otherwise the shared
/// counter its keyed hash picks. The hash is computed either way.
fn id_subject(id: &str, known: bool) -> String {
    let tag = ring::hmac::sign(&BUCKET_KEY, id.as_bytes());
    let mut first = [0u8; 4];
    first.copy_from_slice(&tag.as_ref()[..4]);
    let bucket = u32::from_be_bytes(first) % UNKNOWN_BUCKETS;
    if known {
        id.to_owned()
    } else {
        format!("#unknown-{bucket}")
    }
}

fn api_key_subject(env: Env<'_>, id: &str) -> String {
    id_subject(id, env.api_keys.is_some_and(|v| v.knows(id)))
}

fn client_subject(env: Env<'_>, id: &str) -> String {
    id_subject(id, env.limits.is_token_client(id))
}

/// A source address as a lockout subject: an IPv4 address, or an IPv6 caller's whole /64
/// (its host may use any address of it, and would otherwise get a fresh count with each).
fn source_subject(ip: std::net::IpAddr) -> String {
    source_key(ip.to_canonical()).to_string()
}

fn key(prefix: &str, by: LockoutBy, subject: &str) -> Result<CounterKey, StateFailure> {
    let mut key = format!("{prefix}:{}=", by.as_str());
    push_part(&mut key, subject);
    Ok(CounterKey::new(key)?)
}

/// Refuses the request when its address or its API key id is locked out (token clients
/// are asked about by the token endpoint, through [`TokenClients`]). A backend that does
/// not answer follows `on_error`.
pub(crate) async fn check(
    ctx: &RequestCtx<'_>,
    headers: &HeaderMap,
    on_error: OnStateError,
) -> Result<(), Refusal> {
    let Some(cfg) = &ctx.snapshot.limits.lockout else {
        return Ok(());
    };
    let env = Env::of(ctx);
    let now = SystemTime::now();
    for &by in &cfg.by {
        let Some(subject) = subject(by, ctx, env, headers, None) else {
            continue;
        };
        match locked_until(env, by, &subject, now).await {
            Ok(None) => {}
            Ok(Some(left)) => {
                env.services.limit_metrics.lockout_refused(by.as_str());
                return Err(Refusal::LockedOut { retry_after: left });
            }
            Err(e) => {
                env.failed("lockout_check", &e);
                if on_error == OnStateError::FailClosed {
                    return Err(Refusal::StateUnavailable {
                        reason: format!("lockouts: {e}"),
                    });
                }
            }
        }
    }
    Ok(())
}

async fn locked_until(
    env: Env<'_>,
    by: LockoutBy,
    subject: &str,
    now: SystemTime,
) -> Result<Option<Duration>, StateFailure> {
    let key = key("lockout", by, subject)?;
    let state = &env.services.state;
    let window = bounded(env.limits.timeout, state.get(&key, now)).await?;
    env.succeeded();
    Ok(window.map(|w| w.resets_at.duration_since(now).unwrap_or(Duration::ZERO)))
}

/// A wrong credential's lockout subjects, made once as it is judged ([`judged`]) and
/// counted in the shared backend with them ([`failed`]).
#[derive(Default)]
pub(crate) struct Subjects(Vec<(LockoutBy, String)>);

/// Once the request's credential is judged (`failed`: it was wrong), synchronously, before
/// anything is awaited: the failure is counted in this process's own count at once, and a
/// subject this process holds is refused with `429` whatever the credential was, so that
/// guesses sent at once get no more answers than `max_failures` (see [`LocalFailures`]).
/// `client`: the token client the request claimed. A wrong credential's subjects come
/// back, for [`failed`].
pub(crate) fn judged(
    ctx: &RequestCtx<'_>,
    headers: &HeaderMap,
    client: Option<&str>,
    failed: bool,
) -> Result<Subjects, Refusal> {
    let Some(cfg) = &ctx.snapshot.limits.lockout else {
        return Ok(Subjects::default());
    };
    let local = &ctx.services.local_failures;
    if !failed && local.holds_none() {
        return Ok(Subjects::default());
    }
    let env = Env::of(ctx);
    let now = Instant::now();
    let mut held: Option<Duration> = None;
    let mut subjects = Vec::with_capacity(cfg.by.len());
    for &by in &cfg.by {
        let Some(subject) = subject(by, ctx, env, headers, client) else {
            continue;
        };
        if let Some(left) = local.settle(local.key(by, &subject), failed, cfg, now) {
            env.services.limit_metrics.lockout_refused(by.as_str());
            held = held.max(Some(left));
        }
        if failed {
            subjects.push((by, subject));
        }
    }
    match held {
        Some(retry_after) => Err(Refusal::LockedOut { retry_after }),
        None => Ok(Subjects(subjects)),
    }
}

/// Counts one failed authentication against each of its `subjects` in the shared backend,
/// and locks out those that reach `max_failures`.
pub(crate) async fn failed(ctx: &RequestCtx<'_>, subjects: Subjects) {
    let Some(cfg) = &ctx.snapshot.limits.lockout else {
        return;
    };
    let env = Env::of(ctx);
    let now = SystemTime::now();
    for (by, subject) in subjects.0 {
        if let Err(e) = count(env, cfg, by, &subject, now).await {
            env.failed("lockout_record", &e);
        }
    }
}

async fn count(
    env: Env<'_>,
    cfg: &LockoutConfig,
    by: LockoutBy,
    subject: &str,
    now: SystemTime,
) -> Result<(), StateFailure> {
    let timeout = env.limits.timeout;
    let state = &env.services.state;
    let failures = key("authfail", by, subject)?;
    let n = bounded(timeout, state.increment(&failures, 1, cfg.window, now)).await?;
    env.succeeded();
    if n.count < u64::from(cfg.max_failures) {
        return Ok(());
    }
    let lock = key("lockout", by, subject)?;
    let lockout = bounded(timeout, state.increment(&lock, 1, cfg.cooldown, now)).await?;
    // The failures start again from zero once the cool-down is over.
    bounded(timeout, state.reset(&failures)).await?;
    if lockout.count == 1 {
        env.services.limit_metrics.locked_out(by.as_str());
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

/// The token endpoint's question, before it compares a client secret: is the client the
/// request claims locked out? Remembers the claim, so that a failure is counted against it.
/// Any claimed id is looked up, not only configured ones (those share counters, as in the
/// module's notes), so that the time the answer takes does not tell which clients exist;
/// the token endpoint fails open.
pub(crate) struct TokenClients<'a> {
    env: Env<'a>,
    claimed: Mutex<Option<String>>,
}

impl<'a> TokenClients<'a> {
    pub(crate) fn new(ctx: &RequestCtx<'a>) -> Self {
        Self {
            env: Env::of(ctx),
            claimed: Mutex::new(None),
        }
    }

    /// The client id the request claimed, once the endpoint asked about it.
    pub(crate) fn claimed(&self) -> Option<String> {
        self.claimed.lock().ok()?.clone()
    }
}

impl ClientGate for TokenClients<'_> {
    fn locked_out<'b>(
        &'b self,
        client_id: &'b str,
    ) -> Pin<Box<dyn Future<Output = Option<Duration>> + Send + 'b>> {
        Box::pin(async move {
            let cfg = self.env.limits.lockout.as_ref()?;
            if !cfg.by.contains(&LockoutBy::TokenClient) {
                return None;
            }
            if let Ok(mut claimed) = self.claimed.lock() {
                *claimed = Some(client_id.to_owned());
            }
            let now = SystemTime::now();
            let subject = client_subject(self.env, client_id);
            match locked_until(self.env, LockoutBy::TokenClient, &subject, now).await {
                Ok(left) => {
                    if left.is_some() {
                        let metrics = &self.env.services.limit_metrics;
                        metrics.lockout_refused(LockoutBy::TokenClient.as_str());
                    }
                    left
                }
                Err(e) => {
                    self.env.failed("lockout_check", &e);
                    None
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_is_counted_as_its_64_and_an_ipv4_mapped_address_as_ipv4() {
        let subject = |a: &str| source_subject(a.parse().unwrap());
        assert_eq!(subject("2001:db8:1:2::1"), subject("2001:db8:1:2:abcd::7"));
        assert_ne!(subject("2001:db8:1:2::1"), subject("2001:db8:1:3::1"));
        assert_eq!(subject("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(subject("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn a_real_id_keeps_its_own_subject_and_made_up_ones_share_a_bounded_few() {
        assert_eq!(id_subject("aaaabbbbccccdddd", true), "aaaabbbbccccdddd");
        let one = id_subject("aaaabbbbccccdddd", false);
        assert!(one.starts_with("#unknown-"), "{one}");
        assert_eq!(
            one,
            id_subject("aaaabbbbccccdddd", false),
            "the same id, the same counter"
        );
        let subjects: std::collections::HashSet<String> = (0..50_000)
            .map(|i| id_subject(&format!("made-up-{i}"), false))
            .collect();
        assert!(
            subjects.len() <= UNKNOWN_BUCKETS as usize,
            "{}",
            subjects.len()
        );
        // Spread over them, not piled on a few.
        assert!(
            subjects.len() > UNKNOWN_BUCKETS as usize * 9 / 10,
            "{}",
            subjects.len()
        );
    }
}
