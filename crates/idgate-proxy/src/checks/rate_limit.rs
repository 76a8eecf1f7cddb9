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
//! of draft-ietf-httpapi-ratelimit-headers-10, one list member per limit that applied and
//! counts per caller (a limit keyed by the route alone is shared: its refusal still comes
//! with `Retry-After`, but what is left of it is nobody's business but the operator's).
//! When several limits apply and one refuses, the ones before it have still counted the
//! request (as Envoy's and Kong's do): the check of each is atomic, not of all together.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use http::header::{HeaderName, HeaderValue};
use idgate_auth::Caller;
use idgate_config::OnStateError;
use idgate_store::{
    CounterKey, Counters, GcraDecision, GcraLeases, GcraTake, LeaseKey, Leased, LocalLimiter,
};
use idgate_tls::SpiffeId;

use crate::ctx::RequestCtx;
use crate::limit_state::{
    Limit, LimitMetrics, Limits, RouteLimits, StateErrors, StateFailure, Tiered, bounded,
    key_parts, shared_key,
};
use crate::problem::Refusal;

static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

pub(super) async fn check(ctx: &mut RequestCtx<'_>) -> Result<(), Refusal> {
    let snapshot = ctx.snapshot;
    let services = ctx.services;
    let route = ctx.route_name();
    let Some(route_limits) = snapshot.limits.route(route) else {
        return Ok(());
    };
    // A JWT-SVID names the workload behind the connection's peer (a proxy that ended its
    // TLS): its limits and tier are that workload's.
    let svid = ctx
        .caller
        .as_ref()
        .and_then(|c| c.jwt_svid.as_ref())
        .map(|s| &s.spiffe_id);
    let who = Who {
        caller: ctx.caller.as_ref(),
        peer: svid.or(ctx.conn.peer.as_ref()),
        remote: ctx.conn.remote.ip(),
        route,
    };
    let store = if services.state.is_shared() {
        Store::Shared(&services.state, services.state.kind(), &services.leases)
    } else {
        Store::Local(&services.limiter)
    };
    let report = Report {
        errors: &services.state_errors,
        metrics: &services.limit_metrics,
    };
    let verdict = decide_all(&snapshot.limits, route_limits, &who, store, report).await;
    let verdict = verdict?;
    for (name, value) in [
        (&RATELIMIT_POLICY, verdict.policy),
        (&RATELIMIT, verdict.state),
    ] {
        // The buffer becomes the value as it is, without a copy.
        if let Ok(v) = HeaderValue::from_maybe_shared(value.freeze())
            && !v.is_empty()
        {
            ctx.response_headers.insert(name.clone(), v);
        }
    }
    match verdict.refused {
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

/// Who a request is, as far as its limits' keys go.
struct Who<'a> {
    caller: Option<&'a Caller>,
    peer: Option<&'a SpiffeId>,
    remote: IpAddr,
    route: &'a str,
}

/// Where the limits' state is.
enum Store<'a, C> {
    /// A backend every replica shares, named for the log, and this replica's leases of it.
    Shared(&'a C, &'static str, &'a GcraLeases),
    Local(&'a LocalLimiter),
}

/// A check the shared backend is asked for: the request's own (its limit decided by the
/// answer), or a renewal of a lease running low (the limit decided already).
struct Ask {
    /// Its limit's place in the request's decisions.
    index: usize,
    lease: LeaseKey,
    key: CounterKey,
    take: GcraTake,
    renew: bool,
}

/// The asks of one request, abandoned when dropped before their answers were kept.
struct Asks<'l> {
    leases: &'l GcraLeases,
    now: SystemTime,
    list: Vec<Ask>,
}

impl Drop for Asks<'_> {
    fn drop(&mut self) {
        for ask in &self.list {
            self.leases.abandon(ask.lease, ask.take, self.now);
        }
    }
}

/// Where state failures are counted and logged.
struct Report<'a> {
    errors: &'a StateErrors,
    metrics: &'a LimitMetrics,
}

/// Bytes kept for one limit's item in each field: a name of up to 24 bytes with its
/// numbers.
const ITEM_ROOM: usize = 64;

