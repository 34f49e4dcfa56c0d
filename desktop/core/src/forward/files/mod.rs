//! The host's file server for shared folders (the protocol is `berth_protocol::shares`):
//! directories of this machine that the guest mounts at the same paths.
//!
//! The daemon keeps [`STREAMS`] streams open to the guest's shares port and answers the
//! calls that arrive on them, each in a blocking task of its own (file systems block), so
//! many calls are in flight at once and a large read does not hold up a stat. Everything here
//! uses `std::fs` (see [`ops`]), so it builds for macOS and Windows as well.

mod nodes;
pub mod ops;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_protocol::SHARES_PORT;
use berth_protocol::shares::{self as proto, Message, Node, Reply, Request, Share, errno};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::transport::Transport;
use nodes::Nodes;
use ops::{Errno, child, io_errno};

/// How many streams the server keeps open: calls spread over them.
pub const STREAMS: usize = 4;
/// Entries per directory-listing answer.
const DIR_BATCH: usize = 256;

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

struct Shared {
    shares: Vec<Share>,
    read_only: Vec<bool>,
    nodes: Mutex<Nodes>,
    files: Mutex<HashMap<proto::Handle, Arc<File>>>,
    handles: AtomicU64,
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
        for (i, s) in shares.iter().enumerate() {
            if !s.path.is_absolute() {
                return Err(FilesError::Relative(s.path.display().to_string()));
            }
            let err = |source| FilesError::Share { path: s.path.display().to_string(), source };
            let path = std::fs::canonicalize(&s.path).map_err(err)?;
            let meta = std::fs::metadata(&path).map_err(err)?;
            if !meta.is_dir() {
                return Err(err(std::io::Error::from(std::io::ErrorKind::NotADirectory)));
            }
            let root = nodes.add_root(&path, &meta, i);
            // The guest mounts it where the user named it (a symlinked /tmp on macOS is still
            // /tmp to the user), and this side works on the real path.
            out.push(Share { path: s.path.display().to_string(), root, read_only: s.read_only });
            read_only.push(s.read_only);
        }
        Ok(FileServer(Arc::new(Shared {
            shares: out,
            read_only,
            nodes: Mutex::new(nodes),
            files: Mutex::new(HashMap::new()),
            handles: AtomicU64::new(1),
        })))
    }

    pub fn shares(&self) -> &[Share] {
        &self.0.shares
    }

    /// Keeps [`STREAMS`] streams to the guest up for as long as the daemon runs.
    pub async fn serve(self, transport: Arc<dyn Transport>) {
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
        let hello = Message::Hello { version: proto::VERSION, shares: self.0.shares.clone() };
        wr.write_all(&proto::encode(&hello)).await?;
        match read_message(&mut rd).await? {
            Some(Message::Ready { version }) if version == proto::VERSION => {}
            other => {
                return Err(std::io::Error::other(format!("the guest did not answer the shares hello: {other:?}")));
            }
        }
        let (answers, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        let result = loop {
            match read_message(&mut rd).await {
                Ok(Some(Message::Call { id, request })) => {
                    let (me, answers) = (self.clone(), answers.clone());
                    let forget = matches!(request, Request::Forget { .. });
                    let work = tokio::task::spawn_blocking(move || me.call(request));
                    tokio::spawn(async move {
                        let result = work.await.unwrap_or(Err(errno::EIO));
                        if !forget {
                            let _ = answers.send(proto::encode(&Message::Answer { id, result }));
                        }
                    });
                }
                Ok(Some(other)) => tracing::warn!(?other, "shares: unexpected message from the guest"),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(answers);
        let _ = writer.await;
        result
    }

    fn path(&self, node: Node) -> Result<PathBuf, Errno> {
        self.0.nodes.lock().expect("lock").path(node).ok_or(errno::ENOENT)
    }

    /// The path of directory `node`, checked to be a directory itself and not a symlink to
    /// one: a name looked up in it cannot go through a link out of the share.
    fn dir(&self, node: Node) -> Result<PathBuf, Errno> {
        let path = self.path(node)?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Ok(path),
            Ok(_) => Err(errno::ENOTDIR),
            Err(e) => Err(io_errno(e)),
        }
    }

    fn file(&self, handle: proto::Handle) -> Result<Arc<File>, Errno> {
        self.0.files.lock().expect("lock").get(&handle).cloned().ok_or(errno::EBADF)
    }

    fn new_handle(&self, f: File) -> proto::Handle {
        let h = self.0.handles.fetch_add(1, Ordering::Relaxed);
        self.0.files.lock().expect("lock").insert(h, Arc::new(f));
        h
    }

    /// Whether `node` lies in a read-only share (writes are refused with EROFS).
    fn writable(&self, node: Node) -> Result<(), Errno> {
        let path = self.path(node)?;
        let ro = self
            .0
            .shares
            .iter()
            .zip(&self.0.read_only)
            .any(|(s, ro)| *ro && std::fs::canonicalize(&s.path).map(|p| path.starts_with(p)).unwrap_or(false));
        if ro { Err(errno::EROFS) } else { Ok(()) }
    }

    /// The entry for `name` in `parent` as it is now, its node's count raised.
    fn lookup(&self, parent: Node, name: &[u8]) -> Result<proto::DirEntry, Errno> {
        let path = child(&self.dir(parent)?, name)?;
        let meta = std::fs::symlink_metadata(&path).map_err(io_errno)?;
        let node = self.0.nodes.lock().expect("lock").looked_up(parent, &path, &meta);
        Ok(ops::entry(name.to_vec(), node, &meta))
    }

    /// The entry for `name` in `dir` without counting a lookup (a plain listing: its node
    /// number is the node's if the guest holds it, else 0).
    fn peek(&self, dir: &Path, name: &[u8]) -> Result<proto::DirEntry, Errno> {
        let path = child(dir, name)?;
        let meta = std::fs::symlink_metadata(&path).map_err(io_errno)?;
        let node = self.0.nodes.lock().expect("lock").node_of(&path).unwrap_or(0);
        Ok(ops::entry(name.to_vec(), node, &meta))
    }

    fn attr(&self, node: Node, handle: Option<proto::Handle>) -> Result<proto::Attr, Errno> {
        let meta = match handle.map(|h| self.file(h)) {
            Some(Ok(f)) => f.metadata().map_err(io_errno)?,
            _ => std::fs::symlink_metadata(self.path(node)?).map_err(io_errno)?,
        };
        Ok(ops::attr(node, &meta))
    }

    /// Answers one call (on a blocking thread).
    pub fn call(&self, request: Request) -> Result<Reply, Errno> {
        match request {
            Request::Lookup { parent, name } => self.lookup(parent, &name).map(Reply::Entry),
            Request::Forget { node, count } => {
                self.0.nodes.lock().expect("lock").forget(node, count);
                Ok(Reply::Ok)
            }
            Request::GetAttr { node, handle } => self.attr(node, handle).map(Reply::Attr),
            Request::SetAttr { node, set } => {
                self.writable(node)?;
                let path = self.path(node).ok();
                let file = set.handle.and_then(|h| self.file(h).ok());
                ops::set_attr(path.as_deref(), file.as_deref(), &set)?;
                self.attr(node, set.handle).map(Reply::Attr)
            }
            Request::ReadLink { node } => ops::read_link(&self.path(node)?).map(Reply::Data),
            Request::MkNod { parent, name, mode, owner } => {
                self.writable(parent)?;
                let path = child(&self.dir(parent)?, &name)?;
                match mode & 0o170000 {
                    0o100000 | 0 => drop(ops::open(&path, 0o1 | 0o200, Some(mode))?),
                    0o010000 => ops::mkfifo(&path, mode & 0o7777)?,
                    // Device nodes and sockets would be made on this machine: no.
                    _ => return Err(errno::EPERM),
                }
                ops::give(&path, owner);
                self.lookup(parent, &name).map(Reply::Entry)
            }
            Request::MkDir { parent, name, mode, owner } => {
                self.writable(parent)?;
                let path = child(&self.dir(parent)?, &name)?;
                std::fs::create_dir(&path).map_err(io_errno)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777));
                }
                #[cfg(not(unix))]
                let _ = mode;
                ops::give(&path, owner);
                self.lookup(parent, &name).map(Reply::Entry)
            }
            Request::Unlink { parent, name } => {
                self.writable(parent)?;
                let path = child(&self.dir(parent)?, &name)?;
                std::fs::remove_file(&path).map_err(io_errno)?;
                self.0.nodes.lock().expect("lock").gone(&path);
                Ok(Reply::Ok)
            }
            Request::RmDir { parent, name } => {
                self.writable(parent)?;
                let path = child(&self.dir(parent)?, &name)?;
                std::fs::remove_dir(&path).map_err(io_errno)?;
                self.0.nodes.lock().expect("lock").gone(&path);
                Ok(Reply::Ok)
            }
            Request::Symlink { parent, name, target, owner } => {
                self.writable(parent)?;
                let path = child(&self.dir(parent)?, &name)?;
                ops::symlink(&target, &path)?;
                ops::give(&path, owner);
                self.lookup(parent, &name).map(Reply::Entry)
            }
            Request::Rename { parent, name, new_parent, new_name, flags } => {
                self.writable(parent)?;
                self.writable(new_parent)?;
                let from = child(&self.dir(parent)?, &name)?;
                let to = child(&self.dir(new_parent)?, &new_name)?;
                const NOREPLACE: u32 = 1;
                if flags & !NOREPLACE != 0 {
                    // RENAME_EXCHANGE and the like have no portable form.
                    return Err(errno::EINVAL);
                }
                if flags & NOREPLACE != 0 && std::fs::symlink_metadata(&to).is_ok() {
                    return Err(errno::EEXIST);
                }
                std::fs::rename(&from, &to).map_err(io_errno)?;
                self.0.nodes.lock().expect("lock").renamed(&from, &to);
                Ok(Reply::Ok)
            }
            Request::Link { node, new_parent, new_name } => {
                self.writable(new_parent)?;
                let from = self.path(node)?;
                let to = child(&self.dir(new_parent)?, &new_name)?;
                std::fs::hard_link(&from, &to).map_err(io_errno)?;
                self.lookup(new_parent, &new_name).map(Reply::Entry)
            }
            Request::Open { node, flags } => {
                if flags & 0o3 != 0 || flags & 0o1000 != 0 {
                    self.writable(node)?;
                }
                let f = ops::open(&self.path(node)?, flags, None)?;
                Ok(Reply::Opened(self.new_handle(f)))
            }
            Request::Create { parent, name, mode, flags, owner } => {
                self.writable(parent)?;
                let path = child(&self.dir(parent)?, &name)?;
                let f = ops::open(&path, flags, Some(mode))?;
                ops::give(&path, owner);
                let entry = self.lookup(parent, &name)?;
                Ok(Reply::Created { entry, handle: self.new_handle(f) })
            }
            Request::Read { handle, offset, size } => {
                let f = self.file(handle)?;
                ops::read_at(&f, offset, size.min(proto::MAX_IO as u32)).map(Reply::Data)
            }
            Request::Write { handle, offset, data } => {
                let f = self.file(handle)?;
                ops::write_at(&f, offset, &data).map(Reply::Written)
            }
            Request::Fsync { handle, data_only } => {
                let f = self.file(handle)?;
                if data_only { f.sync_data() } else { f.sync_all() }.map_err(io_errno)?;
                Ok(Reply::Ok)
            }
            Request::Release { handle } => {
                self.0.files.lock().expect("lock").remove(&handle);
                Ok(Reply::Ok)
            }
            Request::ReadDir { node, offset, plus } => {
                let dir = self.dir(node)?;
                let names = ops::list(&dir)?;
                let start = (offset as usize).min(names.len());
                let end = (start + DIR_BATCH).min(names.len());
                let mut entries = Vec::with_capacity(end - start);
                for name in &names[start..end] {
                    // A name that went between the listing and now is left out.
                    let e = if plus { self.lookup(node, name) } else { self.peek(&dir, name) };
                    if let Ok(e) = e {
                        entries.push(e);
                    }
                }
                Ok(Reply::Dir { entries, more: end < names.len() })
            }
            Request::StatFs { node } => ops::statfs(&self.path(node)?),
        }
    }

    /// How many nodes the guest holds (for tests and status).
    pub fn nodes(&self) -> usize {
        self.0.nodes.lock().expect("lock").len()
    }
}

