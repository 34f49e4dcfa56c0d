//! The single-threaded helper that creates a container's process.
//!
//! Namespaces are created with `unshare` + `fork`, which is undefined behaviour inside a
//! multi-threaded program such as the tokio agent (other threads may hold locks the child
//! will never see released). So the agent spawns this helper (`berth-agent shim run|exec
//! SPEC`) with `posix_spawn`-style `Command`, and the helper, which never starts a thread,
//! does the forking. The setup is written here rather than with youki's `libcontainer`
//! because the engine needs its own stdio plumbing (pipes and ptys owned by the agent),
//! its own start barrier for networking and cgroups, and the same code for `exec`; what it
//! needs of the kernel is a page of mount and namespace calls.
//!
//! Protocol with the agent (file descriptors the helper inherits):
//! 1. fd 0-2 are the container's stdio (pipes, or the slave side of a pty).
//! 2. The helper enters/creates the namespaces, forks, and writes `pid <host pid>\n` (or
//!    `error <message>\n`) on fd 3, then closes it.
//! 3. The agent puts the pid in the container's cgroup and network, then writes one byte on
//!    fd 4. The child waits for that byte before it touches anything.
//! 4. The child sets up the root filesystem and execs. fd 5 is close-on-exec: if the exec
//!    succeeds the agent reads EOF on it; if anything fails the child writes the reason there.
//! 5. The helper waits for the child and exits with its status (128+signal when killed),
//!    which is the container's exit code.
//!
//! With a TTY, the terminal is created *inside* the container (its own devpts instance, so
//! `tty` and `ttyname` work there): the child opens `/dev/ptmx`, makes the slave its stdio
//! and passes the master to the agent over the unix socket at fd 6 (SCM_RIGHTS), the way
//! runc's console socket does.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, fork};
use serde::{Deserialize, Serialize};

use crate::container::security::{self, Confinement, DeviceNode};
use crate::fsutil::confined::{Confined, NodeKind};
use crate::network::iface;
use crate::snapshot::OverlayMount;

/// Which network namespace a container gets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum NetMode {
    /// A new, empty namespace (loopback only, plus what the agent adds before the start).
    New,
    /// The engine's own namespace (`--network host`).
    Host,
}

/// Which PID namespace a container's processes get (`--pid`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum PidMode {
    /// A new one: the container's first process is its PID 1.
    #[default]
    New,
    /// The engine's own (`--pid host`): in the VM, the VM's processes.
    Host,
    /// That of the running process with this PID, another container's init
    /// (`--pid container:NAME`).
    Join(i32),
}

/// One mount in a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountPoint {
    /// `bind` (host paths and volumes) or `tmpfs`.
    pub kind: String,
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
    /// tmpfs options (`size=...,mode=...`).
    #[serde(default)]
    pub options: String,
}

/// What the helper needs to create a container's first process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSpec {
    pub rootfs: PathBuf,
    pub overlay: OverlayMount,
    pub readonly_rootfs: bool,
    pub mounts: Vec<MountPoint>,
    pub hostname: String,
    pub net: NetMode,
    #[serde(default)]
    pub pid: PidMode,
    /// Files bind-mounted over `/etc/<name>` (hosts, hostname, resolv.conf).
    pub etc_files: Vec<(PathBuf, String)>,
    pub shm_size: u64,
    /// The address of `eth0` on the bridge (the engine has put `eth0` in the namespace).
    #[serde(default)]
    pub eth0: Option<crate::network::Eth0>,
    /// Device nodes to create (`--device`, `--privileged`).
    #[serde(default)]
    pub devices: Vec<DeviceNode>,
    /// `--privileged`: /sys and the cgroup file system writable.
    #[serde(default)]
    pub privileged: bool,
    /// Leave /proc and /sys paths unmasked (`--privileged`, `systempaths=unconfined`).
    #[serde(default)]
    pub unmasked_paths: bool,
    /// Kernel parameters of the container's own namespaces to set, in order (`--sysctl`,
    /// after the engine's own).
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
    pub process: ProcessSpec,
}

