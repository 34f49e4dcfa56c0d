//! The VM: a `vhost-device-vsock` process and QEMU, booted from Berth's guest image with a
//! persistent data disk, its serial console kept as `serial.log` in the machine's directory.
//!
//! 1. Create the data disk (qcow2) on first start.
//! 2. Start the vsock device; it makes the vhost-user socket QEMU connects to and the unix
//!    socket the host connects through (`vm.vsock`).
//! 3. Start QEMU under the accelerator [`accel`] picks, with QMP on `qmp.sock` ([`qmp`]); wait
//!    until the agent answers a control hello (or QEMU dies: say why, with the serial log's
//!    tail).
//! 4. Stop, in escalating steps, each logged: ask the agent to shut down (it stops the
//!    containers, syncs, powers off); if QEMU has not exited within the grace period, QMP
//!    `system_powerdown`; then QMP `quit`; kill QEMU only as the last resort.

pub mod accel;
pub mod arch;
pub mod image;
pub mod qmp;
pub mod snapshot;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::transport::{self, Transport};

/// Errors of the VM manager.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no guest image in {0}: build one with vm-image/build.sh {0}")]
    NoImage(PathBuf),
    #[error("the guest image in {dir} is built for {built}, not for the {wanted} guest asked for (--arch)")]
    WrongArch { dir: PathBuf, built: arch::GuestArch, wanted: arch::GuestArch },
    #[error("{what} could not be started ({program}): is it installed?")]
    Spawn {
        what: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Boot(String),
    #[error(transparent)]
    Accel(#[from] accel::AccelError),
    #[error("restoring the boot snapshot")]
    Restore(#[source] snapshot::SnapshotError),
    #[error("VM I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to run the VM.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    /// The machine's directory: disk, sockets, serial log.
    pub dir: PathBuf,
    /// A directory with `vmlinuz` and `initrd.img` (vm-image/build.sh makes it).
    pub image: PathBuf,
    /// The guest's architecture, which the image must be built for.
    pub arch: arch::GuestArch,
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_gib: u32,
    /// `auto` probes (see [`accel`]); a named one is used as it is.
    pub accel: accel::AccelChoice,
    pub boot_timeout: Duration,
    /// How the host reaches the agent (see [`crate::transport`]); the serial port is attached
    /// whatever this is.
    pub transport: transport::Kind,
    /// The guest's vsock context id (native vsock: unique among the host's VMs).
    pub cid: u32,
    /// QEMU user-network port forwards (`tcp:127.0.0.1:8022-:22`). Berth forwards published
    /// ports itself; the benchmarks compare against these.
    pub hostfwd: Vec<String>,
    /// More QEMU arguments, appended as they are (the benchmarks attach a virtiofs device to
    /// compare shared folders with).
    pub qemu_args: Vec<String>,
}

/// The memory for shared folders' data (`berth_protocol::shares::Memory`), made for a VM whose
/// directory is `dir`: QEMU maps its file into the guest as an `ivshmem-plain` device, the file
/// server maps it too. In `/dev/shm` where there is one (Linux), so its pages are memory the
/// kernel never writes back to a disk; else in `dir` (macOS). QEMU for Windows cannot map a
/// file into a guest (`memory-backend-file` is a POSIX backend), so there is none there and
/// data goes through the transport. A failure is logged and the VM goes without.
fn shared_memory(dir: &Path) -> Option<Arc<crate::forward::files::memory::Memory>> {
    if !cfg!(unix) {
        return None;
    }
    let shm = Path::new("/dev/shm");
    let path = if shm.is_dir() {
        // One name per VM directory, so a daemon killed outright leaves one file at most,
        // which the next start replaces.
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        shm.join(format!("berth-shares-{:016x}.mem", h.finish()))
    } else {
        dir.join("shares.mem")
    };
    match crate::forward::files::memory::Memory::create(&path) {
        Ok(m) => Some(Arc::new(m)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no shared memory for shared folders: their data goes through the transport");
            None
        }
    }
}

/// Sets the guest's clock to the host's, over `transport`.
pub async fn sync_clock(transport: &dyn Transport) -> Result<(), crate::control::ControlError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let unix_nanos = i64::try_from(now.as_nanos()).unwrap_or(i64::MAX);
    crate::control::request_via(transport, &berth_protocol::Request::SetTime { unix_nanos }).await.map(|_| ())
}

/// Notices the host's wall clock jumping against its monotonic clock: the host slept (the
/// monotonic clock stands still in suspend, the wall clock does not) or its clock was set. The
/// guest's clock then needs setting again.
#[derive(Debug, Clone, Copy)]
pub struct ClockWatch {
    wall: std::time::SystemTime,
    mono: Instant,
}

impl Default for ClockWatch {
    fn default() -> Self {
        ClockWatch { wall: std::time::SystemTime::now(), mono: Instant::now() }
    }
}

impl ClockWatch {
    /// How far the wall clock moved beyond the monotonic clock since the last look, when that
    /// exceeds `threshold`.
    pub fn jumped(&mut self, threshold: Duration) -> Option<Duration> {
        self.jumped_at(std::time::SystemTime::now(), Instant::now(), threshold)
    }

    fn jumped_at(&mut self, wall: std::time::SystemTime, mono: Instant, threshold: Duration) -> Option<Duration> {
        let walked = match wall.duration_since(self.wall) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        let drift = (walked - mono.duration_since(self.mono).as_secs_f64()).abs();
        self.wall = wall;
        self.mono = mono;
        (drift > threshold.as_secs_f64()).then(|| Duration::from_secs_f64(drift))
    }
}

/// When each phase of a boot ended, in seconds since QEMU was started, seen from the host: the
/// serial console's first output, init's first line, the engine started, the agent answering.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BootTimes {
    pub console: Option<f64>,
    pub init: Option<f64>,
    pub engine: Option<f64>,
    pub ready: f64,
    /// The guest's own uptime when init started (the kernel's part of the boot).
    pub kernel_uptime: Option<f64>,
    /// When init held for the host (a boot that saves the boot snapshot there).
    #[serde(default)]
    pub held: Option<f64>,
    /// Whether this start restored the boot snapshot rather than booting ([`snapshot`]).
    #[serde(default)]
    pub restored: bool,
}

