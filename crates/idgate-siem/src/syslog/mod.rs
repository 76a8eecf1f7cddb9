//! The syslog sink: frames events (`message`) and writes them to a collector over one
//! connection (`conn`), reconnecting with capped exponential backoff and jitter.
//!
//! Loss and order: events wait in the sink's buffer while the collector is away and go out
//! in order once it is back. A batch is written whole or its connection is dropped; the
//! batch then goes back to the front of the buffer, behind the last `replay_bytes` of frames
//! already written on that connection (syslog over TLS has no acknowledgment, so what the
//! collector had not yet read when it went away cannot be known). Both are sent again on
//! the next connection: at-least-once, with duplicates after a broken connection.

mod conn;
pub(crate) mod message;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use idgate_config::SyslogSinkConfig;

use crate::buffer::Buffer;
use crate::metrics::SinkCounters;
use crate::pace::{Backoff, DropLog, Throttle};
use crate::{Event, StartError};
use conn::Conn;
use message::Header;

/// At most this much goes into one write.
const BATCH_EVENTS: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;

/// A syslog sink ready to run.
pub(crate) struct Sink {
    cfg: SyslogSinkConfig,
    key: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    header: Header,
    counters: SinkCounters,
}

impl Sink {
    /// Reads the TLS files once, so that a bad one stops the start (they are read again at
    /// each connection).
    pub(crate) fn new(
        cfg: &SyslogSinkConfig,
        key: &str,
        counters: SinkCounters,
    ) -> Result<Self, StartError> {
        let tls = match &cfg.tls {
            Some(t) => Some(conn::tls_config(t, key)?),
            None => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            key: key.to_owned(),
            tls,
            header: Header::new(cfg),
            counters,
        })
    }

    /// The sink's thread: connects, writes batches, reconnects, until shutdown.
    pub(crate) fn run(mut self, name: &str, buffer: &Buffer) {
        let addr = format!("{}:{}", self.cfg.host, self.cfg.port);
        let mut backoff = Backoff::new(self.cfg.reconnect_min, self.cfg.reconnect_max);
        let mut drops = DropLog::new();
        let mut failures = Throttle::new(Duration::from_secs(30));
        let mut replay = Replay::new(self.cfg.replay_bytes);
        let mut conn: Option<Conn> = None;
        let mut connected_before = false;
        let (mut frames, mut scratch) = (Vec::with_capacity(BATCH_BYTES), Vec::new());
        loop {
            drops.report(name, &self.counters);
            let closing = buffer.closing();
            if closing.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            let Some(c) = conn.as_mut() else {
                if closing.is_some() && buffer.is_empty() {
                    break;
                }
                self.refresh_tls(name, &mut failures);
                match Conn::open(&self.cfg, self.tls.as_ref()) {
                    Ok(c) => {
                        if connected_before {
                            self.counters.reconnects.inc();
                        }
                        connected_before = true;
                        self.counters.connected.set(1);
                        backoff.reset();
                        tracing::info!(sink = name, collector = %addr, "SIEM syslog sink connected");
                        conn = Some(c);
                    }
                    Err(e) => {
                        if failures.allow() {
                            tracing::warn!(sink = name, collector = %addr, error = %e, "SIEM syslog sink cannot connect; retrying");
                        }
                        let mut wait = backoff.next_delay();
                        if let Some(deadline) = closing {
                            wait = wait.min(deadline.saturating_duration_since(Instant::now()));
                            std::thread::sleep(wait);
                        } else {
                            buffer.sleep(wait);
                        }
                    }
                }
                continue;
            };
            let taken = buffer.take(BATCH_EVENTS, BATCH_BYTES, Duration::from_secs(1));
            if taken.events.is_empty() {
                if taken.closing.is_some() {
                    break;
                }
                // Idle: a collector that went away (or refused the client certificate
                // after a TLS 1.3 handshake) is noticed now, so the frames it may have
                // lost are sent again without waiting for the next event.
                if c.peer_closed() {
                    tracing::warn!(sink = name, collector = %addr, "SIEM collector closed the connection; reconnecting");
                    self.lost(&mut conn, &mut replay, Vec::new(), 0, buffer);
                }
                continue;
            }
            if c.peer_closed() {
                tracing::warn!(sink = name, collector = %addr, "SIEM collector closed the connection; reconnecting");
                self.lost(&mut conn, &mut replay, taken.events, 0, buffer);
                continue;
            }
            frames.clear();
            for e in &taken.events {
                self.header.frame(e, &mut scratch, &mut frames);
            }
            match c.write_all(&frames) {
                Ok(()) => {
                    self.counters.sent.inc_by(taken.events.len() as u64);
                    replay.extend(taken.events);
                }
                Err(e) => {
                    tracing::warn!(sink = name, collector = %addr, error = %e, "SIEM syslog write failed; reconnecting");
                    let n = taken.events.len() as u64;
                    self.lost(&mut conn, &mut replay, taken.events, n, buffer);
                }
            }
        }
        if let Some(c) = conn {
            c.close();
        }
        self.counters.connected.set(0);
    }

    /// A connection is gone: the frames that may not have reached the collector (the replay
    /// window, and the `unsure` frames of a batch whose write failed) go back to the front of
    /// the buffer ahead of `batch`'s unwritten rest, to be sent again on the next one.
    fn lost(
        &self,
        conn: &mut Option<Conn>,
        replay: &mut Replay,
        batch: Vec<Arc<Event>>,
        unsure: u64,
        buffer: &Buffer,
    ) {
        *conn = None;
        self.counters.connected.set(0);
        let again = replay.events.len() as u64 + unsure;
        if again > 0 {
            self.counters.resent.inc_by(again);
        }
        let mut back: Vec<_> = replay.take();
        back.extend(batch);
        buffer.put_back(back);
    }

    /// Reads the TLS files again before a connection; a file that has become bad keeps the
    /// configuration in use.
    fn refresh_tls(&mut self, name: &str, failures: &mut Throttle) {
        let Some(t) = &self.cfg.tls else { return };
        match conn::tls_config(t, &self.key) {
            Ok(config) => self.tls = Some(config),
            Err(e) => {
                if failures.allow() {
                    tracing::warn!(sink = name, error = %e, "SIEM syslog sink: TLS files unreadable; keeping the ones read before");
                }
            }
        }
    }
}

/// The last frames written on the current connection, up to a byte budget.
struct Replay {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
    limit: usize,
}

impl Replay {
    fn new(limit: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    fn extend(&mut self, written: Vec<Arc<Event>>) {
        for e in written {
            self.bytes += e.json.len();
            self.events.push_back(e);
        }
        while self.bytes > self.limit {
            match self.events.pop_front() {
                Some(old) => self.bytes -= old.json.len(),
                None => break,
            }
        }
    }

    fn take(&mut self) -> Vec<Arc<Event>> {
        self.bytes = 0;
        self.events.drain(..).collect()
    }
}
