//! The host's file server for shared folders (the protocol is `berth_protocol::shares`):
//! directories of this machine that the guest mounts at the same paths.
//!
//! The daemon keeps [`STREAMS`] streams open to the guest's shares port and answers the
//! calls that arrive on them, each in a blocking task of its own (file systems block), so
//! many calls are in flight at once and a large read does not hold up a stat. Everything here
//! uses `std::fs` (see [`ops`]), so it builds for macOS and Windows as well.

pub mod memory;
mod nodes;
pub mod ops;
pub mod watch;
mod xattr;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_protocol::SHARES_PORT;
use berth_protocol::shares::{self as proto, Kind, Message, Node, Reply, Request, Share, errno, read_message};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::transport::Transport;
use nodes::Nodes;
use ops::{Dir, Errno, child, component, io_errno};

/// How many streams the server keeps open: calls spread over them.
pub const STREAMS: usize = 4;
/// Entries per directory-listing answer.
const DIR_BATCH: usize = 256;
/// The most stale entries in one notice after lost events (about 40 bytes each, well within a
/// frame).
const RESCAN_BATCH: usize = 4096;

thread_local! {
    /// The directories the call on this thread changed.
    static CHANGED_DIRS: std::cell::RefCell<Vec<Node>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A directory of this machine to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    pub path: PathBuf,
    pub read_only: bool,
}

/// Errors setting up the file server.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("shared folder {path}: {source}")]
    Share {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("shared folder {0} is not an absolute path")]
    Relative(String),
}

/// An open directory: its node and its names as they were when last read from the start.
type Listing = (Node, Option<Arc<Vec<Vec<u8>>>>);

/// An open file, the path it was opened by (to mark the guest's writes) and its node (to
/// answer for it once the guest has removed its last name).
type OpenFile = (Arc<File>, PathBuf, Node);

struct Shared {
    shares: Vec<Share>,
    /// Each share's real path on this machine (its symlinks resolved), and the directory
    /// opened there, which every operation in the share starts from.
    roots: Vec<PathBuf>,
    dirs: Vec<Dir>,
    read_only: Vec<bool>,
    nodes: Mutex<Nodes>,
    /// Open files.
    files: Mutex<HashMap<proto::Handle, OpenFile>>,
    /// Open directories: each one's node and the names it had when last listed from the start
    /// (none until the first read).
    listings: Mutex<HashMap<proto::Handle, Listing>>,
    handles: AtomicU64,
    watch: Arc<watch::Watch>,
    changes: Mutex<Option<mpsc::UnboundedReceiver<watch::Change>>>,
    /// Where notices go: the writers of the open streams.
    notices: Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>,
    /// Lookups and attribute reads asked for (tests check which ones the guest answers
    /// itself).
    lookups: AtomicU64,
    getattrs: AtomicU64,
    /// Reads of files' data (through the transport or the shared memory).
    reads: AtomicU64,
    /// Batches of calls done in order (the guest's write-behind).
    batches: AtomicU64,
    /// Reads and writes whose data went through the shared memory.
    via_memory: AtomicU64,
    /// The memory shared with the guest for data, if the VM has it.
    memory: std::sync::OnceLock<Arc<memory::Memory>>,
}

/// The file server; cheap to clone.
#[derive(Clone)]
pub struct FileServer(Arc<Shared>);

