//! `berth`: start, stop and inspect Berth's VM, serve its Docker socket at
//! `$BERTH_HOME/docker.sock`, and drive the engine there with docker's everyday verbs
//! ([`docker`]).

mod config;
mod docker;
mod host;
mod progress;
mod shell;
mod status;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use berth_core::config::{Resolved, VmSettings};
use berth_core::vm::accel::AccelChoice;
use berth_core::vm::arch::GuestArch;
use berth_core::vm::{Machine, MachineConfig};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "berth", version, about = "Linux containers in a small VM, driven by the docker CLI")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Each flag, when given, wins over the same key in `$BERTH_HOME/config.toml`, which wins over
/// the default; so they are options here, to tell "not given" from "given the default".
#[derive(Args, Clone)]
struct VmArgs {
    /// Virtual CPUs [config: cpus; default 2].
    #[arg(long)]
    cpus: Option<NonZeroU32>,
    /// Memory in MiB [config: memory; default 2048].
    #[arg(long)]
    memory: Option<NonZeroU32>,
    /// Size of the data disk in GiB, on first start [config: disk; default 32].
    #[arg(long)]
    disk: Option<NonZeroU32>,
    /// Accelerator: auto (probe kvm/hvf/whpx, else tcg), kvm, hvf, whpx or tcg [config: accel;
    /// default auto].
    #[arg(long)]
    accel: Option<AccelChoice>,
    /// The guest's architecture: amd64 (x86_64) or arm64 (aarch64); another than the host's
    /// runs under TCG [config: arch; default the host's].
    #[arg(long)]
    arch: Option<GuestArch>,
    /// The guest image directory (vmlinuz, initrd.img) [config: image; default
    /// $BERTH_HOME/image, $BERTH_HOME/image-arm64 for arm64].
    #[arg(long)]
    image: Option<PathBuf>,
    /// How the host reaches the guest: auto (vsock, else serial), vsock, hybrid
    /// or serial [config: transport; default auto].
    #[arg(long)]
    transport: Option<berth_core::transport::Choice>,
    /// A directory to share with the guest, mounted there at the same path (`PATH` or
    /// `PATH:ro`); may repeat, and replaces the default ones [config: shares; default the
    /// home directory and the temporary directory].
    #[arg(long = "share", value_name = "PATH[:ro]")]
    shares: Vec<String>,
}

