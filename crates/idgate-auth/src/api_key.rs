//! Caller API keys: their format, keyed hashing, and verification against a table kept in
//! step with the store.
//!
//! A key reads `idg_<id>_<secret>`:
//! - `idg_`, a fixed prefix, so that secret scanners and [`key_in_query`] recognise a key;
//! - `<id>`, 80 random bits in lowercase base32 (16 characters): the public id the key is
//!   looked up by, shown by `idgate keys list`;
//! - `<secret>`, 256 random bits in lowercase base32 (52 characters).
//!
//! Both parts come from the operating system's CSPRNG (`ring::rand::SystemRandom`). The store
//! keeps only HMAC-SHA256 of the whole key, keyed with a server-side pepper (a secret
//! reference, `file:`, `env:` or `pkcs11:`), so a copy of the database alone can neither be
//! used nor brute-forced offline. The key is printed once, when it is created.
//!
//! Each record also carries a tag over the fields that grant access (its id, name, hash,
//! pepper id, scopes, creation, expiry and binding): HMAC-SHA256 keyed with a key derived
//! from the pepper under a label of its own (see [`Pepper::seal`]). Whoever can write the
//! store but does not hold the pepper can then neither widen a key (more scopes, another
//! name, no binding, no expiry) nor add one; a record whose tag is missing or does not
//! verify is refused. Revocation and rotation only take access away and stay outside the
//! tag: a store writer can undo them, as it could put back the record as it was before
//! (a tag proves who wrote a record, not that it is the latest).
//!
//! A presented key is looked up by its id and its HMAC compared in constant time. Every way
//! a key can be wrong (malformed, unknown, wrong secret, revoked, expired, a record that
//! does not verify) is the same [`AuthFailure::InvalidApiKey`] to the caller; the log says
//! which, by key id.
//!
//! A running gateway re-reads the store every `reload_interval` (at most one second) when it
//! changed, so a revocation takes effect without a restart.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use idgate_secrets::{ExposeSecret, SecretBox, SecretError, SecretRef, SecretString};
use idgate_store::{
    AnyApiKeyStore, ApiKeyStore, RedbStore, StoreError, StoreVersion, StoredKey, block_on,
};
use idgate_tls::SpiffeId;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::caller::ApiKeyIdentity;
use crate::failure::AuthFailure;

mod presented;

pub use presented::{idgate_key_in_query, key_in_query, presented_key};

/// Every idgate API key starts with this.
pub const KEY_PREFIX: &str = "idg_";
const ID_BYTES: usize = 10;
const SECRET_BYTES: usize = 32;
/// Base32 characters of the id (80 bits) and of the secret (256 bits, 4 bits of padding).
const ID_CHARS: usize = 16;
const SECRET_CHARS: usize = 52;
/// The length of a whole key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + ID_CHARS + 1 + SECRET_CHARS;

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why keys cannot be made or verified. Never carries a key or a pepper.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    #[error("cannot read the pepper: {source}")]
    Pepper {
        reference: String,
        #[source]
        source: SecretError,
    },
    #[error(
        "pepper {reference}: {len} bytes is too short; use at least {min} random bytes (for example `openssl rand -base64 32`)"
    )]
    PepperTooShort {
        reference: String,
        len: usize,
        min: usize,
    },
    #[error("invalid key name {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    InvalidName(String),
    #[error(
        "invalid scope {0:?}: use 1 to 128 visible ASCII characters other than '\"', '\\\\' and ','"
    )]
    InvalidScope(String),
    #[error("the system random number generator failed")]
    Random,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The server-side secret API key hashes are keyed with.
///
/// Held as the HMAC key ring derives from it (the hash states after the key's inner and
/// outer pads), so a request's key is hashed without first hashing the pepper again; the
/// bytes it was read from are zeroized when `new` returns.
pub struct Pepper {
    key: hmac::Key,
    /// Tags records (see [`Pepper::seal`]): HMAC(pepper, [`RECORD_KEY_LABEL`]), never the
    /// pepper itself, so that a key hash and a record tag can never stand for each other.
    record_key: hmac::Key,
    id: String,
}

