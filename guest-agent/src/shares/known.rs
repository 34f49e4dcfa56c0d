//! Directories whose whole listing the guest knows, so that it answers lookups of names that
//! are not there itself, with no trip to the host.
//!
//! Making a file is a lookup and then the create: the kernel asks whether the name exists
//! first. In a directory the guest has just made (untarring, `npm install`, a build's output)
//! the answer is always "no", yet it cost a round trip to the host per file. The host says
//! when a directory it made is empty and watched ([`Reply::NewDir`]); from then on the guest
//! knows its listing is exactly what it made there itself, until a notice from the host names
//! the directory (someone else changed it) or the kernel forgets it.
//!
//! Every rule errs towards asking: a name is added on any sign it may exist (made, moved in,
//! found by a lookup, refused with EEXIST) and removed only once the host confirms it gone; an
//! answer that is not clear (an I/O error) drops the directory. Notices count a generation:
//! a directory's answer that crossed a notice on its way is not trusted, since that notice may
//! have been about it.
//!
//! [`Reply::NewDir`]: berth_protocol::shares::Reply::NewDir

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most names held over all directories; past it the directories are dropped (lookups
/// go to the host again), which bounds the memory a huge tree can take.
const MAX_NAMES: usize = 200_000;

/// The directories whose listing the guest knows, and the names in each.
#[derive(Default)]
pub struct Known {
    dirs: Mutex<Dirs>,
    /// Notices seen so far.
    generation: AtomicU64,
}

#[derive(Default)]
struct Dirs {
    names: HashMap<u64, HashSet<Vec<u8>>>,
    count: usize,
}

impl Dirs {
    fn drop_dir(&mut self, dir: u64) {
        if let Some(names) = self.names.remove(&dir) {
            self.count -= names.len();
        }
    }
}

impl Known {
    /// The count of notices seen; taken when a call is sent, handed back with its answer.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Whether `name` is certainly not in directory `dir`.
    pub fn absent(&self, dir: u64, name: &[u8]) -> bool {
        self.dirs.lock().expect("lock").names.get(&dir).is_some_and(|names| !names.contains(name))
    }

    /// Directory `dir` was made by the guest and the host found it empty; `since` is the
    /// generation when the call was sent.
    pub fn made_empty(&self, dir: u64, since: u64) {
        let mut dirs = self.dirs.lock().expect("lock");
        // Checked under the lock that notices take too: none can slip in between.
        if self.generation() == since {
            dirs.drop_dir(dir);
            dirs.names.insert(dir, HashSet::new());
        }
    }

    /// `name` may now be in `dir`.
    pub fn added(&self, dir: u64, name: &[u8]) {
        let mut dirs = self.dirs.lock().expect("lock");
        let Some(names) = dirs.names.get_mut(&dir) else { return };
        if names.insert(name.to_vec()) {
            dirs.count += 1;
            if dirs.count > MAX_NAMES {
                tracing::debug!("shares: over {MAX_NAMES} names known; lookups go to the host again");
                *dirs = Dirs::default();
            }
        }
    }

    /// The host removed `name` from `dir`.
    pub fn removed(&self, dir: u64, name: &[u8]) {
        let mut dirs = self.dirs.lock().expect("lock");
        if dirs.names.get_mut(&dir).is_some_and(|names| names.remove(name)) {
            dirs.count -= 1;
        }
    }

    /// Directory `dir` may hold what the guest does not know of (an unclear answer, or the
    /// kernel forgot it).
    pub fn forget(&self, dir: u64) {
        self.dirs.lock().expect("lock").drop_dir(dir);
    }

    /// A notice from the host names `node`: it changed behind the guest's back.
    pub fn stale(&self, node: u64) {
        let mut dirs = self.dirs.lock().expect("lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        dirs.drop_dir(node);
    }

    /// Nothing is known any more (a host connected anew: its nodes may be others).
    pub fn clear(&self) {
        let mut dirs = self.dirs.lock().expect("lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        *dirs = Dirs::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_made_directory_knows_its_names_until_a_notice() {
        let k = Known::default();
        assert!(!k.absent(7, b"a"), "nothing is known of a directory not made here");
        k.made_empty(7, k.generation());
        assert!(k.absent(7, b"a"));
        k.added(7, b"a");
        assert!(!k.absent(7, b"a") && k.absent(7, b"b"));
        k.removed(7, b"a");
        assert!(k.absent(7, b"a"));
        // A notice about something else leaves it; one about the directory drops it.
        k.stale(8);
        assert!(k.absent(7, b"a"));
        k.stale(7);
        assert!(!k.absent(7, b"a"));
        // An answer that crossed a notice is not trusted.
        let since = k.generation();
        k.stale(9);
        k.made_empty(7, since);
        assert!(!k.absent(7, b"a"));
        k.made_empty(7, k.generation());
        k.forget(7);
        assert!(!k.absent(7, b"a"));
        k.made_empty(7, k.generation());
        k.clear();
        assert!(!k.absent(7, b"a"));
    }

    #[test]
    fn too_many_names_drop_everything() {
        let k = Known::default();
        k.made_empty(1, k.generation());
        k.made_empty(2, k.generation());
        for i in 0..MAX_NAMES {
            k.added(1, format!("f{i}").as_bytes());
        }
        assert!(k.absent(2, b"x"));
        k.added(1, b"one more");
        assert!(!k.absent(2, b"x") && !k.absent(1, b"x"));
        assert_eq!(k.dirs.lock().unwrap().count, 0);
    }
}
