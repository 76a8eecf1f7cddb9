//! Caller API key records and the trait every backend implements for them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// One API key as stored: who it is for and what it may do, and a keyed hash of the key,
/// never the key. Times are kept to the second.
///
/// The fields that grant access (id, name, hash, pepper id, scopes, creation, expiry and
/// binding) are covered by `tag`, made by whoever holds the pepper (see
/// `idgate_auth::api_key::Pepper::seal`); the store only keeps it. The fields that only take
/// access away (revocation, rotation) are outside it, so that a store can change them.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The key's public id (the part of the key before its secret), unique in the store.
    pub id: String,
    /// The name given at creation; route allow lists refer to it as `apikey:NAME`.
    pub name: String,
    /// HMAC-SHA256 of the whole key, keyed with the server-side pepper.
    pub hash: [u8; 32],
    /// Identifies the pepper the hash was made with (not the pepper itself), so that a
    /// gateway with another pepper can say so instead of refusing every key in silence.
    pub pepper_id: String,
    pub scopes: Vec<String>,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
    /// The SPIFFE ID the key may only be used from (over that workload's mTLS connection).
    pub bound_spiffe: Option<String>,
    pub revoked_at: Option<SystemTime>,
    /// The id of the key that replaced this one on rotation.
    pub replaced_by: Option<String>,
    /// After rotation, the end of the grace period during which this key still works.
    pub grace_until: Option<SystemTime>,
    /// A keyed tag over the fields that grant access; a verifier refuses a record without
    /// one that verifies.
    pub tag: Option<[u8; 32]>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash and the tag are left out: nothing that prints a record should help anyone
        // guess keys or forge records.
        f.debug_struct("StoredKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("pepper_id", &self.pepper_id)
            .field("scopes", &self.scopes)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("bound_spiffe", &self.bound_spiffe)
            .field("revoked_at", &self.revoked_at)
            .field("replaced_by", &self.replaced_by)
            .field("grace_until", &self.grace_until)
            .finish_non_exhaustive()
    }
}

/// Where a key stands at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    /// Replaced by a newer key and still valid until the end of its grace period.
    Rotated {
        until: SystemTime,
    },
    Expired,
    Revoked,
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Active => "active",
            Self::Rotated { .. } => "rotated",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        })
    }
}

impl StoredKey {
    /// When the key stops working, whichever comes first of its expiry and the end of its
    /// rotation grace period.
    pub fn valid_until(&self) -> Option<SystemTime> {
        match (self.expires_at, self.grace_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn state(&self, now: SystemTime) -> KeyState {
        if self.revoked_at.is_some() {
            return KeyState::Revoked;
        }
        match self.valid_until() {
            Some(until) if now >= until => KeyState::Expired,
            _ => match self.grace_until {
                Some(until) if self.replaced_by.is_some() => KeyState::Rotated { until },
                _ => KeyState::Active,
            },
        }
    }

    /// Whether the key authenticates a request at `now` (leaving its hash and binding aside).
    pub fn is_usable(&self, now: SystemTime) -> bool {
        matches!(self.state(now), KeyState::Active | KeyState::Rotated { .. })
    }

    /// Marks the key revoked at `at`. Revoking twice keeps the first time.
    pub(crate) fn apply_revoke(&mut self, at: SystemTime) {
        if self.revoked_at.is_none() {
            self.revoked_at = Some(truncate(at));
        }
    }

    /// Marks the key replaced by `new_id`, valid until `until`.
    pub(crate) fn apply_rotation(
        &mut self,
        new_id: &str,
        until: SystemTime,
    ) -> Result<(), StoreError> {
        if self.revoked_at.is_some() {
            return Err(StoreError::Revoked(self.id.clone()));
        }
        if let Some(by) = &self.replaced_by {
            return Err(StoreError::AlreadyRotated {
                id: self.id.clone(),
                by: by.clone(),
            });
        }
        self.replaced_by = Some(new_id.to_owned());
        self.grace_until = Some(truncate(until));
        Ok(())
    }

    /// The record's bytes in the store: versioned JSON.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let record = RecordV1 {
            v: 1,
            id: self.id.clone(),
            name: self.name.clone(),
            hash: idgate_codec::hex::encode(&self.hash),
            pepper_id: self.pepper_id.clone(),
            scopes: self.scopes.clone(),
            created_at: secs(self.created_at),
            expires_at: self.expires_at.map(secs),
            bound_spiffe: self.bound_spiffe.clone(),
            revoked_at: self.revoked_at.map(secs),
            replaced_by: self.replaced_by.clone(),
            grace_until: self.grace_until.map(secs),
            tag: self.tag.map(|t| idgate_codec::hex::encode(&t)),
        };
        // Serializing plain strings, numbers and vectors cannot fail.
        serde_json::to_vec(&record).unwrap_or_default()
    }

