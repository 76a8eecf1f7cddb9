//! Caller API keys: the key parser, the header reader, the query-string detector and the
//! verifier. Never panics; no fuzzed input verifies against the table's one real key; and
//! that key, put anywhere in a fuzzed query string with any of its characters
//! percent-encoded (hex digits in either case), is found there by both detectors.
//!
//! The first byte says where the key goes (a fraction of the query's length), the next
//! eight which of its characters are escaped and in which case. The whole input is also the
//! text the parsers and the verifier are given.
#![no_main]

use std::sync::OnceLock;
use std::time::SystemTime;

use idgate_auth::api_key::{self, ApiKeyVerifier, KeySpec, Pepper};
use idgate_secrets::{ExposeSecret, SecretBox};
use libfuzzer_sys::fuzz_target;

/// The verifier, and the text of its one key.
fn verifier() -> &'static (ApiKeyVerifier, String) {
    static V: OnceLock<(ApiKeyVerifier, String)> = OnceLock::new();
    V.get_or_init(|| {
        let pepper =
            Pepper::new(SecretBox::new(vec![7u8; 32].into_boxed_slice()), "fuzz").expect("pepper");
        let spec = KeySpec::new("fuzz", vec!["s:r".into()], None, None).expect("spec");
        let key = api_key::generate(&pepper, &spec, SystemTime::now()).expect("key");
        let text = key.key.expose_secret().to_owned();
        (ApiKeyVerifier::new(pepper, [key.record]), text)
    })
}

/// `key` with the characters whose bit is set in `escape` percent-encoded, in upper or
/// lower case hex as `upper` says.
fn encoded(key: &str, escape: u64, upper: u64) -> String {
    let mut out = String::with_capacity(key.len() * 3);
    for (i, b) in key.bytes().enumerate() {
        let bit = 1u64 << (i % 64);
        if escape & bit == 0 {
            out.push(char::from(b));
        } else if upper & bit != 0 {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = api_key::parse_key_id(&text);
    let _ = api_key::key_in_query(Some(&text));
    let _ = api_key::idgate_key_in_query(Some(&text));
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-api-key", value.clone());
        headers.insert(http::header::AUTHORIZATION, value);
        let _ = api_key::presented_key(&headers);
    }
    let (verifier, key) = verifier();
    assert!(verifier.verify(&text, None, SystemTime::now()).is_err());

    // The real key, in a query string however it is escaped.
    let Some((&at, rest)) = data.split_first() else {
        return;
    };
    let (bits, query) = rest.split_at(rest.len().min(8));
    let mut escape = [0u8; 8];
    escape[..bits.len()].copy_from_slice(bits);
    let escape = u64::from_le_bytes(escape);
    let upper = escape.rotate_left(17) ^ 0x5555_5555_5555_5555;
    let query = String::from_utf8_lossy(query);
    let mut cut = query.len() * usize::from(at) / 255;
    while !query.is_char_boundary(cut) {
        cut -= 1;
    }
    let with_key = format!(
        "{}{}{}",
        &query[..cut],
        encoded(key, escape, upper),
        &query[cut..]
    );
    assert!(
        api_key::idgate_key_in_query(Some(&with_key)),
        "{with_key:?}"
    );
    assert!(api_key::key_in_query(Some(&with_key)), "{with_key:?}");
});
