//! `/exec/{id}/start|resize|json`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query as Q, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_runtime::Engine;
use berth_runtime::container::launch::BoxRead;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::containers::dims;
use super::stream::{frame, upgrade};
use super::{ApiError, Query};

/// The body of `POST /exec/{id}/start`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartCheck {
    #[serde(default)]
    detach: bool,
    /// Whether the output goes raw (a terminal's) or framed by stream: the start request's
    /// say, not the exec's own `Tty`, as dockerd decides it (a client that creates an exec
    /// with a terminal and starts it without one reads frames).
    #[serde(default)]
    tty: bool,
}

/// `POST /exec/{id}/start` with `{"Detach": bool, "Tty": bool}`.
pub async fn start(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    engine.exec_inspect(&id)?;
    let StartCheck { detach, tty } = {
        let body = axum::body::to_bytes(std::mem::take(req.body_mut()), 1 << 20).await.unwrap_or_default();
        serde_json::from_slice::<StartCheck>(&body).unwrap_or_default()
    };
    if detach {
        let run = engine.exec_start(&id).await?;
        // Detached: drain the output so the process never blocks on a full pipe.
        for r in [Some(run.io.stdout), run.io.stderr].into_iter().flatten() {
            tokio::spawn(drain(r));
        }
        return Ok(StatusCode::OK.into_response());
    }
    let (on_upgrade, resp) = upgrade(&mut req, tty)?;
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let (mut rd, mut wr) = tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
        // Once the connection is hijacked, a start failure is told on the stream, as dockerd does.
        let run = match engine.exec_start(&id).await {
            Ok(run) => run,
            Err(e) => {
                let msg = format!("{}\n", ApiError::from(e).message);
                let bytes = if tty { Bytes::from(msg) } else { frame(1, msg.as_bytes()) };
                let _ = wr.write_all(&bytes).await;
                let _ = wr.shutdown().await;
                return;
            }
        };
        let io = run.io;
        if let Some(mut stdin) = io.stdin {
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut rd, &mut stdin).await;
                let _ = stdin.shutdown().await;
            });
        }
        let (tx, mut rx) = mpsc::channel::<(u8, Bytes)>(64);
        tokio::spawn(forward(io.stdout, 1, tx.clone()));
        if let Some(err) = io.stderr {
            tokio::spawn(forward(err, 2, tx.clone()));
        }
        drop(tx);
        while let Some((stream, data)) = rx.recv().await {
            let bytes = if tty { data } else { frame(stream, &data) };
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = run.exit.await;
        let _ = wr.shutdown().await;
    });
    Ok(resp)
}

async fn forward(mut r: BoxRead, stream: u8, tx: mpsc::Sender<(u8, Bytes)>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((stream, Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                    break;
                }
            }
        }
    }
}

async fn drain(mut r: BoxRead) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

pub async fn resize(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Q(q): Q<Query>,
) -> Result<StatusCode, ApiError> {
    let (h, w) = dims(&q)?;
    engine.exec_resize(&id, h, w)?;
    Ok(StatusCode::OK)
}

pub async fn inspect(State(engine): State<Engine>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let i = engine.exec_inspect(&id)?;
    let mut process = json!({"tty": i.config.tty, "entrypoint": i.config.cmd.first(), "arguments": i.config.cmd.iter().skip(1).collect::<Vec<_>>(), "privileged": i.config.privileged});
    // dockerd leaves the user out when none was given.
    if !i.config.user.is_empty() {
        process["user"] = json!(i.config.user);
    }
    Ok(Json(json!({
        "ID": i.id,
        "ContainerID": i.container_id,
        "Running": i.running,
        "ExitCode": i.exit_code,
        "Pid": i.pid,
        "OpenStdin": i.config.attach_stdin,
        "OpenStdout": i.config.attach_stdout,
        "OpenStderr": i.config.attach_stderr,
        "ProcessConfig": process,
        "CanRemove": false,
        "DetachKeys": "",
    })))
}
