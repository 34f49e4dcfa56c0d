//! Networks as the API sees them: the built-in `bridge`, `host` and `none`, and user-defined
//! bridge networks ([`crate::network::user`]) with IPAM, created, listed, inspected, removed,
//! pruned, and joined by containers (which find each other there through its DNS server).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::{Engine, EngineError, Inner};
use crate::container::{Attachment, ContainerRecord, Endpoint, NetRecord};
use crate::network::ipam::{self, Family};
use crate::network::user::{self, NetworkRecord, Pool, UserNetwork};
use crate::network::{Bridge, Mode, NetworkError};

/// What `POST /networks/create` asks for.
#[derive(Debug, Clone, Default)]
pub struct NetworkCreate {
    pub name: String,
    pub driver: String,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// The first IPv4 IPAM config, as given (its subnet none when not given).
    pub ipv4: PoolRequest,
    /// The first IPv6 IPAM config, as given.
    pub ipv6: Option<PoolRequest>,
    /// `EnableIPv6`.
    pub enable_ipv6: bool,
    /// `IPAM.Options`, when the request had them (even empty: dockerd shows `{}` then, and
    /// null without).
    pub ipam_options: Option<BTreeMap<String, String>>,
}

/// One IPAM config of a network create: `Subnet`, `Gateway`, `IPRange` and
/// `AuxiliaryAddresses` (name to address), as given.
#[derive(Debug, Clone, Default)]
pub struct PoolRequest {
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub ip_range: Option<String>,
    pub aux_addresses: BTreeMap<String, String>,
}

/// A network's address pool as inspect shows it (dockerd's `IPAMConfig`).
#[derive(Debug, Clone, Default)]
pub struct IpamInfo {
    pub subnet: String,
    /// None when the user gave a subnet and no gateway (dockerd 20.10 shows none then).
    pub gateway: Option<String>,
    pub range: Option<String>,
    pub aux: BTreeMap<String, String>,
}

/// A network as inspect and list show it.
#[derive(Debug, Clone)]
pub struct NetworkInfo {
    pub id: String,
    pub name: String,
    pub created: String,
    pub driver: String,
    pub builtin: bool,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
    /// The address pools (IPv4, then IPv6); none for host and none.
    pub ipam: Vec<IpamInfo>,
    pub ipam_options: Option<BTreeMap<String, String>>,
    pub enable_ipv6: bool,
    /// Containers on it: (record) — running ones carry their address in `net`.
    pub containers: Vec<ContainerRecord>,
}

/// Where a container's network mode leads.
pub(crate) enum Attach {
    Bridge(Arc<Bridge>, Option<Arc<UserNetwork>>),
    None,
    Host,
}

fn builtin_id(root: &std::path::Path, name: &str) -> String {
    let mut h = Sha256::new();
    h.update(root.to_string_lossy().as_bytes());
    h.update(b"\0network\0");
    h.update(name.as_bytes());
    hex::encode(h.finalize())
}

/// The name a network mode means: `bridge` for the default one.
pub fn mode_name(mode: &str) -> &str {
    match mode {
        "" | "default" => "bridge",
        m => m,
    }
}

impl Engine {
    pub(crate) fn insert_network(&self, rec: NetworkRecord) -> Arc<UserNetwork> {
        let v6 = rec.pool6.as_ref().filter(|_| rec.enable_ipv6);
        let bridge = Arc::new(Bridge::user(&rec.bridge_name(), &rec.pool, v6, &self.inner.bridge.name, rec.internal));
        let net = Arc::new(UserNetwork { record: rec, bridge, dns: Mutex::new(None) });
        self.inner.networks.lock().expect("networks lock").insert(net.record.id.clone(), net.clone());
        net
    }

    /// A user-defined network by name, full ID or unique ID prefix.
    pub(crate) fn user_network(&self, name_or_id: &str) -> Option<Arc<UserNetwork>> {
        let nets = self.inner.networks.lock().expect("networks lock");
        if let Some(n) = nets.values().find(|n| n.record.name == name_or_id || n.record.id == name_or_id) {
            return Some(n.clone());
        }
        let mut by_prefix = nets.values().filter(|n| !name_or_id.is_empty() && n.record.id.starts_with(name_or_id));
        match (by_prefix.next(), by_prefix.next()) {
            (Some(n), None) => Some(n.clone()),
            _ => None,
        }
    }

