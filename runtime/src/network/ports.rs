//! Published ports (`-p [ip:]host:container[/proto]`): the engine listens on the host side and
//! forwards each TCP connection, or each UDP peer's datagrams, to the container's address, the
//! way dockerd's userland proxy does. In the VM the host daemon forwards the same ports from
//! the user's machine over vsock to these listeners.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::NetworkError;
use crate::model::PortBinding;

/// The listeners of one container; they stop when this is dropped.
#[derive(Debug, Default)]
pub struct Published {
    tasks: Vec<JoinHandle<()>>,
    /// `"80/tcp"` → the bindings actually made (host ports filled in).
    pub bindings: BTreeMap<String, Vec<PortBinding>>,
}

impl Drop for Published {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Splits `"80/tcp"` into (80, "tcp").
fn parse_port(key: &str) -> Result<(u16, String), NetworkError> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    let port = port.parse::<u16>().map_err(|_| NetworkError::BadPort(key.into()))?;
    match proto {
        "tcp" | "udp" => Ok((port, proto.into())),
        _ => Err(NetworkError::BadPort(key.into())),
    }
}

/// Binds every requested port, then starts forwarding to `target`. Fails (binding nothing) if
/// any host port is taken.
pub async fn publish(
    requested: &BTreeMap<String, Option<Vec<PortBinding>>>,
    publish_all: bool,
    exposed: &BTreeMap<String, serde_json::Value>,
    target: Ipv4Addr,
    endpoint: &str,
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
    let mut published = Published::default();
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
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
        let taken = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                NetworkError::PortAllocated { endpoint: endpoint.into(), addr: addr.to_string() }
            } else {
                NetworkError::Bind { addr: addr.to_string(), source: e }
            }
        };
        let bound_port = if proto == "tcp" {
            let l = TcpListener::bind(addr).await.map_err(taken)?;
            let p = l.local_addr().map(|a| a.port()).unwrap_or(hport);
            tcp.push((l, cport));
            p
        } else {
            let s = UdpSocket::bind(addr).await.map_err(taken)?;
            let p = s.local_addr().map(|a| a.port()).unwrap_or(hport);
            udp.push((s, cport));
            p
        };
        published
            .bindings
            .entry(key)
            .or_default()
            .push(PortBinding { host_ip: ip.to_string(), host_port: bound_port.to_string() });
    }
    for (l, cport) in tcp {
        published.tasks.push(tokio::spawn(forward_tcp(l, SocketAddr::new(IpAddr::V4(target), cport))));
    }
    for (s, cport) in udp {
        published.tasks.push(tokio::spawn(forward_udp(s, SocketAddr::new(IpAddr::V4(target), cport))));
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
/// are forgotten after 90 s, as conntrack would.
async fn forward_udp(socket: UdpSocket, target: SocketAddr) {
    let socket = Arc::new(socket);
    let clients: Arc<tokio::sync::Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let upstream = {
            let mut map = clients.lock().await;
            match map.get(&peer) {
                Some(s) => s.clone(),
                None => {
                    let Ok(s) = UdpSocket::bind("0.0.0.0:0").await else {
                        continue;
                    };
                    if s.connect(target).await.is_err() {
                        continue;
                    }
                    let s = Arc::new(s);
                    map.insert(peer, s.clone());
                    let (s2, socket2, clients2) = (s.clone(), socket.clone(), clients.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(90), s2.recv(&mut buf)).await {
                            let _ = socket2.send_to(&buf[..n], peer).await;
                        }
                        clients2.lock().await.remove(&peer);
                    });
                    s
                }
            }
        };
        let _ = upstream.send(&buf[..n]).await;
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
        let err = publish(&req, false, &BTreeMap::new(), Ipv4Addr::LOCALHOST, "web").await.unwrap_err();
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
        let p = publish(&req, false, &BTreeMap::new(), Ipv4Addr::LOCALHOST, "t").await.unwrap();
        let hport: u16 = p.bindings[&format!("{bport}/tcp")][0].host_port.parse().unwrap();
        let mut c = TcpStream::connect(("127.0.0.1", hport)).await.unwrap();
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut c, &mut got).await.unwrap();
        assert_eq!(got, b"hi");
    }
}
