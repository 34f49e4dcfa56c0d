//! Layer unpacking: a layer tarball becomes a directory, confined to that directory.
//!
//! Every path in the archive is resolved inside the target root the way the container will see
//! it: `..` may not climb above the root (that is an error, as dockerd reports a breakout), and
//! symlinks met on the way, absolute or relative, are followed *inside* the root, so no write
//! can land outside it. Hard links must name a file inside the root. Device nodes are refused:
//! a layer has no business creating them and the engine gives containers a /dev of its own.
//!
//! OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) become overlayfs whiteouts (a 0:0 character
//! device, the `trusted.overlay.opaque` xattr) when unpacking into a snapshot, so the layer can
//! be stacked with overlayfs as it is.
//!
//! The tar crate parses the archive; the file creation is ours, because the crate's own
//! `unpack` neither confines symlinks inside a root nor knows about whiteouts.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, mknod};
use sha2::{Digest as _, Sha256};

/// Errors from unpacking one layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer entry {path:?} escapes the root")]
    Breakout { path: String },
    #[error("layer entry {path:?} is a device node, which layers may not create")]
    DeviceNode { path: String },
    #[error("layer entry {path:?}: hard link target {target:?} is not a file inside the root")]
    BadHardlink { path: String, target: String },
    #[error("layer entry name is {0} bytes long; the limit is 4096")]
    NameTooLong(usize),
    #[error("layer has a tar extension header of {0} bytes; the limit is {MAX_EXTENSION_HEADER}")]
    HugeHeader(u64),
    #[error("layer uncompressed digest is {actual}, the image config says {expected}")]
    DiffIdMismatch { expected: String, actual: String },
    #[error("too many levels of symbolic links resolving {0:?}")]
    SymlinkLoop(String),
    #[error("reading the layer archive")]
    Archive(#[source] io::Error),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Write { path: path.to_owned(), source }
}

/// How `.wh.` entries are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiteouts {
    /// Convert to overlayfs whiteouts (unpacking an image layer into a snapshot).
    Overlay,
    /// Delete the named file from the target (applying a layer onto a merged tree).
    Apply,
    /// No whiteouts: `.wh.` names are ordinary files (`docker cp`, archive uploads).
    Plain,
}

/// Compression of a layer, from its first bytes (what dockerd does too: media types lie).
pub fn decompressor<'a>(mut r: Box<dyn Read + Send + 'a>) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        let m = r.read(&mut magic[n..])?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let chained: Box<dyn Read + Send + 'a> = Box::new(head.chain(r));
    Ok(if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Box::new(flate2::read::MultiGzDecoder::new(chained))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::new(chained)?)
    } else {
        chained
    })
}

/// The largest PAX or GNU long-name header accepted (the tar crate reads them into memory).
pub const MAX_EXTENSION_HEADER: u64 = 1 << 20;

/// Follows the tar block structure of the stream passing through it and fails on extension
/// headers (PAX `x`/`g`, GNU `L`/`K`) larger than [`MAX_EXTENSION_HEADER`], before the tar
/// crate would buffer them: a small compressed layer can otherwise declare gigabytes of header.
struct HeaderGuard<R> {
    inner: R,
    /// Bytes of entry data (padded to 512) before the next header block.
    data_left: u64,
    header: Vec<u8>,
    /// GNU sparse extension blocks still to come before the data.
    sparse_ext: bool,
    /// A PAX header being collected, to learn a `size=` override for the next entry.
    pax: Option<Vec<u8>>,
    pax_size: Option<u64>,
}

fn parse_numeric(field: &[u8]) -> u64 {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // base-256: big-endian binary in the remaining bytes.
        field[1..].iter().fold(0u64, |acc, b| acc.saturating_mul(256).saturating_add(*b as u64))
    } else {
        let text: String = field.iter().take_while(|b| **b != 0).map(|b| *b as char).collect();
        u64::from_str_radix(text.trim(), 8).unwrap_or(0)
    }
}

