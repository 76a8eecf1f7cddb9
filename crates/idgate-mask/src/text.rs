//! A profile applied to a JSON text as it arrived, without building a document of it.
//!
//! The same rules decide the same values as on a parsed document (`engine.rs`): the walk
//! carries the same partial matches from a value to its children, here in one stack for
//! the whole text. What changes is what is built. The text is read once: to check that it
//! is JSON, refuse it when a `block` rule names a value, list what to pseudonymize, and
//! note each value a rule replaces or drops, by its place in the text. Only when there is
//! such a value is a new text written: the upstream's bytes between those places copied
//! as they came (its members in its order, its numbers, strings and whitespace as
//! written), the replacements in their places, and a dropped member or element removed
//! with the comma that separated it and the whitespace around that comma.
//!
//! A text is JSON here exactly when `serde_json` reads it (RFC 8259: UTF-8, no trailing
//! commas, no lone surrogates in escapes, numbers within a double's range, at most 127
//! levels of nesting). The one difference from masking the parsed document: an object
//! with a member name twice keeps both here (each masked by the same rules, as the name
//! decides), where a parsed document keeps the last.

use std::borrow::Cow;
use std::ops::Range;

use serde_json::Value;

use crate::action::{self, Action};
use crate::engine::{
    Blocked, Decision, Inputs, MaskError, Profile, Pseudonymizer, Pseudonyms, Report, State,
};
use crate::path::Segment;

/// `serde_json`'s nesting limit: the 128th level is refused.
const DEPTH: usize = 128;

/// Integers with more digits than this may be beyond a double's range.
const LONG_NUMBER: usize = 300;

/// Why a text is not JSON: what was found wrong, and at which byte. Never quotes the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}")]
pub struct NotJson {
    pub at: usize,
    pub what: &'static str,
}

/// Why a JSON text could not be masked.
#[derive(Debug, thiserror::Error)]
pub enum TextMaskError<E: std::error::Error + 'static> {
    #[error("not JSON: {0}")]
    NotJson(#[from] NotJson),
    #[error(transparent)]
    Mask(#[from] MaskError<E>),
}

/// A masked JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskedText {
    /// No rule changed a value: the text passes as it came.
    Unchanged,
    /// The text with the rules applied.
    Changed(Vec<u8>),
}

impl Profile {
    /// Masks the JSON `text`, asking `pseudonymizer` once for every value to pseudonymize
    /// (not at all when there is none). Refuses a text that is not JSON and one a `block`
    /// rule names a value of.
    pub async fn mask_text<P: Pseudonymizer>(
        &self,
        text: &[u8],
        pseudonymizer: &P,
    ) -> Result<(MaskedText, Report), TextMaskError<P::Error>> {
        let text = std::str::from_utf8(text).map_err(|e| NotJson {
            at: e.valid_up_to(),
            what: "a byte that is not UTF-8",
        })?;
        let walk = Walk::new(self, text).run()?;
        if walk.changed == 0 {
            return Ok((MaskedText::Unchanged, Report::default()));
        }
        let changed = walk.changed;
        let pseudonyms = Pseudonyms::ask(walk.inputs.list, pseudonymizer).await?;
        let out = splice(text, walk.edits, &pseudonyms)?;
        Ok((MaskedText::Changed(out), Report { changed }))
    }
}

/// A place in the text that changes: a dropped member's or element's span (with the comma
/// that separated it; `action` is `None`), or a masked value's and its action. Small, as a
/// text may hold many: the value is read again from its span when the text is written.
struct Edit {
    span: Range<usize>,
    action: Option<Action>,
}

/// The contents of a string value written without escapes (`"..."` holding no `\`), as
/// they are; `None` for any other value. Most strings are such, and need no decoding.
fn plain_string(raw: &str) -> Option<&str> {
    raw.strip_prefix('"')?
        .strip_suffix('"')
        .filter(|s| !s.contains('\\'))
}

/// A value the rules replace, as it is read: strings and numbers keep some form, anything
/// else is redacted whole.
fn masked_value(raw: &[u8]) -> Option<Value> {
    match raw.first() {
        Some(b'"' | b'-' | b'0'..=b'9') => serde_json::from_slice(raw).ok(),
        _ => Some(Value::Bool(false)),
    }
}

