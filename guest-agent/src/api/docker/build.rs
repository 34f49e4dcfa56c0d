//! `POST /build` (the classic builder, which `/_ping`'s `Builder-Version: 1` tells the docker
//! CLI to use) and `POST /build/prune`, answered as dockerd answers them: a JSON stream of
//! `stream`, pull progress and `aux` lines, and a failed step as `errorDetail` with its code.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query as Q, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use berth_runtime::Engine;
use berth_runtime::build::{BuildEvent, BuildOptions};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::archive::{all, body_to_file};
use super::images::{credentials_of, decode_header_json, progress_json};
use super::{ApiError, Query, qbool};

fn json_map<T: serde::de::DeserializeOwned>(q: &Query, key: &str) -> Result<BTreeMap<String, T>, ApiError> {
    match q.get(key).filter(|v| !v.is_empty()) {
        None => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_str(v).map_err(|e| ApiError::invalid(format!("invalid {key}: {e}"))),
    }
}

fn event_json(e: &BuildEvent) -> Value {
    match e {
        BuildEvent::Stream(s) => json!({"stream": s}),
        BuildEvent::Pull(p) => progress_json(p),
        BuildEvent::Aux(id) => json!({"aux": {"ID": id}}),
    }
}

/// `POST /build?t=&dockerfile=&buildargs=&labels=&target=&nocache=&pull=&rm=&forcerm=&q=`.
pub async fn build(
    State(engine): State<Engine>,
    Q(q): Q<Query>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    if q.get("remote").is_some_and(|r| !r.is_empty()) {
        return Err(ApiError::invalid(
            "remote build contexts are not supported: send the context as a tar in the body",
        ));
    }
    if q.get("version").is_some_and(|v| v == "2") {
        return Err(ApiError::invalid(
            "BuildKit is not supported by this engine: use the classic builder (DOCKER_BUILDKIT=0)",
        ));
    }
    let raw = raw.unwrap_or_default();
    // `X-Registry-Config`: base64 JSON, registry host to its AuthConfig.
    let mut credentials = BTreeMap::new();
    if let Some(Value::Object(map)) =
        headers.get("X-Registry-Config").and_then(|v| v.to_str().ok()).map(decode_header_json)
    {
        for (registry, auth) in map {
            let host = registry
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap_or("")
                .to_owned();
            let creds = credentials_of(&auth);
            if host == "index.docker.io" || host == "docker.io" {
                credentials.insert("docker.io".to_owned(), creds.clone());
                credentials.insert("index.docker.io".to_owned(), creds);
            } else {
                credentials.insert(host, creds);
            }
        }
    }
    let opts = BuildOptions {
        dockerfile: q.get("dockerfile").cloned().unwrap_or_default(),
        tags: all(&raw, "t").into_iter().filter(|t| !t.is_empty()).collect(),
        build_args: json_map(&q, "buildargs")?,
        labels: json_map(&q, "labels")?,
        target: q.get("target").cloned().filter(|t| !t.is_empty()),
        no_cache: qbool(&q, "nocache"),
        pull: qbool(&q, "pull"),
        remove: q.get("rm").is_none_or(|_| qbool(&q, "rm")),
        force_remove: qbool(&q, "forcerm"),
        quiet: qbool(&q, "q"),
        network_mode: q.get("networkmode").cloned().unwrap_or_default(),
        credentials,
    };
    let file = body_to_file(&engine, body).await?;
    let (tx, rx) = mpsc::unbounded_channel::<BuildEvent>();
    let task = tokio::spawn(async move { engine.build(file, opts, tx).await });
    super::stream::json_progress(rx, task, event_json).await
}

/// `POST /build/prune`: the layer cache and the images only it kept.
pub async fn prune(State(engine): State<Engine>) -> Result<Json<Value>, ApiError> {
    let (removed, freed) = super::blocking(move || Ok(engine.prune_build_cache()?)).await?;
    Ok(Json(json!({"CachesDeleted": removed, "SpaceReclaimed": freed})))
}
