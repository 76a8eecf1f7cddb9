//! The cache of last good answers a route falls back on when its upstream fails
//! (`fallback = { cache = true }`): one entry per route, caller, method and canonical path
//! with query, so that no caller is ever served another's answer. Each entry is sealed with
//! AES-256-GCM under the `[fallback]` key, with a random nonce and its full name as
//! additional data, so an entry read under another name does not open. The store is in the
//! process, shared by every configuration the process loads; a restart empties it, and an
//! entry sealed under an earlier key (the key changed on a reload) simply does not open and
//! is dropped. Each entry is kept for its route's `max_age`: one found older is dropped,
//! every store sweeps a few past their time, and a periodic [`FallbackStore::sweep`] the
//! rest (also those of routes a reload removed), even when nothing is stored. The
//! store is bounded in entries and bytes, shared fairly among callers: past a bound, the
//! caller holding the most gives way, its oldest entry first.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher as _, RandomState};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use idgate_config::FallbackConfig;
use idgate_secrets::SecretError;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::ExposeSecret as _;
use zeroize::Zeroizing;

/// Why the `[fallback]` key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FallbackKeyError {
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("not an AES-256 key: 32 bytes in base64 (44 characters) or hex (64 digits)")]
    Malformed,
}

/// The `[fallback]` settings put into use: the sealing key and the store's bounds.
pub struct FallbackSettings {
    key: LessSafeKey,
    pub max_entries: usize,
    pub max_total_bytes: u64,
}

impl fmt::Debug for FallbackSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackSettings")
            .field("key", &"<redacted>")
            .field("max_entries", &self.max_entries)
            .field("max_total_bytes", &self.max_total_bytes)
            .finish()
    }
}

impl FallbackSettings {
    /// Reads the key. Blocking (files, tokens, Vault).
    pub fn load(cfg: &FallbackConfig) -> Result<Self, FallbackKeyError> {
        let fetched = cfg.key.fetch()?;
        let bytes = key_bytes(fetched.value.expose_secret()).ok_or(FallbackKeyError::Malformed)?;
        Self::from_key(&bytes, cfg.max_entries, cfg.max_total_bytes)
    }

    fn from_key(
        key: &[u8; 32],
        max_entries: usize,
        max_total_bytes: u64,
    ) -> Result<Self, FallbackKeyError> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| FallbackKeyError::Malformed)?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            max_entries,
            max_total_bytes,
        })
    }
}

/// 32 bytes as base64 or hexadecimal text, or raw (from a token's wrapped value).
fn key_bytes(raw: &[u8]) -> Option<Zeroizing<[u8; 32]>> {
    let mut out = Zeroizing::new([0u8; 32]);
    if raw.len() == 32 && std::str::from_utf8(raw).is_err() {
        out.copy_from_slice(raw);
        return Some(out);
    }
    let text = std::str::from_utf8(raw).ok()?.trim();
    let decoded = Zeroizing::new(if text.len() == 64 {
        idgate_codec::hex::decode(text)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?
    });
    (decoded.len() == 32).then(|| {
        out.copy_from_slice(&decoded);
        out
    })
}

/// What names one cached answer: the route, the caller, the method and the canonical path
/// with its query. Its bytes are the entry's additional data; their digest is its key in
/// the store, so that the store holds no caller name in the clear.
pub struct EntryName {
    bytes: Vec<u8>,
    /// The caller's tag: the store's bounds are shared out by it.
    caller: u64,
}

impl EntryName {
    pub fn new(route: &str, caller: &str, method: &Method, path_and_query: &str) -> Self {
        let mut bytes = Vec::with_capacity(route.len() + caller.len() + path_and_query.len() + 16);
        for part in [route, caller, method.as_str(), path_and_query] {
            // Lengths first, so that no two names run together into the same bytes.
            bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
        Self {
            bytes,
            caller: caller_tag(caller),
        }
    }

    fn id(&self) -> [u8; 32] {
        let mut id = [0u8; 32];
        id.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.bytes).as_ref());
        id
    }
}

/// A caller's tag in the store: its name hashed under a key drawn once per process, so that
/// the store holds no caller name, nor a digest that could be matched against a list of
/// names.
fn caller_tag(caller: &str) -> u64 {
    static KEY: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    KEY.hash_one(caller)
}

