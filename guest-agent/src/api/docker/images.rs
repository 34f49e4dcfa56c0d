//! `/images/...`: pull (`create`), list, inspect, tag, remove, prune, history.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query as Q, RawQuery, Request, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use berth_runtime::Engine;
use berth_runtime::engine::RemovedImage;
use berth_runtime::image::pull::{Credentials, Progress};
use berth_runtime::image::{ImageRecord, familiar};
use berth_runtime::model::{ImageConfig, parse_time};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{ApiError, Query, qbool};

/// Decodes `X-Registry-Auth` (base64url JSON, as the docker CLI sends it).
fn credentials(headers: &HeaderMap) -> Credentials {
    let Some(raw) = headers.get("X-Registry-Auth").and_then(|v| v.to_str().ok()) else {
        return Credentials::default();
    };
    credentials_of(&decode_header_json(raw))
}

/// A header's base64 (URL-safe or standard, padded or not) JSON; `null` if it is neither.
pub(super) fn decode_header_json(raw: &str) -> Value {
    let raw = raw.trim();
    let bytes = base64::engine::general_purpose::URL_SAFE
        .decode(raw)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw.trim_end_matches('=')))
        .or_else(|_| base64::engine::general_purpose::STANDARD.decode(raw))
        .unwrap_or_default();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Docker's `AuthConfig` object as credentials.
pub(super) fn credentials_of(v: &Value) -> Credentials {
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let (mut username, mut password) = (s("username"), s("password"));
    if username.is_empty()
        && let Some((u, p)) = base64::engine::general_purpose::STANDARD
            .decode(s("auth"))
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.split_once(':').map(|(u, p)| (u.to_owned(), p.to_owned())))
    {
        username = u;
        password = p;
    }
    let token = if !s("registrytoken").is_empty() { s("registrytoken") } else { s("identitytoken") };
    Credentials { username, password, token }
}

fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2}MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.2}kB", f / 1e3)
    } else {
        format!("{n}B")
    }
}

/// A progress line as dockerd's JSON message.
pub(super) fn progress_json(p: &Progress) -> Value {
    if let Some(aux) = &p.aux {
        return json!({"progressDetail": {}, "aux": aux});
    }
    let mut v = json!({"status": p.status});
    if let Some(id) = &p.id {
        v["id"] = json!(id);
    }
    if let Some(cur) = p.current {
        v["progressDetail"] = json!({"current": cur, "total": p.total});
        if let Some(total) = p.total.filter(|t| *t > 0) {
            let width = 50;
            let done = ((cur as f64 / total as f64) * width as f64) as usize;
            let bar =
                format!("[{}>{}]", "=".repeat(done.min(width).saturating_sub(1)), " ".repeat(width - done.min(width)));
            v["progress"] = json!(format!("{bar} {}/{}", human(cur), human(total)));
        }
    } else if p.id.is_some() {
        v["progressDetail"] = json!({});
    }
    v
}

/// `GET /distribution/{name}/json`: the registry's descriptor of `name` and its platforms.
pub async fn distribution(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let name = name.strip_suffix("/json").ok_or_else(|| {
        ApiError::status(axum::http::StatusCode::NOT_FOUND, format!("page not found: GET /distribution/{name}"))
    })?;
    let d = engine.distribution(name, &credentials(&headers)).await?;
    let platforms: Vec<Value> = d
        .platforms
        .iter()
        .map(|(arch, os, variant)| {
            let mut p = json!({"architecture": arch, "os": os});
            if let Some(v) = variant {
                p["variant"] = json!(v);
            }
            p
        })
        .collect();
    Ok(Json(json!({
        "Descriptor": {"mediaType": d.media_type, "digest": d.digest, "size": d.size},
        "Platforms": platforms,
    })))
}

/// `POST /images/create?fromImage=&tag=` (pull), streaming progress.
pub async fn create(
    State(engine): State<Engine>,
    Q(q): Q<Query>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if q.contains_key("fromSrc") {
        return super::archive::import(engine, &q, raw.as_deref().unwrap_or(""), body).await;
    }
    let from = q.get("fromImage").cloned().unwrap_or_default();
    if from.is_empty() {
        return Err(ApiError::invalid("fromImage or fromSrc is required"));
    }
    let tag = q.get("tag").cloned().unwrap_or_default();
    let name = if tag.is_empty() {
        from
    } else if tag.starts_with("sha256:") {
        format!("{from}@{tag}")
    } else {
        format!("{from}:{tag}")
    };
    let platform = super::platform(&q)?;
    let creds = credentials(&headers);
    let (tx, rx) = mpsc::unbounded_channel::<Progress>();
    let task = {
        let engine = engine.clone();
        tokio::spawn(async move { engine.pull(&name, &creds, platform.as_ref(), &tx).await })
    };
    super::stream::json_progress(rx, task, progress_json).await
}