    pub(crate) fn decode(id: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            id: id.to_owned(),
            reason,
        };
        let r: RecordV1 = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if r.v != 1 {
            return Err(corrupt(format!("record version {} is not supported", r.v)));
        }
        if r.id != id {
            return Err(corrupt("the record is stored under another id".into()));
        }
        let hash = idgate_codec::hex::decode_array(&r.hash)
            .ok_or_else(|| corrupt("the hash is not 32 bytes of hex".into()))?;
        let tag = match &r.tag {
            None => None,
            Some(t) => Some(
                idgate_codec::hex::decode_array(t)
                    .ok_or_else(|| corrupt("the tag is not 32 bytes of hex".into()))?,
            ),
        };
        Ok(Self {
            id: r.id,
            name: r.name,
            hash,
            pepper_id: r.pepper_id,
            scopes: r.scopes,
            created_at: time(r.created_at),
            expires_at: r.expires_at.map(time),
            bound_spiffe: r.bound_spiffe,
            revoked_at: r.revoked_at.map(time),
            replaced_by: r.replaced_by,
            grace_until: r.grace_until.map(time),
            tag,
        })
    }
}

/// What is stored for each key, in the file format's first version.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordV1 {
    v: u32,
    id: String,
    name: String,
    hash: String,
    pepper_id: String,
    scopes: Vec<String>,
    created_at: u64,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    bound_spiffe: Option<String>,
    #[serde(default)]
    revoked_at: Option<u64>,
    #[serde(default)]
    replaced_by: Option<String>,
    #[serde(default)]
    grace_until: Option<u64>,
    #[serde(default)]
    tag: Option<String>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn time(secs: u64) -> SystemTime {
    // A damaged record must not panic the reader: far-future times saturate.
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 64))
}

/// A time as the store keeps it: whole seconds.
pub(crate) fn truncate(t: SystemTime) -> SystemTime {
    time(secs(t))
}

/// A value that changes whenever the store's content may have changed, so that a reader can
/// skip re-reading an unchanged store. Opaque: compare two with `==`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreVersion(pub(crate) VersionInner);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VersionInner {
    Counter(u64),
    /// The store file does not exist (yet).
    Missing,
    /// The file's identity, size and change times.
    File {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
}

/// Caller API keys: insert, look up, list, revoke and rotate. Implementations are
/// thread-safe; every write is atomic, and a rotation changes both keys in one transaction.
pub trait ApiKeyStore: Send + Sync {
    /// Adds a key; fails with [`StoreError::Exists`] when its id is taken.
    fn insert(&self, key: &StoredKey) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn get(&self, id: &str) -> impl Future<Output = Result<Option<StoredKey>, StoreError>> + Send;

    /// Every key, revoked and expired ones included, oldest first.
    fn list(&self) -> impl Future<Output = Result<Vec<StoredKey>, StoreError>> + Send;

    /// Revokes a key at `at` (a key revoked before keeps its first revocation time) and
    /// returns the updated record.
    fn revoke(
        &self,
        id: &str,
        at: SystemTime,
    ) -> impl Future<Output = Result<StoredKey, StoreError>> + Send;

