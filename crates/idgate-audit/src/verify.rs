//! Verifying a trail: every line of every file, in chain order, against its hash, its place
//! in the chain and, for checkpoints, their signatures. Stops at the first entry that does
//! not hold and says where it is (file, line, sequence number) and what is wrong with it.
//!
//! What each kind of tampering looks like here:
//!
//! | tampering | found as |
//! |---|---|
//! | a byte edited | the line's hash (or, encrypted, its tag) does not match |
//! | a line deleted | the next line's sequence number skips one |
//! | a line inserted, or two swapped | a sequence number out of place |
//! | a file's first lines removed | the file does not begin with its opening entry |
//! | a file cut mid-line | an incomplete last line |
//! | a file cut at a line's end | the trail ends without its closing checkpoint (open end) |
//! | entries rewritten with their hashes | the next checkpoint's signature does not verify |
//! | a checkpoint forged | its signature does not verify with the given keys |

use std::io::BufRead;

use crate::chain::{Digest, EntryKind};
use crate::checkpoint::{Checkpoint, CheckpointError, Close};
use crate::keys::{EncryptionKey, PublicKey};
use crate::reader::{self, Lines, ReadError};

/// What a verification needs: the public keys checkpoints may be signed with, and the keys
/// to decrypt encrypted files.
#[derive(Debug, Default)]
pub struct VerifyOptions {
    pub keys: Vec<PublicKey>,
    pub decrypt: Vec<EncryptionKey>,
}

/// The first entry that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    /// 1-based; for an open end, the line after the last one.
    pub line: u64,
    /// The entry's sequence number as it reads, or the one expected there.
    pub seq: Option<u64>,
    pub problem: Problem,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.file, self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "entry {seq}: ")?;
        }
        write!(f, "{}", self.problem)
    }
}

/// What is wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the line is incomplete (no newline): a torn write, or the file was cut")]
    Torn,
    #[error("the line is longer than any entry the gateway writes")]
    TooLong,
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error(
        "it is entry {found} where entry {expected} belongs: entries before it were removed, or lines were inserted or moved"
    )]
    Seq { expected: u64, found: u64 },
    #[error("its prev is not the hash of the entry before it: that entry was altered or replaced")]
    Link,
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the file does not begin with its opening entry: its first lines were removed")]
    NoOpening,
    #[error("an opening entry inside a file: lines of another file were inserted")]
    OpeningInside,
    #[error("an entry after the file's closing checkpoint: lines were appended")]
    AfterClose,
    #[error(
        "{file} ends without its closing checkpoint, and this file records no gap for it: entries were cut off its end"
    )]
    MissingGap { file: String },
}

/// A gap the trail records: a run that ended without closing its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapNote {
    pub file: String,
    pub line: u64,
    pub seq: u64,
    /// The last intact entry of the run that ended.
    pub last_seq: u64,
    pub bytes_discarded: u64,
}

/// How the verified trail ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Closed by the gateway at a clean shutdown.
    Sealed,
    /// Closed for rotation: the chain goes on in a file that was not given.
    Rotated { file: String },
    /// Not closed: the file is still being written, its writer stopped without closing it,
    /// or entries were cut off its end.
    Open { file: String, line: u64, seq: u64 },
    /// Nothing was read.
    Empty,
}

/// What a verification found, up to where it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub files: usize,
    pub entries: u64,
    pub records: u64,
    pub checkpoints: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub gaps: Vec<GapNote>,
    /// Records the writer said it dropped (queue full, or closing).
    pub dropped: u64,
    /// Entries after the last checkpoint: chained, not yet signed.
    pub unsigned: u64,
    pub end: End,
}

/// Why a verification could not go on.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("{0}")]
    Broken(Box<Finding>),
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// The end of the file before the current one.
struct PrevEnd {
    file: String,
    closed: Option<Close>,
}

/// Feeds files in chain order; [`Verifier::finish`] gives the summary.
pub struct Verifier {
    opts: VerifyOptions,
    /// The next entry's sequence number and `prev`.
    expected: Option<(u64, Digest)>,
    prev_file: Option<PrevEnd>,
    summary: Summary,
    /// The current file's state.
    closed: Option<Close>,
    last_line: u64,
    need_gap: Option<String>,
}

impl Verifier {
    pub fn new(opts: VerifyOptions) -> Self {
        Self {
            opts,
            expected: None,
            prev_file: None,
            summary: Summary {
                files: 0,
                entries: 0,
                records: 0,
                checkpoints: 0,
                first_seq: None,
                last_seq: None,
                gaps: Vec::new(),
                dropped: 0,
                unsigned: 0,
                end: End::Empty,
            },
            closed: None,
            last_line: 0,
            need_gap: None,
        }
    }

