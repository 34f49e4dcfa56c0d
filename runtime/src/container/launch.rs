//! The agent's side of process creation: spawn the helper ([`super::shim`]) with the
//! container's stdio and the three protocol pipes, learn the pid, run the caller's setup
//! (cgroup, network), release the child, and learn whether its exec succeeded.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use nix::fcntl::OFlag;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::unix::pipe;

/// Errors creating a process.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("starting the container helper {path}")]
    Spawn {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container helper: {0}")]
    Helper(String),
    /// The child reported why it could not exec (dockerd's "OCI runtime create failed").
    #[error("failed to create task for container: OCI runtime create failed: {message}: unknown")]
    Start { message: String, missing_command: bool },
    /// The same for an exec (dockerd's "OCI runtime exec failed").
    #[error("OCI runtime exec failed: exec failed: {message}: unknown")]
    ExecStart { message: String, missing_command: bool },
    #[error("setting up the container process: {0}")]
    Setup(String),
    #[error("container I/O")]
    Io(#[from] io::Error),
}

/// How to run the helper: this program's path and the arguments that select shim mode.
#[derive(Debug, Clone)]
pub struct HelperCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// A pty master usable from async code; reads and writes may run in different tasks.
#[derive(Debug, Clone)]
pub struct Pty(Arc<AsyncFd<OwnedFd>>);

impl Pty {
    /// Sets the terminal size (rows, columns).
    pub fn resize(&self, rows: u16, cols: u16) -> io::Result<()> {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize we own from a valid pty master fd.
        let rc = unsafe { libc::ioctl(self.0.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

impl AsyncRead for Pty {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.0.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every slave fd is closed, the terminal's end of file.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.0.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The agent's ends of a process's stdio.
pub struct ProcessIo {
    pub stdin: Option<BoxWrite>,
    pub stdout: BoxRead,
    /// `None` with a tty (everything comes on `stdout`).
    pub stderr: Option<BoxRead>,
    pub pty: Option<Pty>,
}

/// A started process.
pub struct Launched {
    pub pid: i32,
    /// The helper; its exit status is the process's exit code.
    pub helper: tokio::process::Child,
    pub io: ProcessIo,
}

fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)
}

/// Duplicates `fd` to a number at or above 100, so dup2 onto 3..5 in the child cannot clobber
/// a source that happens to be numbered 3..5.
fn high(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100)).map_err(io::Error::from)?;
    // SAFETY: fcntl just returned this new descriptor, which nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// Spawns the helper in `mode` (`run`/`exec`) for `spec`, calls `setup(pid)` before the child
/// may proceed, and returns once the child has exec'd.
pub async fn launch<F, Fut>(
    helper: &HelperCommand,
    mode: &str,
    spec: &Path,
    tty: bool,
    open_stdin: bool,
    setup: F,
) -> Result<Launched, LaunchError>
where
    F: FnOnce(i32) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let (status_r, status_w) = pipe_pair()?;
    let (go_r, go_w) = pipe_pair()?;
    let (err_r, err_w) = pipe_pair()?;
    // With a TTY the child sends the pty master back over this socket (see the shim).
    let (console_agent, console_child) = if tty {
        let (a, c) = std::os::unix::net::UnixStream::pair()?;
        (Some(a), Some(OwnedFd::from(c)))
    } else {
        (None, None)
    };
    let mut child_fds: Vec<OwnedFd> = vec![high(&status_w)?, high(&go_r)?, high(&err_w)?];
    if let Some(c) = &console_child {
        child_fds.push(high(c)?);
    }
    drop((status_w, go_r, err_w, console_child));

    let mut cmd = tokio::process::Command::new(&helper.program);
    cmd.args(&helper.args).arg(mode).arg(spec).kill_on_drop(false);
    let mut io = if tty {
        cmd.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        None
    } else {
        let (out_r, out_w) = pipe_pair()?;
        let (err_pr, err_pw) = pipe_pair()?;
        cmd.stdout(out_w).stderr(err_pw);
        let stdin = if open_stdin {
            let (in_r, in_w) = pipe_pair()?;
            cmd.stdin(in_r);
            Some(Box::new(pipe::Sender::from_owned_fd(in_w)?) as BoxWrite)
        } else {
            cmd.stdin(std::process::Stdio::null());
            None
        };
        Some(ProcessIo {
            stdin,
            stdout: Box::new(pipe::Receiver::from_owned_fd(out_r)?),
            stderr: Some(Box::new(pipe::Receiver::from_owned_fd(err_pr)?)),
            pty: None,
        })
    };
    let raw: Vec<RawFd> = child_fds.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: the closure only calls dup2, which is async-signal-safe, on descriptors that
    // stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                let target = if i < 3 { 3 + i as i32 } else { 6 };
                if libc::dup2(*fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| LaunchError::Spawn { path: helper.program.clone(), source })?;
    drop(child_fds);
    drop(cmd);

    let mut helper_child = child;
    let mut status = String::new();
    pipe::Receiver::from_owned_fd(status_r)?.read_to_string(&mut status).await?;
    let pid = match status.trim().split_once(' ') {
        Some(("pid", n)) => n.parse::<i32>().map_err(|_| LaunchError::Helper(status.clone()))?,
        Some(("error", msg)) => {
            let _ = helper_child.wait().await;
            return Err(LaunchError::Helper(msg.to_owned()));
        }
        _ => {
            let st = helper_child.wait().await;
            return Err(LaunchError::Helper(format!("exited before reporting a pid ({st:?})")));
        }
    };
    let mut go = pipe::Sender::from_owned_fd(go_w)?;
    if let Err(msg) = setup(pid).await {
        drop(go);
        let _ = helper_child.wait().await;
        return Err(LaunchError::Setup(msg));
    }
    go.write_all(&[1]).await?;
    drop(go);
    if let Some(sock) = console_agent {
        let master = tokio::task::spawn_blocking(move || receive_fd(&sock)).await.map_err(io::Error::other)?;
        if let Ok(master) = master {
            nix::fcntl::fcntl(&master, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
            // SAFETY: the master fd is owned by the AsyncFd from here on and nothing else closes it.
            let registered = unsafe { AsyncFd::register(master) }.map_err(|e| io::Error::other(e.to_string()))?;
            let pty = Pty(Arc::new(registered));
            io = Some(ProcessIo {
                stdin: if open_stdin { Some(Box::new(pty.clone()) as BoxWrite) } else { None },
                stdout: Box::new(pty.clone()),
                stderr: None,
                pty: Some(pty),
            });
        }
    }
    let mut failure = Vec::new();
    pipe::Receiver::from_owned_fd(err_r)?.read_to_end(&mut failure).await?;
    if let Some((&kind, message)) = failure.split_first() {
        let _ = helper_child.wait().await;
        let message = String::from_utf8_lossy(message).into_owned();
        let missing_command = kind == super::shim::FAILURE_MISSING;
        return Err(if mode == "exec" {
            LaunchError::ExecStart { message, missing_command }
        } else {
            LaunchError::Start { message, missing_command }
        });
    }
    let io = io.ok_or_else(|| LaunchError::Helper("the container did not send its terminal".into()))?;
    Ok(Launched { pid, helper: helper_child, io })
}

/// Receives one file descriptor sent with SCM_RIGHTS.
fn receive_fd(sock: &std::os::unix::net::UnixStream) -> io::Result<OwnedFd> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::FromRawFd;
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(io::Error::from)?;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no terminal received"))
}

/// The exit code of a finished helper, as docker reports it.
pub fn exit_code(status: std::process::ExitStatus) -> i64 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c as i64,
        (None, Some(sig)) => 128 + sig as i64,
        _ => -1,
    }
}
