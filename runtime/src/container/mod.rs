//! Containers: the record the engine keeps of each, how a create request is merged with the
//! image's config, and the pieces that run one (helper, cgroups, logs).
//!
//! Vocabulary: a container's *record* (`containers/<id>/config.json`) is written whenever its
//! state changes, with an atomic rename, so after an engine restart every container is found
//! again (a container that was running when the engine stopped is found exited).

pub mod cgroup;
pub mod devices;
pub mod launch;
pub mod logs;
pub mod rootfs;
pub mod seccomp;
pub mod security;
pub mod shim;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{ContainerConfig, HostConfig, ImageConfig};

/// Docker's container status words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Created,
    Running,
    Restarting,
    Removing,
    Exited,
    Dead,
}

impl Status {
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Restarting => "restarting",
            Status::Removing => "removing",
            Status::Exited => "exited",
            Status::Dead => "dead",
        }
    }
}

/// Docker's `State` object.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub status: Status,
    pub pid: i32,
    pub exit_code: i64,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
    #[serde(default)]
    pub oom_killed: bool,
    /// Frozen by `docker pause` (the status stays running underneath).
    #[serde(default)]
    pub paused: bool,
    /// The health check's verdict, for containers that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// Docker's `State.Health`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    /// `starting`, `healthy` or `unhealthy`.
    pub status: String,
    pub failing_streak: u64,
    /// The last five probes.
    pub log: Vec<HealthProbe>,
}

/// One probe of a health check.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthProbe {
    pub start: String,
    pub end: String,
    pub exit_code: i64,
    pub output: String,
}

impl State {
    /// The status as Docker shows it: `paused` for a frozen running container.
    pub fn status_str(&self) -> &'static str {
        if self.paused && self.status == Status::Running { "paused" } else { self.status.as_str() }
    }
}

/// A mount as inspect reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRecord {
    /// `bind`, `volume` or `tmpfs`.
    pub kind: String,
    /// Volume name, for volumes.
    pub name: String,
    pub source: String,
    pub destination: String,
    pub rw: bool,
    #[serde(default)]
    pub options: String,
    /// The options a `-v` gave after the path (`rw`, `ro,z`, ...), as inspect shows them.
    #[serde(default)]
    pub mode: String,
}

/// Network settings as inspect reports them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetRecord {
    pub mode: String,
    pub ip: String,
    pub gateway: String,
    pub prefix: u8,
    pub mac: String,
    /// `"80/tcp"` → bindings actually made.
    pub ports: BTreeMap<String, Vec<crate::model::PortBinding>>,
    /// Its other networks (by name), each an interface of its own (`eth1`, ...).
    #[serde(default)]
    pub others: BTreeMap<String, Attachment>,
    /// The veth end on the bridge of the first network when it is not `vb<short ID>` (the
    /// `eth0` a start makes): the interface of a network that became the first while the
    /// container ran.
    #[serde(default)]
    pub link: String,
    /// The first network's IPv6 address, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<crate::network::Eth6>,
}

/// A running container's interface on a network other than its first.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub ip: String,
    pub gateway: String,
    pub prefix: u8,
    pub mac: String,
    /// The interface in the container (`eth1`, ...) and the veth end on the bridge.
    pub iface: String,
    pub link: String,
    /// Its IPv6 address, on a network with IPv6.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<crate::network::Eth6>,
}

/// A running container's address on one network: (ip, prefix, gateway, mac).
pub type Address<'a> = (&'a str, u8, &'a str, &'a str);

/// Everything the engine keeps about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub created: String,
    pub image_id: String,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub state: State,
    pub restart_count: u64,
    pub mounts: Vec<MountRecord>,
    pub path: String,
    pub args: Vec<String>,
    #[serde(default)]
    pub net: NetRecord,
    /// Chain IDs of the image's layers, bottom first.
    pub chain: Vec<String>,
    /// Set when the user stopped it (restart policies leave it alone then).
    #[serde(default)]
    pub manually_stopped: bool,
    /// Per network (by name): what the create asked for (`NetworkingConfig.EndpointsConfig`).
    #[serde(default)]
    pub endpoints: BTreeMap<String, Endpoint>,
    /// The network its first interface is on, once a disconnect moved it off the one
    /// `HostConfig.NetworkMode` names (which stays as given, as dockerd keeps it): the next of
    /// its networks, or `none` when it left them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_to: Option<String>,
}

