//! The writer: at start, where the chain left off (and what the previous run lost); then one
//! thread that takes the pending batch every `sync_interval` (sooner under load), chains and
//! signs it, writes it with one `write`, syncs the file every `sync_interval`, rotates files
//! by size and age, and closes the last file with a signed checkpoint at a clean exit.
//!
//! A crash loses at most the batch being gathered (and, on a power loss, what was written
//! since the last sync). The next start finds the last checkpoint at the end of the trail
//! that holds, goes on through the entries after it only as far as the writer could have
//! left them unsigned ([`files::find_end`]), sets aside whatever follows, and opens a new
//! file whose first entries say where the chain comes from and, when the previous run did
//! not close its file (or its newest file was closed for rotation and the next one is
//! missing, or something was set aside), what was lost and what it found unsigned; then it
//! signs the chain it continues, so that the trail's unsigned end is only ever the current
//! run's. A failed sync, or a chain at its last sequence number, stops the writer: no
//! request gets a place in the queue from then on, and [`AuditTrail::halted`] says why, for
//! the gateway's probes (a restart continues the trail after a failed sync, from the last
//! entry synced: a note in the directory says which, see [`files::Synced`]).
//!
//! Sequence numbers never wrap, and no line is written that a reader would refuse: a record
//! past [`MAX_RECORD`] is written in a bounded form.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

use crate::chain::{self, Digest, EntryKind};
use crate::checkpoint::{self, Close};
use crate::crypt::Sealer;
use crate::files::{self, Last, TailError};
use crate::json;
use crate::keys::{EncryptionKey, KeyError, PublicKey, SigningKey};
use crate::queue::{AuditMetrics, AuditTrail, Pending, Shared};
use crate::reader::MAX_LINE;

mod run;
#[cfg(test)]
pub(crate) mod tests;

/// How the trail is written. Changing any of it takes a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSettings {
    pub dir: PathBuf,
    /// A file is closed and a new one opened past this size…
    pub rotate_bytes: u64,
    /// …or this age.
    pub rotate_age: Duration,
    /// A checkpoint after this many entries…
    pub checkpoint_every: u64,
    /// …or this long after the previous one, whichever comes first.
    pub checkpoint_interval: Duration,
    /// How often the trail is synced (and, unless a batch fills up sooner, written): at most
    /// this much is lost in a crash.
    pub sync_interval: Duration,
    /// Places in each of the queue's two pools (see [`crate::queue`]).
    pub queue_capacity: usize,
}

/// The keys the writer uses.
#[derive(Debug)]
pub struct AuditKeys {
    pub signing: SigningKey,
    /// Encrypts new files; `None`: files are plain JSON lines.
    pub encryption: Option<EncryptionKey>,
    /// Keys of earlier files, to read the previous run's end after a key change.
    pub previous: Vec<EncryptionKey>,
    /// Public keys of the trail besides the signing key's (`public_keys`): the checkpoint
    /// a start goes on from must verify with one of these or the signing key's. One signed
    /// with any other key (a key change the configuration does not list, or a checkpoint
    /// someone made) stops the start.
    pub verifying: Vec<PublicKey>,
}

/// Called with each entry's plaintext line (without its newline) once the line is written,
/// in chain order, from the first file's opening on: the hook for a SIEM exporter. It runs
/// on the writer thread (the entries a start writes, on the thread that starts the trail),
/// so it must not block: keep a bounded buffer of its own and drop (and count) when it is
/// full, or the audit queue fills up behind it and requests are refused.
pub trait Export: Send + Sync {
    fn export(&self, line: &[u8]);
}

/// Why the trail cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Tail(#[from] TailError),
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error(
        "the trail's last entry is {last_seq}: its sequence numbers would run past {max} and wrap; move the trail's files aside to start a new chain",
        max = u64::MAX
    )]
    SeqExhausted { last_seq: u64 },
}

/// Why an entry could not be added to the chain.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error(
        "the chain is at entry {0}, the last sequence number: sequence numbers do not wrap, so nothing more can be added"
    )]
    Exhausted(u64),
}

