//! Counters with expiry: fixed windows (failed authentications before a lockout, the lockout
//! itself) and GCRA state (rate limits).

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::StoreError;
use crate::types::{CounterKey, duration_micros, from_micros, micros};

/// A fixed window's count after an increment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowCount {
    pub count: u64,
    /// When the window ends and the count starts again from zero.
    pub resets_at: SystemTime,
}

/// A GCRA limit: one request per `emission_interval` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GcraLimit {
    emission_interval: Duration,
    burst: u32,
}

impl GcraLimit {
    /// `count` requests per `period`, with up to `burst` of them at once. Refused when
    /// `count` or `burst` is zero or the rate is finer than one request per microsecond.
    pub fn per(count: u32, period: Duration, burst: u32) -> Result<Self, StoreError> {
        let invalid = |reason| Err(StoreError::InvalidLimit { reason });
        if count == 0 {
            return invalid("the count is zero");
        }
        if burst == 0 {
            return invalid("the burst is zero");
        }
        let emission_interval = period / count;
        if emission_interval < Duration::from_micros(1) {
            return invalid("more than one request per microsecond");
        }
        Ok(Self {
            emission_interval,
            burst,
        })
    }

    pub fn emission_interval(&self) -> Duration {
        self.emission_interval
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }
}

/// How many requests' worth one GCRA check takes: exactly a cost, or as many as the
/// limit has room for up to a most (at least one): the share of a limit a replica leases
/// for the requests it expects (see [`crate::GcraLeases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraTake {
    least: u32,
    most: u32,
}

impl GcraTake {
    /// One request, as most checks take.
    pub const EXACTLY_ONE: Self = Self { least: 1, most: 1 };

    /// All of `cost` or nothing.
    pub fn exactly(cost: u32) -> Self {
        Self {
            least: cost,
            most: cost,
        }
    }

    /// Between one and `most` (one when `most` is zero), as many as there is room for.
    pub fn up_to(most: u32) -> Self {
        Self {
            least: 1,
            most: most.max(1),
        }
    }

    pub fn least(&self) -> u32 {
        self.least
    }

    pub fn most(&self) -> u32 {
        self.most
    }
}

/// The outcome of one GCRA check, with what the `RateLimit` and `Retry-After` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraDecision {
    pub allowed: bool,
    /// How many requests' worth were taken: within the [`GcraTake`] when allowed, zero when
    /// refused.
    pub granted: u32,
    /// Requests that would still be admitted at once after this one.
    pub remaining: u32,
    /// When refused, how long until the same request would be admitted; zero when allowed.
    pub retry_after: Duration,
    /// How long until the limit is wholly replenished.
    pub reset_after: Duration,
}

/// GCRA over the key's theoretical arrival time (`tat`, microseconds; `None` when the key
/// has no live state): takes as many requests' worth as `take` allows and the limit has room
/// for. Returns the decision and, when admitted, the new `tat`, which is also when the key's
/// state expires. Every backend applies exactly this, atomically with the read and the write
/// of `tat` (a Redis backend in one Lua script).
pub(crate) fn gcra(
    tat: Option<u64>,
    limit: &GcraLimit,
    take: GcraTake,
    now: SystemTime,
) -> (GcraDecision, Option<u64>) {
    let now = micros(now);
    let t = duration_micros(limit.emission_interval).max(1);
    let tolerance = t.saturating_mul(u64::from(limit.burst));
    let tat = tat.unwrap_or(now).max(now);
    let ahead = tat - now;
    // Each request moves the arrival time on by `t`, and it may run at most `tolerance`
    // ahead of now.
    let room = tolerance.saturating_sub(ahead) / t;
    let granted = room.min(u64::from(take.most));
    if granted < u64::from(take.least) {
        let needed = ahead.saturating_add(t.saturating_mul(u64::from(take.least)));
        let decision = GcraDecision {
            allowed: false,
            granted: 0,
            remaining: 0,
            retry_after: Duration::from_micros(needed.saturating_sub(tolerance)),
            reset_after: Duration::from_micros(ahead),
        };
        return (decision, None);
    }
    let new_tat = tat.saturating_add(t.saturating_mul(granted));
    let ahead = new_tat - now;
    let remaining = u32::try_from(tolerance.saturating_sub(ahead) / t).unwrap_or(u32::MAX);
    let decision = GcraDecision {
        allowed: true,
        granted: u32::try_from(granted).unwrap_or(u32::MAX),
        remaining,
        retry_after: Duration::ZERO,
        reset_after: Duration::from_micros(ahead),
    };
    (decision, Some(new_tat))
}

pub(crate) fn window_count(count: u64, resets_at: u64) -> WindowCount {
    WindowCount {
        count,
        resets_at: from_micros(resets_at),
    }
}

/// One check of [`Counters::gcra_many`]: the key, its limit and what the check takes.
pub type GcraCheck<'a> = (&'a CounterKey, &'a GcraLimit, GcraTake);

