//! The file operations the guest calls, on the host's file system with `std::fs` only (so
//! the server builds for macOS and Windows hosts too), confined to the shares.
//!
//! Confinement: a node's path was found by looking up one plain name at a time from a share's
//! root, and names are checked to be single components, so no path leaves a share by `..`.
//! Symlinks are never followed here: a lookup reports a symlink as one, and the guest's kernel
//! follows it in the guest (where `/etc` is the container's), not on this machine; files are
//! opened with `O_NOFOLLOW`, and ownership and times are set on the link itself. Hard links
//! can only join nodes the guest already holds, which are inside the shares.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
#[cfg(not(unix))]
use std::time::{SystemTime, UNIX_EPOCH};

use berth_protocol::shares::{Attr, DirEntry, Kind, Owner, SetAttr, SetTime, Time, errno};

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

/// `name` as a single path component under `dir`, or EINVAL/ENAMETOOLONG.
pub fn child(dir: &Path, name: &[u8]) -> Result<PathBuf, Errno> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(errno::EINVAL);
    }
    if name.len() > 255 {
        return Err(errno::ENAMETOOLONG);
    }
    #[cfg(unix)]
    let name = {
        use std::os::unix::ffi::OsStrExt;
        OsStr::from_bytes(name)
    };
    #[cfg(not(unix))]
    let name = {
        let s = std::str::from_utf8(name).map_err(|_| errno::EINVAL)?;
        if s.contains('\\') || s.contains(':') {
            return Err(errno::EINVAL);
        }
        OsStr::new(s)
    };
    Ok(dir.join(name))
}

#[cfg(not(unix))]
fn time_of(t: io::Result<SystemTime>) -> Time {
    match t.ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => Time { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
        None => Time::default(),
    }
}

/// The attributes of `meta`, for node `node`.
pub fn attr(node: u64, meta: &fs::Metadata) -> Attr {
    let ft = meta.file_type();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else if ft.is_char_device() {
            Kind::CharDevice
        } else if ft.is_block_device() {
            Kind::BlockDevice
        } else {
            Kind::File
        };
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
        }
    }
    #[cfg(not(unix))]
    {
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::File
        };
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
        }
    }
}

pub fn entry(name: Vec<u8>, node: u64, meta: &fs::Metadata) -> DirEntry {
    DirEntry { name, attr: attr(node, meta) }
}

/// Linux open flags the guest sends.
mod oflags {
    pub const ACCMODE: i32 = 0o3;
    pub const WRONLY: i32 = 0o1;
    pub const RDWR: i32 = 0o2;
    pub const CREAT: i32 = 0o100;
    pub const EXCL: i32 = 0o200;
    pub const TRUNC: i32 = 0o1000;
}

/// Opens `path` as the guest asked, never through a symlink at its end.
pub fn open(path: &Path, flags: i32, create: Option<u32>) -> Result<File, Errno> {
    let mut o = OpenOptions::new();
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
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(mode & 0o7777);
        }
        #[cfg(not(unix))]
        let _ = mode;
    }
    let _ = oflags::CREAT;
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits());
    }
    o.open(path).map_err(io_errno)
}

/// Hands a node the guest made to the guest's user, where this host may (it runs as root);
/// otherwise it stays the host user's.
pub fn give(path: &Path, owner: Owner) {
    #[cfg(unix)]
    if nix::unistd::geteuid().is_root() {
        let _ = std::os::unix::fs::lchown(path, Some(owner.uid), Some(owner.gid));
    }
    #[cfg(not(unix))]
    let _ = (path, owner);
}

/// Applies `set` to `path` (or to `file`, open on it). Returns nothing; the caller stats.
pub fn set_attr(path: Option<&Path>, file: Option<&File>, set: &SetAttr) -> Result<(), Errno> {
    let need_path = || path.ok_or(errno::ENOENT);
    if let Some(size) = set.size {
        match file {
            Some(f) => f.set_len(size).map_err(io_errno)?,
            None => open(need_path()?, oflags::WRONLY, None)?.set_len(size).map_err(io_errno)?,
        }
    }
    #[cfg(unix)]
    if set.uid.is_some() || set.gid.is_some() {
        std::os::unix::fs::lchown(need_path()?, set.uid, set.gid).map_err(io_errno)?;
    }
    if let Some(mode) = set.mode {
        let p = need_path()?;
        let meta = fs::symlink_metadata(p).map_err(io_errno)?;
        // Linux has no mode on symlinks to change.
        if !meta.file_type().is_symlink() {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777)).map_err(io_errno)?;
            }
            #[cfg(not(unix))]
            {
                let mut perm = meta.permissions();
                perm.set_readonly(mode & 0o222 == 0);
                fs::set_permissions(p, perm).map_err(io_errno)?;
            }
        }
    }
    if set.atime.is_some() || set.mtime.is_some() {
        let p = need_path()?;
        let meta = fs::symlink_metadata(p).map_err(io_errno)?;
        let pick = |t: Option<SetTime>, keep: filetime::FileTime| match t {
            None => keep,
            Some(SetTime::Now) => filetime::FileTime::now(),
            Some(SetTime::At(t)) => filetime::FileTime::from_unix_time(t.secs, t.nanos),
        };
        let atime = pick(set.atime, filetime::FileTime::from_last_access_time(&meta));
        let mtime = pick(set.mtime, filetime::FileTime::from_last_modification_time(&meta));
        filetime::set_symlink_file_times(p, atime, mtime).map_err(io_errno)?;
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

pub fn symlink(target: &[u8], at: &Path) -> Result<(), Errno> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), at).map_err(io_errno)
    }
    #[cfg(windows)]
    {
        let t = std::str::from_utf8(target).map_err(|_| errno::EINVAL)?;
        std::os::windows::fs::symlink_file(t, at).map_err(io_errno)
    }
}

pub fn read_link(path: &Path) -> Result<Vec<u8>, Errno> {
    let t = fs::read_link(path).map_err(io_errno)?;
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(t.as_os_str().as_bytes().to_vec())
    }
    #[cfg(not(unix))]
    Ok(t.to_string_lossy().into_owned().into_bytes())
}

/// A FIFO (the only special file a guest may make here).
pub fn mkfifo(path: &Path, mode: u32) -> Result<(), Errno> {
    #[cfg(unix)]
    {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(mode as _)).map_err(|e| e as i32)
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Err(errno::EPERM)
    }
}

/// The names in `dir`, sorted (so offsets mean the same between calls while it is unchanged).
pub fn list(dir: &Path) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io_errno)? {
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
pub fn statfs(path: &Path) -> Result<berth_protocol::shares::Reply, Errno> {
    #[cfg(unix)]
    {
        let s = nix::sys::statvfs::statvfs(path).map_err(|e| e as i32)?;
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
        let _ = path;
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
