//! `/_ping`, `/version`, `/info`, `/events`, `/system/df`, `/networks`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_runtime::Engine;
use serde_json::{Value, json};

use super::{API_VERSION, MIN_API_VERSION};

/// `POST /auth` (`docker login`): checks the credentials with the registry.
pub async fn auth(State(engine): State<Engine>, body: axum::body::Bytes) -> Result<Json<Value>, super::ApiError> {
    let v: Value = super::error::parse_json(&body)?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let creds = berth_runtime::image::pull::Credentials {
        username: s("username"),
        password: s("password"),
        token: s("identitytoken"),
    };
    engine.login(&s("serveraddress"), &creds).await?;
    Ok(Json(json!({"Status": "Login Succeeded", "IdentityToken": ""})))
}

pub async fn ping() -> Response {
    ([(header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"), (header::PRAGMA, "no-cache")], "OK")
        .into_response()
}

fn kernel() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

pub async fn version() -> Json<Value> {
    let v = env!("CARGO_PKG_VERSION");
    Json(json!({
        "Platform": {"Name": "Berth"},
        "Components": [{"Name": "Engine", "Version": v, "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux", "Arch": berth_runtime::model::go_arch(), "KernelVersion": kernel()}}],
        "Version": v,
        "ApiVersion": API_VERSION,
        "MinAPIVersion": MIN_API_VERSION,
        "GitCommit": "",
        "GoVersion": "",
        "Os": "linux",
        "Arch": berth_runtime::model::go_arch(),
        "KernelVersion": kernel(),
        "BuildTime": "",
    }))
}

pub async fn info(State(engine): State<Engine>) -> Json<Value> {
    let containers = engine.containers();
    let running = containers.iter().filter(|c| c.running()).count();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024;
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    Json(json!({
        "ID": "berth",
        "Containers": containers.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": containers.len() - running,
        "Images": engine.images().len(),
        "Driver": "overlay2",
        "DriverStatus": [["Backing Filesystem", "extfs"]],
        "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null"], "Log": ["json-file"]},
        "MemoryLimit": true,
        "SwapLimit": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "PidsLimit": true,
        "IPv4Forwarding": true,
        "Debug": false,
        "NFd": 0,
        "NGoroutines": 0,
        "SystemTime": berth_runtime::model::now_rfc3339(),
        "LoggingDriver": "json-file",
        "CgroupDriver": "cgroupfs",
        "CgroupVersion": if berth_runtime::container::cgroup::is_v2() { "2" } else { "1" },
        "KernelVersion": kernel(),
        "OperatingSystem": "Berth",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "NCPU": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "MemTotal": mem,
        "DockerRootDir": engine.root().display().to_string(),
        "Name": host,
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": env!("CARGO_PKG_VERSION"),
        "Runtimes": {"berth": {"path": "berth-agent"}},
        "DefaultRuntime": "berth",
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
        "LiveRestoreEnabled": false,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": [],
        "Warnings": [],
    }))
}

/// Events are not recorded yet: the stream stays open and empty, as an idle dockerd's does.
pub async fn events() -> Response {
    let body = axum::body::Body::from_stream(futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>());
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

pub async fn df(State(engine): State<Engine>) -> Json<Value> {
    let images: Vec<Value> = engine.images().iter().map(|i| json!({"Id": i.id, "Size": i.size(), "RepoTags": i.repo_tags.iter().map(|t| berth_runtime::image::familiar(t)).collect::<Vec<_>>(), "SharedSize": -1, "Containers": -1, "Created": 0})).collect();
    let layers: u64 = engine.images().iter().map(|i| i.size()).sum();
    Json(json!({"LayersSize": layers, "Images": images, "Containers": [], "Volumes": [], "BuildCache": []}))
}

pub async fn networks() -> Json<Value> {
    Json(json!([
        {"Name": "bridge", "Id": "bridge", "Driver": "bridge", "Scope": "local", "Internal": false, "Attachable": false, "IPAM": {"Driver": "default", "Config": []}, "Containers": {}, "Options": {}, "Labels": {}},
        {"Name": "host", "Id": "host", "Driver": "host", "Scope": "local", "Internal": false, "Attachable": false, "IPAM": {"Driver": "default", "Config": []}, "Containers": {}, "Options": {}, "Labels": {}},
        {"Name": "none", "Id": "none", "Driver": "null", "Scope": "local", "Internal": false, "Attachable": false, "IPAM": {"Driver": "default", "Config": []}, "Containers": {}, "Options": {}, "Labels": {}}
    ]))
}
