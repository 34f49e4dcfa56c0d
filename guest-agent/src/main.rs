//! `berth-agent`: serves the Docker Engine API over Berth's engine.
#![recursion_limit = "256"]
//!
//! `berth-agent serve --listen unix:///PATH --data-root DIR` runs the whole engine on any Linux
//! machine; in the VM the same binary is PID 1. `berth-agent shim ...` is the single-threaded
//! helper the engine re-executes to create container processes (see runtime's `shim`).

mod api;
mod init;
mod listen;
mod serial;
mod shares;
mod trim;

use std::path::PathBuf;

use anyhow::Context;
use berth_runtime::container::launch::HelperCommand;
use berth_runtime::{BridgeConfig, Engine, EngineConfig};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "berth-agent",
    version,
    about = "Berth's engine: the Docker Engine API over namespaces, cgroups and overlayfs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the Docker Engine API.
    Serve {
        /// Where to listen: unix:///path/to.sock or vsock://:PORT. May repeat.
        #[arg(long, required = true)]
        listen: Vec<String>,
        /// Directory that holds all engine state.
        #[arg(long)]
        data_root: PathBuf,
        /// A registry (host:port) to reach over plain HTTP. Loopback registries always are.
        #[arg(long)]
        insecure_registry: Vec<String>,
        /// The default bridge's address and prefix (the gateway containers route through).
        #[arg(long, default_value = "172.29.0.1/16", value_parser = parse_cidr)]
        bridge_ip: (std::net::Ipv4Addr, u8),
        /// Where to serve the host control API (unix:///PATH or vsock://:PORT). May repeat.
        #[arg(long)]
        control: Vec<String>,
        /// Where the user's machine is reached from here (in the VM: QEMU's 10.0.2.2), so
        /// pulls from registries on loopback go to the user's machine.
        #[arg(long)]
        host_loopback: Option<String>,
        /// The default bridge's interface name.
        #[arg(long, default_value = "berth0")]
        bridge_name: String,
        /// Where to serve the echo service transports are tested and measured with. May repeat.
        #[arg(long)]
        echo: Vec<String>,
        /// Where to accept multiplexed sessions that reach every service by port
        /// (vsock://:PORT, unix:///PATH, serial://NAME). May repeat.
        #[arg(long)]
        mux: Vec<String>,
        /// Where the host daemon's published-ports channel and its forwarded connections
        /// arrive, for transports without multiplexing (vsock://:PORT). May repeat.
        #[arg(long)]
        ports: Vec<String>,
        #[arg(long)]
        forward: Vec<String>,
        /// Where the host's shared-folder streams arrive, likewise. May repeat.
        #[arg(long)]
        shares: Vec<String>,
        /// Mount shared folders below this directory instead of at their own paths (for an
        /// agent on the file server's own machine: tests).
        #[arg(long, hide = true)]
        share_prefix: Option<PathBuf>,
        /// The file the host's file server shares as memory for data (an agent on its own
        /// machine: tests); in the VM it is the ivshmem device.
        #[arg(long, hide = true)]
        share_memory: Option<PathBuf>,
        /// Trim the data root's file system after deletions (in the VM, so the host's disk
        /// image shrinks back).
        #[arg(long)]
        trim: bool,
    },
    /// PID 1 of Berth's VM: mounts, modules, network, data disk, then runs `serve`.
    Init,
    /// Internal: the single-threaded helper that creates a container process.
    #[command(hide = true)]
    Shim { mode: String, spec: PathBuf },
}

fn main() -> anyhow::Result<()> {
    // The kernel starts /init (a link to this binary) with no arguments.
    if std::process::id() == 1 && std::env::args_os().len() == 1 {
        return init::main();
    }
    let cli = Cli::parse();
    match cli.command {
        // Before any runtime or thread exists: the helper forks.
        Command::Shim { mode, spec } => berth_runtime::container::shim::main(&mode, &spec),
        // Single-threaded too: it forks the engine and reaps orphans.
        Command::Init => init::main(),
        Command::Serve {
            listen,
            data_root,
            insecure_registry,
            bridge_ip,
            bridge_name,
            host_loopback,
            control,
            echo,
            mux,
            ports,
            forward,
            shares,
            share_prefix,
            share_memory,
            trim,
        } => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| "info".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            // Four workers, not two: a worker in a system call on a shared folder waits for the
            // FUSE answer, which other workers must carry from the host.
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
            let bridge = BridgeConfig { name: bridge_name, gateway: bridge_ip.0, prefix: bridge_ip.1 };
            let listeners = Listeners { docker: listen, control, echo, mux, ports, forward, shares };
            let opts =
                ServeOptions { insecure: insecure_registry, bridge, host_loopback, share_prefix, share_memory, trim };
            rt.block_on(serve(listeners, data_root, opts))
        }
    }
}

