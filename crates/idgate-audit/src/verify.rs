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
//! | a file cut mid-line | an incomplete line, when more follows it; at the very end of the trail it is its open end, as the batch the writer is writing looks |
//! | a file cut at a line's end | the trail ends without its closing checkpoint (open end) |
//! | entries rewritten with their hashes | the next checkpoint's signature does not verify |
//! | a checkpoint forged | its signature does not verify with the given keys |
//! | files removed after a rotation, and a restart | the restart's opening is not the rotation's, and no gap follows it |
//! | entries added after the last checkpoint | past the writer's schedule ([`Schedule`]), when it is given, also when a later start signed them (its gap names them either way) |
//! | a file added after a shutdown: a start's opening, then entries | its second line: a start is followed by its checkpoint (or, from gateways that went on when they could not sign at a start, by a checkpoint of its own run: then a [`Warning`]) |
//! | the end cut back, or the newest files removed | only against an anchor kept elsewhere ([`ExpectHead`]) |
//!
//! What the files alone cannot show: a trail cut back to an earlier clean shutdown (its
//! newest files removed, or its end cut and a restart since) is a whole trail. Only the head
//! of the chain as it was seen elsewhere (a SIEM's copy of a checkpoint) shows that entries
//! are missing.

use std::io::BufRead;
use std::time::Duration;

use crate::chain::{Digest, EntryKind};
use crate::checkpoint::{Checkpoint, CheckpointError, Close};
use crate::keys::{EncryptionKey, PublicKey};
use crate::reader::{self, Lines, ReadError};

/// What a verification needs: the public keys checkpoints may be signed with, and the keys
/// to decrypt encrypted files. (The writer's schedule and an anchor, when known, are given
/// with [`Verifier::with_schedule`] and [`Verifier::with_expected_head`].)
#[derive(Debug, Default)]
pub struct VerifyOptions {
    pub keys: Vec<PublicKey>,
    pub decrypt: Vec<EncryptionKey>,
}

/// How often the writer signs: a checkpoint after `every` entries, or `interval` after the
/// one before (`[audit] checkpoint_every`, `checkpoint_interval`). The entries after a
/// trail's last checkpoint are its only ones no signature covers; the writer never leaves
/// more than `every` of them, nor a record more than `interval` (and [`CHECKPOINT_GRACE`])
/// younger than that checkpoint, nor a record without its time, so a longer unsigned end
/// was not written by it. `u64::MAX` and `Duration::MAX` leave their axis unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub every: u64,
    pub interval: Duration,
}

impl Schedule {
    /// Whether records' times are held to `interval`.
    fn bounds_time(&self) -> bool {
        self.interval < Duration::MAX
    }
}

/// What a record's time may run past `checkpoint_interval` after the last checkpoint: the
/// writer's clocks (a record's time is taken before it is queued, a checkpoint's when it is
/// signed) and a small step of the system clock.
pub const CHECKPOINT_GRACE: Duration = Duration::from_secs(5);

/// An entry the trail must hold, as seen outside its directory (the sequence number and
/// hash of a checkpoint a SIEM received, say): `SEQ` or `SEQ:HASH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpectHead {
    pub seq: u64,
    pub hash: Option<Digest>,
}

impl std::str::FromStr for ExpectHead {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?}: write SEQ or SEQ:HASH (an entry's sequence number, and its hash: 64 hex digits)"
            )
        };
        let (seq, hash) = match s.split_once(':') {
            Some((seq, hash)) => (seq, Some(hash)),
            None => (s, None),
        };
        let seq = seq.parse().map_err(|_| bad())?;
        let hash = hash
            .map(|h| Digest::parse(&h.to_ascii_lowercase()).ok_or_else(bad))
            .transpose()?;
        Ok(Self { seq, hash })
    }
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

/// A finding's words are safe to print: text that comes from the trail (a key id, a file
/// name) is escaped ([`printable`]).
impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", printable(&self.file), self.line)?;
        if let Some(seq) = self.seq {
            write!(f, "entry {seq}: ")?;
        }
        write!(f, "{}", printable(&self.problem.to_string()))
    }
}

