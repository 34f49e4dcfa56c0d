//! Docker's data model, as the engine keeps it: the container `Config`, the `HostConfig`, and
//! an image's config blob. Field names are Docker's (PascalCase on the wire), and fields the
//! engine does not act on are kept verbatim in `extra`, so `inspect` returns what was sent.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// `Cmd` and `Entrypoint` may be sent as one string or a list.
fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::One(s)) => Some(vec![s]),
        Some(Either::Many(v)) => Some(v),
    })
}

/// Maps that Docker sends as `null` or `{}`.
fn null_map<'de, D: Deserializer<'de>, V: Deserialize<'de>>(d: D) -> Result<BTreeMap<String, V>, D::Error> {
    Ok(Option::<BTreeMap<String, V>>::deserialize(d)?.unwrap_or_default())
}

fn null_vec<'de, D: Deserializer<'de>, V: Deserialize<'de>>(d: D) -> Result<Vec<V>, D::Error> {
    Ok(Option::<Vec<V>>::deserialize(d)?.unwrap_or_default())
}

/// A container's (or an image's) run configuration: Docker's `Config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub domainname: String,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub attach_stdin: bool,
    #[serde(default)]
    pub attach_stdout: bool,
    #[serde(default)]
    pub attach_stderr: bool,
    #[serde(default, deserialize_with = "null_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub exposed_ports: BTreeMap<String, Value>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub open_stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default, deserialize_with = "null_vec")]
    pub env: Vec<String>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, deserialize_with = "string_or_list")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub image: String,
    #[serde(default, deserialize_with = "null_map", skip_serializing_if = "BTreeMap::is_empty")]
    pub volumes: BTreeMap<String, Value>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default, deserialize_with = "null_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// One `-p` binding: `HostIp` and `HostPort`, both strings as Docker sends them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct PortBinding {
    #[serde(default)]
    pub host_ip: String,
    #[serde(default)]
    pub host_port: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RestartPolicy {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub maximum_retry_count: i64,
}

/// A `--mount` / `Mounts` entry.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MountSpec {
    #[serde(rename = "Type", default)]
    pub kind: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// The part of Docker's `HostConfig` the engine acts on; the rest is kept in `extra`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HostConfig {
    /// As given: none when the request had none (dockerd shows null then, `[]` for empty).
    #[serde(default)]
    pub binds: Option<Vec<String>>,
    #[serde(default, deserialize_with = "null_vec")]
    pub mounts: Vec<MountSpec>,
    #[serde(default, deserialize_with = "null_map")]
    pub tmpfs: BTreeMap<String, String>,
    #[serde(default)]
    pub network_mode: String,
    /// As given: none when the request had none (dockerd shows null then, `{}` for empty).
    #[serde(default)]
    pub port_bindings: Option<BTreeMap<String, Option<Vec<PortBinding>>>>,
    #[serde(default)]
    pub publish_all_ports: bool,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    #[serde(default)]
    pub auto_remove: bool,
    #[serde(default)]
    pub memory: i64,
    #[serde(default)]
    pub memory_swap: i64,
    #[serde(default)]
    pub nano_cpus: i64,
    #[serde(default)]
    pub cpu_shares: i64,
    #[serde(default)]
    pub cpu_quota: i64,
    #[serde(default)]
    pub cpu_period: i64,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    #[serde(default)]
    pub readonly_rootfs: bool,
    #[serde(default)]
    pub shm_size: i64,
    #[serde(default, deserialize_with = "null_vec")]
    pub extra_hosts: Vec<String>,
    #[serde(default, deserialize_with = "null_vec")]
    pub dns: Vec<String>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub cap_add: Option<Vec<String>>,
    #[serde(default)]
    pub cap_drop: Option<Vec<String>>,
    /// `seccomp=unconfined`, `seccomp=<profile JSON>`, `no-new-privileges[:true|false]`, ...
    #[serde(default)]
    pub security_opt: Option<Vec<String>>,
    /// `--device HOST[:CONTAINER[:PERMISSIONS]]`.
    #[serde(default, deserialize_with = "null_vec")]
    pub devices: Vec<DeviceMapping>,
    /// `--device-cgroup-rule 'c 1:3 rwm'`.
    #[serde(default)]
    pub device_cgroup_rules: Option<Vec<String>>,
    /// `--group-add`: supplementary groups of the container's processes (execs' too), as gids
    /// or names in the container's /etc/group.
    #[serde(default)]
    pub group_add: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// One `--device`: a device node of the engine's machine given to the container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct DeviceMapping {
    #[serde(default)]
    pub path_on_host: String,
    #[serde(default)]
    pub path_in_container: String,
    #[serde(default)]
    pub cgroup_permissions: String,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default, deserialize_with = "null_vec")]
    pub diff_ids: Vec<String>,
}

