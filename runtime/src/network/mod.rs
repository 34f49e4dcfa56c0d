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
pub mod ipam;
mod link;
pub mod ports;
pub mod user;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use ipam::Space;

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

/// What the container's helper needs to configure `eth0` (and the engine a container's
/// later interfaces).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Eth0 {
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// `--mac-address`; dockerd's `02:42:<ip>` when `None`.
    #[serde(default)]
    pub mac: Option<[u8; 6]>,
    /// The address on an IPv6 network.
    #[serde(default)]
    pub v6: Option<Eth6>,
    /// `--link-local-ip`: more addresses on the interface, of either family.
    #[serde(default)]
    pub link_local: Vec<IpAddr>,
}

/// An interface's IPv6 address and the gateway of its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Eth6 {
    pub address: Ipv6Addr,
    pub prefix: u8,
    pub gateway: Ipv6Addr,
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

/// The bridge network and its address allocators.
#[derive(Debug)]
pub struct Bridge {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// For a user-defined network: the engine's default bridge, which it is isolated from.
    pub isolated_from: Option<String>,
    /// No traffic out of the subnet (`--internal`).
    pub internal: bool,
    /// The IPv6 subnet and its gateway, on a network with IPv6 (`--ipv6`).
    pub v6: Option<((Ipv6Addr, u8), Ipv6Addr)>,
    spaces: Mutex<(Space<Ipv4Addr>, Option<Space<Ipv6Addr>>)>,
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

/// Adds a rule with `tool` (`iptables` or `ip6tables`) unless it is there already.
async fn ensure_rule(tool: &str, table: &str, chain: &str, rule: &[&str], insert: bool) -> Result<(), NetworkError> {
    let mut check = vec![tool, "-w", "-t", table, "-C", chain];
    check.extend_from_slice(rule);
    if run(&check).await.is_ok() {
        return Ok(());
    }
    let mut add = vec![tool, "-w", "-t", table, if insert { "-I" } else { "-A" }, chain];
    add.extend_from_slice(rule);
    run(&add).await
}

impl Bridge {
    pub fn new(name: &str, gateway: Ipv4Addr, prefix: u8) -> Bridge {
        Bridge {
            name: name.to_owned(),
            gateway,
            prefix,
            isolated_from: None,
            internal: false,
            v6: None,
            spaces: Mutex::new((Space::new((gateway, prefix), gateway, None), None)),
            ready: tokio::sync::OnceCell::new(),
        }
    }

    /// The bridge of a user-defined network, kept apart from the engine's other bridges;
    /// with an IPv6 subnet when the network has IPv6 on.
    pub fn user(
        name: &str,
        pool: &user::Pool,
        v6: Option<&user::Pool<Ipv6Addr>>,
        default_bridge: &str,
        internal: bool,
    ) -> Bridge {
        let mut b = Bridge::new(name, pool.gateway, pool.prefix);
        let mut v4 = Space::new((pool.subnet, pool.prefix), pool.gateway, pool.range);
        // Auxiliary addresses are never given to a container.
        v4.reserve(pool.aux.values().copied());
        let v6 = v6.map(|p| {
            let mut s = Space::new((p.subnet, p.prefix), p.gateway, p.range);
            s.reserve(p.aux.values().copied());
            s
        });
        b.v6 = v6.as_ref().map(|s| (s.subnet, s.gateway));
        b.spaces = Mutex::new((v4, v6));
        b.isolated_from = Some(default_bridge.to_owned());
        b.internal = internal;
        b
    }

    /// The tools whose rules this bridge needs: `iptables`, and `ip6tables` with IPv6.
    fn tools(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("iptables", self.subnet())];
        if let Some(((net, prefix), _)) = self.v6 {
            out.push(("ip6tables", format!("{net}/{prefix}")));
        }
        out
    }

