//! User-defined networks (`docker network create`): each is a Linux bridge of its own
//! (`br-<id>`) with its own subnet, NAT out, no forwarding to or from any other of the
//! engine's bridges, and an embedded DNS server on its gateway ([`super::dns`]) that answers
//! for the containers on it by name, alias and short ID.
//!
//! Records are kept in `networks/<id>.json`; bridges are made when a container first needs
//! one, and removed with the network.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{Bridge, NetworkError};

/// One IPAM pool of a network, IPv4 or IPv6.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(bound(serialize = "A: Serialize", deserialize = "A: serde::de::DeserializeOwned"))]
pub struct Pool<A = Ipv4Addr> {
    pub subnet: A,
    pub prefix: u8,
    pub gateway: A,
    /// `IPRange`: where container addresses are taken from.
    #[serde(default)]
    pub range: Option<(A, u8)>,
    /// `AuxiliaryAddresses`: named addresses of the subnet no container is given.
    #[serde(default)]
    pub aux: BTreeMap<String, A>,
    /// Whether the gateway was given or the subnet's default (dockerd 20.10 shows a
    /// gateway in inspect only when one was given with a subnet, or it chose the subnet).
    #[serde(default = "shown")]
    pub gateway_shown: bool,
}

fn shown() -> bool {
    true
}

impl<A: std::fmt::Display> Pool<A> {
    pub fn subnet_text(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix)
    }
}

/// What is kept of a user-defined network.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub created: String,
    pub driver: String,
    pub pool: Pool,
    /// Whether the subnet was given by the user (only then may containers ask for an `--ip`).
    pub user_subnet: bool,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// `IPAM.Options`, kept and shown (none when the request had none).
    #[serde(default)]
    pub ipam_options: Option<BTreeMap<String, String>>,
    /// `EnableIPv6`: containers get an address of `pool6` too.
    #[serde(default)]
    pub enable_ipv6: bool,
    /// The IPv6 pool, when one was given (kept and shown even with IPv6 off, as dockerd).
    #[serde(default)]
    pub pool6: Option<Pool<Ipv6Addr>>,
}

impl NetworkRecord {
    /// The Linux bridge's name.
    pub fn bridge_name(&self) -> String {
        format!("br-{}", &self.id[..12])
    }
}

/// A network with its live parts.
pub struct UserNetwork {
    pub record: NetworkRecord,
    pub bridge: Arc<Bridge>,
    /// The DNS server, once the bridge is up.
    pub dns: Mutex<Option<super::dns::Server>>,
}

/// Subnets on this machine's routes (`/proc/net/route`), which a new network must not take.
pub fn routed_subnets() -> Vec<(Ipv4Addr, u8)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dest = u32::from_str_radix(f.get(1)?, 16).ok()?;
            let m = u32::from_str_radix(f.get(7)?, 16).ok()?;
            if m == 0 {
                return None;
            }
            // The file holds the addresses' bytes read as little-endian words.
            Some((Ipv4Addr::from(dest.to_le_bytes()), m.count_ones() as u8))
        })
        .collect()
}

/// The first free subnet of dockerd's default pools (172.18-28.0.0/16, then
/// 192.168.N.0/20) that overlaps none of `taken`.
pub fn free_subnet(taken: &[(Ipv4Addr, u8)]) -> Option<(Ipv4Addr, u8)> {
    let candidates = (18..=28)
        .map(|b| (Ipv4Addr::new(172, b, 0, 0), 16))
        .chain((0..16).map(|i| (Ipv4Addr::new(192, 168, i * 16, 0), 20)));
    candidates.into_iter().find(|c| !taken.iter().any(|t| super::ipam::overlaps(*c, *t)))
}

/// The store of network records.
#[derive(Debug)]
pub struct NetworkStore {
    dir: PathBuf,
}

impl NetworkStore {
    pub fn open(dir: &Path) -> Result<(NetworkStore, Vec<NetworkRecord>), NetworkError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| NetworkError::Spawn { command: "creating networks dir".into(), source })?;
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(bytes) = std::fs::read(e.path()) else { continue };
            match serde_json::from_slice::<NetworkRecord>(&bytes) {
                Ok(r) => out.push(r),
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), error = %err, "skipping unreadable network record")
                }
            }
        }
        Ok((NetworkStore { dir: dir.to_owned() }, out))
    }

    pub fn save(&self, rec: &NetworkRecord) -> Result<(), NetworkError> {
        let path = self.dir.join(format!("{}.json", rec.id));
        crate::fsutil::write_atomic(&path, &serde_json::to_vec_pretty(rec).expect("record serialises"))
            .map_err(|source| NetworkError::Spawn { command: format!("saving {}", path.display()), source })
    }

    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("{id}.json")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_subnets_are_picked_around_what_is_taken() {
        let taken = [(Ipv4Addr::new(172, 18, 0, 0), 16), (Ipv4Addr::new(172, 19, 3, 0), 24)];
        assert_eq!(free_subnet(&taken), Some((Ipv4Addr::new(172, 20, 0, 0), 16)));
        // Routes of this machine parse: at least loopback-less hosts have their default's subnet.
        for (ip, p) in routed_subnets() {
            assert!(p <= 32, "{ip}/{p}");
        }
    }
}