impl From<AppendError> for AuditError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Key(e) => Self::Key(e),
            AppendError::Exhausted(last_seq) => Self::SeqExhausted { last_seq },
        }
    }
}

/// The largest record written as is. Sealed into an entry (its chaining takes about 200
/// bytes) and, when encrypted, tagged and base64-encoded (4/3) into an envelope (about 150
/// bytes more), a record this large still makes a line the reader takes; a larger one is
/// written in a bounded form (see [`oversized`]) rather than as a line no one could read.
pub const MAX_RECORD: usize = 160 * 1024;
const _: () = assert!((MAX_RECORD + 512 + 16).div_ceil(3) * 4 + 512 <= MAX_LINE);

/// How much of an oversized record its bounded form keeps.
const OVERSIZED_HEAD: usize = 1024;

/// The entries a start writes: its opening, a gap, and a checkpoint.
const START_ENTRIES: u64 = 3;

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the previous run left that the new one could not continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// The file the previous run ended in.
    pub file: PathBuf,
    /// The last entry that was intact.
    pub last_seq: u64,
    /// Bytes after it, set aside in `<file>.discarded`.
    pub bytes_discarded: u64,
    pub reason: GapReason,
}

/// Why a start records a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The previous run stopped (a crash, a kill) without closing its file.
    Unclosed,
    /// The newest files ended in bytes the chain cannot go on from: an incomplete line, or
    /// entries that do not verify, or do not follow the last checkpoint as the writer writes
    /// them (linked one to the next, within its schedule, a start's opening followed by its
    /// checkpoint). They were set aside.
    Discarded,
    /// The newest file was closed for rotation, but the file the chain went on in is not
    /// there: a crash in the middle of the rotation, or files removed from the directory.
    SuccessorMissing,
    /// The previous run stopped because a sync failed: the entries written after the last
    /// one synced may never have reached the disk (even if they can still be read), so they
    /// were set aside.
    SyncFailed,
}

impl GapReason {
    /// The words the gap entry gives.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unclosed => "the previous run stopped without closing its file",
            Self::Discarded => {
                "the previous run's files ended in bytes the chain cannot go on from (an incomplete line, entries that do not verify or do not follow the last checkpoint as the gateway writes them); they were set aside"
            }
            Self::SuccessorMissing => {
                "the newest file was closed for rotation, and the file after it is missing"
            }
            Self::SyncFailed => {
                "the previous run stopped when a sync failed; the entries written after its last synced one may not be on disk, and were set aside"
            }
        }
    }
}

/// What [`AuditTrail::start`] found and did.
#[derive(Debug, Clone)]
pub struct StartReport {
    /// The file the new run writes.
    pub file: PathBuf,
    /// The previous run's last entry, when there was one.
    pub continues: Option<Last>,
    /// The previous run did not close its file: what it lost is now in the trail as a gap.
    pub gap: Option<Gap>,
}

/// The chain as the writer thread keeps it.
#[derive(Clone)]
struct Chain {
    seq: u64,
    head: Digest,
    since_checkpoint: u64,
    last_checkpoint: Instant,
}

/// The file being written.
struct Current {
    file: File,
    path: PathBuf,
    len: u64,
    opened: Instant,
    sealer: Option<Sealer>,
    /// Records (and `dropped` entries) in it: a file without any is not rotated.
    entries: u64,
    /// Up to where its synced pages were let go of (see `Writer::let_go_of_synced_pages`).
    dropped_to: u64,
}

/// One batch, chained and ready to write: the file's bytes and the plaintext lines.
#[derive(Default)]
struct Built {
    /// Plaintext lines, each with its newline; also the file's bytes when not encrypted.
    plain: Vec<u8>,
    /// The file's bytes, when encrypted.
    sealed: Vec<u8>,
    reserved: usize,
    unreserved: usize,
}

impl Built {
    fn bytes(&self, encrypted: bool) -> &[u8] {
        if encrypted { &self.sealed } else { &self.plain }
    }
}

struct Writer {
    settings: WriterSettings,
    keys: AuditKeys,
    export: Option<Arc<dyn Export>>,
    chain: Chain,
    current: Current,
    spare: Spare,
    sync: SyncState,
    /// Why the writer must stop taking records, once it must.
    stop: Option<Halt>,
}

