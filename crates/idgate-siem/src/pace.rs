//! How often a sink retries and speaks: capped exponential backoff with jitter (so that
//! gateways which lost one collector at the same moment do not all come back to it at the
//! same moment), and throttled warnings (so that an outage does not flood the log).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::metrics::SinkCounters;

pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    /// xorshift64 state: jitter needs spread, not secrecy.
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let seed = clock ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
        Self {
            min,
            max: max.max(min),
            next: min,
            rng: seed | 1,
        }
    }

    /// The wait before the next attempt: between half and all of the current step, which
    /// then doubles up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = step / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
        let extra = if spread == 0 {
            0
        } else {
            self.rng % (spread + 1)
        };
        half + Duration::from_micros(extra)
    }

    /// After a success: the next failure waits the shortest step again.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Lets a repeated warning through at most once per period.
pub(crate) struct Throttle {
    period: Duration,
    last: Option<Instant>,
    /// Occurrences held back since the last one let through.
    pub(crate) suppressed: u64,
}

impl Throttle {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log this occurrence; when not, it is counted in `suppressed`.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.period)
        {
            self.suppressed += 1;
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// Logs a sink's drops, at most once per period, with how many since the last report.
pub(crate) struct DropLog {
    reported: u64,
    throttle: Throttle,
}

impl DropLog {
    pub(crate) fn new() -> Self {
        Self {
            reported: 0,
            throttle: Throttle::new(Duration::from_secs(10)),
        }
    }

    pub(crate) fn report(&mut self, sink: &str, counters: &SinkCounters) {
        let dropped = counters.dropped.get();
        if dropped > self.reported && self.throttle.allow() {
            tracing::warn!(
                sink,
                dropped = dropped - self.reported,
                dropped_total = dropped,
                "SIEM sink buffer full: audit events dropped"
            );
            self.reported = dropped;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        let mut b = Backoff::new(min, max);
        let delays: Vec<_> = (0..8).map(|_| b.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let step = (min * 2u32.pow(i as u32)).min(max);
            assert!(*d >= step / 2 && *d <= step, "{i}: {d:?} for step {step:?}");
        }
        assert!(delays[7] >= max / 2);
        b.reset();
        assert!(b.next_delay() <= min);
    }
}
