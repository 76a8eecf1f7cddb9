//! The access log: one line per request, made from the request's [`Record`].
//!
//! A line is serialized once, on the request's task, into a buffer the thread reuses; it is
//! then appended to one pending batch. One writer thread takes the whole batch and writes it
//! at once, so the request never waits on the log output and the output sees a few large
//! writes instead of one per request. When the writer falls behind (the output is a stalled
//! pipe, a full disk), lines beyond [`PENDING_LIMIT`] are dropped and counted
//! (`idgate_access_log_dropped_total`), never waited for; so are the lines a failing write
//! did not write whole, and a line it cut is ended before the next one is written.
//!
//! The lines are the ones `tracing`'s formatter writes for the `idgate::access` event, field
//! for field, in JSON or text; the rest of the log still goes through `tracing`. Both write
//! whole lines to standard output under its lock, so they never interleave within a line.

use std::cell::RefCell;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant, SystemTime};

use http::{Method, Version};
use idgate_config::LogFormat;
use prometheus_client::metrics::counter::Counter;

mod format;

/// Lines waiting for the writer beyond which new ones are dropped: about 12,000 lines.
pub const PENDING_LIMIT: usize = 4 << 20;
/// How long the writer lets a batch gather once it has a first line.
const GATHER: Duration = Duration::from_millis(10);
/// A batch this large is written at once, without waiting for [`GATHER`] to pass.
const WRITE_AT: usize = 256 << 10;
/// The writer's buffer is given back to the allocator above this size (after a burst).
const KEEP_CAPACITY: usize = 1 << 20;
/// How long a clean exit waits for the last lines to be written.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How often, at most, the log says that lines were dropped.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// The reason in the record of a request answered from the cache.
pub(crate) const FALLBACK_CACHE: &str = "fallback:cache";
/// The reason in the record of a request answered by the secondary upstream.
pub(crate) const FALLBACK_FAILOVER: &str = "fallback:failover";
/// The reason in the record of a request whose caller went away before its answer (status
/// 499).
pub(crate) const CLIENT_CLOSED: &str = "client-closed";