/// What the record-tagging key is derived under. Key hashes are over keys, which start
/// with [`KEY_PREFIX`]; the labels do not.
const RECORD_KEY_LABEL: &[u8] = b"idgate api key record tag key v1";
/// What a record's tagged bytes start with.
const RECORD_TAG_CONTEXT: &[u8] = b"idgate api key record v1\0";

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pepper")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Pepper {
    /// The shortest pepper accepted, in bytes.
    pub const MIN_LEN: usize = 32;

    /// A pepper from its bytes; `reference` names where they came from, for errors.
    pub fn new(bytes: SecretBox<[u8]>, reference: &str) -> Result<Self, ApiKeyError> {
        let len = bytes.expose_secret().len();
        if len < Self::MIN_LEN {
            return Err(ApiKeyError::PepperTooShort {
                reference: reference.to_owned(),
                len,
                min: Self::MIN_LEN,
            });
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, bytes.expose_secret());
        let tag = hmac::sign(&key, b"idgate api key pepper id");
        let id = idgate_codec::hex::encode(&tag.as_ref()[..8]);
        let derived = Zeroizing::new(hmac::sign(&key, RECORD_KEY_LABEL).as_ref().to_vec());
        let record_key = hmac::Key::new(hmac::HMAC_SHA256, &derived);
        Ok(Self {
            key,
            record_key,
            id,
        })
    }

    /// Reads the pepper from a secret reference. Blocking (file, HSM).
    pub fn from_ref(reference: &SecretRef) -> Result<Self, ApiKeyError> {
        let fetched = reference.fetch().map_err(|source| ApiKeyError::Pepper {
            reference: reference.to_string(),
            source,
        })?;
        Self::new(fetched.value, &reference.to_string())
    }

    /// A public fingerprint of the pepper, recorded with each key: HMAC of a fixed label.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The keyed hash of a whole key, as stored.
    pub fn hash(&self, key: &str) -> [u8; 32] {
        let tag = hmac::sign(&self.key, key.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// The tag of `record`: HMAC-SHA256, under the record-tagging key, of the fields that
    /// grant access (see [`granting_fields`]). Whatever `record.tag` holds is ignored.
    pub fn seal(&self, record: &StoredKey) -> [u8; 32] {
        let tag = hmac::sign(&self.record_key, &granting_fields(record));
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `record` carries the tag this pepper makes of its fields as they are now.
    /// Compared in constant time.
    pub fn vouches_for(&self, record: &StoredKey) -> bool {
        record.tag.is_some_and(|tag| {
            hmac::verify(&self.record_key, &granting_fields(record), &tag).is_ok()
        })
    }
}

/// The bytes a record's tag covers: every field that grants or widens access, each with
/// its length (or a presence byte) before it, so that no two records read the same. The
/// fields that only take access away (`revoked_at`, `replaced_by`, `grace_until`) are left
/// out: the store writes them without the pepper.
fn granting_fields(k: &StoredKey) -> Vec<u8> {
    fn bytes(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u64).to_be_bytes());
        out.extend_from_slice(b);
    }
    fn secs(t: SystemTime) -> [u8; 8] {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .to_be_bytes()
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(RECORD_TAG_CONTEXT);
    bytes(&mut out, k.id.as_bytes());
    bytes(&mut out, k.name.as_bytes());
    bytes(&mut out, &k.hash);
    bytes(&mut out, k.pepper_id.as_bytes());
    out.extend_from_slice(&(k.scopes.len() as u64).to_be_bytes());
    for s in &k.scopes {
        bytes(&mut out, s.as_bytes());
    }
    out.extend_from_slice(&secs(k.created_at));
    match k.expires_at {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&secs(t));
        }
    }
    match &k.bound_spiffe {
        None => out.push(0),
        Some(b) => {
            out.push(1);
            bytes(&mut out, b.as_bytes());
        }
    }
    out
}

/// What a new key is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub name: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<SystemTime>,
    pub bound_spiffe: Option<SpiffeId>,
}

impl KeySpec {
    /// Checks the name and scopes.
    pub fn new(
        name: &str,
        scopes: Vec<String>,
        expires_at: Option<SystemTime>,
        bound_spiffe: Option<SpiffeId>,
    ) -> Result<Self, ApiKeyError> {
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !name_ok {
            return Err(ApiKeyError::InvalidName(name.to_owned()));
        }
        for s in &scopes {
            // RFC 6749 §3.3 scope-token, less ',' (the CLI's separator).
            let ok = (1..=128).contains(&s.len())
                && s.bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b','));
            if !ok {
                return Err(ApiKeyError::InvalidScope(s.clone()));
            }
        }
        let mut scopes = scopes;
        scopes.dedup();
        Ok(Self {
            name: name.to_owned(),
            scopes,
            expires_at,
            bound_spiffe,
        })
    }
}

