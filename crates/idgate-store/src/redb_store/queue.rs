//! Queues in the redb file: one write transaction per push, claim, ack or nack, so a lease
//! is held by one claimer across every process sharing the file and survives a restart.
//!
//! A claim reads the queue's bookkeeping (never its payloads) in push order, twice: once for
//! the order keys that are out, once to choose. That suits an outbox of thousands of
//! messages; a backlog of millions would want an index by due time.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use redb::{ReadableTable, Table, TableDefinition};

use super::{Inner, RedbStore, db_err};
use crate::StoreError;
use crate::queue::{
    self, Claimed, Lease, MessageId, MessageInfo, Meta, NackOutcome, NewMessage, Queue, QueueRows,
    QueueStats, ReadQueueRows,
};
use crate::types::QueueName;

/// Queue messages by (queue, sequence): their bookkeeping as versioned JSON.
const QUEUE_META: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue_meta");
/// Their payloads, apart so that scanning a queue reads no payload.
const QUEUE_PAYLOAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue_payload");
/// The last sequence number given out per queue.
const QUEUE_SEQ: TableDefinition<&str, u64> = TableDefinition::new("queue_seq");

fn decode_meta(queue: &str, seq: u64, bytes: &[u8]) -> Result<Meta, StoreError> {
    let corrupt = |reason: String| StoreError::CorruptRow {
        what: "queued message",
        key: format!("{queue}/{seq}"),
        reason,
    };
    let meta: Meta = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if meta.v != 1 {
        return Err(corrupt(format!(
            "record version {} is not supported",
            meta.v
        )));
    }
    Ok(meta)
}

fn encode_meta(meta: &Meta) -> Vec<u8> {
    // Numbers, booleans and strings always serialize.
    serde_json::to_vec(meta).unwrap_or_default()
}

fn scan_meta(
    table: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    path: &Path,
    queue: &str,
    f: &mut dyn FnMut(u64, &Meta) -> bool,
) -> Result<(), StoreError> {
    let range = table
        .range((queue, 0)..=(queue, u64::MAX))
        .map_err(|e| db_err(path, e))?;
    for entry in range {
        let (key, value) = entry.map_err(|e| db_err(path, e))?;
        let seq = key.value().1;
        if !f(seq, &decode_meta(queue, seq, value.value())?) {
            break;
        }
    }
    Ok(())
}

struct QueueTables<'t, 'p> {
    meta: Table<'t, (&'static str, u64), &'static [u8]>,
    payload: Table<'t, (&'static str, u64), &'static [u8]>,
    seq: Table<'t, &'static str, u64>,
    path: &'p Path,
}

