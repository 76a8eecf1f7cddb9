//! Traffic limits: `[[rate_limits]]` (named GCRA limits with tiers), `[[tiers]]` (which
//! callers are in which tier), `[lockout]` (failed authentications before a cool-down), and
//! what a route says about them (`rate_limits`, `on_state_error`).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use idgate_tls::SpiffeIdPattern;
use serde::Deserialize;

use crate::context::Ctx;
use crate::{parse_duration, raw};

/// What a rate limit's key is made of; several parts make one key per combination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKeyPart {
    /// The connection's SPIFFE ID (its client certificate).
    SpiffeId,
    /// The public id of the API key the caller authenticated with.
    ApiKey,
    /// The `client_id` of the token the caller authenticated with.
    TokenClient,
    /// The client's address (IPv4-mapped IPv6 as IPv4).
    SourceIp,
    /// The route: one budget shared by every caller of the route.
    Route,
}

impl LimitKeyPart {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SpiffeId => "spiffe_id",
            Self::ApiKey => "api_key",
            Self::TokenClient => "token_client",
            Self::SourceIp => "source_ip",
            Self::Route => "route",
        }
    }
}

/// `count` requests per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

/// One `[[rate_limits]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    pub name: String,
    pub key: Vec<LimitKeyPart>,
    /// For callers in no tier this limit names.
    pub rate: Rate,
    /// Per tier name.
    pub tiers: BTreeMap<String, Rate>,
}

/// Which callers a `[[tiers]]` entry puts in its tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TierMatch {
    /// Workloads whose SPIFFE ID matches.
    Spiffe(SpiffeIdPattern),
    /// The API key of this name (as `idgate keys create --name` gave it).
    ApiKey(String),
}

/// One `[[tiers]]`: the first entry that matches a caller gives its tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierRule {
    pub matches: TierMatch,
    pub tier: String,
}

/// What a route's state checks do when the state backend cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStateError {
    /// The check is skipped and the request goes on (a rate limit: unlimited).
    FailOpen,
    /// The request is refused with 503.
    FailClosed,
}

/// What failed authentications are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockoutBy {
    SourceIp,
    ApiKeyId,
    TokenClient,
}

impl LockoutBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SourceIp => "source_ip",
            Self::ApiKeyId => "api_key_id",
            Self::TokenClient => "token_client",
        }
    }
}

