//! The trail's files in their directory: names that sort in chain order
//! (`audit-<first seq, 20 digits>-<UTC time>.jsonl`), and, at start, the previous run's end:
//! the entries that follow the last checkpoint the start can vouch for, as far as they go on
//! as the writer writes them, and what follows them (a torn write, entries that do not
//! verify, do not chain, or are not the writer's), which is set aside in `<file>.discarded`
//! and cut off before the chain goes on.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::chain::{Digest, Entry, EntryKind};
use crate::checkpoint::{Checkpoint, CheckpointError, Close};
use crate::crypt::EnvelopeError;
use crate::keys::{EncryptionKey, PublicKey};
use crate::reader::{self, Lines, ReadError};

/// The name of the file whose first entry is `first_seq`, opened at `at`.
pub fn file_name(first_seq: u64, at: SystemTime) -> String {
    format!(
        "audit-{first_seq:020}-{}.jsonl",
        crate::json::file_stamp(at)
    )
}

/// Whether `name` is a trail file's name.
pub fn is_trail_file(name: &str) -> bool {
    name.starts_with("audit-") && name.ends_with(".jsonl")
}

/// The trail files in `dir`, in chain order.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(is_trail_file))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .collect();
    files.sort();
    Ok(files)
}

/// Creates a file only its owner can read and write, for appending.
pub(crate) fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Makes a new directory entry durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The entry of the previous run the new one continues from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Last {
    pub seq: u64,
    pub hash: Digest,
    /// Its file was closed by a checkpoint (a clean shutdown, or a rotation).
    pub closed: Option<Close>,
    /// The last checkpoint the start vouched for (`None`: the chain's beginning): the
    /// entries after it up to `seq` were signed by no one before this start.
    pub signed: Option<(u64, Digest)>,
}

/// Where a file is cut, and what is set aside.
#[derive(Debug)]
pub(crate) struct Tail {
    pub(crate) path: PathBuf,
    /// The file's length up to the end of the last entry continued from.
    pub(crate) keep: u64,
    /// Bytes after it: a torn line, entries that do not verify or are not continued from.
    pub(crate) discarded: u64,
}

/// How much of a file is read at a time, from its end back, in search of its last
/// checkpoint; a file whose last window holds no intact entry is not this trail's.
const TAIL_WINDOW: u64 = 4 * 1024 * 1024;

/// Why the previous run's end cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: no intact entry in its last {window} bytes (wrong encryption key, or the file is not this trail's): move it aside to start a new chain"
    )]
    Unverifiable { path: PathBuf, window: u64 },
    #[error(
        "{path}: line {line} is encrypted with a key that is not configured ({why}): list it in previous_encryption_keys"
    )]
    KeyMissing {
        path: PathBuf,
        line: u64,
        why: String,
    },
    #[error(
        "{path}: no checkpoint the chain can go on from, in it (read back from its end as far as it holds intact entries) or in the files before it: what it holds cannot be vouched for; move it aside (the next start records the gap)"
    )]
    NoCheckpoint { path: PathBuf },
    #[error(
        "{path}: at byte {at}: the checkpoint the chain would go on from is signed by key {kid}, which is neither the signing key's nor one of public_keys: after a change of signing key, list the key that signed it in public_keys; otherwise the file is not this trail's, or was changed: move it aside to begin a new chain"
    )]
    UnknownSigner { path: PathBuf, at: u64, kid: String },
    #[error(
        "{path}: its name says its first entry is {named}, but it begins with entry {first}: the writer did not put it there (a file copied or renamed into the trail); move it aside"
    )]
    Misplaced {
        path: PathBuf,
        named: u64,
        first: u64,
    },
    #[error(
        "{path}: not a name the writer gives its files (audit-<first sequence number, 20 digits>-<UTC time>.jsonl), yet it sorts among them: move it out of the trail's directory"
    )]
    Misnamed { path: PathBuf },
}

/// One intact entry of a file, as the start judges it.
#[derive(Debug)]
pub(crate) struct Seen {
    /// The file's first line.
    pub(crate) first_line: bool,
    /// Where the line ends, its newline included.
    pub(crate) end: u64,
    pub(crate) seq: u64,
    pub(crate) prev: Digest,
    pub(crate) hash: Digest,
    pub(crate) kind: EntryKind,
    /// A checkpoint that names the entry before it as its head (its signature is checked
    /// only where the start looks for one to go on from: [`holds`]).
    pub(crate) held: Option<Checkpoint>,
    /// An opening's reason: `start` (true) or `rotate`.
    pub(crate) start: bool,
    /// An opening that names no file before it.
    pub(crate) first_of_chain: bool,
    /// A record's time in milliseconds.
    pub(crate) time: Option<u64>,
}

