//! `berth-agent init`: PID 1 of the guest VM.
//!
//! A small single-threaded init, so the engine (`berth-agent serve`, multi-threaded tokio)
//! stays an ordinary child whose own children it reaps itself, while orphans re-parented to
//! PID 1 are reaped here, as tini does. In order:
//!
//! 1. Leave the initramfs for a tmpfs root (containers need `pivot_root`, which the initramfs
//!    cannot give), then mount /proc, /sys, /dev (+ pts, shm), /run, /tmp and cgroup2.
//! 2. Load the kernel modules listed in `/lib/modules/berth.modules`, in that order; register
//!    the other architecture's emulator with binfmt_misc (`/usr/lib/binfmt.d`).
//! 3. Bring up `lo` and `eth0` for QEMU's user networking (10.0.2.15/24 via 10.0.2.2, DNS
//!    10.0.2.3; `berth.ip=`, `berth.gw=`, `berth.dns=` on the kernel command line override).
//! 4. With `berth.hold` on the kernel command line, wait for the host's word on the
//!    `berth.init` port ([`hold`]): the host snapshots the VM here, before any disk is
//!    mounted, and later starts from that snapshot; its word sets the clock and reseeds the
//!    random pool, which a restored guest needs.
//! 5. Mount the data disk (`berth.disk=`, default /dev/vda) at /var/lib/berth, formatting it
//!    ext4 first when it holds no file system; without a disk the engine runs on a tmpfs.
//! 6. Start `berth-agent serve` on vsock and a unix socket, restart it if it dies.
//! 7. On SIGTERM / SIGINT / SIGPWR: stop the engine (it stops the containers), sync, unmount,
//!    power off.
//!
//! Everything is logged on the console (the serial port the host keeps as the VM's log).

use berth_protocol as protocol;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::mount::{MsFlags, mount};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

const DATA: &str = "/var/lib/berth";

fn log(msg: &str) {
    let up = fs::read_to_string("/proc/uptime").ok().and_then(|u| u.split_whitespace().next().map(str::to_owned));
    eprintln!("berth-init [{}] {msg}", up.unwrap_or_default());
}

/// `key=value` words of the kernel command line.
pub fn cmdline_options(cmdline: &str) -> HashMap<String, String> {
    cmdline.split_whitespace().filter_map(|w| w.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))).collect()
}

fn mount_fs(src: &str, target: &str, fstype: &str, flags: MsFlags, data: Option<&str>) {
    let _ = fs::create_dir_all(target);
    if let Err(e) = mount(Some(src), target, Some(fstype), flags, data)
        && e != nix::errno::Errno::EBUSY
    {
        log(&format!("mount {fstype} on {target}: {e}"));
    }
}

fn mount_basics() {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_fs("proc", "/proc", "proc", nosuid, None);
    mount_fs("sysfs", "/sys", "sysfs", nosuid, None);
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID, Some("mode=0755"));
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("gid=5,mode=0620,ptmxmode=0666"),
    );
    mount_fs("shm", "/dev/shm", "tmpfs", nosuid, Some("mode=1777"));
    mount_fs("run", "/run", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755"));
    mount_fs("tmp", "/tmp", "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"));
    mount_fs("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None);
}

/// Loads the modules listed (file names under /lib/modules, one a line) in order. A module
/// that fails is tried again after the others, as long as a pass loads something: a module
/// whose need is listed after it (a kernel that builds in less, as Debian's generic kernel
/// does with crc32c) still loads, and only what never loads is logged.
fn load_modules(list: &Path) {
    let Ok(text) = fs::read_to_string(list) else {
        log(&format!("no module list at {}", list.display()));
        return;
    };
    let load = |name: &str| {
        let path = Path::new("/lib/modules").join(name);
        fs::File::open(&path)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
            .and_then(|f| nix::kmod::finit_module(&f, &CString::default(), nix::kmod::ModuleInitFlags::empty()))
    };
    let mut pending: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    loop {
        let failed: Vec<(&str, nix::errno::Errno)> = pending
            .iter()
            .filter_map(|name| match load(name) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => None,
                Err(e) => Some((*name, e)),
            })
            .collect();
        if failed.is_empty() || failed.len() == pending.len() {
            for (name, e) in failed {
                log(&format!("loading module {name}: {e}"));
            }
            return;
        }
        pending = failed.into_iter().map(|(name, _)| name).collect();
    }
}

