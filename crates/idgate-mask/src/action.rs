//! What a rule does to the value its path names, and the pure transforms behind it.
//!
//! An action that cannot apply to a value's type (a date rule on a number, a mask on an
//! object) redacts the value instead: a rule never leaves the value it names as it was.
//! `null` stays `null` under every action but `drop` (it holds nothing to hide).

use std::borrow::Cow;

use base64::Engine as _;
use serde_json::Value;

/// The fixed marker a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// What happens to a value a rule's path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The member (or array element) is removed.
    Drop,
    /// The value becomes [`REDACTED`].
    Redact,
    /// A string (or a number, as read: `1.50` as `1.5`) keeps its last `keep` characters;
    /// the others become `*`. A value of `keep` characters or fewer is all `*`.
    Mask { keep: usize },
    /// An ISO 8601 date or date-time (`1990-07-13`, `1990-07-13T08:00:00Z`, `1990-07`)
    /// becomes its year, `"1990"`.
    TruncateDate,
    /// A string (or a number, as read) becomes `ps_` and the unpadded base64url of its
    /// HMAC-SHA256 under the profile's key: equal values give equal pseudonyms under one key.
    Pseudonymize,
    /// The value is passed as it is; the values inside it are still judged by their own
    /// first matching rule.
    Allow,
    /// The answer is refused if the value is present and not `null`.
    Block,
}

impl Action {
    /// The action as the configuration names it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Redact => "redact",
            Self::Mask { .. } => "mask",
            Self::TruncateDate => "truncate_date",
            Self::Pseudonymize => "pseudonymize",
            Self::Allow => "allow",
            Self::Block => "block",
        }
    }

    /// Every action name, as the configuration spells them.
    pub const NAMES: [&'static str; 7] = [
        "drop",
        "redact",
        "mask",
        "truncate_date",
        "pseudonymize",
        "allow",
        "block",
    ];
}

/// `s` with all but its last `keep` characters replaced by `*`; all of them when it has
/// no more than `keep`. Counted in characters, so the result has as many as `s`.
pub fn mask_chars(s: &str, keep: usize) -> String {
    let mut out = Vec::with_capacity(s.len());
    mask_chars_into(&mut out, s, keep);
    // Only `*` and whole characters of `s` were written.
    String::from_utf8(out).unwrap_or_default()
}

/// [`mask_chars`] appended to `out`.
pub(crate) fn mask_chars_into(out: &mut Vec<u8>, s: &str, keep: usize) {
    let n = s.chars().count();
    // A value no longer than what would be kept is hidden whole.
    let hidden = if n <= keep { n } else { n - keep };
    out.resize(out.len() + hidden, b'*');
    let kept_from = s.char_indices().nth(hidden).map_or(s.len(), |(at, _)| at);
    out.extend_from_slice(s.as_bytes().get(kept_from..).unwrap_or_default());
}

fn digits(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_digit)
}

fn two_digits_within(b: &[u8], low: u8, high: u8) -> bool {
    b.len() == 2 && digits(b) && (low..=high).contains(&((b[0] - b'0') * 10 + (b[1] - b'0')))
}

/// The year of an ISO 8601 calendar date or date-time in its extended form (`YYYY`,
/// `YYYY-MM`, `YYYY-MM-DD`, then optionally `T` or a space and a time of digits, `:`, `.`,
/// and a zone `Z` or `±hh:mm`); `None` for anything else.
pub fn truncate_date(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() < 4 || !digits(&b[..4]) {
        return None;
    }
    let year = &s[..4];
    let rest = &b[4..];
    if rest.is_empty() {
        return Some(year);
    }
    let month = rest.strip_prefix(b"-")?;
    if month.len() < 2 || !two_digits_within(&month[..2], 1, 12) {
        return None;
    }
    let rest = &month[2..];
    if rest.is_empty() {
        return Some(year);
    }
    let day = rest.strip_prefix(b"-")?;
    if day.len() < 2 || !two_digits_within(&day[..2], 1, 31) {
        return None;
    }
    let rest = &day[2..];
    if rest.is_empty() {
        return Some(year);
    }
    let time = match rest[0] {
        b'T' | b't' | b' ' => &rest[1..],
        _ => return None,
    };
    let valid_time = time.len() >= 5
        && two_digits_within(&time[..2], 0, 24)
        && time[2] == b':'
        && two_digits_within(&time[3..5], 0, 59)
        && time[5..].iter().all(|c| {
            c.is_ascii_digit() || matches!(c, b':' | b'.' | b',' | b'+' | b'-' | b'Z' | b'z')
        });
    valid_time.then_some(year)
}

