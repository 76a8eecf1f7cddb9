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
//! A presented key is looked up by its id and its HMAC compared in constant time. Every way
//! a key can be wrong (malformed, unknown, wrong secret, revoked, expired) is the same
//! [`AuthFailure::InvalidApiKey`] to the caller; the log says which, by key id.
//!
//! A running gateway re-reads the store every `reload_interval` (at most one second) when it
//! changed, so a revocation takes effect without a restart.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use http::HeaderMap;
use idgate_secrets::{ExposeSecret, SecretBox, SecretError, SecretRef, SecretString};
use idgate_store::{ApiKeyStore, RedbStore, StoreError, StoreVersion, StoredKey};
use idgate_tls::SpiffeId;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::caller::ApiKeyIdentity;
use crate::failure::AuthFailure;

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
pub struct Pepper {
    key: SecretBox<[u8]>,
    id: String,
}

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
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, bytes.expose_secret()),
            b"idgate api key pepper id",
        );
        let id = idgate_codec::hex::encode(&tag.as_ref()[..8]);
        Ok(Self { key: bytes, id })
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
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, self.key.expose_secret()),
            key.as_bytes(),
        );
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
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

fn is_base32(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
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
}

#[derive(Default)]
struct Table {
    keys: HashMap<String, Entry>,
}

impl Table {
    fn new(keys: impl IntoIterator<Item = StoredKey>) -> Self {
        let keys = keys
            .into_iter()
            .map(|key| {
                let binding = key
                    .bound_spiffe
                    .as_deref()
                    .map(|s| SpiffeId::new(s).map_err(|_| ()));
                (key.id.clone(), Entry { key, binding })
            })
            .collect();
        Self { keys }
    }
}

