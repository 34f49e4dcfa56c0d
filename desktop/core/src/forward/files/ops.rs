//! The file operations the guest calls, on this machine's file system, confined to the
//! shares. Built on `cap-std`, so the server builds for macOS and Windows hosts too.
//!
//! Confinement: every operation works in a directory handle ([`Dir`]) that `cap-std` opened
//! beneath the share's root, on one plain name in it. `cap-std` resolves a path without ever
//! leaving the directory it starts from, whatever its components are or become while it
//! resolves (`openat2` with `RESOLVE_BENEATH` on Linux, a walk of no-follow opens elsewhere),
//! so a directory of a node's path that is replaced by a symlink (on this machine, or by a
//! container racing its own renames) cannot take an operation out of the share: the node's
//! path is only where to look. Names are checked to be single components. A symlink at the
//! end of a path is never followed here: a lookup reports it as one, and the guest's kernel
//! follows it in the guest (where `/etc` is the container's); files open without following,
//! ownership and times are set on the link itself.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use berth_protocol::shares::{Attr, DirEntry, Kind, Owner, SetAttr, SetTime, Time, errno};
use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt, SystemTimeSpec};
pub use cap_std::fs::{Dir, Metadata};

/// An error as the guest gets it: a Linux errno.
pub type Errno = i32;

/// `io::Error` as a Linux errno, whatever the host's own numbers are.
pub fn errno_of(e: &io::Error) -> Errno {
    use io::ErrorKind as K;
    #[cfg(target_os = "linux")]
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    match e.kind() {
        K::NotFound => errno::ENOENT,
        K::PermissionDenied => errno::EACCES,
        K::AlreadyExists => errno::EEXIST,
        K::NotADirectory => errno::ENOTDIR,
        K::IsADirectory => errno::EISDIR,
        K::DirectoryNotEmpty => errno::ENOTEMPTY,
        K::ReadOnlyFilesystem => errno::EROFS,
        K::StorageFull | K::QuotaExceeded => errno::ENOSPC,
        K::CrossesDevices => errno::EXDEV,
        K::TooManyLinks => errno::EMLINK,
        K::InvalidFilename => errno::ENAMETOOLONG,
        K::ExecutableFileBusy => errno::ETXTBSY,
        K::FileTooLarge => errno::EFBIG,
        K::ResourceBusy => errno::EBUSY,
        K::InvalidInput => errno::EINVAL,
        K::Unsupported => errno::ENOTSUP,
        _ => errno::EIO,
    }
}

pub fn io_errno(e: io::Error) -> Errno {
    errno_of(&e)
}

/// `name` as a single path component, or EINVAL/ENAMETOOLONG.
pub fn component(name: &[u8]) -> Result<OsString, Errno> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(errno::EINVAL);
    }
    if name.len() > 255 {
        return Err(errno::ENAMETOOLONG);
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(OsStr::from_bytes(name).to_owned())
    }
    #[cfg(not(unix))]
    {
        let s = std::str::from_utf8(name).map_err(|_| errno::EINVAL)?;
        if s.contains('\\') || s.contains(':') {
            return Err(errno::EINVAL);
        }
        Ok(OsString::from(s))
    }
}

/// `name` (a single component) under `dir`.
pub fn child(dir: &Path, name: &[u8]) -> Result<PathBuf, Errno> {
    Ok(dir.join(component(name)?))
}

/// What `name` in `dir` is, without following a symlink.
pub fn meta(dir: &Dir, name: &OsStr) -> Result<Metadata, Errno> {
    if name == "." { dir.dir_metadata() } else { dir.symlink_metadata(name) }.map_err(io_errno)
}

