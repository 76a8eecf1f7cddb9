//! Upstream resilience: each upstream's circuit breaker and retry budget, in a registry
//! that lives as long as the process (in [`crate::service::Services`]), so that a reload —
//! which rebuilds every [`crate::upstream::Upstream`] — keeps them. State is keyed by the
//! upstream's name; its thresholds come from the snapshot at each use, so a reload that
//! changes them applies them to the state as it is, and one that removes the upstream drops
//! its state ([`Resilience::retain`]).
//!
//! The breaker is per upstream: it answers "is this provider failing", which is what a
//! caller and a fallback care about; a failing endpoint among healthy ones is the health
//! checks' business (it leaves the rotation), and retries go to another endpoint. Each
//! endpoint's requests in flight and health are kept here too, keyed by upstream and
//! endpoint, with a health-check task per endpoint ([`Resilience::install`]).
//!
//! Breaker changes are a `tracing` event (target `idgate::breaker`), a metric, and a
//! [`BreakerEvent`] on a broadcast channel ([`Resilience::subscribe`]). A breaker a reload
//! takes away while it is open or half-open (its upstream, or the upstream's
//! `[upstreams.breaker]`, removed) is announced too, as a change to closed marked
//! `dropped`: whoever follows the events would otherwise believe it open for ever.
//!
//! Only [`Resilience::install`] adds an upstream's state, and only it gives an upstream a
//! breaker: a request that took its snapshot before a reload removed the upstream or its
//! breaker, and is forwarded after it, runs without one (and with state of its own for the
//! rest), so that it brings back neither the state nor the breaker the reload took away.

mod balance;
mod breaker;
mod budget;
mod health;
mod metrics;
mod window;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use idgate_config::{BreakerConfig, RetryBudgetConfig};
use prometheus_client::registry::Registry;
use tokio::sync::broadcast;

pub use breaker::{BreakerState, Outcome};

use balance::EndpointState;
pub(crate) use balance::InFlight;
use breaker::{Admission, Breaker, Change};
use budget::RetryBudget;
use metrics::ResilienceMetrics;

use crate::upstream::Upstream;

/// A change of an upstream's breaker.
#[derive(Debug, Clone)]
pub struct BreakerEvent {
    pub upstream: Arc<str>,
    pub from: BreakerState,
    pub to: BreakerState,
    pub at: SystemTime,
    /// Until when, at the latest, the breaker refuses every request, on the monotonic clock
    /// (`None` past what the clock counts, or for a change to closed): setting the system
    /// clock moves neither it nor the incident's downtime measured by it. For a change to
    /// open, the change's moment plus `open_duration`: the next request after it goes
    /// through as a probe. For a change to half-open, a probe was let through and every
    /// other request is refused until it ends: plus the upstream's `request_timeout`, which
    /// bounds the probe's request. A probe let through while the breaker is already
    /// half-open (one before it ended saying nothing of the upstream, its caller gone) is
    /// announced the same way, with `from` half-open too, at most once a second.
    pub refuses_until: Option<Instant>,
    /// A reload took the breaker away (its upstream, or the upstream's
    /// `[upstreams.breaker]`, removed) while it was open or half-open: `to` is closed, as
    /// nothing is refused any more.
    pub dropped: bool,
}

/// Why an upstream takes no request now, and when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{why}; retry in {retry_after:?}")]
pub struct Unavailable {
    pub why: Why,
    pub retry_after: Duration,
}

/// The reason in [`Unavailable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    #[error("the upstream's circuit breaker is open")]
    CircuitOpen,
    #[error("no endpoint of the upstream passes its health checks")]
    NoHealthyEndpoint,
}

impl Unavailable {
    /// The answer a caller gets for it: `503 circuit-open` or `503 upstream-unavailable`,
    /// with `Retry-After`.
    pub fn refusal(self, upstream: &Arc<str>) -> crate::problem::Refusal {
        use crate::problem::Refusal;
        let (upstream, retry_after) = (upstream.clone(), self.retry_after);
        match self.why {
            Why::CircuitOpen => Refusal::CircuitOpen {
                upstream,
                retry_after,
            },
            Why::NoHealthyEndpoint => Refusal::UpstreamUnavailable {
                upstream,
                retry_after,
            },
        }
    }
}

/// Events kept for a subscriber that lags; older ones are dropped for it.
const EVENT_BACKLOG: usize = 256;

