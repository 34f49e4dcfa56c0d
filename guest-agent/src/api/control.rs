//! The control API the host daemon talks to (see `berth-protocol` for the flow): a version
//! hello, health, the host's clock, and a clean shutdown of the guest.

use std::sync::Arc;

use berth_protocol::{self as protocol, Request, Response};
use berth_runtime::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// Serves one control connection; a `Shutdown` request cancels `shutdown`.
pub async fn connection<S: AsyncRead + AsyncWrite + Unpin>(io: S, engine: Arc<Engine>, shutdown: CancellationToken) {
    let (rd, mut wr) = tokio::io::split(io);
    let mut lines = BufReader::new(rd);
    let mut greeted = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (response, then_shutdown) = match protocol::decode::<Request>(&line) {
            Err(e) => (Response::Error { message: e.to_string() }, false),
            Ok(Request::Hello { version, client }) => match protocol::check_version(version) {
                Ok(()) => {
                    greeted = true;
                    tracing::info!(%client, version, "control: hello");
                    (Response::Hello { version: protocol::VERSION, agent: env!("CARGO_PKG_VERSION").into() }, false)
                }
                Err(e) => (Response::Error { message: e.to_string() }, false),
            },
            Ok(_) if !greeted => (Response::Error { message: "say hello first".into() }, false),
            Ok(Request::Health) => (health(&engine), false),
            Ok(Request::SetTime { unix_nanos }) => (set_time(unix_nanos), false),
            Ok(Request::Shutdown) => (Response::Ok, true),
        };
        let failed = matches!(response, Response::Error { .. });
        if wr.write_all(&protocol::encode(&response)).await.is_err() {
            return;
        }
        let _ = wr.flush().await;
        if then_shutdown {
            tracing::info!("control: shutdown requested");
            shutdown.cancel();
            return;
        }
        if failed && !greeted {
            return;
        }
    }
}

fn health(engine: &Engine) -> Response {
    let uptime_secs = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().and_then(|s| s.parse().ok()))
        .unwrap_or(0.0);
    let containers = engine.containers();
    Response::Health {
        uptime_secs,
        containers_running: containers.iter().filter(|c| c.running()).count(),
        containers: containers.len(),
        images: engine.images().len(),
    }
}

/// Sets the guest's clock to the host's (after boot, and after the host slept).
fn set_time(unix_nanos: i64) -> Response {
    match set_clock(unix_nanos) {
        Ok(()) => Response::Ok,
        Err(e) => Response::Error { message: format!("setting the clock: {e}") },
    }
}

/// Sets the guest's wall clock to `unix_nanos`.
pub fn set_clock(unix_nanos: i64) -> std::io::Result<()> {
    let ts =
        libc::timespec { tv_sec: unix_nanos.div_euclid(1_000_000_000), tv_nsec: unix_nanos.rem_euclid(1_000_000_000) };
    // SAFETY: clock_settime reads a timespec we own.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
