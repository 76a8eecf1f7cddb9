//! The drain's last step. Every request in the pipeline is counted, so that the drain knows
//! when the last of their records is in the audit queue; when `drain_timeout` passes with
//! connections still open, they are cut. Dropping a connection drops what it serves: an
//! HTTP/1.1 connection its request in flight, an HTTP/2 connection its streams (each reset,
//! so that its task ends), and a request dropped unanswered is recorded with status 499 (see
//! `RequestCtx`'s `Drop`).

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;

/// The requests in the pipeline: from their arrival to their answer (or their drop).
#[derive(Debug, Default)]
pub(crate) struct Requests {
    count: AtomicUsize,
    /// Set once the drain waits for the count to reach zero: only then does the request that
    /// brings it there wake the drain, so that an idle gateway takes no lock per request.
    awaited: AtomicBool,
    none: Notify,
}

impl Requests {
    /// Counts `work` (one request's pipeline) until it is dropped.
    pub(super) fn count<F: Future>(self: &Arc<Self>, work: Pin<Box<F>>) -> Counted<F> {
        self.count.fetch_add(1, Ordering::SeqCst);
        Counted {
            work,
            _count: Count(self.clone()),
        }
    }

    /// How many requests are in the pipeline now.
    pub(crate) fn in_flight(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Completes once no request is in the pipeline.
    pub(crate) async fn ended(&self) {
        self.awaited.store(true, Ordering::SeqCst);
        loop {
            // Registered before the count is read: a request that ends in between wakes it.
            let mut woken = pin!(self.none.notified());
            woken.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            woken.await;
        }
    }
}

/// One request's place in [`Requests`].
#[derive(Debug)]
struct Count(Arc<Requests>);

impl Drop for Count {
    fn drop(&mut self) {
        let requests = &self.0;
        if requests.count.fetch_sub(1, Ordering::SeqCst) == 1
            && requests.awaited.load(Ordering::SeqCst)
        {
            requests.none.notify_waiters();
        }
    }
}

/// A request's pipeline, counted until it is dropped.
pub(super) struct Counted<F> {
    // Dropped before the count (fields drop in order): a request dropped unanswered has
    // made its record by the time the drain sees it gone.
    work: Pin<Box<F>>,
    _count: Count,
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut().work.as_mut().poll(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Records in the order they are made, as the audit queue would take them.
    #[derive(Default)]
    struct Log(std::sync::Mutex<Vec<&'static str>>);

    struct Recorded(Arc<Log>, Arc<Requests>);

    impl Drop for Recorded {
        fn drop(&mut self) {
            // What the drain would see when the record is made: the request still counted.
            let seen = if self.1.in_flight() == 1 {
                "record, still counted"
            } else {
                "record, no longer counted"
            };
            self.0.0.lock().unwrap().push(seen);
        }
    }

    #[tokio::test]
    async fn a_request_dropped_unanswered_makes_its_record_before_the_drain_sees_it_end() {
        let requests = Arc::new(Requests::default());
        let log = Arc::new(Log::default());
        let record = Recorded(log.clone(), requests.clone());
        let work = requests.count(Box::pin(async move {
            let _record = record;
            std::future::pending::<()>().await;
        }));
        let mut work = Box::pin(work);
        // Polled once, as a connection would, then dropped unanswered (the connection cut).
        assert!(futures_poll_once(work.as_mut()).await.is_pending());
        assert_eq!(requests.in_flight(), 1);
        let ended = tokio::spawn({
            let requests = requests.clone();
            async move { requests.ended().await }
        });
        drop(work);
        tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the drain did not see the request end")
            .unwrap();
        assert_eq!(*log.0.lock().unwrap(), ["record, still counted"]);
        assert_eq!(requests.in_flight(), 0);
    }

    #[tokio::test]
    async fn the_drain_waits_for_the_last_request_and_returns_at_once_without_any() {
        let requests = Arc::new(Requests::default());
        tokio::time::timeout(Duration::from_secs(5), requests.ended())
            .await
            .expect("no request, yet the drain waited");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let work = requests.count(Box::pin(async move {
            let _ = rx.await;
        }));
        let running = tokio::spawn(work);
        let waiting = tokio::spawn({
            let requests = requests.clone();
            async move { requests.ended().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        tx.send(()).unwrap();
        running.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the last request's end did not wake the drain")
            .unwrap();
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: Future + ?Sized>(mut f: Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }
}
