//! Host sockets forwarded into the guest: every connection to `$BERTH_HOME/docker.sock` (or
//! `control.sock`) becomes its own stream to the agent's port, copied byte for byte both ways,
//! so hijacked and upgraded streams (attach, exec, logs -f) work unchanged, and each side's end
//! of input reaches the other as a half-close.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::transport::Transport;

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
    // Created with no permissions for others at all, so there is no moment it is open to them.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Forwards every connection on `listener` to the guest's `port` over `transport`.
pub async fn serve(listener: UnixListener, transport: Arc<dyn Transport>, port: u32) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let transport = transport.clone();
        tokio::spawn(async move {
            match transport.connect(port).await {
                Ok(guest) => super::relay(client, guest).await,
                Err(e) => tracing::warn!(error = %e, port, "forwarding: the guest is not reachable"),
            }
        });
    }
}