fn pax_size(records: &[u8]) -> Option<u64> {
    String::from_utf8_lossy(records).lines().find_map(|l| {
        let (_, kv) = l.split_once(' ')?;
        kv.strip_prefix("size=")?.trim().parse().ok()
    })
}

impl<R: Read> HeaderGuard<R> {
    fn new(inner: R) -> Self {
        HeaderGuard {
            inner,
            data_left: 0,
            header: Vec::with_capacity(512),
            sparse_ext: false,
            pax: None,
            pax_size: None,
        }
    }

    fn on_header(&mut self) -> io::Result<()> {
        let h = std::mem::take(&mut self.header);
        if self.sparse_ext {
            self.sparse_ext = h[504] != 0;
            return Ok(());
        }
        if h.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let kind = h[156];
        let mut size = parse_numeric(&h[124..136]);
        if matches!(kind, b'x' | b'g' | b'L' | b'K') {
            if size > MAX_EXTENSION_HEADER {
                return Err(io::Error::other(UnpackError::HugeHeader(size)));
            }
            if kind == b'x' {
                self.pax = Some(Vec::with_capacity(size as usize));
            }
        } else {
            if let Some(s) = self.pax_size.take() {
                size = s;
            }
            if kind == b'S' && h[482] != 0 {
                self.sparse_ext = true;
            }
        }
        self.data_left = size.div_ceil(512) * 512;
        if self.data_left == 0 {
            self.finish_pax();
        }
        Ok(())
    }

    fn finish_pax(&mut self) {
        if let Some(p) = self.pax.take() {
            self.pax_size = pax_size(&p);
        }
    }
}

impl<R: Read> Read for HeaderGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            if self.data_left > 0 {
                let take = (self.data_left.min(rest.len() as u64)) as usize;
                if let Some(p) = self.pax.as_mut() {
                    p.extend_from_slice(&rest[..take]);
                }
                self.data_left -= take as u64;
                rest = &rest[take..];
                if self.data_left == 0 {
                    self.finish_pax();
                }
            } else {
                let take = (512 - self.header.len()).min(rest.len());
                self.header.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if self.header.len() == 512 {
                    self.on_header()?;
                }
            }
        }
        Ok(n)
    }
}

/// A reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// What unpacking a layer found.
#[derive(Debug, Clone)]
pub struct Unpacked {
    /// `sha256:` of the uncompressed tar stream.
    pub diff_id: String,
    /// Bytes of the uncompressed tar stream.
    pub size: u64,
}

/// Unpacks the (possibly compressed) tar stream `reader` into `root`.
///
/// When `expected_diff_id` is given the uncompressed stream must hash to it, or the unpack
/// fails (the caller discards `root`).
pub fn unpack(
    reader: impl Read + Send,
    root: &Path,
    whiteouts: Whiteouts,
    expected_diff_id: Option<&str>,
) -> Result<Unpacked, UnpackError> {
    let plain = decompressor(Box::new(reader)).map_err(UnpackError::Archive)?;
    let mut hashing = HashingReader { inner: plain, hasher: Sha256::new(), count: 0 };
    apply_tar(&mut hashing, root, whiteouts)?;
    // Hash the rest of the stream (the tar's end blocks and any padding).
    io::copy(&mut hashing, &mut io::sink()).map_err(UnpackError::Archive)?;
    let diff_id = format!("sha256:{}", hex::encode(hashing.hasher.finalize()));
    if let Some(expected) = expected_diff_id
        && expected != diff_id
    {
        return Err(UnpackError::DiffIdMismatch { expected: expected.into(), actual: diff_id });
    }
    Ok(Unpacked { diff_id, size: hashing.count })
}