/// Why the writer stopped taking records for good: requests that need one are refused from
/// then on, until a restart (see [`AuditTrail::halted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// The chain is at its last sequence number.
    Exhausted,
    /// A sync of the current file failed: what was written since the last sync may be gone
    /// (the kernel reports such a failure once), so the file is not written again.
    SyncFailed,
}

impl Halt {
    /// A short name for probes and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exhausted => "audit_sequence_exhausted",
            Self::SyncFailed => "audit_sync_failed",
        }
    }

    /// What happened, and what brings the trail back.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Exhausted => {
                "the audit trail's sequence numbers are exhausted; move the trail's files aside and restart to begin a new chain"
            }
            Self::SyncFailed => {
                "an audit file could not be synced and is not written again; a restart continues the trail and records the gap"
            }
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Exhausted => 1,
            Self::SyncFailed => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Exhausted),
            2 => Some(Self::SyncFailed),
            _ => None,
        }
    }
}

/// When the current file was last synced, and whether anything was written since.
struct SyncState {
    last: Instant,
    unsynced: bool,
    /// The last entry known to be on disk: the one at the last sync that succeeded.
    synced_seq: u64,
}

/// Buffers kept from one batch to the next, so that a steady load neither grows a batch's
/// buffers from empty each time on the request path nor on the writer's.
#[derive(Default)]
struct Spare {
    /// Handed to the queue in place of the batch it takes.
    batch: Vec<u8>,
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

/// A buffer larger than this after a burst is let go rather than kept.
const KEEP_UP_TO: usize = 4 << 20;

/// `buf`, emptied, when it is worth keeping.
fn keep(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.capacity() > KEEP_UP_TO {
        return Vec::new();
    }
    buf.clear();
    buf
}

impl Spare {
    /// A batch to build in, with room for about `hint` bytes of lines.
    fn built(&mut self, hint: usize, encrypted: bool) -> Built {
        let mut built = Built {
            plain: std::mem::take(&mut self.plain),
            sealed: std::mem::take(&mut self.sealed),
            ..Built::default()
        };
        built.plain.reserve(hint);
        if encrypted {
            built.sealed.reserve(hint + hint / 2);
        }
        built
    }

