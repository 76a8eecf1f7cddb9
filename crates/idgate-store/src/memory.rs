//! The in-memory backend: for tests and for a single process that needs nothing to survive
//! a restart.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use crate::StoreError;
use crate::api_keys::{ApiKeyStore, StoreVersion, StoredKey, VersionInner, sort_keys};

#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: BTreeMap<String, StoredKey>,
    /// Bumped on every write.
    version: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every write below completes or leaves the map as it was, so a panic elsewhere while
        // the lock was held leaves nothing half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ApiKeyStore for MemoryStore {
    fn insert(&self, key: &StoredKey) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.keys.contains_key(&key.id) {
            return Err(StoreError::Exists(key.id.clone()));
        }
        inner.keys.insert(key.id.clone(), key.clone());
        inner.version += 1;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        Ok(self.lock().keys.get(id).cloned())
    }

    fn list(&self) -> Result<Vec<StoredKey>, StoreError> {
        let mut keys: Vec<StoredKey> = self.lock().keys.values().cloned().collect();
        sort_keys(&mut keys);
        Ok(keys)
    }

    fn revoke(&self, id: &str, at: SystemTime) -> Result<StoredKey, StoreError> {
        let mut inner = self.lock();
        let key = inner
            .keys
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        key.apply_revoke(at);
        let out = key.clone();
        inner.version += 1;
        Ok(out)
    }

    fn rotate(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> Result<StoredKey, StoreError> {
        let mut inner = self.lock();
        let mut old = inner
            .keys
            .get(old_id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(old_id.to_owned()))?;
        if inner.keys.contains_key(&new.id) {
            return Err(StoreError::Exists(new.id.clone()));
        }
        old.apply_rotation(&new.id, old_valid_until)?;
        inner.keys.insert(old.id.clone(), old.clone());
        inner.keys.insert(new.id.clone(), new.clone());
        inner.version += 1;
        Ok(old)
    }

    fn version(&self) -> Result<StoreVersion, StoreError> {
        Ok(StoreVersion(VersionInner::Counter(self.lock().version)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meets_the_store_contract() {
        crate::api_keys::tests::contract(&MemoryStore::new());
    }
}
