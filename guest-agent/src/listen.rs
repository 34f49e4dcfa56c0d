//! Listeners the agent serves on: `unix:///path` (mode 0600) and `vsock://:PORT`.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{Context, bail};
use axum::Router;
use tokio_util::sync::CancellationToken;

/// A parsed `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Vsock(u32),
}

pub fn parse(s: &str) -> anyhow::Result<ListenAddr> {
    if let Some(path) = s.strip_prefix("unix://") {
        if !path.starts_with('/') {
            bail!("--listen {s}: a unix socket path must be absolute (unix:///path)");
        }
        Ok(ListenAddr::Unix(PathBuf::from(path)))
    } else if let Some(rest) = s.strip_prefix("vsock://") {
        let port = rest
            .trim_start_matches(':')
            .parse::<u32>()
            .with_context(|| format!("--listen {s}: expected vsock://:PORT"))?;
        Ok(ListenAddr::Vsock(port))
    } else {
        bail!("--listen {s}: expected unix:///PATH or vsock://:PORT")
    }
}

/// A bound listener, ready to serve.
pub enum Bound {
    Unix(tokio::net::UnixListener, PathBuf),
    Vsock(tokio_vsock::VsockListener),
}

/// Binds `addr` (so a taken socket fails the start, before anything is served).
pub async fn bind(addr: &ListenAddr) -> anyhow::Result<Bound> {
    match addr {
        ListenAddr::Unix(path) => {
            if path.exists() {
                // A socket nobody answers on is stale; one that answers is in use.
                if tokio::net::UnixStream::connect(path).await.is_ok() {
                    bail!("{} is in use by another server", path.display());
                }
                std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let listener =
                tokio::net::UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
            // Before the first accept: only root may talk to the engine.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            Ok(Bound::Unix(listener, path.clone()))
        }
        ListenAddr::Vsock(port) => {
            let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, *port);
            let listener =
                tokio_vsock::VsockListener::bind(addr).with_context(|| format!("binding vsock port {port}"))?;
            Ok(Bound::Vsock(listener))
        }
    }
}

/// Serves `app` on a bound listener until `stop` is cancelled.
///
/// An HTTP/1 server of our own rather than `axum::serve`, for one setting: half-closed
/// connections must stay open. The docker CLI shuts down its write side once a request is sent
/// (attach and exec without stdin), and over vsock that EOF can arrive before the response, which
/// hyper by default answers by dropping the connection.
pub async fn serve(bound: Bound, app: Router, stop: CancellationToken) -> anyhow::Result<()> {
    use axum::serve::Listener;
    macro_rules! accept_loop {
        ($l:expr) => {{
            let mut l = $l;
            loop {
                tokio::select! {
                    (io, _) = Listener::accept(&mut l) => { tokio::spawn(connection(io, app.clone())); }
                    _ = stop.cancelled() => break,
                }
            }
        }};
    }
    match bound {
        Bound::Unix(listener, path) => {
            accept_loop!(listener);
            let _ = std::fs::remove_file(&path);
        }
        Bound::Vsock(listener) => accept_loop!(listener),
    }
    Ok(())
}

async fn connection<S>(io: S, app: Router)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_urls() {
        assert_eq!(parse("unix:///tmp/x.sock").unwrap(), ListenAddr::Unix("/tmp/x.sock".into()));
        assert_eq!(parse("vsock://:2375").unwrap(), ListenAddr::Vsock(2375));
        assert!(parse("tcp://0.0.0.0:1").is_err());
        assert!(parse("unix://rel.sock").is_err());
    }
}