impl BootTimes {
    /// Notes what the serial log shows by `at` seconds.
    fn observe(&mut self, serial: &Path, at: f64) {
        if self.engine.is_some() {
            return;
        }
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if self.held.is_none() && text.contains("] held for the host") {
            self.held = Some(at);
        }
        if self.console.is_none() && !text.is_empty() {
            self.console = Some(at);
        }
        if self.init.is_none()
            && let Some(line) = text.lines().find(|l| l.starts_with("berth-init [") && l.ends_with("] starting"))
        {
            self.init = Some(at);
            self.kernel_uptime = line["berth-init [".len()..].split(']').next().and_then(|u| u.parse().ok());
        }
        if self.engine.is_none() && text.contains("] engine started") {
            self.engine = Some(at);
        }
    }
}

/// A running VM.
pub struct Machine {
    qemu: Child,
    /// vhost-device-vsock, for hybrid vsock.
    device: Option<Child>,
    /// How the host reaches the agent.
    pub transport: Arc<dyn Transport>,
    /// The host end of hybrid vsock (when the VM has it).
    pub vsock: Option<PathBuf>,
    /// The memory the VM shares with the file server for shared folders' data (see
    /// [`shared_memory`]), when this host's QEMU can map a file.
    pub shared_memory: Option<Arc<crate::forward::files::memory::Memory>>,
    /// QEMU's socket for the host end of the virtio-serial port.
    pub port: PathBuf,
    /// How long the boot's phases took.
    pub boot: BootTimes,
    pub serial: PathBuf,
    /// QEMU's QMP socket (mode 0600).
    pub qmp: PathBuf,
    /// The accelerator QEMU runs with, and why it was chosen.
    pub accel: accel::Chosen,
    /// When QEMU was started.
    pub started: std::time::SystemTime,
    /// The connection that told the held guest to go on, kept open for the VM's life: closed at
    /// once, it could be gone before QEMU handed the word to the guest.
    held_word: Option<crate::local::UnixClient>,
}