/// A container's settings on one network.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Endpoint {
    /// Names it is found by on the network besides its own.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip`: the address it asks for.
    #[serde(default)]
    pub ipv4: String,
    /// `--ip6`: the IPv6 address it asks for.
    #[serde(default)]
    pub ipv6: String,
    /// `--link-local-ip`: link-local addresses it has besides.
    #[serde(default)]
    pub link_local: Vec<String>,
    /// `--mac-address`.
    #[serde(default)]
    pub mac: String,
}

impl ContainerRecord {
    /// The network its first interface is on (`eth0`): `HostConfig.NetworkMode`'s, unless a
    /// disconnect moved it.
    pub fn first_network(&self) -> &str {
        self.moved_to.as_deref().unwrap_or(&self.host_config.network_mode)
    }

    /// Whether it left every network it was on (it runs with loopback only, and inspect lists
    /// no network, as dockerd's does).
    pub fn left_all_networks(&self) -> bool {
        self.moved_to.as_deref() == Some("none")
    }

    /// Its process runs (it has a pid).
    pub fn running(&self) -> bool {
        self.state.status == Status::Running
    }

    /// Between an exit and the restart its policy asks for: no process, yet dockerd counts it
    /// as running for clients (`State.Running`, `ps`, `wait`, and `rm` refuses it without
    /// force).
    pub fn restarting(&self) -> bool {
        self.state.status == Status::Restarting
    }

    /// Running or restarting: up, as clients see it.
    pub fn up(&self) -> bool {
        self.running() || self.restarting()
    }

    /// Its address on network `name` while it runs.
    pub fn address_on(&self, name: &str) -> Option<Address<'_>> {
        let n = &self.net;
        if n.ip.is_empty() {
            None
        } else if n.mode == name {
            Some((&n.ip, n.prefix, &n.gateway, &n.mac))
        } else {
            n.others.get(name).map(|a| (a.ip.as_str(), a.prefix, a.gateway.as_str(), a.mac.as_str()))
        }
    }

    /// A running container's IPv6 address on one network, if it has one there.
    pub fn ipv6_on(&self, name: &str) -> Option<crate::network::Eth6> {
        let n = &self.net;
        if n.ip.is_empty() {
            None
        } else if n.mode == name {
            n.v6
        } else {
            n.others.get(name).and_then(|a| a.v6)
        }
    }
}

/// Why a create request cannot be merged into a runnable config.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("No command specified")]
    NoCommand,
}

fn env_key(e: &str) -> &str {
    e.split_once('=').map(|(k, _)| k).unwrap_or(e)
}

