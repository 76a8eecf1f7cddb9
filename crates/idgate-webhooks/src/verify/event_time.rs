//! The event's own time, for the schemes that sign no timestamp (Sumsub, Veriff, Onfido).
//!
//! Their signature covers the whole body, so a time written in the body is signed too; but
//! the providers document no such field for any of them, so none is read unless the webhook
//! names one ([`EventTime`]). Where one is named, the event is refused as stale when that
//! time is older than the replay window allows — so that a copy of an event is never
//! accepted after its replay key was forgotten — and an event whose time cannot be read is
//! refused (fail-closed: the operator said every event carries it).
//!
//! The reader is strict and bounded: one JSON parse of the body (the verifier's own, depth
//! capped), then a fixed-size date grammar. Nothing of the body is kept or reported.

use std::time::{Duration, SystemTime};

use super::json::{self, Json};
use super::{Rejected, within};

/// Where the signed body holds the event's time, and how it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTime {
    /// The path of object keys to the field.
    pub field: Vec<String>,
    pub format: TimeFormat,
}

/// How an event's time is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// A JSON integer: seconds since the Unix epoch.
    Unix,
    /// A JSON integer: milliseconds since the Unix epoch.
    UnixMillis,
    /// A string in RFC 3339, with its offset (`Z` or `±HH:MM`).
    Rfc3339,
    /// A string `YYYY-MM-DD HH:MM:SS[.fraction]` (or with `T`) without an offset, in UTC.
    NaiveUtc,
}

/// What the endpoint accepts of an event's own time.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub now: SystemTime,
    /// How old the event may be: the replay window less the tolerance, so that a copy of
    /// an accepted event is refused as stale before its replay key is forgotten.
    pub max_age: Duration,
    /// How far ahead of `now` it may be (a sender's clock running ahead): the tolerance.
    pub max_ahead: Duration,
}

/// The event's time as `spec` reads it from the (signed) `body`, if `window` accepts it.
pub fn check(spec: &EventTime, body: &[u8], window: Window) -> Result<SystemTime, Rejected> {
    let value = json::parse(body).map_err(|_| Rejected::Malformed("body"))?;
    let keys: Vec<&str> = spec.field.iter().map(String::as_str).collect();
    let secs = match value.path(&keys) {
        None | Some(Json::Null) => return Err(Rejected::Missing("event time")),
        Some(v) => read(v, spec.format).ok_or(Rejected::Malformed("event time"))?,
    };
    within(window.now, secs, window.max_age, window.max_ahead)
}

