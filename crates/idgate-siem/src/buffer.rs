//! One sink's bounded buffer: the events handed over and not yet written, in order, within
//! a count and a byte limit, and the policy that says what a full buffer loses.
//!
//! The caller's side (`push`) and the sink's side (`take`, `put_back`) share one mutex, held
//! only to move pointers: no I/O, no allocation beyond the queue's own growth.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use idgate_config::{BufferLimits, OnFull};

use crate::Event;
use crate::metrics::SinkCounters;

pub(crate) struct Buffer {
    state: Mutex<State>,
    ready: Condvar,
    limits: BufferLimits,
    counters: SinkCounters,
}

struct State {
    queue: VecDeque<Arc<Event>>,
    bytes: usize,
    /// Set by shutdown: no more events are taken, and the sink ends by this time.
    closing: Option<Instant>,
    /// Events the sink took and has neither written nor put back: a batch in flight, which
    /// a sink still writing when shutdown gives up on it loses.
    held: usize,
}

/// What the sink thread learns when it asks for events.
pub(crate) struct Taken {
    pub(crate) events: Vec<Arc<Event>>,
    /// The exporter is shutting down and the sink must be done by then.
    pub(crate) closing: Option<Instant>,
}

impl Buffer {
    pub(crate) fn new(limits: BufferLimits, counters: SinkCounters) -> Self {
        Self {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                bytes: 0,
                closing: None,
                held: 0,
            }),
            ready: Condvar::new(),
            limits,
            counters,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the queue half-changed (each change
        // is one push or pop), so a poisoned lock is still a sound queue.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends `event` unless the buffer is full and the policy keeps what it holds;
    /// counts what is dropped. Returns whether the event was kept.
    pub(crate) fn push(&self, event: &Arc<Event>) -> bool {
        let size = event.json.len();
        let mut st = self.lock();
        if st.closing.is_some() || size > self.limits.bytes {
            drop(st);
            self.counters.dropped.inc();
            return false;
        }
        let mut evicted = 0u64;
        while st.queue.len() >= self.limits.events || st.bytes + size > self.limits.bytes {
            if self.limits.on_full == OnFull::DropNewest {
                break;
            }
            match st.queue.pop_front() {
                Some(old) => {
                    st.bytes -= old.json.len();
                    evicted += 1;
                }
                None => break,
            }
        }
        let fits = st.queue.len() < self.limits.events && st.bytes + size <= self.limits.bytes;
        if fits {
            st.queue.push_back(event.clone());
            st.bytes += size;
        }
        self.publish(&st);
        drop(st);
        let dropped = evicted + u64::from(!fits);
        if dropped > 0 {
            self.counters.dropped.inc_by(dropped);
        }
        if fits {
            self.ready.notify_one();
        }
        fits
    }

    /// Takes up to `max_events` events and about `max_bytes` (at least one event), waiting
    /// up to `wait` for one to arrive. Returns at once when closing.
    pub(crate) fn take(&self, max_events: usize, max_bytes: usize, wait: Duration) -> Taken {
        let mut st = self.lock();
        if st.queue.is_empty() && st.closing.is_none() {
            st = self
                .ready
                .wait_timeout_while(st, wait, |s| s.queue.is_empty() && s.closing.is_none())
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        let mut events = Vec::new();
        let mut bytes = 0;
        while events.len() < max_events {
            let Some(front) = st.queue.front() else { break };
            let size = front.json.len();
            if !events.is_empty() && bytes + size > max_bytes {
                break;
            }
            if let Some(e) = st.queue.pop_front() {
                bytes += size;
                events.push(e);
            }
        }
        st.bytes -= bytes;
        st.held = events.len();
        self.publish(&st);
        Taken {
            events,
            closing: st.closing,
        }
    }

    /// Puts events the sink could not write back at the front, in their order, ahead of
    /// everything newer. They were counted in when they arrived, so no limit refuses them;
    /// until the queue is below its limits again, new events meet a full buffer.
    pub(crate) fn put_back(&self, events: Vec<Arc<Event>>) {
        let mut st = self.lock();
        st.held = 0;
        for e in events.into_iter().rev() {
            st.bytes += e.json.len();
            st.queue.push_front(e);
        }
        self.publish(&st);
    }

    /// The batch last taken was written: it is no longer the sink's to lose.
    pub(crate) fn settled(&self) {
        self.lock().held = 0;
    }

    pub(crate) fn counters(&self) -> &SinkCounters {
        &self.counters
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Whether shutdown began, and its deadline.
    pub(crate) fn closing(&self) -> Option<Instant> {
        self.lock().closing
    }

    /// Waits up to `wait`, returning early when shutdown begins (for backoff sleeps).
    pub(crate) fn sleep(&self, wait: Duration) {
        let st = self.lock();
        if st.closing.is_none() {
            let _unused = self
                .ready
                .wait_timeout_while(st, wait, |s| s.closing.is_none());
        }
    }

    /// Begins shutdown: no new event is taken; the sink writes what it holds until
    /// `deadline`.
    pub(crate) fn close(&self, deadline: Instant) {
        let mut st = self.lock();
        if st.closing.is_none() {
            st.closing = Some(deadline);
        }
        drop(st);
        self.ready.notify_all();
    }

    /// Empties the buffer at the end of shutdown; returns how many events it held, with the
    /// batch a sink still writing holds, which are counted as dropped.
    pub(crate) fn abandon(&self) -> u64 {
        let mut st = self.lock();
        let n = (st.queue.len() + st.held) as u64;
        st.queue.clear();
        st.bytes = 0;
        st.held = 0;
        self.publish(&st);
        drop(st);
        self.counters.dropped.inc_by(n);
        n
    }

    fn publish(&self, st: &State) {
        self.counters
            .buffered_events
            .set(i64::try_from(st.queue.len()).unwrap_or(i64::MAX));
        self.counters
            .buffered_bytes
            .set(i64::try_from(st.bytes).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::metrics::SiemMetrics;

    fn event(s: &str) -> Arc<Event> {
        Arc::new(Event {
            at: SystemTime::now(),
            json: s.as_bytes().into(),
        })
    }

    fn texts(events: &[Arc<Event>]) -> Vec<String> {
        events
            .iter()
            .map(|e| String::from_utf8_lossy(&e.json).into_owned())
            .collect()
    }

    fn buffer(events: usize, bytes: usize, on_full: OnFull) -> (Buffer, SiemMetrics) {
        let metrics = SiemMetrics::default();
        let limits = BufferLimits {
            events,
            bytes,
            on_full,
        };
        (Buffer::new(limits, metrics.sink("t")), metrics)
    }

    #[test]
    fn a_full_buffer_drops_the_newest_by_default_and_counts_it() {
        let (b, m) = buffer(2, 1024, OnFull::DropNewest);
        assert!(b.push(&event("1")));
        assert!(b.push(&event("2")));
        assert!(!b.push(&event("3")));
        let stats = m.stats("t");
        assert_eq!((stats.dropped, stats.buffered_events), (1, 2));
        let t = b.take(10, 1 << 20, Duration::ZERO);
        assert_eq!(texts(&t.events), ["1", "2"]);
        assert_eq!(m.stats("t").buffered_events, 0);
    }

    #[test]
    fn drop_oldest_makes_room_and_the_byte_limit_counts_too() {
        let (b, m) = buffer(10, 8, OnFull::DropOldest);
        for s in ["aaa", "bbb", "ccc"] {
            assert!(b.push(&event(s)));
        }
        assert_eq!(m.stats("t").dropped, 1);
        assert!(!b.push(&event("123456789")), "larger than the whole buffer");
        let t = b.take(10, 1 << 20, Duration::ZERO);
        assert_eq!(texts(&t.events), ["bbb", "ccc"]);
        assert_eq!(m.stats("t").dropped, 2);
    }

    #[test]
    fn put_back_keeps_the_order_ahead_of_newer_events() {
        let (b, _) = buffer(10, 1024, OnFull::DropNewest);
        for s in ["1", "2", "3"] {
            b.push(&event(s));
        }
        let t = b.take(2, 1 << 20, Duration::ZERO);
        b.push(&event("4"));
        b.put_back(t.events);
        let t = b.take(10, 1 << 20, Duration::ZERO);
        assert_eq!(texts(&t.events), ["1", "2", "3", "4"]);
    }

    #[test]
    fn take_waits_for_an_event_and_returns_at_once_when_closing() {
        let (b, _) = buffer(10, 1024, OnFull::DropNewest);
        let b = Arc::new(b);
        let b2 = b.clone();
        let pusher = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            b2.push(&event("late"));
        });
        let t = b.take(10, 1 << 20, Duration::from_secs(10));
        assert_eq!(texts(&t.events), ["late"]);
        pusher.join().unwrap();
        let started = Instant::now();
        b.close(Instant::now());
        let t = b.take(10, 1 << 20, Duration::from_secs(10));
        assert!(t.events.is_empty() && t.closing.is_some());
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(!b.push(&event("after")), "no event is taken once closing");
    }
}