/// Whether a character would act on a terminal rather than be shown: C0 and C1 controls,
/// DEL, and the bidirectional controls that reorder what follows them.
fn acts_on_a_terminal(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every character that would act on a terminal written as `\u{XXXX}`: text read
/// from a trail file, or a file's name, printed as it is could move the cursor, erase a
/// line, or reorder what follows, and make a failed verification look like a good one.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(acts_on_a_terminal) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        if acts_on_a_terminal(c) {
            out.push_str(&format!("\\u{{{:04x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A JSON text (a trail entry, which parsed) safe to print, in its own order: as it is when
/// nothing in it would act on a terminal; else with such characters escaped as `\uXXXX`
/// inside strings, and (tabs, carriage returns: the only ones JSON allows there) written as
/// spaces between them. It reads back as the same JSON.
pub fn printable_json(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let Ok(t) = std::str::from_utf8(text) else {
        return std::borrow::Cow::Owned(
            printable(&String::from_utf8_lossy(text))
                .into_owned()
                .into_bytes(),
        );
    };
    if !t.chars().any(acts_on_a_terminal) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(t.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    for c in t.chars() {
        if escaped {
            escaped = false;
        } else if in_string && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_string = !in_string;
        } else if acts_on_a_terminal(c) {
            if in_string {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            } else {
                out.push(' ');
            }
            continue;
        }
        out.push(c);
    }
    std::borrow::Cow::Owned(out.into_bytes())
}

/// What is wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(
        "the line is incomplete (no newline), and more of the trail follows it: the file was cut, or a torn write was left in place"
    )]
    Torn,
    #[error("the line is longer than any entry the gateway writes")]
    TooLong,
    #[error("{0}")]
    Read(#[from] ReadError),
    #[error(
        "it is entry {found} where entry {expected} belongs: entries before it were removed, or lines were inserted or moved"
    )]
    Seq { expected: u64, found: u64 },
    #[error(
        "it follows entry {max}, the last sequence number: sequence numbers do not wrap, so no entry can follow it",
        max = u64::MAX
    )]
    SeqExhausted,
    #[error("its prev is not the hash of the entry before it: that entry was altered or replaced")]
    Link,
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("the file does not begin with its opening entry: its first lines were removed")]
    NoOpening,
    #[error(
        "its open member is missing or malformed: an opening names its file and why it was opened (start or rotate)"
    )]
    Opening,
    #[error("an opening entry inside a file: lines of another file were inserted")]
    OpeningInside,
    #[error("an entry after the file's closing checkpoint: lines were appended")]
    AfterClose,
    #[error(
        "{file} ends without its closing checkpoint, and this file records no gap for it: entries were cut off its end"
    )]
    MissingGap { file: String },
    #[error(
        "{file} was closed for rotation, but this file was opened by a start and records no gap: the files that followed {file} were removed"
    )]
    MissingRotation { file: String },
    #[error(
        "it opens a file for a rotation, but the file before it, {file}, was not closed for one: files between them were removed"
    )]
    NotRotated { file: String },
    #[error(
        "its opening names {named} as the file before it, but the file before it is {actual}: files between them were removed or replaced"
    )]
    WrongPrevious { named: String, actual: String },
    #[error(
        "a gap entry that does not follow a start's opening: the gateway writes one only as the second entry of the file a start opens"
    )]
    GapOutOfPlace,
    #[error(
        "its gap member is malformed, or does not name the entry before the opening (last_seq, last_hash)"
    )]
    GapMismatch,
    #[error(
        "{unsigned} entries follow the last checkpoint of the run that wrote them (up to the trail's end, or to the next start), and this is the first past checkpoint_every ({every}): the gateway signs at least every {every} entries, so the entries from here on were added after it, or its signing failed"
    )]
    TailTooLong { unsigned: u64, every: u64 },
    #[error(
        "its time is {late:?} after the last checkpoint's, more than checkpoint_interval ({interval:?}) and {grace:?} of grace, and no checkpoint of its run follows: the gateway would have signed it, so it was added after it, or its signing failed",
        grace = CHECKPOINT_GRACE
    )]
    TailTooLate { late: Duration, interval: Duration },
    #[error(
        "a record after the last checkpoint without a time in milliseconds, and no checkpoint of its run follows: the gateway writes every record with its time, so it was added after it, and checkpoint_interval ({interval:?}) cannot bound it"
    )]
    TailNoTime { interval: Duration },
    #[error(
        "a start's opening is followed by this entry, not by the start's checkpoint, and no checkpoint of its run signs it: the gateway signs the chain at every start before it writes anything else, so the entries from here on are not the gateway's"
    )]
    StartUnsigned,
    #[error(
        "its hash is not {expected}, the hash it is anchored to (--expect-head): the trail was rewritten from here on, or this is another trail"
    )]
    HeadMismatch { expected: Digest },
    #[error(
        "the trail ends {end}, before entry {expected}, which it is anchored to (--expect-head): entries were cut off its end, or its newest files were removed",
        end = trail_end(.last)
    )]
    HeadMissing { expected: u64, last: Option<u64> },
    #[error(
        "the files given begin here, after entry {expected}, which the trail is anchored to (--expect-head): give the files that hold it"
    )]
    AnchorNotGiven { expected: u64 },
}

