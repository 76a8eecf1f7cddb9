//! JSON strings written straight into a byte buffer, escaped exactly as `serde_json`
//! escapes them, for the lines the gateway serializes by hand on its hot paths (the access
//! log, the audit trail).

use std::io::Write as _;

/// Whether `s` needs no escaping: printable ASCII without `"` or `\`. Eight bytes at a
/// time, the rest looked up.
pub fn is_plain(s: &str) -> bool {
    let (words, tail) = s.as_bytes().as_chunks::<8>();
    words.iter().all(|w| plain_word(u64::from_le_bytes(*w)))
        && tail.iter().all(|&b| PLAIN[usize::from(b)])
}

/// Whether none of eight bytes is under 0x20, `"`, `\` or from 0x7f up. Each test sets a
/// byte's high bit where that byte fails it; a borrow or carry can set one only above a
/// byte that fails, so the answer for the word is exact.
fn plain_word(w: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    const SPACES: u64 = u64::from_le_bytes([0x20; 8]);
    let (q, b) = (w ^ QUOTES, w ^ BACKSLASHES);
    let quote = q.wrapping_sub(ONES) & !q;
    let backslash = b.wrapping_sub(ONES) & !b;
    let control = w.wrapping_sub(SPACES) & !w;
    let high = w | w.wrapping_add(ONES);
    (quote | backslash | control | high) & HIGH == 0
}

/// [`is_plain`] for each byte, looked up rather than compared three times.
static PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b' ';
    while b <= b'~' {
        table[b as usize] = b != b'"' && b != b'\\';
        b += 1;
    }
    table
};

/// `s` as a JSON string, quotes included.
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_escaped(out, s);
    out.push(b'"');
}

/// `s`'s content as inside a JSON string, escaped, without the quotes.
pub fn write_escaped(out: &mut Vec<u8>, s: &str) {
    if is_plain(s) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => {
                // Writing to a Vec cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(s: &str) -> String {
        let mut out = Vec::new();
        write_string(&mut out, s);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        assert_eq!(
            string("spiffe://example.org/a"),
            r#""spiffe://example.org/a""#
        );
        assert_eq!(string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(string("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(string("\u{1}\u{1f}"), r#""\u0001\u001f""#);
        assert_eq!(string("é→\u{7f}"), "\"é→\u{7f}\"");
        assert!(is_plain("GET /v3/session/"));
        assert!(!is_plain("tab\there"));
    }

    #[test]
    fn a_string_is_plain_exactly_when_each_of_its_bytes_is_whatever_its_place() {
        // Every byte value at every place of a 17-byte string (two words and a tail), among
        // bytes that are plain and bytes that carry or borrow (0x7e, 0x20, 0x21, 0x5b).
        for fill in [b'a', b'~', b' ', b'!', b'['] {
            for at in 0..17 {
                for v in 0..=255u8 {
                    let mut bytes = [fill; 17];
                    bytes[at] = v;
                    let Ok(s) = std::str::from_utf8(&bytes) else {
                        continue;
                    };
                    let each = s.bytes().all(|b| PLAIN[usize::from(b)]);
                    assert_eq!(is_plain(s), each, "byte {v:#04x} at {at} among {fill:#04x}");
                }
            }
        }
        // Several bytes past ASCII in one word, and a word that is all of one kind.
        assert!(!is_plain("aé→b"));
        assert!(!is_plain(
            "\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}\u{7f}"
        ));
        assert!(is_plain("~~~~~~~~ ~~~~~~~~"));
    }
}
