//! Response masking over an upstream's answer: masking rules as an operator writes them
//! (the first line: rules separated by tabs, each an action code and a JSON path, as in
//! `m3 $..document_number`, codes `d` drop, `r` redact, `m<keep>` mask, `t` truncate_date,
//! `p` pseudonymize, `a` allow, `b` block) applied to the answer (the rest of the input).
//!
//! Never panics; an accepted path prints back as a path that parses to itself; the masked
//! document is valid JSON; masking the text as it came (`mask_text`) accepts exactly the
//! texts serde_json reads and, where no object names a member twice, gives the masked
//! document; a reference matcher written from the rules' definition agrees
//! on whether the answer is blocked; and in the masked answer every value the first
//! matching rule names is in that rule's output form (absent, the marker, masked, a year,
//! a pseudonym, or `null`), so no value a rule masks is left as it was.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use idgate_mask::{
    Action, MaskError, MaskPath, MaskedText, Profile, Pseudonymizer, Rule, Segment, Selector,
    Step, TextMaskError, REDACTED,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// A stand-in key: SHA-256 of the value, ready at once.
struct Digest;

#[derive(Debug)]
struct Never;
impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}
impl std::error::Error for Never {}

impl Pseudonymizer for Digest {
    type Error = Never;
    fn macs(
        &self,
        inputs: &[Vec<u8>],
    ) -> impl Future<Output = Result<Vec<[u8; 32]>, Never>> + Send {
        let tags = inputs
            .iter()
            .map(|i| {
                let mut t = [0u8; 32];
                t.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, i).as_ref());
                t
            })
            .collect();
        std::future::ready(Ok(tags))
    }
}

fn now<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("masking waited with a pseudonymizer that never does"),
    }
}

fn rule(text: &str) -> Option<Rule> {
    let (code, path) = text.split_once(' ')?;
    let action = match code.as_bytes().first()? {
        b'd' => Action::Drop,
        b'r' => Action::Redact,
        b'm' => Action::Mask {
            keep: code[1..].parse().ok().filter(|k| *k < 64)?,
        },
        b't' => Action::TruncateDate,
        b'p' => Action::Pseudonymize,
        b'a' => Action::Allow,
        b'b' => Action::Block,
        _ => return None,
    };
    let path = MaskPath::parse(path).ok()?;
    assert_eq!(MaskPath::parse(&path.to_string()).as_ref(), Ok(&path), "{path}");
    Some(Rule { path, action })
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Member(&'a str),
    Index(usize),
}

fn selects(step: &Step, seg: Seg<'_>) -> bool {
    step.selector.matches(match seg {
        Seg::Member(m) => Segment::Member(m),
        Seg::Index(i) => Segment::Index(i),
    })
}

/// Whether `steps` name the location `loc`, by the definition: `..` skips any number of
/// levels, then its selector names the next one.
fn names(steps: &[Step], loc: &[Seg<'_>]) -> bool {
    match steps.split_first() {
        None => loc.is_empty(),
        Some((s, rest)) if s.descendant => {
            (0..loc.len()).any(|skip| selects(s, loc[skip]) && names(rest, &loc[skip + 1..]))
        }
        Some((s, rest)) => !loc.is_empty() && selects(s, loc[0]) && names(rest, &loc[1..]),
    }
}

fn first(rules: &[Rule], loc: &[Seg<'_>]) -> Option<Action> {
    rules
        .iter()
        .find(|r| names(r.path.steps(), loc))
        .map(|r| r.action)
}

fn children(v: &Value) -> Vec<(Seg<'_>, &Value)> {
    match v {
        Value::Object(m) => m.iter().map(|(k, c)| (Seg::Member(k), c)).collect(),
        Value::Array(a) => a.iter().enumerate().map(|(i, c)| (Seg::Index(i), c)).collect(),
        _ => Vec::new(),
    }
}

/// By the definition: a value a `block` rule decides is present and not null, below no
/// value another rule replaced.
fn blocked<'a>(rules: &[Rule], v: &'a Value, loc: &mut Vec<Seg<'a>>) -> bool {
    children(v).into_iter().any(|(seg, child)| {
        loc.push(seg);
        let hit = match first(rules, loc) {
            Some(Action::Block) => !child.is_null(),
            None | Some(Action::Allow) => blocked(rules, child, loc),
            Some(_) => false,
        };
        loc.pop();
        hit
    })
}

/// Every value of the masked document is in the form its deciding rule leaves.
fn check_forms<'a>(rules: &[Rule], v: &'a Value, loc: &mut Vec<Seg<'a>>) {
    for (seg, child) in children(v) {
        loc.push(seg);
        let action = first(rules, loc);
        let ok = child.is_null()
            || match (action, child) {
                (None | Some(Action::Allow), _) => {
                    check_forms(rules, child, loc);
                    true
                }
                (Some(Action::Drop | Action::Block), _) => false,
                (Some(_), Value::String(s)) if s == REDACTED => true,
                (Some(Action::Redact), _) => false,
                (Some(Action::Mask { keep }), Value::String(s)) => {
                    let n = s.chars().count();
                    s.chars().take(n.saturating_sub(keep)).all(|c| c == '*')
                        && (n > keep || s.chars().all(|c| c == '*'))
                }
                (Some(Action::TruncateDate), Value::String(s)) => {
                    s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit())
                }
                (Some(Action::Pseudonymize), Value::String(s)) => {
                    s.len() == 46 && s.starts_with("ps_")
                }
                _ => false,
            };
        assert!(ok, "{action:?} left {child} at depth {}", loc.len());
        loc.pop();
    }
}