/// Lexically normalises an archive path to components below the root; `..` above it is an error.
fn clean(path: &Path, shown: &str) -> Result<Vec<std::ffi::OsString>, UnpackError> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s.to_owned()),
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(UnpackError::Breakout { path: shown.into() });
                }
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// The components of an absolute or relative path as [`resolve_in_root`] takes them (`..`
/// kept, for it to clamp at the root).
pub fn path_parts(path: &str) -> Vec<std::ffi::OsString> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Resolves `parts` under `root`, following symlinks inside the root (absolute targets are
/// relative to the root, `..` stops at it). The last component is followed only when
/// `follow_last` is set. Returns a path that is inside `root` by construction.
pub fn resolve_in_root(root: &Path, parts: &[std::ffi::OsString], follow_last: bool) -> Result<PathBuf, UnpackError> {
    let mut pending: Vec<std::ffi::OsString> = parts.iter().rev().cloned().collect();
    let mut done: Vec<std::ffi::OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            done.pop();
            continue;
        }
        if part == "." || part.is_empty() {
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&done);
        candidate.push(&part);
        let is_last = pending.is_empty();
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() && (!is_last || follow_last) => {
                hops += 1;
                if hops > 40 {
                    return Err(UnpackError::SymlinkLoop(candidate.display().to_string()));
                }
                let target = fs::read_link(&candidate).map_err(werr(&candidate))?;
                if target.is_absolute() {
                    done.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(s) => pending.push(s.to_owned()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => done.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&done);
    Ok(out)
}

/// Sets owner, mode and times of `path` from a tar header.
fn set_meta(path: &Path, header: &tar::Header, is_symlink: bool) -> Result<(), UnpackError> {
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(werr(path))?;
    if !is_symlink {
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(werr(path))?;
    }
    let mtime = header.mtime().unwrap_or(0) as i64;
    let ts = nix::sys::time::TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(nix::fcntl::AT_FDCWD, path, &ts, &ts, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .map_err(|e| werr(path)(e.into()))?;
    Ok(())
}

/// Removes whatever is at `path` unless it is a directory and `keep_dir` holds.
fn clear_path(path: &Path, keep_dir: bool) -> Result<(), UnpackError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(werr(path)),
        Ok(_) => fs::remove_file(path).map_err(werr(path)),
        Err(_) => Ok(()),
    }
}

fn make_whiteout(path: &Path) -> Result<(), UnpackError> {
    clear_path(path, false)?;
    mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| werr(path)(e.into()))
}

fn set_opaque(dir: &Path) -> Result<(), UnpackError> {
    xattr_set(dir, "trusted.overlay.opaque", b"y").map_err(werr(dir))
}