    /// Traffic between this bridge and any other of the engine's is dropped; within it, and
    /// out to the world, it flows (as dockerd's DOCKER-ISOLATION chains have it). With IPv6,
    /// the same for IPv6 (dockerd 20.10 leaves IPv6 between networks open).
    async fn isolate(&self, tool: &str, default_bridge: &str) -> Result<(), NetworkError> {
        let _ = run(&[tool, "-w", "-N", ISOLATION]).await;
        let me = self.name.as_str();
        ensure_rule(tool, "filter", ISOLATION, &["-i", me, "-o", me, "-j", "RETURN"], true).await?;
        for other in ["br-+", default_bridge] {
            ensure_rule(tool, "filter", ISOLATION, &["-i", me, "-o", other, "-j", "DROP"], false).await?;
            ensure_rule(tool, "filter", ISOLATION, &["-i", other, "-o", me, "-j", "DROP"], false).await?;
        }
        if self.internal {
            ensure_rule(tool, "filter", ISOLATION, &["-i", me, "!", "-o", me, "-j", "DROP"], false).await?;
            ensure_rule(tool, "filter", ISOLATION, &["-o", me, "!", "-i", me, "-j", "DROP"], false).await?;
        }
        // First in FORWARD, above the ACCEPT rules every bridge adds.
        let _ = run(&[tool, "-w", "-D", "FORWARD", "-j", ISOLATION]).await;
        run(&[tool, "-w", "-I", "FORWARD", "1", "-j", ISOLATION]).await
    }

    /// Removes the bridge and every rule it added.
    pub async fn teardown(&self) {
        let me = self.name.as_str();
        let default = self.isolated_from.clone().unwrap_or_default();
        for (tool, subnet) in self.tools() {
            let mut rules: Vec<(&str, &str, Vec<&str>)> = vec![
                ("nat", "POSTROUTING", vec!["-s", &subnet, "!", "-o", me, "-j", "MASQUERADE"]),
                ("filter", "FORWARD", vec!["-i", me, "-j", "ACCEPT"]),
                ("filter", "FORWARD", vec!["-o", me, "-j", "ACCEPT"]),
                ("filter", ISOLATION, vec!["-i", me, "-o", me, "-j", "RETURN"]),
                ("filter", ISOLATION, vec!["-i", me, "!", "-o", me, "-j", "DROP"]),
                ("filter", ISOLATION, vec!["-o", me, "!", "-i", me, "-j", "DROP"]),
            ];
            for other in ["br-+", default.as_str()] {
                rules.push(("filter", ISOLATION, vec!["-i", me, "-o", other, "-j", "DROP"]));
                rules.push(("filter", ISOLATION, vec!["-i", other, "-o", me, "-j", "DROP"]));
            }
            for (table, chain, rule) in rules {
                let mut del = vec![tool, "-w", "-t", table, "-D", chain];
                del.extend_from_slice(&rule);
                while run(&del).await.is_ok() {}
            }
        }
        if let Err(e) = link::delete(me).await {
            tracing::warn!(bridge = %me, error = %e, "removing the bridge");
        }
    }

    fn subnet(&self) -> String {
        format!("{}/{}", ipam::network(self.gateway, self.prefix), self.prefix)
    }

