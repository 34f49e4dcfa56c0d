//! Shared folders: directories of the user's machine, mounted in the guest at the same paths
//! (so `docker run -v "$PWD:/app"` needs no rewriting), served by the host daemon's file
//! server and reached through FUSE in the guest.
//!
//! The host opens the streams (it is the mux session's client), then answers calls on them:
//!
//! 1. The host opens a few streams to [`SHARES_PORT`](crate::SHARES_PORT) and sends
//!    [`Message::Hello`] on each, with the shares and their root nodes. The guest answers
//!    [`Message::Ready`], mounts every share it has not mounted yet, and from then on sends
//!    [`Message::Call`]s on whichever stream is least busy; the host answers each with a
//!    [`Message::Answer`] of the same id, in any order (a slow read does not hold up a stat).
//! 2. The host watches the directories the guest has looked into and sends
//!    [`Message::Changed`] when something changes there behind the guest's back, so the
//!    guest drops what it cached and raises the change for the container's watchers.
//!
//! A node is one file-system object of the host (one inode on unix hosts, so hard links are
//! one node); the host keeps the paths it knows for each and drops a node once the guest has
//! forgotten it. Errors are Linux errno numbers, whatever the host's own are.
//!
//! Frames are a 4-byte big-endian length and a [postcard] encoding: data in reads and
//! writes is copied as bytes, not number by number as JSON would.

use serde::{Deserialize, Serialize};

/// The version of this protocol; a change an older peer cannot read bumps it.
pub const VERSION: u32 = 15;
/// The largest frame either side accepts (a write or a read of [`MAX_IO`] and its header).
pub const MAX_FRAME: usize = MAX_IO + 64 * 1024;
/// The largest read or write in one call.
pub const MAX_IO: usize = 1 << 20;

/// Whether a listing of entries named `names` long takes one read of the guest's kernel:
/// its smallest is a page (4 KiB), holding FUSE's `READDIRPLUS` entries of 152 bytes and the
/// name, padded to 8, after "." and "..". A longer one is read on from an offset into the
/// same listing, which the host must keep for it.
pub fn fits_one_read(names: impl IntoIterator<Item = usize>) -> bool {
    const PAGE: usize = 4096;
    let entry = |len: usize| (152 + len).next_multiple_of(8);
    let mut used = entry(1) + entry(2);
    for len in names {
        used += entry(len);
        if used > PAGE {
            return false;
        }
    }
    true
}

/// The size of a slot of the shared memory ([`Memory`]): one read or write of [`MAX_IO`]. The
/// region's first slot holds its token; the others carry data.
pub const SLOT: usize = MAX_IO;
/// The most entries a directory may have for [`Request::Survey`] to list it whole.
pub const SURVEY_MAX: usize = 4096;

/// Where the node and handle numbers the guest chooses start ([`Request::CreateAs`]); the
/// host numbers its own below it.
pub const GUEST_NUMBERS: u64 = 1 << 62;

/// A node: one file-system object the host serves.
pub type Node = u64;
/// An open file or directory on the host.
pub type Handle = u64;

/// A shared directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The host's absolute path, which is also where the guest mounts it.
    pub path: String,
    /// The node of its root.
    pub root: Node,
    pub read_only: bool,
}

/// A point in time (seconds and nanoseconds since 1970).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// A node's attributes, as `stat` gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub node: Node,
    pub kind: Kind,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    /// Permission bits (and set-id, sticky).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    /// The host watches the directory that holds this node's name, so it will tell the guest
    /// of any change to the node or the name: the guest may keep them long. When false (past
    /// the host's watch limit, or no watcher), it keeps them a second.
    pub watched: bool,
}

/// A name in a directory with its node (a lookup, a readdirplus entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub attr: Attr,
}

/// A time to set: now (the host's clock) or the one given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Time),
}

/// Who creates a node in the guest: the host gives it to them where it may (it runs as
/// root), else it stays the host user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// What `setattr` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    /// An open handle to change it through (a file may be unlinked and still open).
    pub handle: Option<Handle>,
}

