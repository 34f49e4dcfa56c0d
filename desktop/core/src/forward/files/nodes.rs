//! The node table: which host object each node the guest holds stands for, and the paths
//! it is known by.
//!
//! On unix hosts a node is an inode (device and inode number), so the names of one hard-linked
//! file are one node, as the guest's `stat` expects; elsewhere a node is a path. The guest
//! counts its references (each lookup, each readdirplus entry) and forgets them; a node goes
//! when its count reaches zero. Share roots never go.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_protocol::shares::Node;

/// What identifies a host object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    #[cfg(unix)]
    Inode { dev: u64, ino: u64 },
    #[cfg_attr(unix, allow(dead_code))]
    Path(PathBuf),
}

impl Key {
    /// The key of the object `meta` describes, found at `path`.
    pub fn of(path: &Path, meta: &std::fs::Metadata) -> Key {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            let _ = path;
            Key::Inode { dev: meta.dev(), ino: meta.ino() }
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            Key::Path(path.to_owned())
        }
    }
}

#[derive(Debug)]
struct Entry {
    key: Key,
    /// The paths it is known by, most recent first (absolute host paths, inside a share).
    paths: Vec<PathBuf>,
    lookups: u64,
    /// Which share it belongs to (its root's index).
    share: usize,
}

/// Every node the guest holds.
#[derive(Debug, Default)]
pub struct Nodes {
    by_id: HashMap<Node, Entry>,
    by_key: HashMap<Key, Node>,
    next: Node,
}

impl Nodes {
    /// A share's root: a node that is never forgotten.
    pub fn add_root(&mut self, path: &Path, meta: &std::fs::Metadata, share: usize) -> Node {
        let id = self.insert(Key::of(path, meta), path, share);
        if let Some(e) = self.by_id.get_mut(&id) {
            e.lookups = u64::MAX;
        }
        id
    }

    fn insert(&mut self, key: Key, path: &Path, share: usize) -> Node {
        // FUSE's root is 1, and the guest maps its roots there: node numbers start at 2.
        self.next = self.next.max(1) + 1;
        let id = self.next;
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, Entry { key, paths: vec![path.to_owned()], lookups: 0, share });
        id
    }

    /// The node for the object at `path` (inside the share of `parent`), its count raised.
    pub fn looked_up(&mut self, parent: Node, path: &Path, meta: &std::fs::Metadata) -> Node {
        let share = self.by_id.get(&parent).map_or(0, |e| e.share);
        let key = Key::of(path, meta);
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => self.insert(key, path, share),
        };
        let e = self.by_id.get_mut(&id).expect("just found or made");
        if !e.paths.iter().any(|p| p == path) {
            e.paths.insert(0, path.to_owned());
        }
        e.lookups = e.lookups.saturating_add(1);
        id
    }

    /// The guest dropped `count` references.
    pub fn forget(&mut self, id: Node, count: u64) {
        let Some(e) = self.by_id.get_mut(&id) else { return };
        if e.lookups == u64::MAX {
            return;
        }
        e.lookups = e.lookups.saturating_sub(count);
        if e.lookups == 0 {
            let e = self.by_id.remove(&id).expect("present");
            if self.by_key.get(&e.key) == Some(&id) {
                self.by_key.remove(&e.key);
            }
        }
    }

    /// A path `id` is known by.
    pub fn path(&self, id: Node) -> Option<PathBuf> {
        self.by_id.get(&id).and_then(|e| e.paths.first().cloned())
    }

    /// `path` no longer names anything (unlinked, or moved away).
    pub fn gone(&mut self, path: &Path) {
        for e in self.by_id.values_mut() {
            if e.paths.len() > 1 || e.lookups != u64::MAX {
                e.paths.retain(|p| p != path);
            }
        }
    }

    /// `from` was renamed to `to`: every path at or under `from` moves (and what `to` named
    /// before is gone).
    pub fn renamed(&mut self, from: &Path, to: &Path) {
        self.gone(to);
        for e in self.by_id.values_mut() {
            for p in e.paths.iter_mut() {
                if let Ok(rest) = p.strip_prefix(from) {
                    *p = if rest.as_os_str().is_empty() { to.to_owned() } else { to.join(rest) };
                }
            }
        }
    }

    /// The node a path is known by, if any.
    pub fn node_of(&self, path: &Path) -> Option<Node> {
        self.by_id.iter().find(|(_, e)| e.paths.iter().any(|p| p == path)).map(|(id, _)| *id)
    }

    /// How many nodes are held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}
