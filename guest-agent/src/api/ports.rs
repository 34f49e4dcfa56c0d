//! The agent's side of published ports on the user's machine (the flow is in
//! `berth_protocol::ports`): the ports channel that asks the host daemon to listen, and the
//! forwarded connections it sends back, which go on to the containers.
//!
//! What the host should listen on is kept here ([`HostPorts`]), not read from the engine's
//! records, so a channel that connects while a container is starting still learns its ports:
//! every successful open adds to the set before the container runs, every close removes.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_protocol::ports::{self as proto, AgentMessage, Forward, HostMessage, Proto, PublishedPort, Refused};
use berth_protocol::{decode, encode};
use berth_runtime::Engine;
use berth_runtime::network::ports::{HostPort, HostSide, Opening};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use crate::listen::BoxIo;

/// How long a start waits for the host to say whether it could listen.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A UDP peer with nothing to say for this long is forgotten (as dockerd's proxy does).
const UDP_IDLE: Duration = Duration::from_secs(90);

fn to_wire(p: &HostPort) -> PublishedPort {
    PublishedPort { proto: if p.proto == "udp" { Proto::Udp } else { Proto::Tcp }, ip: p.ip.to_string(), port: p.port }
}

fn from_wire(p: &PublishedPort) -> Option<HostPort> {
    Some(HostPort { proto: p.proto.to_string(), ip: p.ip.parse::<IpAddr>().ok()?, port: p.port })
}

/// A message for the host, and where its answer goes.
struct Outgoing {
    msg: AgentMessage,
    reply: Option<oneshot::Sender<Vec<Refused>>>,
}

#[derive(Default)]
struct Shared {
    /// What the user's machine should listen on.
    wanted: Mutex<BTreeSet<PublishedPort>>,
    /// The channel to the host daemon, while one is connected (with its number).
    link: Mutex<Option<(u64, mpsc::UnboundedSender<Outgoing>)>>,
    ids: AtomicU64,
}

/// The engine's [`HostSide`] in the VM; cheap to clone.
#[derive(Clone, Default)]
pub struct HostPorts(Arc<Shared>);

impl HostPorts {
    fn send(&self, msg: AgentMessage, reply: Option<oneshot::Sender<Vec<Refused>>>) -> bool {
        let link = self.0.link.lock().expect("lock");
        link.as_ref().is_some_and(|(_, tx)| tx.send(Outgoing { msg, reply }).is_ok())
    }

    fn id(&self) -> u64 {
        self.0.ids.fetch_add(1, Ordering::Relaxed)
    }
}

impl HostSide for HostPorts {
    fn open(&self, port: HostPort) -> Opening {
        let me = self.clone();
        Box::pin(async move {
            let port = to_wire(&port);
            me.0.wanted.lock().expect("lock").insert(port.clone());
            let (tx, rx) = oneshot::channel();
            if !me.send(AgentMessage::Open { id: me.id(), port: port.clone() }, Some(tx)) {
                // No host connected: it listens when it connects (the Sync carries this port).
                return Ok(());
            }
            match tokio::time::timeout(OPEN_TIMEOUT, rx).await {
                Ok(Ok(refused)) if !refused.is_empty() => {
                    me.0.wanted.lock().expect("lock").remove(&port);
                    Err(refused.into_iter().map(|r| r.message).collect::<Vec<_>>().join("; "))
                }
                Ok(Ok(_)) => Ok(()),
                // The host went away or did not answer: it syncs when it is back.
                _ => {
                    tracing::warn!(%port, "the host did not answer about a published port; it will at its next sync");
                    Ok(())
                }
            }
        })
    }

    fn close(&self, port: HostPort) {
        let port = to_wire(&port);
        self.0.wanted.lock().expect("lock").remove(&port);
        self.send(AgentMessage::Close { id: self.id(), port }, None);
    }
}

