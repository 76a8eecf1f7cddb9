//! Percent-encoding (RFC 3986 §2.1) and its `application/x-www-form-urlencoded` variant,
//! where a space is `+`. Escapes are written with capital hex digits.
//!
//! Decoding comes in two kinds: strict ([`decode`], [`decode_form`]), for values that are
//! refused when malformed, and lenient ([`decode_form_lossy`]), for parsers that take what
//! they can and leave a broken escape as it was written.

use std::borrow::Cow;

use crate::hex;

const UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends the escape of `byte`: `%` and two capital hex digits.
pub fn push_escape(out: &mut String, byte: u8) {
    out.push('%');
    out.push(char::from(UPPER[usize::from(byte >> 4)]));
    out.push(char::from(UPPER[usize::from(byte & 0x0f)]));
}

/// RFC 3986 §2.3 unreserved characters: `A-Z a-z 0-9 - . _ ~`.
pub const fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// What `application/x-www-form-urlencoded` leaves as it is (RFC 6749 Appendix B, the
/// WHATWG URL standard): `A-Z a-z 0-9 * - . _`.
pub fn is_form_plain(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'*' | b'-' | b'.' | b'_')
}

/// Form-encodes `s`: the bytes `keep` says are plain stay, a space becomes `+`, every other
/// byte is escaped.
pub fn encode_form(s: &str, keep: fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else if b == b' ' {
            out.push('+');
        } else {
            push_escape(&mut out, b);
        }
    }
    out
}

/// The byte of the escape starting at `b[at]` (a `%`), if two hex digits follow.
pub fn escaped_byte(b: &[u8], at: usize) -> Option<u8> {
    let hi = hex::digit(*b.get(at + 1)?)?;
    let lo = hex::digit(*b.get(at + 2)?)?;
    Some((hi << 4) | lo)
}

/// Decodes escapes; `plus` decodes `+` as a space. Strict: a `%` without two hex digits
/// after it is `None`; lenient: it stays as written.
fn decode_bytes(s: &str, plus: bool, strict: bool) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    // Most values (ids in paths) hold nothing to decode: copied whole.
    if !b.iter().any(|&c| c == b'%' || (plus && c == b'+')) {
        return Some(b.to_vec());
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match escaped_byte(b, i) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                None if strict => return None,
                None => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

/// Decodes the escapes of `s` (`+` stays a `+`); `None` when a `%` is not followed by two
/// hex digits. The bytes may not be UTF-8: the caller decides what they must be.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    decode_bytes(s, false, true)
}

/// Decodes a form-encoded value (`+` is a space); `None` when a `%` is not followed by two
/// hex digits or the result is not UTF-8.
pub fn decode_form(s: &str) -> Option<String> {
    String::from_utf8(decode_bytes(s, true, true)?).ok()
}

/// Decodes a form-encoded value as far as it goes: a broken escape stays as written, bytes
/// that are not UTF-8 become U+FFFD. Borrowed when there is nothing to decode.
pub fn decode_form_lossy(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let bytes = decode_bytes(s, true, false).unwrap_or_default();
    Cow::Owned(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_keeps_what_its_set_says_and_escapes_the_rest_in_capitals() {
        assert_eq!(encode_form("a b:c/ü", is_form_plain), "a+b%3Ac%2F%C3%BC");
        assert_eq!(encode_form("Az09-._*", is_form_plain), "Az09-._*");
        assert_eq!(encode_form("~+%", is_form_plain), "%7E%2B%25");
        assert_eq!(encode_form("a~b*c d", is_unreserved), "a~b%2Ac+d");
        let mut s = String::new();
        push_escape(&mut s, 0x0a);
        push_escape(&mut s, 0xfe);
        assert_eq!(s, "%0A%FE");
    }

    #[test]
    fn strict_decoding_refuses_broken_escapes() {
        assert_eq!(decode("a%20b+c%2f").as_deref(), Some(&b"a b+c/"[..]));
        assert_eq!(decode("%ff").as_deref(), Some(&[0xff][..]));
        for bad in ["%", "%2", "%zz", "a%2", "%+1", "%-1"] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
        assert_eq!(decode_form("a+b%3Ac").as_deref(), Some("a b:c"));
        // Nothing to decode: as it is (a `+` stays one outside forms).
        assert_eq!(decode("3f2c-a+b").as_deref(), Some(&b"3f2c-a+b"[..]));
        assert_eq!(decode_form("plain").as_deref(), Some("plain"));
        assert_eq!(decode("").as_deref(), Some(&b""[..]));
        assert_eq!(decode_form("%ff"), None);
        assert_eq!(decode_form("%zz"), None);
    }

    #[test]
    fn lossy_decoding_keeps_broken_escapes_and_borrows_plain_text() {
        assert!(matches!(decode_form_lossy("plain"), Cow::Borrowed("plain")));
        assert_eq!(decode_form_lossy("a+b%41%zz%4"), "a bA%zz%4");
        assert_eq!(decode_form_lossy("%ff"), "\u{fffd}");
        assert_eq!(decode_form_lossy("%"), "%");
    }

    #[test]
    fn an_encoded_form_value_decodes_to_itself() {
        for s in ["", "a b", "ünïcödé & = + % ~*", "\u{0}\u{7f}"] {
            for keep in [is_form_plain, is_unreserved] {
                assert_eq!(decode_form(&encode_form(s, keep)).as_deref(), Some(s));
            }
        }
    }
}