    /// Adds `new` as the replacement of `old_id`, which stays valid until `old_valid_until`,
    /// and returns the updated old record. Refused for a revoked key and for one already
    /// rotated.
    fn rotate(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> impl Future<Output = Result<StoredKey, StoreError>> + Send;

    /// The store's current version (see [`StoreVersion`]).
    fn version(&self) -> impl Future<Output = Result<StoreVersion, StoreError>> + Send;
}

impl<T: ApiKeyStore + ?Sized> ApiKeyStore for Arc<T> {
    fn insert(&self, key: &StoredKey) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).insert(key)
    }

    fn get(&self, id: &str) -> impl Future<Output = Result<Option<StoredKey>, StoreError>> + Send {
        (**self).get(id)
    }

    fn list(&self) -> impl Future<Output = Result<Vec<StoredKey>, StoreError>> + Send {
        (**self).list()
    }

    fn revoke(
        &self,
        id: &str,
        at: SystemTime,
    ) -> impl Future<Output = Result<StoredKey, StoreError>> + Send {
        (**self).revoke(id, at)
    }

    fn rotate(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> impl Future<Output = Result<StoredKey, StoreError>> + Send {
        (**self).rotate(old_id, new, old_valid_until)
    }

    fn version(&self) -> impl Future<Output = Result<StoreVersion, StoreError>> + Send {
        (**self).version()
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// [`ApiKeyStore`] with its futures boxed, so that it can sit behind `dyn`.
trait ErasedApiKeyStore: Send + Sync {
    fn insert_boxed<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, ()>;
    fn get_boxed<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<StoredKey>>;
    fn list_boxed(&self) -> BoxFuture<'_, Vec<StoredKey>>;
    fn revoke_boxed<'a>(&'a self, id: &'a str, at: SystemTime) -> BoxFuture<'a, StoredKey>;
    fn rotate_boxed<'a>(
        &'a self,
        old_id: &'a str,
        new: &'a StoredKey,
        until: SystemTime,
    ) -> BoxFuture<'a, StoredKey>;
    fn version_boxed(&self) -> BoxFuture<'_, StoreVersion>;
}

impl<T: ApiKeyStore> ErasedApiKeyStore for T {
    fn insert_boxed<'a>(&'a self, key: &'a StoredKey) -> BoxFuture<'a, ()> {
        Box::pin(self.insert(key))
    }
    fn get_boxed<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Option<StoredKey>> {
        Box::pin(self.get(id))
    }
    fn list_boxed(&self) -> BoxFuture<'_, Vec<StoredKey>> {
        Box::pin(self.list())
    }
    fn revoke_boxed<'a>(&'a self, id: &'a str, at: SystemTime) -> BoxFuture<'a, StoredKey> {
        Box::pin(self.revoke(id, at))
    }
    fn rotate_boxed<'a>(
        &'a self,
        old_id: &'a str,
        new: &'a StoredKey,
        until: SystemTime,
    ) -> BoxFuture<'a, StoredKey> {
        Box::pin(self.rotate(old_id, new, until))
    }
    fn version_boxed(&self) -> BoxFuture<'_, StoreVersion> {
        Box::pin(self.version())
    }
}

/// Any [`ApiKeyStore`], chosen at run time (from the configuration: redb today, Redis for
/// several replicas). Native `async fn` in traits cannot be called through `dyn`, so this
/// boxes each call's future: an allocation per call, nothing on the request path, since
/// the gateway reads the key store only to refresh its in-memory table (at most once per
/// reload interval). The other store traits are used per request and stay statically
/// dispatched. Cheap to clone.
#[derive(Clone)]
pub struct AnyApiKeyStore(Arc<dyn ErasedApiKeyStore>);

impl AnyApiKeyStore {
    pub fn new(store: impl ApiKeyStore + 'static) -> Self {
        Self(Arc::new(store))
    }
}

