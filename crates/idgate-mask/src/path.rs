//! The JSON paths masking rules are written in: a subset of JSONPath (RFC 9535) that names
//! values, never computes them.
//!
//! ```text
//! $.vendor_data                          the member vendor_data of the document
//! $.id_verifications[*].document_number  document_number of every item of the array
//! $.id_verifications[0].address          of the first item only
//! $..date_of_birth                       every member date_of_birth, at any depth
//! $.parsed_address.*                     every member (or element) of parsed_address
//! $['odd name']                          a member whose name is not letters, digits, _ and -
//! ```
//!
//! A step is `.name`, `.*`, `[n]`, `[*]` or `['name']` (`["name"]`), each optionally after
//! `..` (at any depth below). No filters, slices, negative indexes or unions: what a path
//! names never depends on the values of the document. Paths are written by the operator
//! and refused at load with the byte where they go wrong.

use std::fmt;

/// The longest path accepted, in bytes: far more than any real rule.
const MAX_PATH_BYTES: usize = 1024;

/// What one step of a path selects among the children of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// `.name` or `['name']`: the member of an object with this name.
    Name(String),
    /// `[n]`: the element of an array at this index (from 0).
    Index(usize),
    /// `.*` or `[*]`: every member of an object and every element of an array.
    Any,
}

/// One step: a selector applied to the children of the current values, or (after `..`)
/// to the children of the current values and of all their descendants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub descendant: bool,
    pub selector: Selector,
}

/// Where a value is in its parent: a member name or an array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Member(&'a str),
    Index(usize),
}

impl Selector {
    pub fn matches(&self, segment: Segment<'_>) -> bool {
        match (self, segment) {
            (Self::Any, _) => true,
            (Self::Name(name), Segment::Member(m)) => name == m,
            (Self::Index(i), Segment::Index(j)) => *i == j,
            _ => false,
        }
    }
}

/// A path naming values inside a JSON document (never the document itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskPath {
    steps: Vec<Step>,
}

/// Why a path is refused; positions are byte offsets in the path as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("must start with '$'")]
    NoRoot,
    #[error("'$' alone names the whole answer; a rule names values inside it, like $.name")]
    WholeDocument,
    #[error("longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    #[error("'.' at byte {0} must be followed by a member name, '*', '[' or a second '.'")]
    EmptyName(usize),
    #[error("'...' at byte {0}: write '..' followed by a name, '*' or '[…]'")]
    TooManyDots(usize),
    #[error("'[' at byte {0} is not closed by ']'")]
    Unclosed(usize),
    #[error(
        "'[…]' at byte {0} must hold an index (0, 1, …), '*' or a quoted name ('name'); filters, slices, unions and negative indexes are not supported"
    )]
    BadBracket(usize),
    #[error("the index at byte {0} is too large")]
    IndexTooLarge(usize),
    #[error(
        "the quoted name at byte {0} is not closed, or has an escape other than \\\\, \\' or \\\""
    )]
    BadQuote(usize),
    #[error(
        "unexpected {0:?} at byte {1}: a step is .name, .*, [n], [*] or ['name'], optionally after .."
    )]
    Unexpected(char, usize),
    #[error(
        "a name of digits only at byte {0} would never match an array's element: write [n] for the element at index n, or ['n'] for a member named so"
    )]
    DigitsName(usize),
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl MaskPath {
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong);
        }
        let rest = s.strip_prefix('$').ok_or(PathError::NoRoot)?;
        let mut steps = Vec::new();
        let mut i = 0;
        let bytes = rest.as_bytes();
        // Positions in errors count from the start of the whole path, `$` included.
        let at = |i: usize| i + 1;
        while i < bytes.len() {
            let mut descendant = false;
            if bytes[i] == b'.' {
                if bytes.get(i + 1) == Some(&b'.') {
                    if bytes.get(i + 2) == Some(&b'.') {
                        return Err(PathError::TooManyDots(at(i)));
                    }
                    descendant = true;
                    i += 2;
                } else {
                    i += 1;
                    // `.` then a name or `*`; `.[` is not a step.
                    match bytes.get(i) {
                        Some(b'*') => {
                            steps.push(Step {
                                descendant,
                                selector: Selector::Any,
                            });
                            i += 1;
                            continue;
                        }
                        Some(_) => {
                            let end = name_end(rest, i);
                            if end == i {
                                return Err(PathError::EmptyName(at(i - 1)));
                            }
                            if rest[i..end].bytes().all(|b| b.is_ascii_digit()) {
                                return Err(PathError::DigitsName(at(i - 1)));
                            }
                            steps.push(Step {
                                descendant,
                                selector: Selector::Name(rest[i..end].to_owned()),
                            });
                            i = end;
                            continue;
                        }
                        None => return Err(PathError::EmptyName(at(i - 1))),
                    }
                }
                // After `..`: a name, `*` or a bracket.
                match bytes.get(i) {
                    Some(b'*') => {
                        steps.push(Step {
                            descendant,
                            selector: Selector::Any,
                        });
                        i += 1;
                        continue;
                    }
                    Some(b'[') => {}
                    Some(_) => {
                        let end = name_end(rest, i);
                        if end == i {
                            return Err(PathError::EmptyName(at(i - 2)));
                        }
                        if rest[i..end].bytes().all(|b| b.is_ascii_digit()) {
                            return Err(PathError::DigitsName(at(i - 2)));
                        }
                        steps.push(Step {
                            descendant,
                            selector: Selector::Name(rest[i..end].to_owned()),
                        });
                        i = end;
                        continue;
                    }
                    None => return Err(PathError::EmptyName(at(i - 2))),
                }
            }
            if bytes[i] == b'[' {
                let (selector, next) = bracket(rest, i)?;
                steps.push(Step {
                    descendant,
                    selector,
                });
                i = next;
                continue;
            }
            let c = rest[i..].chars().next().unwrap_or('?');
            return Err(PathError::Unexpected(c, at(i)));
        }
        if steps.is_empty() {
            return Err(PathError::WholeDocument);
        }
        Ok(Self { steps })
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

