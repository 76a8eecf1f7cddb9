//! What a webhook subscriber answers a delivery: its `Retry-After`
//! (`idgate_webhooks::delivery::retry::retry_after`), then when the next attempt is made
//! (`next_attempt`). The first byte is the attempt that failed and the status's class; the
//! rest is the header's value.
//!
//! Never panics. A `Retry-After` read is `delay-seconds` (digits, blanks around them
//! aside), capped at the event's maximum age, and anything else is not read; the next
//! attempt is never before now, never past the event's maximum age, and never earlier than
//! the subscriber asked, within that age, and given up only when even the longest wait would end past it; an
//! answer that is not retried is not retried.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use http::StatusCode;
use idgate_config::RetryPolicy;
use idgate_webhooks::delivery::retry::{Verdict, classify, next_attempt, retry_after};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let Ok(value) = std::str::from_utf8(value) else {
        return;
    };
    let policy = RetryPolicy::default();
    let after = retry_after(value, policy.max_age);
    let digits = value.trim();
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        let secs = digits.parse::<u64>().unwrap_or(u64::MAX);
        assert_eq!(after, Some(Duration::from_secs(secs).min(policy.max_age)));
    } else {
        assert_eq!(after, None, "{value:?}");
    }

    let status = [200, 204, 301, 400, 404, 408, 429, 500, 503][usize::from(selector % 9)];
    let status = StatusCode::from_u16(status).expect("a status");
    let verdict = classify(status, after);
    let retried = status.is_server_error() || status == 408 || status == 429;
    match &verdict {
        Verdict::Delivered => assert!(status.is_success()),
        Verdict::Retry { after: a, .. } => assert!(retried && *a == after),
        Verdict::Refused { .. } => assert!(!retried && !status.is_success()),
    }

    let attempt = u32::from(selector >> 4) + 1;
    let enqueued = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let now = enqueued + Duration::from_secs(u64::from(selector) * 97);
    if let Some(at) = next_attempt(&policy, attempt, enqueued, now, after) {
        assert!(at >= now);
        assert!(
            at <= enqueued + policy.max_age,
            "{at:?} past the maximum age"
        );
        if let Some(a) = after {
            assert!(at >= now + a, "sooner than the subscriber asked");
        }
    } else {
        // Given up only when even the longest wait it could draw ends past the maximum age.
        let longest = after.unwrap_or_default().max(policy.max);
        assert!(
            now + longest > enqueued + policy.max_age,
            "given up at attempt {attempt}"
        );
    }
});