/// Serves the ports channel on `io` until the host closes it.
pub async fn channel(io: BoxIo, ports: HostPorts) {
    let (rd, mut wr) = tokio::io::split(io);
    let mut lines = BufReader::new(rd);
    let mut line = Vec::new();
    match lines.read_until(b'\n', &mut line).await {
        Ok(n) if n > 0 => {}
        _ => return,
    }
    match decode::<HostMessage>(&line) {
        Ok(HostMessage::Hello { version, client }) if version == proto::VERSION => {
            tracing::info!(%client, "ports channel: hello");
        }
        other => {
            tracing::warn!(?other, "ports channel: not a hello of version {}", proto::VERSION);
            return;
        }
    }
    let hello = AgentMessage::Hello { version: proto::VERSION, agent: env!("CARGO_PKG_VERSION").into() };
    if wr.write_all(&encode(&hello)).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let me = ports.id();
    // The newest channel wins: a host that reconnects replaces its old session.
    *ports.0.link.lock().expect("lock") = Some((me, tx.clone()));
    let wanted: Vec<PublishedPort> = ports.0.wanted.lock().expect("lock").iter().cloned().collect();
    let _ = tx.send(Outgoing { msg: AgentMessage::Sync { id: ports.id(), ports: wanted }, reply: None });
    drop(tx);
    let mut pending: HashMap<u64, Option<oneshot::Sender<Vec<Refused>>>> = HashMap::new();
    loop {
        line.clear();
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { break };
                let id = match &out.msg {
                    AgentMessage::Sync { id, .. } | AgentMessage::Open { id, .. } | AgentMessage::Close { id, .. } => *id,
                    AgentMessage::Hello { .. } => continue,
                };
                pending.insert(id, out.reply);
                if wr.write_all(&encode(&out.msg)).await.is_err() {
                    break;
                }
            }
            read = lines.read_until(b'\n', &mut line) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
                match decode::<HostMessage>(&line) {
                    Ok(HostMessage::Done { id, refused }) => {
                        for r in &refused {
                            tracing::warn!(port = %r.port, reason = %r.message, "the user's machine cannot listen on a published port");
                        }
                        if let Some(Some(reply)) = pending.remove(&id) {
                            let _ = reply.send(refused);
                        }
                    }
                    other => tracing::warn!(?other, "ports channel: unexpected message"),
                }
            }
        }
    }
    let mut link = ports.0.link.lock().expect("lock");
    if link.as_ref().is_some_and(|(id, _)| *id == me) {
        *link = None;
    }
    tracing::info!("ports channel closed");
}

/// Serves one forwarded connection: its header names a published port, the rest goes to the
/// container behind it.
pub async fn forward(io: BoxIo, engine: Arc<Engine>) {
    let mut reader = BufReader::new(io);
    let mut header = Vec::new();
    // A header is one short line; anything longer is not one.
    let mut limited = (&mut reader).take(4096);
    if limited.read_until(b'\n', &mut header).await.is_err() {
        return;
    }
    let Ok(Forward { port }) = decode::<Forward>(&header) else {
        tracing::warn!("forwarded connection without a valid header");
        return;
    };
    let target = from_wire(&port).and_then(|p| engine.published_target(&p));
    let Some(target) = target else {
        tracing::debug!(%port, "forwarded connection for a port no running container publishes");
        return;
    };
    match port.proto {
        Proto::Tcp => forward_tcp(reader, target).await,
        Proto::Udp => forward_udp(reader, target).await,
    }
}

async fn forward_tcp(client: BufReader<BoxIo>, target: SocketAddr) {
    let container = match tokio::net::TcpStream::connect(target).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%target, error = %e, "published port: the container does not answer");
            return;
        }
    };
    let _ = container.set_nodelay(true);
    let (mut c_rd, mut c_wr) = container.into_split();
    let (mut h_rd, mut h_wr) = tokio::io::split(client);
    let up = async {
        let _ = tokio::io::copy(&mut h_rd, &mut c_wr).await;
        let _ = c_wr.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut c_rd, &mut h_wr).await;
        let _ = h_wr.shutdown().await;
    };
    tokio::join!(up, down);
}

/// One host peer's datagrams, framed on the stream, to and from the container.
async fn forward_udp(client: BufReader<BoxIo>, target: SocketAddr) {
    let Ok(socket) = tokio::net::UdpSocket::bind(("0.0.0.0", 0)).await else { return };
    if socket.connect(target).await.is_err() {
        return;
    }
    let (mut rd, mut wr) = tokio::io::split(client);
    let mut buf = vec![0u8; proto::MAX_DATAGRAM];
    let mut incoming = vec![0u8; proto::MAX_DATAGRAM];
    loop {
        tokio::select! {
            frame = read_frame(&mut rd, &mut incoming) => match frame {
                Some(n) => { let _ = socket.send(&incoming[..n]).await; }
                None => return,
            },
            got = tokio::time::timeout(UDP_IDLE, socket.recv(&mut buf)) => match got {
                Ok(Ok(n)) => {
                    if wr.write_all(&proto::frame(&buf[..n])).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
        }
    }
}

/// Reads one framed datagram into `buf`; `None` at the end of the stream.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Option<usize> {
    let n = r.read_u16().await.ok()? as usize;
    r.read_exact(&mut buf[..n]).await.ok()?;
    Some(n)
}
