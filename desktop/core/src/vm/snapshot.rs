//! The boot snapshot: a VM's state saved once, at the point where the guest's kernel and init
//! are up and no disk is mounted (init holds there, `berth.hold=1`), and every later start
//! restored from it instead of booting. Measured under TCG here (docs/architecture.md, "Start
//! time"): a restore to an answering agent takes 0.65 s (median) where a boot takes 3.4 s.
//!
//! - **Saved** on a start that finds no usable snapshot: when init says it holds, QMP `stop`,
//!   then `migrate` to a unix socket the daemon listens on and copies into `boot.snapshot`
//!   (the daemon does the file's I/O, so no shell and no quoting of the path). Then `cont`.
//! - **Restored** by starting QEMU with the same arguments and `-incoming defer`, then QMP
//!   `migrate-incoming` on a unix socket the daemon feeds from the file, then `cont`.
//! - **Either way**, the guest goes on only when the host says so on the `berth.init` port
//!   ([`go`]): the word carries the host's clock and 32 random bytes, since every restored
//!   guest wakes with the snapshot's clock and random state.
//! - **Never a stale one**: the snapshot is used only when its key matches: QEMU's whole
//!   command line, the size and modification time of QEMU's program, the kernel and the
//!   initramfs, and the data disk's virtual size ([`key`]). A restore that fails removes the
//!   snapshot, and the start boots instead (and saves a new one).
//! - The memory shared with the file server (`ivshmem-plain` on a shared file) is in the
//!   snapshot (mostly zero pages, which cost nothing), and a restore writes it back: the
//!   daemon stamps its token there again afterwards. Leaving it out (`x-ignore-shared`) does
//!   not work for a PCI device's memory: QEMU checks that each block left out is at the
//!   guest address it had, and a restored device's BAR is not mapped yet ("Mismatched GPAs").
//! - Not where the guest's RAM is shared with a vhost-user device (hybrid vsock), which
//!   QEMU does not migrate ([`usable_for`]).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::qmp::{Qmp, QmpError};

/// The snapshot's file in the VM's directory.
pub const FILE: &str = "boot.snapshot";
/// The key the snapshot was saved under, beside it.
const KEY: &str = "boot.snapshot.key";
/// The socket QEMU's migration stream goes through.
const STREAM: &str = "migrate.sock";
/// The socket of the guest's `berth.init` port.
pub const INIT_PORT: &str = "init.sock";
/// The buffer the migration stream is copied through (tokio's default of 8 KiB made a
/// restore of 200 MB twice as long).
const COPY_BUFFER: usize = 1 << 20;
/// How long a save or a restore may take in all (a 2 GiB guest writes about 200 MB).
const DEADLINE: Duration = Duration::from_secs(120);

/// Errors saving or restoring a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("the snapshot's {what} ({path})")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU's migration {0}")]
    Migration(String),
}

/// Names `what` of the snapshot at `path` in an I/O error.
fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { what, path, source }
}

/// Whether a VM with this transport, these port forwards and extra arguments can have a
/// snapshot: not where the guest's RAM is shared (hybrid vsock), not with arguments the
/// manager does not know (the benchmarks' virtiofs device), and not on Windows (no unix
/// sockets for QEMU's migration there yet). `BERTH_SNAPSHOT=off` turns them off.
pub fn usable_for(transport: crate::transport::Kind, hostfwd: &[String], qemu_args: &[String]) -> bool {
    let off = std::env::var("BERTH_SNAPSHOT").is_ok_and(|v| matches!(v.as_str(), "off" | "0" | "no"));
    cfg!(unix) && !off && transport == crate::transport::Kind::Serial && hostfwd.is_empty() && qemu_args.is_empty()
}

/// The key of a VM started with `args` by the program `qemu`, from the files it reads
/// (`files`: the kernel and initramfs) and the data disk (`disk`, qcow2).
pub fn key(qemu: &Path, args: &[std::ffi::OsString], files: &[PathBuf], disk: &Path) -> String {
    let mut h = Sha256::new();
    h.update(b"berth boot snapshot 1\0");
    for a in args {
        h.update(a.as_encoded_bytes());
        h.update(b"\0");
    }
    for f in std::iter::once(&qemu.to_path_buf()).chain(files) {
        h.update(f.as_os_str().as_encoded_bytes());
        match std::fs::metadata(f) {
            Ok(m) => {
                let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                h.update(format!("\0{} {:?}\0", m.len(), mtime).as_bytes());
            }
            Err(_) => h.update(b"\0missing\0"),
        }
    }
    h.update(format!("disk {:?}", qcow2_size(disk)).as_bytes());
    hex::encode(h.finalize())
}

