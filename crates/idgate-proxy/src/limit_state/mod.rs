//! Rate limits and lockouts as one configuration compiles them ([`Limits`], held by the
//! snapshot), and what every request shares about them whatever the snapshot
//! ([`LimitMetrics`], [`StateErrors`], in `Services`). The checks themselves are
//! `checks/rate_limit.rs` and `lockout.rs`.
//!
//! Keys in the state backend name what is counted, never a secret: an API key by its
//! public id, a token by its `client_id`, an address in its canonical form (IPv4-mapped
//! IPv6 as IPv4). A part longer than [`MAX_PART`] bytes (a long SPIFFE ID) is replaced by
//! a hash of it, so every key fits the store's `MAX_KEY_LEN`.

mod metrics;

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use idgate_auth::Caller;
use idgate_config::{
    Config, LimitKeyPart, LockoutConfig, OnStateError, RateLimitConfig, StateBackend, TierMatch,
    TierRule,
};
use idgate_store::{CounterKey, GcraLimit, StoreError};
use idgate_tls::SpiffeId;

use crate::conn::source_key;

pub use metrics::{LimitMetrics, StateErrors};

/// The longest part of a state key kept as it is; longer ones are hashed.
pub const MAX_PART: usize = 128;

/// How long a state call may take when `[state]` sets no timeout (memory, redb): a redb
/// write waits for the disk, which should never take this long.
const LOCAL_TIMEOUT: Duration = Duration::from_millis(500);

/// One limit at one rate: the GCRA parameters and the `RateLimit-Policy` item.
#[derive(Debug)]
pub struct Tiered {
    /// The tier this rate is for; `None` for the limit's default rate. Each tier counts in
    /// a state of its own, so that a caller of one tier never spends another's budget
    /// when the key does not tell them apart (one address, one route).
    pub tier: Option<Box<str>>,
    /// `rl:NAME`, or `rl:NAME@TIER` for a tier: the start of the backend key.
    pub key_prefix: Box<str>,
    pub gcra: GcraLimit,
    /// `"name";q=COUNT;w=SECONDS`.
    pub policy: Box<str>,
}

/// One `[[rate_limits]]`, compiled.
#[derive(Debug)]
pub struct Limit {
    pub name: Arc<str>,
    pub key: Box<[LimitKeyPart]>,
    pub default: Tiered,
    pub tiers: Box<[(Box<str>, Tiered)]>,
}

impl Limit {
    /// Whether the limit counts something of the caller's (its identity or its address),
    /// rather than one budget every caller of the route shares.
    pub fn per_caller(&self) -> bool {
        self.key.iter().any(|p| *p != LimitKeyPart::Route)
    }

    /// The rate for a caller in `tier` (the limit's default when it names no such tier),
    /// and with it the state it counts in.
    pub fn rate(&self, tier: Option<&str>) -> &Tiered {
        tier.and_then(|t| self.tiers.iter().find(|(n, _)| **n == *t))
            .map_or(&self.default, |(_, r)| r)
    }
}

/// What one route applies.
#[derive(Debug)]
pub struct RouteLimits {
    /// Indexes into [`Limits::defs`], in the order the route lists them.
    pub limits: Box<[usize]>,
    pub on_state_error: OnStateError,
}

/// The rate limits, tiers and lockout of one configuration.
#[derive(Debug, Default)]
pub struct Limits {
    pub defs: Box<[Limit]>,
    /// By route name; a route absent here has no limit and fails open.
    routes: HashMap<Arc<str>, RouteLimits>,
    tiers: Box<[TierRule]>,
    /// The tier of the tokens the gateway's own endpoint issues, by client.
    client_tiers: HashMap<String, String>,
    own_issuer: Option<String>,
    /// The token endpoint's clients: a lockout counts another client id in a shared counter.
    token_clients: HashSet<String>,
    pub lockout: Option<LockoutConfig>,
    /// The bound on each state call.
    pub timeout: Duration,
}