/// The last `n` lines of a log (the serial console's, for error messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Where QEMU's program `name` (`qemu-system-x86_64`, `qemu-img`) is: in `BERTH_QEMU_DIR`, on
/// `PATH`, or where QEMU installs itself on a host whose desktop starts programs without it on
/// `PATH` (an app opened from the macOS Finder has only `/usr/bin:/bin:/usr/sbin:/sbin`):
/// Homebrew's `/opt/homebrew/bin` and `/usr/local/bin`, MacPorts' `/opt/local/bin`, and the
/// QEMU installer's `%ProgramFiles%\qemu` on Windows. Not found, the bare name, so that
/// starting it fails with "not found" and the caller's advice.
pub fn qemu_program(name: &str) -> PathBuf {
    let exe = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    let mut dirs: Vec<PathBuf> = std::env::var_os("BERTH_QEMU_DIR").map(PathBuf::from).into_iter().collect();
    dirs.extend(std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default());
    if cfg!(target_os = "macos") {
        dirs.extend(["/opt/homebrew/bin", "/usr/local/bin", "/opt/local/bin"].map(PathBuf::from));
    }
    if cfg!(windows) {
        dirs.extend(std::env::var_os("ProgramFiles").map(|p| PathBuf::from(p).join("qemu")));
    }
    dirs.into_iter().map(|d| d.join(&exe)).find(|p| p.is_file()).unwrap_or_else(|| PathBuf::from(name))
}

/// Makes `path` private to the user (0600).
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    // Elsewhere the VM's folder, in the user's profile, is private already.
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The guest kernel's command line; `guest_log` (BERTH_GUEST_LOG on the host) becomes the
/// engine's log filter (`berth.log=`, read by the guest's init).
///
/// What the guest need not do at boot, measured under TCG (docs/architecture.md, "Start
/// time"): the crypto self-tests (`cryptomgr.notests`, 0.3 s: the kernel's algorithms are the
/// ones its build tested, and nothing in the guest needs FIPS). On x86 the TSC is the clock
/// (`tsc=reliable`): the kernel takes a TSC for unsynchronized on any multi-CPU machine whose
/// CPU model is not Intel's and lacks `constant_tsc` (QEMU's default model under TCG), and
/// fell back to the HPET, each read of which is an exit to QEMU's device model: 11% of the
/// guest's busy time in a file-heavy job. TCG's TSC is one counter for every vCPU (QEMU's
/// `cpu_get_ticks`, monotonic under a lock); with KVM, kvm-clock still ranks above it.
///
/// Not `acpi=noirq` or `pci=noacpi` (which skip the routing of each PCI device's legacy
/// interrupt through ACPI's AML interpreter, 0.12 s a device): on Debian's cloud kernel,
/// built without MP tables, either leaves the guest one CPU whatever `-smp` says.
fn kernel_cmdline(arch: arch::GuestArch, guest_log: Option<&str>) -> String {
    let mut line = format!("console={} quiet panic=-1 cryptomgr.notests", arch.console());
    if arch == arch::GuestArch::Amd64 {
        line += " tsc=reliable";
    }
    if let Some(filter) = guest_log.filter(|f| !f.is_empty() && !f.contains(char::is_whitespace)) {
        line += &format!(" berth.log={filter}");
    }
    line
}

/// How long the agent may take to answer once the serial log shows its engine started, before
/// the host gives up on the chosen transport and uses the serial port (normally 1 to 2 s).
const ANSWER_AFTER_ENGINE: Duration = Duration::from_secs(30);

/// An error and its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text += &format!(": {s}");
        source = s.source();
    }
    text
}

/// Which step of [`Machine::stop`] ended QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopStep {
    /// The guest powered off (after the agent's shutdown, or by itself).
    Guest,
    /// After QMP `system_powerdown`.
    Powerdown,
    /// After QMP `quit`.
    Quit,
    /// QEMU was killed.
    Killed,
}

/// How long each step of a stop waits for QEMU to exit.
#[derive(Debug, Clone, Copy)]
pub struct StopTimes {
    pub guest: Duration,
    pub powerdown: Duration,
    pub quit: Duration,
}

impl StopTimes {
    /// `grace` for the guest. A guest that let that pass is likely wedged, so the power button
    /// gets a quarter of it (2 to 20 s), and `quit`, which needs no guest, 5 s.
    pub fn after(grace: Duration) -> StopTimes {
        let powerdown = (grace / 4).clamp(Duration::from_secs(2), Duration::from_secs(20));
        StopTimes { guest: grace, powerdown, quit: Duration::from_secs(5) }
    }
}

