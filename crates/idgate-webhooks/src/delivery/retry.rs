//! What a subscriber's answer means for the message, and when a failed one is tried again.
//!
//! - 2xx: delivered.
//! - 408, 429 and 5xx, a timeout, a connection that failed: tried again later.
//! - Any other answer (3xx, 4xx): refused for good, a dead letter at once — the subscriber
//!   said the event is wrong for it, and sending it again would not change that.
//!
//! The delay before attempt n+1 is drawn uniformly from zero to `base · 2^(n-1)` (at most
//! `max`): exponential backoff with full jitter, so that subscribers coming back are not
//! hit by every replica at once. A `Retry-After` (in seconds) longer than the draw is
//! honoured, up to the event's `max_age`: whatever a subscriber answers, the arithmetic on
//! the clock is checked and cannot overflow. Once the next attempt would fall past the
//! event's `max_age` (counted from when it was received, or from its replay), the message
//! is a dead letter.

use std::time::{Duration, SystemTime};

use http::StatusCode;
use idgate_config::RetryPolicy;
use ring::rand::{SecureRandom, SystemRandom};

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Worth another attempt; `after` is the subscriber's `Retry-After`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// A dead letter now.
    Refused {
        reason: String,
    },
}

/// The verdict on a subscriber's status.
pub fn classify(status: StatusCode, retry_after: Option<Duration>) -> Verdict {
    if status.is_success() {
        Verdict::Delivered
    } else if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Verdict::Retry {
            reason: format!("the subscriber answered {}", status.as_u16()),
            after: retry_after,
        }
    } else {
        Verdict::Refused {
            reason: format!(
                "the subscriber answered {}, which is not retried",
                status.as_u16()
            ),
        }
    }
}

/// A number in `[0, 1)` from the system's random source (the midpoint if it fails: the
/// backoff then still doubles, without jitter).
fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        return 0.5;
    }
    // 53 random bits: every value is exact in an f64.
    (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// When to try again after the `attempt`-th attempt (from 1) failed, or `None` when that
/// would be past the event's maximum age, counted from `since` (when its attempts began:
/// when it was received, or when it was last replayed).
pub fn next_attempt(
    policy: &RetryPolicy,
    attempt: u32,
    since: SystemTime,
    now: SystemTime,
    retry_after: Option<Duration>,
) -> Option<SystemTime> {
    next_attempt_with(policy, attempt, since, now, retry_after, unit_random())
}

fn next_attempt_with(
    policy: &RetryPolicy,
    attempt: u32,
    since: SystemTime,
    now: SystemTime,
    retry_after: Option<Duration>,
    draw: f64,
) -> Option<SystemTime> {
    let cap = idgate_store::Backoff {
        first: policy.base,
        max: policy.max,
    }
    .delay(attempt);
    let jittered = cap.mul_f64(draw.clamp(0.0, 1.0));
    // The subscriber's Retry-After is its own number: capped at the event's maximum age
    // (any longer wait ends past it anyway), and every sum checked, so that no answer can
    // overflow the clock.
    let delay = retry_after.map_or(jittered, |r| r.min(policy.max_age).max(jittered));
    let at = now.checked_add(delay)?;
    match since.checked_add(policy.max_age) {
        Some(deadline) if at > deadline => None,
        _ => Some(at),
    }
}

/// A `Retry-After` in seconds (RFC 9110 `delay-seconds`), at most `cap`; `None` for any
/// other form. The value is the subscriber's: never trusted to be small.
pub fn retry_after(value: &str, cap: Duration) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // All digits: only a number too long for u64 fails to parse, and it is past any cap.
    let secs = value.parse::<u64>().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_delivered_retried_or_refused() {
        assert_eq!(classify(StatusCode::NO_CONTENT, None), Verdict::Delivered);
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(s).unwrap(), None),
                    Verdict::Retry { .. }
                ),
                "{s}"
            );
        }
        for s in [301, 400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(
                    classify(StatusCode::from_u16(s).unwrap(), None),
                    Verdict::Refused { .. }
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn the_delay_is_a_full_jitter_draw_under_a_doubling_cap_until_the_maximum_age() {
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |attempt, now, after, draw| {
            next_attempt_with(&policy, attempt, t0, now, after, draw)
                .map(|t: SystemTime| t.duration_since(now).unwrap())
        };
        assert_eq!(at(1, t0, None, 0.0), Some(Duration::ZERO));
        assert_eq!(at(1, t0, None, 0.5), Some(Duration::from_millis(500)));
        assert_eq!(at(4, t0, None, 0.5), Some(Duration::from_secs(4)));
        assert_eq!(at(30, t0, None, 0.5), Some(Duration::from_secs(30)));
        assert_eq!(
            at(2, t0, Some(Duration::from_secs(10)), 0.5),
            Some(Duration::from_secs(10)),
            "Retry-After is honoured"
        );
        let late = t0 + Duration::from_secs(3599);
        assert_eq!(at(30, late, None, 0.0), Some(Duration::ZERO));
        assert_eq!(at(30, late, None, 0.5), None, "past the maximum age");
        for _ in 0..100 {
            let d = next_attempt(&policy, 3, t0, t0, None).unwrap();
            assert!(d.duration_since(t0).unwrap() <= Duration::from_secs(4));
        }
    }

    #[test]
    fn a_retry_after_past_any_representable_time_makes_a_dead_letter_not_a_panic() {
        let policy = RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        // An attempt comes after the event was received.
        let now = t0 + Duration::from_secs(1);
        // What a subscriber answering `Retry-After: 9223372036854775807` (or more) asks for,
        // whether or not its caller capped it first.
        for asked in [
            Duration::from_secs(i64::MAX as u64),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ] {
            assert_eq!(
                next_attempt_with(&policy, 1, t0, now, Some(asked), 0.5),
                None,
                "past the maximum age: {asked:?}"
            );
        }
        // Within the maximum age it is honoured as before.
        assert_eq!(
            next_attempt_with(&policy, 1, t0, now, Some(Duration::from_secs(3599)), 0.5),
            Some(now + Duration::from_secs(3599))
        );
        // A maximum age beyond the clock's range bounds nothing, and overflows nothing.
        let forever = RetryPolicy {
            max_age: Duration::MAX,
            ..policy
        };
        assert_eq!(
            next_attempt_with(&forever, 1, t0, now, Some(Duration::from_secs(10)), 0.5),
            Some(now + Duration::from_secs(10))
        );
        assert_eq!(
            next_attempt_with(&forever, 1, t0, now, Some(Duration::MAX), 0.5),
            None
        );
    }

    #[test]
    fn a_retry_after_is_read_in_seconds_and_capped() {
        let cap = Duration::from_secs(3600);
        assert_eq!(retry_after(" 120 ", cap), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("9223372036854775807", cap), Some(cap));
        assert_eq!(retry_after(&"9".repeat(40), cap), Some(cap));
        for other in [
            "",
            "-1",
            "1.5",
            "+5",
            "Wed, 21 Oct 2015 07:28:00 GMT",
            "12 s",
        ] {
            assert_eq!(retry_after(other, cap), None, "{other:?}");
        }
    }
}
