//! A client of the agent's control API (see `berth-protocol`): hello, then one request.

use std::path::Path;

use berth_protocol::{CONTROL_PORT, VERSION, decode, encode};
pub use berth_protocol::{DOCKER_PORT, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::transport::Transport;

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

/// What the agent said: its answer to the request, and who it is (from its hello).
#[derive(Debug, Clone)]
pub struct Answer {
    pub response: Response,
    /// The agent's version, as its hello gave it.
    pub agent: String,
}

/// Says hello, sends `req` over a stream to the control port and returns the agent's answer.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: S, req: &Request) -> Result<Answer, ControlError> {
    let (rd, mut wr) = tokio::io::split(stream);
    let mut lines = BufReader::new(rd);
    let answer = |line: &[u8]| -> Result<Response, ControlError> {
        match decode::<Response>(line)? {
            Response::Error { message } => Err(ControlError::Refused(message)),
            r => Ok(r),
        }
    };
    let mut agent = String::new();
    let mut line = Vec::new();
    for msg in [&Request::Hello { version: VERSION, client: format!("berth {}", env!("CARGO_PKG_VERSION")) }, req] {
        wr.write_all(&encode(msg)).await.map_err(ControlError::Unreachable)?;
        line.clear();
        if lines.read_until(b'\n', &mut line).await.map_err(ControlError::Unreachable)? == 0 {
            return Err(ControlError::Unreachable(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if let Response::Hello { version, agent: who } = answer(&line)? {
            berth_protocol::check_version(version)?;
            agent = who;
        }
    }
    Ok(Answer { response: answer(&line)?, agent })
}

/// One request over `transport`.
pub async fn request_via(transport: &dyn Transport, req: &Request) -> Result<Answer, ControlError> {
    let stream = transport.connect(CONTROL_PORT).await.map_err(ControlError::Unreachable)?;
    exchange(stream, req).await
}

/// One request through the daemon's control socket (`$BERTH_HOME/control.sock`), which
/// forwards to the guest over whatever transport the daemon runs: a serial port has room for
/// one host connection only, the daemon's.
pub async fn request_at(socket: &Path, req: &Request) -> Result<Answer, ControlError> {
    let stream = crate::local::connect(socket).await.map_err(ControlError::Unreachable)?;
    exchange(stream, req).await
}
