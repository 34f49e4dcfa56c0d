//! Published ports (`-p [ip:]host:container[/proto]`): the engine listens on the host side and
//! forwards each TCP connection, or each UDP peer's datagrams, to the container's address, the
//! way dockerd's userland proxy does. A port given without an address listens on `0.0.0.0`
//! and, where the engine's host has IPv6, on `[::]` too (IPv6 only, the same port), as
//! dockerd's proxy does; inspect shows both.
//!
//! In the VM the engine's "host" is the guest, and the user's machine is further out: a
//! [`HostSide`] (the agent's ports channel to the host daemon) listens on the same address and
//! port there before the container starts, so a port taken on the user's machine fails the
//! start with dockerd's "port is already allocated", and forwards what it accepts to the
//! container through the agent.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::NetworkError;
use crate::model::PortBinding;

/// A published port as the listening side sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    /// `tcp` or `udp`.
    pub proto: String,
    pub ip: IpAddr,
    pub port: u16,
}

/// What [`HostSide::open`] returns: `Err` with the user's machine's reason when it cannot
/// listen there.
pub type Opening = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The user's machine, when it is not the engine's: it listens on published ports too.
pub trait HostSide: Send + Sync {
    /// Listens on `port` on the user's machine.
    fn open(&self, port: HostPort) -> Opening;
    /// Stops listening there.
    fn close(&self, port: HostPort);
}

/// The listeners of one container; they stop when this is dropped (on the user's machine too).
#[derive(Default)]
pub struct Published {
    tasks: Vec<JoinHandle<()>>,
    /// `"80/tcp"` → the bindings actually made (host ports filled in).
    pub bindings: BTreeMap<String, Vec<PortBinding>>,
    host: Option<Arc<dyn HostSide>>,
    /// What the user's machine listens on for this container.
    opened: Vec<HostPort>,
}

impl std::fmt::Debug for Published {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Published").field("bindings", &self.bindings).field("opened", &self.opened).finish()
    }
}

impl Published {
    /// Stops every listener and waits until each has let go of its socket, so the same ports
    /// can be bound again at once (a restart); the user's machine closes them too.
    pub async fn close(mut self) {
        let tasks = std::mem::take(&mut self.tasks);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(h) = &self.host {
            for p in self.opened.drain(..) {
                h.close(p);
            }
        }
    }
}

/// A bound listener of either protocol.
enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Listener {
    async fn bind(proto: &str, addr: SocketAddr) -> std::io::Result<(Listener, u16)> {
        if proto == "tcp" {
            let l = TcpListener::bind(addr).await?;
            let p = l.local_addr()?.port();
            Ok((Listener::Tcp(l), p))
        } else {
            let s = UdpSocket::bind(addr).await?;
            let p = s.local_addr()?.port();
            Ok((Listener::Udp(s), p))
        }
    }

    /// `[::]:port` for IPv6 alone, beside an IPv4 listener on the same port (without
    /// `IPV6_V6ONLY` the two would collide on Linux).
    fn bind_v6_only(proto: &str, port: u16) -> std::io::Result<Listener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let (kind, protocol) =
            if proto == "tcp" { (Type::STREAM, Protocol::TCP) } else { (Type::DGRAM, Protocol::UDP) };
        let s = Socket::new(Domain::IPV6, kind, Some(protocol))?;
        s.set_only_v6(true)?;
        if proto == "tcp" {
            // As tokio's own listeners have it.
            s.set_reuse_address(true)?;
        }
        s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
        s.set_nonblocking(true)?;
        if proto == "tcp" {
            s.listen(1024)?;
            Ok(Listener::Tcp(TcpListener::from_std(s.into())?))
        } else {
            Ok(Listener::Udp(UdpSocket::from_std(s.into())?))
        }
    }
}

/// How often a port the engine picked itself (`-p 80`) is picked again when the user's
/// machine has it taken already.
const EPHEMERAL_TRIES: usize = 8;

/// Splits `"80/tcp"` into (80, "tcp").
fn parse_port(key: &str) -> Result<(u16, String), NetworkError> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let port = port.parse::<u16>().map_err(|_| NetworkError::BadPort(key.into()))?;
    match proto {
        "tcp" | "udp" => Ok((port, proto.into())),
        _ => Err(NetworkError::BadPort(key.into())),
    }
}