/// A qcow2 image's virtual size, from its header (a big-endian u64 at byte 24).
fn qcow2_size(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut head = [0u8; 32];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    (head[..4] == *b"QFI\xfb").then(|| u64::from_be_bytes(head[24..32].try_into().expect("8 bytes")))
}

/// The snapshot in `dir` when it was saved under `key`.
pub fn find(dir: &Path, key: &str) -> Option<PathBuf> {
    let saved = std::fs::read_to_string(dir.join(KEY)).ok()?;
    let file = dir.join(FILE);
    (saved.trim() == key && file.is_file()).then_some(file)
}

/// Removes the snapshot in `dir` (one that failed to restore, or a stale one).
pub fn remove(dir: &Path) {
    for f in [KEY, FILE] {
        let _ = std::fs::remove_file(dir.join(f));
    }
}

/// Saves the stopped-at-hold VM whose monitor is `qmp_path` into `dir` under `key`, and lets it
/// run again. Returns the snapshot's size.
pub async fn save(qmp_path: &Path, dir: &Path, key: &str) -> Result<u64, SnapshotError> {
    let qmp = Qmp::connect(qmp_path).await?;
    qmp.stop().await?;
    let saved = tokio::time::timeout(DEADLINE, save_stopped(&qmp, dir, key)).await;
    // Whatever became of the save, the guest goes on.
    let resumed = qmp.cont().await;
    let size = saved.map_err(|_| SnapshotError::Migration(format!("took over {} s", DEADLINE.as_secs())))??;
    resumed?;
    Ok(size)
}

async fn save_stopped(qmp: &Qmp, dir: &Path, key: &str) -> Result<u64, SnapshotError> {
    remove(dir);
    let stream = dir.join(STREAM);
    let _ = std::fs::remove_file(&stream);
    let mut listener = crate::local::Listener::bind(&stream).await.map_err(io_error("socket", &stream))?;
    qmp.migrate_to(&format!("unix:{}", stream.display())).await?;
    let from = listener.accept().await.map_err(io_error("socket", &stream))?;
    let _ = std::fs::remove_file(&stream);
    let part = dir.join(format!("{FILE}.part"));
    let mut file = tokio::fs::File::create(&part).await.map_err(io_error("file", &part))?;
    let mut from = tokio::io::BufReader::with_capacity(COPY_BUFFER, from);
    let size = tokio::io::copy_buf(&mut from, &mut file).await.map_err(io_error("file", &part))?;
    file.sync_all().await.map_err(io_error("file", &part))?;
    drop(file);
    // QEMU may close the stream a moment before it calls the migration done.
    let mut status = qmp.migration_status().await?;
    let start = Instant::now();
    while !matches!(status.as_str(), "completed" | "failed" | "cancelled") && start.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = qmp.migration_status().await?;
    }
    if status != "completed" {
        let _ = std::fs::remove_file(&part);
        return Err(SnapshotError::Migration(format!("ended {status}")));
    }
    let file = dir.join(FILE);
    std::fs::rename(&part, &file).map_err(io_error("file", &file))?;
    // The key last: a snapshot without its key is never used.
    let key_path = dir.join(KEY);
    std::fs::write(&key_path, key).map_err(io_error("key", &key_path))?;
    Ok(size)
}

/// Restores `snapshot` into the QEMU whose monitor is `qmp_path`, started with `-incoming
/// defer`, and lets it run.
pub async fn restore(qmp_path: &Path, dir: &Path, snapshot: &Path) -> Result<(), SnapshotError> {
    let qmp = Qmp::connect(qmp_path).await?;
    tokio::time::timeout(DEADLINE, restore_into(&qmp, dir, snapshot))
        .await
        .map_err(|_| SnapshotError::Migration(format!("restore took over {} s", DEADLINE.as_secs())))??;
    qmp.cont().await?;
    Ok(())
}