/// The process to exec, in a new container or (for exec) in a running one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// `uid[:gid]` or `name[:group]`, resolved in the container's /etc/passwd and /etc/group.
    pub user: String,
    pub tty: bool,
    /// Initial terminal size (rows, columns), so the first program sees it before any resize.
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
    /// Capabilities, seccomp and no_new_privs.
    #[serde(default)]
    pub confinement: Confinement,
    /// Supplementary groups added to the user's own (`HostConfig.GroupAdd`): gids, or names
    /// resolved in the container's /etc/group.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// What `exec` needs: the container's init pid to join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecSpec {
    pub pid: i32,
    pub host_network: bool,
    pub process: ProcessSpec,
}

/// Entry point of `berth-agent shim run|exec SPEC`. Never returns.
pub fn main(mode: &str, spec_path: &Path) -> ! {
    // SAFETY: the agent passed fds 3 and 4/5 by the protocol above; nothing else owns them.
    let mut status = unsafe { File::from_raw_fd(3) };
    let result =
        fs::read(spec_path).map_err(|e| format!("reading {}: {e}", spec_path.display())).and_then(|b| match mode {
            "run" => serde_json::from_slice::<RunSpec>(&b).map_err(|e| e.to_string()).and_then(|mut s| {
                s.process.confinement.read_filter()?;
                run(s, &mut status)
            }),
            "exec" => serde_json::from_slice::<ExecSpec>(&b).map_err(|e| e.to_string()).and_then(|mut s| {
                s.process.confinement.read_filter()?;
                exec(s, &mut status)
            }),
            other => Err(format!("unknown shim mode {other:?}")),
        });
    match result {
        Ok(code) => std::process::exit(code),
        Err(msg) => {
            let _ = writeln!(status, "error {msg}");
            std::process::exit(255)
        }
    }
}

fn set_parent_death_kill() {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
}

/// Creates namespaces, forks the container's init and waits for it.
fn run(spec: RunSpec, status: &mut File) -> Result<i32, String> {
    set_parent_death_kill();
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC;
    match spec.pid {
        PidMode::New => flags |= CloneFlags::CLONE_NEWPID,
        PidMode::Host => {}
        // The children forked from here on are born in it (this helper stays where it is).
        PidMode::Join(pid) => {
            let ns = File::open(format!("/proc/{pid}/ns/pid"))
                .map_err(|e| format!("the container whose PID namespace was asked for is gone ({e})"))?;
            setns(&ns, CloneFlags::CLONE_NEWPID).map_err(|e| format!("setns pid: {e}"))?;
        }
    }
    if spec.net == NetMode::New {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    unshare(flags).map_err(|e| format!("unshare namespaces: {e}"))?;
    let tty = spec.process.tty;
    fork_and_wait(status, tty, move || setup_container(&spec))
}

/// Joins a running container's namespaces and forks the exec'd process.
fn exec(spec: ExecSpec, status: &mut File) -> Result<i32, String> {
    set_parent_death_kill();
    let mut kinds = vec![("ipc", CloneFlags::CLONE_NEWIPC), ("uts", CloneFlags::CLONE_NEWUTS)];
    if !spec.host_network {
        kinds.push(("net", CloneFlags::CLONE_NEWNET));
    }
    kinds.push(("pid", CloneFlags::CLONE_NEWPID));
    // The mount namespace last: after it, /proc is the container's.
    kinds.push(("mnt", CloneFlags::CLONE_NEWNS));
    let files: Vec<(File, CloneFlags)> = kinds
        .iter()
        .map(|(name, flag)| {
            File::open(format!("/proc/{}/ns/{name}", spec.pid))
                .map(|f| (f, *flag))
                .map_err(|e| format!("container process {} is gone ({name} namespace: {e})", spec.pid))
        })
        .collect::<Result<_, _>>()?;
    for (f, flag) in &files {
        setns(f, *flag).map_err(|e| format!("setns {flag:?}: {e}"))?;
    }
    drop(files);
    let process = spec.process;
    let tty = process.tty;
    fork_and_wait(status, tty, move || {
        nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
        exec_process(&process)
    })
}

/// Why a container's (or exec's) process could not be started, as the helper's child reports
/// it to the engine.
#[derive(Debug)]
pub struct ChildFailure {
    /// The command is not there (dockerd's exit code 127 and a client error, not a server one).
    pub missing_command: bool,
    pub message: String,
}

impl From<String> for ChildFailure {
    fn from(message: String) -> Self {
        ChildFailure { missing_command: false, message }
    }
}

/// The kind byte that opens a failure report: the command is missing.
pub const FAILURE_MISSING: u8 = b'M';
/// Any other failure.
pub const FAILURE_OTHER: u8 = b'E';

/// Forks; the child waits for the agent's go byte and runs `child`; the parent reports the
/// pid and returns the child's exit status as an exit code.
fn fork_and_wait(
    status: &mut File,
    console: bool,
    child: impl FnOnce() -> Result<std::convert::Infallible, ChildFailure>,
) -> Result<i32, String> {
    // SAFETY: this helper is single-threaded (it never spawns a thread), so fork is sound.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            set_parent_death_kill();
            // SAFETY: fds 4 and 5 come from the agent by protocol.
            let mut go = unsafe { File::from_raw_fd(4) };
            let mut errors = unsafe { File::from_raw_fd(5) };
            // SAFETY: fd 3 is the helper's status pipe; the child must not keep it open.
            unsafe { libc::close(3) };
            let mut byte = [0u8; 1];
            if go.read(&mut byte).unwrap_or(0) != 1 {
                std::process::exit(255);
            }
            drop(go);
            let set_cloexec = nix::fcntl::fcntl(&errors, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
            let failure = match set_cloexec {
                Err(e) => ChildFailure::from(format!("fcntl: {e}")),
                Ok(_) => match child() {
                    Err(f) => f,
                },
            };
            // One kind byte, then the message (see `launch::read_failure`).
            let kind = if failure.missing_command { FAILURE_MISSING } else { FAILURE_OTHER };
            let _ = errors.write_all(&[kind]);
            let _ = errors.write_all(failure.message.as_bytes());
            std::process::exit(127);
        }
        ForkResult::Parent { child } => {
            // SAFETY: closing our copies of the go and error pipes (and the console socket);
            // they belong to the child now, and no File of ours owns these numbers.
            unsafe {
                libc::close(4);
                libc::close(5);
                if console {
                    libc::close(6);
                }
            }
            let _ = writeln!(status, "pid {child}");
            drop(std::mem::replace(status, File::open("/dev/null").map_err(|e| e.to_string())?));
            // Keep no copy of the container's stdio, so readers see EOF when it exits.
            let null = File::open("/dev/null").map_err(|e| e.to_string())?;
            for fd in 0..=2 {
                // SAFETY: dup2 onto our own standard descriptors.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(format!("waitpid: {e}")),
                }
            }
        }
    }
}

