//! An upstream's endpoints for the balancer: each one's requests in flight and whether its
//! health checks pass, and the choice of an endpoint for a request — the less loaded of two
//! healthy ones picked at random (power of two choices), which needs no lock and no global
//! ordering, and avoids the herd that "always the least loaded" makes.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// One endpoint's state, kept across reloads.
#[derive(Debug)]
pub(crate) struct EndpointState {
    pub(crate) label: Arc<str>,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    /// The endpoint's health-check task, when its upstream has `[upstreams.health]`.
    pub(crate) checker: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for EndpointState {
    fn drop(&mut self) {
        if let Some(task) = super::lock(&self.checker).take() {
            task.abort();
        }
    }
}

impl EndpointState {
    pub(crate) fn new(label: Arc<str>) -> Self {
        Self {
            label,
            in_flight: AtomicUsize::new(0),
            // Taken into rotation at once: checks take it out when it fails them.
            healthy: AtomicBool::new(true),
            checker: Mutex::new(None),
        }
    }

    pub(crate) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health; whether it changed.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A request counted in flight on an endpoint until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<EndpointState>);

impl InFlight {
    pub(crate) fn new(state: Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn random() -> u64 {
    // Randomly keyed per call: enough to spread choices, nothing secret.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u8(0);
    h.finish()
}

/// The index (into `states`) of the endpoint for a request: among the healthy ones, other
/// than `avoid` when another is healthy, the less loaded of two taken at random. `None`
/// when none is healthy.
pub(crate) fn choose(states: &[Arc<EndpointState>], avoid: Option<usize>) -> Option<usize> {
    let mut healthy: Vec<usize> = (0..states.len()).filter(|&i| states[i].healthy()).collect();
    if healthy.len() > 1 {
        healthy.retain(|&i| Some(i) != avoid);
    }
    match healthy.len() {
        0 => None,
        1 => Some(healthy[0]),
        n => {
            let r = random();
            let a = (r % n as u64) as usize;
            // A second one, never the first.
            let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
            let (a, b) = (healthy[a], healthy[b]);
            Some(if states[b].in_flight() < states[a].in_flight() {
                b
            } else {
                a
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn states(n: usize) -> Vec<Arc<EndpointState>> {
        (0..n)
            .map(|i| Arc::new(EndpointState::new(format!("e{i}").into())))
            .collect()
    }

    #[test]
    fn only_healthy_endpoints_are_chosen() {
        let s = states(3);
        s[0].set_healthy(false);
        s[2].set_healthy(false);
        for _ in 0..50 {
            assert_eq!(choose(&s, None), Some(1));
        }
        s[1].set_healthy(false);
        assert_eq!(choose(&s, None), None);
    }

    #[test]
    fn of_two_the_less_loaded_and_never_the_one_to_avoid() {
        let s = states(2);
        let _busy: Vec<_> = (0..3).map(|_| InFlight::new(s[0].clone())).collect();
        for _ in 0..50 {
            assert_eq!(choose(&s, None), Some(1));
        }
        for _ in 0..50 {
            assert_eq!(choose(&s, Some(1)), Some(0));
        }
        drop(_busy);
        assert_eq!(s[0].in_flight(), 0);
    }

    #[test]
    fn load_spreads_over_equal_endpoints() {
        let s = states(4);
        let mut counts = [0; 4];
        for _ in 0..400 {
            counts[choose(&s, None).unwrap()] += 1;
        }
        assert!(counts.iter().all(|&c| c > 40), "{counts:?}");
    }
}
