//! What the request path hands the detectors: per-route counters (requests, failures,
//! upstream errors, a coarse upstream-latency histogram, a few failing callers), counters of
//! TLS handshake and authentication failures, and the circuit breakers' events.
//!
//! The request path only adds to atomics it finds through a lock-free map lookup; the ticker
//! drains them once a second ([`Feed::drain`]). Nothing is allocated per request: a route's
//! counters are made the first time it is seen, and a failing caller's label is kept only
//! while fewer than `max_callers` distinct ones failed in this second (on a lock the request
//! path only tries, never waits for). A caller not kept, or not looked at because the lock
//! was busy, marks the second's callers as incomplete, so that an incident never presents
//! its named callers as all of them when they may not be.
//!
//! Counters are kept per (route, upstream) pair, at most [`MAX_PAIRS`] of them. Each
//! configuration put into use ([`Feed::install`]) drops the pairs it no longer sends to, so
//! reloads that rename routes or upstreams do not fill the map; the critical routes' pairs
//! are made at once and never share. Past the bound, the routes seen last share one set of
//! counters per upstream (named `*`): the upstream's rules still see every request sent to
//! it, only the route's name is lost.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

/// Upper bounds of the upstream-latency buckets, in milliseconds; one more bucket holds the
/// rest.
pub const LATENCY_BOUNDS_MS: [u64; 12] = [
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000,
];
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// The most (route, upstream) pairs with counters of their own, besides the critical
/// routes'; the requests of further pairs are counted under the route `*`, per upstream.
pub const MAX_PAIRS: usize = 512;

/// The most upstreams with shared counters of their own (past it, under no upstream): a
/// bound that only requests still in flight on an older configuration can reach.
const MAX_OVERFLOW_UPSTREAMS: usize = MAX_PAIRS;

/// The name the counters shared past [`MAX_PAIRS`] are reported under.
pub const OVERFLOW_ROUTE: &str = "*";

/// One request, as the detectors see it.
#[derive(Clone, Copy)]
pub struct RequestEvent<'a> {
    pub route: &'a str,
    /// The upstream the route sends to, if any.
    pub upstream: Option<&'a str>,
    /// The request was allowed but the gateway could not carry it out (upstream down,
    /// credential failure), or the upstream answered 5xx.
    pub failed: bool,
    /// The upstream failed it: no answer, or a 5xx answer.
    pub upstream_error: bool,
    /// From sending upstream to the response head, when an answer came.
    pub upstream_latency: Option<Duration>,
    /// The caller's principal label, when the request failed and one is known.
    pub caller: Option<&'a dyn fmt::Display>,
    /// `upstream` failed the request and a fallback answered the caller in its place: the
    /// route's failover upstream, or the caller's cached answer.
    pub fallback: bool,
}

impl fmt::Debug for RequestEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestEvent")
            .field("route", &self.route)
            .field("upstream", &self.upstream)
            .field("failed", &self.failed)
            .field("upstream_error", &self.upstream_error)
            .field("upstream_latency", &self.upstream_latency)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

/// A circuit breaker changed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakerEvent {
    /// It opened: it refuses every request until `until` on the monotonic clock (its
    /// `open_duration` later; `None`: past what the clock counts), then lets a probe through
    /// at the next request.
    Opened {
        upstream: String,
        until: Option<std::time::Instant>,
    },
    /// It let a probe through (its open time over, a request came): every other request is
    /// refused until the probe ends, at the latest at `until` (the probe's request timeout).
    /// A probe that fails opens it again, one that succeeds closes it; one that ended saying
    /// nothing of the upstream lets the next request through as another probe, announced
    /// again within a second.
    HalfOpen {
        upstream: String,
        until: Option<std::time::Instant>,
    },
    /// Its probes succeeded.
    Closed { upstream: String },
    /// A reload took it away while it was open or half-open (its upstream, or the
    /// upstream's breaker section, removed): it refuses nothing any more.
    Dropped { upstream: String },
}

