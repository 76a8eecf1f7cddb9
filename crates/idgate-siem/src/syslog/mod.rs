//! The syslog sink: frames events (`message`) and writes them to a collector over one
//! connection (`conn`), reconnecting with capped exponential backoff and jitter.
//!
//! Loss and order: events wait in the sink's buffer while the collector is away and go out
//! in order once it is back. A batch is written whole or its connection is dropped; the
//! batch then goes back to the front of the buffer, behind the frames of the last
//! `replay_bytes` written on that connection that the collector's host had not
//! acknowledged when it ended (syslog over TLS has no acknowledgment of its own; the
//! kernel's TCP send queue is the one there is, and when it cannot be read, after a reset,
//! the whole window counts as unacknowledged). Both are sent again on the next connection:
//! at-least-once, with duplicates after a broken connection, and none after a collector
//! merely closed an idle one.
//!
//! Pace: a connection resets the backoff only once it has stayed up for `STEADY`; one that
//! ends sooner (a collector that accepts, then hangs up) is followed by the backoff's wait,
//! like a failed attempt, and its warnings share the failures' throttle.

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

/// A connection that stayed up this long was a working one: the backoff starts over.
const STEADY: Duration = Duration::from_secs(10);

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
        let mut conn: Option<Up> = None;
        let mut connected_before = false;
        // The shutdown found everything written acknowledged (or could not know otherwise).
        let mut settled = false;
        let (mut frames, mut scratch) = (Vec::with_capacity(BATCH_BYTES), Vec::new());
        loop {
            drops.report(name, &self.counters);
            let closing = buffer.closing();
            if closing.is_some_and(|deadline| Instant::now() >= deadline) {
                break;
            }
            let Some(up) = conn.as_mut() else {
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
                        tracing::info!(sink = name, collector = %addr, "SIEM syslog sink connected");
                        conn = Some(Up {
                            conn: c,
                            since: Instant::now(),
                            steady: false,
                        });
                    }
                    Err(e) => {
                        if failures.allow() {
                            tracing::warn!(sink = name, collector = %addr, error = %e, "SIEM syslog sink cannot connect; retrying");
                        }
                        pause(&mut backoff, buffer, closing);
                    }
                }
                continue;
            };
            if !up.steady && up.since.elapsed() >= STEADY {
                up.steady = true;
                backoff.reset();
            }
            // After a connection that ended soon after it opened, the next attempt waits.
            let steady = up.steady;
            let taken = buffer.take(BATCH_EVENTS, BATCH_BYTES, Duration::from_secs(1));
            if taken.events.is_empty()
                && let Some(deadline) = taken.closing
            {
                // Everything is written; the sink stops once the collector's host has
                // acknowledged it. What it has not by then (a collector that went away at
                // the last moment, one that stopped reading) goes back to the buffer: sent
                // again on a new connection while the deadline allows, else counted as
                // dropped by the shutdown.
                if acknowledged(up, deadline) {
                    settled = true;
                    break;
                }
                let again = self.lost(&mut conn, &mut replay, Vec::new(), 0, buffer);
                if failures.allow() {
                    tracing::warn!(sink = name, collector = %addr, unacknowledged = again, "SIEM collector had not acknowledged every event at shutdown; sending them again");
                }
                continue;
            }
            // Checked before each batch, and every idle second: a collector that went away
            // (or refused the client certificate after the handshake) is noticed before
            // more frames are given to a dead socket, and the frames it may have lost are
            // sent again without waiting for the next event.
            if up.conn.peer_closed() {
                let idle = taken.events.is_empty();
                let again = self.lost(&mut conn, &mut replay, taken.events, 0, buffer);
                // A collector that closes a connection which was idle, and had taken
                // everything, is only keeping its own house (Filebeat closes idle TCP
                // connections after 300 s).
                if idle && again == 0 && steady {
                    tracing::info!(sink = name, collector = %addr, "SIEM collector closed an idle connection; reconnecting");
                } else if failures.allow() {
                    tracing::warn!(sink = name, collector = %addr, resent = again, "SIEM collector closed the connection; reconnecting");
                }
                if !steady {
                    pause(&mut backoff, buffer, closing);
                }
                continue;
            }
            if taken.events.is_empty() {
                continue;
            }
            frames.clear();
            for e in &taken.events {
                self.header.frame(e, &mut scratch, &mut frames);
            }
            match up.conn.write_all(&frames) {
                Ok(()) => {
                    buffer.settled();
                    self.counters.sent.inc_by(taken.events.len() as u64);
                    replay.extend(taken.events, up.conn.written());
                }
                Err(e) => {
                    if failures.allow() {
                        tracing::warn!(sink = name, collector = %addr, error = %e, "SIEM syslog write failed; reconnecting");
                    }
                    let n = taken.events.len() as u64;
                    self.lost(&mut conn, &mut replay, taken.events, n, buffer);
                    if !steady {
                        pause(&mut backoff, buffer, closing);
                    }
                }
            }
        }
        // Stopped by the deadline with a connection up: frames its host had not yet
        // acknowledged go back to the buffer, where the shutdown counts them as dropped.
        if !settled
            && conn
                .as_ref()
                .is_some_and(|up| up.conn.unacknowledged() != Some(0))
        {
            buffer.put_back(self.unacknowledged(&mut conn, &mut replay));
        }
        if let Some(up) = conn {
            up.conn.close();
        }
        self.counters.connected.set(0);
    }

    /// A connection is gone: the frames that may not have reached the collector (those of
    /// the replay window its host had not acknowledged, and the `unsure` frames of a batch
    /// whose write failed) go back to the front of the buffer ahead of `batch`'s unwritten
    /// rest, to be sent again on the next one. Returns how many are sent again.
    fn lost(
        &self,
        conn: &mut Option<Up>,
        replay: &mut Replay,
        batch: Vec<Arc<Event>>,
        unsure: u64,
        buffer: &Buffer,
    ) -> u64 {
        let mut back = self.unacknowledged(conn, replay);
        let again = back.len() as u64 + unsure;
        if again > 0 {
            self.counters.resent.inc_by(again);
        }
        back.extend(batch);
        buffer.put_back(back);
        again
    }

    /// Lets go of the connection, returning the frames of the replay window its collector's
    /// host had not acknowledged (all of the window when that cannot be known).
    fn unacknowledged(&self, conn: &mut Option<Up>, replay: &mut Replay) -> Vec<Arc<Event>> {
        // The kernel's send queue is read before the socket is let go.
        let acknowledged = conn.as_ref().and_then(|up| {
            let unacked = up.conn.unacknowledged()?;
            Some(up.conn.written().saturating_sub(unacked))
        });
        *conn = None;
        self.counters.connected.set(0);
        replay.take_unacknowledged(acknowledged)
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

/// The connection in use: since when, and whether it has stayed up long enough to count as
/// working (`STEADY`).
struct Up {
    conn: Conn,
    since: Instant,
    steady: bool,
}

/// How often a closing sink looks again at what the collector's host has acknowledged.
const ACK_POLL: Duration = Duration::from_millis(5);

/// Waits, at most until `deadline`, for the collector's host to acknowledge every byte
/// written on `up`; false when it has not, or when the collector closed the connection
/// first. A socket the kernel's table does not show is a reset one when the collector is
/// gone; with the collector still there, the table is one this process cannot read, and
/// the frames are taken as delivered, as nothing else can tell.
fn acknowledged(up: &mut Up, deadline: Instant) -> bool {
    loop {
        match up.conn.unacknowledged() {
            Some(0) => return true,
            None => return !up.conn.peer_closed(),
            Some(_) => {}
        }
        let now = Instant::now();
        if now >= deadline || up.conn.peer_closed() {
            return false;
        }
        std::thread::sleep(ACK_POLL.min(deadline - now));
    }
}

/// Waits the backoff's next delay before another attempt, returning early when shutdown
/// begins and never past its deadline.
fn pause(backoff: &mut Backoff, buffer: &Buffer, closing: Option<Instant>) {
    let wait = backoff.next_delay();
    match closing {
        Some(deadline) => {
            std::thread::sleep(wait.min(deadline.saturating_duration_since(Instant::now())));
        }
        None => buffer.sleep(wait),
    }
}

/// The last frames written on the current connection, up to a byte budget, each with where
/// its batch ended in the connection's byte stream.
struct Replay {
    events: VecDeque<(Arc<Event>, u64)>,
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

    /// Adds a batch just written, which ends at byte `end` of the connection.
    fn extend(&mut self, written: Vec<Arc<Event>>, end: u64) {
        for e in written {
            self.bytes += e.json.len();
            self.events.push_back((e, end));
        }
        while self.bytes > self.limit {
            match self.events.pop_front() {
                Some((old, _)) => self.bytes -= old.json.len(),
                None => break,
            }
        }
    }

    /// Empties the window, returning the frames whose batch the collector's host had not
    /// wholly acknowledged: those ending past byte `acknowledged` of the connection, or all
    /// of them when that is not known.
    fn take_unacknowledged(&mut self, acknowledged: Option<u64>) -> Vec<Arc<Event>> {
        self.bytes = 0;
        self.events
            .drain(..)
            .filter(|(_, end)| acknowledged.is_none_or(|a| *end > a))
            .map(|(e, _)| e)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn event(n: usize) -> Arc<Event> {
        Arc::new(Event {
            at: SystemTime::now(),
            json: format!("{{\"seq\":{n}}}").into_bytes().into(),
        })
    }

    #[test]
    fn only_the_frames_the_collector_had_not_acknowledged_are_replayed() {
        let mut replay = Replay::new(1 << 20);
        replay.extend(vec![event(0), event(1)], 100);
        replay.extend(vec![event(2)], 150);
        replay.extend(vec![event(3), event(4)], 250);
        let seqs = |events: Vec<Arc<Event>>| {
            events
                .iter()
                .map(|e| String::from_utf8_lossy(&e.json).into_owned())
                .collect::<Vec<_>>()
        };
        // Acknowledged up to byte 150: the last batch (151..=250) was not wholly.
        assert_eq!(
            seqs(replay.take_unacknowledged(Some(150))),
            ["{\"seq\":3}", "{\"seq\":4}"]
        );
        replay.extend(vec![event(5)], 300);
        assert!(
            replay.take_unacknowledged(Some(300)).is_empty(),
            "all acknowledged"
        );
        replay.extend(vec![event(6)], 400);
        // Unknown (a reset connection): the whole window.
        assert_eq!(seqs(replay.take_unacknowledged(None)), ["{\"seq\":6}"]);
    }
}