/// Every upstream's breaker and retry budget.
#[derive(Debug)]
pub struct Resilience {
    upstreams: RwLock<HashMap<Arc<str>, Arc<UpstreamState>>>,
    events: broadcast::Sender<BreakerEvent>,
    metrics: ResilienceMetrics,
}

/// One upstream's state.
#[derive(Debug)]
pub(crate) struct UpstreamState {
    name: Arc<str>,
    /// Not in the registry: the upstream of a request whose snapshot is older than the
    /// reload that removed it. Its counts are the request's own and make no metrics.
    detached: bool,
    breaker: Mutex<BreakerSlot>,
    budget: Mutex<Option<RetryBudget>>,
    endpoints: RwLock<HashMap<Arc<str>, Arc<EndpointState>>>,
}

impl UpstreamState {
    fn new(name: Arc<str>, detached: bool) -> Self {
        Self {
            name,
            detached,
            breaker: Mutex::new(BreakerSlot::default()),
            budget: Mutex::new(None),
            endpoints: RwLock::default(),
        }
    }
}

/// An upstream's breaker, as the configuration installed last has it.
#[derive(Debug, Default)]
struct BreakerSlot {
    /// Whether that configuration gives the upstream a `[upstreams.breaker]`: a request
    /// forwarded with an older snapshot that still has one makes none.
    configured: bool,
    /// Counts the times the upstream was given a breaker: a request let through one that a
    /// reload then took away does not count with one configured again later.
    generation: u64,
    /// Made at the first request through it.
    breaker: Option<Breaker>,
}

impl BreakerSlot {
    /// The breaker of generation `generation`, if it is still the one in use.
    fn of(&mut self, generation: u64) -> Option<&mut Breaker> {
        if self.generation == generation {
            self.breaker.as_mut()
        } else {
            None
        }
    }
}

impl UpstreamState {
    fn endpoint(&self, label: &Arc<str>) -> Arc<EndpointState> {
        if let Some(e) = self
            .endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(label)
        {
            return e.clone();
        }
        self.endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(label.clone())
            .or_insert_with(|| Arc::new(EndpointState::new(label.clone())))
            .clone()
    }
}

/// A request let through the breaker; recording its outcome (or dropping it, for a request
/// that ended early) frees a half-open probe's place.
///
/// A request that found no breaker (a reload took it away since its snapshot) has no
/// admission: its outcome counts nowhere.
pub(crate) struct Permit<'a> {
    resilience: &'a Resilience,
    state: Arc<UpstreamState>,
    cfg: &'a BreakerConfig,
    /// The admission, and the generation of the breaker that gave it.
    admission: Option<(Admission, u64)>,
}

impl Permit<'_> {
    pub(crate) fn record(mut self, outcome: Outcome) {
        if let Some(admission) = self.admission.take() {
            self.resilience
                .record(&self.state, self.cfg, admission, outcome);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            self.resilience
                .record(&self.state, self.cfg, admission, Outcome::Neutral);
        }
    }
}

