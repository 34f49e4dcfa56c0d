//! Published ports: the user's machine listens on the ports containers publish, and every
//! connection (or UDP peer) it accepts reaches the container through the guest's agent.
//!
//! Two kinds of stream, both opened by the host:
//!
//! 1. **The ports channel** ([`PORTS_PORT`](crate::PORTS_PORT)), one at a time, kept open by
//!    the daemon. The host sends [`HostMessage::Hello`]; the agent answers
//!    [`AgentMessage::Hello`], then at once [`AgentMessage::Sync`] with every port its running
//!    containers publish (so a reconnect after the transport or the agent restarted puts the
//!    host's listeners right). After that the agent sends [`AgentMessage::Open`] before a
//!    container with published ports starts (its start fails with dockerd's "port is already
//!    allocated" when the host answers with a refusal) and [`AgentMessage::Close`] when it
//!    stops. The host answers each with [`HostMessage::Done`] carrying its id. Lines are
//!    JSON, as on the control channel.
//! 2. **A forwarded connection** ([`FORWARD_PORT`](crate::FORWARD_PORT)), one per accepted TCP
//!    connection or UDP peer: a [`Forward`] header line naming the published port, then for
//!    TCP the connection's bytes both ways (each side's end of input as a half-close), for
//!    UDP datagrams framed by [`frame`] (a 2-byte big-endian length, then the bytes).

use serde::{Deserialize, Serialize};

/// The version of the ports channel; a change an older peer cannot read bumps it.
pub const VERSION: u32 = 1;

/// `tcp` or `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A published port as the user's machine sees it: the address and port to listen on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    pub proto: Proto,
    /// `0.0.0.0`, `127.0.0.1`, ... as `-p` gave it.
    pub ip: String,
    pub port: u16,
}

impl std::fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.proto)
    }
}

/// What the host sends on the ports channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HostMessage {
    Hello {
        version: u32,
        client: String,
    },
    /// The request `id` is done; `refused` lists the ports the host could not listen on.
    Done {
        id: u64,
        refused: Vec<Refused>,
    },
}

/// A port the host could not listen on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub port: PublishedPort,
    pub message: String,
}

/// What the agent sends on the ports channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    Hello {
        version: u32,
        agent: String,
    },
    /// Listen on exactly these (and stop listening on any others).
    Sync {
        id: u64,
        ports: Vec<PublishedPort>,
    },
    Open {
        id: u64,
        port: PublishedPort,
    },
    Close {
        id: u64,
        port: PublishedPort,
    },
}

/// The header of a forwarded connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub port: PublishedPort,
}

/// The largest datagram a frame carries (UDP's own limit).
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

/// A datagram as it travels on a forwarded UDP stream.
pub fn frame(datagram: &[u8]) -> Vec<u8> {
    let n = datagram.len().min(MAX_DATAGRAM);
    let mut out = Vec::with_capacity(n + 2);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&datagram[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    #[test]
    fn messages_round_trip() {
        let port = PublishedPort { proto: Proto::Udp, ip: "0.0.0.0".into(), port: 53 };
        let m = AgentMessage::Open { id: 7, port: port.clone() };
        let line = encode(&m);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"type\":\"open\",\"id\":7,\"port\":{\"proto\":\"udp\",\"ip\":\"0.0.0.0\",\"port\":53}}\n"
        );
        assert_eq!(decode::<AgentMessage>(&line).unwrap(), m);
        let done = HostMessage::Done { id: 7, refused: vec![Refused { port: port.clone(), message: "in use".into() }] };
        assert_eq!(decode::<HostMessage>(&encode(&done)).unwrap(), done);
        assert_eq!(port.to_string(), "0.0.0.0:53/udp");
        assert_eq!(frame(b"abc"), b"\x00\x03abc");
    }
}