/// How long containers restarted with the engine wait for the host's shared folders.
const SHARES_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (ip, prefix) = s.split_once('/').ok_or("expected ADDRESS/PREFIX, e.g. 172.29.0.1/16")?;
    let ip = ip.parse().map_err(|e| format!("{ip}: {e}"))?;
    let prefix = prefix.parse::<u8>().ok().filter(|p| (8..=30).contains(p)).ok_or("the prefix must be 8 to 30")?;
    Ok((ip, prefix))
}

/// The addresses of every service (`--listen` is the Docker API's).
struct Listeners {
    docker: Vec<String>,
    control: Vec<String>,
    echo: Vec<String>,
    mux: Vec<String>,
    ports: Vec<String>,
    forward: Vec<String>,
    shares: Vec<String>,
}

/// How `serve` runs the engine.
struct ServeOptions {
    insecure: Vec<String>,
    bridge: BridgeConfig,
    host_loopback: Option<String>,
    share_prefix: Option<PathBuf>,
    share_memory: Option<PathBuf>,
    trim: bool,
}

async fn serve(listeners: Listeners, data_root: PathBuf, opts: ServeOptions) -> anyhow::Result<()> {
    let ServeOptions { insecure, bridge, host_loopback, share_prefix, share_memory, trim } = opts;
    let program = std::env::current_exe().context("finding this program's path")?;
    let engine = Engine::open(EngineConfig {
        root: data_root.clone(),
        helper: HelperCommand { program, args: vec!["shim".into()] },
        insecure_registries: insecure,
        host_loopback,
        bridge,
    })
    .with_context(|| format!("opening the engine on {}", data_root.display()))?;
    if trim {
        trim::spawn(engine.clone(), data_root.clone());
    }
    let stop = CancellationToken::new();
    // Published ports are listened on by the host daemon too, whenever one is connected (in
    // the VM); with none, they stay the engine's own, as on any Linux machine.
    let ports = api::ports::HostPorts::default();
    engine.set_host_side(std::sync::Arc::new(ports.clone()));
    let services = listen::Services {
        docker: api::docker::router(engine.clone()),
        engine: std::sync::Arc::new(engine.clone()),
        shutdown: CancellationToken::new(),
        ports,
        shares: shares::Shares::below(share_prefix, share_memory),
    };
    engine.set_settle(std::sync::Arc::new(services.shares.clone()));
    let mut servers = Vec::new();
    for (specs, port) in [
        (&listeners.docker, berth_protocol::DOCKER_PORT),
        (&listeners.control, berth_protocol::CONTROL_PORT),
        (&listeners.echo, berth_protocol::ECHO_PORT),
        (&listeners.ports, berth_protocol::PORTS_PORT),
        (&listeners.forward, berth_protocol::FORWARD_PORT),
        (&listeners.shares, berth_protocol::SHARES_PORT),
    ] {
        for spec in specs {
            let addr = listen::parse(spec)?;
            if matches!(addr, listen::ListenAddr::Serial(_)) {
                anyhow::bail!("{spec}: a serial port carries only multiplexed sessions: use --mux {spec}");
            }
            let bound = listen::bind(&addr).await?;
            let services = services.clone();
            servers.push(tokio::spawn(listen::accept_loop(bound, stop.clone(), move |io| services.handle(port, io))));
        }
    }
    for spec in &listeners.mux {
        match listen::bind(&listen::parse(spec)?).await {
            Ok(bound) => servers.push(tokio::spawn(services.clone().serve_mux(bound, stop.clone()))),
            // The VM offers a serial port only when the host chose that transport.
            Err(e) if spec.starts_with("serial://") => tracing::info!(error = %e, "no serial mux"),
            Err(e) => return Err(e),
        }
    }
    let shutdown_requested = services.shutdown.clone();
    tracing::info!(
        root = %data_root.display(),
        docker = ?listeners.docker,
        control = ?listeners.control,
        mux = ?listeners.mux,
        "berth-agent serving"
    );
    // Containers that come back with the engine may bind shared folders: in the VM they wait
    // (a while) for the host's file server, which connects right after the agent answers, so
    // their bind mounts are of the shares and not of empty directories under them.
    let restart = {
        let (engine, shares, wait) = (engine.clone(), services.shares.clone(), !listeners.shares.is_empty());
        let stop = stop.clone();
        tokio::spawn(async move {
            if wait {
                tokio::select! {
                    greeted = shares.greeted(SHARES_WAIT) => if !greeted {
                        tracing::info!("no shared folders from the host yet: restarting containers without them");
                    },
                    _ = stop.cancelled() => return,
                }
            }
            engine.start_restartable().await;
        })
    };

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = shutdown_requested.cancelled() => tracing::info!("shutdown requested over the control channel"),
    }
    stop.cancel();
    // Done at once if it was still waiting; containers it was starting are stopped next.
    let _ = restart.await;
    engine.shutdown().await;
    for s in servers {
        s.abort();
    }
    if shutdown_requested.is_cancelled() && nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        // The guest's init: it syncs, unmounts and powers the VM off.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), nix::sys::signal::Signal::SIGTERM);
    }
    tracing::info!("stopped");
    Ok(())
}