impl VmArgs {
    /// The flags over `$BERTH_HOME/config.toml` over the defaults.
    fn resolve(&self, home: &Path) -> anyhow::Result<Resolved> {
        let flags = VmSettings {
            cpus: self.cpus,
            memory: self.memory,
            disk: self.disk,
            accel: self.accel,
            arch: self.arch,
            image: self.image.clone(),
            transport: self.transport,
            shares: (!self.shares.is_empty()).then(|| self.shares.clone()),
        };
        flags.check().map_err(anyhow::Error::msg)?;
        Ok(flags.over(&VmSettings::load(&home.join("config.toml"))?))
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the VM in the background and return once the Docker socket answers; with
    /// container names, start those containers instead.
    Start {
        #[command(flatten)]
        vm: VmArgs,
        /// Containers to start (the VM must be running).
        containers: Vec<String>,
    },
    /// Stop the VM cleanly (containers stopped, data synced); with container names, stop
    /// those containers instead.
    Stop {
        /// Seconds a container has to stop before it is killed.
        #[arg(short, long)]
        time: Option<i32>,
        containers: Vec<String>,
    },
    /// VM state (QMP), versions, uptime and resources, and what the agent says.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The VM's serial console and the daemon's log; with a container, that container's
    /// output (`-f` follows it, `--tail N` shows the last lines).
    Logs {
        #[arg(short, long)]
        follow: bool,
        #[arg(long, default_value = "all")]
        tail: String,
        container: Option<String>,
    },
    /// Run the VM and serve the Docker socket in the foreground (what `start` runs).
    Daemon(VmArgs),
    /// Show the settings in $BERTH_HOME/config.toml and those in force, or change them.
    Config {
        /// One JSON object (file, resolved, defaults, keys) instead of text.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<ConfigCmd>,
    },
    /// The `berth` docker context: `berth context use` makes it the docker CLI's current one
    /// (registering it again), `berth context use default` goes back.
    #[command(subcommand)]
    Context(ContextCmd),
    /// Print the shell line that points docker tools at Berth: `eval "$(berth env)"`.
    Env {
        #[arg(long, value_enum)]
        shell: Option<shell::Shell>,
    },
    /// Run the docker CLI against Berth: `berth docker compose up`, `berth docker buildx ls`.
    Docker {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print a completion script: `berth completion bash > /etc/bash_completion.d/berth`
    /// (also zsh, fish, powershell, elvish).
    Completion { shell: clap_complete::Shell },
    #[command(flatten)]
    Engine(docker::Verb),
}

#[derive(Subcommand)]
enum ContextCmd {
    /// Make a context current for the docker CLI (`berth`, the default, or `default`).
    Use {
        #[arg(default_value = shell::CONTEXT)]
        name: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Change settings: `berth config set cpus=4 memory=4096 shares=/work,/data:ro`; `KEY=`
    /// goes back to the default. Keys: cpus, memory (MiB), disk (GiB), accel, transport,
    /// image, shares. Checked before they are written; they apply at the next `berth start`.
    Set {
        #[arg(value_name = "KEY=VALUE", required = true)]
        pairs: Vec<String>,
    },
}

fn home() -> anyhow::Result<PathBuf> {
    // The platform's data directory: $XDG_DATA_HOME or ~/.local/share on Linux,
    // ~/Library/Application Support on macOS, %APPDATA% on Windows.
    let dir = match std::env::var_os("BERTH_HOME") {
        Some(h) => PathBuf::from(h),
        None => dirs::data_dir().context("neither BERTH_HOME nor a home directory is set")?.join("berth"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    host::make_private(&dir)?;
    Ok(dir)
}

/// Whether `pid` is a live process whose command line contains all of `words` (a pid file
/// can outlive its process, and the number be reused by another).
/// Where the host does not show command lines, a live process is taken for it.
fn is_process(pid: i32, words: &[&str]) -> bool {
    host::alive(pid) && host::command_line(pid).is_none_or(|cmdline| words.iter().all(|w| cmdline.contains(w)))
}

/// The pid of a running daemon, if any. A stale pid file (its process gone, or the number now
/// another program's) is removed with the state file.
fn running_daemon(home: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(home.join("daemon.pid")).ok()?.trim().parse().ok()?;
    if is_process(pid, &["berth", "daemon"]) {
        Some(pid)
    } else {
        tracing::info!(pid, "removing a stale pid file");
        let _ = std::fs::remove_file(home.join("daemon.pid"));
        None
    }
}

/// Ends a QEMU that a daemon which died left running (its pid in the old state file, its
/// command line naming our VM directory): it holds the data disk's lock. QEMU gets SIGTERM
/// first, which it answers by exiting cleanly with its disk image flushed.
async fn end_leftover_qemu(home: &Path) {
    let Some(pid) = status::DaemonState::read(home).and_then(|s| s.vm?.facts.qemu_pid) else { return };
    let pid = pid as i32;
    let vm_dir = home.join("vm").display().to_string();
    if !is_process(pid, &["qemu", &vm_dir]) {
        return;
    }
    eprintln!("stopping the VM a crashed berth daemon left running (QEMU pid {pid})");
    host::terminate(pid);
    let start = Instant::now();
    while is_process(pid, &["qemu", &vm_dir]) {
        if start.elapsed() > Duration::from_secs(10) {
            host::kill(pid);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn machine_config(home: &Path, r: &Resolved) -> MachineConfig {
    MachineConfig {
        dir: home.join("vm"),
        image: r.image.clone().unwrap_or_else(|| home.join(r.arch.image_dir())),
        arch: r.arch,
        cpus: r.cpus,
        memory_mib: r.memory_mib,
        disk_gib: r.disk_gib,
        accel: r.accel,
        boot_timeout: Duration::from_secs(180),
        transport: r.transport.resolve(),
        cid: 3,
        hostfwd: Vec::new(),
        qemu_args: Vec::new(),
    }
}

async fn daemon(a: VmArgs) -> anyhow::Result<()> {
    let home = home()?;
    if let Some(pid) = running_daemon(&home) {
        bail!("berth is already running (pid {pid})");
    }
    let settings = a.resolve(&home)?;
    end_leftover_qemu(&home).await;
    std::fs::write(home.join("daemon.pid"), std::process::id().to_string())?;
    let state = status::DaemonState { pid: std::process::id(), started_unix: status::now_unix(), vm: None };
    state.write(&home)?;
    let result = run_daemon(&home, &settings, state).await;
    let _ = std::fs::remove_file(status::state_path(&home));
    let _ = std::fs::remove_file(home.join("daemon.pid"));
    for endpoint in [host::docker_endpoint(&home), host::control_endpoint(&home)] {
        // A pipe goes with its server; a socket file stays unless removed.
        if cfg!(unix) {
            let _ = std::fs::remove_file(endpoint);
        }
    }
    result
}

async fn run_daemon(home: &Path, settings: &Resolved, mut state: status::DaemonState) -> anyhow::Result<()> {
    let cfg = machine_config(home, settings);
    // The sockets first, so one in use fails the start before a VM is booted for nothing.
    let control = berth_core::forward::socket::bind(&host::control_endpoint(home)).await?;
    let docker = berth_core::forward::socket::bind(&host::docker_endpoint(home)).await?;
    let mut machine = Machine::start(&cfg).await?;
    state.vm = Some(status::VmState {
        facts: status::VmFacts {
            qemu_pid: machine.qemu_pid(),
            arch: cfg.arch.to_string(),
            accel: machine.accel.accel.to_string(),
            accel_forced: machine.accel.forced,
            accel_reason: machine.accel.reason.clone(),
            transport: machine.transport.kind().to_string(),
            cpus: cfg.cpus,
            memory_mib: cfg.memory_mib,
            boot: machine.boot.clone(),
        },
        disk: cfg.dir.join("data.qcow2"),
        qemu_started_unix: machine.started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64(),
    });
    // Only `berth status` needs it: not worth killing a booted VM for.
    if let Err(e) = state.write(home) {
        tracing::warn!(error = %e, "writing daemon.json");
    }
    // The guest's clock: the host's at boot, and again whenever the host's clock jumps (the
    // host slept, or its clock was set), which users of other desktop VMs see as drift.
    // A VM that was paused and resumed (QMP `RESUME`) has a guest clock that stood still.
    let transport = machine.transport.clone();
    let resumed = std::sync::Arc::new(tokio::sync::Notify::new());
    {
        let (resumed, events) = (resumed.clone(), home.join("vm/qmp-events.sock"));
        tokio::spawn(async move {
            if let Err(e) = berth_core::vm::qmp::watch_resumes(&events, || resumed.notify_one()).await {
                tracing::warn!(error = %e, "watching the VM's pauses");
            }
        });
    }
    tokio::spawn(async move {
        let mut watch = berth_core::vm::ClockWatch::default();
        let mut due = true;
        loop {
            if due {
                match berth_core::vm::sync_clock(transport.as_ref()).await {
                    Ok(()) => tracing::info!("guest clock set from the host's"),
                    Err(e) => tracing::warn!(error = %e, "setting the guest's clock"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    due = watch
                        .jumped(Duration::from_secs(1))
                        .inspect(|d| tracing::info!(?d, "the host's clock jumped"))
                        .is_some();
                }
                _ = resumed.notified() => {
                    tracing::info!("the VM resumed after a pause");
                    due = true;
                }
            }
        }
    });
    tokio::spawn(berth_core::forward::socket::serve(control, machine.transport.clone(), berth_protocol::CONTROL_PORT));
    tokio::spawn(berth_core::forward::socket::serve(docker, machine.transport.clone(), berth_protocol::DOCKER_PORT));
    // Published ports: the guest says which, this machine listens and forwards.
    tokio::spawn(berth_core::forward::ports::PortHost::new(machine.transport.clone()).serve());
    // Shared folders: a missing one is left out (and said), the rest are served.
    let present: Vec<_> = settings
        .shares
        .iter()
        .filter(|s| {
            let ok = s.path.is_dir();
            if !ok {
                tracing::warn!(path = %s.path.display(), "shared folder is not a directory here: not shared");
            }
            ok
        })
        .cloned()
        .collect();
    match berth_core::forward::files::FileServer::new(&present) {
        Ok(server) => {
            if let Some(m) = &machine.shared_memory {
                server.share_memory(m.clone());
            }
            tracing::info!(shares = ?present.iter().map(|s| s.path.display().to_string()).collect::<Vec<_>>(), "sharing folders with the guest");
            tokio::spawn(server.serve(machine.transport.clone()));
        }
        Err(e) => tracing::error!(error = %e, "shared folders"),
    }
    tracing::info!(socket = %host::docker_endpoint(home).display(), transport = %machine.transport.kind(), "Docker socket ready");
    tokio::select! {
        r = host::stop_requested() => r?,
        st = machine.wait() => {
            let how = st.map_or_else(|e| e.to_string(), |s| s.to_string());
            bail!("the VM stopped by itself (QEMU: {how}); the serial log's tail:\n{}", berth_core::vm::tail(&machine.serial, 10))
        }
    }
    tracing::info!("stopping the VM");
    let step = machine.stop(Duration::from_secs(90)).await;
    tracing::info!(?step, "the VM stopped");
    Ok(())
}

/// Whether the Docker socket answers `/_ping`.
async fn docker_answers(sock: &Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = berth_core::local::connect(sock).await else { return false };
    if s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    read.is_ok() && String::from_utf8_lossy(&buf).starts_with("HTTP/1.0 200")
}

async fn start(a: VmArgs) -> anyhow::Result<()> {
    let home = home()?;
    // A bad config file is reported here, not in the daemon's log.
    let r = a.resolve(&home)?;
    let sock = host::docker_endpoint(&home);
    if docker_answers(&sock).await {
        if running_daemon(&home).is_some() {
            println!("berth is running: export DOCKER_HOST={}", host::docker_host(&sock));
            announce_context(&home);
            return Ok(());
        }
        bail!("{} is in use by another server: stop it, or give Berth another BERTH_HOME", sock.display());
    }
    let exe = std::env::current_exe()?;
    let image = match &r.image {
        Some(dir) => dir.clone(),
        // The default image is built on first start, and again when the agent is rebuilt.
        None => {
            let cache = home.join(r.arch.image_dir());
            berth_core::vm::image::ensure(&cache, &exe, r.arch, |line| eprintln!("guest image: {line}")).await?
        }
    };
    let log = std::fs::File::create(home.join("daemon.log"))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("daemon")
        .args([
            "--cpus",
            &r.cpus.to_string(),
            "--memory",
            &r.memory_mib.to_string(),
            "--disk",
            &r.disk_gib.to_string(),
            "--accel",
            &r.accel.to_string(),
            "--arch",
            r.arch.name(),
            "--transport",
            &r.transport.to_string(),
        ])
        .arg("--image")
        .arg(&image)
        .args(r.shares.iter().flat_map(|s| {
            let spec = format!("{}{}", s.path.display(), if s.read_only { ":ro" } else { "" });
            ["--share".to_string(), spec]
        }))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    host::detach(&mut cmd);
    let progress = progress::BootProgress::new(home.join("vm").join("serial.log"));
    let mut child = cmd.spawn().context("starting the berth daemon")?;
    eprintln!("starting the VM (logs: berth logs)...");
    let progress = progress.follow();
    let start = Instant::now();
    loop {
        if docker_answers(&sock).await {
            progress.ready();
            println!("berth is running: export DOCKER_HOST={}", host::docker_host(&sock));
            announce_context(&home);
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

/// Registers the `berth` docker context, as Docker Desktop registers its own; a failure is a
/// warning (the VM is up either way).
fn announce_context(home: &Path) {
    match shell::register_context(home) {
        Ok(_) => eprintln!(
            "docker context \"{}\" registered: `berth context use` makes it docker's current one",
            shell::CONTEXT
        ),
        Err(e) => eprintln!("warning: the docker context was not registered: {e:#}"),
    }
}

async fn stop() -> anyhow::Result<()> {
    let home = home()?;
    let Some(pid) = running_daemon(&home) else {
        println!("berth is not running");
        return Ok(());
    };
    host::request_stop(pid).await?;
    let start = Instant::now();
    while host::alive(pid) {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("the berth daemon (pid {pid}) did not stop in 120 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("berth stopped");
    Ok(())
}

async fn status(json: bool) -> anyhow::Result<()> {
    let home = home()?;
    let report = match running_daemon(&home) {
        Some(pid) => status::gather(&home, pid as u32).await,
        None => status::Report::stopped(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status::render(&report));
    }
    Ok(())
}

fn logs() -> anyhow::Result<()> {
    let home = home()?;
    for f in ["vm/serial.log", "vm/vsock-device.log", "daemon.log"] {
        println!("==> {f}");
        print!("{}", std::fs::read_to_string(home.join(f)).unwrap_or_default());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        // notify's inotify backend warns for every watched directory removed (it unwatches
        // what the kernel already dropped): two lines a directory in daemon.log under `rm -rf`.
        // What matters of it (a watch refused) comes back to the share's watcher, which logs it.
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info,notify=error".into()),
        )
        .with_writer(std::io::stderr)
        // The daemon's stderr is daemon.log: colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let engine = |verb: docker::Verb| -> anyhow::Result<()> {
        let code = rt.block_on(async { docker::run(&home()?, verb).await });
        match code {
            Ok(0) => Ok(()),
            Ok(code) => std::process::exit(code),
            // One line, no trace: what is wrong and, where there is one, what to do.
            Err(e) => {
                eprintln!("{e:#}");
                std::process::exit(match e.downcast_ref::<docker::RunFailed>() {
                    Some(_) => 125,
                    None => 1,
                })
            }
        }
    };
    match cli.command {
        Cmd::Start { containers, .. } if !containers.is_empty() => engine(docker::Verb::Start { containers }),
        Cmd::Stop { time, containers } if !containers.is_empty() => engine(docker::Verb::Stop { time, containers }),
        Cmd::Logs { follow, tail, container: Some(container) } => {
            engine(docker::Verb::Logs { follow, tail, container })
        }
        Cmd::Engine(verb) => engine(verb),
        command => rt.block_on(async {
            match command {
                Cmd::Start { vm, .. } => start(vm).await,
                Cmd::Stop { .. } => stop().await,
                Cmd::Status { json } => status(json).await,
                Cmd::Logs { .. } => logs(),
                Cmd::Daemon(a) => daemon(a).await,
                Cmd::Config { json, action: None } => config::show(&home()?, json),
                Cmd::Config { action: Some(ConfigCmd::Set { pairs }), .. } => config::set(&home()?, &pairs),
                Cmd::Context(ContextCmd::Use { name }) => shell::use_context(&home()?, &name),
                Cmd::Env { shell } => {
                    shell::env(&home()?, shell);
                    Ok(())
                }
                Cmd::Docker { args } => shell::docker(&home()?, &args),
                Cmd::Completion { shell } => {
                    use clap::CommandFactory;
                    clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
                    Ok(())
                }
                Cmd::Engine(_) => unreachable!("handled above"),
            }
        }),
    }
}
