//! A virtio-serial port as a non-blocking tokio stream, found by the name the host gave it
//! (`-device virtserialport,name=berth.0`).
//!
//! The guest has no udev, so `/dev/virtio-ports/NAME` does not exist: the name is read from
//! sysfs (`/sys/class/virtio-ports/vportNpM/name`) and the device is `/dev/vportNpM`
//! (devtmpfs makes it). The port reads as end of file while no host is connected; the caller
//! retries.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use anyhow::bail;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The device of the virtio-serial port called `name`.
pub fn find(name: &str) -> anyhow::Result<PathBuf> {
    find_in(Path::new("/sys/class/virtio-ports"), Path::new("/dev"), name)
}

fn find_in(sysfs: &Path, dev: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let mut seen = Vec::new();
    for entry in
        std::fs::read_dir(sysfs).map_err(|e| anyhow::anyhow!("{}: {e} (no virtio-serial ports)", sysfs.display()))?
    {
        let entry = entry?;
        let port_name = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
        if port_name.trim() == name {
            return Ok(dev.join(entry.file_name()));
        }
        seen.push(port_name.trim().to_owned());
    }
    bail!("no virtio-serial port named {name} (ports: {seen:?})")
}

/// An open port.
pub struct SerialPort {
    fd: AsyncFd<File>,
}

impl SerialPort {
    pub fn open(path: &Path) -> io::Result<SerialPort> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY)
            .open(path)?;
        // SAFETY: the File owns its descriptor and lives inside the AsyncFd until it is dropped.
        let fd = unsafe { AsyncFd::register(file) }.map_err(|e| e.into_parts().1)?;
        Ok(SerialPort { fd })
    }
}

impl AsyncRead for SerialPort {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            match guard.try_io(|f| f.get_ref().read(buf.initialize_unfilled())) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for SerialPort {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| f.get_ref().write(data)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A port cannot be half-closed; the session's own framing says when a stream ends.
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_port_by_its_name() {
        let dir = tempfile::tempdir().unwrap();
        for (port, name) in [("vport0p1", "org.qemu.guest_agent.0"), ("vport1p1", "berth.0")] {
            std::fs::create_dir_all(dir.path().join(port)).unwrap();
            std::fs::write(dir.path().join(port).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(find_in(dir.path(), Path::new("/dev"), "berth.0").unwrap(), Path::new("/dev/vport1p1"));
        let err = find_in(dir.path(), Path::new("/dev"), "berth.9").unwrap_err().to_string();
        assert!(err.contains("no virtio-serial port named berth.9"), "{err}");
    }
}
