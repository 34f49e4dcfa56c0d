//! `GET /containers/{id}/stats` and `GET /containers/{id}/top`.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use berth_runtime::Engine;
use berth_runtime::engine::StatsSample;
use serde_json::{Value, json};

use super::{ApiError, Query, qbool};

fn cpu_json(s: Option<&StatsSample>) -> Value {
    match s {
        None => {
            json!({"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0}, "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}})
        }
        Some(s) => json!({
            "cpu_usage": {"total_usage": s.usage.cpu_total_ns, "usage_in_kernelmode": s.usage.cpu_system_ns, "usage_in_usermode": s.usage.cpu_user_ns},
            "system_cpu_usage": s.system_cpu_ns,
            "online_cpus": s.online_cpus,
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
        }),
    }
}

/// dockerd's stats object from a sample and the one before it.
fn stats_json(pre: Option<&StatsSample>, cur: &StatsSample) -> Value {
    let networks: serde_json::Map<String, Value> = cur
        .networks
        .iter()
        .map(|(name, [rxb, rxp, txb, txp])| {
            (name.clone(), json!({"rx_bytes": rxb, "rx_packets": rxp, "rx_errors": 0, "rx_dropped": 0, "tx_bytes": txb, "tx_packets": txp, "tx_errors": 0, "tx_dropped": 0}))
        })
        .collect();
    json!({
        "read": cur.read,
        "preread": pre.map(|p| p.read.clone()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
        "pids_stats": {"current": cur.usage.pids, "limit": cur.usage.pids_limit},
        "blkio_stats": {},
        "num_procs": 0,
        "storage_stats": {},
        "cpu_stats": cpu_json(Some(cur)),
        "precpu_stats": cpu_json(pre),
        "memory_stats": {
            "usage": cur.usage.memory,
            "limit": cur.usage.memory_limit.unwrap_or(cur.host_memory),
            "stats": cur.usage.memory_stat,
        },
        "name": cur.name,
        "id": cur.id,
        "networks": networks,
    })
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("json");
    b.push(b'\n');
    b.into()
}

/// `?stream=` (default true) sends a sample a second; `stream=false` one sample with the CPU
/// delta over a second; `one-shot=true` one sample at once, with no delta.
pub async fn stats(engine: Engine, id: &str, q: &Query) -> Result<Response, ApiError> {
    let first = engine.stats(id)?;
    let stream = q.get("stream").is_none_or(|_| qbool(q, "stream"));
    if !stream {
        let body = if qbool(q, "one-shot") {
            stats_json(None, &first)
        } else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let second = engine.stats(id)?;
            stats_json(Some(&first), &second)
        };
        return Ok(([(header::CONTENT_TYPE, "application/json")], line(&body)).into_response());
    }
    let id = id.to_owned();
    let body = futures_util::stream::unfold(
        (engine, id, None::<StatsSample>, Some(first)),
        |(engine, id, pre, next)| async move {
            let cur = match next {
                Some(s) => s,
                None => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    engine.stats(&id).ok()?
                }
            };
            let out = line(&stats_json(pre.as_ref(), &cur));
            Some((Ok::<_, std::io::Error>(out), (engine, id, Some(cur), None)))
        },
    );
    Ok(([(header::CONTENT_TYPE, "application/json")], Body::from_stream(body)).into_response())
}

pub fn top(engine: Engine, id: &str) -> Result<Response, ApiError> {
    let (titles, processes) = engine.top(id)?;
    Ok(Json(json!({"Titles": titles, "Processes": processes})).into_response())
}
