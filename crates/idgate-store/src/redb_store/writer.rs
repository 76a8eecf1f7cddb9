//! The state writes of one open redb file (counters, nonces, ownership records) go through
//! one writer thread, which commits what is waiting in one transaction.
//!
//! A redb file takes one write transaction at a time, and each commit waits for the disk.
//! Run from the runtime's blocking pool, one task per write, a burst of writes (a flood of
//! failed logins, each counted) would hold a blocking thread per write, all waiting for the
//! file, and queue still more behind them: a caller that gives up at its timeout leaves
//! its write queued. Everything else that needs a blocking thread (API key reloads, reads,
//! the outbox) would wait behind that backlog. Here the writes wait in a bounded queue
//! instead: a write that finds it full fails at once (`StoreError::Overloaded`), and the
//! caller's failure mode decides, as for any other state error. One commit for every write
//! waiting also makes the file keep up with far more writes than one commit each.
//!
//! Each write is still atomic and durable when it answers: it answers only once the
//! transaction holding it is committed. When any write of a batch fails, the batch is
//! rolled back and each of its writes is made again in a transaction of its own, so that
//! one write's error stays its own.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

use super::Inner;
use crate::StoreError;
use crate::counters::{GcraDecision, GcraLimit, GcraTake, WindowCount};
use crate::nonces::OwnerRecord;
use crate::state::{self, Kind, Rows};
use crate::types::Owner;

/// How many writes may wait for the writer; one more fails at once.
pub(crate) const QUEUE: usize = 1024;

/// How many waiting writes one transaction takes at most.
const BATCH: usize = 256;

/// One state write.
#[derive(Debug)]
pub(crate) enum Op {
    Increment {
        key: String,
        by: u64,
        window: Duration,
        now: SystemTime,
    },
    Gcra {
        key: String,
        limit: GcraLimit,
        take: GcraTake,
        now: SystemTime,
    },
    Nonce {
        nonce: String,
        window: Duration,
        now: SystemTime,
    },
    PutOwner {
        object: String,
        owner: Owner,
        retention: Duration,
        now: SystemTime,
    },
    Remove {
        kind: Kind,
        key: String,
    },
    Sweep {
        kinds: &'static [Kind],
        now: u64,
    },
}

/// What a write answers, by the kind of write.
#[derive(Debug)]
pub(crate) enum Done {
    Window(WindowCount),
    Gcra(GcraDecision),
    Fresh(bool),
    Owner(OwnerRecord),
    Removed(bool),
    Swept(u64),
}

impl Op {
    fn apply(&self, rows: &mut impl Rows) -> Result<Done, StoreError> {
        Ok(match self {
            Self::Increment {
                key,
                by,
                window,
                now,
            } => Done::Window(state::increment(rows, key, *by, *window, *now)?),
            Self::Gcra {
                key,
                limit,
                take,
                now,
            } => Done::Gcra(state::check_gcra(rows, key, limit, *take, *now)?),
            Self::Nonce { nonce, window, now } => {
                Done::Fresh(state::insert_nonce(rows, nonce, *window, *now)?)
            }
            Self::PutOwner {
                object,
                owner,
                retention,
                now,
            } => Done::Owner(state::put_owner(rows, object, owner, *retention, *now)?),
            Self::Remove { kind, key } => Done::Removed(rows.remove(*kind, key)?),
            Self::Sweep { kinds, now } => Done::Swept(rows.sweep(kinds, *now, usize::MAX)?),
        })
    }
}

/// A write and where its answer goes.
pub(crate) struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// The way to a file's writer thread, started by the first write.
pub(crate) type Writer = std::sync::OnceLock<SyncSender<Job>>;

fn answer_lost() -> StoreError {
    StoreError::Interrupted("the state writer stopped before answering".to_owned())
}

/// Queues `op` for the writer of `inner`'s file (starting it if need be) and waits for its
/// answer. Fails at once when [`QUEUE`] writes are waiting already.
pub(crate) async fn write(inner: &Arc<Inner>, op: Op) -> Result<Done, StoreError> {
    if !inner.writable() {
        return Err(StoreError::ReadOnly);
    }
    let sender = match inner.writer.get() {
        Some(sender) => sender,
        None => {
            let sender = start(Arc::downgrade(inner))?;
            // Another write may have started one first: then this one's thread ends at
            // once, its queue dropped unused.
            let _ = inner.writer.set(sender);
            inner.writer.get().ok_or_else(answer_lost)?
        }
    };
    let (reply, answer) = oneshot::channel();
    match sender.try_send(Job { op, reply }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => return Err(StoreError::Overloaded { capacity: QUEUE }),
        Err(TrySendError::Disconnected(_)) => return Err(answer_lost()),
    }
    answer.await.map_err(|_| answer_lost())?
}

fn start(inner: Weak<Inner>) -> Result<SyncSender<Job>, StoreError> {
    let (sender, jobs) = std::sync::mpsc::sync_channel(QUEUE);
    std::thread::Builder::new()
        .name("idgate-redb-writer".to_owned())
        .spawn(move || run(&jobs, &inner))
        .map_err(|e| StoreError::Interrupted(format!("cannot start the state writer: {e}")))?;
    Ok(sender)
}

