//! `berth`: start, stop and inspect Berth's VM, and serve its Docker socket at
//! `$BERTH_HOME/docker.sock`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_core::vm::{Machine, MachineConfig};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "Linux containers in a small VM, driven by the docker CLI")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct VmArgs {
    /// Virtual CPUs.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Size of the data disk in GiB (on first start).
    #[arg(long, default_value_t = 32)]
    disk: u32,
    /// Accelerator: auto, kvm, hvf, whpx or tcg.
    #[arg(long, default_value = "auto")]
    accel: String,
    /// The guest image directory (vmlinuz, initrd.img); default $BERTH_HOME/image.
    #[arg(long)]
    image: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the VM in the background and return once the Docker socket answers.
    Start(VmArgs),
    /// Stop the VM cleanly (containers stopped, data synced).
    Stop,
    /// Is it running, and what does the agent say.
    Status,
    /// The VM's serial console and the daemon's log.
    Logs,
    /// Run the VM and serve the Docker socket in the foreground (what `start` runs).
    Daemon(VmArgs),
}

fn home() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("BERTH_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").context("neither BERTH_HOME nor HOME is set")?)
            .join(".local/share/berth"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// The pid of a running daemon, if any (a stale pid file is removed).
fn running_daemon(home: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(home.join("daemon.pid")).ok()?.trim().parse().ok()?;
    if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        Some(pid)
    } else {
        let _ = std::fs::remove_file(home.join("daemon.pid"));
        None
    }
}

fn machine_config(home: &Path, a: &VmArgs) -> MachineConfig {
    MachineConfig {
        dir: home.join("vm"),
        image: a.image.clone().unwrap_or_else(|| home.join("image")),
        cpus: a.cpus,
        memory_mib: a.memory,
        disk_gib: a.disk,
        accel: a.accel.clone(),
        boot_timeout: Duration::from_secs(180),
    }
}

async fn daemon(a: VmArgs) -> anyhow::Result<()> {
    let home = home()?;
    if let Some(pid) = running_daemon(&home) {
        bail!("berth is already running (pid {pid})");
    }
    std::fs::write(home.join("daemon.pid"), std::process::id().to_string())?;
    let result = run_daemon(&home, &a).await;
    let _ = std::fs::remove_file(home.join("daemon.pid"));
    let _ = std::fs::remove_file(home.join("docker.sock"));
    result
}

async fn run_daemon(home: &Path, a: &VmArgs) -> anyhow::Result<()> {
    let mut machine = Machine::start(&machine_config(home, a)).await?;
    let listener = berth_core::forward::socket::bind(&home.join("docker.sock")).await?;
    tokio::spawn(berth_core::forward::socket::serve(listener, machine.vsock.clone(), berth_core::control::DOCKER_PORT));
    tracing::info!(socket = %home.join("docker.sock").display(), "Docker socket ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
        st = machine.wait() => bail!("the VM stopped by itself ({st:?}); serial log: {}", machine.serial.display()),
    }
    tracing::info!("stopping the VM");
    machine.stop(Duration::from_secs(90)).await;
    Ok(())
}

/// Whether the Docker socket answers `/_ping`.
async fn docker_answers(sock: &Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::UnixStream::connect(sock).await else { return false };
    if s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    read.is_ok() && String::from_utf8_lossy(&buf).starts_with("HTTP/1.0 200")
}

async fn start(a: VmArgs) -> anyhow::Result<()> {
    let home = home()?;
    let sock = home.join("docker.sock");
    if running_daemon(&home).is_some() && docker_answers(&sock).await {
        println!("berth is running: export DOCKER_HOST=unix://{}", sock.display());
        return Ok(());
    }
    let log = std::fs::File::create(home.join("daemon.log"))?;
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("daemon")
        .args([
            "--cpus",
            &a.cpus.to_string(),
            "--memory",
            &a.memory.to_string(),
            "--disk",
            &a.disk.to_string(),
            "--accel",
            &a.accel,
        ])
        .args(a.image.iter().flat_map(|i| ["--image".into(), i.display().to_string()]))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe: the daemon leaves the terminal's session.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    let mut child = cmd.spawn().context("starting the berth daemon")?;
    eprintln!("starting the VM (logs: berth logs)...");
    let start = Instant::now();
    loop {
        if docker_answers(&sock).await {
            println!("berth is running: export DOCKER_HOST=unix://{}", sock.display());
            return Ok(());
        }
        if let Ok(Some(st)) = child.try_wait() {
            let log = std::fs::read_to_string(home.join("daemon.log")).unwrap_or_default();
            bail!("the berth daemon exited ({st}):\n{log}");
        }
        if start.elapsed() > Duration::from_secs(240) {
            bail!("the Docker socket did not answer in 240 s; see `berth logs`");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop() -> anyhow::Result<()> {
    let home = home()?;
    let Some(pid) = running_daemon(&home) else {
        println!("berth is not running");
        return Ok(());
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)?;
    let start = Instant::now();
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok() {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the berth daemon (pid {pid}) did not stop in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("berth stopped");
    Ok(())
}

async fn status() -> anyhow::Result<()> {
    let home = home()?;
    let Some(pid) = running_daemon(&home) else {
        println!("berth is not running");
        return Ok(());
    };
    match berth_core::control::request(&home.join("vm/vm.vsock"), &berth_core::control::Request::Health).await {
        Ok(r) => println!("berth is running (daemon pid {pid}): {r:?}"),
        Err(e) => println!("berth daemon (pid {pid}) is up, but the guest does not answer: {e}"),
    }
    Ok(())
}

fn logs() -> anyhow::Result<()> {
    let home = home()?;
    for f in ["vm/serial.log", "daemon.log"] {
        println!("==> {f}");
        print!("{}", std::fs::read_to_string(home.join(f)).unwrap_or_default());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        match cli.command {
            Cmd::Start(a) => start(a).await,
            Cmd::Stop => stop().await,
            Cmd::Status => status().await,
            Cmd::Logs => logs(),
            Cmd::Daemon(a) => daemon(a).await,
        }
    })
}