#[cfg(not(unix))]
fn time_of(t: io::Result<cap_std::time::SystemTime>) -> Time {
    match t.ok().and_then(|t| t.into_std().duration_since(std::time::UNIX_EPOCH).ok()) {
        Some(d) => Time { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
        None => Time::default(),
    }
}

/// What `meta` describes.
pub fn kind(meta: &Metadata) -> Kind {
    let ft = meta.file_type();
    #[cfg(unix)]
    {
        use cap_std::fs::FileTypeExt;
        if ft.is_fifo() {
            return Kind::Fifo;
        } else if ft.is_socket() {
            return Kind::Socket;
        } else if ft.is_char_device() {
            return Kind::CharDevice;
        } else if ft.is_block_device() {
            return Kind::BlockDevice;
        }
    }
    if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else {
        Kind::File
    }
}

/// The attributes of `meta`, for node `node`.
pub fn attr(node: u64, meta: &Metadata) -> Attr {
    let kind = kind(meta);
    #[cfg(unix)]
    {
        use cap_std::fs::MetadataExt;
        let t = |secs: i64, nanos: i64| Time { secs, nanos: nanos as u32 };
        Attr {
            node,
            kind,
            size: meta.size(),
            blocks: meta.blocks(),
            atime: t(meta.atime(), meta.atime_nsec()),
            mtime: t(meta.mtime(), meta.mtime_nsec()),
            ctime: t(meta.ctime(), meta.ctime_nsec()),
            perm: (meta.mode() & 0o7777) as u16,
            nlink: meta.nlink() as u32,
            uid: meta.uid(),
            gid: meta.gid(),
            rdev: meta.rdev() as u32,
            blksize: meta.blksize() as u32,
            watched: false,
        }
    }
    #[cfg(not(unix))]
    {
        let perm = match (kind, meta.permissions().readonly()) {
            (Kind::Dir, _) => 0o755,
            (_, true) => 0o444,
            _ => 0o644,
        };
        Attr {
            node,
            kind,
            size: meta.len(),
            blocks: meta.len().div_ceil(512),
            atime: time_of(meta.accessed()),
            mtime: time_of(meta.modified()),
            ctime: time_of(meta.modified()),
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            watched: false,
        }
    }
}

pub fn entry(name: Vec<u8>, node: u64, meta: &Metadata) -> DirEntry {
    DirEntry { name, attr: attr(node, meta) }
}

/// Linux open flags the guest sends.
pub mod oflags {
    pub const ACCMODE: i32 = 0o3;
    pub const WRONLY: i32 = 0o1;
    pub const RDWR: i32 = 0o2;
    pub const CREAT: i32 = 0o100;
    pub const EXCL: i32 = 0o200;
    pub const TRUNC: i32 = 0o1000;
}

/// Opens `name` in `dir` as the guest asked, never through a symlink at its end.
pub fn open(dir: &Dir, name: &OsStr, flags: i32, create: Option<u32>) -> Result<File, Errno> {
    let mut o = cap_std::fs::OpenOptions::new();
    match flags & oflags::ACCMODE {
        oflags::WRONLY => o.write(true),
        oflags::RDWR => o.read(true).write(true),
        _ => o.read(true),
    };
    if flags & oflags::TRUNC != 0 {
        o.truncate(true);
    }
    if let Some(mode) = create {
        if flags & oflags::EXCL != 0 {
            o.create_new(true);
        } else {
            o.create(true);
        }
        // Creating needs write access in std's terms, whatever the guest's flags.
        if flags & oflags::ACCMODE == 0 {
            o.write(true);
        }
        #[cfg(unix)]
        {
            use cap_std::fs::OpenOptionsExt;
            o.mode(mode & 0o7777);
        }
        #[cfg(not(unix))]
        let _ = mode;
    }
    let _ = oflags::CREAT;
    // Windows: others may read, write, rename and delete the file while it is open, as on
    // Unix (a guest renames over and unlinks open files all the time).
    #[cfg(windows)]
    {
        use cap_std::fs::OpenOptionsExt;
        const FILE_SHARE_READ_WRITE_DELETE: u32 = 0x1 | 0x2 | 0x4;
        o.share_mode(FILE_SHARE_READ_WRITE_DELETE);
    }
    o.follow(FollowSymlinks::No);
    dir.open_with(name, &o).map(cap_std::fs::File::into_std).map_err(io_errno)
}

/// Linux's `renameat2` flags, as the guest sends them.
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// Renames `from` in `from_dir` to `to` in `to_dir` with Linux's `RENAME_NOREPLACE` and
/// `RENAME_EXCHANGE`: `renameat2` on Linux, `renameatx_np` (RENAME_EXCL, RENAME_SWAP) on
/// macOS, both atomic. Elsewhere (Windows) an exchange is EINVAL, as on a Linux file system
/// without it, and no-replace is a check before the rename.
pub fn rename(from_dir: &Dir, from: &OsStr, to_dir: &Dir, to: &OsStr, flags: u32) -> Result<(), Errno> {
    if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
        || flags & (RENAME_NOREPLACE | RENAME_EXCHANGE) == RENAME_NOREPLACE | RENAME_EXCHANGE
    {
        return Err(errno::EINVAL);
    }
    if flags == 0 {
        return from_dir.rename(from, to_dir, to).map_err(io_errno);
    }
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        use rustix::fs::RenameFlags;
        let how = if flags & RENAME_EXCHANGE != 0 { RenameFlags::EXCHANGE } else { RenameFlags::NOREPLACE };
        rustix::fs::renameat_with(from_dir, from, to_dir, to, how).map_err(|e| errno_of(&e.into()))
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        if flags & RENAME_EXCHANGE != 0 {
            return Err(errno::EINVAL);
        }
        if meta(to_dir, to).is_ok() {
            return Err(errno::EEXIST);
        }
        from_dir.rename(from, to_dir, to).map_err(io_errno)
    }
}

