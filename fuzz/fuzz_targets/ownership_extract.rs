//! What the ownership guards read from an upstream's answer: a JSON path as an operator
//! writes it (the first line) evaluated over the answer's bytes (the rest). Never panics;
//! an accepted path prints back as itself; `select` and `select_mut` agree; a list's ids
//! are one per item of the array the path names, and each id is a valid object id.
#![no_main]

use idgate_config::{JsonPath, ListOwnership, ListRule};
use idgate_proxy::checks::ownership::{list_ids, object_id_of};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(head) = std::str::from_utf8(head) else { return };
    // `items|id`: the list's array and an item's id; one path alone is both.
    let (items_text, id_text) = head.split_once('|').unwrap_or((head, head));
    let Ok(items) = JsonPath::parse(items_text) else { return };
    assert_eq!(JsonPath::parse(&items.to_string()).as_ref(), Ok(&items));
    let id = JsonPath::parse(id_text).unwrap_or_else(|_| JsonPath::root());

    let Ok(mut doc) = serde_json::from_slice::<Value>(body) else { return };
    let selected = items.select(&doc).cloned();
    assert_eq!(items.select_mut(&mut doc).map(|v| v.clone()), selected);
    if let Some(v) = &selected {
        if let Some(oid) = object_id_of(v) {
            assert!(!oid.as_str().is_empty());
        }
    }
    let list = ListOwnership {
        rule: ListRule::Filter,
        items: items.clone(),
        id,
    };
    match (list_ids(&doc, &list), selected) {
        (Some(ids), Some(Value::Array(a))) => assert_eq!(ids.len(), a.len()),
        (None, Some(Value::Array(_))) => panic!("an array was not read as a list"),
        (Some(_), _) => panic!("a list read where there is no array"),
        (None, _) => {}
    }
});