/// How the gateway decided on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forwarded upstream, or answered by a built-in target.
    Allowed,
    /// Refused for what the request is or who sent it; the problem slug says why.
    Denied(&'static str),
    /// Allowed, but the gateway could not carry it out (upstream or credential failure).
    Failed(&'static str),
    /// Allowed, and answered otherwise than by the route's upstream, or not at all: the
    /// reason says how (`fallback:cache`, `fallback:failover`; `client-closed` when the
    /// caller went away first).
    AllowedBy(&'static str),
    /// Neither allowed nor refused: the caller went away before the gateway decided (its
    /// credential, a check or its place in the audit queue still awaited); `client-closed`.
    Undecided(&'static str),
}

/// What the access line says about one request. Borrowed from the request's context: making
/// one allocates nothing.
#[derive(Debug)]
pub struct Record<'a> {
    pub time: SystemTime,
    pub request_id: &'a str,
    /// The SPIFFE ID of the connection's client certificate.
    pub peer: Option<&'a str>,
    /// The authorized principal (or every one refused); the peer when it is all that is known.
    pub caller: Option<&'a str>,
    pub remote: IpAddr,
    pub method: &'a Method,
    pub version: Version,
    pub route: &'a str,
    pub status: u16,
    pub upstream_status: Option<u16>,
    /// The upstream credential's label and version.
    pub credential: Option<(&'a str, &'a str)>,
    pub decision: Decision,
    pub latency: Duration,
}

/// The access log's writer, shared by every request.
pub struct AccessLog {
    format: LogFormat,
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

struct Shared {
    pending: Mutex<Vec<u8>>,
    limit: usize,
    dropped: Counter,
    closing: AtomicBool,
    writer: Thread,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Vec<u8>> {
        // A panic while holding the lock leaves at worst a partial batch: keep logging.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    /// The line being serialized, reused by every request on this thread.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    /// Starts the writer thread, writing to `out` in `format`.
    pub fn start(format: LogFormat, out: Box<dyn Write + Send>) -> std::io::Result<Self> {
        Self::with_limit(format, out, PENDING_LIMIT)
    }

    /// As [`AccessLog::start`], dropping lines once `limit` bytes wait for the writer.
    pub fn with_limit(
        format: LogFormat,
        out: Box<dyn Write + Send>,
        limit: usize,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Arc<Shared>>(1);
        let handle = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                if let Ok(shared) = rx.recv() {
                    write_batches(&shared, out);
                }
            })?;
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::with_capacity(64 << 10)),
            limit,
            dropped: Counter::default(),
            closing: AtomicBool::new(false),
            writer: handle.thread().clone(),
        });
        let _ = tx.send(shared.clone());
        Ok(Self {
            format,
            shared,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> &Counter {
        &self.shared.dropped
    }

    /// Serializes `record` and hands the line to the writer. Never blocks on the output.
    pub fn write(&self, record: &Record<'_>) {
        LINE.with(|line| {
            // Re-entered only if a line were written while one is serialized on this thread.
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            match self.format {
                LogFormat::Json => format::json_line(&mut line, record),
                LogFormat::Text => format::text_line(&mut line, record),
            }
            self.push(&line);
        });
    }

    fn push(&self, line: &[u8]) {
        let mut pending = self.shared.pending();
        if pending.len() + line.len() > self.shared.limit {
            drop(pending);
            self.shared.dropped.inc();
            return;
        }
        let first = pending.is_empty();
        pending.extend_from_slice(line);
        let large = pending.len() >= WRITE_AT;
        drop(pending);
        if first || large {
            self.shared.writer.unpark();
        }
    }

    /// Writes every line handed over so far and stops the writer, waiting for it at most
    /// [`CLOSE_WAIT`] (an output that never drains must not hold the exit). Lines handed over
    /// later are not written.
    pub fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.writer.unpark();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let deadline = Instant::now() + CLOSE_WAIT;
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

/// The writer thread: waits for a first line, lets the batch gather, writes it whole.
fn write_batches(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::with_capacity(64 << 10);
    // The last write stopped within a line.
    let mut cut = false;
    let mut reported = 0;
    let mut last_report: Option<Instant> = None;
    loop {
        let closing = shared.closing.load(Ordering::Acquire);
        if !closing {
            let unreported = shared.dropped.get() > reported;
            // A producer that finds the batch empty wakes the writer (and one that finds it
            // large wakes it early); dropped lines not yet reported wake it on their own.
            if unreported {
                std::thread::park_timeout(REPORT_EVERY);
            } else {
                std::thread::park();
            }
            if shared.pending().len() < WRITE_AT && !shared.closing.load(Ordering::Acquire) {
                std::thread::park_timeout(GATHER);
            }
        }
        std::mem::swap(&mut *shared.pending(), &mut batch);
        if !batch.is_empty() {
            let lost = write_batch(&mut *out, &batch, &mut cut);
            if lost > 0 {
                shared.dropped.inc_by(lost);
            }
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch.shrink_to(KEEP_CAPACITY);
            }
        }
        let dropped = shared.dropped.get();
        if dropped > reported && last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
            tracing::warn!(
                dropped = dropped - reported,
                "access log lines dropped: the log output is not keeping up"
            );
            reported = dropped;
            last_report = Some(Instant::now());
        }
        if closing {
            return;
        }
    }
}

/// Writes `batch` (whole lines) to `out` as far as it takes it, and returns how many of its
/// lines did not reach it whole: a line the output took only part of is lost, the lines
/// before it are not. `cut` says that an earlier write stopped within a line: the next one
/// that succeeds begins with a newline, so that no line is glued to half of another.
fn write_batch(out: &mut dyn Write, batch: &[u8], cut: &mut bool) -> u64 {
    let lines = |bytes: &[u8]| bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    let mut written = 0;
    let result = (|| {
        if *cut {
            write_all(out, b"\n", &mut 0)?;
            *cut = false;
        }
        write_all(out, batch, &mut written)?;
        out.flush()
    })();
    if result.is_ok() {
        return 0;
    }
    let whole = lines(&batch[..written]);
    if written > 0 && batch[written - 1] != b'\n' {
        *cut = true;
    }
    lines(batch) - whole
}

/// `Write::write_all`, counting in `written` the bytes the output took.
fn write_all(out: &mut dyn Write, bytes: &[u8], written: &mut usize) -> std::io::Result<()> {
    while *written < bytes.len() {
        match out.write(&bytes[*written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => *written += n.min(bytes.len() - *written),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::format::{json_line, micros, text_line, timestamp};
    use super::*;
    use std::sync::mpsc;
    use std::time::UNIX_EPOCH;

    /// 2026-11-23T16:45:48.053279Z
    fn at() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_795_452_348, 53_279_000)
    }

    fn record<'a>(method: &'a Method, caller: Option<&'a str>) -> Record<'a> {
        Record {
            time: at(),
            request_id: "100e3235581b10592bd4fb6309ea33c0",
            peer: Some("spiffe://example.org/ns/kyc/sa/onboarding"),
            caller,
            remote: IpAddr::from([127, 0, 0, 1]),
            method,
            version: Version::HTTP_2,
            route: "create-session",
            status: 201,
            upstream_status: Some(201),
            credential: Some(("didit", "env")),
            decision: Decision::Allowed,
            latency: Duration::from_micros(2548),
        }
    }

    /// A writer for `tracing-subscriber` that collects into a shared buffer.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Fixed;

    impl tracing_subscriber::fmt::time::FormatTime for Fixed {
        fn format_time(
            &self,
            w: &mut tracing_subscriber::fmt::format::Writer<'_>,
        ) -> std::fmt::Result {
            w.write_str("2026-11-23T16:45:48.053279Z")
        }
    }

    /// The line `tracing`'s own formatter writes for the same access event.
    fn from_tracing(format: LogFormat, r: &Record<'_>) -> String {
        let out = Collect::default();
        let sink = out.clone();
        let builder = tracing_subscriber::fmt()
            .with_timer(Fixed)
            .with_writer(move || sink.clone());
        let event = || {
            tracing::info!(
                target: "idgate::access",
                request_id = r.request_id,
                peer = r.peer.unwrap_or("-"),
                caller = r.caller.or(r.peer).unwrap_or("-"),
                remote = %r.remote,
                method = r.method.as_str(),
                version = ?r.version,
                route = r.route,
                status = r.status,
                upstream_status = r.upstream_status,
                credential = r.credential.map(|c| c.0),
                credential_version = r.credential.map(|c| c.1),
                decision = "allowed",
                latency_us = micros(r.latency),
                "request"
            )
        };
        match format {
            LogFormat::Json => tracing::subscriber::with_default(
                builder.json().flatten_event(true).finish(),
                event,
            ),
            LogFormat::Text => {
                tracing::subscriber::with_default(builder.with_ansi(false).finish(), event)
            }
        }
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    fn ours(format: LogFormat, r: &Record<'_>) -> String {
        let mut line = Vec::new();
        match format {
            LogFormat::Json => json_line(&mut line, r),
            LogFormat::Text => text_line(&mut line, r),
        }
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn lines_are_the_ones_tracing_writes_for_the_access_event() {
        let get = Method::GET;
        let odd = Method::from_bytes(b"PROPFIND").unwrap();
        let quoted = "apikey:a\"b\\c\u{1}d\u{e9}\n";
        for format in [LogFormat::Json, LogFormat::Text] {
            let mut r = record(&get, Some("apikey:partner"));
            assert_eq!(ours(format, &r), from_tracing(format, &r));
            r.remote = IpAddr::from([10, 200, 0, 255]);
            assert_eq!(ours(format, &r), from_tracing(format, &r));
            r.method = &odd;
            r.caller = Some(quoted);
            r.upstream_status = None;
            r.credential = None;
            r.version = Version::HTTP_11;
            r.remote = "::ffff:10.0.0.1".parse().unwrap();
            assert_eq!(ours(format, &r), from_tracing(format, &r));
            r.peer = None;
            r.caller = None;
            assert_eq!(ours(format, &r), from_tracing(format, &r));
        }
    }

    #[test]
    fn decisions_name_their_reason() {
        let get = Method::GET;
        let mut r = record(&get, None);
        r.decision = Decision::Denied("forbidden");
        assert!(ours(LogFormat::Json, &r).contains(r#""decision":"denied:forbidden""#));
        r.decision = Decision::Failed("upstream-timeout");
        assert!(ours(LogFormat::Text, &r).contains(r#" decision="failed:upstream-timeout" "#));
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut out = Vec::new();
        timestamp(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(out, b"2000-02-29T00:00:00.000000Z");
        out.clear();
        timestamp(&mut out, at());
        assert_eq!(out, b"2026-11-23T16:45:48.053279Z");
    }

    #[test]
    fn a_timestamp_is_right_within_a_second_across_one_and_when_the_clock_steps_back() {
        let base = UNIX_EPOCH + Duration::from_secs(1_796_428_799);
        let cases = [
            (base, "2026-12-04T23:59:59.000000Z"),
            (
                base + Duration::from_micros(999_999),
                "2026-12-04T23:59:59.999999Z",
            ),
            (base + Duration::from_secs(1), "2026-12-05T00:00:00.000000Z"),
            (
                base + Duration::from_micros(1_000_042),
                "2026-12-05T00:00:00.000042Z",
            ),
            (
                base + Duration::from_micros(7),
                "2026-12-04T23:59:59.000007Z",
            ),
            (
                UNIX_EPOCH + Duration::from_secs(951_868_800),
                "2000-03-01T00:00:00.000000Z",
            ),
        ];
        for (t, want) in cases {
            let mut out = Vec::new();
            timestamp(&mut out, t);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }

    /// An output that accepts nothing until it is let go, like a pipe nobody reads.
    struct Stalled {
        go: mpsc::Receiver<()>,
        out: Collect,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.go.recv();
            self.out.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_and_never_blocks() {
        let (go, stalled) = mpsc::channel();
        let out = Collect::default();
        let line_len = ours(LogFormat::Json, &record(&Method::GET, None)).len();
        let log = AccessLog::with_limit(
            LogFormat::Json,
            Box::new(Stalled {
                go: stalled,
                out: out.clone(),
            }),
            10 * line_len,
        )
        .unwrap();
        let get = Method::GET;
        // Returns although nothing can be written: the output stays stalled meanwhile.
        for _ in 0..1000 {
            log.write(&record(&get, None));
        }
        let dropped = log.dropped().get();
        assert!(dropped >= 980, "dropped {dropped}");
        // Let the output go: every line handed over is written whole, the rest counted.
        drop(go);
        log.close();
        let written = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.lines().collect();
        assert_eq!(lines.len() as u64 + log.dropped().get(), 1000);
        for l in lines {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
    }

    /// An output that takes `room` bytes, a few at a time, then fails one write (a disk
    /// that filled, then had room again) and takes everything after.
    struct FailsOnce {
        room: usize,
        failed: bool,
        out: Collect,
    }

    impl Write for FailsOnce {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.failed {
                return self.out.write(buf);
            }
            if self.room == 0 {
                self.failed = true;
                return Err(std::io::ErrorKind::StorageFull.into());
            }
            let n = buf.len().min(self.room).min(7);
            self.room -= n;
            self.out.write(&buf[..n])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_that_fails_part_way_counts_only_lost_lines_and_never_glues_the_next_line_to_half_a_line()
     {
        let get = Method::GET;
        let line = ours(LogFormat::Json, &record(&get, None));
        let half = line.len() / 2;
        let collected = Collect::default();
        let mut out = FailsOnce {
            room: line.len() + half,
            failed: false,
            out: collected.clone(),
        };
        let mut cut = false;
        // The first line is written whole, the second half-way, the third not at all.
        let lost = write_batch(&mut out, line.repeat(3).as_bytes(), &mut cut);
        assert_eq!(lost, 2);
        assert!(cut);
        assert_eq!(write_batch(&mut out, line.as_bytes(), &mut cut), 0);
        assert!(!cut);
        assert_eq!(write_batch(&mut out, line.as_bytes(), &mut cut), 0);

        let written = String::from_utf8(collected.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = written.split_inclusive('\n').collect();
        let ended = format!("{}\n", &line[..half]);
        assert_eq!(lines, [&*line, &*ended, &*line, &*line], "{written}");
        // The half line stands alone; every whole line is still one record.
        let records = written
            .lines()
            .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
            .count();
        assert_eq!(records, 3, "{written}");
    }

    #[test]
    fn close_writes_every_line_handed_over() {
        let out = Collect::default();
        let log = AccessLog::start(LogFormat::Text, Box::new(out.clone())).unwrap();
        let get = Method::GET;
        for _ in 0..5000 {
            log.write(&record(&get, None));
        }
        log.close();
        let written = out.0.lock().unwrap().clone();
        assert_eq!(written.iter().filter(|&&b| b == b'\n').count(), 5000);
        assert_eq!(log.dropped().get(), 0);
    }
}
