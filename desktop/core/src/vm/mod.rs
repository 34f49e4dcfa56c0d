//! The VM: a `vhost-device-vsock` process and QEMU, booted from Berth's guest image with a
//! persistent data disk, its serial console kept as `serial.log` in the machine's directory.
//!
//! 1. Create the data disk (qcow2) on first start.
//! 2. Start the vsock device; it makes the vhost-user socket QEMU connects to and the unix
//!    socket the host connects through (`vm.vsock`).
//! 3. Start QEMU; wait until the agent answers a control hello (or QEMU dies: say why, with
//!    the serial log's tail).
//! 4. Stop: ask the agent to shut down (it stops the containers, syncs, powers off), wait for
//!    QEMU to exit, kill it only if it does not.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// Errors of the VM manager.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("no guest image in {0}: build one with vm-image/build.sh {0}")]
    NoImage(PathBuf),
    #[error("{what} could not be started ({program}): is it installed?")]
    Spawn {
        what: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Boot(String),
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
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_gib: u32,
    /// `kvm`, `hvf`, `whpx` or `tcg`; `auto` picks kvm when /dev/kvm opens, else tcg.
    pub accel: String,
    pub boot_timeout: Duration,
}

/// A running VM.
pub struct Machine {
    qemu: Child,
    device: Child,
    /// The host end of hybrid vsock.
    pub vsock: PathBuf,
    pub serial: PathBuf,
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn accel(choice: &str) -> String {
    match choice {
        "auto" if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() => "kvm".into(),
        "auto" => "tcg".into(),
        other => other.into(),
    }
}

fn vsock_device_program() -> PathBuf {
    let cargo = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    match cargo.map(|c| c.join("bin/vhost-device-vsock")) {
        Some(p) if p.exists() => p,
        _ => PathBuf::from("vhost-device-vsock"),
    }
}

impl Machine {
    /// Boots the VM and waits until the agent answers.
    pub async fn start(cfg: &MachineConfig) -> Result<Machine, VmError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| VmError::Io { path, source }
        };
        for f in ["vmlinuz", "initrd.img"] {
            if !cfg.image.join(f).is_file() {
                return Err(VmError::NoImage(cfg.image.clone()));
            }
        }
        std::fs::create_dir_all(&cfg.dir).map_err(io(&cfg.dir))?;
        let disk = cfg.dir.join("data.qcow2");
        if !disk.exists() {
            let out = Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2"])
                .arg(&disk)
                .arg(format!("{}G", cfg.disk_gib))
                .output()
                .await
                .map_err(|source| VmError::Spawn { what: "qemu-img", program: "qemu-img".into(), source })?;
            if !out.status.success() {
                return Err(VmError::Boot(format!("creating the data disk: {}", String::from_utf8_lossy(&out.stderr))));
            }
        }
        let vu = cfg.dir.join("vhost-user-vsock.sock");
        let vsock = cfg.dir.join("vm.vsock");
        for s in [&vu, &vsock] {
            let _ = std::fs::remove_file(s);
        }
        let program = vsock_device_program();
        let device = Command::new(&program)
            .args(["--guest-cid", "3", "--socket"])
            .arg(&vu)
            .arg("--uds-path")
            .arg(&vsock)
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VmError::Spawn {
                what: "the vsock device",
                program: program.display().to_string(),
                source,
            })?;
        let start = Instant::now();
        while !vu.exists() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(VmError::Boot("vhost-device-vsock did not create its socket".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let serial = cfg.dir.join("serial.log");
        let mem = format!("{}M", cfg.memory_mib);
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-accel", &accel(&cfg.accel), "-m", &mem, "-smp", &cfg.cpus.to_string()])
            .args(["-nodefaults", "-no-reboot", "-display", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(cfg.image.join("vmlinuz"))
            .arg("-initrd")
            .arg(cfg.image.join("initrd.img"))
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
            .args(["-object", &format!("memory-backend-memfd,id=mem,size={mem},share=on"), "-numa", "node,memdev=mem"])
            .arg("-chardev")
            .arg(format!("socket,id=vsock,path={}", vu.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=vsock"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VmError::Spawn { what: "QEMU", program: "qemu-system-x86_64".into(), source })?;
        let mut m = Machine { qemu, device, vsock, serial };
        let start = Instant::now();
        loop {
            if crate::control::request(&m.vsock, &berth_protocol::Request::Health).await.is_ok() {
                tracing::info!(secs = start.elapsed().as_secs_f64(), "the guest's agent answers");
                return Ok(m);
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
                    "the guest did not answer within {} s (accelerator {}; try --accel tcg); serial log tail:\n{}",
                    cfg.boot_timeout.as_secs(),
                    accel(&cfg.accel),
                    tail(&m.serial, 20)
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Clean shutdown: the agent stops the containers and powers off; QEMU is killed only if
    /// it has not exited within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        if let Err(e) = crate::control::request(&self.vsock, &berth_protocol::Request::Shutdown).await {
            tracing::warn!(error = %e, "asking the guest to shut down");
        }
        if tokio::time::timeout(grace, self.qemu.wait()).await.is_err() {
            tracing::warn!("the guest did not power off in time: stopping QEMU");
            let _ = self.qemu.kill().await;
        }
        let _ = self.device.kill().await;
    }

    /// Waits for QEMU to exit on its own.
    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.qemu.wait().await
    }
}