/// The registration lines of a binfmt.d file (systemd's format: one
/// `:name:type:offset:magic:mask:interpreter:flags` a line; `#` and `;` start comments).
fn binfmt_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| l.starts_with(':'))
}

/// Registers every emulator the image carries in `dir` (build.sh puts QEMU's user-mode one for
/// the other architecture there) with binfmt_misc, so that an image of that architecture runs.
/// Each line names its interpreter with the `F` flag: the kernel opens it now, from this root,
/// and containers need no copy of it.
fn register_emulators(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    mount_fs("binfmt_misc", "/proc/sys/fs/binfmt_misc", "binfmt_misc", MsFlags::empty(), None);
    for entry in entries.flatten() {
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        for line in binfmt_lines(&text) {
            let name = line.split(':').nth(1).unwrap_or("?");
            match fs::write("/proc/sys/fs/binfmt_misc/register", line) {
                Ok(()) => log(&format!("binfmt: {name} registered")),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => log(&format!("binfmt: registering {name}: {e}")),
            }
        }
    }
}

fn network(opts: &HashMap<String, String>) {
    if let Err(e) = berth_runtime::network::iface::up("lo") {
        log(&e);
    }
    let parse = |key: &str, default: &str| opts.get(key).map(String::as_str).unwrap_or(default).to_owned();
    let ip = parse("berth.ip", "10.0.2.15/24");
    let (addr, prefix) = ip.split_once('/').unwrap_or((&ip, "24"));
    let eth0 = berth_runtime::network::Eth0 {
        address: addr.parse().unwrap_or(std::net::Ipv4Addr::new(10, 0, 2, 15)),
        prefix: prefix.parse().unwrap_or(24),
        gateway: parse("berth.gw", "10.0.2.2").parse().unwrap_or(std::net::Ipv4Addr::new(10, 0, 2, 2)),
        mac: None,
        v6: None,
        link_local: Vec::new(),
    };
    match berth_runtime::network::iface::configure("eth0", &eth0) {
        Ok(()) => log(&format!("eth0 {}/{} via {}", eth0.address, eth0.prefix, eth0.gateway)),
        Err(e) => log(&format!("eth0: {e}")),
    }
    let _ = fs::create_dir_all("/etc");
    let _ = fs::write("/etc/resolv.conf", format!("nameserver {}\n", parse("berth.dns", "10.0.2.3")));
    let _ = fs::write("/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n");
    let _ = nix::unistd::sethostname("berth");
}

/// The virtio-serial port the host's word comes through when the guest holds (`berth.hold=1`).
const HOLD_PORT: &str = "berth.init";

/// The host's word to a held guest: `go <unix nanoseconds> <hex seed>`, the host's clock and
/// at least 32 bytes from its random source.
#[derive(Debug, PartialEq)]
struct Go {
    unix_nanos: i64,
    seed: Vec<u8>,
}

fn parse_go(line: &str) -> Option<Go> {
    let mut words = line.split_whitespace();
    if words.next()? != "go" {
        return None;
    }
    let unix_nanos = words.next()?.parse().ok()?;
    let hex = words.next()?;
    if hex.len() < 64 || hex.len() % 2 != 0 || words.next().is_some() {
        return None;
    }
    Some(Go { unix_nanos, seed: ::hex::decode(hex).ok()? })
}

// The kernel's ioctls for these (linux/random.h, linux/fs.h); libc does not name them.
nix::ioctl_write_ptr_bad!(rnd_add_entropy, 0x4008_5203, libc::c_int);
nix::ioctl_none_bad!(rnd_reseed_crng, 0x5207);
nix::ioctl_none_bad!(blk_flush_buffers, 0x1261);

