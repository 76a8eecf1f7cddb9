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

use std::collections::HashMap;
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

/// More routes than this share one set of counters (named `*`): the map stays bounded
/// whatever the configuration reloads do.
const MAX_ROUTES: usize = 512;

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
    /// It opened: it refuses every request until `until` (its `open_duration` later), then
    /// lets a probe through at the next request.
    Opened {
        upstream: String,
        until: crate::incident::Millis,
    },
    /// It let a probe through (its open time over, a request came): every other request is
    /// refused until the probe ends, at the latest at `until` (the probe's request timeout).
    /// A probe that fails opens it again, one that succeeds closes it; one that ended saying
    /// nothing of the upstream lets the next request through as another probe, announced
    /// again within a second.
    HalfOpen {
        upstream: String,
        until: crate::incident::Millis,
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

/// The request path's side of incident detection; see the module documentation.
#[derive(Debug)]
pub struct Feed {
    /// Each route's counters, one per upstream it was sent to (usually one).
    routes: ArcSwap<HashMap<Arc<str>, Vec<Arc<RouteCounters>>>>,
    overflow: Arc<RouteCounters>,
    tls_failures: AtomicU64,
    auth_failures: AtomicU64,
    breaker: Mutex<Vec<BreakerEvent>>,
    max_callers: usize,
}

impl Feed {
    pub fn new(max_callers: usize) -> Self {
        Self {
            routes: ArcSwap::from_pointee(HashMap::new()),
            overflow: Arc::new(RouteCounters::new(None)),
            tls_failures: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            breaker: Mutex::new(Vec::new()),
            max_callers,
        }
    }

    /// Counts one request. Cheap: see the module documentation.
    pub fn request(&self, e: &RequestEvent<'_>) {
        let map = self.routes.load();
        if let Some(c) = find(&map, e.route, e.upstream) {
            return self.request_on(c, e);
        }
        // A new route, or one a reload sent to another upstream: once per route and upstream.
        drop(map);
        self.add_route(e.route, e.upstream);
        let map = self.routes.load();
        let c = find(&map, e.route, e.upstream).unwrap_or(&self.overflow);
        self.request_on(c, e);
    }

    /// Counters for a route and upstream seen for the first time. A route a reload sends
    /// elsewhere gets counters of its own for the new upstream, so that no second's counts
    /// are attributed to the wrong one.
    fn add_route(&self, route: &str, upstream: Option<&str>) {
        self.routes.rcu(|map| {
            let total: usize = map.values().map(Vec::len).sum();
            if find(map, route, upstream).is_some() || total >= MAX_ROUTES {
                return Arc::clone(map);
            }
            let mut map = HashMap::clone(map);
            map.entry(Arc::from(route))
                .or_default()
                .push(Arc::new(RouteCounters::new(upstream)));
            Arc::new(map)
        });
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
        let map = self.routes.load();
        let mut routes = Vec::with_capacity(map.len() + 1);
        let overflow: Arc<str> = Arc::from("*");
        let all = map
            .iter()
            .flat_map(|(name, cs)| cs.iter().map(move |c| (name, c)))
            .chain(std::iter::once((&overflow, &self.overflow)));
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

fn find<'m>(
    map: &'m HashMap<Arc<str>, Vec<Arc<RouteCounters>>>,
    route: &str,
    upstream: Option<&str>,
) -> Option<&'m RouteCounters> {
    map.get(route)?
        .iter()
        .find(|c| c.upstream.as_deref() == upstream)
        .map(|c| &**c)
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
        let map = feed.routes.load();
        let counters = find(&map, "sessions", Some("idv")).expect("the route's counters");
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
}
