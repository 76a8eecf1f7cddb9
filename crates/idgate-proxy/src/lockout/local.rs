//! This process's own count of failed authentications, kept beside the shared one.
//!
//! The shared count (in the state backend) is read before a credential is judged and written
//! after it, with awaits in between: guesses sent at once all pass the read before the first
//! of their failures is written, so the shared count alone would judge as many guesses as a
//! caller can send at once. This count is taken synchronously, as each credential is
//! judged, with no await between the judging and the counting: within one process at most
//! `max_failures` wrong guesses of one subject are answered before the subject is held, and
//! every later request of it gets `429` whatever its credential, so that a guess made then
//! tells nothing, right or wrong. The shared count still decides across replicas; a burst
//! spread over N replicas is judged at most N × `max_failures` times before the shared
//! lockout lands.
//!
//! Bounded: at most [`CAPACITY`] subjects, each under a keyed hash of its name (the key made
//! at random when the process starts). A subject past the capacity is left to the shared
//! count alone.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use idgate_config::{LockoutBy, LockoutConfig};

/// The most subjects with failures or a hold at once.
pub(crate) const CAPACITY: usize = 65_536;

/// How often, at most, expired entries are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub(crate) struct LocalFailures {
    hasher: RandomState,
    table: Mutex<Table>,
    /// Whether a subject may be held: while none is, a request that authenticated does not
    /// look at the table (a gateway with failures now and then, but no subject held, pays
    /// nothing on its other requests). Set when a hold starts, cleared by a sweep that finds
    /// none left.
    holding: AtomicBool,
}

#[derive(Debug, Default)]
struct Table {
    tallies: HashMap<u64, Tally>,
    next_sweep: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Tally {
    /// Failures in the window that ends at `window_ends`.
    failures: u32,
    window_ends: Instant,
    held_until: Option<Instant>,
}

impl Tally {
    fn held(&self, now: Instant) -> Option<Duration> {
        self.held_until
            .and_then(|until| until.checked_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    fn expired(&self, now: Instant) -> bool {
        self.window_ends <= now && self.held(now).is_none()
    }
}

impl LocalFailures {
    /// The entry's key of a subject.
    pub(crate) fn key(&self, by: LockoutBy, subject: &str) -> u64 {
        self.hasher.hash_one((by.as_str(), subject))
    }

    /// Whether no subject is held here (a request whose credential passed has nothing to
    /// look up).
    pub(crate) fn holds_none(&self) -> bool {
        !self.holding.load(Ordering::Acquire)
    }

    /// Settles one judged credential of the subject `key` at `now`: how much longer the
    /// subject is held, when it is (the request is then refused, whatever its credential).
    /// Otherwise a wrong credential (`failed`) is counted, and the subject is held for
    /// `cooldown` once it has `max_failures` within `window`; that failure itself is still
    /// answered as one.
    pub(crate) fn settle(
        &self,
        key: u64,
        failed: bool,
        cfg: &LockoutConfig,
        now: Instant,
    ) -> Option<Duration> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if table.next_sweep.is_none_or(|at| at <= now) {
            table.tallies.retain(|_, t| !t.expired(now));
            table.next_sweep = Some(now + SWEEP_EVERY);
            let holding = table.tallies.values().any(|t| t.held(now).is_some());
            self.holding.store(holding, Ordering::Release);
        }
        if let Some(left) = table.tallies.get(&key).and_then(|t| t.held(now)) {
            return Some(left);
        }
        if failed && (table.tallies.len() < CAPACITY || table.tallies.contains_key(&key)) {
            let tally = table.tallies.entry(key).or_insert(Tally {
                failures: 0,
                window_ends: now,
                held_until: None,
            });
            if tally.window_ends <= now {
                // A fixed window from the first failure, as the shared count's.
                tally.failures = 0;
                tally.window_ends = now + cfg.window;
            }
            tally.failures = tally.failures.saturating_add(1);
            if tally.failures >= cfg.max_failures {
                // The failures start again from zero once the cool-down is over.
                tally.held_until = Some(now + cfg.cooldown);
                tally.failures = 0;
                tally.window_ends = now;
                self.holding.store(true, Ordering::Release);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_failures: u32) -> LockoutConfig {
        LockoutConfig {
            max_failures,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(120),
            by: vec![LockoutBy::SourceIp],
        }
    }

    #[test]
    fn a_subject_is_held_after_max_failures_and_whatever_its_next_credential() {
        let local = LocalFailures::default();
        let cfg = cfg(3);
        let now = Instant::now();
        let key = local.key(LockoutBy::SourceIp, "192.0.2.7");
        assert!(local.holds_none());
        for _ in 0..2 {
            assert_eq!(local.settle(key, true, &cfg, now), None, "still answered");
        }
        assert!(local.holds_none(), "failures alone hold nothing");
        assert_eq!(
            local.settle(key, true, &cfg, now),
            None,
            "the last one answered"
        );
        assert!(!local.holds_none());
        // Held: a right credential gets the same answer as a wrong one.
        assert_eq!(
            local.settle(key, false, &cfg, now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            local.settle(key, true, &cfg, now + Duration::from_secs(20)),
            Some(Duration::from_secs(100))
        );
        // Another subject is not.
        let other = local.key(LockoutBy::SourceIp, "192.0.2.8");
        assert_eq!(local.settle(other, false, &cfg, now), None);
        assert_ne!(key, local.key(LockoutBy::ApiKeyId, "192.0.2.7"));
        // Over after the cool-down, with the count from zero, and forgotten.
        let later = now + Duration::from_secs(121);
        assert_eq!(local.settle(key, false, &cfg, later), None);
        assert!(local.holds_none(), "the expired hold was swept");
        assert_eq!(local.settle(key, true, &cfg, later), None);
        assert_eq!(local.settle(key, false, &cfg, later), None);
    }

    #[test]
    fn failures_of_an_ended_window_do_not_count() {
        let local = LocalFailures::default();
        let cfg = cfg(2);
        let now = Instant::now();
        let key = local.key(LockoutBy::ApiKeyId, "aaaabbbbccccdddd");
        assert_eq!(local.settle(key, true, &cfg, now), None);
        let next_window = now + Duration::from_secs(61);
        assert_eq!(local.settle(key, true, &cfg, next_window), None);
        assert_eq!(
            local.settle(key, false, &cfg, next_window),
            None,
            "one failure"
        );
        assert_eq!(local.settle(key, true, &cfg, next_window), None);
        assert!(local.settle(key, false, &cfg, next_window).is_some());
    }

    #[test]
    fn subjects_past_the_capacity_are_left_to_the_shared_count() {
        let local = LocalFailures::default();
        let cfg = cfg(1);
        let now = Instant::now();
        for i in 0..CAPACITY {
            local.settle(
                local.key(LockoutBy::SourceIp, &i.to_string()),
                true,
                &cfg,
                now,
            );
        }
        let late = local.key(LockoutBy::SourceIp, "late");
        assert_eq!(local.settle(late, true, &cfg, now), None);
        assert_eq!(local.settle(late, false, &cfg, now), None, "not tracked");
        // Those tracked are held still.
        let first = local.key(LockoutBy::SourceIp, "0");
        assert!(local.settle(first, false, &cfg, now).is_some());
        // Once their holds are over, room again.
        let later = now + Duration::from_secs(121);
        assert_eq!(local.settle(late, true, &cfg, later), None);
        assert!(local.settle(late, false, &cfg, later).is_some());
    }
}