    /// Takes back a written batch's buffers, keeping the larger of them and the spares (a
    /// rotation's small opening batch must not replace a steady load's).
    fn give_back(&mut self, built: Built) {
        for (spare, given) in [
            (&mut self.plain, built.plain),
            (&mut self.sealed, built.sealed),
        ] {
            let given = keep(given);
            if given.capacity() > spare.capacity() {
                *spare = given;
            }
        }
    }
}

impl AuditTrail {
    /// Finds where the chain left off in `settings.dir` (created if missing), records a gap
    /// when the previous run did not close its file, opens a new file and starts the writer
    /// thread. Blocking.
    pub fn start(
        settings: WriterSettings,
        keys: AuditKeys,
        export: Option<Arc<dyn Export>>,
    ) -> Result<(Self, StartReport), AuditError> {
        let dir = settings.dir.clone();
        prepare_dir(&dir)?;
        let sync_failed =
            files::sync_failed(&dir).map_err(io_err(&dir.join(files::SYNC_FAILED)))?;
        let (last, gap) = previous_end(&dir, &keys, &settings, sync_failed.as_ref())?;
        let (last, previous) = last.unzip();
        let metrics = AuditMetrics::default();
        let now = SystemTime::now();
        let (seq, head) = last
            .as_ref()
            .map_or((0, Digest::GENESIS), |l| (l.seq, l.hash));
        // Refused before a file is made: a chain at its last sequence numbers (only a trail
        // someone wrote by hand gets there) cannot go on without wrapping.
        if seq.checked_add(START_ENTRIES).is_none() {
            return Err(AuditError::SeqExhausted { last_seq: seq });
        }
        let mut writer = Writer {
            current: open_file(&dir, seq + 1, now, keys.encryption.as_ref())?,
            settings,
            keys,
            export,
            chain: Chain {
                seq,
                head,
                since_checkpoint: 0,
                last_checkpoint: Instant::now(),
            },
            spare: Spare::default(),
            sync: SyncState {
                last: Instant::now(),
                unsynced: false,
                synced_seq: seq,
            },
            stop: None,
        };
        let mut built = Built::default();
        // Every run signs the chain it continues at once, right after its opening (and gap):
        // what comes after this checkpoint is this run's alone, so the unsigned end of a run
        // is never more than one `checkpoint_every` or `checkpoint_interval` of it (what
        // `verify` holds it to), and a start that cannot sign does not start.
        let started = writer
            .append_open(&mut built, "start", previous.as_deref())
            .and_then(|()| match (&gap, &last) {
                (Some(g), Some(l)) => writer.append_gap(&mut built, g, l),
                _ => Ok(()),
            })
            .and_then(|()| writer.append_checkpoint(&mut built, None))
            .map_err(AuditError::from)
            .and_then(|()| {
                writer
                    .write_built(&built)
                    .map_err(io_err(&writer.current.path))?;
                writer.sync().map_err(io_err(&writer.current.path))
            });
        if let Err(e) = started {
            // The file holds nothing the next start could continue from.
            let _ = std::fs::remove_file(&writer.current.path);
            return Err(e);
        }
        files::sync_dir(&dir).map_err(io_err(&dir))?;
        writer.sync.synced_seq = writer.chain.seq;
        // The failed sync's note has done its work once this start's checkpoint, which signs
        // the chain cut back to what was synced, is on disk.
        if sync_failed.is_some() {
            let note = dir.join(files::SYNC_FAILED);
            std::fs::remove_file(&note).map_err(io_err(&note))?;
            files::sync_dir(&dir).map_err(io_err(&dir))?;
        }
        if let Some(export) = &writer.export {
            for line in built.plain.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                export.export(line);
            }
        }
        let report = StartReport {
            file: writer.current.path.clone(),
            continues: last,
            gap,
        };
        let capacity = writer.settings.queue_capacity.max(1);
        let last_seq = writer.chain.seq;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Shared>>(1);
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                if let Ok(shared) = rx.recv() {
                    writer.run(&shared);
                }
            })
            .map_err(io_err(&dir))?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            reserved: Arc::new(Semaphore::new(capacity)),
            unreserved: AtomicUsize::new(0),
            capacity,
            closing: AtomicBool::new(false),
            writer: handle.thread().clone(),
            metrics,
            last_seq: AtomicU64::new(last_seq),
            halted: AtomicU8::new(0),
        });
        let _ = tx.send(shared.clone());
        Ok((
            Self {
                shared,
                writer: Mutex::new(Some(handle)),
            },
            report,
        ))
    }
}

fn prepare_dir(dir: &Path) -> Result<(), AuditError> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(AuditError::NotADirectory(dir.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir)),
        Err(e) => Err(io_err(dir)(e)),
    }
}

/// The entry the new run continues from, with its file, and the gap when the previous run
/// did not close its file or something was set aside.
type PreviousEnd = (Option<(Last, PathBuf)>, Option<Gap>);