/// A cached answer in the clear: its headers and body (its status is 200).
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why an answer could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("no randomness for a nonce")]
    Random,
    #[error("sealing failed")]
    Seal,
}

/// Expired entries a store removes at most, besides keeping its own: the cost of a store
/// stays bounded, and expired entries still go as answers are kept.
const SWEEP_PER_PUT: usize = 8;

/// Expired entries one periodic sweep removes at most, and how many while it holds the
/// lock at once: a sweep never holds up the requests using the store for long.
const SWEEP_PER_TICK: usize = 4096;
const SWEEP_PER_LOCK: usize = 64;

type Id = [u8; 32];

struct Entry {
    seq: u64,
    stored: Instant,
    /// `max_age` of its route when it was stored, past `stored`; none when that is beyond
    /// the clock's range.
    expires: Option<Instant>,
    caller: u64,
    /// Nonce, then ciphertext and tag.
    sealed: Vec<u8>,
}

/// One caller's entries: how many, how large, and their ids oldest first, each with the
/// sequence number it was stored under (a later store of the same name, or a removal,
/// leaves a place stale; stale places are skipped).
#[derive(Default)]
struct Share {
    order: VecDeque<(u64, Id)>,
    entries: usize,
    bytes: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Id, Entry>,
    shares: HashMap<u64, Share>,
    /// The callers by entries held, and by bytes held: when the store is past a bound,
    /// the caller holding the most gives way.
    by_entries: BTreeSet<(usize, u64)>,
    by_bytes: BTreeSet<(u64, u64)>,
    /// Entries by expiry, soonest first, with their sequence numbers (stale ones skipped).
    expiry: BinaryHeap<Reverse<(Instant, u64, Id)>>,
    seq: u64,
    bytes: u64,
}

impl Inner {
    /// Counts `bytes` in (or out of) `caller`'s share.
    fn count(&mut self, caller: u64, bytes: u64, added: bool) {
        let share = self.shares.entry(caller).or_default();
        self.by_entries.remove(&(share.entries, caller));
        self.by_bytes.remove(&(share.bytes, caller));
        if added {
            share.entries += 1;
            share.bytes += bytes;
            self.bytes += bytes;
        } else {
            share.entries = share.entries.saturating_sub(1);
            share.bytes = share.bytes.saturating_sub(bytes);
            self.bytes = self.bytes.saturating_sub(bytes);
        }
        if share.entries == 0 {
            self.shares.remove(&caller);
        } else {
            self.by_entries.insert((share.entries, caller));
            self.by_bytes.insert((share.bytes, caller));
        }
    }

    fn insert(&mut self, id: Id, entry: Entry) {
        let (seq, caller, size) = (entry.seq, entry.caller, entry.sealed.len() as u64);
        if let Some(at) = entry.expires {
            self.expiry.push(Reverse((at, seq, id)));
        }
        if let Some(old) = self.entries.insert(id, entry) {
            self.count(old.caller, old.sealed.len() as u64, false);
        }
        self.count(caller, size, true);
        if let Some(share) = self.shares.get_mut(&caller) {
            share.order.push_back((seq, id));
        }
    }

    /// Removes the entry `id`, if it is still the one stored under `seq`.
    fn remove(&mut self, id: &Id, seq: u64) -> bool {
        if self.entries.get(id).is_none_or(|e| e.seq != seq) {
            return false;
        }
        match self.entries.remove(id) {
            Some(gone) => {
                self.count(gone.caller, gone.sealed.len() as u64, false);
                true
            }
            None => false,
        }
    }

    /// Removes `caller`'s oldest entry; false when it has none.
    fn evict_oldest_of(&mut self, caller: u64) -> bool {
        loop {
            let Some((seq, id)) = self
                .shares
                .get_mut(&caller)
                .and_then(|s| s.order.pop_front())
            else {
                return false;
            };
            if self.remove(&id, seq) {
                return true;
            }
        }
    }

    /// Removes up to `most` entries past their expiry, soonest first; tells whether more
    /// are left.
    fn sweep(&mut self, now: Instant, most: usize) -> bool {
        for _ in 0..most {
            match self.expiry.peek() {
                Some(Reverse((at, _, _))) if *at <= now => {}
                _ => return false,
            }
            if let Some(Reverse((_, seq, id))) = self.expiry.pop() {
                self.remove(&id, seq);
            }
        }
        self.expiry
            .peek()
            .is_some_and(|Reverse((at, _, _))| *at <= now)
    }

