//! Published ports on the user's machine (the flow is in `berth_protocol::ports`): the daemon
//! keeps the ports channel to the agent open, listens where the agent asks, and sends every
//! accepted TCP connection, and every UDP peer, to the agent on a stream of its own.
//!
//! Listeners belong to the daemon, not to a channel: when the transport or the agent restarts
//! they stay up (connections in that moment fail), and the agent's `Sync` on the next channel
//! puts them right.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_protocol::ports::{self as proto, AgentMessage, Forward, HostMessage, Proto, PublishedPort, Refused};
use berth_protocol::{FORWARD_PORT, PORTS_PORT, decode, encode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::transport::{Stream, Transport};

/// A UDP peer with nothing to say for this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(90);

/// A listener's task; it stops when this is dropped.
struct Listening(Option<JoinHandle<()>>);

impl Listening {
    /// Stops the listener and waits until its socket is closed, so the port can be listened on
    /// again at once (a container's restart closes and opens it in a row).
    async fn stop(mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// The ports the user's machine listens on for the guest.
#[derive(Clone)]
pub struct PortHost {
    transport: Arc<dyn Transport>,
    listening: Arc<Mutex<HashMap<PublishedPort, Listening>>>,
}

impl PortHost {
    pub fn new(transport: Arc<dyn Transport>) -> PortHost {
        PortHost { transport, listening: Arc::default() }
    }

    /// What is listened on now.
    pub fn ports(&self) -> Vec<PublishedPort> {
        let mut v: Vec<_> = self.listening.lock().expect("lock").keys().cloned().collect();
        v.sort();
        v
    }

    /// Keeps the ports channel to the guest up, for as long as the daemon runs.
    pub async fn serve(self) {
        loop {
            match self.transport.connect(PORTS_PORT).await {
                Ok(stream) => match self.session(stream).await {
                    Ok(()) => tracing::info!("ports channel closed by the guest"),
                    Err(e) => tracing::info!(error = %e, "ports channel ended"),
                },
                Err(e) => tracing::debug!(error = %e, "ports channel: the guest is not reachable"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One ports channel, until it ends.
    async fn session(&self, stream: Stream) -> std::io::Result<()> {
        let (rd, mut wr) = tokio::io::split(stream);
        let mut lines = BufReader::new(rd);
        let hello =
            HostMessage::Hello { version: proto::VERSION, client: format!("berth {}", env!("CARGO_PKG_VERSION")) };
        wr.write_all(&encode(&hello)).await?;
        let mut line = Vec::new();
        loop {
            line.clear();
            if lines.read_until(b'\n', &mut line).await? == 0 {
                return Ok(());
            }
            let msg = decode::<AgentMessage>(&line).map_err(std::io::Error::other)?;
            let (id, refused) = match msg {
                AgentMessage::Hello { version, agent } => {
                    if version != proto::VERSION {
                        return Err(std::io::Error::other(format!(
                            "the agent speaks ports version {version}, this daemon {}",
                            proto::VERSION
                        )));
                    }
                    tracing::info!(%agent, "ports channel up");
                    continue;
                }
                AgentMessage::Sync { id, ports } => (id, self.sync(ports).await),
                AgentMessage::Open { id, port } => (id, self.open(port).await.into_iter().collect()),
                AgentMessage::Close { id, port } => {
                    let gone = self.listening.lock().expect("lock").remove(&port);
                    if let Some(l) = gone {
                        l.stop().await;
                    }
                    tracing::info!(%port, "published port closed");
                    (id, vec![])
                }
            };
            wr.write_all(&encode(&HostMessage::Done { id, refused })).await?;
        }
    }

    /// Listens on exactly `ports`.
    async fn sync(&self, ports: Vec<PublishedPort>) -> Vec<Refused> {
        let stale: Vec<Listening> = {
            let mut map = self.listening.lock().expect("lock");
            let gone: Vec<PublishedPort> = map.keys().filter(|p| !ports.contains(p)).cloned().collect();
            gone.iter().filter_map(|p| map.remove(p)).collect()
        };
        for l in stale {
            l.stop().await;
        }
        let mut refused = Vec::new();
        for p in ports {
            refused.extend(self.open(p).await);
        }
        tracing::info!(ports = ?self.ports(), "published ports in sync with the guest");
        refused
    }

    /// Listens on `port` (already listening is fine); a refusal says why not.
    async fn open(&self, port: PublishedPort) -> Option<Refused> {
        if self.listening.lock().expect("lock").contains_key(&port) {
            return None;
        }
        let refuse = |message: String| Some(Refused { port: port.clone(), message });
        let Ok(ip) = port.ip.parse::<IpAddr>() else { return refuse(format!("{} is not an address", port.ip)) };
        let addr = SocketAddr::new(ip, port.port);
        let (transport, p) = (self.transport.clone(), port.clone());
        // A port on every IPv4 address is listened on at every IPv6 address too.
        let twin = if ip == IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) {
            ipv6_twin(&port.proto, port.port).map_err(|e| tracing::debug!(%port, error = %e, "no IPv6 twin")).ok()
        } else {
            None
        };
        let task = match port.proto {
            Proto::Tcp => match TcpListener::bind(addr).await {
                Ok(l) => match twin {
                    Some(Twin::Tcp(l6)) => tokio::spawn(async move {
                        tokio::join!(accept_tcp(l, transport.clone(), p.clone()), accept_tcp(l6, transport, p));
                    }),
                    _ => tokio::spawn(accept_tcp(l, transport, p)),
                },
                Err(e) => return refuse(format!("listening on {addr}: {}", bind_error(&e))),
            },
            Proto::Udp => match UdpSocket::bind(addr).await {
                Ok(s) => match twin {
                    Some(Twin::Udp(s6)) => tokio::spawn(async move {
                        tokio::join!(serve_udp(s, transport.clone(), p.clone()), serve_udp(s6, transport, p));
                    }),
                    _ => tokio::spawn(serve_udp(s, transport, p)),
                },
                Err(e) => return refuse(format!("listening on {addr}/udp: {}", bind_error(&e))),
            },
        };
        tracing::info!(%port, "published port listening");
        self.listening.lock().expect("lock").insert(port, Listening(Some(task)));
        None
    }
}

/// The IPv6 side of a port published on every IPv4 address.
enum Twin {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// A socket on `[::]:port` that takes IPv6 only, beside the IPv4 one: clients that try `::1`
/// for `localhost` first (macOS's resolver, Node's `fetch`) find the port as they do with
/// Docker Engine and Docker Desktop, which listen on both. A machine without IPv6 has none.
fn ipv6_twin(proto: &Proto, port: u16) -> std::io::Result<Twin> {
    use socket2::{Domain, Protocol, Socket, Type};
    let (kind, protocol) = match proto {
        Proto::Tcp => (Type::STREAM, Protocol::TCP),
        Proto::Udp => (Type::DGRAM, Protocol::UDP),
    };
    let s = Socket::new(Domain::IPV6, kind, Some(protocol))?;
    s.set_only_v6(true)?;
    // As tokio's own listeners on Unix; on Windows the flag would let others take the port.
    #[cfg(unix)]
    if matches!(proto, Proto::Tcp) {
        s.set_reuse_address(true)?;
    }
    s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
    s.set_nonblocking(true)?;
    match proto {
        Proto::Tcp => {
            s.listen(1024)?;
            Ok(Twin::Tcp(TcpListener::from_std(s.into())?))
        }
        Proto::Udp => Ok(Twin::Udp(UdpSocket::from_std(s.into())?)),
    }
}

/// A stream to the agent for one connection or peer of `port`, its header sent.
async fn forwarded(transport: &dyn Transport, port: &PublishedPort) -> std::io::Result<Stream> {
    let mut s = transport.connect(FORWARD_PORT).await?;
    s.write_all(&encode(&Forward { port: port.clone() })).await?;
    Ok(s)
}

async fn accept_tcp(listener: TcpListener, transport: Arc<dyn Transport>, port: PublishedPort) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let _ = client.set_nodelay(true);
        let (transport, port) = (transport.clone(), port.clone());
        tokio::spawn(async move {
            match forwarded(transport.as_ref(), &port).await {
                Ok(guest) => super::relay(client, guest).await,
                Err(e) => tracing::warn!(%port, error = %e, "published port: the guest is not reachable"),
            }
        });
    }
}

/// Datagrams of each peer go on a stream of their own; answers come back on it. Only this
/// task holds the socket (the peers' tasks hand answers back), so stopping it frees the port.
async fn serve_udp(socket: UdpSocket, transport: Arc<dyn Transport>, port: PublishedPort) {
    let mut peers: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let (answers, mut answers_rx) = mpsc::channel::<(SocketAddr, Option<Vec<u8>>)>(256);
    // The peers' tasks end with this one: a JoinSet aborts its tasks when it is dropped.
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; proto::MAX_DATAGRAM];
    loop {
        tokio::select! {
            got = socket.recv_from(&mut buf) => {
                let Ok((n, peer)) = got else { continue };
                let tx = peers.entry(peer).or_insert_with(|| {
                    let (tx, rx) = mpsc::channel(256);
                    tasks.spawn(udp_peer(transport.clone(), port.clone(), peer, rx, answers.clone()));
                    tx
                });
                // A peer that sends faster than the guest takes loses datagrams, as UDP may.
                let _ = tx.try_send(buf[..n].to_vec());
            }
            Some((peer, answer)) = answers_rx.recv() => match answer {
                Some(d) => { let _ = socket.send_to(&d, peer).await; }
                None => {
                    peers.remove(&peer);
                    while tasks.try_join_next().is_some() {}
                }
            },
        }
    }
}

/// One UDP peer's stream to the guest; `None` on `answers` when it ends.
async fn udp_peer(
    transport: Arc<dyn Transport>,
    port: PublishedPort,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    answers: mpsc::Sender<(SocketAddr, Option<Vec<u8>>)>,
) {
    match forwarded(transport.as_ref(), &port).await {
        Ok(stream) => {
            let (mut rd, mut wr) = tokio::io::split(stream);
            let mut incoming = vec![0u8; proto::MAX_DATAGRAM];
            loop {
                tokio::select! {
                    d = tokio::time::timeout(UDP_IDLE, rx.recv()) => match d {
                        Ok(Some(d)) => {
                            if wr.write_all(&proto::frame(&d)).await.is_err() {
                                break;
                            }
                        }
                        _ => break,
                    },
                    n = read_frame(&mut rd, &mut incoming) => match n {
                        Some(n) => {
                            if answers.send((peer, Some(incoming[..n].to_vec()))).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                }
            }
        }
        Err(e) => tracing::warn!(%port, error = %e, "published port: the guest is not reachable"),
    }
    let _ = answers.send((peer, None)).await;
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Option<usize> {
    let n = r.read_u16().await.ok()? as usize;
    r.read_exact(&mut buf[..n]).await.ok()?;
    Some(n)
}

/// Why a bind failed, in the same words on every host: the OS's own text for "in use" differs
/// (Windows' is "Only one usage of each socket address ... is normally permitted").
fn bind_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Connecting, Kind};

    /// A guest of the test's own: streams to the ports port are handed to the test, forwarded
    /// ones echo (TCP) or answer each datagram reversed (UDP).
    struct FakeGuest {
        channels: mpsc::UnboundedSender<tokio::io::DuplexStream>,
    }

    impl Transport for FakeGuest {
        fn kind(&self) -> Kind {
            Kind::Serial
        }
        fn connect(&self, port: u32) -> Connecting<'_> {
            Box::pin(async move {
                let (host, guest) = tokio::io::duplex(1 << 16);
                match port {
                    PORTS_PORT => self.channels.send(guest).map_err(|_| std::io::ErrorKind::BrokenPipe)?,
                    FORWARD_PORT => drop(tokio::spawn(fake_forward(guest))),
                    _ => return Err(std::io::ErrorKind::ConnectionRefused.into()),
                }
                Ok(Box::new(host) as Stream)
            })
        }
    }

    async fn fake_forward(s: tokio::io::DuplexStream) {
        let mut r = BufReader::new(s);
        let mut header = Vec::new();
        r.read_until(b'\n', &mut header).await.unwrap();
        let Forward { port } = decode(&header).unwrap();
        match port.proto {
            Proto::Tcp => {
                let (mut rd, mut wr) = tokio::io::split(r);
                tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                wr.shutdown().await.unwrap();
            }
            Proto::Udp => {
                let mut buf = vec![0u8; 65535];
                while let Some(n) = read_frame(&mut r, &mut buf).await {
                    let mut d = buf[..n].to_vec();
                    d.reverse();
                    r.get_mut().write_all(&proto::frame(&d)).await.unwrap();
                }
            }
        }
    }

    /// The agent's side of a ports channel, scripted by the test.
    struct Agent {
        lines: BufReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        wr: tokio::io::WriteHalf<tokio::io::DuplexStream>,
    }

    impl Agent {
        async fn accept(rx: &mut mpsc::UnboundedReceiver<tokio::io::DuplexStream>) -> Agent {
            let (rd, mut wr) = tokio::io::split(rx.recv().await.unwrap());
            let mut lines = BufReader::new(rd);
            let mut line = Vec::new();
            lines.read_until(b'\n', &mut line).await.unwrap();
            assert!(matches!(decode::<HostMessage>(&line).unwrap(), HostMessage::Hello { .. }));
            wr.write_all(&encode(&AgentMessage::Hello { version: proto::VERSION, agent: "test".into() }))
                .await
                .unwrap();
            Agent { lines, wr }
        }

        async fn ask(&mut self, msg: AgentMessage) -> Vec<Refused> {
            self.wr.write_all(&encode(&msg)).await.unwrap();
            let mut line = Vec::new();
            self.lines.read_until(b'\n', &mut line).await.unwrap();
            match decode::<HostMessage>(&line).unwrap() {
                HostMessage::Done { refused, .. } => refused,
                other => panic!("{other:?}"),
            }
        }
    }

    /// A port host serving the fake guest, and the agent's side of its ports channel (the
    /// receiver hands over the channels of later connections).
    async fn serving() -> (PortHost, mpsc::UnboundedReceiver<tokio::io::DuplexStream>, Agent) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let host = PortHost::new(Arc::new(FakeGuest { channels: tx }));
        tokio::spawn(host.clone().serve());
        let agent = Agent::accept(&mut rx).await;
        (host, rx, agent)
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn ports_open_forward_refuse_close_and_resync() {
        let (host, mut rx, mut agent) = serving().await;
        let tcp = PublishedPort { proto: Proto::Tcp, ip: "127.0.0.1".into(), port: free_port() };
        let udp = PublishedPort { proto: Proto::Udp, ip: "127.0.0.1".into(), port: free_port() };
        assert!(agent.ask(AgentMessage::Open { id: 1, port: tcp.clone() }).await.is_empty());
        assert!(agent.ask(AgentMessage::Open { id: 2, port: udp.clone() }).await.is_empty());
        // TCP: bytes through the guest and back, with the client's end of input passed on.
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", tcp.port)).await.unwrap();
        c.write_all(b"through the guest").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "through the guest");
        // UDP: a datagram and its answer.
        let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        u.send_to(b"abc", ("127.0.0.1", udp.port)).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), u.recv(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"cba");
        // A port taken on this machine is refused with the reason.
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken =
            PublishedPort { proto: Proto::Tcp, ip: "127.0.0.1".into(), port: holder.local_addr().unwrap().port() };
        let refused = agent.ask(AgentMessage::Open { id: 3, port: taken.clone() }).await;
        assert_eq!(refused.len(), 1);
        assert!(refused[0].message.contains("in use"), "{:?}", refused[0]);
        // Close, then a new channel (the guest restarted) whose sync leaves only UDP.
        assert!(agent.ask(AgentMessage::Close { id: 4, port: tcp.clone() }).await.is_empty());
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", tcp.port)).await.is_err());
        assert!(agent.ask(AgentMessage::Open { id: 5, port: tcp.clone() }).await.is_empty());
        drop(agent);
        let mut agent = Agent::accept(&mut rx).await;
        assert!(agent.ask(AgentMessage::Sync { id: 6, ports: vec![udp.clone()] }).await.is_empty());
        assert_eq!(host.ports(), vec![udp.clone()]);
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", tcp.port)).await.is_err());
    }

    /// A port published on every IPv4 address is reached at `::1` too, for TCP and UDP;
    /// closing it frees both.
    #[tokio::test]
    async fn a_port_on_every_address_answers_on_ipv6_too() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            eprintln!("no IPv6 loopback here: nothing to check");
            return;
        }
        let (_host, _rx, mut agent) = serving().await;
        let tcp = PublishedPort { proto: Proto::Tcp, ip: "0.0.0.0".into(), port: free_port() };
        let udp = PublishedPort { proto: Proto::Udp, ip: "0.0.0.0".into(), port: free_port() };
        assert!(agent.ask(AgentMessage::Open { id: 1, port: tcp.clone() }).await.is_empty());
        assert!(agent.ask(AgentMessage::Open { id: 2, port: udp.clone() }).await.is_empty());
        for at in ["127.0.0.1", "::1"] {
            let mut c = tokio::net::TcpStream::connect((at, tcp.port)).await.unwrap();
            c.write_all(at.as_bytes()).await.unwrap();
            c.shutdown().await.unwrap();
            let mut got = String::new();
            c.read_to_string(&mut got).await.unwrap();
            assert_eq!(got, at);
            let u = UdpSocket::bind(if at == "::1" { "[::1]:0" } else { "127.0.0.1:0" }).await.unwrap();
            u.send_to(b"abc", (at, udp.port)).await.unwrap();
            let mut buf = [0u8; 16];
            let n = tokio::time::timeout(Duration::from_secs(5), u.recv(&mut buf)).await.unwrap().unwrap();
            assert_eq!(&buf[..n], b"cba", "{at}");
        }
        assert!(agent.ask(AgentMessage::Close { id: 3, port: tcp.clone() }).await.is_empty());
        assert!(tokio::net::TcpStream::connect(("::1", tcp.port)).await.is_err());
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", tcp.port)).await.is_err());
    }
}
