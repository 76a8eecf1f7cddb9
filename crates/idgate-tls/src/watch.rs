//! Watching the TLS files: a directory watch (atomic renames and Kubernetes `..data` symlink
//! swaps replace directory entries, which a watch on the file itself would miss), a periodic
//! poll as a backstop, and a manual trigger for SIGHUP. Every trigger leads to the same
//! [`TlsMaterial::reload`], which only acts on files whose content changed.
//!
//! The directories watched are those the files resolve through *now*: they are worked out
//! again before every reload, since a symlink swap moves a file into a directory that was not
//! watched before, and the directory it left is usually deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::material::TlsMaterial;

/// Most symlinks followed while resolving one path, as Linux's own limit (`ELOOP`).
const MAX_SYMLINKS: usize = 40;

/// The paths whose change can alter what the files read as: each file, each symlink met
/// while resolving one, and every directory on the way to either (each watched directory
/// among them). Shared between the watch, which keeps it in step, and the watcher's
/// callback, which passes on only events that name one.
type Relevant = Arc<RwLock<BTreeSet<PathBuf>>>;

/// Whether an event is about one of the `relevant` paths. A directory watch reports every
/// entry of the directory, and a busy unrelated file there (a log, say) must not start a
/// reload with each write. An event that names no path (the kernel's queue overflowed, say)
/// may be about anything, so it counts.
fn concerns(event: &Event, relevant: &RwLock<BTreeSet<PathBuf>>) -> bool {
    if event.paths.is_empty() {
        return true;
    }
    let Ok(relevant) = relevant.read() else {
        return true;
    };
    event.paths.iter().any(|p| relevant.contains(p))
}

/// A watcher that sends on `tx` each event that may change one of the `relevant` paths.
fn watcher_for(relevant: Relevant, tx: mpsc::Sender<()>) -> notify::Result<RecommendedWatcher> {
    notify::recommended_watcher(move |event: notify::Result<Event>| {
        if event.is_ok_and(|e| may_change_content(&e) && concerns(&e, &relevant)) {
            let _ = tx.try_send(());
        }
    })
}

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchHandle {
    _dirs: Option<Arc<Mutex<DirWatch>>>,
    trigger: mpsc::Sender<()>,
}

impl WatchHandle {
    /// Asks for a reload now (SIGHUP). Several requests before the reload runs count as one.
    pub fn trigger(&self) {
        let _ = self.trigger.try_send(());
    }
}

/// Whether an event can mean that a file's content changed. Opening, reading and closing a
/// file unwritten are events too — the reload's own reads among them — and must not start
/// another reload, or the watch would feed itself forever.
fn may_change_content(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// Adds the directories in which a change can alter what `file` reads as: the directory of
/// every symlink met while resolving it (where a Kubernetes `..data` link is swapped, also
/// when the configured file is itself a link into a volume mounted elsewhere) and the
/// directory the file finally lives in (where an atomic rename replaces it). Adds to
/// `entries` the paths in them that matter: each symlink met, and the file.
fn dirs_affecting(file: &Path, dirs: &mut BTreeSet<PathBuf>, entries: &mut BTreeSet<PathBuf>) {
    let Ok(mut path) = std::path::absolute(file) else {
        return;
    };
    let mut followed = 0;
    'resolve: loop {
        let mut resolved = PathBuf::new();
        let mut rest = path.components();
        while let Some(component) = rest.next() {
            match component {
                // What comes before is free of symlinks, so `..` is simply its parent.
                Component::ParentDir => {
                    resolved.pop();
                    continue;
                }
                Component::CurDir => continue,
                c => resolved.push(c),
            }
            let Ok(target) = std::fs::read_link(&resolved) else {
                continue;
            };
            followed += 1;
            if followed > MAX_SYMLINKS {
                return;
            }
            entries.insert(resolved.clone());
            resolved.pop();
            dirs.insert(resolved.clone());
            // An absolute target replaces the whole path when pushed.
            resolved.push(target);
            resolved.extend(rest);
            path = resolved;
            continue 'resolve;
        }
        if let Some(parent) = resolved.parent() {
            dirs.insert(parent.to_owned());
        }
        entries.insert(resolved);
        return;
    }
}

