//! Extended attributes of shared files: Linux's `user.` namespace only.
//!
//! The guest answers every other namespace itself (`security.capability`, which its kernel
//! asks for before each write, ACLs, SELinux labels: none there), so a container can neither
//! read this machine's labels nor give its files capabilities or ACLs; names outside `user.`
//! that still arrive are refused here too. std has no xattr calls, so they go through rustix
//! (already here for `renameat2`), on a descriptor opened beneath the share without following
//! a symlink, like every other operation ([`super::ops`]). On macOS, whose attributes have no
//! namespaces, `user.NAME` in the guest is `NAME` on the host (a Finder tag or a quarantine
//! mark reads as `user.com.apple...`). Windows has no such attributes: ENOTSUP.

use std::ffi::OsStr;

use berth_protocol::shares::errno;

use super::ops::{Dir, Errno};

/// The guest's namespace, the only one served.
const USER: &[u8] = b"user.";
/// Linux's limit on a value and on a list of names (XATTR_SIZE_MAX, XATTR_LIST_MAX).
const MAX: usize = 64 * 1024;

/// The value of `name` on `name_in` in `dir`.
pub fn get(dir: &Dir, name_in: &OsStr, name: &[u8]) -> Result<Vec<u8>, Errno> {
    let key = host_name(name)?;
    imp::get(dir, name_in, &key)
}

/// The `user.` names set on `name_in`, each followed by a NUL.
pub fn list(dir: &Dir, name_in: &OsStr) -> Result<Vec<u8>, Errno> {
    let names = imp::list(dir, name_in)?;
    let mut out = Vec::new();
    for n in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if let Some(guest) = guest_name(n) {
            out.extend_from_slice(&guest);
            out.push(0);
        }
    }
    Ok(out)
}

/// Sets `name` to `value`; `flags` are XATTR_CREATE (1) and XATTR_REPLACE (2).
pub fn set(dir: &Dir, name_in: &OsStr, name: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
    let key = host_name(name)?;
    if value.len() > MAX {
        return Err(errno::E2BIG);
    }
    if flags & !3 != 0 || flags == 3 {
        return Err(errno::EINVAL);
    }
    imp::set(dir, name_in, &key, value, flags)
}

pub fn remove(dir: &Dir, name_in: &OsStr, name: &[u8]) -> Result<(), Errno> {
    let key = host_name(name)?;
    imp::remove(dir, name_in, &key)
}

/// The host's name for guest attribute `name`, which must be a `user.` one.
fn host_name(name: &[u8]) -> Result<Vec<u8>, Errno> {
    if !name.starts_with(USER) || name.len() == USER.len() || name.contains(&0) {
        return Err(errno::ENOTSUP);
    }
    if name.len() > 255 {
        return Err(errno::ERANGE);
    }
    Ok(if cfg!(target_os = "macos") { name[USER.len()..].to_vec() } else { name.to_vec() })
}

/// The guest's name for host attribute `name`, if the guest may see it.
fn guest_name(name: &[u8]) -> Option<Vec<u8>> {
    if cfg!(target_os = "macos") { Some([USER, name].concat()) } else { name.starts_with(USER).then(|| name.to_vec()) }
}

#[cfg(any(target_os = "linux", target_os = "macos"))]
mod imp {
    use std::ffi::OsStr;
    use std::fs::File;

    use berth_protocol::shares::errno;
    use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
    use rustix::fs::XattrFlags;
    use rustix::io::Errno as Sys;

    use super::{Dir, Errno, MAX};
    use crate::forward::files::ops::{io_errno, meta};

    /// Which call: an attribute that is not there is ENODATA to a read, and setting one on a
    /// symlink or a device is EPERM, as Linux answers for `user.` names.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Access {
        Read,
        Write,
    }

    /// `name` in `dir` opened to read or change its attributes: a directory or a regular
    /// file, never through a symlink (Linux keeps no `user.` attributes on symlinks and
    /// special files, and opening a FIFO would wait for a writer).
    fn open(dir: &Dir, name: &OsStr, access: Access) -> Result<File, Errno> {
        let m = meta(dir, name)?;
        let refuse = if access == Access::Read { errno::ENODATA } else { errno::EPERM };
        if m.is_dir() || m.is_file() {
            // A plain read-only open, for directories too (cap-std's `Dir` handles may be
            // O_PATH ones, which the xattr calls refuse).
            let mut o = cap_std::fs::OpenOptions::new();
            o.read(true).follow(FollowSymlinks::No);
            Ok(dir.open_with(name, &o).map_err(io_errno)?.into_std())
        } else {
            Err(refuse)
        }
    }

    /// A system error as the guest's errno (macOS numbers some of these differently).
    fn errno_of(e: Sys) -> Errno {
        #[cfg(target_os = "macos")]
        {
            match e {
                Sys::NOATTR => return errno::ENODATA,
                Sys::RANGE => return errno::ERANGE,
                Sys::TOOBIG => return errno::E2BIG,
                Sys::PERM => return errno::EPERM,
                Sys::NOTSUP | Sys::OPNOTSUPP => return errno::ENOTSUP,
                _ => {}
            }
        }
        super::super::ops::errno_of(&e.into())
    }

    pub fn get(dir: &Dir, name: &OsStr, key: &[u8]) -> Result<Vec<u8>, Errno> {
        let f = match open(dir, name, Access::Read) {
            Err(errno::ENODATA) => return Err(errno::ENODATA),
            other => other?,
        };
        let mut buf = vec![0u8; MAX];
        let n = rustix::fs::fgetxattr(&f, key, &mut buf[..]).map_err(errno_of)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn list(dir: &Dir, name: &OsStr) -> Result<Vec<u8>, Errno> {
        let f = match open(dir, name, Access::Read) {
            Err(errno::ENODATA) => return Ok(Vec::new()),
            other => other?,
        };
        let mut buf = vec![0u8; MAX];
        let n = rustix::fs::flistxattr(&f, &mut buf[..]).map_err(errno_of)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn set(dir: &Dir, name: &OsStr, key: &[u8], value: &[u8], flags: u32) -> Result<(), Errno> {
        let f = open(dir, name, Access::Write)?;
        let how = match flags {
            1 => XattrFlags::CREATE,
            2 => XattrFlags::REPLACE,
            _ => XattrFlags::empty(),
        };
        rustix::fs::fsetxattr(&f, key, value, how).map_err(errno_of)
    }

    pub fn remove(dir: &Dir, name: &OsStr, key: &[u8]) -> Result<(), Errno> {
        let f = open(dir, name, Access::Write)?;
        rustix::fs::fremovexattr(&f, key).map_err(errno_of)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod imp {
    //! No extended attributes on this host.
    use std::ffi::OsStr;

    use berth_protocol::shares::errno;

    use super::{Dir, Errno};

    pub fn get(_: &Dir, _: &OsStr, _: &[u8]) -> Result<Vec<u8>, Errno> {
        Err(errno::ENOTSUP)
    }
    pub fn list(_: &Dir, _: &OsStr) -> Result<Vec<u8>, Errno> {
        Ok(Vec::new())
    }
    pub fn set(_: &Dir, _: &OsStr, _: &[u8], _: &[u8], _: u32) -> Result<(), Errno> {
        Err(errno::ENOTSUP)
    }
    pub fn remove(_: &Dir, _: &OsStr, _: &[u8]) -> Result<(), Errno> {
        Err(errno::ENOTSUP)
    }
}