/// A pseudonym as it appears in a masked answer: `ps_` and the unpadded base64url of the
/// HMAC-SHA256 tag.
pub fn pseudonym(mac: &[u8; 32]) -> String {
    let mut out = String::with_capacity(3 + 43);
    out.push_str("ps_");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(mac, &mut out);
    out
}

/// The bytes a value is pseudonymized from: a string's UTF-8, a number as read, a 64-bit
/// integer or a double (so `123` and `"123"` share a pseudonym); `None` for other types,
/// which are redacted.
pub(crate) fn pseudonym_input(v: &Value) -> Option<Cow<'_, [u8]>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_bytes())),
        Value::Number(n) => Some(Cow::Owned(n.to_string().into_bytes())),
        _ => None,
    }
}

/// What `action` leaves in place of the JSON string whose contents are `s`, written to
/// `out` as JSON: the same as [`replace`] on that string, for a string read from a text
/// without escapes (`s` holds no `"`, `\` or control character, so every character
/// kept from it is written as it is). `pseudonym` is the pseudonym of `s` when the action
/// needs one.
pub(crate) fn replace_plain_str(
    out: &mut Vec<u8>,
    action: Action,
    s: &str,
    pseudonym: Option<&str>,
) {
    out.push(b'"');
    match action {
        Action::Mask { keep } => mask_chars_into(out, s, keep),
        Action::TruncateDate => {
            out.extend_from_slice(truncate_date(s).unwrap_or(REDACTED).as_bytes());
        }
        Action::Pseudonymize => out.extend_from_slice(pseudonym.unwrap_or(REDACTED).as_bytes()),
        _ => out.extend_from_slice(REDACTED.as_bytes()),
    }
    out.push(b'"');
}