/// The headers' values and, when limits refused, the one whose wait is the longest.
#[derive(Debug)]
struct Verdict<'l> {
    policy: BytesMut,
    state: BytesMut,
    refused: Option<(&'l Arc<str>, Duration)>,
}

/// The bound on one request's GCRA checks as a whole. The backend bounds each round trip
/// by the state timeout itself (in a Redis Cluster, each node's on its own), so that the
/// answers of the nodes that did answer come back; this only stops a backend that does not.
fn backstop(timeout: Duration) -> Duration {
    timeout + (timeout / 2).max(Duration::from_millis(10))
}

/// Every limit of the route: in one round trip to a shared backend, or in turn in the
/// in-process limiter.
async fn decide_all<'l, C: Counters>(
    limits: &'l Limits,
    route_limits: &RouteLimits,
    who: &Who<'_>,
    store: Store<'_, C>,
    report: Report<'_>,
) -> Result<Verdict<'l>, Refusal> {
    let tier = limits.tier(who.caller, who.peer);
    // Room for every limit's items up front: the fields are written piece by piece, and
    // growing them as they go took a dozen allocations per request.
    let room = route_limits.limits.len() * ITEM_ROOM;
    let mut verdict = Verdict {
        policy: BytesMut::with_capacity(room),
        state: BytesMut::with_capacity(room),
        refused: None,
    };
    // The limits that apply to this caller, with the rate of its tier.
    let applicable = route_limits.limits.iter().filter_map(|&i| {
        let limit = limits.defs.get(i)?;
        let parts = key_parts(limit, who.caller, who.peer, who.remote, who.route)?;
        Some((limit, limit.rate(tier), parts))
    });
    let state_failed = |e: &dyn std::fmt::Display, backend| {
        report.errors.failed(report.metrics, "gcra", backend, e);
        match route_limits.on_state_error {
            OnStateError::FailOpen => Ok(()),
            OnStateError::FailClosed => Err(Refusal::StateUnavailable {
                reason: format!("rate limits: {e}"),
            }),
        }
    };
    match store {
        Store::Shared(state, backend, leases) => {
            // The replicas' common time, kept in the shared state: the system clock.
            let now = SystemTime::now();
            // What this replica can decide from its leases (see `GcraLeases`) it does; the
            // other checks, and the renewals of leases running low, go in one call: one
            // round trip (one pipeline) to Redis, bounded as a whole by the state timeout.
            let mut decisions: Vec<(&Limit, &Tiered, Option<GcraDecision>)> = Vec::new();
            // Asks not answered when this returns early or is dropped (the caller went
            // away) are abandoned, so that another request may ask for those leases.
            let mut asks = Asks {
                leases,
                now,
                list: Vec::new(),
            };
            for (limit, rate, parts) in applicable {
                let lease = leases.key(&(&*limit.name, rate.tier.as_deref(), &parts), &rate.gcra);
                let (decided, take) = match leases.decide(lease, &rate.gcra, now, limits.timeout) {
                    Leased::Decided(d) => (Some(d), None),
                    Leased::Renew(d, take) => (Some(d), Some(take)),
                    Leased::Ask(take) => (None, Some(take)),
                };
                if let Some(take) = take {
                    match shared_key(limit, rate, &parts) {
                        Ok(key) => asks.list.push(Ask {
                            index: decisions.len(),
                            lease,
                            key,
                            take,
                            renew: decided.is_some(),
                        }),
                        Err(e) => {
                            leases.abandon(lease, take, now);
                            // A key that cannot be stored is the state failing for this
                            // limit.
                            if decided.is_none() {
                                state_failed(&e, backend)?;
                            }
                        }
                    }
                }
                decisions.push((limit, rate, decided));
            }
            if !asks.list.is_empty() {
                let checks: Vec<_> = asks
                    .list
                    .iter()
                    .map(|a| (&a.key, &decisions[a.index].1.gcra, a.take))
                    .collect();
                let answers = bounded(backstop(limits.timeout), async {
                    Ok(state.gcra_many(&checks, now).await)
                })
                .await;
                // One answer per check, or the backend did not do what was asked.
                let answers = match answers {
                    Ok(a) if a.len() != checks.len() => {
                        Err(format!("{} answers for {} checks", a.len(), checks.len()))
                    }
                    Ok(a) => Ok(a),
                    Err(e) => Err(e.to_string()),
                };
                // The checks the backend answered are applied, each limit on its own; the
                // ones it did not answer stay in `asks`.
                let mut failure = None;
                match answers {
                    Ok(answers) => {
                        let asked = std::mem::take(&mut asks.list);
                        for (ask, answer) in asked.into_iter().zip(answers) {
                            let answer = match answer {
                                Ok(answer) => answer,
                                Err(e) => {
                                    failure.get_or_insert_with(|| e.to_string());
                                    asks.list.push(ask);
                                    continue;
                                }
                            };
                            let (_, rate, decision) = &mut decisions[ask.index];
                            if ask.renew {
                                leases.refill(ask.lease, &rate.gcra, &answer, now);
                            } else {
                                *decision = Some(
                                    leases.record(ask.lease, &rate.gcra, ask.take, &answer, now),
                                );
                            }
                        }
                        if failure.is_none() {
                            report.errors.succeeded(backend);
                        }
                    }
                    Err(e) => failure = Some(e),
                }
                if let Some(e) = failure {
                    let only_renewals = asks.list.iter().all(|a| a.renew);
                    drop(asks);
                    if only_renewals {
                        // Every limit was decided, from its lease or by the backend: the
                        // request goes on, and the failure is counted.
                        report.errors.failed(report.metrics, "gcra", backend, &e);
                    } else {
                        // Those decided still answer; the others follow the mode.
                        state_failed(&e, backend)?;
                    }
                }
            }
            for (limit, rate, decision) in decisions {
                if let Some(decision) = decision {
                    verdict.add(limit, rate, &decision);
                }
            }
        }
        // The limit's name is part of the key: two limits counting by the same parts keep
        // apart, and a reload that keeps a limit keeps its state. So is the tier: each
        // tier of a key that does not tell callers apart (an address) has its own state.
        Store::Local(limiter) => {
            // Its own clock, which the system clock's steps do not move.
            let now = LocalLimiter::clock();
            for (limit, rate, parts) in applicable {
                let key = (&*limit.name, rate.tier.as_deref(), &parts);
                match limiter.check(&key, &rate.gcra, 1, now) {
                    Ok(decision) => verdict.add(limit, rate, &decision),
                    Err(e) => state_failed(&StateFailure::from(e), "local")?,
                }
            }
        }
    }
    Ok(verdict)
}