/// The stop's steps after the agent was asked: wait, power button, quit, kill.
async fn escalate(qemu: &mut Child, qmp_path: &Path, t: StopTimes) -> StopStep {
    if tokio::time::timeout(t.guest, qemu.wait()).await.is_ok() {
        return StopStep::Guest;
    }
    tracing::warn!(secs = t.guest.as_secs_f32(), "the guest did not power off in time: QMP system_powerdown");
    let qmp = match qmp::Qmp::connect(qmp_path).await {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!(error = %e, "QMP is not reachable: killing QEMU");
            None
        }
    };
    if let Some(q) = &qmp {
        match q.powerdown().await {
            Ok(()) => {
                if tokio::time::timeout(t.powerdown, qemu.wait()).await.is_ok() {
                    return StopStep::Powerdown;
                }
                tracing::warn!(secs = t.powerdown.as_secs_f32(), "the guest ignored the power button: QMP quit");
            }
            Err(e) => tracing::warn!(error = %e, "QMP system_powerdown failed: QMP quit"),
        }
        match q.quit().await {
            Ok(()) => {
                if tokio::time::timeout(t.quit, qemu.wait()).await.is_ok() {
                    return StopStep::Quit;
                }
                tracing::warn!(secs = t.quit.as_secs_f32(), "QEMU did not quit: killing it");
            }
            Err(e) => tracing::warn!(error = %e, "QMP quit failed: killing QEMU"),
        }
    }
    let _ = qemu.kill().await;
    StopStep::Killed
}