    /// Drops stale places once they outnumber the live ones: in the expiry heap, and in
    /// `caller`'s order (the caller that stored last, whose places grew).
    fn compact(&mut self, caller: u64) {
        let Self {
            entries,
            shares,
            expiry,
            ..
        } = self;
        if expiry.len() > 2 * entries.len() + 64 {
            expiry.retain(|Reverse((_, seq, id))| entries.get(id).is_some_and(|e| e.seq == *seq));
        }
        if let Some(share) = shares.get_mut(&caller)
            && share.order.len() > 2 * share.entries + 16
        {
            share
                .order
                .retain(|(seq, id)| entries.get(id).is_some_and(|e| e.seq == *seq));
        }
    }
}

/// The in-process store of sealed answers.
#[derive(Default)]
pub struct FallbackStore {
    inner: Mutex<Inner>,
}

impl fmt::Debug for FallbackStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackStore")
            .field("entries", &self.len())
            .finish()
    }
}

impl FallbackStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many answers the store holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the store holds no answer.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes the entries past their time at `now`, up to a bounded number per call (run
    /// every few seconds): answers are kept no longer than their `max_age` even when no
    /// other is stored or looked up.
    pub fn sweep(&self, now: Instant) {
        for _ in 0..SWEEP_PER_TICK / SWEEP_PER_LOCK {
            if !self.lock().sweep(now, SWEEP_PER_LOCK) {
                return;
            }
        }
    }

    /// Seals `answer` under `name` and keeps it for `max_age` (its route's), in place of
    /// any earlier one. A few entries past their time go as it is kept. When the store is
    /// past its bounds, the caller holding the most entries (or bytes) gives way, its
    /// oldest entry first: a caller's answers never push out those of a caller that holds
    /// fewer, so no one caller can empty the store of the others'.
    pub fn put(
        &self,
        settings: &FallbackSettings,
        name: &EntryName,
        answer: &Answer,
        max_age: Duration,
    ) -> Result<(), SealError> {
        self.put_at(Instant::now(), settings, name, answer, max_age)
    }

    fn put_at(
        &self,
        now: Instant,
        settings: &FallbackSettings,
        name: &EntryName,
        answer: &Answer,
        max_age: Duration,
    ) -> Result<(), SealError> {
        let sealed = seal(&settings.key, name, answer)?;
        if sealed.len() as u64 > settings.max_total_bytes {
            return Ok(());
        }
        let id = name.id();
        let mut inner = self.lock();
        inner.sweep(now, SWEEP_PER_PUT);
        inner.seq += 1;
        let entry = Entry {
            seq: inner.seq,
            stored: now,
            expires: now.checked_add(max_age),
            caller: name.caller,
            sealed,
        };
        inner.insert(id, entry);
        while inner.entries.len() > settings.max_entries {
            let Some(&(_, largest)) = inner.by_entries.last() else {
                break;
            };
            if !inner.evict_oldest_of(largest) {
                break;
            }
        }
        while inner.bytes > settings.max_total_bytes {
            let Some(&(_, largest)) = inner.by_bytes.last() else {
                break;
            };
            if !inner.evict_oldest_of(largest) {
                break;
            }
        }
        inner.compact(name.caller);
        Ok(())
    }

    /// The answer kept under `name` and its age, when it is at most `max_age` old (and
    /// within the `max_age` it was kept for) and opens under the key. One too old or that
    /// does not open is dropped.
    pub fn get(
        &self,
        settings: &FallbackSettings,
        name: &EntryName,
        max_age: Duration,
    ) -> Option<(Answer, Duration)> {
        self.get_at(Instant::now(), settings, name, max_age)
    }

    fn get_at(
        &self,
        now: Instant,
        settings: &FallbackSettings,
        name: &EntryName,
        max_age: Duration,
    ) -> Option<(Answer, Duration)> {
        let id = name.id();
        let (sealed, age, seq) = {
            let mut inner = self.lock();
            let entry = inner.entries.get(&id)?;
            let (age, seq) = (now.saturating_duration_since(entry.stored), entry.seq);
            if age > max_age || entry.expires.is_some_and(|at| now >= at) {
                inner.remove(&id, seq);
                return None;
            }
            (entry.sealed.clone(), age, seq)
        };
        match open(&settings.key, name, sealed) {
            Some(answer) => Some((answer, age)),
            None => {
                self.lock().remove(&id, seq);
                None
            }
        }
    }
}