/// The value `action` leaves in place of `v` (not for `Drop`, `Allow` or `Block`, which the
/// walk handles); `pseudonym` is the pseudonym of `v` when the action needs one.
pub(crate) fn replace(action: Action, v: &Value, pseudonym: Option<&str>) -> Value {
    let redacted = || Value::String(REDACTED.to_owned());
    match (action, v) {
        (_, Value::Null) => Value::Null,
        (Action::Mask { keep }, Value::String(s)) => Value::String(mask_chars(s, keep)),
        (Action::Mask { keep }, Value::Number(n)) => {
            Value::String(mask_chars(&n.to_string(), keep))
        }
        (Action::TruncateDate, Value::String(s)) => {
            truncate_date(s).map_or_else(redacted, |y| Value::String(y.to_owned()))
        }
        (Action::Pseudonymize, Value::String(_) | Value::Number(_)) => {
            pseudonym.map_or_else(redacted, |p| Value::String(p.to_owned()))
        }
        _ => redacted(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_keep_the_last_characters_and_the_length() {
        assert_eq!(mask_chars("BAA000589", 4), "*****0589");
        assert_eq!(mask_chars("Müller", 2), "****er");
        assert_eq!(mask_chars("1234", 4), "****");
        assert_eq!(mask_chars("12", 4), "**");
        assert_eq!(mask_chars("secret", 0), "******");
        assert_eq!(mask_chars("", 4), "");
    }

    #[test]
    fn dates_and_date_times_become_their_year() {
        for (s, year) in [
            ("1980-01-01", Some("1980")),
            ("1990-07-13T08:15:00Z", Some("1990")),
            ("1990-07-13T08:15:00.123456+02:00", Some("1990")),
            ("1990-07-13 08:15", Some("1990")),
            ("1990-07", Some("1990")),
            ("1990", Some("1990")),
            ("1990-13-01", None),
            ("1990-00-01", None),
            ("1990-01-32", None),
            ("1990-01-01x", None),
            ("1990-01-01T8:00", None),
            ("1990-01-01T08:00 and more", None),
            ("13/07/1990", None),
            ("19900713", None),
            ("199", None),
            ("", None),
            ("ab90-01-01", None),
        ] {
            assert_eq!(truncate_date(s), year, "{s}");
        }
    }

    /// A string read from a text without escapes is replaced byte for byte as the parsed
    /// value would be: the same action, the same JSON out.
    #[test]
    fn a_plain_string_is_replaced_exactly_as_its_parsed_value_would_be() {
        let actions = [
            Action::Redact,
            Action::Mask { keep: 0 },
            Action::Mask { keep: 1 },
            Action::Mask { keep: 4 },
            Action::Mask { keep: 7 },
            Action::Mask { keep: 8 },
            Action::Mask { keep: usize::MAX },
            Action::TruncateDate,
            Action::Pseudonymize,
            Action::Drop,
            Action::Allow,
            Action::Block,
        ];
        let strings = [
            "",
            "x",
            "naïve ✓",
            "1990-07-13",
            "1990-07-13T08:00:00Z",
            "not a date",
            "\u{7f}del",
            "line\u{2028}sep",
            "emoji 🙂 and Müller",
            "AB123456",
        ];
        for action in actions {
            for s in strings {
                for pseudonym in [Some("ps_abc-_"), None] {
                    let mut fast = Vec::new();
                    replace_plain_str(&mut fast, action, s, pseudonym);
                    let parsed = Value::String(s.to_owned());
                    let slow = serde_json::to_vec(&replace(action, &parsed, pseudonym)).unwrap();
                    assert_eq!(
                        String::from_utf8(fast).unwrap(),
                        String::from_utf8(slow).unwrap(),
                        "{action:?} {s:?} {pseudonym:?}"
                    );
                }
                let parsed = Value::String(s.to_owned());
                assert_eq!(pseudonym_input(&parsed).as_deref(), Some(s.as_bytes()));
            }
        }
    }

    #[test]
    fn pseudonyms_are_ps_and_base64url() {
        let p = pseudonym(&[0xfb; 32]);
        assert!(p.starts_with("ps_-_"), "{p}");
        assert_eq!(p.len(), 3 + 43);
        assert!(!p.contains('='));
    }

    #[test]
    fn an_action_that_does_not_fit_the_value_redacts_it() {
        let r = |a, v: Value| replace(a, &v, Some("ps_x"));
        assert_eq!(r(Action::Mask { keep: 2 }, json!(123456)), json!("****56"));
        assert_eq!(
            r(Action::Mask { keep: 2 }, json!({"a": 1})),
            json!(REDACTED)
        );
        assert_eq!(r(Action::TruncateDate, json!(1990)), json!(REDACTED));
        assert_eq!(r(Action::TruncateDate, json!("yesterday")), json!(REDACTED));
        assert_eq!(r(Action::Pseudonymize, json!("v")), json!("ps_x"));
        assert_eq!(r(Action::Pseudonymize, json!(true)), json!(REDACTED));
        assert_eq!(r(Action::Pseudonymize, json!(["a"])), json!(REDACTED));
        assert_eq!(r(Action::Redact, json!([1, 2])), json!(REDACTED));
        assert_eq!(
            replace(Action::Pseudonymize, &json!("v"), None),
            json!(REDACTED)
        );
        for a in [
            Action::Redact,
            Action::Mask { keep: 1 },
            Action::TruncateDate,
            Action::Pseudonymize,
        ] {
            assert_eq!(r(a, Value::Null), Value::Null);
        }
        assert_eq!(pseudonym_input(&json!(123)).as_deref(), Some(&b"123"[..]));
        assert_eq!(pseudonym_input(&json!("123")).as_deref(), Some(&b"123"[..]));
        assert_eq!(pseudonym_input(&json!(false)), None);
    }
}
