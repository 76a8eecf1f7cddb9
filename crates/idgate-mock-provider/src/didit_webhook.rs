//! Didit's webhook signing, byte for byte: the canonical JSON it sends and signs, and the
//! three signatures it puts on every delivery (`X-Signature`, `X-Signature-V2`,
//! `X-Signature-Simple`, with `X-Timestamp`).
//!
//! Didit serialises the envelope the way Python's `json.dumps(body, sort_keys=True,
//! separators=(",", ":"))` does after turning whole-number floats into integers. Two
//! variants matter:
//!
//! - the body on the wire ([`Escaping::Ascii`], `ensure_ascii=True`): every character outside
//!   printable ASCII written as `\uXXXX` (lowercase hex, surrogate pairs above U+FFFF).
//!   `X-Signature` is the HMAC of exactly these bytes;
//! - the same document with non-ASCII left as UTF-8 ([`Escaping::Utf8`],
//!   `ensure_ascii=False`), which `X-Signature-V2` signs — receivers that re-serialise a
//!   parsed body can still verify it.
//!
//! `X-Signature-Simple` signs only `"{timestamp}:{session_id}:{status}:{webhook_type}"`.
//!
//! The module is public so that idgate's webhook verifier tests can produce deliveries
//! exactly as Didit does.

use ring::hmac;
use serde_json::{Map, Number, Value};

/// How characters outside printable ASCII are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escaping {
    /// `\uXXXX` for everything outside U+0020..=U+007E (Python `ensure_ascii=True`).
    Ascii,
    /// Non-ASCII as UTF-8; only `"`, `\` and control characters escaped
    /// (Python `ensure_ascii=False`).
    Utf8,
}

/// The webhook headers Didit sends.
pub const HEADER_SIGNATURE: &str = "x-signature";
pub const HEADER_SIGNATURE_V2: &str = "x-signature-v2";
pub const HEADER_SIGNATURE_SIMPLE: &str = "x-signature-simple";
pub const HEADER_TIMESTAMP: &str = "x-timestamp";

/// Serialises `value` as Didit's canonical JSON: keys sorted by code point, no whitespace,
/// whole-number floats as integers, other floats as Python's `repr` writes them.
pub fn canonical_json(value: &Value, escaping: Escaping) -> String {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value, escaping);
    out
}

fn write_value(out: &mut String, value: &Value, escaping: Escaping) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_string(out, s, escaping),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, escaping);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, escaping),
    }
}

fn write_object(out: &mut String, map: &Map<String, Value>, escaping: Escaping) {
    // Sorted here rather than relying on serde_json's map order, which a `preserve_order`
    // feature anywhere in the build would change. Byte order of UTF-8 is code-point order,
    // which is how Python sorts `str` keys.
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, key, escaping);
        out.push(':');
        write_value(out, value, escaping);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &Number) {
    if let Some(u) = n.as_u64() {
        out.push_str(&u.to_string());
    } else if let Some(i) = n.as_i64() {
        out.push_str(&i.to_string());
    } else if let Some(f) = n.as_f64() {
        write_float(out, f);
    } else {
        // Only reachable with serde_json's arbitrary-precision numbers: keep their text.
        out.push_str(&n.to_string());
    }
}

