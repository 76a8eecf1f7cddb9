//! Small helpers: random identifiers, constant-time comparison, dates, query strings.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The system RNG failing is unrecoverable for a server that hands out identifiers.
    if SystemRandom::new().fill(&mut buf).is_err() {
        panic!("the system random number generator failed");
    }
    buf
}

/// A random (version 4) UUID in its hyphenated lowercase form.
pub(crate) fn uuid_v4() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = idgate_codec::hex::encode(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A random token of `len` letters and digits.
pub(crate) fn token(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<32>() {
            // 248 = 4 × 62: rejecting above it keeps the choice uniform.
            if b < 248 && out.len() < len {
                out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    out
}

/// Compares a presented credential with the expected one without leaking, through timing,
/// how much of it matched or how long the expected value is: both sides are MACed under a
/// per-process random key and the tags compared with ring's constant-time check.
pub(crate) struct CtSecret {
    key: hmac::Key,
    tag: hmac::Tag,
}

impl CtSecret {
    pub(crate) fn new(expected: &[u8]) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &random_bytes::<32>());
        let tag = hmac::sign(&key, expected);
        Self { key, tag }
    }

    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        hmac::verify(&self.key, presented, self.tag.as_ref()).is_ok()
    }
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) fn unix_now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `2026-05-01T12:34:56.123456Z` for a time in microseconds since the epoch.
pub(crate) fn iso8601_micros(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// `YYYY-MM-DD` of a unix time in seconds.
pub(crate) fn iso_date(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Age in whole years on `today` (both `YYYY-MM-DD`).
pub(crate) fn age_on(birth: &str, today: &str) -> u32 {
    let parse = |s: &str| -> Option<(i64, i64, i64)> {
        let mut it = s.split('-').map(|p| p.parse::<i64>().ok());
        Some((it.next()??, it.next()??, it.next()??))
    };
    match (parse(birth), parse(today)) {
        (Some((by, bm, bd)), Some((ty, tm, td))) => {
            let mut age = ty - by;
            if (tm, td) < (bm, bd) {
                age -= 1;
            }
            u32::try_from(age.max(0)).unwrap_or(0)
        }
        _ => 0,
    }
}

/// Decodes an `application/x-www-form-urlencoded` query string into pairs.
pub(crate) fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    idgate_codec::percent::decode_form_lossy(s).into_owned()
}

/// Encodes pairs as a query string (keys sorted, as Django REST framework writes its
/// pagination links).
pub(crate) fn encode_query(pairs: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = pairs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    sorted
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent_encode(s: &str) -> String {
    idgate_codec::percent::encode_form(s, idgate_codec::percent::is_unreserved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_has_version_and_variant() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
        assert_ne!(u, uuid_v4());
    }

    #[test]
    fn dates() {
        assert_eq!(iso_date(0), "1970-01-01");
        assert_eq!(iso_date(1_767_225_600), "2026-01-01");
        assert_eq!(
            iso8601_micros(1_709_251_200_000_001),
            "2024-03-01T00:00:00.000001Z"
        );
        assert_eq!(age_on("1980-06-15", "2026-06-14"), 45);
        assert_eq!(age_on("1980-06-15", "2026-06-15"), 46);
    }

    #[test]
    fn query_round_trip() {
        let q = parse_query("vendor_data=user%2042&status=Not+Started&page=2&x");
        assert_eq!(
            q,
            vec![
                ("vendor_data".into(), "user 42".into()),
                ("status".into(), "Not Started".into()),
                ("page".into(), "2".into()),
                ("x".into(), String::new()),
            ]
        );
        assert_eq!(
            encode_query(&q),
            "page=2&status=Not+Started&vendor_data=user+42&x="
        );
        assert_eq!(parse_query("a=%zz%4"), vec![("a".into(), "%zz%4".into())]);
    }

    #[test]
    fn constant_time_secret() {
        let s = CtSecret::new(b"key-1");
        assert!(s.matches(b"key-1"));
        assert!(!s.matches(b"key-2"));
        assert!(!s.matches(b""));
    }
}
