//! The token endpoint's form parser (`application/x-www-form-urlencoded`): never panics;
//! every pair it returns re-encodes, on its own and with the others, to a form that parses
//! back to it.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Form encoding written apart from the parser's code: unreserved bytes as they are, a space
/// as `+`, everything else escaped.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some(pairs) = idgate_proxy::token_endpoint::parse_form(data) else {
        return;
    };
    for (k, v) in &pairs {
        let again = format!("{}={}", encode(k), encode(v));
        assert_eq!(
            idgate_proxy::token_endpoint::parse_form(again.as_bytes()),
            Some(vec![(k.clone(), v.clone())]),
            "{again:?}"
        );
    }
    let all: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    assert_eq!(
        idgate_proxy::token_endpoint::parse_form(all.join("&").as_bytes()).as_ref(),
        Some(&pairs)
    );
});
