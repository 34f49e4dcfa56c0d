//! What the guest knows of directories' listings, so that it answers lookups there itself,
//! with no trip to the host.
//!
//! Two ways in, both for directories the host watches (so it tells the guest of any change):
//!
//! - **Directories the guest made.** Making a file is a lookup and then the create: the kernel
//!   asks whether the name exists first. In a directory the guest has just made (untarring,
//!   `npm install`, a build's output) the answer is always "no", yet it cost a trip per file.
//!   The host says when a directory it made is empty and watched ([`Reply::NewDir`]); from
//!   then on its listing is exactly what the guest made there.
//! - **Directories surveyed.** The first lookup the kernel makes in a directory asks for the
//!   whole of it ([`Request::Survey`]): the host answers with every entry and its attributes
//!   when the directory is small. The entries not asked for wait here, each holding one
//!   lookup count on the host, until the kernel asks for them (`git status` or an import
//!   system stats every file of a tree: one trip per directory instead of one per file);
//!   names not among them are absent.
//!
//! A name known there is answered here too, once the guest knows which node its kernel was
//! last given for it, that the kernel has not forgotten that node since, and the node's
//! attributes as they are now (a directory or file the guest just changed, below). The kernel
//! asks again for names it holds whenever a call would fail if they exist (`mkdir` of an
//! existing directory, as `mkdir -p` and busybox's `tar` do for every parent of every file;
//! an exclusive create): a trip each, for an answer the guest knows. Such answers are not
//! counted on the host, so they are counted here and taken out of the kernel's next forgets
//! of the node ([`Known::kernel_forgot`]): the host's count stays at least one while the
//! kernel holds the node.
//!
//! Either holds until a notice from the host names the directory (someone else changed it)
//! or the kernel forgets it. Every rule errs towards asking: a name is added on any sign it
//! may exist (made, moved in, found by a lookup, refused with EEXIST) and removed only once
//! the host confirms it gone; an answer that is not clear (an I/O error) drops the directory.
//! Notices count a generation: an answer that crossed a notice on its way is not trusted,
//! since that notice may have been about it.
//!
//! [`Reply::NewDir`]: berth_protocol::shares::Reply::NewDir
//! [`Request::Survey`]: berth_protocol::shares::Request::Survey

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use berth_protocol::shares::{Attr, DirEntry, Kind, SetAttr, SetTime, Time};

/// The most names held over all directories; past it the directories are dropped (lookups
/// go to the host again), which bounds the memory a huge tree can take.
const MAX_NAMES: usize = 200_000;
/// The most entries waiting to be asked for; a survey that would go past it is not kept.
const MAX_AHEAD: usize = 65_536;
/// The most directories whose attributes are kept, and the most files.
const MAX_ATTRS: usize = 4096;
/// The most files whose last change is counted (past it the counts start again, and the
/// answers under way then are not kept).
const MAX_CHANGES: usize = 65_536;

/// A change of a file the guest sent: its count among changes, and the notices' generation.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    node: u64,
    count: u64,
    since: u64,
}

/// What to do with a lookup.
#[derive(Debug, PartialEq)]
pub enum Look {
    /// The name is not there.
    Absent,
    /// Its entry, to hand to the kernel: from a survey (the host counted it), or the one the
    /// kernel holds for it (counted here).
    Entry(DirEntry),
    /// The entry the kernel holds for it, with the attributes its changes ahead of the host
    /// on their way will leave (not to be kept: the change time is the guest's guess).
    Ahead(DirEntry),
    /// Ask the host for the whole directory (a survey is now under way for it).
    Survey,
    /// Ask the host for the name.
    Ask,
}

/// The directories whose listing the guest knows, and the names in each.
#[derive(Default)]
pub struct Known {
    dirs: Mutex<Dirs>,
    /// Notices seen so far.
    generation: AtomicU64,
}

#[derive(Default)]
struct Dirs {
    /// The names in each directory known whole, with the node the kernel was last given for
    /// each (0: not known).
    names: HashMap<u64, HashMap<Vec<u8>, u64>>,
    count: usize,
    /// Nodes the kernel was given by a name known here and has not forgotten since.
    held: HashSet<u64>,
    /// Lookups answered here (the host did not count them), per node, not yet taken out of
    /// the kernel's forgets.
    local: HashMap<u64, u64>,
    /// Surveyed entries the kernel has not asked for yet, by directory and name.
    ahead: HashMap<u64, HashMap<Vec<u8>, DirEntry>>,
    ahead_count: usize,
    /// How many waiting entries name each node (most notices name none).
    ahead_nodes: HashMap<u64, usize>,
    /// Directories with a survey under way, and those the host would not list whole.
    surveying: HashSet<u64>,
    declined: HashSet<u64>,
    /// Directories' attributes as the guest's last change in each left them.
    attrs: HashMap<u64, Attr>,
    /// Files' attributes as the guest's last write left them.
    files: HashMap<u64, Attr>,
    /// The count of changes sent or answered, and its value at each file's last one.
    change_count: u64,
    changes: HashMap<u64, u64>,
    /// Nodes whose attributes the guest set ahead of the host (see [`super::behind`]), as
    /// they would be once the host has set them: what the next such change starts from.
    /// Never handed to the kernel as the host's (their change time is the guest's guess).
    ahead_attrs: HashMap<u64, Ahead>,
}