/// Until the next health check, at least a second.
fn no_healthy_endpoint(upstream: &Upstream) -> Unavailable {
    Unavailable {
        why: Why::NoHealthyEndpoint,
        retry_after: upstream
            .health
            .as_ref()
            .map_or(Duration::from_secs(1), |h| h.interval),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The state is counters: one a panicking holder left half-updated is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Resilience {
    /// Registers its metrics in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        Self {
            upstreams: RwLock::default(),
            events: broadcast::channel(EVENT_BACKLOG).0,
            metrics: ResilienceMetrics::register(registry),
        }
    }

    /// Every breaker change from now on. A subscriber that falls more than a few hundred
    /// events behind loses the oldest (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<BreakerEvent> {
        self.events.subscribe()
    }

    /// Whether `upstream` takes requests now — its breaker lets one through and an
    /// endpoint is in rotation — without taking a place: for a caller that would rather
    /// serve a fallback than be refused.
    pub fn available(&self, upstream: &Upstream) -> Result<(), Unavailable> {
        let state = self.state(&upstream.name);
        if let Some(cfg) = &upstream.breaker
            && let Some(retry_after) = lock(&state.breaker)
                .breaker
                .as_ref()
                .and_then(|b| b.refusal(Instant::now(), cfg))
        {
            return Err(Unavailable {
                why: Why::CircuitOpen,
                retry_after,
            });
        }
        if upstream
            .endpoints
            .iter()
            .any(|e| state.endpoint(&e.label).healthy())
        {
            Ok(())
        } else {
            Err(no_healthy_endpoint(upstream))
        }
    }

    /// The state of `upstream`'s breaker, if it has one that has seen a request.
    pub fn breaker_state(&self, upstream: &str) -> Option<BreakerState> {
        let map = self
            .upstreams
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let state = map.get(upstream)?;
        lock(&state.breaker).breaker.as_ref().map(Breaker::state)
    }

    /// Drops the state of every upstream not named in `names` (a reload removed them); a
    /// breaker dropped while open or half-open is announced (see [`BreakerEvent::dropped`]).
    pub fn retain<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let keep: std::collections::HashSet<&str> = names.into_iter().collect();
        let mut removed = Vec::new();
        self.upstreams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|name, state| {
                let kept = keep.contains(&**name);
                if !kept {
                    removed.push(state.clone());
                }
                // An endpoint state the checks still hold goes with its last reference.
                kept
            });
        for state in removed {
            self.drop_breaker(&state);
            for label in state
                .endpoints
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
            {
                self.metrics.forget_endpoint(&state.name, label);
            }
        }
    }

    /// Takes an upstream's breaker away (a reload removed it, or its upstream). A request
    /// still in flight through it finds none when it ends, so it cannot open it again where
    /// no one would ever close it; one forwarded with an older snapshot makes none.
    fn drop_breaker(&self, state: &UpstreamState) {
        let mut slot = lock(&state.breaker);
        slot.configured = false;
        let Some(breaker) = slot.breaker.take() else {
            return;
        };
        // Under the slot's lock, as every change of the breaker is announced: no change
        // announced after this one brings its series back.
        self.metrics.forget(&state.name);
        let from = breaker.state();
        if from == BreakerState::Closed {
            return;
        }
        tracing::info!(
            target: "idgate::breaker",
            upstream = %state.name, from = from.as_str(), to = BreakerState::Closed.as_str(),
            "circuit breaker removed by a reload: requests to the upstream are no longer refused"
        );
        // No subscriber is not an error.
        let _ = self.events.send(BreakerEvent {
            upstream: state.name.clone(),
            from,
            to: BreakerState::Closed,
            at: SystemTime::now(),
            refuses_until: None,
            dropped: true,
        });
    }

    /// The state of an installed upstream; for one the configuration installed last does
    /// not have (a request's snapshot is older than the reload that removed it), a detached
    /// state of the request's own, so that the request runs without bringing it back.
    fn state(&self, name: &Arc<str>) -> Arc<UpstreamState> {
        self.upstreams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .unwrap_or_else(|| Arc::new(UpstreamState::new(name.clone(), true)))
    }

    /// The state of an upstream being installed, added if it is new.
    fn installed(&self, name: &Arc<str>) -> Arc<UpstreamState> {
        self.upstreams
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.clone())
            .or_insert_with(|| Arc::new(UpstreamState::new(name.clone(), false)))
            .clone()
    }

    /// Takes the configuration's upstreams into use, at start and at each reload: drops the
    /// state of upstreams and endpoints it no longer has, and the breaker of an upstream
    /// that no longer has one (so that one configured again starts closed), and (re)starts
    /// the health checks of every endpoint with the configuration's check. Health and load
    /// are kept.
    pub fn install(self: &Arc<Self>, upstreams: &[Upstream]) {
        self.retain(upstreams.iter().map(|u| &*u.name));
        for u in upstreams {
            let state = self.installed(&u.name);
            if u.breaker.is_some() {
                let mut slot = lock(&state.breaker);
                if !slot.configured {
                    slot.configured = true;
                    slot.generation += 1;
                }
            } else {
                self.drop_breaker(&state);
            }
            state
                .endpoints
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|label, _| {
                    let kept = u.endpoints.iter().any(|e| e.label == *label);
                    if !kept {
                        self.metrics.forget_endpoint(&u.name, label);
                    }
                    kept
                });
            for e in &u.endpoints {
                let es = state.endpoint(&e.label);
                let task = u.health.as_ref().and_then(|cfg| {
                    let uri = http::Uri::builder()
                        .scheme(u.scheme.clone())
                        .authority(e.authority.clone())
                        .path_and_query(format!("{}{}", u.base_path, cfg.path))
                        .build()
                        .ok()?;
                    let check = health::Check {
                        upstream: u.name.clone(),
                        uri,
                        client: u.client.clone(),
                        cfg: cfg.clone(),
                    };
                    let task = tokio::spawn(health::run(
                        check,
                        Arc::downgrade(&es),
                        Arc::downgrade(self),
                    ));
                    Some(task.abort_handle())
                });
                if task.is_none() && es.set_healthy(true) {
                    // Checks turned off: the endpoint is taken back as it is.
                    self.health_changed(&u.name, &es, true);
                }
                self.metrics.set_healthy(&u.name, &es.label, es.healthy());
                if let Some(old) = std::mem::replace(&mut *lock(&es.checker), task) {
                    old.abort();
                }
            }
        }
    }

    /// Whether `endpoint` is still its endpoint's state in the configuration installed last:
    /// a request in flight may hold one a reload removed, whose checks must then stop.
    fn is_installed(&self, upstream: &str, endpoint: &Arc<EndpointState>) -> bool {
        self.upstreams
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(upstream)
            .is_some_and(|s| {
                s.endpoints
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&endpoint.label)
                    .is_some_and(|e| Arc::ptr_eq(e, endpoint))
            })
    }

    fn health_changed(&self, upstream: &Arc<str>, endpoint: &EndpointState, healthy: bool) {
        self.metrics.set_healthy(upstream, &endpoint.label, healthy);
        if healthy {
            tracing::info!(target: "idgate::health", upstream = %upstream, endpoint = %endpoint.label, "endpoint passes its health checks: back in rotation");
        } else {
            tracing::warn!(target: "idgate::health", upstream = %upstream, endpoint = %endpoint.label, "endpoint fails its health checks: out of rotation");
        }
    }

    /// The endpoint of `upstream` for an attempt (see `balance`), counted in flight while
    /// the guard lives; another than `avoid` when another is healthy. Refused when no
    /// endpoint is healthy, with the time until the next check.
    pub(crate) fn pick(
        &self,
        upstream: &Upstream,
        avoid: Option<usize>,
    ) -> Result<(usize, InFlight), Unavailable> {
        let state = self.state(&upstream.name);
        let states: Vec<Arc<EndpointState>> = upstream
            .endpoints
            .iter()
            .map(|e| state.endpoint(&e.label))
            .collect();
        match balance::choose(&states, avoid) {
            Some(i) => Ok((i, InFlight::new(states[i].clone()))),
            None => Err(no_healthy_endpoint(upstream)),
        }
    }

    /// Lets a request to `upstream` through its breaker, or refuses it with the time left.
    /// A request whose snapshot is older than the reload that took the breaker away (or the
    /// upstream) is let through without one.
    pub(crate) fn admit<'a>(
        &'a self,
        upstream: &Upstream,
        cfg: &'a BreakerConfig,
    ) -> Result<Permit<'a>, Unavailable> {
        let state = self.state(&upstream.name);
        let now = Instant::now();
        let admitted = {
            let mut slot = lock(&state.breaker);
            let generation = slot.generation;
            if slot.configured {
                let breaker = slot.breaker.get_or_insert_with(|| {
                    self.metrics.set_state(&state.name, BreakerState::Closed);
                    Breaker::new(now, cfg)
                });
                let (admitted, change) = breaker.admit(now, cfg);
                let probe =
                    matches!(admitted, Ok(Admission::Probe { .. })) && breaker.announce_probe(now);
                // Announced under the slot's lock, as a reload's dropping of the breaker
                // is, so that none comes after that. The only change an admission makes is
                // to half-open, letting the request through as a probe: its request's
                // timeout bounds how long every other one is refused.
                self.changed(&state.name, change, upstream.request_timeout);
                if probe && change.is_none() {
                    self.probing(&state.name, upstream.request_timeout);
                }
                admitted.map(|a| Some((a, generation)))
            } else {
                Ok(None)
            }
        };
        match admitted {
            Ok(admission) => Ok(Permit {
                resilience: self,
                state,
                cfg,
                admission,
            }),
            Err(retry_after) => {
                self.metrics.refused(&state.name);
                Err(Unavailable {
                    why: Why::CircuitOpen,
                    retry_after,
                })
            }
        }
    }

    fn record(
        &self,
        state: &UpstreamState,
        cfg: &BreakerConfig,
        (admission, generation): (Admission, u64),
        outcome: Outcome,
    ) {
        let mut slot = lock(&state.breaker);
        let change = slot
            .of(generation)
            .and_then(|b| b.record(Instant::now(), cfg, admission, outcome));
        // An outcome makes a change to open (for `open_duration`) or to closed.
        self.changed(&state.name, change, cfg.open_duration);
    }

    /// Announces a change; `refusing` is how long the state it went to refuses every
    /// request at most (see [`BreakerEvent::refuses_until`]).
    fn changed(&self, upstream: &Arc<str>, change: Option<Change>, refusing: Duration) {
        let Some(Change { from, to }) = change else {
            return;
        };
        let (at, mono) = (SystemTime::now(), Instant::now());
        self.metrics.set_state(upstream, to);
        self.metrics.transition(upstream, to);
        match to {
            BreakerState::Open => tracing::warn!(
                target: "idgate::breaker",
                upstream = %upstream, from = from.as_str(), to = to.as_str(),
                "circuit breaker opened: requests to the upstream are refused"
            ),
            _ => tracing::info!(
                target: "idgate::breaker",
                upstream = %upstream, from = from.as_str(), to = to.as_str(),
                "circuit breaker changed"
            ),
        }
        // No subscriber is not an error.
        let _ = self.events.send(BreakerEvent {
            upstream: upstream.clone(),
            from,
            to,
            at,
            refuses_until: (to != BreakerState::Closed)
                .then(|| mono.checked_add(refusing))
                .flatten(),
            dropped: false,
        });
    }

    /// Announces a probe let through a breaker already half-open (no change of state):
    /// every other request is refused again until it ends, at most `bound` from now.
    fn probing(&self, upstream: &Arc<str>, bound: Duration) {
        let (at, mono) = (SystemTime::now(), Instant::now());
        tracing::debug!(
            target: "idgate::breaker",
            upstream = %upstream,
            "circuit breaker half-open: another probe let through"
        );
        // No subscriber is not an error.
        let _ = self.events.send(BreakerEvent {
            upstream: upstream.clone(),
            from: BreakerState::HalfOpen,
            to: BreakerState::HalfOpen,
            at,
            refuses_until: mono.checked_add(bound),
            dropped: false,
        });
    }

    /// Counts a request's first attempt against `upstream`'s retry budget.
    pub(crate) fn count_request(&self, upstream: &Upstream, cfg: &RetryBudgetConfig) {
        let state = self.state(&upstream.name);
        let now = Instant::now();
        lock(&state.budget)
            .get_or_insert_with(|| RetryBudget::new(now, cfg))
            .request(now, cfg);
    }

    /// Takes a retry from `upstream`'s budget; counts it, or counts the budget's refusal.
    pub(crate) fn take_retry(
        &self,
        upstream: &Upstream,
        cfg: &RetryBudgetConfig,
        reason: &'static str,
    ) -> bool {
        let state = self.state(&upstream.name);
        let now = Instant::now();
        let granted = lock(&state.budget)
            .get_or_insert_with(|| RetryBudget::new(now, cfg))
            .try_retry(now, cfg);
        if state.detached {
            // No series for an upstream the configuration no longer has.
        } else if granted {
            self.metrics.retried(&state.name, reason);
        } else {
            self.metrics.budget_exhausted(&state.name);
        }
        granted
    }
}

#[cfg(test)]
mod tests;

/// Hands every breaker opening, probe, closing and dropping to incident detection (its
/// `breaker_open` rule), until the registry is gone. Each opening and probe says until when
/// the breaker refuses every request at the latest, and the rule stops firing then unless
/// a request moves the breaker on: an opening is followed by a probe only if a request
/// comes, and a probe by an opening or a closing when it ends.
pub(crate) async fn feed_incidents(
    mut events: broadcast::Receiver<BreakerEvent>,
    feed: Arc<idgate_incidents::Feed>,
) {
    use idgate_incidents::BreakerEvent as Incident;
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            // Missed events (a burst past the channel's bound): the next ones still count.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let upstream = event.upstream.to_string();
        // A time past what the clock counts (`None`): refusing until it changes again.
        let until = event.refuses_until;
        match event.to {
            BreakerState::Open => feed.breaker(Incident::Opened { upstream, until }),
            BreakerState::HalfOpen => feed.breaker(Incident::HalfOpen { upstream, until }),
            BreakerState::Closed if event.dropped => feed.breaker(Incident::Dropped { upstream }),
            BreakerState::Closed => feed.breaker(Incident::Closed { upstream }),
        }
    }
}
