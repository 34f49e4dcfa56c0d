//! Links and addresses through netlink (`rtnetlink`): the engine's bridges and the veth pair of
//! each container, with no `ip` process per step. In the VM, where a process start costs
//! milliseconds under emulation, a container's start spawned three of them before.
//!
//! Each call opens its own netlink socket (a socket and a task, microseconds) rather than
//! sharing one: a shared connection's task would belong to whichever tokio runtime made it
//! first, and the engine's tests run many.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth};

use super::NetworkError;

const EEXIST: i32 = libc::EEXIST;
const ENODEV: i32 = libc::ENODEV;

/// The errno a netlink request was refused with, if that is how it failed.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

fn failed(what: String) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    move |source| NetworkError::Netlink { what, source }
}

/// A netlink connection for one task's calls; its task ends when the handle is dropped.
fn connect() -> Result<Handle, NetworkError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|source| NetworkError::Spawn { command: "a netlink socket".into(), source })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The index of link `name`, if there is one.
async fn index_of(h: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    match h.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(failed(format!("looking up link {name}"))(e)),
    }
}

/// Bridge `name` with `gateway/prefix` on it, up; made if missing, left as it is otherwise.
pub async fn ensure_bridge(
    name: &str,
    gateway: Ipv4Addr,
    prefix: u8,
    v6: Option<(std::net::Ipv6Addr, u8)>,
) -> Result<(), NetworkError> {
    let h = connect()?;
    let index = match index_of(&h, name).await? {
        Some(i) => i,
        None => {
            match h.link().add(LinkBridge::new(name).build()).execute().await {
                Err(e) if errno(&e) != Some(EEXIST) => return Err(failed(format!("creating bridge {name}"))(e)),
                _ => {}
            }
            index_of(&h, name).await?.ok_or_else(|| NetworkError::Netlink {
                what: format!("finding bridge {name} after creating it"),
                source: rtnetlink::Error::RequestFailed,
            })?
        }
    };
    let mut addresses = vec![(IpAddr::V4(gateway), prefix)];
    if let Some((gateway6, prefix6)) = v6 {
        // The gateway answers at once: no duplicate address detection holding it tentative
        // while the first container already routes through it.
        let conf = format!("/proc/sys/net/ipv6/conf/{name}");
        for (key, value) in [("disable_ipv6", "0"), ("accept_dad", "0")] {
            std::fs::write(format!("{conf}/{key}"), value)
                .map_err(|source| NetworkError::Spawn { command: format!("setting {conf}/{key}"), source })?;
        }
        addresses.push((IpAddr::V6(gateway6), prefix6));
    }
    for (ip, prefix) in addresses {
        match h.address().add(index, ip, prefix).execute().await {
            Err(e) if errno(&e) != Some(EEXIST) => {
                return Err(failed(format!("adding {ip}/{prefix} to {name}"))(e));
            }
            _ => {}
        }
    }
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(failed(format!("bringing {name} up")))
}

/// Removes link `name` (a veth's peer goes with it); nothing if there is none.
pub async fn delete(name: &str) -> Result<(), NetworkError> {
    let h = connect()?;
    let Some(index) = index_of(&h, name).await? else { return Ok(()) };
    match h.link().del(index).execute().await {
        Err(e) if errno(&e) != Some(ENODEV) => Err(failed(format!("removing link {name}"))(e)),
        _ => Ok(()),
    }
}

/// A veth pair: `host` on `bridge` and up here, its peer `peer` with `mac`, made directly in
/// the network namespace of process `pid`. A stale `host` left by a crash is replaced.
pub async fn veth_into(host: &str, bridge: &str, peer: &str, mac: [u8; 6], pid: u32) -> Result<(), NetworkError> {
    delete(host).await?;
    let h = connect()?;
    let bridge_index = index_of(&h, bridge).await?.ok_or_else(|| NetworkError::Netlink {
        what: format!("attaching {host}: bridge {bridge} is gone"),
        source: rtnetlink::Error::RequestFailed,
    })?;
    let peer_msg =
        LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_owned()).address(mac.to_vec()).setns_by_pid(pid).build();
    let msg = LinkVeth::new(host, peer)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
        .controller(bridge_index)
        .up()
        .build();
    h.link().add(msg).execute().await.map_err(failed(format!("creating veth {host} for process {pid}")))
}