/// How the table follows the store.
struct Reload {
    store: Arc<dyn ApiKeyStore>,
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
        Self {
            inner: Arc::new(Inner {
                pepper,
                table: ArcSwap::from_pointee(Table::new(keys)),
                reload: None,
            }),
        }
    }

    /// A verifier that follows `store` (see [`Self::reload`]), with the keys read now.
    /// Blocking.
    pub fn with_store(pepper: Pepper, store: Arc<dyn ApiKeyStore>) -> Result<Self, ApiKeyError> {
        let now = Instant::now();
        let verifier = Self {
            inner: Arc::new(Inner {
                pepper,
                table: ArcSwap::from_pointee(Table::default()),
                reload: Some(Reload {
                    store,
                    state: Mutex::new(ReloadState {
                        version: None,
                        settle_until: now,
                        last_read: now,
                        reported: Vec::new(),
                    }),
                }),
            }),
        };
        verifier.reload()?;
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
        Self::with_store(pepper, Arc::new(RedbStore::reader(store_path)))
    }

    /// Replaces the whole table.
    pub fn replace(&self, keys: impl IntoIterator<Item = StoredKey>) {
        self.inner.table.store(Arc::new(Table::new(keys)));
    }

    /// How many keys the table holds, whatever their state.
    pub fn len(&self) -> usize {
        self.inner.table.load().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    ) -> Result<ApiKeyIdentity, AuthFailure> {
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
        // The binding is judged only once the key is proven, so that a guess learns nothing
        // about which workload a key belongs to.
        let state = entry.key.state(now);
        if !entry.key.is_usable(now) {
            tracing::debug!(key_id = id, %state, "API key refused");
            return Err(AuthFailure::InvalidApiKey);
        }
        let workload = match &entry.binding {
            None => None,
            Some(Ok(bound)) if peer == Some(bound) => Some(bound.clone()),
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
        };
        Ok(ApiKeyIdentity {
            id: entry.key.id.clone(),
            name: entry.key.name.clone(),
            scopes: entry.key.scopes.clone(),
            workload,
        })
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
        let version = reload.store.version()?;
        let changed = state.version.as_ref() != Some(&version);
        if !changed && now >= state.settle_until && now.duration_since(state.last_read) < BACKSTOP {
            return Ok(false);
        }
        let keys = reload.store.list()?;
        self.report_problems(&keys, &mut state.reported);
        self.table.store(Arc::new(Table::new(keys)));
        if changed {
            state.settle_until = now + SETTLE;
        }
        state.version = Some(version);
        state.last_read = now;
        Ok(true)
    }

    /// Logs, once each, keys that can never work here.
    fn report_problems(&self, keys: &[StoredKey], reported: &mut Vec<String>) {
        let mut problems = Vec::new();
        for k in keys {
            if k.pepper_id != self.pepper.id() {
                problems.push(format!("pepper:{}", k.id));
            }
            if let Some(b) = &k.bound_spiffe
                && SpiffeId::new(b).is_err()
            {
                problems.push(format!("binding:{}", k.id));
            }
        }
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

/// The API key a request presents in `x-api-key` or `Authorization: ApiKey <key>`, if any.
/// The same key in both is fine; two different keys, an empty one, or one that is not text
/// are refused. Keys in other places (the query string) are [`key_in_query`]'s business.
pub fn presented_key(headers: &HeaderMap) -> Result<Option<&str>, AuthFailure> {
    fn add<'a>(found: &mut Option<&'a str>, key: &'a str) -> Result<(), AuthFailure> {
        match found {
            Some(f) if *f != key => Err(AuthFailure::InvalidRequest("several different API keys")),
            _ => {
                *found = Some(key);
                Ok(())
            }
        }
    }
    let mut found = None;
    for value in headers.get_all("x-api-key") {
        let key = value
            .to_str()
            .map_err(|_| AuthFailure::InvalidApiKey)?
            .trim_matches([' ', '\t']);
        if key.is_empty() {
            return Err(AuthFailure::InvalidApiKey);
        }
        add(&mut found, key)?;
    }
    for value in headers.get_all(http::header::AUTHORIZATION) {
        // Other schemes (Bearer) are not ours to judge, however they are written.
        let Ok(text) = value.to_str() else { continue };
        let text = text.trim_matches([' ', '\t']);
        let (scheme, rest) = text.split_once([' ', '\t']).unwrap_or((text, ""));
        if !scheme.eq_ignore_ascii_case("ApiKey") {
            continue;
        }
        let key = rest.trim_matches([' ', '\t']);
        if key.is_empty() {
            return Err(AuthFailure::InvalidRequest(
                "the ApiKey authorization carries no key",
            ));
        }
        add(&mut found, key)?;
    }
    Ok(found)
}

/// Query parameter names that carry an API key by convention (compared case-insensitively).
const KEY_PARAMS: &[&str] = &[
    "api_key",
    "apikey",
    "api-key",
    "x-api-key",
    "x_api_key",
    "key",
];

/// Whether a query string carries what looks like an API key: a parameter named like one
/// (`api_key`, `apikey`, `api-key`, `x-api-key`, `key`, any case) or anything that looks like
/// an idgate key, percent-encoded or not. Such a request is refused with
/// [`AuthFailure::ApiKeyInQuery`]: URLs end up in logs and browser histories.
pub fn key_in_query(query: Option<&str>) -> bool {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return false;
    };
    if contains_key_like(query) {
        return true;
    }
    query.split(['&', ';']).any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent_decode(name);
        let name = name.trim();
        KEY_PARAMS.iter().any(|k| name.eq_ignore_ascii_case(k))
            || contains_key_like(name)
            || contains_key_like(&percent_decode(value))
    })
}

/// Whether a query string carries anything shaped like an idgate key, whatever the
/// parameter's name, percent-encoded or not. Checked on every route, whatever its
/// authentication: the gateway's own keys are never forwarded to a provider.
pub fn idgate_key_in_query(query: Option<&str>) -> bool {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return false;
    };
    contains_key_like(query)
        || (query.contains(['%', '+']) && contains_key_like(&percent_decode(query)))
}

