//! The few JSON and time codecs the audit lines need, written straight into a byte buffer:
//! strings escaped as `serde_json` escapes them, numbers, and UTC times in milliseconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A JSON string, quotes included, escaped as `serde_json` escapes it.
pub(crate) fn str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    str_inner(out, s);
    out.push(b'"');
}

/// A JSON string's content, escaped, without its quotes.
pub(crate) fn str_inner(out: &mut Vec<u8>, s: &str) {
    idgate_codec::json::write_escaped(out, s);
}

/// `,"key":` — the separator and a member's name (a literal without anything to escape).
pub(crate) fn key(out: &mut Vec<u8>, name: &str) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

pub(crate) fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Milliseconds since the Unix epoch (OCSF `timestamp_t`).
pub fn millis(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

/// Whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// RFC 3339 UTC with milliseconds, quoted: `"2026-11-23T16:45:48.053Z"`.
pub(crate) fn datetime(out: &mut Vec<u8>, ms: u64) {
    out.push(b'"');
    match millis_text(ms) {
        Some(text) => out.extend_from_slice(&text),
        None => out.extend_from_slice(formatted_millis(ms).as_bytes()),
    }
    out.push(b'"');
}

/// RFC 3339 UTC with milliseconds: `2026-11-23T16:45:48.053Z`.
pub fn format_millis(ms: u64) -> String {
    match millis_text(ms) {
        Some(text) => String::from_utf8_lossy(&text).into_owned(),
        None => formatted_millis(ms),
    }
}

/// [`format_millis`] by the formatter, for any year.
fn formatted_millis(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms % 1000
    )
}

/// The text of [`format_millis`] for years up to 9999, made without formatting machinery:
/// it is written for every record.
fn millis_text(ms: u64) -> Option<[u8; 24]> {
    fn two(out: &mut [u8], v: u64) {
        out[0] = b'0' + (v / 10 % 10) as u8;
        out[1] = b'0' + (v % 10) as u8;
    }
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    if y > 9999 {
        return None;
    }
    let s = secs % 86_400;
    let mut t = *b"0000-00-00T00:00:00.000Z";
    two(&mut t[0..2], y / 100);
    two(&mut t[2..4], y % 100);
    two(&mut t[5..7], m);
    two(&mut t[8..10], d);
    two(&mut t[11..13], s / 3600);
    two(&mut t[14..16], s / 60 % 60);
    two(&mut t[17..19], s % 60);
    let frac = ms % 1000;
    t[20] = b'0' + (frac / 100) as u8;
    two(&mut t[21..23], frac % 100);
    Some(t)
}

/// A compact UTC stamp for file names: `20261123T164548Z`.
pub(crate) fn file_stamp(t: SystemTime) -> String {
    let secs = millis(t) / 1000;
    let (y, m, d) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Parses an RFC 3339 time in UTC (`2026-11-23T16:45:48Z`, with an optional fraction, `Z`
/// or `+00:00`), or a date alone (`2026-11-23`, its midnight), into milliseconds since the
/// epoch. Other offsets are refused rather than guessed at.
pub fn parse_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        (!part.is_empty() && part.bytes().all(|c| c.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) || y < 1970 {
        return None;
    }
    let days = days_from_civil(y, m, d);
    if b.len() == 10 {
        return days.checked_mul(86_400_000);
    }
    if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut frac_ms = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms: String = f[..digits].chars().chain("000".chars()).take(3).collect();
        frac_ms = ms.parse().ok()?;
        rest = &f[digits..];
    }
    if !matches!(rest, "Z" | "z" | "+00:00" | "-00:00") {
        return None;
    }
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec.min(59);
    secs.checked_mul(1000)?.checked_add(frac_ms)
}

fn days_in_month(y: u64, m: u64) -> u64 {
    match m {
        2 if (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + u64::from(month <= 2), month, day)
}

/// The inverse of [`civil_from_days`], for dates on or after 1970-01-01.
fn days_from_civil(y: u64, m: u64, d: u64) -> u64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_the_formatter_writes_them() {
        let mut ms = 0u64;
        // The epoch, every millisecond of a second, steps of a prime through year 9999, and
        // past it.
        let mut samples: Vec<u64> = (0..1000).collect();
        while ms < 253_402_300_799_999 {
            samples.push(ms);
            ms += 7_919_999_989;
        }
        samples.extend([
            1_795_000_000_000,
            951_782_400_000,
            253_402_300_799_999,
            253_402_300_800_000,
            u64::MAX,
        ]);
        for ms in samples {
            if let Some(text) = millis_text(ms) {
                assert_eq!(text.as_slice(), formatted_millis(ms).as_bytes(), "{ms}");
            }
            let mut quoted = Vec::new();
            datetime(&mut quoted, ms);
            assert_eq!(quoted, format!("\"{}\"", formatted_millis(ms)).into_bytes());
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in [
            "plain",
            "a\"b\\c",
            "tab\tnew\nline\u{1}",
            "caf\u{e9} \u{1F600}",
        ] {
            let mut out = Vec::new();
            str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn times_round_trip_through_rfc3339() {
        let ms = 1_795_452_348_053;
        let text = format_millis(ms);
        assert_eq!(text, "2026-11-23T16:45:48.053Z");
        assert_eq!(parse_time(&text), Some(ms));
        assert_eq!(parse_time("2026-11-23T16:45:48Z"), Some(1_795_452_348_000));
        assert_eq!(
            parse_time("2026-11-23T16:45:48.5+00:00"),
            Some(1_795_452_348_500)
        );
        assert_eq!(parse_time("2000-02-29"), Some(951_782_400_000));
        assert_eq!(format_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        for bad in [
            "2026-11-23T16:45:48+02:00",
            "2026-02-30",
            "2026-13-01",
            "yesterday",
            "2026-11-23T25:00:00Z",
            "",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
        let mut n = Vec::new();
        num(&mut n, 0);
        num(&mut n, u64::MAX);
        assert_eq!(n, b"018446744073709551615");
    }
}