/// Where a bare member name starting at `i` ends.
fn name_end(rest: &str, i: usize) -> usize {
    rest[i..]
        .char_indices()
        .find(|(_, c)| !is_name_char(*c))
        .map_or(rest.len(), |(n, _)| i + n)
}

/// The bracket step starting at `rest[i] == '['`: its selector and where the next step
/// starts.
fn bracket(rest: &str, i: usize) -> Result<(Selector, usize), PathError> {
    let at = i + 1;
    let inner_start = i + 1;
    let bytes = rest.as_bytes();
    match bytes.get(inner_start) {
        None => Err(PathError::Unclosed(at)),
        Some(b'\'' | b'"') => {
            let quote = bytes[inner_start] as char;
            let mut name = String::new();
            let mut chars = rest[inner_start + 1..].char_indices();
            loop {
                match chars.next() {
                    None => return Err(PathError::BadQuote(at)),
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c @ ('\\' | '\'' | '"'))) => name.push(c),
                        _ => return Err(PathError::BadQuote(at)),
                    },
                    Some((n, c)) if c == quote => {
                        let close = inner_start + 1 + n + 1;
                        return match bytes.get(close) {
                            Some(b']') => Ok((Selector::Name(name), close + 1)),
                            Some(_) => Err(PathError::BadBracket(at)),
                            None => Err(PathError::Unclosed(at)),
                        };
                    }
                    Some((_, c)) => name.push(c),
                }
            }
        }
        Some(_) => {
            let close = rest[inner_start..]
                .find(']')
                .map(|n| inner_start + n)
                .ok_or(PathError::Unclosed(at))?;
            let inner = &rest[inner_start..close];
            let selector = if inner == "*" {
                Selector::Any
            } else if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
                Selector::Index(inner.parse().map_err(|_| PathError::IndexTooLarge(at))?)
            } else {
                return Err(PathError::BadBracket(at));
            };
            Ok((selector, close + 1))
        }
    }
}

