//! `/_ping`, `/version`, `/info`, `/events`, `/system/df`, `/networks`.

use axum::Json;
use axum::extract::{Query as Q, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_runtime::Engine;
use berth_runtime::events::Event;
use futures_util::StreamExt;
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
    // Builder-Version 1: the docker CLI sends builds to the classic builder's `POST /build`.
    (
        [
            (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate"),
            (header::PRAGMA, "no-cache"),
            (header::HeaderName::from_static("builder-version"), "1"),
        ],
        "OK",
    )
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
    let running = containers.iter().filter(|c| c.up()).count();
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
    let sysctl_on = |path: &str| std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1");
    // The proxies the engine's registry client takes from its environment.
    let proxy = |name: &str| std::env::var(name).or_else(|_| std::env::var(name.to_lowercase())).unwrap_or_default();
    let os_version = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_ID=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_default();
    // Registries told insecure are listed by name, as dockerd lists `--insecure-registry`
    // names; loopback ones always are.
    let mut indexes = serde_json::Map::new();
    indexes.insert("docker.io".into(), json!({"Name": "docker.io", "Mirrors": [], "Secure": true, "Official": true}));
    for r in engine.insecure_registries() {
        indexes.insert(r.clone(), json!({"Name": r, "Mirrors": [], "Secure": false, "Official": false}));
    }
    // Berth runs no containerd, runc or init of its own: their commits are empty.
    let no_commit = json!({"ID": "", "Expected": ""});
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
        "BridgeNfIptables": sysctl_on("/proc/sys/net/bridge/bridge-nf-call-iptables"),
        "BridgeNfIp6tables": sysctl_on("/proc/sys/net/bridge/bridge-nf-call-ip6tables"),
        // Limits Berth does not apply are said to be missing, as dockerd says of its kernel's.
        "KernelMemory": false,
        "KernelMemoryTCP": false,
        "CPUShares": true,
        "CPUSet": false,
        "OomKillDisable": false,
        "NEventsListener": engine.events().listeners(),
        "HttpProxy": proxy("HTTP_PROXY"),
        "HttpsProxy": proxy("HTTPS_PROXY"),
        "NoProxy": proxy("NO_PROXY"),
        "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {
            "AllowNondistributableArtifactsCIDRs": [],
            "AllowNondistributableArtifactsHostnames": [],
            "InsecureRegistryCIDRs": ["127.0.0.0/8"],
            "IndexConfigs": indexes,
            "Mirrors": [],
        },
        "GenericResources": null,
        "ContainerdCommit": no_commit,
        "RuncCommit": no_commit,
        "InitCommit": no_commit,
        "OSVersion": os_version,
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
        "Runtimes": {"runc": {"path": "berth-agent"}},
        "DefaultRuntime": "runc",
        "Swarm": {"LocalNodeState": "inactive", "NodeID": "", "NodeAddr": "", "ControlAvailable": false, "Error": "", "RemoteManagers": null},
        "LiveRestoreEnabled": false,
        "Isolation": "",
        "InitBinary": "",
        // What every container gets unless it asks otherwise (the docker CLI shows this).
        "SecurityOptions": ["name=seccomp,profile=builtin", "name=cgroupns"],
        "Warnings": [],
    }))
}

fn parse_unix_nanos(s: &str) -> Option<i64> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
    let secs: i64 = secs.parse().ok()?;
    let frac: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    Some(secs * 1_000_000_000 + frac.parse::<i64>().ok()?)
}

/// Whether `e` passes dockerd's event filters (type, event, container, image, volume, label).
fn wanted(e: &Event, filters: &Value) -> bool {
    use super::containers::filter_values;
    let any = |key: &str, ok: &dyn Fn(&str) -> bool| {
        let vals = filter_values(filters, key);
        vals.is_empty() || vals.iter().any(|v| ok(v))
    };
    let attr = |k: &str| e.actor.attributes.get(k).map(String::as_str).unwrap_or("");
    any("type", &|v| v == e.kind)
        && any("event", &|v| v == e.action)
        && (e.kind != "container" || any("container", &|v| e.actor.id.starts_with(v) || attr("name") == v))
        && any("image", &|v| attr("image") == v || (e.kind == "image" && (e.actor.id == v || attr("name") == v)))
        && (e.kind != "volume" || any("volume", &|v| e.actor.id == v))
        && any("label", &|v| match v.split_once('=') {
            Some((k, val)) => attr(k) == val,
            None => e.actor.attributes.contains_key(v),
        })
}

