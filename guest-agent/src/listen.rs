//! Listeners the agent serves on: `unix:///path` (mode 0600), `vsock://:PORT`, and, for
//! multiplexed sessions only, `serial://NAME` (a virtio-serial port, found by its name).
//!
//! What runs on a connection is decided by the caller (Docker API, control, echo), or, inside a
//! multiplexed session, by the port each stream asks for ([`Services::handle`]).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use berth_protocol::{CONTROL_PORT, DOCKER_PORT, ECHO_PORT, FORWARD_PORT, PORTS_PORT, SHARES_PORT};
use berth_runtime::Engine;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A parsed listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Vsock(u32),
    /// A virtio-serial port by name (`serial://berth.0`).
    Serial(String),
}

pub fn parse(s: &str) -> anyhow::Result<ListenAddr> {
    if let Some(path) = s.strip_prefix("unix://") {
        if !path.starts_with('/') {
            bail!("{s}: a unix socket path must be absolute (unix:///path)");
        }
        Ok(ListenAddr::Unix(PathBuf::from(path)))
    } else if let Some(rest) = s.strip_prefix("vsock://") {
        let port =
            rest.trim_start_matches(':').parse::<u32>().with_context(|| format!("{s}: expected vsock://:PORT"))?;
        Ok(ListenAddr::Vsock(port))
    } else if let Some(name) = s.strip_prefix("serial://")
        && !name.is_empty()
        && !name.contains('/')
    {
        Ok(ListenAddr::Serial(name.to_owned()))
    } else {
        bail!("{s}: expected unix:///PATH, vsock://:PORT or serial://NAME")
    }
}

/// Any stream a listener yields.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// A bound listener, ready to serve.
pub enum Bound {
    Unix(tokio::net::UnixListener, PathBuf),
    Vsock(tokio_vsock::VsockListener),
    Serial(PathBuf),
}

/// Binds `addr` (so a taken socket fails the start, before anything is served).
pub async fn bind(addr: &ListenAddr) -> anyhow::Result<Bound> {
    match addr {
        ListenAddr::Unix(path) => {
            if path.exists() {
                // A socket nobody answers on is stale; one that answers is in use.
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    bail!("{} is in use by another server", path.display());
                }
                std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let listener =
                tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
            // Before the first accept: only root may talk to the engine.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Bound::Unix(listener, path.clone()))
        }
        ListenAddr::Vsock(port) => {
            let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
            let listener =
                tokio_vsock::VsockListener::bind(addr).with_context(|| format!("binding vsock port {port}"))?;
            Ok(Bound::Vsock(listener))
        }
        ListenAddr::Serial(name) => Ok(Bound::Serial(crate::serial::find(name)?)),
    }
}

/// Hands every connection on `bound` to `handle` until `stop` is cancelled.
pub async fn accept_loop(bound: Bound, stop: CancellationToken, handle: impl Fn(BoxIo)) {
    use axum::serve::Listener;
    macro_rules! accept_loop {
        ($l:expr) => {{
            let mut l = $l;
            loop {
                tokio::select! {
                    (io, _) = Listener::accept(&mut l) => handle(Box::new(io)),
                    _ = stop.cancelled() => break,
                }
            }
        }};
    }
    match bound {
        Bound::Unix(listener, path) => {
            accept_loop!(listener);
            let _ = std::fs::remove_file(&path);
        }
        Bound::Vsock(listener) => accept_loop!(listener),
        Bound::Serial(path) => tracing::error!(port = %path.display(), "a serial port only carries mux sessions"),
    }
}

/// What the agent serves, by guest port: the same numbers on vsock and in mux sessions.
#[derive(Clone)]
pub struct Services {
    pub docker: Router,
    pub engine: Arc<Engine>,
    /// Cancelled by a control `Shutdown`.
    pub shutdown: CancellationToken,
    /// The host daemon's side of published ports.
    pub ports: crate::api::ports::HostPorts,
    /// Shared folders the host serves.
    pub shares: crate::shares::Shares,
}

