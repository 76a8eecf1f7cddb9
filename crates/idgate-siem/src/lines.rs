//! The JSON-lines sinks: standard output, or a file opened for appending.
//!
//! Each batch is written with one `write` (one line per event). A file is checked before
//! each batch: when its path no longer leads to the file held open (an outside tool such as
//! logrotate renamed or removed it), the path is opened again, created if needed, so no
//! signal is needed to follow a rotation. A batch whose write fails is cut back out of the
//! file (no half line stays) and written again after a backoff.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::buffer::Buffer;
use crate::pace::{Backoff, DropLog, Throttle};

/// At most this much is written in one batch.
const BATCH_EVENTS: usize = 4096;
const BATCH_BYTES: usize = 1 << 20;

pub(crate) enum Output {
    Stdout,
    File {
        path: PathBuf,
        /// The open file and its (device, inode), to notice a rotation.
        open: Option<(File, (u64, u64))>,
    },
}

impl Output {
    pub(crate) fn stdout() -> Self {
        Self::Stdout
    }

    /// Opens `path` for appending (creating it readable by owner and group only: audit
    /// events name callers and routes).
    pub(crate) fn file(path: &Path) -> io::Result<Self> {
        let open = open(path)?;
        Ok(Self::File {
            path: path.to_owned(),
            open: Some(open),
        })
    }

    fn write_batch(&mut self, batch: &[u8]) -> io::Result<()> {
        match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(batch)?;
                out.flush()
            }
            Self::File { path, open: held } => {
                let rotated = match (held.as_ref(), std::fs::metadata(&*path)) {
                    (Some((_, id)), Ok(m)) => (m.dev(), m.ino()) != *id,
                    _ => true,
                };
                if rotated {
                    *held = None;
                    let reopened = open(path)?;
                    tracing::info!(path = %path.display(), "SIEM file sink: file (re)opened");
                    *held = Some(reopened);
                }
                let Some((file, _)) = held.as_mut() else {
                    return Err(io::Error::other("no file open"));
                };
                let start = file.metadata()?.len();
                let written = file.write_all(batch);
                if written.is_err() {
                    // A half-written batch would leave a broken line; it is cut away and
                    // the whole batch written again later.
                    let _ = file.set_len(start);
                    *held = None;
                }
                written
            }
        }
    }
}

/// Opens the sink's file for appending. A file it creates is 0640 whatever the process's
/// umask (systemd's `UMask=0077` would make it 0600, out of the log shipper's reach in the
/// group); a file that already exists keeps the mode its owner gave it.
fn open(path: &Path) -> io::Result<(File, (u64, u64))> {
    const MODE: u32 = 0o640;
    let file = match OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(MODE)
        .open(path)
    {
        Ok(created) => {
            created.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(MODE))?;
            created
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).open(path)?
        }
        Err(e) => return Err(e),
    };
    let m = file.metadata()?;
    Ok((file, (m.dev(), m.ino())))
}

/// The sink's thread: takes batches from `buffer` and writes them until shutdown.
pub(crate) fn run(name: &str, mut out: Output, buffer: &Buffer) {
    let counters = buffer.counters().clone();
    let mut drops = DropLog::new();
    let mut failures = Throttle::new(Duration::from_secs(30));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        drops.report(name, &counters);
        // Past shutdown's deadline what is left stays in the buffer, counted as dropped, even
        // while writes succeed (a slow pipe on standard output).
        if buffer
            .closing()
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return;
        }
        let taken = buffer.take(BATCH_EVENTS, BATCH_BYTES, Duration::from_secs(1));
        if taken.events.is_empty() {
            if taken.closing.is_some() {
                return;
            }
            continue;
        }
        batch.clear();
        for e in &taken.events {
            batch.extend_from_slice(&e.json);
            batch.push(b'\n');
        }
        loop {
            match out.write_batch(&batch) {
                Ok(()) => {
                    buffer.settled();
                    counters.sent.inc_by(taken.events.len() as u64);
                    backoff.reset();
                    break;
                }
                Err(e) => {
                    if failures.allow() {
                        tracing::warn!(sink = name, error = %e, "SIEM sink cannot write; retrying");
                    }
                    match buffer.closing() {
                        Some(deadline) if Instant::now() >= deadline => {
                            buffer.put_back(taken.events);
                            return;
                        }
                        Some(deadline) => std::thread::sleep(
                            backoff
                                .next_delay()
                                .min(deadline.saturating_duration_since(Instant::now())),
                        ),
                        None => buffer.sleep(backoff.next_delay()),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use idgate_config::{BufferLimits, OnFull};

    use super::*;
    use crate::Event;
    use crate::metrics::SiemMetrics;

    #[test]
    fn a_lines_sink_stops_at_the_shutdown_deadline_even_while_writes_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = SiemMetrics::default();
        let limits = BufferLimits {
            events: 100,
            bytes: 1 << 20,
            on_full: OnFull::DropNewest,
        };
        let buffer = Buffer::new(limits, metrics.sink("file"));
        for i in 0..10 {
            buffer.push(&Arc::new(Event {
                at: SystemTime::now(),
                json: format!("{{\"seq\":{i}}}").into_bytes().into(),
            }));
        }
        // Shutdown's deadline has passed: nothing more is written, all of it is counted.
        buffer.close(Instant::now());
        run("file", Output::file(&path).unwrap(), &buffer);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        assert_eq!(buffer.abandon(), 10);
        assert_eq!(metrics.stats("file").dropped, 10);
    }
}