impl fmt::Display for MaskPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for step in &self.steps {
            let dots = if step.descendant { ".." } else { "." };
            match &step.selector {
                Selector::Any if step.descendant => f.write_str("..*")?,
                Selector::Any => f.write_str("[*]")?,
                Selector::Name(n) if !n.is_empty() && n.chars().all(is_name_char) => {
                    write!(f, "{dots}{n}")?
                }
                Selector::Name(n) => {
                    if step.descendant {
                        f.write_str("..")?;
                    }
                    f.write_str("['")?;
                    for c in n.chars() {
                        if matches!(c, '\\' | '\'') {
                            f.write_str("\\")?;
                        }
                        write!(f, "{c}")?;
                    }
                    f.write_str("']")?;
                }
                Selector::Index(i) => {
                    if step.descendant {
                        f.write_str("..")?;
                    }
                    write!(f, "[{i}]")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_print_back() {
        for s in [
            "$.vendor_data",
            "$..date_of_birth",
            "$.id_verifications[*].document_number",
            "$.id_verifications[0].address",
            "$..*",
            "$..[0]",
            "$[*]",
            "$.a-b_c.D9",
            "$['odd name']",
            "$..['it\\'s']",
        ] {
            let p = MaskPath::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(p.to_string(), s);
        }
        // Other spellings of the same steps print in one form.
        for (s, canonical) in [
            ("$['name']", "$.name"),
            ("$[\"name\"]", "$.name"),
            ("$.*", "$[*]"),
            ("$.parsed_address.*", "$.parsed_address[*]"),
            ("$..['x']", "$..x"),
        ] {
            assert_eq!(MaskPath::parse(s).unwrap().to_string(), canonical);
        }
    }

    #[test]
    fn steps_say_what_they_select() {
        let p = MaskPath::parse("$.a..b[*][2]['c d']").unwrap();
        assert_eq!(
            p.steps(),
            [
                Step {
                    descendant: false,
                    selector: Selector::Name("a".into())
                },
                Step {
                    descendant: true,
                    selector: Selector::Name("b".into())
                },
                Step {
                    descendant: false,
                    selector: Selector::Any
                },
                Step {
                    descendant: false,
                    selector: Selector::Index(2)
                },
                Step {
                    descendant: false,
                    selector: Selector::Name("c d".into())
                },
            ]
        );
        assert!(Selector::Any.matches(Segment::Index(3)));
        assert!(Selector::Any.matches(Segment::Member("x")));
        assert!(!Selector::Index(0).matches(Segment::Member("0")));
        assert!(!Selector::Name("0".into()).matches(Segment::Index(0)));
    }

    #[test]
    fn mistakes_are_named_with_their_position() {
        use PathError::*;
        for (s, e) in [
            ("date_of_birth", NoRoot),
            ("$", WholeDocument),
            ("$.", EmptyName(1)),
            ("$.a.", EmptyName(3)),
            ("$..", EmptyName(1)),
            ("$.a...b", TooManyDots(3)),
            ("$.[0]", EmptyName(1)),
            ("$[", Unclosed(1)),
            ("$.a[0", Unclosed(3)),
            ("$[-1]", BadBracket(1)),
            ("$[1:2]", BadBracket(1)),
            ("$[?(@.a)]", BadBracket(1)),
            ("$[0,1]", BadBracket(1)),
            ("$['a'x]", BadBracket(1)),
            ("$['a", BadQuote(1)),
            ("$['a\\n']", BadQuote(1)),
            ("$[99999999999999999999999]", IndexTooLarge(1)),
            ("$.a b", Unexpected(' ', 3)),
            ("$a", Unexpected('a', 1)),
            ("$.é", EmptyName(1)),
            // An index written as a name would match no element, and mask nothing.
            ("$.items.0.number", DigitsName(7)),
            ("$..0", DigitsName(1)),
        ] {
            assert_eq!(MaskPath::parse(s), Err(e.clone()), "{s}");
        }
        assert_eq!(
            MaskPath::parse(&format!("$.{}", "a".repeat(2000))),
            Err(TooLong)
        );
        // Names that only begin with a digit, and members named by digits in brackets, stay.
        for fine in ["$.a1", "$.3ds_result", "$['0']", "$.items[0].number"] {
            assert!(MaskPath::parse(fine).is_ok(), "{fine}");
        }
        assert!(
            EmptyName(3)
                .to_string()
                .contains("'.' at byte 3 must be followed")
        );
    }
}
