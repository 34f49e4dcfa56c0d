//! The Docker socket: every connection to `$BERTH_HOME/docker.sock` becomes its own stream to
//! the agent's Docker API, copied byte for byte both ways, so hijacked and upgraded streams
//! (attach, exec, logs -f) work unchanged.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Binds `path` (mode 0600), replacing a stale socket; a live one is an error.
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is in use by another server", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Forwards every connection on `listener` to guest `port` through the device socket `uds`.
pub async fn serve(listener: UnixListener, uds: PathBuf, port: u32) {
    loop {
        let Ok((mut client, _)) = listener.accept().await else { continue };
        let uds = uds.clone();
        tokio::spawn(async move {
            match crate::transport::hybrid::connect(&uds, port).await {
                Ok(guest) => relay(&mut client, guest).await,
                Err(e) => tracing::warn!(error = %e, "docker socket: the guest is not reachable"),
            }
        });
    }
}

/// Copies both ways until the guest closes. The client's end of input is *not* passed on as a
/// write shutdown: vhost-device-vsock (0.3) drops a connection whose host side half-closes,
/// and the docker CLI half-closes hijacked connections (attach, exec) right after its request,
/// which would lose their output. The cost: stdin's end does not reach a container through
/// hybrid vsock (`echo x | docker run -i ...` does not see EOF); see docs/architecture.md.
async fn relay(client: &mut tokio::net::UnixStream, guest: tokio::net::UnixStream) {
    use tokio::io::AsyncWriteExt;
    let (mut guest_rd, mut guest_wr) = guest.into_split();
    let (mut client_rd, mut client_wr) = client.split();
    let upstream = async {
        let _ = tokio::io::copy(&mut client_rd, &mut guest_wr).await;
        // Keep the guest's write side open: wait for the guest to finish instead.
        std::future::pending::<()>().await;
    };
    let downstream = async {
        let _ = tokio::io::copy(&mut guest_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
    };
    tokio::select! {
        _ = upstream => {}
        _ = downstream => {}
    }
}
