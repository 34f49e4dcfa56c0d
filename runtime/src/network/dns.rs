//! The embedded DNS server of a user-defined network, as dockerd has one: it listens on the
//! network's gateway (UDP port 53, which containers on the network get as their nameserver),
//! answers `A` (and, on a network with IPv6, `AAAA`) queries for the containers on the
//! network (by name, alias and short ID, also as `name.network`), and passes everything else
//! to the engine's own resolvers.
//!
//! DNS messages are read and written with `hickory-proto`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

/// Resolves a name (lower case, no trailing dot) for the asker at the address given: the
/// container's IPv4 address and its IPv6 one, if it has one.
pub type Lookup = Arc<dyn Fn(&str, Ipv4Addr) -> Option<(Ipv4Addr, Option<Ipv6Addr>)> + Send + Sync>;

/// A running server; stopped on drop.
#[derive(Debug)]
pub struct Server {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The nameservers of `/etc/resolv.conf` a forwarded query goes to.
pub fn upstreams() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Serves on `addr`:53.
pub fn serve(addr: Ipv4Addr, network: &str, lookup: Lookup) -> std::io::Result<Server> {
    let std_sock = std::net::UdpSocket::bind((addr, 53))?;
    std_sock.set_nonblocking(true)?;
    let sock = Arc::new(UdpSocket::from_std(std_sock)?);
    let suffix = format!(".{}", network.to_ascii_lowercase());
    let upstream = upstreams();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else { continue };
            let query = buf[..n].to_vec();
            let asker = match peer.ip() {
                std::net::IpAddr::V4(ip) => ip,
                std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
            };
            match answer(&query, &suffix, &lookup, asker) {
                Some(reply) => {
                    let _ = sock.send_to(&reply, peer).await;
                }
                None => {
                    let (sock, upstream) = (sock.clone(), upstream.clone());
                    tokio::spawn(async move {
                        let reply = match forward(&query, &upstream).await {
                            Some(r) => r,
                            None => failure(&query, ResponseCode::ServFail).unwrap_or_default(),
                        };
                        let _ = sock.send_to(&reply, peer).await;
                    });
                }
            }
        }
    });
    Ok(Server { task })
}

/// The reply to a query for a container on the network, or `None` to forward it.
fn answer(query: &[u8], suffix: &str, lookup: &Lookup, asker: Ipv4Addr) -> Option<Vec<u8>> {
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => return failure(query, ResponseCode::FormErr),
    };
    if msg.metadata.message_type != MessageType::Query || msg.metadata.op_code != OpCode::Query {
        return None;
    }
    let q = msg.queries.first()?;
    let full = q.name().to_utf8().trim_end_matches('.').to_ascii_lowercase();
    let name = full.strip_suffix(suffix).unwrap_or(&full);
    let (ip, ip6) = lookup(name, asker)?;
    let mut reply = Message::response(msg.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = msg.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.queries = msg.queries.clone();
    // Types the container has no address of get an empty answer, not NXDOMAIN.
    match (q.query_type(), ip6) {
        (RecordType::A, _) => {
            reply.add_answer(Record::from_rdata(q.name().clone(), 600, RData::A(A(ip))));
        }
        (RecordType::AAAA, Some(ip6)) => {
            reply.add_answer(Record::from_rdata(q.name().clone(), 600, RData::AAAA(AAAA(ip6))));
        }
        _ => {}
    }
    reply.to_vec().ok()
}

/// An empty reply with `code` to the query in `bytes`.
fn failure(bytes: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    let id = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
    Message::error_msg(id, OpCode::Query, code).to_vec().ok()
}

async fn forward(query: &[u8], upstream: &[SocketAddr]) -> Option<Vec<u8>> {
    for server in upstream {
        let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
        let Ok(sock) = UdpSocket::bind(bind).await else { continue };
        if sock.send_to(query, server).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok((n, _))) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    fn ask(name: &str, kind: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    #[test]
    fn containers_are_answered_and_the_rest_forwarded() {
        let v6: Ipv6Addr = "fd00::2".parse().unwrap();
        let lookup: Lookup = Arc::new(move |n, asker| match n {
            _ if asker != Ipv4Addr::new(172, 18, 0, 9) => None,
            "web" => Some((Ipv4Addr::new(172, 18, 0, 2), None)),
            "six" => Some((Ipv4Addr::new(172, 18, 0, 3), Some(v6))),
            _ => None,
        });
        let answer = |q: &[u8], suffix: &str, lookup: &Lookup| answer(q, suffix, lookup, Ipv4Addr::new(172, 18, 0, 9));
        let reply = Message::from_vec(&answer(&ask("web.", RecordType::A), ".net", &lookup).unwrap()).unwrap();
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].data, RData::A(A(Ipv4Addr::new(172, 18, 0, 2))));
        let scoped = Message::from_vec(&answer(&ask("WEB.net.", RecordType::A), ".net", &lookup).unwrap()).unwrap();
        assert_eq!(scoped.answers.len(), 1);
        let aaaa = Message::from_vec(&answer(&ask("web.", RecordType::AAAA), ".net", &lookup).unwrap()).unwrap();
        assert!(aaaa.answers.is_empty() && aaaa.metadata.response_code == ResponseCode::NoError);
        let six = Message::from_vec(&answer(&ask("six.", RecordType::AAAA), ".net", &lookup).unwrap()).unwrap();
        assert_eq!(six.answers.iter().map(|a| a.data.clone()).collect::<Vec<_>>(), [RData::AAAA(AAAA(v6))]);
        assert!(answer(&ask("example.com.", RecordType::A), ".net", &lookup).is_none());
        let bad = Message::from_vec(&answer(b"\x12\x34garbage", ".net", &lookup).unwrap()).unwrap();
        assert_eq!((bad.metadata.id, bad.metadata.response_code), (0x1234, ResponseCode::FormErr));
    }
}
