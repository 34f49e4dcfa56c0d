//! Snapshot store: unpacked layers and containers' writable layers, stacked with overlayfs.
//!
//! Vocabulary: a *committed* snapshot is one image layer unpacked into `layers/<chain>/fs`,
//! keyed by the layer's *chain ID* (the digest that names a layer together with every layer
//! below it, as the OCI image spec defines it), so images that share a base share its
//! snapshots. An *active* snapshot is a container's writable layer, `active/<key>/{upper,work}`.
//! A container's root filesystem is an overlay mount of the active snapshot's upper directory
//! over its image's committed snapshots, top first.
//!
//! A layer is unpacked into `staging/` and renamed into place when whole, so a committed
//! snapshot never holds half a layer, even after a crash.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Errors of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {0} not found")]
    NotFound(String),
    #[error("snapshot store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_owned(), source }
}

/// Chain IDs of a stack of layers given their diff IDs, bottom first.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => {
                format!("sha256:{}", hex::encode(Sha256::digest(format!("{parent} {diff}").as_bytes())))
            }
        };
        out.push(next);
    }
    out
}

fn key_of(chain_id: &str) -> &str {
    chain_id.strip_prefix("sha256:").unwrap_or(chain_id)
}

/// Overlay mount description of a container root.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OverlayMount {
    /// Read-only layers, top first.
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl OverlayMount {
    /// Mounts this overlay at `target` (made if missing). The one place the engine and the
    /// container shim mount overlays.
    ///
    /// Each directory is named to the kernel by a descriptor held open for the call
    /// (`/proc/self/fd/N`) rather than by its path: the options must fit in one page, which a
    /// hundred layers below a long store path overflow, and a store path holding `,` or `:`
    /// (the options' separators) would be misread. Linux 6.5's `lowerdir+` (one layer per
    /// `fsconfig` call) would lift the limit too, but the guest runs 6.1, and a `chdir` to the
    /// layers' parent (the usual way round) changes the directory of every thread of the
    /// engine.
    pub fn mount(&self, target: &Path) -> io::Result<()> {
        use nix::fcntl::{OFlag, open};
        use std::os::fd::{AsRawFd, OwnedFd};
        fs::create_dir_all(target)?;
        let hold = |p: &Path| -> io::Result<OwnedFd> {
            open(p, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
                .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("opening {}: {e}", p.display())))
        };
        let name = |fd: &OwnedFd| format!("/proc/self/fd/{}", fd.as_raw_fd());
        let lower = self.lower.iter().map(|p| hold(p)).collect::<io::Result<Vec<_>>>()?;
        let (upper, work) = (hold(&self.upper)?, hold(&self.work)?);
        let lower: Vec<String> = lower.iter().map(name).collect();
        let data = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), name(&upper), name(&work));
        nix::mount::mount(Some("overlay"), target, Some("overlay"), nix::mount::MsFlags::empty(), Some(data.as_str()))
            .map_err(|e| {
                io::Error::new(
                    io::Error::from(e).kind(),
                    format!("mounting the overlay of {} layers on {}: {e}", self.lower.len(), target.display()),
                )
            })
    }
}

/// The snapshot store rooted at one directory.
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    root: PathBuf,
}