/// One route's counters for the current second.
#[derive(Debug)]
struct RouteCounters {
    upstream: Option<Arc<str>>,
    requests: AtomicU64,
    failed: AtomicU64,
    upstream_requests: AtomicU64,
    upstream_errors: AtomicU64,
    /// Failed requests the gateway answered itself: no upstream answer to relay.
    refused: AtomicU64,
    /// Requests the upstream failed that a fallback answered.
    fallbacks: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
    /// Failing callers this second: a label's hash and the label.
    callers: Mutex<Vec<(u64, Box<str>)>>,
    /// A failing caller this second was not noted: more failed than `callers` names.
    callers_dropped: AtomicBool,
}

impl RouteCounters {
    fn new(upstream: Option<&str>) -> Self {
        Self {
            upstream: upstream.map(Arc::from),
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            upstream_requests: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            callers: Mutex::new(Vec::new()),
            callers_dropped: AtomicBool::new(false),
        }
    }
}

/// One route's counts over one second (or a window, summed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSample {
    pub upstream: Option<Arc<str>>,
    pub requests: u64,
    pub failed: u64,
    pub upstream_requests: u64,
    pub upstream_errors: u64,
    pub refused: u64,
    /// Requests the upstream failed that a fallback answered.
    pub fallbacks: u64,
    pub latency: [u64; LATENCY_BUCKETS],
    pub callers: Vec<Box<str>>,
    /// Failing callers were left out of `callers`: it names some, not all.
    pub callers_dropped: bool,
}

/// Everything one second brought.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Each route's counts, one entry per upstream it was sent to.
    pub routes: Vec<(Arc<str>, RouteSample)>,
    pub tls_failures: u64,
    pub auth_failures: u64,
    pub breaker: Vec<BreakerEvent>,
}

/// The counters the request path finds, replaced as a whole when one is added.
#[derive(Debug, Default)]
struct Pairs {
    /// Each route's counters, one per upstream it was sent to (usually one).
    routes: HashMap<Arc<str>, Vec<Arc<RouteCounters>>>,
    /// How many counters `routes` holds (known, so that a request never counts them).
    len: usize,
    /// The counters shared past [`MAX_PAIRS`], one per upstream.
    overflow: Vec<Arc<RouteCounters>>,
}

impl Pairs {
    fn find(&self, route: &str, upstream: Option<&str>) -> Option<&RouteCounters> {
        find_in(self.routes.get(route)?, upstream)
    }

    fn full(&self) -> bool {
        self.len >= MAX_PAIRS
    }

    /// The counters a request of a pair without its own goes to, if none need adding.
    fn overflow(&self, upstream: Option<&str>) -> Option<&RouteCounters> {
        find_in(&self.overflow, upstream)
    }
}

fn find_in<'c>(cs: &'c [Arc<RouteCounters>], upstream: Option<&str>) -> Option<&'c RouteCounters> {
    cs.iter()
        .find(|c| c.upstream.as_deref() == upstream)
        .map(|c| &**c)
}

/// The request path's side of incident detection; see the module documentation.
#[derive(Debug)]
pub struct Feed {
    pairs: ArcSwap<Pairs>,
    /// The counters of a request none of `pairs` takes: past [`MAX_OVERFLOW_UPSTREAMS`], or
    /// one that raced a change of `pairs`.
    last_resort: Arc<RouteCounters>,
    /// Counters a configuration dropped, with their route: the next drain reports what
    /// they still hold.
    retired: Mutex<Vec<(Arc<str>, Arc<RouteCounters>)>>,
    tls_failures: AtomicU64,
    auth_failures: AtomicU64,
    breaker: Mutex<Vec<BreakerEvent>>,
    max_callers: usize,
    /// How many times the request path went to change `pairs`.
    #[cfg(test)]
    adds: AtomicU64,
}

impl Feed {
    pub fn new(max_callers: usize) -> Self {
        Self {
            pairs: ArcSwap::from_pointee(Pairs::default()),
            last_resort: Arc::new(RouteCounters::new(None)),
            retired: Mutex::new(Vec::new()),
            tls_failures: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            breaker: Mutex::new(Vec::new()),
            max_callers,
            #[cfg(test)]
            adds: AtomicU64::new(0),
        }
    }

