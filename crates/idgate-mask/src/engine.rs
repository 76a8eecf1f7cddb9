//! A profile applied to a document: which rule decides each value, and the two walks that
//! carry the decisions out.
//!
//! **Which rule.** Every value below the document's root has a location (the member names
//! and array indexes leading to it). The first rule, in the profile's order, whose path
//! names that location decides the value. `allow` leaves it as it is and the values inside
//! it are judged on their own; `drop`, `redact`, `mask`, `truncate_date` and `pseudonymize`
//! replace (or remove) it together with everything inside it; `block` refuses the whole
//! answer when the value is present and not `null`. A value no rule names is kept, and
//! the values inside it are judged.
//!
//! **How.** Paths are matched while the document is walked, as a set of partial matches
//! (rule, steps matched so far) carried from a value to its children: each value costs
//! the number of live partial matches, whatever the paths (`..` included), and a subtree
//! that no path can reach any more is not walked at all. Array indexes are those of the
//! document as the upstream sent it, before any element was dropped.
//!
//! **Pseudonyms** need a key that may be in an HSM, so masking is two walks: the first
//! finds what is blocked and every distinct value to pseudonymize, the [`Pseudonymizer`] is
//! asked once for all of them, and the second walk changes the document. A document with
//! more than [`MAX_PSEUDONYMS`] distinct values to pseudonymize is refused before the key
//! is asked: a token makes each tag in a call of its own, and one answer must not hold its
//! signing for long.

use std::collections::HashMap;

use serde_json::Value;

use crate::action::{self, Action};
use crate::path::{MaskPath, Segment};

/// One rule of a profile: a path and what happens to the values it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: MaskPath,
    pub action: Action,
}

/// An ordered list of rules; the first whose path names a value decides it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    rules: Vec<Rule>,
    /// Every step of every rule, rule after rule, each path's in its order: a partial match
    /// is an index here, and the step after it is the next index.
    steps: Vec<FlatStep>,
}

/// One step of [`Profile::steps`], with what the walk asks of it at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FlatStep {
    rule: usize,
    /// The first step of its rule's path.
    first: bool,
    /// The last step of its rule's path: matching it names a value.
    last: bool,
    descendant: bool,
    selector: crate::path::Selector,
}

/// The answer must not be passed on: a `block` rule names a value that is present.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule} ({path}) blocks the answer")]
pub struct Blocked {
    /// The rule's index in its profile (`rules[N]` in the configuration).
    pub rule: usize,
    /// The rule's path as written, never the value found.
    pub path: String,
}

/// The most distinct values one document may have pseudonymized: a page of a list of
/// a thousand records, each with one value to pseudonymize, passes.
pub const MAX_PSEUDONYMS: usize = 1024;

/// Why a document could not be masked.
#[derive(Debug, thiserror::Error)]
pub enum MaskError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Blocked(#[from] Blocked),
    #[error("pseudonyms could not be made: {0}")]
    Pseudonymizer(#[source] E),
    #[error("the pseudonymizer gave {got} tags for {asked} values")]
    Incomplete { asked: usize, got: usize },
    /// The document holds more distinct values to pseudonymize than [`MAX_PSEUDONYMS`];
    /// the pseudonymizer was not asked.
    #[error(
        "{count} distinct values to pseudonymize, more than the {MAX_PSEUDONYMS} one answer may have"
    )]
    TooManyPseudonyms { count: usize },
}

/// What masking did to a document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    /// Values removed or replaced (`null`s left as they are not counted).
    pub changed: usize,
}

/// Makes the HMAC-SHA256 tags pseudonyms are made of, for a whole document at once.
pub trait Pseudonymizer: Sync {
    type Error: std::error::Error + Send + Sync + 'static;

    /// The tag of each input, in order.
    fn macs(
        &self,
        inputs: &[Vec<u8>],
    ) -> impl Future<Output = Result<Vec<[u8; 32]>, Self::Error>> + Send;
}

