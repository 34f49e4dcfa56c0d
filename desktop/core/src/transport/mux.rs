//! Transports that carry every stream in one `berth-mux` session over a single link: hybrid
//! vsock (the link is one connection to the guest's [`MUX_PORT`](super::MUX_PORT)) and the
//! virtio-serial port (the link is QEMU's socket for the port).
//!
//! The session is made on first use and made again after it ends (the VM restarted, the
//! guest's agent restarted), so callers only ever see `connect`.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;

use berth_mux::Session;
use tokio::sync::Mutex;

use super::{Connecting, Kind, Stream, Transport};

type Dialing = Pin<Box<dyn Future<Output = io::Result<Stream>> + Send>>;

/// A transport over one multiplexed session.
pub struct MuxTransport {
    kind: Kind,
    dial: Box<dyn Fn() -> Dialing + Send + Sync>,
    session: Mutex<Option<Session>>,
}

impl MuxTransport {
    /// Hybrid vsock: the link is one stream to the guest's mux port through the device
    /// socket `uds`.
    pub fn hybrid(uds: PathBuf) -> MuxTransport {
        MuxTransport::new(Kind::Hybrid, move || {
            let uds = uds.clone();
            Box::pin(async move {
                let s = super::hybrid::connect(&uds, super::MUX_PORT).await?;
                Ok(Box::new(s) as Stream)
            })
        })
    }

    /// The virtio-serial port whose host end QEMU serves on the unix socket `path`.
    pub fn serial(path: PathBuf) -> MuxTransport {
        MuxTransport::new(Kind::Serial, move || {
            let path = path.clone();
            Box::pin(async move { Ok(Box::new(crate::local::connect_unix(&path).await?) as Stream) })
        })
    }

    fn new(kind: Kind, dial: impl Fn() -> Dialing + Send + Sync + 'static) -> MuxTransport {
        MuxTransport { kind, dial: Box::new(dial), session: Mutex::new(None) }
    }

    /// The live session, made anew if there is none. A caller that gives up while this waits
    /// (a serial port answers only once the guest's agent runs) loses nothing: the handshake
    /// resynchronises whatever a half-made session left on the link.
    async fn session(&self) -> io::Result<Session> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        *slot = None;
        let link = (self.dial)().await?;
        let session = Session::connect(link).await.map_err(|e| match e {
            berth_mux::MuxError::Io(e) => e,
            other => io::Error::new(io::ErrorKind::ConnectionRefused, other),
        })?;
        tracing::info!(transport = %self.kind, "mux session with the guest established");
        *slot = Some(session.clone());
        Ok(session)
    }
}

impl Transport for MuxTransport {
    fn kind(&self) -> Kind {
        self.kind
    }

    fn connect(&self, port: u32) -> Connecting<'_> {
        // A session that ended under us is closed, and the next call makes a new one.
        Box::pin(async move { Ok(Box::new(self.session().await?.open(port).await?) as Stream) })
    }
}