/// A key just made: the key itself, to be shown once, and the record to store.
pub struct NewApiKey {
    pub key: SecretString,
    pub record: StoredKey,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewApiKey")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// Makes a new key for `spec` at `now`.
pub fn generate(
    pepper: &Pepper,
    spec: &KeySpec,
    now: SystemTime,
) -> Result<NewApiKey, ApiKeyError> {
    let rng = SystemRandom::new();
    let mut id_bytes = [0u8; ID_BYTES];
    rng.fill(&mut id_bytes).map_err(|_| ApiKeyError::Random)?;
    let mut secret = Zeroizing::new([0u8; SECRET_BYTES]);
    rng.fill(secret.as_mut()).map_err(|_| ApiKeyError::Random)?;

    let id = base32(&id_bytes);
    let mut key = Zeroizing::new(String::with_capacity(KEY_LEN));
    key.push_str(KEY_PREFIX);
    key.push_str(&id);
    key.push('_');
    base32_into(secret.as_ref(), &mut key);
    debug_assert_eq!(key.len(), KEY_LEN);

    let whole_seconds = |t: SystemTime| {
        UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()))
    };
    let record = StoredKey {
        id,
        name: spec.name.clone(),
        hash: pepper.hash(&key),
        pepper_id: pepper.id().to_owned(),
        scopes: spec.scopes.clone(),
        created_at: whole_seconds(now),
        expires_at: spec.expires_at.map(whole_seconds),
        bound_spiffe: spec.bound_spiffe.as_ref().map(|s| s.as_str().to_owned()),
        revoked_at: None,
        replaced_by: None,
        grace_until: None,
        tag: None,
    };
    let record = StoredKey {
        tag: Some(pepper.seal(&record)),
        ..record
    };
    Ok(NewApiKey {
        key: SecretString::from(key.as_str().to_owned()),
        record,
    })
}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    base32_into(bytes, &mut out);
    out
}

/// RFC 4648 base32, lowercase, unpadded.
fn base32_into(bytes: &[u8], out: &mut String) {
    let (mut acc, mut bits) = (0u16, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u16::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[usize::from((acc >> bits) & 31)]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(BASE32[usize::from((acc << (5 - bits)) & 31)]));
    }
}

/// Every byte of `s` is in the lower-case RFC 4648 alphabet. Read to the end whatever it
/// finds (no early exit), which lets the compiler check many bytes at once.
fn is_base32(s: &str) -> bool {
    s.bytes().fold(true, |ok, b| {
        ok & (b.is_ascii_lowercase() | (b'2'..=b'7').contains(&b))
    })
}

/// The id of a well-formed key, `None` for anything else.
pub fn parse_key_id(presented: &str) -> Option<&str> {
    if presented.len() != KEY_LEN {
        return None;
    }
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_at_checked(ID_CHARS)?;
    let secret = secret.strip_prefix('_')?;
    (is_base32(id) && is_base32(secret)).then_some(id)
}

/// One key as the verifier holds it.
struct Entry {
    key: StoredKey,
    /// The parsed binding; `Err` when the stored ID does not parse (the key is then unusable).
    binding: Option<Result<SpiffeId, ()>>,
    /// The record's tag verifies with the pepper: its granting fields are as the pepper's
    /// holder wrote them. Unusable otherwise.
    vouched: bool,
    /// What a request this key authenticates is told, made once per read of the store: its
    /// binding, when there is one, is the only workload verification lets through.
    identity: Arc<ApiKeyIdentity>,
}

#[derive(Default)]
struct Table {
    keys: HashMap<String, Entry>,
}

impl Table {
    fn new(pepper: &Pepper, keys: impl IntoIterator<Item = StoredKey>) -> Self {
        let keys = keys
            .into_iter()
            .map(|key| {
                let vouched = pepper.vouches_for(&key);
                let binding = key
                    .bound_spiffe
                    .as_deref()
                    .map(|s| SpiffeId::new(s).map_err(|_| ()));
                let identity = Arc::new(ApiKeyIdentity {
                    id: key.id.clone(),
                    name: key.name.clone(),
                    scopes: key.scopes.clone(),
                    workload: binding.clone().and_then(Result::ok),
                });
                let entry = Entry {
                    key,
                    binding,
                    vouched,
                    identity,
                };
                (entry.key.id.clone(), entry)
            })
            .collect();
        Self { keys }
    }
}