/// Waits for the host's word on [`HOLD_PORT`], then sets the clock and reseeds the random
/// pool from it. The host snapshots the VM while it waits here, before any disk is mounted,
/// and starts later VMs from that snapshot (desktop/core/src/vm/snapshot.rs): every one of
/// them wakes here with the snapshot's clock and random state, which the word replaces.
/// What the kernel read of the data disk while probing it (its first blocks, for the
/// partition table) is dropped too: the disk may have changed since the snapshot.
fn hold(opts: &HashMap<String, String>) {
    use std::io::Read;
    let path = match crate::serial::find(HOLD_PORT) {
        Ok(p) => p,
        Err(e) => return log(&format!("not holding for the host: {e:#}")),
    };
    let mut port = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => return log(&format!("not holding for the host: {}: {e}", path.display())),
    };
    log("held for the host");
    let mut line = Vec::new();
    let mut buf = [0u8; 256];
    let go = loop {
        match port.read(&mut buf) {
            // No host on the other end yet.
            Ok(0) => std::thread::sleep(Duration::from_millis(5)),
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log(&format!("reading {}: {e}; going on without the host's word", path.display()));
                return;
            }
        }
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            let text = String::from_utf8_lossy(&line[..end]).into_owned();
            match parse_go(&text) {
                Some(go) => break go,
                None => log(&format!("the host's word is not understood: {text:?}")),
            }
            line.drain(..=end);
        }
        if line.len() > 4096 {
            line.clear();
        }
    };
    if let Err(e) = crate::api::control::set_clock(go.unix_nanos) {
        log(&format!("setting the clock: {e}"));
    }
    reseed(&go.seed);
    let dev = data_device(opts);
    if let Ok(disk) = fs::File::open(dev) {
        use std::os::fd::AsRawFd;
        // SAFETY: an ioctl without argument on a descriptor this function owns.
        if let Err(e) = unsafe { blk_flush_buffers(disk.as_raw_fd()) } {
            log(&format!("dropping {dev}'s cached blocks: {e}"));
        }
    }
    log("the host said go");
}

/// Adds `seed` to the kernel's random pool, credited, and makes the kernel's generator reseed
/// from the pool at once (a restored snapshot would otherwise repeat the snapshot's output).
fn reseed(seed: &[u8]) {
    use std::os::fd::AsRawFd;
    let Ok(random) = fs::File::open("/dev/urandom") else {
        return log("no /dev/urandom to reseed");
    };
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<libc::c_int> = vec![(seed.len() * 8) as libc::c_int, seed.len() as libc::c_int];
    info.extend(seed.chunks(4).map(|c| {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        libc::c_int::from_ne_bytes(w)
    }));
    // SAFETY: `info` is a rand_pool_info whose buffer holds `buf_size` bytes, alive for the
    // call; both ioctls act on the descriptor this function owns.
    unsafe {
        if let Err(e) = rnd_add_entropy(random.as_raw_fd(), info.as_ptr()) {
            log(&format!("adding the host's seed to the random pool: {e}"));
        }
        if let Err(e) = rnd_reseed_crng(random.as_raw_fd()) {
            log(&format!("reseeding the random generator: {e}"));
        }
    }
}

/// The data disk's device: `berth.disk=` on the kernel command line, else the first virtio disk.
fn data_device(opts: &HashMap<String, String>) -> &str {
    opts.get("berth.disk").map(String::as_str).unwrap_or("/dev/vda")
}

