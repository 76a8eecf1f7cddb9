//! The hash chain: every entry of the trail (a record, a checkpoint, a gap, a file's opening)
//! is one JSON line that starts with its sequence number and the SHA-256 of the entry before
//! it, and ends with its own SHA-256:
//!
//! ```text
//! {"seq":42,"prev":"<64 hex>","entry":"record",<the entry's members>,"hash":"<64 hex>"}
//! ```
//!
//! The canonical serialization an entry's hash covers is the line exactly as written, from
//! its `{` up to (not including) the `,"hash":` member, which the writer always puts last.
//! No byte of an entry escapes its hash, and nothing has to be re-serialized to check it.

use std::fmt;

use ring::digest::{SHA256, digest};

/// A SHA-256 digest: an entry's hash, the `prev` of the entry after it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The `prev` of the first entry of a chain.
    pub const GENESIS: Digest = Digest([0; 32]);

    pub fn of(bytes: &[u8]) -> Self {
        let mut out = [0; 32];
        out.copy_from_slice(digest(&SHA256, bytes).as_ref());
        Self(out)
    }

    pub fn hex(&self) -> String {
        idgate_codec::hex::encode(&self.0)
    }

    fn hex_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + 64, 0);
        idgate_codec::hex::encode_to_slice(&self.0, &mut out[start..]);
    }

    /// 64 lower-case hexadecimal digits.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        idgate_codec::hex::decode_array(s).map(Self)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// The first entry of every file: which file it is and where the chain comes from.
    Open,
    /// One request, or one refused connection (OCSF classes 6003 and 4001).
    Record,
    /// A signed checkpoint over the entry before it; it also closes a file.
    Checkpoint,
    /// What a start found at the end of the previous run: records lost in a crash.
    Gap,
    /// Records the writer could not take (its queue was full, or it had closed).
    Dropped,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Record => "record",
            Self::Checkpoint => "checkpoint",
            Self::Gap => "gap",
            Self::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => Self::Open,
            "record" => Self::Record,
            "checkpoint" => Self::Checkpoint,
            "gap" => Self::Gap,
            "dropped" => Self::Dropped,
            _ => return None,
        })
    }
}

/// The members every line ends with: `,"hash":"` 64 hex digits `"}`.
const HASH_TAIL: usize = 9 + 64 + 2;
const LINE_START: &[u8] = b"{\"seq\":";

/// Appends the entry `seq` (after `prev`) of `kind` with `members` (comma-separated JSON
/// members without braces; may be empty) to `out`, without a newline. Returns its hash.
pub(crate) fn seal(
    out: &mut Vec<u8>,
    seq: u64,
    prev: &Digest,
    kind: EntryKind,
    members: &[u8],
) -> Digest {
    let start = out.len();
    out.extend_from_slice(LINE_START);
    crate::json::num(out, seq);
    out.extend_from_slice(b",\"prev\":\"");
    prev.hex_into(out);
    out.extend_from_slice(b"\",\"entry\":\"");
    out.extend_from_slice(kind.as_str().as_bytes());
    out.push(b'"');
    if !members.is_empty() {
        out.push(b',');
        out.extend_from_slice(members);
    }
    let hash = Digest::of(&out[start..]);
    out.extend_from_slice(b",\"hash\":\"");
    hash.hex_into(out);
    out.extend_from_slice(b"\"}");
    hash
}

/// One entry read back and checked against its own hash.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: u64,
    pub prev: Digest,
    pub kind: EntryKind,
    pub hash: Digest,
    /// The whole entry, parsed.
    pub value: serde_json::Value,
}

/// Why a line is not an intact entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not an entry of the trail (it must start with {{\"seq\": and end with its \"hash\")")]
    Shape,
    #[error("its hash does not match its content: the entry was altered")]
    HashMismatch,
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("its {0} member is missing or malformed")]
    Member(&'static str),
}

/// Checks one line (without its newline) against its hash and parses it.
pub fn open(line: &[u8]) -> Result<Entry, LineError> {
    if line.len() < LINE_START.len() + HASH_TAIL || !line.starts_with(LINE_START) {
        return Err(LineError::Shape);
    }
    let (body, tail) = line.split_at(line.len() - HASH_TAIL);
    let hex = tail
        .strip_prefix(b",\"hash\":\"")
        .and_then(|t| t.strip_suffix(b"\"}"))
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(Digest::parse)
        .ok_or(LineError::Shape)?;
    if Digest::of(body) != hex {
        return Err(LineError::HashMismatch);
    }
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| LineError::Json(e.to_string()))?;
    let seq = value
        .get("seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or(LineError::Member("seq"))?;
    let prev = value
        .get("prev")
        .and_then(serde_json::Value::as_str)
        .and_then(Digest::parse)
        .ok_or(LineError::Member("prev"))?;
    let kind = value
        .get("entry")
        .and_then(serde_json::Value::as_str)
        .and_then(EntryKind::parse)
        .ok_or(LineError::Member("entry"))?;
    // The members the prefix was built from must be the ones the JSON says: a line whose
    // text repeats a member later (JSON keeps the last) would otherwise read differently.
    let mut expected = Vec::with_capacity(body.len());
    seal(&mut expected, seq, &prev, kind, &[]);
    let prefix_len = expected.len() - HASH_TAIL;
    if !body.starts_with(&expected[..prefix_len]) {
        return Err(LineError::Shape);
    }
    Ok(Entry {
        seq,
        prev,
        kind,
        hash: hex,
        value,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_line_opens_and_every_byte_is_covered() {
        let mut line = Vec::new();
        let prev = Digest::of(b"before");
        let hash = seal(&mut line, 7, &prev, EntryKind::Record, br#""a":1,"b":"x""#);
        let e = open(&line).unwrap();
        assert_eq!(
            (e.seq, e.prev, e.kind, e.hash),
            (7, prev, EntryKind::Record, hash)
        );
        assert_eq!(e.value["b"], "x");
        for i in 0..line.len() {
            let mut bad = line.clone();
            bad[i] ^= 0x01;
            assert!(open(&bad).is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn duplicate_members_cannot_change_what_a_line_says() {
        let mut line = Vec::new();
        seal(
            &mut line,
            3,
            &Digest::GENESIS,
            EntryKind::Record,
            br#""seq":4"#,
        );
        assert_eq!(open(&line).unwrap_err(), LineError::Shape);
        let mut empty = Vec::new();
        seal(&mut empty, 1, &Digest::GENESIS, EntryKind::Open, b"");
        assert_eq!(open(&empty).unwrap().kind, EntryKind::Open);
    }
}