/// The entry the new run continues from (see [`files::find_end`]), its file, and the gap
/// when the previous run did not close its file or something was set aside. What follows
/// that entry is set aside; files cut back to nothing are removed once set aside. After a
/// failed sync (`sync_failed`), that includes every entry its file holds past the last one
/// synced.
fn previous_end(
    dir: &Path,
    keys: &AuditKeys,
    settings: &WriterSettings,
    sync_failed: Option<&files::Synced>,
) -> Result<PreviousEnd, AuditError> {
    let read_keys: Vec<EncryptionKey> = keys
        .encryption
        .iter()
        .chain(&keys.previous)
        .cloned()
        .collect();
    let all = files::list(dir).map_err(io_err(dir))?;
    let limit = files::Unsigned {
        every: settings.checkpoint_every,
        interval: settings.checkpoint_interval,
    };
    let signers: Vec<PublicKey> = std::iter::once(keys.signing.public())
        .chain(keys.verifying.iter().copied())
        .collect();
    let end = files::find_end(&all, &read_keys, &signers, limit, sync_failed)?;
    let mut discarded = 0;
    for tail in &end.tails {
        discarded += tail.discarded;
        files::set_aside(tail).map_err(io_err(&tail.path))?;
        if tail.keep == 0 {
            std::fs::remove_file(&tail.path).map_err(io_err(&tail.path))?;
        }
    }
    let Some((last, path)) = end.last else {
        return Ok((None, None));
    };
    // A file closed for rotation is followed by the file the chain goes on in: when that
    // one is missing, entries may be lost with it, and the trail says so.
    let reason = if discarded > 0 && sync_failed.is_some() {
        Some(GapReason::SyncFailed)
    } else if discarded > 0 {
        Some(GapReason::Discarded)
    } else {
        match last.closed {
            None => Some(GapReason::Unclosed),
            Some(Close::Rotate) => Some(GapReason::SuccessorMissing),
            Some(Close::Shutdown) => None,
        }
    };
    let newest = all.last().cloned().unwrap_or_else(|| path.clone());
    let gap = reason.map(|reason| Gap {
        file: newest,
        last_seq: last.seq,
        bytes_discarded: discarded,
        reason,
    });
    Ok((Some((last, path)), gap))
}

fn open_file(
    dir: &Path,
    first_seq: u64,
    at: SystemTime,
    key: Option<&EncryptionKey>,
) -> Result<Current, AuditError> {
    let path = dir.join(files::file_name(first_seq, at));
    let file = files::create_private(&path).map_err(io_err(&path))?;
    Ok(Current {
        file,
        path,
        len: 0,
        opened: Instant::now(),
        sealer: key.map(Sealer::new).transpose()?,
        entries: 0,
        dropped_to: 0,
    })
}

/// A record too large to be written as is, in a bounded form: its class and time when its
/// start gives them (so `show` still finds it by time), its size and SHA-256, and its first
/// [`OVERSIZED_HEAD`] bytes as a string. The record keeps its place in the chain, and the
/// trail says that it was cut. Made on the writer thread, and only for such a record.
pub(crate) fn oversized(members: &[u8]) -> Vec<u8> {
    let head = &members[..members.len().min(OVERSIZED_HEAD)];
    let mut m = Vec::with_capacity(OVERSIZED_HEAD * 2 + 256);
    // The members start with the record's fixed OCSF members, its class and then its time:
    // inside a string a quote is escaped, so these names can only be the members' own.
    if let Some(class) = number_after(head, b"\"class_uid\":") {
        m.extend_from_slice(b"\"class_uid\":");
        json::num(&mut m, class);
        m.push(b',');
    }
    if let Some(ms) = number_after(head, b"\"time\":") {
        m.extend_from_slice(b"\"time\":");
        json::num(&mut m, ms);
        json::key(&mut m, "time_dt");
        json::datetime(&mut m, ms);
        m.push(b',');
    }
    m.extend_from_slice(b"\"oversized\":{\"bytes\":");
    json::num(&mut m, members.len() as u64);
    json::key(&mut m, "sha256");
    json::str(&mut m, &Digest::of(members).hex());
    json::key(&mut m, "head");
    json::str(&mut m, &String::from_utf8_lossy(head));
    m.push(b'}');
    m
}