/// Members of every object of a JSON text: its `:`s outside strings.
fn members_in_text(text: &[u8]) -> usize {
    let (mut n, mut in_string, mut escaped) = (0, false, false);
    for &b in text {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') | (false, _, b'"') => in_string = !in_string,
            (false, _, b':') => n += 1,
            _ => {}
        }
    }
    n
}

fn members_in_doc(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.len() + m.values().map(members_in_doc).sum::<usize>(),
        Value::Array(a) => a.iter().map(members_in_doc).sum(),
        _ => 0,
    }
}

fn depth(v: &Value) -> usize {
    children(v).iter().map(|(_, c)| depth(c)).max().map_or(0, |d| d + 1)
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(head) = std::str::from_utf8(head) else { return };
    let rules: Vec<Rule> = head.split('\t').filter_map(rule).take(16).collect();
    let profile = Profile::new(rules.clone());
    // The text masker reads a text exactly when serde_json does.
    let by_text = now(profile.mask_text(body, &Digest));
    let parsed = serde_json::from_slice::<Value>(body);
    assert_eq!(
        parsed.is_ok(),
        !matches!(by_text, Err(TextMaskError::NotJson(_))),
        "the text masker and serde_json disagree on whether this is JSON"
    );
    let Ok(mut doc) = parsed else { return };
    let original = doc.clone();
    let result = now(profile.mask(&mut doc, &Digest));
    // Where no object names a member twice (the document keeps only the last), both
    // maskers give the same answer.
    if members_in_text(body) == members_in_doc(&original) {
        match (&result, &by_text) {
            (Err(MaskError::Blocked(_)), Err(TextMaskError::Mask(MaskError::Blocked(_)))) => {}
            (Ok(r), Ok((MaskedText::Unchanged, t))) => assert_eq!((r.changed, t.changed), (0, 0)),
            (Ok(r), Ok((MaskedText::Changed(out), t))) => {
                let out: Value = serde_json::from_slice(out).expect("a masked text is JSON");
                assert_eq!(out, doc);
                assert_eq!(r.changed, t.changed);
            }
            (a, b) => panic!("the maskers disagree: {a:?} against {b:?}"),
        }
    }
    let text = serde_json::to_vec(&doc).expect("a masked document serializes");
    let again: Value = serde_json::from_slice(&text).expect("a masked document is JSON");
    assert_eq!(again, doc);

    // The reference matcher backtracks: keep it to documents and paths it walks quickly.
    let small = depth(&original) <= 24
        && rules.iter().all(|r| r.path.steps().len() <= 6)
        && text.len() <= 64 * 1024;
    if !small {
        return;
    }
    let expect_blocked = blocked(&rules, &original, &mut Vec::new());
    match result {
        Err(MaskError::Blocked(_)) => assert!(expect_blocked, "blocked without a reason"),
        Err(e) => panic!("{e}"),
        Ok(_) => {
            assert!(!expect_blocked, "a value a block rule names passed");
            // Indexes name the upstream's elements; once one is dropped the masked array
            // is indexed differently, so forms are compared only where no path uses one.
            let indexed = rules.iter().any(|r| {
                r.path
                    .steps()
                    .iter()
                    .any(|s| matches!(s.selector, Selector::Index(_)))
            });
            if !indexed {
                check_forms(&rules, &doc, &mut Vec::new());
            }
        }
    }
});
