//! Changes made on this machine behind the guest's back: the directories the guest has looked
//! into are watched (the `notify` crate: inotify on Linux, FSEvents on macOS,
//! ReadDirectoryChangesW on Windows), and what changes in them becomes a notice to the guest.
//!
//! Watches are added one directory at a time as the guest uses them, not recursively over a
//! whole home directory, which on Linux would cost an inotify watch per directory of it; past
//! [`MAX_WATCHES`] the guest relies on its cache's short time to live alone.
//!
//! Changes the guest made itself are not echoed back (the guest's kernel knows already, and its
//! own way of raising host changes would otherwise come back as one). Each call that changes a
//! path marks it before it acts ([`Watch::mark`]) and seals the mark once done
//! ([`Watch::seal_marked`]), recording the path as the call left it: its inode, size and
//! times, or its absence. An event on a marked path within [`ECHO_WINDOW`] is the guest's own
//! while a call on it is under way, or while the path is still as the last call left it; once
//! the path differs, someone else changed it, and the event is news even inside the window.
//! (Before marks were sealed, a change made on this machine within two seconds of the guest's
//! own, as when a user edits a file a container just wrote, was taken for an echo and lost:
//! containers' watchers never heard of it.) What is left is a change made between a call's
//! act and its seal, or one within the same timestamp tick that keeps the size.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

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
    /// Changes were lost (the OS's event queue overflowed): anything may have changed.
    Rescan,
}

/// A path's state as far as telling changes apart goes: absent, or its object, size and times.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(u64, u64, Option<SystemTime>, i64, i64)>);

impl Stamp {
    fn of(path: &Path) -> Stamp {
        Stamp(std::fs::symlink_metadata(path).ok().map(|m| {
            #[cfg(unix)]
            let (ino, ctime, ctime_ns) = {
                use std::os::unix::fs::MetadataExt;
                (m.ino(), m.ctime(), m.ctime_nsec())
            };
            #[cfg(not(unix))]
            let (ino, ctime, ctime_ns) = (0, 0, 0);
            (ino, m.len(), m.modified().ok(), ctime, ctime_ns)
        }))
    }
}

/// Which directory a path names (device, inode and birth time where the file system keeps
/// one, as a removed directory's inode number may be given to the next one), to tell when
/// another directory, or nothing, has taken a watched path: the OS's watch follows the
/// directory, not the path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DirId(Option<(u64, u64, Option<SystemTime>)>);

impl DirId {
    fn of(path: &Path) -> DirId {
        DirId(std::fs::symlink_metadata(path).ok().filter(|m| m.is_dir()).map(|m| {
            #[cfg(unix)]
            let (dev, ino) = {
                use std::os::unix::fs::MetadataExt;
                (m.dev(), m.ino())
            };
            #[cfg(not(unix))]
            let (dev, ino) = (0, 0);
            (dev, ino, m.created().ok())
        }))
    }
}

/// The guest's latest change of a path.
#[derive(Debug)]
struct Mark {
    /// When it was marked or sealed.
    at: Instant,
    /// Calls changing it now.
    pending: u32,
    /// The path as the last call that finished left it.
    left: Option<Stamp>,
}

thread_local! {
    /// The paths the call on this thread marked, to seal when it is done.
    static MARKED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
}

/// The watcher and its bookkeeping.
pub struct Watch {
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    /// The directories watched, by the path each was watched at.
    watched: Mutex<HashMap<PathBuf, DirId>>,
    /// Paths the guest changed.
    ours: Mutex<HashMap<PathBuf, Mark>>,
    /// A directory went unwatched (past the limit, or refused by the OS) and the log said so.
    told_unwatched: std::sync::atomic::AtomicBool,
}

