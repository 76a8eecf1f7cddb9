//! The in-memory queues: every queue's messages in one ordered map under one lock.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::{Duration, SystemTime};

use super::MemoryStore;
use crate::StoreError;
use crate::queue::{
    self, Claimed, Lease, MessageId, MessageInfo, Meta, NackOutcome, NewMessage, Queue, QueueRows,
    QueueStats, ReadQueueRows,
};
use crate::types::QueueName;

/// Every queue's messages, by queue and push order.
#[derive(Debug)]
pub(super) struct QueueTables {
    pub(super) messages: BTreeMap<(String, u64), (Meta, Vec<u8>)>,
    pub(super) seqs: HashMap<String, u64>,
    pub(super) capacity: usize,
}

impl QueueRows for QueueTables {
    fn next_seq(&mut self, queue: &str) -> Result<u64, StoreError> {
        if self.messages.len() >= self.capacity {
            return Err(StoreError::Full {
                what: "queued messages",
                capacity: self.capacity,
            });
        }
        let seq = self.seqs.entry(queue.to_owned()).or_insert(0);
        *seq += 1;
        Ok(*seq)
    }

    fn set_meta(&mut self, queue: &str, seq: u64, meta: &Meta) -> Result<(), StoreError> {
        match self.messages.get_mut(&(queue.to_owned(), seq)) {
            Some((m, _)) => {
                *m = meta.clone();
                Ok(())
            }
            None => Err(StoreError::NoMessage(MessageId::from_seq(seq))),
        }
    }

    fn insert(
        &mut self,
        queue: &str,
        seq: u64,
        meta: &Meta,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        self.messages
            .insert((queue.to_owned(), seq), (meta.clone(), payload.to_vec()));
        Ok(())
    }

    fn delete(&mut self, queue: &str, seq: u64) -> Result<(), StoreError> {
        self.messages.remove(&(queue.to_owned(), seq));
        Ok(())
    }
}

impl ReadQueueRows for QueueTables {
    fn meta(&self, queue: &str, seq: u64) -> Result<Option<Meta>, StoreError> {
        Ok(self
            .messages
            .get(&(queue.to_owned(), seq))
            .map(|(m, _)| m.clone()))
    }

    fn payload(&self, queue: &str, seq: u64) -> Result<Vec<u8>, StoreError> {
        self.messages
            .get(&(queue.to_owned(), seq))
            .map(|(_, p)| p.clone())
            .ok_or_else(|| StoreError::NoMessage(MessageId::from_seq(seq)))
    }

    fn scan(&self, queue: &str, f: &mut dyn FnMut(u64, &Meta) -> bool) -> Result<(), StoreError> {
        let range = (queue.to_owned(), 0)..=(queue.to_owned(), u64::MAX);
        for ((_, seq), (meta, _)) in self.messages.range(range) {
            if !f(*seq, meta) {
                break;
            }
        }
        Ok(())
    }
}

impl Queue for MemoryStore {
    fn push(
        &self,
        queue: &QueueName,
        message: NewMessage,
        now: SystemTime,
    ) -> impl Future<Output = Result<MessageId, StoreError>> + Send {
        std::future::ready(queue::push(
            &mut *self.queues(),
            queue.as_str(),
            &message,
            now,
        ))
    }

    fn claim(
        &self,
        queue: &QueueName,
        max: usize,
        lease: Duration,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<Claimed>, StoreError>> + Send {
        std::future::ready(queue::claim(
            &mut *self.queues(),
            queue.as_str(),
            max,
            lease,
            now,
        ))
    }

    fn ack(
        &self,
        queue: &QueueName,
        lease: &Lease,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(queue::ack(&mut *self.queues(), queue.as_str(), lease))
    }

    fn nack(
        &self,
        queue: &QueueName,
        lease: &Lease,
        retry_at: SystemTime,
        reason: &str,
    ) -> impl Future<Output = Result<NackOutcome, StoreError>> + Send {
        std::future::ready(queue::nack(
            &mut *self.queues(),
            queue.as_str(),
            lease,
            retry_at,
            reason,
        ))
    }

    fn info(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<MessageInfo>, StoreError>> + Send {
        std::future::ready(queue::info(&*self.queues(), queue.as_str(), id, now))
    }

    fn stats(
        &self,
        queue: &QueueName,
        now: SystemTime,
    ) -> impl Future<Output = Result<QueueStats, StoreError>> + Send {
        std::future::ready(queue::stats(&*self.queues(), queue.as_str(), now))
    }

    fn dead_letters(
        &self,
        queue: &QueueName,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<MessageInfo>, StoreError>> + Send {
        std::future::ready(queue::dead_letters(&*self.queues(), queue.as_str(), now))
    }

    fn revive(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(queue::revive(&mut *self.queues(), queue.as_str(), id, now))
    }

    fn bury(
        &self,
        queue: &QueueName,
        lease: &Lease,
        reason: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::ready(queue::bury(
            &mut *self.queues(),
            queue.as_str(),
            lease,
            reason,
        ))
    }

    fn release(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(queue::release(&mut *self.queues(), queue.as_str(), id, now))
    }

    fn peek(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<Option<(MessageInfo, Vec<u8>)>, StoreError>> + Send {
        std::future::ready(queue::peek(&*self.queues(), queue.as_str(), id, now))
    }

    fn delete_message(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(queue::delete_message(
            &mut *self.queues(),
            queue.as_str(),
            id,
            now,
        ))
    }

    fn delete_dead(
        &self,
        queue: &QueueName,
        id: &MessageId,
        now: SystemTime,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        std::future::ready(queue::delete_dead(
            &mut *self.queues(),
            queue.as_str(),
            id,
            now,
        ))
    }

    fn purge_due(
        &self,
        queue: &QueueName,
        max: usize,
        now: SystemTime,
    ) -> impl Future<Output = Result<usize, StoreError>> + Send {
        std::future::ready(queue::purge_due(
            &mut *self.queues(),
            queue.as_str(),
            max,
            now,
        ))
    }

    fn messages(
        &self,
        queue: &QueueName,
        after: Option<&MessageId>,
        limit: usize,
        now: SystemTime,
    ) -> impl Future<Output = Result<Vec<MessageInfo>, StoreError>> + Send {
        std::future::ready(queue::messages(
            &*self.queues(),
            queue.as_str(),
            after,
            limit,
            now,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::conformance;

    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[tokio::test]
    async fn meets_the_queue_contract() {
        conformance::queue(&MemoryStore::new(), start()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn hands_each_message_to_one_claimer() {
        conformance::queue_concurrently(Arc::new(MemoryStore::new()), start()).await;
    }
    #[tokio::test]
    async fn a_dead_letter_revived_between_listing_and_purge_is_not_deleted() {
        conformance::dead_letter_revived_before_its_purge(&MemoryStore::new(), start()).await;
    }

    #[tokio::test]
    async fn a_revived_dead_letter_counts_its_attempts_from_its_revival() {
        conformance::revived_attempts_count_from_the_revival(&MemoryStore::new(), start()).await;
    }
}