/// The time in unix seconds (fractions dropped).
fn read(value: &Json, format: TimeFormat) -> Option<i64> {
    match format {
        TimeFormat::Unix => value.as_i64(),
        TimeFormat::UnixMillis => value.as_i64().map(|ms| ms.div_euclid(1000)),
        TimeFormat::Rfc3339 => date_time(value.as_str()?, true),
        TimeFormat::NaiveUtc => date_time(value.as_str()?, false),
    }
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.f{1,9}]`, then `Z` or `±HH:MM` when `offset`, nothing else
/// otherwise; in unix seconds.
fn date_time(s: &str, offset: bool) -> Option<i64> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<i64> {
        let part = b.get(from..from + n)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    let year = digits(0, 4)?;
    let month = digits(5, 2)?;
    let day = digits(8, 2)?;
    let hour = digits(11, 2)?;
    let minute = digits(14, 2)?;
    let second = digits(17, 2)?;
    if !(at(4, b"-") && at(7, b"-") && at(10, b"Tt ") && at(13, b":") && at(16, b":")) {
        return None;
    }
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        // 60: a leap second, counted as the second before it.
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    if at(i, b".") {
        let n = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=9).contains(&n) {
            return None;
        }
        i += 1 + n;
    }
    let shift = match (offset, b.get(i..)?) {
        (false, []) => 0,
        (true, b"Z" | b"z") => 0,
        (true, rest) if rest.len() == 6 && (rest[0] == b'+' || rest[0] == b'-') => {
            let h = digits(i + 1, 2)?;
            let m = digits(i + 4, 2)?;
            if rest[3] != b':' || h > 23 || m > 59 {
                return None;
            }
            let shift = h * 3600 + m * 60;
            if rest[0] == b'+' { shift } else { -shift }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - shift)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn dates_are_read_in_each_format_and_anything_else_is_refused() {
        // 2026-05-04T10:20:30Z
        let t = 1_777_890_030;
        assert_eq!(date_time("2026-05-04T10:20:30Z", true), Some(t));
        assert_eq!(date_time("2026-05-04t10:20:30.123456789z", true), Some(t));
        assert_eq!(date_time("2026-05-04 12:20:30+02:00", true), Some(t));
        assert_eq!(date_time("2026-05-04T05:50:30-04:30", true), Some(t));
        assert_eq!(date_time("2026-05-04 10:20:30.761", false), Some(t));
        assert_eq!(date_time("2026-05-04T10:20:30", false), Some(t));
        assert_eq!(date_time("1970-01-01T00:00:00Z", true), Some(0));
        assert_eq!(date_time("2024-02-29T00:00:00Z", true), Some(1_709_164_800));
        assert_eq!(date_time("2016-12-31T23:59:60Z", true), Some(1_483_228_799));
        for bad in [
            "",
            "2026-05-04T10:20:30",
            "2026-05-04T10:20:30+0200",
            "2026-05-04T10:20:30Z ",
            "2026-05-04T10:20:30.Z",
            "2026-05-04T10:20:30.1234567890Z",
            "2026-13-04T10:20:30Z",
            "2025-02-29T10:20:30Z",
            "2026-05-04T24:00:00Z",
            "2026-05-04X10:20:30Z",
            "+026-05-04T10:20:30Z",
            "2026-05-04T10:20:30+24:00",
            "2026-05-04T10:20:30\u{0665}Z",
        ] {
            assert_eq!(date_time(bad, true), None, "{bad:?}");
        }
        assert_eq!(date_time("2026-05-04T10:20:30Z", false), None);
    }

    #[test]
    fn an_event_time_outside_the_window_is_stale_or_future_and_one_missing_is_refused() {
        let spec = |format| EventTime {
            field: vec!["payload".into(), "at".into()],
            format,
        };
        let now = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let window = Window {
            now,
            max_age: Duration::from_secs(3600),
            max_ahead: Duration::from_secs(300),
        };
        let body = |at: &str| format!(r#"{{"payload":{{"at":{at}}}}}"#).into_bytes();
        assert_eq!(
            check(&spec(TimeFormat::Unix), &body("1999996400"), window),
            Ok(UNIX_EPOCH + Duration::from_secs(1_999_996_400)),
            "exactly max_age old"
        );
        assert_eq!(
            check(&spec(TimeFormat::Unix), &body("1999996399"), window),
            Err(Rejected::Stale { age_secs: 3601 })
        );
        assert_eq!(
            check(
                &spec(TimeFormat::UnixMillis),
                &body("2000000301000"),
                window
            ),
            Err(Rejected::Future { ahead_secs: 301 })
        );
        assert_eq!(
            check(
                &spec(TimeFormat::Rfc3339),
                &body("\"2033-05-18T03:33:20Z\""),
                window
            ),
            Ok(now)
        );
        assert_eq!(
            check(&spec(TimeFormat::Unix), &body("null"), window),
            Err(Rejected::Missing("event time"))
        );
        assert_eq!(
            check(&spec(TimeFormat::Unix), b"{\"payload\":{}}", window),
            Err(Rejected::Missing("event time"))
        );
        assert_eq!(
            check(&spec(TimeFormat::Unix), &body("\"2000000000\""), window),
            Err(Rejected::Malformed("event time"))
        );
        assert_eq!(
            check(&spec(TimeFormat::Unix), b"not json", window),
            Err(Rejected::Malformed("body"))
        );
    }
}
