//! Access to a container's root filesystem from the engine, for `export` and the archive API
//! (`docker cp`): the running container's root through `/proc/<pid>/root`, or a stopped one's
//! overlay mounted for the occasion.
//!
//! A running container can change its tree while the engine reads or writes it, so nothing
//! here resolves a path twice: paths are resolved once inside the container's root
//! ([`crate::fsutil::confined`]: `openat2` with `RESOLVE_IN_ROOT`), and the walk goes on from
//! open descriptors. A directory swapped for a symlink to `/` halfway through a copy (the
//! CVE-2018-15664 race) leads nowhere outside the container.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, umount2};

use crate::fsutil::confined::{Confined, Dir, Inode};
use crate::image::unpack::{self, Whiteouts};
use crate::snapshot::OverlayMount;

/// A container root the engine can read and write; unmounted on drop when it was mounted.
#[derive(Debug)]
pub struct RootView {
    pub root: PathBuf,
    mounted: bool,
}

impl RootView {
    /// The root of a running container (its init's pid).
    pub fn running(pid: i32) -> RootView {
        RootView { root: PathBuf::from(format!("/proc/{pid}/root")), mounted: false }
    }

    /// Mounts a stopped container's overlay at `at`.
    pub fn mount(overlay: &OverlayMount, at: &Path) -> io::Result<RootView> {
        overlay.mount(at)?;
        Ok(RootView { root: at.to_owned(), mounted: true })
    }

    /// A directory of the engine's own used as a root (a build context): nothing below it is
    /// trusted.
    pub fn dir(root: &Path) -> RootView {
        RootView { root: root.to_owned(), mounted: false }
    }

    /// The root, opened for confined access.
    pub fn confined(&self) -> io::Result<Confined> {
        Confined::open(&self.root)
    }
}

impl Drop for RootView {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount2(&self.root, MntFlags::MNT_DETACH);
            let _ = fs::remove_dir(&self.root);
        }
    }
}

/// `stat` of a path as the archive API reports it (`X-Docker-Container-Path-Stat`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PathStat {
    pub name: String,
    pub size: i64,
    /// Go's `os.FileMode` bits, which the docker CLI decodes.
    pub mode: u32,
    pub mtime: String,
    #[serde(rename = "linkTarget")]
    pub link_target: String,
}

pub fn go_file_mode(meta: &fs::Metadata) -> u32 {
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    let mut mode = meta.mode() & 0o777;
    if ft.is_dir() {
        mode |= 1 << 31;
    }
    if ft.is_symlink() {
        mode |= 1 << 27;
    }
    if ft.is_fifo() {
        mode |= 1 << 25;
    }
    if ft.is_socket() {
        mode |= 1 << 24;
    }
    if ft.is_block_device() {
        mode |= 1 << 26;
    }
    if ft.is_char_device() {
        mode |= (1 << 26) | (1 << 21);
    }
    if meta.mode() & 0o4000 != 0 {
        mode |= 1 << 23;
    }
    if meta.mode() & 0o2000 != 0 {
        mode |= 1 << 22;
    }
    if meta.mode() & 0o1000 != 0 {
        mode |= 1 << 20;
    }
    mode
}

pub fn stat(view: &RootView, path: &str) -> io::Result<PathStat> {
    let inode = view.confined()?.lookup(Path::new(path))?;
    let meta = &inode.meta;
    let link_target =
        if meta.file_type().is_symlink() { inode.read_link()?.display().to_string() } else { String::new() };
    let mtime =
        time::OffsetDateTime::from_unix_timestamp(meta.mtime()).map(crate::model::format_time).unwrap_or_default();
    let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
    Ok(PathStat { name, size: meta.len() as i64, mode: go_file_mode(meta), mtime, link_target })
}

/// A tar header for `meta` (owner, mode, mtime, type, device numbers; size for files).
fn header_for(meta: &fs::Metadata) -> io::Result<tar::Header> {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    use std::os::unix::fs::FileTypeExt;
    let ft = meta.file_type();
    if ft.is_char_device() || ft.is_block_device() {
        let rdev = meta.rdev();
        h.set_device_major(nix::sys::stat::major(rdev) as u32)?;
        h.set_device_minor(nix::sys::stat::minor(rdev) as u32)?;
    }
    if !meta.is_file() {
        h.set_size(0);
    }
    Ok(h)
}

