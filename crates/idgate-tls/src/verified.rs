//! Certificate chains already verified against one set of trust bundles.
//!
//! A workload reconnects with the same SVID until it rotates, and verifying its chain
//! (an ECDSA or RSA signature per certificate, plus the parsing and path building around
//! them) is a large part of a handshake. Whether a presented chain verifies against a
//! bundle set is a pure function of three things: the chain's bytes, the bundles, and the
//! time. So the answer is remembered, and reused only while all three are unchanged:
//!
//! - the chain: the key is the SHA-256 of every presented certificate, each prefixed with
//!   its length, so a different leaf or a different list of intermediates is a miss;
//! - the bundles: the memory lives inside one [`crate::verifier::TrustBundles`], and any
//!   change to any bundle replaces that value, so every answer given under the old bundles
//!   is forgotten at once;
//! - the time: an entry keeps the window in which every presented certificate is valid
//!   (the latest `notBefore` to the earliest `notAfter`) and is used only inside it; outside
//!   it the chain goes through the full verification again, which gives the precise reason.
//!
//! That purity holds because the domain verifiers are built without revocation lists
//! (`verifier::build_domain_verifier`): a verifier that consulted a CRL would have to be
//! replaced, with its bundle set, whenever the list changed.
//!
//! Only successes are remembered. What is never skipped is the handshake's proof of
//! possession: the client's signature over the transcript with the leaf's key is verified
//! on every connection, so a copied certificate without its key is still refused.

use std::collections::HashMap;
use std::sync::Mutex;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

/// How many chains one bundle set remembers. Each entry is 48 bytes plus the map's own;
/// a deployment has one chain per workload instance and SVID rotation.
const CAPACITY: usize = 4096;

/// The SHA-256 of a presented chain.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ChainKey([u8; 32]);

impl ChainKey {
    pub(crate) fn of(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for cert in std::iter::once(end_entity).chain(intermediates) {
            // The length first, so that no two different lists hash the same bytes.
            ctx.update(&(cert.len() as u64).to_be_bytes());
            ctx.update(cert.as_ref());
        }
        let mut key = [0; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        Self(key)
    }
}

/// Seconds since the Unix epoch, inclusive at both ends, as a WebPKI verifier compares them.
#[derive(Clone, Copy)]
struct Window {
    not_before: u64,
    not_after: u64,
}

impl Window {
    fn holds(self, now: UnixTime) -> bool {
        let now = now.as_secs();
        self.not_before <= now && now <= self.not_after
    }

    /// Where every certificate of the chain is valid, or `None` if one cannot be read.
    fn of_chain(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Option<Self> {
        let mut window = Self {
            not_before: 0,
            not_after: u64::MAX,
        };
        for cert in std::iter::once(end_entity).chain(intermediates) {
            let (_, cert) = X509Certificate::from_der(cert.as_ref()).ok()?;
            let validity = cert.validity();
            // A `notBefore` before 1970 is no constraint today; a `notAfter` before 1970 is
            // an expired certificate, never remembered.
            let not_before = u64::try_from(validity.not_before.timestamp()).unwrap_or(0);
            let not_after = u64::try_from(validity.not_after.timestamp()).ok()?;
            window.not_before = window.not_before.max(not_before);
            window.not_after = window.not_after.min(not_after);
        }
        Some(window)
    }
}

/// The chains that verified against the bundle set that owns this value.
pub(crate) struct VerifiedChains {
    entries: Mutex<HashMap<ChainKey, Window>>,
    capacity: usize,
    /// Read by the tests only, to tell a remembered answer from a new verification.
    #[cfg(test)]
    hits: AtomicU64,
}

impl Default for VerifiedChains {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl VerifiedChains {
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
            #[cfg(test)]
            hits: AtomicU64::new(0),
        }
    }

    /// Whether the chain verified before under these bundles and is still valid at `now`.
    pub(crate) fn holds(&self, key: &ChainKey, now: UnixTime) -> bool {
        let held = self.lock().get(key).is_some_and(|window| window.holds(now));
        #[cfg(test)]
        if held {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        held
    }

    /// Remembers a chain that has just verified at `now`.
    pub(crate) fn remember(
        &self,
        key: ChainKey,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) {
        let Some(window) = Window::of_chain(end_entity, intermediates) else {
            return;
        };
        if !window.holds(now) {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            // Expired chains go first; if every entry is still valid, the memory starts
            // over (a bounded map, rebuilt by the next handshakes at their full price).
            entries.retain(|_, w| w.holds(now));
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, window);
    }

    /// How many handshakes were spared the chain verification.
    #[cfg(test)]
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ChainKey, Window>> {
        // The map holds plain values and no code that can panic runs under the lock.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