impl SnapshotStore {
    pub fn open(root: &Path) -> Result<Self, SnapshotError> {
        let store = SnapshotStore { root: root.to_owned() };
        let staging = root.join("staging");
        let _ = fs::remove_dir_all(&staging);
        for d in ["layers", "active", "staging", "empty"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        Ok(store)
    }

    pub fn layer_dir(&self, chain_id: &str) -> PathBuf {
        self.root.join("layers").join(key_of(chain_id)).join("fs")
    }

    pub fn has_layer(&self, chain_id: &str) -> bool {
        self.layer_dir(chain_id).is_dir()
    }

    /// A fresh empty directory to unpack a layer into; pass it to [`Self::commit_layer`].
    pub fn stage(&self) -> Result<PathBuf, SnapshotError> {
        let p = self.root.join("staging").join(format!("{:016x}", rand::random::<u64>()));
        fs::create_dir_all(&p).map_err(io_err(&p))?;
        Ok(p)
    }

    /// Moves a staged directory into place as the layer `chain_id` and records its size.
    pub fn commit_layer(&self, chain_id: &str, staged: &Path) -> Result<u64, SnapshotError> {
        let dir = self.root.join("layers").join(key_of(chain_id));
        if self.has_layer(chain_id) {
            let _ = fs::remove_dir_all(staged);
            return Ok(self.layer_size(chain_id));
        }
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let size = disk_usage(staged);
        fs::write(dir.join("size"), size.to_string()).map_err(io_err(&dir))?;
        // Durable before it is in place: the layer's files, then the rename.
        sync_fs(staged).map_err(io_err(staged))?;
        fs::rename(staged, dir.join("fs")).map_err(io_err(&dir))?;
        fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err(&dir))?;
        Ok(size)
    }

    pub fn layer_size(&self, chain_id: &str) -> u64 {
        fs::read_to_string(self.root.join("layers").join(key_of(chain_id)).join("size"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn remove_layer(&self, chain_id: &str) -> Result<(), SnapshotError> {
        let dir = self.root.join("layers").join(key_of(chain_id));
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// Every committed layer's chain ID.
    pub fn layers(&self) -> Vec<String> {
        fs::read_dir(self.root.join("layers"))
            .map(|rd| rd.flatten().map(|e| format!("sha256:{}", e.file_name().to_string_lossy())).collect())
            .unwrap_or_default()
    }

    /// Creates (or reuses) the writable layer `key` over `chain` (bottom first).
    pub fn prepare(&self, key: &str, chain: &[String]) -> Result<OverlayMount, SnapshotError> {
        let mut lower = Vec::with_capacity(chain.len());
        for id in chain.iter().rev() {
            let d = self.layer_dir(id);
            if !d.is_dir() {
                return Err(SnapshotError::NotFound(id.clone()));
            }
            lower.push(d);
        }
        if lower.is_empty() {
            lower.push(self.root.join("empty"));
        }
        let base = self.root.join("active").join(key);
        let upper = base.join("upper");
        let work = base.join("work");
        for d in [&upper, &work] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        lower.insert(0, init_layer(&base)?);
        Ok(OverlayMount { lower, upper, work })
    }

    /// Where a snapshot's files are, as inspect's `GraphDriver.Data` shows them: an image's
    /// top layer (`UpperDir`) over the rest (`LowerDir`, top first, `:`-separated), or a
    /// container's writable layer and its work directory over its init layer and image
    /// (`key`). No `MergedDir`: a container's root is mounted in its own mount namespace only.
    pub fn graph_data(&self, key: Option<&str>, chain: &[String]) -> std::collections::BTreeMap<String, String> {
        let text = |p: &Path| p.display().to_string();
        let mut lower: Vec<String> = chain.iter().rev().map(|id| text(&self.layer_dir(id))).collect();
        let mut out = std::collections::BTreeMap::new();
        match key {
            Some(key) => {
                let base = self.root.join("active").join(key);
                lower.insert(0, text(&base.join("init")));
                out.insert("UpperDir".to_owned(), text(&base.join("upper")));
                out.insert("WorkDir".to_owned(), text(&base.join("work")));
            }
            None if !lower.is_empty() => {
                out.insert("UpperDir".to_owned(), lower.remove(0));
            }
            None => {}
        }
        if !lower.is_empty() {
            out.insert("LowerDir".to_owned(), lower.join(":"));
        }
        out
    }

    pub fn active_upper(&self, key: &str) -> PathBuf {
        self.root.join("active").join(key).join("upper")
    }

    pub fn remove_active(&self, key: &str) -> Result<(), SnapshotError> {
        let dir = self.root.join("active").join(key);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&dir)(e)),
            _ => Ok(()),
        }
    }
}

/// What the engine mounts over or a container expects at its root, made in a layer of the
/// container's own between its image and its writable layer (dockerd's "init layer"), so the
/// mount points are not the container's changes: `docker diff`, `commit` and a build's layers
/// leave them out, as dockerd's do. Made once per container, whole or not at all (a crash
/// while making it leaves a `.new` directory that the next call makes again).
fn init_layer(base: &Path) -> Result<PathBuf, SnapshotError> {
    let init = base.join("init");
    if init.is_dir() {
        return Ok(init);
    }
    let new = base.join("init.new");
    let _ = fs::remove_dir_all(&new);
    let make = || -> io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        for d in ["", "dev", "dev/pts", "dev/shm", "proc", "sys", "etc"] {
            fs::DirBuilder::new().mode(0o755).create(new.join(d))?;
        }
        // Files dockerd makes there, with its mode; all but `/.dockerenv` (which tools read
        // to tell they run in a container) are mount points.
        for f in [".dockerenv", "etc/hosts", "etc/hostname", "etc/resolv.conf", "dev/console"] {
            fs::OpenOptions::new().write(true).create_new(true).mode(0o755).open(new.join(f))?;
        }
        std::os::unix::fs::symlink("/proc/mounts", new.join("etc/mtab"))?;
        sync_tree(&new);
        fs::rename(&new, &init)
    };
    make().map_err(io_err(&init))?;
    Ok(init)
}

