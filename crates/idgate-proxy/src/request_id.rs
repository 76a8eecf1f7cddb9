//! The seed of the request ID generator ([`crate::service::RequestIds`]): a per-process
//! prefix and the counter's first value, from the system's random source, so IDs are unique
//! and cannot be guessed across restarts.
//!
//! Should the random source fail (a sandbox without an entropy device, say), the gateway
//! still starts: the seed is made from the clock, the process id and a per-process
//! sequence, which keeps IDs unique though no longer unguessable. The failure is logged once
//! and counted (`idgate_request_id_random_failures_total`).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

/// The random source failed to give bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random source failed")]
pub struct RandomFailed;

/// Where the seed's bytes come from.
pub trait RandomSource {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RandomFailed>;
}

/// The operating system's random source, through `ring`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRandom;

impl RandomSource for SystemRandom {
    fn fill(&self, dest: &mut [u8]) -> Result<(), RandomFailed> {
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), dest)
            .map_err(|_| RandomFailed)
    }
}

/// The start of one generator's IDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed {
    pub prefix: u64,
    pub counter: u64,
    /// False when the random source failed and the seed was made from the clock instead.
    pub from_random: bool,
}

/// How often the random source failed to seed a generator, for the metrics.
static RANDOM_FAILURES: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The process-wide count of random-source failures (a clone shares the count).
pub fn random_failures() -> Counter {
    RANDOM_FAILURES.clone()
}

/// A seed from `source`, or from the clock, the process id and a sequence when it fails.
/// Never fails, never panics.
pub fn seed(source: &dyn RandomSource) -> Seed {
    let mut bytes = [0u8; 16];
    match source.fill(&mut bytes) {
        Ok(()) => {
            let (a, b) = bytes.split_at(8);
            let word = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or_default());
            Seed {
                prefix: word(a),
                counter: word(b),
                from_random: true,
            }
        }
        Err(e) => {
            RANDOM_FAILURES.inc();
            static LOGGED: AtomicBool = AtomicBool::new(false);
            if !LOGGED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %e,
                    "request ids are seeded from the clock and the process id instead: still unique, but guessable"
                );
            }
            fallback()
        }
    }
}

/// A seed no other generator of this process has, and that another process would only
/// share by having the same id at the same nanosecond.
fn fallback() -> Seed {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let pid = u64::from(std::process::id());
    // The clock fills the low bits, the process id the high ones, and the sequence tells
    // apart two seeds of one process made within the clock's resolution. `mix` is a
    // bijection, so distinct inputs stay distinct prefixes.
    let prefix = mix(nanos ^ pid.rotate_left(40) ^ n.rotate_left(20));
    Seed {
        prefix,
        counter: mix(prefix ^ 0x9e37_79b9_7f4a_7c15),
        from_random: false,
    }
}

/// SplitMix64's finalizer: spreads every input bit over the whole word, reversibly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::service::RequestIds;

    struct Failing;

    impl RandomSource for Failing {
        fn fill(&self, _: &mut [u8]) -> Result<(), RandomFailed> {
            Err(RandomFailed)
        }
    }

    struct Fixed(u8);

    impl RandomSource for Fixed {
        fn fill(&self, dest: &mut [u8]) -> Result<(), RandomFailed> {
            dest.fill(self.0);
            Ok(())
        }
    }

    #[test]
    fn a_working_source_seeds_the_generator() {
        let s = seed(&Fixed(0x11));
        assert!(s.from_random);
        assert_eq!(s.prefix, 0x1111_1111_1111_1111);
        assert_eq!(s.counter, 0x1111_1111_1111_1111);
    }

    #[test]
    fn a_failing_source_falls_back_to_distinct_seeds_and_is_counted() {
        let before = random_failures().get();
        let seeds: Vec<Seed> = (0..1000).map(|_| seed(&Failing)).collect();
        assert!(seeds.iter().all(|s| !s.from_random));
        let prefixes: HashSet<u64> = seeds.iter().map(|s| s.prefix).collect();
        assert_eq!(prefixes.len(), seeds.len(), "fallback prefixes repeat");
        // Other tests may fail the source at the same time; this one's are all counted.
        assert!(random_failures().get() >= before + 1000);
    }

    #[test]
    fn request_ids_stay_unique_when_the_random_source_fails() {
        let a = RequestIds::with_source(&Failing);
        let b = RequestIds::with_source(&Failing);
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            for id in [a.next(), b.next()] {
                assert_eq!(id.len(), 32);
                assert!(seen.insert(id), "a request id repeated");
            }
        }
    }
}