/// The text with each edit made.
fn splice(text: &str, edits: Vec<Edit>, pseudonyms: &Pseudonyms) -> Result<Vec<u8>, NotJson> {
    let src = text.as_bytes();
    let mut out = Vec::with_capacity(src.len() + 16 * edits.len());
    let mut at = 0;
    for edit in edits {
        out.extend_from_slice(src.get(at..edit.span.start).unwrap_or_default());
        if let Some(action) = edit.action {
            let unwritable = |what| NotJson {
                at: edit.span.start,
                what,
            };
            // A string without escapes is written from its contents as they are.
            if let Some(s) = text.get(edit.span.clone()).and_then(plain_string) {
                let pseudonym = match action {
                    Action::Pseudonymize => pseudonyms.get(s.as_bytes()),
                    _ => None,
                };
                action::replace_plain_str(&mut out, action, s, pseudonym);
                at = edit.span.end;
                continue;
            }
            let value = src
                .get(edit.span.clone())
                .and_then(masked_value)
                .ok_or(unwritable("an unreadable value"))?;
            let input = match action {
                Action::Pseudonymize => action::pseudonym_input(&value),
                _ => None,
            };
            let pseudonym = input.as_deref().and_then(|i| pseudonyms.get(i));
            let replaced = action::replace(action, &value, pseudonym);
            serde_json::to_writer(&mut out, &replaced)
                .map_err(|_| unwritable("a replacement that could not be written"))?;
        }
        at = edit.span.end;
    }
    out.extend_from_slice(src.get(at..).unwrap_or_default());
    Ok(out)
}

/// Whether a member or element is dropped.
type Dropped = bool;

/// What a container's walk knows of the members or elements read so far: once one of
/// them stays, where the last one read ends (a drop after it takes the comma before it).
#[derive(Default)]
struct Items {
    after_kept: Option<usize>,
}

enum Fail {
    NotJson(NotJson),
    Blocked(Blocked),
}

impl<E: std::error::Error + 'static> From<Fail> for TextMaskError<E> {
    fn from(f: Fail) -> Self {
        match f {
            Fail::NotJson(e) => Self::NotJson(e),
            Fail::Blocked(b) => Self::Mask(MaskError::Blocked(b)),
        }
    }
}

/// The reading of the text.
struct Walk<'a> {
    profile: &'a Profile,
    text: &'a str,
    src: &'a [u8],
    pos: usize,
    depth_left: usize,
    /// The partial matches of every level being read, each level's after its parent's.
    stack: Vec<State>,
    /// What to pseudonymize.
    inputs: Inputs,
    /// The places that change, in the text's order, none inside another.
    edits: Vec<Edit>,
    changed: usize,
    /// The first value a `block` rule names, present and not `null`.
    blocked: Option<Blocked>,
}

impl<'a> Walk<'a> {
    fn new(profile: &'a Profile, text: &'a str) -> Self {
        Self {
            profile,
            text,
            src: text.as_bytes(),
            pos: 0,
            depth_left: DEPTH,
            stack: Vec::new(),
            inputs: Inputs::default(),
            edits: Vec::new(),
            changed: 0,
            blocked: None,
        }
    }

    fn run(mut self) -> Result<Self, Fail> {
        self.stack = self.profile.start();
        let root = 0..self.stack.len();
        self.ws();
        self.value(root)?;
        self.ws();
        if self.pos != self.src.len() {
            return self.fail("characters after the value");
        }
        match self.blocked.take() {
            Some(blocked) => Err(Fail::Blocked(blocked)),
            None => Ok(self),
        }
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, Fail> {
        Err(Fail::NotJson(NotJson { at: self.pos, what }))
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), Fail> {
        if self.peek() != Some(byte) {
            return self.fail(what);
        }
        self.pos += 1;
        Ok(())
    }

    fn enter(&mut self) -> Result<(), Fail> {
        self.depth_left -= 1;
        if self.depth_left == 0 {
            return self.fail("nesting deeper than 127 levels");
        }
        self.pos += 1;
        self.ws();
        Ok(())
    }

    fn leave(&mut self) {
        self.depth_left += 1;
    }

    /// A value whose children the partial matches `stack[states]` may reach.
    fn value(&mut self, states: Range<usize>) -> Result<(), Fail> {
        match self.peek() {
            Some(b'{') if !states.is_empty() => self.object(states),
            Some(b'[') if !states.is_empty() => self.array(states),
            _ => self.scan(),
        }
    }

    fn object(&mut self, states: Range<usize>) -> Result<(), Fail> {
        self.members(|walk, key_span, escaped| {
            let text = walk.text;
            let name: Cow<'a, str> = if escaped {
                let raw = text.get(key_span.clone()).unwrap_or("\"\"");
                match serde_json::from_str::<String>(raw) {
                    Ok(name) => Cow::Owned(name),
                    Err(_) => return walk.fail("an unreadable member name"),
                }
            } else {
                Cow::Borrowed(text.get(key_span.start + 1..key_span.end - 1).unwrap_or(""))
            };
            walk.child(states.clone(), Segment::Member(&name))
        })
    }

