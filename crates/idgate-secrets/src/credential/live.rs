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
    current: ArcSwap<Versioned<T>>,
    previous: ArcSwap<Option<Arc<Versioned<T>>>>,
    overlap: Duration,
}

impl<T> LiveValue<T> {
    pub(crate) fn new(value: T, version: String, overlap: Duration) -> Self {
        Self {
            current: ArcSwap::from_pointee(Versioned {
                value,
                version: version.into(),
                since: Instant::now(),
            }),
            previous: ArcSwap::from_pointee(None),
            overlap,
        }
    }

    pub(crate) fn version(&self) -> Arc<str> {
        self.current.load().version.clone()
    }

    pub(crate) fn replace(&self, value: T, version: String) {
        let old = self.current.swap(Arc::new(Versioned {
            value,
            version: version.into(),
            since: Instant::now(),
        }));
        self.previous.store(Arc::new(Some(old)));
    }

    /// The value for a request that started at `started`.
    pub(crate) fn for_request(&self, started: Instant) -> Arc<Versioned<T>> {
        let cur = self.current.load_full();
        if started < cur.since
            && cur.since.elapsed() < self.overlap
            && let Some(prev) = self.previous.load().as_ref()
        {
            return prev.clone();
        }
        cur
    }
}

fn header_value(prefix: &str, f: &Fetched, source: &SecretRef) -> Result<HeaderValue, SecretError> {
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
    let mut v = HeaderValue::from_bytes(&raw)
        .map_err(|_| SecretError::NotHeaderSafe(source.to_string()))?;
    // Never indexed by HPACK, hidden from Debug.
    v.set_sensitive(true);
    Ok(v)
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
        let f = source.fetch()?;
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
}
