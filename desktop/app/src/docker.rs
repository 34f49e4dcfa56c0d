//! The window's view of the engine: the Docker Engine API on `$BERTH_HOME/docker.sock`, through
//! bollard, the same socket and API the docker CLI uses. Lists come back as small records
//! shaped for the window; long work (pulls, logs, shells) streams over a [`Channel`].

use std::collections::HashMap;

use anyhow::Context;
use bollard::Docker;
use bollard::exec::{ResizeExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig, PortBinding, VolumeCreateOptions};
use bollard::query_parameters as q;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tauri::ipc::{Channel, InvokeResponseBody};
use tokio::io::AsyncWriteExt;

/// A client for the socket (a named pipe on Windows), at the API version the engine speaks
/// (it may be older than bollard's own).
pub async fn connect(socket: &str) -> anyhow::Result<Docker> {
    #[cfg(unix)]
    let docker = Docker::connect_with_unix(socket, 600, bollard::API_DEFAULT_VERSION);
    #[cfg(windows)]
    let docker = Docker::connect_with_named_pipe(socket, 600, bollard::API_DEFAULT_VERSION);
    let docker = docker.with_context(|| format!("the Docker socket {socket}"))?;
    docker.negotiate_version().await.with_context(|| format!("the engine on {socket} does not answer"))
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Port {
    pub ip: String,
    pub private: u16,
    pub public: Option<u16>,
    pub proto: String,
}

#[derive(Debug, Serialize)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image: String,
    pub command: String,
    /// created, running, paused, restarting, exited, dead.
    pub state: String,
    /// "Up 3 minutes", "Exited (0) 2 seconds ago".
    pub status: String,
    pub created: i64,
    pub ports: Vec<Port>,
    /// Names of the volumes it mounts.
    pub volumes: Vec<String>,
}

pub async fn containers(d: &Docker) -> anyhow::Result<Vec<Container>> {
    let list = d.list_containers(Some(q::ListContainersOptionsBuilder::new().all(true).build())).await?;
    Ok(list
        .into_iter()
        .map(|c| Container {
            id: c.id.unwrap_or_default(),
            name: c
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            image: c.image.unwrap_or_default(),
            command: c.command.unwrap_or_default(),
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            status: c.status.unwrap_or_default(),
            created: c.created.unwrap_or_default(),
            ports: c
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| Port {
                    ip: p.ip.unwrap_or_default(),
                    private: p.private_port,
                    public: p.public_port,
                    proto: p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into()),
                })
                .collect(),
            volumes: c.mounts.unwrap_or_default().into_iter().filter_map(|m| m.name).collect(),
        })
        .collect())
}

/// start, stop, restart or remove (forced, with its anonymous volumes, as `docker rm -fv`).
pub async fn container_action(d: &Docker, id: &str, action: &str) -> anyhow::Result<()> {
    match action {
        "start" => d.start_container(id, None::<q::StartContainerOptions>).await?,
        "stop" => d.stop_container(id, None::<q::StopContainerOptions>).await?,
        "restart" => d.restart_container(id, None::<q::RestartContainerOptions>).await?,
        "remove" => {
            d.remove_container(id, Some(q::RemoveContainerOptionsBuilder::new().force(true).v(true).build())).await?
        }
        other => anyhow::bail!("unknown container action {other:?}"),
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Image {
    pub id: String,
    pub tags: Vec<String>,
    pub size: i64,
    pub created: i64,
}

pub async fn images(d: &Docker) -> anyhow::Result<Vec<Image>> {
    let list = d.list_images(Some(q::ListImagesOptionsBuilder::new().build())).await?;
    Ok(list.into_iter().map(|i| Image { id: i.id, tags: i.repo_tags, size: i.size, created: i.created }).collect())
}

pub async fn remove_image(d: &Docker, id: &str) -> anyhow::Result<()> {
    d.remove_image(id, Some(q::RemoveImageOptionsBuilder::new().build()), None).await?;
    Ok(())
}

/// One line of a pull's progress, as the engine sends it.
#[derive(Debug, Clone, Serialize)]
pub struct PullEvent {
    /// The layer, when the line is about one.
    pub id: Option<String>,
    pub status: String,
    pub current: Option<i64>,
    pub total: Option<i64>,
}

/// Pulls `reference`, sending every progress line to `progress`; the stream's own error line
/// ("manifest unknown", "connection refused") becomes the error.
pub async fn pull(d: &Docker, reference: &str, progress: &Channel<PullEvent>) -> anyhow::Result<()> {
    let (repo, tag) = split_reference(reference);
    let opts = q::CreateImageOptionsBuilder::new().from_image(repo).tag(tag).build();
    let mut stream = d.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        let info = item.with_context(|| format!("pulling {reference}"))?;
        if let Some(e) = info.error_detail.and_then(|e| e.message).or(info.error) {
            anyhow::bail!("pulling {reference}: {e}");
        }
        let detail = info.progress_detail.unwrap_or_default();
        let _ = progress.send(PullEvent {
            id: info.id,
            status: info.status.unwrap_or_default(),
            current: detail.current,
            total: detail.total,
        });
    }
    Ok(())
}

/// `name[:tag]` (the tag after the last colon that is not part of a registry's port), or
/// `name@digest`; no tag means `latest`, as `docker pull`.
pub fn split_reference(r: &str) -> (&str, &str) {
    if r.contains('@') {
        return (r, "");
    }
    match r.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (r, "latest"),
    }
}