    /// Counts one request. Cheap: see the module documentation.
    pub fn request(&self, e: &RequestEvent<'_>) {
        let pairs = self.pairs.load();
        if let Some(c) = pairs.find(e.route, e.upstream) {
            return self.request_on(c, e);
        }
        if pairs.full() {
            // Past the bound nothing is added for the route, so a request counts without
            // touching the map others read; only an upstream's first such request adds.
            if let Some(c) = pairs.overflow(e.upstream) {
                return self.request_on(c, e);
            }
            if pairs.overflow.len() >= MAX_OVERFLOW_UPSTREAMS {
                return self.request_on(&self.last_resort, e);
            }
        }
        // A new route, or one a reload sent to another upstream: once per route and upstream.
        drop(pairs);
        self.add(e.route, e.upstream);
        let pairs = self.pairs.load();
        let c = pairs
            .find(e.route, e.upstream)
            .or_else(|| pairs.overflow(e.upstream))
            .unwrap_or(&self.last_resort);
        self.request_on(c, e);
    }

    /// Counters for a route and upstream seen for the first time. A route a reload sends
    /// elsewhere gets counters of its own for the new upstream, so that no second's counts
    /// are attributed to the wrong one. Past [`MAX_PAIRS`], the upstream's shared counters.
    fn add(&self, route: &str, upstream: Option<&str>) {
        #[cfg(test)]
        self.adds.fetch_add(1, Ordering::Relaxed);
        self.pairs.rcu(|pairs| {
            if pairs.find(route, upstream).is_some() {
                return Arc::clone(pairs);
            }
            if pairs.full() {
                if pairs.overflow(upstream).is_some()
                    || pairs.overflow.len() >= MAX_OVERFLOW_UPSTREAMS
                {
                    return Arc::clone(pairs);
                }
                let mut overflow = pairs.overflow.clone();
                overflow.push(Arc::new(RouteCounters::new(upstream)));
                return Arc::new(Pairs {
                    routes: pairs.routes.clone(),
                    len: pairs.len,
                    overflow,
                });
            }
            let mut routes = pairs.routes.clone();
            routes
                .entry(Arc::from(route))
                .or_default()
                .push(Arc::new(RouteCounters::new(upstream)));
            Arc::new(Pairs {
                routes,
                len: pairs.len + 1,
                overflow: pairs.overflow.clone(),
            })
        });
    }

    /// Puts a configuration into use: see [`Feed::retain`]. Its pairs are each route with
    /// its upstream and its failover upstream.
    pub fn install(&self, cfg: &idgate_config::Config) {
        let name = |i: usize| cfg.upstreams.get(i).map(|u| u.name.as_str());
        let pairs: Vec<(&str, &str)> = cfg
            .routes
            .iter()
            .flat_map(|r| {
                let primary = name(r.upstream);
                let failover = r.resilience.failover.and_then(name);
                [primary, failover]
                    .into_iter()
                    .flatten()
                    .map(|u| (r.name.as_str(), u))
            })
            .collect();
        let critical: &[String] = cfg
            .incidents
            .as_ref()
            .map_or(&[], |i| i.critical_routes.as_slice());
        self.retain(&pairs, critical);
    }