/// A node's attributes as the guest's changes ahead of the host will leave them.
struct Ahead {
    attr: Attr,
    /// Whether the owner is the host's: not for a file the guest made ahead, whose owner is
    /// its guess (a host that does not run as root gives the file to its own user).
    owner_known: bool,
}

impl Dirs {
    fn counted(&mut self, node: u64, up: bool) {
        if up {
            *self.ahead_nodes.entry(node).or_default() += 1;
        } else if let Some(n) = self.ahead_nodes.get_mut(&node) {
            *n -= 1;
            if *n == 0 {
                self.ahead_nodes.remove(&node);
            }
        }
    }

    /// Drops what is known of `dir`; the nodes of its entries that waited (to forget on the
    /// host).
    fn drop_dir(&mut self, dir: u64, forget: &mut Vec<u64>) {
        self.attrs.remove(&dir);
        self.files.remove(&dir);
        if let Some(names) = self.names.remove(&dir) {
            self.count -= names.len();
        }
        self.declined.remove(&dir);
        if let Some(ahead) = self.ahead.remove(&dir) {
            self.ahead_count -= ahead.len();
            for e in ahead.into_values() {
                self.counted(e.attr.node, false);
                forget.push(e.attr.node);
            }
        }
    }

    /// Drops a waiting entry that names `node`, wherever it is (its attributes changed).
    fn drop_node(&mut self, node: u64, forget: &mut Vec<u64>) {
        let Some(n) = self.ahead_nodes.remove(&node) else { return };
        for ahead in self.ahead.values_mut() {
            ahead.retain(|_, e| e.attr.node != node);
        }
        self.ahead_count -= n;
        forget.extend(std::iter::repeat_n(node, n));
    }

    /// A change of file `node` is sent or answered: what was kept of its attributes goes, and
    /// an answer under way since before it will not be kept. Returns the change's count.
    fn file_changed(&mut self, node: u64) -> u64 {
        self.files.remove(&node);
        self.ahead_attrs.remove(&node);
        if self.changes.len() >= MAX_CHANGES {
            self.changes.clear();
        }
        self.change_count += 1;
        self.changes.insert(node, self.change_count);
        self.change_count
    }

    /// `name` is in `dir`, as node `node` (0: not known), if the guest knows `dir` whole.
    fn name(&mut self, dir: u64, name: &[u8], node: u64) {
        let Some(names) = self.names.get_mut(&dir) else { return };
        if names.insert(name.to_vec(), node).is_none() {
            self.count += 1;
            if self.count > MAX_NAMES {
                tracing::debug!("shares: over {MAX_NAMES} names known; lookups go to the host again");
                self.names.clear();
                self.count = 0;
            }
        }
    }

    /// What a change of `node` ahead of the host starts from: the attributes its last change
    /// ahead left, or the host's as the guest's last change left them; and whether the owner
    /// in them is the host's.
    fn base(&self, node: u64) -> Option<(Attr, bool)> {
        if let Some(a) = self.ahead_attrs.get(&node) {
            return Some((a.attr.clone(), a.owner_known));
        }
        self.files.get(&node).or_else(|| self.attrs.get(&node)).map(|a| (a.clone(), true))
    }

    /// Directory `dir`'s attributes as the guest's last change left them, or as its changes
    /// ahead of the host on their way will (a directory `tar` made and set the mode of).
    fn dir_attr_mut(&mut self, dir: u64) -> Option<&mut Attr> {
        match self.attrs.get_mut(&dir) {
            Some(a) => Some(a),
            None => self.ahead_attrs.get_mut(&dir).map(|a| &mut a.attr).filter(|a| a.kind == Kind::Dir),
        }
    }

    fn ahead(&mut self, node: u64, attr: Attr, owner_known: bool) {
        if self.ahead_attrs.len() >= MAX_CHANGES {
            self.ahead_attrs.clear();
        }
        self.ahead_attrs.insert(node, Ahead { attr, owner_known });
    }

