//! The VM's state, followed live: `berth status --json` every two seconds (every half second
//! while the app starts or stops the VM), pushed to the tray and to the window as a `vm-state`
//! event; and, while the VM runs, the engine's event stream, pushed as `engine-changed` so
//! the window's lists refresh when anything changes, whoever changed it.
//!
//! The first look decides one thing more: a daemon that is not running is started, as Docker
//! Desktop starts its engine when it opens.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tauri::{AppHandle, Emitter, Manager};

use crate::AppState;
use crate::tray::Tray;

/// Sends what the app knows now to the tray and the window.
pub fn publish(app: &AppHandle) {
    let snap = app.state::<AppState>().snapshot();
    let state = snap.get("state").and_then(Value::as_str).unwrap_or("unknown").to_string();
    if let Some(tray) = app.try_state::<Tray>() {
        tray.show(&state);
    }
    let _ = app.emit("vm-state", snap);
}

/// Asks `berth status` again, then publishes.
pub async fn refresh(app: &AppHandle) {
    let st = app.state::<AppState>();
    let status = match crate::berth::status().await {
        Ok(s) => s,
        Err(e) => serde_json::json!({"state": "unknown", "problems": [format!("{e:#}")]}),
    };
    *st.status.lock().unwrap() = status;
    publish(app);
}

pub fn spawn(app: AppHandle) {
    tauri::async_runtime::spawn(async move {
        let events_alive = Arc::new(AtomicBool::new(false));
        let mut first = true;
        loop {
            refresh(&app).await;
            let st = app.state::<AppState>();
            let state = st.snapshot().get("state").and_then(Value::as_str).unwrap_or("").to_string();
            if first && state == "stopped" && std::env::var_os("BERTH_APP_NO_START").is_none() {
                crate::start_vm(&app);
            }
            first = false;
            if state == "running" && !events_alive.swap(true, Ordering::SeqCst) {
                let (app, alive) = (app.clone(), events_alive.clone());
                tauri::async_runtime::spawn(async move {
                    if let Ok(d) = app.state::<AppState>().docker().await {
                        crate::docker::watch_events(&d, |kind| {
                            let _ = app.emit("engine-changed", kind);
                        })
                        .await;
                    }
                    alive.store(false, Ordering::SeqCst);
                });
            }
            let busy = st.busy.lock().unwrap().is_some();
            tokio::time::sleep(if busy { Duration::from_millis(500) } else { Duration::from_secs(2) }).await;
        }
    });
}
