//! Network interface setup with plain ioctls (addresses of both families, netmask, up,
//! default routes), for the places where neither a netlink runtime nor `ip` is at hand: a
//! container's helper just before it execs, the guest's init, and a running container's
//! second and later networks (from a thread that joins its namespace). They act on the
//! calling thread's namespace.

use std::os::fd::{AsRawFd, FromRawFd};

/// An inet socket for interface ioctls; closed on drop.
struct IoctlSocket(std::os::fd::OwnedFd);

impl IoctlSocket {
    fn new() -> Result<Self, String> {
        Self::of(libc::AF_INET)
    }

    /// A socket of `family` (IPv6's ioctls want an `AF_INET6` one).
    fn of(family: libc::c_int) -> Result<Self, String> {
        // SAFETY: a plain socket call; the fd is owned right away.
        let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: fd was just returned by socket(2).
        Ok(IoctlSocket(unsafe { <std::os::fd::OwnedFd as FromRawFd>::from_raw_fd(fd) }))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &T, what: &str) -> Result<(), String> {
        // SAFETY: the interface ioctls used here read a struct we own and pass by reference.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), request, arg as *const T) } < 0 {
            return Err(format!("{what}: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req
}

fn sockaddr_in(ip: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the API is meant to be used.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Brings an interface up (SIOCSIFFLAGS).
pub fn up(name: &str) -> Result<(), String> {
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    IoctlSocket::new()?.ioctl(libc::SIOCSIFFLAGS, &req, &format!("bringing up {name}"))
}

/// The kernel's `struct rtentry` (linux/route.h), which glibc's libc bindings do not carry.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Gives interface `name` its addresses (and so routes to their subnets) and brings it up:
/// its IPv4 address, its link-local ones (`--link-local-ip`, the IPv4 ones as aliases
/// `name:N`, /16 as dockerd has them), and its IPv6 one on a network with IPv6.
pub fn address(name: &str, e: &super::Eth0) -> Result<(), String> {
    address4(name, name, e.address, e.prefix)?;
    let v4_local = e.link_local.iter().filter_map(|ip| match ip {
        std::net::IpAddr::V4(ip) => Some(*ip),
        std::net::IpAddr::V6(_) => None,
    });
    for (i, ip) in v4_local.enumerate() {
        address4(name, &format!("{name}:{i}"), ip, 16)?;
    }
    up(name)?;
    if let Some(v6) = &e.v6 {
        address6(name, v6.address, v6.prefix)?;
    }
    for ip in &e.link_local {
        if let std::net::IpAddr::V6(ip) = ip {
            address6(name, *ip, 64)?;
        }
    }
    Ok(())
}

/// An IPv4 address and its netmask on `label` (`name`, or an alias `name:N`).
fn address4(name: &str, label: &str, ip: std::net::Ipv4Addr, prefix: u8) -> Result<(), String> {
    let sock = IoctlSocket::new()?;
    let mut req = ifreq(label);
    req.ifr_ifru.ifru_addr = sockaddr_in(ip);
    sock.ioctl(libc::SIOCSIFADDR, &req, &format!("setting the address {ip} of {name}"))?;
    let mask = std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - prefix as u32).unwrap_or(0));
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    sock.ioctl(libc::SIOCSIFNETMASK, &req, &format!("setting the netmask of {ip} on {name}"))
}

fn index_of(name: &str) -> Result<libc::c_int, String> {
    let c = std::ffi::CString::new(name).map_err(|_| format!("bad interface name {name:?}"))?;
    // SAFETY: a NUL-terminated name we own.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("interface {name}: {}", std::io::Error::last_os_error())),
        i => Ok(i as libc::c_int),
    }
}

fn in6(ip: std::net::Ipv6Addr) -> libc::in6_addr {
    libc::in6_addr { s6_addr: ip.octets() }
}

/// An IPv6 address on `name` (SIOCSIFADDR on an IPv6 socket takes an `in6_ifreq`).
fn address6(name: &str, ip: std::net::Ipv6Addr, prefix: u8) -> Result<(), String> {
    let req = libc::in6_ifreq { ifr6_addr: in6(ip), ifr6_prefixlen: prefix as u32, ifr6_ifindex: index_of(name)? };
    IoctlSocket::of(libc::AF_INET6)?.ioctl(libc::SIOCSIFADDR, &req, &format!("setting the address {ip} of {name}"))
}

/// [`address`] for interface `name` in the network namespace of process `pid`. For a
/// container's second and later networks, which have no default route (IPv6 gets one when
/// the container had none: its first network had no IPv6, as dockerd routes it).
pub fn address_in(pid: i32, name: &str, e: &super::Eth0) -> Result<(), String> {
    let (name, e) = (name.to_owned(), e.clone());
    in_namespace(pid, move || {
        let v6 = e.v6.is_some() || e.link_local.iter().any(std::net::IpAddr::is_ipv6);
        if v6 {
            enable_ipv6(&name)?;
        }
        address(&name, &e)?;
        match e.v6 {
            Some(v6) if !has_default_route6()? => default_route6(&name, v6.gateway),
            _ => Ok(()),
        }
    })
}

/// IPv6 on in this namespace (a container starts with it off when none of its networks has
/// it) and on `name`, which takes its addresses with no duplicate address detection (they
/// are the network's to give: dockerd adds them with `IFA_F_NODAD`). The calling thread's
/// namespace is the one `/proc/sys/net` shows.
fn enable_ipv6(name: &str) -> Result<(), String> {
    let conf = "/proc/sys/net/ipv6/conf";
    let set = |key: &str, value: &str| {
        std::fs::write(format!("{conf}/{key}"), value).map_err(|e| format!("setting {conf}/{key}: {e}"))
    };
    if std::fs::read_to_string(format!("{conf}/all/disable_ipv6")).map_err(|e| format!("IPv6: {e}"))?.trim() == "1" {
        set("all/disable_ipv6", "0")?;
        set("default/disable_ipv6", "0")?;
    }
    set(&format!("{name}/disable_ipv6"), "0")?;
    set(&format!("{name}/accept_dad"), "0")
}

/// Whether this thread's namespace routes IPv6 anywhere already (its `ipv6_route` has the
/// default route as a zero destination and prefix through a gateway). `/proc/net` is the
/// process's namespace's, not the thread's: a thread that joined another reads
/// `/proc/thread-self/net`.
fn has_default_route6() -> Result<bool, String> {
    let text =
        std::fs::read_to_string("/proc/thread-self/net/ipv6_route").map_err(|e| format!("reading IPv6 routes: {e}"))?;
    Ok(text.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 4 && f[0].bytes().all(|b| b == b'0') && f[1] == "00" && !f[4].bytes().all(|b| b == b'0')
    }))
}