impl FileServer {
    /// Serves `shares` (absolute host directories; a missing one is an error, as is a relative
    /// one).
    pub fn new(shares: &[ShareSpec]) -> Result<FileServer, FilesError> {
        let mut nodes = Nodes::default();
        let mut out = Vec::new();
        let mut read_only = Vec::new();
        let mut roots = Vec::new();
        let mut dirs = Vec::new();
        for (i, s) in shares.iter().enumerate() {
            if !s.path.is_absolute() {
                return Err(FilesError::Relative(s.path.display().to_string()));
            }
            let err = |source| FilesError::Share { path: s.path.display().to_string(), source };
            let path = std::fs::canonicalize(&s.path).map_err(err)?;
            if !std::fs::metadata(&path).map_err(err)?.is_dir() {
                return Err(err(std::io::Error::from(std::io::ErrorKind::NotADirectory)));
            }
            let dir = Dir::open_ambient_dir(&path, cap_std::ambient_authority()).map_err(err)?;
            let meta = dir.dir_metadata().map_err(err)?;
            let root = nodes.add_root(&path, &meta, i);
            dirs.push(dir);
            // The guest mounts it where the user named it (a symlinked /tmp on macOS is still
            // /tmp to the user), and this side works on the real path.
            out.push(Share { path: s.path.display().to_string(), root, read_only: s.read_only });
            read_only.push(s.read_only);
            roots.push(path);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let watch = watch::Watch::new(move |c| {
            let _ = tx.send(c);
        });
        // The roots are watched from the start (a container may watch one before it looks in).
        for r in &roots {
            watch.dir(r);
        }
        Ok(FileServer(Arc::new(Shared {
            shares: out,
            roots,
            dirs,
            read_only,
            nodes: Mutex::new(nodes),
            files: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
            handles: AtomicU64::new(1),
            watch,
            changes: Mutex::new(Some(rx)),
            notices: Mutex::new(Vec::new()),
            lookups: AtomicU64::new(0),
            getattrs: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            via_memory: AtomicU64::new(0),
            memory: std::sync::OnceLock::new(),
        })))
    }

    /// Offers the guest `memory` (the VM's `ivshmem-plain` device's) for reads' and writes'
    /// data, from the next stream on. Once only: a second is ignored.
    pub fn share_memory(&self, memory: Arc<memory::Memory>) {
        let _ = self.0.memory.set(memory);
    }

    pub fn shares(&self) -> &[Share] {
        &self.0.shares
    }

    /// Keeps [`STREAMS`] streams to the guest up for as long as the daemon runs.
    pub async fn serve(self, transport: Arc<dyn Transport>) {
        let changes = self.0.changes.lock().expect("lock").take();
        if let Some(mut changes) = changes {
            let me = self.clone();
            tokio::spawn(async move {
                while let Some(c) = changes.recv().await {
                    me.notify(c);
                }
            });
        }
        let mut lanes = Vec::new();
        for lane in 0..STREAMS {
            let (me, transport) = (self.clone(), transport.clone());
            lanes.push(tokio::spawn(async move {
                loop {
                    match transport.connect(SHARES_PORT).await {
                        Ok(s) => match me.session(s).await {
                            Ok(()) => tracing::info!(lane, "shares stream closed by the guest"),
                            Err(e) => tracing::info!(lane, error = %e, "shares stream ended"),
                        },
                        Err(e) => tracing::debug!(lane, error = %e, "shares: the guest is not reachable"),
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }));
        }
        for l in lanes {
            let _ = l.await;
        }
    }

    /// One stream: the hello, then calls answered as they complete.
    pub async fn session<S: AsyncRead + AsyncWrite + Send + 'static>(&self, stream: S) -> std::io::Result<()> {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let memory = self.0.memory.get().map(|m| m.describe());
        let hello = Message::Hello { version: proto::VERSION, shares: self.0.shares.clone(), memory };
        wr.write_all(&proto::encode(&hello)).await?;
        match read_message(&mut rd).await? {
            Some(Message::Ready { version }) if version == proto::VERSION => {}
            other => {
                return Err(std::io::Error::other(format!("the guest did not answer the shares hello: {other:?}")));
            }
        }
        let (answers, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.0.notices.lock().expect("lock").push(answers.clone());
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        // Batches are done one after another, in the order they came: the guest sends the next
        // before the one before is answered, and counts on that order (the calls in them
        // were answered in the guest already, or must follow those that were).
        let (ordered, mut batches) = mpsc::unbounded_channel::<(u64, Request)>();
        let in_order = {
            let (me, answers) = (self.clone(), answers.clone());
            tokio::spawn(async move {
                while let Some((id, request)) = batches.recv().await {
                    let me = me.clone();
                    let work = tokio::task::spawn_blocking(move || me.call_telling_dirs(request));
                    let (result, dirs) = work.await.unwrap_or((Err(errno::EIO), Vec::new()));
                    let _ = answers.send(proto::encode(&Message::Answer { id, result, dirs }));
                }
            })
        };
        let result = loop {
            match read_message(&mut rd).await {
                Ok(Some(Message::Call { id, request: request @ Request::Batch { .. } })) => {
                    let _ = ordered.send((id, request));
                }
                Ok(Some(Message::Call { id, request })) => {
                    let (me, answers) = (self.clone(), answers.clone());
                    let one_way = matches!(request, Request::Forget { .. } | Request::Release { .. });
                    let work = tokio::task::spawn_blocking(move || me.call_telling_dirs(request));
                    tokio::spawn(async move {
                        let (result, dirs) = work.await.unwrap_or((Err(errno::EIO), Vec::new()));
                        if !one_way {
                            let _ = answers.send(proto::encode(&Message::Answer { id, result, dirs }));
                        }
                    });
                }
                Ok(Some(other)) => tracing::warn!(?other, "shares: unexpected message from the guest"),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(ordered);
        let _ = in_order.await;
        drop(answers);
        let _ = writer.await;
        result
    }

    /// Where `node` is: its share, its path on this machine, and its path below the share's
    /// root.
    fn locate(&self, node: Node) -> Result<(usize, PathBuf, PathBuf), Errno> {
        let (i, path) = self.0.nodes.lock().expect("lock").place(node).ok_or(errno::ENOENT)?;
        let rel = path.strip_prefix(&self.0.roots[i]).map_err(|_| errno::ENOENT)?.to_owned();
        Ok((i, path, rel))
    }

    /// `rel` (a directory below share `i`'s root) opened beneath the root, not through a
    /// symlink at its end.
    fn open_dir(&self, i: usize, rel: &Path) -> Result<Dir, Errno> {
        use cap_fs_ext::DirExt;
        let root = &self.0.dirs[i];
        if rel.as_os_str().is_empty() { root.try_clone() } else { root.open_dir_nofollow(rel) }.map_err(io_errno)
    }

    /// Directory `node`, opened (a symlink is not one: no name is looked up through a link),
    /// and its path on this machine.
    fn dir(&self, node: Node) -> Result<(Dir, PathBuf), Errno> {
        let (i, path, rel) = self.locate(node)?;
        Ok((self.open_dir(i, &rel)?, path))
    }

    /// Node `node` as the directory it is in (opened) and its name there (`.` for a share's
    /// root), with its path on this machine.
    fn at(&self, node: Node) -> Result<(Dir, OsString, PathBuf), Errno> {
        let (i, path, rel) = self.locate(node)?;
        match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => Ok((self.open_dir(i, parent)?, name.to_owned(), path)),
            _ => Ok((self.open_dir(i, Path::new(""))?, ".".into(), path)),
        }
    }

    fn file(&self, handle: proto::Handle) -> Result<Arc<File>, Errno> {
        self.0.files.lock().expect("lock").get(&handle).map(|(f, ..)| f.clone()).ok_or(errno::EBADF)
    }

    fn new_handle(&self, f: File, path: PathBuf, node: Node) -> proto::Handle {
        let h = self.0.handles.fetch_add(1, Ordering::Relaxed);
        self.0.files.lock().expect("lock").insert(h, (Arc::new(f), path, node));
        h
    }

    /// The guest is changing `path` (and so its directory's entries): not news for it later.
    fn mark(&self, path: &Path) {
        self.0.watch.mark(path);
        if let Some(dir) = path.parent() {
            self.0.watch.mark(dir);
        }
    }

    fn mark_handle(&self, handle: proto::Handle) {
        let path = self.0.files.lock().expect("lock").get(&handle).map(|(_, p, _)| p.clone());
        if let Some(p) = path {
            self.0.watch.mark(&p);
        }
    }

    /// A change made on this machine, as a notice to the guest: what its kernel may hold
    /// wrong now (the node at the path; for an entry that came or went, its directory's
    /// listing and that name in it), and the path to raise the change at.
    fn notify(&self, change: watch::Change) {
        let (path, entry) = match &change {
            watch::Change::Modified(p) => (p, false),
            watch::Change::Entry(p) => (p, true),
            watch::Change::Rescan => return self.notify_all(),
        };
        tracing::debug!(path = %path.display(), entry, "shares: a change made on this machine");
        let Some((i, root)) = self.0.roots.iter().enumerate().find(|(_, r)| path.starts_with(r)) else { return };
        let mut notice = {
            let mut nodes = self.0.nodes.lock().expect("lock");
            let mut stale = Vec::new();
            let held = nodes.node_of(path);
            if let Some(node) = held {
                stale.push(proto::Stale { node, name: Vec::new(), gone: 0, gone_as: None });
            }
            if entry
                && path != root
                && let (Some(dir), Some(name)) = (path.parent().and_then(|d| nodes.node_of(d)), path.file_name())
            {
                // The node the guest holds for the name is gone if the name is, or now names
                // another object (an editor's save by rename).
                let gone = held.filter(|&n| {
                    let now = std::fs::symlink_metadata(path).ok();
                    now.is_none_or(|m| {
                        nodes.key(n) != Some(&nodes::Key::of(path, &cap_std::fs::Metadata::from_just_metadata(m)))
                    })
                });
                // Or the guest looked the name up after the change, before this notice, and
                // holds the old object's node by it still.
                let displaced = nodes.take_displaced(path);
                let gone = gone.or(displaced);
                let gone_as = gone.and_then(|n| nodes.kind(n)).map(|kind| gone_attr(gone.unwrap_or(0), kind));
                let name = path_bytes(Path::new(name));
                stale.push(proto::Stale { node: dir, name, gone: gone.unwrap_or(0), gone_as });
                stale.push(proto::Stale { node: dir, name: Vec::new(), gone: 0, gone_as: None });
            }
            let rel = path.strip_prefix(root).unwrap_or(Path::new(""));
            Message::Changed { root: self.0.shares[i].root, stale, path: path_bytes(rel) }
        };
        // A gone file the guest holds open is still there to ask (outside the node table's
        // lock: the open files' lock is never taken inside it).
        if let Message::Changed { stale, .. } = &mut notice {
            for s in stale.iter_mut().filter(|s| s.gone_as.as_ref().is_some_and(|a| a.kind != Kind::Dir)) {
                if let Some(a) = self.open_attr(s.gone) {
                    s.gone_as = Some(a);
                }
            }
        }
        self.send_notice(&notice);
    }

    /// The attributes of `node` through any handle the guest holds open on it.
    fn open_attr(&self, node: Node) -> Option<proto::Attr> {
        let f = self.0.files.lock().expect("lock").values().find(|(.., n)| *n == node).map(|(f, ..)| f.clone())?;
        let meta = f.metadata().ok()?;
        Some(ops::attr(node, &ops::Metadata::from_just_metadata(meta)))
    }

    /// After lost events: everything the guest holds may be stale. Every node it holds and
    /// every name it holds one by are named, in notices of [`RESCAN_BATCH`] at most, each
    /// raised at its share's root.
    fn notify_all(&self) {
        let notices: Vec<Message> = {
            let nodes = self.0.nodes.lock().expect("lock");
            let mut per_share: Vec<Vec<proto::Stale>> = vec![Vec::new(); self.0.roots.len()];
            for (path, node) in nodes.paths() {
                let Some(i) = self.0.roots.iter().position(|r| path.starts_with(r)) else { continue };
                per_share[i].push(proto::Stale { node, name: Vec::new(), gone: 0, gone_as: None });
                if let (Some(dir), Some(name)) = (path.parent().and_then(|d| nodes.node_of(d)), path.file_name())
                    && path != self.0.roots[i]
                {
                    let name = path_bytes(Path::new(name));
                    per_share[i].push(proto::Stale { node: dir, name, gone: 0, gone_as: None });
                }
            }
            per_share
                .into_iter()
                .enumerate()
                .flat_map(|(i, stale)| {
                    let root = self.0.shares[i].root;
                    let batches: Vec<Vec<proto::Stale>> = stale.chunks(RESCAN_BATCH).map(<[_]>::to_vec).collect();
                    batches.into_iter().map(move |stale| Message::Changed { root, stale, path: Vec::new() })
                })
                .collect()
        };
        for notice in &notices {
            self.send_notice(notice);
        }
    }

    fn send_notice(&self, notice: &Message) {
        let mut sinks = self.0.notices.lock().expect("lock");
        sinks.retain(|s| !s.is_closed());
        if let Some(sink) = sinks.first() {
            let _ = sink.send(proto::encode(notice));
        }
    }

    /// Whether `node` lies in a read-only share (writes are refused with EROFS).
    fn writable(&self, node: Node) -> Result<(), Errno> {
        let (i, _) = self.0.nodes.lock().expect("lock").place(node).ok_or(errno::ENOENT)?;
        if self.0.read_only[i] { Err(errno::EROFS) } else { Ok(()) }
    }

    /// The entry for `name` in directory `dir` (at `dir_path`, node `parent`) as it is now,
    /// its node's count raised.
    fn lookup_in(&self, dir: &Dir, dir_path: &Path, parent: Node, name: &[u8]) -> Result<proto::DirEntry, Errno> {
        let meta = ops::meta(dir, &component(name)?)?;
        let path = child(dir_path, name)?;
        let node = self.0.nodes.lock().expect("lock").looked_up(parent, &path, &meta);
        let mut e = ops::entry(name.to_vec(), node, &meta);
        e.attr.watched = self.0.watch.is_watched(dir_path);
        Ok(e)
    }

    /// The guest looks for `name` in directory `parent`, which is watched from now on: its
    /// entry, or that it is absent (and whether the guest will hear when it appears).
    fn lookup(&self, parent: Node, name: &[u8]) -> Result<Reply, Errno> {
        self.0.lookups.fetch_add(1, Ordering::Relaxed);
        let (dir, dir_path) = self.dir(parent)?;
        self.0.watch.dir(&dir_path);
        match self.lookup_in(&dir, &dir_path, parent, name) {
            Err(errno::ENOENT) => Ok(Reply::Absent { watched: self.0.watch.is_watched(&dir_path) }),
            r => r.map(Reply::Entry),
        }
    }

    /// A lookup of `name` in `parent` that brings the whole directory when it is watched and
    /// small (see [`Request::Survey`]). The watch comes first: a change after the listing is
    /// a notice.
    fn survey(&self, parent: Node, name: &[u8]) -> Result<Reply, Errno> {
        let (dir, dir_path) = self.dir(parent)?;
        self.0.watch.dir(&dir_path);
        if self.0.watch.is_watched(&dir_path) {
            let names = ops::list(&dir)?;
            if names.len() <= proto::SURVEY_MAX {
                self.0.lookups.fetch_add(1, Ordering::Relaxed);
                // A name gone since the listing is left out.
                let entries = names.iter().filter_map(|n| self.lookup_in(&dir, &dir_path, parent, n).ok()).collect();
                return Ok(Reply::Listing { entries });
            }
        }
        self.lookup(parent, name)
    }

    /// The entry for `name` in `dir` without counting a lookup (a plain listing: its node
    /// number is the node's if the guest holds it, else 0).
    fn peek(&self, dir: &Dir, dir_path: &Path, name: &[u8]) -> Result<proto::DirEntry, Errno> {
        let meta = ops::meta(dir, &component(name)?)?;
        let node = self.0.nodes.lock().expect("lock").node_of(&child(dir_path, name)?).unwrap_or(0);
        let mut e = ops::entry(name.to_vec(), node, &meta);
        e.attr.watched = self.0.watch.is_watched(dir_path);
        Ok(e)
    }

    fn attr(&self, node: Node, handle: Option<proto::Handle>) -> Result<proto::Attr, Errno> {
        let open = handle.and_then(|h| self.0.files.lock().expect("lock").get(&h).cloned());
        let (meta, path) = match open {
            Some((f, path, _)) => (ops::Metadata::from_just_metadata(f.metadata().map_err(io_errno)?), path),
            None => match self.at(node) {
                Ok((dir, name, path)) => (ops::meta(&dir, &name)?, path),
                // A file the guest removed while it holds it open has no path, and the
                // guest's kernel asks without the handle (`fstat`): any open handle of it.
                Err(e) => {
                    let files = self.0.files.lock().expect("lock");
                    let (f, path, _) = files.values().find(|(.., n)| *n == node).cloned().ok_or(e)?;
                    drop(files);
                    (ops::Metadata::from_just_metadata(f.metadata().map_err(io_errno)?), path)
                }
            },
        };
        let mut attr = ops::attr(node, &meta);
        // A node's changes are seen through its directory's watch; the root's through its own.
        attr.watched = self.0.roots.contains(&path) && self.0.watch.is_watched(&path)
            || path.parent().is_some_and(|d| self.0.watch.is_watched(d));
        Ok(attr)
    }

    /// A file's attributes right after a write through `handle`, when the host watches its
    /// directory (else the guest would not keep them), to answer the guest kernel's next
    /// question about them: it drops what it had of them after every write.
    fn written_attr(&self, handle: proto::Handle) -> Option<proto::Attr> {
        let (f, path, node) = self.0.files.lock().expect("lock").get(&handle).cloned()?;
        if !path.parent().is_some_and(|d| self.0.watch.is_watched(d)) {
            return None;
        }
        let meta = ops::Metadata::from_just_metadata(f.metadata().ok()?);
        let mut attr = ops::attr(node, &meta);
        attr.watched = true;
        Some(attr)
    }

    /// Answers one call (on a blocking thread), then records the paths it changed as it left
    /// them, so that their events are not taken for news ([`watch`]).
    pub fn call(&self, request: Request) -> Result<Reply, Errno> {
        self.call_telling_dirs(request).0
    }

    /// [`Self::call`], and the attributes of the watched directories it changed, as it left
    /// them (see [`Message::Answer`]).
    pub fn call_telling_dirs(&self, request: Request) -> (Result<Reply, Errno>, Vec<proto::Attr>) {
        let reply = self.answer(request);
        self.0.watch.seal_marked();
        let changed = CHANGED_DIRS.with(|d| std::mem::take(&mut *d.borrow_mut()));
        let dirs = if reply.is_ok() {
            changed.into_iter().filter_map(|n| self.attr(n, None).ok().filter(|a| a.watched)).collect()
        } else {
            Vec::new()
        };
        (reply, dirs)
    }

    /// The guest makes or removes `name` in directory `parent`: checked writable and marked
    /// as the guest's own change. Returns the directory, its path, the name as a component,
    /// and the name's path.
    fn changing(&self, parent: Node, name: &[u8]) -> Result<(Dir, PathBuf, OsString, PathBuf), Errno> {
        self.dir_changed(parent);
        self.writable(parent)?;
        let (dir, dir_path) = self.dir(parent)?;
        let n = component(name)?;
        let path = dir_path.join(&n);
        self.mark(&path);
        Ok((dir, dir_path, n, path))
    }

    /// Directory `node` gains or loses a name in the call on this thread.
    fn dir_changed(&self, node: Node) {
        CHANGED_DIRS.with(|d| {
            let mut d = d.borrow_mut();
            if !d.contains(&node) {
                d.push(node);
            }
        });
    }

    fn answer(&self, request: Request) -> Result<Reply, Errno> {
        match request {
            // In order, each sealed as a call of its own (its marks are the guest's echoes
            // until it is done); the changed directories' attributes are as the last left them.
            Request::Batch { calls } => {
                self.0.batches.fetch_add(1, Ordering::Relaxed);
                let results = calls
                    .into_iter()
                    .map(|call| {
                        if matches!(call, Request::Batch { .. }) {
                            return Err(errno::EINVAL);
                        }
                        let r = self.answer(call);
                        self.0.watch.seal_marked();
                        r
                    })
                    .collect();
                Ok(Reply::Batch(results))
            }
            Request::Lookup { parent, name } => self.lookup(parent, &name),
            Request::Survey { parent, name } => self.survey(parent, &name),
            Request::Forget { nodes } => {
                let mut held = self.0.nodes.lock().expect("lock");
                for (node, count) in nodes {
                    held.forget(node, count);
                }
                Ok(Reply::Ok)
            }
            Request::GetAttr { node, handle } => {
                self.0.getattrs.fetch_add(1, Ordering::Relaxed);
                self.attr(node, handle).map(Reply::Attr)
            }
            Request::SetAttr { node, set } => {
                self.writable(node)?;
                let at = self.at(node).ok();
                if let Some((_, _, p)) = &at {
                    self.0.watch.mark(p);
                }
                let file = set.handle.and_then(|h| self.file(h).ok());
                ops::set_attr(at.as_ref().map(|(d, n, _)| (d, n.as_os_str())), file.as_deref(), &set)?;
                self.attr(node, set.handle).map(Reply::Attr)
            }
            Request::ReadLink { node } => {
                let (dir, name, _) = self.at(node)?;
                ops::read_link(&dir, &name).map(Reply::Data)
            }
            Request::MkNod { parent, name, mode, owner } => {
                let (dir, dir_path, n, _) = self.changing(parent, &name)?;
                match mode & 0o170000 {
                    0o100000 | 0 => drop(ops::open(&dir, &n, 0o1 | 0o200, Some(mode))?),
                    0o010000 => ops::mkfifo(&dir, &n, mode & 0o7777)?,
                    // Device nodes and sockets would be made on this machine: no.
                    _ => return Err(errno::EPERM),
                }
                ops::give(&dir, &n, owner);
                self.lookup_in(&dir, &dir_path, parent, &name).map(Reply::Entry)
            }
            Request::MkDir { parent, name, mode, owner } => {
                let (dir, dir_path, n, path) = self.changing(parent, &name)?;
                ops::mkdir(&dir, &n, mode)?;
                ops::give(&dir, &n, owner);
                // Watched before it is listed: a name made here by someone else after the
                // listing is a notice, one made before is in the listing.
                self.0.watch.dir(&path);
                use cap_fs_ext::DirExt;
                let known_empty = self.0.watch.is_watched(&path)
                    && dir.open_dir_nofollow(&n).ok().and_then(|d| ops::list(&d).ok()).is_some_and(|l| l.is_empty());
                let entry = self.lookup_in(&dir, &dir_path, parent, &name)?;
                Ok(Reply::NewDir { entry, known_empty })
            }
            Request::Unlink { parent, name } => {
                let (dir, _, n, path) = self.changing(parent, &name)?;
                dir.remove_file(&n).map_err(io_errno)?;
                self.0.nodes.lock().expect("lock").gone(&path);
                Ok(Reply::Ok)
            }
            Request::RmDir { parent, name } => {
                let (dir, _, n, path) = self.changing(parent, &name)?;
                dir.remove_dir(&n).map_err(io_errno)?;
                self.0.nodes.lock().expect("lock").gone(&path);
                Ok(Reply::Ok)
            }
            Request::Symlink { parent, name, target, owner } => {
                let (dir, dir_path, n, _) = self.changing(parent, &name)?;
                ops::symlink(&dir, &n, &target)?;
                ops::give(&dir, &n, owner);
                self.lookup_in(&dir, &dir_path, parent, &name).map(Reply::Entry)
            }
            Request::Rename { parent, name, new_parent, new_name, flags } => {
                self.dir_changed(parent);
                self.dir_changed(new_parent);
                self.writable(parent)?;
                self.writable(new_parent)?;
                let (from_dir, from_path) = self.dir(parent)?;
                let (to_dir, to_path) = self.dir(new_parent)?;
                let (fname, tname) = (component(&name)?, component(&new_name)?);
                let (from, to) = (from_path.join(&fname), to_path.join(&tname));
                self.mark(&from);
                self.mark(&to);
                ops::rename(&from_dir, &fname, &to_dir, &tname, flags)?;
                let mut nodes = self.0.nodes.lock().expect("lock");
                if flags & ops::RENAME_EXCHANGE != 0 {
                    nodes.exchanged(&from, &to)
                } else {
                    nodes.renamed(&from, &to)
                }
                Ok(Reply::Ok)
            }
            Request::Link { node, new_parent, new_name } => {
                self.dir_changed(new_parent);
                self.writable(new_parent)?;
                let (from_dir, from_name, _) = self.at(node)?;
                let (to_dir, to_path) = self.dir(new_parent)?;
                let n = component(&new_name)?;
                self.mark(&to_path.join(&n));
                from_dir.hard_link(&from_name, &to_dir, &n).map_err(io_errno)?;
                self.lookup_in(&to_dir, &to_path, new_parent, &new_name).map(Reply::Entry)
            }
            Request::Open { node, flags, head } => {
                if flags & 0o3 != 0 || flags & 0o1000 != 0 {
                    self.writable(node)?;
                }
                let (dir, name, path) = self.at(node)?;
                if flags & 0o1000 != 0 {
                    self.mark(&path);
                }
                let f = ops::open(&dir, &name, flags, None)?;
                let keep_cache = path.parent().is_some_and(|d| self.0.watch.is_watched(d));
                // A small file opened to be read is sent whole with the answer (one byte more
                // than asked is read, to tell that it is whole): `git status` and Python's
                // imports open and read a file each, a trip each.
                let head = if head > 0 && flags & 0o3 == 0 {
                    ops::read_at(&f, 0, head.min(proto::MAX_IO as u32) + 1).ok().filter(|d| d.len() <= head as usize)
                } else {
                    None
                };
                Ok(Reply::OpenedFile { handle: self.new_handle(f, path, node), keep_cache, head })
            }
            Request::CreateAs { parent, name, mode, flags, owner, node, handle } => {
                // The guest's numbers only, each once.
                if node < proto::GUEST_NUMBERS
                    || handle < proto::GUEST_NUMBERS
                    || self.0.files.lock().expect("lock").contains_key(&handle)
                {
                    return Err(errno::EINVAL);
                }
                let (dir, dir_path, n, path) = self.changing(parent, &name)?;
                let f = ops::open(&dir, &n, flags | ops::oflags::EXCL, Some(mode))?;
                ops::give(&dir, &n, owner);
                let made = ops::meta(&dir, &n).and_then(|meta| {
                    let made = self.0.nodes.lock().expect("lock").made_as(parent, &path, &meta, node);
                    if made { Ok(meta) } else { Err(errno::EINVAL) }
                });
                let meta = match made {
                    Ok(meta) => meta,
                    Err(e) => {
                        let _ = dir.remove_file(&n);
                        return Err(e);
                    }
                };
                let mut entry = ops::entry(name.to_vec(), node, &meta);
                entry.attr.watched = self.0.watch.is_watched(&dir_path);
                self.0.files.lock().expect("lock").insert(handle, (Arc::new(f), path, node));
                Ok(Reply::Created { entry, handle })
            }
            Request::Create { parent, name, mode, flags, owner } => {
                let (dir, dir_path, n, path) = self.changing(parent, &name)?;
                let f = ops::open(&dir, &n, flags, Some(mode))?;
                ops::give(&dir, &n, owner);
                let entry = self.lookup_in(&dir, &dir_path, parent, &name)?;
                let handle = self.new_handle(f, path, entry.attr.node);
                Ok(Reply::Created { entry, handle })
            }
            Request::Read { handle, offset, size } => {
                self.0.reads.fetch_add(1, Ordering::Relaxed);
                let f = self.file(handle)?;
                ops::read_at(&f, offset, size.min(proto::MAX_IO as u32)).map(Reply::Data)
            }
            Request::Write { handle, offset, data } => {
                self.mark_handle(handle);
                let f = self.file(handle)?;
                let n = ops::write_at(&f, offset, &data)?;
                Ok(Reply::Written { n, attr: self.written_attr(handle) })
            }
            Request::ReadShared { handle, offset, size, at } => {
                self.0.reads.fetch_add(1, Ordering::Relaxed);
                let memory = self.0.memory.get().ok_or(errno::EINVAL)?;
                let f = self.file(handle)?;
                let data = ops::read_at(&f, offset, size.min(proto::MAX_IO as u32))?;
                memory.put(at, &data)?;
                self.0.via_memory.fetch_add(1, Ordering::Relaxed);
                Ok(Reply::ReadShared(data.len() as u32))
            }
            Request::WriteShared { handle, offset, at, len } => {
                let data = self.0.memory.get().ok_or(errno::EINVAL)?.get(at, len as usize)?;
                self.0.via_memory.fetch_add(1, Ordering::Relaxed);
                self.mark_handle(handle);
                let f = self.file(handle)?;
                let n = ops::write_at(&f, offset, &data)?;
                Ok(Reply::Written { n, attr: self.written_attr(handle) })
            }
            Request::Fsync { handle, data_only } => {
                let f = self.file(handle)?;
                if data_only { f.sync_data() } else { f.sync_all() }.map_err(io_errno)?;
                Ok(Reply::Ok)
            }
            Request::Release { handle } => {
                self.0.files.lock().expect("lock").remove(&handle);
                self.0.listings.lock().expect("lock").remove(&handle);
                Ok(Reply::Ok)
            }
            Request::List { node, offset, plus } => {
                let handle = self.open_listing(node)?;
                match self.read_listing(handle, offset, plus) {
                    // Kept while the guest may read on from an offset into it.
                    Ok((entries, more)) if more || !proto::fits_one_read(entries.iter().map(|(_, e)| e.name.len())) => {
                        Ok(Reply::Listed { handle, entries, more })
                    }
                    done => {
                        self.0.listings.lock().expect("lock").remove(&handle);
                        done.map(|(entries, _)| Reply::Listed { handle: 0, entries, more: false })
                    }
                }
            }
            Request::ReadDir { handle, offset, plus } => {
                self.read_listing(handle, offset, plus).map(|(entries, more)| Reply::Dir { entries, more })
            }
            Request::GetXattr { node, name } => {
                let (dir, n, _) = self.at(node)?;
                xattr::get(&dir, &n, &name).map(Reply::Data)
            }
            Request::ListXattr { node } => {
                let (dir, n, _) = self.at(node)?;
                xattr::list(&dir, &n).map(Reply::Data)
            }
            Request::SetXattr { node, name, value, flags } => {
                self.writable(node)?;
                let (dir, n, path) = self.at(node)?;
                self.0.watch.mark(&path);
                xattr::set(&dir, &n, &name, &value, flags).map(|()| Reply::Ok)
            }
            Request::RemoveXattr { node, name } => {
                self.writable(node)?;
                let (dir, n, path) = self.at(node)?;
                self.0.watch.mark(&path);
                xattr::remove(&dir, &n, &name).map(|()| Reply::Ok)
            }
            Request::StatFs { node } => {
                let (i, _, _) = self.locate(node)?;
                ops::statfs(&self.open_dir(i, Path::new(""))?)
            }
        }
    }

    /// Opens directory `node` for listing (watched from now on); read at the first
    /// [`Self::read_listing`].
    fn open_listing(&self, node: Node) -> Result<proto::Handle, Errno> {
        let (_, dir_path) = self.dir(node)?;
        self.0.watch.dir(&dir_path);
        let h = self.0.handles.fetch_add(1, Ordering::Relaxed);
        self.0.listings.lock().expect("lock").insert(h, (node, None));
        Ok(h)
    }

    /// Entries of an open listing from `offset` on (each with its index), and whether there
    /// are more. Offset 0 takes the names anew.
    fn read_listing(
        &self,
        handle: proto::Handle,
        offset: u64,
        plus: bool,
    ) -> Result<(Vec<(u64, proto::DirEntry)>, bool), Errno> {
        let (node, held) = self.0.listings.lock().expect("lock").get(&handle).cloned().ok_or(errno::EBADF)?;
        let (dir, dir_path) = self.dir(node)?;
        let names = match held {
            Some(names) if offset != 0 => names,
            // The first read, or a rewind: the names as they are now.
            _ => {
                let names = Arc::new(ops::list(&dir)?);
                if let Some(l) = self.0.listings.lock().expect("lock").get_mut(&handle) {
                    l.1 = Some(names.clone());
                }
                names
            }
        };
        let start = (offset as usize).min(names.len());
        let end = (start + DIR_BATCH).min(names.len());
        let mut entries = Vec::with_capacity(end - start);
        for (i, name) in names[start..end].iter().enumerate() {
            // A name that went since the listing is left out.
            let e = if plus { self.lookup_in(&dir, &dir_path, node, name) } else { self.peek(&dir, &dir_path, name) };
            if let Ok(e) = e {
                entries.push(((start + i) as u64, e));
            }
        }
        Ok((entries, end < names.len()))
    }

    /// How many lookups the guest has asked for (for tests).
    pub fn lookups(&self) -> u64 {
        self.0.lookups.load(Ordering::Relaxed)
    }

    /// How many times the guest has read a file's data (for tests).
    pub fn reads(&self) -> u64 {
        self.0.reads.load(Ordering::Relaxed)
    }

    /// How many times the guest has asked for attributes (for tests).
    pub fn getattrs(&self) -> u64 {
        self.0.getattrs.load(Ordering::Relaxed)
    }

    /// How many batches of calls the guest has sent (for tests).
    pub fn batches(&self) -> u64 {
        self.0.batches.load(Ordering::Relaxed)
    }

    /// How many reads and writes had their data go through the shared memory.
    pub fn data_via_memory(&self) -> u64 {
        self.0.via_memory.load(Ordering::Relaxed)
    }

    /// How many nodes the guest holds (for tests and status).
    pub fn nodes(&self) -> usize {
        self.0.nodes.lock().expect("lock").len()
    }
}

/// All the host can tell of gone node `node` with no handle on it: its kind.
fn gone_attr(node: Node, kind: Kind) -> proto::Attr {
    let t = proto::Time::default();
    proto::Attr {
        node,
        kind,
        size: 0,
        blocks: 0,
        atime: t,
        mtime: t,
        ctime: t,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        watched: false,
    }
}

/// A path's bytes (as the guest's file names are bytes).
fn path_bytes(p: &Path) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        p.as_os_str().as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    p.to_string_lossy().replace('\\', "/").into_bytes()
}

/// The default shares: the user's home directory and the system's temporary directory.
pub fn default_shares() -> Vec<ShareSpec> {
    let mut v = Vec::new();
    if let Some(home) = std::env::var_os("HOME").map(PathBuf::from).filter(|h| h.is_absolute()) {
        v.push(ShareSpec { path: home, read_only: false });
    }
    let tmp = std::env::temp_dir();
    if !v.iter().any(|s| tmp.starts_with(&s.path)) {
        v.push(ShareSpec { path: tmp, read_only: false });
    }
    v
}

/// Whether `path` lies inside one of `shares` (and so a bind mount of it works in the VM).
pub fn shared(shares: &[ShareSpec], path: &Path) -> bool {
    shares.iter().any(|s| path.starts_with(&s.path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_protocol::shares::{Kind, Owner, SetAttr, SetTime, Time};

    fn server(dir: &Path) -> (FileServer, Node) {
        let s = FileServer::new(&[ShareSpec { path: dir.to_owned(), read_only: false }]).unwrap();
        let root = s.shares()[0].root;
        (s, root)
    }

    fn entry(r: Result<Reply, Errno>) -> proto::DirEntry {
        match r {
            Ok(Reply::Entry(e) | Reply::NewDir { entry: e, .. }) => e,
            other => panic!("{other:?}"),
        }
    }

    /// Names in watched directories say so (the guest keeps them long); after the OS lost
    /// change events, the guest is told to drop every node and every name it holds.
    #[test]
    fn lost_events_make_the_guest_drop_all_it_holds() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), "x").unwrap();
        let (s, root) = server(d.path());
        let sub = entry(s.call(Request::Lookup { parent: root, name: b"sub".to_vec() })).attr;
        let f = entry(s.call(Request::Lookup { parent: sub.node, name: b"f".to_vec() })).attr;
        // Both names are in watched directories: the guest may keep them long.
        assert!(sub.watched && f.watched, "{sub:?} {f:?}");
        match s.call(Request::GetAttr { node: f.node, handle: None }) {
            Ok(Reply::Attr(a)) => assert!(a.watched, "{a:?}"),
            other => panic!("{other:?}"),
        }
        let (sub, f) = (sub.node, f.node);
        let (tx, mut rx) = mpsc::unbounded_channel();
        s.0.notices.lock().unwrap().push(tx);
        s.notify(watch::Change::Rescan);
        let frame = rx.try_recv().expect("a notice");
        let Message::Changed { root: r, stale, path } = proto::decode(&frame[4..]).unwrap() else { panic!() };
        assert_eq!((r, path), (root, Vec::new()));
        let has = |node, name: &[u8]| stale.iter().any(|x| x.node == node && x.name == name && x.gone == 0);
        for (node, name) in [(root, &b""[..]), (sub, b""), (f, b""), (root, b"sub"), (sub, b"f")] {
            assert!(has(node, name), "({node}, {:?}) not in {stale:?}", String::from_utf8_lossy(name));
        }
        assert!(rx.try_recv().is_err(), "one notice for a small share");
    }

    /// A directory the guest makes is watched at once and said to be empty, so the guest can
    /// answer lookups there itself; a change made there on this machine is a notice. A name
    /// looked for and missing says whether its directory is watched.
    #[test]
    #[cfg_attr(
        windows,
        ignore = "under Wine it hangs as it ends, dropping a server that watches a directory it made (not investigated)"
    )]
    fn new_directories_are_known_empty_and_watched() {
        let d = tempfile::tempdir().unwrap();
        let (s, root) = server(d.path());
        let mut changes = s.0.changes.lock().unwrap().take().unwrap();
        let made = s.call(Request::MkDir { parent: root, name: b"new".to_vec(), mode: 0o755, owner: Owner::default() });
        let Ok(Reply::NewDir { entry, known_empty: true }) = made else { panic!("{made:?}") };
        assert_eq!(entry.attr.kind, Kind::Dir);
        assert_eq!(
            s.call(Request::Lookup { parent: entry.attr.node, name: b"x".to_vec() }),
            Ok(Reply::Absent { watched: true })
        );
        assert_eq!(s.lookups(), 1);
        // A survey of a watched directory brings every entry; of a large one, a plain lookup.
        std::fs::write(d.path().join("new/y"), "y").unwrap();
        std::fs::create_dir(d.path().join("new/z")).unwrap();
        match s.call(Request::Survey { parent: entry.attr.node, name: b"x".to_vec() }) {
            Ok(Reply::Listing { entries }) => {
                let mut names: Vec<_> = entries.iter().map(|e| (e.name.clone(), e.attr.kind)).collect();
                names.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(names, [(b"y".to_vec(), Kind::File), (b"z".to_vec(), Kind::Dir)]);
                assert!(entries.iter().all(|e| e.attr.watched && e.attr.node != 0));
            }
            other => panic!("{other:?}"),
        }
        for i in 0..proto::SURVEY_MAX {
            std::fs::write(d.path().join(format!("f{i}")), "").unwrap();
        }
        assert_eq!(
            s.call(Request::Survey { parent: root, name: b"new".to_vec() }).map(|r| matches!(r, Reply::Entry(_))),
            Ok(true)
        );
        while changes.try_recv().is_ok() {}
        std::fs::write(d.path().join("new/x"), "made here").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let want = watch::Change::Entry(std::fs::canonicalize(d.path()).unwrap().join("new/x"));
        let mut seen = Vec::new();
        loop {
            assert!(std::time::Instant::now() < deadline, "no change seen in the new directory: {seen:?}");
            match changes.try_recv() {
                Ok(c) if c == want => break,
                Ok(c) => seen.push(c),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    #[test]
    fn files_are_made_written_read_and_listed() {
        let d = tempfile::tempdir().unwrap();
        let (s, root) = server(d.path());
        let owner = Owner::default();
        let (e, h) =
            match s.call(Request::Create { parent: root, name: b"a.txt".to_vec(), mode: 0o640, flags: 0o2, owner }) {
                Ok(Reply::Created { entry, handle }) => (entry, handle),
                other => panic!("{other:?}"),
            };
        assert_eq!(e.attr.kind, Kind::File);
        // Windows keeps no Unix modes: a writable file reads as 0644 there.
        assert_eq!(e.attr.perm & 0o777, if cfg!(windows) { 0o644 } else { 0o640 });
        let written = |offset, data: &[u8]| match s.call(Request::Write { handle: h, offset, data: data.to_vec() }) {
            Ok(Reply::Written { n, attr }) => (n, attr),
            other => panic!("{other:?}"),
        };
        // The root is watched: the answer tells how the write left the file.
        let (n, attr) = written(0, b"hello");
        assert_eq!((n, attr.map(|a| (a.node, a.size, a.watched))), (5, Some((e.attr.node, 5, true))));
        // Past 4 GiB: offsets are 64-bit all the way.
        let far = 5u64 << 30;
        let (n, attr) = written(far, b"end");
        assert_eq!((n, attr.map(|a| a.size)), (3, Some(far + 3)));
        assert_eq!(s.call(Request::Read { handle: h, offset: far, size: 10 }).unwrap(), Reply::Data(b"end".to_vec()));
        assert_eq!(s.call(Request::Fsync { handle: h, data_only: false }).unwrap(), Reply::Ok);
        assert_eq!(std::fs::metadata(d.path().join("a.txt")).unwrap().len(), far + 3);
        s.call(Request::Release { handle: h }).unwrap();
        entry(s.call(Request::MkDir { parent: root, name: b"sub".to_vec(), mode: 0o755, owner }));
        // Opened and read in one call; a listing read whole keeps no handle.
        match s.call(Request::List { node: root, offset: 0, plus: true }).unwrap() {
            Reply::Listed { handle: 0, entries, more: false } => {
                let names: Vec<_> = entries.iter().map(|(_, e)| e.name.clone()).collect();
                assert_eq!(names, vec![b"a.txt".to_vec(), b"sub".to_vec()]);
            }
            other => panic!("{other:?}"),
        }
        assert!(s.0.listings.lock().unwrap().is_empty());
    }

    /// Removing entries while listing (as `rm -rf` does, one batch at a time) neither skips
    /// nor repeats the rest; a rewind lists what is there now.
    #[test]
    fn a_directory_listed_while_its_entries_go_yields_each_of_the_rest_once() {
        let d = tempfile::tempdir().unwrap();
        let count = DIR_BATCH * 2 + 10;
        for i in 0..count {
            std::fs::write(d.path().join(format!("f{i:04}")), "").unwrap();
        }
        let (s, root) = server(d.path());
        // The first batch comes with the opening; a listing with more keeps its handle.
        let (dir, first) = match s.call(Request::List { node: root, offset: 0, plus: false }).unwrap() {
            Reply::Listed { handle, entries, more: true } if handle != 0 => (handle, entries),
            other => panic!("{other:?}"),
        };
        let read = |offset: u64| match s.call(Request::ReadDir { handle: dir, offset, plus: false }).unwrap() {
            Reply::Dir { entries, more } => (entries, more),
            other => panic!("{other:?}"),
        };
        let (mut seen, mut offset, mut first) = (Vec::new(), 0, Some((first, true)));
        loop {
            let (entries, more) = first.take().unwrap_or_else(|| read(offset));
            for (i, e) in &entries {
                let name = String::from_utf8(e.name.clone()).unwrap();
                // Each entry is removed once listed, and so is one not listed yet.
                std::fs::remove_file(d.path().join(&name)).unwrap();
                seen.push(name);
                offset = i + 1;
            }
            if let Some(later) = (0..count).map(|i| format!("f{i:04}")).rev().find(|n| d.path().join(n).exists()) {
                std::fs::remove_file(d.path().join(later)).unwrap();
            }
            if !more {
                break;
            }
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "an entry listed twice");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0, "entries skipped: left on disk");
        std::fs::write(d.path().join("new"), "").unwrap();
        let (entries, more) = read(0);
        assert_eq!(entries.iter().map(|(_, e)| e.name.as_slice()).collect::<Vec<_>>(), [b"new"]);
        assert!(!more);
        s.call(Request::Release { handle: dir }).unwrap();
        assert_eq!(s.call(Request::ReadDir { handle: dir, offset: 0, plus: false }).unwrap_err(), errno::EBADF);
    }

    #[test]
    #[cfg_attr(windows, ignore = "Windows: a rename over an open file is EACCES under Wine, FILE_SHARE_DELETE or not")]
    fn rename_over_an_open_file_and_unlink_while_open_keep_the_handle_working() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("old"), "old").unwrap();
        std::fs::write(d.path().join("new"), "new").unwrap();
        let (s, root) = server(d.path());
        let old = entry(s.call(Request::Lookup { parent: root, name: b"old".to_vec() }));
        let h = match s.call(Request::Open { node: old.attr.node, flags: 0, head: 0 }).unwrap() {
            Reply::OpenedFile { handle, keep_cache: true, .. } => handle,
            other => panic!("{other:?}"),
        };
        let r = Request::Rename {
            parent: root,
            name: b"new".to_vec(),
            new_parent: root,
            new_name: b"old".to_vec(),
            flags: 0,
        };
        s.call(r).unwrap();
        // The open handle still reads what it opened; the name now gives the renamed file.
        assert_eq!(s.call(Request::Read { handle: h, offset: 0, size: 10 }).unwrap(), Reply::Data(b"old".to_vec()));
        assert_eq!(std::fs::read_to_string(d.path().join("old")).unwrap(), "new");
        let now = entry(s.call(Request::Lookup { parent: root, name: b"old".to_vec() }));
        assert_ne!(now.attr.node, old.attr.node, "the renamed file is another node");
        s.call(Request::Unlink { parent: root, name: b"old".to_vec() }).unwrap();
        assert_eq!(s.call(Request::Read { handle: h, offset: 1, size: 10 }).unwrap(), Reply::Data(b"ld".to_vec()));
        // A name renamed with RENAME_NOREPLACE over an existing one is refused.
        std::fs::write(d.path().join("x"), "x").unwrap();
        std::fs::write(d.path().join("y"), "y").unwrap();
        let r =
            Request::Rename { parent: root, name: b"x".to_vec(), new_parent: root, new_name: b"y".to_vec(), flags: 1 };
        assert_eq!(s.call(r), Err(errno::EEXIST));
        // RENAME_EXCHANGE swaps two names at once, a file with a directory here; the nodes
        // follow their files (a name looked up before the swap leads to what it now names).
        std::fs::create_dir(d.path().join("dir")).unwrap();
        std::fs::write(d.path().join("dir/inner"), "inner").unwrap();
        let x = entry(s.call(Request::Lookup { parent: root, name: b"x".to_vec() }));
        let dir = entry(s.call(Request::Lookup { parent: root, name: b"dir".to_vec() }));
        let inner = entry(s.call(Request::Lookup { parent: dir.attr.node, name: b"inner".to_vec() }));
        let r = Request::Rename {
            parent: root,
            name: b"x".to_vec(),
            new_parent: root,
            new_name: b"dir".to_vec(),
            flags: 2,
        };
        s.call(r).unwrap();
        assert_eq!(std::fs::read_to_string(d.path().join("dir")).unwrap(), "x");
        assert_eq!(std::fs::read_to_string(d.path().join("x/inner")).unwrap(), "inner");
        let now_x = entry(s.call(Request::Lookup { parent: root, name: b"x".to_vec() }));
        assert_eq!((now_x.attr.node, now_x.attr.kind), (dir.attr.node, Kind::Dir));
        let h = match s.call(Request::Open { node: inner.attr.node, flags: 0, head: 0 }).unwrap() {
            Reply::OpenedFile { handle, .. } => handle,
            other => panic!("{other:?}"),
        };
        assert_eq!(s.call(Request::Read { handle: h, offset: 0, size: 10 }).unwrap(), Reply::Data(b"inner".to_vec()));
        // A small file opened to be read comes whole with the answer, if the guest asks and it
        // fits; never for an open that may write.
        let head = |flags, head| match s.call(Request::Open { node: inner.attr.node, flags, head }).unwrap() {
            Reply::OpenedFile { head, .. } => head,
            other => panic!("{other:?}"),
        };
        assert_eq!(head(0, 5), Some(b"inner".to_vec()));
        assert_eq!(head(0, 4), None, "one byte too many");
        assert_eq!(head(0, 0), None, "not asked");
        assert_eq!(head(2, 64), None, "opened to write too");
        let now_dir = entry(s.call(Request::Lookup { parent: root, name: b"dir".to_vec() }));
        assert_eq!(now_dir.attr.node, x.attr.node);
        // Both flags at once, or a flag the host does not know, is EINVAL (as renameat2 says).
        for flags in [3, 4] {
            let r =
                Request::Rename { parent: root, name: b"x".to_vec(), new_parent: root, new_name: b"y".to_vec(), flags };
            assert_eq!(s.call(r), Err(errno::EINVAL), "flags {flags}");
        }
        // An exchange with a name that is not there is ENOENT, and nothing moves.
        let r = Request::Rename {
            parent: root,
            name: b"y".to_vec(),
            new_parent: root,
            new_name: b"none".to_vec(),
            flags: 2,
        };
        assert_eq!(s.call(r), Err(errno::ENOENT));
        assert!(d.path().join("y").exists());
    }