/// A directory `name` in `dir` with `mode`.
pub fn mkdir(dir: &Dir, name: &OsStr, mode: u32) -> Result<(), Errno> {
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut b = cap_std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use cap_std::fs::DirBuilderExt;
        b.mode(mode & 0o7777);
    }
    #[cfg(not(unix))]
    let _ = mode;
    dir.create_dir_with(name, &b).map_err(io_errno)
}

/// Hands a node the guest made to the guest's user, where this host may (it runs as root);
/// otherwise it stays the host user's.
pub fn give(dir: &Dir, name: &OsStr, owner: Owner) {
    #[cfg(unix)]
    if nix::unistd::geteuid().is_root() {
        let _ = chown(dir, name, Some(owner.uid), Some(owner.gid));
    }
    #[cfg(not(unix))]
    let _ = (dir, name, owner);
}

/// `fchownat` on one name in `dir`, the link itself if it is one.
#[cfg(unix)]
fn chown(dir: &Dir, name: &OsStr, uid: Option<u32>, gid: Option<u32>) -> Result<(), Errno> {
    use nix::unistd::{Gid, Uid};
    let (uid, gid) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
    // The directory itself through its own descriptor (macOS has no AT_EMPTY_PATH).
    if name == "." {
        return nix::unistd::fchown(dir, uid, gid).map_err(|e| e as i32);
    }
    nix::unistd::fchownat(dir, name, uid, gid, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| e as i32)
}

fn time_spec(t: Option<SetTime>) -> Option<SystemTimeSpec> {
    let at = |t: Time| {
        let epoch = std::time::UNIX_EPOCH;
        let std = if t.secs >= 0 {
            epoch + std::time::Duration::new(t.secs as u64, t.nanos)
        } else {
            epoch - std::time::Duration::from_secs(t.secs.unsigned_abs())
                + std::time::Duration::from_nanos(t.nanos.into())
        };
        SystemTimeSpec::Absolute(cap_std::time::SystemTime::from_std(std))
    };
    match t? {
        SetTime::Now => Some(SystemTimeSpec::SymbolicNow),
        SetTime::At(t) => Some(at(t)),
    }
}

/// Applies `set` to `name` in `dir` (or to `file`, open on it). Returns nothing; the caller
/// stats.
pub fn set_attr(at: Option<(&Dir, &OsStr)>, file: Option<&File>, set: &SetAttr) -> Result<(), Errno> {
    let need = || at.ok_or(errno::ENOENT);
    if let Some(size) = set.size {
        match file {
            Some(f) => f.set_len(size).map_err(io_errno)?,
            None => {
                let (dir, name) = need()?;
                open(dir, name, oflags::WRONLY, None)?.set_len(size).map_err(io_errno)?
            }
        }
    }
    #[cfg(unix)]
    if set.uid.is_some() || set.gid.is_some() {
        let (dir, name) = need()?;
        chown(dir, name, set.uid, set.gid)?;
    }
    if let Some(mode) = set.mode {
        let (dir, name) = need()?;
        let m = meta(dir, name)?;
        // Linux has no mode on symlinks to change.
        if !m.file_type().is_symlink() {
            #[cfg(unix)]
            let perm = {
                use cap_std::fs::PermissionsExt;
                cap_std::fs::Permissions::from_mode(mode & 0o7777)
            };
            #[cfg(not(unix))]
            let perm = {
                let mut perm = m.permissions();
                perm.set_readonly(mode & 0o222 == 0);
                perm
            };
            dir.set_permissions(name, perm).map_err(io_errno)?;
        }
    }
    if set.atime.is_some() || set.mtime.is_some() {
        let (dir, name) = need()?;
        dir.set_symlink_times(name, time_spec(set.atime), time_spec(set.mtime)).map_err(io_errno)?;
    }
    Ok(())
}