/// Counters that expire, shared by every replica using the same backend.
///
/// Atomicity: each call is one atomic step; concurrent increments of one key from any number
/// of tasks or replicas are never lost, and each caller sees the count its own increment
/// produced. A window key and a GCRA key of the same name are two different values.
pub trait Counters: Send + Sync {
    /// Adds `by` to `key` and returns the new count. A key without a live window starts one
    /// of length `window` at `now`; the count goes back to zero when the window ends (a
    /// fixed window that starts at the first increment).
    fn increment(
        &self,
        key: &CounterKey,
        by: u64,
        window: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<WindowCount, StoreError>> + Send;

    /// The key's live window, if any.
    fn get(
        &self,
        key: &CounterKey,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<WindowCount>, StoreError>> + Send;

    /// Ends the key's window now (a successful login clears its failures); `true` when there
    /// was one.
    fn reset(&self, key: &CounterKey) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// One GCRA check against `limit` (see [`GcraLimit`]) taking what `take` says; the state
    /// is advanced only when the request is admitted.
    fn gcra(
        &self,
        key: &CounterKey,
        limit: &GcraLimit,
        take: GcraTake,
        now: SystemTime,
    ) -> impl Future<Output = Result<GcraDecision, StoreError>> + Send;

    /// Several GCRA checks at `now`, as a request to which several limits apply needs them:
    /// one answer per check, in the order of `checks`. Each limit is decided independently,
    /// as by [`Counters::gcra`]: a limit that admits consumes, even when another one refuses
    /// (so a caller over one limit still uses up the others), and a check that fails (its
    /// Redis Cluster node did not answer) fails alone, the others' decisions standing. Not
    /// atomic across the checks. The default makes the calls one after the other; a
    /// networked backend (Redis) makes them in one round trip.
    fn gcra_many(
        &self,
        checks: &[GcraCheck<'_>],
        now: SystemTime,
    ) -> impl Future<Output = Vec<Result<GcraDecision, StoreError>>> + Send {
        async move {
            let mut out = Vec::with_capacity(checks.len());
            for (key, limit, take) in checks {
                out.push(self.gcra(key, limit, *take, now).await);
            }
            out
        }
    }

    /// Removes expired state (windows and GCRA keys) and returns how many entries went.
    /// Writes already sweep a few as they go; this is for a periodic task. Backends whose
    /// entries expire by themselves (Redis) return 0.
    fn sweep(&self, now: SystemTime) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(us: u64) -> SystemTime {
        from_micros(us)
    }

    #[test]
    fn gcra_admits_the_burst_then_one_per_interval() {
        // 10 a second, 3 at once: one every 100 ms.
        let limit = GcraLimit::per(10, Duration::from_secs(1), 3).unwrap();
        let now = 1_000_000_000;
        let mut tat = None;
        for remaining in [2, 1, 0] {
            let (d, next) = gcra(tat, &limit, GcraTake::exactly(1), at(now));
            assert!(d.allowed);
            assert_eq!(d.remaining, remaining);
            tat = next;
        }
        let (d, next) = gcra(tat, &limit, GcraTake::exactly(1), at(now));
        assert!(!d.allowed);
        assert_eq!(next, None, "a refusal does not advance the state");
        assert_eq!(d.retry_after, Duration::from_millis(100));
        assert_eq!(d.reset_after, Duration::from_millis(300));
        let (d, _) = gcra(tat, &limit, GcraTake::exactly(1), at(now + 100_000));
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        // Idle for long enough, the whole burst is back.
        let (d, _) = gcra(tat, &limit, GcraTake::exactly(1), at(now + 10_000_000));
        assert_eq!((d.allowed, d.remaining), (true, 2));
    }

    #[test]
    fn gcra_costs_and_limits_are_checked() {
        let limit = GcraLimit::per(1, Duration::from_secs(1), 5).unwrap();
        let (d, tat) = gcra(None, &limit, GcraTake::exactly(5), at(0));
        assert_eq!((d.allowed, d.remaining), (true, 0));
        let (d, _) = gcra(tat, &limit, GcraTake::exactly(2), at(1_000_000));
        assert!(!d.allowed, "two more after one second is one too many");
        assert_eq!(d.retry_after, Duration::from_secs(1));
        assert!(GcraLimit::per(0, Duration::from_secs(1), 1).is_err());
        assert!(GcraLimit::per(1, Duration::from_secs(1), 0).is_err());
        assert!(GcraLimit::per(2_000_000, Duration::from_secs(1), 1).is_err());
    }

    #[test]
    fn gcra_up_to_takes_what_there_is_room_for_and_at_least_one() {
        // 10 a second, 10 at once.
        let limit = GcraLimit::per(10, Duration::from_secs(1), 10).unwrap();
        let (d, tat) = gcra(None, &limit, GcraTake::up_to(4), at(0));
        assert_eq!((d.allowed, d.granted, d.remaining), (true, 4, 6));
        let (d, tat) = gcra(tat, &limit, GcraTake::up_to(8), at(0));
        assert_eq!(
            (d.allowed, d.granted, d.remaining),
            (true, 6, 0),
            "only six left"
        );
        let (d, next) = gcra(tat, &limit, GcraTake::up_to(8), at(0));
        assert_eq!((d.allowed, d.granted, next), (false, 0, None));
        assert_eq!(
            d.retry_after,
            Duration::from_millis(100),
            "one fits again then"
        );
        let (d, _) = gcra(tat, &limit, GcraTake::up_to(8), at(250_000));
        assert_eq!((d.allowed, d.granted, d.remaining), (true, 2, 0));
        // Exactly is all or nothing, where up to takes a part.
        let (d, _) = gcra(tat, &limit, GcraTake::exactly(3), at(250_000));
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(50));
    }
}