/// The pseudonyms of one document's values, by the bytes they were made from. Its `Debug`
/// gives the count only: the inputs are personal data.
#[derive(Clone, Default)]
pub struct Pseudonyms {
    /// Each input with its pseudonym, in the order asked.
    pairs: Vec<(Vec<u8>, String)>,
    /// Indexes into `pairs` by input, once there are more than [`Inputs::FEW`]; until then
    /// the list is searched (most documents hold one or two values to pseudonymize).
    index: HashMap<Vec<u8>, usize>,
}

impl std::fmt::Debug for Pseudonyms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonyms")
            .field("values", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

impl Pseudonyms {
    /// Pairs each input with its tag.
    pub fn new(inputs: Vec<Vec<u8>>, macs: &[[u8; 32]]) -> Self {
        let pairs: Vec<(Vec<u8>, String)> = inputs
            .into_iter()
            .zip(macs)
            .map(|(input, mac)| (input, action::pseudonym(mac)))
            .collect();
        let index = if pairs.len() > Inputs::FEW {
            pairs
                .iter()
                .enumerate()
                .map(|(i, (input, _))| (input.clone(), i))
                .collect()
        } else {
            HashMap::new()
        };
        Self { pairs, index }
    }

    pub(crate) fn get(&self, input: &[u8]) -> Option<&str> {
        let found = if self.index.is_empty() {
            self.pairs
                .iter()
                .find(|(known, _)| known.as_slice() == input)
        } else {
            self.index.get(input).and_then(|&i| self.pairs.get(i))
        };
        found.map(|(_, pseudonym)| pseudonym.as_str())
    }
}

/// A partial match: the steps of a rule's path before `Profile::steps[.0]` match the
/// location so far. Ordered by rule, then by step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct State(usize);

/// The rule that decides a value, by index, with its action.
pub(crate) type Decision = Option<(usize, Action)>;

impl Profile {
    pub fn new(rules: Vec<Rule>) -> Self {
        let steps = rules
            .iter()
            .enumerate()
            .flat_map(|(rule, r)| {
                let n = r.path.steps().len();
                r.path
                    .steps()
                    .iter()
                    .enumerate()
                    .map(move |(i, step)| FlatStep {
                        rule,
                        first: i == 0,
                        last: i + 1 == n,
                        descendant: step.descendant,
                        selector: step.selector.clone(),
                    })
            })
            .collect();
        Self { rules, steps }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether some rule pseudonymizes, so the profile needs a key.
    pub fn pseudonymizes(&self) -> bool {
        self.rules.iter().any(|r| r.action == Action::Pseudonymize)
    }

    /// The partial matches at the root, with room for a few levels' more.
    pub(crate) fn start(&self) -> Vec<State> {
        let mut states = Vec::with_capacity(4 * self.rules.len());
        states.extend(
            self.steps
                .iter()
                .enumerate()
                .filter(|(_, s)| s.first)
                .map(|(i, _)| State(i)),
        );
        states
    }

    /// The partial matches of a child at `segment`, and the rule deciding it.
    fn advance(&self, states: &[State], segment: Segment<'_>) -> (Vec<State>, Decision) {
        let mut next = states.to_vec();
        let (child, decision) = self.advance_into(&mut next, 0..states.len(), segment);
        next.truncate(child.end);
        next.drain(..child.start);
        (next, decision)
    }

    /// [`Profile::advance`] for the partial matches `next[states]`: the range of `next`
    /// that holds the child's (sorted, without duplicates), and the rule deciding it. The
    /// child's are appended to `next` (a walk keeps every level's in one stack), unless
    /// they are `next[states]` itself: when every partial match is a `..` step that does
    /// not match here, as for most members under rules like `$..name`.
    pub(crate) fn advance_into(
        &self,
        next: &mut Vec<State>,
        states: std::ops::Range<usize>,
        segment: Segment<'_>,
    ) -> (std::ops::Range<usize>, Decision) {
        let steps = &self.steps;
        let passes_over = |s: &State| {
            steps
                .get(s.0)
                .is_some_and(|step| step.descendant && !step.selector.matches(segment))
        };
        if next
            .get(states.clone())
            .is_some_and(|s| s.iter().all(passes_over))
        {
            return (states, None);
        }
        let from = next.len();
        let mut first: Option<usize> = None;
        for i in states {
            let Some(&s) = next.get(i) else {
                continue;
            };
            let Some(step) = steps.get(s.0) else {
                continue;
            };
            // `..` may skip this level and match further down.
            if step.descendant {
                next.push(s);
            }
            if step.selector.matches(segment) {
                if step.last {
                    first = Some(first.map_or(step.rule, |f| f.min(step.rule)));
                } else {
                    next.push(State(s.0 + 1));
                }
            }
        }
        let added = &mut next[from..];
        added.sort_unstable();
        let mut kept = from;
        for i in from..next.len() {
            if i == from || next[i] != next[kept - 1] {
                next[kept] = next[i];
                kept += 1;
            }
        }
        next.truncate(kept);
        let decision = first.and_then(|r| self.rules.get(r).map(|rule| (r, rule.action)));
        (from..kept, decision)
    }

    pub(crate) fn blocked(&self, rule: usize) -> Blocked {
        Blocked {
            rule,
            path: self
                .rules
                .get(rule)
                .map(|r| r.path.to_string())
                .unwrap_or_default(),
        }
    }

    /// The first walk: refuses a blocked document, and lists each distinct value to
    /// pseudonymize (its bytes), in document order.
    pub fn pseudonym_inputs(&self, doc: &Value) -> Result<Vec<Vec<u8>>, Blocked> {
        let mut inputs = Inputs::default();
        self.collect(doc, &self.start(), &mut inputs)?;
        Ok(inputs.list)
    }

    fn collect(&self, v: &Value, states: &[State], inputs: &mut Inputs) -> Result<(), Blocked> {
        match v {
            Value::Object(map) => map.iter().try_for_each(|(k, child)| {
                self.collect_child(child, states, Segment::Member(k), inputs)
            }),
            Value::Array(items) => items.iter().enumerate().try_for_each(|(i, child)| {
                self.collect_child(child, states, Segment::Index(i), inputs)
            }),
            _ => Ok(()),
        }
    }

    fn collect_child(
        &self,
        child: &Value,
        states: &[State],
        segment: Segment<'_>,
        inputs: &mut Inputs,
    ) -> Result<(), Blocked> {
        let (next, decision) = self.advance(states, segment);
        match decision {
            Some((rule, Action::Block)) if !child.is_null() => Err(self.blocked(rule)),
            Some((_, Action::Pseudonymize)) => {
                if let Some(input) = action::pseudonym_input(child) {
                    inputs.add(&input);
                }
                Ok(())
            }
            None | Some((_, Action::Allow | Action::Block)) if !next.is_empty() => {
                self.collect(child, &next, inputs)
            }
            _ => Ok(()),
        }
    }

    /// The second walk: applies every rule. A value to pseudonymize that `pseudonyms` lacks
    /// is redacted. On `Err` the document is partly changed and must not be passed on.
    pub fn apply(&self, doc: &mut Value, pseudonyms: &Pseudonyms) -> Result<Report, Blocked> {
        let mut report = Report::default();
        self.apply_in(doc, &self.start(), pseudonyms, &mut report)?;
        Ok(report)
    }

    fn apply_in(
        &self,
        v: &mut Value,
        states: &[State],
        pseudonyms: &Pseudonyms,
        report: &mut Report,
    ) -> Result<(), Blocked> {
        let mut blocked = None;
        match v {
            Value::Object(map) => map.retain(|k, child| {
                blocked.is_some()
                    || self
                        .apply_child(child, states, Segment::Member(k), pseudonyms, report)
                        .unwrap_or_else(|b| {
                            blocked = Some(b);
                            true
                        })
            }),
            Value::Array(items) => {
                // Indexes as the upstream sent them, whatever was dropped before.
                let mut i = 0;
                items.retain_mut(|child| {
                    let index = i;
                    i += 1;
                    blocked.is_some()
                        || self
                            .apply_child(child, states, Segment::Index(index), pseudonyms, report)
                            .unwrap_or_else(|b| {
                                blocked = Some(b);
                                true
                            })
                });
            }
            _ => {}
        }
        blocked.map_or(Ok(()), Err)
    }

    /// Applies the deciding rule to one child; `Ok(false)` when it is dropped.
    fn apply_child(
        &self,
        child: &mut Value,
        states: &[State],
        segment: Segment<'_>,
        pseudonyms: &Pseudonyms,
        report: &mut Report,
    ) -> Result<bool, Blocked> {
        let (next, decision) = self.advance(states, segment);
        match decision {
            None | Some((_, Action::Allow)) => {
                if !next.is_empty() {
                    self.apply_in(child, &next, pseudonyms, report)?;
                }
                Ok(true)
            }
            Some((_, Action::Block)) if child.is_null() => Ok(true),
            Some((rule, Action::Block)) => Err(self.blocked(rule)),
            Some((_, Action::Drop)) => {
                report.changed += 1;
                Ok(false)
            }
            Some((_, action)) => {
                if child.is_null() {
                    return Ok(true);
                }
                let pseudonym = match action {
                    Action::Pseudonymize => {
                        action::pseudonym_input(child).and_then(|i| pseudonyms.get(&i))
                    }
                    _ => None,
                };
                *child = action::replace(action, child, pseudonym);
                report.changed += 1;
                Ok(true)
            }
        }
    }

    /// Masks `doc` in place, asking `pseudonymizer` once for every value to pseudonymize
    /// (not at all when there is none). On `Err` the document must not be passed on.
    pub async fn mask<P: Pseudonymizer>(
        &self,
        doc: &mut Value,
        pseudonymizer: &P,
    ) -> Result<Report, MaskError<P::Error>> {
        let inputs = self.pseudonym_inputs(doc)?;
        let pseudonyms = Pseudonyms::ask(inputs, pseudonymizer).await?;
        Ok(self.apply(doc, &pseudonyms)?)
    }
}

impl Pseudonyms {
    /// The pseudonyms of `inputs`, asking `pseudonymizer` once (not at all when there is
    /// none, nor when there are more than [`MAX_PSEUDONYMS`]).
    pub(crate) async fn ask<P: Pseudonymizer>(
        inputs: Vec<Vec<u8>>,
        pseudonymizer: &P,
    ) -> Result<Self, MaskError<P::Error>> {
        if inputs.is_empty() {
            return Ok(Self::default());
        }
        if inputs.len() > MAX_PSEUDONYMS {
            return Err(MaskError::TooManyPseudonyms {
                count: inputs.len(),
            });
        }
        let macs = pseudonymizer
            .macs(&inputs)
            .await
            .map_err(MaskError::Pseudonymizer)?;
        if macs.len() != inputs.len() {
            return Err(MaskError::Incomplete {
                asked: inputs.len(),
                got: macs.len(),
            });
        }
        Ok(Self::new(inputs, &macs))
    }
}

/// Distinct inputs in the order first seen.
#[derive(Default)]
pub(crate) struct Inputs {
    pub(crate) list: Vec<Vec<u8>>,
    /// The inputs once there are more than [`Inputs::FEW`]; until then the list is
    /// searched.
    seen: std::collections::HashSet<Vec<u8>>,
}

impl Inputs {
    /// As many inputs as a search of the list finds quicker than a hash set.
    const FEW: usize = 16;

    pub(crate) fn add(&mut self, input: &[u8]) {
        if self.list.len() < Self::FEW {
            if !self.list.iter().any(|known| known.as_slice() == input) {
                self.list.push(input.to_vec());
            }
            return;
        }
        if self.seen.is_empty() {
            self.seen.extend(self.list.iter().cloned());
        }
        if !self.seen.contains(input) {
            self.seen.insert(input.to_vec());
            self.list.push(input.to_vec());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
