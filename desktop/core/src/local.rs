//! Endpoints between processes on this machine, with one API on every host.
//!
//! - [`connect_unix`]: a client of a unix socket someone else serves: QEMU's monitors (QMP)
//!   and the host end of the serial port, the hybrid vsock device. On Unix it is tokio's
//!   `UnixStream`. Windows has AF_UNIX sockets too (since Windows 10 1803, and QEMU serves
//!   them there since 7.1), protected by the ACL of the folder they are in, but tokio does not
//!   drive them; so there a blocking socket (`uds_windows`) is [`bridge`]d to an in-process
//!   async stream by two threads, one per direction. A monitor or serial connection is one per
//!   VM at a time, so two threads each are cheap.
//! - [`Listener`]: what the daemon serves to clients on this machine (`docker.sock`,
//!   `control.sock`). On Unix a socket file, mode 0600 from the moment it exists; on Windows a
//!   named pipe (`\\.\pipe\docker_engine`, as Docker Desktop's), whose default security lets
//!   only its creator, administrators and SYSTEM write to it.
//! - [`connect`]: a client of a [`Listener`] (`berth status`, `berth start`'s ping).

use std::io;
use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite};

/// A stream to a local endpoint.
pub trait LocalIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> LocalIo for T {}

/// A client's stream to a unix socket served by another program.
#[cfg(unix)]
pub type UnixClient = tokio::net::UnixStream;
/// A client's stream to a unix socket served by another program (the near end of a
/// [`bridge`]).
#[cfg(not(unix))]
pub type UnixClient = tokio::io::DuplexStream;

/// Connects to the unix socket at `path`.
#[cfg(unix)]
pub async fn connect_unix(path: &Path) -> io::Result<UnixClient> {
    tokio::net::UnixStream::connect(path).await
}

/// Connects to the unix socket at `path`.
#[cfg(windows)]
pub async fn connect_unix(path: &Path) -> io::Result<UnixClient> {
    let path = path.to_owned();
    let socket = tokio::task::spawn_blocking(move || uds_windows::UnixStream::connect(path))
        .await
        .map_err(io::Error::other)??;
    let reader = socket.try_clone()?;
    let shut = socket.try_clone()?;
    Ok(bridge(reader, socket, move || {
        let _ = shut.shutdown(std::net::Shutdown::Both);
    }))
}

/// How much one direction of a [`bridge`] holds in flight.
const BRIDGE_BUFFER: usize = 64 * 1024;

/// An async stream whose far end is a blocking stream (`reader` and `writer`, two handles of
/// one socket), copied by two threads. The reading thread ends at the socket's end of input,
/// passing it on as a write shutdown; the writing thread ends when the async side is dropped
/// or shut down, and then calls `close` (a shutdown of the socket both ways), which also ends
/// a read that would otherwise wait for ever. Must be called within a tokio runtime.
pub fn bridge<R, W>(mut reader: R, mut writer: W, close: impl FnOnce() + Send + 'static) -> tokio::io::DuplexStream
where
    R: io::Read + Send + 'static,
    W: io::Write + Send + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (near, far) = tokio::io::duplex(BRIDGE_BUFFER);
    let (mut far_rd, mut far_wr) = tokio::io::split(far);
    let runtime = tokio::runtime::Handle::current();
    let rt = runtime.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; BRIDGE_BUFFER];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if rt.block_on(far_wr.write_all(&buf[..n])).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = rt.block_on(far_wr.shutdown());
    });
    std::thread::spawn(move || {
        let mut buf = vec![0u8; BRIDGE_BUFFER];
        loop {
            match runtime.block_on(far_rd.read(&mut buf)) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer.write_all(&buf[..n]).and_then(|()| writer.flush()).is_err() {
                        break;
                    }
                }
            }
        }
        close();
    });
    near
}

/// A listener for clients on this machine (see the module's text).
#[derive(Debug)]
pub struct Listener {
    #[cfg(unix)]
    inner: tokio::net::UnixListener,
    #[cfg(windows)]
    name: std::ffi::OsString,
    /// The pipe instance the next client connects to.
    #[cfg(windows)]
    next: tokio::net::windows::named_pipe::NamedPipeServer,
}

