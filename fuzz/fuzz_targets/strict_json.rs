//! The strict JSON reader (`idgate_auth::jwt::json::value`) that a request body checked
//! against a route's schema goes through before the upstream reads it, as do tokens'
//! headers and claims and fetched key documents.
//!
//! Never panics; it accepts exactly the texts serde_json reads in which no object names a
//! member twice (however the name is escaped), to the value serde_json reads; it refuses
//! one serde_json reads only for such a name (a data error), and refuses the others as
//! serde_json does (a syntax or end-of-input error, or the same data error); and what it
//! accepts, written out again, reads back to itself.
#![no_main]

use std::collections::HashSet;
use std::fmt;

use idgate_auth::jwt::json;
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::error::Category;

/// Whether some object of a document names a member twice, the names compared as read.
struct Twice(bool);

struct TwiceVisitor;

impl<'de> Visitor<'de> for TwiceVisitor {
    type Value = Twice;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Twice, E> {
        Ok(Twice(false))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Twice, E> {
        Ok(Twice(false))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Twice, E> {
        Ok(Twice(false))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Twice, E> {
        Ok(Twice(false))
    }
    fn visit_str<E>(self, _: &str) -> Result<Twice, E> {
        Ok(Twice(false))
    }
    fn visit_unit<E>(self) -> Result<Twice, E> {
        Ok(Twice(false))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Twice, A::Error> {
        let mut twice = false;
        while let Some(Twice(t)) = seq.next_element()? {
            twice |= t;
        }
        Ok(Twice(twice))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Twice, A::Error> {
        let mut names = HashSet::new();
        let mut twice = false;
        while let Some(name) = map.next_key::<String>()? {
            twice |= !names.insert(name);
            let Twice(t) = map.next_value()?;
            twice |= t;
        }
        Ok(Twice(twice))
    }
}

impl<'de> Deserialize<'de> for Twice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TwiceVisitor)
    }
}

fuzz_target!(|data: &[u8]| {
    let reference = serde_json::from_slice::<Value>(data);
    match json::value(data) {
        Ok(v) => {
            assert_eq!(
                reference.as_ref().ok(),
                Some(&v),
                "read otherwise than serde_json"
            );
            let twice = serde_json::from_slice::<Twice>(data).expect("serde_json reads it");
            assert!(!twice.0, "a member named twice was accepted");
            let again = serde_json::to_vec(&v).expect("a value writes out");
            assert_eq!(
                json::value(&again).ok(),
                Some(v),
                "its own text reads otherwise"
            );
        }
        Err(e) => match &reference {
            Ok(_) => {
                assert_eq!(e.classify(), Category::Data, "{e}");
                let twice = serde_json::from_slice::<Twice>(data).expect("serde_json reads it");
                assert!(twice.0, "refused without a member named twice: {e}");
            }
            Err(r) => {
                // Refused by both: the strict reader may stop at a name given twice before
                // serde_json reaches the syntax error it stops at.
                assert!(
                    e.classify() == r.classify() || e.classify() == Category::Data,
                    "{e} / {r}"
                );
                let _ = serde_json::from_slice::<IgnoredAny>(data);
            }
        },
    }
});
