#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use serde_json::Value;

use super::*;
use crate::engine::tests::profile;

/// SHA-256 of the value, ready at once: a stand-in key.
struct Digest;

#[derive(Debug, thiserror::Error)]
#[error("never")]
struct Never;

impl Pseudonymizer for Digest {
    type Error = Never;

    async fn macs(&self, inputs: &[Vec<u8>]) -> Result<Vec<[u8; 32]>, Never> {
        Ok(inputs
            .iter()
            .map(|i| {
                let mut t = [0u8; 32];
                t.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, i).as_ref());
                t
            })
            .collect())
    }
}

fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("waited on a pseudonymizer that never does"),
    }
}

fn masked(p: &Profile, text: &str) -> Result<(MaskedText, Report), TextMaskError<Never>> {
    now(p.mask_text(text.as_bytes(), &Digest))
}

fn changed_text(p: &Profile, text: &str) -> String {
    match masked(p, text).unwrap().0 {
        MaskedText::Changed(out) => String::from_utf8(out).unwrap(),
        MaskedText::Unchanged => panic!("unchanged: {text}"),
    }
}

#[test]
fn only_the_masked_values_change_members_keep_their_order_numbers_and_whitespace() {
    let p = profile(&[
        ("$..date_of_birth", Action::TruncateDate),
        ("$.drop_me", Action::Drop),
    ]);
    let text = concat!(
        r#"{ "z": 1.50, "drop_me": [1, 2], "#,
        r#""person": { "date_of_birth": "1990-07-13", "n": 1e2 }, "a": "\u00e9" }"#
    );
    assert_eq!(
        changed_text(&p, text),
        r#"{ "z": 1.50, "person": { "date_of_birth": "1990", "n": 1e2 }, "a": "\u00e9" }"#
    );
}

#[test]
fn a_text_no_rule_changes_passes_as_it_came() {
    let p = profile(&[("$..date_of_birth", Action::Redact)]);
    for text in [
        r#"{"a": {"date_of_birth": null}}"#,
        r#"[1, {"b": 2}]"#,
        "\"just a string\"",
        " 12 ",
    ] {
        let (out, report) = masked(&p, text).unwrap();
        assert_eq!((out, report.changed), (MaskedText::Unchanged, 0), "{text}");
    }
}

