//! What the host forwards into the guest: the Docker socket ([`socket`]), published ports
//! ([`ports`]) and shared folders ([`files`]).

pub mod files;
pub mod ports;
pub mod socket;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// Copies both ways until both sides have ended; each end of input is passed on as a
/// write shutdown.
pub async fn relay<A, B>(a: A, b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_rd, mut a_wr) = tokio::io::split(a);
    let (mut b_rd, mut b_wr) = tokio::io::split(b);
    let up = async {
        let _ = tokio::io::copy(&mut a_rd, &mut b_wr).await;
        let _ = b_wr.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut b_rd, &mut a_wr).await;
        let _ = a_wr.shutdown().await;
    };
    tokio::join!(up, down);
}
