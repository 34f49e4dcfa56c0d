//! One shared folder as a FUSE file system (the `fuser` crate speaks the kernel's FUSE
//! protocol; every operation becomes a call to the host's file server).
//!
//! fuser calls these methods on its own thread; each one hands its reply object to a task on
//! the agent's runtime and returns at once, so many operations are in flight together and a
//! slow one (a large read) does not stall the rest.
//!
//! Inode numbers are the host's node numbers, except that the share's root is FUSE's root
//! (1). Attributes and entries are cached by the kernel for [`WATCHED_TTL`] when the host
//! watches their directory (its change notices drop them when they change: [`Changes`]), and
//! for [`TTL`] otherwise (past the host's watch limit); names found missing the same way, by
//! whether their directory is watched. In a directory the guest made itself, lookups of names
//! it did not make are answered here without asking the host ([`super::known`]). Data goes
//! through the page cache (reads of a file unchanged on the host come from memory; the kernel
//! drops cached pages when it sees the size or mtime change). Removals, changes of mode and
//! times, new files and small writes whose outcome the guest knows are answered here and done
//! on the host just after, in order ([`super::behind`]): a write the host then fails is told
//! by the next write and `fsync` through the same handle, as a disk's write-back errors are;
//! every other write goes to the host at once. What a container changed is on the host
//! before its exit is told ([`super::Shares::settle`]).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_protocol::shares::{self as proto, Attr, Kind, Owner, Reply, Request, SetTime, Share};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig,
    MountOption, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request as FuseRequest, TimeOrNow,
};

use super::Shares;
use super::known::{Change, Look};

/// How long the kernel may trust what it was told about a node or a name (or a name's
/// absence) that the host does not watch.
const TTL: Duration = Duration::from_secs(1);
/// The same for one the host watches: its notices keep the cache true, so this bounds only
/// what a notice could miss (a change made on the host in the instant between a guest's call
/// and the host's record of it).
const WATCHED_TTL: Duration = Duration::from_secs(60);
/// Reads and writes from this size on carry their data through the shared memory when there
/// is a slot free; smaller ones cost the transport little more than the call itself.
const SHARED_MIN: usize = 16 * 1024;
/// Writes go ahead of the host only while its file system has this much room besides
/// ([`ShareFs::room_for`]): a full disk must fail the write that does not fit, not a call
/// the program never hears of.
const ROOM_MARGIN: u64 = 256 << 20;
/// How often the host is asked for its free space while writes go ahead, and how long its
/// answer is trusted.
const ROOM_ASK: Duration = Duration::from_secs(1);
const ROOM_TRUSTED: Duration = Duration::from_secs(5);
/// The most data of writes answered early on its way to the host at once; past it writes
/// wait for the host (so a fast writer cannot fill the guest's memory).
const MAX_DATA_AHEAD: usize = 4 << 20;

/// How long the kernel may keep `a` and the name that led to it.
fn ttl(a: &Attr) -> &'static Duration {
    if a.watched { &WATCHED_TTL } else { &TTL }
}

/// An open directory's listing as the guest has read it.
#[derive(Debug, Clone, Copy, Default)]
struct Listing {
    /// The host's listing handle, once it has one (none until the first read, and none when
    /// that read brought the whole listing).
    host: Option<u64>,
    /// The kernel offset past the listing's last entry, once the host said there are no
    /// more: the kernel reads once more there to learn the listing ended, and that read is
    /// answered here (empty) instead of listing the directory again on the host.
    end: Option<u64>,
}

/// The file system of one share.
struct ShareFs {
    shares: Shares,
    /// The host's node of the share's root (it may change if the host serves it anew).
    root: Arc<AtomicU64>,
    rt: tokio::runtime::Handle,
    /// Open directories, opened here without asking the host.
    listings: std::sync::Mutex<std::collections::HashMap<u64, Listing>>,
    next_listing: AtomicU64,
    /// Nodes the kernel forgot, not yet told to the host.
    forgets: std::sync::Mutex<Vec<(u64, u64)>>,
    /// Nodes written through a write-only open (direct I/O, past the page cache) since their
    /// last open: pages an earlier reader left in the cache may be stale, so the next open
    /// drops them rather than keeping them.
    written_past_cache: std::sync::Mutex<std::collections::HashSet<u64>>,
    /// The first error the host gave a write answered early, by handle: the next write and
    /// `fsync` through the handle fail with it (fsync takes it), and its release drops it.
    write_errors: std::sync::Mutex<std::collections::HashMap<u64, i32>>,
    /// The share's free space as the host last said it, less what went ahead since.
    room: std::sync::Mutex<Room>,
}

#[derive(Default)]
struct Room {
    free: u64,
    at: Option<std::time::Instant>,
    asking: bool,
}

fn time(t: proto::Time) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::new(t.secs.unsigned_abs(), 0)
    }
}

/// This moment, as the protocol writes times.
fn now() -> proto::Time {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    proto::Time { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => SetTime::At(proto::Time { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }),
            Err(e) => SetTime::At(proto::Time { secs: -(e.duration().as_secs() as i64), nanos: 0 }),
        },
    }
}

fn kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// Attributes for what the host gave none for: "." and ".." in a listing (a directory), and
/// the base of a negative entry.
fn dir_attr(node: u64) -> Attr {
    Attr {
        node,
        kind: Kind::Dir,
        size: 0,
        blocks: 0,
        atime: Default::default(),
        mtime: Default::default(),
        ctime: Default::default(),
        perm: 0o755,
        nlink: 2,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        watched: false,
    }
}

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

/// Answers a lookup with "no such name": node 0, which the kernel keeps as a negative entry
/// for `ttl` (only the node number and the time mean anything in it).
fn absent(reply: ReplyEntry, ttl: &Duration) {
    let a = dir_attr(0);
    let none = FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::Directory,
        perm: a.perm,
        nlink: a.nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: a.blksize,
        flags: 0,
    };
    reply.entry(ttl, &none, Generation(0))
}

/// What a failed call that would have made `name` in `dir` tells of the directory's listing:
/// EEXIST that the name is there, EIO nothing certain (the host may have made it before the
/// answer was lost); any other error that nothing was made.
fn made_or_not(shares: &Shares, dir: u64, name: &[u8], e: i32) {
    match e {
        proto::errno::EEXIST => shares.known().added(dir, name),
        proto::errno::EIO => shares.forget_nodes(shares.known().forget(dir)),
        _ => {}
    }
}

fn owner(req: &FuseRequest) -> Owner {
    Owner { uid: req.uid(), gid: req.gid() }
}

impl ShareFs {
    /// The host's node for a kernel inode.
    fn node(&self, ino: INodeNo) -> u64 {
        if ino == INodeNo::ROOT { self.root.load(Ordering::Relaxed) } else { ino.0 }
    }

    fn ino(&self, node: u64) -> INodeNo {
        ino(node, self.root.load(Ordering::Relaxed))
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        FileAttr {
            ino: self.ino(a.node),
            size: a.size,
            blocks: a.blocks,
            atime: time(a.atime),
            mtime: time(a.mtime),
            ctime: time(a.ctime),
            crtime: time(a.ctime),
            kind: kind(a.kind),
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            blksize: a.blksize.max(512),
            flags: 0,
        }
    }