#[test]
fn dropping_members_and_elements_leaves_no_stray_commas() {
    let p = profile(&[("$..x", Action::Drop), ("$.list[1]", Action::Drop)]);
    let text = r#"{"x":1,"a":{"x":2},"b":[{"x":3,"y":4}],"list":[0,1,2],"x":5}"#;
    assert_eq!(
        changed_text(&p, text),
        r#"{"a":{},"b":[{"y":4}],"list":[0,2]}"#
    );
    let all = profile(&[("$.*", Action::Drop)]);
    assert_eq!(changed_text(&all, r#"{"a":1,"b":2}"#), "{}");
    assert_eq!(changed_text(&all, "[ 1 ,\n 2 ]"), "[  ]");
    // With whitespace around the commas: the first, a middle and the last dropped.
    let some = profile(&[
        ("$.d", Action::Drop),
        ("$.list[0]", Action::Drop),
        ("$.list[2]", Action::Drop),
        ("$.list[4]", Action::Drop),
    ]);
    assert_eq!(
        changed_text(
            &some,
            "{ \"d\" : 1 ,\n \"k\": 2, \"d\": [3] , \"list\": [ 0 , 1 , 2 , 3 , 4 ] , \"d\":4 }"
        ),
        "{ \"k\": 2 , \"list\": [ 1 , 3 ] }"
    );
}

#[test]
fn an_escaped_member_name_is_matched_by_what_it_spells() {
    let p = profile(&[("$.ssn", Action::Redact)]);
    assert_eq!(
        changed_text(&p, r#"{"\u0073sn":"123-45-6789"}"#),
        r#"{"\u0073sn":"[redacted]"}"#
    );
}

#[test]
fn a_member_named_twice_is_masked_both_times() {
    let p = profile(&[("$.ssn", Action::Mask { keep: 2 })]);
    assert_eq!(
        changed_text(&p, r#"{"ssn":"1234","ssn":"5678"}"#),
        r#"{"ssn":"**34","ssn":"**78"}"#
    );
    let block = profile(&[("$.ssn", Action::Block)]);
    assert!(matches!(
        masked(&block, r#"{"ssn":"1","ssn":null}"#),
        Err(TextMaskError::Mask(MaskError::Blocked(_)))
    ));
}

#[test]
fn a_pseudonym_is_the_one_the_parsed_document_gets() {
    let p = profile(&[("$..vendor_data", Action::Pseudonymize)]);
    let text = r#"{"vendor_data":"user-1","more":[{"vendor_data":123}]}"#;
    let mut doc: Value = serde_json::from_str(text).unwrap();
    now(p.mask(&mut doc, &Digest)).unwrap();
    let out: Value = serde_json::from_str(&changed_text(&p, text)).unwrap();
    assert_eq!(out, doc);
    assert!(out["vendor_data"].as_str().unwrap().starts_with("ps_"));
}

#[test]
fn a_text_with_more_distinct_values_to_pseudonymize_than_the_bound_is_refused() {
    let p = profile(&[("$[*]", Action::Pseudonymize)]);
    let list = |n: usize| {
        let items: Vec<String> = (0..n).map(|i| format!("\"v{i}\"")).collect();
        format!("[{}]", items.join(","))
    };
    assert!(masked(&p, &list(crate::MAX_PSEUDONYMS)).is_ok());
    assert!(matches!(
        masked(&p, &list(crate::MAX_PSEUDONYMS + 1)),
        Err(TextMaskError::Mask(MaskError::TooManyPseudonyms { .. }))
    ));
}

#[test]
fn what_serde_json_refuses_is_refused_and_what_it_reads_is_read() {
    let deep_ok = format!("{}{}", "[".repeat(127), "]".repeat(127));
    let deep_bad = format!("{}{}", "[".repeat(128), "]".repeat(128));
    let long_int = format!("1{}", "0".repeat(400));
    let long_fine = format!("1{}", "0".repeat(305));
    let cases: Vec<&str> = vec![
        "",
        " ",
        "{",
        "}",
        "[1,]",
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{a:1}"#,
        "[01]",
        "-",
        "1.",
        ".5",
        "1e",
        "1e+",
        "1e400",
        "-1e400",
        "1e-400",
        "0e99999",
        "1.5E+3",
        "-0",
        "tru",
        "nulll",
        "null null",
        "\"\\x\"",
        "\"\\u12\"",
        "\"\\uD800\"",
        "\"\\uDC00\"",
        "\"\\uD800\\u0041\"",
        "\"\\uD83D\\uDE00\"",
        "\"a\tb\"",
        "\"\u{7f}\"",
        "\u{feff}1",
        "[1 2]",
        r#"{"a":1 "b":2}"#,
        "\"unterminated",
        &deep_ok,
        &deep_bad,
        &long_int,
        &long_fine,
    ];
    let p = profile(&[("$..*", Action::Allow)]);
    for text in cases {
        let serde = serde_json::from_str::<Value>(text).is_ok();
        let ours = masked(&p, text).is_ok();
        assert_eq!(ours, serde, "{text:?}");
    }
    // A value a block rule names does not make a broken text JSON.
    let block = profile(&[("$.a", Action::Block)]);
    for text in [r#"{"a":1,"#, r#"{"a":1} x"#, r#"{"a":1,"b":[}"#] {
        assert!(
            matches!(masked(&block, text), Err(TextMaskError::NotJson(_))),
            "{text}"
        );
    }
    let invalid_utf8 = [b'"', 0xff, b'"'];
    assert!(now(p.mask_text(&invalid_utf8, &Digest)).is_err());
}

/// xorshift64*: reproducible choices without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMES: [&str; 9] = [
    "name",
    "date_of_birth",
    "vendor_data",
    "document_number",
    "a",
    "b",
    "ids",
    "é",
    "q\"t",
];

/// Writes a random value as JSON text, with random whitespace and escapes, and no member
/// name twice in an object (a parsed document would keep only the last).
fn write_value(rng: &mut Rng, depth: usize, out: &mut String) {
    let ws = |rng: &mut Rng, out: &mut String| {
        for _ in 0..rng.below(3) {
            out.push(*rng.pick(&[' ', '\n', '\t', '\r']));
        }
    };
    let kind = match depth {
        0 => 4 + rng.below(2),
        5.. => rng.below(4),
        _ => rng.below(6),
    };
    match kind {
        0 => out.push_str(rng.pick::<&str>(&["null", "true", "false"])),
        1 => out.push_str(rng.pick::<&str>(&[
            "0",
            "-0",
            "12",
            "1.50",
            "1e2",
            "-3.25E-2",
            "123456789012",
            "7",
        ])),
        2 | 3 => {
            let s = *rng.pick(&[
                "1990-07-13",
                "1990-07-13T08:00:00Z",
                "user-1",
                "AB123456",
                "",
                "naïve ✓",
                "line\nbreak",
                "12",
            ]);
            write_string(rng, s, out);
        }
        4 => {
            out.push('[');
            let n = rng.below(4);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                ws(rng, out);
                write_value(rng, depth + 1, out);
                ws(rng, out);
            }
            out.push(']');
        }
        _ => {
            out.push('{');
            let mut names: Vec<&str> = NAMES.to_vec();
            let n = rng.below(4);
            for i in 0..n {
                if i > 0 {
                    out.push(',');
                }
                let name = names.remove(rng.below(names.len()));
                ws(rng, out);
                write_string(rng, name, out);
                ws(rng, out);
                out.push(':');
                ws(rng, out);
                write_value(rng, depth + 1, out);
                ws(rng, out);
            }
            out.push('}');
        }
    }
}

/// A JSON string spelling `s`, some of its characters escaped.
fn write_string(rng: &mut Rng, s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if rng.below(5) == 0 => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

const PATHS: [&str; 12] = [
    "$..date_of_birth",
    "$.name",
    "$..*",
    "$.ids[*]",
    "$..[0]",
    "$.b",
    "$..vendor_data",
    "$['q\"t']",
    "$.a..document_number",
    "$.*.name",
    "$..['é']",
    "$[1]",
];

const ACTIONS: [Action; 8] = [
    Action::Drop,
    Action::Redact,
    Action::Mask { keep: 2 },
    Action::TruncateDate,
    Action::Pseudonymize,
    Action::Allow,
    Action::Allow,
    Action::Block,
];

/// Masking the text and masking the parsed document agree: both refuse the same texts, and
/// otherwise the masked text reads as the masked document, with the same count of changes.
#[test]
fn masking_the_text_agrees_with_masking_the_parsed_document() {
    let mut rng = Rng(0x1dea_7e57_0bad_cafe);
    let (mut compared, mut blocked, mut changed) = (0, 0, 0);
    for _ in 0..20_000 {
        let mut text = String::new();
        write_value(&mut rng, 0, &mut text);
        let rules: Vec<(&str, Action)> = (0..1 + rng.below(3))
            .map(|_| (*rng.pick(&PATHS), *rng.pick(&ACTIONS)))
            .collect();
        let p = profile(&rules);
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        let by_doc = now(p.mask(&mut doc, &Digest));
        let by_text = masked(&p, &text);
        match (by_doc, by_text) {
            (Err(MaskError::Blocked(_)), Err(TextMaskError::Mask(MaskError::Blocked(_)))) => {
                blocked += 1;
            }
            (Ok(report), Ok((MaskedText::Unchanged, r))) => {
                assert_eq!((report.changed, r.changed), (0, 0), "{text} {rules:?}");
            }
            (Ok(report), Ok((MaskedText::Changed(out), r))) => {
                let out: Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(out, doc, "{text} {rules:?}");
                assert_eq!(report.changed, r.changed, "{text} {rules:?}");
                changed += 1;
            }
            (a, b) => panic!("{text} {rules:?}: {a:?} against {b:?}"),
        }
        compared += 1;
    }
    // The generator reaches every outcome.
    assert!(
        blocked > 400 && changed > 2000,
        "{compared} {blocked} {changed}"
    );
}

/// Cut, flipped and spliced texts: refused here exactly when `serde_json` refuses them.
#[test]
fn damaged_texts_are_refused_exactly_when_serde_json_refuses_them() {
    let mut rng = Rng(0x005e_ed0f_da7a);
    let p = profile(&[
        ("$..b", Action::Block),
        ("$..*", Action::Allow),
        ("$..name", Action::Redact),
    ]);
    let bytes: &[u8] =
        b"{}[]\",:\\u0123456789abcdefABCDEF-+.eEtrunlfs \n\t\x00\x1f\x7f\xc3\xa9\xff";
    let (mut refused, mut read) = (0, 0);
    for _ in 0..20_000 {
        let mut text = String::new();
        write_value(&mut rng, 0, &mut text);
        let mut raw = text.into_bytes();
        for _ in 0..1 + rng.below(3) {
            match rng.below(3) {
                0 if !raw.is_empty() => {
                    let at = rng.below(raw.len());
                    raw[at] = *rng.pick(bytes);
                }
                1 if !raw.is_empty() => {
                    raw.truncate(rng.below(raw.len()));
                }
                _ => {
                    let at = rng.below(raw.len() + 1);
                    raw.insert(at, *rng.pick(bytes));
                }
            }
        }
        let serde = serde_json::from_slice::<Value>(&raw).is_ok();
        let ours = match now(p.mask_text(&raw, &Digest)) {
            Ok(_) | Err(TextMaskError::Mask(MaskError::Blocked(_))) => true,
            Err(TextMaskError::NotJson(_)) => false,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(ours, serde, "{:?}", String::from_utf8_lossy(&raw));
        if serde {
            read += 1;
        } else {
            refused += 1;
        }
    }
    assert!(refused > 5000 && read > 1000, "{refused} {read}");
}

#[test]
fn a_refusal_names_a_position_never_the_text() {
    let p = profile(&[("$.a", Action::Redact)]);
    let err = masked(&p, r#"{"a":"secret-value" "b":1}"#).unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("byte 20"), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
}

#[test]
fn a_strings_plain_run_ends_where_a_byte_by_byte_scan_says() {
    let by_byte = |b: &[u8]| b.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
    // Every byte value at every place of a run longer than two words.
    for value in 0..=255u8 {
        for at in 0..19 {
            let mut bytes = vec![b'a'; 19];
            bytes[at] = value;
            assert_eq!(plain_run(&bytes), by_byte(&bytes), "{value} at {at}");
        }
    }
    // Runs of any bytes, of every length up to five words.
    let mut rng = Rng(0x5eed_0fb1_7e55);
    for _ in 0..50_000 {
        let len = rng.below(41);
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert_eq!(plain_run(&bytes), by_byte(&bytes), "{bytes:?}");
    }
}

#[test]
fn dropping_every_element_of_a_long_array_notes_one_edit() {
    let p = profile(&[("$[*]", Action::Drop)]);
    let text = format!("[{}0]", "0, ".repeat(100_000));
    let walk = Walk::new(&p, &text).run().map_err(|_| ()).unwrap();
    assert_eq!((walk.edits.len(), walk.changed), (1, 100_001));
    assert_eq!(changed_text(&p, &text), "[]");
}