/// The number right after the first `name` in `bytes`.
fn number_after(bytes: &[u8], name: &[u8]) -> Option<u64> {
    let at = bytes.windows(name.len()).position(|w| w == name)? + name.len();
    let digits = bytes[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&bytes[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Writer {
    fn encrypted(&self) -> bool {
        self.current.sealer.is_some()
    }

    /// Chains one entry into `built`.
    fn append(
        &mut self,
        built: &mut Built,
        kind: EntryKind,
        members: &[u8],
    ) -> Result<(), AppendError> {
        let Some(seq) = self.chain.seq.checked_add(1) else {
            self.stop = Some(Halt::Exhausted);
            return Err(AppendError::Exhausted(self.chain.seq));
        };
        let start = built.plain.len();
        let hash = chain::seal(&mut built.plain, seq, &self.chain.head, kind, members);
        if let Some(sealer) = &mut self.current.sealer {
            if let Err(e) = sealer.seal(&built.plain[start..], &mut built.sealed) {
                built.plain.truncate(start);
                return Err(e.into());
            }
            built.sealed.push(b'\n');
        }
        built.plain.push(b'\n');
        if seq == u64::MAX {
            // Nothing can follow this entry: stop before a record is taken that cannot be.
            self.stop = Some(Halt::Exhausted);
        }
        self.chain.seq = seq;
        self.chain.head = hash;
        match kind {
            EntryKind::Checkpoint => {
                self.chain.since_checkpoint = 0;
                self.chain.last_checkpoint = Instant::now();
            }
            _ => self.chain.since_checkpoint += 1,
        }
        if matches!(kind, EntryKind::Record | EntryKind::Dropped) {
            self.current.entries += 1;
        }
        Ok(())
    }

    fn append_open(
        &mut self,
        built: &mut Built,
        reason: &str,
        previous: Option<&Path>,
    ) -> Result<(), AppendError> {
        let mut m = Vec::with_capacity(256);
        let ms = json::millis(SystemTime::now());
        m.extend_from_slice(b"\"open\":{\"file\":");
        json::str(&mut m, &file_name(&self.current.path));
        json::key(&mut m, "reason");
        json::str(&mut m, reason);
        json::key(&mut m, "time");
        json::num(&mut m, ms);
        json::key(&mut m, "time_dt");
        json::datetime(&mut m, ms);
        if let Some(p) = previous {
            json::key(&mut m, "previous_file");
            json::str(&mut m, &file_name(p));
        }
        m.push(b'}');
        self.append(built, EntryKind::Open, &m)
    }

    fn append_gap(&mut self, built: &mut Built, gap: &Gap, last: &Last) -> Result<(), AppendError> {
        let mut m = Vec::with_capacity(256);
        m.extend_from_slice(b"\"gap\":{\"file\":");
        json::str(&mut m, &file_name(&gap.file));
        json::key(&mut m, "last_seq");
        json::num(&mut m, gap.last_seq);
        json::key(&mut m, "last_hash");
        json::str(&mut m, &last.hash.hex());
        // The last checkpoint the start found and vouched for: the entries after it up to
        // `last_seq` were signed by no one before this start's checkpoint.
        if let Some((seq, hash)) = &last.signed {
            json::key(&mut m, "signed_seq");
            json::num(&mut m, *seq);
            json::key(&mut m, "signed_hash");
            json::str(&mut m, &hash.hex());
        }
        json::key(&mut m, "bytes_discarded");
        json::num(&mut m, gap.bytes_discarded);
        if gap.bytes_discarded > 0 {
            json::key(&mut m, "discarded_to");
            json::str(&mut m, &file_name(&files::discarded_path(&gap.file)));
        }
        json::key(&mut m, "reason");
        json::str(&mut m, gap.reason.as_str());
        m.push(b'}');
        self.append(built, EntryKind::Gap, &m)
    }

    fn append_checkpoint(
        &mut self,
        built: &mut Built,
        close: Option<Close>,
    ) -> Result<(), AppendError> {
        let m = checkpoint::members(
            &self.keys.signing,
            self.chain.seq,
            &self.chain.head,
            json::millis(SystemTime::now()),
            close,
        )?;
        self.append(built, EntryKind::Checkpoint, &m)
    }

    /// Syncs the current file's data.
    fn sync(&self) -> std::io::Result<()> {
        #[cfg(test)]
        if tests::sync_fails(&self.settings.dir) {
            return Err(std::io::Error::other("a sync failure, for a test"));
        }
        self.current.file.sync_data()
    }

    fn write_built(&mut self, built: &Built) -> std::io::Result<()> {
        let bytes = built.bytes(self.encrypted());
        if bytes.is_empty() {
            return Ok(());
        }
        if self.stop == Some(Halt::SyncFailed) {
            return Err(std::io::Error::other(
                "the file failed to sync and is not written again",
            ));
        }
        if let Err(e) = self.current.file.write_all(bytes) {
            // A partial line must not stay ahead of the retry: cut back to what was whole.
            let _ = self.current.file.set_len(self.current.len);
            return Err(e);
        }
        self.current.len += bytes.len() as u64;
        Ok(())
    }
}