    /// Sends `request` to the host and hands the result to `then` (on the reader of the
    /// stream the answer comes on; on the runtime if it has to wait for the host).
    ///
    /// A call that changes a node's attributes (but for writes, see [`Filesystem::write`])
    /// drops what was kept of them when it is sent and again when it is answered, and one that
    /// removes or moves a name drops every file's ([`Known::names_changed`]).
    ///
    /// [`Known::names_changed`]: super::known::Known::names_changed
    fn call(&self, request: Request, then: impl FnOnce(Result<Reply, i32>) + Send + 'static) {
        self.call_on(None, request, then)
    }

    /// [`Self::call`] for a call by handle about `node` (it must follow calls queued behind
    /// that name the node: [`super::behind`]).
    fn call_on(&self, node: Option<u64>, request: Request, then: impl FnOnce(Result<Reply, i32>) + Send + 'static) {
        let on = node;
        let changes = match &request {
            Request::SetAttr { node, .. }
            | Request::Link { node, .. }
            | Request::SetXattr { node, .. }
            | Request::RemoveXattr { node, .. } => Some(*node),
            Request::Open { node, flags, .. } if flags & libc::O_TRUNC != 0 => Some(*node),
            _ => None,
        };
        let names = matches!(request, Request::Unlink { .. } | Request::RmDir { .. } | Request::Rename { .. });
        if let Some(node) = changes {
            self.touched(node);
        } else if names {
            self.shares.known().names_changed();
        } else {
            return self.shares.call(request, on, Box::new(then), &self.rt);
        }
        let shares = self.shares.clone();
        let then = move |r| {
            match changes {
                Some(node) => shares.known().change_answered(node),
                None => shares.known().names_changed(),
            }
            then(r)
        };
        self.shares.call(request, on, Box::new(then), &self.rt);
    }

    /// A call whose answer is an entry: a lookup, or a node made at `at` (its directory's
    /// node and its name). A lookup of a name that is not there is answered as node 0, which
    /// the kernel keeps as a negative entry (a build or `git status` asks for the same
    /// missing names again and again; the host's change notices drop the entry when the name
    /// appears). What the guest knows of directories' listings ([`Known`]) follows each answer
    /// before the kernel has it.
    ///
    /// [`Known`]: super::known::Known
    fn entry_call(self: &Arc<Self>, request: Request, at: (u64, Vec<u8>), reply: ReplyEntry) {
        let me = self.clone();
        let lookup = matches!(request, Request::Lookup { .. });
        if !lookup {
            self.shares.known().dir_touched(at.0);
        }
        let since = self.shares.known().generation();
        self.call(request, move |r| {
            let (known, (dir, name)) = (me.shares.known(), at);
            match r {
                Ok(Reply::Entry(e)) => {
                    known.entered(dir, &name, e.attr.node);
                    reply.entry(ttl(&e.attr), &me.attr(&e.attr), Generation(0))
                }
                Ok(Reply::NewDir { entry, known_empty }) => {
                    known.entered(dir, &name, entry.attr.node);
                    if known_empty {
                        me.shares.forget_nodes(known.made_empty(&entry.attr, since));
                    }
                    reply.entry(ttl(&entry.attr), &me.attr(&entry.attr), Generation(0))
                }
                Ok(Reply::Absent { watched }) if lookup => absent(reply, if watched { &WATCHED_TTL } else { &TTL }),
                Ok(_) => reply.error(Errno::EIO),
                Err(proto::errno::ENOENT) if lookup => absent(reply, &TTL),
                Err(e) => {
                    made_or_not(&me.shares, dir, &name, e);
                    reply.error(err(e))
                }
            }
        });
    }

    /// A lookup that asks for the whole directory (see [`super::known`]): the entry looked up
    /// goes to the kernel, the rest wait in the guest for the kernel to ask.
    fn survey_call(self: &Arc<Self>, dir: u64, name: Vec<u8>, reply: ReplyEntry) {
        let me = self.clone();
        let since = self.shares.known().generation();
        self.call(Request::Survey { parent: dir, name: name.clone() }, move |r| {
            let known = me.shares.known();
            match r {
                Ok(Reply::Listing { mut entries }) => {
                    let found = entries.iter().position(|e| e.name == name).map(|i| entries.swap_remove(i));
                    me.shares.forget_nodes(known.surveyed(dir, entries, found.as_ref(), since));
                    match found {
                        Some(e) => reply.entry(ttl(&e.attr), &me.attr(&e.attr), Generation(0)),
                        None => absent(reply, &WATCHED_TTL),
                    }
                }
                Ok(Reply::Entry(e)) => {
                    known.declined(dir);
                    reply.entry(ttl(&e.attr), &me.attr(&e.attr), Generation(0))
                }
                Ok(Reply::Absent { watched }) => {
                    known.declined(dir);
                    absent(reply, if watched { &WATCHED_TTL } else { &TTL })
                }
                Ok(_) => {
                    known.not_surveyed(dir);
                    reply.error(Errno::EIO)
                }
                Err(e) => {
                    known.not_surveyed(dir);
                    if e == proto::errno::ENOENT { absent(reply, &TTL) } else { reply.error(err(e)) }
                }
            }
        });
    }

    fn data_call(&self, node: Option<u64>, request: Request, reply: ReplyData) {
        self.call_on(node, request, move |r| match r {
            Ok(Reply::Data(d)) => reply.data(&d),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(err(e)),
        });
    }

    /// A call whose answer is a node's attributes.
    fn attr_call(self: &Arc<Self>, request: Request, reply: ReplyAttr) {
        let me = self.clone();
        self.call(request, move |r| match r {
            Ok(Reply::Attr(a)) => reply.attr(ttl(&a), &me.attr(&a)),
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(err(e)),
        });
    }

