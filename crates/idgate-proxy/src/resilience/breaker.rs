//! The circuit breaker's state machine, one per upstream: closed → open on too many
//! failures (in a row, or as a share of a sliding window) → half-open after the open time,
//! letting a few probes through → closed when they succeed, open again when one fails.
//! Times are passed in, so tests drive it with their own clock; the thresholds are passed
//! in too, so a reload that changes them applies them to the state as it is.

use std::time::{Duration, Instant};

use idgate_config::BreakerConfig;

use super::window::Window;

/// What a breaker is doing, as the metrics and events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// How a request let through went, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Ended for a reason that says nothing of the upstream (the caller's body failed, the
    /// caller went away): only frees a probe's place.
    Neutral,
}

/// How a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Normal,
    /// One of the probes of a half-open round: the round is the breaker's opening it
    /// follows, so that a probe that outlives its round decides nothing in a later one.
    Probe {
        opening: u64,
    },
}

/// A change of state, with the time it took place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    state: BreakerState,
    consecutive: u32,
    /// Requests (count 0) and failures (count 1) while closed.
    window: Window,
    open_until: Instant,
    /// Counts the times the breaker opened: each half-open round is that of one opening.
    opening: u64,
    /// The probes of the current round.
    probes_in_flight: u32,
    probe_successes: u32,
    /// When a probe of the current round was last announced ([`Self::announce_probe`]).
    probe_announced: Option<Instant>,
}

/// A probe let through within this time of the last one announced is not announced again.
const PROBE_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(1);

/// How long a refused caller should wait: at least a second, as `Retry-After` counts.
fn at_least_a_second(d: Duration) -> Duration {
    d.max(Duration::from_secs(1))
}

