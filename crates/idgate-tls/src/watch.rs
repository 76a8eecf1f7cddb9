//! Watching the TLS files: a directory watch (atomic renames and Kubernetes `..data` symlink
//! swaps replace directory entries, which a watch on the file itself would miss), a periodic
//! poll as a backstop, and a manual trigger for SIGHUP. Every trigger leads to the same
//! [`TlsMaterial::reload`], which only acts on files whose content changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::material::TlsMaterial;

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: Option<RecommendedWatcher>,
    trigger: mpsc::Sender<()>,
}

impl WatchHandle {
    /// Asks for a reload now (SIGHUP). Several requests before the reload runs count as one.
    pub fn trigger(&self) {
        let _ = self.trigger.try_send(());
    }
}

fn watched_dirs<'a>(files: impl Iterator<Item = &'a Path>) -> BTreeSet<PathBuf> {
    let mut dirs = BTreeSet::new();
    for file in files {
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        dirs.insert(parent);
        // A file that is a symlink into another directory changes there too.
        if let Ok(real) = std::fs::canonicalize(file)
            && let Some(p) = real.parent()
        {
            dirs.insert(p.to_owned());
        }
    }
    dirs
}

/// Starts watching the material's files. Must be called inside a Tokio runtime.
///
/// A directory that cannot be watched (inotify limits, say) is logged and left to the poll.
pub fn spawn_watcher(material: Arc<TlsMaterial>, poll_every: Duration) -> WatchHandle {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let notify_tx = tx.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = notify_tx.try_send(());
        }
    });
    let watcher = match watcher {
        Ok(mut w) => {
            for dir in watched_dirs(material.spec().files()) {
                if let Err(e) = w.watch(&dir, RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch TLS directory; relying on the periodic check");
                }
            }
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the file watcher; relying on the periodic check");
            None
        }
    };

    tokio::spawn(async move {
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            tokio::select! {
                msg = rx.recv() => {
                    if msg.is_none() { break; }
                    // Writers often touch a file several times (truncate, write, rename):
                    // let the burst settle before reading.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = poll.tick() => {}
            }
            let m = material.clone();
            match tokio::task::spawn_blocking(move || m.reload()).await {
                Ok(outcome) => log_outcome(&outcome),
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    });

    WatchHandle {
        _watcher: watcher,
        trigger: tx,
    }
}

fn log_outcome(outcome: &crate::material::ReloadOutcome) {
    for path in &outcome.applied {
        tracing::info!(file = %path.display(), "TLS material reloaded");
    }
    for err in &outcome.refused {
        tracing::warn!(error = %err, "new TLS material refused; the previous material stays in use");
    }
}
