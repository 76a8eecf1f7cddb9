//! Strict JSON for token headers, claims and key documents, and for any document the gateway
//! judges before another party reads it (a request body checked against a schema): no
//! member name twice at any depth. `serde_json` alone keeps the last of two duplicate
//! members while other parsers keep the first, and a document read one way by the gateway
//! and another way by the issuer's tooling or the upstream is a known way to smuggle values.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `bytes` as one JSON value (surrounding whitespace allowed) with no duplicate
/// member names. A duplicate is a data error ([`serde_json::error::Category::Data`]), the
/// only one this parse raises; the error gives its line and column.
pub fn value(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    serde_json::from_slice::<Strict>(bytes).map(|s| s.0)
}

/// Parses `bytes` as one JSON object with no duplicate member names; `None` otherwise.
pub(crate) fn object(bytes: &[u8]) -> Option<Map<String, Value>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict::deserialize(&mut de).ok()?;
    de.end().ok()?;
    match value.0 {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// A JSON value that refuses duplicate member names. Depth is bounded by `serde_json`'s
/// own recursion limit.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom("duplicate member name"));
            }
            let Strict(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::object;

    #[test]
    fn accepts_objects_and_refuses_everything_else() {
        assert!(object(br#"{"a":1,"b":[1,2.5,"x",null,true,{"c":{}}]}"#).is_some());
        for bad in [
            &br#"[1]"#[..],
            br#""x""#,
            br#"{"a":1}{"b":2}"#,
            br#"{"a":1} x"#,
            br#"{"a":1,"a":2}"#,
            br#"{"a":{"b":1,"b":1}}"#,
            br#"{"a":[{"b":1,"b":1}]}"#,
            br#"{"a":1"#,
            b"\xff",
            b"",
        ] {
            assert!(object(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(object(deep.as_bytes()).is_none());
    }
}