impl Breaker {
    pub(crate) fn new(now: Instant, cfg: &BreakerConfig) -> Self {
        Self {
            state: BreakerState::Closed,
            consecutive: 0,
            window: Window::new(now, cfg.window),
            open_until: now,
            opening: 0,
            probes_in_flight: 0,
            probe_successes: 0,
            probe_announced: None,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// Lets a request through, or says how long until the breaker may let one through.
    /// Moves an open breaker whose time is up to half-open.
    pub(crate) fn admit(
        &mut self,
        now: Instant,
        cfg: &BreakerConfig,
    ) -> (Result<Admission, Duration>, Option<Change>) {
        self.window.set_span(cfg.window);
        let mut change = None;
        if self.state == BreakerState::Open {
            if now < self.open_until {
                return (Err(at_least_a_second(self.open_until - now)), None);
            }
            change = self.to(BreakerState::HalfOpen);
            self.probes_in_flight = 0;
            self.probe_successes = 0;
            self.probe_announced = None;
        }
        let admitted = match self.state {
            BreakerState::Closed => Ok(Admission::Normal),
            BreakerState::HalfOpen if self.probes_in_flight < cfg.half_open_probes => {
                self.probes_in_flight += 1;
                Ok(Admission::Probe {
                    opening: self.opening,
                })
            }
            // The probes are out: their answers decide soon.
            _ => Err(at_least_a_second(Duration::ZERO)),
        };
        (admitted, change)
    }

    /// Whether a probe [`Self::admit`] just let through is to be announced: while a probe
    /// is out every other request is refused, until it ends. The round's first is announced
    /// (with the change to half-open); a later one, let through once a probe before it ended
    /// saying nothing of the upstream (its caller went away) and freed its place, is
    /// announced again, but at most once per [`PROBE_ANNOUNCE_INTERVAL`]: a caller that
    /// comes and goes cannot make an announcement of every request.
    pub(crate) fn announce_probe(&mut self, now: Instant) -> bool {
        if self
            .probe_announced
            .is_some_and(|at| now.saturating_duration_since(at) < PROBE_ANNOUNCE_INTERVAL)
        {
            return false;
        }
        self.probe_announced = Some(now);
        true
    }

    /// How long a request now would wait, without letting one through: `None` when one
    /// would be let through.
    pub(crate) fn refusal(&self, now: Instant, cfg: &BreakerConfig) -> Option<Duration> {
        match self.state {
            BreakerState::Open if now < self.open_until => {
                Some(at_least_a_second(self.open_until - now))
            }
            BreakerState::HalfOpen if self.probes_in_flight >= cfg.half_open_probes => {
                Some(at_least_a_second(Duration::ZERO))
            }
            _ => None,
        }
    }

    /// Records how a request let through by [`Self::admit`] went. A probe of an earlier
    /// round (the breaker opened again since it was let through) is neither counted nor
    /// frees a place: the round it belonged to is over.
    pub(crate) fn record(
        &mut self,
        now: Instant,
        cfg: &BreakerConfig,
        admission: Admission,
        outcome: Outcome,
    ) -> Option<Change> {
        match admission {
            Admission::Probe { opening } if opening != self.opening => return None,
            Admission::Probe { .. } => {
                self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
            }
            Admission::Normal => {}
        }
        match (self.state, admission, outcome) {
            (_, _, Outcome::Neutral) => None,
            (BreakerState::Closed, _, Outcome::Success) => {
                self.consecutive = 0;
                self.window.add(now, 0, 1);
                None
            }
            (BreakerState::Closed, _, Outcome::Failure) => {
                self.consecutive += 1;
                self.window.add(now, 0, 1);
                self.window.add(now, 1, 1);
                let [requests, failures] = self.window.totals(now);
                let ratio_tripped = requests >= u64::from(cfg.min_requests)
                    && failures as f64 >= cfg.failure_ratio * requests as f64;
                (self.consecutive >= cfg.consecutive_failures || ratio_tripped)
                    .then(|| self.open(now, cfg))
                    .flatten()
            }
            (BreakerState::HalfOpen, Admission::Probe { .. }, Outcome::Failure) => {
                self.open(now, cfg)
            }
            (BreakerState::HalfOpen, Admission::Probe { .. }, Outcome::Success) => {
                self.probe_successes += 1;
                if self.probe_successes >= cfg.half_open_probes {
                    self.consecutive = 0;
                    self.window.clear();
                    self.to(BreakerState::Closed)
                } else {
                    None
                }
            }
            // Answers to requests let through before the breaker opened (or while it was
            // closed, before it went half-open) say nothing of the upstream now.
            _ => None,
        }
    }

    fn open(&mut self, now: Instant, cfg: &BreakerConfig) -> Option<Change> {
        self.open_until = now + cfg.open_duration;
        self.opening += 1;
        self.to(BreakerState::Open)
    }

    fn to(&mut self, to: BreakerState) -> Option<Change> {
        let from = std::mem::replace(&mut self.state, to);
        (from != to).then_some(Change { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_requests: 10,
            open_duration: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn run(b: &mut Breaker, now: Instant, c: &BreakerConfig, o: Outcome) -> Option<Change> {
        let admission = b.admit(now, c).0.unwrap();
        b.record(now, c, admission, o)
    }

    #[test]
    fn consecutive_failures_open_then_half_open_probes_close() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0, &c);
        assert_eq!(run(&mut b, t0, &c, Outcome::Failure), None);
        assert_eq!(run(&mut b, t0, &c, Outcome::Success), None);
        assert_eq!(run(&mut b, t0, &c, Outcome::Failure), None);
        assert_eq!(run(&mut b, t0, &c, Outcome::Failure), None);
        let opened = run(&mut b, t0, &c, Outcome::Failure);
        assert_eq!(opened.map(|c| c.to), Some(BreakerState::Open));

        // Open: refused with the time left, rounded up to a second at least.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.admit(t1, &c).0, Err(Duration::from_secs(3)));

        // Half-open after the open time: two probes, the third refused.
        let t2 = t0 + Duration::from_secs(5);
        let (p1, change) = b.admit(t2, &c);
        assert_eq!(change.map(|c| c.to), Some(BreakerState::HalfOpen));
        let probe = Admission::Probe { opening: 1 };
        assert_eq!(p1, Ok(probe));
        assert_eq!(b.admit(t2, &c).0, Ok(probe));
        assert!(b.admit(t2, &c).0.is_err());
        assert_eq!(b.record(t2, &c, probe, Outcome::Success), None);
        let closed = b.record(t2, &c, probe, Outcome::Success);
        assert_eq!(closed.map(|c| c.to), Some(BreakerState::Closed));
        assert_eq!(b.admit(t2, &c).0, Ok(Admission::Normal));
    }

    #[test]
    fn a_failed_probe_opens_again_for_the_whole_open_time() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0, &c);
        for _ in 0..3 {
            run(&mut b, t0, &c, Outcome::Failure);
        }
        let t1 = t0 + Duration::from_secs(6);
        let reopened = run(&mut b, t1, &c, Outcome::Failure);
        assert_eq!(
            reopened.map(|c| (c.from, c.to)),
            Some((BreakerState::HalfOpen, BreakerState::Open))
        );
        assert_eq!(
            b.admit(t1 + Duration::from_secs(1), &c).0,
            Err(Duration::from_secs(4))
        );
    }

    #[test]
    fn a_neutral_probe_frees_its_place() {
        let c = BreakerConfig {
            half_open_probes: 1,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut b = Breaker::new(t0, &c);
        for _ in 0..3 {
            run(&mut b, t0, &c, Outcome::Failure);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(run(&mut b, t1, &c, Outcome::Neutral), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            run(&mut b, t1, &c, Outcome::Success).map(|c| c.to),
            Some(BreakerState::Closed)
        );
    }

    #[test]
    fn a_probe_after_one_that_said_nothing_is_announced_again_at_most_once_a_second() {
        let c = BreakerConfig {
            half_open_probes: 1,
            open_duration: Duration::from_millis(100),
            ..cfg()
        };
        let t0 = Instant::now();
        let mut b = Breaker::new(t0, &c);
        for _ in 0..3 {
            run(&mut b, t0, &c, Outcome::Failure);
        }
        let t1 = t0 + Duration::from_millis(100);
        let (first, change) = b.admit(t1, &c);
        assert_eq!(change.map(|c| c.to), Some(BreakerState::HalfOpen));
        assert!(b.announce_probe(t1), "the round's first probe");
        assert_eq!(b.record(t1, &c, first.unwrap(), Outcome::Neutral), None);

        // Its caller went away: the next request is another probe, within a second of the
        // first one not announced again ...
        let t2 = t1 + Duration::from_millis(300);
        let (second, change) = b.admit(t2, &c);
        assert_eq!(change, None);
        assert!(!b.announce_probe(t2));
        assert_eq!(b.record(t2, &c, second.unwrap(), Outcome::Neutral), None);
        // ... and a second after it, announced.
        let t3 = t1 + Duration::from_secs(1);
        let third = b.admit(t3, &c).0.unwrap();
        assert!(b.announce_probe(t3));
        assert_eq!(
            b.record(t3, &c, third, Outcome::Failure).map(|c| c.to),
            Some(BreakerState::Open)
        );
        // A new round's first probe is announced however soon it comes.
        let t4 = t3 + Duration::from_millis(100);
        let (_, change) = b.admit(t4, &c);
        assert_eq!(change.map(|c| c.to), Some(BreakerState::HalfOpen));
        assert!(b.announce_probe(t4));
    }

    #[test]
    fn a_probe_of_an_earlier_half_open_round_neither_counts_nor_frees_a_place() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0, &c);
        for _ in 0..3 {
            run(&mut b, t0, &c, Outcome::Failure);
        }
        // The first round: two probes; one fails and opens the breaker again while the
        // other is still out.
        let t1 = t0 + Duration::from_secs(5);
        let late = b.admit(t1, &c).0.unwrap();
        let failed = b.admit(t1, &c).0.unwrap();
        assert_eq!(
            b.record(t1, &c, failed, Outcome::Failure).map(|c| c.to),
            Some(BreakerState::Open)
        );
        // The second round: two probes out, the round full.
        let t2 = t1 + Duration::from_secs(5);
        let (first, change) = b.admit(t2, &c);
        assert_eq!(change.map(|c| c.to), Some(BreakerState::HalfOpen));
        let first = first.unwrap();
        let second = b.admit(t2, &c).0.unwrap();
        assert!(b.admit(t2, &c).0.is_err());
        // The first round's late probe answers: it does not free a place of this round ...
        assert_eq!(b.record(t2, &c, late, Outcome::Success), None);
        assert!(
            b.admit(t2, &c).0.is_err(),
            "a place of this round was freed"
        );
        // ... nor count towards closing it: this round's two successes still take two.
        assert_eq!(b.record(t2, &c, first, Outcome::Success), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.record(t2, &c, second, Outcome::Success).map(|c| c.to),
            Some(BreakerState::Closed)
        );
        // A late probe's failure does not open a closed breaker either.
        assert_eq!(b.record(t2, &c, late, Outcome::Failure), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn the_failure_ratio_opens_only_past_the_minimum_requests() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0, &c);
        // Alternating: never three in a row, half of them failures.
        for i in 0..9 {
            let o = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            assert_eq!(run(&mut b, t0, &c, o), None, "request {i}");
        }
        // The tenth request, a success: 5 of 10 — but a success never opens.
        assert_eq!(run(&mut b, t0, &c, Outcome::Success), None);
        let opened = run(&mut b, t0, &c, Outcome::Failure);
        assert_eq!(opened.map(|c| c.to), Some(BreakerState::Open));
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(t0, &c);
        for i in 0..10 {
            let o = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            run(&mut b, t0, &c, o);
        }
        let later = t0 + Duration::from_secs(11);
        assert_eq!(run(&mut b, later, &c, Outcome::Failure), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn new_thresholds_apply_to_the_state_as_it_is() {
        let c = BreakerConfig {
            consecutive_failures: 5,
            ..cfg()
        };
        let t0 = Instant::now();
        let mut b = Breaker::new(t0, &c);
        run(&mut b, t0, &c, Outcome::Failure);
        run(&mut b, t0, &c, Outcome::Failure);
        let stricter = BreakerConfig {
            consecutive_failures: 2,
            ..cfg()
        };
        // Two failures already counted: the third opens under the reload's lower threshold,
        // where the old one would have waited for five.
        assert_eq!(b.state(), BreakerState::Closed);
        let opened = run(&mut b, t0, &stricter, Outcome::Failure);
        assert_eq!(opened.map(|c| c.to), Some(BreakerState::Open));
    }
}
