//! JSON read the way Python's `json.loads` reads it, and written back the way Didit
//! writes it: `json.dumps(shorten_floats(body), sort_keys=True, separators=(",", ":"),
//! ensure_ascii=…)`. `X-Signature-V2` is an HMAC over that re-serialised form, so the
//! gateway has to reproduce it byte for byte from the body it received.
//!
//! The same tree serves every scheme for reading an event's id, session and type, so what
//! is extracted is exactly what was canonicalised (and signed). Numbers are kept as the
//! text Python would write for them: integers exactly (no `f64` on the way), other numbers
//! read as correctly rounded doubles, whole ones written as integers (Didit's
//! `shorten_floats`), the rest as Python's `repr` writes them.
//!
//! Stricter than Python where Python's leniency would let a body mean two things: a
//! duplicate key (Python keeps the last value, other parsers the first), a lone UTF-16
//! surrogate (not UTF-8), `NaN`/`Infinity` literals (not JSON) and numbers beyond a
//! double's range (which Python would write back as `Infinity`) are refused. Depth is
//! capped; every step is linear in the input.
//!
//! A whole double is written back as its exact integer, `1e308` as 309 digits: the
//! numbers of a body may be written back longer than they came by at most the body's own
//! size (`MIN_NUMBER_GROWTH` for a small body), so that the canonical form, and the work
//! to make it, stay within a small multiple of the body, signed or not. Didit writes whole
//! doubles as integers already, so its bodies never come near.

use std::fmt::Write as _;

/// Nesting deeper than this is refused (serde_json's default; webhook bodies use ~5).
const MAX_DEPTH: usize = 128;
/// Python refuses to convert longer integers (`sys.set_int_max_str_digits`).
const MAX_INT_DIGITS: usize = 4300;
/// How many bytes longer than received the numbers of a small body may be written back,
/// in all; a larger body's may grow by its own size.
const MIN_NUMBER_GROWTH: usize = 4096;

/// A parsed JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    /// The number as the canonical form writes it (`97`, `41.5`, `1e-05`).
    Number(String),
    Str(String),
    Array(Vec<Json>),
    /// Members sorted by key in code-point order, keys unique.
    Object(Vec<(String, Json)>),
}

/// Why a body is not JSON the canonical form can be made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JsonError {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("invalid JSON at byte {0}")]
    Syntax(usize),
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("a key appears twice in one object")]
    DuplicateKey,
    #[error("a lone UTF-16 surrogate in a string")]
    LoneSurrogate,
    #[error("an integer longer than {MAX_INT_DIGITS} digits")]
    IntegerTooLong,
    #[error("a number beyond the range of a double")]
    OutOfRange,
    #[error("numbers that would be written back far longer than they were sent")]
    NumbersTooLong,
}

/// How characters outside printable ASCII are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NonAscii {
    /// As UTF-8 (Python `ensure_ascii=False`): only `"`, `\` and control characters
    /// escaped. What Didit's integrations say `X-Signature-V2` signs.
    #[default]
    Unescaped,
    /// As `\uXXXX` for everything outside U+0020..=U+007E, surrogate pairs above U+FFFF
    /// (Python's default `ensure_ascii=True`): the form of the body on the wire.
    Escaped,
}

impl Json {
    /// The member `key` of an object.
    pub(crate) fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members
                .binary_search_by(|(k, _)| k.as_bytes().cmp(key.as_bytes()))
                .ok()
                .map(|i| &members[i].1),
            _ => None,
        }
    }

    /// The value at a path of object keys.
    pub(crate) fn path(&self, keys: &[&str]) -> Option<&Json> {
        keys.iter().try_fold(self, |v, k| v.get(k))
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A number whose canonical form is an integer that fits `i64`.
    pub(crate) fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Number(text) => text.parse().ok(),
            _ => None,
        }
    }
}