/// "at entry N", or "without any entry".
fn trail_end(last: &Option<u64>) -> String {
    match last {
        Some(l) => format!("at entry {l}"),
        None => "without any entry".to_owned(),
    }
}

/// What came before a gap the trail records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapAfter {
    /// The file before was not closed: its run stopped (a crash, a kill), or its end was cut.
    Unclosed,
    /// The file before was closed for rotation, and the file after it is missing: a crash in
    /// the rotation, or files removed.
    Rotation,
    /// The file before was closed at shutdown; bytes after its end were set aside.
    Shutdown,
    /// The file before was not given.
    Unknown,
}

/// A gap the trail records: a run that ended without closing its file, or files missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GapNote {
    pub file: String,
    pub line: u64,
    pub seq: u64,
    /// The last intact entry of the run that ended.
    pub last_seq: u64,
    pub bytes_discarded: u64,
    pub after: GapAfter,
    /// Entries (first and last) that followed the last checkpoint of the run that ended:
    /// no checkpoint of their own run signs them; only this start's does.
    pub unsigned: Option<(u64, u64)>,
}

/// How many gaps a summary describes one by one; past them it counts.
pub const MAX_GAP_NOTES: usize = 16;

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
    /// The hash of the last entry: with `last_seq`, the head to anchor elsewhere.
    pub head: Option<Digest>,
    /// The sequence number and hash of the last checkpoint entry.
    pub last_checkpoint: Option<(u64, Digest)>,
    /// The first [`MAX_GAP_NOTES`] gaps.
    pub gaps: Vec<GapNote>,
    /// Every gap.
    pub gap_count: u64,
    /// Records the writer said it dropped (queue full, or closing).
    pub dropped: u64,
    /// Entries after the last checkpoint: chained, not yet signed.
    pub unsigned: u64,
    /// The bytes of an incomplete line at the very end of the trail: the batch the writer
    /// is writing, as a reader sees it part-way, or a file cut there. Not an entry yet.
    pub incomplete_end: Option<u64>,
    /// The first [`MAX_GAP_NOTES`] starts whose own checkpoint is missing, though a later
    /// checkpoint of the same run signs what follows them (see [`Warning`]).
    pub warnings: Vec<Warning>,
    /// Every such start.
    pub warning_count: u64,
    pub end: End,
}