    /// An open of `node`, whose answer is an open file's handle; `since`: what the guest had heard of changes when it asked for the
    /// file's contents with it ([`super::heads`]).
    fn open_call(&self, request: Request, node: u64, open_flags: i32, since: u64, reply: ReplyOpen) {
        // Taken before the call, so a write past the cache that ends while it is on its way
        // counts for the next open.
        let written = self.written_past_cache.lock().unwrap().remove(&node);
        let shares = self.shares.clone();
        self.call(request, move |r| match r {
            // The host watches the file's directory: its pages stay across opens until a
            // notice (or a new size or modification time) says the file changed.
            Ok(Reply::OpenedFile { handle, keep_cache, head }) => {
                let keep = keep_cache && !written;
                shares.heads().opened(node, handle, since, keep, head);
                let flags = if keep { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                reply.opened(FileHandle(handle), flags | past_cache(open_flags))
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(err(e)),
        });
    }

    /// The kernel dropped references to nodes: what the guest knew of them as directories
    /// goes, and the host is told in one frame.
    fn forgotten(&self, nodes: Vec<(u64, u64)>) {
        if nodes.is_empty() {
            return;
        }
        // Their inodes, and the pages with them, are gone from the kernel.
        let mut written = self.written_past_cache.lock().unwrap();
        nodes.iter().for_each(|(node, _)| _ = written.remove(node));
        drop(written);
        let mut heads = self.shares.heads();
        nodes.iter().for_each(|(node, _)| heads.forgotten(*node));
        drop(heads);
        let known = self.shares.known();
        let mut counted = Vec::with_capacity(nodes.len());
        for (node, count) in nodes {
            self.shares.forget_nodes(known.forget(node));
            // Lookups the guest answered itself were not counted on the host.
            let count = known.kernel_forgot(node, count);
            if count > 0 {
                counted.push((node, count));
            }
        }
        if !counted.is_empty() {
            self.call(Request::Forget { nodes: counted }, |_| {});
        }
    }

    /// The guest changes `node`: a surveyed entry that waits for it is out of date, and so are
    /// the attributes kept of it. Returns the change, for a write's answer.
    fn touched(&self, node: u64) -> Change {
        let (forget, change) = self.shares.known().touched(node);
        self.shares.forget_nodes(forget);
        change
    }

    /// An unlink or rmdir of `at` (its directory's node and its name): once the host has
    /// removed it, the guest knows the name is not there.
    fn removal_call(self: &Arc<Self>, request: Request, at: (u64, Vec<u8>), reply: ReplyEmpty) {
        let me = self.clone();
        self.shares.known().dir_touched(at.0);
        self.call(request, move |r| match r {
            Ok(_) => {
                me.shares.forget_nodes(me.shares.known().removed(at.0, &at.1).into_iter().collect());
                reply.ok()
            }
            Err(e) => reply.error(err(e)),
        });
    }

    /// Removes file `name` from `dir` at once and has the host do it behind
    /// ([`super::behind`]), when the guest knows the directory's attributes as its own last
    /// change left it: the kernel asks for them again after each removal (to check
    /// permissions for the next), and they are answered here. Returns whether it did.
    ///
    /// The kernel has checked the removal against the host's modes and owners; a host that
    /// refuses it all the same (ENOENT aside: the name is gone either way) leaves the name
    /// there, so the guest drops what it knows of the directory and its kernel's entry for
    /// the name, as for a change made on the host, and the next look finds it again.
    fn unlink_behind(self: &Arc<Self>, dir: u64, name: &[u8]) -> bool {
        let known = self.shares.known();
        if !known.removing(dir, now()) {
            return false;
        }
        known.names_changed();
        self.shares.forget_nodes(known.removed(dir, name).into_iter().collect());
        let (me, name) = (self.clone(), name.to_vec());
        let request = Request::Unlink { parent: dir, name: name.clone() };
        let then: super::Then = Box::new(move |r| {
            me.shares.known().names_changed();
            match r {
                Ok(_) | Err(proto::errno::ENOENT) => {}
                Err(e) => {
                    tracing::warn!(
                        errno = e,
                        name = %String::from_utf8_lossy(&name),
                        "shares: the host refused a removal the guest had answered; its directory is looked at anew"
                    );
                    let stale = vec![proto::Stale { node: dir, name, gone: 0, gone_as: None }];
                    me.shares.changed(me.root.load(Ordering::Relaxed), stale, b"");
                }
            }
        });
        self.shares.call_behind(request, None, then, &self.rt);
        true
    }

    /// Makes file `name` in `dir` at once, as a node and handle of the guest's numbering, and
    /// has the host make it behind ([`super::behind`]), when the guest knows the directory
    /// whole, the name is not in it, and it knows the directory's attributes (the kernel asks
    /// for them again after each create). `tar`, `npm install` and builds make file after
    /// file in directories they made: a create was a trip, then the write another. Now the
    /// write goes behind the create at once (it names the new node) and is the one trip.
    /// Returns the new file's attributes as the guest guesses them, and its handle.
    ///
    /// A refusal (the host's disk full, or its own rules) removes the name in the guest, as a
    /// removal on the host would: the program's writes through the handle fail, and the
    /// warning is logged.
    fn create_behind(
        self: &Arc<Self>,
        dir: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        owner: Owner,
    ) -> Option<(Attr, u64)> {
        let node = self.shares.new_number();
        let now = now();
        let (dir_attr, change) = self.shares.known().creating(dir, name, node, now)?;
        let handle = self.shares.new_number();
        let attr = Attr {
            node,
            kind: Kind::File,
            size: 0,
            blocks: 0,
            atime: now,
            mtime: now,
            ctime: now,
            perm: (mode & 0o7777) as u16,
            nlink: 1,
            uid: owner.uid,
            gid: owner.gid,
            rdev: 0,
            blksize: dir_attr.blksize,
            watched: true,
        };
        self.shares.known().made_ahead(&attr);
        let (me, name) = (self.clone(), name.to_vec());
        let request = Request::CreateAs { parent: dir, name: name.clone(), mode, flags, owner, node, handle };
        let then: super::Then = Box::new(move |r| match r {
            Ok(Reply::Created { entry, .. }) => me.shares.known().set_answered(change, Some(entry.attr)),
            other => {
                me.shares.known().set_answered(change, None);
                // The writes that went ahead through the handle failed with it.
                me.handle_failed(handle, other.as_ref().err().copied().unwrap_or(proto::errno::EIO));
                tracing::warn!(
                    name = %String::from_utf8_lossy(&name),
                    answer = ?other,
                    "shares: the host refused to make a file the guest had made; it is removed in the guest"
                );
                let stale = vec![proto::Stale { node: dir, name, gone: node, gone_as: None }];
                me.shares.changed(me.root.load(Ordering::Relaxed), stale, b"");
            }
        });
        self.shares.call_behind(request, None, then, &self.rt);
        Some((attr, handle))
    }

    /// Sets `node`'s attributes at once and has the host do it behind ([`super::behind`]),
    /// when the guest knows them as its own last change left them and the change cannot be
    /// refused for want of rights the kernel did not check (no size, and no new owner: a host
    /// that does not run as root refuses those). `tar` sets each file's owner, mode and times
    /// after writing it: three trips a file. Returns the attributes to answer with, if it did.
    ///
    /// A refusal all the same drops what the guest and its kernel hold of the node, as a
    /// change made on the host would.
    fn set_attr_behind(self: &Arc<Self>, node: u64, set: &proto::SetAttr) -> Option<Attr> {
        let (attr, change, forget) = self.shares.known().setting(node, set, now())?;
        self.shares.forget_nodes(forget);
        let me = self.clone();
        let then: super::Then = Box::new(move |r| match r {
            Ok(Reply::Attr(a)) => me.shares.known().set_answered(change, Some(a)),
            other => {
                me.shares.known().set_answered(change, None);
                tracing::warn!(
                    node,
                    answer = ?other,
                    "shares: the host refused an attribute change the guest had answered; the node is looked at anew"
                );
                let stale = vec![proto::Stale { node, name: Vec::new(), gone: 0, gone_as: None }];
                me.shares.changed(me.root.load(Ordering::Relaxed), stale, b"");
            }
        });
        self.shares.call_behind(Request::SetAttr { node, set: set.clone() }, None, then, &self.rt);
        Some(attr)
    }

    /// Writes `data` at `offset` through `handle` of file `node` at once and has the host
    /// write it behind ([`super::behind`]), when the guest knows the file's attributes as its
    /// own last change left them (a file it made or wrote: the kernel's next question is
    /// answered from them, the size grown to cover the write), the host's file system has
    /// room with [`ROOM_MARGIN`] to spare, and less than [`MAX_DATA_AHEAD`] is on its way.
    /// `tar`, `npm install` and builds write each new file once and close it: that write was
    /// the one trip left per file. Returns whether it did.
    ///
    /// What the host fails (its disk filled meanwhile, a file it refused to make) the program
    /// learns from its next write or `fsync` through the handle, as a disk's write-back
    /// errors; the guest logs it and drops what it and its kernel hold of the file.
    fn write_behind(self: &Arc<Self>, node: u64, handle: u64, offset: u64, data: &[u8]) -> bool {
        let len = data.len();
        if self.shares.data_pending() + len > MAX_DATA_AHEAD || !self.room_for(len as u64) {
            return false;
        }
        let Some((change, forget)) = self.shares.known().writing(node, offset, len as u64, now()) else {
            return false;
        };
        self.shares.forget_nodes(forget);
        let me = self.clone();
        let then: super::Then = Box::new(move |r| match r {
            Ok(Reply::Written { n, attr }) if n as usize == len => me.shares.known().set_answered(change, attr),
            other => {
                me.shares.known().set_answered(change, None);
                let e = other.err().unwrap_or(proto::errno::EIO);
                if me.handle_failed(handle, e) {
                    tracing::warn!(
                        errno = e,
                        node,
                        "shares: the host failed a write the guest had answered; the next write or fsync of the file tells the program"
                    );
                }
                let stale = vec![proto::Stale { node, name: Vec::new(), gone: 0, gone_as: None }];
                me.shares.changed(me.root.load(Ordering::Relaxed), stale, b"");
            }
        });
        let request = Request::Write { handle, offset, data: data.to_vec() };
        self.shares.call_behind(request, Some(node), then, &self.rt);
        true
    }

    /// The host failed a call answered early through `handle` with `e`: its next write and
    /// `fsync` tell it. The first error is the one told (a refused create's, before its
    /// writes'); returns whether this was it.
    fn handle_failed(&self, handle: u64, e: i32) -> bool {
        let mut errors = self.write_errors.lock().unwrap();
        let first = !errors.contains_key(&handle);
        errors.entry(handle).or_insert(e);
        first
    }

    /// Whether the host's file system has room for `len` bytes more with [`ROOM_MARGIN`] to
    /// spare, as it last said (within [`ROOM_TRUSTED`]); asks it again every [`ROOM_ASK`]
    /// while writes go ahead (the first write after a while waits for the host).
    fn room_for(self: &Arc<Self>, len: u64) -> bool {
        let (ok, ask) = {
            let mut room = self.room.lock().unwrap();
            let age = room.at.map(|t| t.elapsed());
            let ask = !room.asking && age.is_none_or(|a| a >= ROOM_ASK);
            room.asking |= ask;
            let ok = age.is_some_and(|a| a < ROOM_TRUSTED) && room.free >= ROOM_MARGIN + len;
            if ok {
                room.free -= len;
            }
            (ok, ask)
        };
        if ask {
            let me = self.clone();
            self.call(Request::StatFs { node: self.root.load(Ordering::Relaxed) }, move |r| {
                let mut room = me.room.lock().unwrap();
                room.asking = false;
                if let Ok(Reply::StatFs { bavail, bsize, .. }) = r {
                    room.free = bavail.saturating_mul(bsize as u64);
                    room.at = Some(std::time::Instant::now());
                }
            });
        }
        ok
    }

    fn empty_call(&self, request: Request, reply: ReplyEmpty) {
        self.call(request, move |r| match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(err(e)),
        });
    }

    /// Lists directory `dir` (open as `handle`) from kernel offset `offset`, handing each
    /// entry to `add` until it says the kernel's buffer is full.
    fn list(
        self: &Arc<Self>,
        dir: u64,
        handle: FileHandle,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(&Self, u64, &[u8], Option<&Attr>, FileType) -> bool + Send + 'static,
        done: impl FnOnce(Result<(), i32>) + Send + 'static,
    ) {
        // Kernel offsets 0 and 1 are "." and ".."; the host's listing starts after them.
        let me = self.clone();
        let mut next = offset;
        if next == 0 {
            if add(&me, 1, b".", None, FileType::Directory) {
                return done(Ok(()));
            }
            next = 1;
        }
        if next == 1 {
            if add(&me, 2, b"..", None, FileType::Directory) {
                return done(Ok(()));
            }
            next = 2;
        }
        let listing = self.listings.lock().expect("lock").get(&handle.0).copied().unwrap_or_default();
        if listing.end == Some(next) {
            return done(Ok(()));
        }
        let host_offset = next - 2;
        let request = match listing.host {
            Some(h) => Request::ReadDir { handle: h, offset: host_offset, plus },
            // The first read opens the listing on the host too.
            None => Request::List { node: dir, offset: host_offset, plus },
        };
        self.call(request, move |r| {
            let (entries, more) = match r {
                Ok(Reply::Dir { entries, more } | Reply::Listed { handle: 0, entries, more }) => (entries, more),
                Ok(Reply::Listed { handle: h, entries, more }) => {
                    match me.listings.lock().expect("lock").get_mut(&handle.0) {
                        Some(l) => l.host = Some(h),
                        None => me.call(Request::Release { handle: h }, |_| {}),
                    }
                    (entries, more)
                }
                Ok(_) => return done(Err(proto::errno::EIO)),
                Err(e) => return done(Err(e)),
            };
            let fitted = entries.len();
            let end = entries.last().map_or(next, |(index, _)| index + 3);
            if me.listed(entries, plus, add) == fitted
                && !more
                && let Some(l) = me.listings.lock().expect("lock").get_mut(&handle.0)
            {
                l.end = Some(end);
            }
            done(Ok(()))
        });
    }

    /// Hands a listing's entries to the kernel (through `add`) until its buffer is full;
    /// returns how many it took.
    fn listed(
        &self,
        entries: Vec<(u64, proto::DirEntry)>,
        plus: bool,
        mut add: impl FnMut(&Self, u64, &[u8], Option<&Attr>, FileType) -> bool,
    ) -> usize {
        let mut full_at = None;
        for (i, (index, e)) in entries.iter().enumerate() {
            // The kernel asks for the next entry by this offset: the one after it.
            if add(self, index + 3, &e.name, Some(&e.attr), kind(e.attr.kind)) {
                full_at = Some(i);
                break;
            }
        }
        // The host counted every entry it sent as looked up; give back what did not fit.
        if plus && let Some(i) = full_at {
            let nodes = entries[i..].iter().map(|(_, e)| (e.attr.node, 1)).collect();
            self.call(Request::Forget { nodes }, |_| {});
        }
        full_at.unwrap_or(entries.len())
    }
}

/// The `Filesystem` fuser drives: a shared handle on [`ShareFs`].
struct Fs(Arc<ShareFs>);

impl Filesystem for Fs {
    fn init(&mut self, _req: &FuseRequest, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_ASYNC_READ,
            InitFlags::FUSE_BIG_WRITES,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let _ = config.set_max_write(proto::MAX_IO as u32);
        let _ = config.set_max_readahead(proto::MAX_IO as u32);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let parent = self.0.node(parent);
        let name = name.as_bytes().to_vec();
        if let Some(attr) = self.0.shares.ghost(parent, &name) {
            // The host did not count this lookup: the kernel's next forget of it is not its.
            self.0.shares.known().answered_here(attr.node);
            return reply.entry(&GHOST_TTL, &self.0.attr(&attr), Generation(0));
        }
        match self.0.shares.known().look(parent, &name) {
            // A directory the guest knows whole, watched since: the host would say "absent".
            Look::Absent => absent(reply, &WATCHED_TTL),
            Look::Entry(e) => reply.entry(ttl(&e.attr), &self.0.attr(&e.attr), Generation(0)),
            // `mkdir -p` and `tar` look a directory up again right after setting its mode.
            Look::Ahead(e) => {
                reply.entry_with_ttls(&Duration::ZERO, ttl(&e.attr), &self.0.attr(&e.attr), Generation(0))
            }
            Look::Survey => self.0.survey_call(parent, name, reply),
            Look::Ask => self.0.entry_call(Request::Lookup { parent, name: name.clone() }, (parent, name), reply),
        }
    }

