//! `berth-app`: Berth's desktop app. A window (the web front end in `ui/`) over the Berth
//! daemon, and a tray icon that shows the VM's state and starts and stops it.
//!
//! The VM's lifecycle goes through the `berth` command ([`berth`]), the containers, images and
//! volumes through the Docker API on the daemon's socket ([`docker`]): the app has no engine
//! code of its own. A watcher ([`watch`]) asks `berth status --json` every few seconds and
//! pushes the answer to the tray and the window, so both follow the VM live, whoever starts or
//! stops it.

mod berth;
mod docker;
mod tray;
mod watch;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use serde::Serialize;
use serde_json::Value;
use tauri::ipc::Channel;
use tauri::{AppHandle, Manager, State, WindowEvent};
use tauri_plugin_autostart::ManagerExt as _;
use tauri_plugin_opener::OpenerExt as _;

/// An error as the window shows it: the whole chain of causes, on one line each.
#[derive(Debug, Serialize)]
struct Failure(String);

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure(format!("{e:#}"))
    }
}

type Answer<T> = Result<T, Failure>;

/// What the app keeps between calls.
#[derive(Default)]
pub struct AppState {
    /// `starting` or `stopping` while the app does either; the VM's own state otherwise.
    busy: Mutex<Option<&'static str>>,
    /// Why the last start failed (with the log's tail), until the next start.
    start_error: Mutex<Option<String>>,
    /// Lines `berth start` printed in the current or last start.
    progress: Mutex<Vec<String>>,
    /// The last `berth status --json`.
    status: Mutex<Value>,
    next_id: AtomicU32,
    /// Log followers and shells, by the id the window holds.
    tasks: Mutex<HashMap<u32, tauri::async_runtime::JoinHandle<()>>>,
    shells: tokio::sync::Mutex<HashMap<u32, docker::Shell>>,
}

impl AppState {
    fn id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The VM's state as the window and the tray show it, with what the app is doing.
    pub fn snapshot(&self) -> Value {
        let mut s = self.status.lock().unwrap().clone();
        if !s.is_object() {
            s = serde_json::json!({"state": "unknown", "problems": []});
        }
        if let Some(b) = *self.busy.lock().unwrap() {
            s["state"] = b.into();
        }
        s["start_error"] = self.start_error.lock().unwrap().clone().into();
        s["progress"] = self.progress.lock().unwrap().clone().into();
        s
    }

    /// The Docker socket: where the daemon says it serves it, else where it will.
    fn socket(&self) -> String {
        let s = self.status.lock().unwrap();
        if let Some(p) = s.get("docker_socket").and_then(Value::as_str) {
            return p.to_string();
        }
        // Windows: the named pipe the daemon serves, Docker Desktop's unless it was moved.
        if cfg!(windows) {
            return std::env::var("BERTH_DOCKER_PIPE")
                .ok()
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| r"\\.\pipe\docker_engine".to_string());
        }
        let home = std::env::var_os("BERTH_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| dirs::data_dir().map(|d| d.join("berth")))
            .unwrap_or_default();
        home.join("docker.sock").display().to_string()
    }

    async fn docker(&self) -> anyhow::Result<bollard::Docker> {
        let state = self.status.lock().unwrap().get("state").and_then(Value::as_str).unwrap_or("").to_string();
        let socket = self.socket();
        docker::connect(&socket).await.map_err(|e| {
            if state == "stopped" { anyhow::anyhow!("the Berth VM is not running: start it first") } else { e }
        })
    }
}

/// Starts the VM unless the app is already starting or stopping it; progress and the outcome
/// reach the window as `vm-state` events.
pub fn start_vm(app: &AppHandle) {
    let st = app.state::<AppState>();
    {
        let mut busy = st.busy.lock().unwrap();
        if busy.is_some() {
            return;
        }
        *busy = Some("starting");
    }
    *st.start_error.lock().unwrap() = None;
    st.progress.lock().unwrap().clear();
    watch::publish(app);
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let st = app.state::<AppState>();
        let result = berth::start(|line| {
            tracing::info!(%line, "berth start");
            st.progress.lock().unwrap().push(line);
            watch::publish(&app);
        })
        .await;
        if let Err(e) = result {
            tracing::error!(error = %format!("{e:#}"), "the VM did not start");
            *st.start_error.lock().unwrap() = Some(format!("{e:#}"));
        }
        *st.busy.lock().unwrap() = None;
        watch::refresh(&app).await;
    });
}