    #[test]
    #[cfg_attr(
        windows,
        ignore = "Windows: a hard link gets a node of its own (no file index in cap-std's metadata there)"
    )]
    fn links_times_modes_and_sizes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "0123456789").unwrap();
        let (s, root) = server(d.path());
        let owner = Owner::default();
        let f = entry(s.call(Request::Lookup { parent: root, name: b"f".to_vec() }));
        let l = entry(s.call(Request::Link { node: f.attr.node, new_parent: root, new_name: b"g".to_vec() }));
        assert_eq!(l.attr.node, f.attr.node, "a hard link is the same node");
        assert_eq!(l.attr.nlink, 2);
        let sl = entry(s.call(Request::Symlink {
            parent: root,
            name: b"s".to_vec(),
            target: b"/etc/passwd".to_vec(),
            owner,
        }));
        assert_eq!(sl.attr.kind, Kind::Symlink);
        assert_eq!(s.call(Request::ReadLink { node: sl.attr.node }).unwrap(), Reply::Data(b"/etc/passwd".to_vec()));
        let set = SetAttr {
            mode: Some(0o600),
            size: Some(4),
            mtime: Some(SetTime::At(Time { secs: 1_000_000_000, nanos: 5 })),
            ..Default::default()
        };
        match s.call(Request::SetAttr { node: f.attr.node, set }).unwrap() {
            Reply::Attr(a) => {
                assert_eq!((a.perm & 0o777, a.size, a.mtime.secs), (0o600, 4, 1_000_000_000));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(std::fs::read_to_string(d.path().join("g")).unwrap(), "0123");
    }

    /// A symbolic link to the directory `target` (Windows tells directory links apart).
    fn symlink_dir(target: &Path, link: &Path) {
        #[cfg(unix)]
        std::os::unix::fs::symlink(target, link).unwrap();
        #[cfg(windows)]
        std::os::windows::fs::symlink_dir(target, link).unwrap();
    }

    #[test]
    fn names_that_climb_or_nest_devices_and_unknown_nodes_are_refused() {
        let outer = tempfile::tempdir().unwrap();
        let share = outer.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(outer.path().join("secret"), "secret").unwrap();
        let (s, root) = server(&share);
        for bad in [&b".."[..], b".", b"a/b", b"", b"../secret"] {
            assert_eq!(
                s.call(Request::Lookup { parent: root, name: bad.to_vec() }).unwrap_err(),
                errno::EINVAL,
                "{bad:?}"
            );
        }
        // Devices are not made on this machine.
        let m = Request::MkNod { parent: root, name: b"dev".to_vec(), mode: 0o020644, owner: Owner::default() };
        assert_eq!(s.call(m).unwrap_err(), errno::EPERM);
        // A node nobody looked up does not exist.
        assert_eq!(s.call(Request::GetAttr { node: 999_999, handle: None }).unwrap_err(), errno::ENOENT);
    }

    #[test]
    #[cfg_attr(windows, ignore = "Windows: a directory symlink in a share is not found by lookup (under Wine 8)")]
    fn nothing_reaches_outside_the_share_through_a_symlink() {
        let outer = tempfile::tempdir().unwrap();
        let share = outer.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(outer.path().join("secret"), "secret").unwrap();
        symlink_dir(outer.path(), &share.join("out"));
        let (s, root) = server(&share);
        // A symlink is a symlink here: looking up through it (as a guest that did not follow it
        // in its own kernel would) is refused.
        let out = entry(s.call(Request::Lookup { parent: root, name: b"out".to_vec() }));
        assert_eq!(out.attr.kind, Kind::Symlink);
        assert_eq!(
            s.call(Request::Lookup { parent: out.attr.node, name: b"secret".to_vec() }).unwrap_err(),
            errno::ENOTDIR
        );
        assert_eq!(s.call(Request::List { node: out.attr.node, offset: 0, plus: false }).unwrap_err(), errno::ENOTDIR);
        assert_eq!(s.call(Request::Open { node: out.attr.node, flags: 0, head: 0 }).unwrap_err(), errno::ELOOP);
        let c = Request::Create {
            parent: out.attr.node,
            name: b"planted".to_vec(),
            mode: 0o644,
            flags: 0o1,
            owner: Owner::default(),
        };
        assert_eq!(s.call(c).unwrap_err(), errno::ENOTDIR);
        assert!(!outer.path().join("planted").exists());
    }

    /// The guest holds nodes deep in a directory that is then replaced by a symlink out of
    /// the share (by this machine, or by a container racing its own renames): the nodes' paths
    /// now lead outside, and nothing done through them may reach there.
    #[test]
    fn a_directory_swapped_for_a_symlink_leads_nowhere() {
        let outer = tempfile::tempdir().unwrap();
        let share = outer.path().join("share");
        std::fs::create_dir_all(share.join("a/etc")).unwrap();
        std::fs::create_dir_all(outer.path().join("etc")).unwrap();
        std::fs::write(outer.path().join("etc/secret"), "secret").unwrap();
        std::fs::write(share.join("a/etc/secret"), "inside").unwrap();
        let (s, root) = server(&share);
        let a = entry(s.call(Request::Lookup { parent: root, name: b"a".to_vec() }));
        let etc = entry(s.call(Request::Lookup { parent: a.attr.node, name: b"etc".to_vec() }));
        let secret = entry(s.call(Request::Lookup { parent: etc.attr.node, name: b"secret".to_vec() }));
        // `a` becomes a link to the share's parent: `a/etc` names outer/etc now.
        std::fs::rename(share.join("a"), share.join("moved")).unwrap();
        symlink_dir(outer.path(), &share.join("a"));
        let escaped = |r: &Result<Reply, Errno>| matches!(r, Ok(Reply::Data(d)) if d == b"secret");
        let open = s.call(Request::Open { node: secret.attr.node, flags: 0, head: 0 });
        if let Ok(Reply::OpenedFile { handle: h, .. }) = open {
            let r = s.call(Request::Read { handle: h, offset: 0, size: 64 });
            assert!(!escaped(&r), "read outside the share through a swapped directory");
        }
        assert!(s.call(Request::Lookup { parent: etc.attr.node, name: b"secret".to_vec() }).is_err());
        assert!(s.call(Request::List { node: etc.attr.node, offset: 0, plus: false }).is_err());
        let c = Request::Create {
            parent: etc.attr.node,
            name: b"planted".to_vec(),
            mode: 0o644,
            flags: 0o1,
            owner: Owner::default(),
        };
        assert!(s.call(c).is_err());
        assert!(!outer.path().join("etc/planted").exists());
        let chmod = SetAttr { mode: Some(0o777), ..Default::default() };
        let _ = s.call(Request::SetAttr { node: secret.attr.node, set: chmod });
        let unlink = s.call(Request::Unlink { parent: etc.attr.node, name: b"secret".to_vec() });
        assert!(unlink.is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let outside = std::fs::metadata(outer.path().join("etc/secret")).unwrap();
            assert_ne!(outside.permissions().mode() & 0o777, 0o777, "chmod reached outside the share");
        }
        assert_eq!(std::fs::read_to_string(outer.path().join("etc/secret")).unwrap(), "secret");
    }

    #[test]
    fn forgotten_nodes_go_and_read_only_shares_refuse_writes() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "x").unwrap();
        let s = FileServer::new(&[ShareSpec { path: d.path().to_owned(), read_only: true }]).unwrap();
        let root = s.shares()[0].root;
        let before = s.nodes();
        let f = entry(s.call(Request::Lookup { parent: root, name: b"f".to_vec() }));
        entry(s.call(Request::Lookup { parent: root, name: b"f".to_vec() }));
        assert_eq!(s.nodes(), before + 1);
        s.call(Request::Forget { nodes: vec![(f.attr.node, 2)] }).unwrap();
        assert_eq!(s.nodes(), before);
        let c = Request::Create { parent: root, name: b"n".to_vec(), mode: 0o644, flags: 0o1, owner: Owner::default() };
        assert_eq!(s.call(c).unwrap_err(), errno::EROFS);
        let f = entry(s.call(Request::Lookup { parent: root, name: b"f".to_vec() }));
        assert_eq!(s.call(Request::Open { node: f.attr.node, flags: 0o2, head: 0 }).unwrap_err(), errno::EROFS);
        assert!(matches!(s.call(Request::Open { node: f.attr.node, flags: 0, head: 0 }), Ok(Reply::OpenedFile { .. })));
        assert!(FileServer::new(&[ShareSpec { path: "relative".into(), read_only: false }]).is_err());
    }
}