/// How the table follows the store.
struct Reload {
    store: AnyApiKeyStore,
    state: Mutex<ReloadState>,
}

struct ReloadState {
    /// The store's version when it was last read.
    version: Option<StoreVersion>,
    /// Re-read even an unchanged-looking store until then: a second commit within the file
    /// system's timestamp granularity may leave the version as it was.
    settle_until: Instant,
    last_read: Instant,
    /// Problems already reported, so that each is logged once.
    reported: Vec<String>,
}

/// A full re-read at least this often, whatever the version says.
const BACKSTOP: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(1);

struct Inner {
    pepper: Pepper,
    table: ArcSwap<Table>,
    reload: Option<Reload>,
    /// The store has been read at least once (always, for a fixed table).
    read: std::sync::atomic::AtomicBool,
}

/// Verifies presented API keys against the keys last read from the store. Cheap to clone;
/// every clone shares one table.
#[derive(Clone)]
pub struct ApiKeyVerifier {
    inner: Arc<Inner>,
}

impl fmt::Debug for ApiKeyVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyVerifier")
            .field("pepper", &self.inner.pepper)
            .field("keys", &self.len())
            .finish_non_exhaustive()
    }
}

/// Compared with when a presented id is unknown, so that an unknown id costs the same HMAC
/// and comparison as a known one.
const NO_HASH: [u8; 32] = [0; 32];

impl ApiKeyVerifier {
    /// A verifier over a fixed set of keys (tests, or a caller that feeds [`Self::replace`]).
    pub fn new(pepper: Pepper, keys: impl IntoIterator<Item = StoredKey>) -> Self {
        let table = Table::new(&pepper, keys);
        Self {
            inner: Arc::new(Inner {
                pepper,
                table: ArcSwap::from_pointee(table),
                reload: None,
                read: std::sync::atomic::AtomicBool::new(true),
            }),
        }
    }

    /// A verifier that follows `store` (see [`Self::reload`]), with the keys read now.
    /// Blocking.
    pub fn with_store(
        pepper: Pepper,
        store: impl ApiKeyStore + 'static,
    ) -> Result<Self, ApiKeyError> {
        let verifier = Self::following(pepper, store);
        verifier.reload()?;
        Ok(verifier)
    }

    /// A verifier that follows `store` and has read nothing yet.
    fn following(pepper: Pepper, store: impl ApiKeyStore + 'static) -> Self {
        let now = Instant::now();
        Self {
            inner: Arc::new(Inner {
                pepper,
                table: ArcSwap::from_pointee(Table::default()),
                read: std::sync::atomic::AtomicBool::new(false),
                reload: Some(Reload {
                    store: AnyApiKeyStore::new(store),
                    state: Mutex::new(ReloadState {
                        version: None,
                        settle_until: now,
                        last_read: now,
                        reported: Vec::new(),
                    }),
                }),
            }),
        }
    }

    /// A verifier over a store every replica shares (the Redis `[state]` backend), whose
    /// runtime must be running to answer. The keys are read now when the store answers; when
    /// it does not (Redis down at start), the gateway starts with no key, says so, and the
    /// reload task (see [`Self::spawn_reload`]) reads them as soon as it answers: a shared
    /// store's outage must not stop every replica from starting. Blocking: call from a
    /// blocking thread of the runtime that drives the store.
    pub fn shared(
        pepper: &SecretRef,
        store: impl ApiKeyStore + 'static,
    ) -> Result<Self, ApiKeyError> {
        let verifier = Self::following(Pepper::from_ref(pepper)?, store);
        if let Err(e) = verifier.reload() {
            tracing::warn!(
                error = %e,
                "cannot read the API keys from the shared state store yet; no API key is accepted until it answers"
            );
        }
        Ok(verifier)
    }

