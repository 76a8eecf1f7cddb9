//! Export of audit events to a SIEM: each event (one JSON object) goes to every configured
//! sink — JSON lines on standard output or in a file, syslog messages (RFC 5424) over TLS
//! (RFC 5425) to a collector.
//!
//! ```text
//! caller ── export(&[u8]) ──▶ one bounded buffer per sink ──▶ the sink's thread ──▶ output
//!           (copies once,      (events, bytes; full:           (batches, reconnects,
//!            never waits        drop newest or oldest,          backoff, replay)
//!            for I/O)           counted)
//! ```
//!
//! [`Exporter::export`] never waits for a sink: it copies the event once, stamps it with
//! the time and appends it to each sink's buffer under a lock that no I/O is ever done
//! under. Each sink runs on a thread of its own, so a stalled collector cannot slow a file
//! or another collector. The sinks' counters are prometheus-client metrics
//! ([`SiemMetrics`]) for the gateway to register on its registry.
//!
//! Delivery: JSON lines are written in order, one `write` per batch. Syslog frames are
//! written whole or their connection is dropped; a batch that failed, and the frames of the
//! last `replay_bytes` that the collector's host had not acknowledged when the connection
//! ended, are sent again on the next one, so delivery is at-least-once up to the
//! collector's host (with duplicates after a broken connection) for every event the buffer
//! kept, while the gateway stops cleanly. See `docs/siem.md`.

mod buffer;
mod lines;
mod metrics;
mod pace;
mod syslog;

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use idgate_config::{SiemConfig, SinkKind};

pub use metrics::{SiemMetrics, SinkStats};

use buffer::Buffer;

/// One exported event: the JSON object as given and when it was given.
#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) at: SystemTime,
    pub(crate) json: Box<[u8]>,
}

/// Why the exporter could not start; names the sink's key in the configuration.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct StartError {
    /// The key path of the setting at fault: `siem.sinks[1].client_key`.
    pub key: String,
    pub problem: StartProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum StartProblem {
    #[error(transparent)]
    Ca(#[from] idgate_tls::roots::CaFileError),
    #[error(transparent)]
    ClientCert(#[from] idgate_tls::MaterialError),
    /// The client key file is not private (or not readable): it is checked as a `file:`
    /// secret is.
    #[error(transparent)]
    ClientKey(idgate_secrets::SecretError),
    #[error(transparent)]
    Tls(#[from] idgate_tls::client::ClientError),
    #[error("{path}: cannot open for appending: {source}")]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the sink's thread: {0}")]
    Thread(std::io::Error),
}

/// A running sink: its buffer and the thread that empties it.
struct Running {
    name: String,
    buffer: Arc<Buffer>,
    thread: Option<JoinHandle<()>>,
    /// Told when the thread ends. In a mutex only so that the exporter can be shared
    /// between threads (a receiver is not `Sync`); only `shutdown`, which owns it, reads it.
    done: std::sync::Mutex<mpsc::Receiver<()>>,
}

/// The exporter: give it events with [`export`](Self::export), end it with
/// [`shutdown`](Self::shutdown). Dropping it closes the buffers without waiting.
pub struct Exporter {
    sinks: Vec<Running>,
    metrics: SiemMetrics,
    shutdown_timeout: Duration,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field(
                "sinks",
                &self.sinks.iter().map(|s| &s.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Exporter {
    /// Opens every sink (a file for appending, a syslog sink's TLS files) and starts their
    /// threads. A collector that cannot be reached is not an error: its events are
    /// buffered until it can. Blocking (reads files).
    pub fn start(config: &SiemConfig) -> Result<Self, StartError> {
        let metrics = SiemMetrics::default();
        let mut sinks = Vec::with_capacity(config.sinks.len());
        for sink in &config.sinks {
            let counters = metrics.sink(&sink.name);
            let buffer = Arc::new(Buffer::new(sink.buffer, counters.clone()));
            let (done_tx, done) = mpsc::channel();
            let spawn = std::thread::Builder::new().name(format!("siem-{}", sink.name));
            let b = buffer.clone();
            let name = sink.name.clone();
            let thread = match &sink.kind {
                SinkKind::Stdout => {
                    let out = lines::Output::stdout();
                    spawn.spawn(move || {
                        lines::run(&name, out, &b);
                        let _ = done_tx.send(());
                    })
                }
                SinkKind::File { path } => {
                    let out = lines::Output::file(path).map_err(|source| StartError {
                        key: format!("{}.path", sink.key),
                        problem: StartProblem::File {
                            path: path.clone(),
                            source,
                        },
                    })?;
                    spawn.spawn(move || {
                        lines::run(&name, out, &b);
                        let _ = done_tx.send(());
                    })
                }
                SinkKind::Syslog(cfg) => {
                    let sink_cfg = syslog::Sink::new(cfg, &sink.key, counters)?;
                    spawn.spawn(move || {
                        sink_cfg.run(&name, &b);
                        let _ = done_tx.send(());
                    })
                }
            }
            .map_err(|e| StartError {
                key: sink.key.clone(),
                problem: StartProblem::Thread(e),
            })?;
            sinks.push(Running {
                name: sink.name.clone(),
                buffer,
                thread: Some(thread),
                done: std::sync::Mutex::new(done),
            });
        }
        Ok(Self {
            sinks,
            metrics,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    /// Hands one event (one JSON object, without a newline) to every sink. Never waits for
    /// a sink; an event a sink's buffer cannot take is dropped there and counted. An
    /// empty event, or one holding a line break (it would break JSON lines), is refused and
    /// counted as invalid.
    pub fn export(&self, event: &[u8]) {
        if event.is_empty() || event.iter().any(|&b| b == b'\n' || b == b'\r') {
            self.metrics.count_invalid();
            return;
        }
        let event = Arc::new(Event {
            at: SystemTime::now(),
            json: event.into(),
        });
        for sink in &self.sinks {
            sink.buffer.push(&event);
        }
    }

    /// The sinks' counters, to register on the gateway's registry.
    pub fn metrics(&self) -> &SiemMetrics {
        &self.metrics
    }

    /// The counters of the sink named `name`.
    pub fn stats(&self, name: &str) -> Option<SinkStats> {
        self.sinks
            .iter()
            .any(|s| s.name == name)
            .then(|| self.metrics.stats(name))
    }

    /// Stops taking events and lets every sink write what it holds, for at most
    /// `shutdown_timeout`; returns how many events were left unwritten (counted as dropped).
    pub fn shutdown(mut self) -> u64 {
        let deadline = Instant::now() + self.shutdown_timeout;
        for sink in &self.sinks {
            sink.buffer.close(deadline);
        }
        let mut left = 0;
        for sink in &mut self.sinks {
            let wait = deadline.saturating_duration_since(Instant::now());
            // The sink's own deadline ends it; the margin covers one write in progress.
            let done = sink.done.get_mut().unwrap_or_else(|e| e.into_inner());
            match done.recv_timeout(wait + Duration::from_millis(250)) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if let Some(t) = sink.thread.take() {
                        let _ = t.join();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    tracing::warn!(sink = %sink.name, "SIEM sink still writing at the end of shutdown_timeout; leaving it");
                }
            }
            let unwritten = sink.buffer.abandon();
            if unwritten > 0 {
                tracing::warn!(sink = %sink.name, events = unwritten, "SIEM events not written before shutdown");
            }
            left += unwritten;
        }
        left
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        for sink in &self.sinks {
            sink.buffer.close(Instant::now());
        }
    }
}

/// The audit writer's thread hands events to an exporter the gateway also holds.
const _: () = {
    const fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<Exporter>();
};
