//! A JSON path in its simple form, naming one value inside a JSON document: `$` (the whole
//! document), then any number of `.name` (a member of an object) and `[n]` (an element of
//! an array), as in `$.session_id` or `$.results[0].session_id`. No wildcards, filters,
//! slices, quoted names or recursive descent: a path names at most one value, so what it
//! selects is never a matter of interpretation.
//!
//! Paths are written by the operator (`owns`, `list_items`, `list_id` on a route); the
//! documents they are evaluated on are an upstream's responses, which the gateway does not
//! trust: evaluation only walks the parsed document, never panics, allocates nothing.

use std::fmt;

use serde_json::Value;

/// One step of a [`JsonPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonStep {
    /// `.name`: the member `name` of an object.
    Member(String),
    /// `[n]`: the element `n` (from 0) of an array.
    Index(usize),
}

/// `$`, `$.a.b`, `$.a[0].b`: a path to one value of a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath {
    steps: Vec<JsonStep>,
}

/// Why a JSON path is not one of the simple form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonPathError {
    #[error("must start with '$'")]
    NoRoot,
    #[error("a '.' must be followed by a member name (letters, digits, '_' or '-')")]
    EmptyMember,
    #[error("'[' must hold an array index and be closed by ']' (only [0], [1], … are supported)")]
    BadIndex,
    #[error(
        "unexpected {0:?} at byte {1}: only $.name and $[n] steps are supported (no wildcards, filters or quotes)"
    )]
    Unexpected(char, usize),
}

impl JsonPath {
    /// The whole document.
    pub fn root() -> Self {
        Self { steps: Vec::new() }
    }

    pub fn parse(s: &str) -> Result<Self, JsonPathError> {
        let rest = s.strip_prefix('$').ok_or(JsonPathError::NoRoot)?;
        let bytes = rest.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'.' => {
                    let start = i + 1;
                    let end = bytes[start..]
                        .iter()
                        .position(|b| !is_name_byte(*b))
                        .map_or(bytes.len(), |n| start + n);
                    if end == start {
                        return Err(JsonPathError::EmptyMember);
                    }
                    steps.push(JsonStep::Member(rest[start..end].to_owned()));
                    i = end;
                }
                b'[' => {
                    let close = bytes[i..]
                        .iter()
                        .position(|b| *b == b']')
                        .ok_or(JsonPathError::BadIndex)?;
                    let digits = &rest[i + 1..i + close];
                    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(JsonPathError::BadIndex);
                    }
                    let n = digits.parse().map_err(|_| JsonPathError::BadIndex)?;
                    steps.push(JsonStep::Index(n));
                    i += close + 1;
                }
                _ => {
                    let c = rest[i..].chars().next().unwrap_or('?');
                    return Err(JsonPathError::Unexpected(c, i + 1));
                }
            }
        }
        Ok(Self { steps })
    }

    pub fn steps(&self) -> &[JsonStep] {
        &self.steps
    }

    /// The value the path names in `doc`, if there is one.
    pub fn select<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.steps.iter().try_fold(doc, |v, step| match step {
            JsonStep::Member(name) => v.as_object()?.get(name),
            JsonStep::Index(n) => v.as_array()?.get(*n),
        })
    }

    /// The value the path names in `doc`, to change it in place.
    pub fn select_mut<'v>(&self, doc: &'v mut Value) -> Option<&'v mut Value> {
        self.steps.iter().try_fold(doc, |v, step| match step {
            JsonStep::Member(name) => v.as_object_mut()?.get_mut(name),
            JsonStep::Index(n) => v.as_array_mut()?.get_mut(*n),
        })
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for step in &self.steps {
            match step {
                JsonStep::Member(name) => write!(f, ".{name}")?,
                JsonStep::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn simple_paths_parse_and_print_back() {
        for s in [
            "$",
            "$.session_id",
            "$.results[0].session_id",
            "$[2][0].a-b_c",
        ] {
            assert_eq!(JsonPath::parse(s).map(|p| p.to_string()), Ok(s.to_owned()));
        }
    }

    #[test]
    fn anything_beyond_the_simple_form_is_refused() {
        assert_eq!(JsonPath::parse("session_id"), Err(JsonPathError::NoRoot));
        assert_eq!(JsonPath::parse("$."), Err(JsonPathError::EmptyMember));
        assert_eq!(JsonPath::parse("$.a..b"), Err(JsonPathError::EmptyMember));
        assert_eq!(JsonPath::parse("$[*]"), Err(JsonPathError::BadIndex));
        assert_eq!(JsonPath::parse("$[-1]"), Err(JsonPathError::BadIndex));
        assert_eq!(JsonPath::parse("$[1"), Err(JsonPathError::BadIndex));
        assert_eq!(JsonPath::parse("$['a']"), Err(JsonPathError::BadIndex));
        assert!(matches!(
            JsonPath::parse("$.a b"),
            Err(JsonPathError::Unexpected(' ', 3))
        ));
        assert!(JsonPath::parse("$[99999999999999999999999]").is_err());
    }

    #[test]
    fn select_names_one_value_or_none() {
        let doc = json!({"a": {"b": [1, {"c": "x"}]}, "n": null});
        let at = |p: &str| {
            JsonPath::parse(p)
                .ok()
                .and_then(|p| p.select(&doc).cloned())
        };
        assert_eq!(at("$.a.b[1].c"), Some(json!("x")));
        assert_eq!(at("$.a.b[0]"), Some(json!(1)));
        assert_eq!(at("$.a.b[2]"), None);
        assert_eq!(at("$.a.c"), None);
        assert_eq!(at("$.a.b.c"), None);
        assert_eq!(at("$.n"), Some(Value::Null));
        assert_eq!(at("$.n.x"), None);
        assert_eq!(at("$"), Some(doc.clone()));
    }
}