fn unix(t: &str) -> i64 {
    parse_time(t).map(|t| t.unix_timestamp()).unwrap_or(0)
}

/// One image as `GET /images/json` and `GET /system/df` list it.
pub(super) fn summary(engine: &Engine, i: &ImageRecord) -> Value {
    let labels = engine.image_config(&i.id).map(|c| json!(c.config.labels)).unwrap_or(json!({}));
    json!({
        "Id": i.id,
        "ParentId": i.parent,
        "RepoTags": i.repo_tags.iter().map(|t| familiar(t)).collect::<Vec<_>>(),
        "RepoDigests": i.repo_digests.iter().map(|t| familiar(t)).collect::<Vec<_>>(),
        "Created": unix(&i.created),
        "Size": i.size(),
        "VirtualSize": i.size(),
        "SharedSize": -1,
        "Labels": labels,
        "Containers": -1,
    })
}

/// Whether `pattern` (a glob with `*`) names `tag` (`repo:tag`) or its repository.
fn reference_matches(pattern: &str, tag: &str) -> bool {
    let repo = match tag.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => r,
        _ => tag,
    };
    glob(pattern, tag) || glob(pattern, repo)
}

fn glob(pattern: &str, s: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == s,
        Some((head, rest)) => {
            s.starts_with(head)
                && (0..=s.len() - head.len())
                    .any(|i| s.is_char_boundary(head.len() + i) && glob(rest, &s[head.len() + i..]))
        }
    }
}

/// `GET /images/json`.
pub async fn list(State(engine): State<Engine>, Q(q): Q<Query>) -> Result<Json<Value>, ApiError> {
    let filters = super::filters(&q)?;
    let dangling = filters.get("dangling").map(|d| d.to_string().contains("true"));
    let reference: Vec<String> = super::containers::filter_values(&filters, "reference");
    let all = super::qbool(&q, "all");
    let mut out = Vec::new();
    let images = engine.images();
    let parents: std::collections::HashSet<&str> = images.iter().map(|i| i.parent.as_str()).collect();
    for img in images.iter().cloned() {
        // Untagged parents of other images are a build's intermediate images: hidden without
        // `-a`, and never dangling (as dockerd lists them).
        let intermediate = img.repo_tags.is_empty() && parents.contains(img.id.as_str());
        if intermediate && !all {
            continue;
        }
        if let Some(d) = dangling
            && d != (img.repo_tags.is_empty() && !intermediate)
        {
            continue;
        }
        let mut img = img;
        if !reference.is_empty() {
            // As dockerd: only the tags that match are listed, and images with none are left out.
            img.repo_tags.retain(|t| reference.iter().any(|r| reference_matches(r, &familiar(t))));
            img.repo_digests.retain(|d| {
                let repo = familiar(d.split('@').next().unwrap_or(d));
                reference.iter().any(|r| glob(r, &repo))
            });
            if img.repo_tags.is_empty() {
                continue;
            }
        }
        out.push(summary(&engine, &img));
    }
    Ok(Json(Value::Array(out)))
}

fn inspect_json(engine: &Engine, i: &ImageRecord, c: &ImageConfig) -> Value {
    let chain: Vec<String> = i.layers.iter().map(|l| l.chain_id.clone()).collect();
    let mut config = serde_json::to_value(&c.config).unwrap_or(Value::Null);
    if let Some(o) = config.as_object_mut() {
        // dockerd shows these null when the image has none.
        o.entry("OnBuild").or_insert(Value::Null);
        o.entry("Volumes").or_insert(Value::Null);
    }
    let mut out = json!({
        "Id": i.id,
        "RepoTags": i.repo_tags.iter().map(|t| familiar(t)).collect::<Vec<_>>(),
        "RepoDigests": i.repo_digests.iter().map(|t| familiar(t)).collect::<Vec<_>>(),
        "Parent": i.parent,
        "Comment": i.comment,
        "Created": c.created.clone().unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        "DockerVersion": "",
        "Author": c.author.clone().unwrap_or_default(),
        "Container": "",
        "Config": config,
        "Architecture": c.architecture,
        "Os": c.os,
        "Size": i.size(),
        "VirtualSize": i.size(),
        "GraphDriver": {"Name": "overlay2", "Data": engine.stores().snapshots.graph_data(None, &chain)},
        "RootFS": {"Type": "layers", "Layers": c.rootfs.diff_ids},
        "Metadata": {"LastTagTime": "0001-01-01T00:00:00Z"},
    });
    // Only an image of a variant (arm v7, arm64 v8) says which.
    if let Some(v) = &c.variant {
        out["Variant"] = json!(v);
    }
    out
}