fn mnt(
    src: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    mount(src, target, fstype, flags, data)
        .map_err(|e| format!("mount {} on {}: {e}", fstype.or(src).unwrap_or("?"), target.display()))
}

/// In the child, inside the new namespaces: builds the root filesystem, pivots and execs.
fn setup_container(spec: &RunSpec) -> Result<std::convert::Infallible, ChildFailure> {
    // The agent has put us in our cgroup: make it the root of a cgroup namespace.
    unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| format!("unshare cgroup namespace: {e}"))?;
    mnt(None, Path::new("/"), None, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None)?;
    spec.overlay.mount(&spec.rootfs).map_err(|e| e.to_string())?;
    let root = Confined::open(&spec.rootfs).map_err(|e| format!("opening the container's root: {e}"))?;
    for m in &spec.mounts {
        mount_one(&root, m)?;
    }
    mount_system(&root, spec.shm_size, spec.privileged)?;
    for (file, name) in &spec.etc_files {
        let target = prepare_target(&root, &format!("/etc/{name}"), false)?;
        mnt(Some(&file.to_string_lossy()), &target.path(), None, MsFlags::MS_BIND, None)?;
    }
    make_devices(&root, &spec.devices)?;
    drop(root);
    if spec.readonly_rootfs {
        mnt(None, &spec.rootfs, None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None)?;
    }
    pivot(&spec.rootfs)?;
    // In the container's own /proc, before /proc/sys is made read-only.
    set_sysctls(&spec.sysctls, spec.net)?;
    if !spec.unmasked_paths {
        mask_system_paths();
    }
    if !spec.hostname.is_empty() {
        nix::unistd::sethostname(&spec.hostname).map_err(|e| format!("sethostname: {e}"))?;
    }
    if spec.net == NetMode::New {
        iface::up("lo")?;
    }
    if let Some(eth0) = &spec.eth0 {
        iface::configure("eth0", eth0)?;
    }
    exec_process(&spec.process)
}

