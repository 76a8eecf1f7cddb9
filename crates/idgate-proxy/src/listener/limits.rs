//! What a connection must get past before it is served, and what it holds while open: the
//! per-source count (`max_connections_per_ip`), the per-identity count
//! (`max_connections_per_identity`), and the throttled log of refusals.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
        // Nothing panics while the table is held; were it poisoned, counting goes on.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = match open.get_mut(key) {
            Some(n) => n,
            None => open.entry(key.clone()).or_insert(0),
        };
        if *n >= self.limit {
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

/// Logs a refused connection at most once a second, so that a flood cannot flood the log.
#[derive(Default)]
pub(super) struct RefusalLog {
    inner: Mutex<Throttle>,
}

#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// `why` names the limit or rule; `stage` says where the connection was refused.
    pub(super) fn refused(&self, remote: IpAddr, why: &'static str, stage: &'static str) {
        let now = Instant::now();
        let mut t = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if t.last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            t.suppressed += 1;
            return;
        }
        let also_refused = t.suppressed;
        t.last = Some(now);
        t.suppressed = 0;
        drop(t);
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