/// Something the trail shows that does not break it. The one kind: a start's opening
/// followed by records rather than by the start's checkpoint, where a later checkpoint of
/// the same run (before the next start) holds and so signs them. Gateways before the one
/// that refuses to start without signing logged a start checkpoint they could not sign
/// (an HSM that refused) and went on; the earliest wrote none at starts. A start without
/// any checkpoint of its own run is not this: it is broken ([`Problem::StartUnsigned`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The first entry after the opening.
    pub at: Finding,
    /// The checkpoint of the same run that signs it.
    pub signed_by: u64,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = &self.at;
        write!(f, "{}:{}: ", printable(&a.file), a.line)?;
        if let Some(seq) = a.seq {
            write!(f, "entry {seq}: ")?;
        }
        write!(
            f,
            "a start's opening is followed by this entry, not by the start's checkpoint (a gateway before this version went on when it could not sign at a start); checkpoint {} of the same run signs it",
            self.signed_by
        )
    }
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

/// Why a file was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenReason {
    Start,
    Rotate,
}

/// A file's opening entry, as read.
struct Opening {
    /// The name the file was created with.
    file: String,
    reason: OpenReason,
    previous_file: Option<String>,
    seq: u64,
    prev: Digest,
}

impl Opening {
    fn read(value: &serde_json::Value, seq: u64, prev: Digest) -> Option<Self> {
        let o = value.get("open")?;
        let text = |k| o.get(k).and_then(serde_json::Value::as_str);
        let reason = match text("reason")? {
            "start" => OpenReason::Start,
            "rotate" => OpenReason::Rotate,
            _ => return None,
        };
        let previous_file = match o.get("previous_file") {
            None => None,
            Some(v) => Some(v.as_str()?.to_owned()),
        };
        let file = text("file").filter(|f| !f.is_empty())?.to_owned();
        Some(Self {
            file,
            reason,
            previous_file,
            seq,
            prev,
        })
    }
}

/// The end of the file before the current one.
struct PrevEnd {
    /// As given to the verifier.
    file: String,
    /// As its opening names it.
    opened_as: String,
    closed: Option<Close>,
}

/// A gap entry that must come next.
struct NeedGap {
    file: String,
    after_rotation: bool,
}

/// Where an entry is.
struct Pos {
    file: String,
    line: u64,
    seq: u64,
}

/// An incomplete line at the end of a file: the trail's open end if nothing follows it.
struct Incomplete {
    file: String,
    line: u64,
    /// The entry it would be.
    seq: Option<u64>,
}

/// Feeds files in chain order; [`Verifier::check_end`] checks what only the end of the trail
/// shows, [`Verifier::finish`] gives the summary.
pub struct Verifier {
    opts: VerifyOptions,
    /// When given, the entries after the last checkpoint must fit in it.
    schedule: Option<Schedule>,
    /// When given, the trail must hold this entry.
    expect_head: Option<ExpectHead>,
    /// The next entry's sequence number and `prev`.
    expected: Option<(u64, Digest)>,
    /// The last entry had the last sequence number: nothing may follow it.
    exhausted: bool,
    prev_file: Option<PrevEnd>,
    summary: Summary,
    /// The current file's state.
    closed: Option<Close>,
    opening: Option<Opening>,
    last_line: u64,
    need_gap: Option<NeedGap>,
    /// The last file given, with or without entries.
    last_name: String,
    /// The file of the first entry.
    first_name: Option<String>,
    /// The line after the last entry, and its file.
    end_at: Option<(String, u64)>,
    /// The time of the last checkpoint.
    checkpoint_ms: Option<u64>,
    /// Entries after the last checkpoint past the schedule: the first by count, and the
    /// first record by time (too late, or without a time).
    over_count: Option<Pos>,
    over_time: Option<(Pos, Problem)>,
    head_seen: bool,
    /// An incomplete last line of the last file given so far.
    incomplete: Option<Incomplete>,
    /// After a start's opening (and its gap): its checkpoint must come next.
    start_unsigned: bool,
    /// A start's opening was followed by records, not its checkpoint: broken unless a
    /// checkpoint of the same run comes before the run ends ([`Warning`]).
    start_pending: Option<Finding>,
    /// The entries between the last checkpoint and a start's opening, for its gap.
    run_unsigned: Option<(u64, u64)>,
    /// A finding about an earlier entry, found at the current one.
    earlier: Option<Finding>,
}