/// Mounts the data disk at /var/lib/berth, formatting it on first use.
fn data_disk(opts: &HashMap<String, String>) -> anyhow::Result<()> {
    let dev = data_device(opts).to_owned();
    fs::create_dir_all(DATA)?;
    let start = Instant::now();
    while !Path::new(&dev).exists() {
        if start.elapsed() > Duration::from_secs(5) {
            mount_fs("data", DATA, "tmpfs", MsFlags::empty(), Some("mode=0700"));
            bail!("no data disk at {dev}: images and volumes live in memory and go with the VM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let flags = MsFlags::MS_NOATIME;
    if mount(Some(dev.as_str()), DATA, Some("ext4"), flags, None::<&str>).is_ok() {
        log(&format!("data disk {dev} mounted at {DATA}"));
        return Ok(());
    }
    log(&format!("formatting {dev} as ext4 (first boot)"));
    let out = Command::new("/sbin/mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "berth-data", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(&dev)
        .output()
        .context("running mke2fs")?;
    if !out.status.success() {
        bail!("mke2fs {dev}: {}", String::from_utf8_lossy(&out.stderr));
    }
    mount(Some(dev.as_str()), DATA, Some("ext4"), flags, None::<&str>).with_context(|| format!("mounting {dev}"))?;
    log(&format!("data disk {dev} formatted and mounted at {DATA}"));
    Ok(())
}

fn start_engine(log_filter: &str) -> anyhow::Result<Child> {
    use std::os::unix::process::CommandExt;
    // Not current_exe(): after leaving the initramfs that names the deleted original.
    let exe = Path::new("/bin/berth-agent");
    let mut cmd = Command::new(exe);
    // SAFETY: sigprocmask is async-signal-safe; the engine must not inherit init's blocked set.
    unsafe {
        cmd.pre_exec(|| SigSet::empty().thread_set_mask().map_err(std::io::Error::from));
    }
    let child = cmd
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("BERTH_LOG", log_filter)
        .args(["serve", "--data-root", DATA, "--listen", "unix:///run/berth/docker.sock", "--trim"])
        // Every transport the host may pick: vsock ports, one mux session per connection on
        // MUX_PORT (hybrid vsock), the serial port's session (absent unless the host chose it).
        .args(["--listen", &format!("vsock://:{}", protocol::DOCKER_PORT)])
        .args(["--control", &format!("vsock://:{}", protocol::CONTROL_PORT)])
        .args(["--echo", &format!("vsock://:{}", protocol::ECHO_PORT)])
        .args(["--ports", &format!("vsock://:{}", protocol::PORTS_PORT)])
        .args(["--forward", &format!("vsock://:{}", protocol::FORWARD_PORT)])
        .args(["--shares", &format!("vsock://:{}", protocol::SHARES_PORT)])
        .args(["--mux", &format!("vsock://:{}", protocol::MUX_PORT)])
        .args(["--mux", &format!("serial://{}", protocol::SERIAL_PORT_NAME)])
        // QEMU's user network reaches the host's loopback at its gateway address.
        .args(["--host-loopback", "10.0.2.2"])
        .spawn()
        .context("starting the engine")?;
    log(&format!("engine started (pid {})", child.id()));
    Ok(child)
}

/// Stops the engine, syncs, unmounts the data disk and powers off.
fn shutdown(engine: Option<&Child>) -> ! {
    log("shutting down");
    if let Some(c) = engine {
        let pid = Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(50)),
                _ => break,
            }
        }
    }
    nix::unistd::sync();
    if let Err(e) = nix::mount::umount2(DATA, nix::mount::MntFlags::MNT_DETACH) {
        log(&format!("unmounting {DATA}: {e}"));
    }
    nix::unistd::sync();
    log("power off");
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    std::process::exit(0)
}

/// Files from this size up are bind-mounted into the new root rather than copied.
const BIND_OVER: u64 = 1 << 20;

/// Removes `p` and what is under it, except the paths in `keep` (and the directories that
/// hold them). A file bound elsewhere keeps its name: unlinked, it would still be there through
/// the bind, but every path to it would read "(deleted)", and the agent finds its own program
/// (to start its container helper) by `/proc/self/exe`.
fn remove_except(p: &Path, keep: &HashSet<std::path::PathBuf>) {
    if keep.contains(p) {
        return;
    }
    if p.is_dir() && !p.is_symlink() {
        for entry in fs::read_dir(p).into_iter().flatten().flatten() {
            remove_except(&entry.path(), keep);
        }
        let _ = fs::remove_dir(p);
    } else {
        let _ = fs::remove_file(p);
    }
}

/// Copies the tree at `from` into `to` (files, directories, symlinks, device nodes; modes kept;
/// files of [`BIND_OVER`] and more bind-mounted, and added to `bound`), skipping `skip`.
fn copy_tree(from: &Path, to: &Path, skip: &Path, bound: &mut HashSet<std::path::PathBuf>) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        if src == skip {
            continue;
        }
        let dst = to.join(entry.file_name());
        let meta = fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst, skip, bound)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            continue;
        } else if ft.is_file() && meta.len() >= BIND_OVER {
            // Bound, not copied: the big files (the agent, the aarch64 emulator) are most of
            // the initramfs, and copying them cost a third of a second under TCG and held
            // them twice meanwhile. Their names on `rootfs` stay (see `remove_except`).
            fs::File::create(&dst)?;
            mount(Some(&src), &dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(std::io::Error::from)?;
            bound.insert(src);
            continue;
        } else if ft.is_file() {
            fs::copy(&src, &dst)?;
        } else {
            let kind = nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            let perm = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
            nix::sys::stat::mknod(&dst, kind, perm, meta.rdev()).map_err(std::io::Error::from)?;
        }
        fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    Ok(())
}