/// Where a file's entries to judge begin, as found from its end back.
#[derive(Debug)]
pub(crate) struct Scan {
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
    /// Where the entries to judge begin: the last checkpoint in it that holds, or as far
    /// back as the start looked.
    pub(crate) from: u64,
    /// They begin at the file's beginning.
    pub(crate) whole: bool,
    /// Some line read holds an intact entry.
    pub(crate) intact: bool,
    /// The last checkpoint in it that holds (see [`holds`]), at `from`.
    pub(crate) held: Option<Seen>,
    /// Read from its beginning, its first line is the chain's first entry.
    pub(crate) genesis: bool,
}

/// Finds where the entries of `path` that the start judges begin: the last checkpoint in
/// it that holds (see [`holds`]). It is searched for from the file's end back,
/// [`TAIL_WINDOW`] bytes at a time, one line in memory at a time, as far back as the
/// windows hold intact entries: however far the writer's schedule (`checkpoint_every`, up
/// to a file's rotation size) put it from the end, it is found. A file without one is
/// judged from its beginning (the chain's, or the walk goes on from a file before it); one
/// whose last window holds nothing intact, from that window (it is not this trail's); one
/// with a window that holds nothing intact before its last checkpoint-less ones, from
/// after that window (the start cannot vouch for them). A checkpoint past `upto` is not
/// one to go on from (see [`Synced`]).
pub(crate) fn scan(
    path: &Path,
    keys: &[EncryptionKey],
    signers: &[PublicKey],
    upto: Option<u64>,
) -> Result<Scan, TailError> {
    let io = |source| TailError::Io {
        path: path.to_owned(),
        source,
    };
    let len = File::open(path)
        .and_then(|f| f.metadata())
        .map_err(io)?
        .len();
    let mut to = len;
    let mut any_intact = false;
    let mut first_is_genesis = false;
    let (from, whole, held) = loop {
        let start = to.saturating_sub(TAIL_WINDOW);
        let (mut intact, mut held, mut unknown) = (false, None, None);
        each_line(path, keys, start, to, len, |at, e| {
            if let Some(e) = e {
                intact = true;
                first_is_genesis |= at == 0 && is_genesis(&e);
                if upto.is_none_or(|u| e.seq <= u) {
                    match judge(&e, signers) {
                        Judged::Holds => {
                            held = Some((at, e));
                            unknown = None;
                        }
                        Judged::UnknownSigner(kid) => unknown = Some((at, kid)),
                        Judged::Not => {}
                    }
                }
            }
            true
        })?;
        // The last checkpoint is one no configured key can check: the start will not sign
        // on from it, nor set aside what it seals.
        if let Some((at, kid)) = unknown {
            return Err(TailError::UnknownSigner {
                path: path.to_owned(),
                at,
                kid,
            });
        }
        any_intact |= intact;
        match held {
            Some((at, e)) => break (at, at == 0, Some(e)),
            // The last window, nothing intact in it: not this trail's, or a new chain.
            None if !intact && to == len => break (start, start == 0, None),
            // Nothing intact this far back: the start cannot vouch for what follows.
            None if !intact => break (to, false, None),
            None if start == 0 => break (0, true, None),
            None => to = start,
        }
    };
    Ok(Scan {
        path: path.to_owned(),
        len,
        from,
        whole,
        intact: any_intact,
        genesis: whole && held.is_none() && first_is_genesis,
        held,
    })
}

