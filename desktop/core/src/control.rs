//! A client of the agent's control API (see `berth-protocol`): hello, then one request.

use std::path::Path;

use berth_protocol::{CONTROL_PORT, VERSION, decode, encode};
pub use berth_protocol::{DOCKER_PORT, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("the guest's control channel is not reachable")]
    Unreachable(#[source] std::io::Error),
    #[error("the agent refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Protocol(#[from] berth_protocol::ProtocolError),
}

/// Says hello over the device socket `uds`, sends `req` and returns the agent's answer.
pub async fn request(uds: &Path, req: &Request) -> Result<Response, ControlError> {
    let stream = crate::transport::hybrid::connect(uds, CONTROL_PORT).await.map_err(ControlError::Unreachable)?;
    let (rd, mut wr) = tokio::io::split(stream);
    let mut lines = BufReader::new(rd);
    let answer = |line: Vec<u8>| -> Result<Response, ControlError> {
        match decode::<Response>(&line)? {
            Response::Error { message } => Err(ControlError::Refused(message)),
            r => Ok(r),
        }
    };
    let mut line = Vec::new();
    for msg in [&Request::Hello { version: VERSION, client: format!("berth {}", env!("CARGO_PKG_VERSION")) }, req] {
        wr.write_all(&encode(msg)).await.map_err(ControlError::Unreachable)?;
        line.clear();
        if lines.read_until(b'\n', &mut line).await.map_err(ControlError::Unreachable)? == 0 {
            return Err(ControlError::Unreachable(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if let Response::Hello { version, .. } = answer(line.clone())? {
            berth_protocol::check_version(version)?;
        }
    }
    answer(line)
}