/// What the guest asks. Names are single path components, as bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    Lookup {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// A lookup of `name` that may bring the whole directory: when the host watches `parent`
    /// and it holds at most [`SURVEY_MAX`] entries, the answer is [`Reply::Listing`], every
    /// entry counted as looked up (the guest forgets what it does not hand to its kernel);
    /// else it is a plain lookup's.
    Survey {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// The guest dropped references to nodes: (node, how many) pairs, as many as its kernel
    /// forgot at once (after a cache drop, thousands in one frame). No answer.
    Forget {
        nodes: Vec<(Node, u64)>,
    },
    GetAttr {
        node: Node,
        handle: Option<Handle>,
    },
    SetAttr {
        node: Node,
        set: SetAttr,
    },
    ReadLink {
        node: Node,
    },
    /// A regular file or a FIFO (device nodes are refused: the host would make them).
    MkNod {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        owner: Owner,
    },
    MkDir {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        owner: Owner,
    },
    Unlink {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    RmDir {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    Symlink {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        owner: Owner,
    },
    Rename {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        new_parent: Node,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
        /// Linux's RENAME_NOREPLACE (1) and RENAME_EXCHANGE (2).
        flags: u32,
    },
    Link {
        node: Node,
        new_parent: Node,
        #[serde(with = "serde_bytes")]
        new_name: Vec<u8>,
    },
    /// Opens a file; `flags` are Linux's `O_*` access and `O_TRUNC`/`O_APPEND`. `head`: for
    /// an open to read only, the guest wants the file's contents with the answer if they are
    /// no more than this many bytes (0: not).
    Open {
        node: Node,
        flags: i32,
        head: u32,
    },
    Create {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        flags: i32,
        owner: Owner,
    },
    /// Makes a new file as [`Request::Create`] does, always exclusively (EEXIST if the name
    /// is there), as node `node` open as `handle`: numbers the guest chose from
    /// [`GUEST_NUMBERS`] on, so that it could answer its kernel before the host made the
    /// file. Answered as [`Reply::Created`].
    CreateAs {
        parent: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        mode: u32,
        flags: i32,
        owner: Owner,
        node: Node,
        handle: Handle,
    },
    Read {
        handle: Handle,
        offset: u64,
        size: u32,
    },
    Write {
        handle: Handle,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A [`Request::Read`] whose data the host puts in the shared memory ([`Memory`]), at
    /// `at` (a slot the guest holds for it); the answer is [`Reply::ReadShared`].
    ReadShared {
        handle: Handle,
        offset: u64,
        size: u32,
        at: u64,
    },
    /// A [`Request::Write`] of the `len` bytes at `at` in the shared memory; the answer is
    /// [`Reply::Written`].
    WriteShared {
        handle: Handle,
        offset: u64,
        at: u64,
        len: u32,
    },
    /// Makes the handle's writes durable on the host's disk.
    Fsync {
        handle: Handle,
        data_only: bool,
    },
    /// Closes an open file or directory listing. No answer (the kernel does not wait for it).
    Release {
        handle: Handle,
    },
    /// Opens directory `node` for listing and lists it from `offset` on, in one call
    /// ([`Reply::Listed`]; the guest opens directories without asking, and most listings fit
    /// in one answer). A listing that goes on, in this answer or in the guest's next read
    /// (one that [`fits_one_read`] does not take), keeps a handle, which holds the names it
    /// had when listed from offset 0, so entries removed while the guest walks it (as `rm
    /// -rf` does) do not shift the offsets of the rest; read on with [`Request::ReadDir`],
    /// released with [`Request::Release`].
    List {
        node: Node,
        offset: u64,
        plus: bool,
    },
    /// Lists an open directory: entries from `offset` on (an index into its names), each
    /// with its attributes; offset 0 takes the names anew (a rewind). With `plus` every
    /// entry counts as a lookup (the guest forgets what it cannot use).
    ReadDir {
        handle: Handle,
        offset: u64,
        plus: bool,
    },
    StatFs {
        node: Node,
    },
    /// The value of extended attribute `name` (always in the `user.` namespace: the guest
    /// answers every other one itself), as [`Reply::Data`]; ENODATA when it has none.
    GetXattr {
        node: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// The node's `user.` attribute names, each ending in a NUL, as [`Reply::Data`].
    ListXattr {
        node: Node,
    },
    /// Sets a `user.` attribute; `flags` are Linux's XATTR_CREATE (1) and XATTR_REPLACE (2).
    SetXattr {
        node: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        flags: u32,
    },
    RemoveXattr {
        node: Node,
        #[serde(with = "serde_bytes")]
        name: Vec<u8>,
    },
    /// Calls done one after another, in this order, answered together ([`Reply::Batch`]).
    /// The guest sends the calls it answered its kernel before the host did them this way,
    /// with the calls that must come after them (a batch in a batch is refused: EINVAL).
    Batch {
        calls: Vec<Request>,
    },
}

/// The host's answer to a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    Ok,
    Entry(DirEntry),
    /// A lookup's name is not there; `watched` as in [`Attr::watched`], for the directory
    /// looked in (the guest may remember the absence as long as it would a name there).
    Absent {
        watched: bool,
    },
    /// A directory made by [`Request::MkDir`]. `known_empty`: the host watches the new
    /// directory and found it empty once the watch was up, so until a notice names it the
    /// guest knows its whole listing (what it makes there itself) and answers lookups of
    /// other names there as absent without asking.
    NewDir {
        entry: DirEntry,
        known_empty: bool,
    },
    /// Every entry of a watched directory, with its attributes (a [`Request::Survey`]); the
    /// name looked up is absent if it is not among them. Changes after it are notices.
    Listing {
        entries: Vec<DirEntry>,
    },
    Attr(Attr),
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// How many bytes a write wrote, and the file's attributes after it when the host
    /// watches its directory (the guest's kernel asks for them again after every write).
    Written {
        n: u32,
        attr: Option<Attr>,
    },
    /// How many bytes a [`Request::ReadShared`] put in the shared memory.
    ReadShared(u32),
    /// An open file; `keep_cache`: the host watches its directory, so the guest may keep the
    /// file's pages across opens (a change on the host is a notice that drops them).
    /// `head`: the file's whole contents as they were when it was opened, when the guest
    /// asked and they fit ([`Request::Open`]): a small file's read is no trip of its own.
    OpenedFile {
        handle: Handle,
        keep_cache: bool,
        #[serde(with = "serde_bytes")]
        head: Option<Vec<u8>>,
    },
    Created {
        entry: DirEntry,
        handle: Handle,
    },
    /// Entries from the offset asked, each with its index in the listing (a name removed
    /// since is left out, and the rest keep theirs), and whether the listing goes on.
    Dir {
        entries: Vec<(u64, DirEntry)>,
        more: bool,
    },
    /// A [`Request::List`]'s answer: as [`Reply::Dir`], and the listing's handle to read on
    /// with if there is `more` (else none is kept: 0).
    Listed {
        handle: Handle,
        entries: Vec<(u64, DirEntry)>,
        more: bool,
    },
    /// How each call of a [`Request::Batch`] went, in its order.
    Batch(Vec<Result<Reply, i32>>),
    StatFs {
        blocks: u64,
        bfree: u64,
        bavail: u64,
        files: u64,
        ffree: u64,
        bsize: u32,
        namelen: u32,
    },
}

/// Memory shared by the host and the guest (QEMU's `ivshmem-plain` device on a file the host
/// maps too), for the data of reads and writes: copied once into it and named in a small
/// call, rather than carried through the transport, whose every byte costs the guest's CPU
/// under emulation. The region starts with `token`, which tells the guest it found the memory
/// this host maps (and not another's, or none); it is cut into slots of [`SLOT`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub token: [u8; 16],
    pub size: u64,
}

/// A frame on a shares stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Host to guest, first on every stream. `memory`: the shared memory the host offers
    /// for reads' and writes' data, if the VM has it.
    Hello { version: u32, shares: Vec<Share>, memory: Option<Memory> },
    /// Guest to host, the answer to the hello.
    Ready { version: u32 },
    /// Guest to host.
    Call { id: u64, request: Request },
    /// Host to guest: the result of call `id`, or a Linux errno. `dirs`: the watched
    /// directories the call changed (made or removed a name in), as it left them. The guest's
    /// kernel asks for a directory's attributes again after each such change (to check
    /// permissions on the next path through it): the guest answers that from these.
    Answer { id: u64, result: Result<Reply, i32>, dirs: Vec<Attr> },
    /// Host to guest: something in share `root` changed on the host behind the guest's back.
    /// The guest drops what it cached of each of `stale`, then raises the change at `path`
    /// (below the share's root; empty for none) for the containers' file watchers.
    Changed {
        root: Node,
        stale: Vec<Stale>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
}

/// What the guest's kernel may hold that a change on the host made wrong: a node's attributes
/// and data (`name` empty), or the entry `name` in directory `node`. A nonzero `gone` is the
/// node that entry named before the host removed it (or put another file there): the guest
/// drops it as deleted, so watchers of that file see it go (IN_DELETE_SELF), as on a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stale {
    pub node: Node,
    #[serde(with = "serde_bytes")]
    pub name: Vec<u8>,
    pub gone: Node,
    /// What the host can still tell of the `gone` node: its attributes through a handle the
    /// guest holds open on it, or else only its kind (the rest zero). None when nothing is
    /// gone or the host does not know it. The guest needs them when its kernel no longer
    /// holds the name for the node: it hands the node to its kernel once more under a name of
    /// its own to delete it there, and a kernel given a node with another kind than it holds,
    /// or another size, would mark its inode bad or drop its pages.
    pub gone_as: Option<Attr>,
}

/// Errors reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLong(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// A message as a frame (length and body), serialised once into a buffer of its exact size: a
/// write's or a read's megabyte is copied once, not grown into and copied again (each copy
/// and each fresh page of a growing buffer costs under emulation).
pub fn encode(msg: &Message) -> Vec<u8> {
    let n = postcard::experimental::serialized_size(msg).expect("share messages serialise");
    let mut out = Vec::with_capacity(n + 4);
    out.extend_from_slice(&(n as u32).to_be_bytes());
    // Through `io::Write`, so bytes go in with one `memcpy` (`to_extend` pushes them one by
    // one: twice the time under emulation).
    postcard::to_io(msg, &mut out).expect("share messages serialise");
    out
}

/// The length a frame's 4-byte header announces, checked against the limit.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let n = u32::from_be_bytes(header) as usize;
    if n > MAX_FRAME { Err(FrameError::TooLong(n)) } else { Ok(n) }
}

