//! The pipeline's first stage, the path canonicaliser: never panics; what it accepts is a
//! fixed point (canonicalising it again changes nothing and copies nothing), ASCII, with no
//! escape of a character it decodes, no lower-case hex, no dot or empty segment, backslash,
//! `;` or escaped `/`, `\`, `;`, `%` or control character (`%00` to `%1F`, `%7F`); and
//! rewriting a request's URI keeps its query.
#![no_main]

use std::borrow::Cow;

use idgate_proxy::path::{canonical, canonical_template, canonicalize};
use libfuzzer_sys::fuzz_target;

fn check_canonical(path: &str) {
    assert!(path.starts_with('/') && path.is_ascii());
    assert!(!path.contains('\\') && !path.contains(';'));
    let b = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        let hex = &b[i + 1..i + 3];
        assert!(
            hex.iter()
                .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)),
            "{path}"
        );
        let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert!(
            !(v.is_ascii_alphanumeric() || b"-._~:@/\\;%".contains(&v) || v.is_ascii_control()),
            "{path}: escape of {v:#04x} left"
        );
    }
    let inner = path[1..].strip_suffix('/').unwrap_or(&path[1..]);
    if !inner.is_empty() {
        assert!(inner
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".."));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // Config templates go through the same rules; the canonical one is a fixed point.
        if let Ok(t) = canonical_template(text) {
            assert!(
                matches!(canonical_template(&t), Ok(Cow::Borrowed(_))),
                "{t}"
            );
        }
    }
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    match canonical(uri.path()) {
        Ok(c) => {
            check_canonical(&c);
            match canonical(&c) {
                Ok(Cow::Borrowed(again)) => assert_eq!(again, &*c),
                other => panic!("{c} is not a fixed point: {other:?}"),
            }
            if !uri
                .path()
                .contains(['%', '"', '<', '>', '[', ']', '^', '`', '{', '|', '}'])
            {
                assert!(matches!(c, Cow::Borrowed(_)), "{} was copied", uri.path());
            }
            let mut rewritten = uri.clone();
            if canonicalize(&mut rewritten).is_ok() {
                assert_eq!(rewritten.path(), &*c);
                assert_eq!(rewritten.query(), uri.query());
            } else {
                assert!(!uri.query().unwrap_or_default().is_ascii());
            }
        }
        Err(_) => {
            let mut rewritten = uri.clone();
            assert!(canonicalize(&mut rewritten).is_err());
        }
    }
});