impl Listener {
    /// Binds `path` (mode 0600), replacing a stale socket; a live one is an error.
    #[cfg(unix)]
    pub async fn bind(path: &Path) -> io::Result<Listener> {
        use std::os::unix::fs::PermissionsExt;
        if path.exists() {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(in_use(path));
            }
            std::fs::remove_file(path)?;
        }
        // Created with no permissions for others at all, so there is no moment it is open to them.
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let inner = tokio::net::UnixListener::bind(path);
        nix::sys::stat::umask(old);
        let inner = inner?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Listener { inner })
    }

    /// Creates the named pipe `path` (`\\.\pipe\NAME`); one that another server holds is an
    /// error.
    #[cfg(windows)]
    pub async fn bind(path: &Path) -> io::Result<Listener> {
        use tokio::net::windows::named_pipe::{ClientOptions, ServerOptions};
        // A pipe someone serves: a client gets in, or finds every instance busy. (Windows
        // also refuses a first instance of a served pipe below; Wine does not.)
        match ClientOptions::new().open(path.as_os_str()) {
            Ok(_) => return Err(in_use(path)),
            Err(e) if e.raw_os_error() == Some(PIPE_BUSY) => return Err(in_use(path)),
            Err(_) => {}
        }
        let name = path.as_os_str().to_owned();
        let next = ServerOptions::new()
            .first_pipe_instance(true)
            .reject_remote_clients(true)
            .create(&name)
            .map_err(|e| if e.kind() == io::ErrorKind::PermissionDenied { in_use(path) } else { e })?;
        Ok(Listener { name, next })
    }

    /// The next client.
    #[cfg(unix)]
    pub async fn accept(&mut self) -> io::Result<Box<dyn LocalIo>> {
        let (stream, _) = self.inner.accept().await?;
        Ok(Box::new(stream))
    }

    /// The next client.
    #[cfg(windows)]
    pub async fn accept(&mut self) -> io::Result<Box<dyn LocalIo>> {
        use tokio::net::windows::named_pipe::ServerOptions;
        self.next.connect().await?;
        // A new instance for the next client before this one is handed over.
        let fresh = ServerOptions::new().reject_remote_clients(true).create(&self.name)?;
        Ok(Box::new(std::mem::replace(&mut self.next, fresh)))
    }
}

/// ERROR_PIPE_BUSY: every instance of a served pipe has a client.
#[cfg(windows)]
const PIPE_BUSY: i32 = 231;

fn in_use(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::AddrInUse, format!("{} is in use by another server", path.display()))
}

/// Connects to a [`Listener`] at `path`.
#[cfg(unix)]
pub async fn connect(path: &Path) -> io::Result<Box<dyn LocalIo>> {
    Ok(Box::new(tokio::net::UnixStream::connect(path).await?))
}

/// Connects to a [`Listener`] at `path`, waiting while every instance of the pipe is busy.
#[cfg(windows)]
pub async fn connect(path: &Path) -> io::Result<Box<dyn LocalIo>> {
    use tokio::net::windows::named_pipe::ClientOptions;
    // The server has not made the next instance yet.
    let start = std::time::Instant::now();
    loop {
        match ClientOptions::new().open(path.as_os_str()) {
            Ok(client) => return Ok(Box::new(client)),
            Err(e) if e.raw_os_error() == Some(PIPE_BUSY) && start.elapsed() < std::time::Duration::from_secs(5) => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The bridge that Windows puts between tokio and a blocking AF_UNIX socket, tested here
    /// over a blocking socket pair: data both ways, each end of input passed on, and both
    /// threads gone once the async side is dropped (the close runs).
    #[cfg(unix)]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bridged_blocking_socket_carries_both_ways_and_ends() {
        use std::io::{Read, Write};
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let (closed_tx, closed_rx) = std::sync::mpsc::channel();
        let shut = ours.try_clone().unwrap();
        let mut near = bridge(ours.try_clone().unwrap(), ours, move || {
            let _ = shut.shutdown(std::net::Shutdown::Both);
            let _ = closed_tx.send(());
        });
        // 1 MiB towards the blocking side, more than both buffers hold.
        let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let far = std::thread::spawn(move || {
            let mut got = vec![0u8; 1 << 20];
            theirs.read_exact(&mut got).unwrap();
            theirs.write_all(b"answer").unwrap();
            theirs.shutdown(std::net::Shutdown::Write).unwrap();
            (got, theirs)
        });
        near.write_all(&payload).await.unwrap();
        let mut answer = Vec::new();
        near.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer", "the far side's data and its end of input");
        let (got, mut theirs) = far.join().unwrap();
        assert!(got == payload, "the near side's data arrived whole");
        drop(near);
        closed_rx.recv_timeout(std::time::Duration::from_secs(5)).expect("the bridge's close ran");
        let mut rest = Vec::new();
        assert_eq!(theirs.read_to_end(&mut rest).unwrap(), 0, "the socket was shut down");
    }

    #[tokio::test]
    async fn a_listener_serves_its_clients_and_refuses_a_second_server() {
        let dir = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        let path = dir.path().join("x.sock");
        #[cfg(windows)]
        let path = std::path::PathBuf::from(format!(r"\\.\pipe\berth-test-{}", std::process::id()));
        let _ = &dir;
        let mut listener = Listener::bind(&path).await.unwrap();
        let err = Listener::bind(&path).await.expect_err("a second server on a live endpoint");
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        let server = tokio::spawn(async move {
            // The second bind's probe of the live socket is a client too, one that says nothing.
            let mut served = 0;
            while served < 2 {
                let mut s = listener.accept().await.unwrap();
                let mut buf = [0u8; 5];
                if s.read_exact(&mut buf).await.is_ok() {
                    s.write_all(&buf).await.unwrap();
                    served += 1;
                }
            }
        });
        for word in [b"hello", b"again"] {
            let mut c = connect(&path).await.unwrap();
            c.write_all(word).await.unwrap();
            let mut back = [0u8; 5];
            c.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, word);
        }
        server.await.unwrap();
    }
}