    fn array(&mut self, states: Range<usize>) -> Result<(), Fail> {
        // Indexes as the upstream sent them, whatever is dropped.
        self.elements(|walk, index| walk.child(states.clone(), Segment::Index(index)))
    }

    /// An object from its `{` to its `}`: `each` reads a member's value, given the span of
    /// its name and whether the name holds an escape, and tells whether it drops the
    /// member.
    fn members(
        &mut self,
        mut each: impl FnMut(&mut Self, Range<usize>, bool) -> Result<Dropped, Fail>,
    ) -> Result<(), Fail> {
        self.enter()?;
        let mut items = Items::default();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.leave();
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.fail("expected a member name");
            }
            let start = self.pos;
            let escaped = self.string()?;
            let key_span = start..self.pos;
            self.ws();
            self.expect(b':', "expected ':'")?;
            self.ws();
            let dropped = each(self, key_span, escaped)?;
            if self.separator(start, dropped, &mut items, b'}', "expected ',' or '}'")? {
                return Ok(());
            }
        }
    }

    /// An array from its `[` to its `]`: `each` reads an element, given its index, and
    /// tells whether it drops the element.
    fn elements(
        &mut self,
        mut each: impl FnMut(&mut Self, usize) -> Result<Dropped, Fail>,
    ) -> Result<(), Fail> {
        self.enter()?;
        let mut items = Items::default();
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.leave();
            return Ok(());
        }
        let mut index = 0;
        loop {
            let start = self.pos;
            let dropped = each(self, index)?;
            index += 1;
            if self.separator(start, dropped, &mut items, b']', "expected ',' or ']'")? {
                return Ok(());
            }
        }
    }

    /// After a member or element that began at `start`: the comma before the next one, or
    /// the container's end (`Ok(true)`). A dropped one leaves the text with the comma
    /// before it, or, when nothing kept comes before it, with the comma after it, so that
    /// what is left is JSON whichever are dropped.
    fn separator(
        &mut self,
        start: usize,
        dropped: Dropped,
        items: &mut Items,
        close: u8,
        expected: &'static str,
    ) -> Result<bool, Fail> {
        let end = self.pos;
        self.ws();
        let last = match self.peek() {
            Some(b',') => false,
            Some(b) if b == close => true,
            _ => return self.fail(expected),
        };
        self.pos += 1;
        if !last {
            self.ws();
        }
        if dropped {
            let span = match items.after_kept {
                Some(previous_end) => previous_end..end,
                None if last => start..end,
                None => start..self.pos,
            };
            match self.edits.last_mut() {
                // Drops one after the other (`[0,0,0]` under `$[*]`) make one edit.
                Some(before) if before.action.is_none() && before.span.end == span.start => {
                    before.span.end = span.end;
                }
                _ => self.edits.push(Edit { span, action: None }),
            }
        }
        if !dropped || items.after_kept.is_some() {
            items.after_kept = Some(end);
        }
        if last {
            self.leave();
        }
        Ok(last)
    }

    /// One member or element: the rule deciding it, then the value.
    fn child(&mut self, states: Range<usize>, segment: Segment<'_>) -> Result<Dropped, Fail> {
        let from = self.stack.len();
        let (next, decision) = self.profile.advance_into(&mut self.stack, states, segment);
        let result = self.decided(decision, next);
        self.stack.truncate(from);
        result
    }

    fn decided(&mut self, decision: Decision, next: Range<usize>) -> Result<Dropped, Fail> {
        let action = match decision {
            None | Some((_, Action::Allow)) => return self.value(next).map(|()| false),
            Some((rule, Action::Block)) => {
                let span = self.scanned()?;
                if self.src.get(span) != Some(b"null") && self.blocked.is_none() {
                    // Refused as blocked once the whole text is known to be JSON.
                    self.blocked = Some(self.profile.blocked(rule));
                }
                return Ok(false);
            }
            Some((_, Action::Drop)) => {
                self.scan()?;
                self.changed += 1;
                return Ok(true);
            }
            Some((_, action)) => action,
        };
        let span = self.scanned()?;
        let src = self.src;
        let raw = src.get(span.clone()).unwrap_or(b"null");
        if raw == b"null" {
            return Ok(false);
        }
        self.changed += 1;
        if action == Action::Pseudonymize {
            match self.text.get(span.clone()).and_then(plain_string) {
                Some(s) => self.inputs.add(s.as_bytes()),
                None => {
                    let Some(value) = masked_value(raw) else {
                        return self.fail("an unreadable value");
                    };
                    if let Some(input) = action::pseudonym_input(&value) {
                        self.inputs.add(&input);
                    }
                }
            }
        }
        self.edits.push(Edit {
            span,
            action: Some(action),
        });
        Ok(false)
    }

    /// Reads a value, checking it is JSON; its span.
    fn scanned(&mut self) -> Result<Range<usize>, Fail> {
        let start = self.pos;
        self.scan()?;
        Ok(start..self.pos)
    }

    /// Reads a value, checking it is JSON, without deciding anything inside it.
    fn scan(&mut self) -> Result<(), Fail> {
        match self.peek() {
            Some(b'{') => self.members(|walk, _, _| walk.scan().map(|()| false)),
            Some(b'[') => self.elements(|walk, _| walk.scan().map(|()| false)),
            Some(b'"') => self.string().map(|_| ()),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            None => self.fail("the end of the text where a value was expected"),
            Some(_) => self.fail("expected a value"),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Fail> {
        if !self
            .src
            .get(self.pos..)
            .is_some_and(|r| r.starts_with(word))
        {
            return self.fail("expected a value");
        }
        self.pos += word.len();
        Ok(())
    }

    /// A string from its opening quote; whether it holds an escape.
    fn string(&mut self) -> Result<bool, Fail> {
        self.pos += 1;
        let mut escaped = false;
        loop {
            let rest = self.src.get(self.pos..).unwrap_or_default();
            let Some(i) = plain_run(rest) else {
                self.pos = self.src.len();
                return self.fail("a string that is not closed");
            };
            self.pos += i;
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.pos += 1;
                    self.escape()?;
                }
                _ => return self.fail("a control character in a string"),
            }
        }
    }

    fn escape(&mut self) -> Result<(), Fail> {
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                self.pos += 1;
                match self.hex4()? {
                    0xDC00..=0xDFFF => self.fail("a lone surrogate in an escape"),
                    0xD800..=0xDBFF => {
                        if !self
                            .src
                            .get(self.pos..)
                            .is_some_and(|r| r.starts_with(b"\\u"))
                        {
                            return self.fail("a lone surrogate in an escape");
                        }
                        self.pos += 2;
                        match self.hex4()? {
                            0xDC00..=0xDFFF => Ok(()),
                            _ => self.fail("a lone surrogate in an escape"),
                        }
                    }
                    _ => Ok(()),
                }
            }
            _ => self.fail("an invalid escape"),
        }
    }

    fn hex4(&mut self) -> Result<u16, Fail> {
        let mut n = 0u16;
        for _ in 0..4 {
            let digit = match self.peek() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return self.fail("an invalid \\u escape"),
            };
            n = n * 16 + u16::from(digit);
            self.pos += 1;
        }
        Ok(n)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), Fail> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return self.fail("a number with a leading zero");
                }
            }
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return self.fail("an invalid number"),
        }
        let mut exponent = false;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return self.fail("an invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            exponent = true;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return self.fail("an invalid number");
            }
        }
        // Only an exponent or very many digits can leave a double's range: `serde_json`
        // judges those, so that both read the same numbers.
        if exponent || self.pos - start > LONG_NUMBER {
            let raw = self.src.get(start..self.pos).unwrap_or_default();
            if serde_json::from_slice::<serde_json::Number>(raw).is_err() {
                return self.fail("a number out of range");
            }
        }
        Ok(())
    }
}

/// The length of the run of bytes a string holds as they are: up to its next `"`, `\\` or
/// control character (`None`: there is none). Eight bytes at a time.
fn plain_run(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    const QUOTES: u64 = u64::from_le_bytes([b'"'; 8]);
    const BACKSLASHES: u64 = u64::from_le_bytes([b'\\'; 8]);
    const SPACES: u64 = u64::from_le_bytes([0x20; 8]);
    let mut at = 0;
    while let Some(&chunk) = bytes.get(at..).and_then(|r| r.first_chunk::<8>()) {
        let w = u64::from_le_bytes(chunk);
        let (q, b) = (w ^ QUOTES, w ^ BACKSLASHES);
        // A byte's high bit is set where it is zero (`q`, `b`) or under 0x20 (`w`); a
        // borrow can only set bits above a byte that is, so the lowest one is exact.
        let found = ((q.wrapping_sub(ONES) & !q)
            | (b.wrapping_sub(ONES) & !b)
            | (w.wrapping_sub(SPACES) & !w))
            & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = bytes.get(at..).unwrap_or_default();
    tail.iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|i| at + i)
}

#[cfg(test)]
mod tests;