/// Reads at `offset` without moving a shared position (handles are shared by threads).
pub fn read_at(f: &File, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
    let mut buf = vec![0u8; size as usize];
    let mut got = 0;
    while got < buf.len() {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::read_at(f, &mut buf[got..], offset + got as u64);
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_read(f, &mut buf[got..], offset + got as u64);
        match n {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_errno(e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

pub fn write_at(f: &File, offset: u64, data: &[u8]) -> Result<u32, Errno> {
    let mut done = 0;
    while done < data.len() {
        #[cfg(unix)]
        let n = std::os::unix::fs::FileExt::write_at(f, &data[done..], offset + done as u64);
        #[cfg(windows)]
        let n = std::os::windows::fs::FileExt::seek_write(f, &data[done..], offset + done as u64);
        match n {
            Ok(0) => return Err(errno::EIO),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_errno(e)),
        }
    }
    Ok(done as u32)
}

/// A symlink `name` in `dir` to `target`, as the guest wrote it (it resolves in the guest).
pub fn symlink(dir: &Dir, name: &OsStr, target: &[u8]) -> Result<(), Errno> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        dir.symlink_contents(OsStr::from_bytes(target), name).map_err(io_errno)
    }
    #[cfg(windows)]
    {
        let t = std::str::from_utf8(target).map_err(|_| errno::EINVAL)?;
        dir.symlink_file(t, name).map_err(io_errno)
    }
}

pub fn read_link(dir: &Dir, name: &OsStr) -> Result<Vec<u8>, Errno> {
    let t = dir.read_link_contents(name).map_err(io_errno)?;
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(t.as_os_str().as_bytes().to_vec())
    }
    #[cfg(not(unix))]
    Ok(t.to_string_lossy().into_owned().into_bytes())
}

/// A FIFO (the only special file a guest may make here). Linux only: macOS has `mkfifoat`
/// from 13 on (Berth supports 12), and a path-based `mkfifo` would leave the directory handle
/// that confines the call; Windows has no FIFOs in its file systems. Elsewhere EPERM, as a
/// file system without special files answers.
pub fn mkfifo(dir: &Dir, name: &OsStr, mode: u32) -> Result<(), Errno> {
    #[cfg(target_os = "linux")]
    {
        nix::unistd::mkfifoat(dir, name, nix::sys::stat::Mode::from_bits_truncate(mode as _)).map_err(|e| e as i32)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (dir, name, mode);
        Err(errno::EPERM)
    }
}

/// The names in `dir`, sorted (so offsets mean the same between calls while it is unchanged).
pub fn list(dir: &Dir) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    for e in dir.entries().map_err(io_errno)? {
        let e = e.map_err(io_errno)?;
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            names.push(e.file_name().as_bytes().to_vec());
        }
        #[cfg(not(unix))]
        names.push(e.file_name().to_string_lossy().into_owned().into_bytes());
    }
    names.sort();
    Ok(names)
}

/// The file system's sizes, for `statfs` (in 4 KiB blocks).
pub fn statfs(dir: &Dir) -> Result<berth_protocol::shares::Reply, Errno> {
    #[cfg(unix)]
    {
        let s = nix::sys::statvfs::fstatvfs(dir).map_err(|e| e as i32)?;
        let frag = s.fragment_size() as u64;
        Ok(berth_protocol::shares::Reply::StatFs {
            blocks: s.blocks() as u64 * frag / 4096,
            bfree: s.blocks_free() as u64 * frag / 4096,
            bavail: s.blocks_available() as u64 * frag / 4096,
            files: s.files() as u64,
            ffree: s.files_free() as u64,
            bsize: 4096,
            namelen: s.name_max() as u32,
        })
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(berth_protocol::shares::Reply::StatFs {
            blocks: 1 << 28,
            bfree: 1 << 27,
            bavail: 1 << 27,
            files: 1 << 24,
            ffree: 1 << 23,
            bsize: 4096,
            namelen: 255,
        })
    }
}
