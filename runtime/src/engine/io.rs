//! A container's stdio as clients see it: attach (live output, and stdin queued per run),
//! terminal resize, and logs read back from the json-file log.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use super::{Engine, EngineError, Output, io_ctx};
use crate::container::launch::Pty;
use crate::container::logs::{self, LogQuery, LogWriter, Stream};

/// A container's live output fanned out to its attached clients. Each client has a bounded
/// queue and the pump waits for room in every one, so no client loses bytes: a client that
/// reads slowly slows the container's output, as an attached client of dockerd does. A client
/// that goes away is dropped; `End` closes every queue.
#[derive(Debug, Default)]
pub(crate) struct Fanout {
    clients: std::sync::Mutex<Vec<mpsc::Sender<Output>>>,
}

/// Chunks a client may have queued before the container's output waits for it.
const CLIENT_QUEUE: usize = 64;

impl Fanout {
    pub fn subscribe(&self) -> mpsc::Receiver<Output> {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        self.clients.lock().expect("fanout lock").push(tx);
        rx
    }

    pub async fn send(&self, out: Output) {
        let end = matches!(out, Output::End);
        let clients: Vec<mpsc::Sender<Output>> = self.clients.lock().expect("fanout lock").clone();
        let mut gone = false;
        for c in &clients {
            gone |= c.send(out.clone()).await.is_err();
        }
        let mut list = self.clients.lock().expect("fanout lock");
        if end {
            list.clear();
        } else if gone {
            list.retain(|c| !c.is_closed());
        }
    }
}

/// The live ends an attach gets.
pub struct AttachIo {
    pub output: mpsc::Receiver<Output>,
    pub tty: bool,
    pub running: bool,
}

/// A stream of log lines; `follow` keeps reading until the container stops.
pub struct LogStream {
    pub rx: tokio::sync::mpsc::Receiver<logs::LogLine>,
    pub tty: bool,
}

impl Engine {
    /// Subscribes to a container's output (before it starts, for `docker run`).
    pub fn attach(&self, name_or_id: &str) -> Result<AttachIo, EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let rec = ctr.snapshot();
        self.container_event(&rec, "attach", &[]);
        Ok(AttachIo { output: ctr.output.subscribe(), tty: rec.config.tty, running: rec.running() })
    }

    /// Writes to the container's stdin; `None` closes it (without a TTY; a terminal stays open).
    pub async fn write_stdin(&self, name_or_id: &str, data: Option<Bytes>) -> Result<(), EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let tty = ctr.snapshot().config.tty;
        let q = ctr.stdin.lock().expect("lock");
        if data.is_some() || !tty {
            let _ = q.tx.send(data);
        }
        Ok(())
    }

    pub fn resize(&self, name_or_id: &str, rows: u16, cols: u16) -> Result<(), EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let pty: Option<Pty> = ctr.pty.lock().expect("lock").clone();
        match pty {
            Some(p) => p.resize(rows, cols).map_err(io_ctx("resizing the terminal")),
            None => Err(EngineError::Conflict(format!("Container {} is not running or has no TTY", ctr.snapshot().id))),
        }
    }

    /// Streams stored log lines (and new ones with `follow`).
    pub fn logs(&self, name_or_id: &str, q: LogQuery, follow: bool) -> Result<LogStream, EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let rec = ctr.snapshot();
        if logs::driver_of(&rec.host_config) == "none" {
            return Err(EngineError::InvalidArgument("configured logging driver does not support reading".into()));
        }
        let path = ctr.dir.join(format!("{}-json.log", rec.id));
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let mut life = ctr.life.subscribe();
        tokio::spawn(async move {
            let (lines, mut offset) = match tokio::task::spawn_blocking({
                let (p, q) = (path.clone(), q.clone());
                move || logs::read(&p, &q)
            })
            .await
            {
                Ok(Ok(v)) => v,
                _ => return,
            };
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            if !follow {
                return;
            }
            let live_q = LogQuery { tail: None, ..q };
            loop {
                let running = ctr.snapshot().running();
                let changed = life.has_changed().unwrap_or(true);
                let _ = life.borrow_and_update();
                // Rotated since the last read: the rest of the old file (now `.1`), then the new.
                if std::fs::metadata(&path).is_ok_and(|m| m.len() < offset) {
                    let old = std::path::PathBuf::from(format!("{}.1", path.display()));
                    if let Ok((lines, _)) = logs::read_from(&old, offset, &live_q) {
                        for l in lines {
                            if tx.send(l).await.is_err() {
                                return;
                            }
                        }
                    }
                    offset = 0;
                }
                if let Ok((lines, next)) = logs::read_from(&path, offset, &live_q) {
                    offset = next;
                    for l in lines {
                        if tx.send(l).await.is_err() {
                            return;
                        }
                    }
                }
                if !running && !changed {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(LogStream { rx, tty: rec.config.tty })
    }
}

/// Copies one output stream to the log and to attached clients until EOF.
pub(super) async fn pump(
    mut r: Box<dyn AsyncRead + Send + Unpin>,
    stream: Stream,
    tx: Arc<Fanout>,
    log: Arc<std::sync::Mutex<LogWriter>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let chunk = Bytes::copy_from_slice(&buf[..n]);
                if let Ok(mut w) = log.lock()
                    && let Err(e) = w.write(stream, &chunk)
                {
                    tracing::warn!(error = %e, "writing container log");
                }
                tx.send(Output::Data(stream, chunk)).await;
            }
        }
    }
}
