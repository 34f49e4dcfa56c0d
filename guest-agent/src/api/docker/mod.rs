//! The Docker Engine API, as dockerd serves it (API 1.24 to 1.45, negotiated through `/_ping`
//! and `/version`; paths may carry a `/v1.NN` prefix).
//!
//! Each handler parses its request, calls one [`Engine`] method, and shapes the answer the way
//! dockerd does; [`error::ApiError`] is the one place engine errors become HTTP statuses.

mod archive;
mod build;
mod containers;
mod error;
mod exec;
mod images;
mod networks;
mod prune;
mod stats;
mod stream;
mod system;
mod volumes;

use std::collections::HashMap;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use berth_runtime::Engine;

pub use error::{ApiError, blocking};

/// The newest API version served.
pub const API_VERSION: &str = "1.45";
/// The oldest API version accepted.
pub const MIN_API_VERSION: &str = "1.24";

/// Query parameters as sent (repeated keys keep their last value).
pub type Query = HashMap<String, String>;

/// The `platform` parameter (`linux/arm64`), if given; one that names no platform is a 400.
pub fn platform(q: &Query) -> Result<Option<berth_runtime::image::platform::Platform>, ApiError> {
    q.get("platform")
        .filter(|p| !p.is_empty())
        .map(|p| berth_runtime::image::platform::Platform::parse(p).map_err(|e| ApiError::invalid(e.to_string())))
        .transpose()
}

/// Docker's boolean query values: `1`, `true`, `True`, `yes` are true.
pub fn qbool(q: &Query, key: &str) -> bool {
    q.get(key).is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True" | "TRUE" | "yes"))
}

/// The `filters` query parameter (JSON), or `null` when absent.
pub fn filters(q: &Query) -> Result<serde_json::Value, ApiError> {
    match q.get("filters") {
        None => Ok(serde_json::Value::Null),
        Some(f) => serde_json::from_str(f).map_err(|e| ApiError::invalid(format!("invalid filters: {e}"))),
    }
}

/// The API version a request was made for (its `/v1.NN` prefix, else the newest served):
/// some answers differ by version, as dockerd's do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClientVersion(pub u32, pub u32);

fn version_tuple(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Strips the `/v1.NN` prefix (refusing versions out of range) and adds dockerd's headers.
async fn versioned(mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let (major, minor) = version_tuple(API_VERSION).expect("const");
    req.extensions_mut().insert(ClientVersion(major, minor));
    if let Some(rest) = path.strip_prefix("/v") {
        let (ver, tail) = rest.split_once('/').map(|(v, t)| (v, format!("/{t}"))).unwrap_or((rest, "/".into()));
        if let Some(v) = version_tuple(ver) {
            if v > version_tuple(API_VERSION).expect("const") {
                return ApiError::invalid(format!(
                    "client version {ver} is too new. Maximum supported API version is {API_VERSION}"
                ))
                .into_response();
            }
            if v < version_tuple(MIN_API_VERSION).expect("const") {
                return ApiError::invalid(format!(
                    "client version {ver} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
                ))
                .into_response();
            }
            req.extensions_mut().insert(ClientVersion(v.0, v.1));
            let pq = match req.uri().query() {
                Some(q) => format!("{tail}?{q}"),
                None => tail,
            };
            if let Ok(uri) = pq.parse::<Uri>() {
                *req.uri_mut() = uri;
            }
        }
    }
    // One span per request: what the engine logs while serving it carries the method and path.
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path());
    let started = std::time::Instant::now();
    let mut resp = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.in_scope(|| {
        tracing::debug!(status = resp.status().as_u16(), ms = started.elapsed().as_millis() as u64, "served")
    });
    let h = resp.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    h.insert("Server", HeaderValue::from_static(concat!("Berth/", env!("CARGO_PKG_VERSION"), " (linux)")));
    resp
}

/// Swarm's endpoints on an engine that is no swarm manager: dockerd's 503.
async fn not_swarm() -> ApiError {
    ApiError::status(
        StatusCode::SERVICE_UNAVAILABLE,
        "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.",
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::status(StatusCode::NOT_FOUND, format!("page not found: {} {}", req.method(), req.uri().path()))
}

/// The whole Docker API router over `engine`.
pub fn router(engine: Engine) -> Router {
    let inner = Router::new()
        .route("/_ping", get(system::ping).head(system::ping))
        .route("/version", get(system::version))
        .route("/info", get(system::info))
        .route("/auth", post(system::auth))
        .route("/events", get(system::events))
        .route("/system/df", get(system::df))
        .route("/images/create", post(images::create))
        .route("/images/json", get(images::list))
        .route("/images/prune", post(images::prune))
        .route("/images/get", get(archive::save_many))
        .route("/images/load", post(archive::load))
        .route("/images/{*rest}", any(images::dispatch))
        .route("/distribution/{*rest}", get(images::distribution))
        .route("/containers/create", post(containers::create))
        .route("/containers/json", get(containers::list))
        .route("/containers/prune", post(containers::prune))
        .route("/containers/{id}", any(containers::delete))
        .route("/containers/{id}/{action}", any(containers::dispatch))
        .route("/exec/{id}/start", post(exec::start))
        .route("/exec/{id}/resize", post(exec::resize))
        .route("/exec/{id}/json", get(exec::inspect))
        .route("/volumes", get(volumes::list))
        .route("/volumes/create", post(volumes::create))
        .route("/volumes/prune", post(volumes::prune))
        .route("/volumes/{name}", get(volumes::inspect).delete(volumes::remove))
        .route("/networks", get(networks::list))
        .route("/networks/create", post(networks::create))
        .route("/networks/prune", post(networks::prune))
        .route("/networks/{id}", get(networks::inspect).delete(networks::remove))
        .route("/networks/{id}/connect", post(networks::connect))
        .route("/networks/{id}/disconnect", post(networks::disconnect))
        .route("/commit", post(archive::commit))
        .route("/swarm", any(not_swarm))
        .route("/swarm/{*rest}", any(not_swarm))
        .route("/nodes", any(not_swarm))
        .route("/nodes/{*rest}", any(not_swarm))
        .route("/services", any(not_swarm))
        .route("/services/{*rest}", any(not_swarm))
        .route("/tasks", any(not_swarm))
        .route("/tasks/{*rest}", any(not_swarm))
        .route("/secrets", any(not_swarm))
        .route("/secrets/{*rest}", any(not_swarm))
        .route("/configs", any(not_swarm))
        .route("/configs/{*rest}", any(not_swarm))
        .route("/plugins", get(|| async { axum::Json(serde_json::json!([])) }))
        .route("/build", post(build::build))
        .route("/build/prune", post(build::prune))
        .fallback(not_found)
        .with_state(engine);
    // The version prefix must be stripped before routing, so the middleware wraps the router.
    Router::new().fallback_service(inner).layer(middleware::from_fn(versioned))
}