/// Reads one frame; `None` at the end of the stream.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Message>> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = proto::frame_len(header).map_err(std::io::Error::other)?;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await?;
    proto::decode(&body).map(Some).map_err(std::io::Error::other)
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
            Ok(Reply::Entry(e)) => e,
            other => panic!("{other:?}"),
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
        assert_eq!(e.attr.perm & 0o777, 0o640);
        assert_eq!(
            s.call(Request::Write { handle: h, offset: 0, data: b"hello".to_vec() }).unwrap(),
            Reply::Written(5)
        );
        // Past 4 GiB: offsets are 64-bit all the way.
        let far = 5u64 << 30;
        assert_eq!(
            s.call(Request::Write { handle: h, offset: far, data: b"end".to_vec() }).unwrap(),
            Reply::Written(3)
        );
        assert_eq!(s.call(Request::Read { handle: h, offset: far, size: 10 }).unwrap(), Reply::Data(b"end".to_vec()));
        assert_eq!(s.call(Request::Fsync { handle: h, data_only: false }).unwrap(), Reply::Ok);
        assert_eq!(std::fs::metadata(d.path().join("a.txt")).unwrap().len(), far + 3);
        s.call(Request::Release { handle: h }).unwrap();
        entry(s.call(Request::MkDir { parent: root, name: b"sub".to_vec(), mode: 0o755, owner }));
        match s.call(Request::ReadDir { node: root, offset: 0, plus: true }).unwrap() {
            Reply::Dir { entries, more } => {
                let names: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
                assert_eq!(names, vec![b"a.txt".to_vec(), b"sub".to_vec()]);
                assert!(!more);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rename_over_an_open_file_and_unlink_while_open_keep_the_handle_working() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("old"), "old").unwrap();
        std::fs::write(d.path().join("new"), "new").unwrap();
        let (s, root) = server(d.path());
        let old = entry(s.call(Request::Lookup { parent: root, name: b"old".to_vec() }));
        let h = match s.call(Request::Open { node: old.attr.node, flags: 0 }).unwrap() {
            Reply::Opened(h) => h,
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
    }

    #[test]
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

    #[test]
    fn nothing_reaches_outside_the_share() {
        let outer = tempfile::tempdir().unwrap();
        let share = outer.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(outer.path().join("secret"), "secret").unwrap();
        std::os::unix::fs::symlink(outer.path(), share.join("out")).unwrap();
        let (s, root) = server(&share);
        for bad in [&b".."[..], b".", b"a/b", b"", b"../secret"] {
            assert_eq!(
                s.call(Request::Lookup { parent: root, name: bad.to_vec() }).unwrap_err(),
                errno::EINVAL,
                "{bad:?}"
            );
        }
        // A symlink is a symlink here: looking up through it (as a guest that did not follow it
        // in its own kernel would) is refused.
        let out = entry(s.call(Request::Lookup { parent: root, name: b"out".to_vec() }));
        assert_eq!(out.attr.kind, Kind::Symlink);
        assert_eq!(
            s.call(Request::Lookup { parent: out.attr.node, name: b"secret".to_vec() }).unwrap_err(),
            errno::ENOTDIR
        );
        assert_eq!(
            s.call(Request::ReadDir { node: out.attr.node, offset: 0, plus: true }).unwrap_err(),
            errno::ENOTDIR
        );
        assert_eq!(s.call(Request::Open { node: out.attr.node, flags: 0 }).unwrap_err(), errno::ELOOP);
        let c = Request::Create {
            parent: out.attr.node,
            name: b"planted".to_vec(),
            mode: 0o644,
            flags: 0o1,
            owner: Owner::default(),
        };
        assert_eq!(s.call(c).unwrap_err(), errno::ENOTDIR);
        assert!(!outer.path().join("planted").exists());
        // Devices are not made on this machine.
        let m = Request::MkNod { parent: root, name: b"dev".to_vec(), mode: 0o020644, owner: Owner::default() };
        assert_eq!(s.call(m).unwrap_err(), errno::EPERM);
        // A node nobody looked up does not exist.
        assert_eq!(s.call(Request::GetAttr { node: 999_999, handle: None }).unwrap_err(), errno::ENOENT);
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
        s.call(Request::Forget { node: f.attr.node, count: 2 }).unwrap();
        assert_eq!(s.nodes(), before);
        let c = Request::Create { parent: root, name: b"n".to_vec(), mode: 0o644, flags: 0o1, owner: Owner::default() };
        assert_eq!(s.call(c).unwrap_err(), errno::EROFS);
        let f = entry(s.call(Request::Lookup { parent: root, name: b"f".to_vec() }));
        assert_eq!(s.call(Request::Open { node: f.attr.node, flags: 0o2 }).unwrap_err(), errno::EROFS);
        assert!(matches!(s.call(Request::Open { node: f.attr.node, flags: 0 }), Ok(Reply::Opened(_))));
        assert!(FileServer::new(&[ShareSpec { path: "relative".into(), read_only: false }]).is_err());
    }
}