/// Merges the request's config over the image's, the way dockerd does.
pub fn merge_config(req: &ContainerConfig, image: &ImageConfig) -> Result<ContainerConfig, SpecError> {
    let img = &image.config;
    let mut out = req.clone();
    // An entrypoint given by the user drops the image's Cmd too.
    let (entrypoint, cmd) = match (&req.entrypoint, &req.cmd) {
        (Some(ep), cmd) => (ep.clone(), cmd.clone().unwrap_or_default()),
        (None, Some(cmd)) if !cmd.is_empty() => (img.entrypoint.clone().unwrap_or_default(), cmd.clone()),
        (None, _) => (img.entrypoint.clone().unwrap_or_default(), img.cmd.clone().unwrap_or_default()),
    };
    let entrypoint: Vec<String> = if entrypoint == [""] { vec![] } else { entrypoint };
    if entrypoint.is_empty() && cmd.is_empty() {
        return Err(SpecError::NoCommand);
    }
    out.entrypoint = (!entrypoint.is_empty()).then_some(entrypoint);
    out.cmd = (!cmd.is_empty()).then_some(cmd);
    // The request's variables first (the last of a name wins), then the image's it does not
    // set, in dockerd's order.
    let mut env: Vec<String> = Vec::new();
    for e in &req.env {
        let k = env_key(e);
        env.retain(|x| env_key(x) != k);
        env.push(e.clone());
    }
    out.env = env;
    fill_from(&mut out, img);
    if !out.env.iter().any(|e| env_key(e) == "PATH") {
        out.env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    Ok(out)
}

/// What dockerd's config merge takes from `base` (the image's config at a create, the
/// container's at a commit) where `out` leaves it empty: the user, working directory and stop
/// signal; the exposed ports, volumes, labels and variables `out` has none of by that name;
/// the health check, or only its test when `out`'s has timings alone (`--health-*` flags).
pub fn fill_from(out: &mut ContainerConfig, base: &ContainerConfig) {
    for e in &base.env {
        if !out.env.iter().any(|x| env_key(x) == env_key(e)) {
            out.env.push(e.clone());
        }
    }
    if out.working_dir.is_empty() {
        out.working_dir = base.working_dir.clone();
    }
    if out.user.is_empty() {
        out.user = base.user.clone();
    }
    for (k, v) in &base.labels {
        out.labels.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in &base.exposed_ports {
        out.exposed_ports.entry(k.clone()).or_insert(v.clone());
    }
    for (k, v) in &base.volumes {
        out.volumes.entry(k.clone()).or_insert(v.clone());
    }
    if out.stop_signal.is_none() {
        out.stop_signal = base.stop_signal.clone();
    }
    if let Some(hc) = base.extra.get("Healthcheck") {
        match out.extra.get_mut("Healthcheck") {
            None => {
                out.extra.insert("Healthcheck".into(), hc.clone());
            }
            Some(mine) => {
                if mine.get("Test").and_then(|t| t.as_array()).is_none_or(|t| t.is_empty())
                    && let Some(test) = hc.get("Test")
                {
                    mine["Test"] = test.clone();
                }
            }
        }
    }
}

/// The argv a merged config runs.
pub fn argv(c: &ContainerConfig) -> Vec<String> {
    let mut v = c.entrypoint.clone().unwrap_or_default();
    v.extend(c.cmd.clone().unwrap_or_default());
    v
}

/// Signal number for a name like `SIGTERM`, `TERM`, `15`.
pub fn parse_signal(s: &str) -> Option<i32> {
    if s.is_empty() {
        return Some(libc::SIGTERM);
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let sig = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PIPE" => libc::SIGPIPE,
        _ => return None,
    };
    Some(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(ep: Option<&[&str]>, cmd: Option<&[&str]>) -> ImageConfig {
        let mut i = ImageConfig::default();
        i.config.entrypoint = ep.map(|v| v.iter().map(|s| s.to_string()).collect());
        i.config.cmd = cmd.map(|v| v.iter().map(|s| s.to_string()).collect());
        i.config.env = vec!["PATH=/bin".into(), "A=1".into()];
        i
    }

    #[test]
    fn merge_follows_dockerd() {
        let img = image(Some(&["/ep"]), Some(&["dflt"]));
        let mut req = ContainerConfig::default();
        assert_eq!(argv(&merge_config(&req, &img).unwrap()), ["/ep", "dflt"]);
        req.cmd = Some(vec!["x".into()]);
        assert_eq!(argv(&merge_config(&req, &img).unwrap()), ["/ep", "x"]);
        req.cmd = None;
        req.entrypoint = Some(vec!["/other".into()]);
        assert_eq!(argv(&merge_config(&req, &img).unwrap()), ["/other"]);
        req.entrypoint = Some(vec!["".into()]);
        assert!(matches!(merge_config(&req, &img), Err(SpecError::NoCommand)));
        let req = ContainerConfig { env: vec!["A=2".into()], ..Default::default() };
        let m = merge_config(&req, &img).unwrap();
        // The request's first, then the image's it does not set (seen side by side with dockerd).
        assert_eq!(m.env, ["A=2", "PATH=/bin"]);
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGKILL"), Some(9));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("BOGUS"), None);
    }
}