impl Limits {
    /// The limits of `config`, each state call bounded by the timeout of its `[state]`:
    /// that must be the backend the process opened (a reload passes the running `[state]`,
    /// see `Snapshot::build`).
    pub fn build(config: &Config) -> Result<Self, StoreError> {
        let te = config.token_endpoint.as_ref();
        let mut limits = Self::new(
            &config.rate_limits,
            config
                .routes
                .iter()
                // Rate limits and lockouts fail open unless the route says otherwise.
                .map(|r| {
                    let on_error = r.on_state_error.unwrap_or(OnStateError::FailOpen);
                    (r.name.as_str(), r.rate_limits.as_slice(), on_error)
                }),
            match &config.state {
                StateBackend::Redis(r) => r.timeout,
                _ => LOCAL_TIMEOUT,
            },
        )?;
        limits.tiers = config.tiers.clone().into_boxed_slice();
        limits.client_tiers = te
            .iter()
            .flat_map(|t| &t.clients)
            .filter_map(|c| Some((c.client_id.clone(), c.tier.clone()?)))
            .collect();
        limits.own_issuer = te.map(|t| t.issuer.clone());
        limits.token_clients = te
            .iter()
            .flat_map(|t| &t.clients)
            .map(|c| c.client_id.clone())
            .collect();
        limits.lockout = config.lockout.clone();
        Ok(limits)
    }

    /// The limits `defs` define, applied to routes as `(name, limit names, on_state_error)`
    /// say; no tiers and no lockout.
    pub fn new<'a>(
        defs: &[RateLimitConfig],
        routes: impl IntoIterator<Item = (&'a str, &'a [String], OnStateError)>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let defs = defs.iter().map(compile).collect::<Result<Box<[_]>, _>>()?;
        let routes = routes
            .into_iter()
            .map(|(name, names, on_state_error)| {
                let limits = names
                    .iter()
                    .filter_map(|n| defs.iter().position(|d| *d.name == **n))
                    .collect();
                let route = RouteLimits {
                    limits,
                    on_state_error,
                };
                (Arc::from(name), route)
            })
            .collect();
        Ok(Self {
            defs,
            routes,
            timeout,
            ..Self::default()
        })
    }

    /// These limits with `tiers` as `[[tiers]]` gives them.
    #[cfg(test)]
    pub(crate) fn with_tiers(mut self, tiers: Vec<TierRule>) -> Self {
        self.tiers = tiers.into_boxed_slice();
        self
    }

    /// Whether the token endpoint has a client of id `id`.
    pub fn is_token_client(&self, id: &str) -> bool {
        self.token_clients.contains(id)
    }

    pub fn route(&self, name: &str) -> Option<&RouteLimits> {
        self.routes.get(name)
    }

    /// What a route does when the backend fails; routes without limits fail open.
    pub fn on_state_error(&self, route: &str) -> OnStateError {
        self.route(route)
            .map_or(OnStateError::FailOpen, |r| r.on_state_error)
    }

    /// The caller's tier: its API key's (by name), its token client's (tokens of the
    /// gateway's own endpoint), or its workload's (the first `[[tiers]]` pattern that
    /// matches the connection's SPIFFE ID), in that order.
    pub fn tier<'a>(&'a self, caller: Option<&Caller>, peer: Option<&SpiffeId>) -> Option<&'a str> {
        if let Some(key) = caller.and_then(|c| c.api_key.as_ref())
            && let Some(t) = self
                .tiers
                .iter()
                .find(|t| matches!(&t.matches, TierMatch::ApiKey(n) if *n == key.name))
        {
            return Some(&t.tier);
        }
        if let Some(token) = caller.and_then(|c| c.token.as_ref())
            && self.own_issuer.as_deref() == Some(token.issuer.as_str())
            && let Some(t) = token
                .client_id
                .as_ref()
                .and_then(|c| self.client_tiers.get(c))
        {
            return Some(t);
        }
        let peer = peer?;
        self.tiers.iter().find_map(|t| match &t.matches {
            TierMatch::Spiffe(p) if p.matches(peer) => Some(t.tier.as_str()),
            _ => None,
        })
    }
}