/// `[lockout]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockoutConfig {
    /// Failures within `window` that start a lockout.
    pub max_failures: u32,
    pub window: Duration,
    /// How long a lockout lasts.
    pub cooldown: Duration,
    pub by: Vec<LockoutBy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    name: String,
    key: Vec<String>,
    #[serde(default)]
    rate: Option<String>,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    tiers: BTreeMap<String, RawTier>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTier {
    #[serde(default)]
    rate: Option<String>,
    #[serde(default)]
    count: Option<u32>,
    #[serde(default)]
    period: Option<String>,
    #[serde(default)]
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTierRule {
    #[serde(default)]
    spiffe: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
    tier: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLockout {
    #[serde(default)]
    max_failures: Option<u32>,
    #[serde(default)]
    window: Option<String>,
    #[serde(default)]
    cooldown: Option<String>,
    #[serde(default)]
    by: Option<Vec<String>>,
}

/// The top-level sections this module owns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Limits {
    pub(crate) rate_limits: Vec<RateLimitConfig>,
    pub(crate) tiers: Vec<TierRule>,
    pub(crate) lockout: Option<LockoutConfig>,
    /// Every limit's name, the invalid ones' too: their own errors say what is wrong, so a
    /// route naming one adds nothing.
    pub(crate) declared: Vec<String>,
}

/// Reads `[[rate_limits]]`, `[[tiers]]` and `[lockout]`.
pub(crate) fn sections(cx: &mut Ctx<'_>, table: &mut raw::Table) -> Limits {
    let mut names = HashSet::new();
    let mut declared = Vec::new();
    let rate_limits = crate::array::<RawRateLimit>(cx, table, "rate_limits")
        .into_iter()
        .filter_map(|(i, r)| {
            declared.push(r.name.clone());
            let key = format!("rate_limits[{i}]");
            if r.name.is_empty() || r.name.len() > 64 || !r.name.bytes().all(is_name_byte) {
                cx.err(
                    format!("{key}.name"),
                    "must be 1 to 64 letters, digits, '-' or '_' (it is sent in the RateLimit headers)",
                );
            } else if !names.insert(r.name.clone()) {
                cx.err(
                    format!("{key}.name"),
                    format!("rate limit \"{}\" is defined twice", r.name),
                );
            }
            rate_limit(cx, &key, r)
        })
        .collect();
    let tiers = crate::array::<RawTierRule>(cx, table, "tiers")
        .into_iter()
        .filter_map(|(i, t)| tier_rule(cx, &format!("tiers[{i}]"), t))
        .collect();
    let lockout = table
        .remove("lockout")
        .and_then(|v| cx.section::<RawLockout>("lockout", v))
        .map(|l| lockout(cx, l));
    Limits {
        rate_limits,
        tiers,
        lockout,
        declared,
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn rate_limit(cx: &mut Ctx<'_>, key: &str, r: RawRateLimit) -> Option<RateLimitConfig> {
    let before = cx.errors.len();
    let mut parts = Vec::new();
    if r.key.is_empty() {
        cx.err(
            format!("{key}.key"),
            "list what the limit counts by: spiffe_id, api_key, token_client, source_ip, route",
        );
    }
    for (k, part) in r.key.iter().enumerate() {
        let p = match part.as_str() {
            "spiffe_id" => LimitKeyPart::SpiffeId,
            "api_key" => LimitKeyPart::ApiKey,
            "token_client" => LimitKeyPart::TokenClient,
            "source_ip" => LimitKeyPart::SourceIp,
            "route" => LimitKeyPart::Route,
            other => {
                cx.err(
                    format!("{key}.key[{k}]"),
                    format!("\"{other}\" is not one of spiffe_id, api_key, token_client, source_ip, route"),
                );
                continue;
            }
        };
        if parts.contains(&p) {
            cx.err(format!("{key}.key[{k}]"), "is listed twice");
        }
        parts.push(p);
    }
    let rate = rate_of(cx, key, (r.rate, r.count, r.period, r.burst));
    // One budget every caller shares cannot also be a budget per tier: each tier would
    // count apart, and the route would admit the sum of their rates.
    if !r.tiers.is_empty() && !parts.is_empty() && parts.iter().all(|p| *p == LimitKeyPart::Route) {
        cx.err(
            format!("{key}.tiers"),
            "a limit keyed by route alone is one budget every caller of the route shares; tiers need a key that tells callers apart (spiffe_id, api_key, token_client, source_ip), or a limit of their own",
        );
    }
    let mut tiers = BTreeMap::new();
    for (name, t) in r.tiers {
        let tkey = format!("{key}.tiers.{name}");
        if let Some(rate) = rate_of(cx, &tkey, (t.rate, t.count, t.period, t.burst)) {
            tiers.insert(name, rate);
        }
    }
    (cx.errors.len() == before).then_some(RateLimitConfig {
        name: r.name,
        key: parts,
        rate: rate?,
        tiers,
    })
}

type RawRate = (Option<String>, Option<u32>, Option<String>, Option<u32>);

/// `rate = "100/s"` (or `"/m"`, `"/h"`, `"/10s"`), or `count` and `period`; `burst`
/// defaults to the count (a whole period's worth at once).
fn rate_of(cx: &mut Ctx<'_>, key: &str, (rate, count, period, burst): RawRate) -> Option<Rate> {
    let (count, period) = match (rate, count, period) {
        (Some(r), None, None) => match parse_rate(&r) {
            Some(cp) => cp,
            None => {
                cx.err(
                    format!("{key}.rate"),
                    format!("\"{r}\" is not a rate: write a count and a period, like \"100/s\", \"600/m\" or \"5/10s\""),
                );
                return None;
            }
        },
        (None, Some(c), Some(p)) => match parse_duration(&p) {
            Ok(d) if !d.is_zero() => (c, d),
            Ok(_) => {
                cx.err(format!("{key}.period"), "must be more than zero");
                return None;
            }
            Err(e) => {
                cx.err(format!("{key}.period"), e.to_string());
                return None;
            }
        },
        _ => {
            cx.err(
                format!("{key}.rate"),
                "give either rate (\"100/s\") or count and period",
            );
            return None;
        }
    };
    let burst = burst.unwrap_or(count);
    if count == 0 || burst == 0 {
        cx.err(key.to_owned(), "the count and the burst must be at least 1");
        return None;
    }
    if period / count < Duration::from_micros(1) {
        cx.err(
            key.to_owned(),
            "more than a million requests a second cannot be limited",
        );
        return None;
    }
    Some(Rate {
        count,
        period,
        burst,
    })
}

fn parse_rate(s: &str) -> Option<(u32, Duration)> {
    let (count, period) = s.split_once('/')?;
    let count = count.trim().parse().ok()?;
    let period = match period.trim() {
        "s" => Duration::from_secs(1),
        "m" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        d => parse_duration(d).ok().filter(|d| !d.is_zero())?,
    };
    Some((count, period))
}

fn tier_rule(cx: &mut Ctx<'_>, key: &str, t: RawTierRule) -> Option<TierRule> {
    if t.tier.is_empty() {
        cx.err(format!("{key}.tier"), "must not be empty");
        return None;
    }
    let matches = match (t.spiffe, t.api_key) {
        (Some(s), None) => match SpiffeIdPattern::new(&s) {
            Ok(p) => TierMatch::Spiffe(p),
            Err(e) => {
                cx.err(format!("{key}.spiffe"), e.to_string());
                return None;
            }
        },
        (None, Some(name)) if !name.is_empty() => TierMatch::ApiKey(name),
        _ => {
            cx.err(
                key.to_owned(),
                "give one of spiffe (a SPIFFE ID or pattern) or api_key (a key's name)",
            );
            return None;
        }
    };
    Some(TierRule {
        matches,
        tier: t.tier,
    })
}

fn lockout(cx: &mut Ctx<'_>, l: RawLockout) -> LockoutConfig {
    let max_failures = match l.max_failures {
        Some(0) => {
            cx.err("lockout.max_failures", "must be at least 1");
            1
        }
        Some(n) => n,
        None => 10,
    };
    let window = cx.duration("lockout.window", l.window, Duration::from_secs(300));
    let cooldown = cx.duration("lockout.cooldown", l.cooldown, Duration::from_secs(900));
    let mut by = Vec::new();
    for (i, b) in
        l.by.unwrap_or_else(|| vec!["source_ip".to_owned()])
            .iter()
            .enumerate()
    {
        match b.as_str() {
            "source_ip" => by.push(LockoutBy::SourceIp),
            "api_key_id" => by.push(LockoutBy::ApiKeyId),
            "token_client" => by.push(LockoutBy::TokenClient),
            other => cx.err(
                format!("lockout.by[{i}]"),
                format!("\"{other}\" is not one of source_ip, api_key_id, token_client"),
            ),
        }
    }
    if by.is_empty() {
        cx.err(
            "lockout.by",
            "list at least one of source_ip, api_key_id, token_client",
        );
    }
    LockoutConfig {
        max_failures,
        window,
        cooldown,
        by,
    }
}

/// A route's `rate_limits` (each must be one of `defined`) and `on_state_error`.
pub(crate) fn route(
    cx: &mut Ctx<'_>,
    key: &str,
    (rate_limits, on_state_error): (Option<Vec<String>>, Option<String>),
    defined: &[String],
) -> (Vec<String>, Option<OnStateError>) {
    // Absent: each state check keeps its own default (rate limits open, ownership closed).
    let on_state_error = match on_state_error.as_deref() {
        None => None,
        Some("fail_open") => Some(OnStateError::FailOpen),
        Some("fail_closed") => Some(OnStateError::FailClosed),
        Some(other) => {
            cx.err(
                format!("{key}.on_state_error"),
                format!("\"{other}\" is not fail_open or fail_closed"),
            );
            None
        }
    };
    let rate_limits = rate_limits.unwrap_or_default();
    for (l, name) in rate_limits.iter().enumerate() {
        if !defined.contains(name) {
            cx.err(
                format!("{key}.rate_limits[{l}]"),
                format!("no [[rate_limits]] is named \"{name}\""),
            );
        } else if rate_limits[..l].contains(name) {
            cx.err(format!("{key}.rate_limits[{l}]"), "is listed twice");
        }
    }
    (rate_limits, on_state_error)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::test_support::{BASE, added_problems};

    /// The errors of `BASE` with `extra`, as `key: reason`, leaving out those of `BASE`.
    fn errors(extra: &str) -> Vec<String> {
        added_problems(Path::new("t.toml"), BASE, extra)
    }

    const ROUTE: &str = r#"
[[routes]]
name = "r"
methods = ["GET"]
path = "/x"
upstream = "p"
allow = ["spiffe://example.org/a"]
"#;

    #[test]
    fn a_valid_set_of_limits_tiers_and_lockout_passes() {
        let text = format!(
            r#"{ROUTE}rate_limits = ["per-workload", "per-ip"]
on_state_error = "fail_closed"
[[rate_limits]]
name = "per-workload"
key = ["spiffe_id", "route"]
rate = "100/s"
burst = 20
tiers = {{ gold = {{ rate = "1000/s", burst = 200 }} }}
[[rate_limits]]
name = "per-ip"
key = ["source_ip"]
count = 30
period = "1m"
[[tiers]]
spiffe = "spiffe://example.org/ns/kyc/*"
tier = "gold"
[[tiers]]
api_key = "batch"
tier = "gold"
[lockout]
max_failures = 5
by = ["source_ip", "api_key_id", "token_client"]
"#
        );
        assert_eq!(errors(&text), Vec::<String>::new());
    }

    #[test]
    fn tiers_on_a_limit_every_caller_of_the_route_shares_are_refused() {
        // Each tier counts apart: a route cap of 50/s with a gold tier at 500/s would let
        // 550/s through to the provider.
        let text = format!(
            r#"{ROUTE}rate_limits = ["provider-quota"]
[[rate_limits]]
name = "provider-quota"
key = ["route"]
rate = "50/s"
tiers = {{ gold = {{ rate = "500/s" }} }}
"#
        );
        let errors = errors(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("rate_limits[0].tiers: a limit keyed by route alone"),
            "{errors:?}"
        );
    }

    #[test]
    fn mistakes_are_named_by_their_key() {
        let text = format!(
            r#"{ROUTE}rate_limits = ["nope", "a", "a"]
on_state_error = "sometimes"
[[rate_limits]]
name = "a"
key = ["spiffe_id", "caller"]
rate = "100"
[[rate_limits]]
name = "a b"
key = []
count = 0
period = "1s"
[[tiers]]
tier = "gold"
[lockout]
max_failures = 0
by = ["everyone"]
"#
        );
        let errors = errors(&text);
        for key in [
            "routes[0].rate_limits[0]: no [[rate_limits]] is named \"nope\"",
            "routes[0].rate_limits[2]: is listed twice",
            "lockout.by: list at least one",
            "routes[0].on_state_error",
            "rate_limits[0].key[1]",
            "rate_limits[0].rate: \"100\" is not a rate",
            "rate_limits[1].name",
            "rate_limits[1].key",
            "rate_limits[1]: the count and the burst must be at least 1",
            "tiers[0]: give one of spiffe",
            "lockout.max_failures",
            "lockout.by[0]",
        ] {
            assert!(
                errors.iter().any(|e| e.starts_with(key)),
                "{key}: {errors:?}"
            );
        }
        // The limit "a" is there, if broken: the route naming it is not blamed for it.
        assert!(
            !errors
                .iter()
                .any(|e| e.starts_with("routes[0].rate_limits[1]")),
            "{errors:?}"
        );
    }

    #[test]
    fn rates_are_written_as_count_and_period() {
        assert_eq!(parse_rate("100/s"), Some((100, Duration::from_secs(1))));
        assert_eq!(parse_rate("600/m"), Some((600, Duration::from_secs(60))));
        assert_eq!(parse_rate("5/10s"), Some((5, Duration::from_secs(10))));
        assert_eq!(parse_rate("5/0s"), None);
        assert_eq!(parse_rate("x/s"), None);
        assert_eq!(parse_rate("100"), None);
    }
}
