//! The cache of last good answers a route falls back on when its upstream fails
//! (`fallback = { cache = true }`): one entry per route, caller, method and canonical path
//! with query, so that no caller is ever served another's answer. Each entry is sealed with
//! AES-256-GCM under the `[fallback]` key, with a random nonce and its full name as
//! additional data, so an entry read under another name does not open. The store is in the
//! process, bounded in entries and bytes (the oldest go first), shared by every
//! configuration the process loads; a restart empties it, and an entry sealed under an
//! earlier key (the key changed on a reload) simply does not open and is dropped.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
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
}

impl EntryName {
    pub fn new(route: &str, caller: &str, method: &Method, path_and_query: &str) -> Self {
        let mut bytes = Vec::with_capacity(route.len() + caller.len() + path_and_query.len() + 16);
        for part in [route, caller, method.as_str(), path_and_query] {
            // Lengths first, so that no two names run together into the same bytes.
            bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
        Self { bytes }
    }

    fn id(&self) -> [u8; 32] {
        let mut id = [0u8; 32];
        id.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, &self.bytes).as_ref());
        id
    }
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

struct Entry {
    seq: u64,
    stored: Instant,
    /// Nonce, then ciphertext and tag.
    sealed: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<[u8; 32], Entry>,
    /// Entry ids oldest first, with the sequence number they were stored under (a later
    /// store of the same name leaves its earlier place stale).
    order: VecDeque<(u64, [u8; 32])>,
    seq: u64,
    bytes: u64,
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

    /// Seals `answer` under `name` and keeps it, in place of any earlier one; the oldest
    /// entries go when the store is past its bounds.
    pub fn put(
        &self,
        settings: &FallbackSettings,
        name: &EntryName,
        answer: &Answer,
    ) -> Result<(), SealError> {
        let sealed = seal(&settings.key, name, answer)?;
        let size = sealed.len() as u64;
        if size > settings.max_total_bytes {
            return Ok(());
        }
        let id = name.id();
        let mut inner = self.lock();
        inner.seq += 1;
        let seq = inner.seq;
        let entry = Entry {
            seq,
            stored: Instant::now(),
            sealed,
        };
        if let Some(old) = inner.entries.insert(id, entry) {
            inner.bytes -= old.sealed.len() as u64;
        }
        inner.bytes += size;
        inner.order.push_back((seq, id));
        while inner.entries.len() > settings.max_entries || inner.bytes > settings.max_total_bytes {
            let Some((seq, id)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&id).is_some_and(|e| e.seq == seq)
                && let Some(gone) = inner.entries.remove(&id)
            {
                inner.bytes -= gone.sealed.len() as u64;
            }
        }
        if inner.order.len() > 2 * inner.entries.len() + 64 {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|(seq, id)| entries.get(id).is_some_and(|e| e.seq == *seq));
        }
        Ok(())
    }

    /// The answer kept under `name` and its age, when it is at most `max_age` old and
    /// opens under the key; one that does not open is dropped.
    pub fn get(
        &self,
        settings: &FallbackSettings,
        name: &EntryName,
        max_age: Duration,
    ) -> Option<(Answer, Duration)> {
        let id = name.id();
        let (sealed, age) = {
            let inner = self.lock();
            let entry = inner.entries.get(&id)?;
            let age = entry.stored.elapsed();
            if age > max_age {
                return None;
            }
            (entry.sealed.clone(), age)
        };
        match open(&settings.key, name, sealed) {
            Some(answer) => Some((answer, age)),
            None => {
                let mut inner = self.lock();
                if let Some(gone) = inner.entries.remove(&id) {
                    inner.bytes -= gone.sealed.len() as u64;
                }
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
            .put(&s, &name("alice", "/v1/x?a=1"), &answer("{\"a\":1}"))
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
            .put(&settings(1, 10, 1 << 20), &name("a", "/p"), &answer("x"))
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
                .put(&s, &name("a", &format!("/p{i}")), &answer("x"))
                .unwrap();
            // Stores of the same name again leave stale places that are skipped.
            store.put(&s, &name("a", "/p4"), &answer("y")).unwrap();
        }
        assert_eq!(store.len(), 3);
        assert!(store.get(&s, &name("a", "/p0"), Duration::MAX).is_none());
        assert!(store.get(&s, &name("a", "/p4"), Duration::MAX).is_some());
        // By bytes: each entry is more than 40 bytes, so two do not fit in 100.
        let s = settings(1, 100, 100);
        let store = FallbackStore::default();
        store.put(&s, &name("a", "/1"), &answer("x")).unwrap();
        store.put(&s, &name("a", "/2"), &answer("x")).unwrap();
        assert_eq!(store.len(), 1);
        assert!(store.get(&s, &name("a", "/2"), Duration::MAX).is_some());
    }

    #[test]
    fn keys_are_read_as_base64_or_hex() {
        assert!(key_bytes(&[b'a'; 64]).is_some());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(*key_bytes(b64.as_bytes()).unwrap(), [7u8; 32]);
        assert!(key_bytes(b"short").is_none());
    }
}