/// Whether `s` contains `idg_` (any case) followed by something shaped like a key id.
/// Allocates nothing.
fn contains_key_like(s: &str) -> bool {
    let b = s.as_bytes();
    let prefix = KEY_PREFIX.as_bytes();
    (0..b.len().saturating_sub(prefix.len() + ID_CHARS - 1)).any(|i| {
        b[i..i + prefix.len()].eq_ignore_ascii_case(prefix)
            && b[i + prefix.len()..i + prefix.len() + ID_CHARS]
                .iter()
                .all(|c| c.is_ascii_alphabetic() || (b'2'..=b'7').contains(c))
    })
}

/// `%XX` and `+` decoding; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> Cow<'_, str> {
    idgate_codec::percent::decode_form_lossy(s)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use idgate_store::MemoryStore;

    use super::*;

    const PEPPER: &[u8] = b"0123456789abcdef0123456789abcdef-pepper";
    const ONBOARDING: &str = "spiffe://example.org/ns/kyc/sa/onboarding";

    fn pepper() -> Pepper {
        Pepper::new(SecretBox::new(PEPPER.into()), "test").unwrap()
    }

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn spec(name: &str) -> KeySpec {
        KeySpec::new(name, vec!["sessions:create".into()], None, None).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::new(s).unwrap()
    }

    #[test]
    fn the_verifier_can_be_shared_between_threads() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<ApiKeyVerifier>();
    }

    #[test]
    fn keys_have_the_documented_format_and_are_all_different() {
        let p = pepper();
        let a = generate(&p, &spec("batch"), t(1_800_000_000)).unwrap();
        let b = generate(&p, &spec("batch"), t(1_800_000_000)).unwrap();
        let key = a.key.expose_secret();
        assert_eq!(key.len(), KEY_LEN);
        assert!(key.starts_with("idg_"));
        assert_eq!(parse_key_id(key), Some(a.record.id.as_str()));
        assert_eq!(a.record.id.len(), 16);
        assert_eq!(key.rsplit('_').next().unwrap().len(), 52);
        assert_ne!(a.record.id, b.record.id);
        assert_ne!(key, b.key.expose_secret());
        assert_eq!(a.record.created_at, t(1_800_000_000));
        assert_eq!(a.record.pepper_id, p.id());
        // Neither the key nor its secret part appears in the record or in Debug output.
        let secret = key.rsplit('_').next().unwrap();
        let shown = format!("{a:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert_ne!(a.record.hash, [0; 32]);
    }

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 §10, lowercase and unpadded.
        for (input, out) in [
            ("", ""),
            ("f", "my"),
            ("fo", "mzxq"),
            ("foo", "mzxw6"),
            ("foob", "mzxw6yq"),
            ("fooba", "mzxw6ytb"),
            ("foobar", "mzxw6ytboi"),
        ] {
            assert_eq!(base32(input.as_bytes()), out, "{input}");
        }
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let good = format!("idg_{}_{}", "a".repeat(16), "b".repeat(52));
        assert!(parse_key_id(&good).is_some());
        for bad in [
            String::new(),
            good.replacen("idg_", "idx_", 1),
            good.to_uppercase(),
            format!("{good}c"),
            good[..good.len() - 1].to_owned(),
            good.replacen("a_b", "aab", 1),
            good.replacen('b', "1", 1),
            good.replacen('b', "é", 1),
        ] {
            assert_eq!(parse_key_id(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_hash_is_keyed_with_the_pepper() {
        let key = "idg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let a = pepper();
        let b = Pepper::new(
            SecretBox::new(b"another pepper, also 32 bytes long!".as_slice().into()),
            "b",
        )
        .unwrap();
        assert_eq!(a.hash(key), a.hash(key));
        assert_ne!(a.hash(key), b.hash(key));
        assert_ne!(a.id(), b.id());
        // Not a bare SHA-256 of the key: a stolen database alone does not let one test guesses.
        let bare = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        assert_ne!(a.hash(key).as_slice(), bare.as_ref());
        assert!(matches!(
            Pepper::new(SecretBox::new(b"short".as_slice().into()), "file:/p"),
            Err(ApiKeyError::PepperTooShort { len: 5, .. })
        ));
        assert!(!format!("{a:?}").contains("pepper\""));
        assert!(!format!("{a:?}").contains("0123456789"));
    }

    #[test]
    fn verifies_a_good_key_and_refuses_every_kind_of_wrong_one_alike() {
        let p = pepper();
        let now = t(1_800_000_000);
        let good = generate(&p, &spec("batch"), now).unwrap();
        let mut expiring = KeySpec::new("nightly", vec![], Some(t(1_800_000_100)), None).unwrap();
        expiring.scopes = vec!["a".into(), "b".into()];
        let expiring = generate(&p, &expiring, now).unwrap();
        let revoked = generate(&p, &spec("old"), now).unwrap();
        let mut revoked_record = revoked.record.clone();
        revoked_record.revoked_at = Some(now);
        let verifier = ApiKeyVerifier::new(
            pepper(),
            [good.record.clone(), expiring.record.clone(), revoked_record],
        );

        let ok = verifier
            .verify(good.key.expose_secret(), None, now)
            .unwrap();
        assert_eq!(ok.name, "batch");
        assert_eq!(ok.id, good.record.id);
        assert_eq!(ok.scopes, ["sessions:create"]);

        let key = good.key.expose_secret();
        let wrong_secret = format!(
            "{}{}",
            &key[..KEY_LEN - 1],
            if key.ends_with('a') { 'b' } else { 'a' }
        );
        let unknown = generate(&p, &spec("batch"), now).unwrap();
        for (what, presented, at) in [
            ("wrong secret", wrong_secret.as_str(), now),
            ("unknown id", unknown.key.expose_secret(), now),
            ("malformed", "idg_nope", now),
            ("empty", "", now),
            ("revoked", revoked.key.expose_secret(), now),
            ("expired", expiring.key.expose_secret(), t(1_800_000_100)),
        ] {
            assert_eq!(
                verifier.verify(presented, None, at),
                Err(AuthFailure::InvalidApiKey),
                "{what}"
            );
        }
        assert!(
            verifier
                .verify(expiring.key.expose_secret(), None, t(1_800_000_099))
                .is_ok()
        );

        // The same key under another pepper is refused.
        let other = ApiKeyVerifier::new(
            Pepper::new(
                SecretBox::new(b"another pepper, also 32 bytes long!".as_slice().into()),
                "b",
            )
            .unwrap(),
            [good.record.clone()],
        );
        assert_eq!(
            other.verify(key, None, now),
            Err(AuthFailure::InvalidApiKey)
        );
    }

    #[test]
    fn a_bound_key_works_only_from_its_workload() {
        let p = pepper();
        let now = t(1_800_000_000);
        let spec = KeySpec::new("onboarding", vec![], None, Some(id(ONBOARDING))).unwrap();
        let k = generate(&p, &spec, now).unwrap();
        assert_eq!(k.record.bound_spiffe.as_deref(), Some(ONBOARDING));
        let v = ApiKeyVerifier::new(pepper(), [k.record.clone()]);
        let key = k.key.expose_secret();
        assert_eq!(
            v.verify(key, Some(&id(ONBOARDING)), now).unwrap().workload,
            Some(id(ONBOARDING)),
            "a bound key is also its workload"
        );
        assert_eq!(
            v.verify(
                key,
                Some(&id("spiffe://example.org/ns/web/sa/frontend")),
                now
            ),
            Err(AuthFailure::ApiKeyBindingMismatch)
        );
        assert_eq!(
            v.verify(key, None, now),
            Err(AuthFailure::ApiKeyBindingMismatch)
        );
        // A wrong key says nothing about bindings.
        let wrong = format!(
            "{}{}",
            &key[..KEY_LEN - 1],
            if key.ends_with('a') { 'b' } else { 'a' }
        );
        assert_eq!(v.verify(&wrong, None, now), Err(AuthFailure::InvalidApiKey));
    }

    #[test]
    fn names_and_scopes_are_checked() {
        assert!(
            KeySpec::new(
                "batch-job_1.x",
                vec!["a:b".into(), "c/d".into()],
                None,
                None
            )
            .is_ok()
        );
        for name in ["", "has space", "a\"b", &"x".repeat(65), "naïve"] {
            assert!(
                matches!(
                    KeySpec::new(name, vec![], None, None),
                    Err(ApiKeyError::InvalidName(_))
                ),
                "{name}"
            );
        }
        for scope in ["", "a b", "a,b", "a\"", "é"] {
            assert!(
                matches!(
                    KeySpec::new("n", vec![scope.into()], None, None),
                    Err(ApiKeyError::InvalidScope(_))
                ),
                "{scope}"
            );
        }
    }

    #[test]
    fn rotation_keeps_the_old_key_for_its_grace_period_and_revocation_is_picked_up() {
        let p = pepper();
        let now = SystemTime::now();
        let store = Arc::new(MemoryStore::new());
        let old = generate(&p, &spec("batch"), now).unwrap();
        store.insert(&old.record).unwrap();
        let verifier = ApiKeyVerifier::with_store(pepper(), store.clone()).unwrap();
        assert!(verifier.verify(old.key.expose_secret(), None, now).is_ok());

        let new = generate(&p, &spec("batch"), now).unwrap();
        let until = now + Duration::from_secs(3600);
        store.rotate(&old.record.id, &new.record, until).unwrap();
        assert!(verifier.reload().unwrap(), "a changed store is re-read");
        for key in [&old.key, &new.key] {
            assert!(verifier.verify(key.expose_secret(), None, now).is_ok());
        }
        let after = until + Duration::from_secs(1);
        assert_eq!(
            verifier.verify(old.key.expose_secret(), None, after),
            Err(AuthFailure::InvalidApiKey)
        );
        assert!(
            verifier
                .verify(new.key.expose_secret(), None, after)
                .is_ok()
        );

        store.revoke(&new.record.id, now).unwrap();
        verifier.reload().unwrap();
        assert_eq!(
            verifier.verify(new.key.expose_secret(), None, now),
            Err(AuthFailure::InvalidApiKey)
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_reload_task_picks_up_a_revocation_in_a_redb_file_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.redb");
        let pepper_path = dir.path().join("pepper");
        std::fs::write(&pepper_path, PEPPER).unwrap();
        std::fs::set_permissions(
            &pepper_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let pepper_ref = SecretRef::parse("file:pepper", dir.path()).unwrap();

        // The gateway starts before the store exists.
        let verifier = ApiKeyVerifier::open(&path, &pepper_ref).unwrap();
        assert!(verifier.is_empty());
        let task = verifier.spawn_reload(Duration::from_millis(100));

        // The CLI, in another handle, writes while the gateway polls.
        let writer = RedbStore::open(&path, idgate_store::DEFAULT_WAIT).unwrap();
        let k = generate(&pepper(), &spec("batch"), SystemTime::now()).unwrap();
        writer.insert(&k.record).unwrap();
        let key = k.key.expose_secret().to_owned();
        let deadline = Instant::now() + Duration::from_secs(1);
        while verifier.verify(&key, None, SystemTime::now()).is_err() {
            assert!(
                Instant::now() < deadline,
                "a new key is accepted within a second"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let revoked_at = Instant::now();
        writer.revoke(&k.record.id, SystemTime::now()).unwrap();
        while verifier.verify(&key, None, SystemTime::now()).is_ok() {
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "revocation takes effect within a second"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(verifier);
        // With every verifier gone, the task ends by itself.
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .unwrap()
            .unwrap();
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    #[test]
    fn keys_are_taken_from_x_api_key_or_authorization_apikey() {
        let k = "idg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let other = "idg_cccccccccccccccc_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        let auth = format!("ApiKey {k}");
        assert_eq!(presented_key(&headers(&[])).unwrap(), None);
        assert_eq!(
            presented_key(&headers(&[("x-api-key", k)])).unwrap(),
            Some(k)
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", &auth)])).unwrap(),
            Some(k)
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", &format!("apikey   {k}"))])).unwrap(),
            Some(k)
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", k), ("authorization", &auth)])).unwrap(),
            Some(k)
        );
        // A bearer token is the JWT layer's.
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer abc")])).unwrap(),
            None
        );
        assert_eq!(
            presented_key(&headers(&[
                ("x-api-key", k),
                ("authorization", "Bearer abc")
            ]))
            .unwrap(),
            Some(k)
        );
        assert!(matches!(
            presented_key(&headers(&[
                ("x-api-key", k),
                ("authorization", &format!("ApiKey {other}"))
            ])),
            Err(AuthFailure::InvalidRequest(_))
        ));
        assert!(matches!(
            presented_key(&headers(&[("x-api-key", k), ("x-api-key", other)])),
            Err(AuthFailure::InvalidRequest(_))
        ));
        assert!(matches!(
            presented_key(&headers(&[("authorization", "ApiKey")])),
            Err(AuthFailure::InvalidRequest(_))
        ));
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "")])),
            Err(AuthFailure::InvalidApiKey)
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "caf\u{e9}")])),
            Err(AuthFailure::InvalidApiKey)
        );
    }

    #[test]
    fn parsers_of_untrusted_text_never_panic() {
        // A cheap deterministic fuzz over pieces that matter to the parsers.
        let pieces = [
            "idg_",
            "_",
            "%",
            "%5F",
            "%F0%9F",
            "%%",
            "+",
            "&",
            ";",
            "=",
            "a",
            "7",
            "é",
            "😀",
            "api_key",
            "KEY",
            "aaaaaaaaaaaaaaaa",
            "ApiKey ",
            " ",
            "\t",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let verifier = ApiKeyVerifier::new(pepper(), []);
        for _ in 0..20_000 {
            let mut s = String::new();
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            for _ in 0..(seed >> 60) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                s.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            let _ = parse_key_id(&s);
            let _ = key_in_query(Some(&s));
            let _ = verifier.verify(&s, None, SystemTime::now());
            if let Ok(v) = http::HeaderValue::from_str(&s) {
                let mut h = HeaderMap::new();
                h.append("x-api-key", v.clone());
                h.append(http::header::AUTHORIZATION, v);
                let _ = presented_key(&h);
            }
        }
    }

    #[test]
    fn keys_in_the_query_string_are_detected() {
        let k = "idg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        for q in [
            "api_key=x".to_owned(),
            "a=1&APIKEY=x".to_owned(),
            "api-key=".to_owned(),
            "X-Api-Key=x".to_owned(),
            "key=x".to_owned(),
            "api%5Fkey=x".to_owned(),
            format!("token={k}"),
            format!("t={}", k.replace('_', "%5F")),
            k.to_owned(),
            format!("redirect=https%3A%2F%2Fx%2F%3Fk%3D{k}"),
            format!("a=1;b={}", k.to_uppercase()),
        ] {
            assert!(key_in_query(Some(&q)), "{q}");
        }
        for q in [
            None,
            Some(""),
            Some("session_id=abc&monkey=1"),
            Some("idg_=x"),
            Some("keys=1"),
            Some("q=idg_short"),
        ] {
            assert!(!key_in_query(q), "{q:?}");
        }
    }

    #[test]
    fn key_shaped_values_are_found_under_any_name_and_plain_parameters_pass() {
        let k = "idg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
        for q in [
            format!("token={k}"),
            format!("t={}", k.replace('_', "%5F")),
            format!("a=1;b={}", k.to_uppercase()),
            format!("x={}", &k[..KEY_PREFIX.len() + ID_CHARS]),
        ] {
            assert!(idgate_key_in_query(Some(&q)), "{q}");
        }
        for q in [
            None,
            Some("key=abc"),
            Some("api_key=provider-side-param"),
            Some("q=idg_short"),
            Some("q=idg_aaaaaaaaaaaaaaa"),
            Some("q=idg_aaaaaaaaaaaaaaa1"),
        ] {
            assert!(!idgate_key_in_query(q), "{q:?}");
        }
    }
}