impl Watch {
    /// A watcher that hands each change (not made by the guest) to `on_change`. Without one
    /// (the platform refuses), nothing is watched.
    pub fn new(on_change: impl Fn(Change) + Send + 'static) -> std::sync::Arc<Watch> {
        let me = std::sync::Arc::new(Watch {
            watcher: Mutex::new(None),
            watched: Mutex::new(HashMap::new()),
            ours: Mutex::new(HashMap::new()),
            told_unwatched: std::sync::atomic::AtomicBool::new(false),
        });
        let weak = std::sync::Arc::downgrade(&me);
        let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            let (Ok(ev), Some(me)) = (ev, weak.upgrade()) else { return };
            for change in changes(&ev) {
                if let Change::Entry(p) = &change {
                    me.entry_changed(p);
                }
                let ours = match &change {
                    Change::Modified(p) | Change::Entry(p) => me.ours(p),
                    Change::Rescan => false,
                };
                if !ours {
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

    /// Watches directory `dir` (once, unless another directory has taken its path since; not
    /// past the limit).
    pub fn dir(&self, dir: &Path) {
        let id = DirId::of(dir);
        if id.0.is_none() {
            return;
        }
        {
            let watched = self.watched.lock().expect("lock");
            match watched.get(dir) {
                Some(was) if *was == id => return,
                None if watched.len() >= MAX_WATCHES => {
                    return self.unwatched(dir, &format!("past the limit of {MAX_WATCHES} watched directories"));
                }
                _ => {}
            }
        }
        // Not under the lock of `watched`: the watcher waits for its event thread, which may
        // be in `entry_changed`, waiting for that lock.
        let mut watcher = self.watcher.lock().expect("lock");
        let Some(w) = watcher.as_mut() else { return };
        let done = w.watch(dir, RecursiveMode::NonRecursive);
        let mut watched = self.watched.lock().expect("lock");
        match done {
            Ok(()) => {
                watched.insert(dir.to_owned(), id);
            }
            Err(e) => {
                watched.remove(dir);
                drop(watched);
                self.unwatched(dir, &e.to_string());
            }
        }
    }

    /// Directory `dir` is not watched: the guest keeps what it learns there for a second only
    /// (its caches have no notices to keep them true). Said once in the log at warning level,
    /// as every shared folder is then slower; the rest at debug level.
    fn unwatched(&self, dir: &Path, why: &str) {
        if self.told_unwatched.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::debug!(dir = %dir.display(), why, "a shared directory is not watched");
        } else {
            tracing::warn!(
                dir = %dir.display(),
                why,
                "shared folders: a directory is not watched for changes made on this machine; what the guest \
                 caches of it (and of others like it from now on) is kept one second instead of until a change"
            );
        }
    }

    /// A name came or went at `path`: if it was a watched directory that is gone or has been
    /// replaced, neither it nor anything below it is watched there any more (the OS dropped
    /// the watch of a removed directory, and a moved one's watch went with it). The guest's
    /// next look in the directory found there watches it anew.
    fn entry_changed(&self, path: &Path) {
        let mut watched = self.watched.lock().expect("lock");
        if watched.get(path).is_none_or(|id| *id == DirId::of(path)) {
            return;
        }
        watched.retain(|p, _| !p.starts_with(path));
    }

    /// The guest is changing `path` now, on this thread; [`Watch::seal_marked`] ends it.
    pub fn mark(&self, path: &Path) {
        let mut ours = self.ours.lock().expect("lock");
        let now = Instant::now();
        if ours.len() > 4096 {
            ours.retain(|_, m| m.pending > 0 || now.duration_since(m.at) < ECHO_WINDOW);
        }
        let m = ours.entry(path.to_owned()).or_insert(Mark { at: now, pending: 0, left: None });
        m.at = now;
        m.pending += 1;
        MARKED.with(|marked| marked.borrow_mut().push(path.to_owned()));
    }

    /// The call on this thread is done with the paths it marked: each is recorded as it is now.
    pub fn seal_marked(&self) {
        let marked = MARKED.with(|marked| std::mem::take(&mut *marked.borrow_mut()));
        if marked.is_empty() {
            return;
        }
        // Stamped before the lock: a stat may be slow, and events wait on the lock.
        let stamps: Vec<Stamp> = marked.iter().map(|p| Stamp::of(p)).collect();
        let mut ours = self.ours.lock().expect("lock");
        let now = Instant::now();
        for (path, stamp) in marked.into_iter().zip(stamps) {
            if let Some(m) = ours.get_mut(&path) {
                m.pending = m.pending.saturating_sub(1);
                if m.pending == 0 {
                    m.left = Some(stamp);
                    m.at = now;
                }
            }
        }
    }

    /// Whether an event on `path` is the echo of the guest's own change.
    fn ours(&self, path: &Path) -> bool {
        let left = {
            let ours = self.ours.lock().expect("lock");
            match ours.get(path) {
                Some(m) if m.pending > 0 => return true,
                Some(m) if m.at.elapsed() < ECHO_WINDOW => m.left.clone(),
                _ => return false,
            }
        };
        left.is_none_or(|left| left == Stamp::of(path))
    }

    /// Whether changes in directory `dir` are watched (and so reach the guest).
    pub fn is_watched(&self, dir: &Path) -> bool {
        self.watched.lock().expect("lock").contains_key(dir)
    }

    /// How many directories are watched.
    pub fn watched(&self) -> usize {
        self.watched.lock().expect("lock").len()
    }
}

/// The changes one watcher event stands for.
fn changes(ev: &notify::Event) -> Vec<Change> {
    if ev.need_rescan() {
        tracing::warn!(
            "shared folders: this machine lost change events (its queue overflowed); the guest drops what it cached"
        );
        return vec![Change::Rescan];
    }
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
    fn lost_events_ask_for_a_rescan() {
        let overflow = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        assert_eq!(changes(&overflow), vec![Change::Rescan]);
        let plain = notify::Event::new(EventKind::Other);
        assert!(changes(&plain).is_empty());
    }

    /// A watched directory removed and made again at its path is not taken for watched until
    /// it is watched anew; then its changes are seen.
    #[test]
    #[cfg_attr(
        windows,
        ignore = "Windows keeps a watched directory, delete pending, until its watch is closed: none can be made at its path meanwhile"
    )]
    fn a_directory_made_again_is_watched_again() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let w = Watch::new(move |c| {
            let _ = tx.send(c);
        });
        w.dir(d.path());
        w.dir(&sub);
        assert!(w.is_watched(&sub));
        std::fs::remove_dir(&sub).unwrap();
        std::fs::create_dir(&sub).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.is_watched(&sub) {
            assert!(Instant::now() < deadline, "a directory made again is still taken for watched");
            std::thread::sleep(Duration::from_millis(20));
        }
        while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
        w.dir(&sub);
        assert!(w.is_watched(&sub));
        std::fs::write(sub.join("f"), "x").unwrap();
        let seen = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(5)).ok())
            .any(|c| c == Change::Entry(sub.join("f")));
        assert!(seen, "a change in the directory made again was not seen");
    }

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
        // The guest's own change is not echoed, whether its events come while the call is
        // under way or after it.
        w.mark(&d.path().join("new"));
        std::fs::write(d.path().join("new"), "y").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        std::fs::write(d.path().join("new"), "yy").unwrap();
        w.seal_marked();
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
        // Someone else's is.
        std::fs::write(d.path().join("other"), "z").unwrap();
        assert!(rx.recv_timeout(Duration::from_secs(5)).is_ok());
        while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
        // Someone else's change of the very file the guest just wrote, within the echo window.
        w.mark(&d.path().join("new"));
        std::fs::write(d.path().join("new"), "from the guest").unwrap();
        w.seal_marked();
        std::thread::sleep(Duration::from_millis(300));
        while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
        std::fs::write(d.path().join("new"), "edited here right after").unwrap();
        let got = rx.recv_timeout(Duration::from_secs(5));
        assert_eq!(got.ok(), Some(Change::Modified(d.path().join("new"))), "a change here within the window was lost");
        // A removal here of what the guest made is news too.
        std::fs::remove_file(d.path().join("new")).unwrap();
        let gone = std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(5)).ok())
            .find(|c| *c == Change::Entry(d.path().join("new")));
        assert!(gone.is_some(), "the removal was lost");
    }
}