impl<'l> Verdict<'l> {
    /// One limit's decision: its header items, and the refusal if its wait is the longest
    /// so far (the first of equal ones): a caller that waits less is refused again.
    fn add(&mut self, limit: &'l Limit, rate: &Tiered, decision: &GcraDecision) {
        // A limit every caller shares (counted by route alone) stays out of the fields: its
        // `r` would tell each caller how many requests the others sent.
        if limit.per_caller() {
            add_items(&mut self.policy, &mut self.state, limit, rate, decision);
        }
        if !decision.allowed
            && self
                .refused
                .is_none_or(|(_, longest)| decision.retry_after > longest)
        {
            self.refused = Some((&limit.name, decision.retry_after));
        }
    }
}

/// One member of each field: `"name";q=100;w=1` and `"name";r=42;t=3`. `t` is when the
/// caller may send again when refused, and when the whole burst is back otherwise.
fn add_items(
    policy: &mut BytesMut,
    state: &mut BytesMut,
    limit: &Limit,
    rate: &Tiered,
    d: &GcraDecision,
) {
    if !policy.is_empty() {
        policy.extend_from_slice(b", ");
        state.extend_from_slice(b", ");
    }
    policy.extend_from_slice(rate.policy.as_bytes());
    let t = if d.allowed {
        d.reset_after
    } else {
        d.retry_after
    };
    let secs = t.as_secs() + u64::from(t.subsec_nanos() > 0);
    // Pieces and `itoa`, not `write!`: `write!` cost 900 instructions a limit and request.
    let mut n = itoa::Buffer::new();
    state.extend_from_slice(b"\"");
    state.extend_from_slice(limit.name.as_bytes());
    state.extend_from_slice(b"\";r=");
    state.extend_from_slice(n.format(d.remaining).as_bytes());
    state.extend_from_slice(b";t=");
    state.extend_from_slice(n.format(secs).as_bytes());
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use idgate_config::{LimitKeyPart, Rate, RateLimitConfig};
    use idgate_store::{CounterKey, GcraLimit, GcraTake, MemoryStore, StoreError, WindowCount};
    use prometheus_client::registry::Registry;

    use super::*;

    /// A backend that fails every call, after `delay` (a slow one) or at once, noting how
    /// much each GCRA check asked for.
    #[derive(Default)]
    struct Failing {
        delay: Duration,
        asked: std::sync::Mutex<Vec<u32>>,
    }

    impl Failing {
        fn fail<T>(&self) -> impl Future<Output = Result<T, StoreError>> + Send + use<T> {
            let delay = self.delay;
            async move {
                tokio::time::sleep(delay).await;
                Err(StoreError::Interrupted("the backend went away".to_owned()))
            }
        }
    }

    impl Counters for Failing {
        fn increment(
            &self,
            _: &CounterKey,
            _: u64,
            _: Duration,
            _: SystemTime,
        ) -> impl Future<Output = Result<WindowCount, StoreError>> + Send {
            self.fail()
        }
        fn get(
            &self,
            _: &CounterKey,
            _: SystemTime,
        ) -> impl Future<Output = Result<Option<WindowCount>, StoreError>> + Send {
            self.fail()
        }
        fn reset(&self, _: &CounterKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
            self.fail()
        }
        fn gcra(
            &self,
            _: &CounterKey,
            _: &GcraLimit,
            take: GcraTake,
            _: SystemTime,
        ) -> impl Future<Output = Result<GcraDecision, StoreError>> + Send {
            if let Ok(mut asked) = self.asked.lock() {
                asked.push(take.most());
            }
            self.fail()
        }
        fn sweep(&self, _: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send {
            self.fail()
        }
    }

    fn def(name: &str, key: LimitKeyPart, count: u32, burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            name: name.to_owned(),
            key: vec![key],
            rate: Rate {
                count,
                period: Duration::from_secs(1),
                burst,
            },
            tiers: Default::default(),
        }
    }

    fn limits(mode: OnStateError) -> Limits {
        let defs = [
            def("per-ip", LimitKeyPart::SourceIp, 10, 3),
            def("per-route", LimitKeyPart::Route, 100, 100),
        ];
        let names = ["per-ip".to_owned(), "per-route".to_owned()];
        Limits::new(&defs, [("r", &names[..], mode)], Duration::from_millis(50)).unwrap()
    }

    fn who() -> Who<'static> {
        Who {
            caller: None,
            peer: None,
            remote: "::ffff:192.0.2.7".parse().unwrap(),
            route: "r",
        }
    }

    struct Reporting {
        registry: Registry,
        metrics: LimitMetrics,
        errors: StateErrors,
    }

    impl Reporting {
        fn new() -> Self {
            let mut registry = Registry::default();
            let metrics = LimitMetrics::register(&mut registry);
            Self {
                registry,
                metrics,
                errors: StateErrors::default(),
            }
        }
        fn report(&self) -> Report<'_> {
            Report {
                errors: &self.errors,
                metrics: &self.metrics,
            }
        }
        fn state_errors(&self) -> String {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
            text.lines()
                .filter(|l| l.starts_with("state_errors_total"))
                .collect::<Vec<_>>()
                .join("\n")
        }
    }

    async fn run<C: Counters>(
        limits: &Limits,
        store: Store<'_, C>,
        r: &Reporting,
    ) -> Result<(String, String, Option<(String, Duration)>), Refusal> {
        let route = limits.route("r").unwrap();
        let v = decide_all(limits, route, &who(), store, r.report()).await?;
        let text = |b: BytesMut| String::from_utf8(b.to_vec()).unwrap();
        Ok((
            text(v.policy),
            text(v.state),
            v.refused.map(|(n, d)| (n.to_string(), d)),
        ))
    }

    #[tokio::test]
    async fn a_shared_backend_decides_each_limit_and_the_headers_say_so() {
        let limits = limits(OnStateError::FailClosed);
        let store = MemoryStore::new();
        let r = Reporting::new();
        for remaining in [2, 1, 0] {
            let (policy, state, refused) = run(
                &limits,
                Store::Shared(&store, "memory", &GcraLeases::default()),
                &r,
            )
            .await
            .unwrap();
            // The route's budget is decided too, but every caller shares it: it is not
            // shown.
            assert_eq!(policy, "\"per-ip\";q=10;w=1");
            assert_eq!(state, format!("\"per-ip\";r={remaining};t=1"));
            assert!(refused.is_none());
        }
        let (_, state, refused) = run(
            &limits,
            Store::Shared(&store, "memory", &GcraLeases::default()),
            &r,
        )
        .await
        .unwrap();
        let (name, retry) = refused.unwrap();
        assert_eq!(name, "per-ip");
        assert!(retry > Duration::ZERO && retry <= Duration::from_millis(100));
        assert_eq!(state, "\"per-ip\";r=0;t=1");
        assert_eq!(r.state_errors(), "");
    }

    #[tokio::test]
    async fn fail_open_goes_on_without_the_limits_and_counts_the_failures() {
        let limits = limits(OnStateError::FailOpen);
        let r = Reporting::new();
        let failing = Failing::default();
        let (policy, state, refused) = run(
            &limits,
            Store::Shared(&failing, "redis", &GcraLeases::default()),
            &r,
        )
        .await
        .unwrap();
        assert_eq!((policy.as_str(), state.as_str(), refused), ("", "", None));
        // Both limits go to the backend in one call, which failed once.
        assert_eq!(r.state_errors(), "state_errors_total{operation=\"gcra\"} 1");
    }

    #[tokio::test]
    async fn fail_closed_refuses_with_503() {
        let limits = limits(OnStateError::FailClosed);
        let r = Reporting::new();
        let failing = Failing::default();
        let refusal = run(
            &limits,
            Store::Shared(&failing, "redis", &GcraLeases::default()),
            &r,
        )
        .await
        .unwrap_err();
        assert!(matches!(refusal, Refusal::StateUnavailable { .. }));
        assert_eq!(
            refusal.kind().status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn a_slow_backend_is_given_up_on_at_the_timeout() {
        let limits = limits(OnStateError::FailClosed);
        let r = Reporting::new();
        let slow = Failing {
            delay: Duration::from_secs(30),
            ..Failing::default()
        };
        let started = std::time::Instant::now();
        let refusal = run(
            &limits,
            Store::Shared(&slow, "redis", &GcraLeases::default()),
            &r,
        )
        .await;
        assert!(matches!(refusal, Err(Refusal::StateUnavailable { .. })));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_full_local_limiter_follows_the_route_s_mode() {
        let limiter = LocalLimiter::with_capacity(1);
        let r = Reporting::new();
        // Fill the limiter with live keys of another limit until this request's shard is
        // full: a key it cannot place is then a state error.
        let other = GcraLimit::per(1, Duration::from_secs(60), 1).unwrap();
        for k in 0..10_000u32 {
            let _ = limiter.check(&k, &other, 1, SystemTime::now());
        }
        let open = limits(OnStateError::FailOpen);
        let (_, _, refused) = run(&open, Store::<MemoryStore>::Local(&limiter), &r)
            .await
            .unwrap();
        assert!(refused.is_none());
        let closed = limits(OnStateError::FailClosed);
        let refusal = run(&closed, Store::<MemoryStore>::Local(&limiter), &r).await;
        assert!(matches!(refusal, Err(Refusal::StateUnavailable { .. })));
        assert!(r.state_errors().contains("operation=\"gcra\""));
    }

    /// A backend of which part answers (one Cluster node of two down): the checks of keys
    /// with `down` in them fail, the others are decided in memory.
    struct PartlyDown {
        up: MemoryStore,
        down: &'static str,
    }

    impl Counters for PartlyDown {
        fn increment(
            &self,
            key: &CounterKey,
            by: u64,
            window: Duration,
            now: SystemTime,
        ) -> impl Future<Output = Result<WindowCount, StoreError>> + Send {
            self.up.increment(key, by, window, now)
        }
        fn get(
            &self,
            key: &CounterKey,
            now: SystemTime,
        ) -> impl Future<Output = Result<Option<WindowCount>, StoreError>> + Send {
            Counters::get(&self.up, key, now)
        }
        fn reset(&self, key: &CounterKey) -> impl Future<Output = Result<bool, StoreError>> + Send {
            self.up.reset(key)
        }
        async fn gcra(
            &self,
            key: &CounterKey,
            limit: &GcraLimit,
            take: GcraTake,
            now: SystemTime,
        ) -> Result<GcraDecision, StoreError> {
            if key.as_str().contains(self.down) {
                return Err(StoreError::Unavailable {
                    reason: "no answer within 50 ms".to_owned(),
                });
            }
            self.up.gcra(key, limit, take, now).await
        }
        fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send {
            Counters::sweep(&self.up, now)
        }
    }

    #[tokio::test]
    async fn the_limits_a_partly_down_backend_answered_are_enforced_and_the_others_follow_the_mode()
    {
        let backend = PartlyDown {
            up: MemoryStore::new(),
            down: "per-route",
        };
        let r = Reporting::new();
        let open = limits(OnStateError::FailOpen);
        // per-ip (3 at once) answers; per-route does not, and fails open.
        for _ in 0..3 {
            let leases = GcraLeases::default();
            let (policy, _, refused) = run(&open, Store::Shared(&backend, "redis", &leases), &r)
                .await
                .unwrap();
            assert_eq!(policy, "\"per-ip\";q=10;w=1");
            assert!(refused.is_none());
        }
        let leases = GcraLeases::default();
        let (_, state, refused) = run(&open, Store::Shared(&backend, "redis", &leases), &r)
            .await
            .unwrap();
        assert_eq!(
            refused.map(|(n, _)| n),
            Some("per-ip".to_owned()),
            "{state}"
        );
        assert_eq!(r.state_errors(), "state_errors_total{operation=\"gcra\"} 4");
        // Failing closed, the limit without an answer refuses.
        let closed = limits(OnStateError::FailClosed);
        let leases = GcraLeases::default();
        let refusal = run(&closed, Store::Shared(&backend, "redis", &leases), &r).await;
        assert!(matches!(refusal, Err(Refusal::StateUnavailable { .. })));
    }

    /// `who`'s request against route `r` of `limits`: the name of the limit that refused
    /// it, and its wait.
    async fn refusal_of<C: Counters>(
        limits: &Limits,
        store: Store<'_, C>,
        who: &Who<'_>,
    ) -> Option<(String, Duration)> {
        let route = limits.route("r").unwrap();
        let v = decide_all(limits, route, who, store, Reporting::new().report())
            .await
            .unwrap();
        v.refused.map(|(n, d)| (n.to_string(), d))
    }

    #[tokio::test]
    async fn a_lower_tier_caller_within_its_rate_does_not_refuse_a_higher_tier_caller_sharing_the_key()
     {
        use std::collections::BTreeMap;

        use idgate_config::{TierMatch, TierRule};
        use idgate_tls::SpiffeIdPattern;
        // 30 a minute by address; the gold tier 1000/s with a burst of 200.
        let def = RateLimitConfig {
            name: "per-ip".to_owned(),
            key: vec![LimitKeyPart::SourceIp],
            rate: Rate {
                count: 30,
                period: Duration::from_secs(60),
                burst: 30,
            },
            tiers: BTreeMap::from([(
                "gold".to_owned(),
                Rate {
                    count: 1000,
                    period: Duration::from_secs(1),
                    burst: 200,
                },
            )]),
        };
        let names = ["per-ip".to_owned()];
        let limits = Limits::new(
            &[def],
            [("r", &names[..], OnStateError::FailClosed)],
            Duration::from_millis(50),
        )
        .unwrap()
        .with_tiers(vec![TierRule {
            matches: TierMatch::Spiffe(
                SpiffeIdPattern::new("spiffe://example.org/ns/kyc/*").unwrap(),
            ),
            tier: "gold".to_owned(),
        }]);
        let gold = SpiffeId::new("spiffe://example.org/ns/kyc/sa/onboarding").unwrap();
        let plain = SpiffeId::new("spiffe://example.org/ns/web/sa/frontend").unwrap();
        // Two workloads behind one address (one NAT): the key does not tell them apart.
        let (gold, plain) = (
            Who {
                peer: Some(&gold),
                ..who()
            },
            Who {
                peer: Some(&plain),
                ..who()
            },
        );
        let limiter = LocalLimiter::with_capacity(100);
        let memory = MemoryStore::new();
        let leases = GcraLeases::default();
        for shared in [false, true] {
            let store = || {
                if shared {
                    Store::Shared(&memory, "memory", &leases)
                } else {
                    Store::Local(&limiter)
                }
            };
            // One request of the default tier, well within its 30 a minute...
            assert_eq!(refusal_of(&limits, store(), &plain).await, None);
            // ...leaves the gold caller its whole burst,
            for n in 0..200 {
                let refused = refusal_of(&limits, store(), &gold).await;
                assert_eq!(refused, None, "gold request {n}, shared: {shared}");
            }
            // and the gold caller's burst leaves the default tier its own.
            assert_eq!(refusal_of(&limits, store(), &plain).await, None);
        }
    }

    #[tokio::test]
    async fn retry_after_is_the_longest_wait_of_the_limits_that_refused() {
        let per_minute = RateLimitConfig {
            rate: Rate {
                count: 1,
                period: Duration::from_secs(60),
                burst: 1,
            },
            ..def("per-ip-minute", LimitKeyPart::SourceIp, 1, 1)
        };
        let defs = [def("per-ip", LimitKeyPart::SourceIp, 10, 1), per_minute];
        let names = ["per-ip".to_owned(), "per-ip-minute".to_owned()];
        let limits = Limits::new(
            &defs,
            [("r", &names[..], OnStateError::FailClosed)],
            Duration::from_millis(50),
        )
        .unwrap();
        let limiter = LocalLimiter::with_capacity(100);
        let memory = MemoryStore::new();
        let leases = GcraLeases::default();
        for shared in [false, true] {
            let store = || {
                if shared {
                    Store::Shared(&memory, "memory", &leases)
                } else {
                    Store::Local(&limiter)
                }
            };
            assert_eq!(refusal_of(&limits, store(), &who()).await, None);
            // Both refuse the second: the first for a tenth of a second, the other for a
            // minute. Who waits a tenth of a second is refused again.
            let (name, retry) = refusal_of(&limits, store(), &who()).await.unwrap();
            assert_eq!(name, "per-ip-minute", "shared: {shared}");
            assert!(
                retry >= Duration::from_secs(59),
                "{retry:?}, shared: {shared}"
            );
        }
    }

    /// A request that goes away while it asks for a key's lease (its caller closed the
    /// connection) clears its mark: the next request asks for the lease, rather than being
    /// decided one at a time behind a mark nobody would clear for the state timeout.
    #[tokio::test]
    async fn a_request_dropped_while_asking_for_a_lease_lets_the_next_one_ask() {
        // 100,000 a second: leases of 1,000. A state timeout of 5 s.
        let defs = [def("high", LimitKeyPart::Route, 100_000, 100_000)];
        let names = ["high".to_owned()];
        let limits = Limits::new(
            &defs,
            [("r", &names[..], OnStateError::FailOpen)],
            Duration::from_secs(5),
        )
        .unwrap();
        let route = limits.route("r").unwrap();
        let backend = Failing {
            delay: Duration::from_secs(30),
            ..Failing::default()
        };
        let leases = GcraLeases::default();
        let r = Reporting::new();
        for _ in 0..2 {
            let store = Store::Shared(&backend, "redis", &leases);
            let gone = tokio::time::timeout(
                Duration::from_millis(20),
                decide_all(&limits, route, &who(), store, r.report()),
            )
            .await;
            assert!(gone.is_err(), "the caller went away first");
        }
        assert_eq!(*backend.asked.lock().unwrap(), [1_000, 1_000]);
    }
}
