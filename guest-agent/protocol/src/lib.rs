//! The control protocol between the host daemon and `berth-agent` in the guest.
//!
//! It runs on its own vsock port ([`CONTROL_PORT`]); the Docker API has another
//! ([`DOCKER_PORT`]). Messages are JSON objects, one per line (newline-delimited), each line at
//! most [`MAX_LINE`] bytes. The flow:
//!
//! 1. The host connects and sends [`Request::Hello`] with its protocol [`VERSION`].
//! 2. The agent answers [`Response::Hello`] with its own version, or [`Response::Error`] and
//!    closes when the two cannot talk ([`check_version`]). Nothing else is accepted first.
//! 3. Then any number of requests, each answered by one response, in order: `Health`,
//!    `SetTime` (the host's clock, after boot and after the host sleeps), `Shutdown` (stop the
//!    containers, sync, unmount, power off; answered before the VM goes down).
//!
//! Published ports have a channel of their own ([`ports`]).
//!
//! This crate has no OS dependencies, so the host side builds on macOS and Windows.

pub mod ports;
pub mod shares;

use serde::{Deserialize, Serialize};

/// The protocol version; a change that an older peer cannot read bumps it.
pub const VERSION: u32 = 1;
/// The vsock port of the control channel.
pub const CONTROL_PORT: u32 = 1024;
/// The vsock port of the Docker Engine API.
pub const DOCKER_PORT: u32 = 2375;
/// The vsock port of an echo service: what a stream sends comes back, and the sender's end of
/// input ends the echo. The transports' conformance tests and throughput benchmarks use it.
pub const ECHO_PORT: u32 = 1025;
/// The vsock port where the guest accepts multiplexed sessions (`berth-mux`): the hybrid vsock
/// transport runs all its streams in one such session.
pub const MUX_PORT: u32 = 1026;
/// The vsock port of the published-ports channel ([`ports`]).
pub const PORTS_PORT: u32 = 1027;
/// The vsock port forwarded connections to published ports arrive on ([`ports`]).
pub const FORWARD_PORT: u32 = 1028;
/// The vsock port of the shared-folder streams ([`shares`]).
pub const SHARES_PORT: u32 = 1029;
/// The name of the virtio-serial port that carries a multiplexed session on hosts without vsock.
pub const SERIAL_PORT_NAME: &str = "berth.0";
/// The longest line either side accepts.
pub const MAX_LINE: usize = 64 * 1024;

/// What the host asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    Hello { version: u32, client: String },
    Health,
    SetTime { unix_nanos: i64 },
    Shutdown,
}

/// What the agent answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello { version: u32, agent: String },
    Health { uptime_secs: f64, containers_running: usize, containers: usize, images: usize },
    Ok,
    Error { message: String },
}

/// Errors of the protocol.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ProtocolError {
    #[error("protocol version mismatch: this side speaks {ours}, the other {theirs}; update Berth on both sides")]
    Version { ours: u32, theirs: u32 },
    #[error("line of {0} bytes exceeds the limit of {MAX_LINE}")]
    TooLong(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Whether a peer speaking `theirs` can be talked to.
pub fn check_version(theirs: u32) -> Result<(), ProtocolError> {
    if theirs == VERSION { Ok(()) } else { Err(ProtocolError::Version { ours: VERSION, theirs }) }
}

/// One message as a line (with its newline).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(msg).expect("protocol messages serialise");
    line.push(b'\n');
    line
}

/// Parses one line (without or with its newline).
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, ProtocolError> {
    if line.len() > MAX_LINE {
        return Err(ProtocolError::TooLong(line.len()));
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_lines() {
        let req = Request::Hello { version: VERSION, client: "berth-test".into() };
        let line = encode(&req);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"type\":\"hello\",\"version\":1,\"client\":\"berth-test\"}\n"
        );
        assert_eq!(decode::<Request>(&line).unwrap(), req);
        let resp = Response::Health { uptime_secs: 1.5, containers_running: 1, containers: 2, images: 3 };
        assert_eq!(decode::<Response>(&encode(&resp)).unwrap(), resp);
        assert_eq!(
            decode::<Request>(b"{\"type\":\"set_time\",\"unix_nanos\":5}").unwrap(),
            Request::SetTime { unix_nanos: 5 }
        );
    }

    #[test]
    fn versions_and_bad_input_are_refused() {
        assert!(check_version(VERSION).is_ok());
        assert_eq!(check_version(VERSION + 1), Err(ProtocolError::Version { ours: VERSION, theirs: VERSION + 1 }));
        assert!(matches!(decode::<Request>(b"{\"type\":\"reboot\"}"), Err(ProtocolError::Malformed(_))));
        assert!(matches!(decode::<Request>(&vec![b' '; MAX_LINE + 1]), Err(ProtocolError::TooLong(_))));
    }
}