/// Appends one inode (not a directory's contents) as `name`.
fn append_inode<W: Write>(tar: &mut tar::Builder<W>, inode: &Inode, name: &Path) -> io::Result<()> {
    let mut h = header_for(&inode.meta)?;
    if inode.meta.file_type().is_symlink() {
        tar.append_link(&mut h, name, inode.read_link()?)
    } else if inode.meta.is_file() {
        tar.append_data(&mut h, name, inode.open()?)
    } else {
        // Directories, devices, FIFOs, sockets: the header is all there is.
        tar.append_data(&mut h, name, io::empty())
    }
}

/// Writes a tar of `path` (named by its base name) into `out`. With `one_fs`, directories on
/// other file systems (mount points: /proc, volumes) are written empty.
pub fn tar_path(view: &RootView, path: &str, out: impl Write, one_fs: bool) -> io::Result<()> {
    let base = if path.trim_end_matches('/').is_empty() {
        PathBuf::new()
    } else {
        PathBuf::from(Path::new(path.trim_end_matches('/')).file_name().unwrap_or_default())
    };
    tar_path_as(view, path, &base, out, one_fs)
}

/// Writes a tar of `path` with its top named `base` (empty: a directory's contents only).
pub fn tar_path_as(view: &RootView, path: &str, base: &Path, out: impl Write, one_fs: bool) -> io::Result<()> {
    let top = view.confined()?.lookup(Path::new(path))?;
    let base = base.to_owned();
    let mut tar = tar::Builder::new(out);
    if !base.as_os_str().is_empty() {
        append_inode(&mut tar, &top, &base)?;
    }
    if top.meta.is_dir() {
        let root_dev = top.meta.dev();
        let mut stack: Vec<(Dir, PathBuf)> = vec![(top.open_dir()?, base)];
        while let Some((dir, name)) = stack.pop() {
            for child in dir.entries()? {
                let inode = match dir.lookup(&child) {
                    Ok(i) => i,
                    // Gone since the listing (a running container's own churn).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let child_name = name.join(&child);
                append_inode(&mut tar, &inode, &child_name)?;
                if inode.meta.is_dir() && (!one_fs || inode.meta.dev() == root_dev) {
                    stack.push((inode.open_dir()?, child_name));
                }
            }
        }
    }
    tar.finish()
}

/// Extracts the tar `body` into directory `path` of the container (which must exist).
pub fn untar_into(view: &RootView, path: &str, body: &mut dyn io::Read) -> Result<(), UntarError> {
    let root = view.confined().map_err(UntarError::Root)?;
    match root.lookup_follow(Path::new(path)) {
        Ok(target) if target.meta.is_dir() => {}
        _ => return Err(UntarError::NoDirectory(path.to_owned())),
    }
    Ok(unpack::apply_tar_in(body, &root, Path::new(path), Whiteouts::Plain)?)
}

/// Why an archive could not be extracted into a container.
#[derive(Debug, thiserror::Error)]
pub enum UntarError {
    #[error("Could not find the file {0} in container")]
    NoDirectory(String),
    #[error("opening the container's root")]
    Root(#[source] io::Error),
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
}

impl From<UntarError> for crate::EngineError {
    /// A missing directory is the client's 404, a hostile or unreadable archive its 400; a
    /// write that failed here (a full disk, say) is the engine's own 500, with its cause.
    fn from(e: UntarError) -> Self {
        use crate::EngineError as E;
        match e {
            UntarError::NoDirectory(_) => E::NotFound(e.to_string()),
            UntarError::Root(source) => E::Io { context: "opening the container's root".into(), source },
            UntarError::Unpack(u @ unpack::UnpackError::Write { .. }) => E::Image(u.into()),
            UntarError::Unpack(u) => E::InvalidArgument(u.to_string()),
        }
    }
}