fn compile(c: &RateLimitConfig) -> Result<Limit, StoreError> {
    let tiered = |tier: Option<&str>, r: &idgate_config::Rate| -> Result<Tiered, StoreError> {
        let window = r.period.as_secs_f64().ceil().max(1.0) as u64;
        // The default rate keeps the key it has always had; a tier's follows the limit's
        // name after `@`, which no limit name holds.
        let mut key_prefix = format!("rl:{}", c.name);
        if let Some(tier) = tier {
            key_prefix.push('@');
            push_name(&mut key_prefix, tier);
        }
        Ok(Tiered {
            tier: tier.map(Box::from),
            key_prefix: key_prefix.into(),
            gcra: GcraLimit::per(r.count, r.period, r.burst)?,
            policy: format!("\"{}\";q={};w={window}", c.name, r.count).into(),
        })
    };
    Ok(Limit {
        name: c.name.as_str().into(),
        key: c.key.clone().into_boxed_slice(),
        default: tiered(None, &c.rate)?,
        tiers: c
            .tiers
            .iter()
            .map(|(n, r)| Ok((n.as_str().into(), tiered(Some(n), r)?)))
            .collect::<Result<_, StoreError>>()?,
    })
}

/// Appends a tier's name as it is when it is made of letters, digits, `-` and `_` (so that
/// it cannot reach into the parts after it), or `#` and a hash of it.
fn push_name(key: &mut String, name: &str) {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if name.len() <= MAX_PART && name.bytes().all(plain) {
        key.push_str(name);
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
        key.push('#');
        key.push_str(&idgate_codec::hex::encode(&digest.as_ref()[..16]));
    }
}

/// Why a state call gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum StateFailure {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Runs one state call within `timeout`, whatever bound the backend has of its own: a slow
/// backend must never hold a request longer than this.
pub async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StateFailure> {
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map_err(StateFailure::Store),
        Err(_) => Err(StateFailure::Timeout(timeout)),
    }
}

/// One part of a limit's key, as the request has it: nothing is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part<'a> {
    Text(&'a str),
    Ip(IpAddr),
    /// A token client: its issuer and its id, which is the issuer's to give (two issuers'
    /// clients of one id are two callers).
    Client(&'a str, &'a str),
}

/// The parts of `limit`'s key for one request; `None` when the request lacks one (an
/// `api_key` limit on a request that came with no API key): the limit does not apply.
pub fn key_parts<'a>(
    limit: &Limit,
    caller: Option<&'a Caller>,
    peer: Option<&'a SpiffeId>,
    remote: IpAddr,
    route: &'a str,
) -> Option<[Option<Part<'a>>; 5]> {
    let mut parts = [None; 5];
    for (slot, part) in parts.iter_mut().zip(limit.key.iter()) {
        *slot = Some(match part {
            LimitKeyPart::SpiffeId => Part::Text(peer?.as_str()),
            LimitKeyPart::ApiKey => Part::Text(&caller?.api_key.as_ref()?.id),
            LimitKeyPart::TokenClient => {
                let token = caller?.token.as_ref()?;
                Part::Client(&token.issuer, token.client_id.as_ref()?)
            }
            // An IPv6 caller's whole /64, as for the connection cap: its host may use any
            // address of it.
            LimitKeyPart::SourceIp => Part::Ip(source_key(remote.to_canonical())),
            LimitKeyPart::Route => Part::Text(route),
        });
    }
    Some(parts)
}