    /// The kernel forgets thousands at once after a cache drop (fuser hands its batches over
    /// one node at a time, as its batch type is not public): they are gathered and sent in
    /// one frame by a task that runs once this burst is handed over.
    fn forget(&self, _req: &FuseRequest, ino: INodeNo, nlookup: u64) {
        if ino == INodeNo::ROOT {
            return;
        }
        let first = {
            let mut pending = self.0.forgets.lock().expect("lock");
            pending.push((ino.0, nlookup));
            pending.len() == 1
        };
        if first {
            let me = self.0.clone();
            self.0.rt.spawn(async move {
                tokio::task::yield_now().await;
                let nodes = std::mem::take(&mut *me.forgets.lock().expect("lock"));
                me.forgotten(nodes);
            });
        }
    }

    fn getattr(&self, _req: &FuseRequest, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let node = self.0.node(ino);
        // A directory the guest just changed: its kernel asks again before the next path
        // through it, and the host told how the change left it.
        if fh.is_none()
            && let Some(a) = self.0.shares.known().dir_attr(node)
        {
            return reply.attr(&WATCHED_TTL, &self.0.attr(&a));
        }
        // A file the guest just wrote: the host told how the write left it (unless a removal
        // is on its way: the write may have overtaken it, and its link count is the old one).
        if !self.0.shares.removals_pending()
            && let Some(a) = self.0.shares.known().file_attr(node)
        {
            return reply.attr(&WATCHED_TTL, &self.0.attr(&a));
        }
        // A file whose changes ahead of the host are on their way (a write, a chmod): what
        // they will leave, kept for no time, as the answer to such a change is (the change
        // time is the guest's guess). The kernel asks before every `chown` of a file (to
        // clear set-user-ID bits), and `tar` sets each file's owner after writing it: a trip
        // a file. Not while a removal is on its way (a link count the guest cannot tell).
        if !self.0.shares.removals_pending()
            && let Some(a) = self.0.shares.known().ahead_attr(node)
        {
            return reply.attr(&Duration::ZERO, &self.0.attr(&a));
        }
        self.0.attr_call(Request::GetAttr { node, handle: fh.map(|h| h.0) }, reply);
    }

