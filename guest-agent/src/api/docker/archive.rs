//! Archives: `POST /commit`, image save (`/images/{name}/get`, `/images/get`), load
//! (`/images/load`), import (`/images/create?fromSrc=-`), container export, and the archive
//! API behind `docker cp` (`HEAD|GET|PUT /containers/{id}/archive`).

use std::fs::File;
use std::io::Write;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Query as Q, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use berth_runtime::Engine;
use berth_runtime::engine::CommitOptions;
use berth_runtime::model::ContainerConfig;
use futures_util::StreamExt;
use serde_json::json;

use super::{ApiError, Query};

/// Every value of `key` in a raw query string (`changes` may repeat).
pub(super) fn all(raw: &str, key: &str) -> Vec<String> {
    form_urlencoded::parse(raw.as_bytes()).filter(|(k, _)| k == key).map(|(_, v)| v.into_owned()).collect()
}

/// Streams a scratch file as the response body.
fn file_response(file: File, content_type: &'static str) -> Response {
    let stream = tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file));
    ([(header::CONTENT_TYPE, content_type)], Body::from_stream(stream)).into_response()
}

/// Writes a request body into a scratch file of the engine.
pub(super) async fn body_to_file(engine: &Engine, body: Body) -> Result<File, ApiError> {
    let mut file = engine.scratch_file()?;
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("reading the request body: {e}")))?;
        file.write_all(&chunk)
            .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, format!("storing the upload: {e}")))?;
    }
    use std::io::Seek;
    file.rewind().map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(file)
}

/// `POST /commit?container=&repo=&tag=&comment=&author=&changes=`.
pub async fn commit(
    State(engine): State<Engine>,
    Q(q): Q<Query>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let container = q.get("container").cloned().ok_or_else(|| ApiError::invalid("container is required"))?;
    // None, `null` and `{}` alike mean the container's own config (dockerd decodes them all
    // to none); a config with fields is merged with it.
    let value: serde_json::Value =
        if body.is_empty() { serde_json::Value::Null } else { super::error::parse_json(&body)? };
    let config: Option<ContainerConfig> = match value {
        serde_json::Value::Null => None,
        serde_json::Value::Object(m) if m.is_empty() => None,
        v => Some(serde_json::from_value(v).map_err(|e| ApiError::invalid(format!("invalid config: {e}")))?),
    };
    let repo = q.get("repo").cloned().unwrap_or_default();
    let reference = (!repo.is_empty()).then(|| match q.get("tag").filter(|t| !t.is_empty()) {
        Some(t) => format!("{repo}:{t}"),
        None => repo.clone(),
    });
    let opts = CommitOptions {
        reference,
        comment: q.get("comment").cloned().unwrap_or_default(),
        author: q.get("author").cloned().unwrap_or_default(),
        changes: all(raw.as_deref().unwrap_or(""), "changes"),
        config,
        // dockerd's default: paused unless `pause=0` (or false) says otherwise.
        pause: q.get("pause").is_none_or(|p| !matches!(p.as_str(), "0" | "false" | "False")),
    };
    let id = engine.commit(&container, opts).await?;
    Ok((StatusCode::CREATED, Json(json!({"Id": id}))).into_response())
}

pub async fn save(engine: Engine, names: Vec<String>) -> Result<Response, ApiError> {
    let file = engine.save(&names).await?;
    Ok(file_response(file, "application/x-tar"))
}

/// `GET /images/get?names=a&names=b`.
pub async fn save_many(State(engine): State<Engine>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let names = all(raw.as_deref().unwrap_or(""), "names");
    if names.is_empty() {
        return Err(ApiError::invalid("names is required"));
    }
    save(engine, names).await
}

/// `POST /images/load`: answers a JSON stream of `Loaded image: ...` lines. An archive that
/// cannot be loaded (not an archive, a bad layer) is answered as dockerd answers it: 200 and
/// the error as the stream's line, which clients raise as their own load error.
pub async fn load(State(engine): State<Engine>, body: Body) -> Result<Response, ApiError> {
    let file = body_to_file(&engine, body).await?;
    let mut out = String::new();
    match engine.load(file).await {
        Ok(loaded) => {
            for l in loaded {
                out.push_str(&serde_json::to_string(&json!({"stream": format!("{l}\n")})).expect("json"));
                out.push('\n');
            }
        }
        Err(e) => {
            out.push_str(&super::stream::error_line(e).to_string());
            out.push('\n');
        }
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

/// `POST /images/create?fromSrc=-&repo=&tag=&changes=&message=`.
pub async fn import(engine: Engine, q: &Query, raw: &str, body: Body) -> Result<Response, ApiError> {
    if q.get("fromSrc").map(String::as_str) != Some("-") {
        return Err(ApiError::invalid("only fromSrc=- (the request body) is supported"));
    }
    let repo = q.get("repo").cloned().unwrap_or_default();
    let reference = (!repo.is_empty()).then(|| match q.get("tag").filter(|t| !t.is_empty()) {
        Some(t) => format!("{repo}:{t}"),
        None => repo.clone(),
    });
    let file = body_to_file(&engine, body).await?;
    let id = engine.import(file, reference, all(raw, "changes"), q.get("message").cloned().unwrap_or_default()).await?;
    let line = format!("{}\r\n", json!({"status": id}));
    Ok(([(header::CONTENT_TYPE, "application/json")], line).into_response())
}

pub async fn export(engine: Engine, id: &str) -> Result<Response, ApiError> {
    Ok(file_response(engine.export(id).await?, "application/x-tar"))
}

fn stat_header(stat: &berth_runtime::container::rootfs::PathStat) -> HeaderValue {
    let json = serde_json::to_vec(stat).expect("json");
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(json)).expect("base64 is a valid header")
}

fn path_of(q: &Query) -> Result<String, ApiError> {
    q.get("path").filter(|p| !p.is_empty()).cloned().ok_or_else(|| ApiError::invalid("path is required"))
}

pub fn stat(engine: Engine, id: &str, q: &Query) -> Result<Response, ApiError> {
    let st = engine.archive_stat(id, &path_of(q)?)?;
    let mut resp = StatusCode::OK.into_response();
    resp.headers_mut().insert("X-Docker-Container-Path-Stat", stat_header(&st));
    Ok(resp)
}

pub async fn get_archive(engine: Engine, id: &str, q: &Query) -> Result<Response, ApiError> {
    let (file, st) = engine.archive_get(id, &path_of(q)?).await?;
    let mut resp = file_response(file, "application/x-tar");
    resp.headers_mut().insert("X-Docker-Container-Path-Stat", stat_header(&st));
    Ok(resp)
}

pub async fn put_archive(engine: Engine, id: &str, q: &Query, req: Request) -> Result<Response, ApiError> {
    let path = path_of(q)?;
    let file = body_to_file(&engine, req.into_body()).await?;
    engine.archive_put(id, &path, file).await?;
    Ok(StatusCode::OK.into_response())
}