/// The directory watch, kept in step with where the files resolve to.
struct DirWatch {
    watcher: RecommendedWatcher,
    /// Each watched directory with its identity (device, inode) when the watch was added: a
    /// watch follows the inode, so a directory replaced under the same name is watched anew.
    watched: BTreeMap<PathBuf, (u64, u64)>,
    /// Directories that could not be watched, so that each is reported once.
    failed: BTreeSet<PathBuf>,
    /// What the watcher's events are sorted by.
    relevant: Relevant,
    /// Where the watcher sends its notices.
    notice: mpsc::Sender<()>,
}

impl DirWatch {
    /// Watches the directories the files resolve through now and stops watching the others.
    ///
    /// When the paths that matter changed (a symlink swapped, a file added to the list), a
    /// notice is sent: an event about a newly relevant path that came before this refresh
    /// was not passed on, and a caller that read the files before refreshing (the
    /// configuration's reload) must look once more. Blocking file system calls: call it from
    /// a blocking thread.
    fn refresh<'a>(&mut self, files: impl Iterator<Item = &'a Path>) {
        let mut wanted = BTreeSet::new();
        let mut entries = BTreeSet::new();
        for file in files {
            dirs_affecting(file, &mut wanted, &mut entries);
        }
        // The directories on the way count too: `certs` renamed over in the directory that
        // holds it changes `certs/live/gateway.crt`. So does each watched directory itself.
        let ancestors: Vec<PathBuf> = entries
            .iter()
            .flat_map(|e| e.ancestors().skip(1).map(Path::to_owned))
            .collect();
        entries.extend(ancestors);
        entries.extend(wanted.iter().cloned());
        // Set before the watches change: an event from a new directory is never dropped.
        let changed = match self.relevant.write() {
            Ok(mut relevant) if *relevant != entries => {
                let first = relevant.is_empty();
                *relevant = entries;
                !first
            }
            _ => false,
        };
        if changed {
            let _ = self.notice.try_send(());
        }
        let mut now = BTreeMap::new();
        for dir in wanted {
            // A directory that is missing for now is left to the next refresh and the poll.
            let Ok(meta) = std::fs::metadata(&dir) else {
                continue;
            };
            let id = (meta.dev(), meta.ino());
            let previous = self.watched.remove(&dir);
            if previous != Some(id) {
                if previous.is_some() {
                    let _ = self.watcher.unwatch(&dir);
                }
                if let Err(e) = self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    if self.failed.insert(dir.clone()) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch TLS directory; relying on the periodic check");
                    }
                    continue;
                }
                self.failed.remove(&dir);
            }
            now.insert(dir, id);
        }
        for gone in self.watched.keys() {
            let _ = self.watcher.unwatch(gone);
        }
        self.watched = now;
    }
}

/// Starts watching the material's files. Must be called inside a Tokio runtime.
///
/// A directory that cannot be watched (inotify limits, say) is logged and left to the poll.
pub fn spawn_watcher(material: Arc<TlsMaterial>, poll_every: Duration) -> WatchHandle {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let relevant = Relevant::default();
    let dirs = match watcher_for(relevant.clone(), tx.clone()) {
        Ok(watcher) => {
            let mut dirs = DirWatch {
                watcher,
                watched: BTreeMap::new(),
                failed: BTreeSet::new(),
                relevant,
                notice: tx.clone(),
            };
            let spec = material.spec();
            dirs.refresh(spec.iter().flat_map(|s| s.files()));
            Some(Arc::new(Mutex::new(dirs)))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the file watcher; relying on the periodic check");
            None
        }
    };
    // The task holds the watch weakly: dropping the handle drops the watcher and its sender,
    // which closes the channel and ends the task.
    let weak_dirs = dirs.as_ref().map(Arc::downgrade);

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
            let dirs = weak_dirs.clone();
            let reloaded = tokio::task::spawn_blocking(move || {
                if let Some(dirs) = dirs.and_then(|d| d.upgrade())
                    && let Ok(mut dirs) = dirs.lock()
                {
                    let spec = m.spec();
                    dirs.refresh(spec.iter().flat_map(|s| s.files()));
                }
                m.reload()
            })
            .await;
            match reloaded {
                Ok(outcome) => log_outcome(&outcome),
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    });

    WatchHandle {
        _dirs: dirs,
        trigger: tx,
    }
}

