//! The admin listener's `/metrics` after real traffic: requests by route, status and
//! decision, latency histograms, rate-limit refusals, credential uses, refused TLS
//! handshakes by reason and the expiry of the gateway's certificates. Every scrape is read
//! strictly ([`exposition`]), and none may hold anything a caller sent.

mod exposition;
mod requests;
mod tls;

use crate::support::*;
use exposition::Exposition;

/// Scrapes `/metrics` and reads it strictly, failing with the text when it is not valid.
async fn scrape(gw: &Gateway) -> (Exposition, String) {
    let (status, text) = admin_get(gw.admin_port, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    match exposition::parse(&text) {
        Ok(parsed) => (parsed, text),
        Err(e) => panic!("invalid exposition: {e}\n{text}"),
    }
}

/// The gateway's own SPIFFE ID (its SVID's, from the dev PKI): the one SPIFFE ID that may be
/// in a label.
const GATEWAY_ID: &str = "spiffe://example.org/idgate";

/// Asserts that no label holds anything but a plain word, a number or the gateway's own
/// SPIFFE ID, and that none of `private` (what callers sent: paths, keys, header values,
/// their SPIFFE IDs, request ids) appears anywhere in the text.
fn assert_nothing_private(parsed: &Exposition, text: &str, private: &[&str]) {
    for value in parsed.label_values() {
        let plain = value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+:".contains(&b));
        assert!(
            plain || value == GATEWAY_ID,
            "label value {value:?} is not a plain word\n{text}"
        );
    }
    for needle in private {
        assert!(!needle.is_empty());
        assert!(
            !text.contains(needle),
            "{needle:?} is in the metrics\n{text}"
        );
    }
}
