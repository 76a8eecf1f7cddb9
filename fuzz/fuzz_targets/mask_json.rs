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
//! a pseudonym, or `null`), so no value a rule masks is left as it was. The last two hold
//! for both maskers: `mask_text`'s answer is read keeping every member of an object, a
//! name given twice included, as that masker keeps them all.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use idgate_mask::{
    Action, MaskError, MaskPath, MaskedText, Profile, Pseudonymizer, Rule, Segment, Selector, Step,
    TextMaskError, REDACTED,
};
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// A JSON document as its text has it: an object is its members in order, a name given
/// twice kept twice (a `serde_json::Value` keeps one). Numbers and booleans are told
/// apart from nothing else: no rule's output is one.
enum Doc {
    Null,
    Scalar,
    Str(String),
    Arr(Vec<Doc>),
    Obj(Vec<(String, Doc)>),
}

impl Doc {
    fn is_null(&self) -> bool {
        matches!(self, Doc::Null)
    }
}

impl From<&Value> for Doc {
    fn from(v: &Value) -> Self {
        match v {
            Value::Null => Doc::Null,
            Value::Bool(_) | Value::Number(_) => Doc::Scalar,
            Value::String(s) => Doc::Str(s.clone()),
            Value::Array(a) => Doc::Arr(a.iter().map(Doc::from).collect()),
            Value::Object(m) => {
                Doc::Obj(m.iter().map(|(k, c)| (k.clone(), Doc::from(c))).collect())
            }
        }
    }
}

impl std::fmt::Display for Doc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Doc::Null => f.write_str("null"),
            Doc::Scalar => f.write_str("a number or boolean"),
            Doc::Str(s) => write!(f, "{s:?}"),
            Doc::Arr(a) => write!(f, "an array of {}", a.len()),
            Doc::Obj(m) => write!(f, "an object of {}", m.len()),
        }
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Doc, E> {
        Ok(Doc::Null)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Doc, E> {
        Ok(Doc::Scalar)
    }
    fn visit_str<E>(self, s: &str) -> Result<Doc, E> {
        Ok(Doc::Str(s.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Doc::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Doc, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Doc>()? {
            members.push(member);
        }
        Ok(Doc::Obj(members))
    }
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

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
    assert_eq!(
        MaskPath::parse(&path.to_string()).as_ref(),
        Ok(&path),
        "{path}"
    );
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

fn children(v: &Doc) -> Vec<(Seg<'_>, &Doc)> {
    match v {
        Doc::Obj(m) => m.iter().map(|(k, c)| (Seg::Member(k), c)).collect(),
        Doc::Arr(a) => a
            .iter()
            .enumerate()
            .map(|(i, c)| (Seg::Index(i), c))
            .collect(),
        _ => Vec::new(),
    }
}

/// By the definition: a value a `block` rule decides is present and not null, below no
/// value another rule replaced.
fn blocked<'a>(rules: &[Rule], v: &'a Doc, loc: &mut Vec<Seg<'a>>) -> bool {
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
fn check_forms<'a>(rules: &[Rule], v: &'a Doc, loc: &mut Vec<Seg<'a>>) {
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
                (Some(_), Doc::Str(s)) if s == REDACTED => true,
                (Some(Action::Redact), _) => false,
                (Some(Action::Mask { keep }), Doc::Str(s)) => {
                    let n = s.chars().count();
                    s.chars().take(n.saturating_sub(keep)).all(|c| c == '*')
                        && (n > keep || s.chars().all(|c| c == '*'))
                }
                (Some(Action::TruncateDate), Doc::Str(s)) => {
                    s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit())
                }
                (Some(Action::Pseudonymize), Doc::Str(s)) => s.len() == 46 && s.starts_with("ps_"),
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

fn depth(v: &Doc) -> usize {
    children(v)
        .iter()
        .map(|(_, c)| depth(c))
        .max()
        .map_or(0, |d| d + 1)
}

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(head) = std::str::from_utf8(head) else {
        return;
    };
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

    // Every member of every object, as the text masker reads the answer.
    let every: Doc = serde_json::from_slice(body).expect("serde_json read it as a Value");
    let original = Doc::from(&original);
    // The reference matcher backtracks: keep it to documents and paths it walks quickly.
    let small = depth(&every) <= 24
        && rules.iter().all(|r| r.path.steps().len() <= 6)
        && text.len() <= 64 * 1024
        && body.len() <= 64 * 1024;
    if !small {
        return;
    }
    // Indexes name the upstream's elements; once one is dropped the masked array is
    // indexed differently, so forms are compared only where no path uses one.
    let indexed = rules.iter().any(|r| {
        r.path
            .steps()
            .iter()
            .any(|s| matches!(s.selector, Selector::Index(_)))
    });
    let expect_blocked = blocked(&rules, &original, &mut Vec::new());
    match result {
        Err(MaskError::Blocked(_)) => assert!(expect_blocked, "blocked without a reason"),
        Err(MaskError::TooManyPseudonyms { .. }) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => {
            assert!(!expect_blocked, "a value a block rule names passed");
            if !indexed {
                check_forms(&rules, &Doc::from(&doc), &mut Vec::new());
            }
        }
    }
    // The text masker, by the same definition, over every member: a member named twice
    // is blocked, and masked, whichever of the two it is.
    let expect_blocked = blocked(&rules, &every, &mut Vec::new());
    let masked: Doc = match by_text {
        Err(TextMaskError::Mask(MaskError::Blocked(_))) => {
            assert!(expect_blocked, "the text masker blocked without a reason");
            return;
        }
        Err(TextMaskError::Mask(MaskError::TooManyPseudonyms { .. })) => return,
        Err(e) => panic!("{e}"),
        Ok((MaskedText::Unchanged, _)) => every,
        Ok((MaskedText::Changed(out), _)) => {
            serde_json::from_slice(&out).expect("a masked text is JSON")
        }
    };
    assert!(
        !expect_blocked,
        "the text masker passed a value a block rule names"
    );
    if !indexed {
        check_forms(&rules, &masked, &mut Vec::new());
    }
});
