//! The access line's two formats, JSON and text, written straight into a byte buffer.

use std::cell::Cell;
use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Version;

use super::{Decision, Record};

/// `{"timestamp":…,"level":"INFO","message":"request",<fields>,"target":"idgate::access"}`, as
/// `tracing-subscriber`'s JSON formatter with flattened events writes it.
pub(super) fn json_line(out: &mut Vec<u8>, r: &Record<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(out, r.time);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
    json_str(out, r.request_id);
    let peer = r.peer.unwrap_or("-");
    out.extend_from_slice(b",\"peer\":");
    json_str(out, peer);
    out.extend_from_slice(b",\"caller\":");
    json_str(out, r.caller.unwrap_or(peer));
    out.extend_from_slice(b",\"remote\":\"");
    let _ = write!(out, "{}", r.remote);
    out.extend_from_slice(b"\",\"method\":");
    json_str(out, r.method.as_str());
    out.extend_from_slice(b",\"version\":\"");
    version(out, r.version);
    out.extend_from_slice(b"\",\"route\":");
    json_str(out, r.route);
    out.extend_from_slice(b",\"status\":");
    number(out, r.status.into());
    if let Some(s) = r.upstream_status {
        out.extend_from_slice(b",\"upstream_status\":");
        number(out, s.into());
    }
    if let Some((label, v)) = r.credential {
        out.extend_from_slice(b",\"credential\":");
        json_str(out, label);
        out.extend_from_slice(b",\"credential_version\":");
        json_str(out, v);
    }
    out.extend_from_slice(b",\"decision\":\"");
    decision(out, r.decision);
    out.extend_from_slice(b"\",\"latency_us\":");
    number(out, micros(r.latency));
    out.extend_from_slice(b",\"target\":\"idgate::access\"}\n");
}

/// `<timestamp>  INFO idgate::access: request field=value …`, as `tracing-subscriber`'s text
/// formatter without colours writes it: strings quoted and escaped as Rust's `Debug` does.
pub(super) fn text_line(out: &mut Vec<u8>, r: &Record<'_>) {
    timestamp(out, r.time);
    out.extend_from_slice(b"  INFO idgate::access: request request_id=");
    text_str(out, r.request_id);
    let peer = r.peer.unwrap_or("-");
    out.extend_from_slice(b" peer=");
    text_str(out, peer);
    out.extend_from_slice(b" caller=");
    text_str(out, r.caller.unwrap_or(peer));
    out.extend_from_slice(b" remote=");
    address(out, r.remote);
    out.extend_from_slice(b" method=");
    text_str(out, r.method.as_str());
    out.extend_from_slice(b" version=");
    version(out, r.version);
    out.extend_from_slice(b" route=");
    text_str(out, r.route);
    out.extend_from_slice(b" status=");
    number(out, r.status.into());
    if let Some(s) = r.upstream_status {
        out.extend_from_slice(b" upstream_status=");
        number(out, s.into());
    }
    if let Some((label, v)) = r.credential {
        out.extend_from_slice(b" credential=");
        text_str(out, label);
        out.extend_from_slice(b" credential_version=");
        text_str(out, v);
    }
    out.extend_from_slice(b" decision=\"");
    decision(out, r.decision);
    out.extend_from_slice(b"\" latency_us=");
    number(out, micros(r.latency));
    out.push(b'\n');
}

pub(super) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn decision(out: &mut Vec<u8>, d: Decision) {
    let (word, slug) = match d {
        Decision::Allowed => (&b"allowed"[..], None),
        Decision::Denied(slug) => (&b"denied:"[..], Some(slug)),
        Decision::Failed(slug) => (&b"failed:"[..], Some(slug)),
        Decision::AllowedBy(reason) => (&b"allowed:"[..], Some(reason)),
        Decision::Undecided(reason) => (&b"undecided:"[..], Some(reason)),
    };
    out.extend_from_slice(word);
    if let Some(slug) = slug {
        out.extend_from_slice(slug.as_bytes());
    }
}

fn version(out: &mut Vec<u8>, v: Version) {
    let s: &[u8] = match v {
        Version::HTTP_09 => b"HTTP/0.9",
        Version::HTTP_10 => b"HTTP/1.0",
        Version::HTTP_11 => b"HTTP/1.1",
        Version::HTTP_2 => b"HTTP/2.0",
        Version::HTTP_3 => b"HTTP/3.0",
        other => {
            let _ = write!(out, "{other:?}");
            return;
        }
    };
    out.extend_from_slice(s);
}

/// An address as `Display` writes it; an IPv4 one without the formatter.
fn address(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                number(out, octet.into());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn number(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Bytes that are written as they are in both formats: printable ASCII but `"` and `\`.
fn plain(s: &str) -> bool {
    idgate_codec::json::is_plain(s)
}

/// A JSON string, escaped as `serde_json` escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    idgate_codec::json::write_string(out, s);
}

/// A string as Rust's `Debug` writes it, quotes included.
fn text_str(out: &mut Vec<u8>, s: &str) {
    if plain(s) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = write!(out, "{s:?}");
    }
}

/// RFC 3339 UTC with microseconds, `2026-11-23T16:45:48.053279Z`, as `tracing-subscriber`
/// writes it.
pub(super) fn timestamp(out: &mut Vec<u8>, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    // Up to the seconds, the text changes once a second: each thread keeps its last.
    let prefix = LAST_SECOND.with(|last| {
        let (at, text) = last.get();
        if at == Some(secs) {
            return text;
        }
        let text = up_to_seconds(secs);
        last.set((Some(secs), text));
        text
    });
    out.extend_from_slice(&prefix);
    let mut fraction = *b".000000Z";
    fill_digits(&mut fraction[1..7], since.subsec_micros().into());
    out.extend_from_slice(&fraction);
}

thread_local! {
    /// The last second [`timestamp`] wrote on this thread, and its text.
    static LAST_SECOND: Cell<(Option<u64>, [u8; 19])> = const { Cell::new((None, [0; 19])) };
}

/// `2026-11-23T16:45:48` for `secs` after the epoch.
fn up_to_seconds(secs: u64) -> [u8; 19] {
    let (year, month, day) = civil_from_days(secs / 86_400);
    let s = secs % 86_400;
    let mut text = *b"0000-00-00T00:00:00";
    for (range, n) in [
        (0..4, year),
        (5..7, month),
        (8..10, day),
        (11..13, s / 3600),
        (14..16, s / 60 % 60),
        (17..19, s % 60),
    ] {
        if let Some(slots) = text.get_mut(range) {
            fill_digits(slots, n);
        }
    }
    text
}

/// `n` in exactly `slots.len()` decimal digits, zero-padded (higher digits are cut).
fn fill_digits(slots: &mut [u8], mut n: u64) {
    for slot in slots.iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}