    /// A verifier over the redb store at `store_path` (which the gateway only reads, briefly,
    /// on each reload) with the pepper `pepper`. Blocking: reads the pepper and the store.
    /// A store that does not exist yet has no keys.
    pub fn open(store_path: &Path, pepper: &SecretRef) -> Result<Self, ApiKeyError> {
        let pepper = Pepper::from_ref(pepper)?;
        if !store_path.exists() {
            tracing::warn!(
                store = %store_path.display(),
                "the API key store does not exist yet; no API key is accepted until `idgate keys create` makes one"
            );
        }
        Self::with_store(pepper, RedbStore::reader(store_path))
    }

    /// Whether the keys have been read from the store at least once: a verifier over a
    /// shared store that did not answer at start holds no key until it does.
    pub fn has_read(&self) -> bool {
        self.inner.read.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Replaces the whole table.
    pub fn replace(&self, keys: impl IntoIterator<Item = StoredKey>) {
        let table = Table::new(&self.inner.pepper, keys);
        self.inner.table.store(Arc::new(table));
    }

    /// How many keys the table holds, whatever their state.
    pub fn len(&self) -> usize {
        self.inner.table.load().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the table holds a key of id `id`, whatever its state: an in-memory lookup.
    pub fn knows(&self, id: &str) -> bool {
        self.inner.table.load().keys.contains_key(id)
    }

    /// The fingerprint of the pepper in use (see [`Pepper::id`]).
    pub fn pepper_id(&self) -> &str {
        self.inner.pepper.id()
    }

    /// Re-reads the store if it may have changed since the last read; `Ok(true)` when it was
    /// read. On error the table stays as it was. Blocking: call from a blocking thread.
    pub fn reload(&self) -> Result<bool, ApiKeyError> {
        self.inner.reload_if_changed()
    }

    /// Keeps the table in step with the store: checks it every `interval` on the current
    /// tokio runtime (reading on a blocking thread), so a revocation takes effect within
    /// `interval` plus the time to read. The task ends when every clone of the verifier is
    /// dropped; failures are logged and the keys last read stay in force.
    pub fn spawn_reload(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval.max(Duration::from_millis(10)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A read can catch the file between two writes of its creation: a failure is
            // reported when it happens twice in a row, and then once until it changes.
            let mut failures = 0u32;
            let mut reported: Option<String> = None;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { break };
                let result = tokio::task::spawn_blocking(move || inner.reload_if_changed()).await;
                let why = match result {
                    Ok(Ok(_)) => {
                        if reported.take().is_some() {
                            tracing::info!("the API key store is readable again");
                        }
                        failures = 0;
                        continue;
                    }
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => format!("the reload task failed: {e}"),
                };
                failures = failures.saturating_add(1);
                if failures >= 2 && reported.as_deref() != Some(why.as_str()) {
                    tracing::warn!(error = %why, "cannot re-read the API key store; the keys read before stay in force");
                    reported = Some(why);
                }
            }
        })
    }

    /// Verifies a presented key for a request from `peer` (the connection's SPIFFE ID) at
    /// `now`.
    pub fn verify(
        &self,
        presented: &str,
        peer: Option<&SpiffeId>,
        now: SystemTime,
    ) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        let Some(id) = parse_key_id(presented) else {
            tracing::debug!("API key refused: not an idgate key");
            return Err(AuthFailure::InvalidApiKey);
        };
        let table = self.inner.table.load();
        let entry = table.keys.get(id);
        let computed = self.inner.pepper.hash(presented);
        let expected = entry.map_or(&NO_HASH, |e| &e.key.hash);
        let matches: bool = computed.ct_eq(expected).into();
        let entry = match entry {
            Some(e) if matches => e,
            Some(_) => {
                tracing::debug!(key_id = id, "API key refused: wrong secret");
                return Err(AuthFailure::InvalidApiKey);
            }
            None => {
                tracing::debug!(key_id = id, "API key refused: unknown id");
                return Err(AuthFailure::InvalidApiKey);
            }
        };
        // The record, its state and its binding are judged only once the key is proven, so
        // that a guess learns nothing about them.
        if !entry.vouched {
            tracing::debug!(
                key_id = id,
                "API key refused: its record's tag does not verify"
            );
            return Err(AuthFailure::InvalidApiKey);
        }
        let state = entry.key.state(now);
        if !entry.key.is_usable(now) {
            tracing::debug!(key_id = id, %state, "API key refused");
            return Err(AuthFailure::InvalidApiKey);
        }
        match &entry.binding {
            None => {}
            Some(Ok(bound)) if peer == Some(bound) => {}
            Some(Ok(bound)) => {
                tracing::debug!(
                    key_id = id,
                    bound = %bound,
                    peer = peer.map(SpiffeId::as_str).unwrap_or("-"),
                    "API key refused: bound to another workload"
                );
                return Err(AuthFailure::ApiKeyBindingMismatch);
            }
            Some(Err(())) => {
                tracing::debug!(
                    key_id = id,
                    "API key refused: its stored binding is not a SPIFFE ID"
                );
                return Err(AuthFailure::InvalidApiKey);
            }
        }
        Ok(entry.identity.clone())
    }
}