/// One `history` entry of an image config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// An image's config blob (OCI image config, a superset of which Docker writes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default)]
    pub config: ContainerConfig,
    #[serde(default)]
    pub rootfs: RootFs,
    #[serde(default, deserialize_with = "null_vec")]
    pub history: Vec<History>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, Value>,
}

/// Applies one Dockerfile-style change (`CMD`, `ENTRYPOINT`, `ENV`, `WORKDIR`, `USER`, `LABEL`,
/// `EXPOSE`, `VOLUME`, `STOPSIGNAL`), as `docker commit --change` and `docker import --change` do.
pub fn apply_change(c: &mut ContainerConfig, change: &str) -> Result<(), String> {
    let change = change.trim();
    let (word, rest) = change.split_once(char::is_whitespace).map(|(w, r)| (w, r.trim())).unwrap_or((change, ""));
    let list = |rest: &str| -> Vec<String> {
        match serde_json::from_str::<Vec<String>>(rest) {
            Ok(v) => v,
            Err(_) => vec!["/bin/sh".into(), "-c".into(), rest.into()],
        }
    };
    let pairs = |rest: &str| -> Vec<(String, String)> {
        if rest.contains('=') {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned())))
                .collect()
        } else {
            rest.split_once(char::is_whitespace)
                .map(|(k, v)| vec![(k.to_owned(), v.trim().to_owned())])
                .unwrap_or_default()
        }
    };
    match word.to_ascii_uppercase().as_str() {
        "CMD" => c.cmd = Some(list(rest)),
        "ENTRYPOINT" => c.entrypoint = Some(list(rest)),
        "ENV" => {
            for (k, v) in pairs(rest) {
                c.env.retain(|e| e.split('=').next() != Some(k.as_str()));
                c.env.push(format!("{k}={v}"));
            }
        }
        "LABEL" => c.labels.extend(pairs(rest)),
        "WORKDIR" => c.working_dir = rest.to_owned(),
        "USER" => c.user = rest.to_owned(),
        "EXPOSE" => {
            for p in rest.split_whitespace() {
                let key = if p.contains('/') { p.to_owned() } else { format!("{p}/tcp") };
                c.exposed_ports.insert(key, serde_json::json!({}));
            }
        }
        "VOLUME" => {
            let paths = serde_json::from_str::<Vec<String>>(rest)
                .unwrap_or_else(|_| rest.split_whitespace().map(str::to_owned).collect());
            for p in paths {
                c.volumes.insert(p, serde_json::json!({}));
            }
        }
        "STOPSIGNAL" => c.stop_signal = Some(rest.to_owned()),
        other => return Err(format!("{other} is not a valid change command")),
    }
    Ok(())
}

/// The OCI name of this machine's (the guest's) architecture.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "riscv64" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// Now, as Docker writes times: RFC 3339 with nanoseconds, UTC.
pub fn now_rfc3339() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

pub fn format_time(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

pub fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// A Go duration (`1m30s`, `500ms`, `2h`) in nanoseconds.
pub fn go_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    Some(total as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration("30s"), Some(30_000_000_000));
        assert_eq!(go_duration("1m30s"), Some(90_000_000_000));
        assert_eq!(go_duration("500ms"), Some(500_000_000));
        assert_eq!(go_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(go_duration("0"), Some(0));
        assert_eq!(go_duration("10"), None);
        assert_eq!(go_duration("x"), None);
    }

    #[test]
    fn changes_apply_like_dockerfile_instructions() {
        let mut c = ContainerConfig::default();
        apply_change(&mut c, r#"CMD ["echo", "hi"]"#).unwrap();
        apply_change(&mut c, "ENTRYPOINT run me").unwrap();
        apply_change(&mut c, "ENV A=1 B=2").unwrap();
        apply_change(&mut c, "ENV A 3").unwrap();
        apply_change(&mut c, "EXPOSE 80").unwrap();
        assert_eq!(c.cmd.unwrap(), ["echo", "hi"]);
        assert_eq!(c.entrypoint.unwrap(), ["/bin/sh", "-c", "run me"]);
        assert_eq!(c.env, ["B=2", "A=3"]);
        assert!(c.exposed_ports.contains_key("80/tcp"));
        assert!(apply_change(&mut ContainerConfig::default(), "RUN x").is_err());
    }

    #[test]
    fn cmd_as_string_or_list_and_nulls() {
        let c: ContainerConfig =
            serde_json::from_str(r#"{"Cmd":"echo hi","Env":null,"Labels":null,"Entrypoint":["a","b"],"Foo":1}"#)
                .unwrap();
        assert_eq!(c.cmd, Some(vec!["echo hi".to_string()]));
        assert_eq!(c.entrypoint, Some(vec!["a".to_string(), "b".to_string()]));
        assert!(c.env.is_empty());
        assert_eq!(c.extra["Foo"], 1);
    }
}