/// The same directory watch over any files (the configuration file, say), for a caller that
/// decides itself what a change means: every event that may change what one of the files
/// reads as is sent on `changed` (a full channel means a notice is pending already).
pub struct FileWatch {
    dirs: Mutex<DirWatch>,
}

impl FileWatch {
    /// Starts watching the directories `files` resolve through now. Blocking.
    pub fn new(files: &[PathBuf], changed: mpsc::Sender<()>) -> notify::Result<Self> {
        let relevant = Relevant::default();
        let watcher = watcher_for(relevant.clone(), changed.clone())?;
        let mut dirs = DirWatch {
            watcher,
            watched: BTreeMap::new(),
            failed: BTreeSet::new(),
            relevant,
            notice: changed,
        };
        dirs.refresh(files.iter().map(PathBuf::as_path));
        Ok(Self {
            dirs: Mutex::new(dirs),
        })
    }

    /// Follows the files to where they resolve now (after a symlink swap, or when the list
    /// changed). Blocking.
    pub fn refresh(&self, files: &[PathBuf]) {
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.refresh(files.iter().map(PathBuf::as_path));
        }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use notify::event::{CreateKind, ModifyKind, RenameMode};

    use super::*;

    fn dirs_of(file: &Path) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        dirs_affecting(file, &mut dirs, &mut BTreeSet::new());
        dirs
    }

    fn entries_of(file: &Path) -> BTreeSet<PathBuf> {
        let mut entries = BTreeSet::new();
        dirs_affecting(file, &mut BTreeSet::new(), &mut entries);
        entries
    }

    #[test]
    fn a_plain_file_is_watched_in_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::write(root.join("gateway.crt"), "x").unwrap();
        assert_eq!(dirs_of(&root.join("gateway.crt")), BTreeSet::from([root]));
    }

    /// `conf/gateway.crt -> ../volume/gateway.crt -> ..data/gateway.crt`, `..data -> ..v1`,
    /// as a Kubernetes volume linked from another directory: the temporary directory, `conf`
    /// and `volume`.
    fn linked_volume() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (conf, volume) = (root.join("conf"), root.join("volume"));
        std::fs::create_dir_all(volume.join("..v1")).unwrap();
        std::fs::create_dir(&conf).unwrap();
        std::fs::write(volume.join("..v1/gateway.crt"), "x").unwrap();
        symlink("..v1", volume.join("..data")).unwrap();
        symlink("..data/gateway.crt", volume.join("gateway.crt")).unwrap();
        symlink("../volume/gateway.crt", conf.join("gateway.crt")).unwrap();
        (tmp, conf, volume)
    }

    #[test]
    fn every_directory_a_symlink_chain_passes_through_is_watched() {
        let (_tmp, conf, volume) = linked_volume();

        assert_eq!(
            dirs_of(&conf.join("gateway.crt")),
            BTreeSet::from([conf, volume.clone(), volume.join("..v1")])
        );
    }

    #[test]
    fn the_entries_that_matter_are_the_file_and_each_symlink_met() {
        let (_tmp, conf, volume) = linked_volume();
        std::fs::write(conf.join("plain.toml"), "x").unwrap();

        assert_eq!(
            entries_of(&conf.join("plain.toml")),
            BTreeSet::from([conf.join("plain.toml")])
        );
        assert_eq!(
            entries_of(&conf.join("gateway.crt")),
            BTreeSet::from([
                conf.join("gateway.crt"),
                volume.join("gateway.crt"),
                volume.join("..data"),
                volume.join("..v1/gateway.crt"),
            ])
        );
    }

    #[test]
    fn only_events_naming_a_relevant_path_or_none_count() {
        let relevant = RwLock::new(BTreeSet::from([
            PathBuf::from("/etc/idgate"),
            PathBuf::from("/etc/idgate/idgate.toml"),
        ]));
        let about = |paths: &[&str]| {
            let mut e = Event::new(EventKind::Modify(ModifyKind::Any));
            for p in paths {
                e = e.add_path(PathBuf::from(p));
            }
            concerns(&e, &relevant)
        };
        assert!(!about(&["/etc/idgate/access.log"]));
        assert!(!about(&["/etc/idgate/idgate.toml.swp"]));
        assert!(about(&["/etc/idgate/idgate.toml"]));
        assert!(about(&["/etc/idgate/.tmp123", "/etc/idgate/idgate.toml"]));
        assert!(about(&["/etc/idgate"]));
        assert!(about(&[]));
    }

    /// Over a real inotify watch: a busy neighbour of the configuration file is not a
    /// change of it; writing the file, or renaming another over it, is.
    #[test]
    fn a_busy_neighbour_file_does_not_count_as_a_change() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let config = root.join("idgate.toml");
        std::fs::write(&config, "a = 1").unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _watch = FileWatch::new(std::slice::from_ref(&config), tx).unwrap();
        let noticed = |rx: &mut mpsc::Receiver<()>| {
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < until {
                if rx.try_recv().is_ok() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        };

        for i in 0..50 {
            std::fs::write(root.join("access.log"), format!("line {i}")).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(rx.try_recv().is_err(), "a write to a neighbour counted");

        std::fs::write(&config, "a = 2").unwrap();
        assert!(noticed(&mut rx), "a write to the file was missed");
        while rx.try_recv().is_ok() {}

        std::fs::write(root.join("idgate.toml.new"), "a = 3").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        while rx.try_recv().is_ok() {}
        std::fs::rename(root.join("idgate.toml.new"), &config).unwrap();
        assert!(noticed(&mut rx), "a rename over the file was missed");
    }

    /// `conf.toml -> certs/live/conf.toml`, then `certs` replaced by a rename in the
    /// directory that holds it: no event names the file or the link, only `certs`.
    #[test]
    fn a_directory_renamed_over_one_on_the_way_to_a_file_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("certs/live")).unwrap();
        std::fs::create_dir_all(root.join("certs.new/live")).unwrap();
        std::fs::write(root.join("certs/live/conf.toml"), "a = 1").unwrap();
        std::fs::write(root.join("certs.new/live/conf.toml"), "a = 2").unwrap();
        symlink("certs/live/conf.toml", root.join("conf.toml")).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let _watch = FileWatch::new(&[root.join("conf.toml")], tx).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        while rx.try_recv().is_ok() {}

        std::fs::rename(root.join("certs"), root.join("certs.old")).unwrap();
        std::fs::rename(root.join("certs.new"), root.join("certs")).unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while rx.try_recv().is_err() {
            assert!(std::time::Instant::now() < until, "the swap was missed");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A caller that read the files before refreshing the watch is told to look again when
    /// the paths that matter changed; a refresh that changes nothing says nothing.
    #[test]
    fn a_refresh_that_changes_the_relevant_paths_sends_a_notice() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let (a, b) = (root.join("a.toml"), root.join("b.json"));
        std::fs::write(&a, "a = 1").unwrap();
        std::fs::write(&b, "{}").unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let watch = FileWatch::new(std::slice::from_ref(&a), tx).unwrap();
        assert!(rx.try_recv().is_err(), "the first watch is no change");
        watch.refresh(std::slice::from_ref(&a));
        assert!(rx.try_recv().is_err(), "nothing changed");
        watch.refresh(&[a.clone(), b.clone()]);
        assert!(rx.try_recv().is_ok(), "b.json now matters");
        watch.refresh(&[a, b]);
        assert!(rx.try_recv().is_err(), "nothing changed");
    }

    #[test]
    fn a_symlink_loop_ends() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert_eq!(dirs_of(&root.join("a")), BTreeSet::from([root]));
    }

    #[test]
    fn reading_a_file_is_not_a_change_but_writing_and_renaming_are() {
        let event = |kind| Event::new(kind);
        for read in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Close(AccessMode::Read),
            AccessKind::Read,
        ] {
            assert!(!may_change_content(&event(EventKind::Access(read))));
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Remove(notify::event::RemoveKind::Folder),
            EventKind::Other,
        ] {
            assert!(may_change_content(&event(change)), "{change:?}");
        }
    }
}
