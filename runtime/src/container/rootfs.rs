//! Access to a container's root filesystem from the engine, for `export` and the archive API
//! (`docker cp`): the running container's root through `/proc/<pid>/root`, or a stopped one's
//! overlay mounted for the occasion. Paths inside are resolved with the container's symlinks
//! kept inside its root.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

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
        fs::create_dir_all(at)?;
        let lower: Vec<String> = overlay.lower.iter().map(|p| p.display().to_string()).collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            overlay.upper.display(),
            overlay.work.display()
        );
        mount(Some("overlay"), at, Some("overlay"), MsFlags::empty(), Some(data.as_str())).map_err(io::Error::from)?;
        Ok(RootView { root: at.to_owned(), mounted: true })
    }

    /// Resolves `path` (absolute, as the container sees it) inside the root.
    pub fn resolve(&self, path: &str, follow_last: bool) -> io::Result<PathBuf> {
        unpack::resolve_in_root(&self.root, &unpack::path_parts(path), follow_last).map_err(io::Error::other)
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
    let resolved = view.resolve(path, false)?;
    let meta = fs::symlink_metadata(&resolved)?;
    let link_target =
        if meta.file_type().is_symlink() { fs::read_link(&resolved)?.display().to_string() } else { String::new() };
    let mtime =
        time::OffsetDateTime::from_unix_timestamp(meta.mtime()).map(crate::model::format_time).unwrap_or_default();
    let name = Path::new(path).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "/".into());
    Ok(PathStat { name, size: meta.len() as i64, mode: go_file_mode(&meta), mtime, link_target })
}

/// Writes a tar of `path` (named by its base name) into `out`. With `one_fs`, directories on
/// other file systems (mount points: /proc, volumes) are written empty.
pub fn tar_path(view: &RootView, path: &str, out: impl Write, one_fs: bool) -> io::Result<()> {
    let resolved = view.resolve(path, false)?;
    let base = if path.trim_end_matches('/').is_empty() || path == "/" {
        PathBuf::new()
    } else {
        PathBuf::from(Path::new(path.trim_end_matches('/')).file_name().unwrap_or_default())
    };
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let root_dev = fs::symlink_metadata(&resolved)?.dev();
    if !base.as_os_str().is_empty() {
        tar.append_path_with_name(&resolved, &base)?;
    }
    if fs::symlink_metadata(&resolved)?.is_dir() {
        let mut stack = vec![(resolved.clone(), base.clone())];
        while let Some((dir, name)) = stack.pop() {
            let mut entries: Vec<_> = fs::read_dir(&dir)?.flatten().collect();
            entries.sort_by_key(|e| e.file_name());
            for e in entries {
                let child_name = name.join(e.file_name());
                let meta = fs::symlink_metadata(e.path())?;
                tar.append_path_with_name(e.path(), &child_name)?;
                if meta.is_dir() && (!one_fs || meta.dev() == root_dev) {
                    stack.push((e.path(), child_name));
                }
            }
        }
    }
    tar.finish()
}

/// Extracts the tar `body` into directory `path` of the container (which must exist).
pub fn untar_into(view: &RootView, path: &str, body: &mut dyn io::Read) -> Result<(), String> {
    let target = view.resolve(path, true).map_err(|e| e.to_string())?;
    if !target.is_dir() {
        return Err(format!("Could not find the file {path} in container"));
    }
    unpack::apply_tar(body, &target, Whiteouts::Plain).map_err(|e| e.to_string())
}
