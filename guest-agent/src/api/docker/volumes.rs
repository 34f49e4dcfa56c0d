//! `/volumes...`: create, list, inspect, remove, prune.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query as Q, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_runtime::Engine;
use berth_runtime::engine::VolumeInfo;
use serde_json::{Value, json};

use super::{ApiError, Query, qbool};

/// One volume as `GET /volumes` lists it (`GET /system/df` adds its size).
pub(super) fn volume_json(v: &VolumeInfo) -> Value {
    let vol = &v.volume;
    json!({
        "Name": vol.name,
        "Driver": "local",
        "Mountpoint": vol.mountpoint,
        "CreatedAt": vol.created,
        "Labels": vol.labels,
        "Options": vol.options,
        "Scope": "local",
        "UsageData": {"Size": -1, "RefCount": v.users.len()},
    })
}

pub async fn create(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let v: Value = if body.is_empty() { json!({}) } else { super::error::parse_json(&body)? };
    let name = v.get("Name").and_then(|n| n.as_str()).unwrap_or("");
    let labels = v.get("Labels").cloned().and_then(|l| serde_json::from_value(l).ok()).unwrap_or_default();
    let vol = engine.volume_create(name, labels)?;
    let info = engine.volume(&vol.name)?;
    Ok((StatusCode::CREATED, Json(volume_json(&info))).into_response())
}

pub async fn list(State(engine): State<Engine>, Q(q): Q<Query>) -> Result<Json<Value>, ApiError> {
    let filters: Value = q.get("filters").and_then(|f| serde_json::from_str(f).ok()).unwrap_or(Value::Null);
    let dangling = filters.get("dangling").map(|d| d.to_string().contains("true"));
    let vols: Vec<Value> = engine
        .volumes()?
        .iter()
        .filter(|v| dangling.is_none_or(|d| d == v.users.is_empty()))
        .map(volume_json)
        .collect();
    Ok(Json(json!({"Volumes": vols, "Warnings": []})))
}

pub async fn inspect(State(engine): State<Engine>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(volume_json(&engine.volume(&name)?)))
}

pub async fn remove(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    Q(q): Q<Query>,
) -> Result<StatusCode, ApiError> {
    let force = qbool(&q, "force");
    super::blocking(move || Ok(engine.volume_remove(&name, force)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn prune(State(engine): State<Engine>, Q(q): Q<Query>) -> Result<Json<Value>, ApiError> {
    let filter = super::prune::PruneFilter::parse(&q, &["all"])?;
    let all = filter.flag("all") == Some(true);
    let (removed, freed) =
        super::blocking(move || Ok(engine.volume_prune(all, |v| filter.selects(&v.created, &v.labels))?)).await?;
    Ok(Json(json!({"VolumesDeleted": removed, "SpaceReclaimed": freed})))
}