fn event_line(e: &Event) -> bytes::Bytes {
    let mut v = serde_json::to_value(e).expect("event serialises");
    // The fields API clients before 1.22 read, which dockerd still sends for containers and
    // images.
    if e.kind == "container" || e.kind == "image" {
        v["status"] = json!(e.action);
        v["id"] = json!(e.actor.id);
    }
    if e.kind == "container" {
        v["from"] = json!(e.actor.attributes.get("image"));
    }
    let mut b = serde_json::to_vec(&v).expect("json");
    b.push(b'\n');
    b.into()
}

/// `GET /events?since=&until=&filters=`: kept events since `since`, then live ones until
/// `until` (or until the client goes away).
pub async fn events(State(engine): State<Engine>, Q(q): Q<super::Query>) -> Result<Response, super::ApiError> {
    let filters = super::filters(&q)?;
    let since = q.get("since").and_then(|s| parse_unix_nanos(s));
    let until = q.get("until").and_then(|s| parse_unix_nanos(s));
    let (past, live) = engine.events().subscribe(since);
    let past: Vec<Event> = past.into_iter().filter(|e| until.is_none_or(|u| e.time_nano <= u)).collect();
    let past_stream = futures_util::stream::iter(past.into_iter().filter({
        let f = filters.clone();
        move |e| wanted(e, &f)
    }));
    let live_stream = futures_util::stream::unfold((live, filters), move |(mut rx, f)| async move {
        loop {
            let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
            let wait = match until {
                Some(u) if u <= now => return None,
                Some(u) => std::time::Duration::from_nanos((u - now) as u64),
                None => std::time::Duration::from_secs(3600 * 24 * 365),
            };
            match tokio::time::timeout(wait, rx.recv()).await {
                Err(_) => return None,
                Ok(Ok(e)) if wanted(&e, &f) => return Some((e, (rx, f))),
                Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(_)) => return None,
            }
        }
    });
    let body = past_stream.chain(live_stream).map(|e| Ok::<_, std::io::Error>(event_line(&e)));
    Ok(([(header::CONTENT_TYPE, "application/json")], axum::body::Body::from_stream(body)).into_response())
}

/// `GET /system/df`: measured on a blocking thread (it walks every writable layer and volume).
pub async fn df(State(engine): State<Engine>) -> Result<Json<Value>, super::ApiError> {
    super::blocking(move || Ok(usage(&engine))).await
}

fn usage(engine: &Engine) -> Json<Value> {
    // Whole summaries, as in the lists: typed clients (bollard, docker-py's models) need every field.
    // Images only the build cache keeps are listed as build cache, not twice.
    let usage = engine.build_cache_usage();
    let cached: std::collections::HashSet<&str> = usage.iter().map(|(e, _, _)| e.image.as_str()).collect();
    let all_images = engine.images();
    let images: Vec<Value> = all_images
        .iter()
        .filter(|i| !cached.contains(i.id.as_str()))
        .map(|i| super::images::summary(engine, i))
        .collect();
    let layers: u64 = all_images.iter().map(|i| i.size()).sum();
    let root = engine.root().join("snapshots/active");
    let containers: Vec<Value> = engine
        .containers()
        .iter()
        .map(|c| {
            let size_rw = berth_runtime::snapshot::disk_usage(&root.join(&c.id).join("upper"));
            json!({"Id": c.id, "Names": [format!("/{}", c.name)], "Image": c.config.image, "ImageID": c.image_id,
                   "State": c.state.status_str(), "SizeRw": size_rw, "SizeRootFs": size_rw, "Mounts": []})
        })
        .collect();
    let volumes: Vec<Value> = engine
        .volumes()
        .unwrap_or_default()
        .iter()
        .map(|v| {
            let mut one = super::volumes::volume_json(v);
            one["UsageData"] = json!({
                "Size": berth_runtime::snapshot::disk_usage(&v.volume.mountpoint),
                "RefCount": v.users.len(),
            });
            one
        })
        .collect();
    let cache: Vec<Value> = usage
        .iter()
        .map(|(e, size, in_use)| {
            json!({"ID": e.image.trim_start_matches("sha256:"), "Parent": "", "Type": "regular",
                   "Description": e.description, "InUse": in_use, "Shared": false, "Size": size,
                   "CreatedAt": e.created, "LastUsedAt": e.last_used, "UsageCount": e.usage_count})
        })
        .collect();
    // `BuilderSize`: the build cache's total, which API 1.41 still carries.
    let builder_size: u64 = usage.iter().map(|(_, size, _)| *size).sum();
    Json(json!({"LayersSize": layers, "Images": images, "Containers": containers, "Volumes": volumes,
                "BuildCache": cache, "BuilderSize": builder_size}))
}
