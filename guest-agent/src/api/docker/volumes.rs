//! `/volumes...`: create, list, inspect, remove, prune.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query as Q, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_runtime::Engine;
use berth_runtime::engine::VolumeInfo;
use serde_json::{Value, json};

use super::containers::filter_values;
use super::{ApiError, ClientVersion, Query, qbool};

/// One volume as `GET /volumes` lists it (`GET /system/df` adds its usage; dockerd 20.10 shows
/// none in lists and inspect).
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
    })
}

pub async fn create(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let v: Value = if body.is_empty() { json!({}) } else { super::error::parse_json(&body)? };
    let name = v.get("Name").and_then(|n| n.as_str()).unwrap_or("");
    // Volume plugins are not served: only the local driver's volumes.
    match v.get("Driver").and_then(|d| d.as_str()).unwrap_or("") {
        "" | "local" => {}
        other => {
            return Err(ApiError::status(
                StatusCode::NOT_FOUND,
                format!("create {name}: error looking up volume plugin {other}: plugin \"{other}\" not found"),
            ));
        }
    }
    let labels = v.get("Labels").cloned().and_then(|l| serde_json::from_value(l).ok()).unwrap_or_default();
    let options = match v.get("DriverOpts") {
        None | Some(Value::Null) => None,
        Some(o) => {
            Some(serde_json::from_value(o.clone()).map_err(|e| ApiError::invalid(format!("invalid DriverOpts: {e}")))?)
        }
    };
    let vol = engine.volume_create(name, labels, options)?;
    let info = engine.volume(&vol.name)?;
    Ok((StatusCode::CREATED, Json(volume_json(&info))).into_response())
}

/// `GET /volumes` with dockerd's filters: `name` (a regular expression, as dockerd matches
/// it), `dangling`, `driver`, `label` (`key` or `key=value`).
pub async fn list(State(engine): State<Engine>, Q(q): Q<Query>) -> Result<Json<Value>, ApiError> {
    let filters = super::filters(&q)?;
    let dangling = filter_values(&filters, "dangling");
    let names = filter_values(&filters, "name");
    // A pattern that is not a regular expression matches nothing, as with dockerd.
    let patterns: Vec<regex::Regex> = names.iter().filter_map(|n| regex::Regex::new(n).ok()).collect();
    let drivers = filter_values(&filters, "driver");
    let labels = filter_values(&filters, "label");
    let vols: Vec<Value> = engine
        .volumes()?
        .iter()
        .filter(|v| dangling.is_empty() || dangling.iter().any(|d| (d == "true" || d == "1") == v.users.is_empty()))
        .filter(|v| names.is_empty() || patterns.iter().any(|p| p.is_match(&v.volume.name)))
        .filter(|_| drivers.is_empty() || drivers.iter().any(|d| d == "local"))
        .filter(|v| labels.iter().all(|l| super::prune::label_matches(&v.volume.labels, l)))
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

/// `POST /volumes/prune`: unused anonymous volumes, or every unused volume with `all=true`, and
/// for clients of API 1.41 and older (docker 20.10) every unused volume, as dockerd answers
/// them (named volumes were pruned too before 1.42).
pub async fn prune(
    State(engine): State<Engine>,
    Extension(version): Extension<ClientVersion>,
    Q(q): Q<Query>,
) -> Result<Json<Value>, ApiError> {
    let filter = super::prune::PruneFilter::parse(&q, &["all"])?;
    let all = filter.flag("all") == Some(true) || version < ClientVersion(1, 42);
    let (removed, freed) =
        super::blocking(move || Ok(engine.volume_prune(all, |v| filter.selects(&v.created, &v.labels))?)).await?;
    Ok(Json(json!({"VolumesDeleted": removed, "SpaceReclaimed": freed})))
}