/// Whole floats as integers (Didit's `shorten_floats`), others as Python's `repr`.
fn write_float(out: &mut String, f: f64) {
    if !f.is_finite() {
        // JSON has no NaN or infinity and serde_json never produces them.
        out.push_str("null");
        return;
    }
    if f.fract() == 0.0 {
        // 2^63 as f64: below it the conversion to i64 is exact.
        const I64_BOUND: f64 = 9_223_372_036_854_775_808.0;
        if f.abs() < I64_BOUND {
            out.push_str(&(f as i64).to_string());
        } else {
            out.push_str(&exact_integer(f));
        }
        return;
    }
    out.push_str(&python_float_repr(f));
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed notation when the
/// decimal exponent is in -4..16, otherwise as `d.ddde±XX`.
fn python_float_repr(f: f64) -> String {
    // Rust's `{:e}` also prints the shortest round-tripping digits: "1.2345e-7".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let n = i32::try_from(digits.len()).unwrap_or(i32::MAX);
    // The value is 0.DIGITS × 10^decpt.
    let decpt = exp + 1;
    let body = if decpt <= -4 || decpt > 16 {
        let (first, rest) = digits.split_at(1);
        let exp_sign = if exp < 0 { '-' } else { '+' };
        if rest.is_empty() {
            format!("{first}e{exp_sign}{:02}", exp.abs())
        } else {
            format!("{first}.{rest}e{exp_sign}{:02}", exp.abs())
        }
    } else if decpt <= 0 {
        format!("0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
    } else if decpt >= n {
        format!("{digits}{}.0", "0".repeat((decpt - n) as usize))
    } else {
        let (int, frac) = digits.split_at(decpt as usize);
        format!("{int}.{frac}")
    };
    format!("{sign}{body}")
}

/// The exact decimal value of a whole double of at least 2^63 (Python's `int(f)`).
fn exact_integer(f: f64) -> String {
    let bits = f.to_bits();
    let negative = bits >> 63 == 1;
    let exponent = ((bits >> 52) & 0x7ff) as i32 - 1075;
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    // Little-endian base-10^9 limbs.
    let mut limbs: Vec<u64> = vec![mantissa % 1_000_000_000, mantissa / 1_000_000_000];
    for _ in 0..exponent.max(0) {
        let mut carry = 0;
        for limb in &mut limbs {
            let v = *limb * 2 + carry;
            *limb = v % 1_000_000_000;
            carry = v / 1_000_000_000;
        }
        if carry > 0 {
            limbs.push(carry);
        }
    }
    while limbs.len() > 1 && limbs.last() == Some(&0) {
        limbs.pop();
    }
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    let mut iter = limbs.iter().rev();
    if let Some(top) = iter.next() {
        out.push_str(&top.to_string());
    }
    for limb in iter {
        out.push_str(&format!("{limb:09}"));
    }
    out
}

fn write_string(out: &mut String, s: &str, escaping: Escaping) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => push_u_escape(out, c as u32),
            c if escaping == Escaping::Ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    push_u_escape(out, u32::from(*unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_u_escape(out: &mut String, unit: u32) {
    out.push_str(&format!("\\u{unit:04x}"));
}

/// Lowercase hex HMAC-SHA256 of `message` under `secret`.
pub fn hmac_sha256_hex(secret: &[u8], message: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    idgate_codec::hex::encode(hmac::sign(&key, message).as_ref())
}

/// `X-Signature`: the HMAC of the raw body bytes as sent.
pub fn signature_v1(secret: &str, raw_body: &[u8]) -> String {
    hmac_sha256_hex(secret.as_bytes(), raw_body)
}

/// `X-Signature-V2`: the HMAC of the canonical JSON with non-ASCII characters unescaped.
pub fn signature_v2(secret: &str, body: &Value) -> String {
    hmac_sha256_hex(
        secret.as_bytes(),
        canonical_json(body, Escaping::Utf8).as_bytes(),
    )
}

/// The string `X-Signature-Simple` signs: `"{timestamp}:{session_id}:{status}:{webhook_type}"`,
/// each taken from the body (a missing field is empty).
pub fn simple_message(body: &Value) -> String {
    let field = |name: &str| match body.get(name) {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => canonical_json(other, Escaping::Utf8),
    };
    format!(
        "{}:{}:{}:{}",
        field("timestamp"),
        field("session_id"),
        field("status"),
        field("webhook_type")
    )
}

/// `X-Signature-Simple`.
pub fn signature_simple(secret: &str, body: &Value) -> String {
    hmac_sha256_hex(secret.as_bytes(), simple_message(body).as_bytes())
}

/// A webhook ready to send: the body bytes and the four headers Didit puts on it.
#[derive(Debug, Clone)]
pub struct SignedWebhook {
    /// The canonical JSON with non-ASCII escaped: exactly the bytes to POST.
    pub body: Vec<u8>,
    pub signature: String,
    pub signature_v2: String,
    pub signature_simple: String,
    /// The body's `timestamp`, as text.
    pub timestamp: String,
}

impl SignedWebhook {
    /// The (lowercase) header names and values to send with the body.
    pub fn headers(&self) -> [(&'static str, &str); 4] {
        [
            (HEADER_SIGNATURE, &self.signature),
            (HEADER_SIGNATURE_V2, &self.signature_v2),
            (HEADER_SIGNATURE_SIMPLE, &self.signature_simple),
            (HEADER_TIMESTAMP, &self.timestamp),
        ]
    }
}

/// Serialises and signs a webhook envelope the way Didit does.
pub fn sign(secret: &str, envelope: &Value) -> SignedWebhook {
    let body = canonical_json(envelope, Escaping::Ascii).into_bytes();
    let timestamp = match envelope.get("timestamp") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => canonical_json(other, Escaping::Utf8),
    };
    SignedWebhook {
        signature: signature_v1(secret, &body),
        signature_v2: signature_v2(secret, envelope),
        signature_simple: signature_simple(secret, envelope),
        timestamp,
        body,
    }
}

/// Checks a lowercase-hex signature in constant time; anything that is not 64 lowercase hex
/// digits fails.
pub fn verify_hex(secret: &[u8], message: &[u8], signature_hex: &str) -> bool {
    // Uppercase digits are refused: the providers send lowercase.
    let Some(tag) = idgate_codec::hex::decode_lower(signature_hex) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::verify(&key, message, &tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "whsec_test_secret";

    fn sample() -> Value {
        json!({
            "session_id": "11111111-2222-4333-8444-555555555555",
            "status": "Approved",
            "webhook_type": "status.updated",
            "timestamp": 1767225600,
            "vendor_data": "user-42",
            "decision": {"id_verification": {"full_name": "José Müller", "score": 97.0, "age": 41.5}}
        })
    }

    // Expected values computed independently with CPython 3.11's json and hmac modules
    // (see the test below for the exact calls).
    const PY_V1_BODY: &str = r#"{"decision":{"id_verification":{"age":41.5,"full_name":"Jos\u00e9 M\u00fcller","score":97}},"session_id":"11111111-2222-4333-8444-555555555555","status":"Approved","timestamp":1767225600,"vendor_data":"user-42","webhook_type":"status.updated"}"#;
    const PY_V2_BODY: &str = r#"{"decision":{"id_verification":{"age":41.5,"full_name":"José Müller","score":97}},"session_id":"11111111-2222-4333-8444-555555555555","status":"Approved","timestamp":1767225600,"vendor_data":"user-42","webhook_type":"status.updated"}"#;
    const PY_V1_SIG: &str = "4c6d5085d7578fe0373f68b9bc9745cb840d784b6423d98cdda66f533ff6cf6e";
    const PY_V2_SIG: &str = "7a8d413a517efeabfc501c3dca356da1ec6225e1bd54d83170c5858f0adc8dbb";
    const PY_SIMPLE_SIG: &str = "0c962904b7e53a58a3ab6a8f39e81e58649f0537938eb41e808ab7294fac38ce";

    #[test]
    fn canonical_json_matches_python_json_dumps_sorted_compact() {
        // json.dumps(shorten_floats(body), sort_keys=True, separators=(",", ":")) and the
        // same with ensure_ascii=False.
        assert_eq!(canonical_json(&sample(), Escaping::Ascii), PY_V1_BODY);
        assert_eq!(canonical_json(&sample(), Escaping::Utf8), PY_V2_BODY);
    }

    #[test]
    fn non_ascii_name_makes_v1_and_v2_differ_and_both_verify() {
        let signed = sign(SECRET, &sample());
        assert_eq!(signed.body, PY_V1_BODY.as_bytes());
        assert_eq!(signed.signature, PY_V1_SIG);
        assert_eq!(signed.signature_v2, PY_V2_SIG);
        assert_eq!(signed.signature_simple, PY_SIMPLE_SIG);
        assert_eq!(signed.timestamp, "1767225600");
        assert_ne!(signed.signature, signed.signature_v2);

        assert!(verify_hex(
            SECRET.as_bytes(),
            &signed.body,
            &signed.signature
        ));
        assert!(verify_hex(
            SECRET.as_bytes(),
            PY_V2_BODY.as_bytes(),
            &signed.signature_v2
        ));
        assert!(verify_hex(
            SECRET.as_bytes(),
            b"1767225600:11111111-2222-4333-8444-555555555555:Approved:status.updated",
            &signed.signature_simple
        ));
        // Each signature covers only its own form of the message.
        assert!(!verify_hex(
            SECRET.as_bytes(),
            PY_V2_BODY.as_bytes(),
            &signed.signature
        ));
        assert!(!verify_hex(b"other", &signed.body, &signed.signature));
        assert!(!verify_hex(
            SECRET.as_bytes(),
            &signed.body,
            &signed.signature.to_uppercase()
        ));
    }

    #[test]
    fn ascii_only_body_gets_identical_v1_and_v2() {
        let body = json!({"b": 1, "a": "plain"});
        let signed = sign(SECRET, &body);
        assert_eq!(signed.body, br#"{"a":"plain","b":1}"#);
        assert_eq!(signed.signature, signed.signature_v2);
    }

    #[test]
    fn floats_and_escapes_follow_python() {
        // json.dumps([1e-05, 1.5e-07, 0.1, 123.456, -0.5, "\x7f\x01\u2028😀", 1e300])
        // with 1e300 shortened to int(1e300).
        let v = json!([
            1e-05,
            1.5e-07,
            0.1,
            123.456,
            -0.5,
            "\u{7f}\u{1}\u{2028}😀",
            1e300
        ]);
        let big = "1000000000000000052504760255204420248704468581108159154915854115511802457988908195786371375080447864043704443832883878176942523235360430575644792184786706982848387200926575803737830233794788090059368953234970799945081119038967640880074652742780142494579258788820056842838115669472196386865459400540160";
        assert_eq!(
            canonical_json(&v, Escaping::Ascii),
            format!(r#"[1e-05,1.5e-07,0.1,123.456,-0.5,"\u007f\u0001\u2028\ud83d\ude00",{big}]"#)
        );
        assert_eq!(
            canonical_json(&v, Escaping::Utf8),
            format!("[1e-05,1.5e-07,0.1,123.456,-0.5,\"\u{7f}\\u0001\u{2028}😀\",{big}]")
        );
        assert_eq!(
            canonical_json(&json!([0.0, -0.0, 2.5e-4, 1e16]), Escaping::Ascii),
            "[0,0,0.00025,10000000000000000]"
        );
        assert_eq!(
            canonical_json(&json!(["q\"b\\n\n\t"]), Escaping::Ascii),
            r#"["q\"b\\n\n\t"]"#
        );
    }

    #[test]
    fn simple_message_uses_body_fields() {
        assert_eq!(
            simple_message(&sample()),
            "1767225600:11111111-2222-4333-8444-555555555555:Approved:status.updated"
        );
        assert_eq!(simple_message(&json!({})), ":::");
    }
}