/// Logs each key the store no longer says is revoked or rotated although the last read did:
/// `idgate keys` never does that, only a direct write to the store (see the module doc).
fn report_withdrawn(previous: &Table, next: &Table) {
    for (id, e) in &next.keys {
        let Some(before) = previous.keys.get(id) else {
            continue;
        };
        let (was, is) = (&before.key, &e.key);
        let unrevoked = was.revoked_at.is_some() && is.revoked_at.is_none();
        let ungraced = was.grace_until.is_some()
            && (is.grace_until > was.grace_until || is.grace_until.is_none());
        if unrevoked || ungraced {
            tracing::warn!(
                key_id = id.as_str(),
                what = if unrevoked { "revocation" } else { "rotation" },
                "API key's revocation or rotation was withdrawn in the store, which `idgate keys` never does; the key works again unless expired"
            );
        }
    }
}

impl Inner {
    fn reload_if_changed(&self) -> Result<bool, ApiKeyError> {
        let Some(reload) = &self.reload else {
            return Ok(false);
        };
        let mut state = reload.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // The version is taken before the read: a commit landing between the two is then seen
        // as a change next time rather than missed.
        // Called from a blocking thread (see `reload`), which the store's futures may block.
        let version = block_on(reload.store.version())?;
        let changed = state.version.as_ref() != Some(&version);
        if !changed && now >= state.settle_until && now.duration_since(state.last_read) < BACKSTOP {
            return Ok(false);
        }
        let keys = block_on(reload.store.list())?;
        let table = Table::new(&self.pepper, keys);
        self.report_problems(&table, &mut state.reported);
        report_withdrawn(&self.table.load(), &table);
        self.table.store(Arc::new(table));
        self.read.store(true, std::sync::atomic::Ordering::Release);
        if changed {
            state.settle_until = now + SETTLE;
        }
        state.version = Some(version);
        state.last_read = now;
        Ok(true)
    }

    /// Logs, once each, keys that can never work here. A record is reported again only
    /// after a read in which it was fine.
    fn report_problems(&self, table: &Table, reported: &mut Vec<String>) {
        let mut problems = Vec::new();
        for e in table.keys.values() {
            let k = &e.key;
            if k.pepper_id != self.pepper.id() {
                // Another pepper's tag cannot verify either; one warning says it all.
                problems.push(format!("pepper:{}", k.id));
            } else if !e.vouched {
                let what = if k.tag.is_some() { "tag" } else { "untagged" };
                problems.push(format!("{what}:{}", k.id));
            }
            if let Some(Err(())) = e.binding {
                problems.push(format!("binding:{}", k.id));
            }
        }
        problems.sort();
        for p in &problems {
            if reported.contains(p) {
                continue;
            }
            match p.split_once(':') {
                Some(("pepper", id)) => tracing::warn!(
                    key_id = id,
                    pepper_id = self.pepper.id(),
                    "API key was made with another pepper than the one configured; it will be refused"
                ),
                Some(("tag", id)) => tracing::warn!(
                    key_id = id,
                    "API key record's tag does not verify: a field that grants access (name, scopes, binding, expiry) was changed in the store without the pepper; it will be refused"
                ),
                Some(("untagged", id)) => tracing::warn!(
                    key_id = id,
                    "API key record carries no tag; it will be refused (`idgate keys create` makes a tagged key for its holder)"
                ),
                Some((_, id)) => tracing::warn!(
                    key_id = id,
                    "API key has a stored binding that is not a SPIFFE ID; it will be refused"
                ),
                None => {}
            }
        }
        *reported = problems;
    }
}

#[cfg(test)]
mod tests;
