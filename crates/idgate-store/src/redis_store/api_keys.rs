//! API key records over Redis: one hash of id → the versioned JSON every backend stores
//! (`StoredKey::encode`), and a version counter that every write increments, so that a
//! gateway polling `version()` sees a revocation on any replica at its next poll.
//!
//! Revocation and rotation change a record by the same Rust code as the other backends: the
//! record is read, changed, and written back by a script that first checks the record is
//! still the one read (compare and set), trying again when another writer came between.

use std::sync::LazyLock;
use std::time::SystemTime;

use redis::{Script, Value};

use super::RedisStore;
use super::reply::{array, bad, int, opt_bytes};
use crate::StoreError;
use crate::api_keys::{ApiKeyStore, StoreVersion, StoredKey, VersionInner, sort_keys};

/// Adds a record unless its id is taken. KEYS: records, version. ARGV: id, record.
static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('INCR', KEYS[2])
return 1
",
    )
});

/// Replaces records that are still as read. KEYS: records, version. ARGV: then pairs of
/// (id, the record as read or '' for none, the record to write). Returns 0 (and changes
/// nothing) when any record changed since it was read.
static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 1, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i]) or ''
  if cur ~= ARGV[i + 1] then return 0 end
end
for i = 1, #ARGV, 3 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 2])
end
redis.call('INCR', KEYS[2])
return 1
",
    )
});

/// How often a revocation or rotation tries again when other writers keep coming between
/// its read and its write (each try is a round trip; writes are CLI actions, rare).
const SWAP_TRIES: usize = 16;

impl RedisStore {
    fn records_key(&self) -> String {
        self.key("{keys}:records")
    }

    fn version_key(&self) -> String {
        self.key("{keys}:version")
    }

    /// The raw records of `ids`, read together.
    async fn read_raw(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let key = self.records_key();
        let reply: Value = self
            .call(|mut c| async move {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&key).arg(ids);
                cmd.query_async(&mut c).await
            })
            .await?;
        array(reply)?.into_iter().map(opt_bytes).collect()
    }

    /// Writes `(id, as read, new)` if every record is still as read; `false` otherwise.
    async fn swap(&self, changes: &[(&str, &[u8], Vec<u8>)]) -> Result<bool, StoreError> {
        let (records, version) = (self.records_key(), self.version_key());
        let done: u64 = self
            .call(|mut c| async move {
                let mut inv = SWAP.key(&records);
                inv.key(&version);
                for (id, read, new) in changes {
                    inv.arg(*id).arg(*read).arg(new.as_slice());
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        Ok(done == 1)
    }
}

impl ApiKeyStore for RedisStore {
    async fn insert(&self, key: &StoredKey) -> Result<(), StoreError> {
        let (records, version) = (self.records_key(), self.version_key());
        let record = key.encode();
        let id = key.id.as_str();
        let added: u64 = self
            .call(|mut c| async move {
                INSERT
                    .key(&records)
                    .key(&version)
                    .arg(id)
                    .arg(record.as_slice())
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if added == 1 {
            Ok(())
        } else {
            Err(StoreError::Exists(key.id.clone()))
        }
    }

    async fn get(&self, id: &str) -> Result<Option<StoredKey>, StoreError> {
        match self.read_raw(&[id]).await?.pop().flatten() {
            Some(bytes) => StoredKey::decode(id, &bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<StoredKey>, StoreError> {
        let key = self.records_key();
        let reply: Value = self
            .call(|mut c| async move { redis::cmd("HGETALL").arg(&key).query_async(&mut c).await })
            .await?;
        let items = match reply {
            // RESP3 answers a map; RESP2 a flat list of field, value.
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            other => array(other)?,
        };
        let mut keys = Vec::with_capacity(items.len() / 2);
        let mut items = items.into_iter();
        while let (Some(id), Some(record)) = (items.next(), items.next()) {
            let id = opt_bytes(id)?.ok_or_else(|| bad("a record without an id"))?;
            let id = String::from_utf8(id).map_err(|_| bad("an id that is not UTF-8"))?;
            let record = opt_bytes(record)?.ok_or_else(|| bad("an empty record"))?;
            keys.push(StoredKey::decode(&id, &record)?);
        }
        sort_keys(&mut keys);
        Ok(keys)
    }

    async fn revoke(&self, id: &str, at: SystemTime) -> Result<StoredKey, StoreError> {
        for _ in 0..SWAP_TRIES {
            let read = self
                .read_raw(&[id])
                .await?
                .pop()
                .flatten()
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            let mut key = StoredKey::decode(id, &read)?;
            key.apply_revoke(at);
            if self.swap(&[(id, &read, key.encode())]).await? {
                return Ok(key);
            }
        }
        Err(contended())
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &StoredKey,
        old_valid_until: SystemTime,
    ) -> Result<StoredKey, StoreError> {
        for _ in 0..SWAP_TRIES {
            let mut read = self.read_raw(&[old_id, &new.id]).await?.into_iter();
            let (Some(old_read), Some(new_read)) = (read.next(), read.next()) else {
                return Err(bad("a short reply"));
            };
            let old_read = old_read.ok_or_else(|| StoreError::NotFound(old_id.to_owned()))?;
            if new_read.is_some() {
                return Err(StoreError::Exists(new.id.clone()));
            }
            let mut old = StoredKey::decode(old_id, &old_read)?;
            old.apply_rotation(&new.id, old_valid_until)?;
            let changes = [
                (old_id, old_read.as_slice(), old.encode()),
                (new.id.as_str(), &b""[..], new.encode()),
            ];
            if self.swap(&changes).await? {
                return Ok(old);
            }
        }
        Err(contended())
    }

    async fn version(&self) -> Result<StoreVersion, StoreError> {
        let key = self.version_key();
        let reply: Value = self
            .call(|mut c| async move { redis::cmd("GET").arg(&key).query_async(&mut c).await })
            .await?;
        let n = match reply {
            Value::Nil => 0,
            v => int(&v)?,
        };
        Ok(StoreVersion(VersionInner::Counter(n)))
    }
}

fn contended() -> StoreError {
    StoreError::Unavailable {
        reason: "API key records kept changing during the write; try again".to_owned(),
    }
}