impl Services {
    /// Serves `io` as the service on `port`; an unknown port closes the stream.
    pub fn handle(&self, port: u32, io: BoxIo) {
        match port {
            DOCKER_PORT => drop(tokio::spawn(http(io, self.docker.clone()))),
            CONTROL_PORT => {
                drop(tokio::spawn(crate::api::control::connection(io, self.engine.clone(), self.shutdown.clone())))
            }
            ECHO_PORT => drop(tokio::spawn(echo(io))),
            PORTS_PORT => drop(tokio::spawn(crate::api::ports::channel(io, self.ports.clone()))),
            FORWARD_PORT => drop(tokio::spawn(crate::api::ports::forward(io, self.engine.clone()))),
            SHARES_PORT => {
                let shares = self.shares.clone();
                drop(tokio::spawn(async move { shares.stream(io).await }))
            }
            other => tracing::warn!(port = other, "a stream for a port nothing serves: closed"),
        }
    }

    /// Serves multiplexed sessions on `bound` until `stop`: every connection of a socket is a
    /// session; a serial port carries one session after another, for as long as the agent runs.
    pub async fn serve_mux(self, bound: Bound, stop: CancellationToken) {
        let dispatch = {
            let me = self.clone();
            move |port, stream: berth_mux::MuxStream| me.handle(port, Box::new(stream))
        };
        if let Bound::Serial(path) = bound {
            tokio::select! {
                _ = serial_sessions(path, dispatch) => {}
                _ = stop.cancelled() => {}
            }
            return;
        }
        accept_loop(bound, stop, move |io| {
            let dispatch = dispatch.clone();
            tokio::spawn(async move {
                if let Err(e) = berth_mux::serve(io, dispatch).await {
                    tracing::info!(error = %e, "mux session ended");
                }
            });
        })
        .await;
    }
}

async fn serial_sessions(path: PathBuf, dispatch: impl Fn(u32, berth_mux::MuxStream) + Clone + Send + 'static) {
    let mut reported = false;
    loop {
        match crate::serial::SerialPort::open(&path) {
            Ok(port) => match berth_mux::serve(port, dispatch.clone()).await {
                // No host on the other end (yet): the port reads as closed until one connects.
                Err(berth_mux::MuxError::Closed) => {}
                Ok(()) => tracing::info!(port = %path.display(), "serial mux session closed"),
                Err(e) => tracing::warn!(port = %path.display(), error = %e, "serial mux session failed"),
            },
            Err(e) if !reported => {
                tracing::error!(port = %path.display(), error = %e, "opening the serial port");
                reported = true;
            }
            Err(_) => {}
        }
        // A virtio-serial port gives no event when the host connects; looking 10 times a
        // second costs nothing measurable and bounds the wait for a new session.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Docker API on one connection.
///
/// An HTTP/1 server of our own rather than `axum::serve`, for one setting: half-closed
/// connections must stay open. The docker CLI shuts down its write side once a request is sent
/// (attach and exec without stdin), and over vsock that EOF can arrive before the response, which
/// hyper by default answers by dropping the connection.
pub async fn http(io: BoxIo, app: Router) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// Sends back what arrives; ends its side when the peer ends its own.
pub async fn echo(io: BoxIo) {
    let (mut rd, mut wr) = tokio::io::split(io);
    let _ = tokio::io::copy(&mut rd, &mut wr).await;
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_urls() {
        assert_eq!(parse("unix:///tmp/x.sock").unwrap(), ListenAddr::Unix("/tmp/x.sock".into()));
        assert_eq!(parse("vsock://:2375").unwrap(), ListenAddr::Vsock(2375));
        assert_eq!(parse("serial://berth.0").unwrap(), ListenAddr::Serial("berth.0".into()));
        assert!(parse("tcp://0.0.0.0:1").is_err());
        assert!(parse("unix://rel.sock").is_err());
        assert!(parse("serial://../x").is_err());
        assert!(parse("serial://").is_err());
    }
}
