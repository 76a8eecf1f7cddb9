//! Where blocking store work runs: redb's calls wait on file I/O and locks, so inside an async
//! runtime they go to its blocking pool; and a synchronous caller (the CLI, start-up before
//! the runtime, a thread of the blocking pool) drives a store future with [`block_on`].

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use crate::StoreError;

thread_local! {
    /// Set while [`block_on`] drives a future on this thread: the thread is blocked anyway,
    /// so blocking work may run on it directly instead of on another thread.
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a store future to completion on this thread, which it blocks. For synchronous
/// callers only: never from a task of an async runtime (it would hold up that worker).
pub fn block_on<F: Future>(future: F) -> F::Output {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            MAY_BLOCK.with(|m| m.set(self.0));
        }
    }
    let _reset = Reset(MAY_BLOCK.with(|m| m.replace(true)));
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            // A wake before the park makes the park return at once: nothing is missed.
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Runs blocking store work without holding up an async runtime: on the runtime's blocking
/// pool when called from a task, on this thread under [`block_on`] or outside any runtime.
pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    if MAY_BLOCK.with(Cell::get) {
        return work();
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => runtime
            .spawn_blocking(work)
            .await
            .map_err(|e| StoreError::Interrupted(e.to_string()))?,
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_on_drives_a_future_woken_from_another_thread() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send(7).unwrap();
        });
        assert_eq!(block_on(rx).unwrap(), 7);
        sender.join().unwrap();
        assert!(!MAY_BLOCK.with(Cell::get), "the flag is reset afterwards");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn work_from_a_task_runs_off_the_runtime_thread() {
        let here = std::thread::current().id();
        let there = run_blocking(|| Ok(std::thread::current().id()))
            .await
            .unwrap();
        assert_ne!(here, there);
    }
}
