#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::*;
use crate::action::REDACTED;

pub(crate) fn profile(rules: &[(&str, Action)]) -> Profile {
    Profile::new(
        rules
            .iter()
            .map(|(p, a)| Rule {
                path: MaskPath::parse(p).unwrap(),
                action: *a,
            })
            .collect(),
    )
}

/// HMAC-SHA256 in memory, counting how often it is asked.
struct Key {
    key: ring::hmac::Key,
    calls: AtomicUsize,
}

impl Key {
    fn new(secret: &[u8]) -> Self {
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            calls: AtomicUsize::new(0),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no key")]
struct NoKey;

impl Pseudonymizer for Key {
    type Error = NoKey;

    async fn macs(&self, inputs: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, NoKey> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Ok(inputs
            .iter()
            .map(|i| {
                let mut out = [0u8; 32];
                out.copy_from_slice(ring::hmac::sign(&self.key, i).as_ref());
                out
            })
            .collect())
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

fn mask(p: &Profile, mut doc: Value, key: &Key) -> Result<Value, MaskError<NoKey>> {
    block_on(p.mask(&mut doc, key)).map(|_| doc)
}

fn expected_pseudonym(secret: &[u8], value: &str) -> String {
    let tag = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        value.as_bytes(),
    );
    crate::pseudonym(tag.as_ref().try_into().unwrap())
}

fn decision() -> Value {
    json!({
        "session_id": "11111111-2222-4333-8444-555555555555",
        "status": "Approved",
        "vendor_data": "user-42",
        "id_verifications": [
            {
                "status": "Approved",
                "document_number": "BAA000589",
                "date_of_birth": "1980-01-01",
                "full_name": "Carmen Española Española",
                "parsed_address": {"city": "Madrid", "postal_code": "28001"},
                "warnings": []
            },
            {
                "status": "Declined",
                "document_number": "T22000129",
                "date_of_birth": "1964-08-12T00:00:00Z",
                "full_name": "Erika Mustermann",
                "parsed_address": null,
                "warnings": []
            }
        ],
        "aml_screenings": [
            {"screened_data": {"date_of_birth": "1980-01-01", "full_name": "Carmen Española Española"}}
        ]
    })
}

#[test]
fn each_action_applies_where_its_path_names_values() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let p = profile(&[
        (
            "$.id_verifications[*].document_number",
            Action::Mask { keep: 4 },
        ),
        ("$..date_of_birth", Action::TruncateDate),
        ("$..full_name", Action::Redact),
        ("$..parsed_address", Action::Drop),
        ("$.vendor_data", Action::Pseudonymize),
    ]);
    let key = Key::new(secret);
    let out = mask(&p, decision(), &key).unwrap();
    assert_eq!(
        out,
        json!({
            "session_id": "11111111-2222-4333-8444-555555555555",
            "status": "Approved",
            "vendor_data": expected_pseudonym(secret, "user-42"),
            "id_verifications": [
                {"status": "Approved", "document_number": "*****0589", "date_of_birth": "1980",
                 "full_name": REDACTED, "warnings": []},
                {"status": "Declined", "document_number": "*****0129", "date_of_birth": "1964",
                 "full_name": REDACTED, "warnings": []}
            ],
            "aml_screenings": [
                {"screened_data": {"date_of_birth": "1980", "full_name": REDACTED}}
            ]
        })
    );
    let text = out.to_string();
    for secret_value in [
        "BAA000589",
        "1980-01-01",
        "Carmen",
        "Madrid",
        "user-42",
        "Erika",
    ] {
        assert!(!text.contains(secret_value), "{secret_value} in {text}");
    }
}

#[test]
fn the_first_rule_naming_a_value_decides_it() {
    let p = profile(&[
        ("$.id_verifications[*].status", Action::Allow),
        ("$.id_verifications[*].*", Action::Redact),
        ("$..status", Action::Drop),
    ]);
    let out = mask(&p, decision(), &Key::new(b"k")).unwrap();
    let items = out["id_verifications"].as_array().unwrap();
    assert_eq!(items[0]["status"], "Approved");
    assert_eq!(items[0]["document_number"], REDACTED);
    assert_eq!(items[0]["warnings"], REDACTED);
    // The top-level status is named only by the last rule.
    assert!(out.get("status").is_none());

    // Allow keeps a container, and the values inside are still judged one by one.
    let p = profile(&[
        ("$.aml_screenings", Action::Allow),
        ("$..full_name", Action::Drop),
    ]);
    let out = mask(&p, decision(), &Key::new(b"k")).unwrap();
    assert_eq!(
        out["aml_screenings"][0]["screened_data"],
        json!({"date_of_birth": "1980-01-01"})
    );
    // A value inside one that is replaced is gone with it, whatever rule names it.
    let p = profile(&[
        ("$.id_verifications", Action::Redact),
        ("$..document_number", Action::Block),
    ]);
    let out = mask(&p, decision(), &Key::new(b"k")).unwrap();
    assert_eq!(out["id_verifications"], REDACTED);
}

#[test]
fn indexes_are_the_upstreams_even_after_a_drop() {
    let p = profile(&[("$.a[0]", Action::Drop), ("$.a[1]", Action::Redact)]);
    let out = mask(&p, json!({"a": ["x", "y", "z"]}), &Key::new(b"k")).unwrap();
    assert_eq!(out, json!({"a": [REDACTED, "z"]}));
    let p = profile(&[("$.a[*]", Action::Drop)]);
    let out = mask(&p, json!({"a": [1, [2], {"b": 3}]}), &Key::new(b"k")).unwrap();
    assert_eq!(out, json!({"a": []}));
}

#[test]
fn descendants_are_found_at_any_depth_but_never_the_root() {
    let p = profile(&[("$..x", Action::Redact)]);
    let doc = json!({"x": 1, "a": {"x": {"x": 2}}, "b": [[{"x": null}]], "c": "x"});
    let out = mask(&p, doc, &Key::new(b"k")).unwrap();
    assert_eq!(
        out,
        json!({"x": REDACTED, "a": {"x": REDACTED}, "b": [[{"x": null}]], "c": "x"})
    );
    let p = profile(&[("$..*", Action::Redact)]);
    assert_eq!(
        mask(&p, json!({"a": {"b": 1}, "c": [2]}), &Key::new(b"k")).unwrap(),
        json!({"a": REDACTED, "c": REDACTED})
    );
    // A scalar document has nothing inside it to name.
    assert_eq!(mask(&p, json!("x"), &Key::new(b"k")).unwrap(), json!("x"));
    let p = profile(&[("$..[1]", Action::Drop)]);
    assert_eq!(
        mask(&p, json!([[1, 2], {"a": [3, 4]}]), &Key::new(b"k")).unwrap(),
        json!([[1]])
    );
}

#[test]
fn block_refuses_a_present_value_and_ignores_null_or_absent() {
    let p = profile(&[("$..ssn", Action::Block), ("$..name", Action::Redact)]);
    let key = Key::new(b"k");
    let err = mask(&p, json!({"a": [{"ssn": "123-45-6789"}]}), &key).unwrap_err();
    match err {
        MaskError::Blocked(b) => {
            assert_eq!(
                b,
                Blocked {
                    rule: 0,
                    path: "$..ssn".into()
                }
            );
            assert!(!b.to_string().contains("123-45"));
        }
        other => panic!("{other}"),
    }
    assert_eq!(
        mask(&p, json!({"ssn": null, "name": "n"}), &key).unwrap(),
        json!({"ssn": null, "name": REDACTED})
    );
    assert!(mask(&p, json!({"other": 1}), &key).is_ok());
    // Blocking is decided before any pseudonym is asked for.
    let p = profile(&[("$.id", Action::Pseudonymize), ("$.ssn", Action::Block)]);
    assert!(mask(&p, json!({"id": "a", "ssn": "x"}), &key).is_err());
    assert_eq!(key.calls.load(Ordering::Relaxed), 0);
    // The second walk alone refuses too.
    let mut doc = json!({"ssn": "x"});
    assert!(p.apply(&mut doc, &Pseudonyms::default()).is_err());
}

#[test]
fn pseudonyms_come_from_one_batch_and_are_stable_per_key() {
    let p = profile(&[("$..user", Action::Pseudonymize)]);
    let doc = json!({"a": {"user": "u-1"}, "b": [{"user": "u-2"}, {"user": "u-1"}, {"user": 7}]});
    let k1 = Key::new(b"first key, at least thirty-two bytes");
    let k2 = Key::new(b"second key, at least thirty-two bytes");
    let inputs = p.pseudonym_inputs(&doc).unwrap();
    assert_eq!(inputs, [b"u-1".to_vec(), b"u-2".to_vec(), b"7".to_vec()]);
    let once = mask(&p, doc.clone(), &k1).unwrap();
    let again = mask(&p, doc.clone(), &k1).unwrap();
    let other = mask(&p, doc, &k2).unwrap();
    assert_eq!(
        k1.calls.load(Ordering::Relaxed),
        2,
        "one batch per document"
    );
    assert_eq!(once, again);
    assert_eq!(once["a"]["user"], once["b"][1]["user"]);
    assert_ne!(once["a"]["user"], once["b"][0]["user"]);
    assert_ne!(once["a"]["user"], other["a"]["user"]);
    assert!(once["b"][2]["user"].as_str().unwrap().starts_with("ps_"));
    // Nothing to pseudonymize: the key is not asked at all.
    let k3 = Key::new(b"k");
    mask(&p, json!({"user": null, "x": 1}), &k3).unwrap();
    assert_eq!(k3.calls.load(Ordering::Relaxed), 0);
}

#[test]
fn a_pseudonymizer_that_fails_or_answers_short_fails_the_masking() {
    struct Short;
    impl Pseudonymizer for Short {
        type Error = NoKey;
        async fn macs(&self, _: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, NoKey> {
            Ok(vec![])
        }
    }
    struct Broken;
    impl Pseudonymizer for Broken {
        type Error = NoKey;
        async fn macs(&self, _: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, NoKey> {
            Err(NoKey)
        }
    }
    let p = profile(&[("$.a", Action::Pseudonymize)]);
    let mut doc = json!({"a": "x"});
    assert!(matches!(
        block_on(p.mask(&mut doc, &Short)),
        Err(MaskError::Incomplete { asked: 1, got: 0 })
    ));
    assert!(matches!(
        block_on(p.mask(&mut doc, &Broken)),
        Err(MaskError::Pseudonymizer(NoKey))
    ));
    // Without its pseudonym, a value is redacted rather than left.
    let report = p.apply(&mut doc, &Pseudonyms::default()).unwrap();
    assert_eq!((doc, report.changed), (json!({"a": REDACTED}), 1));
}

#[test]
fn an_answer_with_more_distinct_values_to_pseudonymize_than_the_bound_is_refused_unasked() {
    let p = profile(&[("$.users[*].id", Action::Pseudonymize)]);
    let users = |n: usize| {
        // Each value twice: only distinct values count.
        let users: Vec<Value> = (0..2 * n).map(|i| json!({"id": i % n})).collect();
        json!({ "users": users })
    };
    let key = Key::new(b"k");
    let masked = mask(&p, users(MAX_PSEUDONYMS), &key).unwrap();
    assert_eq!(key.calls.load(Ordering::Relaxed), 1);
    assert_eq!(
        masked["users"].as_array().map(Vec::len),
        Some(2 * MAX_PSEUDONYMS)
    );
    let key = Key::new(b"k");
    let err = mask(&p, users(MAX_PSEUDONYMS + 1), &key).unwrap_err();
    assert!(
        matches!(err, MaskError::TooManyPseudonyms { count } if count == MAX_PSEUDONYMS + 1),
        "{err}"
    );
    assert_eq!(key.calls.load(Ordering::Relaxed), 0, "the key was asked");
}

#[test]
fn the_report_counts_what_changed() {
    let p = profile(&[
        ("$.a", Action::Drop),
        ("$.b", Action::Redact),
        ("$.c", Action::Redact),
        ("$.d", Action::Allow),
    ]);
    let mut doc = json!({"a": 1, "b": 2, "c": null, "d": 3, "e": 4});
    let report = p.apply(&mut doc, &Pseudonyms::default()).unwrap();
    assert_eq!(report.changed, 2);
    assert_eq!(doc, json!({"b": REDACTED, "c": null, "d": 3, "e": 4}));
    assert!(!p.pseudonymizes());
    assert!(profile(&[("$.x", Action::Pseudonymize)]).pseudonymizes());
}

/// Distinct inputs in the order first seen, whether there are few (searched) or many
/// (hashed), and across the change from one to the other.
#[test]
fn inputs_are_distinct_and_in_first_seen_order_however_many() {
    for distinct in [1, 15, 16, 17, 40] {
        let mut inputs = Inputs::default();
        let values: Vec<Vec<u8>> = (0..distinct)
            .map(|i| format!("v{i}").into_bytes())
            .collect();
        for (i, v) in values.iter().enumerate() {
            inputs.add(v);
            // Every earlier one again, and this one twice.
            for earlier in &values[..=i] {
                inputs.add(earlier);
            }
            inputs.add(v);
        }
        assert_eq!(inputs.list, values, "{distinct} distinct inputs");
    }
}

#[test]
fn pseudonyms_are_found_by_their_input_whether_few_or_many() {
    for n in [1usize, 3, Inputs::FEW, Inputs::FEW + 1, 40] {
        let inputs: Vec<Vec<u8>> = (0..n).map(|i| format!("v-{i}").into_bytes()).collect();
        let macs: Vec<[u8; 32]> = (0..n).map(|i| [i as u8; 32]).collect();
        let p = Pseudonyms::new(inputs.clone(), &macs);
        for (input, mac) in inputs.iter().zip(&macs) {
            assert_eq!(
                p.get(input),
                Some(action::pseudonym(mac).as_str()),
                "{n} inputs"
            );
        }
        assert_eq!(p.get(b"v-unknown"), None, "{n} inputs");
    }
}

#[test]
fn pseudonyms_debug_shows_neither_the_values_nor_their_pseudonyms() {
    let mac = [7u8; 32];
    let p = Pseudonyms::new(vec![b"jane.doe@example.com".to_vec()], &[mac]);
    let shown = format!("{p:?}");
    assert!(!shown.contains("jane.doe"), "{shown}");
    assert!(!shown.contains(&action::pseudonym(&mac)), "{shown}");
    assert!(shown.contains("values: 1"), "{shown}");
}