/// Whether `key` is a kernel parameter of a namespace the container has of its own (runc's
/// rule): IPC's System V and POSIX queue limits always, networking's only with a network
/// namespace of its own.
fn namespaced_sysctl(key: &str, net: NetMode) -> Result<(), String> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    if IPC.contains(&key) || key.starts_with("fs.mqueue.") {
        return Ok(());
    }
    if key.starts_with("net.") {
        return match net {
            NetMode::New => Ok(()),
            _ => Err(format!("sysctl {key:?} not allowed in host network namespace")),
        };
    }
    Err(format!("sysctl {key:?} is not in a separate kernel namespace"))
}

/// Sets kernel parameters through the container's /proc/sys.
fn set_sysctls(sysctls: &[(String, String)], net: NetMode) -> Result<(), String> {
    for (key, value) in sysctls {
        namespaced_sysctl(key, net)?;
        if key.split('.').any(str::is_empty) || key.contains('/') {
            return Err(format!("invalid sysctl {key:?}"));
        }
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, value).map_err(|e| format!("setting sysctl {key}={value}: {e}"))?;
    }
    Ok(())
}

/// A mount point inside the container's root, held open: the mount goes onto this inode
/// (through the descriptor's magic link), so a path component that a running container
/// sharing a volume swaps for a symlink after the lookup cannot move it (CVE-2021-30465).
struct Target {
    fd: std::os::fd::OwnedFd,
    dest: String,
}

impl Target {
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

/// Resolves `dest` inside `root` (symlinks stay inside) and creates it as a dir or file.
fn prepare_target(root: &Confined, dest: &str, dir: bool) -> Result<Target, String> {
    let rel = Path::new(dest);
    let fd = if dir {
        root.dir(rel, true).map_err(|e| format!("creating mount point {dest}: {e}"))?.into_fd()
    } else {
        match root.lookup_follow(rel) {
            Ok(inode) => inode.into_fd(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let parent = rel.parent().unwrap_or(Path::new("/"));
                let name = rel.file_name().ok_or_else(|| format!("mount point {dest} has no name"))?;
                let d = root.dir(parent, true).map_err(|e| format!("creating {}: {e}", parent.display()))?;
                match d.create_file(name) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(format!("creating mount point {dest}: {e}")),
                }
                root.lookup_follow(rel).map_err(|e| format!("mount point {dest}: {e}"))?.into_fd()
            }
            Err(e) => return Err(format!("mount point {dest}: {e}")),
        }
    };
    Ok(Target { fd, dest: dest.to_owned() })
}

/// Makes the bind mount just made at `target` read-only. The descriptor still names the
/// directory under the new mount, so the mount's root is looked up again.
fn remount_readonly(root: &Confined, target: &Target) -> Result<(), String> {
    let dir = root.lookup_follow(Path::new(&target.dest)).map_err(|e| format!("mount point {}: {e}", target.dest))?;
    let again = Target { fd: dir.into_fd(), dest: target.dest.clone() };
    mnt(None, &again.path(), None, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None)
}