fn seal(key: &LessSafeKey, name: &EntryName, answer: &Answer) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| SealError::Random)?;
    let mut buf = Vec::with_capacity(NONCE_LEN + 64 + answer.body.len() + 16);
    buf.extend_from_slice(&nonce);
    encode(answer, &mut buf);
    let mut plain = buf.split_off(NONCE_LEN);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(&name.bytes),
        &mut plain,
    )
    .map_err(|_| SealError::Seal)?;
    buf.extend_from_slice(&plain);
    Ok(buf)
}

fn open(key: &LessSafeKey, name: &EntryName, mut sealed: Vec<u8>) -> Option<Answer> {
    if sealed.len() < NONCE_LEN {
        return None;
    }
    let mut rest = sealed.split_off(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(&sealed).ok()?;
    let plain = key
        .open_in_place(nonce, Aad::from(&name.bytes), &mut rest)
        .ok()?;
    decode(plain)
}

/// The header count, each header as its name's and value's lengths and bytes, then the body.
fn encode(answer: &Answer, out: &mut Vec<u8>) {
    out.extend_from_slice(&(answer.headers.len() as u32).to_be_bytes());
    for (name, value) in &answer.headers {
        out.extend_from_slice(&(name.as_str().len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&answer.body);
}

fn decode(mut b: &[u8]) -> Option<Answer> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = b.split_at_checked(n)?;
        *b = tail;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        let bytes: [u8; 4] = take(b, 4)?.try_into().ok()?;
        usize::try_from(u32::from_be_bytes(bytes)).ok()
    }
    let count = len(&mut b)?;
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let n = len(&mut b)?;
        let name = HeaderName::from_bytes(take(&mut b, n)?).ok()?;
        let n = len(&mut b)?;
        let value = HeaderValue::from_bytes(take(&mut b, n)?).ok()?;
        headers.append(name, value);
    }
    Some(Answer {
        headers,
        body: Bytes::copy_from_slice(b),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings(key: u8, max_entries: usize, max_total_bytes: u64) -> FallbackSettings {
        FallbackSettings::from_key(&[key; 32], max_entries, max_total_bytes).unwrap()
    }

    fn answer(body: &'static str) -> Answer {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-two", HeaderValue::from_static("a"));
        headers.append("x-two", HeaderValue::from_static("b"));
        Answer {
            headers,
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn name(caller: &str, pq: &str) -> EntryName {
        EntryName::new("r", caller, &Method::GET, pq)
    }

    #[test]
    fn an_answer_comes_back_for_its_own_name_only() {
        let s = settings(1, 10, 1 << 20);
        let store = FallbackStore::default();
        store
            .put(
                &s,
                &name("alice", "/v1/x?a=1"),
                &answer("{\"a\":1}"),
                Duration::MAX,
            )
            .unwrap();
        let (got, age) = store
            .get(&s, &name("alice", "/v1/x?a=1"), Duration::from_secs(60))
            .unwrap();
        assert_eq!(got, answer("{\"a\":1}"));
        assert!(age < Duration::from_secs(5));
        for other in [
            name("bob", "/v1/x?a=1"),
            name("alice", "/v1/x?a=2"),
            EntryName::new("r", "alice", &Method::HEAD, "/v1/x?a=1"),
            EntryName::new("r2", "alice", &Method::GET, "/v1/x?a=1"),
        ] {
            assert!(store.get(&s, &other, Duration::from_secs(60)).is_none());
        }
        // Too old for the route's max_age.
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            store
                .get(&s, &name("alice", "/v1/x?a=1"), Duration::from_millis(1))
                .is_none()
        );
    }

    #[test]
    fn sealed_entries_hold_no_plaintext_and_open_under_their_key_and_name_only() {
        let s = settings(1, 10, 1 << 20);
        let n = name("alice", "/p");
        let sealed = seal(&s.key, &n, &answer("secret-document-number")).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        // Random nonces: the same answer seals differently.
        assert_ne!(
            sealed,
            seal(&s.key, &n, &answer("secret-document-number")).unwrap()
        );
        assert!(open(&s.key, &n, sealed.clone()).is_some());
        assert!(open(&s.key, &name("bob", "/p"), sealed.clone()).is_none());
        assert!(open(&settings(2, 10, 1 << 20).key, &n, sealed.clone()).is_none());
        let mut flipped = sealed;
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(open(&s.key, &n, flipped).is_none());
    }

    #[test]
    fn an_entry_under_an_earlier_key_is_dropped() {
        let store = FallbackStore::default();
        store
            .put(
                &settings(1, 10, 1 << 20),
                &name("a", "/p"),
                &answer("x"),
                Duration::MAX,
            )
            .unwrap();
        let later = settings(2, 10, 1 << 20);
        assert!(store.get(&later, &name("a", "/p"), Duration::MAX).is_none());
        assert!(store.is_empty());
    }

    #[test]
    fn the_store_keeps_to_its_bounds_dropping_the_oldest() {
        let s = settings(1, 3, 1 << 20);
        let store = FallbackStore::default();
        for i in 0..5 {
            store
                .put(
                    &s,
                    &name("a", &format!("/p{i}")),
                    &answer("x"),
                    Duration::MAX,
                )
                .unwrap();
            // Stores of the same name again leave stale places that are skipped.
            store
                .put(&s, &name("a", "/p4"), &answer("y"), Duration::MAX)
                .unwrap();
        }
        assert_eq!(store.len(), 3);
        assert!(store.get(&s, &name("a", "/p0"), Duration::MAX).is_none());
        assert!(store.get(&s, &name("a", "/p4"), Duration::MAX).is_some());
        // By bytes: each entry is more than 40 bytes, so two do not fit in 100.
        let s = settings(1, 100, 100);
        let store = FallbackStore::default();
        store
            .put(&s, &name("a", "/1"), &answer("x"), Duration::MAX)
            .unwrap();
        store
            .put(&s, &name("a", "/2"), &answer("x"), Duration::MAX)
            .unwrap();
        assert_eq!(store.len(), 1);
        assert!(store.get(&s, &name("a", "/2"), Duration::MAX).is_some());
    }

    #[test]
    fn an_entry_found_past_max_age_is_dropped() {
        let s = settings(1, 10, 1 << 20);
        let store = FallbackStore::default();
        let t0 = Instant::now();
        let n = name("alice", "/p");
        store
            .put_at(t0, &s, &n, &answer("x"), Duration::from_secs(600))
            .unwrap();
        let later = t0 + Duration::from_secs(61);
        assert!(
            store
                .get_at(later, &s, &n, Duration::from_secs(600))
                .is_some()
        );
        // The route's max_age is now a minute (a reload shortened it): too old, and gone.
        assert!(
            store
                .get_at(later, &s, &n, Duration::from_secs(60))
                .is_none()
        );
        assert!(store.is_empty());
    }

    #[test]
    fn an_entry_is_kept_no_longer_than_the_max_age_it_was_stored_for() {
        let s = settings(1, 10, 1 << 20);
        let store = FallbackStore::default();
        let t0 = Instant::now();
        let n = name("alice", "/p");
        store
            .put_at(t0, &s, &n, &answer("x"), Duration::from_secs(60))
            .unwrap();
        let later = t0 + Duration::from_secs(61);
        assert!(
            store
                .get_at(later, &s, &n, Duration::from_secs(600))
                .is_none()
        );
        assert!(store.is_empty());
    }

    #[test]
    fn entries_past_their_time_are_swept_as_others_are_kept() {
        let s = settings(1, 1000, 1 << 20);
        let store = FallbackStore::default();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        // Twenty entries no one looks up again (their route was removed, say), and one
        // kept for an hour.
        for i in 0..20 {
            let n = name("alice", &format!("/old{i}"));
            store.put_at(t0, &s, &n, &answer("x"), minute).unwrap();
        }
        store
            .put_at(t0, &s, &name("bob", "/hour"), &answer("x"), 60 * minute)
            .unwrap();
        assert_eq!(store.len(), 21);
        // Each later store sweeps a few of the expired ones, at most a bounded number.
        let later = t0 + 2 * minute;
        store
            .put_at(later, &s, &name("carol", "/a"), &answer("x"), minute)
            .unwrap();
        assert_eq!(store.len(), 22 - SWEEP_PER_PUT);
        for i in 0..3 {
            let n = name("carol", &format!("/b{i}"));
            store.put_at(later, &s, &n, &answer("x"), minute).unwrap();
        }
        // All twenty gone; the hour's entry and the new ones stay.
        assert_eq!(store.len(), 5);
        assert!(
            store
                .get_at(later, &s, &name("bob", "/hour"), 60 * minute)
                .is_some()
        );
    }

    #[test]
    fn an_entry_past_max_age_is_gone_without_a_later_put() {
        let s = settings(1, 100_000, 1 << 30);
        let store = FallbackStore::default();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        store
            .put_at(t0, &s, &name("alice", "/p"), &answer("x"), minute)
            .unwrap();
        store
            .put_at(t0, &s, &name("bob", "/hour"), &answer("x"), 60 * minute)
            .unwrap();
        // Before its time, a sweep leaves it.
        store.sweep(t0 + minute - Duration::from_secs(1));
        assert_eq!(store.len(), 2);
        // Past it, the sweep alone removes it: nothing else was stored or looked up.
        store.sweep(t0 + minute);
        assert_eq!(store.len(), 1);
        assert!(!store.lock().shares.contains_key(&caller_tag("alice")));

        // Many at once go over a few sweeps, each bounded.
        for i in 0..SWEEP_PER_TICK + 10 {
            let n = name("carol", &format!("/c{i}"));
            store.put_at(t0, &s, &n, &answer("x"), minute).unwrap();
        }
        let later = t0 + 2 * minute;
        store.sweep(later);
        assert_eq!(store.len(), 11);
        store.sweep(later);
        assert_eq!(store.len(), 1);
        assert!(
            store
                .get_at(later, &s, &name("bob", "/hour"), 60 * minute)
                .is_some()
        );
    }

    #[test]
    fn one_caller_cannot_push_out_the_entries_of_the_others() {
        let s = settings(1, 10, 1 << 20);
        let store = FallbackStore::default();
        for i in 0..3 {
            store
                .put(
                    &s,
                    &name("bob", &format!("/b{i}")),
                    &answer("x"),
                    Duration::MAX,
                )
                .unwrap();
        }
        store
            .put(&s, &name("carol", "/c"), &answer("x"), Duration::MAX)
            .unwrap();
        // Alice stores a hundred answers: past the bound, she gives way to herself.
        for i in 0..100 {
            store
                .put(
                    &s,
                    &name("alice", &format!("/a{i}")),
                    &answer("x"),
                    Duration::MAX,
                )
                .unwrap();
        }
        assert_eq!(store.len(), 10);
        for n in [name("bob", "/b0"), name("bob", "/b2"), name("carol", "/c")] {
            assert!(store.get(&s, &n, Duration::MAX).is_some());
        }
        // Her newest six are kept, her older ones went.
        assert!(
            store
                .get(&s, &name("alice", "/a99"), Duration::MAX)
                .is_some()
        );
        assert!(
            store
                .get(&s, &name("alice", "/a94"), Duration::MAX)
                .is_some()
        );
        assert!(
            store
                .get(&s, &name("alice", "/a93"), Duration::MAX)
                .is_none()
        );

        // By bytes too: her large answers do not push out Bob's small one.
        let s = settings(1, 1000, 2000);
        let store = FallbackStore::default();
        store
            .put(&s, &name("bob", "/small"), &answer("x"), Duration::MAX)
            .unwrap();
        let large = Answer {
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'a'; 600]),
        };
        for i in 0..10 {
            store
                .put(&s, &name("alice", &format!("/l{i}")), &large, Duration::MAX)
                .unwrap();
        }
        assert!(
            store
                .get(&s, &name("bob", "/small"), Duration::MAX)
                .is_some()
        );
        assert!(
            store
                .get(&s, &name("alice", "/l9"), Duration::MAX)
                .is_some()
        );
        assert!(store.len() <= 4, "{}", store.len());
    }

    #[test]
    fn keys_are_read_as_base64_or_hex() {
        assert!(key_bytes(&[b'a'; 64]).is_some());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(*key_bytes(b64.as_bytes()).unwrap(), [7u8; 32]);
        assert!(key_bytes(b"short").is_none());
    }
}