    fn setattr(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = proto::SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            handle: fh.map(|h| h.0),
        };
        let node = self.0.node(ino);
        if set.size.is_some() {
            self.0.shares.heads().changed(node);
        }
        let only_mtime =
            set.mode.is_none() && set.uid.is_none() && set.gid.is_none() && set.size.is_none() && set.atime.is_none();
        if only_mtime
            && let Some(SetTime::At(t)) = set.mtime
            && t.secs == 0
            && self.0.shares.is_raise(t.nanos)
        {
            // The agent raising a host change (see [`raise`]): the host keeps its times.
            return self.0.attr_call(Request::GetAttr { node, handle: None }, reply);
        }
        if let Some(attr) = self.0.set_attr_behind(node, &set) {
            // Not to be kept: its change time is a guess. The kernel's next question goes to
            // the host after the change, or is answered from the host's answer to it.
            return reply.attr(&Duration::ZERO, &self.0.attr(&attr));
        }
        self.0.attr_call(Request::SetAttr { node, set }, reply);
    }

    fn readlink(&self, _req: &FuseRequest, ino: INodeNo, reply: ReplyData) {
        self.0.data_call(None, Request::ReadLink { node: self.0.node(ino) }, reply);
    }

    fn mknod(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let (parent, name) = (self.0.node(parent), name.as_bytes().to_vec());
        let r = Request::MkNod { parent, name: name.clone(), mode: mode & !(umask & 0o777), owner: owner(req) };
        self.0.entry_call(r, (parent, name), reply);
    }

    fn mkdir(&self, req: &FuseRequest, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let (parent, name) = (self.0.node(parent), name.as_bytes().to_vec());
        let r = Request::MkDir { parent, name: name.clone(), mode: mode & !(umask & 0o777), owner: owner(req) };
        self.0.entry_call(r, (parent, name), reply);
    }

    fn unlink(&self, _req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (parent, name) = (self.0.node(parent), name.as_bytes().to_vec());
        if self.0.unlink_behind(parent, &name) {
            return reply.ok();
        }
        self.0.removal_call(Request::Unlink { parent, name: name.clone() }, (parent, name), reply);
    }

    fn rmdir(&self, _req: &FuseRequest, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (parent, name) = (self.0.node(parent), name.as_bytes().to_vec());
        self.0.removal_call(Request::RmDir { parent, name: name.clone() }, (parent, name), reply);
    }

    fn symlink(&self, req: &FuseRequest, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (parent, name) = (self.0.node(parent), link_name.as_bytes().to_vec());
        let target = target.as_os_str().as_bytes().to_vec();
        let r = Request::Symlink { parent, name: name.clone(), target, owner: owner(req) };
        self.0.entry_call(r, (parent, name), reply);
    }

    fn rename(
        &self,
        _req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (parent, name) = (self.0.node(parent), name.as_bytes().to_vec());
        let (new_parent, new_name) = (self.0.node(newparent), newname.as_bytes().to_vec());
        let flags = flags.bits();
        let r = Request::Rename { parent, name: name.clone(), new_parent, new_name: new_name.clone(), flags };
        let me = self.0.clone();
        self.0.shares.known().dir_touched(parent);
        self.0.shares.known().dir_touched(new_parent);
        self.0.call(r, move |r| {
            let known = me.shares.known();
            match r {
                Ok(_) => {
                    // An exchange leaves both names there, each naming the other's object.
                    if flags & 2 == 0 {
                        me.shares.forget_nodes(known.removed(parent, &name).into_iter().collect());
                        known.added(new_parent, &new_name);
                    } else {
                        known.exchanged((parent, &name), (new_parent, &new_name));
                    }
                    reply.ok()
                }
                Err(e) => {
                    if e == proto::errno::EIO {
                        me.shares.forget_nodes(known.forget(parent));
                        me.shares.forget_nodes(known.forget(new_parent));
                    }
                    reply.error(err(e))
                }
            }
        });
    }