/// Parses a whole body (UTF-8, surrounding whitespace allowed).
pub(crate) fn parse(body: &[u8]) -> Result<Json, JsonError> {
    let text = std::str::from_utf8(body).map_err(|_| JsonError::NotUtf8)?;
    let mut p = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
        growth_left: body.len().max(MIN_NUMBER_GROWTH),
    };
    p.skip_ws();
    let value = p.value()?;
    p.skip_ws();
    if p.pos != p.bytes.len() {
        return Err(JsonError::Syntax(p.pos));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
    /// How much longer than their lexemes the numbers still to come may be written.
    growth_left: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn err<T>(&self) -> Result<T, JsonError> {
        Err(JsonError::Syntax(self.pos))
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect(&mut self, b: u8) -> Result<(), JsonError> {
        if self.peek() == Some(b) {
            self.pos += 1;
            Ok(())
        } else {
            self.err()
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, JsonError> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            self.err()
        }
    }

    fn value(&mut self) -> Result<Json, JsonError> {
        match self.peek() {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => self.string().map(Json::Str),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => self.err(),
        }
    }

    fn nested(&mut self, f: fn(&mut Self) -> Result<Json, JsonError>) -> Result<Json, JsonError> {
        if self.depth >= MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.depth += 1;
        let value = f(self);
        self.depth -= 1;
        value
    }

    fn object(&mut self) -> Result<Json, JsonError> {
        self.expect(b'{')?;
        self.skip_ws();
        let mut members: Vec<(String, Json)> = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(members));
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.err();
            }
            let key = self.string()?;
            self.skip_ws();
            self.expect(b':')?;
            self.skip_ws();
            let value = self.value()?;
            members.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    break;
                }
                _ => return self.err(),
            }
        }
        // UTF-8 byte order is code-point order, which is how Python sorts `str` keys.
        members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if members.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(JsonError::DuplicateKey);
        }
        Ok(Json::Object(members))
    }

    fn array(&mut self) -> Result<Json, JsonError> {
        self.expect(b'[')?;
        self.skip_ws();
        let mut items = Vec::new();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return self.err(),
            }
        }
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.expect(b'"')?;
        let mut out = String::new();
        loop {
            // Copy the run up to the next quote, backslash or control character at once;
            // each of those is ASCII, so the run ends on a character boundary.
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[start..self.pos]);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape(&mut out)?;
                }
                // A raw control character (Python's strict mode) or the end of the input.
                _ => return self.err(),
            }
        }
    }

    fn escape(&mut self, out: &mut String) -> Result<(), JsonError> {
        let Some(c) = self.peek() else {
            return self.err();
        };
        self.pos += 1;
        let decoded = match c {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{08}',
            b'f' => '\u{0c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = self.hex4()?;
                match unit {
                    0xd800..=0xdbff => {
                        // Python pairs a high surrogate with an escaped low one after it.
                        if self.bytes[self.pos..].starts_with(b"\\u") {
                            self.pos += 2;
                            let low = self.hex4()?;
                            if !(0xdc00..=0xdfff).contains(&low) {
                                return Err(JsonError::LoneSurrogate);
                            }
                            let code = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
                            char::from_u32(code).ok_or(JsonError::LoneSurrogate)?
                        } else {
                            return Err(JsonError::LoneSurrogate);
                        }
                    }
                    0xdc00..=0xdfff => return Err(JsonError::LoneSurrogate),
                    unit => char::from_u32(unit).ok_or(JsonError::LoneSurrogate)?,
                }
            }
            _ => return Err(JsonError::Syntax(self.pos - 1)),
        };
        out.push(decoded);
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or(JsonError::Syntax(self.pos))?;
        let mut unit = 0u32;
        for &d in digits {
            let v = idgate_codec::hex::digit(d).ok_or(JsonError::Syntax(self.pos))?;
            unit = (unit << 4) | u32::from(v);
        }
        self.pos += 4;
        Ok(unit)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`, Python's grammar (and JSON's).
    fn number(&mut self) -> Result<Json, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.err(),
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.err();
            }
            float = true;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.err();
            }
            float = true;
        }
        let lexeme = &self.text[start..self.pos];
        if !float {
            let digits = lexeme.trim_start_matches('-');
            if digits.len() > MAX_INT_DIGITS {
                return Err(JsonError::IntegerTooLong);
            }
            // Python's int("-0") is 0.
            let text = if digits == "0" { "0" } else { lexeme };
            return Ok(Json::Number(text.to_owned()));
        }
        // The grammar above is a subset of what Rust's correctly rounded parser takes.
        let f: f64 = lexeme.parse().map_err(|_| JsonError::Syntax(start))?;
        if f.is_infinite() {
            // Python would read `inf` and write `Infinity`, which is not JSON: no sender
            // that writes JSON can have meant it.
            return Err(JsonError::OutOfRange);
        }
        let text = super::number::float_text(f);
        self.growth_left = self
            .growth_left
            .checked_sub(text.len().saturating_sub(lexeme.len()))
            .ok_or(JsonError::NumbersTooLong)?;
        Ok(Json::Number(text))
    }
}

/// Writes `value` in the canonical form: keys sorted, no whitespace.
pub(crate) fn write(value: &Json, non_ascii: NonAscii, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(true) => out.push_str("true"),
        Json::Bool(false) => out.push_str("false"),
        Json::Number(text) => out.push_str(text),
        Json::Str(s) => write_str(s, non_ascii, out),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(item, non_ascii, out);
            }
            out.push(']');
        }
        Json::Object(members) => {
            out.push('{');
            for (i, (key, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(key, non_ascii, out);
                out.push(':');
                write(item, non_ascii, out);
            }
            out.push('}');
        }
    }
}

fn write_str(s: &str, non_ascii: NonAscii, out: &mut String) {
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
            c if u32::from(c) < 0x20 => u_escape(u32::from(c), out),
            c if non_ascii == NonAscii::Escaped && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    u_escape(u32::from(*unit), out);
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn u_escape(unit: u32, out: &mut String) {
    let _ = write!(out, "\\u{unit:04x}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(body: &str, non_ascii: NonAscii) -> Result<String, JsonError> {
        let mut out = String::new();
        write(&parse(body.as_bytes())?, non_ascii, &mut out);
        Ok(out)
    }

    #[test]
    fn sorts_keys_by_code_point_and_drops_whitespace() {
        assert_eq!(
            canonical(
                " {\"b\": [1, 2], \"a\": {\"é\": null, \"z\": true}, \"B\": false}\n",
                NonAscii::Unescaped
            )
            .unwrap(),
            r#"{"B":false,"a":{"z":true,"é":null},"b":[1,2]}"#
        );
    }

    #[test]
    fn numbers_follow_python_after_shorten_floats() {
        // json.dumps(shorten_floats(json.loads(s)), separators=(",", ":")) in CPython 3.11.
        let cases = [
            (
                "[0,-0,12,-7,123456789012345678901234567890]",
                "[0,0,12,-7,123456789012345678901234567890]",
            ),
            (
                "[97.0,-0.0,1E2,1.5e3,41.5,-0.5,0.1]",
                "[97,0,100,1500,41.5,-0.5,0.1]",
            ),
            (
                "[1e-05,1.5e-07,0.00025,123.456,2.5e-4]",
                "[1e-05,1.5e-07,0.00025,123.456,0.00025]",
            ),
            (
                "[1e22,1.7976931348623157e308]",
                "[10000000000000000000000,179769313486231570814527423731704356798070567525844996598917476803157260780028538760589558632766878171540458953514382464234321326889464182768467546703537516986049910576551282076245490090389328944075868508455133942304583236903222948165808559332123348274797826204144723168738177180919299881250404026184124858368]",
            ),
            (
                "[0.30000000000000004,1234567.125,9007199254740993.5]",
                "[0.30000000000000004,1234567.125,9007199254740994]",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                canonical(input, NonAscii::Escaped).unwrap(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn strings_escape_as_python_does() {
        let input =
            r#"["q\"b\\n\/", "\n\t\b\f\r\u0001\u001f", "\u007f é 😀 \u2028", "\ud83d\ude00"]"#;
        assert_eq!(
            canonical(input, NonAscii::Escaped).unwrap(),
            r#"["q\"b\\n/","\n\t\b\f\r\u0001\u001f","\u007f \u00e9 \ud83d\ude00 \u2028","\ud83d\ude00"]"#
        );
        assert_eq!(
            canonical(input, NonAscii::Unescaped).unwrap(),
            "[\"q\\\"b\\\\n/\",\"\\n\\t\\b\\f\\r\\u0001\\u001f\",\"\u{7f} é 😀 \u{2028}\",\"😀\"]"
        );
    }

    #[test]
    fn refuses_what_could_be_read_two_ways_or_is_not_json() {
        for (input, want) in [
            (r#"{"a":1,"a":2}"#, JsonError::DuplicateKey),
            (r#"["\ud800"]"#, JsonError::LoneSurrogate),
            (r#"["\udc00"]"#, JsonError::LoneSurrogate),
            (r#"["\ud800\u0041"]"#, JsonError::LoneSurrogate),
        ] {
            assert_eq!(parse(input.as_bytes()), Err(want), "{input}");
        }
        for bad in [
            "",
            " ",
            "{",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "1e",
            "-",
            "+1",
            "NaN",
            "Infinity",
            "-Infinity",
            "tru",
            "nul",
            "\"\t\"",
            "\"abc",
            "\"\\x\"",
            "\"\\u12\"",
            "{a:1}",
            "[1 2]",
            "{\"a\" 1}",
            "1 2",
            "\u{feff}{}",
        ] {
            assert!(
                matches!(parse(bad.as_bytes()), Err(JsonError::Syntax(_))),
                "{bad:?}: {:?}",
                parse(bad.as_bytes())
            );
        }
        assert_eq!(parse(b"\"\xff\""), Err(JsonError::NotUtf8));
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err(JsonError::TooDeep));
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parse(ok.as_bytes()).is_ok());
        assert_eq!(parse(b"[1e400]"), Err(JsonError::OutOfRange));
        assert_eq!(parse(b"-1e309"), Err(JsonError::OutOfRange));
        let long = "9".repeat(MAX_INT_DIGITS + 1);
        assert_eq!(parse(long.as_bytes()), Err(JsonError::IntegerTooLong));
    }

    #[test]
    fn a_body_of_huge_whole_floats_costs_no_more_than_its_size() {
        // `1e308` (5 bytes) is written back as 309 digits, made by shifting a bignum.
        let huge = |n: usize| format!(r#"{{"a":[{}]}}"#, vec!["1e308"; n].join(","));
        let body = huge(100_000);
        assert_eq!(
            canonical(&body, NonAscii::Unescaped).map(|out| out.len()),
            Err(JsonError::NumbersTooLong)
        );
        // A few such numbers are written exactly, as Python writes them; one more is not.
        let fits = MIN_NUMBER_GROWTH / 304;
        let out = canonical(&huge(fits), NonAscii::Unescaped).unwrap();
        let one = "100000000000000001097906362944045541740492309677311846336810682903157585404911491537163328978494688899061249669721172515611590283743140088328307009198146046031271664502933027185697489699588559043338384466165001178426897626212945177628091195786707458122783970171784415105291802893207873272974885715430223118336";
        assert_eq!(out, format!(r#"{{"a":[{}]}}"#, vec![one; fits].join(",")));
        assert_eq!(
            canonical(&huge(fits + 1), NonAscii::Unescaped),
            Err(JsonError::NumbersTooLong)
        );
        // Whatever is taken is written back within twice its size (and the allowance).
        for item in [
            "1e308",
            "1e18",
            "9.007199254740993e15",
            "1.5e300",
            "-1e22",
            "2e-7",
        ] {
            for n in [1, 10, 1000, 100_000] {
                let body = format!("[{}]", vec![item; n].join(","));
                if let Ok(out) = canonical(&body, NonAscii::Escaped) {
                    assert!(
                        out.len() <= 2 * body.len() + MIN_NUMBER_GROWTH,
                        "{n} x {item}: {} bytes from {}",
                        out.len(),
                        body.len()
                    );
                }
            }
        }
    }

    #[test]
    fn reads_members_by_path() {
        let v = parse(br#"{"data":{"id":"evt_1","n":1767225600.0,"x":1.5}}"#).unwrap();
        assert_eq!(
            v.path(&["data", "id"]).and_then(Json::as_str),
            Some("evt_1")
        );
        assert_eq!(
            v.path(&["data", "n"]).and_then(Json::as_i64),
            Some(1_767_225_600)
        );
        assert_eq!(v.path(&["data", "x"]).and_then(Json::as_i64), None);
        assert_eq!(v.path(&["data", "missing"]), None);
        assert_eq!(v.path(&["data", "id", "deeper"]), None);
    }
}