/// Stops the VM (containers stopped, data synced), then calls `then`.
pub fn stop_vm(app: &AppHandle, then: impl FnOnce(&AppHandle) + Send + 'static) {
    let st = app.state::<AppState>();
    {
        let mut busy = st.busy.lock().unwrap();
        if busy.is_some() {
            return;
        }
        *busy = Some("stopping");
    }
    watch::publish(app);
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let st = app.state::<AppState>();
        if let Err(e) = berth::stop().await {
            tracing::error!(error = %format!("{e:#}"), "stopping the VM");
            *st.start_error.lock().unwrap() = Some(format!("{e:#}"));
        }
        *st.busy.lock().unwrap() = None;
        watch::refresh(&app).await;
        then(&app);
    });
}

/// Shows the window, brought to the front.
pub fn open_dashboard(app: &AppHandle) {
    if let Some(w) = app.get_webview_window("main") {
        let _ = w.unminimize();
        let _ = w.show();
        let _ = w.set_focus();
    }
}

#[tauri::command]
fn vm_status(st: State<'_, AppState>) -> Value {
    st.snapshot()
}

#[tauri::command]
fn vm_start(app: AppHandle) {
    start_vm(&app);
}

#[tauri::command]
fn vm_stop(app: AppHandle) {
    stop_vm(&app, |_| {});
}

#[tauri::command]
async fn engine_info(st: State<'_, AppState>) -> Answer<docker::Engine> {
    Ok(docker::engine(&st.docker().await?).await?)
}

#[tauri::command]
async fn list_containers(st: State<'_, AppState>) -> Answer<Vec<docker::Container>> {
    Ok(docker::containers(&st.docker().await?).await?)
}

#[tauri::command]
async fn container_action(st: State<'_, AppState>, id: String, action: String) -> Answer<()> {
    Ok(docker::container_action(&st.docker().await?, &id, &action).await?)
}

#[tauri::command]
async fn run_container(st: State<'_, AppState>, req: docker::RunRequest) -> Answer<String> {
    Ok(docker::run(&st.docker().await?, &req).await?)
}

#[tauri::command]
async fn list_images(st: State<'_, AppState>) -> Answer<Vec<docker::Image>> {
    Ok(docker::images(&st.docker().await?).await?)
}

#[tauri::command]
async fn pull_image(st: State<'_, AppState>, reference: String, progress: Channel<docker::PullEvent>) -> Answer<()> {
    Ok(docker::pull(&st.docker().await?, reference.trim(), &progress).await?)
}

#[tauri::command]
async fn remove_image(st: State<'_, AppState>, id: String) -> Answer<()> {
    Ok(docker::remove_image(&st.docker().await?, &id).await?)
}

#[tauri::command]
async fn list_volumes(st: State<'_, AppState>) -> Answer<Vec<docker::Volume>> {
    Ok(docker::volumes(&st.docker().await?).await?)
}

#[tauri::command]
async fn create_volume(st: State<'_, AppState>, name: String) -> Answer<String> {
    Ok(docker::create_volume(&st.docker().await?, name.trim()).await?)
}

#[tauri::command]
async fn remove_volume(st: State<'_, AppState>, name: String) -> Answer<()> {
    Ok(docker::remove_volume(&st.docker().await?, &name).await?)
}

/// Follows a container's logs into `out`; returns the id [`cancel`] takes.
#[tauri::command]
async fn follow_logs(st: State<'_, AppState>, id: String, out: Channel<String>) -> Answer<u32> {
    let d = st.docker().await?;
    let task = st.id();
    let handle = tauri::async_runtime::spawn(async move {
        if let Err(e) = docker::follow_logs(d, id, 500, out.clone()).await {
            let _ = out.send(format!("\n[berth: the log stream ended: {e:#}]\n"));
        }
    });
    st.tasks.lock().unwrap().insert(task, handle);
    Ok(task)
}

