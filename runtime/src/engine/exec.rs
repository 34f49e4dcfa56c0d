//! `exec`: a new process in a running container's namespaces and cgroup.

use std::sync::{Arc, Mutex};

use super::{Engine, EngineError, io_ctx};
use crate::container::launch::{self, ProcessIo, Pty};
use crate::container::shim::{ExecSpec, ProcessSpec};

/// What `POST /containers/{id}/exec` asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecConfig {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub tty: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub console_size: Option<(u16, u16)>,
    /// `docker exec --privileged`: every capability (the container's seccomp filter stays).
    pub privileged: bool,
}

/// What `GET /exec/{id}/json` reports.
#[derive(Debug, Clone)]
pub struct ExecInfo {
    pub id: String,
    pub container_id: String,
    pub config: ExecConfig,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub pid: i32,
}

pub(crate) struct Exec {
    info: Mutex<ExecInfo>,
    pty: Mutex<Option<Pty>>,
    done: tokio::sync::watch::Sender<bool>,
}

/// A started exec: its stdio and a way to wait for its exit code.
pub struct ExecRun {
    pub io: ProcessIo,
    pub exit: tokio::sync::oneshot::Receiver<i64>,
}

impl Engine {
    pub fn exec_create(&self, container: &str, config: ExecConfig) -> Result<String, EngineError> {
        let ctr = self.ctr(container)?;
        let rec = ctr.snapshot();
        if !rec.running() {
            return Err(EngineError::Conflict(format!("Container {} is not running", rec.id)));
        }
        if rec.state.paused {
            return Err(EngineError::Conflict(format!(
                "Container {} is paused, unpause the container before exec",
                rec.id
            )));
        }
        if config.cmd.is_empty() {
            return Err(EngineError::InvalidArgument("No exec command specified".into()));
        }
        let id = crate::names::random_id();
        self.container_event(&rec, &format!("exec_create: {}", config.cmd.join(" ")), &[("execID", &id)]);
        let info = ExecInfo { id: id.clone(), container_id: rec.id, config, running: false, exit_code: None, pid: 0 };
        let exec = Arc::new(Exec {
            info: Mutex::new(info),
            pty: Mutex::new(None),
            done: tokio::sync::watch::channel(false).0,
        });
        self.inner.execs.lock().expect("execs lock").insert(id.clone(), exec);
        Ok(id)
    }

    fn exec_handle(&self, id: &str) -> Result<Arc<Exec>, EngineError> {
        self.inner
            .execs
            .lock()
            .expect("execs lock")
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::NotFound(format!("No such exec instance: {id}")))
    }

    pub fn exec_inspect(&self, id: &str) -> Result<ExecInfo, EngineError> {
        Ok(self.exec_handle(id)?.info.lock().expect("exec lock").clone())
    }

    pub async fn exec_start(&self, id: &str) -> Result<ExecRun, EngineError> {
        let exec = self.exec_handle(id)?;
        let info = exec.info.lock().expect("exec lock").clone();
        if info.running || info.exit_code.is_some() {
            return Err(EngineError::Conflict(format!("Exec {id} has already run")));
        }
        let ctr = self.ctr(&info.container_id)?;
        let rec = ctr.snapshot();
        if !rec.running() {
            return Err(EngineError::Conflict(format!("Container {} is not running", rec.id)));
        }
        let mut env = rec.config.env.clone();
        for e in &info.config.env {
            let key = e.split('=').next().unwrap_or(e);
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        // The container's own confinement; none means it is not (or no longer) running.
        let mut confinement = ctr
            .confinement
            .lock()
            .expect("lock")
            .clone()
            .ok_or_else(|| EngineError::Conflict(format!("Container {} is not running", rec.id)))?;
        if info.config.privileged {
            confinement.caps = None;
        }
        let spec = ExecSpec {
            pid: rec.state.pid,
            host_network: rec.host_config.network_mode == "host",
            process: ProcessSpec {
                args: info.config.cmd.clone(),
                env,
                cwd: if !info.config.working_dir.is_empty() {
                    info.config.working_dir.clone()
                } else if !rec.config.working_dir.is_empty() {
                    rec.config.working_dir.clone()
                } else {
                    "/".into()
                },
                user: if info.config.user.is_empty() { rec.config.user.clone() } else { info.config.user.clone() },
                tty: info.config.tty,
                console_size: info.config.console_size,
                confinement,
                groups: rec.host_config.group_add.clone().unwrap_or_default(),
            },
        };
        let spec_path = ctr.dir.join(format!("exec-{id}.json"));
        std::fs::write(&spec_path, serde_json::to_vec(&spec).expect("spec serialises"))
            .map_err(io_ctx("writing exec spec"))?;
        let cgroup = ctr.cgroup.lock().expect("lock").clone();
        let launched = launch::launch(
            &self.inner.helper,
            "exec",
            &spec_path,
            info.config.tty,
            info.config.attach_stdin,
            move |pid| async move {
                match cgroup {
                    Some(cg) => cg.add(pid).map_err(|e| e.to_string()),
                    None => Ok(()),
                }
            },
        )
        .await;
        let _ = std::fs::remove_file(&spec_path);
        let launched = match launched {
            Ok(l) => l,
            Err(e) => {
                // As dockerd: the exec ends with 127 when the command is missing, else 126.
                let missing = matches!(e, launch::LaunchError::ExecStart { missing_command: true, .. });
                let code = if missing { 127 } else { 126 };
                exec.info.lock().expect("exec lock").exit_code = Some(code);
                return Err(e.into());
            }
        };
        {
            let mut i = exec.info.lock().expect("exec lock");
            i.running = true;
            i.pid = launched.pid;
        }
        let command = info.config.cmd.join(" ");
        self.container_event(&rec, &format!("exec_start: {command}"), &[("execID", id)]);
        *exec.pty.lock().expect("lock") = launched.io.pty.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut helper = launched.helper;
        let exec2 = exec.clone();
        let (engine, exec_id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            let code = helper.wait().await.map(launch::exit_code).unwrap_or(-1);
            engine.settle_files().await;
            let code_text = code.to_string();
            engine.container_event(&rec, "exec_die", &[("execID", &exec_id), ("exitCode", &code_text)]);
            {
                let mut i = exec2.info.lock().expect("exec lock");
                i.running = false;
                i.exit_code = Some(code);
            }
            *exec2.pty.lock().expect("lock") = None;
            let _ = exec2.done.send(true);
            let _ = tx.send(code);
        });
        Ok(ExecRun { io: launched.io, exit: rx })
    }

    pub fn exec_resize(&self, id: &str, rows: u16, cols: u16) -> Result<(), EngineError> {
        let exec = self.exec_handle(id)?;
        let pty = exec.pty.lock().expect("lock").clone();
        match pty {
            Some(p) => p.resize(rows, cols).map_err(io_ctx("resizing the terminal")),
            None => Err(EngineError::Conflict(format!("Exec {id} is not running or has no TTY"))),
        }
    }
}
