//! What an upstream's OAuth2 token endpoint answers the gateway's client-credentials
//! request (`idgate_secrets::fuzzing::token_answer`), and the error code logged from a
//! refusal (`token_error_code`).
//!
//! Never panics. An answer accepted gives exactly `Bearer <token>`, marked sensitive, a
//! lifetime of at most a day, and a refresh margin of at most a minute and at most half the
//! lifetime, but a second where the lifetime allows it. Where `serde_json::Value` reads the
//! answer too (serde skips members it does not read without checking their text), it is
//! JSON whose `access_token` (an object's member, or an array's first item, as serde reads
//! a struct) is that non-empty token; whose `token_type`, when a string, is `Bearer` in any
//! case; and whose `expires_in`, a whole number of seconds or a string of one, is the
//! lifetime (capped at a day; five minutes where there is none). A logged error code is
//! empty or ` (<code>)`, the code at most 64 printable ASCII characters without `"` or `\`.
#![no_main]

use std::time::Duration;

use idgate_secrets::fuzzing::{token_answer, token_error_code};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, lifetime, margin)) = token_answer(data) {
        assert!(header.as_bytes().starts_with(b"Bearer ") && header.len() > 7);
        assert!(header.is_sensitive());
        assert!(lifetime <= Duration::from_secs(86_400));
        assert!(
            margin <= Duration::from_secs(60) && margin <= lifetime / 2 + Duration::from_secs(1)
        );
        assert!(
            margin < lifetime || lifetime.is_zero(),
            "{margin:?} of {lifetime:?}"
        );
        if lifetime >= Duration::from_secs(2) {
            assert!(margin >= Duration::from_secs(1));
        }
        // serde skips a member it does not read without checking its text (a lone
        // surrogate escape, bytes that are not UTF-8), which `Value` refuses: such an answer
        // has no reference.
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            let member = |name: &str, index: usize| match &v {
                Value::Object(m) => m.get(name),
                Value::Array(a) => a.get(index),
                other => panic!("an answer of {other} was accepted"),
            };
            let token = member("access_token", 0)
                .and_then(Value::as_str)
                .expect("a token");
            assert!(!token.is_empty());
            assert_eq!(header.as_bytes(), format!("Bearer {token}").as_bytes());
            if let Some(Value::String(t)) = member("token_type", 1) {
                assert!(t.eq_ignore_ascii_case("bearer"), "token_type {t}");
            }
            let expected = match member("expires_in", 2) {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse::<u64>().ok(),
                _ => None,
            }
            .map_or(Duration::from_secs(300), |s| {
                Duration::from_secs(s.min(86_400))
            });
            assert_eq!(lifetime, expected);
        }
    }
    let code = token_error_code(data);
    if !code.is_empty() {
        let inner = code
            .strip_prefix(" (")
            .and_then(|c| c.strip_suffix(')'))
            .expect(&code);
        assert!(inner.len() <= 64);
        assert!(
            inner
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'),
            "{code}"
        );
    }
});
