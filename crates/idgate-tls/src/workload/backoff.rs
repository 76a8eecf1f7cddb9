//! Exponential backoff between attempts to reach the agent: 0.1 s doubling to 5 s, each
//! delay shortened by up to a fifth at random so that gateways restarted together do not
//! knock on the agent in step.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(100);
const MOST: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct Backoff {
    attempts: u32,
    seed: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self {
            attempts: 0,
            seed: u64::from(nanos) | 1,
        }
    }
}

impl Backoff {
    /// Failed attempts since the last success.
    pub(super) fn attempts(&self) -> u32 {
        self.attempts
    }

    pub(super) fn reset(&mut self) {
        self.attempts = 0;
    }

    pub(super) fn next_delay(&mut self) -> Duration {
        let full = FIRST.saturating_mul(1 << self.attempts.min(16)).min(MOST);
        self.attempts = self.attempts.saturating_add(1);
        // xorshift: cheap, and good enough to spread retries.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fifth = full / 5;
        let cut = fifth.mul_f64((self.seed % 1000) as f64 / 1000.0);
        full - cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_a_tenth_of_a_second_up_to_five_seconds_and_reset() {
        let mut b = Backoff::default();
        let delays: Vec<Duration> = (0..10).map(|_| b.next_delay()).collect();
        assert!(
            delays[0] <= FIRST && delays[0] >= FIRST * 4 / 5,
            "{delays:?}"
        );
        assert!(
            delays[1] > delays[0] / 2 && delays[1] <= FIRST * 2,
            "{delays:?}"
        );
        assert!(delays.iter().all(|d| *d <= MOST), "{delays:?}");
        assert!(delays[9] >= MOST * 4 / 5, "{delays:?}");
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert!(b.next_delay() <= FIRST);
    }
}