fn mount_one(root: &Confined, m: &MountPoint) -> Result<(), String> {
    match m.kind.as_str() {
        "tmpfs" => {
            let target = prepare_target(root, &m.destination, true)?;
            let opts = if m.options.is_empty() { "mode=1777".to_string() } else { m.options.clone() };
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if m.readonly {
                flags |= MsFlags::MS_RDONLY;
            }
            mnt(Some("tmpfs"), &target.path(), Some("tmpfs"), flags, Some(&opts))
        }
        _ => {
            let is_dir = fs::metadata(&m.source).map(|md| md.is_dir()).map_err(|e| {
                format!(
                    "invalid mount config for type \"bind\": bind source path does not exist: {} ({e})",
                    m.source.display()
                )
            })?;
            let target = prepare_target(root, &m.destination, is_dir)?;
            mnt(Some(&m.source.to_string_lossy()), &target.path(), None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
            if m.readonly {
                remount_readonly(root, &target)?;
            }
            Ok(())
        }
    }
}

/// /proc, /sys, a minimal /dev with its own devpts, /dev/shm and /dev/mqueue.
fn mount_system(root: &Confined, shm_size: u64, privileged: bool) -> Result<(), String> {
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    // Read-only /sys and cgroup file system, except for a privileged container.
    let ro = if privileged { MsFlags::empty() } else { MsFlags::MS_RDONLY };
    let proc_dir = prepare_target(root, "/proc", true)?;
    mnt(Some("proc"), &proc_dir.path(), Some("proc"), nodev, None)?;
    let sys = prepare_target(root, "/sys", true)?;
    if mnt(Some("sysfs"), &sys.path(), Some("sysfs"), nodev | ro, None).is_err() {
        // Sharing the host's network namespace forbids a new sysfs: bind the host's (read-only
        // unless privileged).
        mnt(Some("/sys"), &sys.path(), None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
        if !privileged {
            remount_readonly(root, &sys)?;
        }
    }
    if crate::container::cgroup::is_v2() {
        let cg = prepare_target(root, "/sys/fs/cgroup", true)?;
        let _ = mnt(Some("cgroup2"), &cg.path(), Some("cgroup2"), nodev | ro, None);
    }
    let dev_target = prepare_target(root, "/dev", true)?;
    mnt(
        Some("tmpfs"),
        &dev_target.path(),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    // The fresh tmpfs is the engine's own: paths inside it can be used as they are, through
    // a descriptor of its root (the one above still names the directory under it).
    let dev_dir = root.dir(Path::new("/dev"), false).map_err(|e| format!("/dev: {e}"))?;
    let dev = dev_dir.fd_path();
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        File::create(&target).map_err(|e| format!("creating /dev/{node}: {e}"))?;
        mnt(Some(&format!("/dev/{node}")), &target, None, MsFlags::MS_BIND, None)?;
    }
    let pts = dev.join("pts");
    fs::create_dir(&pts).map_err(|e| format!("creating /dev/pts: {e}"))?;
    mnt(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    std::os::unix::fs::symlink("pts/ptmx", dev.join("ptmx")).map_err(|e| format!("/dev/ptmx: {e}"))?;
    let shm = dev.join("shm");
    fs::create_dir(&shm).map_err(|e| format!("creating /dev/shm: {e}"))?;
    let size = if shm_size > 0 { shm_size } else { DEFAULT_SHM_SIZE };
    mnt(Some("shm"), &shm, Some("tmpfs"), nodev, Some(&format!("mode=1777,size={size}")))?;
    let mq = dev.join("mqueue");
    fs::create_dir(&mq).map_err(|e| format!("creating /dev/mqueue: {e}"))?;
    let _ = mnt(Some("mqueue"), &mq, Some("mqueue"), nodev, None);
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(target, dev.join(name)).map_err(|e| format!("/dev/{name}: {e}"))?;
    }
    Ok(())
}

/// Makes `root` the root: the `pivot_root(".", ".")` idiom, then detaches the old root.
fn pivot(root: &Path) -> Result<(), String> {
    mnt(Some(&root.to_string_lossy()), root, None, MsFlags::MS_BIND | MsFlags::MS_REC, None)?;
    nix::unistd::chdir(root).map_err(|e| format!("chdir rootfs: {e}"))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detaching the old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Creates the device nodes `--device` and `--privileged` give the container (the standard
/// ones are already there); whether they may be opened is the device rules' business.
fn make_devices(root: &Confined, nodes: &[DeviceNode]) -> Result<(), String> {
    for n in nodes {
        let path = Path::new(&n.path);
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else { continue };
        let dir = root.dir(parent, true).map_err(|e| format!("creating {}: {e}", parent.display()))?;
        if dir.stat(name).map_err(|e| format!("{}: {e}", n.path))?.is_some() {
            continue;
        }
        let kind = if n.kind == 'b' { NodeKind::Block } else { NodeKind::Char };
        dir.mknod(name, kind, n.major, n.minor).map_err(|e| format!("creating device {}: {e}", n.path))?;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        dir.set_meta(name, n.uid, n.gid, n.mode, now).map_err(|e| format!("device {}: {e}", n.path))?;
    }
    Ok(())
}

/// Hides kernel interfaces from the container, as dockerd does by default: these paths are
/// covered (files with /dev/null, directories with an empty read-only tmpfs) or read-only.
/// Paths of /proc and /sys a container does not see (an empty read-only tmpfs or /dev/null
/// over them), as dockerd's defaults; inspect shows them as `HostConfig.MaskedPaths`.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// The size of `/dev/shm` when none is asked for: 64 MiB, as dockerd's.
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// Paths of /proc a container sees read-only (`HostConfig.ReadonlyPaths`).
pub const READ_ONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

fn mask_system_paths() {
    for p in MASKED_PATHS {
        let Ok(meta) = fs::metadata(p) else { continue };
        if meta.is_dir() {
            let _ = mount(Some("tmpfs"), *p, Some("tmpfs"), MsFlags::MS_RDONLY, None::<&str>);
        } else {
            let _ = mount(Some("/dev/null"), *p, None::<&str>, MsFlags::MS_BIND, None::<&str>);
        }
    }
    for p in READ_ONLY_PATHS {
        if mount(Some(*p), *p, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>).is_ok() {
            let _ = mount(
                None::<&str>,
                *p,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
}

/// Parsed `/etc/passwd`-style line lookups, in the container's root: the user's uid, gid,
/// supplementary groups (its own and `add`'s, as dockerd gives them) and home.
fn lookup_user(spec: &str, add: &[String]) -> Result<(u32, u32, Vec<u32>, Option<String>), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let groups = fs::read_to_string("/etc/group").unwrap_or_default();
    let entry = passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| {
        f.len() >= 6 && (f[0] == user || (user.parse::<u32>().ok().map(|u| u.to_string()) == Some(f[2].to_string())))
    });
    let uid = match (user.parse::<u32>(), &entry) {
        (Ok(u), _) => u,
        (Err(_), Some(f)) => f[2].parse().map_err(|_| format!("bad uid in /etc/passwd for {user}"))?,
        (Err(_), None) if user.is_empty() => 0,
        (Err(_), None) => {
            return Err(format!("unable to find user {user}: no matching entries in passwd file"));
        }
    };
    let home = entry.as_ref().and_then(|f| f.get(5)).map(|s| s.to_string());
    let name = entry.as_ref().map(|f| f[0].to_string()).unwrap_or_default();
    // A gid, or a group's name looked up in the container's /etc/group.
    let group_id = |g: &str| match g.parse::<u32>() {
        Ok(n) => Ok(n),
        Err(_) => groups
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 3 && f[0] == g)
            .and_then(|f| f[2].parse().ok())
            .ok_or_else(|| format!("unable to find group {g}: no matching entries in group file")),
    };
    let gid = match group {
        Some(g) => group_id(g)?,
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    let mut extra: Vec<u32> = if name.is_empty() {
        vec![]
    } else {
        groups
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() >= 4 && f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .collect()
    };
    for g in add {
        let id = group_id(g)?;
        if !extra.contains(&id) {
            extra.push(id);
        }
    }
    Ok((uid, gid, extra, home))
}

/// Finds `cmd` on PATH (as the container sees it).
fn find_executable(cmd: &str, env: &[String]) -> Result<PathBuf, String> {
    if cmd.contains('/') {
        return if Path::new(cmd).exists() {
            Ok(PathBuf::from(cmd))
        } else {
            Err(format!("exec: \"{cmd}\": stat {cmd}: no such file or directory"))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .ok_or_else(|| format!("exec: \"{cmd}\": executable file not found in $PATH"))
}

/// Switches to the process's user, directory and session, and execs it.
fn exec_process(p: &ProcessSpec) -> Result<std::convert::Infallible, ChildFailure> {
    let prefix = "unable to start container process";
    let (uid, gid, extra, home) = lookup_user(&p.user, &p.groups).map_err(|e| format!("{prefix}: {e}"))?;
    let mut env = p.env.clone();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", home.unwrap_or_else(|| "/".into())));
    }
    if !p.cwd.is_empty() {
        fs::create_dir_all(&p.cwd).map_err(|e| format!("{prefix}: creating working directory {}: {e}", p.cwd))?;
        nix::unistd::chdir(p.cwd.as_str()).map_err(|e| format!("{prefix}: chdir to cwd (\"{}\"): {e}", p.cwd))?;
    }
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    if p.tty {
        console(uid, p.console_size).map_err(|e| format!("{prefix}: setting up the terminal: {e}"))?;
        // SAFETY: TIOCSCTTY on our stdin, the pty slave just made our stdio.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(
                format!("{prefix}: setting the controlling terminal: {}", std::io::Error::last_os_error()).into()
            );
        }
    }
    let exe = find_executable(p.args.first().map(String::as_str).unwrap_or(""), &env)
        .map_err(|e| ChildFailure { missing_command: true, message: format!("{prefix}: {e}") })?;
    let keep = security::enter(&p.confinement).map_err(|e| format!("{prefix}: {e}"))?;
    let gids: Vec<Gid> = extra.into_iter().map(Gid::from_raw).collect();
    nix::unistd::setgroups(&gids).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setgid(Gid::from_raw(gid)).map_err(|e| format!("setgid {gid}: {e}"))?;
    nix::unistd::setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid {uid}: {e}"))?;
    security::finish(&p.confinement, &keep).map_err(|e| format!("{prefix}: {e}"))?;
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{prefix}: NUL byte in {s:?}"));
    let exe_c = cstr(&exe.to_string_lossy())?;
    let args: Vec<CString> = p.args.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?;
    let envs: Vec<CString> = env.iter().map(|e| cstr(e)).collect::<Result<_, _>>()?;
    let err = nix::unistd::execve(&exe_c, &args, &envs).unwrap_err();
    let mut message = format!("{prefix}: exec: \"{}\": {}", p.args[0], err.desc().to_lowercase());
    if err == nix::errno::Errno::ENOEXEC
        && let Some(arch) = elf_head(&exe).as_ref().and_then(|h| elf_arch(h)).filter(|a| *a != crate::model::go_arch())
    {
        message += &format!(
            " (it is a linux/{arch} program, and this engine runs linux/{} with no emulator for {arch} registered \
             in binfmt_misc)",
            crate::model::go_arch()
        );
    }
    Err(ChildFailure {
        // A script whose interpreter is missing is as missing as the command, to dockerd (127).
        missing_command: err == nix::errno::Errno::ENOENT,
        message,
    })
}

/// The first bytes of a file, as many as an ELF header's machine field needs.
fn elf_head(path: &Path) -> Option<[u8; 20]> {
    use std::io::Read;
    let mut head = [0u8; 20];
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).ok()?;
    Some(head)
}

/// The OCI architecture an ELF program is built for (its header's `e_machine`), if it is one.
fn elf_arch(head: &[u8]) -> Option<&'static str> {
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return None;
    }
    // e_machine: 16 bits at offset 18, in the byte order EI_DATA names (1: little endian).
    let machine =
        if head[5] == 2 { u16::from_be_bytes([head[18], head[19]]) } else { u16::from_le_bytes([head[18], head[19]]) };
    Some(match machine {
        0x03 => "386",
        0x28 => "arm",
        0x3e => "amd64",
        0xb7 => "arm64",
        0xf3 => "riscv64",
        0x15 => "ppc64le",
        0x16 => "s390x",
        _ => return None,
    })
}

/// Opens a pty in the container's devpts, makes the slave this process's stdio (owned by
/// `uid`), and sends the master to the agent over fd 6.
fn console(uid: u32, size: Option<(u16, u16)>) -> Result<(), String> {
    use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
    let master = nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY)
        .map_err(|e| format!("/dev/ptmx: {e}"))?;
    nix::pty::grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    nix::pty::unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    let slave = fs::OpenOptions::new().read(true).write(true).open(&name).map_err(|e| format!("{name}: {e}"))?;
    std::os::unix::fs::fchown(&slave, Some(uid), None).map_err(|e| format!("chown {name}: {e}"))?;
    if let Some((rows, cols)) = size.filter(|(r, c)| *r > 0 && *c > 0) {
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads a winsize we own.
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
    let fds = [master.as_raw_fd()];
    sendmsg::<UnixAddr>(6, &[std::io::IoSlice::new(b"m")], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
        .map_err(|e| format!("sending the terminal to the engine: {e}"))?;
    drop(master);
    for fd in 0..=2 {
        // SAFETY: dup2 of an fd we own onto our standard descriptors.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    // SAFETY: fd 6 is the console socket from the agent; nothing else uses it.
    unsafe { libc::close(6) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_headers_name_their_architecture() {
        let mut arm64 = [0u8; 20];
        arm64[..6].copy_from_slice(b"\x7fELF\x02\x01");
        arm64[18] = 0xb7;
        assert_eq!(elf_arch(&arm64), Some("arm64"));
        let mut s390x = arm64;
        s390x[5] = 2; // big endian
        s390x[18..20].copy_from_slice(&[0, 0x16]);
        assert_eq!(elf_arch(&s390x), Some("s390x"));
        assert_eq!(elf_arch(b"#!/bin/sh\necho not elf"), None);
        // This machine's own programs are of its architecture.
        let own = elf_head(Path::new("/bin/sh")).expect("/bin/sh is readable");
        assert_eq!(elf_arch(&own), Some(crate::model::go_arch()));
    }
}
