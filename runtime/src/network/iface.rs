//! Network interface setup with plain ioctls (address, netmask, up, default route), for the
//! places where neither a netlink runtime nor `ip` is at hand: a container's helper just
//! before it execs, the guest's init, and a running container's second and later networks
//! (from a thread that joins its namespace). They act on the calling thread's namespace.

use std::os::fd::{AsRawFd, FromRawFd};

/// An inet socket for interface ioctls; closed on drop.
struct IoctlSocket(std::os::fd::OwnedFd);

impl IoctlSocket {
    fn new() -> Result<Self, String> {
        // SAFETY: a plain socket call; the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
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

/// Gives interface `name` its address (and so a route to its subnet) and brings it up.
pub fn address(name: &str, e: &super::Eth0) -> Result<(), String> {
    let sock = IoctlSocket::new()?;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_addr = sockaddr_in(e.address);
    sock.ioctl(libc::SIOCSIFADDR, &req, &format!("setting the address of {name}"))?;
    let mask = std::net::Ipv4Addr::from(u32::MAX.checked_shl(32 - e.prefix as u32).unwrap_or(0));
    req.ifr_ifru.ifru_netmask = sockaddr_in(mask);
    sock.ioctl(libc::SIOCSIFNETMASK, &req, &format!("setting the netmask of {name}"))?;
    up(name)
}

/// [`address`] for interface `name` in the network namespace of process `pid`. For a
/// container's second and later networks, which have no default route.
pub fn address_in(pid: i32, name: &str, e: &super::Eth0) -> Result<(), String> {
    let (name, e) = (name.to_owned(), *e);
    in_namespace(pid, move || address(&name, &e))
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

/// Gives interface `name` its address and brings it up, then routes everything via the gateway.
pub fn configure(name: &str, e: &super::Eth0) -> Result<(), String> {
    address(name, e)?;
    default_route(e.gateway)
}

/// [`default_route`] in the network namespace of process `pid`: for a container whose first
/// network went while it runs.
pub fn default_route_in(pid: i32, gateway: std::net::Ipv4Addr) -> Result<(), String> {
    in_namespace(pid, move || default_route(gateway))
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