    /// Verifies the next file of the trail.
    pub fn file(&mut self, name: &str, reader: impl BufRead) -> Result<(), VerifyError> {
        self.summary.files += 1;
        self.closed = None;
        self.last_line = 0;
        let mut lines = Lines::new(reader);
        let mut any = false;
        loop {
            let line = lines.next_line().map_err(|source| VerifyError::Io {
                file: name.to_owned(),
                source,
            })?;
            let Some(line) = line else { break };
            any = true;
            self.last_line = line.number;
            self.line(name, &line).map_err(|(seq, problem)| {
                VerifyError::Broken(Box::new(Finding {
                    file: name.to_owned(),
                    line: line.number,
                    seq: seq.or(self.expected.map(|e| e.0)),
                    problem,
                }))
            })?;
        }
        // A file the writer created but never wrote to (a crash right then) holds nothing.
        if any {
            if let Some(file) = self.need_gap.take() {
                return Err(VerifyError::Broken(Box::new(Finding {
                    file: name.to_owned(),
                    line: self.last_line + 1,
                    seq: self.expected.map(|e| e.0),
                    problem: Problem::MissingGap { file },
                })));
            }
            self.prev_file = Some(PrevEnd {
                file: name.to_owned(),
                closed: self.closed,
            });
            self.summary.end = match (self.closed, self.summary.last_seq) {
                (Some(Close::Shutdown), _) => End::Sealed,
                (Some(Close::Rotate), _) => End::Rotated {
                    file: name.to_owned(),
                },
                (None, seq) => End::Open {
                    file: name.to_owned(),
                    line: self.last_line + 1,
                    seq: seq.map_or(0, |s| s + 1),
                },
            };
        }
        Ok(())
    }

    fn line(&mut self, name: &str, line: &reader::Line) -> Result<(), (Option<u64>, Problem)> {
        if line.too_long {
            return Err((None, Problem::TooLong));
        }
        if !line.complete {
            return Err((None, Problem::Torn));
        }
        let (entry, _) =
            reader::decode(&line.bytes, &self.opts.decrypt).map_err(|e| (None, e.into()))?;
        let seq = Some(entry.seq);
        if line.number == 1 && entry.kind != EntryKind::Open {
            return Err((seq, Problem::NoOpening));
        }
        if line.number > 1 && entry.kind == EntryKind::Open {
            return Err((seq, Problem::OpeningInside));
        }
        if self.closed.is_some() {
            return Err((seq, Problem::AfterClose));
        }
        if let Some((next, prev)) = self.expected {
            if entry.seq != next {
                return Err((
                    seq,
                    Problem::Seq {
                        expected: next,
                        found: entry.seq,
                    },
                ));
            }
            if entry.prev != prev {
                return Err((seq, Problem::Link));
            }
        }
        match entry.kind {
            EntryKind::Open => {
                if let Some(prev) = &self.prev_file
                    && prev.closed.is_none()
                {
                    self.need_gap = Some(prev.file.clone());
                }
            }
            EntryKind::Gap => {
                let g = &entry.value["gap"];
                self.summary.gaps.push(GapNote {
                    file: name.to_owned(),
                    line: line.number,
                    seq: entry.seq,
                    last_seq: g["last_seq"].as_u64().unwrap_or_default(),
                    bytes_discarded: g["bytes_discarded"].as_u64().unwrap_or_default(),
                });
                self.need_gap = None;
            }
            _ if self.need_gap.is_some() => {
                let file = self.need_gap.take().unwrap_or_default();
                return Err((seq, Problem::MissingGap { file }));
            }
            EntryKind::Checkpoint => {
                let c = Checkpoint::from_entry(&entry.value).map_err(|e| (seq, e.into()))?;
                c.verify(entry.seq, &entry.prev, &self.opts.keys)
                    .map_err(|e| (seq, e.into()))?;
                self.closed = c.close;
                self.summary.checkpoints += 1;
            }
            EntryKind::Record => self.summary.records += 1,
            EntryKind::Dropped => {
                self.summary.dropped +=
                    entry.value["dropped"]["count"].as_u64().unwrap_or_default();
            }
        }
        if entry.kind == EntryKind::Checkpoint {
            self.summary.unsigned = 0;
        } else {
            self.summary.unsigned += 1;
        }
        self.summary.entries += 1;
        self.summary.first_seq.get_or_insert(entry.seq);
        self.summary.last_seq = Some(entry.seq);
        self.expected = Some((entry.seq + 1, entry.hash));
        Ok(())
    }

    /// What was verified.
    pub fn finish(self) -> Summary {
        self.summary
    }
}

#[cfg(test)]
mod tests;