/// Takes what is waiting, up to [`BATCH`], and writes it; ends when the store is dropped
/// (its end of the queue with it).
fn run(jobs: &Receiver<Job>, inner: &Weak<Inner>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = Vec::with_capacity(BATCH);
        batch.push(first);
        while batch.len() < BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else { return };
        // A panic fails this batch's writes (their answers dropped), not the ones after.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(|| write_batch(&inner, batch)));
    }
}

fn write_batch(inner: &Inner, batch: Vec<Job>) {
    if batch.len() > 1 {
        let mut answers = Vec::with_capacity(batch.len());
        let together = inner.write_state(|rows| {
            for job in &batch {
                answers.push(job.op.apply(rows)?);
            }
            Ok(())
        });
        if together.is_ok() {
            for (job, answer) in batch.into_iter().zip(answers) {
                let _ = job.reply.send(Ok(answer));
            }
            return;
        }
    }
    for job in batch {
        let answer = inner.write_state(|rows| job.op.apply(rows));
        let _ = job.reply.send(answer);
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Instant;

    use super::*;
    use crate::counters::Counters;
    use crate::redb_store::test_support::{open, start};
    use crate::redb_store::testing::HeldWrites;
    use crate::types::CounterKey;

    /// Polls `call` once: its answer when it has one at once, or the call itself.
    async fn poll_once<F: Future + Unpin>(mut call: F) -> Result<F::Output, F> {
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut call).poll(cx))).await;
        match polled {
            Poll::Ready(out) => Ok(out),
            Poll::Pending => Err(call),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_waiting_for_a_held_file_are_bounded_and_leave_the_blocking_pool_free() {
        let (_dir, store) = open();
        let window = Duration::from_secs(60);
        let keys: Vec<CounterKey> = (0..QUEUE + BATCH + 200)
            .map(|i| CounterKey::new(format!("authfail:api_key_id=k{i}")).unwrap())
            .collect();
        // The writer is started, and the file then held by another writer.
        store.increment(&keys[0], 1, window, start()).await.unwrap();
        let held = HeldWrites::on(store.path());

        // A write that cannot wait fails at once; the others wait for the file.
        let mut waiting = Vec::new();
        let mut refused = 0;
        for key in &keys {
            match poll_once(Box::pin(store.increment(key, 1, window, start()))).await {
                Ok(answer) => {
                    let e = answer.unwrap_err();
                    assert!(matches!(e, StoreError::Overloaded { .. }), "{e}");
                    refused += 1;
                }
                Err(call) => waiting.push(call),
            }
        }
        assert!(waiting.len() <= QUEUE + BATCH, "{} waiting", waiting.len());
        assert_eq!(waiting.len() + refused, keys.len());

        // The blocking pool is not held by the waiting writes, and reads still answer.
        let started = Instant::now();
        tokio::task::spawn_blocking(|| ()).await.unwrap();
        let read = Counters::get(&store, &keys[0], start());
        let read = tokio::time::timeout(Duration::from_secs(2), read).await;
        assert_eq!(read.unwrap().unwrap().unwrap().count, 1);
        assert!(started.elapsed() < Duration::from_secs(2));

        // Once the file is free, every waiting write is made.
        drop(held);
        for call in waiting {
            let count = tokio::time::timeout(Duration::from_secs(20), call).await;
            assert!(count.unwrap().unwrap().count >= 1);
        }
        let after = store.increment(&keys[0], 1, window, start()).await.unwrap();
        assert!(after.count >= 2);
    }

    #[tokio::test]
    async fn one_failing_write_of_a_batch_leaves_the_others_made() {
        let (_dir, store) = open();
        let window = Duration::from_secs(60);
        let good = CounterKey::new("good").unwrap();
        // An owner row that does not name a valid owner: putting another owner over it
        // fails when the row is read back.
        let object = crate::types::ObjectId::new("obj").unwrap();
        store
            .inner
            .write_state(|rows| {
                rows.put(
                    Kind::Owner,
                    object.as_str(),
                    state::Row {
                        deadline: u64::MAX,
                        number: 0,
                        text: "not a valid owner\n".to_owned(),
                    },
                )
            })
            .unwrap();
        // The writer is started and busy with a write held up by the file, so that the
        // next three wait together and are written as one batch.
        store.increment(&good, 0, window, start()).await.unwrap();
        let held = HeldWrites::on(store.path());
        let blocker = CounterKey::new("blocker").unwrap();
        let owner = Owner::new("apikey:batch").unwrap();
        let (_, a, b, c, ()) = tokio::join!(
            store.increment(&blocker, 1, window, start()),
            crate::nonces::Ownership::put(&store, &object, &owner, window, start()),
            store.increment(&good, 1, window, start()),
            store.increment(&good, 2, window, start()),
            // Polled after the others have queued their writes.
            async { drop(held) },
        );
        assert!(matches!(a, Err(StoreError::CorruptRow { .. })), "{a:?}");
        // In the order they were queued.
        assert_eq!((b.unwrap().count, c.unwrap().count), (1, 3));
        let total = Counters::get(&store, &good, start())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(total.count, 3);
    }
}
