//! Container networking: Docker's default `bridge` network, `none` and `host`.
//!
//! The bridge (`berth0`, 172.29.0.1/16 by default) lives in the engine's network namespace.
//! For each container the engine creates a veth pair whose container end is created directly
//! in the container's namespace as `eth0` (with a MAC derived from its address, as dockerd
//! does), attaches the host end to the bridge, and the container's helper configures `eth0`
//! (address, up, default route) from inside before it execs. Traffic leaving the bridge is
//! masqueraded (iptables `nat/POSTROUTING`), so containers reach whatever the engine reaches.
//! A container's other networks get `eth1`, `eth2`, ... the same way (see
//! `engine::networks`). Published ports are forwarded by the engine itself ([`ports`]).
//!
//! Links and addresses are made through netlink ([`link`]); NAT and filter rules with
//! `iptables`, from a tokio task (see docs/architecture.md for why).

pub mod dns;
pub mod iface;
mod link;
pub mod ports;
pub mod user;

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
    #[error("network setup: {what}")]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("no free address left in {0}")]
    Exhausted(String),
    #[error(
        "driver failed programming external connectivity on endpoint {endpoint}: Bind for {addr} failed: port is already allocated"
    )]
    PortAllocated { endpoint: String, addr: String },
    #[error("invalid port specification: {0:?}")]
    BadPort(String),
    #[error("{0}")]
    BadAddress(String),
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
    /// `--mac-address`; dockerd's `02:42:<ip>` when `None`.
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
}

impl Eth0 {
    pub fn mac_text(&self) -> String {
        self.mac_bytes().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
    }

    /// The MAC: `--mac-address`, or dockerd's `02:42` followed by the IPv4 address.
    pub fn mac_bytes(&self) -> [u8; 6] {
        let o = self.address.octets();
        self.mac.unwrap_or([0x02, 0x42, o[0], o[1], o[2], o[3]])
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<u8> =
        s.split(':').map(|p| u8::from_str_radix(p, 16).ok().filter(|_| p.len() == 2)).collect::<Option<_>>()?;
    parts.try_into().ok()
}

/// The bridge network and its address allocator.
#[derive(Debug)]
pub struct Bridge {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// Where addresses are taken from, when narrower than the subnet (`--ip-range`).
    pub range: Option<(Ipv4Addr, u8)>,
    /// For a user-defined network: the engine's default bridge, which it is isolated from.
    pub isolated_from: Option<String>,
    /// No traffic out of the subnet (`--internal`).
    pub internal: bool,
    used: Mutex<HashSet<Ipv4Addr>>,
    ready: tokio::sync::OnceCell<()>,
}

/// The chain every bridge's isolation rules live in, jumped to first from `FORWARD`.
const ISOLATION: &str = "BERTH-ISOLATION";

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

impl Bridge {
    pub fn new(name: &str, gateway: Ipv4Addr, prefix: u8) -> Bridge {
        Bridge {
            name: name.to_owned(),
            gateway,
            prefix,
            range: None,
            isolated_from: None,
            internal: false,
            used: Mutex::new(HashSet::new()),
            ready: tokio::sync::OnceCell::new(),
        }
    }

    /// The bridge of a user-defined network, kept apart from the engine's other bridges.
    pub fn user(name: &str, pool: &user::Pool, default_bridge: &str, internal: bool) -> Bridge {
        let mut b = Bridge::new(name, pool.gateway, pool.prefix);
        b.range = pool.range;
        // Auxiliary addresses are never given to a container.
        b.used.lock().expect("ipam lock").extend(pool.aux.values().copied());
        b.isolated_from = Some(default_bridge.to_owned());
        b.internal = internal;
        b
    }

    /// Traffic between this bridge and any other of the engine's is dropped; within it, and
    /// out to the world, it flows (as dockerd's DOCKER-ISOLATION chains have it).
    async fn isolate(&self, default_bridge: &str) -> Result<(), NetworkError> {
        let _ = run(&["iptables", "-w", "-N", ISOLATION]).await;
        let me = self.name.as_str();
        ensure_rule("filter", ISOLATION, &["-i", me, "-o", me, "-j", "RETURN"], true).await?;
        for other in ["br-+", default_bridge] {
            ensure_rule("filter", ISOLATION, &["-i", me, "-o", other, "-j", "DROP"], false).await?;
            ensure_rule("filter", ISOLATION, &["-i", other, "-o", me, "-j", "DROP"], false).await?;
        }
        if self.internal {
            ensure_rule("filter", ISOLATION, &["-i", me, "!", "-o", me, "-j", "DROP"], false).await?;
            ensure_rule("filter", ISOLATION, &["-o", me, "!", "-i", me, "-j", "DROP"], false).await?;
        }
        // First in FORWARD, above the ACCEPT rules every bridge adds.
        let _ = run(&["iptables", "-w", "-D", "FORWARD", "-j", ISOLATION]).await;
        run(&["iptables", "-w", "-I", "FORWARD", "1", "-j", ISOLATION]).await
    }

