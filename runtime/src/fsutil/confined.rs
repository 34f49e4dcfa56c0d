//! File-system work confined to a root directory, safe against someone changing the tree
//! while it runs.
//!
//! Vocabulary:
//! - a **root** is a directory whose contents are not trusted: a layer being unpacked, a
//!   container's root file system (often a running container's, through `/proc/<pid>/root`);
//! - a path **inside** a root is resolved the way a process chrooted there would resolve it:
//!   absolute symlinks start again at the root and `..` stops at it;
//! - a [`Dir`] is an open directory inside a root; every operation on it takes one final name
//!   and acts with an `*at` call that does not follow a symlink in that name.
//!
//! Resolution is the kernel's own (`openat2` with `RESOLVE_IN_ROOT`, through the `pathrs`
//! crate, which falls back to a careful user-space resolver on kernels older than 5.6). A path
//! is never resolved twice: once a directory is open, a component swapped for a symlink
//! afterwards (the CVE-2018-15664 class of `docker cp` races, or CVE-2021-30465's mount
//! races) cannot redirect what is done through it.
//!
//! `pathrs` does the resolution; the per-name operations are written here with `nix`, because
//! they need what `pathrs` does not offer on one call: ownership, times and modes set without
//! following symlinks, device numbers, and hard links to an already-resolved inode.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

fn nix_io(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}

fn pathrs_io(e: pathrs::error::Error) -> io::Error {
    // An errno as the plain OS error (callers add what they were doing); anything else
    // (an attack detected, a bad argument) with pathrs's own account of it.
    match e.kind() {
        pathrs::error::ErrorKind::OsError(Some(errno)) => io::Error::from_raw_os_error(errno),
        _ => io::Error::other(e.to_string()),
    }
}

/// A root directory; paths given to it are resolved inside it.
#[derive(Debug)]
pub struct Confined {
    root: pathrs::Root,
}

impl Confined {
    /// Opens `path` as a root. `path` itself is trusted (symlinks and magic links such as
    /// `/proc/<pid>/root` in it are followed); only what lies below it is not.
    pub fn open(path: &Path) -> io::Result<Confined> {
        // Opened here, not with `pathrs::Root::open`, which refuses a final symlink and so
        // the magic link of `/proc/<pid>/root`.
        let fd = nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(nix_io)?;
        Ok(Confined { root: pathrs::Root::from_fd(fd) })
    }

    /// The directory at `rel` (a path inside the root), created with its missing parents
    /// (mode 0755) when `create` holds.
    pub fn dir(&self, rel: &Path, create: bool) -> io::Result<Dir> {
        let rel = relative(rel);
        let handle = if create {
            self.root.mkdir_all(rel, &fs::Permissions::from_mode(0o755)).map_err(pathrs_io)?
        } else {
            self.root.resolve(rel).map_err(pathrs_io)?
        };
        let file = handle.reopen(pathrs::flags::OpenFlags::O_DIRECTORY).map_err(pathrs_io)?;
        Ok(Dir { fd: file.into() })
    }

    /// An `O_PATH` handle on what `rel` names, the last component not followed.
    pub fn lookup(&self, rel: &Path) -> io::Result<Inode> {
        let handle = self.root.resolve_nofollow(relative(rel)).map_err(pathrs_io)?;
        let fd: OwnedFd = handle.into();
        Inode::from_fd(fd)
    }

    /// An `O_PATH` handle on what `rel` names, symlinks (the last too) followed inside the root.
    pub fn lookup_follow(&self, rel: &Path) -> io::Result<Inode> {
        let handle = self.root.resolve(relative(rel)).map_err(pathrs_io)?;
        let fd: OwnedFd = handle.into();
        Inode::from_fd(fd)
    }
}

/// `rel` as pathrs takes it: relative to the root, `.` for the root itself.
fn relative(rel: &Path) -> &Path {
    let r = rel.strip_prefix("/").unwrap_or(rel);
    if r.as_os_str().is_empty() { Path::new(".") } else { r }
}

/// An `O_PATH` descriptor of one inode and its metadata (taken when it was opened).
#[derive(Debug)]
pub struct Inode {
    fd: OwnedFd,
    pub meta: fs::Metadata,
}

impl Inode {
    fn from_fd(fd: OwnedFd) -> io::Result<Inode> {
        let meta = File::from(fd.try_clone()?).metadata()?;
        Ok(Inode { fd, meta })
    }

