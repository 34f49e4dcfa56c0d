//! The tray icon and its menu: the VM's state, Start, Stop, Open dashboard, Quit.
//!
//! On Linux the icon is a StatusNotifierItem with its menu exported over D-Bus (dbusmenu), by
//! libayatana-appindicator through Tauri; on macOS a menu-bar item, on Windows a notification
//! area icon. [`Tray::show`] follows the VM: the first line says its state, and Start and Stop
//! are enabled only when they can do something.

use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, Wry};

/// The menu items that change with the VM's state.
pub struct Tray {
    status: MenuItem<Wry>,
    start: MenuItem<Wry>,
    stop: MenuItem<Wry>,
    icon: tauri::tray::TrayIcon<Wry>,
}

pub fn build(app: &AppHandle) -> tauri::Result<()> {
    let status = MenuItem::with_id(app, "status", "Berth: checking…", false, None::<&str>)?;
    let start = MenuItem::with_id(app, "start", "Start", false, None::<&str>)?;
    let stop = MenuItem::with_id(app, "stop", "Stop", false, None::<&str>)?;
    let open = MenuItem::with_id(app, "open", "Open dashboard", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let menu = Menu::with_items(
        app,
        &[
            &status,
            &PredefinedMenuItem::separator(app)?,
            &start,
            &stop,
            &PredefinedMenuItem::separator(app)?,
            &open,
            &quit,
        ],
    )?;
    let icon = TrayIconBuilder::with_id("berth")
        .icon(app.default_window_icon().cloned().expect("the bundle has an icon"))
        .tooltip("Berth")
        .title("Berth")
        .menu(&menu)
        .show_menu_on_left_click(true)
        .on_menu_event(|app, event| match event.id.as_ref() {
            "start" => crate::start_vm(app),
            "stop" => crate::stop_vm(app, |_| {}),
            "open" => crate::open_dashboard(app),
            // As Docker Desktop's Quit: the VM stops with the app.
            "quit" => crate::stop_vm(app, |app| app.exit(0)),
            _ => {}
        })
        .build(app)?;
    app.manage(Tray { status, start, stop, icon });
    Ok(())
}

/// The words the menu's first line uses for a state from `berth status`.
pub fn label(state: &str) -> String {
    let words = match state {
        "running" => "running",
        "starting" => "starting…",
        "stopping" => "stopping…",
        "stopped" => "stopped",
        "degraded" => "not answering",
        other => other,
    };
    format!("Berth: {words}")
}

impl Tray {
    pub fn show(&self, state: &str) {
        let busy = matches!(state, "starting" | "stopping");
        let _ = self.status.set_text(label(state));
        let _ = self.start.set_enabled(!busy && state == "stopped");
        let _ = self.stop.set_enabled(!busy && matches!(state, "running" | "degraded"));
        let _ = self.icon.set_tooltip(Some(label(state)));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn labels_say_the_state_in_words() {
        assert_eq!(super::label("running"), "Berth: running");
        assert_eq!(super::label("degraded"), "Berth: not answering");
        assert_eq!(super::label("starting"), "Berth: starting…");
    }
}