    /// Keeps the counters of the (route, upstream) `current` pairs and drops the others: a
    /// configuration's, put into use. Routes without an upstream (the token endpoint,
    /// webhooks, requests no route took) get theirs again at their next request. The
    /// upstreams no longer configured lose their shared counters. The `critical` routes'
    /// pairs get counters at once, past [`MAX_PAIRS`] if need be, so that they are never
    /// counted under `*`. What dropped counters hold is reported by the next drain. A request
    /// still on the configuration before may bring one of its pairs back: the next
    /// configuration drops it again.
    pub fn retain(&self, current: &[(&str, &str)], critical: &[impl AsRef<str>]) {
        let critical: HashSet<&str> = critical.iter().map(AsRef::as_ref).collect();
        let wanted: HashSet<(&str, &str)> = current.iter().copied().collect();
        let upstreams: HashSet<&str> = current.iter().map(|&(_, u)| u).collect();
        let mut dropped = Vec::new();
        self.pairs.rcu(|pairs| {
            dropped.clear();
            let mut routes: HashMap<Arc<str>, Vec<Arc<RouteCounters>>> = HashMap::new();
            for (route, cs) in &pairs.routes {
                for c in cs {
                    let kept = c
                        .upstream
                        .as_deref()
                        .is_some_and(|u| wanted.contains(&(&**route, u)));
                    if kept {
                        routes.entry(route.clone()).or_default().push(c.clone());
                    } else {
                        dropped.push((route.clone(), c.clone()));
                    }
                }
            }
            for &(route, upstream) in current {
                if critical.contains(route) {
                    let cs = routes.entry(Arc::from(route)).or_default();
                    if find_in(cs, Some(upstream)).is_none() {
                        cs.push(Arc::new(RouteCounters::new(Some(upstream))));
                    }
                }
            }
            let overflow_route: Arc<str> = Arc::from(OVERFLOW_ROUTE);
            let mut overflow = Vec::new();
            for c in &pairs.overflow {
                if c.upstream.as_deref().is_some_and(|u| upstreams.contains(u)) {
                    overflow.push(c.clone());
                } else {
                    dropped.push((overflow_route.clone(), c.clone()));
                }
            }
            Arc::new(Pairs {
                len: routes.values().map(Vec::len).sum(),
                routes,
                overflow,
            })
        });
        if !dropped.is_empty() {
            self.retired
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .append(&mut dropped);
        }
    }