/// A frame's body as a message.
pub fn decode(body: &[u8]) -> Result<Message, FrameError> {
    postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads one frame from `r`; `None` at the end of the stream.
#[cfg(feature = "tokio")]
pub async fn read_message<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Message>> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 4];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = frame_len(header).map_err(std::io::Error::other)?;
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).await?;
    decode(&body).map(Some).map_err(std::io::Error::other)
}

/// Linux errno numbers, for answers (the host's own numbers differ on macOS and Windows).
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const E2BIG: i32 = 7;
    pub const EBADF: i32 = 9;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const ETXTBSY: i32 = 26;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EMLINK: i32 = 31;
    pub const ERANGE: i32 = 34;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOSYS: i32 = 38;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
    pub const ENODATA: i32 = 61;
    pub const ENOTSUP: i32 = 95;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_carry_bytes_as_bytes() {
        let data = vec![7u8; 100_000];
        let m = Message::Call { id: 9, request: Request::Write { handle: 3, offset: 1 << 33, data: data.clone() } };
        let f = encode(&m);
        assert!(f.len() < data.len() + 32, "bytes are copied, not encoded one by one");
        let n = frame_len(f[..4].try_into().unwrap()).unwrap();
        assert_eq!(n, f.len() - 4);
        assert_eq!(decode(&f[4..]).unwrap(), m);
        let a = Message::Answer { id: 9, result: Err(errno::ENOENT), dirs: Vec::new() };
        assert_eq!(decode(&encode(&a)[4..]).unwrap(), a);
        assert!(matches!(frame_len(((MAX_FRAME + 1) as u32).to_be_bytes()), Err(FrameError::TooLong(_))));
        assert!(decode(b"\xff\xff").is_err());
    }

    #[test]
    fn a_listing_fits_one_read_of_a_page() {
        // "." and ".." take 320 bytes; a 10-byte name's entry 168.
        assert!(fits_one_read([10; 22]));
        assert!(!fits_one_read([10; 23]));
        // Names of 255 bytes: 408 each.
        assert!(fits_one_read([255; 9]));
        assert!(!fits_one_read([255; 10]));
        assert!(fits_one_read([]));
    }
}