/// Runs `f` on a thread that joins the network namespace of process `pid` (only the thread
/// does: the rest of the engine stays where it is).
fn in_namespace(pid: i32, f: impl FnOnce() -> Result<(), String> + Send + 'static) -> Result<(), String> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|err| format!("opening the network namespace of process {pid}: {err}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|err| format!("joining the network namespace of process {pid}: {err}"))?;
        f()
    })
    .join()
    .map_err(|_| "configuring a container's network: the thread panicked".to_owned())?
}

/// Gives interface `name` its addresses and brings it up, then routes everything via the
/// gateway (IPv6 through the IPv6 gateway on a network with IPv6).
pub fn configure(name: &str, e: &super::Eth0) -> Result<(), String> {
    address(name, e)?;
    default_route(e.gateway)?;
    match e.v6 {
        Some(v6) => default_route6(name, v6.gateway),
        None => Ok(()),
    }
}

/// [`default_route`] (and the IPv6 one through `gateway6`, when given, over interface
/// `name`) in the network namespace of process `pid`: for a container whose first network
/// went while it runs.
pub fn default_route_in(
    pid: i32,
    gateway: std::net::Ipv4Addr,
    v6: Option<(String, std::net::Ipv6Addr)>,
) -> Result<(), String> {
    in_namespace(pid, move || {
        default_route(gateway)?;
        match v6 {
            Some((name, gateway6)) if !has_default_route6()? => default_route6(&name, gateway6),
            _ => Ok(()),
        }
    })
}

/// The kernel's `struct in6_rtmsg` (linux/ipv6_route.h), whose fields the libc crate keeps
/// private.
#[repr(C)]
struct In6RtMsg {
    rtmsg_dst: libc::in6_addr,
    rtmsg_src: libc::in6_addr,
    rtmsg_gateway: libc::in6_addr,
    rtmsg_type: u32,
    rtmsg_dst_len: u16,
    rtmsg_src_len: u16,
    rtmsg_metric: u32,
    rtmsg_info: libc::c_ulong,
    rtmsg_flags: u32,
    rtmsg_ifindex: libc::c_int,
}

/// Routes all IPv6 via `gateway` over `name` (metric 1024, as the kernel's own defaults).
fn default_route6(name: &str, gateway: std::net::Ipv6Addr) -> Result<(), String> {
    let route = In6RtMsg {
        rtmsg_dst: in6(std::net::Ipv6Addr::UNSPECIFIED),
        rtmsg_src: in6(std::net::Ipv6Addr::UNSPECIFIED),
        rtmsg_gateway: in6(gateway),
        rtmsg_type: 0,
        rtmsg_dst_len: 0,
        rtmsg_src_len: 0,
        rtmsg_metric: 1024,
        rtmsg_info: 0,
        rtmsg_flags: (libc::RTF_UP | libc::RTF_GATEWAY) as u32,
        rtmsg_ifindex: index_of(name)?,
    };
    IoctlSocket::of(libc::AF_INET6)?.ioctl(
        libc::SIOCADDRT,
        &route,
        &format!("adding the IPv6 default route via {gateway}"),
    )
}

/// Routes everything via `gateway` (on the subnet of one of the interfaces).
fn default_route(gateway: std::net::Ipv4Addr) -> Result<(), String> {
    let sock = IoctlSocket::new()?;
    let route = RtEntry {
        rt_pad1: 0,
        rt_dst: sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED),
        rt_gateway: sockaddr_in(gateway),
        rt_genmask: sockaddr_in(std::net::Ipv4Addr::UNSPECIFIED),
        rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
        rt_pad2: 0,
        rt_pad3: 0,
        rt_pad4: std::ptr::null_mut(),
        rt_metric: 0,
        rt_dev: std::ptr::null_mut(),
        rt_mtu: 0,
        rt_window: 0,
        rt_irtt: 0,
    };
    sock.ioctl(libc::SIOCADDRT, &route, "adding the default route")
}