/// Starts `vhost-device-vsock` for hybrid vsock and waits for its vhost-user socket `vu`;
/// the host connects through `uds`.
async fn start_vsock_device(vu: &Path, uds: &Path, cid: u32) -> Result<Child, VmError> {
    for s in [vu, uds] {
        let _ = std::fs::remove_file(s);
    }
    let program = transport::vsock_device_program().unwrap_or_else(|| PathBuf::from("vhost-device-vsock"));
    let mut cmd = Command::new(&program);
    cmd.args(["--guest-cid", &cid.to_string(), "--socket"]).arg(vu).arg("--uds-path").arg(uds);
    // Its complaints go next to the serial log, for `berth logs` and bug reports.
    let log = vu.with_file_name("vsock-device.log");
    let log = std::fs::File::create(&log).map_err(|source| VmError::Io { path: log, source })?;
    cmd.stderr(log);
    let mut device = spawn_tied(cmd, "the vsock device (cargo install vhost-device-vsock)", &program)?;
    let start = Instant::now();
    while !vu.exists() {
        if let Ok(Some(st)) = device.try_wait() {
            return Err(VmError::Boot(format!("vhost-device-vsock exited ({st}) before it made its socket")));
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(VmError::Boot("vhost-device-vsock did not create its socket in 10 s".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(device)
}

/// Spawns a helper process of the VM that must not outlive the daemon: killed when the
/// daemon drops it, and sent SIGTERM by the kernel if the daemon dies without doing so
/// (QEMU then exits cleanly, flushing its disk image).
fn spawn_tied(mut cmd: Command, what: &'static str, program: &Path) -> Result<Child, VmError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).kill_on_drop(true);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe. The death signal follows the spawning *thread*: tokio
    // spawns from a runtime worker, which lives as long as the daemon.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM).map_err(std::io::Error::from)
        });
    }
    cmd.spawn().map_err(|source| VmError::Spawn { what, program: program.display().to_string(), source })
}

impl Machine {
    /// Starts the VM, from its boot snapshot when it has a usable one, and waits until the
    /// agent answers. A snapshot that does not restore is removed and the VM boots instead.
    pub async fn start(cfg: &MachineConfig) -> Result<Machine, VmError> {
        match Machine::boot(cfg, true).await {
            Err(VmError::Restore(e)) => {
                tracing::warn!(error = %error_chain(&e), "the boot snapshot did not restore: removed; booting instead");
                snapshot::remove(&cfg.dir);
                Machine::boot(cfg, false).await
            }
            r => r,
        }
    }

    /// Boots the VM, or restores its snapshot when `may_restore` and there is a usable one, and
    /// waits until the agent answers.
    async fn boot(cfg: &MachineConfig, may_restore: bool) -> Result<Machine, VmError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| VmError::Io { path, source }
        };
        for f in ["vmlinuz", "initrd.img"] {
            if !cfg.image.join(f).is_file() {
                return Err(VmError::NoImage(cfg.image.clone()));
            }
        }
        if let Some(built) = image::arch_of(&cfg.image).filter(|a| *a != cfg.arch) {
            return Err(VmError::WrongArch { dir: cfg.image.clone(), built, wanted: cfg.arch });
        }
        std::fs::create_dir_all(&cfg.dir).map_err(io(&cfg.dir))?;
        let disk = cfg.dir.join("data.qcow2");
        if !disk.exists() {
            let qemu_img = qemu_program("qemu-img");
            let out = Command::new(&qemu_img)
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&disk)
                .arg(format!("{}G", cfg.disk_gib))
                .output()
                .await
                .map_err(|source| VmError::Spawn {
                    what: "qemu-img",
                    program: qemu_img.display().to_string(),
                    source,
                })?;
            if !out.status.success() {
                return Err(VmError::Boot(format!("creating the data disk: {}", String::from_utf8_lossy(&out.stderr))));
            }
        }
        let qemu_path = qemu_program(cfg.arch.qemu());
        let chosen = accel::choose(cfg.accel, cfg.arch, &qemu_path, &cfg.dir.join("accel-probe.json")).await?;
        tracing::info!(accel = %chosen.accel, forced = chosen.forced, reason = %chosen.reason, "accelerator");
        let serial = cfg.dir.join("serial.log");
        let qmp = cfg.dir.join("qmp.sock");
        let port = cfg.dir.join("port.sock");
        for f in [&qmp, &port, &serial, &cfg.dir.join("qmp-events.sock")] {
            let _ = std::fs::remove_file(f);
        }
        let mem = format!("{}M", cfg.memory_mib);
        let snapshots = snapshot::usable_for(cfg.transport, &cfg.hostfwd, &cfg.qemu_args);
        let init_port = cfg.dir.join(snapshot::INIT_PORT);
        let _ = std::fs::remove_file(&init_port);
        let mut cmdline = kernel_cmdline(cfg.arch, std::env::var("BERTH_GUEST_LOG").ok().as_deref());
        if snapshots {
            // Init holds before mounting the data disk until the host's word ([`snapshot`]).
            cmdline += " berth.hold=1";
        }
        let mut qemu = Command::new(&qemu_path);
        qemu.args(["-accel", chosen.accel.name(), "-m", &mem, "-smp", &cfg.cpus.to_string()])
            .args(cfg.arch.machine_args(chosen.accel))
            .args(["-nodefaults", "-no-reboot", "-display", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(cfg.image.join("vmlinuz"))
            .arg("-initrd")
            .arg(cfg.image.join("initrd.img"))
            .arg("-append")
            .arg(&cmdline)
            .arg("-netdev")
            .arg(cfg.hostfwd.iter().fold("user,id=n0".to_string(), |n, f| format!("{n},hostfwd={f}")))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            // Blocks the guest trims (it does after the engine deletes) are punched out of
            // the qcow2 file, so the disk image shrinks back.
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2,discard=unmap,detect-zeroes=unmap", disk.display()))
            // Pages the guest frees go back to this machine a few seconds later (free page
            // reporting), so QEMU's resident memory falls after a workload ends.
            .args(["-device", "virtio-balloon-pci,free-page-reporting=on,deflate-on-oom=on"])
            // The virtio-serial port, always there: the serial transport, and a way in for
            // tests and benchmarks whatever the transport is.
            .args(["-device", "virtio-serial-pci,id=vser", "-chardev"])
            .arg(format!("socket,id=berthport,path={},server=on,wait=off", port.display()))
            .args([
                "-device",
                &format!("virtserialport,bus=vser.0,chardev=berthport,name={}", berth_protocol::SERIAL_PORT_NAME),
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            // A second monitor, only for the daemon's event watch (a QMP socket serves one
            // client at a time; `berth status` and `stop` use the first).
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", cfg.dir.join("qmp-events.sock").display()));
        let (device, vsock, transport): (Option<Child>, Option<PathBuf>, Arc<dyn Transport>) = match cfg.transport {
            transport::Kind::Hybrid => {
                let vu = cfg.dir.join("vhost-user-vsock.sock");
                let uds = cfg.dir.join("vm.vsock");
                let device = start_vsock_device(&vu, &uds, cfg.cid).await?;
                // vhost-user devices need the guest's memory shared with them.
                qemu.args(["-object", &format!("memory-backend-memfd,id=mem,size={mem},share=on")])
                    .args(["-numa", "node,memdev=mem", "-chardev"])
                    .arg(format!("socket,id=vsock,path={}", vu.display()))
                    .args(["-device", "vhost-user-vsock-pci,chardev=vsock"]);
                (Some(device), Some(uds.clone()), Arc::new(transport::mux::MuxTransport::hybrid(uds)))
            }
            transport::Kind::Vsock => {
                qemu.args(["-device", &format!("vhost-vsock-pci,guest-cid={}", cfg.cid)]);
                (None, None, Arc::new(transport::vsock::VsockTransport { cid: cfg.cid }))
            }
            transport::Kind::Serial => (None, None, Arc::new(transport::mux::MuxTransport::serial(port.clone()))),
        };
        let shared_memory = shared_memory(&cfg.dir);
        if let Some(m) = &shared_memory {
            qemu.arg("-object")
                .arg(format!(
                    "memory-backend-file,id=berthshm,mem-path={},size={},share=on",
                    m.path().display(),
                    crate::forward::files::memory::SIZE
                ))
                // `master=on`: QEMU migrates (snapshots) a VM with it only so.
                .args(["-device", "ivshmem-plain,memdev=berthshm,master=on"]);
        }
        qemu.args(&cfg.qemu_args);
        if snapshots {
            qemu.arg("-chardev")
                .arg(format!("socket,id=berthinit,path={},server=on,wait=off", init_port.display()))
                .args(["-device", "virtserialport,bus=vser.0,chardev=berthinit,name=berth.init"]);
        }
        // The key is taken from every argument so far: a snapshot restores only into the same VM.
        let key = snapshots.then(|| {
            let args: Vec<std::ffi::OsString> = qemu.as_std().get_args().map(ToOwned::to_owned).collect();
            snapshot::key(&qemu_path, &args, &[cfg.image.join("vmlinuz"), cfg.image.join("initrd.img")], &disk)
        });
        let restoring = key.as_deref().filter(|_| may_restore).and_then(|k| snapshot::find(&cfg.dir, k));
        if restoring.is_some() {
            qemu.args(["-incoming", "defer"]);
        }
        let qemu = spawn_tied(qemu, "QEMU", &qemu_path)?;
        let started = std::time::SystemTime::now();
        let mut m = Machine {
            qemu,
            device,
            transport,
            vsock,
            shared_memory,
            port,
            boot: BootTimes::default(),
            serial,
            qmp,
            accel: chosen,
            started,
            held_word: None,
        };
        let start = Instant::now();
        if let Some(file) = &restoring {
            while !m.qmp.exists() {
                if let Ok(Some(st)) = m.qemu.try_wait() {
                    let why = format!("QEMU exited ({st}) before its monitor was up");
                    return Err(VmError::Restore(snapshot::SnapshotError::Migration(why)));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            snapshot::restore(&m.qmp, &cfg.dir, file).await.map_err(VmError::Restore)?;
            if let Some(memory) = &m.shared_memory {
                memory.stamp();
            }
            m.held_word = Some(snapshot::go(&init_port).await.map_err(|source| {
                VmError::Restore(snapshot::SnapshotError::Io {
                    what: "word to the guest",
                    path: init_port.clone(),
                    source,
                })
            })?);
            m.boot.restored = true;
            tracing::info!(secs = start.elapsed().as_secs_f64(), "the boot snapshot is restored");
        }
        // A boot that holds: the snapshot is saved when init says it holds, then the guest goes.
        let mut holding = snapshots && restoring.is_none();
        let mut private = [false, false, !snapshots];
        let mut last_error;
        loop {
            // QEMU makes its sockets with the process umask; only the user may drive the VM.
            for (done, path) in private.iter_mut().zip([&m.qmp, &m.port, &init_port]) {
                if !*done && path.exists() {
                    restrict(path).map_err(io(path))?;
                    *done = true;
                }
            }
            let now = start.elapsed().as_secs_f64();
            m.boot.observe(&m.serial, now);
            if holding && m.boot.engine.is_some() {
                // An init that does not hold (a guest image from before it did).
                tracing::warn!("the guest did not hold for a boot snapshot: none is saved");
                holding = false;
            }
            if holding && m.boot.held.is_some() {
                holding = false;
                let saving = Instant::now();
                match snapshot::save(&m.qmp, &cfg.dir, key.as_deref().unwrap_or_default()).await {
                    Ok(bytes) => tracing::info!(
                        mib = bytes >> 20,
                        secs = saving.elapsed().as_secs_f64(),
                        "boot snapshot saved: the next starts restore it"
                    ),
                    Err(e) => tracing::warn!(error = %error_chain(&e), "the boot snapshot was not saved"),
                }
                match snapshot::go(&init_port).await {
                    Ok(s) => m.held_word = Some(s),
                    Err(e) => {
                        return Err(VmError::Boot(format!(
                            "the guest holds for the host's word, which could not be given ({}): {e}",
                            init_port.display()
                        )));
                    }
                }
            }
            if holding {
                // Nothing answers before the guest is let go.
                last_error = "the guest has not reached its hold before the data disk".into();
            } else {
                // A serial session waits for the agent rather than failing, so each try is bounded.
                let health = crate::control::request_via(m.transport.as_ref(), &berth_protocol::Request::Health);
                match tokio::time::timeout(Duration::from_secs(2), health).await {
                    Ok(Ok(_)) => {
                        m.boot.ready = start.elapsed().as_secs_f64();
                        tracing::info!(transport = %m.transport.kind(), boot = ?m.boot, "the guest's agent answers");
                        return Ok(m);
                    }
                    Ok(Err(e)) => last_error = error_chain(&e),
                    Err(_) => last_error = "no answer in 2 s".into(),
                }
                tracing::debug!(secs = now, error = %last_error, "the agent does not answer yet");
            }
            // The serial log says the engine runs, yet the transport does not reach it: fall
            // back to the virtio-serial port every VM has, rather than fail the start.
            if m.transport.kind() != transport::Kind::Serial
                && m.boot.engine.is_some_and(|engine| now - engine > ANSWER_AFTER_ENGINE.as_secs_f64())
            {
                tracing::warn!(
                    transport = %m.transport.kind(),
                    last_error,
                    "the agent runs but does not answer over this transport: falling back to the serial port"
                );
                m.transport = Arc::new(transport::mux::MuxTransport::serial(m.port.clone()));
            }
            if let Ok(Some(st)) = m.qemu.try_wait() {
                return Err(VmError::Boot(format!(
                    "QEMU exited ({st}) before the agent answered; serial log tail:\n{}",
                    tail(&m.serial, 20)
                )));
            }
            if start.elapsed() > cfg.boot_timeout {
                let _ = m.qemu.kill().await;
                return Err(VmError::Boot(format!(
                    "the guest did not answer within {} s (accelerator {}, transport {}; last attempt: {last_error}); \
                     serial log tail:\n{}",
                    cfg.boot_timeout.as_secs(),
                    m.accel.accel,
                    m.transport.kind(),
                    tail(&m.serial, 20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clean shutdown, in steps, each logged: the agent stops the containers and powers off;
    /// if QEMU has not exited within `grace`, QMP `system_powerdown`, then QMP `quit`, and a
    /// kill only if QEMU ignores even that. Returns the step that ended QEMU.
    pub async fn stop(mut self, grace: Duration) -> StopStep {
        let ask = crate::control::request_via(self.transport.as_ref(), &berth_protocol::Request::Shutdown);
        match tokio::time::timeout(Duration::from_secs(10), ask).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "asking the guest to shut down"),
            Err(_) => tracing::warn!("the guest did not answer the shutdown request in 10 s"),
        }
        let step = escalate(&mut self.qemu, &self.qmp, StopTimes::after(grace)).await;
        if let Some(d) = self.device.as_mut() {
            let _ = d.kill().await;
        }
        step
    }

    /// QEMU's process id (None once it has been reaped).
    pub fn qemu_pid(&self) -> Option<u32> {
        self.qemu.id()
    }

    /// Waits for QEMU to exit on its own.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.qemu.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU running the accelerator probe's firmware under TCG. Without the debug-exit device
    /// the firmware halts for ever: a guest that ignores both the agent and the power button.
    #[cfg(unix)]
    fn halted_guest(dir: &Path, with_qmp: bool) -> (Child, PathBuf) {
        let bios = dir.join("fw.bin");
        std::fs::write(&bios, accel::firmware_x86()).unwrap();
        let qmp = dir.join("qmp.sock");
        let mut cmd = Command::new(arch::GuestArch::Amd64.qemu());
        cmd.args(["-accel", "tcg", "-machine", "pc", "-m", "16", "-nodefaults", "-display", "none", "-bios"])
            .arg(&bios)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if with_qmp {
            cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", qmp.display()));
        }
        (cmd.spawn().expect("qemu-system-x86_64 is installed (./dev setup)"), qmp)
    }

    #[cfg(unix)]
    async fn wait_for(path: &Path) {
        let start = Instant::now();
        while !path.exists() {
            assert!(start.elapsed() < Duration::from_secs(10), "no {}", path.display());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[cfg(unix)]
    fn quick() -> StopTimes {
        StopTimes {
            guest: Duration::from_millis(300),
            powerdown: Duration::from_millis(500),
            quit: Duration::from_secs(5),
        }
    }

    // QEMU (or `true`) runs here as a Linux program: on the Linux hosts that run the tests.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_guest_that_ignores_the_power_button_is_ended_by_qmp_quit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut qemu, qmp) = halted_guest(dir.path(), true);
        wait_for(&qmp).await;
        let start = Instant::now();
        assert_eq!(escalate(&mut qemu, &qmp, quick()).await, StopStep::Quit);
        assert!(start.elapsed() >= Duration::from_millis(800), "both waits were served");
        let st = qemu.wait().await.unwrap();
        assert!(st.success(), "quit exits QEMU cleanly, not by a signal: {st}");
    }

    // QEMU (or `true`) runs here as a Linux program: on the Linux hosts that run the tests.
    #[cfg(unix)]
    #[tokio::test]
    async fn without_qmp_qemu_is_killed_and_an_exited_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (mut qemu, qmp) = halted_guest(dir.path(), false);
        assert_eq!(escalate(&mut qemu, &qmp, quick()).await, StopStep::Killed);
        assert!(!qemu.wait().await.unwrap().success());
        // One that is already gone counts as the guest's own power-off.
        assert_eq!(escalate(&mut qemu, &qmp, quick()).await, StopStep::Guest);
    }

    #[test]
    fn the_guest_log_filter_reaches_the_kernel_command_line() {
        use arch::GuestArch::{Amd64, Arm64};
        let amd64 = "console=ttyS0 quiet panic=-1 cryptomgr.notests tsc=reliable";
        assert_eq!(kernel_cmdline(Amd64, None), amd64);
        assert_eq!(kernel_cmdline(Arm64, None), "console=ttyAMA0 quiet panic=-1 cryptomgr.notests");
        assert_eq!(kernel_cmdline(Amd64, Some("debug,yamux=trace")), format!("{amd64} berth.log=debug,yamux=trace"));
        assert_eq!(kernel_cmdline(Amd64, Some("a b")), amd64, "a space would split the option");
    }

    #[test]
    fn a_wall_clock_jump_is_noticed() {
        let mut w = ClockWatch::default();
        let (wall, mono) = (w.wall, w.mono);
        let second = Duration::from_secs(1);
        // Both clocks moved alike: nothing to do.
        assert_eq!(w.jumped_at(wall + 10 * second, mono + 10 * second, second), None);
        // The host slept an hour: the wall clock moved, the monotonic clock did not.
        let d = w.jumped_at(wall + 3610 * second, mono + 11 * second, second).unwrap();
        assert!((d.as_secs_f64() - 3599.0).abs() < 0.01, "{d:?}");
        // The clock was set back.
        assert!(w.jumped_at(wall + 3000 * second, mono + 12 * second, second).is_some());
    }

    #[test]
    fn stop_times_follow_the_grace_period() {
        let t = StopTimes::after(Duration::from_secs(90));
        assert_eq!(
            (t.guest, t.powerdown, t.quit),
            (Duration::from_secs(90), Duration::from_secs(20), Duration::from_secs(5))
        );
        assert_eq!(StopTimes::after(Duration::from_secs(1)).powerdown, Duration::from_secs(2));
    }
}