/// The first sequence number a trail file's name gives: `audit-`, 20 digits, `-`.
fn named_seq(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let digits = name.strip_prefix("audit-")?.get(..21)?.strip_suffix('-')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Checks that `path` begins with the entry its name says (the writer names each file by
/// its first entry), when that entry is intact: an older file copied under a newer name
/// would otherwise be taken for the newest, and the chain forked from its end.
fn placed(path: &Path, keys: &[EncryptionKey]) -> Result<(), TailError> {
    let Some(named) = named_seq(path) else {
        return Err(TailError::Misnamed {
            path: path.to_owned(),
        });
    };
    let len = std::fs::metadata(path)
        .map_err(|source| TailError::Io {
            path: path.to_owned(),
            source,
        })?
        .len();
    let mut first = None;
    each_line(path, keys, 0, 1, len, |_, e| {
        first = e.map(|e| e.seq);
        false
    })?;
    match first {
        Some(first) if first != named => Err(TailError::Misplaced {
            path: path.to_owned(),
            named,
            first,
        }),
        _ => Ok(()),
    }
}

/// Whether `e` is the chain's first entry: the opening of a file that names none before it.
fn is_genesis(e: &Seen) -> bool {
    e.first_line
        && e.kind == EntryKind::Open
        && e.seq == 1
        && e.prev == Digest::GENESIS
        && e.first_of_chain
}

/// Calls `each` with where each line that begins in `from..to` of `path` begins, and its
/// entry (`None`: not an intact entry), until it returns false. The line `from` falls
/// inside, if any, is not judged (the window before it has it whole); a torn last line is
/// not given, and nothing after an overlong one.
fn each_line(
    path: &Path,
    keys: &[EncryptionKey],
    from: u64,
    to: u64,
    len: u64,
    mut each: impl FnMut(u64, Option<Seen>) -> bool,
) -> Result<(), TailError> {
    use std::os::unix::fs::FileExt;
    let io = |source| TailError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut inside = false;
    if from > 0 {
        let mut before = [0u8];
        file.read_exact_at(&mut before, from - 1).map_err(io)?;
        inside = before[0] != b'\n';
    }
    file.seek(SeekFrom::Start(from)).map_err(io)?;
    let mut lines = Lines::new(BufReader::new(file.take(len.saturating_sub(from))));
    while let Some(line) = lines.next_line().map_err(io)? {
        let at = from + line.offset;
        if at >= to {
            break;
        }
        if std::mem::take(&mut inside) {
            continue;
        }
        if !line.complete && !line.too_long {
            // A torn end: set aside with whatever else follows the last entry kept.
            break;
        }
        if line.too_long {
            // No entry is this long, and nothing after it is read.
            each(at, None);
            break;
        }
        let decoded = reader::decode(&line.bytes, keys);
        // A line this start cannot read for want of its key is no reason to set it aside.
        if let Err(e @ (ReadError::NoKey | ReadError::Envelope(EnvelopeError::UnknownKey(_)))) =
            &decoded
        {
            return Err(TailError::KeyMissing {
                path: path.to_owned(),
                line: line.number,
                why: e.to_string(),
            });
        }
        let end = at + line.bytes.len() as u64 + 1;
        let seen = decoded.ok().map(|(entry, _)| seen(&entry, end, at == 0));
        if !each(at, seen) {
            break;
        }
    }
    Ok(())
}

/// What the start makes of an entry as a checkpoint to go on from.
enum Judged {
    /// A checkpoint that signs the entry before it, and verifies with the key its id names.
    Holds,
    /// A checkpoint signed with a key none of `signers` is (its id): a key change the
    /// configuration does not list, or a checkpoint someone made.
    UnknownSigner(String),
    /// Not a checkpoint, or one that does not verify.
    Not,
}

/// Judges `e` with `signers`: the signing key's public key and `public_keys`.
fn judge(e: &Seen, signers: &[PublicKey]) -> Judged {
    match e.held.as_ref().map(|c| c.verify(e.seq, &e.prev, signers)) {
        Some(Ok(())) => Judged::Holds,
        Some(Err(CheckpointError::UnknownKey(kid))) => Judged::UnknownSigner(kid),
        _ => Judged::Not,
    }
}

fn seen(entry: &Entry, end: u64, first_line: bool) -> Seen {
    let held = (entry.kind == EntryKind::Checkpoint)
        .then(|| Checkpoint::from_entry(&entry.value).ok())
        .flatten()
        .filter(|c| c.head_seq.checked_add(1) == Some(entry.seq) && c.head == entry.prev);
    let open = entry.value.get("open");
    Seen {
        first_line,
        end,
        seq: entry.seq,
        prev: entry.prev,
        hash: entry.hash,
        kind: entry.kind,
        held,
        start: open.and_then(|o| o.get("reason")).and_then(|r| r.as_str()) == Some("start"),
        first_of_chain: open.is_some_and(|o| o.get("previous_file").is_none()),
        time: entry.value.get("time").and_then(serde_json::Value::as_u64),
    }
}

/// What the writer leaves unsigned at most: `every` entries after a checkpoint, and no
/// record more than `interval` (and [`crate::verify::CHECKPOINT_GRACE`]) later than it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unsigned {
    pub(crate) every: u64,
    pub(crate) interval: Duration,
}

/// The previous run's end: the entry to continue from, in which file, and what is cut off
/// the files from there on.
#[derive(Debug)]
pub(crate) struct End {
    /// `None`: nothing to continue from (a new chain begins).
    pub(crate) last: Option<(Last, PathBuf)>,
    /// Files cut back to what is continued from, and files after it set aside whole
    /// (`keep` 0; removed once set aside).
    pub(crate) tails: Vec<Tail>,
}

/// Where a writer's sync failed: its file, and the last entry synced before the failure
/// (it may be in a file before). Linux keeps the pages it could not write readable until
/// they are evicted, so a start soon after would otherwise take them as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Synced {
    pub(crate) file: PathBuf,
    pub(crate) seq: u64,
}

