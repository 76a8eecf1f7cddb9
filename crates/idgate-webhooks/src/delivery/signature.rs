//! The signature subscribers check, one scheme for every provider:
//!
//! ```text
//! idgate-signature: t=<unix seconds>,v1=<hex HMAC-SHA256(subscriber secret, "<t>.<body>")>
//! idgate-event-id:  <the event's idempotency key>
//! ```
//!
//! The body is the bytes sent (masked, when the subscriber has a masking profile). A
//! subscriber recomputes the HMAC over the timestamp, a dot and the raw body, compares in
//! constant time, and refuses a timestamp too far from its clock.

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

/// The header's value for timestamp `t` and the hex HMAC of [`signed_message`].
pub fn header_value(t: u64, mac_hex: &str) -> String {
    format!("t={t},v1={mac_hex}")
}

/// Checks an `idgate-signature` header as a subscriber does: the HMAC over `t.body` with
/// `secret`, compared in constant time, and `t` within `tolerance` of `now`.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: SystemTime,
    tolerance: Duration,
) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = idgate_codec::hex::decode(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(t) > tolerance.as_secs() {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &signed_message(t, body), &v1).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, &signed_message(t, body));
        header_value(t, &idgate_codec::hex::encode(tag.as_ref()))
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
