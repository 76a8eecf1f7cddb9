//! How far one exchange with the upstream has got, for the gateway that bounds it from
//! outside: when its time runs out, whose time it was (the wait for a connection under the
//! gateway's own cap, the upstream's, or the caller's while its body still streams in), when
//! the whole request is out (an upstream's wait for the answer starts then), and whether any
//! of the request may have reached the upstream.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use tokio::sync::Notify;

/// Where an exchange is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for a connection (or a slot) under the upstream's `max_connections`.
    Queued,
    /// Opening a connection: TCP, then TLS.
    Connecting,
    /// The request is going out, its body the gateway's own copy (or none): the upstream's
    /// time.
    Sending,
    /// The request is going out as the caller's body streams in: the caller's time.
    Streaming,
    /// All of the request is out: the upstream's answer is awaited.
    Sent,
}

impl Stage {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::Queued,
            1 => Self::Connecting,
            2 => Self::Sending,
            3 => Self::Streaming,
            _ => Self::Sent,
        }
    }
}

/// One exchange's [`Stage`], shared between the client that moves it on and the gateway
/// that reads it.
#[derive(Debug, Default)]
pub struct Progress {
    stage: AtomicU8,
    /// Writing began, on this connection or an earlier one of the same exchange.
    reached: AtomicBool,
    /// Someone waits in [`Progress::sent`]: only then does reaching `Sent` notify.
    watched: AtomicBool,
    sent: Notify,
}

impl Progress {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    /// Whether any of the request may have reached the upstream: once writing began it may
    /// have, and stays so even if the exchange starts over on another connection.
    pub fn reached(&self) -> bool {
        self.reached.load(Ordering::Acquire)
    }

    pub fn set(&self, stage: Stage) {
        if matches!(stage, Stage::Sending | Stage::Streaming | Stage::Sent) {
            self.reached.store(true, Ordering::Release);
        }
        // Sequentially consistent with `sent`'s: either it sees the stage, or this sees
        // that it waits.
        self.stage.store(stage as u8, Ordering::SeqCst);
        if stage == Stage::Sent && self.watched.load(Ordering::SeqCst) {
            self.sent.notify_waiters();
        }
    }

    /// Resolves once the whole request is out.
    pub async fn sent(&self) {
        self.watched.store(true, Ordering::SeqCst);
        while Stage::from_u8(self.stage.load(Ordering::SeqCst)) != Stage::Sent {
            let mut notified = pin!(self.sent.notified());
            // Registered before looking again, so that a `set` in between is not missed.
            notified.as_mut().enable();
            if Stage::from_u8(self.stage.load(Ordering::SeqCst)) == Stage::Sent {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reached_stays_once_writing_began_and_sent_wakes_a_waiter() {
        let p = std::sync::Arc::new(Progress::new());
        assert_eq!((p.stage(), p.reached()), (Stage::Queued, false));
        p.set(Stage::Connecting);
        assert!(!p.reached());
        p.set(Stage::Sending);
        p.set(Stage::Queued);
        assert_eq!((p.stage(), p.reached()), (Stage::Queued, true));
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.sent().await }
        });
        tokio::task::yield_now().await;
        p.set(Stage::Sent);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