    /// The kernel is given `node` for `name` in `dir`.
    fn handed(&mut self, dir: u64, name: &[u8], node: u64) {
        self.name(dir, name, node);
        if self.held.len() >= MAX_NAMES {
            self.held.clear();
        }
        self.held.insert(node);
    }

    fn take(&mut self, dir: u64, name: &[u8]) -> Option<DirEntry> {
        let e = self.ahead.get_mut(&dir)?.remove(name)?;
        self.ahead_count -= 1;
        self.counted(e.attr.node, false);
        Some(e)
    }
}

impl Known {
    /// The count of notices seen; taken when a call is sent, handed back with its answer.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// What to do with a lookup of `name` in `dir`.
    pub fn look(&self, dir: u64, name: &[u8]) -> Look {
        let mut guard = self.dirs.lock().expect("lock");
        let dirs = &mut *guard;
        if let Some(e) = dirs.take(dir, name) {
            dirs.handed(dir, name, e.attr.node);
            return Look::Entry(e);
        }
        match dirs.names.get(&dir).map(|names| names.get(name)) {
            Some(Some(&node)) if node != 0 && dirs.held.contains(&node) => {
                let (attr, ahead) = match dirs.attrs.get(&node).or_else(|| dirs.files.get(&node)) {
                    Some(a) => (a.clone(), false),
                    None => match dirs.ahead_attrs.get(&node) {
                        Some(a) => (a.attr.clone(), true),
                        None => return Look::Ask,
                    },
                };
                *dirs.local.entry(node).or_default() += 1;
                let e = DirEntry { name: name.to_vec(), attr };
                if ahead { Look::Ahead(e) } else { Look::Entry(e) }
            }
            Some(Some(_)) => Look::Ask,
            Some(None) => Look::Absent,
            None if dirs.declined.contains(&dir) || dirs.ahead_count >= MAX_AHEAD => Look::Ask,
            None => {
                if dirs.surveying.insert(dir) {
                    Look::Survey
                } else {
                    Look::Ask
                }
            }
        }
    }

    /// A survey of `dir` sent when the generation was `since` answered with `entries`, the
    /// one looked up taken out (`found`, handed to the kernel, if it is there). Returns the
    /// nodes of entries not kept (to forget on the host).
    pub fn surveyed(&self, dir: u64, entries: Vec<DirEntry>, found: Option<&DirEntry>, since: u64) -> Vec<u64> {
        let mut dirs = self.dirs.lock().expect("lock");
        dirs.surveying.remove(&dir);
        let keep = self.generation() == since
            && !dirs.names.contains_key(&dir)
            && dirs.ahead_count + entries.len() <= MAX_AHEAD
            && dirs.count + entries.len() < MAX_NAMES;
        if !keep {
            return entries.into_iter().map(|e| e.attr.node).collect();
        }
        // What still waits from an earlier survey goes (its names were dropped since).
        let mut forget = Vec::new();
        dirs.drop_dir(dir, &mut forget);
        let names: HashMap<Vec<u8>, u64> = entries.iter().map(|e| (e.name.clone(), 0)).collect();
        dirs.count += names.len();
        dirs.names.insert(dir, names);
        if let Some(e) = found {
            dirs.handed(dir, &e.name, e.attr.node);
        }
        dirs.ahead_count += entries.len();
        for e in &entries {
            dirs.counted(e.attr.node, true);
        }
        dirs.ahead.insert(dir, entries.into_iter().map(|e| (e.name.clone(), e)).collect());
        forget
    }

    /// The host would not list `dir` whole (too large, or not watched): it is asked name by
    /// name.
    pub fn declined(&self, dir: u64) {
        let mut dirs = self.dirs.lock().expect("lock");
        dirs.surveying.remove(&dir);
        dirs.declined.insert(dir);
    }

    /// A survey of `dir` failed.
    pub fn not_surveyed(&self, dir: u64) {
        self.dirs.lock().expect("lock").surveying.remove(&dir);
    }

    /// Directory `made` (its attributes as the host made it) was made by the guest and the
    /// host found it empty; `since` is the generation when the call was sent. Its attributes
    /// are known too, as for a directory the guest changed: a new directory's are asked for
    /// before anything is made in it (two lookups of it per directory `tar` makes, and its
    /// first file could not be made ahead).
    pub fn made_empty(&self, made: &Attr, since: u64) -> Vec<u64> {
        let dir = made.node;
        let mut dirs = self.dirs.lock().expect("lock");
        let mut forget = Vec::new();
        // Checked under the lock that notices take too: none can slip in between.
        if self.generation() == since {
            dirs.drop_dir(dir, &mut forget);
            dirs.names.insert(dir, HashMap::new());
            if made.watched && made.kind == Kind::Dir {
                if dirs.attrs.len() >= MAX_ATTRS {
                    dirs.attrs.clear();
                }
                dirs.attrs.insert(dir, made.clone());
            }
        }
        forget
    }

