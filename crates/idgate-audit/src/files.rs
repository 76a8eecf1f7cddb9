//! The trail's files in their directory: names that sort in chain order
//! (`audit-<first seq, 20 digits>-<UTC time>.jsonl`), and, at start, the previous run's end:
//! the last intact entry of the last file, and what follows it (a torn write, entries that
//! do not verify), which is set aside in `<file>.discarded` and cut off before the chain
//! goes on.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::chain::{Digest, EntryKind};
use crate::checkpoint::{Checkpoint, Close};
use crate::crypt::EnvelopeError;
use crate::keys::EncryptionKey;
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

/// The last intact entry of the previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Last {
    pub seq: u64,
    pub hash: Digest,
    /// Its file was closed by a checkpoint (a clean shutdown, or a rotation).
    pub closed: Option<Close>,
}

/// What the end of one file looks like.
#[derive(Debug)]
pub(crate) struct Tail {
    pub(crate) path: PathBuf,
    /// The file's length up to the end of its last intact entry.
    pub(crate) keep: u64,
    /// Bytes after it: a torn line, entries that do not verify.
    pub(crate) discarded: u64,
    /// `None`: nothing in the file verifies.
    pub(crate) last: Option<Last>,
}

/// How much of a file's end is searched for its last intact entry.
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
}

/// Finds the last intact entry of `path` within its last [`TAIL_WINDOW`] bytes.
pub(crate) fn scan_tail(path: &Path, keys: &[EncryptionKey]) -> Result<Tail, TailError> {
    let io = |source| TailError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut lines = Lines::new(BufReader::new(file.take(len - start)));
    // (end of the line, seq, hash, closed) of the last line that verifies.
    let mut last: Option<(u64, Last)> = None;
    let mut first = true;
    while let Some(line) = lines.next_line().map_err(io)? {
        // The window may begin inside a line: that one is not judged.
        let skip = first && start > 0;
        first = false;
        if skip || !line.complete || line.too_long {
            continue;
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
        if let Ok((entry, _)) = decoded {
            let closed = (entry.kind == EntryKind::Checkpoint)
                .then(|| Checkpoint::from_entry(&entry.value).ok()?.close)
                .flatten();
            let end = start + line.offset + line.bytes.len() as u64 + 1;
            last = Some((
                end,
                Last {
                    seq: entry.seq,
                    hash: entry.hash,
                    closed,
                },
            ));
        }
    }
    match last {
        Some((keep, last)) => Ok(Tail {
            path: path.to_owned(),
            keep,
            discarded: len - keep,
            last: Some(last),
        }),
        None if start == 0 => Ok(Tail {
            path: path.to_owned(),
            keep: 0,
            discarded: len,
            last: None,
        }),
        None => Err(TailError::Unverifiable {
            path: path.to_owned(),
            window: TAIL_WINDOW,
        }),
    }
}

/// The side file that keeps what a start cut off a trail file.
pub fn discarded_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".discarded");
    path.with_file_name(name)
}

/// Moves what follows the last intact entry into the side file, then cuts it off. Both
/// are made durable before the chain goes on.
pub(crate) fn set_aside(tail: &Tail) -> std::io::Result<()> {
    if tail.discarded == 0 {
        return Ok(());
    }
    let mut file = OpenOptions::new().read(true).write(true).open(&tail.path)?;
    file.seek(SeekFrom::Start(tail.keep))?;
    let mut rest = Vec::new();
    Read::by_ref(&mut file)
        .take(tail.discarded)
        .read_to_end(&mut rest)?;
    let side = discarded_path(&tail.path);
    let mut out = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&side)?;
    out.write_all(&rest)?;
    out.sync_all()?;
    file.set_len(tail.keep)?;
    file.sync_all()?;
    if let Some(dir) = tail.path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::chain::seal;

    fn entries(n: u64) -> (Vec<u8>, Digest) {
        let mut out = Vec::new();
        let mut prev = Digest::GENESIS;
        for seq in 1..=n {
            prev = seal(&mut out, seq, &prev, EntryKind::Record, b"\"x\":1");
            out.push(b'\n');
        }
        (out, prev)
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
    fn a_torn_end_is_found_set_aside_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(1, SystemTime::now()));
        let (mut data, head) = entries(5);
        let good = data.len() as u64;
        data.extend_from_slice(b"{\"seq\":6,\"prev\":\"00");
        std::fs::write(&path, &data).unwrap();
        let tail = scan_tail(&path, &[]).unwrap();
        assert_eq!(tail.keep, good);
        assert_eq!(tail.discarded, data.len() as u64 - good);
        assert_eq!(
            tail.last,
            Some(Last {
                seq: 5,
                hash: head,
                closed: None
            })
        );
        set_aside(&tail).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        assert_eq!(
            std::fs::read(discarded_path(&path)).unwrap(),
            b"{\"seq\":6,\"prev\":\"00"
        );
    }

    #[test]
    fn a_file_with_nothing_intact_is_wholly_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit-x.jsonl");
        std::fs::write(&path, b"\0\0\0\0").unwrap();
        let tail = scan_tail(&path, &[]).unwrap();
        assert_eq!((tail.keep, tail.discarded, tail.last), (0, 4, None));
    }
}
