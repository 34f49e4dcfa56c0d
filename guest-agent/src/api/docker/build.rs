//! `POST /build` (the classic builder, which `/_ping`'s `Builder-Version: 1` tells the docker
//! CLI to use) and `POST /build/prune`, answered as dockerd answers them: a JSON stream of
//! `stream`, pull progress and `aux` lines, and a failed step as `errorDetail` with its code.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query as Q, RawQuery, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use berth_runtime::build::{BuildEvent, BuildOptions};
use berth_runtime::{Engine, EngineError};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::archive::{all, body_to_file};
use super::images::{credentials_of, decode_header_json, line, progress_json};
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

fn error_json(e: EngineError) -> Value {
    let code = match &e {
        EngineError::CommandFailed { code, .. } => Some(*code),
        _ => None,
    };
    let msg = ApiError::from(e).message;
    match code {
        Some(c) => json!({"errorDetail": {"code": c, "message": msg}, "error": msg}),
        None => json!({"errorDetail": {"message": msg}, "error": msg}),
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
    let (tx, mut rx) = mpsc::unbounded_channel::<BuildEvent>();
    let task = tokio::spawn(async move { engine.build(file, opts, tx).await });
    // Until the first line, an error is an HTTP error (a bad context or Dockerfile), as dockerd.
    // The channel closes only when the build is over, so no event means it ended already.
    let first = rx.recv().await;
    let task = match first {
        Some(_) => Some(task),
        None => match task.await {
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(ApiError::status(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            Ok(Ok(_)) => None,
        },
    };
    let stream = futures_util::stream::unfold((first, rx, task), |(pending, mut rx, task)| async move {
        if let Some(e) = pending {
            return Some((Ok::<_, std::io::Error>(line(&event_json(&e))), (None, rx, task)));
        }
        if let Some(e) = rx.recv().await {
            return Some((Ok(line(&event_json(&e))), (None, rx, task)));
        }
        let task = task?;
        match task.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some((Ok(line(&error_json(e))), (None, rx, None))),
            Err(e) => Some((Ok(line(&json!({"error": e.to_string()}))), (None, rx, None))),
        }
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(stream)).into_response())
}

/// `POST /build/prune`: the layer cache and the images only it kept.
pub async fn prune(State(engine): State<Engine>) -> Result<Json<Value>, ApiError> {
    let (removed, freed) = tokio::task::spawn_blocking(move || engine.prune_build_cache())
        .await
        .map_err(|e| ApiError::status(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok(Json(json!({"CachesDeleted": removed, "SpaceReclaimed": freed})))
}
