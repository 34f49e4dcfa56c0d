//! Container networking: Docker's default `bridge` network, `none` and `host`.
//!
//! The bridge (`berth0`, 172.29.0.1/16 by default) lives in the engine's network namespace.
//! For each container the engine creates a veth pair whose container end is created directly
//! in the container's namespace as `eth0` (with a MAC derived from its address, as dockerd
//! does), attaches the host end to the bridge, and the container's helper configures `eth0`
//! (address, up, default route) from inside before it execs. Traffic leaving the bridge is
//! masqueraded (iptables `nat/POSTROUTING`), so containers reach whatever the engine reaches.
//! Published ports are forwarded by the engine itself ([`ports`]).
//!
//! Links and NAT rules are made with iproute2's `ip` and `iptables`, the standard tools for the
//! job, from a tokio task; see docs/architecture.md for why and for the plan to move to netlink.

pub mod iface;
pub mod ports;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;

/// Errors setting up networking.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network setup: `{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("network setup: running {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no free address left in {0}")]
    Exhausted(String),
    #[error(
        "driver failed programming external connectivity on endpoint {endpoint}: Bind for {addr} failed: port is already allocated"
    )]
    PortAllocated { endpoint: String, addr: String },
    #[error("invalid port specification: {0:?}")]
    BadPort(String),
    #[error("binding {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The network modes the engine accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Docker's default network: own namespace on the bridge, with NAT.
    Bridge,
    /// Own namespace with loopback only.
    None,
    /// The engine's own namespace.
    Host,
}

/// Parses `HostConfig.NetworkMode`.
pub fn parse_mode(s: &str) -> Option<Mode> {
    match s {
        "" | "default" | "bridge" => Some(Mode::Bridge),
        "none" => Some(Mode::None),
        "host" => Some(Mode::Host),
        _ => None,
    }
}

/// What the container's helper needs to configure `eth0`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Eth0 {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// The bridge network and its address allocator.
#[derive(Debug)]
pub struct Bridge {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    used: Mutex<HashSet<Ipv4Addr>>,
    ready: tokio::sync::OnceCell<()>,
}

async fn run(args: &[&str]) -> Result<(), NetworkError> {
    let out = tokio::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .await
        .map_err(|source| NetworkError::Spawn { command: args[0].to_owned(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetworkError::Command {
            command: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Adds an iptables rule unless it is there already.
async fn ensure_rule(table: &str, chain: &str, rule: &[&str], insert: bool) -> Result<(), NetworkError> {
    let mut check = vec!["iptables", "-w", "-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if run(&check).await.is_ok() {
        return Ok(());
    }
    let mut add = vec!["iptables", "-w", "-t", table, if insert { "-I" } else { "-A" }, chain];
    add.extend_from_slice(rule);
    run(&add).await
}

/// Docker's MAC scheme: 02:42 followed by the IPv4 address.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

impl Bridge {
    pub fn new(name: &str, gateway: Ipv4Addr, prefix: u8) -> Bridge {
        Bridge {
            name: name.to_owned(),
            gateway,
            prefix,
            used: Mutex::new(HashSet::new()),
            ready: tokio::sync::OnceCell::new(),
        }
    }

    fn subnet(&self) -> String {
        let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
        format!("{}/{}", Ipv4Addr::from(u32::from(self.gateway) & mask), self.prefix)
    }

    /// Creates the bridge, enables forwarding and NAT (once per engine run; idempotent).
    pub async fn ensure(&self) -> Result<(), NetworkError> {
        self.ready
            .get_or_try_init(|| async {
                if run(&["ip", "link", "show", &self.name]).await.is_err() {
                    run(&["ip", "link", "add", &self.name, "type", "bridge"]).await?;
                }
                let addr = format!("{}/{}", self.gateway, self.prefix);
                let _ = run(&["ip", "addr", "add", &addr, "dev", &self.name]).await;
                run(&["ip", "link", "set", &self.name, "up"]).await?;
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                    .map_err(|source| NetworkError::Spawn { command: "enable ip_forward".into(), source })?;
                let subnet = self.subnet();
                ensure_rule("nat", "POSTROUTING", &["-s", &subnet, "!", "-o", &self.name, "-j", "MASQUERADE"], false)
                    .await?;
                ensure_rule("filter", "FORWARD", &["-i", &self.name, "-j", "ACCEPT"], true).await?;
                ensure_rule("filter", "FORWARD", &["-o", &self.name, "-j", "ACCEPT"], true).await?;
                tracing::info!(bridge = %self.name, subnet = %subnet, "bridge network ready");
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Takes a free address (the preferred one when it is free).
    pub fn allocate(&self, preferred: Option<Ipv4Addr>) -> Result<Eth0, NetworkError> {
        let mut used = self.used.lock().expect("ipam lock");
        let base = u32::from(self.gateway) & u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
        let size = 1u32 << (32 - self.prefix as u32);
        let candidate =
            preferred.filter(|p| !used.contains(p) && *p != self.gateway && u32::from(*p) & !(size - 1) == base);
        let address = match candidate {
            Some(p) => p,
            None => (2..size - 1)
                .map(|i| Ipv4Addr::from(base + i))
                .find(|a| !used.contains(a) && *a != self.gateway)
                .ok_or_else(|| NetworkError::Exhausted(self.subnet()))?,
        };
        used.insert(address);
        Ok(Eth0 { address, prefix: self.prefix, gateway: self.gateway })
    }

    pub fn release(&self, ip: Ipv4Addr) {
        self.used.lock().expect("ipam lock").remove(&ip);
    }

    /// Creates the veth pair for the process `pid` (its end as `eth0`, in its namespace) and
    /// attaches the host end to the bridge. Returns the host end's name.
    pub async fn attach(&self, id: &str, pid: i32, eth0: &Eth0) -> Result<String, NetworkError> {
        let host = format!("vb{}", &id[..12.min(id.len())]);
        let _ = run(&["ip", "link", "del", &host]).await;
        let pid = pid.to_string();
        let mac = mac_for(eth0.address);
        run(&["ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "address", &mac, "netns", &pid])
            .await?;
        run(&["ip", "link", "set", &host, "master", &self.name, "up"]).await?;
        Ok(host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_gateway_and_reuses_released() {
        let b = Bridge::new("x", Ipv4Addr::new(172, 29, 0, 1), 16);
        let a = b.allocate(None).unwrap();
        assert_eq!(a.address, Ipv4Addr::new(172, 29, 0, 2));
        let c = b.allocate(None).unwrap();
        assert_eq!(c.address, Ipv4Addr::new(172, 29, 0, 3));
        b.release(a.address);
        assert_eq!(b.allocate(None).unwrap().address, Ipv4Addr::new(172, 29, 0, 2));
        assert_eq!(b.allocate(Some(Ipv4Addr::new(172, 29, 9, 9))).unwrap().address, Ipv4Addr::new(172, 29, 9, 9));
        assert_eq!(mac_for(Ipv4Addr::new(172, 17, 0, 2)), "02:42:ac:11:00:02");
        assert_eq!(b.subnet(), "172.29.0.0/16");
    }
}