    /// A path the kernel resolves to exactly this inode (the process's own fd magic link).
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// The descriptor, for a caller that keeps the inode (a mount point).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Opens the inode itself for reading (a file) or listing (a directory). Refuses a
    /// symlink: there is nothing to open without following it.
    pub fn open(&self) -> io::Result<File> {
        if self.meta.file_type().is_symlink() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "is a symbolic link"));
        }
        let flags = if self.meta.is_dir() { OFlag::O_DIRECTORY } else { OFlag::O_NONBLOCK };
        let fd = nix::fcntl::open(&self.proc_path(), OFlag::O_RDONLY | OFlag::O_CLOEXEC | flags, Mode::empty())
            .map_err(nix_io)?;
        let file = File::from(fd);
        if !self.meta.is_dir() {
            // Back to blocking reads: O_NONBLOCK was only there so a FIFO does not hang the open.
            nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty())).map_err(nix_io)?;
        }
        Ok(file)
    }

    /// Opens a directory inode as a [`Dir`].
    pub fn open_dir(&self) -> io::Result<Dir> {
        if !self.meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        Ok(Dir { fd: self.open()?.into() })
    }

    /// The target of a symlink inode.
    pub fn read_link(&self) -> io::Result<PathBuf> {
        nix::fcntl::readlinkat(&self.fd, "").map(PathBuf::from).map_err(nix_io)
    }
}

/// The kinds of inode [`Dir::mknod`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Char,
    Block,
    Fifo,
}

/// An open directory inside a root: one-name operations that never follow a symlink there.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Refuses names that are not one plain component.
fn check_name(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a file name")));
    }
    Ok(name)
}

impl Dir {
    /// The descriptor, for a caller that keeps the directory (a mount point).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// A path naming this directory through the process's fd magic link; paths below it
    /// are resolved by the kernel as usual (for a directory the caller trusts).
    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Opens `path` as a directory with no confinement (the caller trusts it).
    pub fn open_trusted(path: &Path) -> io::Result<Dir> {
        Ok(Dir { fd: File::open(path)?.into() })
    }

