//! Values read from a secret that are replaced when the secret changes, the previous one
//! kept for the requests that started before the change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use zeroize::Zeroizing;

use crate::{ExposeSecret, Fetched, SecretError, SecretRef};

/// A value with the version it was built from and when it came into use.
pub(crate) struct Versioned<T> {
    pub(crate) value: T,
    pub(crate) version: Arc<str>,
    since: Instant,
}

/// A value that is replaced when its source changes, keeping the previous one for requests
/// that started before the change.
pub(crate) struct LiveValue<T> {
    /// The current version and the one before it, replaced together: a request never sees a
    /// new current version paired with a previous one from two changes back.
    state: ArcSwap<Generations<T>>,
    overlap: Duration,
}

struct Generations<T> {
    current: Arc<Versioned<T>>,
    previous: Option<Arc<Versioned<T>>>,
}

impl<T> LiveValue<T> {
    pub(crate) fn new(value: T, version: String, overlap: Duration) -> Self {
        Self {
            state: ArcSwap::from_pointee(Generations {
                current: Arc::new(Versioned {
                    value,
                    version: version.into(),
                    since: Instant::now(),
                }),
                previous: None,
            }),
            overlap,
        }
    }

    pub(crate) fn version(&self) -> Arc<str> {
        self.state.load().current.version.clone()
    }

    /// The version requests starting now use.
    pub(crate) fn current(&self) -> Arc<Versioned<T>> {
        self.state.load().current.clone()
    }

    pub(crate) fn replace(&self, value: T, version: String) {
        let next = Arc::new(Versioned {
            value,
            version: version.into(),
            since: Instant::now(),
        });
        self.state.rcu(|g| Generations {
            current: next.clone(),
            previous: Some(g.current.clone()),
        });
    }

    /// The value for a request that started at `started`.
    pub(crate) fn for_request(&self, started: Instant) -> Arc<Versioned<T>> {
        let g = self.state.load();
        if started < g.current.since
            && g.current.since.elapsed() < self.overlap
            && let Some(prev) = &g.previous
        {
            return prev.clone();
        }
        g.current.clone()
    }
}

pub(super) fn header_value(
    prefix: &str,
    f: &Fetched,
    source: &SecretRef,
) -> Result<HeaderValue, SecretError> {
    let mut raw = Zeroizing::new(Vec::with_capacity(
        prefix.len() + f.value.expose_secret().len(),
    ));
    raw.extend_from_slice(prefix.as_bytes());
    raw.extend_from_slice(f.value.expose_secret());
    let ok = raw
        .iter()
        .all(|&b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b));
    if !ok {
        return Err(SecretError::NotHeaderSafe(source.to_string()));
    }
    // Held over the zeroizing buffer itself, which is wiped when the last request using
    // this version is done with it.
    crate::zeroizing::sensitive_header(raw)
        .ok_or_else(|| SecretError::NotHeaderSafe(source.to_string()))
}

/// A static header value with its source, refreshed in the background.
pub(super) struct LiveHeader {
    source: SecretRef,
    prefix: String,
    pub(super) value: LiveValue<HeaderValue>,
}

impl LiveHeader {
    pub(super) fn load(
        source: &SecretRef,
        prefix: &str,
        overlap: Duration,
    ) -> Result<Self, SecretError> {
        Self::from_fetched(source, prefix, source.fetch()?, overlap)
    }

    /// The header of `f`, already read from `source`.
    pub(super) fn from_fetched(
        source: &SecretRef,
        prefix: &str,
        f: Fetched,
        overlap: Duration,
    ) -> Result<Self, SecretError> {
        let v = header_value(prefix, &f, source)?;
        Ok(Self {
            source: source.clone(),
            prefix: prefix.to_owned(),
            value: LiveValue::new(v, f.version, overlap),
        })
    }

    /// Re-reads the source; blocking.
    pub(super) fn refresh(&self) -> Result<bool, SecretError> {
        let f = self.source.fetch()?;
        if *f.version == *self.value.version() {
            return Ok(false);
        }
        let v = header_value(&self.prefix, &f, &self.source)?;
        self.value.replace(v, f.version);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header credential replaced by a new version, and dropped once no request uses it,
    /// leaves no copy of itself in the process's memory.
    #[test]
    fn a_header_credential_leaves_no_copy_in_memory_once_dropped() {
        const SECRET: &str = "header-credential-0000000000000000000000-tail-5e8d2a7c1b9f4036d7";
        let mut scanner = crate::zeroizing::freed::Scanner::new();
        let f = Fetched {
            value: crate::SecretBox::new(SECRET.as_bytes().into()),
            version: "1".into(),
        };
        let source = SecretRef::Env("HEADER_TEST".into());
        let live = LiveValue::new(
            header_value("Bearer ", &f, &source).unwrap(),
            "1".into(),
            Duration::ZERO,
        );
        drop(f);
        let sent = live.for_request(Instant::now()).value.clone();
        assert_eq!(sent.len(), "Bearer ".len() + SECRET.len());
        drop(sent);
        drop(live);
        assert!(
            !scanner.finds(crate::zeroizing::tail(SECRET)),
            "a copy of the header credential was left in memory"
        );
    }

    #[test]
    fn live_value_keeps_the_previous_version_for_earlier_requests_within_the_overlap() {
        let live = LiveValue::new(1, "v1".into(), Duration::from_secs(60));
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        live.replace(2, "v2".into());
        assert_eq!(live.for_request(before).value, 1);
        assert_eq!(live.for_request(Instant::now()).value, 2);
        let no_overlap = LiveValue::new(1, "v1".into(), Duration::from_millis(1));
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        no_overlap.replace(2, "v2".into());
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(no_overlap.for_request(before).value, 2);
    }

    /// A request that started before the last two rotations gets the version just before
    /// the current one, never one from two rotations back: the current and previous
    /// versions change together.
    #[test]
    fn a_request_during_a_rotation_never_gets_a_version_two_rotations_old() {
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let live = Arc::new(LiveValue::new(0u64, "0".into(), Duration::from_secs(600)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rotations = {
            let (live, stop) = (live.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    live.replace(n, n.to_string());
                }
            })
        };
        let deadline = Instant::now() + Duration::from_millis(500);
        let mut checked = 0u64;
        // For half a second, and for at least 1000 checks however little of it this thread
        // was given on a loaded machine.
        while Instant::now() < deadline || checked <= 1000 {
            let current = live.current().value;
            let got = live.for_request(started).value;
            assert!(
                got + 1 >= current,
                "got version {got} while {current} was current"
            );
            checked += 1;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        rotations.join().unwrap();
        assert!(checked > 1000, "{checked}");
    }
}
