//! `idgate serve --ready-file`: a small JSON document naming the addresses the gateway
//! bound, written once it serves, so that whoever started it (a test, a supervisor) can bind
//! port 0 and learn the ports instead of picking a free one and hoping it stays free.
//!
//! The document is written to a temporary file in the same directory and renamed into
//! place: a reader sees no file or the whole document, never a part of it. It is removed at
//! a clean shutdown. A SIGHUP reload keeps the listeners, so the document stays as written.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use idgate_proxy::Bound;

/// Why the ready file could not be written or removed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadyFileError {
    #[error("--ready-file {path}: the path has no file name")]
    NoFileName { path: PathBuf },
    #[error("--ready-file {path}: the directory {dir} does not exist")]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("--ready-file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The addresses in the document, as `serve` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
struct ReadyDocument {
    pid: u32,
    listener: SocketAddr,
    admin: SocketAddr,
}

/// Where the ready document goes.
#[derive(Debug, Clone)]
pub(crate) struct ReadyFile {
    path: PathBuf,
}

impl ReadyFile {
    /// Checks before start-up what can be checked: the path names a file in an existing
    /// directory, so that a typo fails at once rather than after the listeners are bound.
    pub(crate) fn new(path: PathBuf) -> Result<Self, ReadyFileError> {
        if path.file_name().is_none() {
            return Err(ReadyFileError::NoFileName { path });
        }
        let dir = parent_dir(&path).to_owned();
        if !dir.is_dir() {
            return Err(ReadyFileError::NoDirectory { path, dir });
        }
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes the document for `bound` atomically: a temporary file in the same directory,
    /// flushed to disk, then renamed over `path`.
    pub(crate) fn write(&self, bound: Bound) -> Result<(), ReadyFileError> {
        let doc = ReadyDocument {
            pid: std::process::id(),
            listener: bound.listener,
            admin: bound.admin,
        };
        let io = |source| ReadyFileError::Io {
            path: self.path.clone(),
            source,
        };
        let mut text = serde_json::to_vec(&doc).map_err(|e| io(std::io::Error::other(e)))?;
        text.push(b'\n');
        let mut tmp = tempfile::Builder::new()
            .prefix(".idgate-ready-")
            .tempfile_in(parent_dir(&self.path))
            .map_err(io)?;
        tmp.write_all(&text).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&self.path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Removes the document; one already gone is not an error.
    pub(crate) fn remove(&self) -> Result<(), ReadyFileError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ReadyFileError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> Bound {
        Bound {
            listener: "127.0.0.1:41234".parse().unwrap(),
            admin: "127.0.0.1:41235".parse().unwrap(),
        }
    }

    #[test]
    fn writes_the_bound_addresses_and_removes_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ready.json");
        let f = ReadyFile::new(path.clone()).unwrap();
        f.write(bound()).unwrap();
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(doc["listener"], "127.0.0.1:41234");
        assert_eq!(doc["admin"], "127.0.0.1:41235");
        assert_eq!(doc["pid"], std::process::id());
        // Only the document is left in the directory: the temporary file was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        f.remove().unwrap();
        assert!(!path.exists());
        f.remove().unwrap();
    }

    #[test]
    fn a_missing_directory_is_refused_before_start() {
        let dir = tempfile::tempdir().unwrap();
        let err = ReadyFile::new(dir.path().join("nope/ready.json")).unwrap_err();
        assert!(matches!(err, ReadyFileError::NoDirectory { .. }), "{err}");
    }
}
