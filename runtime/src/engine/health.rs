//! Health checks as dockerd runs them: the container's `Healthcheck` (`CMD`, `CMD-SHELL` or
//! `NONE`; from the image unless the request brings one) is exec'd every `Interval` while the
//! container runs, each probe bounded by `Timeout`; `Retries` failures in a row make it
//! `unhealthy`, one success `healthy`, and failures inside `StartPeriod` do not count. The
//! verdict is `State.Health` with the last five probes, and each change is a
//! `health_status: ...` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::{Ctr, Engine, ExecConfig};
use crate::container::{Health, HealthProbe};
use crate::model::{ContainerConfig, now_rfc3339};

/// Output kept of each probe, as dockerd keeps.
const MAX_OUTPUT: usize = 4096;
const DEFAULT: Duration = Duration::from_secs(30);

/// A health check's settings.
#[derive(Debug, Clone)]
struct Check {
    cmd: Vec<String>,
    interval: Duration,
    timeout: Duration,
    start_period: Duration,
    retries: u64,
}

fn check_of(config: &ContainerConfig) -> Option<Check> {
    let hc = config.extra.get("Healthcheck")?;
    let test: Vec<String> = serde_json::from_value(hc.get("Test")?.clone()).ok()?;
    let cmd = match test.split_first()? {
        (kind, rest) if kind == "CMD" && !rest.is_empty() => rest.to_vec(),
        (kind, [line]) if kind == "CMD-SHELL" => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        _ => return None,
    };
    let ns = |k: &str, default: Duration| match hc.get(k).and_then(|v| v.as_i64()) {
        Some(n) if n > 0 => Duration::from_nanos(n as u64),
        _ => default,
    };
    Some(Check {
        cmd,
        interval: ns("Interval", DEFAULT),
        timeout: ns("Timeout", DEFAULT),
        start_period: ns("StartPeriod", Duration::ZERO),
        retries: hc.get("Retries").and_then(|v| v.as_u64()).filter(|n| *n > 0).unwrap_or(3),
    })
}

impl Engine {
    /// Starts the health monitor of a container that just started, if it has a check.
    pub(crate) fn watch_health(&self, ctr: &Arc<Ctr>) {
        let Some(check) = check_of(&ctr.snapshot().config) else { return };
        let _ = ctr.update(|r| r.state.health = Some(Health { status: "starting".into(), ..Default::default() }));
        let (engine, ctr) = (self.clone(), ctr.clone());
        tokio::spawn(async move {
            let mut life = ctr.life.subscribe();
            let exits = life.borrow_and_update().exits;
            let started = Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(check.interval) => {}
                    _ = life.changed() => {}
                }
                let rec = ctr.snapshot();
                if life.borrow().exits != exits || !rec.running() {
                    return;
                }
                if rec.state.paused {
                    continue;
                }
                let probe = engine.probe(&rec.id, &check).await;
                let in_start_period = started.elapsed() < check.start_period;
                let mut changed = None;
                let _ = ctr.update(|r| {
                    let h = r.state.health.get_or_insert_with(Health::default);
                    let before = h.status.clone();
                    if probe.exit_code == 0 {
                        h.status = "healthy".into();
                        h.failing_streak = 0;
                    } else if !in_start_period || h.status != "starting" {
                        h.failing_streak += 1;
                        if h.failing_streak >= check.retries {
                            h.status = "unhealthy".into();
                        }
                    }
                    h.log.push(probe);
                    let extra = h.log.len().saturating_sub(5);
                    h.log.drain(..extra);
                    if h.status != before {
                        changed = Some(h.status.clone());
                    }
                });
                if let Some(status) = changed {
                    engine.container_event(&ctr.snapshot(), &format!("health_status: {status}"), &[]);
                }
            }
        });
    }

    /// One probe: the check's command exec'd in the container, bounded by its timeout.
    async fn probe(&self, id: &str, check: &Check) -> HealthProbe {
        let start = now_rfc3339();
        let config =
            ExecConfig { cmd: check.cmd.clone(), attach_stdout: true, attach_stderr: true, ..Default::default() };
        let failed = |msg: String| HealthProbe { start: start.clone(), end: now_rfc3339(), exit_code: -1, output: msg };
        let exec_id = match self.exec_create(id, config) {
            Ok(e) => e,
            Err(e) => return failed(e.to_string()),
        };
        let run = match self.exec_start(&exec_id).await {
            Ok(r) => r,
            Err(e) => {
                let code = self.exec_inspect(&exec_id).ok().and_then(|i| i.exit_code).unwrap_or(-1);
                return HealthProbe { exit_code: code, ..failed(e.to_string()) };
            }
        };
        let mut output = Vec::new();
        let read = async {
            let (mut out, mut err) = (run.io.stdout, run.io.stderr);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let limit = MAX_OUTPUT as u64 * 4;
            let stdout = async { (&mut out).take(limit).read_to_end(&mut a).await };
            let stderr = async {
                match err.as_mut() {
                    Some(e) => e.take(limit).read_to_end(&mut b).await,
                    None => Ok(0),
                }
            };
            let _ = tokio::join!(stdout, stderr);
            a.extend_from_slice(&b);
            a
        };
        let done = tokio::time::timeout(check.timeout, async {
            output = read.await;
            run.exit.await.unwrap_or(-1)
        })
        .await;
        output.truncate(MAX_OUTPUT);
        match done {
            Ok(code) => HealthProbe {
                start,
                end: now_rfc3339(),
                exit_code: code,
                output: String::from_utf8_lossy(&output).into_owned(),
            },
            Err(_) => {
                if let Ok(info) = self.exec_inspect(&exec_id)
                    && info.pid > 0
                {
                    // SAFETY: kill(2) on the probe's own process.
                    unsafe { libc::kill(info.pid, libc::SIGKILL) };
                }
                failed(format!("Health check exceeded timeout ({:?})", check.timeout))
            }
        }
    }
}