/// The kernel unpacks the initramfs into `rootfs`, which cannot be pivoted away from, and
/// containers are started with `pivot_root`. So, as switch_root does: copy the initramfs into
/// a tmpfs (its big files bound there instead), empty the old root of all else to give its
/// memory back, move the tmpfs onto / and chroot.
fn leave_initramfs() -> anyhow::Result<()> {
    const RAMFS_MAGIC: i64 = 0x858458f6;
    let fs_type = nix::sys::statfs::statfs("/").context("statfs /")?.filesystem_type().0 as i64;
    if fs_type != RAMFS_MAGIC && fs_type != libc::TMPFS_MAGIC {
        return Ok(());
    }
    let new = Path::new("/newroot");
    fs::create_dir_all(new)?;
    mount(Some("root"), new, Some("tmpfs"), MsFlags::empty(), Some("mode=0755")).context("mounting the new root")?;
    let mut bound = HashSet::new();
    copy_tree(Path::new("/"), new, new, &mut bound).context("copying the initramfs")?;
    for entry in fs::read_dir("/")?.flatten() {
        let p = entry.path();
        if p != new {
            remove_except(&p, &bound);
        }
    }
    nix::unistd::chdir(new)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).context("moving the new root onto /")?;
    nix::unistd::chroot(".").context("chroot")?;
    nix::unistd::chdir("/")?;
    Ok(())
}

/// The input device called `name` (e.g. the ACPI power button), as /dev/input/eventN.
fn find_input(sys: &Path, name: &str) -> Option<std::path::PathBuf> {
    fs::read_dir(sys).ok()?.flatten().find_map(|e| {
        let file = e.file_name();
        let is_event = file.to_string_lossy().starts_with("event");
        let found = fs::read_to_string(e.path().join("device/name")).is_ok_and(|n| n.trim() == name);
        (is_event && found).then(|| Path::new("/dev/input").join(file))
    })
}

