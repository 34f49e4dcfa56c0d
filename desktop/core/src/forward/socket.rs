//! Host sockets forwarded into the guest: every connection to `$BERTH_HOME/docker.sock` (or
//! `control.sock`) becomes its own stream to the agent's port, copied byte for byte both ways,
//! so hijacked and upgraded streams (attach, exec, logs -f) work unchanged, and each side's end
//! of input reaches the other as a half-close.

use std::path::Path;
use std::sync::Arc;

use crate::local::Listener;
use crate::transport::Transport;

/// Binds `path` for clients on this machine ([`Listener::bind`]: a socket file of mode 0600,
/// or a named pipe on Windows), replacing a stale socket; a live one is an error.
pub async fn bind(path: &Path) -> std::io::Result<Listener> {
    Listener::bind(path).await
}

/// Forwards every connection on `listener` to the guest's `port` over `transport`.
pub async fn serve(mut listener: Listener, transport: Arc<dyn Transport>, port: u32) {
    loop {
        let Ok(client) = listener.accept().await else { continue };
        let transport = transport.clone();
        tokio::spawn(async move {
            match transport.connect(port).await {
                Ok(guest) => super::relay(client, guest).await,
                Err(e) => tracing::warn!(error = %e, port, "forwarding: the guest is not reachable"),
            }
        });
    }
}