/// What the window's "Run" form asks for.
#[derive(Debug, Deserialize)]
pub struct RunRequest {
    pub image: String,
    #[serde(default)]
    pub name: String,
    /// `HOST:CONTAINER[/udp]` or `CONTAINER`, separated by spaces or commas.
    #[serde(default)]
    pub ports: String,
    /// A shell command line; empty runs the image's own command.
    #[serde(default)]
    pub command: String,
}

/// Published ports as the engine takes them: (exposed "80/tcp", binding).
pub fn parse_ports(spec: &str) -> anyhow::Result<Vec<(String, PortBinding)>> {
    let mut out = Vec::new();
    for one in spec.split([',', ' ']).filter(|s| !s.is_empty()) {
        let (ports, proto) = one.rsplit_once('/').unwrap_or((one, "tcp"));
        anyhow::ensure!(proto == "tcp" || proto == "udp", "port {one:?}: the protocol must be tcp or udp");
        let (host, container) = match ports.rsplit_once(':') {
            Some((h, c)) => (Some(h), c),
            None => (None, ports),
        };
        let number = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0);
        let c = number(container).with_context(|| format!("port {one:?}: {container:?} is not a port number"))?;
        let h = match host {
            Some(h) => Some(number(h).with_context(|| format!("port {one:?}: {h:?} is not a port number"))?),
            None => None,
        };
        out.push((
            format!("{c}/{proto}"),
            PortBinding { host_ip: None, host_port: Some(h.map(|h| h.to_string()).unwrap_or_default()) },
        ));
    }
    Ok(out)
}

/// Creates and starts a container in the background (`docker run -d`); returns its id.
pub async fn run(d: &Docker, req: &RunRequest) -> anyhow::Result<String> {
    let ports = parse_ports(&req.ports)?;
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for (exposed, b) in &ports {
        bindings.entry(exposed.clone()).or_default().get_or_insert_with(Vec::new).push(b.clone());
    }
    let body = ContainerCreateBody {
        image: Some(req.image.clone()),
        cmd: (!req.command.trim().is_empty()).then(|| vec!["/bin/sh".into(), "-c".into(), req.command.clone()]),
        exposed_ports: (!ports.is_empty()).then(|| ports.iter().map(|(e, _)| (e.clone(), HashMap::new())).collect()),
        host_config: Some(HostConfig { port_bindings: Some(bindings), ..Default::default() }),
        ..Default::default()
    };
    let name = req.name.trim();
    let opts = (!name.is_empty()).then(|| q::CreateContainerOptionsBuilder::new().name(name).build());
    let created =
        d.create_container(opts, body).await.with_context(|| format!("creating a container from {}", req.image))?;
    d.start_container(&created.id, None::<q::StartContainerOptions>)
        .await
        .with_context(|| format!("starting {}", &created.id[..12.min(created.id.len())]))?;
    Ok(created.id)
}

/// The container's logs, the last `tail` lines and then as they come, until `out` is closed
/// (the window dropped it) or the container's output ends.
pub async fn follow_logs(d: Docker, id: String, tail: u32, out: Channel<String>) -> anyhow::Result<()> {
    let opts = q::LogsOptionsBuilder::new().follow(true).stdout(true).stderr(true).tail(&tail.to_string()).build();
    let mut stream = d.logs(&id, Some(opts));
    while let Some(chunk) = stream.next().await {
        let text = String::from_utf8_lossy(&chunk?.into_bytes()).into_owned();
        if out.send(text).is_err() {
            break;
        }
    }
    Ok(())
}

/// A shell in a running container with a terminal: the engine's exec API with a TTY.
pub struct Shell {
    pub exec: String,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

/// Starts `bash` if the image has it, else `sh`, sized `cols` x `rows`; its output goes to
/// `out` as raw bytes until it exits.
pub async fn open_shell(d: &Docker, id: &str, cols: u16, rows: u16, out: Channel) -> anyhow::Result<Shell> {
    let config = ExecConfig {
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), "command -v bash >/dev/null && exec bash || exec sh".into()]),
        env: Some(vec!["TERM=xterm-256color".into()]),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(true),
        ..Default::default()
    };
    let exec = d.create_exec(id, config).await.context("starting a shell")?.id;
    let started = d
        .start_exec(&exec, Some(StartExecOptions { detach: false, tty: true, output_capacity: None }))
        .await
        .context("attaching to the shell")?;
    let StartExecResults::Attached { mut output, input } = started else {
        anyhow::bail!("the engine started the shell detached");
    };
    // The size once the process runs (the engine applies a resize only to a started exec).
    let _ = d.resize_exec(&exec, ResizeExecOptions { width: cols, height: rows }).await;
    tokio::spawn(async move {
        while let Some(Ok(chunk)) = output.next().await {
            if out.send(InvokeResponseBody::Raw(chunk.into_bytes().to_vec())).is_err() {
                break;
            }
        }
        // An empty message: the shell ended.
        let _ = out.send(InvokeResponseBody::Raw(Vec::new()));
    });
    Ok(Shell { exec, input })
}

