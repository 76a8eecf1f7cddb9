//! The per-upstream connection cap (`max_connections`) and its bounded wait queue
//! (`max_pending`, `pending_timeout`).
//!
//! A [`Slot`] stands for one upstream connection (in use or idle in the pool) or, for
//! `http2 = true` upstreams, one request in flight. A request that finds no idle connection
//! and no free slot waits, at most `pending_timeout` and behind at most `max_pending` others,
//! until a connection is given back to the pool or closed; otherwise it is refused. The
//! fast path (an idle connection, or a free slot) costs one atomic operation, and a request
//! only registers a waker when it has to wait.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::sync::{Notify, Semaphore};

/// Why a request got no upstream connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Saturated {
    #[error("every upstream connection is busy and the wait queue is full")]
    QueueFull,
    #[error("no upstream connection became free within pending_timeout")]
    QueueTimeout,
}

impl Saturated {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::QueueFull => "queue_full",
            Self::QueueTimeout => "queue_timeout",
        }
    }
}

/// One upstream's cap.
#[derive(Debug)]
pub struct ConnLimit {
    shared: Arc<Shared>,
    max_pending: usize,
    pending_timeout: Duration,
}

#[derive(Debug)]
struct Shared {
    slots: Semaphore,
    /// Signalled when a slot or an idle connection becomes free while someone waits.
    freed: Notify,
    waiting: AtomicUsize,
}

impl Shared {
    fn freed(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_one();
        }
    }
}

/// A place under the cap, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    shared: Arc<Shared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.slots.add_permits(1);
        self.shared.freed();
    }
}

/// What a request waited for: a connection from the pool, or the right to open one.
#[derive(Debug)]
pub enum Acquired<T> {
    Reused(T),
    New(Slot),
}

/// Takes one from the waiting count when the waiter leaves, however it leaves.
struct Waiting<'a>(&'a Shared);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnLimit {
    pub fn new(max_connections: usize, max_pending: usize, pending_timeout: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                slots: Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS)),
                freed: Notify::new(),
                waiting: AtomicUsize::new(0),
            }),
            max_pending,
            pending_timeout,
        }
    }

    fn try_slot(&self) -> Option<Slot> {
        let permit = self.shared.slots.try_acquire().ok()?;
        permit.forget();
        Some(Slot {
            shared: self.shared.clone(),
        })
    }

    /// Tells a waiting request that an idle connection is back in the pool.
    pub fn idle_returned(&self) {
        self.shared.freed();
    }

    /// A connection `take` finds (the pool's idle list), or a slot to open a new one; when
    /// neither is free, waits within the queue's bounds.
    pub async fn acquire<T>(
        &self,
        mut take: impl FnMut() -> Option<T>,
    ) -> Result<Acquired<T>, Saturated> {
        if let Some(t) = take() {
            return Ok(Acquired::Reused(t));
        }
        if let Some(slot) = self.try_slot() {
            return Ok(Acquired::New(slot));
        }
        let queued = self.shared.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.shared);
        if queued >= self.max_pending {
            return Err(Saturated::QueueFull);
        }
        let wait = async {
            loop {
                // Registered before looking, so that a release in between is not missed.
                let mut freed = pin!(self.shared.freed.notified());
                freed.as_mut().enable();
                if let Some(t) = take() {
                    return Acquired::Reused(t);
                }
                if let Some(slot) = self.try_slot() {
                    return Acquired::New(slot);
                }
                freed.await;
            }
        };
        tokio::time::timeout(self.pending_timeout, wait)
            .await
            .map_err(|_| Saturated::QueueTimeout)
    }

    /// A slot for one request in flight (`http2 = true` upstreams, whose connections are
    /// hyper's).
    pub async fn request_slot(&self) -> Result<Slot, Saturated> {
        match self.acquire(|| None::<std::convert::Infallible>).await? {
            Acquired::New(slot) => Ok(slot),
        }
    }
}

/// A response body that holds its request's [`Slot`] until it is dropped.
#[derive(Debug)]
pub struct Held<B> {
    body: B,
    _slot: Slot,
}

impl<B> Held<B> {
    pub fn new(body: B, slot: Slot) -> Self {
        Self { body, _slot: slot }
    }
}

impl<B: Body + Unpin> Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_gets_the_slot_a_closed_connection_frees() {
        let limit = ConnLimit::new(1, 1, Duration::from_secs(5));
        let first = limit.request_slot().await.unwrap();
        let waiter = limit.request_slot();
        let release = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(first);
        };
        let (got, ()) = tokio::join!(waiter, release);
        assert!(got.is_ok());
    }

    #[tokio::test]
    async fn a_waiter_takes_a_connection_given_back_to_the_pool() {
        let limit = ConnLimit::new(1, 1, Duration::from_secs(5));
        let _busy = limit.request_slot().await.unwrap();
        let idle = std::sync::Mutex::new(None::<u8>);
        let waiter = limit.acquire(|| idle.lock().unwrap().take());
        let give_back = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            *idle.lock().unwrap() = Some(7);
            limit.idle_returned();
        };
        let (got, ()) = tokio::join!(waiter, give_back);
        assert!(matches!(got, Ok(Acquired::Reused(7))));
    }

    #[tokio::test]
    async fn beyond_the_queue_or_its_timeout_a_request_is_refused() {
        let limit = ConnLimit::new(1, 1, Duration::from_millis(100));
        let _busy = limit.request_slot().await.unwrap();
        let (queued, refused) = tokio::join!(limit.request_slot(), async {
            tokio::task::yield_now().await;
            limit.request_slot().await
        });
        assert_eq!(queued.err(), Some(Saturated::QueueTimeout));
        assert_eq!(refused.err(), Some(Saturated::QueueFull));
        let none_queued = ConnLimit::new(1, 0, Duration::from_secs(5));
        let _busy = none_queued.request_slot().await.unwrap();
        assert_eq!(
            none_queued.request_slot().await.err(),
            Some(Saturated::QueueFull)
        );
    }
}
