//! `berth`'s container verbs: `run`, `ps`, `exec`, `logs`, `images`, `pull`, ... over the
//! Docker API socket the VM serves (`$BERTH_HOME/docker.sock`), with bollard, the same API and
//! socket every docker client uses: there is no second path into the engine. Output is shaped
//! like the docker CLI's, and a container's exit code is `berth run`'s.
//!
//! `BERTH_DOCKER_HOST` (`unix:///path` or a path) points the verbs at another engine, which the
//! tests use to drive a native agent.

mod containers;
mod format;
mod images;
mod objects;
mod transfer;
mod tty;

use std::path::{Path, PathBuf};

use bollard::Docker;
use clap::Subcommand;

pub use containers::{ExecArgs, RunArgs};

/// The verbs that talk to the engine.
#[derive(Subcommand)]
pub enum Verb {
    /// Run a command in a new container: `berth run [-d] [-it] [--rm] IMAGE [COMMAND...]`.
    /// The image is pulled when it is not here; the container's exit code is this command's.
    Run(RunArgs),
    /// List containers (running ones; `-a` for all).
    Ps {
        /// Every container, not only running ones.
        #[arg(short, long)]
        all: bool,
        /// IDs only.
        #[arg(short, long)]
        quiet: bool,
        /// `table` (the default) or `json` (one object a line).
        #[arg(long)]
        format: Option<String>,
    },
    /// Run a command in a running container: `berth exec [-it] CONTAINER COMMAND...`.
    Exec(ExecArgs),
    /// A container's output so far (`-f` to follow, `--tail N` for the last lines only).
    #[command(skip)]
    Logs {
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end to show (`all` for every line).
        #[arg(long, default_value = "all")]
        tail: String,
        container: String,
    },
    /// Start stopped containers.
    #[command(skip)]
    Start {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop running containers (SIGTERM, then SIGKILL after `-t` seconds).
    #[command(skip)]
    Stop {
        /// Seconds to wait before killing.
        #[arg(short, long)]
        time: Option<i32>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart containers.
    Restart {
        #[arg(short, long)]
        time: Option<i32>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers (`-f` also running ones; `-v` their anonymous volumes).
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(short, long)]
        volumes: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Low-level information on containers, images, volumes or networks, as JSON.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List images.
    Images {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        format: Option<String>,
    },
    /// Pull an image from a registry, with progress per layer.
    Pull {
        image: String,
        /// No progress, only the image's name at the end.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Push an image to a registry (`-a` every tag of the repository).
    Push {
        image: String,
        #[arg(short = 'a', long = "all-tags")]
        all_tags: bool,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Remove images.
    Rmi {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Give an image another name: `berth tag SOURCE TARGET`.
    Tag { source: String, target: String },
    /// Make an image of a container's changes: `berth commit CONTAINER [REPO[:TAG]]`.
    Commit {
        /// The commit message.
        #[arg(short, long, default_value = "")]
        message: String,
        #[arg(short, long, default_value = "")]
        author: String,
        container: String,
        target: Option<String>,
    },
    /// Write images to a tar archive (`-o FILE`, or standard output).
    Save {
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Load images from a tar archive (`-i FILE`, or standard input).
    Load {
        #[arg(short, long)]
        input: Option<PathBuf>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a container's filesystem to a tar archive.
    Export {
        #[arg(short, long)]
        output: Option<PathBuf>,
        container: String,
    },
    /// Make an image from a filesystem tarball (`-` for standard input).
    Import {
        /// A Dockerfile instruction to apply (`CMD ["sh"]`, `ENV K=V`, ...); may repeat.
        #[arg(short, long = "change")]
        changes: Vec<String>,
        source: String,
        target: Option<String>,
    },
    /// Copy files between a container and this machine: `berth cp CONTAINER:PATH DEST` or
    /// `berth cp SRC CONTAINER:PATH`.
    Cp { src: String, dst: String },
    /// Build an image from a Dockerfile: `berth build -t NAME DIR`.
    Build(transfer::BuildArgs),
    /// Volumes: ls, create, inspect, rm, prune.
    #[command(subcommand)]
    Volume(objects::VolumeCmd),
    /// Networks: ls, create, inspect, rm, connect, disconnect, prune.
    #[command(subcommand)]
    Network(objects::NetworkCmd),
    /// The engine's disk use (`df`) and clean-up (`prune`).
    #[command(subcommand)]
    System(objects::SystemCmd),
}

/// Where the verbs connect: `BERTH_DOCKER_HOST`, else the VM's socket in `home`.
fn socket(home: &Path) -> PathBuf {
    match std::env::var("BERTH_DOCKER_HOST") {
        Ok(h) if !h.is_empty() => crate::host::endpoint_of(&h),
        _ => crate::host::docker_endpoint(home),
    }
}

/// A client on the socket, at the API version the engine speaks; a socket nobody answers on
/// is the VM not running, said in one line with what to do.
async fn connect(home: &Path) -> anyhow::Result<Docker> {
    let sock = socket(home);
    let not_running = || {
        if std::env::var_os("BERTH_DOCKER_HOST").is_some() {
            anyhow::anyhow!("nothing answers on {}: is the engine running?", sock.display())
        } else {
            anyhow::anyhow!("the Berth VM is not running: run `berth start`")
        }
    };
    if !crate::host::endpoint_may_exist(&sock) {
        return Err(not_running());
    }
    #[cfg(unix)]
    let docker = Docker::connect_with_unix(&sock.to_string_lossy(), 600, bollard::API_DEFAULT_VERSION);
    #[cfg(windows)]
    let docker = Docker::connect_with_named_pipe(&sock.to_string_lossy(), 600, bollard::API_DEFAULT_VERSION);
    let docker = docker.map_err(|_| not_running())?;
    docker.negotiate_version().await.map_err(|_| not_running())
}

/// A `run` that failed before its container ran (docker exits 125 then).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunFailed(String);

/// Runs a verb; `Ok(code)` is the exit code to leave with.
pub async fn run(home: &Path, verb: Verb) -> anyhow::Result<i32> {
    let d = connect(home).await?;
    let result = match verb {
        Verb::Run(args) => {
            return containers::run(&d, args).await.map_err(|e| RunFailed(format!("{:#}", explain(e))).into());
        }
        Verb::Ps { all, quiet, format } => containers::ps(&d, all, format::Shape::of(quiet, format.as_deref())?).await,
        Verb::Exec(args) => containers::exec(&d, args).await,
        Verb::Logs { follow, tail, container } => containers::logs(&d, &container, follow, &tail).await,
        Verb::Start { containers } => containers::each(&d, &containers, containers::Action::Start).await,
        Verb::Stop { time, containers } => containers::each(&d, &containers, containers::Action::Stop(time)).await,
        Verb::Restart { time, containers } => {
            containers::each(&d, &containers, containers::Action::Restart(time)).await
        }
        Verb::Rm { force, volumes, containers } => {
            containers::each(&d, &containers, containers::Action::Remove { force, volumes }).await
        }
        Verb::Inspect { names } => objects::inspect(&d, &names).await,
        Verb::Images { quiet, format } => images::list(&d, format::Shape::of(quiet, format.as_deref())?).await,
        Verb::Pull { image, quiet } => images::pull(&d, &image, quiet).await.map(|()| 0),
        Verb::Push { image, all_tags, quiet } => images::push(&d, &image, all_tags, quiet).await,
        Verb::Rmi { force, images } => images::remove(&d, &images, force).await,
        Verb::Tag { source, target } => images::tag(&d, &source, &target).await,
        Verb::Commit { message, author, container, target } => {
            transfer::commit(&d, &container, target.as_deref(), &message, &author).await
        }
        Verb::Save { output, images } => transfer::save(&d, &images, output.as_deref()).await,
        Verb::Load { input, quiet } => transfer::load(&d, input.as_deref(), quiet).await,
        Verb::Export { output, container } => transfer::export(&d, &container, output.as_deref()).await,
        Verb::Import { changes, source, target } => transfer::import(&d, &source, target.as_deref(), &changes).await,
        Verb::Cp { src, dst } => transfer::cp(&d, &socket(home), &src, &dst).await,
        Verb::Build(args) => transfer::build(&d, args).await,
        Verb::Volume(cmd) => objects::volume(&d, cmd).await,
        Verb::Network(cmd) => objects::network(&d, cmd).await,
        Verb::System(cmd) => objects::system(&d, cmd).await,
    };
    result.map_err(explain)
}

/// An engine's refusal as the docker CLI prints it ("Error response from daemon: ..."); a
/// connection that broke as the engine having gone away.
fn explain(e: anyhow::Error) -> anyhow::Error {
    match e.downcast_ref::<bollard::errors::Error>() {
        Some(bollard::errors::Error::DockerResponseServerError { message, .. }) => {
            anyhow::anyhow!("Error response from daemon: {message}")
        }
        Some(bollard::errors::Error::DockerStreamError { error }) => anyhow::anyhow!("{error}"),
        Some(
            bollard::errors::Error::IOError { .. }
            | bollard::errors::Error::HyperResponseError { .. }
            | bollard::errors::Error::HyperLegacyError { .. },
        ) => anyhow::anyhow!("the engine went away mid-request ({e}): see `berth status` and `berth logs`"),
        _ => e,
    }
}
