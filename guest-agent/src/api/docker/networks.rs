//! `/networks`: list (with dockerd's filters), inspect (with the containers on it), create
//! (bridge driver, IPAM subnet, gateway and range), remove, prune, connect and disconnect.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query as Q, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use berth_runtime::Engine;
use berth_runtime::container::Endpoint;
use berth_runtime::engine::{NetworkCreate, NetworkInfo, PoolRequest};
use serde_json::{Value, json};

use super::containers::filter_values;
use super::error::parse_json;
use super::{ApiError, Query};

/// A network as dockerd's `NetworkResource` has it.
pub(super) fn network_json(n: &NetworkInfo, with_containers: bool) -> Value {
    let config: Vec<Value> = n
        .ipam
        .iter()
        .map(|p| {
            let mut c = json!({"Subnet": p.subnet});
            if let Some(g) = &p.gateway {
                c["Gateway"] = json!(g);
            }
            if let Some(r) = &p.range {
                c["IPRange"] = json!(r);
            }
            if !p.aux.is_empty() {
                c["AuxiliaryAddresses"] = json!(p.aux);
            }
            c
        })
        .collect();
    let mut containers = serde_json::Map::new();
    if with_containers {
        for c in n.containers.iter().filter(|c| c.running()) {
            let Some((ip, prefix, _, mac)) = c.address_on(&n.name) else { continue };
            let ip6 = c.ipv6_on(&n.name).map(|v6| format!("{}/{}", v6.address, v6.prefix)).unwrap_or_default();
            containers.insert(
                c.id.clone(),
                json!({"Name": c.name, "EndpointID": endpoint_id(&c.id, &n.id), "MacAddress": mac,
                       "IPv4Address": format!("{ip}/{prefix}"), "IPv6Address": ip6}),
            );
        }
    }
    // dockerd shows null for its own networks, the options given (or none) for the others.
    let ipam_options = if n.builtin { Value::Null } else { json!(n.ipam_options) };
    let created = if n.created.is_empty() { "0001-01-01T00:00:00Z".to_owned() } else { n.created.clone() };
    json!({
        "Name": n.name,
        "Id": n.id,
        "Created": created,
        "Scope": "local",
        "Driver": n.driver,
        "EnableIPv6": n.enable_ipv6,
        "IPAM": {"Driver": "default", "Options": ipam_options, "Config": config},
        "Internal": n.internal,
        "Attachable": n.attachable,
        "Ingress": false,
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": false,
        "Containers": containers,
        "Options": n.options,
        "Labels": n.labels,
    })
}

/// A stable endpoint ID for a container on a network.
pub(super) fn endpoint_id(container: &str, network: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(format!("{container}/{network}")))
}

pub async fn list(State(engine): State<Engine>, Q(q): Q<Query>) -> Result<Json<Value>, ApiError> {
    let filters = super::filters(&q)?;
    let names = filter_values(&filters, "name");
    let ids = filter_values(&filters, "id");
    let labels = filter_values(&filters, "label");
    let drivers = filter_values(&filters, "driver");
    let kinds = filter_values(&filters, "type");
    let dangling = filter_values(&filters, "dangling");
    let out: Vec<Value> = engine
        .networks()
        .iter()
        .filter(|n| names.is_empty() || names.iter().any(|x| n.name.contains(x.as_str())))
        .filter(|n| ids.is_empty() || ids.iter().any(|x| n.id.starts_with(x.as_str())))
        .filter(|n| labels.iter().all(|l| super::prune::label_matches(&n.labels, l)))
        .filter(|n| drivers.is_empty() || drivers.contains(&n.driver))
        .filter(|n| kinds.is_empty() || kinds.iter().any(|k| (k == "builtin") == n.builtin))
        .filter(|n| {
            dangling.is_empty() || dangling.iter().any(|d| (d == "true") == (!n.builtin && n.containers.is_empty()))
        })
        .map(|n| network_json(n, false))
        .collect();
    Ok(Json(Value::Array(out)))
}

pub async fn inspect(State(engine): State<Engine>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(network_json(&engine.network(&id)?, true)))
}