    /// Creates the bridge, enables forwarding and NAT (once per engine run; idempotent).
    pub async fn ensure(&self) -> Result<(), NetworkError> {
        self.ready
            .get_or_try_init(|| async {
                let v6 = self.v6.map(|((_, prefix), gateway)| (gateway, prefix));
                link::ensure_bridge(&self.name, self.gateway, self.prefix, v6).await?;
                let mut forwarding = vec!["/proc/sys/net/ipv4/ip_forward"];
                if v6.is_some() {
                    forwarding.push("/proc/sys/net/ipv6/conf/all/forwarding");
                }
                for path in forwarding {
                    std::fs::write(path, "1").map_err(|source| NetworkError::Spawn {
                        command: format!("enabling forwarding ({path})"),
                        source,
                    })?;
                }
                for (tool, subnet) in self.tools() {
                    match self.rules(tool, &subnet).await {
                        // Without ip6tables, IPv6 is as dockerd 20.10 leaves it: routed, not
                        // isolated between networks, not NATed.
                        Err(NetworkError::Spawn { source, .. })
                            if tool == "ip6tables" && source.kind() == std::io::ErrorKind::NotFound =>
                        {
                            tracing::warn!(bridge = %self.name, "no ip6tables: IPv6 between networks is not isolated");
                        }
                        other => other?,
                    }
                }
                tracing::info!(bridge = %self.name, subnet = %self.subnet(), ipv6 = ?self.v6, "bridge network ready");
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// NAT out (unless internal), forwarding to and from the bridge, and isolation, with
    /// `tool` for `subnet`.
    async fn rules(&self, tool: &str, subnet: &str) -> Result<(), NetworkError> {
        if !self.internal {
            ensure_rule(tool, "nat", "POSTROUTING", &["-s", subnet, "!", "-o", &self.name, "-j", "MASQUERADE"], false)
                .await?;
        }
        ensure_rule(tool, "filter", "FORWARD", &["-i", &self.name, "-j", "ACCEPT"], true).await?;
        ensure_rule(tool, "filter", "FORWARD", &["-o", &self.name, "-j", "ACCEPT"], true).await?;
        if let Some(default) = &self.isolated_from {
            self.isolate(tool, default).await
        } else if run(&[tool, "-w", "-n", "-L", ISOLATION]).await.is_ok() {
            // User networks came first: their isolation stays above this bridge's ACCEPTs.
            let _ = run(&[tool, "-w", "-D", "FORWARD", "-j", ISOLATION]).await;
            run(&[tool, "-w", "-I", "FORWARD", "1", "-j", ISOLATION]).await
        } else {
            Ok(())
        }
    }

    /// Takes free addresses: the preferred ones when they are free, and an IPv6 one only on
    /// a network with IPv6 (dockerd ignores `--ip6` elsewhere). Both or neither.
    pub fn allocate(&self, preferred: Option<Ipv4Addr>, preferred6: Option<Ipv6Addr>) -> Result<Eth0, NetworkError> {
        let mut spaces = self.spaces.lock().expect("ipam lock");
        let (v4, v6) = &mut *spaces;
        let address = v4.take(preferred)?;
        let v6 = match v6 {
            Some(s) => match s.take(preferred6) {
                Ok(a) => Some(Eth6 { address: a, prefix: s.subnet.1, gateway: s.gateway }),
                Err(e) => {
                    v4.give_back(address);
                    return Err(e);
                }
            },
            None => None,
        };
        Ok(Eth0 { address, prefix: self.prefix, gateway: self.gateway, mac: None, v6, link_local: Vec::new() })
    }

    /// Gives an address of either family back.
    pub fn release(&self, ip: IpAddr) {
        let mut spaces = self.spaces.lock().expect("ipam lock");
        match ip {
            IpAddr::V4(ip) => spaces.0.give_back(ip),
            IpAddr::V6(ip) => {
                if let Some(s) = spaces.1.as_mut() {
                    s.give_back(ip);
                }
            }
        }
    }

    /// Gives back what [`Bridge::allocate`] took.
    pub fn release_all(&self, e: &Eth0) {
        self.release(IpAddr::V4(e.address));
        if let Some(v6) = e.v6 {
            self.release(IpAddr::V6(v6.address));
        }
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
        let a = b.allocate(None, None).unwrap();
        assert_eq!(a.address, Ipv4Addr::new(172, 29, 0, 2));
        // No IPv6 on this bridge: an IPv6 address asked for is ignored, as dockerd does.
        let c = b.allocate(None, Some("fd00::5".parse().unwrap())).unwrap();
        assert_eq!((c.address, c.v6), (Ipv4Addr::new(172, 29, 0, 3), None));
        b.release_all(&a);
        assert_eq!(b.allocate(None, None).unwrap().address, Ipv4Addr::new(172, 29, 0, 2));
        let asked = b.allocate(Some(Ipv4Addr::new(172, 29, 9, 9)), None).unwrap();
        assert_eq!(asked.address, Ipv4Addr::new(172, 29, 9, 9));
        let e = Eth0 { address: Ipv4Addr::new(172, 17, 0, 2), gateway: Ipv4Addr::new(172, 17, 0, 1), ..asked };
        assert_eq!(e.mac_text(), "02:42:ac:11:00:02");
        assert_eq!(Eth0 { mac: Some([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]), ..e }.mac_text(), "12:34:56:78:9a:bc");
        assert_eq!(b.subnet(), "172.29.0.0/16");
    }
}