impl fmt::Debug for AnyApiKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AnyApiKeyStore")
    }
}

// `async fn` lets each boxed future borrow `self` and the arguments for the shortest of their
// lifetimes.
impl ApiKeyStore for AnyApiKeyStore {
    async fn insert(&self, key: &StoredKey) -> Result<(), StoreError> {
        self.0.insert_boxed(key).await
    }

    async fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        self.0.get_boxed(id).await
    }

    fn list(&self) -> impl Future<Output = Result<Vec<StoredKey>, StoreError>> + Send {
        self.0.list_boxed()
    }

    async fn revoke(&self, id: &str, at: SystemTime) -> Result<StoredKey, StoreError> {
        self.0.revoke_boxed(id, at).await
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> Result<StoredKey, StoreError> {
        self.0.rotate_boxed(old_id, new, old_valid_until).await
    }

    fn version(&self) -> impl Future<Output = Result<StoreVersion, StoreError>> + Send {
        self.0.version_boxed()
    }
}

/// Oldest first; the id breaks ties so that the order is stable.
pub(crate) fn sort_keys(keys: &mut [StoredKey]) {
    keys.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.id.cmp(&b.id))
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A record for tests, created at a fixed time.
    pub(crate) fn key(id: &str, name: &str) -> StoredKey {
        StoredKey {
            id: id.to_owned(),
            name: name.to_owned(),
            hash: [7; 32],
            pepper_id: "0011223344556677".to_owned(),
            scopes: vec!["sessions:create".to_owned()],
            created_at: time(1_800_000_000),
            expires_at: None,
            bound_spiffe: None,
            revoked_at: None,
            replaced_by: None,
            grace_until: None,
            tag: Some([9; 32]),
        }
    }

    #[test]
    fn records_round_trip_and_refuse_damage() {
        let mut k = key("abcd", "n");
        let untagged = StoredKey {
            tag: None,
            ..k.clone()
        };
        assert_eq!(
            StoredKey::decode("abcd", &untagged.encode()).unwrap(),
            untagged
        );
        k.revoked_at = Some(time(5));
        k.bound_spiffe = Some("spiffe://example.org/a".into());
        let bytes = k.encode();
        assert_eq!(StoredKey::decode("abcd", &bytes).unwrap(), k);
        assert!(StoredKey::decode("other", &bytes).is_err());
        assert!(StoredKey::decode("abcd", b"{}").is_err());
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("\"v\":1", "\"v\":9");
        assert!(StoredKey::decode("abcd", text.as_bytes()).is_err());
        let short_tag = String::from_utf8(k.encode())
            .unwrap()
            .replace(&"09".repeat(32), "0909");
        assert!(StoredKey::decode("abcd", short_tag.as_bytes()).is_err());
    }

    #[test]
    fn state_follows_expiry_grace_and_revocation() {
        let mut k = key("abcd", "n");
        assert_eq!(k.state(time(1)), KeyState::Active);
        k.expires_at = Some(time(100));
        assert!(k.is_usable(time(99)));
        assert_eq!(k.state(time(100)), KeyState::Expired);
        // A grace period never outlives the key's own expiry.
        k.apply_rotation("next", time(500)).unwrap();
        assert_eq!(k.valid_until(), Some(time(100)));
        assert_eq!(k.state(time(100)), KeyState::Expired);
        k.expires_at = None;
        assert_eq!(k.state(time(499)), KeyState::Rotated { until: time(500) });
        k.apply_revoke(time(10));
        assert_eq!(k.state(time(11)), KeyState::Revoked);
    }

    #[test]
    fn debug_leaves_the_hash_out() {
        let k = key("abcd", "n");
        let shown = format!("{k:?}");
        assert!(!shown.contains("hash") && !shown.contains("tag"), "{shown}");
        assert!(!shown.contains(&idgate_codec::hex::encode(&k.hash)));
    }
}
