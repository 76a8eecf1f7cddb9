//! The seed of the request ID generator ([`crate::service::RequestIds`]): a per-process
//! prefix, the counter's first value and a key, from the system's random source, so IDs are
//! unique and cannot be guessed across restarts.
//!
//! An ID's second half is the counter passed through a keyed permutation ([`Permutation`]):
//! still unique within the process (a permutation never maps two counts to one value), but
//! two IDs a caller holds no longer tell it how many requests, its own or other callers',
//! the gateway served between them.
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
    /// The key of the permutation that hides the counter.
    pub key: [u64; 2],
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
    let mut bytes = [0u8; 32];
    match source.fill(&mut bytes) {
        Ok(()) => {
            let word = |i: usize| {
                let mut w = [0u8; 8];
                w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
                u64::from_le_bytes(w)
            };
            Seed {
                prefix: word(0),
                counter: word(1),
                key: [word(2), word(3)],
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
        // Not from the prefix, which every id shows (a key made from it could be made by a
        // caller too): the standard library's hash keys, drawn from the system once per
        // thread and already used by every map of the process.
        key: {
            use std::hash::BuildHasher as _;
            let keys = std::hash::RandomState::new();
            [keys.hash_one((n, nanos)), keys.hash_one((pid, n))]
        },
        from_random: false,
    }
}

/// A keyed permutation of 64-bit words: a four-round Feistel network on the two 32-bit
/// halves (Luby-Rackoff), each round's function SipHash-1-3 over the key, the round and the
/// half. Invertible by construction, so distinct counts give distinct outputs; without the
/// key, consecutive counts give unrelated outputs.
#[derive(Clone)]
pub struct Permutation {
    /// SipHash's state with the key already read: each round goes on from a copy of it.
    keyed: Sip13,
}

impl std::fmt::Debug for Permutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permutation { key: <hidden> }")
    }
}

impl Permutation {
    const ROUNDS: u8 = 4;

    pub fn new(key: [u64; 2]) -> Self {
        // Keyed by what it reads first: the key's 16 bytes before the input.
        let mut keyed = Sip13::new();
        keyed.compress(le_word(key[0].to_ne_bytes()));
        keyed.compress(le_word(key[1].to_ne_bytes()));
        Self { keyed }
    }

    /// SipHash-1-3 of the key's 16 bytes, the round's byte and the half's 4: the last 5 of
    /// the 21 bytes make the final block, with the length in its top byte.
    fn round(&self, round: u8, half: u32) -> u32 {
        let [a, b, c, d] = half.to_ne_bytes();
        let last = le_word([round, a, b, c, d, 0, 0, 0]) | (21 << 56);
        let mut h = self.keyed.clone();
        h.compress(last);
        h.finish() as u32
    }

    pub fn apply(&self, word: u64) -> u64 {
        let (mut left, mut right) = ((word >> 32) as u32, word as u32);
        for round in 0..Self::ROUNDS {
            (left, right) = (right, left ^ self.round(round, right));
        }
        (u64::from(left) << 32) | u64::from(right)
    }

    #[cfg(test)]
    fn invert(&self, word: u64) -> u64 {
        let (mut left, mut right) = ((word >> 32) as u32, word as u32);
        for round in (0..Self::ROUNDS).rev() {
            (left, right) = (right ^ self.round(round, left), left);
        }
        (u64::from(left) << 32) | u64::from(right)
    }
}

/// Eight bytes as SipHash reads a word: little-endian.
fn le_word(bytes: [u8; 8]) -> u64 {
    u64::from_le_bytes(bytes)
}

/// SipHash-1-3 (Aumasson and Bernstein; one round a word, three to finish) with the keys 0
/// and 0, read a whole word at a time: the hash the standard library's `DefaultHasher` makes
/// of the same bytes, without its buffer for partial words and its per-write bookkeeping
/// (a round of the permutation cost about 200 instructions through it).
#[derive(Clone)]
struct Sip13([u64; 4]);

impl Sip13 {
    fn new() -> Self {
        Self([
            0x736f_6d65_7073_6575,
            0x646f_7261_6e64_6f6d,
            0x6c79_6765_6e65_7261,
            0x7465_6462_7974_6573,
        ])
    }

