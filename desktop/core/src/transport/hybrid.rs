//! Hybrid vsock: connect to the device's unix socket, write `CONNECT <port>\n`, read
//! `OK <host port>\n`; from then on the socket is a stream to the guest's vsock `port`.
//! The hybrid [transport](super::mux::MuxTransport::hybrid) uses one such stream as the link
//! of its multiplexed session.

use std::io;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::local::UnixClient;

/// Opens a stream to the guest's vsock `port` through the device socket `uds`.
pub async fn connect(uds: &Path, port: u32) -> io::Result<UnixClient> {
    let mut s = crate::local::connect_unix(uds).await?;
    s.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Byte by byte: what follows the newline belongs to the stream.
    let mut line = Vec::with_capacity(16);
    loop {
        let b = s.read_u8().await?;
        if b == b'\n' {
            break;
        }
        line.push(b);
        if line.len() > 64 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "hybrid vsock: no answer line"));
        }
    }
    let text = String::from_utf8_lossy(&line);
    if text.starts_with("OK ") {
        Ok(s)
    } else {
        Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("hybrid vsock port {port}: {text}")))
    }
}

// The device's socket is a unix socket on Linux hosts, which the tests serve with tokio's.
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_then_stream() {
        let dir = std::env::temp_dir().join(format!("berth-hybrid-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("vm.vsock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 2375\n");
            s.write_all(b"OK 1073741824\nhello").await.unwrap();
        });
        let mut s = connect(&path, 2375).await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
