//! A profile applied to a JSON text as it arrived, without building a document of it.
//!
//! The same rules decide the same values as on a parsed document (`engine.rs`): the walk
//! carries the same partial matches from a value to its children, here in one stack for
//! the whole text. What changes is what is built. The text is read twice: once to check
//! that it is JSON, refuse it when a `block` rule names a value, and list what to
//! pseudonymize; then, only when some rule changes a value, once more to write it out.
//! The written text is the upstream's: its members in its order, its numbers and strings
//! as written. Only the values the rules replace or drop change, and the objects and
//! arrays that a rule could reach into lose the whitespace between their tokens. A value
//! no rule can reach is copied as it is.
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
        let first = Walk::new(self, text, None).run()?;
        if first.changed == 0 {
            return Ok((MaskedText::Unchanged, Report::default()));
        }
        let pseudonyms = Pseudonyms::ask(first.inputs.list, pseudonymizer).await?;
        let out = Vec::with_capacity(text.len());
        let second = Walk::new(self, text, Some((out, &pseudonyms))).run()?;
        let changed = second.changed;
        let out = second.out.map(|(out, _)| out).unwrap_or_default();
        Ok((MaskedText::Changed(out), Report { changed }))
    }
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

/// One reading of the text: the first lists, the second (with `out`) writes.
struct Walk<'a> {
    profile: &'a Profile,
    text: &'a str,
    src: &'a [u8],
    pos: usize,
    depth_left: usize,
    /// The partial matches of every level being read, each level's after its parent's.
    stack: Vec<State>,
    /// What the first reading found to pseudonymize.
    inputs: Inputs,
    /// The second reading's output, and the pseudonyms it writes.
    out: Option<(Vec<u8>, &'a Pseudonyms)>,
    changed: usize,
    /// The first value a `block` rule names, present and not `null`.
    blocked: Option<Blocked>,
}

impl<'a> Walk<'a> {
    fn new(profile: &'a Profile, text: &'a str, out: Option<(Vec<u8>, &'a Pseudonyms)>) -> Self {
        Self {
            profile,
            text,
            src: text.as_bytes(),
            pos: 0,
            depth_left: DEPTH,
            stack: Vec::new(),
            inputs: Inputs::default(),
            out,
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

    fn emit(&mut self, bytes: &[u8]) {
        if let Some((out, _)) = &mut self.out {
            out.extend_from_slice(bytes);
        }
    }

    fn emit_span(&mut self, span: Range<usize>) {
        let src = self.src;
        if let Some(bytes) = src.get(span) {
            self.emit(bytes);
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
            _ => {
                let start = self.pos;
                self.scan()?;
                self.emit_span(start..self.pos);
                Ok(())
            }
        }
    }

    fn object(&mut self, states: Range<usize>) -> Result<(), Fail> {
        self.emit(b"{");
        let mut wrote = false;
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
            walk.child(
                states.clone(),
                Segment::Member(&name),
                Some(key_span),
                &mut wrote,
            )
        })?;
        self.emit(b"}");
        Ok(())
    }

    fn array(&mut self, states: Range<usize>) -> Result<(), Fail> {
        self.emit(b"[");
        let mut wrote = false;
        // Indexes as the upstream sent them, whatever is dropped.
        self.elements(|walk, index| {
            walk.child(states.clone(), Segment::Index(index), None, &mut wrote)
        })?;
        self.emit(b"]");
        Ok(())
    }

    /// An object from its `{` to its `}`: `each` reads a member's value, given the span of
    /// its name and whether the name holds an escape.
    fn members(
        &mut self,
        mut each: impl FnMut(&mut Self, Range<usize>, bool) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        self.enter()?;
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
            each(self, key_span, escaped)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    self.leave();
                    return Ok(());
                }
                _ => return self.fail("expected ',' or '}'"),
            }
        }
    }

    /// An array from its `[` to its `]`: `each` reads an element, given its index.
    fn elements(
        &mut self,
        mut each: impl FnMut(&mut Self, usize) -> Result<(), Fail>,
    ) -> Result<(), Fail> {
        self.enter()?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.leave();
            return Ok(());
        }
        let mut index = 0;
        loop {
            each(self, index)?;
            index += 1;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.pos += 1;
                    self.leave();
                    return Ok(());
                }
                _ => return self.fail("expected ',' or ']'"),
            }
        }
    }

    /// One member (with its name's span) or element: the rule deciding it, then the value.
    fn child(
        &mut self,
        states: Range<usize>,
        segment: Segment<'_>,
        key: Option<Range<usize>>,
        wrote: &mut bool,
    ) -> Result<(), Fail> {
        let from = self.stack.len();
        let decision = self.profile.advance_into(&mut self.stack, states, segment);
        let next = from..self.stack.len();
        let result = self.decided(decision, next, key, wrote);
        self.stack.truncate(from);
        result
    }

    /// Before a value that stays: the comma before it and its member name.
    fn keep(&mut self, key: Option<Range<usize>>, wrote: &mut bool) {
        if *wrote {
            self.emit(b",");
        }
        if let Some(span) = key {
            self.emit_span(span);
            self.emit(b":");
        }
        *wrote = true;
    }

    fn decided(
        &mut self,
        decision: Decision,
        next: Range<usize>,
        key: Option<Range<usize>>,
        wrote: &mut bool,
    ) -> Result<(), Fail> {
        let action = match decision {
            None | Some((_, Action::Allow)) => {
                self.keep(key, wrote);
                return self.value(next);
            }
            Some((rule, Action::Block)) => {
                let span = self.scanned()?;
                if self.src.get(span) != Some(b"null") && self.blocked.is_none() {
                    // Refused as blocked once the whole text is known to be JSON.
                    self.blocked = Some(self.profile.blocked(rule));
                }
                self.keep(key, wrote);
                self.emit(b"null");
                return Ok(());
            }
            Some((_, Action::Drop)) => {
                self.scan()?;
                self.changed += 1;
                return Ok(());
            }
            Some((_, action)) => action,
        };
        let span = self.scanned()?;
        self.keep(key, wrote);
        let src = self.src;
        let raw = src.get(span).unwrap_or(b"null");
        if raw == b"null" {
            self.emit(b"null");
            return Ok(());
        }
        self.changed += 1;
        // Only strings and numbers are ever kept in some form; anything else is redacted.
        let value = match raw.first() {
            Some(b'"' | b'-' | b'0'..=b'9') => match serde_json::from_slice::<Value>(raw) {
                Ok(v) => v,
                Err(_) => return self.fail("an unreadable value"),
            },
            _ => Value::Bool(false),
        };
        let input = match action {
            Action::Pseudonymize => action::pseudonym_input(&value),
            _ => None,
        };
        let Some((out, pseudonyms)) = &mut self.out else {
            if let Some(input) = input {
                self.inputs.add(input);
            }
            return Ok(());
        };
        let pseudonym = input.as_deref().and_then(|i| pseudonyms.get(i));
        let replaced = action::replace(action, &value, pseudonym);
        if serde_json::to_writer(out, &replaced).is_err() {
            return self.fail("a replacement that could not be written");
        }
        Ok(())
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
            Some(b'{') => self.members(|walk, _, _| walk.scan()),
            Some(b'[') => self.elements(|walk, _| walk.scan()),
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
            let Some(i) = rest
                .iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            else {
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

#[cfg(test)]
mod tests;