impl Verifier {
    pub fn new(opts: VerifyOptions) -> Self {
        Self {
            opts,
            schedule: None,
            expect_head: None,
            expected: None,
            exhausted: false,
            prev_file: None,
            summary: Summary {
                files: 0,
                entries: 0,
                records: 0,
                checkpoints: 0,
                first_seq: None,
                last_seq: None,
                head: None,
                last_checkpoint: None,
                gaps: Vec::new(),
                gap_count: 0,
                dropped: 0,
                unsigned: 0,
                incomplete_end: None,
                warnings: Vec::new(),
                warning_count: 0,
                end: End::Empty,
            },
            closed: None,
            opening: None,
            last_line: 0,
            need_gap: None,
            last_name: String::new(),
            first_name: None,
            end_at: None,
            checkpoint_ms: None,
            over_count: None,
            over_time: None,
            head_seen: false,
            incomplete: None,
            start_unsigned: false,
            start_pending: None,
            run_unsigned: None,
            earlier: None,
        }
    }

    /// Holds the entries after the trail's last checkpoint to the writer's schedule.
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.schedule = Some(schedule);
        self
    }

    /// Requires the trail to hold this entry (with its hash, when given).
    pub fn with_expected_head(mut self, head: ExpectHead) -> Self {
        self.expect_head = Some(head);
        self
    }

    /// Verifies the next file of the trail.
    ///
    /// An incomplete last line (no newline) is the trail's open end when nothing follows it:
    /// the writer writes a batch with one `write`, which a reader of the live trail may see
    /// part of. Any file given after it, even an empty one, makes it a break in the trail.
    pub fn file(&mut self, name: &str, reader: impl BufRead) -> Result<(), VerifyError> {
        if let Some(i) = self.incomplete.take() {
            return Err(VerifyError::Broken(Box::new(Finding {
                file: i.file,
                line: i.line,
                seq: i.seq,
                problem: Problem::Torn,
            })));
        }
        self.summary.files += 1;
        self.closed = None;
        self.opening = None;
        self.last_line = 0;
        // A start that crashed before its checkpoint leaves its opening alone in its file.
        self.start_unsigned = false;
        name.clone_into(&mut self.last_name);
        let mut lines = Lines::new(reader);
        let mut any = false;
        loop {
            let line = lines.next_line().map_err(|source| VerifyError::Io {
                file: name.to_owned(),
                source,
            })?;
            let Some(line) = line else { break };
            if !line.complete && !line.too_long {
                // Only the end of a file is without a newline.
                let seq = self.expected.map(|e| e.0);
                if self.closed.is_some() {
                    return Err(VerifyError::Broken(Box::new(Finding {
                        file: name.to_owned(),
                        line: line.number,
                        seq,
                        problem: Problem::AfterClose,
                    })));
                }
                self.summary.incomplete_end = Some(line.bytes.len() as u64);
                self.incomplete = Some(Incomplete {
                    file: name.to_owned(),
                    line: line.number,
                    seq,
                });
                break;
            }
            any = true;
            self.last_line = line.number;
            if let Err((seq, problem)) = self.line(name, &line) {
                let finding = self.earlier.take().unwrap_or_else(|| Finding {
                    file: name.to_owned(),
                    line: line.number,
                    seq: seq.or(self.expected.map(|e| e.0)),
                    problem,
                });
                return Err(VerifyError::Broken(Box::new(finding)));
            }
        }
        // A file the writer created but never wrote to (a crash right then) holds nothing.
        let incomplete = self.incomplete.is_some();
        if any || incomplete {
            // The gap a start's opening needs may be the line being written.
            if let Some(need) = self.need_gap.take()
                && !incomplete
            {
                return Err(VerifyError::Broken(Box::new(Finding {
                    file: name.to_owned(),
                    line: self.last_line + 1,
                    seq: self.expected.map(|e| e.0),
                    problem: need.problem(),
                })));
            }
            // An incomplete line is where the next entry goes: the line after the last one.
            self.end_at = Some((name.to_owned(), self.last_line + 1));
            self.prev_file = Some(PrevEnd {
                file: name.to_owned(),
                opened_as: self
                    .opening
                    .as_ref()
                    .map(|o| o.file.clone())
                    .unwrap_or_default(),
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
                    seq: seq.map_or(0, |s| s.saturating_add(1)),
                },
            };
        }
        Ok(())
    }

    fn line(&mut self, name: &str, line: &reader::Line) -> Result<(), (Option<u64>, Problem)> {
        if line.too_long {
            return Err((None, Problem::TooLong));
        }
        let (entry, _) =
            reader::decode(&line.bytes, &self.opts.decrypt).map_err(|e| (None, e.into()))?;
        let seq = Some(entry.seq);
        if self.exhausted {
            return Err((seq, Problem::SeqExhausted));
        }
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
        if matches!(entry.kind, EntryKind::Record | EntryKind::Dropped)
            && self.start_unsigned
            && self.need_gap.is_none()
        {
            // Judged when its run ends: signed by a checkpoint of the run, or not at all.
            self.start_unsigned = false;
            self.start_pending = Some(Finding {
                file: name.to_owned(),
                line: line.number,
                seq,
                problem: Problem::StartUnsigned,
            });
        }
        match entry.kind {
            EntryKind::Open => {
                let opening = Opening::read(&entry.value, entry.seq, entry.prev)
                    .ok_or((seq, Problem::Opening))?;
                self.need_gap = self.succession(&opening).map_err(|p| (seq, p))?;
                if opening.reason == OpenReason::Start {
                    self.run_ends(entry.seq)?;
                    self.start_unsigned = true;
                }
                self.opening = Some(opening);
            }
            EntryKind::Gap => {
                let note = self.gap(name, line.number, &entry.value, entry.seq)?;
                self.summary.gap_count += 1;
                if self.summary.gaps.len() < MAX_GAP_NOTES {
                    self.summary.gaps.push(note);
                }
                self.need_gap = None;
            }
            _ if self.need_gap.is_some() => {
                let problem = self.need_gap.take().map(|n| n.problem());
                return Err((seq, problem.unwrap_or(Problem::GapOutOfPlace)));
            }
            EntryKind::Checkpoint => {
                let c = Checkpoint::from_entry(&entry.value).map_err(|e| (seq, e.into()))?;
                c.verify(entry.seq, &entry.prev, &self.opts.keys)
                    .map_err(|e| (seq, e.into()))?;
                self.closed = c.close;
                self.start_unsigned = false;
                if let Some(at) = self.start_pending.take() {
                    self.summary.warning_count += 1;
                    if self.summary.warnings.len() < MAX_GAP_NOTES {
                        self.summary.warnings.push(Warning {
                            at,
                            signed_by: entry.seq,
                        });
                    }
                }
                self.summary.checkpoints += 1;
                self.summary.last_checkpoint = Some((entry.seq, entry.hash));
                self.checkpoint_ms = Some(c.time_ms);
                self.over_count = None;
                self.over_time = None;
            }
            EntryKind::Record => {
                self.summary.records += 1;
                if let (Some(schedule), Some(checkpoint_ms), None) =
                    (self.schedule, self.checkpoint_ms, &self.over_time)
                    && schedule.bounds_time()
                {
                    let interval = schedule.interval;
                    // The writer gives every record its time; one without it would escape
                    // the bound.
                    let problem = match entry.value.get("time").and_then(serde_json::Value::as_u64)
                    {
                        None => Some(Problem::TailNoTime { interval }),
                        Some(time) => {
                            let late = Duration::from_millis(time.saturating_sub(checkpoint_ms));
                            (late > interval.saturating_add(CHECKPOINT_GRACE))
                                .then_some(Problem::TailTooLate { late, interval })
                        }
                    };
                    if let Some(problem) = problem {
                        let at = Pos {
                            file: name.to_owned(),
                            line: line.number,
                            seq: entry.seq,
                        };
                        self.over_time = Some((at, problem));
                    }
                }
            }
            EntryKind::Dropped => {
                let count = entry.value["dropped"]["count"].as_u64().unwrap_or_default();
                self.summary.dropped = self.summary.dropped.saturating_add(count);
            }
        }
        if entry.kind == EntryKind::Checkpoint {
            self.summary.unsigned = 0;
        } else {
            self.summary.unsigned += 1;
            if let Some(schedule) = self.schedule
                && self.summary.unsigned > schedule.every
                && self.over_count.is_none()
            {
                self.over_count = Some(Pos {
                    file: name.to_owned(),
                    line: line.number,
                    seq: entry.seq,
                });
            }
        }
        if let Some(expect) = self.expect_head
            && expect.seq == entry.seq
        {
            if let Some(hash) = expect.hash
                && hash != entry.hash
            {
                return Err((seq, Problem::HeadMismatch { expected: hash }));
            }
            self.head_seen = true;
        }
        self.summary.entries += 1;
        if self.summary.first_seq.is_none() {
            self.summary.first_seq = Some(entry.seq);
            self.first_name = Some(name.to_owned());
        }
        self.summary.last_seq = Some(entry.seq);
        self.summary.head = Some(entry.hash);
        match entry.seq.checked_add(1) {
            Some(next) => self.expected = Some((next, entry.hash)),
            None => self.exhausted = true,
        }
        Ok(())
    }

    /// At a start's opening (entry `seq`), the run before it has ended: the entries after its
    /// last checkpoint are held to the schedule as the trail's end is, for the start's
    /// checkpoint signs them too, and are noted for the start's gap.
    fn run_ends(&mut self, seq: u64) -> Result<(), (Option<u64>, Problem)> {
        if let Some(finding) = self.start_pending.take() {
            self.earlier = Some(finding.clone());
            return Err((finding.seq, finding.problem));
        }
        let unsigned = self.summary.unsigned;
        self.run_unsigned = (unsigned > 0).then(|| (seq - unsigned, seq - 1));
        if let Some((at, problem)) = self.over_schedule() {
            let finding = Finding {
                file: at.file.clone(),
                line: at.line,
                seq: Some(at.seq),
                problem,
            };
            self.earlier = Some(finding.clone());
            return Err((finding.seq, finding.problem));
        }
        Ok(())
    }

    /// The first entry after the last checkpoint past the schedule, when one is given.
    fn over_schedule(&self) -> Option<(&Pos, Problem)> {
        let schedule = self.schedule?;
        let count = self.over_count.as_ref().map(|at| {
            let problem = Problem::TailTooLong {
                unsigned: self.summary.unsigned,
                every: schedule.every,
            };
            (at, problem)
        });
        let time = self.over_time.as_ref().map(|(at, p)| (at, p.clone()));
        match (count, time) {
            (Some(c), Some(t)) => Some(if t.0.seq < c.0.seq { t } else { c }),
            (c, t) => c.or(t),
        }
    }

    /// Checks that a file's opening follows the file before it as the writer opens files:
    /// after a rotation, the rotation's file (or a start that records the gap); after a
    /// shutdown or an unclosed end, a start (with a gap after an unclosed end). Returns the
    /// gap that must come next.
    fn succession(&self, opening: &Opening) -> Result<Option<NeedGap>, Problem> {
        let Some(prev) = &self.prev_file else {
            return Ok(None);
        };
        if opening.previous_file.as_deref() != Some(prev.opened_as.as_str()) {
            return Err(Problem::WrongPrevious {
                named: opening
                    .previous_file
                    .clone()
                    .unwrap_or_else(|| "none".to_owned()),
                actual: prev.opened_as.clone(),
            });
        }
        let need = |after_rotation| {
            Some(NeedGap {
                file: prev.file.clone(),
                after_rotation,
            })
        };
        Ok(match (prev.closed, opening.reason) {
            (Some(Close::Rotate), OpenReason::Rotate) => None,
            (_, OpenReason::Rotate) => {
                return Err(Problem::NotRotated {
                    file: prev.file.clone(),
                });
            }
            (Some(Close::Rotate), OpenReason::Start) => need(true),
            (None, OpenReason::Start) => need(false),
            (Some(Close::Shutdown), OpenReason::Start) => None,
        })
    }

    /// Reads a gap entry, which only a start writes, right after its opening, naming the
    /// entry the opening follows.
    fn gap(
        &self,
        name: &str,
        line: u64,
        value: &serde_json::Value,
        seq: u64,
    ) -> Result<GapNote, (Option<u64>, Problem)> {
        let opening = self
            .opening
            .as_ref()
            .filter(|o| line == 2 && o.reason == OpenReason::Start)
            .ok_or((Some(seq), Problem::GapOutOfPlace))?;
        let g = &value["gap"];
        let last_seq = g["last_seq"].as_u64();
        let last_hash = g["last_hash"].as_str().and_then(Digest::parse);
        if last_seq.is_none()
            || last_seq.and_then(|s| s.checked_add(1)) != Some(opening.seq)
            || last_hash != Some(opening.prev)
        {
            return Err((Some(seq), Problem::GapMismatch));
        }
        let after = match &self.prev_file {
            None => GapAfter::Unknown,
            Some(p) => match p.closed {
                None => GapAfter::Unclosed,
                Some(Close::Rotate) => GapAfter::Rotation,
                Some(Close::Shutdown) => GapAfter::Shutdown,
            },
        };
        Ok(GapNote {
            file: name.to_owned(),
            line,
            seq,
            last_seq: last_seq.unwrap_or_default(),
            bytes_discarded: g["bytes_discarded"].as_u64().unwrap_or_default(),
            after,
            unsigned: self.run_unsigned,
        })
    }

    /// Checks what only the end of the trail shows, once every file was given: that it
    /// reaches the anchored entry ([`Verifier::with_expected_head`]), and that the entries
    /// after its last checkpoint fit the writer's schedule ([`Verifier::with_schedule`]).
    /// Names the first entry that does not hold.
    pub fn check_end(&self) -> Result<(), VerifyError> {
        let broken = |file: &str, line, seq, problem| {
            Err(VerifyError::Broken(Box::new(Finding {
                file: file.to_owned(),
                line,
                seq,
                problem,
            })))
        };
        let s = &self.summary;
        if let Some(expect) = self.expect_head
            && !self.head_seen
        {
            if let (Some(first), Some(file)) = (s.first_seq, &self.first_name)
                && first > expect.seq
            {
                let problem = Problem::AnchorNotGiven {
                    expected: expect.seq,
                };
                return broken(file, 1, Some(first), problem);
            }
            let (file, line) = match &self.end_at {
                Some((file, line)) => (file.as_str(), *line),
                None => (self.last_name.as_str(), 1),
            };
            let problem = Problem::HeadMissing {
                expected: expect.seq,
                last: s.last_seq,
            };
            return broken(file, line, s.last_seq.map(|l| l.saturating_add(1)), problem);
        }
        // A start whose run has no checkpoint of its own, up to the trail's end.
        if let Some(f) = &self.start_pending {
            return broken(&f.file, f.line, f.seq, f.problem.clone());
        }
        if let Some((at, problem)) = self.over_schedule() {
            return broken(&at.file, at.line, Some(at.seq), problem);
        }
        Ok(())
    }

    /// What was verified (with [`Verifier::check_end`] first, when an anchor or the
    /// writer's schedule was given).
    pub fn finish(self) -> Summary {
        self.summary
    }
}

impl NeedGap {
    fn problem(self) -> Problem {
        if self.after_rotation {
            Problem::MissingRotation { file: self.file }
        } else {
            Problem::MissingGap { file: self.file }
        }
    }
}

#[cfg(test)]
mod tests;