impl Shell {
    pub async fn write(&mut self, data: &[u8]) -> anyhow::Result<()> {
        self.input.write_all(data).await?;
        self.input.flush().await?;
        Ok(())
    }
}

pub async fn resize_shell(d: &Docker, exec: &str, cols: u16, rows: u16) -> anyhow::Result<()> {
    d.resize_exec(exec, ResizeExecOptions { width: cols, height: rows }).await?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Volume {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    /// Bytes; None when the engine does not say.
    pub size: Option<i64>,
    /// Names of the containers that mount it.
    pub used_by: Vec<String>,
}

/// Volumes with their sizes and the containers that use them: `system df` lists every volume
/// whole, with its size, so one call gives both.
pub async fn volumes(d: &Docker) -> anyhow::Result<Vec<Volume>> {
    let df = d.df(None::<q::DataUsageOptions>).await.context("asking the engine for disk use")?;
    let users = containers(d).await?;
    Ok(df
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| Volume {
            size: v.usage_data.map(|u| u.size).filter(|s| *s >= 0),
            used_by: users.iter().filter(|c| c.volumes.contains(&v.name)).map(|c| c.name.clone()).collect(),
            name: v.name,
            driver: v.driver,
            mountpoint: v.mountpoint,
        })
        .collect())
}

pub async fn create_volume(d: &Docker, name: &str) -> anyhow::Result<String> {
    let req = VolumeCreateOptions { name: (!name.is_empty()).then(|| name.to_string()), ..Default::default() };
    Ok(d.create_volume(req).await?.name)
}

pub async fn remove_volume(d: &Docker, name: &str) -> anyhow::Result<()> {
    d.remove_volume(name, None::<q::RemoveVolumeOptions>).await?;
    Ok(())
}

/// What the dashboard shows of the engine.
#[derive(Debug, Serialize)]
pub struct Engine {
    pub version: String,
    pub api_version: String,
    pub cpus: i64,
    pub memory: i64,
    pub kernel: String,
    pub os: String,
    pub images_size: i64,
    pub containers_size: i64,
    pub volumes_size: i64,
}

pub async fn engine(d: &Docker) -> anyhow::Result<Engine> {
    let info = d.info().await?;
    let version = d.version().await?;
    let df = d.df(None::<q::DataUsageOptions>).await?;
    Ok(Engine {
        version: version.version.unwrap_or_default(),
        api_version: version.api_version.unwrap_or_default(),
        cpus: info.ncpu.unwrap_or_default(),
        memory: info.mem_total.unwrap_or_default(),
        kernel: info.kernel_version.unwrap_or_default(),
        os: info.operating_system.unwrap_or_default(),
        images_size: df.layers_size.unwrap_or_default(),
        containers_size: df.containers.unwrap_or_default().iter().filter_map(|c| c.size_rw).sum(),
        volumes_size: df
            .volumes
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.usage_data.as_ref())
            .map(|u| u.size.max(0))
            .sum(),
    })
}

/// Calls `changed` whenever the engine reports an event (a container started, an image was
/// pulled, ...), so the window refreshes at once instead of polling; returns when the engine's
/// event stream ends.
pub async fn watch_events(d: &Docker, mut changed: impl FnMut(String)) {
    let mut events = d.events(None::<q::EventsOptions>);
    while let Some(Ok(e)) = events.next().await {
        changed(e.typ.map(|t| t.to_string()).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_like_docker_pull() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("127.0.0.1:5000/busybox"), ("127.0.0.1:5000/busybox", "latest"));
        assert_eq!(split_reference("127.0.0.1:5000/busybox:1.36"), ("127.0.0.1:5000/busybox", "1.36"));
        assert_eq!(split_reference("alpine@sha256:ab"), ("alpine@sha256:ab", ""));
    }

    #[test]
    fn ports_parse_or_say_what_is_wrong() {
        let p = parse_ports("8080:80, 53:53/udp 9000").unwrap();
        let got: Vec<_> = p.iter().map(|(e, b)| (e.as_str(), b.host_port.as_deref().unwrap())).collect();
        assert_eq!(got, vec![("80/tcp", "8080"), ("53/udp", "53"), ("9000/tcp", "")]);
        assert!(parse_ports("").unwrap().is_empty());
        let e = parse_ports("8080:http").unwrap_err().to_string();
        assert!(e.contains("\"http\" is not a port number"), "{e}");
        assert!(parse_ports("80/sctp").unwrap_err().to_string().contains("tcp or udp"));
        assert!(parse_ports("0:80").is_err());
    }
}
