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
                Ok(mut guest) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut guest).await;
                }
                Err(e) => tracing::warn!(error = %e, "docker socket: the guest is not reachable"),
            }
        });
    }
}