    /// Metadata of `name`, not following a symlink; `None` when nothing has that name.
    pub fn stat(&self, name: &OsStr) -> io::Result<Option<fs::Metadata>> {
        match self.lookup(name) {
            Ok(i) => Ok(Some(i.meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An `O_PATH` handle on `name` (not followed).
    pub fn lookup(&self, name: &OsStr) -> io::Result<Inode> {
        let fd =
            openat(&self.fd, check_name(name)?, OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(nix_io)?;
        Inode::from_fd(fd)
    }

    /// Opens the subdirectory `name` (a symlink there is refused).
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        let fd = openat(
            &self.fd,
            check_name(name)?,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(nix_io)?;
        Ok(Dir { fd })
    }

    /// The names in this directory (not `.` and `..`), sorted.
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        let fd = openat(&self.fd, ".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(nix_io)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(nix_io)?;
        let mut names: Vec<OsString> = dir
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes whatever is at `name` (a directory with everything in it), unless it is a
    /// directory and `keep_dir` holds. Nothing there is not an error.
    pub fn remove(&self, name: &OsStr, keep_dir: bool) -> io::Result<()> {
        let Some(meta) = self.stat(name)? else { return Ok(()) };
        if meta.is_dir() {
            if keep_dir {
                return Ok(());
            }
            let sub = self.open_dir(name)?;
            for child in sub.entries()? {
                sub.remove(&child, false)?;
            }
            drop(sub);
            nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::RemoveDir).map_err(nix_io)
        } else {
            nix::unistd::unlinkat(&self.fd, name, nix::unistd::UnlinkatFlags::NoRemoveDir).map_err(nix_io)
        }
    }

    /// Creates the regular file `name` (which must not exist), open for writing.
    pub fn create_file(&self, name: &OsStr) -> io::Result<File> {
        let fd = openat(
            &self.fd,
            check_name(name)?,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(nix_io)?;
        Ok(File::from(fd))
    }

    /// Creates the directory `name` (mode 0700 until its metadata is set).
    pub fn mkdir(&self, name: &OsStr) -> io::Result<()> {
        nix::sys::stat::mkdirat(&self.fd, check_name(name)?, Mode::from_bits_truncate(0o700)).map_err(nix_io)
    }

    /// Creates a device node or FIFO.
    pub fn mknod(&self, name: &OsStr, kind: NodeKind, major: u32, minor: u32) -> io::Result<()> {
        let sflag = match kind {
            NodeKind::Char => SFlag::S_IFCHR,
            NodeKind::Block => SFlag::S_IFBLK,
            NodeKind::Fifo => SFlag::S_IFIFO,
        };
        let dev = if kind == NodeKind::Fifo { 0 } else { nix::sys::stat::makedev(major.into(), minor.into()) };
        nix::sys::stat::mknodat(&self.fd, check_name(name)?, sflag, Mode::from_bits_truncate(0o600), dev)
            .map_err(nix_io)
    }

    /// Creates the symlink `name` pointing at `target` (any bytes; nothing is resolved).
    pub fn symlink(&self, name: &OsStr, target: &Path) -> io::Result<()> {
        nix::unistd::symlinkat(target, &self.fd, check_name(name)?).map_err(nix_io)
    }

    /// Makes `name` a hard link to the inode `source` (resolved before, inside the root).
    pub fn link(&self, source: &Inode, name: &OsStr) -> io::Result<()> {
        // AT_EMPTY_PATH links the descriptor's own inode (needs CAP_DAC_READ_SEARCH, which
        // the engine has); nothing is resolved again.
        nix::unistd::linkat(&source.fd, "", &self.fd, check_name(name)?, AtFlags::AT_EMPTY_PATH).map_err(nix_io)
    }

    /// Sets owner, permission bits and modification time of `name` (not followed; a symlink
    /// gets owner and time only).
    pub fn set_meta(&self, name: &OsStr, uid: u32, gid: u32, mode: u32, mtime: i64) -> io::Result<()> {
        let inode = self.lookup(name)?;
        let flags = AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW;
        nix::unistd::fchownat(&inode.fd, "", Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)), flags)
            .map_err(nix_io)?;
        let ts = TimeSpec::new(mtime, 0);
        if inode.meta.file_type().is_symlink() {
            return nix::sys::stat::utimensat(&self.fd, name, &ts, &ts, UtimensatFlags::NoFollowSymlink)
                .map_err(nix_io);
        }
        // chmod and utimes have no "this descriptor" form for O_PATH descriptors: go through
        // the descriptor's magic link, which names exactly this inode.
        let path = inode.proc_path();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777))?;
        nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, &path, &ts, &ts, UtimensatFlags::FollowSymlink).map_err(nix_io)
    }

    /// Sets an extended attribute on `name` (not on symlinks: Linux allows none there that
    /// an image may carry).
    pub fn set_xattr(&self, name: &OsStr, key: &str, value: &[u8]) -> io::Result<()> {
        let inode = self.lookup(name)?;
        if inode.meta.file_type().is_symlink() {
            return Ok(());
        }
        set_xattr_path(&inode.proc_path(), key, value, true)
    }

    /// Sets an extended attribute on this directory itself.
    pub fn set_own_xattr(&self, key: &str, value: &[u8]) -> io::Result<()> {
        let k = std::ffi::CString::new(key)?;
        // SAFETY: a valid descriptor, a NUL-terminated name and a live slice with its length.
        let rc = unsafe { libc::fsetxattr(self.fd.as_raw_fd(), k.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
}

/// Sets an extended attribute on `path`, following a final symlink or not.
pub fn set_xattr_path(path: &Path, key: &str, value: &[u8], follow: bool) -> io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let k = std::ffi::CString::new(key)?;
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    let rc = unsafe {
        if follow {
            libc::setxattr(p.as_ptr(), k.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        } else {
            libc::lsetxattr(p.as_ptr(), k.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        }
    };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir_all(root.join(outer.path().strip_prefix("/").unwrap())).unwrap();
        std::os::unix::fs::symlink(outer.path(), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("rel")).unwrap();
        let c = Confined::open(&root).unwrap();
        // An absolute symlink to the outer directory names <root><outer> inside the root.
        assert!(c.dir(Path::new("rel/missing/x"), true).is_ok());
        let d = c.dir(Path::new("abs/made"), true).unwrap();
        d.create_file(OsStr::new("f")).unwrap();
        assert!(root.join(outer.path().strip_prefix("/").unwrap()).join("made/f").exists());
        assert!(!outer.path().join("made").exists());
        // The root itself, by any name.
        for name in ["", "/", ".", "/.."] {
            assert!(c.dir(Path::new(name), false).unwrap().entries().unwrap().contains(&"rel".into()), "{name:?}");
        }
        // `..` stops at the root.
        let d = c.dir(Path::new("rel"), false).unwrap();
        d.create_file(OsStr::new("g")).unwrap();
        assert!(root.join("g").exists());
    }

    #[test]
    fn names_are_single_components_and_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(target.path(), dir.path().join("link")).unwrap();
        let d = Dir::open_trusted(dir.path()).unwrap();
        assert!(d.create_file(OsStr::new("a/b")).is_err());
        assert!(d.create_file(OsStr::new("..")).is_err());
        assert!(d.open_dir(OsStr::new("link")).is_err(), "a symlink is not opened as a directory");
        assert!(d.create_file(OsStr::new("link")).is_err(), "O_EXCL|O_NOFOLLOW refuses the symlink");
        d.set_meta(OsStr::new("link"), 0, 0, 0o600, 1000).unwrap();
        let t = fs::metadata(target.path()).unwrap().permissions().mode() & 0o777;
        assert_ne!(t, 0o600, "chmod went through the symlink");
        d.remove(OsStr::new("link"), false).unwrap();
        assert!(target.path().exists());
    }
}
