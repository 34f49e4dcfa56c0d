//! Changes made on this machine behind the guest's back: the directories the guest has looked
//! into are watched (the `notify` crate: inotify on Linux, FSEvents on macOS,
//! ReadDirectoryChangesW on Windows), and what changes in them becomes a notice to the guest.
//!
//! Watches are added one directory at a time as the guest uses them, not recursively over a
//! whole home directory, which on Linux would cost an inotify watch per directory of it; past
//! [`MAX_WATCHES`] the guest relies on its cache's short time to live alone.
//!
//! Changes the guest made itself are not echoed back: each call that changes a path marks it,
//! and events on a path marked within [`ECHO_WINDOW`] are dropped (the guest's kernel knows
//! already, and its own way of raising host changes would otherwise come back as one).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};

/// The most directories watched at once.
pub const MAX_WATCHES: usize = 16384;
/// How long a change the guest made is taken for the cause of events on its path.
pub const ECHO_WINDOW: Duration = Duration::from_secs(2);

/// What changed, as the watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A file's contents or attributes.
    Modified(PathBuf),
    /// A name appeared in, or left, its directory.
    Entry(PathBuf),
}

/// The watcher and its bookkeeping.
pub struct Watch {
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    watched: Mutex<HashSet<PathBuf>>,
    /// Paths the guest changed, and when.
    ours: Mutex<HashMap<PathBuf, Instant>>,
}

impl Watch {
    /// A watcher that hands each change (not made by the guest) to `on_change`. Without one
    /// (the platform refuses), nothing is watched.
    pub fn new(on_change: impl Fn(Change) + Send + 'static) -> std::sync::Arc<Watch> {
        let me = std::sync::Arc::new(Watch {
            watcher: Mutex::new(None),
            watched: Mutex::new(HashSet::new()),
            ours: Mutex::new(HashMap::new()),
        });
        let weak = std::sync::Arc::downgrade(&me);
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let (Ok(ev), Some(me)) = (ev, weak.upgrade()) else { return };
            for change in changes(&ev) {
                let path = match &change {
                    Change::Modified(p) | Change::Entry(p) => p,
                };
                if !me.ours(path) {
                    on_change(change);
                }
            }
        });
        match watcher {
            Ok(w) => *me.watcher.lock().expect("lock") = Some(w),
            Err(e) => tracing::warn!(error = %e, "shared folders: no change notices from this machine"),
        }
        me
    }

    /// Watches directory `dir` (once; not past the limit).
    pub fn dir(&self, dir: &Path) {
        let mut watched = self.watched.lock().expect("lock");
        if watched.contains(dir) || watched.len() >= MAX_WATCHES {
            return;
        }
        if let Some(w) = self.watcher.lock().expect("lock").as_mut() {
            match w.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir.to_owned());
                }
                Err(e) => tracing::debug!(dir = %dir.display(), error = %e, "watching a shared directory"),
            }
        }
    }

    /// The guest is changing `path` now.
    pub fn mark(&self, path: &Path) {
        let mut ours = self.ours.lock().expect("lock");
        let now = Instant::now();
        if ours.len() > 4096 {
            ours.retain(|_, t| now.duration_since(*t) < ECHO_WINDOW);
        }
        ours.insert(path.to_owned(), now);
    }

    fn ours(&self, path: &Path) -> bool {
        let ours = self.ours.lock().expect("lock");
        ours.get(path).is_some_and(|t| t.elapsed() < ECHO_WINDOW)
    }

    /// How many directories are watched.
    pub fn watched(&self) -> usize {
        self.watched.lock().expect("lock").len()
    }
}

/// The changes one watcher event stands for.
fn changes(ev: &notify::Event) -> Vec<Change> {
    match ev.kind {
        EventKind::Create(_) | EventKind::Remove(_) | EventKind::Modify(notify::event::ModifyKind::Name(_)) => {
            ev.paths.iter().cloned().map(Change::Entry).collect()
        }
        EventKind::Modify(_) | EventKind::Any => ev.paths.iter().cloned().map(Change::Modified).collect(),
        EventKind::Access(_) | EventKind::Other => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_here_are_seen_and_the_guests_own_are_not() {
        let d = tempfile::tempdir().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Watch::new(move |c| {
            let _ = tx.send(c);
        });
        w.dir(d.path());
        assert_eq!(w.watched(), 1);
        std::fs::write(d.path().join("new"), "x").unwrap();
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, Change::Entry(d.path().join("new")));
        while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
        // The guest's own change is not echoed.
        w.mark(&d.path().join("new"));
        std::fs::write(d.path().join("new"), "y").unwrap();
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
        // Someone else's is.
        std::fs::write(d.path().join("other"), "z").unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
    }
}