/// Whether one `struct input_event` (64-bit layout: two 8-byte time fields, then type, code
/// and value) is a press of the power key.
fn is_power_press(ev: &[u8; 24]) -> bool {
    const EV_KEY: u16 = 1;
    const KEY_POWER: u16 = 116;
    let kind = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// Turns a press of the ACPI power button (QEMU's `system_powerdown`, which the host uses when
/// the agent does not answer) into SIGPWR for this init, which shuts down cleanly, as acpid
/// would. A thread of its own blocks on the device; init's loop only waits for signals.
fn watch_power_button() {
    let Some(dev) = find_input(Path::new("/sys/class/input"), "Power Button") else {
        log("no ACPI power button: QMP system_powerdown will not be heard");
        return;
    };
    std::thread::spawn(move || {
        use std::io::Read;
        let mut f = match fs::File::open(&dev) {
            Ok(f) => f,
            Err(e) => return log(&format!("{}: {e}", dev.display())),
        };
        let mut ev = [0u8; 24];
        while f.read_exact(&mut ev).is_ok() {
            if is_power_press(&ev) {
                log("power button pressed");
                let _ = nix::sys::signal::kill(Pid::this(), Signal::SIGPWR);
            }
        }
    });
}

/// Entry point of `berth-agent init`.
pub fn main() -> anyhow::Result<()> {
    if std::process::id() != 1 {
        bail!("berth-agent init must run as PID 1 (the VM's init); use `berth-agent serve` elsewhere");
    }
    if let Err(e) = leave_initramfs() {
        eprintln!("berth-init: staying on the initramfs ({e:#}); containers will not start");
    }
    mount_basics();
    log("starting");
    let opts = cmdline_options(&fs::read_to_string("/proc/cmdline").unwrap_or_default());
    load_modules(Path::new("/lib/modules/berth.modules"));
    register_emulators(Path::new("/usr/lib/binfmt.d"));
    network(&opts);
    if opts.contains_key("berth.hold") {
        hold(&opts);
    }
    if let Err(e) = data_disk(&opts) {
        log(&format!("{e:#}"));
    }
    // Signals are taken synchronously: block them, then wait for them in the loop below.
    let mut set = SigSet::empty();
    for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGPWR] {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;
    // After blocking: the watcher thread inherits the mask, so the signal reaches sigwait below.
    watch_power_button();
    // `berth.log=` on the kernel command line: the engine's log filter (BERTH_GUEST_LOG on the
    // host sets it), for looking into the guest without rebuilding it.
    let log_filter = opts.get("berth.log").cloned().unwrap_or_else(|| "info".into());
    let mut engine = start_engine(&log_filter).map_err(|e| log(&format!("{e:#}"))).ok();
    loop {
        match set.wait() {
            Ok(Signal::SIGCHLD) => loop {
                match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(_) => break,
                    Ok(status) => {
                        let pid = status.pid();
                        if engine.as_ref().is_some_and(|c| Some(Pid::from_raw(c.id() as i32)) == pid) {
                            log(&format!("engine exited ({status:?}); restarting"));
                            std::thread::sleep(Duration::from_secs(1));
                            engine = start_engine(&log_filter).map_err(|e| log(&format!("{e:#}"))).ok();
                        }
                    }
                }
            },
            Ok(sig) => {
                log(&format!("{sig}"));
                shutdown(engine.as_ref());
            }
            Err(e) => log(&format!("sigwait: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binfmt_files_give_their_registration_lines() {
        // As Debian's qemu-user-static ships /usr/lib/binfmt.d/qemu-x86_64.conf (magic cut).
        let text =
            "# comment\n\n:qemu-x86_64:M::\\x7fELF:\\xff\\xff:/usr/libexec/qemu-binfmt/x86_64-binfmt-P:OPF\n; other\n";
        let lines: Vec<&str> = binfmt_lines(text).collect();
        assert_eq!(lines, [":qemu-x86_64:M::\\x7fELF:\\xff\\xff:/usr/libexec/qemu-binfmt/x86_64-binfmt-P:OPF"]);
    }

    #[test]
    fn the_power_button_is_found_and_its_press_read() {
        let dir = tempfile::tempdir().unwrap();
        for (event, name) in [("event0", "AT Translated Set 2 keyboard"), ("event1", "Power Button")] {
            fs::create_dir_all(dir.path().join(event).join("device")).unwrap();
            fs::write(dir.path().join(event).join("device/name"), format!("{name}\n")).unwrap();
        }
        fs::create_dir_all(dir.path().join("input3/device")).unwrap();
        fs::write(dir.path().join("input3/device/name"), "Power Button\n").unwrap();
        assert_eq!(find_input(dir.path(), "Power Button"), Some("/dev/input/event1".into()));
        let event = |kind: u16, code: u16, value: i32| {
            let mut ev = [0u8; 24];
            ev[16..18].copy_from_slice(&kind.to_ne_bytes());
            ev[18..20].copy_from_slice(&code.to_ne_bytes());
            ev[20..24].copy_from_slice(&value.to_ne_bytes());
            ev
        };
        assert!(is_power_press(&event(1, 116, 1)));
        assert!(!is_power_press(&event(1, 116, 0)), "a release is not a press");
        assert!(!is_power_press(&event(0, 0, 0)), "a sync event");
        assert!(!is_power_press(&event(1, 30, 1)), "another key");
    }

    #[test]
    fn the_hosts_word_is_read() {
        let seed = "00ff".repeat(16);
        let go = parse_go(&format!("go 1796700095000000123 {seed}")).unwrap();
        assert_eq!(go.unix_nanos, 1_796_700_095_000_000_123);
        assert_eq!(go.seed.len(), 32);
        assert_eq!(&go.seed[..2], &[0x00, 0xff]);
        assert_eq!(parse_go(&format!("go 1 {}", &seed[..62])), None, "a seed under 32 bytes");
        assert_eq!(parse_go(&format!("go 1 {}zz", &seed[..62])), None, "not hex");
        assert_eq!(parse_go(&format!("stop 1 {seed}")), None);
        assert_eq!(parse_go(&format!("go x {seed}")), None);
        assert_eq!(parse_go(&format!("go 1 {seed} more")), None);
    }

    #[test]
    fn kernel_options_are_read() {
        let o = cmdline_options("console=ttyS0 quiet berth.disk=/dev/vdb berth.ip=10.0.2.20/24");
        assert_eq!(o["berth.disk"], "/dev/vdb");
        assert_eq!(o["console"], "ttyS0");
        assert!(!o.contains_key("quiet"));
    }
}