pub async fn create(State(engine): State<Engine>, body: Bytes) -> Result<Response, ApiError> {
    let v: Value = parse_json(&body)?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let map = |k: &str| -> Result<BTreeMap<String, String>, ApiError> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(BTreeMap::new()),
            Some(m) => serde_json::from_value(m.clone()).map_err(|e| ApiError::invalid(format!("invalid {k}: {e}"))),
        }
    };
    // The first IPAM config of each family (an IPv6 one by its subnet).
    let configs = v.get("IPAM").and_then(|i| i.get("Config")).and_then(Value::as_array).cloned().unwrap_or_default();
    let is_v6 = |c: &Value| c.get("Subnet").and_then(Value::as_str).is_some_and(|s| s.contains(':'));
    let ipv4 = configs.iter().find(|c| !is_v6(c)).map(pool_request).transpose()?.unwrap_or_default();
    let ipv6 = configs.iter().find(|c| is_v6(c)).map(pool_request).transpose()?;
    let req = NetworkCreate {
        name: s("Name"),
        driver: s("Driver"),
        internal: v.get("Internal").and_then(Value::as_bool).unwrap_or(false),
        attachable: v.get("Attachable").and_then(Value::as_bool).unwrap_or(false),
        labels: map("Labels")?,
        options: map("Options")?,
        ipv4,
        ipv6,
        enable_ipv6: v.get("EnableIPv6").and_then(Value::as_bool).unwrap_or(false),
        ipam_options: match v.get("IPAM").and_then(|i| i.get("Options")) {
            None | Some(Value::Null) => None,
            Some(m) => Some(
                serde_json::from_value(m.clone())
                    .map_err(|e| ApiError::invalid(format!("invalid IPAM Options: {e}")))?,
            ),
        },
    };
    let id = engine.network_create(req).await?;
    Ok((StatusCode::CREATED, Json(json!({"Id": id, "Warning": ""}))).into_response())
}

/// One IPAM config as a create gives it.
fn pool_request(c: &Value) -> Result<PoolRequest, ApiError> {
    let field = |k: &str| c.get(k).and_then(Value::as_str).filter(|x| !x.is_empty()).map(str::to_owned);
    Ok(PoolRequest {
        subnet: field("Subnet"),
        gateway: field("Gateway"),
        ip_range: field("IPRange"),
        aux_addresses: match c.get("AuxiliaryAddresses") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(m) => serde_json::from_value(m.clone())
                .map_err(|e| ApiError::invalid(format!("invalid AuxiliaryAddresses: {e}")))?,
        },
    })
}

pub async fn remove(State(engine): State<Engine>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    engine.network_remove(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn prune(State(engine): State<Engine>, Q(q): Q<Query>) -> Result<Json<Value>, ApiError> {
    let filter = super::prune::PruneFilter::parse(&q, &[])?;
    let removed = engine.network_prune(|n| !filter.selects(&n.created, &n.labels)).await?;
    Ok(Json(json!({"NetworksDeleted": removed})))
}

/// An `EndpointConfig` (or `EndpointSettings`) as the engine keeps it.
pub(super) fn endpoint_of(v: Option<&Value>) -> Endpoint {
    let Some(v) = v else { return Endpoint::default() };
    let ipam = |k: &str| v.get("IPAMConfig").and_then(|i| i.get(k));
    Endpoint {
        aliases: v.get("Aliases").and_then(|a| serde_json::from_value(a.clone()).ok()).unwrap_or_default(),
        ipv4: ipam("IPv4Address").and_then(Value::as_str).unwrap_or("").to_owned(),
        ipv6: ipam("IPv6Address").and_then(Value::as_str).unwrap_or("").to_owned(),
        link_local: ipam("LinkLocalIPs").and_then(|a| serde_json::from_value(a.clone()).ok()).unwrap_or_default(),
        mac: v.get("MacAddress").and_then(Value::as_str).unwrap_or("").to_owned(),
    }
}

/// The body of connect and disconnect: the object, and its `Container`.
fn container_in(body: &[u8]) -> Result<(Value, String), ApiError> {
    let v: Value = parse_json(body)?;
    let container = v
        .get("Container")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::invalid("Container is required"))?
        .to_owned();
    Ok((v, container))
}

pub async fn connect(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (v, container) = container_in(&body)?;
    engine.network_connect(&id, &container, endpoint_of(v.get("EndpointConfig"))).await?;
    Ok(StatusCode::OK)
}

pub async fn disconnect(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let (_, container) = container_in(&body)?;
    engine.network_disconnect(&id, &container).await?;
    Ok(StatusCode::OK)
}