/// Bytes used by the files below `path` (apparent sizes, hard links counted once per name).
pub fn disk_usage(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = fs::read_dir(&p) else { continue };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// Makes everything written to the file system that holds `path` durable: `syncfs(2)`, one
/// call for a whole unpacked layer. Fsyncing each of its files and directories instead cost
/// a journal commit apiece: 1.1 s of a 3 s pull of a Debian base image (6,800 entries) here.
pub fn sync_fs(path: &Path) -> io::Result<()> {
    let f = fs::File::open(path)?;
    nix::unistd::syncfs(&f).map_err(io::Error::from)
}

/// fsyncs every file and directory below `path` (for small trees, where flushing the whole
/// file system would cost more).
pub fn sync_tree(path: &Path) {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        if let Ok(rd) = fs::read_dir(&p) {
            for e in rd.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => {
                        if let Ok(f) = fs::File::open(e.path()) {
                            let _ = f.sync_all();
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Ok(f) = fs::File::open(&p) {
            let _ = f.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(b"sha256:aaaa sha256:bbbb")));
        assert_eq!(ids[1], want);
    }

    #[test]
    fn stage_commit_prepare() {
        let dir = tempfile::tempdir().unwrap();
        let s = SnapshotStore::open(dir.path()).unwrap();
        let st = s.stage().unwrap();
        fs::write(st.join("f"), b"12345").unwrap();
        assert_eq!(s.commit_layer("sha256:abc", &st).unwrap(), 5);
        assert!(s.has_layer("sha256:abc"));
        let m = s.prepare("c1", &["sha256:abc".into()]).unwrap();
        let init = m.upper.parent().unwrap().join("init");
        assert_eq!(m.lower, vec![init.clone(), s.layer_dir("sha256:abc")]);
        assert!(m.upper.is_dir());
        // The container's own layer of mount points, made once.
        assert!(init.join("etc/resolv.conf").is_file() && init.join("proc").is_dir());
        assert_eq!(fs::read_link(init.join("etc/mtab")).unwrap(), Path::new("/proc/mounts"));
        assert_eq!(s.prepare("c1", &["sha256:abc".into()]).unwrap().lower, m.lower);
        assert!(matches!(s.prepare("c2", &["sha256:nope".into()]), Err(SnapshotError::NotFound(_))));
    }
}
