//! The node table: which host object each node the guest holds stands for, and the paths
//! it is known by.
//!
//! On unix hosts a node is an inode (device and inode number), so the names of one hard-linked
//! file are one node, as the guest's `stat` expects; elsewhere a node is a path. The guest
//! counts its references (each lookup, each readdirplus entry) and forgets them; a node goes
//! when its count reaches zero. Share roots never go.
//!
//! The guest shows a node's number as its inode number, so an object keeps its number when
//! the guest forgets it and finds it again (after its kernel dropped its caches, or evicted
//! the inode): `git status` compares every file's inode number with its index's, and re-reads
//! every file whose number changed. The numbers of forgotten objects that still have a name
//! are remembered for that ([`MAX_REMEMBERED`] of them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_protocol::shares::{Kind, Node};

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
    pub fn of(path: &Path, meta: &cap_std::fs::Metadata) -> Key {
        #[cfg(unix)]
        {
            use cap_std::fs::MetadataExt;
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

/// The most forgotten objects whose node numbers are kept for when the guest finds them again;
/// past it they are all dropped (their next lookups give new numbers, as before).
pub const MAX_REMEMBERED: usize = 1 << 18;

#[derive(Debug)]
struct Entry {
    key: Key,
    /// The paths it is known by, most recent first (absolute host paths, inside a share).
    paths: Vec<PathBuf>,
    lookups: u64,
    /// Which share it belongs to (its root's index).
    share: usize,
    /// What it is, as last found: told when it is gone, to a guest that must hand it to its
    /// kernel once more to delete it there.
    kind: Kind,
}

/// Every node the guest holds.
#[derive(Debug, Default)]
pub struct Nodes {
    by_id: HashMap<Node, Entry>,
    by_key: HashMap<Key, Node>,
    /// The node each known path names now (the latest one looked up there).
    by_path: HashMap<PathBuf, Node>,
    /// The numbers of objects the guest forgot while they still had a name.
    remembered: HashMap<Key, Node>,
    /// The node each path named before a lookup found another object there, until a notice
    /// for the path tells the guest it is gone (a lookup can see an editor's save before the
    /// watcher's event for it comes). At most [`MAX_DISPLACED`].
    displaced: HashMap<PathBuf, Node>,
    next: Node,
}

/// The most displaced nodes kept for their notices; past it they are all dropped.
const MAX_DISPLACED: usize = 4096;

impl Nodes {
    /// A share's root: a node that is never forgotten.
    pub fn add_root(&mut self, path: &Path, meta: &cap_std::fs::Metadata, share: usize) -> Node {
        let id = self.insert(Key::of(path, meta), path, share, super::ops::kind(meta));
        if let Some(e) = self.by_id.get_mut(&id) {
            e.lookups = u64::MAX;
        }
        id
    }

    fn insert(&mut self, key: Key, path: &Path, share: usize, kind: Kind) -> Node {
        let id = match self.remembered.remove(&key) {
            // Not held under another key since: it was held only by this one, which is free.
            Some(id) if !self.by_id.contains_key(&id) => id,
            _ => {
                // FUSE's root is 1, and the guest maps its roots there: numbers start at 2.
                self.next = self.next.max(1) + 1;
                self.next
            }
        };
        self.by_key.insert(key.clone(), id);
        self.by_path.insert(path.to_owned(), id);
        self.by_id.insert(id, Entry { key, paths: vec![path.to_owned()], lookups: 0, share, kind });
        id
    }

    /// The node for the object at `path` (inside the share of `parent`), its count raised.
    pub fn looked_up(&mut self, parent: Node, path: &Path, meta: &cap_std::fs::Metadata) -> Node {
        let share = self.by_id.get(&parent).map_or(0, |e| e.share);
        let (key, kind) = (Key::of(path, meta), super::ops::kind(meta));
        let before = self.by_path.get(path).copied();
        let id = match self.by_key.get(&key) {
            Some(id) => *id,
            None => self.insert(key, path, share, kind),
        };
        self.by_path.insert(path.to_owned(), id);
        // Whatever the path named before (changed on the host since) it names this now.
        if let Some(old) = before
            && old != id
            && let Some(e) = self.by_id.get_mut(&old)
            && e.lookups != u64::MAX
        {
            e.paths.retain(|p| p != path);
            if self.displaced.len() >= MAX_DISPLACED {
                self.displaced.clear();
            }
            self.displaced.insert(path.to_owned(), old);
        }
        let e = self.by_id.get_mut(&id).expect("just found or made");
        if !e.paths.iter().any(|p| p == path) {
            e.paths.insert(0, path.to_owned());
        }
        e.kind = kind;
        e.lookups = e.lookups.saturating_add(1);
        id
    }

    /// The object the guest just made at `path` (inside the share of `parent`) is node `id`,
    /// a number the guest chose, with one reference. False if `id` is taken. An old node its
    /// inode number still led to is an object gone: it keeps its paths, not the number.
    pub fn made_as(&mut self, parent: Node, path: &Path, meta: &cap_std::fs::Metadata, id: Node) -> bool {
        if self.by_id.contains_key(&id) {
            return false;
        }
        let share = self.by_id.get(&parent).map_or(0, |e| e.share);
        let key = Key::of(path, meta);
        self.remembered.remove(&key);
        if let Some(old) = self.by_path.insert(path.to_owned(), id)
            && let Some(e) = self.by_id.get_mut(&old)
            && e.lookups != u64::MAX
        {
            e.paths.retain(|p| p != path);
        }
        self.by_key.insert(key.clone(), id);
        let kind = super::ops::kind(meta);
        self.by_id.insert(id, Entry { key, paths: vec![path.to_owned()], lookups: 1, share, kind });
        true
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
            // Still named (not gone): found again, it is this node again.
            if self.by_key.get(&e.key) == Some(&id) {
                self.by_key.remove(&e.key);
                if self.remembered.len() >= MAX_REMEMBERED {
                    self.remembered.clear();
                }
                self.remembered.insert(e.key.clone(), id);
            }
            for p in &e.paths {
                if self.by_path.get(p) == Some(&id) {
                    self.by_path.remove(p);
                }
            }
        }
    }

    /// The share `id` is in, and a path it is known by.
    pub fn place(&self, id: Node) -> Option<(usize, PathBuf)> {
        self.by_id.get(&id).and_then(|e| Some((e.share, e.paths.first()?.clone())))
    }

    /// `path` no longer names anything (unlinked, or moved away).
    pub fn gone(&mut self, path: &Path) {
        let Some(id) = self.by_path.get(path).copied() else { return };
        let Some(e) = self.by_id.get_mut(&id) else { return };
        // A root keeps its one path.
        if e.paths.len() > 1 || e.lookups != u64::MAX {
            e.paths.retain(|p| p != path);
            self.by_path.remove(path);
            // With no name left the object is gone (or reached only by names not looked up
            // yet): a new object given its inode number is a new node, not this one, which the
            // guest may still hold with what it knew of the old object.
            if e.paths.is_empty() && self.by_key.get(&e.key) == Some(&id) {
                self.by_key.remove(&e.key);
            }
        }
    }

    /// `from` was renamed to `to`: every path at or under `from` moves (and what `to` named
    /// before is gone).
    pub fn renamed(&mut self, from: &Path, to: &Path) {
        self.gone(to);
        for (id, e) in self.by_id.iter_mut() {
            for p in e.paths.iter_mut() {
                if let Ok(rest) = p.strip_prefix(from) {
                    let moved = if rest.as_os_str().is_empty() { to.to_owned() } else { to.join(rest) };
                    if self.by_path.get(p.as_path()) == Some(id) {
                        self.by_path.remove(p.as_path());
                    }
                    self.by_path.insert(moved.clone(), *id);
                    *p = moved;
                }
            }
        }
    }

    /// `a` and `b` were exchanged (RENAME_EXCHANGE): what was at or under one is now at or
    /// under the other. Neither is under the other (the host refuses that exchange).
    pub fn exchanged(&mut self, a: &Path, b: &Path) {
        let mut moves = Vec::new();
        for (id, e) in self.by_id.iter_mut() {
            for p in e.paths.iter_mut() {
                let (rest, to) = match (p.strip_prefix(a), p.strip_prefix(b)) {
                    (Ok(rest), _) => (rest, b),
                    (_, Ok(rest)) => (rest, a),
                    _ => continue,
                };
                let moved = if rest.as_os_str().is_empty() { to.to_owned() } else { to.join(rest) };
                moves.push((std::mem::replace(p, moved.clone()), moved, *id));
            }
        }
        // Every old path goes before any new one comes: one side's old paths are the other's
        // new ones.
        for (old, _, id) in &moves {
            if self.by_path.get(old.as_path()) == Some(id) {
                self.by_path.remove(old.as_path());
            }
        }
        for (_, moved, id) in moves {
            self.by_path.insert(moved, id);
        }
    }

    /// What host object node `id` stands for.
    pub fn key(&self, id: Node) -> Option<&Key> {
        self.by_id.get(&id).map(|e| &e.key)
    }

    /// The node `path` named before a lookup found another object there, if the guest still
    /// holds it; once.
    pub fn take_displaced(&mut self, path: &Path) -> Option<Node> {
        self.displaced.remove(path).filter(|n| self.by_id.contains_key(n))
    }

    /// What node `id` was when last found.
    pub fn kind(&self, id: Node) -> Option<Kind> {
        self.by_id.get(&id).map(|e| e.kind)
    }

    /// The node a path is known by, if any.
    pub fn node_of(&self, path: &Path) -> Option<Node> {
        self.by_path.get(path).copied()
    }

    /// Every path the guest holds a node by, with its node.
    pub fn paths(&self) -> impl Iterator<Item = (&Path, Node)> {
        self.by_path.iter().map(|(p, n)| (p.as_path(), *n))
    }

    /// How many nodes are held.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(p: &Path) -> cap_std::fs::Metadata {
        cap_std::fs::Metadata::from_just_metadata(std::fs::metadata(p).unwrap())
    }

    #[test]
    fn paths_follow_lookups_renames_and_removals() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::write(a.join("f"), "x").unwrap();
        let mut nodes = Nodes::default();
        let root = nodes.add_root(d.path(), &meta(d.path()), 0);
        let na = nodes.looked_up(root, &a, &meta(&a));
        let nf = nodes.looked_up(na, &a.join("f"), &meta(&a.join("f")));
        assert_eq!(nodes.node_of(&a.join("f")), Some(nf));
        std::fs::rename(&a, &b).unwrap();
        nodes.renamed(&a, &b);
        assert_eq!(nodes.node_of(&b.join("f")), Some(nf));
        assert_eq!(nodes.node_of(&a.join("f")), None);
        assert_eq!(nodes.place(na), Some((0, b.clone())));
        // Replaced on the host behind the guest's back: the path names the new object.
        std::fs::remove_file(b.join("f")).unwrap();
        std::fs::write(b.join("f"), "y").unwrap();
        let nf2 = nodes.looked_up(na, &b.join("f"), &meta(&b.join("f")));
        assert_eq!(nodes.node_of(&b.join("f")), Some(nf2));
        nodes.gone(&b.join("f"));
        assert_eq!(nodes.node_of(&b.join("f")), None);
        // The root keeps its path.
        nodes.gone(d.path());
        assert_eq!(nodes.node_of(d.path()), Some(root));
        nodes.forget(nf, 1);
        nodes.forget(nf2, 1);
        assert_eq!(nodes.len(), 2);
        // Once a node's last name is gone, an object found with its inode number (reused by
        // the file system) is another node, even while the guest still holds the old one.
        nodes.gone(&b);
        assert_ne!(nodes.looked_up(root, &b, &meta(&b)), na);
    }

    /// A lookup that finds another object at a path (saved over on the host, before the
    /// watcher's event) keeps the node the path named for the notice that follows, once.
    /// (Unix hosts: elsewhere a node is its path, and the path's node stays.)
    #[test]
    #[cfg(unix)]
    fn a_node_a_lookup_displaced_is_kept_for_the_notice() {
        let d = tempfile::tempdir().unwrap();
        let (f, kept, tmp) = (d.path().join("f"), d.path().join("kept"), d.path().join("f.tmp"));
        std::fs::write(&f, "old").unwrap();
        // Another name keeps the old object, so its inode number is not reused.
        std::fs::hard_link(&f, &kept).unwrap();
        let mut nodes = Nodes::default();
        let root = nodes.add_root(d.path(), &meta(d.path()), 0);
        let old = nodes.looked_up(root, &f, &meta(&f));
        assert_eq!(nodes.take_displaced(&f), None);
        std::fs::write(&tmp, "new").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        let new = nodes.looked_up(root, &f, &meta(&f));
        assert_ne!(new, old);
        assert_eq!(nodes.take_displaced(&f), Some(old));
        assert_eq!(nodes.take_displaced(&f), None);
        assert_eq!((nodes.kind(old), nodes.kind(root)), (Some(Kind::File), Some(Kind::Dir)));
        // One the guest no longer holds is not told.
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&f, "newer").unwrap();
        nodes.looked_up(root, &f, &meta(&f));
        nodes.forget(new, 2);
        assert_eq!(nodes.take_displaced(&f), None);
    }

    #[test]
    fn an_object_found_again_keeps_its_number() {
        let d = tempfile::tempdir().unwrap();
        let (f, g) = (d.path().join("f"), d.path().join("g"));
        std::fs::write(&f, "x").unwrap();
        let mut nodes = Nodes::default();
        let root = nodes.add_root(d.path(), &meta(d.path()), 0);
        let nf = nodes.looked_up(root, &f, &meta(&f));
        nodes.forget(nf, 1);
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes.looked_up(root, &f, &meta(&f)), nf, "forgotten and found again");
        // Its name removed while held: the object is gone, and so is its number.
        nodes.gone(&f);
        nodes.forget(nf, 1);
        std::fs::remove_file(&f).unwrap();
        std::fs::write(&g, "y").unwrap();
        let ng = nodes.looked_up(root, &g, &meta(&g));
        assert_ne!(ng, nf);
    }
}