    /// Resolves a container's network mode.
    pub(crate) fn attach_of(&self, mode: &str) -> Result<Attach, EngineError> {
        match crate::network::parse_mode(mode) {
            Some(Mode::Bridge) => Ok(Attach::Bridge(self.inner.bridge.clone(), None)),
            Some(Mode::None) => Ok(Attach::None),
            Some(Mode::Host) => Ok(Attach::Host),
            None => match self.user_network(mode) {
                Some(n) => Ok(Attach::Bridge(n.bridge.clone(), Some(n))),
                None => Err(EngineError::NotFound(format!("network {mode} not found"))),
            },
        }
    }

    /// Brings a user network's bridge and DNS server up (once).
    pub(crate) async fn ensure_network(&self, net: &Arc<UserNetwork>) -> Result<(), EngineError> {
        net.bridge.ensure().await.map_err(|e| EngineError::Network(Box::new(e)))?;
        let mut dns = net.dns.lock().expect("dns lock");
        if dns.is_none() {
            let weak = Arc::downgrade(&self.inner);
            let name = net.record.name.clone();
            let lookup: crate::network::dns::Lookup =
                Arc::new(move |q: &str, asker: Ipv4Addr| resolve(&weak.upgrade()?, &name, q, asker));
            match crate::network::dns::serve(net.record.pool.gateway, &net.record.name, lookup) {
                Ok(server) => *dns = Some(server),
                Err(e) => {
                    return Err(EngineError::Io {
                        context: format!(
                            "starting the DNS server of network {} on {}:53",
                            net.record.name, net.record.pool.gateway
                        ),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// `network connect` (before a start) or `disconnect` (after an exit) for each of a
    /// container's networks, `none` and `host` included, as dockerd announces them.
    pub(crate) fn network_events(&self, rec: &ContainerRecord, action: &str) {
        let first = mode_name(rec.first_network()).to_owned();
        let others = self.extra_networks(rec).into_iter().map(|(n, _)| n.record.name.clone());
        for name in std::iter::once(first).chain(others) {
            let Some((name, id, _)) = self.network_identity(&name) else { continue };
            let kind = match name.as_str() {
                "none" => "null",
                "host" => "host",
                _ => "bridge",
            };
            self.inner.events.emit("network", action, &id, &[("container", &rec.id), ("name", &name), ("type", kind)]);
        }
    }

    /// `docker network create`.
    pub async fn network_create(&self, req: NetworkCreate) -> Result<String, EngineError> {
        if !crate::names::valid_network_name(&req.name) {
            return Err(EngineError::InvalidArgument(format!("invalid network name: {:?}", req.name)));
        }
        if crate::network::parse_mode(&req.name).is_some() && req.name != "default" {
            return Err(EngineError::Conflict(format!("network with name {} already exists", req.name)));
        }
        if self.user_network(&req.name).is_some_and(|n| n.record.name == req.name) {
            return Err(EngineError::Conflict(format!("network with name {} already exists", req.name)));
        }
        match req.driver.as_str() {
            "" | "bridge" => {}
            other => {
                return Err(EngineError::NotFound(format!(
                    "plugin \"{other}\" not found: Berth has the bridge driver only"
                )));
            }
        }
        // The subnets a new network must not overlap, of each family.
        let (taken, taken6): Taken = {
            let nets = self.inner.networks.lock().expect("networks lock");
            let b = &self.inner.bridge;
            let default = (ipam::network(b.gateway, b.prefix), b.prefix);
            let v4 = nets
                .values()
                .map(|n| (n.record.pool.subnet, n.record.pool.prefix))
                .chain(std::iter::once(default))
                .chain(user::routed_subnets())
                .collect();
            let v6 = nets.values().filter_map(|n| n.record.pool6.as_ref().map(|p| (p.subnet, p.prefix))).collect();
            (v4, v6)
        };
        let pool = pool_of(&req.name, &req.ipv4, &taken, || user::free_subnet(&taken))?;
        let pool6 = match &req.ipv6 {
            Some(r) => Some(pool_of(&req.name, r, &taken6, || None)?),
            // dockerd 20.10 has no default IPv6 pools, and answers 404.
            None if req.enable_ipv6 => {
                return Err(EngineError::NotFound(
                    "could not find an available, non-overlapping IPv6 address pool among the defaults to assign to the network".into(),
                ));
            }
            None => None,
        };
        let user_subnet = req.ipv4.subnet.is_some() || pool6.is_some();
        let rec = NetworkRecord {
            id: crate::names::random_id(),
            name: req.name.clone(),
            created: crate::model::now_rfc3339(),
            driver: "bridge".into(),
            pool,
            user_subnet,
            internal: req.internal,
            attachable: req.attachable,
            labels: req.labels,
            options: req.options,
            ipam_options: req.ipam_options,
            enable_ipv6: req.enable_ipv6,
            pool6,
        };
        self.inner.network_store.save(&rec).map_err(|e| EngineError::Network(Box::new(e)))?;
        let id = rec.id.clone();
        self.insert_network(rec);
        self.inner.events.emit("network", "create", &id, &[("name", &req.name), ("type", "bridge")]);
        Ok(id)
    }

    fn info_of(&self, net: &UserNetwork, containers: &[ContainerRecord]) -> NetworkInfo {
        let r = &net.record;
        NetworkInfo {
            id: r.id.clone(),
            name: r.name.clone(),
            created: r.created.clone(),
            driver: r.driver.clone(),
            builtin: false,
            internal: r.internal,
            attachable: r.attachable,
            labels: r.labels.clone(),
            options: r.options.clone(),
            ipam: std::iter::once(ipam_info(&r.pool)).chain(r.pool6.as_ref().map(ipam_info)).collect(),
            ipam_options: r.ipam_options.clone(),
            enable_ipv6: r.enable_ipv6,
            containers: containers.iter().filter(|c| on_network(c, &r.name, &r.id)).cloned().collect(),
        }
    }

    /// Every network: the built-in ones first.
    pub fn networks(&self) -> Vec<NetworkInfo> {
        let containers = self.containers();
        let root = self.root().to_owned();
        let b = &self.inner.bridge;
        let builtin = |name: &str, ipam: Vec<IpamInfo>| NetworkInfo {
            id: builtin_id(&root, name),
            name: name.into(),
            created: String::new(),
            driver: if name == "none" { "null".into() } else { name.into() },
            builtin: true,
            internal: false,
            attachable: false,
            labels: BTreeMap::new(),
            options: BTreeMap::new(),
            ipam,
            ipam_options: None,
            enable_ipv6: false,
            containers: containers.iter().filter(|c| mode_name(c.first_network()) == name).cloned().collect(),
        };
        let subnet = format!("{}/{}", ipam::network(b.gateway, b.prefix), b.prefix);
        let mut out = vec![
            builtin("bridge", vec![IpamInfo { subnet, gateway: Some(b.gateway.to_string()), ..Default::default() }]),
            builtin("host", Vec::new()),
            builtin("none", Vec::new()),
        ];
        let nets: Vec<Arc<UserNetwork>> =
            self.inner.networks.lock().expect("networks lock").values().cloned().collect();
        let mut users: Vec<NetworkInfo> = nets.iter().map(|n| self.info_of(n, &containers)).collect();
        users.sort_by(|a, b| a.created.cmp(&b.created));
        out.extend(users);
        out
    }

    /// A network's name, ID and whether it is built in, without its containers (for each
    /// container's inspect and list entry).
    pub fn network_identity(&self, name_or_id: &str) -> Option<(String, String, bool)> {
        let name = mode_name(name_or_id);
        if matches!(name, "bridge" | "host" | "none") {
            return Some((name.to_owned(), builtin_id(self.root(), name), true));
        }
        self.user_network(name).map(|n| (n.record.name.clone(), n.record.id.clone(), false))
    }

    /// One network by name, ID or ID prefix.
    pub fn network(&self, name_or_id: &str) -> Result<NetworkInfo, EngineError> {
        let all = self.networks();
        if let Some(n) = all.iter().find(|n| n.name == name_or_id || n.id == name_or_id) {
            return Ok(n.clone());
        }
        let matches: Vec<&NetworkInfo> =
            all.iter().filter(|n| !name_or_id.is_empty() && n.id.starts_with(name_or_id)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NotFound(format!("network {name_or_id} not found"))),
            _ => Err(EngineError::InvalidArgument(format!(
                "network {name_or_id} is ambiguous ({} matches found based on ID prefix)",
                matches.len()
            ))),
        }
    }

    /// `docker network rm`.
    pub async fn network_remove(&self, name_or_id: &str) -> Result<(), EngineError> {
        let info = self.network(name_or_id)?;
        if info.builtin {
            return Err(EngineError::Forbidden(format!(
                "{} is a pre-defined network and cannot be removed",
                info.name
            )));
        }
        if !info.containers.is_empty() {
            return Err(EngineError::Forbidden(format!(
                "error while removing network: network {} id {} has active endpoints",
                info.name, info.id
            )));
        }
        let net = self.inner.networks.lock().expect("networks lock").remove(&info.id);
        if let Some(net) = net {
            net.dns.lock().expect("dns lock").take();
            net.bridge.teardown().await;
        }
        self.inner.network_store.remove(&info.id);
        self.inner.events.emit("network", "destroy", &info.id, &[("name", &info.name), ("type", "bridge")]);
        Ok(())
    }

    /// `docker network prune`: user networks no container uses; returns their names.
    pub async fn network_prune(&self, keep: impl Fn(&NetworkInfo) -> bool) -> Result<Vec<String>, EngineError> {
        let mut out = Vec::new();
        for n in self.networks() {
            if n.builtin || !n.containers.is_empty() || keep(&n) {
                continue;
            }
            self.network_remove(&n.id).await?;
            out.push(n.name);
        }
        Ok(out)
    }

    /// `docker network connect`. A stopped container joins when it starts; a running one
    /// gets an interface on the network at once (`eth1`, ...). A container on no network
    /// (`none`) moves to this one.
    pub async fn network_connect(&self, network: &str, container: &str, ep: Endpoint) -> Result<(), EngineError> {
        let info = self.network(network)?;
        let ctr = self.ctr(container)?;
        let _op = ctr.op.lock().await;
        let rec = ctr.snapshot();
        if on_network(&rec, &info.name, &info.id) {
            return Err(EngineError::Forbidden(format!(
                "endpoint with name {} already exists in network {}",
                rec.name, info.name
            )));
        }
        // dockerd's refusals, word for word.
        if info.name == "host" {
            return Err(EngineError::InvalidArgument(
                "container cannot be disconnected from host network or connected to host network".into(),
            ));
        }
        if mode_name(&rec.host_config.network_mode) == "host" {
            return Err(EngineError::InvalidArgument(
                "container sharing network namespace with another container or host cannot be connected to any other network".into(),
            ));
        }
        // dockerd's rule, on the mode as given: a container made for no network joins none.
        if mode_name(&rec.host_config.network_mode) == "none" {
            return Err(EngineError::InvalidArgument(
                "container cannot be connected to multiple networks with one of the networks in private (none) mode"
                    .into(),
            ));
        }
        let current = mode_name(rec.first_network()).to_owned();
        let rec = if rec.left_all_networks() && !rec.running() {
            // It left all its networks: this one becomes its first.
            ctr.update(|r| {
                r.moved_to = Some(info.name.clone());
                r.endpoints.insert(info.name.clone(), ep);
            })?
        } else {
            let Some(net) = self.user_network(&info.id) else {
                return Err(EngineError::Conflict(format!(
                    "container {}: Berth adds only user-defined networks to a container",
                    rec.name
                )));
            };
            if rec.running() {
                self.connect_running(&ctr, &rec, net, &current, ep).await?
            } else {
                ctr.update(|r| {
                    r.endpoints.insert(info.name.clone(), ep);
                })?
            }
        };
        // A stopped container's joins are announced when it starts, as dockerd does.
        if rec.running() {
            self.inner.events.emit(
                "network",
                "connect",
                &info.id,
                &[("container", &rec.id), ("name", &info.name), ("type", &info.driver)],
            );
        }
        Ok(())
    }

    /// `docker network disconnect`. A running container loses that interface at once; a
    /// stopped one leaves the network. When it was the container's first network, the next of
    /// its networks (or `none`) becomes its first: a running one keeps that network's
    /// interface (`eth1`, ...) and is routed and resolved through it, as with dockerd.
    pub async fn network_disconnect(&self, network: &str, container: &str) -> Result<(), EngineError> {
        let info = self.network(network)?;
        let ctr = self.ctr(container)?;
        let _op = ctr.op.lock().await;
        let rec = ctr.snapshot();
        if !on_network(&rec, &info.name, &info.id) {
            return Err(EngineError::Forbidden(format!(
                "container {} is not connected to network {}",
                rec.id, info.name
            )));
        }
        let primary = on_primary(&rec, &info.name, &info.id);
        if rec.running() && primary {
            let rec = self.disconnect_first(&ctr, &rec, &info).await?;
            self.inner.events.emit(
                "network",
                "disconnect",
                &info.id,
                &[("container", &rec.id), ("name", &info.name), ("type", &info.driver)],
            );
            return Ok(());
        }
        if let Some(a) = rec.net.others.get(&info.name) {
            if let Err(e) = crate::network::detach(&a.link).await {
                tracing::warn!(link = %a.link, error = %e, "removing a container's interface");
            }
            if let Some(n) = self.user_network(&info.id) {
                release_attachment(&n.bridge, &a.ip, a.v6);
            }
        }
        let named = |k: &String| names_network(k, &info.name, &info.id);
        let rec = ctr.update(|r| {
            r.endpoints.retain(|k, _| !named(k));
            r.net.others.remove(&info.name);
            if primary {
                r.moved_to = Some(r.endpoints.keys().next().cloned().unwrap_or_else(|| "none".into()));
            }
        })?;
        // Announced for a stopped container too (its joins wait for its start), as dockerd.
        self.inner.events.emit(
            "network",
            "disconnect",
            &info.id,
            &[("container", &rec.id), ("name", &info.name), ("type", &info.driver)],
        );
        Ok(())
    }

    /// A running container leaves its first network: `eth0` goes with its address, and the
    /// next of its networks takes the first's place in the record, keeping its interface,
    /// with the default route through its gateway and the container's resolver on its DNS
    /// server (as a start on it would have them). With no other network it is on `none`.
    async fn disconnect_first(
        &self,
        ctr: &super::Ctr,
        rec: &ContainerRecord,
        info: &NetworkInfo,
    ) -> Result<ContainerRecord, EngineError> {
        let link = match rec.net.link.as_str() {
            "" => format!("vb{}", &rec.id[..12.min(rec.id.len())]),
            other => other.to_owned(),
        };
        if let Err(e) = crate::network::detach(&link).await {
            tracing::warn!(link = %link, error = %e, "removing a container's first interface");
        }
        self.release_first(&rec.net);
        let next = rec.net.others.iter().next().map(|(name, a)| (name.clone(), a.clone()));
        if let Some((_, a)) = &next
            && let Ok(gateway) = a.gateway.parse()
        {
            let pid = rec.state.pid;
            let v6 = a.v6.map(|v6| (a.iface.clone(), v6.gateway));
            super::blocking(move || {
                crate::network::iface::default_route_in(pid, gateway, v6)
                    .map_err(|e| EngineError::Network(Box::new(crate::network::NetworkError::BadAddress(e))))
            })
            .await?;
            if rec.host_config.dns.is_empty() {
                resolve_through(ctr, gateway)?;
            }
        }
        let named = |k: &String| names_network(k, &info.name, &info.id);
        ctr.update(|r| {
            r.endpoints.retain(|k, _| !named(k));
            let others = std::mem::take(&mut r.net.others);
            let ports = std::mem::take(&mut r.net.ports);
            r.net = match &next {
                Some((name, a)) => NetRecord {
                    mode: name.clone(),
                    ip: a.ip.clone(),
                    gateway: a.gateway.clone(),
                    prefix: a.prefix,
                    mac: a.mac.clone(),
                    ports,
                    others: others.into_iter().filter(|(k, _)| k != name).collect(),
                    link: a.link.clone(),
                    v6: a.v6,
                },
                None => NetRecord { mode: "none".into(), ports, ..NetRecord::default() },
            };
            r.moved_to = Some(next.as_ref().map(|(name, _)| name.clone()).unwrap_or_else(|| "none".into()));
        })
    }

    /// Gives back the addresses a container held on its first network.
    pub(crate) fn release_first(&self, net: &NetRecord) {
        match self.user_network(&net.mode) {
            Some(n) if net.mode != "bridge" => release_attachment(&n.bridge, &net.ip, net.v6),
            _ => release_attachment(&self.inner.bridge, &net.ip, net.v6),
        }
    }

    /// A running container joins `net`: an interface of its own, up before this returns.
    async fn connect_running(
        &self,
        ctr: &super::Ctr,
        rec: &ContainerRecord,
        net: Arc<UserNetwork>,
        current: &str,
        ep: Endpoint,
    ) -> Result<ContainerRecord, EngineError> {
        let used: Vec<&str> = rec.net.others.values().map(|a| a.iface.as_str()).collect();
        let slot = (1..=MAX_EXTRA).find(|i| !used.contains(&format!("eth{i}").as_str())).ok_or_else(|| {
            EngineError::Conflict(format!(
                "container {} is on {} networks, the most Berth joins",
                rec.name,
                MAX_EXTRA + 1
            ))
        })?;
        let extra = self.take_address(rec, net, &ep, slot).await?;
        if let Err(e) = plug(rec.state.pid, &extra).await {
            unplug(&[extra]).await;
            return Err(e);
        }
        let (name, gateway, attachment) = (extra.name().to_owned(), extra.eth.gateway, extra.attachment());
        let had_dns = self.user_network(current).is_some() || !rec.net.others.is_empty();
        let rec = ctr.update(|r| {
            r.endpoints.insert(name.clone(), ep);
            r.net.others.insert(name, attachment);
        })?;
        // A container that had only the default bridge now has a network with a DNS server:
        // its resolver points there (which forwards every other name).
        if !had_dns && rec.host_config.dns.is_empty() {
            resolve_through(ctr, gateway)?;
        }
        Ok(rec)
    }

    /// A container's networks after its first: the user-defined ones its endpoints name.
    pub(crate) fn extra_networks(&self, rec: &ContainerRecord) -> Vec<(Arc<UserNetwork>, Endpoint)> {
        let first = self.user_network(mode_name(rec.first_network())).map(|n| n.record.id.clone());
        let mut out: Vec<(Arc<UserNetwork>, Endpoint)> = Vec::new();
        for (key, ep) in &rec.endpoints {
            if let Some(n) = self.user_network(key)
                && Some(&n.record.id) != first.as_ref()
                && !out.iter().any(|(o, _)| o.record.id == n.record.id)
            {
                out.push((n, ep.clone()));
            }
        }
        out
    }

    /// Addresses on a container's other networks, taken before it starts (given back if any
    /// of them cannot be).
    pub(crate) async fn prepare_extras(&self, rec: &ContainerRecord) -> Result<Vec<Extra>, EngineError> {
        let nets = self.extra_networks(rec);
        if nets.len() > MAX_EXTRA {
            return Err(EngineError::InvalidArgument(format!(
                "container {} is on {} networks; Berth joins a container to at most {}",
                rec.name,
                nets.len() + 1,
                MAX_EXTRA + 1
            )));
        }
        let mut out = Vec::new();
        for (slot, (net, ep)) in nets.into_iter().enumerate() {
            match self.take_address(rec, net, &ep, slot + 1).await {
                Ok(x) => out.push(x),
                Err(e) => {
                    release(&out);
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// An address on `net` for interface `eth<slot>` of container `rec`.
    async fn take_address(
        &self,
        rec: &ContainerRecord,
        net: Arc<UserNetwork>,
        ep: &Endpoint,
        slot: usize,
    ) -> Result<Extra, EngineError> {
        let link_local = link_local_of(ep)?;
        self.ensure_network(&net).await?;
        let mut eth = net
            .bridge
            .allocate(ep.ipv4.parse().ok(), ep.ipv6.parse().ok())
            .map_err(|e| EngineError::Network(Box::new(e)))?;
        eth.mac = crate::network::parse_mac(&ep.mac);
        eth.link_local = link_local;
        Ok(Extra { net, eth, iface: format!("eth{slot}"), link: format!("vx{}{slot}", &rec.id[..11]) })
    }
}

/// Subnets in use: IPv4, then IPv6.
type Taken = (Vec<(Ipv4Addr, u8)>, Vec<(Ipv6Addr, u8)>);

/// A network's pool of family `A` from one IPAM config of its create: the subnet given
/// (refused when it overlaps one in `taken`) or the `default` one, the gateway given or the
/// subnet's first address, the range and the auxiliary addresses, each refused with
/// dockerd's words and status codes.
fn pool_of<A: Family>(
    network: &str,
    req: &PoolRequest,
    taken: &[(A, u8)],
    default: impl FnOnce() -> Option<(A, u8)>,
) -> Result<Pool<A>, EngineError> {
    let family = if A::BITS == 32 { "IPv4" } else { "IPv6" };
    let (subnet, prefix) = match &req.subnet {
        Some(s) => {
            let parsed = ipam::parse_cidr::<A>(s).ok_or_else(|| {
                EngineError::InvalidArgument(format!(
                    "invalid subnet {s}: an {family} address and a prefix of at most {}",
                    A::MAX_PREFIX
                ))
            })?;
            if let Some(t) = taken.iter().find(|t| ipam::overlaps(parsed, **t)) {
                return Err(EngineError::Conflict(format!(
                    "Pool overlaps with other one on this address space ({}/{} is in use)",
                    t.0, t.1
                )));
            }
            parsed
        }
        None => default().ok_or_else(|| {
            EngineError::Conflict(format!(
                "could not find an available, non-overlapping {family} address pool among the defaults to assign to the network"
            ))
        })?,
    };
    let in_subnet = |ip: A| ipam::contains((subnet, prefix), ip);
    let gateway = match &req.gateway {
        Some(g) => {
            let ip: A = g.parse().map_err(|_| EngineError::InvalidArgument(format!("invalid gateway {g}")))?;
            if !in_subnet(ip) {
                return Err(EngineError::InvalidArgument(format!("no matching subnet for gateway {g}")));
            }
            ip
        }
        None => A::from_bits(subnet.to_bits() + 1),
    };
    let range = match &req.ip_range {
        Some(r) => {
            let parsed = ipam::parse_cidr::<A>(r)
                .ok_or_else(|| EngineError::InvalidArgument(format!("invalid ip-range {r}")))?;
            if !in_subnet(parsed.0) || parsed.1 < prefix {
                return Err(EngineError::InvalidArgument(format!("no matching subnet for range {r}")));
            }
            Some(parsed)
        }
        None => None,
    };
    // dockerd's words and status codes (a 500 for what its allocator refuses).
    let refused = |m: String| EngineError::Network(Box::new(NetworkError::BadAddress(m)));
    let mut aux = BTreeMap::new();
    for (name, a) in &req.aux_addresses {
        let ip: A = a.parse().map_err(|_| {
            refused(format!("non parsable secondary ip address ({name}:{a}) passed for network {network}"))
        })?;
        if !in_subnet(ip) {
            return Err(EngineError::Forbidden(format!(
                "auxiliary address: ({name}:{a}) must belong to the master pool: {subnet}/{prefix}"
            )));
        }
        if ip == gateway || aux.values().any(|x| *x == ip) {
            return Err(refused(format!(
                "failed to allocate secondary ip address ({name}:{a}): Address already in use"
            )));
        }
        aux.insert(name.clone(), ip);
    }
    // dockerd 20.10 shows a gateway only when one was given with a subnet, or it chose both.
    let gateway_shown = req.subnet.is_none() || req.gateway.is_some();
    Ok(Pool { subnet, prefix, gateway, range, aux, gateway_shown })
}

/// A pool as inspect shows it.
fn ipam_info<A: Family>(p: &Pool<A>) -> IpamInfo {
    IpamInfo {
        subnet: p.subnet_text(),
        gateway: p.gateway_shown.then(|| p.gateway.to_string()),
        range: p.range.map(|(ip, n)| format!("{ip}/{n}")),
        aux: p.aux.iter().map(|(k, v)| (k.clone(), v.to_string())).collect(),
    }
}

/// An endpoint's `LinkLocalIPs`, each checked to be one (dockerd's words, when the container
/// starts or joins).
pub(crate) fn link_local_of(ep: &crate::container::Endpoint) -> Result<Vec<IpAddr>, EngineError> {
    let refused = |m: String| EngineError::Network(Box::new(NetworkError::BadAddress(m)));
    let parsed: Vec<IpAddr> = ep
        .link_local
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()
        .map_err(|_| refused(format!("Invalid link-local IP address: [{}]", ep.link_local.join(" "))))?;
    for ip in &parsed {
        let local = match ip {
            IpAddr::V4(v4) => v4.is_link_local(),
            IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
        };
        if !local {
            return Err(refused(format!("invalid link local IP address: {ip}")));
        }
    }
    Ok(parsed)
}

/// The most networks a container joins after its first (interfaces `eth1` to `eth9`).
const MAX_EXTRA: usize = 9;

/// A container's place on one of its other networks: the address taken there, its interface
/// in the container and the veth end on the network's bridge.
pub(crate) struct Extra {
    net: Arc<UserNetwork>,
    pub(crate) eth: crate::network::Eth0,
    iface: String,
    link: String,
}

impl Extra {
    pub(crate) fn name(&self) -> &str {
        &self.net.record.name
    }

    pub(crate) fn attachment(&self) -> Attachment {
        Attachment {
            ip: self.eth.address.to_string(),
            gateway: self.eth.gateway.to_string(),
            prefix: self.eth.prefix,
            mac: self.eth.mac_text(),
            iface: self.iface.clone(),
            link: self.link.clone(),
            v6: self.eth.v6,
        }
    }
}

/// Gives the addresses back.
pub(crate) fn release(extras: &[Extra]) {
    for x in extras {
        x.net.bridge.release_all(&x.eth);
    }
}

/// Gives back the addresses a record shows a container held on `bridge`'s network.
fn release_attachment(bridge: &Bridge, ip: &str, v6: Option<crate::network::Eth6>) {
    if let Ok(ip) = ip.parse() {
        bridge.release(IpAddr::V4(ip));
    }
    if let Some(v6) = v6 {
        bridge.release(IpAddr::V6(v6.address));
    }
}

/// Removes the interfaces (if made) and gives the addresses back.
async fn unplug(extras: &[Extra]) {
    for x in extras {
        let _ = crate::network::detach(&x.link).await;
    }
    release(extras);
}

/// The interface for `x` in the network namespace of process `pid`: a veth pair on the
/// network's bridge, the container's end addressed and up (no route beyond its subnet: the
/// default route stays on the first network, as with dockerd).
pub(crate) async fn plug(pid: i32, x: &Extra) -> Result<(), EngineError> {
    x.net.bridge.attach_as(&x.link, &x.iface, pid, &x.eth).await.map_err(|e| EngineError::Network(Box::new(e)))?;
    let (iface, eth) = (x.iface.clone(), x.eth.clone());
    super::blocking(move || {
        crate::network::iface::address_in(pid, &iface, &eth)
            .map_err(|e| EngineError::Network(Box::new(crate::network::NetworkError::BadAddress(e))))
    })
    .await
}

/// The addresses a stopped container held on its other networks, given back.
pub(crate) fn release_others(engine: &Engine, rec: &ContainerRecord) {
    for (name, a) in &rec.net.others {
        if let Some(n) = engine.user_network(name) {
            release_attachment(&n.bridge, &a.ip, a.v6);
        }
    }
}

/// Points a running container's resolver at the DNS server on `gateway` (a user network's),
/// which forwards every other name.
fn resolve_through(ctr: &super::Ctr, gateway: impl std::fmt::Display) -> Result<(), EngineError> {
    let text = format!("nameserver {gateway}\noptions ndots:0\n");
    std::fs::write(ctr.dir.join("resolv.conf"), text).map_err(super::io_ctx("writing resolv.conf"))
}

/// Whether an endpoint's key names network `name` (ID `id`): its name, its ID or an ID prefix
/// of 12 or more.
fn names_network(key: &str, name: &str, id: &str) -> bool {
    key == name || key == id || (key.len() >= 12 && id.starts_with(key))
}

/// Whether network `name` (ID `id`) is the container's first.
fn on_primary(c: &ContainerRecord, name: &str, id: &str) -> bool {
    names_network(mode_name(c.first_network()), name, id)
}

/// Whether a container is on the network `name` (ID `id`): its first, or one its endpoints name.
pub fn on_network(c: &ContainerRecord, name: &str, id: &str) -> bool {
    on_primary(c, name, id) || (name != "bridge" && c.endpoints.keys().any(|k| names_network(k, name, id)))
}

/// The DNS server's lookup on network `net` for a query from `asker`: a running container
/// named `q` (its name, an alias on that network, its short ID or hostname), looked for on
/// `net`, then on the asker's other user-defined networks (its resolver is one network's
/// server, as dockerd's is one for all); `name.network` looks on that network only. The
/// answer is the container's addresses on the network it was found on.
fn resolve(inner: &Arc<Inner>, net: &str, q: &str, asker: Ipv4Addr) -> Option<(Ipv4Addr, Option<Ipv6Addr>)> {
    let engine = Engine { inner: inner.clone() };
    let running: Vec<ContainerRecord> = engine.containers().into_iter().filter(|c| c.running()).collect();
    let asker = asker.to_string();
    let mut nets = vec![net.to_owned()];
    if let Some(me) = running.iter().find(|c| c.address_on(net).is_some_and(|a| a.0 == asker)) {
        nets.extend(
            std::iter::once(&me.net.mode).chain(me.net.others.keys()).filter(|n| *n != net && *n != "bridge").cloned(),
        );
    }
    let (q, nets) = match q.rsplit_once('.') {
        Some((name, scope)) if nets.iter().any(|n| n.eq_ignore_ascii_case(scope)) => (name, vec![scope.to_owned()]),
        _ => (q, nets),
    };
    nets.iter().find_map(|n| {
        let id = engine.user_network(n).map(|u| u.record.id.clone()).unwrap_or_default();
        running
            .iter()
            .filter(|c| c.address_on(n).is_some())
            .find(|c| {
                c.name.eq_ignore_ascii_case(q)
                    || c.config.hostname.eq_ignore_ascii_case(q)
                    || (q.len() >= 12 && c.id.starts_with(q))
                    || c.endpoints
                        .iter()
                        .filter(|(k, _)| *k == n || **k == id || (k.len() >= 12 && id.starts_with(k.as_str())))
                        .any(|(_, e)| e.aliases.iter().any(|a| a.eq_ignore_ascii_case(q)))
            })
            .and_then(|c| Some((c.address_on(n)?.0.parse().ok()?, c.ipv6_on(n).map(|v6| v6.address))))
    })
}
