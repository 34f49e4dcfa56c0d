//! Space freed on the data disk goes back to the user's machine: a short while after the
//! engine deletes images, volumes or containers (or prunes), the data file system is trimmed
//! (`FITRIM`), the virtio disk passes the discards to QEMU (`discard=unmap`), and QEMU punches
//! the freed clusters out of the qcow2 file, which shrinks. One trim follows a burst of
//! deletions; nothing runs while nothing is deleted (an idle VM is not woken for it).
//!
//! Why not the `discard` mount option: it discards inside every deletion's journal commit,
//! which slows an `rm -rf` of a large image, where one trim afterwards costs the same once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_runtime::Engine;
use tokio::sync::broadcast::error::RecvError;

/// How long after the last deletion of a burst the trim runs.
const SETTLE: Duration = Duration::from_secs(2);

/// The kernel's `struct fstrim_range` (linux/fs.h).
#[repr(C)]
struct FstrimRange {
    start: u64,
    len: u64,
    minlen: u64,
}

nix::ioctl_readwrite!(fitrim, b'X', 121, FstrimRange);

/// Trims the file system mounted at `mount`; returns the bytes the kernel discarded.
pub fn trim(mount: &Path) -> std::io::Result<u64> {
    let dir = std::fs::File::open(mount)?;
    let mut range = FstrimRange { start: 0, len: u64::MAX, minlen: 0 };
    // SAFETY: FITRIM reads and writes the fstrim_range we pass, on a descriptor we hold.
    unsafe { fitrim(std::os::fd::AsRawFd::as_raw_fd(&dir), &mut range) }.map_err(std::io::Error::from)?;
    Ok(range.len)
}

/// Whether an engine event freed space on the data disk.
fn frees(kind: &str, action: &str) -> bool {
    matches!((kind, action), ("image", "delete") | ("volume", "destroy") | ("container", "destroy"))
        || action == "prune"
}

/// Trims `mount` once now (space a crash left freed) and after each burst of deletions.
pub fn spawn(engine: Engine, mount: PathBuf) {
    tokio::spawn(async move {
        let (_, mut events) = engine.events().subscribe(None);
        let mut due = true;
        loop {
            if due {
                let m = mount.clone();
                match tokio::task::spawn_blocking(move || trim(&m)).await {
                    Ok(Ok(bytes)) => tracing::info!(bytes, mount = %mount.display(), "trimmed the data disk"),
                    // A tmpfs (no data disk) has nothing to give back.
                    Ok(Err(e)) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        tracing::info!(mount = %mount.display(), "the data file system cannot be trimmed");
                        return;
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, mount = %mount.display(), "trimming the data disk"),
                    Err(e) => tracing::warn!(error = %e, "trimming the data disk"),
                }
            }
            due = match events.recv().await {
                Ok(ev) => frees(ev.kind, &ev.action),
                Err(RecvError::Lagged(_)) => true,
                Err(RecvError::Closed) => return,
            };
            // Let the burst finish: each further event pushes the trim back.
            if due {
                loop {
                    match tokio::time::timeout(SETTLE, events.recv()).await {
                        Err(_) => break,
                        Ok(Err(RecvError::Closed)) => return,
                        Ok(_) => {}
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn deletions_are_what_frees_space() {
        assert!(super::frees("image", "delete") && super::frees("volume", "destroy"));
        assert!(super::frees("container", "destroy") && super::frees("builder", "prune"));
        assert!(!super::frees("container", "start") && !super::frees("image", "pull"));
    }
}