    fn request_on(&self, c: &RouteCounters, e: &RequestEvent<'_>) {
        c.requests.fetch_add(1, Ordering::Relaxed);
        if e.upstream.is_some() && (e.upstream_error || e.upstream_latency.is_some()) {
            c.upstream_requests.fetch_add(1, Ordering::Relaxed);
        }
        if e.upstream_error {
            c.upstream_errors.fetch_add(1, Ordering::Relaxed);
        }
        if e.fallback {
            c.fallbacks.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(took) = e.upstream_latency {
            let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
            let i = LATENCY_BOUNDS_MS
                .iter()
                .position(|&b| ms <= b)
                .unwrap_or(LATENCY_BOUNDS_MS.len());
            c.latency[i].fetch_add(1, Ordering::Relaxed);
        }
        if e.failed {
            c.failed.fetch_add(1, Ordering::Relaxed);
            if e.upstream_latency.is_none() {
                c.refused.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(caller) = e.caller {
                self.failing_caller(c, caller);
            }
        }
    }

    fn failing_caller(&self, c: &RouteCounters, caller: &dyn fmt::Display) {
        let mut hasher = HashWriter(DefaultHasher::new());
        if write!(hasher, "{caller}").is_err() {
            return;
        }
        let hash = hasher.0.finish();
        // Another request holds it: the request path never waits for it, and this caller
        // may or may not be noted already, so the names become a lower bound.
        let Ok(mut callers) = c.callers.try_lock() else {
            c.callers_dropped.store(true, Ordering::Relaxed);
            return;
        };
        if callers.iter().any(|(h, _)| *h == hash) {
            return;
        }
        if callers.len() < self.max_callers {
            callers.push((hash, caller.to_string().into_boxed_str()));
        } else {
            c.callers_dropped.store(true, Ordering::Relaxed);
        }
    }

    /// Counts a failed TLS handshake.
    pub fn tls_failure(&self) {
        self.tls_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed authentication.
    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A circuit breaker opened, let a probe through or closed (rare: taken under a plain
    /// lock).
    pub fn breaker(&self, event: BreakerEvent) {
        self.breaker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event);
    }

    /// What arrived since the last drain; the counters start again from zero.
    pub fn drain(&self) -> Sample {
        let pairs = self.pairs.load();
        let retired = std::mem::take(&mut *self.retired.lock().unwrap_or_else(|e| e.into_inner()));
        let mut routes = Vec::with_capacity(pairs.len + pairs.overflow.len() + 1);
        let overflow: Arc<str> = Arc::from(OVERFLOW_ROUTE);
        let all = pairs
            .routes
            .iter()
            .flat_map(|(name, cs)| cs.iter().map(move |c| (name, c)))
            .chain(pairs.overflow.iter().map(|c| (&overflow, c)))
            .chain(std::iter::once((&overflow, &self.last_resort)))
            .chain(retired.iter().map(|(name, c)| (name, c)));
        for (name, c) in all {
            let s = take(c);
            if s.requests > 0 {
                routes.push((name.clone(), s));
            }
        }
        Sample {
            routes,
            tls_failures: self.tls_failures.swap(0, Ordering::Relaxed),
            auth_failures: self.auth_failures.swap(0, Ordering::Relaxed),
            breaker: std::mem::take(&mut *self.breaker.lock().unwrap_or_else(|e| e.into_inner())),
        }
    }
}

fn take(c: &RouteCounters) -> RouteSample {
    let callers = std::mem::take(&mut *c.callers.lock().unwrap_or_else(|e| e.into_inner()));
    RouteSample {
        upstream: c.upstream.clone(),
        requests: c.requests.swap(0, Ordering::Relaxed),
        failed: c.failed.swap(0, Ordering::Relaxed),
        upstream_requests: c.upstream_requests.swap(0, Ordering::Relaxed),
        upstream_errors: c.upstream_errors.swap(0, Ordering::Relaxed),
        refused: c.refused.swap(0, Ordering::Relaxed),
        fallbacks: c.fallbacks.swap(0, Ordering::Relaxed),
        latency: std::array::from_fn(|i| c.latency[i].swap(0, Ordering::Relaxed)),
        callers: callers.into_iter().map(|(_, l)| l).collect(),
        callers_dropped: c.callers_dropped.swap(false, Ordering::Relaxed),
    }
}

/// Hashes what is formatted into it, without making a string.
struct HashWriter(DefaultHasher);

impl fmt::Write for HashWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.write(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event<'a>(
        route: &'a str,
        failed: bool,
        caller: Option<&'a dyn fmt::Display>,
    ) -> RequestEvent<'a> {
        RequestEvent {
            route,
            upstream: Some("idv"),
            failed,
            upstream_error: failed,
            upstream_latency: (!failed).then_some(Duration::from_millis(30)),
            caller,
            fallback: false,
        }
    }

    #[test]
    fn counts_are_drained_once_and_callers_are_bounded_and_distinct() {
        let feed = Feed::new(2);
        let (a, b, c) = ("key:a", "key:b", "key:c");
        feed.request(&event("sessions", false, None));
        for caller in [&a as &dyn fmt::Display, &a, &b, &c] {
            feed.request(&event("sessions", true, Some(caller)));
        }
        feed.tls_failure();
        feed.auth_failure();
        feed.auth_failure();
        let s = feed.drain();
        assert_eq!(s.routes.len(), 1);
        let r = &s.routes[0].1;
        assert_eq!(
            (r.requests, r.failed, r.upstream_errors, r.upstream_requests),
            (5, 4, 4, 5)
        );
        assert_eq!(r.latency[3], 1, "30 ms falls in the 50 ms bucket");
        assert_eq!(r.callers, vec![Box::from("key:a"), Box::from("key:b")]);
        assert!(r.callers_dropped, "key:c failed too");
        assert_eq!((s.tls_failures, s.auth_failures), (1, 2));
        let again = feed.drain();
        assert!(again.routes.is_empty());
        assert_eq!(again.auth_failures, 0);
    }

    #[test]
    fn a_caller_passed_over_while_the_list_is_busy_marks_the_second_incomplete() {
        let feed = Feed::new(8);
        let a = "key:a";
        feed.request(&event("sessions", true, Some(&a)));
        let s = feed.drain();
        assert!(!s.routes[0].1.callers_dropped, "all callers noted");
        let pairs = feed.pairs.load();
        let counters = pairs
            .find("sessions", Some("idv"))
            .expect("the route's counters");
        // Another request holds the list: the request path does not wait for it.
        let held = counters.callers.lock().unwrap_or_else(|e| e.into_inner());
        let b = "key:b";
        feed.request(&event("sessions", true, Some(&b)));
        drop(held);
        let s = feed.drain();
        let r = &s.routes[0].1;
        assert_eq!((r.failed, r.callers.len()), (1, 0));
        assert!(r.callers_dropped);
        // The next second starts whole again.
        feed.request(&event("sessions", true, Some(&a)));
        assert!(!feed.drain().routes[0].1.callers_dropped);
    }

    #[test]
    fn a_route_sent_to_another_upstream_counts_apart() {
        let feed = Feed::new(2);
        feed.request(&event("sessions", true, None));
        let moved = RequestEvent {
            upstream: Some("idv-eu"),
            ..event("sessions", false, None)
        };
        feed.request(&moved);
        feed.request(&moved);
        let s = feed.drain();
        let by_upstream = |u: &str| {
            s.routes
                .iter()
                .find(|(_, r)| r.upstream.as_deref() == Some(u))
                .map(|(_, r)| (r.requests, r.failed))
        };
        assert_eq!(by_upstream("idv"), Some((1, 1)));
        assert_eq!(by_upstream("idv-eu"), Some((2, 0)));
    }

    /// `n` routes, each sent to `idv` once.
    fn fill(feed: &Feed, n: usize) {
        for i in 0..n {
            feed.request(&event(&format!("route-{i}"), false, None));
        }
    }

    #[test]
    fn feed_names_the_upstream_of_a_route_first_seen_after_512_others() {
        let feed = Feed::new(2);
        fill(&feed, MAX_PAIRS);
        let late = RequestEvent {
            upstream: Some("kyc"),
            ..event("late", true, None)
        };
        feed.request(&late);
        feed.request(&late);
        let s = feed.drain();
        assert_eq!(s.routes.len(), MAX_PAIRS + 1);
        let (route, r) = s
            .routes
            .iter()
            .find(|(_, r)| r.upstream.as_deref() == Some("kyc"))
            .expect("the late route's upstream is named");
        assert_eq!(&**route, OVERFLOW_ROUTE);
        assert_eq!((r.requests, r.upstream_errors), (2, 2));
    }

    #[test]
    fn requests_past_the_bound_leave_the_shared_map_alone() {
        let feed = Feed::new(2);
        fill(&feed, MAX_PAIRS);
        let late = RequestEvent {
            upstream: Some("kyc"),
            ..event("late", false, None)
        };
        feed.request(&late);
        let before = feed.pairs.load_full();
        let adds = feed.adds.load(Ordering::Relaxed);
        for i in 0..100 {
            feed.request(&RequestEvent {
                route: &format!("later-{i}"),
                ..late
            });
        }
        assert!(
            Arc::ptr_eq(&before, &feed.pairs.load_full()),
            "an upstream's shared counters, once made, take its requests as they are"
        );
        assert_eq!(
            feed.adds.load(Ordering::Relaxed),
            adds,
            "no request went to change the map"
        );
        assert_eq!(feed.pairs.load().overflow.len(), 1);
    }

    #[test]
    fn a_reload_that_renames_an_upstream_frees_the_old_pairs() {
        let feed = Feed::new(2);
        let none: &[&str] = &[];
        feed.retain(&[("sessions", "idv-0")], none);
        // Each reload renames the upstream: without pruning, the map would fill after 512.
        for n in 0..=MAX_PAIRS {
            let name = format!("idv-{n}");
            feed.retain(&[("sessions", &name)], none);
            feed.request(&RequestEvent {
                upstream: Some(&name),
                ..event("sessions", false, None)
            });
            if n % 64 == 0 {
                feed.drain();
            }
        }
        let pairs = feed.pairs.load();
        assert_eq!(pairs.len, 1, "only the pair in use is kept");
        assert!(pairs.find("sessions", Some("idv-0")).is_none());
        drop(pairs);
        // A route added now has counters of its own, not the shared ones.
        let renamed = format!("idv-{MAX_PAIRS}");
        feed.retain(&[("sessions", &renamed), ("profiles", &renamed)], none);
        feed.request(&RequestEvent {
            upstream: Some(&renamed),
            ..event("profiles", true, None)
        });
        let s = feed.drain();
        assert!(
            s.routes
                .iter()
                .any(|(route, r)| &**route == "profiles" && r.failed == 1),
            "{s:?}"
        );
        assert!(s.routes.iter().all(|(route, _)| &**route != OVERFLOW_ROUTE));
    }

    #[test]
    fn counts_a_reload_drops_are_reported_by_the_next_drain() {
        let feed = Feed::new(2);
        feed.request(&event("sessions", true, None));
        feed.retain(&[("sessions", "idv-eu")], &["sessions"]);
        let s = feed.drain();
        let r = s
            .routes
            .iter()
            .find(|(_, r)| r.upstream.as_deref() == Some("idv"))
            .map(|(_, r)| r.failed);
        assert_eq!(r, Some(1));
        assert!(feed.drain().routes.is_empty(), "reported once");
    }

    #[test]
    fn a_critical_route_keeps_its_own_counters_past_the_bound() {
        let feed = Feed::new(2);
        feed.retain(
            &[
                ("payouts", "bank"),
                ("payouts", "bank-dr"),
                ("sessions", "idv"),
            ],
            &["payouts"],
        );
        fill(&feed, MAX_PAIRS);
        feed.request(&RequestEvent {
            upstream: Some("bank-dr"),
            ..event("payouts", true, None)
        });
        let s = feed.drain();
        let (route, _) = s
            .routes
            .iter()
            .find(|(_, r)| r.upstream.as_deref() == Some("bank-dr"))
            .expect("counted");
        assert_eq!(&**route, "payouts");
    }

    /// A configuration whose `sessions` route fails over from `primary` to `idv-dr`, with
    /// `payouts` (on `primary`) critical.
    fn config(dir: &std::path::Path, primary: &str) -> idgate_config::Config {
        for f in ["gw.crt", "gw.key", "bundle.pem"] {
            std::fs::write(dir.join(f), "x").expect("a file of the configuration");
        }
        let text = format!(
            r#"
[listener]
bind = "127.0.0.1:8443"
[identity]
svid_cert = "gw.crt"
svid_key = "gw.key"
[[identity.trust_bundles]]
trust_domain = "example.org"
bundle = "bundle.pem"
[[upstreams]]
name = "{primary}"
url = "https://idv.example.com"
[[upstreams]]
name = "idv-dr"
url = "https://dr.example.com"
[[routes]]
name = "sessions"
methods = ["GET"]
path = "/v1/sessions"
upstream = "{primary}"
failover = "idv-dr"
allow = ["spiffe://example.org/ns/kyc/*"]
[[routes]]
name = "payouts"
methods = ["GET"]
path = "/v1/payouts"
upstream = "{primary}"
allow = ["spiffe://example.org/ns/kyc/*"]
[incidents]
dir = "incidents"
critical_routes = ["payouts"]
"#
        );
        match idgate_config::parse(&dir.join("idgate.toml"), &text) {
            Ok(c) => c,
            Err(e) => panic!("{:?}", e.0.iter().map(|e| &e.reason).collect::<Vec<_>>()),
        }
    }

    #[test]
    fn a_configuration_keeps_each_route_with_its_upstream_and_failover() {
        let dir = tempfile::tempdir().expect("a directory");
        let feed = Feed::new(2);
        feed.install(&config(dir.path(), "idv"));
        let pairs = feed.pairs.load();
        assert!(
            pairs.find("payouts", Some("idv")).is_some(),
            "critical: made at once"
        );
        assert_eq!(pairs.len, 1);
        drop(pairs);
        for (route, upstream) in [("sessions", "idv"), ("sessions", "idv-dr"), ("-", "")] {
            feed.request(&RequestEvent {
                upstream: (!upstream.is_empty()).then_some(upstream),
                ..event(route, false, None)
            });
        }
        assert_eq!(feed.pairs.load().len, 4);
        feed.install(&config(dir.path(), "idv-2"));
        let pairs = feed.pairs.load();
        assert!(
            pairs.find("sessions", Some("idv-dr")).is_some(),
            "still configured"
        );
        assert!(pairs.find("payouts", Some("idv-2")).is_some());
        assert_eq!(
            pairs.len, 2,
            "the pairs of `idv` and of no upstream are dropped"
        );
    }
}