/// Binds every requested port (and has `host` listen on it too), then starts forwarding to
/// `target`. Fails (binding nothing, here or there) if any port is taken.
pub async fn publish(
    requested: &BTreeMap<String, Option<Vec<PortBinding>>>,
    publish_all: bool,
    exposed: &BTreeMap<String, serde_json::Value>,
    target: Ipv4Addr,
    endpoint: &str,
    host: Option<Arc<dyn HostSide>>,
) -> Result<Published, NetworkError> {
    let mut wanted: Vec<(String, PortBinding)> = Vec::new();
    for (key, bindings) in requested {
        let list = bindings.clone().unwrap_or_default();
        if list.is_empty() {
            wanted.push((key.clone(), PortBinding::default()));
        }
        wanted.extend(list.into_iter().map(|b| (key.clone(), b)));
    }
    if publish_all {
        for key in exposed.keys() {
            if !requested.contains_key(key) {
                wanted.push((key.clone(), PortBinding::default()));
            }
        }
    }
    let mut published =
        Published { tasks: Vec::new(), bindings: BTreeMap::new(), host: host.clone(), opened: Vec::new() };
    let mut listeners = Vec::new();
    for (key, b) in wanted {
        let (cport, proto) = parse_port(&key)?;
        let ip: IpAddr = if b.host_ip.is_empty() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            b.host_ip.parse().map_err(|_| NetworkError::BadPort(b.host_ip.clone()))?
        };
        let hport: u16 = if b.host_port.is_empty() {
            0
        } else {
            b.host_port
                .split('-')
                .next()
                .unwrap_or("")
                .parse()
                .map_err(|_| NetworkError::BadPort(b.host_port.clone()))?
        };
        let addr = SocketAddr::new(ip, hport);
        let taken =
            |addr: SocketAddr| NetworkError::PortAllocated { endpoint: endpoint.into(), addr: addr.to_string() };
        let mut tries = 0;
        let (listener, twin, bound_port) = loop {
            let (listener, bound_port) = Listener::bind(&proto, addr).await.map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    taken(addr)
                } else {
                    NetworkError::Bind { addr: addr.to_string(), source: e }
                }
            })?;
            // The IPv6 twin of a port given without an address. (The user's machine makes
            // its own twin of an IPv4 port: it is not asked for this one.)
            let twin = if b.host_ip.is_empty() {
                match Listener::bind_v6_only(&proto, bound_port) {
                    Ok(t) => Some(t),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                        if hport == 0 && tries < EPHEMERAL_TRIES {
                            tries += 1;
                            continue;
                        }
                        return Err(taken(SocketAddr::from((Ipv6Addr::UNSPECIFIED, bound_port))));
                    }
                    // No IPv6 on the engine's host: IPv4 alone, as dockerd does then.
                    Err(e) => {
                        tracing::debug!(port = bound_port, error = %e, "no IPv6 listener beside the IPv4 one");
                        None
                    }
                }
            } else {
                None
            };
            let Some(h) = &host else { break (listener, twin, bound_port) };
            let wanted = HostPort { proto: proto.clone(), ip, port: bound_port };
            match h.open(wanted.clone()).await {
                Ok(()) => {
                    published.opened.push(wanted);
                    break (listener, twin, bound_port);
                }
                // A port the engine picked: pick another, the user's machine has this one.
                Err(why) if hport == 0 && tries < EPHEMERAL_TRIES => {
                    tracing::debug!(port = bound_port, %why, "taken on the user's machine: picking another");
                    tries += 1;
                }
                Err(why) => {
                    tracing::info!(port = %SocketAddr::new(ip, bound_port), %why, "the user's machine refused the port");
                    // Dropping `published` closes what the user's machine opened so far.
                    return Err(taken(SocketAddr::new(ip, bound_port)));
                }
            }
        };
        listeners.push((listener, cport));
        let shown = published.bindings.entry(key).or_default();
        shown.push(PortBinding { host_ip: ip.to_string(), host_port: bound_port.to_string() });
        if let Some(t) = twin {
            listeners.push((t, cport));
            shown.push(PortBinding { host_ip: Ipv6Addr::UNSPECIFIED.to_string(), host_port: bound_port.to_string() });
        }
    }
    for (l, cport) in listeners {
        let target = SocketAddr::new(IpAddr::V4(target), cport);
        published.tasks.push(match l {
            Listener::Tcp(l) => tokio::spawn(forward_tcp(l, target)),
            Listener::Udp(s) => tokio::spawn(forward_udp(s, target)),
        });
    }
    Ok(published)
}

async fn forward_tcp(listener: TcpListener, target: SocketAddr) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => tracing::debug!(%target, error = %e, "published port: container not answering"),
            }
        });
    }
}

