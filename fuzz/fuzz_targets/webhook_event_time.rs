//! A webhook's own event time (`idgate_webhooks::verify::event_time`) read from arbitrary
//! bodies: the first byte picks the format and whether the field is nested, the rest is the
//! body.
//!
//! Never panics; a time it accepts lies within the window (no older than `max_age`, no
//! further ahead than `max_ahead`).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use idgate_webhooks::verify::event_time::{check, Window};
use idgate_webhooks::verify::{EventTime, TimeFormat};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_767_225_600;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let format = match selector % 4 {
        0 => TimeFormat::Unix,
        1 => TimeFormat::UnixMillis,
        2 => TimeFormat::Rfc3339,
        _ => TimeFormat::NaiveUtc,
    };
    let field = if selector & 0x10 == 0 {
        vec!["createdAt".to_owned()]
    } else {
        vec!["payload".to_owned(), "timestamp".to_owned()]
    };
    let window = Window {
        now: UNIX_EPOCH + Duration::from_secs(NOW),
        max_age: Duration::from_secs(86_400),
        max_ahead: Duration::from_secs(300),
    };
    if let Ok(at) = check(&EventTime { field, format }, body, window) {
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        assert!(secs + 86_400 >= NOW && secs <= NOW + 300, "{secs} outside the window");
    }
});