/// What API 1.44 and older carry besides: `ContainerConfig`, the building container's config
/// the image records (dockerd shows an empty one when it records none); 1.45 dropped it.
fn for_version(out: &mut Value, c: &ImageConfig, version: Option<&super::ClientVersion>) {
    if version.is_some_and(|v| *v >= super::ClientVersion(1, 45)) {
        return;
    }
    out["ContainerConfig"] = match c.extra.get("container_config") {
        Some(v) if v.is_object() => v.clone(),
        _ => json!({"Hostname": "", "Domainname": "", "User": "", "AttachStdin": false, "AttachStdout": false,
                    "AttachStderr": false, "Tty": false, "OpenStdin": false, "StdinOnce": false, "Env": null,
                    "Cmd": null, "Image": "", "Volumes": null, "WorkingDir": "", "Entrypoint": null,
                    "OnBuild": null, "Labels": null}),
    };
}

/// `/images/{name}/json|tag|history|get|push` and `DELETE /images/{name}`.
pub async fn dispatch(
    State(engine): State<Engine>,
    Path(rest): Path<String>,
    Q(q): Q<Query>,
    req: Request,
) -> Result<Response, ApiError> {
    let method = req.method().clone();
    let split = rest.rsplit_once('/');
    match (&method, split) {
        (&Method::GET, Some((name, "json"))) => {
            let (rec, config) = engine.image(name)?;
            let mut out = inspect_json(&engine, &rec, &config);
            for_version(&mut out, &config, req.extensions().get::<super::ClientVersion>());
            Ok(Json(out).into_response())
        }
        (&Method::GET, Some((name, "history"))) => {
            let (rec, config) = engine.image(name)?;
            let mut out = Vec::new();
            for h in config.history.iter().rev() {
                out.push(json!({"Id": "<missing>", "Created": h.created.as_deref().map(unix).unwrap_or(0), "CreatedBy": h.created_by.clone().unwrap_or_default(), "Tags": null, "Size": 0, "Comment": h.comment.clone().unwrap_or_default()}));
            }
            if let Some(first) = out.first_mut() {
                first["Id"] = json!(rec.id);
                first["Tags"] = json!(rec.repo_tags.iter().map(|t| familiar(t)).collect::<Vec<_>>());
            }
            Ok(Json(Value::Array(out)).into_response())
        }
        (&Method::POST, Some((name, "tag"))) => {
            let repo = q.get("repo").cloned().unwrap_or_default();
            engine.tag(name, &repo, q.get("tag").map(String::as_str).unwrap_or(""))?;
            Ok(axum::http::StatusCode::CREATED.into_response())
        }
        (&Method::GET, Some((name, "get"))) => super::archive::save(engine, vec![name.to_owned()]).await,
        (&Method::POST, Some((name, "push"))) => {
            let (name, tag) = (name.to_owned(), q.get("tag").cloned().unwrap_or_default());
            let creds = credentials(req.headers());
            let (tx, rx) = mpsc::unbounded_channel::<Progress>();
            let task = tokio::spawn(async move { engine.push(&name, &tag, &creds, &tx).await });
            super::stream::json_progress(rx, task, progress_json).await
        }
        (&Method::DELETE, _) => {
            let (e, name, force) = (engine.clone(), rest.clone(), qbool(&q, "force"));
            let removed = super::blocking(move || Ok(e.remove_image(&name, force)?)).await?;
            let out: Vec<Value> = removed
                .into_iter()
                .map(|r| match r {
                    RemovedImage::Untagged(t) => json!({"Untagged": t}),
                    RemovedImage::Deleted(id) => json!({"Deleted": id}),
                })
                .collect();
            Ok(Json(Value::Array(out)).into_response())
        }
        _ => {
            Err(ApiError::status(axum::http::StatusCode::NOT_FOUND, format!("page not found: {method} /images/{rest}")))
        }
    }
}

/// `POST /images/prune`.
pub async fn prune(State(engine): State<Engine>, Q(q): Q<Query>) -> Result<Json<Value>, ApiError> {
    let filter = super::prune::PruneFilter::parse(&q, &["dangling"])?;
    let all = filter.flag("dangling") == Some(false);
    let (removed, freed) = super::blocking(move || {
        Ok(engine.prune_images(all, |rec, config| filter.selects(&rec.created, &config.config.labels))?)
    })
    .await?;
    let list: Vec<Value> = removed
        .into_iter()
        .map(|r| match r {
            RemovedImage::Untagged(t) => json!({"Untagged": t}),
            RemovedImage::Deleted(id) => json!({"Deleted": id}),
        })
        .collect();
    Ok(Json(json!({"ImagesDeleted": list, "SpaceReclaimed": freed})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_filters_match_like_dockerd() {
        assert!(reference_matches("busybox", "busybox:latest"));
        assert!(reference_matches("busybox:latest", "busybox:latest"));
        assert!(!reference_matches("busybox:1", "busybox:latest"));
        assert!(reference_matches("127.0.0.1:5000/*", "127.0.0.1:5000/bb:latest"));
        assert!(reference_matches("b*x", "busybox:latest"));
        assert!(!reference_matches("mine/copy", "busybox:latest"));
    }
}