/// One socket per client towards the container, so replies find their way back; idle clients
/// are forgotten after 90 s, as conntrack would. Only this task holds the listening socket
/// (clients' tasks hand their replies back to it), so stopping it frees the port.
async fn forward_udp(socket: UdpSocket, target: SocketAddr) {
    let mut clients: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let (replies, mut replies_rx) = tokio::sync::mpsc::channel::<(SocketAddr, Option<Vec<u8>>)>(256);
    // The clients' tasks end with this one: a JoinSet aborts its tasks when it is dropped.
    let mut tasks = tokio::task::JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            got = socket.recv_from(&mut buf) => {
                let Ok((n, peer)) = got else { continue };
                let upstream = match clients.entry(peer) {
                    std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        let Ok(s) = UdpSocket::bind("0.0.0.0:0").await else { continue };
                        if s.connect(target).await.is_err() {
                            continue;
                        }
                        let s = Arc::new(s);
                        slot.insert(s.clone());
                        let (replies, s2) = (replies.clone(), s.clone());
                        tasks.spawn(async move {
                            let mut buf = vec![0u8; 65536];
                            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(90), s2.recv(&mut buf)).await {
                                if replies.send((peer, Some(buf[..n].to_vec()))).await.is_err() {
                                    return;
                                }
                            }
                            let _ = replies.send((peer, None)).await;
                        });
                        s
                    }
                };
                let _ = upstream.send(&buf[..n]).await;
            }
            Some((peer, reply)) = replies_rx.recv() => match reply {
                Some(d) => { let _ = socket.send_to(&d, peer).await; }
                None => {
                    clients.remove(&peer);
                    while tasks.try_join_next().is_some() {}
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_is_dockerds_error() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let mut req = BTreeMap::new();
        req.insert(
            "80/tcp".to_string(),
            Some(vec![PortBinding { host_ip: "127.0.0.1".into(), host_port: port.to_string() }]),
        );
        let err = publish(&req, false, &BTreeMap::new(), Ipv4Addr::LOCALHOST, "web", None).await.unwrap_err();
        assert!(err.to_string().contains("port is already allocated"), "{err}");
        assert!(matches!(parse_port("53/udp"), Ok((53, _))));
        assert!(parse_port("x/tcp").is_err());
    }

    #[tokio::test]
    async fn tcp_is_forwarded() {
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bport = backend.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = backend.accept().await.unwrap();
            tokio::io::AsyncWriteExt::write_all(&mut s, b"hi").await.unwrap();
        });
        let mut req = BTreeMap::new();
        req.insert(
            format!("{bport}/tcp"),
            Some(vec![PortBinding { host_ip: "127.0.0.1".into(), host_port: String::new() }]),
        );
        let p = publish(&req, false, &BTreeMap::new(), Ipv4Addr::LOCALHOST, "t", None).await.unwrap();
        let hport: u16 = p.bindings[&format!("{bport}/tcp")][0].host_port.parse().unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", hport)).await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut c, &mut got).await.unwrap();
        assert_eq!(got, b"hi");
    }

    #[tokio::test]
    async fn a_port_without_an_address_answers_on_ipv6_too() {
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            return; // No IPv6 here: the engine listens on IPv4 alone, as the test below shows.
        }
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bport = backend.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = backend.accept().await.unwrap();
                tokio::io::AsyncWriteExt::write_all(&mut s, b"hi").await.unwrap();
            }
        });
        let mut req = BTreeMap::new();
        req.insert(format!("{bport}/tcp"), Some(vec![PortBinding::default()]));
        let p = publish(&req, false, &BTreeMap::new(), Ipv4Addr::LOCALHOST, "t", None).await.unwrap();
        let shown = &p.bindings[&format!("{bport}/tcp")];
        let ips: Vec<&str> = shown.iter().map(|b| b.host_ip.as_str()).collect();
        assert_eq!(ips, ["0.0.0.0", "::"]);
        assert_eq!(shown[0].host_port, shown[1].host_port);
        let hport: u16 = shown[0].host_port.parse().unwrap();
        for addr in ["127.0.0.1", "::1"] {
            let mut c = TcpStream::connect((addr, hport)).await.unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut c, &mut got).await.unwrap();
            assert_eq!(got, b"hi", "through {addr}");
        }
        // An IPv4 address given: that address alone.
        req.insert(
            format!("{bport}/tcp"),
            Some(vec![PortBinding { host_ip: "0.0.0.0".into(), host_port: String::new() }]),
        );
        let v4 = publish(&req, false, &BTreeMap::new(), Ipv4Addr::LOCALHOST, "t", None).await.unwrap();
        assert_eq!(v4.bindings[&format!("{bport}/tcp")].len(), 1);
    }
}