    fn sip_round(&mut self) {
        let [v0, v1, v2, v3] = &mut self.0;
        *v0 = v0.wrapping_add(*v1);
        *v1 = v1.rotate_left(13) ^ *v0;
        *v0 = v0.rotate_left(32);
        *v2 = v2.wrapping_add(*v3);
        *v3 = v3.rotate_left(16) ^ *v2;
        *v0 = v0.wrapping_add(*v3);
        *v3 = v3.rotate_left(21) ^ *v0;
        *v2 = v2.wrapping_add(*v1);
        *v1 = v1.rotate_left(17) ^ *v2;
        *v2 = v2.rotate_left(32);
    }

    fn compress(&mut self, m: u64) {
        self.0[3] ^= m;
        self.sip_round();
        self.0[0] ^= m;
    }

    fn finish(mut self) -> u64 {
        self.0[2] ^= 0xff;
        for _ in 0..3 {
            self.sip_round();
        }
        let [v0, v1, v2, v3] = self.0;
        v0 ^ v1 ^ v2 ^ v3
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
        assert_eq!(s.key, [0x1111_1111_1111_1111; 2]);
    }

    #[test]
    fn the_permutation_is_invertible_and_depends_on_its_key() {
        let p = Permutation::new([1, 2]);
        let q = Permutation::new([1, 3]);
        for w in [0, 1, 2, u64::MAX, 0x8000_0000_0000_0000, 0xdead_beef] {
            assert_eq!(p.invert(p.apply(w)), w);
        }
        let outputs: HashSet<u64> = (0..10_000u64).map(|w| p.apply(w)).collect();
        assert_eq!(outputs.len(), 10_000);
        assert!((0..100u64).filter(|&w| p.apply(w) == q.apply(w)).count() < 2);
    }

    #[test]
    fn a_round_hashes_what_the_standard_siphash_makes_of_the_key_round_and_half() {
        use std::hash::Hasher;
        let mut z = 0x0123_4567_89ab_cdefu64;
        for i in 0..2_000u32 {
            z = mix(z.wrapping_add(u64::from(i)));
            let key = [z, mix(z ^ 0x5555)];
            let p = Permutation::new(key);
            let round = (i % 4) as u8;
            let half = match i % 3 {
                0 => z as u32,
                1 => u32::MAX - i,
                _ => i,
            };
            let mut whole = std::hash::DefaultHasher::new();
            whole.write_u64(key[0]);
            whole.write_u64(key[1]);
            whole.write_u8(round);
            whole.write_u32(half);
            assert_eq!(p.round(round, half), whole.finish() as u32);
        }
    }

    #[test]
    fn consecutive_request_ids_do_not_reveal_how_many_requests_came_between() {
        let ids = RequestIds::with_source(&SystemRandom);
        let tails: Vec<u64> = (0..256)
            .map(|_| {
                let id = ids.next();
                let tail = std::str::from_utf8(&id.as_bytes()[16..]).unwrap_or_default();
                u64::from_str_radix(tail, 16).unwrap_or_default()
            })
            .collect();
        // With a bare counter every difference would be 1; a permutation's outputs differ
        // by about half their bits, and never by one.
        for pair in tails.windows(2) {
            assert_ne!(pair[1].wrapping_sub(pair[0]), 1, "ids count up");
        }
        let mean_bits = tails
            .windows(2)
            .map(|p| u64::from((p[0] ^ p[1]).count_ones()))
            .sum::<u64>()
            / 255;
        assert!(
            (24..=40).contains(&mean_bits),
            "{mean_bits} bits differ on average"
        );
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
    fn the_fallback_key_cannot_be_made_from_the_prefix_an_id_shows() {
        for _ in 0..100 {
            let s = seed(&Failing);
            // What a key derived from the prefix alone would be, as anyone could compute it.
            let derived = [
                mix(s.prefix ^ 0x6a09_e667_f3bc_c908),
                mix(s.prefix ^ 0xbb67_ae85_84ca_a73b),
            ];
            assert_ne!(s.key, derived);
            assert_ne!(s.key[0], s.key[1]);
        }
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