    /// `name` may now be in `dir`, an object the guest has not been told of (moved there, or
    /// refused with EEXIST).
    pub fn added(&self, dir: u64, name: &[u8]) {
        self.dirs.lock().expect("lock").name(dir, name, 0);
    }

    /// The host answered with `node` for `name` in `dir` (a lookup, or a node it made), which
    /// the kernel is given now.
    pub fn entered(&self, dir: u64, name: &[u8], node: u64) {
        self.dirs.lock().expect("lock").handed(dir, name, node);
    }

    /// Names `a` and `b` (each a directory and a name) were exchanged: each names the other's
    /// object now.
    pub fn exchanged(&self, a: (u64, &[u8]), b: (u64, &[u8])) {
        let mut dirs = self.dirs.lock().expect("lock");
        for (dir, name) in [a, b] {
            if let Some(node) = dirs.names.get_mut(&dir).and_then(|names| names.get_mut(name)) {
                *node = 0;
            }
        }
    }

    /// The kernel forgot `count` references to `node` (it may hold it no more). Returns how
    /// many of them the host counted, to forget there: those answered here go first, so the
    /// host's count is the kernel's less what is still owed here, and never reaches zero while
    /// the kernel holds the node.
    pub fn kernel_forgot(&self, node: u64, count: u64) -> u64 {
        let mut dirs = self.dirs.lock().expect("lock");
        dirs.held.remove(&node);
        let Some(local) = dirs.local.get_mut(&node) else { return count };
        let ours = (*local).min(count);
        *local -= ours;
        if *local == 0 {
            dirs.local.remove(&node);
        }
        count - ours
    }

    /// The kernel was given `node` by a lookup answered here that the host did not count.
    pub fn answered_here(&self, node: u64) {
        *self.dirs.lock().expect("lock").local.entry(node).or_default() += 1;
    }

    /// The host removed `name` from `dir`; the node of an entry that waited for it, if any.
    pub fn removed(&self, dir: u64, name: &[u8]) -> Option<u64> {
        let mut dirs = self.dirs.lock().expect("lock");
        if dirs.names.get_mut(&dir).is_some_and(|names| names.remove(name).is_some()) {
            dirs.count -= 1;
        }
        dirs.take(dir, name).map(|e| e.attr.node)
    }

    /// Directory `dir` may hold what the guest does not know of (an unclear answer, or the
    /// kernel forgot it). Returns the nodes to forget on the host.
    pub fn forget(&self, dir: u64) -> Vec<u64> {
        let mut forget = Vec::new();
        self.dirs.lock().expect("lock").drop_dir(dir, &mut forget);
        forget
    }