/// The backend key of a limit at one rate (see [`Limit::rate`]) for one request's parts:
/// `rl:NAME:part=value:…` for the default rate, `rl:NAME@TIER:part=value:…` for a tier's.
pub fn shared_key(
    limit: &Limit,
    rate: &Tiered,
    parts: &[Option<Part<'_>>; 5],
) -> Result<CounterKey, StoreError> {
    let mut key = String::from(&*rate.key_prefix);
    for (name, part) in limit.key.iter().zip(parts.iter().flatten()) {
        let _ = write!(key, ":{}=", name.as_str());
        match part {
            Part::Ip(ip) => {
                let _ = write!(key, "{ip}");
            }
            Part::Text(t) => push_part(&mut key, t),
            Part::Client(issuer, id) => {
                // The issuer as a digest of fixed length, so that no id can reach into it.
                let digest = ring::digest::digest(&ring::digest::SHA256, issuer.as_bytes());
                key.push_str(&idgate_codec::hex::encode(&digest.as_ref()[..8]));
                key.push('/');
                push_part(&mut key, id);
            }
        }
    }
    CounterKey::new(key)
}

/// Appends `text`, or `#` and a hash of it when it is long or holds a control character.
pub fn push_part(key: &mut String, text: &str) {
    if text.len() <= MAX_PART && !text.chars().any(char::is_control) {
        key.push_str(text);
    } else {
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        key.push('#');
        key.push_str(&idgate_codec::hex::encode(&digest.as_ref()[..16]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(key: Vec<LimitKeyPart>) -> Limit {
        compile(&RateLimitConfig {
            name: "per-ip".to_owned(),
            key,
            rate: idgate_config::Rate {
                count: 100,
                period: Duration::from_millis(1500),
                burst: 10,
            },
            tiers: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn keys_are_canonical_and_bounded() {
        let l = limit(vec![LimitKeyPart::SourceIp, LimitKeyPart::Route]);
        assert_eq!(&*l.default.policy, "\"per-ip\";q=100;w=2");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let parts = key_parts(&l, None, None, mapped, "decision").unwrap();
        assert_eq!(
            shared_key(&l, &l.default, &parts).unwrap().as_str(),
            "rl:per-ip:source_ip=192.0.2.7:route=decision"
        );
        let long = "r".repeat(MAX_PART + 1);
        let parts = key_parts(&l, None, None, mapped, &long).unwrap();
        let key = shared_key(&l, &l.default, &parts).unwrap();
        assert!(key.as_str().len() < 100, "{key}");
        assert!(!key.as_str().contains(&long));
    }

    #[test]
    fn each_tier_counts_under_a_key_of_its_own_and_the_default_rate_keeps_its_key() {
        let rate = |count| idgate_config::Rate {
            count,
            period: Duration::from_secs(1),
            burst: count,
        };
        let l = compile(&RateLimitConfig {
            name: "per-ip".to_owned(),
            key: vec![LimitKeyPart::SourceIp],
            rate: rate(10),
            tiers: [
                ("gold".to_owned(), rate(1000)),
                ("gold:source_ip=192.0.2.8".to_owned(), rate(100)),
            ]
            .into(),
        })
        .unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let parts = key_parts(&l, None, None, ip, "r").unwrap();
        let key = |tier| shared_key(&l, l.rate(tier), &parts).unwrap();
        assert_eq!(key(None).as_str(), "rl:per-ip:source_ip=192.0.2.7");
        assert_eq!(
            key(Some("silver")),
            key(None),
            "a tier the limit does not name"
        );
        assert_eq!(
            key(Some("gold")).as_str(),
            "rl:per-ip@gold:source_ip=192.0.2.7"
        );
        // A tier's name that could pass for a key's parts is hashed.
        let odd = key(Some("gold:source_ip=192.0.2.8"));
        assert!(odd.as_str().starts_with("rl:per-ip@#"), "{odd}");
        assert!(odd.as_str().ends_with(":source_ip=192.0.2.7"), "{odd}");
    }

    #[test]
    fn a_caller_s_tier_is_its_key_s_then_its_client_s_then_its_workload_s() {
        use idgate_auth::{ApiKeyIdentity, TokenIdentity};
        use idgate_tls::SpiffeIdPattern;
        let limits = Limits {
            tiers: vec![
                TierRule {
                    matches: TierMatch::ApiKey("batch".to_owned()),
                    tier: "bronze".to_owned(),
                },
                TierRule {
                    matches: TierMatch::Spiffe(
                        SpiffeIdPattern::new("spiffe://example.org/ns/kyc/*").unwrap(),
                    ),
                    tier: "gold".to_owned(),
                },
            ]
            .into_boxed_slice(),
            client_tiers: [("reports".to_owned(), "silver".to_owned())].into(),
            own_issuer: Some("https://idgate.test".to_owned()),
            ..Limits::default()
        };
        let kyc = SpiffeId::new("spiffe://example.org/ns/kyc/sa/a").unwrap();
        let web = SpiffeId::new("spiffe://example.org/ns/web/sa/b").unwrap();
        let key = |name: &str| {
            Arc::new(ApiKeyIdentity {
                id: "k".to_owned(),
                name: name.to_owned(),
                scopes: Vec::new(),
                workload: None,
            })
        };
        let token = |issuer: &str| TokenIdentity {
            issuer: issuer.to_owned(),
            subject: "reports".to_owned(),
            client_id: Some("reports".to_owned()),
            scopes: Vec::new(),
            workload: None,
        };
        let with_key = Caller {
            api_key: Some(key("batch")),
            token: Some(token("https://idgate.test")),
            ..Caller::default()
        };
        assert_eq!(limits.tier(Some(&with_key), Some(&kyc)), Some("bronze"));
        let with_token = Caller {
            api_key: Some(key("other")),
            token: Some(token("https://idgate.test")),
            ..Caller::default()
        };
        assert_eq!(limits.tier(Some(&with_token), Some(&kyc)), Some("silver"));
        // Another issuer's client of the same name is not the gateway's client.
        let outside = Caller {
            token: Some(token("https://idp.partner.test")),
            ..Caller::default()
        };
        assert_eq!(limits.tier(Some(&outside), Some(&kyc)), Some("gold"));
        assert_eq!(limits.tier(Some(&outside), Some(&web)), None);
        assert_eq!(limits.tier(None, None), None);
    }

    #[test]
    fn two_issuers_clients_of_one_id_and_one_hosts_ipv6_addresses_are_keyed_as_what_they_are() {
        use idgate_auth::TokenIdentity;
        let l = limit(vec![LimitKeyPart::TokenClient]);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let caller = |issuer: &str| Caller {
            token: Some(TokenIdentity {
                issuer: issuer.to_owned(),
                subject: "onboarding".to_owned(),
                client_id: Some("onboarding".to_owned()),
                scopes: Vec::new(),
                workload: None,
            }),
            ..Caller::default()
        };
        let (own, partner) = (
            caller("https://idgate.test"),
            caller("https://idp.partner.test"),
        );
        let own_parts = key_parts(&l, Some(&own), None, ip, "r").unwrap();
        let partner_parts = key_parts(&l, Some(&partner), None, ip, "r").unwrap();
        assert_ne!(own_parts, partner_parts, "the lease and local limiter keys");
        let (a, b) = (
            shared_key(&l, &l.default, &own_parts).unwrap(),
            shared_key(&l, &l.default, &partner_parts).unwrap(),
        );
        assert_ne!(a, b, "the shared key");
        assert!(a.as_str().ends_with("/onboarding"), "{a}");

        // One host's /64 is one source, as for the connection cap; another /64 is another.
        let l = limit(vec![LimitKeyPart::SourceIp]);
        let key_of = |addr: &str| {
            let parts = key_parts(&l, None, None, addr.parse().unwrap(), "r").unwrap();
            shared_key(&l, &l.default, &parts).unwrap()
        };
        assert_eq!(key_of("2001:db8:1:2::1"), key_of("2001:db8:1:2:ffff::9"));
        assert_ne!(key_of("2001:db8:1:2::1"), key_of("2001:db8:1:3::1"));
        assert_eq!(
            key_of("2001:db8:1:2::1").as_str(),
            "rl:per-ip:source_ip=2001:db8:1:2::"
        );
    }

    #[test]
    fn a_limit_needing_what_the_request_lacks_does_not_apply() {
        let l = limit(vec![LimitKeyPart::ApiKey]);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(key_parts(&l, Some(&Caller::default()), None, ip, "r").is_none());
    }
}
