//! How the gateway stops (`[lifecycle]`): what turns not ready, what stops accepting, what
//! drains, and the background writers flushed last, in the order their data flows.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// A background writer's last flush, run once every request has ended.
type Flush = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The background writers flushed at shutdown, in the order they were registered: the
/// audit trail first (its last records go to the exporters), then the SIEM export that
/// carries them, then any writer registered after it.
#[derive(Default)]
pub(crate) struct BackgroundWriters {
    writers: Vec<(&'static str, Flush)>,
}

impl BackgroundWriters {
    /// Adds `flush` after the writers already registered.
    pub(crate) fn then(
        &mut self,
        name: &'static str,
        flush: impl Future<Output = ()> + Send + 'static,
    ) {
        self.writers.push((name, Box::pin(flush)));
    }

    /// Flushes each writer in turn, each after the previous one has finished.
    pub(crate) async fn flush(self) {
        for (name, flush) in self.writers {
            tracing::debug!(writer = name, "flushing background writer");
            flush.await;
        }
    }
}

/// The shutdown sequence's timing, from `[lifecycle]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Drain {
    /// Between `/readyz` turning false and the listener closing.
    pub(crate) delay: Duration,
    /// How long in-flight requests get once the listener has closed.
    pub(crate) timeout: Duration,
}

impl From<&idgate_config::LifecycleConfig> for Drain {
    fn from(c: &idgate_config::LifecycleConfig) -> Self {
        Self {
            delay: c.drain_delay,
            timeout: c.drain_timeout,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn writers_flush_in_the_order_they_were_registered_each_after_the_last() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut writers = BackgroundWriters::default();
        for (name, wait) in [("audit", 30), ("siem", 0), ("outbox", 10)] {
            let order = order.clone();
            writers.then(name, async move {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                order.lock().unwrap().push(name);
            });
        }
        writers.flush().await;
        assert_eq!(*order.lock().unwrap(), ["audit", "siem", "outbox"]);
    }
}