    /// A notice from the host names `node`: it changed behind the guest's back. Returns the
    /// nodes to forget on the host.
    pub fn stale(&self, node: u64) -> Vec<u64> {
        let mut dirs = self.dirs.lock().expect("lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        let mut forget = Vec::new();
        dirs.drop_dir(node, &mut forget);
        dirs.ahead_attrs.remove(&node);
        if dirs.ahead_count > 0 {
            dirs.drop_node(node, &mut forget);
        }
        forget
    }

    /// The host says how the guest's call (sent at generation `since`) left the directories
    /// it changed: the kernel's next question about their attributes is answered here.
    pub fn dir_attrs(&self, dirs: Vec<Attr>, since: u64) {
        let mut d = self.dirs.lock().expect("lock");
        if self.generation() != since {
            return;
        }
        if d.attrs.len() + dirs.len() > MAX_ATTRS {
            d.attrs.clear();
        }
        for a in dirs {
            d.attrs.insert(a.node, a);
        }
    }

    /// Directory `dir`'s attributes as the guest's last change left them, if nothing has
    /// changed them since.
    pub fn dir_attr(&self, dir: u64) -> Option<Attr> {
        self.dirs.lock().expect("lock").attrs.get(&dir).cloned()
    }

    /// The guest removes a name from directory `dir` before the host does (see
    /// [`super::behind`]): whether it knows the directory's attributes, which then show the
    /// change at `now` until the host's answer says how it left them.
    pub fn removing(&self, dir: u64, now: Time) -> bool {
        let mut guard = self.dirs.lock().expect("lock");
        match guard.dir_attr_mut(dir) {
            Some(a) => {
                a.mtime = now;
                a.ctime = now;
                true
            }
            None => false,
        }
    }

    /// The guest makes file `name` in directory `dir` before the host does, as node `node`
    /// (see [`super::behind`]): possible when it knows the directory whole, the name is not
    /// there, and it knows the directory's attributes (answered for the kernel's next
    /// question about them, with the times moved to `now`). Returns those attributes, the
    /// name now naming `node` for the kernel, and the change the host's answer is counted
    /// against ([`Self::set_answered`]).
    pub fn creating(&self, dir: u64, name: &[u8], node: u64, now: Time) -> Option<(Attr, Change)> {
        let mut dirs = self.dirs.lock().expect("lock");
        if dirs.names.get(&dir).is_none_or(|names| names.contains_key(name)) {
            return None;
        }
        let attr = dirs.dir_attr_mut(dir)?;
        attr.mtime = now;
        attr.ctime = now;
        let attr = attr.clone();
        dirs.handed(dir, name, node);
        let count = dirs.file_changed(node);
        Some((attr, Change { node, count, since: self.generation() }))
    }

    /// The guest sets attributes of `node` ahead of the host (see [`super::behind`]): from
    /// what it knows of them now (its own last change's, or a setting under way), the
    /// attributes the node would have, if it knows them. What was kept of them goes, as for
    /// any change ([`Self::touched`]): the host's answer says how the change left them
    /// ([`Self::set_answered`]). Returns the nodes to forget on the host too.
    pub fn setting(&self, node: u64, set: &SetAttr, now: Time) -> Option<(Attr, Change, Vec<u64>)> {
        let mut dirs = self.dirs.lock().expect("lock");
        let (mut attr, owner_known) = dirs.base(node)?;
        // A change of owner may be refused (a host that does not run as root): only one that
        // changes nothing goes ahead.
        let owner_set = set.uid.is_some() || set.gid.is_some();
        if set.size.is_some()
            || (owner_set && !owner_known)
            || set.uid.is_some_and(|u| u != attr.uid)
            || set.gid.is_some_and(|g| g != attr.gid)
        {
            return None;
        }
        if let Some(mode) = set.mode {
            attr.perm = (mode & 0o7777) as u16;
        }
        let at = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(t) => t,
        };
        if let Some(t) = set.atime {
            attr.atime = at(t);
        }
        if let Some(t) = set.mtime {
            attr.mtime = at(t);
        }
        attr.ctime = now;
        let mut forget = Vec::new();
        dirs.attrs.remove(&node);
        dirs.drop_node(node, &mut forget);
        let count = dirs.file_changed(node);
        dirs.ahead(node, attr.clone(), owner_known);
        Some((attr, Change { node, count, since: self.generation() }, forget))
    }

    /// `node`'s attributes as its changes ahead of the host on their way will leave them,
    /// if any are.
    pub fn ahead_attr(&self, node: u64) -> Option<Attr> {
        self.dirs.lock().expect("lock").ahead_attrs.get(&node).map(|a| a.attr.clone())
    }

    /// The guest made file `node` ahead of the host with attributes `attr` (its owner the
    /// guest's guess): what the changes that follow start from.
    pub fn made_ahead(&self, attr: &Attr) {
        self.dirs.lock().expect("lock").ahead(attr.node, attr.clone(), false);
    }

    /// The guest writes `len` bytes at `offset` to file `node` ahead of the host (see
    /// [`super::behind`]): from what it knows of the file now, its attributes after the
    /// write (the size grown to cover it, the times moved to `now`), if it knows them. As
    /// [`Self::setting`], the host's answer says how the write left them
    /// ([`Self::set_answered`]). Returns the change, and the nodes to forget on the host too.
    pub fn writing(&self, node: u64, offset: u64, len: u64, now: Time) -> Option<(Change, Vec<u64>)> {
        let mut dirs = self.dirs.lock().expect("lock");
        let (mut attr, owner_known) = dirs.base(node)?;
        if attr.kind != Kind::File {
            return None;
        }
        attr.size = attr.size.max(offset + len);
        attr.blocks = attr.blocks.max(attr.size.div_ceil(512));
        attr.mtime = now;
        attr.ctime = now;
        let mut forget = Vec::new();
        dirs.drop_node(node, &mut forget);
        let count = dirs.file_changed(node);
        dirs.ahead(node, attr, owner_known);
        Some((Change { node, count, since: self.generation() }, forget))
    }

    /// The host answered attribute change `change` made ahead of it with the node's
    /// attributes after it (`None`: it refused, or the answer was no attributes). Unless a
    /// later change is under way (whose answer says more), they answer the kernel's next
    /// question about them under the same rule as a write's ([`Self::written`]), and the
    /// guess the change started from goes.
    pub fn set_answered(&self, change: Change, attr: Option<Attr>) {
        let mut dirs = self.dirs.lock().expect("lock");
        let node = change.node;
        let last = dirs.changes.get(&node) == Some(&change.count);
        if !last {
            // A later change is under way: its answer says more.
            return;
        }
        dirs.ahead_attrs.remove(&node);
        match attr.filter(|a| a.node == node && a.watched && self.generation() == change.since) {
            Some(a) if a.kind == Kind::Dir => {
                if dirs.attrs.len() >= MAX_ATTRS {
                    dirs.attrs.clear();
                }
                dirs.attrs.insert(node, a);
            }
            Some(a) => {
                if dirs.files.len() >= MAX_ATTRS {
                    dirs.files.clear();
                }
                dirs.files.insert(node, a);
            }
            None => {
                dirs.file_changed(node);
            }
        }
    }