    fn link(&self, _req: &FuseRequest, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (new_parent, new_name) = (self.0.node(newparent), newname.as_bytes().to_vec());
        let node = self.0.node(ino);
        let r = Request::Link { node, new_parent, new_name: new_name.clone() };
        self.0.entry_call(r, (new_parent, new_name), reply);
    }

    fn open(&self, _req: &FuseRequest, ino: INodeNo, flags: fuser::OpenFlags, reply: ReplyOpen) {
        let node = self.0.node(ino);
        let flags = flags.0;
        let mut heads = self.0.shares.heads();
        if flags & libc::O_TRUNC != 0 {
            heads.changed(node);
        }
        // A small file opened to read only comes with its contents ([`super::heads`]).
        let reads_only = flags & libc::O_ACCMODE == libc::O_RDONLY && flags & libc::O_DIRECT == 0;
        let (since, head) = if reads_only { heads.asking(node) } else { (0, 0) };
        drop(heads);
        self.0.open_call(Request::Open { node, flags, head }, node, flags, since, reply);
    }

    fn create(
        &self,
        req: &FuseRequest,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let me = self.0.clone();
        let (parent, name) = (self.0.node(parent), name.as_bytes().to_vec());
        let open_flags = flags;
        let mode = mode & !(umask & 0o777);
        if let Some((attr, handle)) = self.0.create_behind(parent, &name, mode, flags, owner(req)) {
            // Kept a second, as what the host does not watch: the owner and mode are the
            // guest's guess (a host that does not run as root gives the file to its own user,
            // and its umask may take more away). The kernel's next question after that goes to
            // the host behind the create, or is answered from the host's answer to it or to
            // the write that followed. (Kept for no time, the kernel asked again before every
            // file's first write: a trip of its own.)
            let flags = FopenFlags::FOPEN_KEEP_CACHE | past_cache(open_flags);
            return reply.created(&TTL, &self.0.attr(&attr), Generation(0), FileHandle(handle), flags);
        }
        let r = Request::Create { parent, name: name.clone(), mode, flags, owner: owner(req) };
        self.0.shares.known().dir_touched(parent);
        self.0.call(r, move |r| match r {
            Ok(Reply::Created { entry, handle }) => {
                me.shares.known().entered(parent, &name, entry.attr.node);
                let ttl = ttl(&entry.attr);
                let flags = if entry.attr.watched { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
                let flags = flags | past_cache(open_flags);
                reply.created(ttl, &me.attr(&entry.attr), Generation(0), FileHandle(handle), flags)
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => {
                made_or_not(&me.shares, parent, &name, e);
                reply.error(err(e))
            }
        });
    }

    fn read(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let node = self.0.node(ino);
        // A small file whose contents came with its open.
        let head = self.0.shares.heads().read(fh.0, offset, size);
        if let Some(data) = head {
            return reply.data(&data);
        }
        // A read from the start that comes back short has the whole file: the kernel keeps
        // its pages, and its next open asks for no contents.
        let shares = self.0.shares.clone();
        let whole = move |n: usize| {
            if offset == 0 && n < size as usize {
                shares.heads().paged(node);
            }
        };
        if size as usize >= SHARED_MIN
            && let Some(slot) = self.0.shares.slot()
        {
            let at = slot.at();
            return self.0.call_on(
                Some(node),
                Request::ReadShared { handle: fh.0, offset, size, at },
                move |r| match r {
                    Ok(Reply::ReadShared(n)) => {
                        whole(n as usize);
                        reply.data(&slot.copy_out(n as usize))
                    }
                    Ok(_) => reply.error(Errno::EIO),
                    Err(e) => reply.error(err(e)),
                },
            );
        }
        self.0.call_on(Some(node), Request::Read { handle: fh.0, offset, size }, move |r| match r {
            Ok(Reply::Data(d)) => {
                whole(d.len());
                reply.data(&d)
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(err(e)),
        });
    }

    fn write(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        flags: fuser::OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let node = self.0.node(ino);
        // Contents held for reads are the file as it was.
        self.0.shares.heads().changed(node);
        if let Some(&e) = self.0.write_errors.lock().unwrap().get(&fh.0) {
            return reply.error(err(e));
        }
        if !past_cache(flags.0).is_empty() {
            self.0.written_past_cache.lock().unwrap().insert(node);
        }
        if data.len() < SHARED_MIN && self.0.write_behind(node, fh.0, offset, data) {
            return reply.written(data.len() as u32);
        }
        let change = self.0.touched(node);
        let slot = if data.len() >= SHARED_MIN { self.0.shares.slot() } else { None };
        let request = match &slot {
            Some(slot) => {
                slot.fill(data);
                Request::WriteShared { handle: fh.0, offset, at: slot.at(), len: data.len() as u32 }
            }
            None => Request::Write { handle: fh.0, offset, data: data.to_vec() },
        };
        let shares = self.0.shares.clone();
        self.0.call_on(Some(node), request, move |r| {
            // The slot is held until the host has answered: it reads the data meanwhile.
            let _held = slot;
            // The kernel drops the file's attributes after the write and asks again before
            // its next stat or read: the answer's copy saves that trip.
            let attr = match &r {
                Ok(Reply::Written { attr, .. }) => attr.clone(),
                _ => None,
            };
            shares.known().written(change, attr);
            match r {
                Ok(Reply::Written { n, .. }) => reply.written(n),
                Ok(_) => reply.error(Errno::EIO),
                Err(e) => reply.error(err(e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes answered early tell their errors at the next write or fsync, as a disk's
        // write-back does, not at close: waiting here for them would cost the trip they
        // saved. ENOSYS tells the kernel there is nothing to flush, and it sends no more
        // flushes (one trip to the agent fewer per close).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.shares.heads().released(fh.0);
        let me = self.0.clone();
        self.0.call_on(Some(self.0.node(ino)), Request::Release { handle: fh.0 }, move |_| {
            me.write_errors.lock().unwrap().remove(&fh.0);
        });
        reply.ok();
    }

    fn fsync(&self, _req: &FuseRequest, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let node = self.0.node(ino);
        let me = self.0.clone();
        // Writes answered early through any handle of the file go first (they name it); one
        // of this handle's that failed is told here.
        self.0.call_on(Some(node), Request::Fsync { handle: fh.0, data_only: datasync }, move |r| {
            match (me.write_errors.lock().unwrap().remove(&fh.0), r) {
                (Some(e), _) | (None, Err(e)) => reply.error(err(e)),
                (None, Ok(_)) => reply.ok(),
            }
        });
    }

    /// Removals the guest answered before the host did them are done on the host before this
    /// answers (a call that names the directory follows them). Without calls queued there is
    /// nothing to wait for: every other change reached the host when it returned.
    fn fsyncdir(&self, _req: &FuseRequest, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        if !self.0.shares.behind_busy() {
            return reply.ok();
        }
        let node = self.0.node(ino);
        self.0.call(Request::GetAttr { node, handle: None }, move |r| match r {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(err(e)),
        });
    }

    /// Opened here, with no trip: the host opens its listing at the first read, in the same
    /// call. The kernel keeps what it read (`FOPEN_CACHE_DIR`) until the directory changes
    /// (here, or on the host: a notice, or a new modification time).
    fn opendir(&self, _req: &FuseRequest, _ino: INodeNo, _flags: fuser::OpenFlags, reply: ReplyOpen) {
        let h = self.0.next_listing.fetch_add(1, Ordering::Relaxed);
        self.0.listings.lock().expect("lock").insert(h, Listing::default());
        reply.opened(FileHandle(h), FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE);
    }

    fn releasedir(
        &self,
        _req: &FuseRequest,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: fuser::OpenFlags,
        reply: ReplyEmpty,
    ) {
        if let Some(Listing { host: Some(h), .. }) = self.0.listings.lock().expect("lock").remove(&fh.0) {
            self.0.call(Request::Release { handle: h }, |_| {});
        }
        reply.ok();
    }

    fn readdir(&self, _req: &FuseRequest, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectory) {
        let reply = Arc::new(std::sync::Mutex::new(Some(reply)));
        let r2 = reply.clone();
        self.0.list(
            self.0.node(ino),
            fh,
            offset,
            false,
            move |me, next, name, attr, ft| {
                let ino =
                    attr.map_or(INodeNo(u64::MAX), |a| if a.node == 0 { INodeNo(u64::MAX) } else { me.ino(a.node) });
                reply.lock().expect("lock").as_mut().is_some_and(|r| r.add(ino, next, ft, OsStr::from_bytes(name)))
            },
            move |res| {
                if let Some(r) = r2.lock().expect("lock").take() {
                    match res {
                        Ok(()) => r.ok(),
                        Err(e) => r.error(err(e)),
                    }
                }
            },
        );
    }

    fn readdirplus(&self, _req: &FuseRequest, ino: INodeNo, fh: FileHandle, offset: u64, reply: ReplyDirectoryPlus) {
        let reply = Arc::new(std::sync::Mutex::new(Some(reply)));
        let r2 = reply.clone();
        let dir = self.0.node(ino);
        self.0.list(
            dir,
            fh,
            offset,
            true,
            move |me, next, name, attr, _ft| {
                let (fa, ttl) = match attr {
                    Some(a) => (me.attr(a), ttl(a)),
                    // "." and "..": the kernel does not make entries of these.
                    None => (me.attr(&dir_attr(dir)), &TTL),
                };
                reply
                    .lock()
                    .expect("lock")
                    .as_mut()
                    .is_some_and(|r| r.add(fa.ino, next, OsStr::from_bytes(name), ttl, &fa, Generation(0)))
            },
            move |res| {
                if let Some(r) = r2.lock().expect("lock").take() {
                    match res {
                        Ok(()) => r.ok(),
                        Err(e) => r.error(err(e)),
                    }
                }
            },
        );
    }

    fn statfs(&self, _req: &FuseRequest, ino: INodeNo, reply: ReplyStatfs) {
        self.0.call(Request::StatFs { node: self.0.node(ino) }, move |r| match r {
            Ok(Reply::StatFs { blocks, bfree, bavail, files, ffree, bsize, namelen }) => {
                reply.statfs(blocks, bfree, bavail, files, ffree, bsize, namelen, bsize)
            }
            Ok(_) => reply.error(Errno::EIO),
            Err(e) => reply.error(err(e)),
        });
    }

    /// Only `user.` attributes are the host's; every other name is answered here, with no
    /// trip: the kernel asks for `security.capability` before each write, and for ACLs and
    /// labels on `ls -l`, and a container must not give the host's files capabilities.
    fn getxattr(&self, _req: &FuseRequest, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !is_user_xattr(name) {
            return reply.error(err(proto::errno::ENODATA));
        }
        let request = Request::GetXattr { node: self.0.node(ino), name: name.as_bytes().to_vec() };
        self.0.call(request, move |r| xattr_reply(r, size, reply));
    }

    fn listxattr(&self, _req: &FuseRequest, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.0.call(Request::ListXattr { node: self.0.node(ino) }, move |r| xattr_reply(r, size, reply));
    }

    fn setxattr(
        &self,
        _req: &FuseRequest,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if !is_user_xattr(name) {
            return reply.error(err(proto::errno::ENOTSUP));
        }
        let request = Request::SetXattr {
            node: self.0.node(ino),
            name: name.as_bytes().to_vec(),
            value: value.to_vec(),
            flags: flags as u32,
        };
        self.0.empty_call(request, reply);
    }

    fn removexattr(&self, _req: &FuseRequest, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !is_user_xattr(name) {
            return reply.error(err(proto::errno::ENODATA));
        }
        self.0.empty_call(Request::RemoveXattr { node: self.0.node(ino), name: name.as_bytes().to_vec() }, reply);
    }
}

fn is_user_xattr(name: &OsStr) -> bool {
    name.as_bytes().strip_prefix(b"user.").is_some_and(|rest| !rest.is_empty())
}

/// A value or a list of names as the kernel asks for it: its size when `size` is 0, else the
/// bytes if they fit in `size`.
fn xattr_reply(r: Result<Reply, i32>, size: u32, reply: ReplyXattr) {
    match r {
        Ok(Reply::Data(d)) if size == 0 => reply.size(d.len() as u32),
        Ok(Reply::Data(d)) if d.len() > size as usize => reply.error(err(proto::errno::ERANGE)),
        Ok(Reply::Data(d)) => reply.data(&d),
        Ok(_) => reply.error(Errno::EIO),
        Err(e) => reply.error(err(e)),
    }
}

/// What the host's change notices do in the guest: drop the kernel's cached attributes, data
/// and names.
pub struct Changes {
    notifier: fuser::Notifier,
}

/// How long the kernel keeps a gone node handed to it by [`bury`] and the agent's name for it:
/// long enough to be there when the agent deletes it at once, and no longer than a stray
/// entry should last if that fails.
const GHOST_TTL: Duration = Duration::from_secs(1);

/// The kernel's number for host node `node` of the share whose root is `root`.
fn ino(node: u64, root: u64) -> INodeNo {
    if node == root { INodeNo::ROOT } else { INodeNo(node) }
}

impl Changes {
    /// Drops what the kernel holds that `stale` names. Returns whether a gone file is left
    /// for [`bury`] to delete.
    pub fn changed(&self, stale: &proto::Stale, root: u64) -> bool {
        let ino = |node| ino(node, root);
        let (node, name) = (ino(stale.node), OsStr::from_bytes(&stale.name));
        let bury = stale.gone != 0 && stale.gone_as.as_ref().is_some_and(|a| a.kind != Kind::Dir);
        let done = if stale.name.is_empty() {
            self.notifier.inval_inode(node, 0, 0)
        } else if stale.gone != 0 && !bury {
            // Drops the entry and, if the kernel still has it there, deletes the directory
            // as a removal would: its watchers get IN_DELETE_SELF.
            self.notifier.delete(node, ino(stale.gone), name)
        } else {
            self.notifier.inval_entry(node, name)
        };
        // fuser takes ENOENT (the kernel holds nothing of it) for success.
        if let Err(e) = done {
            tracing::debug!(error = %e, node = stale.node, "invalidating a shared folder's cache");
        }
        bury
    }
}

/// Deletes gone file `stale.gone` in the kernel, so its watchers see it go (IN_DELETE_SELF),
/// as on a disk. The kernel deletes a node only through an entry, and its entry under the
/// file's name is not to be relied on: a lookup may have given the name the file that
/// replaced it (an editor's save, seen by the guest before the host's watcher told), or the
/// kernel dropped the entry while a watch kept the node; and whether a delete found it, the
/// kernel tells but fuser does not. So the node is handed to the kernel once more under a
/// name of the agent's own, answered here ([`Shares::haunt`]), and that entry is deleted: the
/// first deletion of a node ends its watches, so there is one event whatever else holds it.
/// `dir` is the path of the directory `stale.node` below the mount `at`. Directories are
/// left out ([`Changes::changed`] says which to bury): the kernel gives a directory one
/// entry, and would move it to the new name.
pub fn bury(shares: &Shares, changes: &Changes, at: &Path, dir: Option<&Path>, stale: &proto::Stale, root: u64) {
    let (Some(attr), Some(dir)) = (stale.gone_as.clone(), dir) else { return };
    let name = format!(".berth-gone-{}", stale.gone).into_bytes();
    shares.haunt(stale.node, &name, Some(attr));
    let found = std::fs::symlink_metadata(at.join(dir).join(OsStr::from_bytes(&name)));
    let done = found
        .and_then(|_| changes.notifier.delete(ino(stale.node, root), ino(stale.gone, root), OsStr::from_bytes(&name)));
    shares.haunt(stale.node, &name, None);
    match done {
        Ok(()) => tracing::debug!(node = stale.gone, "shares: a gone node deleted under the agent's name"),
        Err(e) => tracing::debug!(node = stale.gone, error = %e, "shares: a gone node could not be deleted"),
    }
}

/// Raises a change the host made at `path` (in the share mounted at `at`) for the containers'
/// inotify watches: the kernel raises IN_MODIFY for a file whose modification time is set, so
/// the agent sets it, through the mount, to a value marked as a raise, and [`ShareFs`] answers
/// that call itself (nothing reaches the host, nothing changes). A path that is gone raises
/// the change at its directory.
///
/// A FUSE file system has no way to raise inotify events of its own (its invalidation notices
/// raise none), so this is the one way in: without it a container's file watcher would see a
/// host editor's saves only if it polls.
pub fn raise(shares: &Shares, at: &Path, path: &Path) {
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    let mut target = at.join(path);
    while target != at && std::fs::symlink_metadata(&target).is_err() {
        match target.parent() {
            Some(p) => target = p.to_owned(),
            None => return,
        }
    }
    let mark = shares.raise_mark();
    let mtime = TimeSpec::new(0, mark as _);
    if let Err(e) =
        utimensat(nix::fcntl::AT_FDCWD, &target, &TimeSpec::UTIME_OMIT, &mtime, UtimensatFlags::NoFollowSymlink)
    {
        tracing::debug!(path = %target.display(), error = %e, "raising a host change");
    }
    shares.raised(mark);
}

/// Mounts `share` at `at` (made if missing) and serves it from the host.
pub fn mount(
    shares: Shares,
    share: &Share,
    at: &Path,
) -> std::io::Result<(Arc<AtomicU64>, fuser::BackgroundSession, Option<Changes>)> {
    std::fs::create_dir_all(at)?;
    let root = Arc::new(AtomicU64::new(share.root));
    let fs = ShareFs {
        shares,
        root: root.clone(),
        rt: tokio::runtime::Handle::current(),
        listings: Default::default(),
        next_listing: AtomicU64::new(1),
        forgets: Default::default(),
        written_past_cache: Default::default(),
        write_errors: Default::default(),
        room: Default::default(),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName("berth".into()),
        MountOption::Subtype("berth-share".into()),
        // The kernel checks permissions against the host's modes and owners, as on a disk.
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        // Read-only shares are made so by a read-only bind of this mount (see `mount_all`).
        MountOption::RW,
    ];
    // Containers run as any user: let every one in (the kernel still checks permissions).
    config.acl = fuser::SessionACL::All;
    let session = fuser::spawn_mount(Fs(Arc::new(fs)), at, &config)?;
    read_ahead(at, proto::MAX_IO / 1024);
    let changes = Changes { notifier: session.notifier() };
    Ok((root, session, Some(changes)))
}

/// A read-only bind mount of a share, unmounted when dropped.
pub struct ReadOnlyView(PathBuf);

impl ReadOnlyView {
    /// Shows the share mounted at `from` at `at` too, read-only (and still without devices or
    /// set-id programs).
    pub fn bind(from: &Path, at: &Path) -> std::io::Result<ReadOnlyView> {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(at)?;
        mount(Some(from), at, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        let view = ReadOnlyView(at.to_owned());
        let flags =
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        mount(None::<&str>, at, None::<&str>, flags, None::<&str>)?;
        Ok(view)
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Lets the kernel read ahead up to `kib` KiB in the share mounted at `at`. FUSE takes the
/// smaller of its mount's read-ahead (128 KiB by default) and what the file system asked for,
/// so a sequential read would go to the host in 128 KiB calls; larger ones make fewer trips.
/// The mount's device is found in /proc/self/mountinfo, as a stat of the mount point would be
/// a call to a host that is not answering yet.
fn read_ahead(at: &Path, kib: usize) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return };
    // Mount points are written with spaces, tabs, newlines and backslashes as octal escapes.
    let escaped: String = at
        .to_string_lossy()
        .chars()
        .map(|c| match c {
            ' ' | '\t' | '\n' | '\\' => format!("\\{:03o}", c as u32),
            c => c.to_string(),
        })
        .collect();
    let device = info
        .lines()
        .rev()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let device = f.nth(2)?;
            (f.nth(1)? == escaped).then_some(device)
        })
        .next();
    let Some(device) = device else { return };
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, kib.to_string()) {
        tracing::debug!(knob, error = %e, "raising a shared folder's read-ahead");
    }
}

/// Files opened only to be written are written past the guest's page cache (direct I/O): the
/// kernel hands the writer's own pages to the agent rather than copying them into the cache
/// first (64 MiB written in 0.49-0.51 s against 0.61-0.65 under TCG). Nothing is lost: such a
/// file cannot be mapped or read through that open, the kernel still orders writes and
/// appends on the inode, and the next open of the node drops pages a reader left in the cache
/// (`written_past_cache`). Opens that also read keep the cache.
fn past_cache(open_flags: i32) -> FopenFlags {
    if open_flags & libc::O_ACCMODE == libc::O_WRONLY { FopenFlags::FOPEN_DIRECT_IO } else { FopenFlags::empty() }
}