    /// Removes the bridge and every rule it added.
    pub async fn teardown(&self) {
        let me = self.name.as_str();
        let subnet = self.subnet();
        let rules: Vec<(&str, &str, Vec<&str>)> = vec![
            ("nat", "POSTROUTING", vec!["-s", &subnet, "!", "-o", me, "-j", "MASQUERADE"]),
            ("filter", "FORWARD", vec!["-i", me, "-j", "ACCEPT"]),
            ("filter", "FORWARD", vec!["-o", me, "-j", "ACCEPT"]),
            ("filter", ISOLATION, vec!["-i", me, "-o", me, "-j", "RETURN"]),
            ("filter", ISOLATION, vec!["-i", me, "!", "-o", me, "-j", "DROP"]),
            ("filter", ISOLATION, vec!["-o", me, "!", "-i", me, "-j", "DROP"]),
        ];
        let default = self.isolated_from.clone().unwrap_or_default();
        let mut all = rules;
        for other in ["br-+", default.as_str()] {
            all.push(("filter", ISOLATION, vec!["-i", me, "-o", other, "-j", "DROP"]));
            all.push(("filter", ISOLATION, vec!["-i", other, "-o", me, "-j", "DROP"]));
        }
        for (table, chain, rule) in all {
            let mut del = vec!["iptables", "-w", "-t", table, "-D", chain];
            del.extend_from_slice(&rule);
            while run(&del).await.is_ok() {}
        }
        if let Err(e) = link::delete(me).await {
            tracing::warn!(bridge = %me, error = %e, "removing the bridge");
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
                link::ensure_bridge(&self.name, self.gateway, self.prefix).await?;
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                    .map_err(|source| NetworkError::Spawn { command: "enable ip_forward".into(), source })?;
                let subnet = self.subnet();
                if !self.internal {
                    ensure_rule(
                        "nat",
                        "POSTROUTING",
                        &["-s", &subnet, "!", "-o", &self.name, "-j", "MASQUERADE"],
                        false,
                    )
                    .await?;
                }
                ensure_rule("filter", "FORWARD", &["-i", &self.name, "-j", "ACCEPT"], true).await?;
                ensure_rule("filter", "FORWARD", &["-o", &self.name, "-j", "ACCEPT"], true).await?;
                if let Some(default) = &self.isolated_from {
                    self.isolate(default).await?;
                } else if run(&["iptables", "-w", "-n", "-L", ISOLATION]).await.is_ok() {
                    // User networks came first: their isolation stays above this bridge's ACCEPTs.
                    let _ = run(&["iptables", "-w", "-D", "FORWARD", "-j", ISOLATION]).await;
                    run(&["iptables", "-w", "-I", "FORWARD", "1", "-j", ISOLATION]).await?;
                }
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
        let in_subnet = |a: Ipv4Addr| u32::from(a) & !(size - 1) == base;
        if let Some(p) = preferred {
            if !in_subnet(p) || p == self.gateway {
                return Err(NetworkError::BadAddress(format!(
                    "no configured subnet or ip-range contain the IP address {p}"
                )));
            }
            if used.contains(&p) {
                return Err(NetworkError::BadAddress("Address already in use".into()));
            }
            used.insert(p);
            return Ok(Eth0 { address: p, prefix: self.prefix, gateway: self.gateway, mac: None });
        }
        let (from, count) = match self.range {
            Some((r, p)) => (u32::from(r) & user::mask(p), 1u32 << (32 - p as u32)),
            None => (base, size),
        };
        let address = (0..count)
            .map(|i| Ipv4Addr::from(from.wrapping_add(i)))
            .find(|a| {
                let n = u32::from(*a);
                in_subnet(*a) && n > base + 1 && n < base + size - 1 && *a != self.gateway && !used.contains(a)
            })
            .ok_or_else(|| NetworkError::Exhausted(self.subnet()))?;
        used.insert(address);
        Ok(Eth0 { address, prefix: self.prefix, gateway: self.gateway, mac: None })
    }

    pub fn release(&self, ip: Ipv4Addr) {
        self.used.lock().expect("ipam lock").remove(&ip);
    }

    /// Creates the veth pair for the process `pid` (its end as `eth0`, in its namespace) and
    /// attaches the host end to the bridge. Returns the host end's name.
    pub async fn attach(&self, id: &str, pid: i32, eth0: &Eth0) -> Result<String, NetworkError> {
        let host = format!("vb{}", &id[..12.min(id.len())]);
        self.attach_as(&host, "eth0", pid, eth0).await?;
        Ok(host)
    }

    /// A veth pair for process `pid`: `iface` in its namespace, `link` on this bridge.
    pub async fn attach_as(&self, link: &str, iface: &str, pid: i32, e: &Eth0) -> Result<(), NetworkError> {
        link::veth_into(link, &self.name, iface, e.mac_bytes(), pid as u32).await
    }
}

/// Removes a container's veth pair by its end on a bridge (its other end goes with it).
pub async fn detach(link: &str) -> Result<(), NetworkError> {
    link::delete(link).await
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
        let e = Eth0 {
            address: Ipv4Addr::new(172, 17, 0, 2),
            prefix: 16,
            gateway: Ipv4Addr::new(172, 17, 0, 1),
            mac: None,
        };
        assert_eq!(e.mac_text(), "02:42:ac:11:00:02");
        assert_eq!(Eth0 { mac: Some([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]), ..e }.mac_text(), "12:34:56:78:9a:bc");
        assert_eq!(b.subnet(), "172.29.0.0/16");
    }
}