async fn restore_into(qmp: &Qmp, dir: &Path, snapshot: &Path) -> Result<(), SnapshotError> {
    let stream = dir.join(STREAM);
    let _ = std::fs::remove_file(&stream);
    qmp.migrate_incoming(&format!("unix:{}", stream.display())).await?;
    let mut to = crate::local::connect_unix(&stream).await.map_err(io_error("socket", &stream))?;
    let file = tokio::fs::File::open(snapshot).await.map_err(io_error("file", snapshot))?;
    let mut file = tokio::io::BufReader::with_capacity(COPY_BUFFER, file);
    tokio::io::copy_buf(&mut file, &mut to).await.map_err(io_error("socket", &stream))?;
    let _ = to.shutdown().await;
    let _ = std::fs::remove_file(&stream);
    let start = Instant::now();
    loop {
        let status = qmp.status().await?;
        match status.state.as_str() {
            "inmigrate" if start.elapsed() < DEADLINE => tokio::time::sleep(Duration::from_millis(5)).await,
            "paused" | "postmigrate" | "prelaunch" => return Ok(()),
            other => return Err(SnapshotError::Migration(format!("left the VM {other}"))),
        }
    }
}

/// The host's word to a held guest: its clock and 32 random bytes (the guest reads it with
/// `parse_go` in guest-agent/src/init.rs).
pub fn word() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed: [u8; 32] = rand::random();
    format!("go {nanos} {}\n", hex::encode(seed))
}

/// Tells the guest held at the `berth.init` port (`port`, QEMU's socket) to go on. The
/// connection is returned: kept open until the guest has read the word.
pub async fn go(port: &Path) -> std::io::Result<crate::local::UnixClient> {
    let mut s = crate::local::connect_unix(port).await?;
    s.write_all(word().as_bytes()).await?;
    s.flush().await?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_command_line_the_files_and_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, disk) = (dir.path().join("vmlinuz"), dir.path().join("data.qcow2"));
        std::fs::write(&kernel, b"kernel").unwrap();
        let mut header = b"QFI\xfb".to_vec();
        header.resize(24, 0);
        header.extend((1u64 << 30).to_be_bytes());
        std::fs::write(&disk, &header).unwrap();
        let qemu = Path::new("/bin/sh");
        let args: Vec<std::ffi::OsString> = ["-m", "2048M"].map(Into::into).to_vec();
        let k = key(qemu, &args, std::slice::from_ref(&kernel), &disk);
        assert_eq!(k, key(qemu, &args, std::slice::from_ref(&kernel), &disk), "the same VM");
        let more: Vec<std::ffi::OsString> = ["-m", "4096M"].map(Into::into).to_vec();
        assert_ne!(k, key(qemu, &more, std::slice::from_ref(&kernel), &disk), "another memory size");
        std::fs::write(&kernel, b"another kernel").unwrap();
        let k2 = key(qemu, &args, std::slice::from_ref(&kernel), &disk);
        assert_ne!(k, k2, "a rebuilt kernel");
        header.truncate(24);
        header.extend((2u64 << 30).to_be_bytes());
        std::fs::write(&disk, &header).unwrap();
        assert_ne!(k2, key(qemu, &args, std::slice::from_ref(&kernel), &disk), "a resized disk");
        assert_eq!(qcow2_size(&disk), Some(2 << 30));
    }

    #[test]
    fn a_snapshot_is_found_only_under_its_key() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find(dir.path(), "k"), None);
        std::fs::write(dir.path().join(FILE), b"state").unwrap();
        assert_eq!(find(dir.path(), "k"), None, "no key: a save that did not finish");
        std::fs::write(dir.path().join(KEY), "k").unwrap();
        assert_eq!(find(dir.path(), "k"), Some(dir.path().join(FILE)));
        assert_eq!(find(dir.path(), "other"), None);
        remove(dir.path());
        assert!(!dir.path().join(FILE).exists() && !dir.path().join(KEY).exists());
    }

    #[test]
    fn the_word_carries_the_clock_and_a_fresh_seed() {
        let (a, b) = (word(), word());
        let w: Vec<&str> = a.split_whitespace().collect();
        assert_eq!((w.len(), w[0], w[2].len()), (3, "go", 64));
        let nanos: u128 = w[1].parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        assert!(now - nanos < 5_000_000_000);
        assert_ne!(a.split_whitespace().nth(2), b.split_whitespace().nth(2));
        assert!(a.ends_with('\n'));
    }
}
