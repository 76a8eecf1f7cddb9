//! JSON strings written straight into a byte buffer, escaped exactly as `serde_json`
//! escapes them, for the lines the gateway serializes by hand on its hot paths (the access
//! log, the audit trail).

use std::io::Write as _;

/// Whether `s` needs no escaping: printable ASCII without `"` or `\`.
pub fn is_plain(s: &str) -> bool {
    s.bytes().all(|b| PLAIN[usize::from(b)])
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
}