/// The name, in the trail's directory, of the note a failed sync leaves for the next start.
pub(crate) const SYNC_FAILED: &str = "sync-failed.json";

/// Records durably where a sync failed: written to a new file, synced, renamed over the
/// note, and the directory synced.
pub(crate) fn note_sync_failed(dir: &Path, synced: &Synced) -> std::io::Result<()> {
    use std::io::Write;
    let name = synced
        .file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| std::io::Error::other("the audit file's name is not UTF-8"))?;
    let note = serde_json::json!({ "file": name, "synced_seq": synced.seq });
    let tmp = dir.join(format!("{SYNC_FAILED}.tmp"));
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(note.to_string().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(SYNC_FAILED))?;
    sync_dir(dir)
}

/// The note a failed sync left in `dir`, if any.
pub(crate) fn sync_failed(dir: &Path) -> std::io::Result<Option<Synced>> {
    let bytes = match std::fs::read(dir.join(SYNC_FAILED)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a failed sync's note (a file name and a synced_seq): check it, and remove it to continue the trail after the last entry found intact",
        )
    };
    let note: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let file = note
        .get("file")
        .and_then(serde_json::Value::as_str)
        .filter(|n| is_trail_file(n) && !n.contains('/'))
        .ok_or_else(bad)?;
    let seq = note
        .get("synced_seq")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(bad)?;
    Ok(Some(Synced {
        file: dir.join(file),
        seq,
    }))
}

/// How many files back a start looks for a checkpoint to go on from: the writer closes
/// every file with one, so only files that crashed at their start come between.
const MAX_FILES_BACK: usize = 64;

/// The chain as the walk has taken it so far.
struct Walk {
    seq: u64,
    hash: Digest,
    closed: Option<Close>,
    /// Entries after the vouched checkpoint.
    since: u64,
    /// The vouched checkpoint's time.
    signed_ms: Option<u64>,
    /// After a start's opening: whether its gap came; its checkpoint must come next.
    after_start: Option<bool>,
}

impl Walk {
    /// Whether `e` goes on from the entries taken as the writer writes them, unsigned.
    fn takes(&self, e: &Seen, limit: Unsigned) -> bool {
        if self.seq.checked_add(1) != Some(e.seq) || self.hash != e.prev {
            return false;
        }
        if e.first_line != (e.kind == EntryKind::Open) {
            return false;
        }
        if self.closed.is_some() && !e.first_line {
            return false;
        }
        let in_time = || match (e.time, self.signed_ms) {
            (Some(t), Some(signed)) => {
                let late = Duration::from_millis(t.saturating_sub(signed));
                late <= limit
                    .interval
                    .saturating_add(crate::verify::CHECKPOINT_GRACE)
            }
            (None, _) => limit.interval == Duration::MAX,
            (Some(_), None) => true,
        };
        self.since < limit.every.max(1)
            && match e.kind {
                EntryKind::Open => e.start || self.closed == Some(Close::Rotate),
                // After the checkpoint continued from, none holds (or it would be that one).
                EntryKind::Checkpoint => false,
                EntryKind::Gap => self.after_start == Some(false),
                EntryKind::Dropped => self.after_start.is_none(),
                EntryKind::Record => self.after_start.is_none() && in_time(),
            }
    }

    fn take(&mut self, e: &Seen) {
        self.seq = e.seq;
        self.hash = e.hash;
        self.closed = None;
        self.since += 1;
        self.after_start = match e.kind {
            EntryKind::Open if e.start => Some(false),
            EntryKind::Gap => Some(true),
            _ => None,
        };
    }
}

