//! What a connection must get past before it is served, and what it holds while open: the
//! per-source count (`max_connections_per_ip`), the per-identity count
//! (`max_connections_per_identity`), its place among the handshakes in progress
//! (`max_handshakes`, `max_handshakes_per_ip`), and the throttled log of refusals.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

/// Open connections per key (a client address, a SPIFFE ID), so that one key cannot take
/// every connection.
pub(super) struct PerKey<K> {
    limit: usize,
    open: Mutex<HashMap<K, usize>>,
}

/// One connection's place in its key's count; given back on drop.
pub(super) struct Slot<K: Hash + Eq> {
    table: Arc<PerKey<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> PerKey<K> {
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn acquire(self: &Arc<Self>, key: &K) -> Option<Slot<K>> {
        self.acquire_within(key, self.limit)
    }

    /// [`PerKey::acquire`], against `limit` rather than the table's own (a limit a reload
    /// changes, for the connections that arrive after it).
    pub(super) fn acquire_within(self: &Arc<Self>, key: &K, limit: usize) -> Option<Slot<K>> {
        // Nothing panics while the table is held; were it poisoned, counting goes on.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = match open.get_mut(key) {
            Some(n) => n,
            None => open.entry(key.clone()).or_insert(0),
        };
        if *n >= limit {
            if *n == 0 {
                open.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(Slot {
            table: self.clone(),
            key: key.clone(),
        })
    }
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self
            .table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// What a connection holds while it is open: its place in `max_connections`, and its
/// source's place in `max_connections_per_ip`.
pub(super) struct Admission {
    pub(super) _permit: OwnedSemaphorePermit,
    pub(super) _slot: Slot<IpAddr>,
}

/// The connections in their TLS handshake: all of them, and per source. A connection
/// holds its place from its admission until its handshake ends, whichever way.
pub(super) struct Handshakes {
    open: Arc<AtomicUsize>,
    per_ip: Arc<PerKey<IpAddr>>,
}

/// One connection's place among the handshakes in progress; given back on drop.
pub(super) struct Handshaking {
    open: Arc<AtomicUsize>,
    _slot: Slot<IpAddr>,
}

impl Handshakes {
    pub(super) fn new() -> Self {
        Self {
            open: Arc::default(),
            // Every acquisition names its limit: the one in force when the connection came.
            per_ip: PerKey::new(0),
        }
    }

    /// A place for a handshake from `source` (a [`crate::conn::source_key`]), within
    /// `per_ip` for the source and `all` in all; `Err` names the cap that refused it.
    pub(super) fn begin(
        &self,
        source: IpAddr,
        per_ip: usize,
        all: usize,
    ) -> Result<Handshaking, &'static str> {
        let slot = self
            .per_ip
            .acquire_within(&source, per_ip)
            .ok_or("max_handshakes_per_ip")?;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < all).then_some(n + 1)
            })
            .map_err(|_| "max_handshakes")?;
        Ok(Handshaking {
            open: self.open.clone(),
            _slot: slot,
        })
    }

    /// Handshakes in progress now.
    #[cfg(test)]
    pub(super) fn in_progress(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Lets log lines through while its budget lasts: `burst` at once, then `per_second`. The
/// lines held back are counted, and the next line let through says how many, so that a
/// flood of refusals cannot flood the log.
pub(crate) struct LogBudget {
    burst: f64,
    per_second: f64,
    state: Mutex<Budget>,
}

struct Budget {
    tokens: f64,
    refilled: Option<Instant>,
    held_back: u64,
}

impl LogBudget {
    pub(crate) const fn new(burst: u32, per_second: u32) -> Self {
        Self {
            burst: burst as f64,
            per_second: per_second as f64,
            state: Mutex::new(Budget {
                tokens: burst as f64,
                refilled: None,
                held_back: 0,
            }),
        }
    }

    /// `Some(lines held back since the last one let through)` when a line may be written now.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut b = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(then) = b.refilled {
            let earned = now.duration_since(then).as_secs_f64() * self.per_second;
            b.tokens = (b.tokens + earned).min(self.burst);
        }
        b.refilled = Some(now);
        if b.tokens < 1.0 {
            b.held_back += 1;
            return None;
        }
        b.tokens -= 1.0;
        Some(std::mem::take(&mut b.held_back))
    }
}

/// Logs a refused connection at most once a second, so that a flood cannot flood the log.
pub(super) struct RefusalLog {
    budget: LogBudget,
}

impl Default for RefusalLog {
    fn default() -> Self {
        Self {
            budget: LogBudget::new(1, 1),
        }
    }
}

impl RefusalLog {
    /// `why` names the limit or rule; `stage` says where the connection was refused.
    pub(super) fn refused(&self, remote: IpAddr, why: &'static str, stage: &'static str) {
        let Some(also_refused) = self.budget.admit() else {
            return;
        };
        tracing::warn!(
            remote = %remote,
            limit = why,
            also_refused,
            "connection refused {stage}: limit reached"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::source_key;

    #[test]
    fn an_ipv6_host_counts_as_its_64_and_ipv4_as_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped.to_canonical()), v4);
    }

    #[test]
    fn handshakes_are_bounded_per_source_and_in_all_until_they_end() {
        let handshakes = Handshakes::new();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = handshakes.begin(a, 2, 3).unwrap();
        let _second = handshakes.begin(a, 2, 3).unwrap();
        assert_eq!(
            handshakes.begin(a, 2, 3).err(),
            Some("max_handshakes_per_ip")
        );
        let _third = handshakes.begin(b, 2, 3).unwrap();
        assert_eq!(handshakes.begin(b, 2, 3).err(), Some("max_handshakes"));
        assert_eq!(handshakes.in_progress(), 3);
        // A refusal by the cap in all gives the source's place back.
        drop(first);
        assert_eq!(handshakes.in_progress(), 2);
        let _fourth = handshakes.begin(b, 2, 3).unwrap();
        assert_eq!(
            handshakes.begin(b, 2, 4).err(),
            Some("max_handshakes_per_ip")
        );
    }

    #[test]
    fn a_log_budget_lets_its_burst_through_then_counts_what_it_holds_back() {
        let budget = LogBudget::new(3, 1);
        assert_eq!(
            (0..5).map(|_| budget.admit()).collect::<Vec<_>>(),
            [Some(0), Some(0), Some(0), None, None]
        );
        let budget = LogBudget::new(1, 1000);
        assert_eq!(budget.admit(), Some(0));
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(budget.admit(), Some(0));
        // Past its rate (a thousand lines a second here), until it has earned one again.
        let mut held = 0;
        let line = loop {
            match budget.admit() {
                Some(n) => break n,
                None => held += 1,
            }
        };
        assert_eq!(line, held);
    }

    #[test]
    fn a_key_at_its_limit_is_refused_until_a_slot_is_given_back() {
        let table = PerKey::<u8>::new(2);
        let a = table.acquire(&1).unwrap();
        let _b = table.acquire(&1).unwrap();
        assert!(table.acquire(&1).is_none());
        assert!(table.acquire(&2).is_some());
        drop(a);
        assert!(table.acquire(&1).is_some());
    }
}