    /// The guest is changing directory `dir` (or its attributes): what was kept of them goes
    /// until the host's answer says how the change left them.
    pub fn dir_touched(&self, dir: u64) {
        self.dirs.lock().expect("lock").attrs.remove(&dir);
    }

    /// The guest changes `node` (writes to it, sets its attributes, links it): an entry that
    /// waits for it holds what it was, and so do the attributes kept of it. Returns the nodes
    /// to forget on the host, and the change, for [`Self::written`].
    pub fn touched(&self, node: u64) -> (Vec<u64>, Change) {
        let mut dirs = self.dirs.lock().expect("lock");
        let mut forget = Vec::new();
        dirs.attrs.remove(&node);
        dirs.drop_node(node, &mut forget);
        let count = dirs.file_changed(node);
        (forget, Change { node, count, since: self.generation() })
    }

    /// The host answered a change of `node` other than a write (its attributes, a link, a
    /// truncating open): it may have come after what a write's answer under way says.
    pub fn change_answered(&self, node: u64) {
        self.dirs.lock().expect("lock").file_changed(node);
    }

    /// The host answered write `change` with the file's attributes after it. They answer the
    /// kernel's next question about them (it drops its own after every write) if nothing
    /// else changed the file since the write was sent, nor was answered since (the host
    /// serves calls at once: the one answered later may have been done first), no name was
    /// removed or moved (a link count, which a file's attributes hold), and no notice came.
    /// Without attributes (an error, or a file the host does not watch) nothing is kept, and
    /// the answer counts as a change.
    pub fn written(&self, change: Change, attr: Option<Attr>) {
        let mut dirs = self.dirs.lock().expect("lock");
        let node = change.node;
        let Some(attr) = attr.filter(|a| {
            a.node == node
                && a.watched
                && self.generation() == change.since
                && dirs.changes.get(&node) == Some(&change.count)
        }) else {
            dirs.file_changed(node);
            return;
        };
        if dirs.files.len() >= MAX_ATTRS {
            dirs.files.clear();
        }
        dirs.files.insert(node, attr);
    }

    /// File `node`'s attributes as the guest's last write left them, if nothing has changed
    /// them since.
    pub fn file_attr(&self, node: u64) -> Option<Attr> {
        self.dirs.lock().expect("lock").files.get(&node).cloned()
    }

    /// The guest removes or moves a name (sent or answered): the link count and change time
    /// of a file it named, which the guest cannot tell, have changed; no file's attributes
    /// are kept, nor kept from answers under way.
    pub fn names_changed(&self) {
        let mut dirs = self.dirs.lock().expect("lock");
        if !dirs.files.is_empty() {
            dirs.files.clear();
        }
        if !dirs.changes.is_empty() {
            dirs.changes.clear();
        }
        if !dirs.ahead_attrs.is_empty() {
            dirs.ahead_attrs.clear();
        }
    }