/// Finds where the chain goes on in `files` (in chain order): the last checkpoint that holds
/// in the newest files' windows (or the chain's beginning), and the entries after it as far
/// as they follow one another as the writer writes them: each linked to the one before,
/// within `limit`, a start's opening followed only by its gap and its checkpoint, nothing
/// after a file's closing checkpoint but the next file's opening. Whatever follows is not
/// continued from: the file it is in is cut there, the files after it are set aside whole.
///
/// In the file a failed sync left (`synced`), nothing past its last synced entry is taken:
/// what the kernel could not write may still be readable until its pages are evicted.
///
/// The walk reads one line at a time and keeps only the last entry it took: however many
/// entries follow the checkpoint, and however many of them `limit` lets it take, the start
/// holds one line of a file in memory at a time.
pub(crate) fn find_end(
    files: &[PathBuf],
    keys: &[EncryptionKey],
    signers: &[PublicKey],
    limit: Unsigned,
    synced: Option<&Synced>,
) -> Result<End, TailError> {
    let upto = |path: &Path| synced.filter(|s| s.file == path).map(|s| s.seq);
    // Newest first, back to the file with the checkpoint to go on from (or the chain's
    // beginning): its index in `scans`.
    let mut scans: Vec<Scan> = Vec::new();
    let mut base = None;
    for path in files.iter().rev().take(MAX_FILES_BACK) {
        placed(path, keys)?;
        let s = scan(path, keys, signers, upto(path))?;
        let intact_before = scans.iter().any(|s| s.intact);
        if !s.intact && !s.whole && !intact_before {
            return Err(TailError::Unverifiable {
                path: s.path,
                window: TAIL_WINDOW,
            });
        }
        let (found, whole) = (s.held.is_some() || s.genesis, s.whole);
        scans.push(s);
        if found {
            base = Some(scans.len() - 1);
            break;
        }
        if !whole {
            break;
        }
    }
    if !scans.iter().any(|s| s.intact) {
        // Nothing intact anywhere: these files are set aside, and a new chain begins.
        let tails = scans.iter().map(whole_tail).collect();
        return Ok(End { last: None, tails });
    }
    let Some(base) = base else {
        let newest = scans.iter().find(|s| s.intact).map(|s| s.path.clone());
        return Err(TailError::NoCheckpoint {
            path: newest.unwrap_or_default(),
        });
    };
    // (the last entry taken, the scan it is in, where it ends), and where the walk begins.
    let (mut walk, mut last, from) = match &scans[base].held {
        Some(c) => {
            let held = c.held.as_ref();
            let last = Last {
                seq: c.seq,
                hash: c.hash,
                closed: held.and_then(|h| h.close),
                signed: Some((c.seq, c.hash)),
            };
            let walk = Walk {
                seq: c.seq,
                hash: c.hash,
                closed: last.closed,
                since: 0,
                signed_ms: held.map(|h| h.time_ms),
                after_start: None,
            };
            (walk, Some((last, base, c.end)), c.end)
        }
        None => {
            let walk = Walk {
                seq: 0,
                hash: Digest::GENESIS,
                closed: None,
                since: 0,
                signed_ms: None,
                after_start: None,
            };
            (walk, None, 0)
        }
    };
    // Where the walk stood before the last start's opening it took: a start writes its
    // opening, gap and checkpoint in one write, so one without its checkpoint never
    // finished (a crash inside that write, or an opening someone added), and the chain
    // goes on from before it.
    let mut before_start = None;
    for n in (0..=base).rev() {
        let s = &scans[n];
        let from = if n == base { from } else { s.from };
        let upto = upto(&s.path);
        let mut stopped = false;
        each_line(&s.path, keys, from, s.len, s.len, |_, line| match line {
            Some(e) if upto.is_none_or(|u| e.seq <= u) && walk.takes(&e, limit) => {
                if e.kind == EntryKind::Open && e.start {
                    before_start = Some(last.clone());
                }
                walk.take(&e);
                let signed = last.as_ref().and_then(|l| l.0.signed);
                let entry = Last {
                    seq: e.seq,
                    hash: e.hash,
                    closed: None,
                    signed,
                };
                last = Some((entry, n, e.end));
                true
            }
            _ => {
                stopped = true;
                false
            }
        })?;
        if stopped {
            break;
        }
    }
    // The opening is its file's first line: that file is set aside whole, and the chain
    // goes on from the entry before it (a new chain, when there is none).
    if walk.after_start.is_some()
        && let Some(before) = before_start
    {
        last = before;
    }
    // Cut the file of the last entry taken after it; set aside the files after it whole.
    let mut tails = Vec::new();
    for (n, s) in scans.iter().enumerate() {
        match &last {
            Some((_, k, end)) if n == *k => tails.push(Tail {
                path: s.path.clone(),
                keep: *end,
                discarded: s.len - end,
            }),
            Some((_, k, _)) if n > *k => {}
            _ => tails.push(whole_tail(s)),
        }
    }
    let last = last.map(|(l, n, _)| (l, scans[n].path.clone()));
    Ok(End { last, tails })
}

