//! A sliding window of counts: `BUCKETS` buckets spanning the window, the oldest dropped as
//! time moves on. Times are passed in, so the owner's clock can be a test's.

use std::time::{Duration, Instant};

const BUCKETS: usize = 10;

/// Two counts over a sliding window (for example, requests and failures).
#[derive(Debug, Clone)]
pub(crate) struct Window {
    origin: Instant,
    bucket: Duration,
    /// The bucket number (since `origin`) each slot holds, and its counts.
    slots: [(u64, [u64; 2]); BUCKETS],
}

impl Window {
    pub(crate) fn new(origin: Instant, span: Duration) -> Self {
        Self {
            origin,
            bucket: (span / BUCKETS as u32).max(Duration::from_millis(1)),
            slots: [(0, [0; 2]); BUCKETS],
        }
    }

    /// The window's span; a new span empties it.
    pub(crate) fn set_span(&mut self, span: Duration) {
        let bucket = (span / BUCKETS as u32).max(Duration::from_millis(1));
        if bucket != self.bucket {
            self.bucket = bucket;
            self.clear();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.slots = [(0, [0; 2]); BUCKETS];
    }

    fn number(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        // One more than the bucket index, so that 0 marks an unused slot.
        (since.as_nanos() / self.bucket.as_nanos().max(1)) as u64 + 1
    }

    /// Adds to count `which` (0 or 1) at `now`.
    pub(crate) fn add(&mut self, now: Instant, which: usize, n: u64) {
        let number = self.number(now);
        let slot = &mut self.slots[(number % BUCKETS as u64) as usize];
        if slot.0 != number {
            *slot = (number, [0; 2]);
        }
        if let Some(c) = slot.1.get_mut(which) {
            *c += n;
        }
    }

    /// Both counts over the window ending at `now`.
    pub(crate) fn totals(&self, now: Instant) -> [u64; 2] {
        let number = self.number(now);
        let oldest = number.saturating_sub(BUCKETS as u64 - 1).max(1);
        self.slots
            .iter()
            .filter(|(n, _)| (oldest..=number).contains(n))
            .fold([0, 0], |acc, (_, c)| [acc[0] + c[0], acc[1] + c[1]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_out_of_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(t0, Duration::from_secs(10));
        w.add(t0, 0, 3);
        w.add(t0 + Duration::from_secs(5), 1, 2);
        assert_eq!(w.totals(t0 + Duration::from_secs(5)), [3, 2]);
        assert_eq!(w.totals(t0 + Duration::from_millis(10_500)), [0, 2]);
        assert_eq!(w.totals(t0 + Duration::from_secs(16)), [0, 0]);
    }
}
