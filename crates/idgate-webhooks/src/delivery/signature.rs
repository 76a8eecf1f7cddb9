//! The signature subscribers check, one scheme for every provider:
//!
//! ```text
//! idgate-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>,v2=<hex HMAC-SHA256(secret, "<t>.<event id>.<body>")>
//! idgate-event-id:  <the event's idempotency key>
//! ```
//!
//! The body is the bytes sent (masked, when the subscriber has a masking profile). A
//! subscriber recomputes the HMAC over the timestamp, a dot and the raw body (`v1`), or
//! over the timestamp, the event id and the body (`v2`, which binds the id it deduplicates
//! on to the signature), compares in constant time, and refuses a timestamp too far from
//! its clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The header with the timestamp and the signature.
pub const SIGNATURE_HEADER: &str = "idgate-signature";
/// The header with the event's idempotency key.
pub const EVENT_ID_HEADER: &str = "idgate-event-id";

/// What is signed: the timestamp, a dot, the body.
pub fn signed_message(t: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(21 + body.len());
    m.extend_from_slice(t.to_string().as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

/// What `v2` signs: the timestamp, a dot, the event id, a dot, the body. The timestamp is
/// digits and the id holds no dot ([`event_id_signable`]), so the parts cannot be moved.
pub fn signed_message_v2(t: u64, event_id: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(22 + event_id.len() + body.len());
    m.extend_from_slice(t.to_string().as_bytes());
    m.push(b'.');
    m.extend_from_slice(event_id.as_bytes());
    m.push(b'.');
    m.extend_from_slice(body);
    m
}

/// Whether an event id can be signed under `v2`: not empty, and no dot, comma or space (it
/// is a part of the signed string and a header value).
pub fn event_id_signable(event_id: &str) -> bool {
    !event_id.is_empty()
        && event_id
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'.' && b != b',')
}

/// The header's value for timestamp `t` and the hex HMACs of [`signed_message`] (`v1`) and
/// [`signed_message_v2`] (`v2`).
pub fn header_value(t: u64, v1_hex: &str, v2_hex: &str) -> String {
    format!("t={t},v1={v1_hex},v2={v2_hex}")
}

/// Checks an `idgate-signature` header as a subscriber does: the HMAC `v1` over `t.body`
/// with `secret`, compared in constant time, and `t` within `tolerance` of `now`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> bool {
    check(secret, header, "v1", now, tolerance, |t| {
        signed_message(t, body)
    })
}

/// The same for `v2`, over `t.event_id.body`: the event id the subscriber deduplicates on is
/// the one the gateway signed.
pub fn verify_v2(
    secret: &[u8],
    header: &str,
    event_id: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> bool {
    check(secret, header, "v2", now, tolerance, |t| {
        signed_message_v2(t, event_id, body)
    })
}

fn check(
    secret: &[u8],
    header: &str,
    version: &str,
    now: SystemTime,
    tolerance: Duration,
    message: impl FnOnce(u64) -> Vec<u8>,
) -> bool {
    let mut t = None;
    let mut mac = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some((name, v)) if name == version => mac = idgate_codec::hex::decode(v),
            _ => {}
        }
    }
    let (Some(t), Some(mac)) = (t, mac) else {
        return false;
    };
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &message(t), &mac).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
        sign_event(secret, t, "evt_1", body)
    }

    fn sign_event(secret: &[u8], t: u64, event_id: &str, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let v1 = ring::hmac::sign(&key, &signed_message(t, body));
        let v2 = ring::hmac::sign(&key, &signed_message_v2(t, event_id, body));
        header_value(
            t,
            &idgate_codec::hex::encode(v1.as_ref()),
            &idgate_codec::hex::encode(v2.as_ref()),
        )
    }

    #[test]
    fn v2_binds_the_event_id_to_the_signature() {
        let t = 1_800_000_000;
        let now = UNIX_EPOCH + Duration::from_secs(t);
        let tol = Duration::from_secs(300);
        let body = br#"{"a":1}"#;
        let header = sign_event(b"sub-secret", t, "evt_3f1c", body);
        assert!(verify_v2(
            b"sub-secret",
            &header,
            "evt_3f1c",
            body,
            now,
            tol
        ));
        // The same signed delivery under another id is refused by v2 (v1 cannot tell).
        assert!(!verify_v2(
            b"sub-secret",
            &header,
            "evt_other",
            body,
            now,
            tol
        ));
        assert!(verify(b"sub-secret", &header, body, now, tol));
        assert!(!verify_v2(b"other", &header, "evt_3f1c", body, now, tol));
        assert!(!verify_v2(
            b"sub-secret",
            &header,
            "evt_3f1c",
            b"{}",
            now,
            tol
        ));
        // Independently: the signed string.
        assert_eq!(
            signed_message_v2(1_800_000_000, "evt_1", b"{}"),
            b"1800000000.evt_1.{}".to_vec()
        );
        assert!(event_id_signable("evt_3f1c0a"));
        for bad in ["", "a.b", "a,b", "a b", "a\nb"] {
            assert!(!event_id_signable(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_subscriber_checks_the_mac_over_t_dot_body_and_the_time() {
        let t = 1_800_000_000;
        let now = UNIX_EPOCH + Duration::from_secs(t + 10);
        let tol = Duration::from_secs(300);
        let header = sign(b"sub-secret", t, br#"{"a":1}"#);
        assert!(header.starts_with("t=1800000000,v1="));
        assert!(verify(b"sub-secret", &header, br#"{"a":1}"#, now, tol));
        assert!(!verify(b"other", &header, br#"{"a":1}"#, now, tol));
        assert!(!verify(b"sub-secret", &header, br#"{"a":2}"#, now, tol));
        let late = UNIX_EPOCH + Duration::from_secs(t + 301);
        assert!(!verify(b"sub-secret", &header, br#"{"a":1}"#, late, tol));
        assert!(!verify(b"sub-secret", "v1=00", b"", now, tol));
        // Independently: HMAC-SHA256("sub-secret", "1800000000.{}").
        assert_eq!(
            signed_message(1_800_000_000, b"{}"),
            b"1800000000.{}".to_vec()
        );
    }
}
