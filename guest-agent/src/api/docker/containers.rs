//! `/containers/...`: create, list, inspect, start, stop, kill, restart, wait, attach, logs,
//! resize, rename, remove, prune, and exec creation.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Extension, Path, Query as Q, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use berth_runtime::Engine;
use berth_runtime::container::logs::{LogQuery, Stream};
use berth_runtime::container::{ContainerRecord, Endpoint, Status};
use berth_runtime::engine::{CreateRequest, ExecConfig, Output, WaitCondition};
use berth_runtime::model::{ContainerConfig, HostConfig, parse_time};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::parse_json;
use super::stream::{frame, upgrade};
use super::{ApiError, Query, qbool};

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Values of one filter key, in either of Docker's encodings (`{"k":["v"]}` or `{"k":{"v":true}}`).
pub fn filter_values(filters: &Value, key: &str) -> Vec<String> {
    match filters.get(key) {
        Some(Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        Some(Value::Object(o)) => o.keys().cloned().collect(),
        _ => vec![],
    }
}

/// `POST /containers/create?name=`.
pub async fn create(State(engine): State<Engine>, Q(q): Q<Query>, body: Bytes) -> Result<Response, ApiError> {
    let mut v: Value = parse_json(&body)?;
    let obj = v.as_object_mut().ok_or_else(|| ApiError::invalid("invalid JSON: the body must be an object"))?;
    let host: HostConfig = match obj.remove("HostConfig") {
        Some(Value::Null) | None => HostConfig::default(),
        Some(h) => serde_json::from_value(h).map_err(|e| ApiError::invalid(format!("invalid HostConfig: {e}")))?,
    };
    let endpoints: std::collections::BTreeMap<String, berth_runtime::container::Endpoint> = obj
        .remove("NetworkingConfig")
        .and_then(|n| n.get("EndpointsConfig").and_then(Value::as_object).cloned())
        .map(|m| m.iter().map(|(k, v)| (k.clone(), super::networks::endpoint_of(Some(v)))).collect())
        .unwrap_or_default();
    let config: ContainerConfig =
        serde_json::from_value(v).map_err(|e| ApiError::invalid(format!("invalid JSON: {e}")))?;
    if config.image.is_empty() {
        return Err(ApiError::invalid("config cannot be empty in order to create a container"));
    }
    if let Some(platform) = super::platform(&q)? {
        engine.check_platform(&config.image, &platform)?;
    }
    let (id, warnings) =
        engine.create(CreateRequest { name: q.get("name").cloned(), config, host_config: host, endpoints }).await?;
    Ok((StatusCode::CREATED, Json(json!({"Id": id, "Warnings": warnings}))).into_response())
}

/// `NetworkSettings.Ports`: while it runs, every exposed port (null when not published) with
/// its bindings; otherwise none, as dockerd shows them.
fn ports_json(rec: &ContainerRecord) -> Value {
    let mut ports = serde_json::Map::new();
    if !rec.running() {
        return Value::Object(ports);
    }
    for p in rec.config.exposed_ports.keys() {
        ports.insert(p.clone(), Value::Null);
    }
    for (p, b) in &rec.net.ports {
        ports.insert(p.clone(), json!(b));
    }
    Value::Object(ports)
}

/// `Mounts`: `Mode` is the options a `-v` gave (`rw`, `ro,z`, ...), else `z` for a volume and
/// nothing for a bind, as dockerd shows it.
fn mounts_json(rec: &ContainerRecord) -> Vec<Value> {
    rec.mounts
        .iter()
        .map(|m| {
            let mode = if m.mode.is_empty() && m.kind == "volume" { "z" } else { m.mode.as_str() };
            let mut v = json!({"Type": m.kind, "Source": m.source, "Destination": m.destination, "Mode": mode, "RW": m.rw, "Propagation": if m.kind == "bind" { "rprivate" } else { "" }});
            if m.kind == "volume" {
                v["Name"] = json!(m.name);
                v["Driver"] = json!("local");
            }
            v
        })
        .collect()
}

fn network_settings(engine: &Engine, rec: &ContainerRecord) -> Value {
    let mode = berth_runtime::engine::mode_name(rec.first_network()).to_owned();
    let (name, id, builtin) = engine.network_identity(&mode).unwrap_or((mode, String::new(), true));
    let mut networks = serde_json::Map::new();
    let first_ep = rec.endpoints.get(&name).or(rec.endpoints.get(rec.first_network())).cloned();
    // A container that left all its networks is on none, and shows none.
    if !rec.left_all_networks() {
        networks.insert(name.clone(), endpoint_json(rec, &name, &id, !builtin, &first_ep.unwrap_or_default()));
    }
    // Its other networks, each with the address it has there while it runs.
    for (key, ep) in &rec.endpoints {
        if let Some((n, nid, false)) = engine.network_identity(key)
            && n != name
            && !networks.contains_key(&n)
        {
            networks.insert(n.clone(), endpoint_json(rec, &n, &nid, true, ep));
        }
    }
    let default = name == "bridge";
    let running = rec.running() && !rec.net.ip.is_empty();
    json!({
        "Bridge": "",
        "SandboxID": "",
        "Ports": ports_json(rec),
        "SandboxKey": "",
        "EndpointID": if default && running { super::networks::endpoint_id(&rec.id, &id) } else { String::new() },
        "IPAddress": if default { rec.net.ip.clone() } else { String::new() },
        "Gateway": if default { rec.net.gateway.clone() } else { String::new() },
        "IPPrefixLen": if default { rec.net.prefix } else { 0 },
        "MacAddress": if default { rec.net.mac.clone() } else { String::new() },
        "HairpinMode": false,
        "LinkLocalIPv6Address": "",
        "LinkLocalIPv6PrefixLen": 0,
        "SecondaryIPAddresses": null,
        "SecondaryIPv6Addresses": null,
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "IPv6Gateway": "",
        "Networks": networks,
    })
}

/// Whether the container has ever started.
fn started(rec: &ContainerRecord) -> bool {
    !rec.state.started_at.is_empty() && rec.state.started_at != ZERO_TIME
}

/// A file of the container's directory, once it has started (empty before, as dockerd).
fn file_once_started(rec: &ContainerRecord, dir: &std::path::Path, name: &str) -> String {
    if started(rec) { dir.join(name).display().to_string() } else { String::new() }
}

/// One entry of `NetworkSettings.Networks`: the container on network `name` (ID `id`).
fn endpoint_json(rec: &ContainerRecord, name: &str, id: &str, user_net: bool, ep: &Endpoint) -> Value {
    let (ip, prefix, gateway, mac) = rec.address_on(name).unwrap_or(("", 0, "", ""));
    let v6 = rec.ipv6_on(name);
    // As given, each field only when given (dockerd's `omitempty`), null when none is.
    let mut ipam = serde_json::Map::new();
    for (key, value) in [("IPv4Address", &ep.ipv4), ("IPv6Address", &ep.ipv6)] {
        if !value.is_empty() {
            ipam.insert(key.into(), json!(value));
        }
    }
    if !ep.link_local.is_empty() {
        ipam.insert("LinkLocalIPs".into(), json!(ep.link_local));
    }
    // As dockerd keeps them: the names given, then from the first start on the short ID and
    // the hostname (by which the network's DNS finds it too); null when there are none.
    let mut aliases = ep.aliases.clone();
    if started(rec) {
        for name in [&rec.id[..12], rec.config.hostname.as_str()] {
            if !name.is_empty() && !aliases.iter().any(|a| a == name) {
                aliases.push(name.to_owned());
            }
        }
    }
    json!({
        "IPAMConfig": if ipam.is_empty() { Value::Null } else { Value::Object(ipam) },
        "Links": null,
        "Aliases": if user_net && !aliases.is_empty() { json!(aliases) } else { Value::Null },
        "MacAddress": mac,
        "DriverOpts": null,
        "NetworkID": if started(rec) { id } else { "" },
        "EndpointID": if ip.is_empty() { String::new() } else { super::networks::endpoint_id(&rec.id, id) },
        "Gateway": gateway,
        "IPAddress": ip,
        "IPPrefixLen": prefix,
        "IPv6Gateway": v6.map(|v| v.gateway.to_string()).unwrap_or_default(),
        "GlobalIPv6Address": v6.map(|v| v.address.to_string()).unwrap_or_default(),
        "GlobalIPv6PrefixLen": v6.map_or(0, |v| v.prefix),
        "DNSNames": if user_net { json!([rec.name.clone(), rec.id[..12].to_owned()].into_iter().chain(ep.aliases.iter().cloned()).collect::<Vec<_>>()) } else { Value::Null },
    })
}

fn inspect_json(engine: &Engine, rec: &ContainerRecord, root: &std::path::Path) -> Value {
    let st = &rec.state;
    let dir = root.join("containers").join(&rec.id);
    let mut host = serde_json::to_value(&rec.host_config).unwrap_or(Value::Null);
    // As given: dockerd shows a create without them as `default` and an empty policy name.
    if host["NetworkMode"] == "" {
        host["NetworkMode"] = json!("default");
    }
    host_defaults(&mut host, rec);
    // Legacy links as dockerd shows them: `/<linked>:/<this>/<alias>`, null when none.
    let links = berth_runtime::engine::links_of_record(rec);
    host["Links"] = if links.is_empty() {
        Value::Null
    } else {
        json!(links.iter().map(|(name, alias)| format!("/{name}:/{}/{alias}", rec.name)).collect::<Vec<_>>())
    };
    let mut config = serde_json::to_value(&rec.config).unwrap_or(Value::Null);
    if let Some(c) = config.as_object_mut() {
        // Null when the image and the request had none, and no `NetworkDisabled: false`.
        c.entry("OnBuild").or_insert(Value::Null);
        c.entry("Volumes").or_insert(Value::Null);
        if c.get("NetworkDisabled") == Some(&Value::Bool(false)) {
            c.remove("NetworkDisabled");
        }
    }
    let mut out = json!({
        "Id": rec.id,
        "Created": rec.created,
        "Path": rec.path,
        "Args": rec.args,
        "State": {
            "Status": st.status_str(),
            "Running": rec.up(),
            "Paused": st.paused,
            "Restarting": rec.restarting(),
            "OOMKilled": st.oom_killed,
            "Dead": st.status == Status::Dead,
            "Pid": st.pid,
            "ExitCode": st.exit_code,
            "Error": st.error,
            "StartedAt": if st.started_at.is_empty() { ZERO_TIME } else { &st.started_at },
            "FinishedAt": if st.finished_at.is_empty() { ZERO_TIME } else { &st.finished_at },
        },
        "Image": rec.image_id,
        // dockerd names these files at the first start.
        "ResolvConfPath": file_once_started(rec, &dir, "resolv.conf"),
        "HostnamePath": file_once_started(rec, &dir, "hostname"),
        "HostsPath": file_once_started(rec, &dir, "hosts"),
        "LogPath": file_once_started(rec, &dir, &format!("{}-json.log", rec.id)),
        "Name": format!("/{}", rec.name),
        "RestartCount": rec.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": null,
        "HostConfig": host,
        "GraphDriver": {"Name": "overlay2", "Data": engine.stores().snapshots.graph_data(Some(&rec.id), &rec.chain)},
        "Mounts": mounts_json(rec),
        "Config": config,
        "NetworkSettings": network_settings(engine, rec),
    });
    // Only a container with a health check has a health state.
    if let Some(h) = &st.health {
        out["State"]["Health"] = json!(h);
    }
    out
}

/// What dockerd 20.10 shows in `HostConfig` for what was not given (its defaults), and the
/// empty lists it shows as null; Berth's own values where they differ (`CgroupnsMode`).
fn host_defaults(host: &mut Value, rec: &ContainerRecord) {
    let Some(h) = host.as_object_mut() else { return };
    let hc = &rec.host_config;
    let unmasked = berth_runtime::container::security::system_paths_unmasked(hc);
    let paths = |p: &[&str]| if unmasked { Value::Null } else { json!(p) };
    let defaults = json!({
        "BlkioWeight": 0, "BlkioWeightDevice": null, "BlkioDeviceReadBps": null, "BlkioDeviceWriteBps": null,
        "BlkioDeviceReadIOps": null, "BlkioDeviceWriteIOps": null, "Cgroup": "", "CgroupParent": "",
        "CgroupnsMode": "private", "ConsoleSize": [0, 0], "ContainerIDFile": "", "CpuCount": 0, "CpuPercent": 0,
        "CpuRealtimePeriod": 0, "CpuRealtimeRuntime": 0, "CpusetCpus": "", "CpusetMems": "", "DeviceRequests": null,
        "DnsOptions": null, "DnsSearch": null, "IOMaximumBandwidth": 0, "IOMaximumIOps": 0, "IpcMode": "private",
        "Isolation": "", "KernelMemory": 0, "KernelMemoryTCP": 0, "MemoryReservation": 0,
        "MemorySwappiness": null, "OomKillDisable": false, "OomScoreAdj": 0, "PidMode": "", "UTSMode": "",
        "Ulimits": null, "UsernsMode": "", "VolumeDriver": "", "VolumesFrom": null,
        "MaskedPaths": paths(berth_runtime::container::shim::MASKED_PATHS),
        "ReadonlyPaths": paths(berth_runtime::container::shim::READ_ONLY_PATHS),
    });
    for (k, v) in defaults.as_object().into_iter().flatten() {
        h.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if hc.shm_size <= 0 {
        h.insert("ShmSize".into(), json!(berth_runtime::container::shim::DEFAULT_SHM_SIZE));
    }
    for k in ["Devices", "Dns", "ExtraHosts"] {
        if h.get(k).and_then(Value::as_array).is_some_and(Vec::is_empty) {
            h.insert(k.into(), Value::Null);
        }
    }
    for k in ["Mounts", "Tmpfs"] {
        if h.get(k)
            .is_some_and(|v| v.as_array().is_some_and(Vec::is_empty) || v.as_object().is_some_and(|o| o.is_empty()))
        {
            h.remove(k);
        }
    }
}

fn ago(t: &str) -> String {
    let Some(t) = parse_time(t) else {
        return "Less than a second".into();
    };
    let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 172800 => format!("{} hours", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

fn status_text(rec: &ContainerRecord) -> String {
    match rec.state.status {
        Status::Running if rec.state.paused => format!("Up {} (Paused)", ago(&rec.state.started_at)),
        Status::Running => match rec.state.health.as_ref().map(|h| h.status.as_str()) {
            Some("starting") => format!("Up {} (health: starting)", ago(&rec.state.started_at)),
            Some(h) => format!("Up {} ({h})", ago(&rec.state.started_at)),
            None => format!("Up {}", ago(&rec.state.started_at)),
        },
        Status::Restarting => format!("Restarting ({}) {} ago", rec.state.exit_code, ago(&rec.state.finished_at)),
        Status::Exited if !rec.state.finished_at.is_empty() => {
            format!("Exited ({}) {} ago", rec.state.exit_code, ago(&rec.state.finished_at))
        }
        Status::Exited => "Exited".into(),
        Status::Created => "Created".into(),
        Status::Removing => "Removal In Progress".into(),
        Status::Dead => "Dead".into(),
    }
}

fn matches_filters(rec: &ContainerRecord, filters: &Value) -> bool {
    let names = filter_values(filters, "name");
    if !names.is_empty() && !names.iter().any(|n| rec.name.contains(n.trim_start_matches('/'))) {
        return false;
    }
    let ids = filter_values(filters, "id");
    if !ids.is_empty() && !ids.iter().any(|i| rec.id.starts_with(i)) {
        return false;
    }
    let statuses = filter_values(filters, "status");
    if !statuses.is_empty() && !statuses.iter().any(|s| s == rec.state.status_str()) {
        return false;
    }
    let exited = filter_values(filters, "exited");
    if !exited.is_empty()
        && (rec.state.status != Status::Exited
            || !exited.iter().any(|e| e.parse::<i64>().ok() == Some(rec.state.exit_code)))
    {
        return false;
    }
    for l in filter_values(filters, "label") {
        let ok = match l.split_once('=') {
            Some((k, v)) => rec.config.labels.get(k).is_some_and(|x| x == v),
            None => rec.config.labels.contains_key(&l),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A container's networks as `GET /containers/json` lists them: as inspect has them, but
/// with no aliases (dockerd lists none).
fn list_networks(engine: &Engine, rec: &ContainerRecord) -> Value {
    let mut nets = network_settings(engine, rec)["Networks"].take();
    for ep in nets.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
        ep["Aliases"] = Value::Null;
    }
    nets
}

/// `GET /containers/json`.
/// Takes out of `NetworkSettings` what the client's API version does not have: `DNSNames`
/// came with 1.44.
fn for_version(settings: &mut Value, version: super::ClientVersion) {
    if version < super::ClientVersion(1, 44)
        && let Some(nets) = settings.get_mut("Networks").and_then(Value::as_object_mut)
    {
        for ep in nets.values_mut().filter_map(Value::as_object_mut) {
            ep.remove("DNSNames");
        }
    }
}

pub async fn list(
    State(engine): State<Engine>,
    Extension(version): Extension<super::ClientVersion>,
    Q(q): Q<Query>,
) -> Result<Json<Value>, ApiError> {
    let filters = super::filters(&q)?;
    let all = qbool(&q, "all")
        || !filter_values(&filters, "status").is_empty()
        || !filter_values(&filters, "exited").is_empty();
    let limit = q.get("limit").and_then(|l| l.parse::<i64>().ok()).filter(|l| *l > 0);
    let images = engine.images();
    let mut out = Vec::new();
    for rec in engine.containers() {
        if (!all && !rec.up()) || !matches_filters(&rec, &filters) {
            continue;
        }
        let image_name = if rec.config.image.starts_with("sha256:") {
            rec.config.image.clone()
        } else {
            images
                .iter()
                .find(|i| i.id == rec.image_id)
                .map(|_| rec.config.image.clone())
                .unwrap_or_else(|| rec.image_id.clone())
        };
        let mut cmd = vec![rec.path.clone()];
        cmd.extend(rec.args.iter().cloned());
        let ports: Vec<Value> = rec
            .net
            .ports
            .iter()
            .flat_map(|(p, bs)| {
                let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                let private: u16 = port.parse().unwrap_or(0);
                bs.iter().map(move |b| json!({"IP": b.host_ip, "PrivatePort": private, "PublicPort": b.host_port.parse::<u16>().unwrap_or(0), "Type": proto}))
            })
            .collect();
        out.push(json!({
            "Id": rec.id,
            "Names": [format!("/{}", rec.name)],
            "Image": image_name,
            "ImageID": rec.image_id,
            "Command": cmd.join(" "),
            "Created": parse_time(&rec.created).map(|t| t.unix_timestamp()).unwrap_or(0),
            "Ports": ports,
            "Labels": rec.config.labels,
            "State": rec.state.status_str(),
            "Status": status_text(&rec),
            "HostConfig": {"NetworkMode": if rec.host_config.network_mode.is_empty() { "bridge" } else { &rec.host_config.network_mode }},
            "NetworkSettings": {"Networks": list_networks(&engine, &rec)},
            "Mounts": mounts_json(&rec),
        }));
        if let Some(last) = out.last_mut() {
            for_version(&mut last["NetworkSettings"], version);
        }
        if limit.is_some_and(|l| out.len() as i64 >= l) {
            break;
        }
    }
    Ok(Json(Value::Array(out)))
}

/// `DELETE /containers/{id}?force=&v=` (and `GET /containers/{id}` is not a route dockerd has).
pub async fn delete(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    Q(q): Q<Query>,
    req: Request,
) -> Result<Response, ApiError> {
    if req.method() != Method::DELETE {
        return Err(ApiError::status(
            StatusCode::NOT_FOUND,
            format!("page not found: {} /containers/{id}", req.method()),
        ));
    }
    if qbool(&q, "link") {
        // A link's name is `<container>/<alias>`: a bare name is the container's own.
        return Err(ApiError::status(
            StatusCode::CONFLICT,
            "Conflict, cannot remove the default link name of the container".to_string(),
        ));
    }
    engine.remove(&id, qbool(&q, "force"), qbool(&q, "v")).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /containers/prune`.
pub async fn prune(State(engine): State<Engine>, Q(q): Q<Query>) -> Result<Json<Value>, ApiError> {
    let filter = super::prune::PruneFilter::parse(&q, &[])?;
    let mut deleted = Vec::new();
    let mut freed = 0;
    let active = engine.root().join("snapshots/active");
    for rec in engine.containers() {
        if rec.running() || !filter.selects(&rec.created, &rec.config.labels) {
            continue;
        }
        let upper = active.join(&rec.id).join("upper");
        let size = super::blocking(move || Ok(berth_runtime::snapshot::disk_usage(&upper))).await?;
        if engine.remove(&rec.id, false, false).await.is_ok() {
            deleted.push(rec.id);
            freed += size;
        }
    }
    Ok(Json(json!({"ContainersDeleted": deleted, "SpaceReclaimed": freed})))
}

/// `/containers/{id}/{action}`.
pub async fn dispatch(
    State(engine): State<Engine>,
    Path((id, action)): Path<(String, String)>,
    Q(q): Q<Query>,
    req: Request,
) -> Result<Response, ApiError> {
    let method = req.method().clone();
    let timeout = q.get("t").or(q.get("timeout")).and_then(|t| t.parse::<i64>().ok());
    match (method.clone(), action.as_str()) {
        // `DELETE /containers/<container>/<alias>?link=1`: a legacy link goes.
        (Method::DELETE, alias) if qbool(&q, "link") => {
            engine.remove_link(&id, alias)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::GET, "json") => {
            let mut v = inspect_json(&engine, &engine.container(&id)?, engine.root());
            if let Some(version) = req.extensions().get::<super::ClientVersion>() {
                for_version(&mut v["NetworkSettings"], *version);
            }
            Ok(Json(v).into_response())
        }
        (Method::POST, "start") => {
            engine.start(&id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, "stop") => {
            engine.stop(&id, timeout, q.get("signal").map(String::as_str)).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, "restart") => {
            engine.restart(&id, timeout).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, "kill") => {
            engine.kill(&id, q.get("signal").map(String::as_str).unwrap_or("SIGKILL")).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, "rename") => {
            engine.rename(&id, q.get("name").map(String::as_str).unwrap_or(""))?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, "wait") => wait(engine, &id, &q),
        (Method::POST, "resize") => {
            let (h, w) = dims(&q)?;
            engine.resize(&id, h, w)?;
            Ok(StatusCode::OK.into_response())
        }
        (Method::POST, "attach") => attach(engine, &id, &q, req).await,
        (Method::GET, "logs") => logs(engine, &id, &q),
        (Method::POST, "exec") => exec_create(engine, &id, req).await,
        (Method::GET, "export") => super::archive::export(engine, &id).await,
        (Method::HEAD, "archive") => super::archive::stat(engine, &id, &q),
        (Method::GET, "archive") => super::archive::get_archive(engine, &id, &q).await,
        (Method::PUT, "archive") => super::archive::put_archive(engine, &id, &q, req).await,
        (Method::GET, "top") => super::stats::top(engine, &id),
        (Method::POST, "pause") => {
            engine.pause(&id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, "unpause") => {
            engine.unpause(&id).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::POST, "update") => update(engine, &id, req).await,
        (Method::GET, "changes") => {
            let changes = engine.changes(&id).await?;
            let list: Vec<Value> = changes.iter().map(|c| json!({"Path": c.path, "Kind": c.kind as u8})).collect();
            Ok(Json(Value::Array(list)).into_response())
        }
        (Method::GET, "stats") => super::stats::stats(engine, &id, &q).await,
        _ => {
            Err(ApiError::status(StatusCode::NOT_FOUND, format!("page not found: {method} /containers/{id}/{action}")))
        }
    }
}

/// `POST /containers/{id}/update`: resources and the restart policy.
async fn update(engine: Engine, id: &str, req: Request) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .map_err(|e| ApiError::invalid(format!("reading the request body: {e}")))?;
    let v: Value = parse_json(&body)?;
    let num = |k: &str| v.get(k).and_then(Value::as_i64).filter(|n| *n != 0 || k == "PidsLimit");
    let restart_policy = match v.get("RestartPolicy") {
        Some(p) if p.get("Name").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) => Some(
            serde_json::from_value(p.clone()).map_err(|e| ApiError::invalid(format!("invalid RestartPolicy: {e}")))?,
        ),
        _ => None,
    };
    let u = berth_runtime::engine::Update {
        memory: num("Memory"),
        memory_swap: num("MemorySwap"),
        nano_cpus: num("NanoCpus"),
        cpu_shares: num("CpuShares"),
        cpu_quota: num("CpuQuota"),
        cpu_period: num("CpuPeriod"),
        pids_limit: num("PidsLimit"),
        restart_policy,
    };
    let warnings = engine.update(id, u).await?;
    Ok(Json(json!({"Warnings": warnings})).into_response())
}

pub fn dims(q: &Query) -> Result<(u16, u16), ApiError> {
    let h = q.get("h").and_then(|v| v.parse().ok()).ok_or_else(|| ApiError::invalid("resize needs h and w"))?;
    let w = q.get("w").and_then(|v| v.parse().ok()).ok_or_else(|| ApiError::invalid("resize needs h and w"))?;
    Ok((h, w))
}

fn wait(engine: Engine, id: &str, q: &Query) -> Result<Response, ApiError> {
    let cond = match q.get("condition").map(String::as_str).unwrap_or("") {
        "" | "not-running" => WaitCondition::NotRunning,
        "next-exit" => WaitCondition::NextExit,
        "removed" => WaitCondition::Removed,
        other => return Err(ApiError::invalid(format!("invalid condition: {other:?}"))),
    };
    let fut = engine.wait(id, cond)?;
    // Headers go out now; the body when the condition is met.
    let body = futures_util::stream::once(async move {
        let code = fut.await;
        Ok::<_, std::io::Error>(Bytes::from(format!("{{\"StatusCode\":{code},\"Error\":null}}\n")))
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response())
}

async fn attach(engine: Engine, id: &str, q: &Query, mut req: Request) -> Result<Response, ApiError> {
    let rec = engine.container(id)?;
    if rec.state.status == Status::Exited && !qbool(q, "logs") {
        return Err(ApiError::status(StatusCode::CONFLICT, "You cannot attach to a stopped container, start it first"));
    }
    let io = engine.attach(id)?;
    let tty = io.tty;
    // A terminal's input is watched for the detach keys, as dockerd watches it (only there).
    let keys = super::stream::detach_keys(q.get("detachKeys").map(String::as_str))?;
    let (on_upgrade, resp) = upgrade(&mut req, tty)?;
    let (want_in, want_out, want_err) = (qbool(q, "stdin"), qbool(q, "stdout"), qbool(q, "stderr"));
    let stdin_once = rec.config.stdin_once;
    let id = rec.id.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        let conn = hyper_util::rt::TokioIo::new(upgraded);
        let (mut rd, mut wr) = tokio::io::split(conn);
        let (detached_tx, mut detached) = tokio::sync::oneshot::channel::<()>();
        if want_in {
            let engine = engine.clone();
            let id = id.clone();
            tokio::spawn(async move {
                let mut escape = tty.then(|| super::stream::Escape::new(keys));
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let (input, detach) = match escape.as_mut() {
                                Some(e) => e.feed(&buf[..n]),
                                None => (buf[..n].to_vec(), false),
                            };
                            if !input.is_empty() {
                                let _ = engine.write_stdin(&id, Some(Bytes::from(input))).await;
                            }
                            if detach {
                                // The client goes; the container runs on, its stdin open.
                                let _ = detached_tx.send(());
                                return;
                            }
                        }
                    }
                }
                if stdin_once {
                    let _ = engine.write_stdin(&id, None).await;
                }
            });
        }
        let mut output = io.output;
        // Until stdin ends (the sender goes without a word): a finished receiver is not polled
        // again (it panics if it is).
        let mut watching = true;
        loop {
            let next = tokio::select! {
                next = output.recv() => next,
                r = &mut detached, if watching => {
                    if r.is_ok() {
                        break;
                    }
                    watching = false;
                    continue;
                }
            };
            let Some(Output::Data(stream, data)) = next else { break };
            let wanted = match stream {
                Stream::Stdout => want_out,
                Stream::Stderr => want_err,
            };
            if !wanted {
                continue;
            }
            let bytes = if tty { data } else { frame(stream as u8, &data) };
            if wr.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    Ok(resp)
}

fn logs(engine: Engine, id: &str, q: &Query) -> Result<Response, ApiError> {
    let since = q.get("since").and_then(|s| s.parse::<f64>().ok()).filter(|s| *s > 0.0);
    let until = q.get("until").and_then(|s| s.parse::<f64>().ok()).filter(|s| *s > 0.0);
    let tail = q.get("tail").and_then(|t| t.parse::<usize>().ok());
    let lq = LogQuery { stdout: qbool(q, "stdout"), stderr: qbool(q, "stderr"), tail, since, until };
    if !lq.stdout && !lq.stderr {
        return Err(ApiError::invalid("Bad parameters: you must choose at least one stream"));
    }
    let timestamps = qbool(q, "timestamps");
    let ls = engine.logs(id, lq, qbool(q, "follow"))?;
    let tty = ls.tty;
    let stream = futures_util::stream::unfold(ls.rx, move |mut rx| async move {
        let line = rx.recv().await?;
        let mut text = Vec::new();
        if timestamps {
            text.extend_from_slice(line.time.as_bytes());
            text.push(b' ');
        }
        text.extend_from_slice(line.log.as_bytes());
        let bytes = if tty { Bytes::from(text) } else { frame(line.stream as u8, &text) };
        Some((Ok::<_, std::io::Error>(bytes), rx))
    });
    Ok(([(header::CONTENT_TYPE, super::stream::content_type(tty))], Body::from_stream(stream)).into_response())
}

async fn exec_create(engine: Engine, id: &str, req: Request) -> Result<Response, ApiError> {
    let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.map_err(|e| ApiError::invalid(e.to_string()))?;
    let v: Value = parse_json(&body)?;
    let strings = |k: &str| -> Vec<String> {
        match v.get(k) {
            Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => vec![],
        }
    };
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let b = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    let config = ExecConfig {
        cmd: strings("Cmd"),
        env: strings("Env"),
        user: s("User"),
        working_dir: s("WorkingDir"),
        tty: b("Tty"),
        attach_stdin: b("AttachStdin"),
        attach_stdout: b("AttachStdout"),
        attach_stderr: b("AttachStderr"),
        console_size: berth_runtime::engine::console_size(v.get("ConsoleSize")),
        privileged: b("Privileged"),
    };
    let exec_id = engine.exec_create(id, config)?;
    Ok((StatusCode::CREATED, Json(json!({"Id": exec_id}))).into_response())
}