    /// Nothing is known any more (a host connected anew: its nodes may be others, so what
    /// waited is not forgotten there).
    pub fn clear(&self) {
        let mut dirs = self.dirs.lock().expect("lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        *dirs = Dirs::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_protocol::shares::{Attr, Kind};

    fn dir(node: u64) -> Attr {
        Attr { kind: Kind::Dir, perm: 0o755, nlink: 2, ..entry("", node).attr }
    }

    fn entry(name: &str, node: u64) -> DirEntry {
        let attr = Attr {
            node,
            kind: Kind::File,
            size: 0,
            blocks: 0,
            atime: Default::default(),
            mtime: Default::default(),
            ctime: Default::default(),
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            watched: true,
        };
        DirEntry { name: name.as_bytes().to_vec(), attr }
    }

    #[test]
    fn a_made_directory_knows_its_names_until_a_notice() {
        let k = Known::default();
        assert_eq!(k.dir_attr(7), None);
        k.made_empty(&dir(7), k.generation());
        assert_eq!(k.look(7, b"a"), Look::Absent);
        assert_eq!(k.dir_attr(7), Some(dir(7)), "a new directory's attributes are known");
        k.added(7, b"a");
        assert_eq!(k.look(7, b"a"), Look::Ask);
        assert_eq!(k.look(7, b"b"), Look::Absent);
        k.removed(7, b"a");
        assert_eq!(k.look(7, b"a"), Look::Absent);
        // A notice about something else leaves it; one about the directory drops it.
        k.stale(8);
        assert_eq!(k.look(7, b"a"), Look::Absent);
        k.stale(7);
        assert_eq!(k.look(7, b"a"), Look::Survey, "a directory not known is surveyed");
        assert_eq!(k.look(7, b"b"), Look::Ask, "one survey at a time");
        k.not_surveyed(7);
        // An answer that crossed a notice is not trusted.
        let since = k.generation();
        k.stale(9);
        k.made_empty(&dir(7), since);
        assert_ne!(k.look(7, b"a"), Look::Absent);
        k.not_surveyed(7);
        k.made_empty(&dir(7), k.generation());
        k.forget(7);
        assert_ne!(k.look(7, b"a"), Look::Absent);
        k.not_surveyed(7);
        k.made_empty(&dir(7), k.generation());
        k.clear();
        assert_ne!(k.look(7, b"a"), Look::Absent);
    }

    #[test]
    fn surveyed_entries_are_handed_out_once_and_forgotten_when_stale() {
        let k = Known::default();
        assert_eq!(k.look(3, b"a"), Look::Survey);
        let kept =
            k.surveyed(3, vec![entry("b", 11), entry("c", 12), entry("d", 13)], Some(&entry("a", 10)), k.generation());
        assert!(kept.is_empty());
        assert_eq!(k.look(3, b"b"), Look::Entry(entry("b", 11)));
        assert_eq!(k.look(3, b"b"), Look::Ask, "an entry is handed out once (it holds one count)");
        assert_eq!(k.look(3, b"a"), Look::Ask, "the name looked up is there");
        assert_eq!(k.look(3, b"zz"), Look::Absent);
        // A changed file's waiting entry goes, and its count with it.
        assert_eq!(k.stale(12), vec![12]);
        assert_eq!(k.look(3, b"c"), Look::Ask);
        // The directory changed: what still waits is forgotten.
        assert_eq!(k.stale(3), vec![13]);
        assert_eq!(k.look(3, b"zz"), Look::Survey);
        // A survey that crossed a notice keeps nothing.
        let since = k.generation();
        k.stale(99);
        assert_eq!(k.surveyed(3, vec![entry("b", 21)], Some(&entry("a", 20)), since), vec![21]);
        assert_eq!(k.look(3, b"zz"), Look::Survey);
        k.declined(3);
        assert_eq!(k.look(3, b"zz"), Look::Ask, "a directory the host would not list is not asked again");
        // The kernel forgot a directory: its waiting entries are forgotten on the host.
        assert_eq!(k.look(4, b"a"), Look::Survey);
        k.surveyed(4, vec![entry("x", 31), entry("y", 32)], None, k.generation());
        assert_eq!(k.look(4, b"a"), Look::Absent, "the name looked up was not there");
        // The guest changed a waiting entry's node through another name: it goes.
        assert_eq!(k.touched(32).0, vec![32]);
        assert_eq!(k.look(4, b"y"), Look::Ask);
        assert_eq!(k.forget(4), vec![31]);
    }

    #[test]
    fn directories_attributes_are_kept_until_changed() {
        let k = Known::default();
        let a = entry("d", 5).attr;
        k.dir_attrs(vec![a.clone()], k.generation());
        assert_eq!(k.dir_attr(5), Some(a.clone()));
        k.dir_touched(5);
        assert_eq!(k.dir_attr(5), None);
        k.dir_attrs(vec![a.clone()], k.generation());
        k.stale(5);
        assert_eq!(k.dir_attr(5), None, "a notice drops them");
        let since = k.generation();
        k.stale(6);
        k.dir_attrs(vec![a.clone()], since);
        assert_eq!(k.dir_attr(5), None, "an answer that crossed a notice is not kept");
        k.dir_attrs(vec![a], k.generation());
        k.touched(5);
        assert_eq!(k.dir_attr(5), None);
    }

    #[test]
    fn names_the_kernel_holds_are_answered_here_and_counted() {
        let k = Known::default();
        k.made_empty(&dir(1), k.generation());
        // `mkdir d` in a directory the guest made: the host made node 5 for it.
        k.entered(1, b"d", 5);
        assert_eq!(k.look(1, b"d"), Look::Ask, "its attributes are not known yet");
        let a = entry("d", 5).attr;
        k.dir_attrs(vec![a.clone()], k.generation());
        // `mkdir -p d/x` asks for `d` again: answered here, twice.
        assert_eq!(k.look(1, b"d"), Look::Entry(DirEntry { name: b"d".to_vec(), attr: a.clone() }));
        assert!(matches!(k.look(1, b"d"), Look::Entry(_)));
        // The kernel holds it three times; the host counted one. Forgets take out those
        // answered here first.
        assert_eq!(k.kernel_forgot(5, 1), 0);
        assert_eq!(k.look(1, b"d"), Look::Ask, "once forgotten, the kernel may not hold it");
        assert_eq!(k.kernel_forgot(5, 2), 1);
        assert_eq!(k.kernel_forgot(5, 1), 1, "nothing is owed here any more");
        // Given again by the host: answered here again, until its attributes change.
        k.entered(1, b"d", 5);
        assert!(matches!(k.look(1, b"d"), Look::Entry(_)));
        k.dir_touched(5);
        assert_eq!(k.look(1, b"d"), Look::Ask);
        // A name the guest knows only as refused or moved there names no known node.
        k.dir_attrs(vec![a.clone()], k.generation());
        k.added(1, b"d");
        assert_eq!(k.look(1, b"d"), Look::Ask);
        k.entered(1, b"d", 5);
        k.entered(1, b"e", 6);
        k.exchanged((1, b"d"), (1, b"e"));
        assert_eq!(k.look(1, b"d"), Look::Ask, "exchanged: it names another object now");
        // Removed, it is absent; a notice about the directory drops all of it.
        k.entered(1, b"d", 5);
        k.removed(1, b"d");
        assert_eq!(k.look(1, b"d"), Look::Absent);
        k.entered(1, b"d", 5);
        k.stale(1);
        assert_ne!(k.look(1, b"d"), Look::Entry(DirEntry { name: b"d".to_vec(), attr: a }));
    }

    #[test]
    fn a_writes_attributes_are_kept_until_anything_may_have_changed_them() {
        let k = Known::default();
        let mut a = entry("f", 9).attr;
        a.size = 5;
        let write = |k: &Known| k.touched(9).1;
        let w = write(&k);
        k.written(w, Some(a.clone()));
        assert_eq!(k.file_attr(9), Some(a.clone()));
        // The next write drops them until its own answer.
        let w = write(&k);
        assert_eq!(k.file_attr(9), None);
        k.written(w, None);
        assert_eq!(k.file_attr(9), None, "an answer without attributes keeps none");
        // Another change sent while the write was under way, or answered meanwhile.
        let w = write(&k);
        k.touched(9);
        k.written(w, Some(a.clone()));
        assert_eq!(k.file_attr(9), None, "a change sent after the write");
        let w = write(&k);
        k.change_answered(9);
        k.written(w, Some(a.clone()));
        assert_eq!(k.file_attr(9), None, "a change answered after the write was sent");
        // A notice meanwhile, a name removed or moved, an unwatched file, another node.
        let w = write(&k);
        k.stale(1);
        k.written(w, Some(a.clone()));
        assert_eq!(k.file_attr(9), None, "a notice");
        let w = write(&k);
        k.names_changed();
        k.written(w, Some(a.clone()));
        assert_eq!(k.file_attr(9), None, "a name removed");
        let w = write(&k);
        k.written(w, Some(Attr { watched: false, ..a.clone() }));
        assert_eq!(k.file_attr(9), None, "not watched");
        let w = write(&k);
        k.written(w, Some(Attr { node: 10, ..a.clone() }));
        assert_eq!((k.file_attr(9), k.file_attr(10)), (None, None), "another node's");
        // Kept ones go with a notice for the file, a name removed, the kernel forgetting it.
        for drop in [|k: &Known| _ = k.stale(9), |k: &Known| k.names_changed(), |k: &Known| _ = k.forget(9)] {
            let w = write(&k);
            k.written(w, Some(a.clone()));
            assert_eq!(k.file_attr(9), Some(a.clone()));
            drop(&k);
            assert_eq!(k.file_attr(9), None);
        }
        // Counting starts again past the most files: answers under way then are not kept.
        let w = write(&k);
        for n in 0..MAX_CHANGES as u64 {
            k.touched(100 + n);
        }
        k.written(w, Some(a));
        assert_eq!(k.file_attr(9), None);
    }

    #[test]
    fn too_many_names_drop_everything() {
        let k = Known::default();
        k.made_empty(&dir(1), k.generation());
        k.made_empty(&dir(2), k.generation());
        for i in 0..MAX_NAMES {
            k.added(1, format!("f{i}").as_bytes());
        }
        assert_eq!(k.look(2, b"x"), Look::Absent);
        k.added(1, b"one more");
        assert_ne!(k.look(2, b"x"), Look::Absent);
        assert_eq!(k.dirs.lock().unwrap().count, 0);
    }
}