impl ReadQueueRows for QueueTables<'_, '_> {
    fn meta(&self, queue: &str, seq: u64) -> Result<Option<Meta>, StoreError> {
        match self
            .meta
            .get((queue, seq))
            .map_err(|e| db_err(self.path, e))?
        {
            Some(v) => decode_meta(queue, seq, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn payload(&self, queue: &str, seq: u64) -> Result<Vec<u8>, StoreError> {
        match self
            .payload
            .get((queue, seq))
            .map_err(|e| db_err(self.path, e))?
        {
            Some(v) => Ok(v.value().to_vec()),
            None => Err(StoreError::NoMessage(MessageId::from_seq(seq))),
        }
    }

    fn scan(&self, queue: &str, f: &mut dyn FnMut(u64, &Meta) -> bool) -> Result<(), StoreError> {
        scan_meta(&self.meta, self.path, queue, f)
    }
}

impl QueueRows for QueueTables<'_, '_> {
    fn next_seq(&mut self, queue: &str) -> Result<u64, StoreError> {
        let path = self.path;
        let last = self
            .seq
            .get(queue)
            .map_err(|e| db_err(path, e))?
            .map_or(0, |v| v.value());
        let next = last + 1;
        self.seq.insert(queue, next).map_err(|e| db_err(path, e))?;
        Ok(next)
    }

    fn set_meta(&mut self, queue: &str, seq: u64, meta: &Meta) -> Result<(), StoreError> {
        self.meta
            .insert((queue, seq), encode_meta(meta).as_slice())
            .map_err(|e| db_err(self.path, e))?;
        Ok(())
    }

    fn insert(
        &mut self,
        queue: &str,
        seq: u64,
        meta: &Meta,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        self.set_meta(queue, seq, meta)?;
        self.payload
            .insert((queue, seq), payload)
            .map_err(|e| db_err(self.path, e))?;
        Ok(())
    }

    fn delete(&mut self, queue: &str, seq: u64) -> Result<(), StoreError> {
        let path = self.path;
        self.meta
            .remove((queue, seq))
            .map_err(|e| db_err(path, e))?;
        self.payload
            .remove((queue, seq))
            .map_err(|e| db_err(path, e))?;
        Ok(())
    }
}

/// The meta table as a read transaction sees it (lookups never read a payload).
struct ReadQueue<'a> {
    meta: &'a redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    path: &'a Path,
}

impl ReadQueueRows for ReadQueue<'_> {
    fn meta(&self, queue: &str, seq: u64) -> Result<Option<Meta>, StoreError> {
        match self
            .meta
            .get((queue, seq))
            .map_err(|e| db_err(self.path, e))?
        {
            Some(v) => decode_meta(queue, seq, v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn payload(&self, _queue: &str, seq: u64) -> Result<Vec<u8>, StoreError> {
        Err(StoreError::NoMessage(MessageId::from_seq(seq)))
    }

    fn scan(&self, queue: &str, f: &mut dyn FnMut(u64, &Meta) -> bool) -> Result<(), StoreError> {
        scan_meta(self.meta, self.path, queue, f)
    }
}

impl Inner {
    fn write_queue<T>(
        &self,
        f: impl FnOnce(&mut QueueTables<'_, '_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        self.transact(|txn| {
            let mut tables = QueueTables {
                meta: txn.open_table(QUEUE_META).map_err(|e| db_err(path, e))?,
                payload: txn.open_table(QUEUE_PAYLOAD).map_err(|e| db_err(path, e))?,
                seq: txn.open_table(QUEUE_SEQ).map_err(|e| db_err(path, e))?,
                path,
            };
            f(&mut tables)
        })
    }

    fn read_queue<T: Default>(
        &self,
        f: impl FnOnce(&ReadQueue<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let path = &self.path;
        Ok(self
            .read(QUEUE_META, |meta| f(&ReadQueue { meta, path }))?
            .unwrap_or_default())
    }
}

impl Queue for RedbStore {
    fn push(
        &self,
        queue: &QueueName,
        message: NewMessage,
        now: SystemTime,
    ) -> impl Future<Output = Result<MessageId, StoreError>> + Send {
        let queue = queue.clone();
        self.blocking(move |s| s.write_queue(|t| queue::push(t, queue.as_str(), &message, now)))
    }

    fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send {
        let queue = queue.clone();
        self.blocking(move |s| s.write_queue(|t| queue::claim(t, queue.as_str(), max, lease, now)))
    }

    fn ack(
        &self,
        queue: &QueueName,
        lease: &Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (queue, lease) = (queue.clone(), lease.clone());
        self.blocking(move |s| s.write_queue(|t| queue::ack(t, queue.as_str(), &lease)))
    }

    fn nack(
        &self,
        queue: &QueueName,
        lease: &Lease,
        retry_at: SystemTime,
        reason: &str,
    ) -> impl Future<Output = Result<NackOutcome, StoreError>> + Send {
        let (queue, lease, reason) = (queue.clone(), lease.clone(), reason.to_owned());
        self.blocking(move |s| {
            s.write_queue(|t| queue::nack(t, queue.as_str(), &lease, retry_at, &reason))
        })
    }

    fn info(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<MessageInfo>, StoreError>> + Send {
        let (queue, id) = (queue.clone(), id.clone());
        self.blocking(move |s| s.read_queue(|t| queue::info(t, queue.as_str(), &id, now)))
    }

    fn stats(
        &self,
        queue: &QueueName,
        now: SystemTime,
    ) -> impl Future<Output = Result<QueueStats, StoreError>> + Send {
        let queue = queue.clone();
        self.blocking(move |s| s.read_queue(|t| queue::stats(t, queue.as_str(), now)))
    }

    fn dead_letters(
        &self,
        queue: &QueueName,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<MessageInfo>, StoreError>> + Send {
        let queue = queue.clone();
        self.blocking(move |s| s.read_queue(|t| queue::dead_letters(t, queue.as_str(), now)))
    }

    fn revive(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let (queue, id) = (queue.clone(), id.clone());
        self.blocking(move |s| s.write_queue(|t| queue::revive(t, queue.as_str(), &id, now)))
    }

    fn bury(
        &self,
        queue: &QueueName,
        lease: &Lease,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (queue, lease, reason) = (queue.clone(), lease.clone(), reason.to_owned());
        self.blocking(move |s| s.write_queue(|t| queue::bury(t, queue.as_str(), &lease, &reason)))
    }

    fn release(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let (queue, id) = (queue.clone(), id.clone());
        self.blocking(move |s| s.write_queue(|t| queue::release(t, queue.as_str(), &id, now)))
    }

    fn peek(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<(MessageInfo, Vec<u8>)>, StoreError>> + Send {
        let (queue, id) = (queue.clone(), id.clone());
        // Two read transactions rather than a write one (which a commit would sync to disk):
        // a message acked in between has no payload left, and is reported gone.
        self.blocking(move |s| {
            let Some(info) = s.read_queue(|t| queue::info(t, queue.as_str(), &id, now))? else {
                return Ok(None);
            };
            let seq = id.seq()?;
            let path = &s.path;
            let payload = s.read(QUEUE_PAYLOAD, |t| {
                Ok(t.get((queue.as_str(), seq))
                    .map_err(|e| db_err(path, e))?
                    .map(|v| v.value().to_vec()))
            })?;
            Ok(payload.flatten().map(|p| (info, p)))
        })
    }

    fn delete_message(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let (queue, id) = (queue.clone(), id.clone());
        self.blocking(move |s| {
            s.write_queue(|t| queue::delete_message(t, queue.as_str(), &id, now))
        })
    }

    fn delete_dead(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let (queue, id) = (queue.clone(), id.clone());
        self.blocking(move |s| s.write_queue(|t| queue::delete_dead(t, queue.as_str(), &id, now)))
    }

    fn purge_due(
        &self,
        queue: &QueueName,
        max: usize,
        now: SystemTime,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        let queue = queue.clone();
        self.blocking(move |s| s.write_queue(|t| queue::purge_due(t, queue.as_str(), max, now)))
    }

    fn messages(
        &self,
        queue: &QueueName,
        after: Option<&MessageId>,
        limit: usize,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<MessageInfo>, StoreError>> + Send {
        let (queue, after) = (queue.clone(), after.cloned());
        self.blocking(move |s| {
            s.read_queue(|t| queue::messages(t, queue.as_str(), after.as_ref(), limit, now))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::redb_store::test_support::{open, start};
    use crate::{DEFAULT_WAIT, conformance};

    #[tokio::test]
    async fn meets_the_queue_contract() {
        let (_dir, store) = open();
        conformance::queue(&store, start()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hands_each_message_to_one_claimer() {
        let (_dir, store) = open();
        conformance::queue_concurrently(Arc::new(store), start()).await;
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let q = QueueName::new("outbox").unwrap();
        let lease = Duration::from_secs(30);
        let old = {
            let store = RedbStore::open(&path, DEFAULT_WAIT).unwrap();
            let m = NewMessage {
                payload: b"event".to_vec(),
                order_key: Some("session-1".into()),
                max_attempts: 5,
                not_before: None,
            };
            store.push(&q, m, start()).await.unwrap();
            store.claim(&q, 1, lease, start()).await.unwrap()
        };
        // The process that held the lease died; after the lease, another takes the message.
        let store = RedbStore::open(&path, DEFAULT_WAIT).unwrap();
        let taken = store.claim(&q, 1, lease, start() + lease).await.unwrap();
        assert_eq!(taken[0].lease.attempt, 2);
        assert!(matches!(
            store.ack(&q, &old[0].lease).await,
            Err(StoreError::LeaseLost(_))
        ));
        store.ack(&q, &taken[0].lease).await.unwrap();
    }
}