#[tauri::command]
fn cancel(st: State<'_, AppState>, task: u32) {
    if let Some(h) = st.tasks.lock().unwrap().remove(&task) {
        h.abort();
    }
}

#[tauri::command]
async fn open_shell(st: State<'_, AppState>, id: String, cols: u16, rows: u16, out: Channel) -> Answer<u32> {
    let shell = docker::open_shell(&st.docker().await?, &id, cols, rows, out).await?;
    let session = st.id();
    st.shells.lock().await.insert(session, shell);
    Ok(session)
}

#[tauri::command]
async fn shell_input(st: State<'_, AppState>, session: u32, data: String) -> Answer<()> {
    let mut shells = st.shells.lock().await;
    let shell = shells.get_mut(&session).ok_or_else(|| Failure("the shell has ended".into()))?;
    Ok(shell.write(data.as_bytes()).await?)
}

#[tauri::command]
async fn shell_resize(st: State<'_, AppState>, session: u32, cols: u16, rows: u16) -> Answer<()> {
    let exec = st.shells.lock().await.get(&session).map(|s| s.exec.clone());
    match exec {
        Some(exec) => Ok(docker::resize_shell(&st.docker().await?, &exec, cols, rows).await?),
        None => Ok(()),
    }
}

/// Ends the window's side of a shell: its input closes, so the shell sees end of file.
#[tauri::command]
async fn close_shell(st: State<'_, AppState>, session: u32) -> Answer<()> {
    st.shells.lock().await.remove(&session);
    Ok(())
}

#[derive(Serialize)]
struct Settings {
    /// `berth config --json`: `file`, `resolved`, `defaults`.
    config: Value,
    start_at_login: bool,
}

#[tauri::command]
async fn get_settings(app: AppHandle) -> Answer<Settings> {
    Ok(Settings { config: berth::config().await?, start_at_login: app.autolaunch().is_enabled().unwrap_or(false) })
}

/// Writes `pairs` (`cpus=4`, `shares=/a,/b:ro`, `memory=` to unset) through `berth config set`,
/// and the login item.
#[tauri::command]
async fn save_settings(app: AppHandle, pairs: Vec<String>, start_at_login: bool) -> Answer<()> {
    if !pairs.is_empty() {
        berth::set_config(&pairs).await?;
    }
    let auto = app.autolaunch();
    let now = auto.is_enabled().unwrap_or(false);
    if start_at_login != now {
        let r = if start_at_login { auto.enable() } else { auto.disable() };
        r.map_err(|e| Failure(format!("start at login: {e}")))?;
    }
    Ok(())
}

#[tauri::command]
fn open_url(app: AppHandle, url: String) -> Answer<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Failure(format!("not a web address: {url}")));
    }
    app.opener().open_url(url, None::<&str>).map_err(|e| Failure(format!("opening the browser: {e}")))
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info,tao=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let app = tauri::Builder::default()
        .plugin(tauri_plugin_autostart::init(tauri_plugin_autostart::MacosLauncher::LaunchAgent, None))
        .plugin(tauri_plugin_opener::init())
        .manage(AppState::default())
        .invoke_handler(tauri::generate_handler![
            vm_status,
            vm_start,
            vm_stop,
            engine_info,
            list_containers,
            container_action,
            run_container,
            list_images,
            pull_image,
            remove_image,
            list_volumes,
            create_volume,
            remove_volume,
            follow_logs,
            cancel,
            open_shell,
            shell_input,
            shell_resize,
            close_shell,
            get_settings,
            save_settings,
            open_url,
        ])
        .setup(|app| {
            tray::build(app.handle())?;
            watch::spawn(app.handle().clone());
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing the window keeps the app (and the VM) running in the tray.
            if let WindowEvent::CloseRequested { api, .. } = event {
                api.prevent_close();
                let _ = window.hide();
            }
        })
        .build(tauri::generate_context!())
        .expect("building the Tauri app");
    app.run(|app, event| {
        if let tauri::RunEvent::ExitRequested { api, code: None, .. } = event {
            // The last window hidden is not a reason to quit: the tray stays.
            let _ = app;
            api.prevent_exit();
        }
    });
}