fn whole_tail(s: &Scan) -> Tail {
    Tail {
        path: s.path.clone(),
        keep: 0,
        discarded: s.len,
    }
}

/// The side file that keeps what a start cut off a trail file.
pub fn discarded_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".discarded");
    path.with_file_name(name)
}

/// Moves what follows the last entry continued from into the side file, then cuts it off.
/// Both are made durable before the chain goes on.
pub(crate) fn set_aside(tail: &Tail) -> std::io::Result<()> {
    if tail.discarded == 0 {
        return Ok(());
    }
    let mut file = OpenOptions::new().read(true).write(true).open(&tail.path)?;
    file.seek(SeekFrom::Start(tail.keep))?;
    let side = discarded_path(&tail.path);
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&side)?;
    copy_exactly(&mut file, &mut out, tail.discarded)?;
    out.sync_all()?;
    file.set_len(tail.keep)?;
    file.sync_all()?;
    if let Some(dir) = tail.path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Copies the next `n` bytes of `from` to `to`, a small buffer at a time (between two files
/// the kernel copies them): what is set aside may be as large as a file, and is never held
/// in memory whole.
pub(crate) fn copy_exactly(
    from: &mut impl Read,
    to: &mut impl std::io::Write,
    n: u64,
) -> std::io::Result<()> {
    let copied = std::io::copy(&mut from.take(n), to)?;
    if copied < n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{copied} of the {n} bytes to set aside were read: the file was cut meanwhile"),
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::chain::seal;

    fn entries(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut prev = Digest::GENESIS;
        for seq in 1..=n {
            prev = seal(&mut out, seq, &prev, EntryKind::Record, b"\"x\":1");
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn names_sort_in_chain_order() {
        let t = SystemTime::UNIX_EPOCH;
        let a = file_name(9, t);
        let b = file_name(10, t);
        assert_eq!(a, "audit-00000000000000000009-19700101T000000Z.jsonl");
        assert!(a < b && is_trail_file(&a));
    }

    #[test]
    fn a_file_is_read_one_intact_entry_at_a_time_up_to_a_torn_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1, SystemTime::now()));
        let mut data = entries(5);
        data.extend_from_slice(b"not an entry\n");
        let len = data.len() as u64;
        data.extend_from_slice(b"{\"seq\":6,\"prev\":\"00");
        std::fs::write(&path, &data).unwrap();
        let own = crate::keys::generate_signing_key().unwrap().1;
        let s = scan(&path, &[], &[own], None).unwrap();
        // No checkpoint: the file is judged from its beginning.
        assert!(s.whole && s.intact && s.from == 0 && s.held.is_none());
        assert_eq!(s.len, data.len() as u64);
        let mut seqs = Vec::new();
        each_line(&path, &[], 0, s.len, s.len, |_, e| {
            seqs.push(e.map(|e| (e.seq, e.first_line)));
            true
        })
        .unwrap();
        let want = [1, 2, 3, 4, 5].map(|n| Some((n, n == 1)));
        assert_eq!(seqs[..5], want);
        // The line that is not an entry is given, the torn end not.
        assert_eq!(seqs[5..], [None]);
        assert!(len < s.len);
    }

    #[test]
    fn what_is_set_aside_goes_to_the_side_file_and_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1, SystemTime::now()));
        let mut data = entries(2);
        let keep = data.len() as u64;
        data.extend_from_slice(b"{\"seq\":3,\"prev\":\"00");
        std::fs::write(&path, &data).unwrap();
        let tail = Tail {
            path: path.clone(),
            keep,
            discarded: data.len() as u64 - keep,
        };
        set_aside(&tail).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), keep);
        assert_eq!(
            std::fs::read(discarded_path(&path)).unwrap(),
            b"{\"seq\":3,\"prev\":\"00"
        );
    }
}