/// Sets an extended attribute without following symlinks.
pub(crate) fn xattr_set(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let n = std::ffi::CString::new(name)?;
    // SAFETY: both strings are NUL-terminated and live across the call; value is a valid slice.
    let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// Applies the entries of an uncompressed tar stream onto `root`, refusing huge extension
/// headers before they are buffered.
pub fn apply_tar(reader: &mut dyn Read, root: &Path, whiteouts: Whiteouts) -> Result<(), UnpackError> {
    apply_entries(&mut HeaderGuard::new(reader), root, whiteouts).map_err(|e| match e {
        // The guard's verdict travels through the tar crate as an io::Error.
        UnpackError::Archive(io) if io.get_ref().is_some_and(|i| i.is::<UnpackError>()) => {
            *io.into_inner().expect("checked").downcast::<UnpackError>().expect("checked")
        }
        other => other,
    })
}

fn apply_entries(reader: &mut dyn Read, root: &Path, whiteouts: Whiteouts) -> Result<(), UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut dirs: Vec<(PathBuf, tar::Header)> = Vec::new();
    for entry in archive.entries().map_err(UnpackError::Archive)? {
        let mut entry = entry.map_err(UnpackError::Archive)?;
        let raw_path = entry.path_bytes().into_owned();
        if raw_path.len() > 4096 {
            return Err(UnpackError::NameTooLong(raw_path.len()));
        }
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let mut parts = clean(Path::new(OsStr::from_bytes(&raw_path)), &shown)?;
        let Some(name) = parts.pop() else { continue };
        let parent = resolve_in_root(root, &parts, true)?;
        fs::create_dir_all(&parent).map_err(werr(&parent))?;
        let name_bytes = name.as_bytes();

        if name_bytes == b".wh..wh..opq" && whiteouts != Whiteouts::Plain {
            match whiteouts {
                Whiteouts::Overlay => set_opaque(&parent)?,
                Whiteouts::Apply | Whiteouts::Plain => {
                    for child in fs::read_dir(&parent).map_err(werr(&parent))? {
                        let child = child.map_err(werr(&parent))?.path();
                        clear_path(&child, false)?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name_bytes.strip_prefix(b".wh.").filter(|_| whiteouts != Whiteouts::Plain) {
            let target = parent.join(OsStr::from_bytes(hidden));
            match whiteouts {
                Whiteouts::Overlay => make_whiteout(&target)?,
                Whiteouts::Apply | Whiteouts::Plain => clear_path(&target, false)?,
            }
            continue;
        }

        let path = parent.join(&name);
        let header = entry.header().clone();
        let kind = header.entry_type();
        match kind {
            tar::EntryType::Directory => {
                clear_path(&path, true)?;
                if !path.is_dir() {
                    fs::create_dir(&path).map_err(werr(&path))?;
                }
                dirs.push((path.clone(), header));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear_path(&path, false)?;
                let mut f = fs::File::create(&path).map_err(werr(&path))?;
                io::copy(&mut entry, &mut f).map_err(UnpackError::Archive)?;
                set_meta(&path, &header, false)?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(UnpackError::Archive)?.unwrap_or_default();
                clear_path(&path, false)?;
                symlink(&target, &path).map_err(werr(&path))?;
                set_meta(&path, &header, true)?;
            }
            tar::EntryType::Link => {
                let target_raw = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                let target_shown = String::from_utf8_lossy(&target_raw).into_owned();
                let bad = || UnpackError::BadHardlink { path: shown.clone(), target: target_shown.clone() };
                let target_parts =
                    clean(Path::new(OsStr::from_bytes(&target_raw)), &target_shown).map_err(|_| bad())?;
                let target = resolve_in_root(root, &target_parts, false)?;
                match fs::symlink_metadata(&target) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(bad()),
                }
                if target != path {
                    clear_path(&path, false)?;
                    fs::hard_link(&target, &path).map_err(werr(&path))?;
                }
            }
            tar::EntryType::Fifo => {
                clear_path(&path, false)?;
                mknod(&path, SFlag::S_IFIFO, Mode::from_bits_truncate(0o644), 0).map_err(|e| werr(&path)(e.into()))?;
                set_meta(&path, &header, false)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(UnpackError::DeviceNode { path: shown });
            }
            // PAX and GNU extension headers are consumed by the tar crate; anything else
            // (sockets, unknown types) has nothing to put on disk.
            _ => continue,
        }
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for ext in exts.flatten() {
                if let (Ok(key), Some(name)) = (ext.key(), ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")))
                {
                    let _ = key;
                    if name.starts_with("security.") || name.starts_with("user.") {
                        let _ = xattr_set(&path, name, ext.value_bytes());
                    }
                }
            }
        }
    }
    // Directory metadata last: creating children changed their mtimes.
    for (path, header) in dirs.iter().rev() {
        set_meta(path, header, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the raw name the way a hostile archive would.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(kind);
        h.set_mode(0o777);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, io::empty()).unwrap();
    }

    #[test]
    fn parent_dir_breakout_is_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let t = tar_with(|b| file(b, "../evil", b"x"));
        let err = unpack(&t[..], &root, Whiteouts::Overlay, None).unwrap_err();
        assert!(matches!(err, UnpackError::Breakout { .. }), "{err}");
        assert!(!outer.path().join("evil").exists());
    }

    #[test]
    fn symlinks_are_followed_inside_the_root_only() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        let t = tar_with(|b| {
            link(b, tar::EntryType::Symlink, "abs", outer.path().to_str().unwrap());
            file(b, "abs/escaped", b"x");
            link(b, tar::EntryType::Symlink, "rel", "../../../..");
            file(b, "rel/escaped2", b"y");
        });
        unpack(&t[..], &root, Whiteouts::Overlay, None).unwrap();
        assert!(!outer.path().join("escaped").exists());
        assert!(!Path::new("/escaped2").exists());
        let inside = root.join(outer.path().strip_prefix("/").unwrap()).join("escaped");
        assert_eq!(fs::read(inside).unwrap(), b"x");
        assert_eq!(fs::read(root.join("escaped2")).unwrap(), b"y");
    }

    #[test]
    fn hardlink_out_of_root_is_refused() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        fs::create_dir(&root).unwrap();
        fs::write(outer.path().join("secret"), b"s").unwrap();
        let t = tar_with(|b| link(b, tar::EntryType::Link, "l", "../secret"));
        let err = unpack(&t[..], &root, Whiteouts::Overlay, None).unwrap_err();
        assert!(matches!(err, UnpackError::BadHardlink { .. }), "{err}");
    }

    #[test]
    fn device_nodes_are_refused_and_whiteouts_converted() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_path("dev/sda").unwrap();
            h.set_entry_type(tar::EntryType::Block);
            h.set_size(0);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        });
        let err = unpack(&t[..], dir.path(), Whiteouts::Overlay, None).unwrap_err();
        assert!(matches!(err, UnpackError::DeviceNode { .. }), "{err}");

        let t = tar_with(|b| file(b, "etc/.wh.gone", b""));
        unpack(&t[..], dir.path(), Whiteouts::Overlay, None).unwrap();
        let m = fs::symlink_metadata(dir.path().join("etc/gone")).unwrap();
        use std::os::unix::fs::FileTypeExt;
        assert!(m.file_type().is_char_device());
    }

    #[test]
    fn huge_extension_headers_are_refused_before_they_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(3 << 30);
        h.set_cksum();
        let mut t = h.as_bytes().to_vec();
        t.extend(std::iter::repeat_n(b'a', 4096));
        let err = unpack(&t[..], dir.path(), Whiteouts::Overlay, None).unwrap_err();
        assert!(matches!(err, UnpackError::HugeHeader(n) if n == 3 << 30), "{err}");
        // Normal archives with PAX headers and long names still pass the guard.
        let long = "d/".repeat(60) + "file";
        let t = tar_with(|b| {
            let mut h = tar::Header::new_gnu();
            h.set_size(2);
            h.set_mode(0o644);
            b.append_data(&mut h, &long, &b"ok"[..]).unwrap();
            file(b, "after", b"x");
        });
        unpack(&t[..], dir.path(), Whiteouts::Overlay, None).unwrap();
        assert_eq!(fs::read(dir.path().join(&long)).unwrap(), b"ok");
        assert_eq!(fs::read(dir.path().join("after")).unwrap(), b"x");
    }

    #[test]
    fn diff_id_is_checked_and_gzip_detected() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_with(|b| file(b, "a", b"hello"));
        let want = crate::content::sha256_digest(&t);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut gz, &t).unwrap();
        let gz = gz.finish().unwrap();
        let got = unpack(&gz[..], dir.path(), Whiteouts::Overlay, Some(&want)).unwrap();
        assert_eq!(got.diff_id, want);
        let err = unpack(&t[..], dir.path(), Whiteouts::Overlay, Some("sha256:00")).unwrap_err();
        assert!(matches!(err, UnpackError::DiffIdMismatch { .. }));
    }
}
