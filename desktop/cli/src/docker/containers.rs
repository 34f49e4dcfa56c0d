//! Container verbs: `run`, `ps`, `exec`, `logs`, and start/stop/restart/rm.

use std::collections::HashMap;
use std::pin::Pin;

use anyhow::Context;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, ExecConfig, HostConfig, PortBinding};
use bollard::query_parameters as q;
use clap::Args;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::format::{self, Shape};
use super::tty::{self, DetachKeys, RawMode};

/// `berth run`'s flags, named as docker's.
#[derive(Args)]
pub struct RunArgs {
    /// Run in the background and print the container's ID.
    #[arg(short, long)]
    detach: bool,
    /// Keep standard input open and send it to the container.
    #[arg(short, long)]
    interactive: bool,
    /// Give the container a terminal (with `-i`, this one, in raw mode).
    #[arg(short, long)]
    tty: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Environment variables: `KEY=VALUE`, or `KEY` to pass this shell's value.
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    /// Mounts: `HOST_PATH:PATH[:ro]` or `VOLUME:PATH[:ro]`.
    #[arg(short, long = "volume", value_name = "SOURCE:PATH[:ro]")]
    volume: Vec<String>,
    /// Published ports: `[IP:]HOST_PORT:PORT[/udp]` or `PORT`.
    #[arg(short, long = "publish", value_name = "[IP:]HOST:PORT[/PROTO]")]
    publish: Vec<String>,
    #[arg(long)]
    name: Option<String>,
    /// The working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// The user (`NAME`, `UID` or `UID:GID`).
    #[arg(short, long)]
    user: Option<String>,
    /// The network to join (`bridge`, `host`, `none` or a user-defined one).
    #[arg(long)]
    network: Option<String>,
    /// Replace the image's entrypoint.
    #[arg(long)]
    entrypoint: Option<String>,
    image: String,
    /// The command and its arguments (the image's own when left out).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// `berth exec`'s flags.
#[derive(Args)]
pub struct ExecArgs {
    #[arg(short, long)]
    interactive: bool,
    #[arg(short, long)]
    tty: bool,
    #[arg(short, long)]
    detach: bool,
    #[arg(short, long = "env", value_name = "KEY[=VALUE]")]
    env: Vec<String>,
    #[arg(short, long)]
    workdir: Option<String>,
    #[arg(short, long)]
    user: Option<String>,
    container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// `KEY` alone takes this shell's value (and is left out when it has none), as docker does.
fn env_of(items: &[String]) -> Vec<String> {
    items
        .iter()
        .filter_map(|e| match e.split_once('=') {
            Some(_) => Some(e.clone()),
            None => std::env::var(e).ok().map(|v| format!("{e}={v}")),
        })
        .collect()
}

/// A bind of a relative host path (`./src:/app`) made absolute, as the docker CLI does.
fn bind_of(v: &str) -> anyhow::Result<String> {
    let (source, rest) = v.split_once(':').with_context(|| format!("invalid volume {v:?}: SOURCE:PATH[:ro]"))?;
    if source.starts_with('.') {
        let abs = std::env::current_dir()?.join(source);
        let abs = abs.canonicalize().with_context(|| format!("the bind source {}", abs.display()))?;
        return Ok(format!("{}:{rest}", abs.display()));
    }
    Ok(v.to_owned())
}

type Ports = (HashMap<String, HashMap<(), ()>>, HashMap<String, Option<Vec<PortBinding>>>);

/// `-p` values as the exposed ports and bindings of a create.
fn ports_of(specs: &[String]) -> anyhow::Result<Ports> {
    let (mut exposed, mut bindings) = (HashMap::new(), HashMap::new());
    for spec in specs {
        let (addr, proto) = spec.rsplit_once('/').unwrap_or((spec, "tcp"));
        let parts: Vec<&str> = addr.rsplitn(3, ':').collect();
        let (container, host, ip) = match parts.as_slice() {
            [c] => (*c, "", ""),
            [c, h] => (*c, *h, ""),
            [c, h, ip] => (*c, *h, *ip),
            _ => unreachable!("rsplitn(3) gives one to three parts"),
        };
        if container.parse::<u16>().is_err() || (!host.is_empty() && host.parse::<u16>().is_err()) {
            anyhow::bail!("invalid port {spec:?}: [IP:]HOST_PORT:PORT[/tcp|udp]");
        }
        let key = format!("{container}/{proto}");
        exposed.insert(key.clone(), HashMap::new());
        let list: &mut Option<Vec<PortBinding>> = bindings.entry(key).or_default();
        list.get_or_insert_with(Vec::new).push(PortBinding {
            host_ip: (!ip.is_empty()).then(|| ip.trim_start_matches('[').trim_end_matches(']').to_owned()),
            host_port: Some(host.to_owned()),
        });
    }
    Ok((exposed, bindings))
}

pub async fn run(d: &Docker, a: RunArgs) -> anyhow::Result<i32> {
    let (exposed, bindings) = ports_of(&a.publish)?;
    let binds = a.volume.iter().map(|v| bind_of(v)).collect::<anyhow::Result<Vec<_>>>()?;
    let attach = !a.detach;
    let body = ContainerCreateBody {
        image: Some(a.image.clone()),
        cmd: (!a.command.is_empty()).then(|| a.command.clone()),
        entrypoint: a.entrypoint.clone().map(|e| vec![e]),
        env: Some(env_of(&a.env)),
        tty: Some(a.tty),
        open_stdin: Some(a.interactive),
        stdin_once: Some(a.interactive),
        attach_stdin: Some(a.interactive && attach),
        attach_stdout: Some(attach),
        attach_stderr: Some(attach),
        working_dir: a.workdir.clone(),
        user: a.user.clone(),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(HostConfig {
            binds: (!binds.is_empty()).then_some(binds),
            port_bindings: (!bindings.is_empty()).then_some(bindings),
            auto_remove: Some(a.rm),
            network_mode: a.network.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = a.name.as_deref().map(|n| q::CreateContainerOptionsBuilder::new().name(n).build());
    let created = match d.create_container(opts.clone(), body.clone()).await {
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message })
            if message.contains("No such image") =>
        {
            eprintln!("Unable to find image '{}' locally", a.image);
            super::images::pull_to(d, &a.image, &mut std::io::stderr()).await?;
            d.create_container(opts, body).await?
        }
        other => other?,
    };
    let id = created.id;
    if a.detach {
        d.start_container(&id, None::<q::StartContainerOptions>).await?;
        println!("{id}");
        return Ok(0);
    }
    let attached = d
        .attach_container(
            &id,
            Some(
                q::AttachContainerOptionsBuilder::new()
                    .stream(true)
                    .stdin(a.interactive)
                    .stdout(true)
                    .stderr(true)
                    .build(),
            ),
        )
        .await?;
    // Asked before the start, so an exit right after it is not missed; with --rm, until the
    // container is gone (as the docker CLI waits).
    let condition = if a.rm { "removed" } else { "next-exit" };
    let mut wait =
        Box::pin(d.wait_container(&id, Some(q::WaitContainerOptionsBuilder::new().condition(condition).build())));
    let waiter = tokio::spawn({
        async move {
            match wait.next().await {
                Some(Ok(r)) => r.status_code,
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
                _ => 125,
            }
        }
    });
    d.start_container(&id, None::<q::StartContainerOptions>).await?;
    let resize = {
        let (d, id) = (d.clone(), id.clone());
        move |cols: u16, rows: u16| {
            let (d, id) = (d.clone(), id.clone());
            async move {
                let opts = q::ResizeContainerTTYOptionsBuilder::new().w(cols as i32).h(rows as i32).build();
                let _ = d.resize_container_tty(&id, opts).await;
            }
        }
    };
    let detached = converse(attached.output, attached.input, a.interactive, a.tty, resize).await?;
    if detached {
        eprintln!();
        return Ok(0);
    }
    Ok(waiter.await.unwrap_or(125) as i32)
}

pub async fn exec(d: &Docker, a: ExecArgs) -> anyhow::Result<i32> {
    let config = ExecConfig {
        attach_stdin: Some(a.interactive && !a.detach),
        attach_stdout: Some(!a.detach),
        attach_stderr: Some(!a.detach),
        tty: Some(a.tty),
        env: Some(env_of(&a.env)),
        cmd: Some(a.command.clone()),
        user: a.user.clone(),
        working_dir: a.workdir.clone(),
        ..Default::default()
    };
    let exec = d.create_exec(&a.container, config).await?.id;
    let started =
        d.start_exec(&exec, Some(StartExecOptions { detach: a.detach, tty: a.tty, output_capacity: None })).await?;
    let StartExecResults::Attached { output, input } = started else { return Ok(0) };
    let resize = {
        let (d, exec) = (d.clone(), exec.clone());
        move |cols: u16, rows: u16| {
            let (d, exec) = (d.clone(), exec.clone());
            async move {
                let _ = d.resize_exec(&exec, bollard::exec::ResizeExecOptions { width: cols, height: rows }).await;
            }
        }
    };
    if converse(output, input, a.interactive, a.tty, resize).await? {
        eprintln!();
        return Ok(0);
    }
    let code = d.inspect_exec(&exec).await?.exit_code.unwrap_or(0);
    Ok(code as i32)
}

/// Carries a session: the container's output to ours, and with `interactive` our input to it
/// (in raw mode when it has a terminal and ours is one, its size following our window's).
/// Returns whether the user detached (ctrl-p ctrl-q) rather than the output ending.
async fn converse<F, Fut>(
    mut output: Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    mut input: Pin<Box<dyn AsyncWrite + Send>>,
    interactive: bool,
    tty: bool,
    resize: F,
) -> anyhow::Result<bool>
where
    F: Fn(u16, u16) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // Restored when this returns, whichever way.
    let _raw = if tty && interactive { RawMode::enter()? } else { None };
    let (detach_tx, mut detach_rx) = tokio::sync::oneshot::channel::<()>();
    let mut sender = None;
    if interactive {
        sender = Some(tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut keys = DetachKeys::default();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let (data, detach) = if tty { keys.filter(&buf[..n]) } else { (buf[..n].to_vec(), false) };
                if input.write_all(&data).await.is_err() || input.flush().await.is_err() {
                    return;
                }
                if detach {
                    let _ = detach_tx.send(());
                    return;
                }
            }
            // End of our input: the container's stdin closes too.
            let _ = input.shutdown().await;
        }));
    }
    let mut resizer = None;
    if tty && let Some((cols, rows)) = tty::size() {
        resize(cols, rows).await;
        resizer = Some(tokio::spawn(tty::watch_size(resize)));
    }
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    // Open until the input ends without the detach keys (its sender is dropped then).
    let mut watching = interactive;
    let detached = loop {
        tokio::select! {
            chunk = output.next() => match chunk {
                Some(Ok(LogOutput::StdErr { message })) => {
                    err.write_all(&message).await?;
                    err.flush().await?;
                }
                Some(Ok(o)) => {
                    out.write_all(&o.into_bytes()).await?;
                    out.flush().await?;
                }
                Some(Err(e)) => return Err(e.into()),
                None => break false,
            },
            typed = &mut detach_rx, if watching => match typed {
                Ok(()) => break true,
                Err(_) => watching = false,
            },
        }
    };
    if let Some(s) = sender {
        s.abort();
    }
    if let Some(r) = resizer {
        r.abort();
    }
    Ok(detached)
}

pub async fn logs(d: &Docker, container: &str, follow: bool, tail: &str) -> anyhow::Result<i32> {
    let opts = q::LogsOptionsBuilder::new().follow(follow).stdout(true).stderr(true).tail(tail).build();
    let mut stream = d.logs(container, Some(opts));
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    while let Some(chunk) = stream.next().await {
        match chunk? {
            LogOutput::StdErr { message } => err.write_all(&message).await?,
            o => out.write_all(&o.into_bytes()).await?,
        }
    }
    out.flush().await?;
    Ok(0)
}

pub async fn ps(d: &Docker, all: bool, shape: Shape) -> anyhow::Result<i32> {
    let list = d.list_containers(Some(q::ListContainersOptionsBuilder::new().all(all).build())).await?;
    let name = |c: &bollard::models::ContainerSummary| {
        c.names.clone().unwrap_or_default().first().map(|n| n.trim_start_matches('/').to_owned()).unwrap_or_default()
    };
    let ports = |c: &bollard::models::ContainerSummary| {
        let mut seen: Vec<String> = c
            .ports
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let proto = p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into());
                match p.public_port {
                    Some(public) => {
                        format!("{}:{public}->{}/{proto}", p.ip.clone().unwrap_or_default(), p.private_port)
                    }
                    None => format!("{}/{proto}", p.private_port),
                }
            })
            .collect();
        seen.dedup();
        seen.join(", ")
    };
    match &shape {
        Shape::Quiet => {
            for c in &list {
                println!("{}", format::short_id(c.id.as_deref().unwrap_or("")));
            }
        }
        Shape::Json | Shape::Template(_) => {
            let items: Vec<serde_json::Value> = list
                .iter()
                .map(|c| {
                    let mounts = c.mounts.clone().unwrap_or_default();
                    serde_json::json!({
                        "ID": format::short_id(c.id.as_deref().unwrap_or("")),
                        "Image": c.image,
                        "Command": format!("\"{}\"", c.command.clone().unwrap_or_default()),
                        "CreatedAt": format::created_at(c.created.unwrap_or(0)),
                        "RunningFor": format::ago(c.created.unwrap_or(0)),
                        "Ports": ports(c),
                        "State": c.state.map(|s| s.to_string()).unwrap_or_default(),
                        "Status": c.status,
                        "Names": name(c),
                        "Labels": c.labels.clone().unwrap_or_default().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                        "Networks": c.network_settings.as_ref().and_then(|n| n.networks.as_ref()).map(|n| n.keys().cloned().collect::<Vec<_>>().join(",")).unwrap_or_default(),
                        "Mounts": mounts.iter().map(|m| format::truncate(m.name.as_deref().filter(|n| !n.is_empty()).or(m.source.as_deref()).unwrap_or(""), 15)).collect::<Vec<_>>().join(","),
                        "LocalVolumes": mounts.iter().filter(|m| m.driver.as_deref() == Some("local")).count().to_string(),
                        "Size": format::size(c.size_rw.unwrap_or(0)),
                        "Platform": null,
                    })
                })
                .collect();
            shape.print_objects(&items, &[("ID", "CONTAINER ID"), ("RunningFor", "CREATED")])?;
        }
        Shape::Table => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        format::short_id(c.id.as_deref().unwrap_or("")),
                        c.image.clone().unwrap_or_default(),
                        format!("\"{}\"", format::truncate(c.command.as_deref().unwrap_or(""), 20)),
                        format::ago(c.created.unwrap_or(0)),
                        c.status.clone().unwrap_or_default(),
                        ports(c),
                        name(c),
                    ]
                })
                .collect();
            format::table(&["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], &rows);
        }
    }
    Ok(0)
}

/// What `each` does to every container named.
pub enum Action {
    Start,
    Stop(Option<i32>),
    Restart(Option<i32>),
    Remove { force: bool, volumes: bool },
}

/// Acts on each container in turn, printing its name as given when done and the engine's
/// error when not (the rest still go); exit code 1 if any failed, as with docker.
pub async fn each(d: &Docker, names: &[String], action: Action) -> anyhow::Result<i32> {
    let mut failed = false;
    for name in names {
        let done = match &action {
            Action::Start => d.start_container(name, None::<q::StartContainerOptions>).await,
            Action::Stop(t) => {
                let opts = t.map(|t| q::StopContainerOptionsBuilder::new().t(t).build());
                d.stop_container(name, opts).await
            }
            Action::Restart(t) => {
                let opts = t.map(|t| q::RestartContainerOptionsBuilder::new().t(t).build());
                d.restart_container(name, opts).await
            }
            Action::Remove { force, volumes } => {
                let opts = q::RemoveContainerOptionsBuilder::new().force(*force).v(*volumes).build();
                d.remove_container(name, Some(opts)).await
            }
        };
        match done {
            Ok(()) => println!("{name}"),
            Err(e) => {
                failed = true;
                eprintln!("{}", super::explain(e.into()));
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_flags_read_as_dockers() {
        let (exposed, bindings) = ports_of(&["8080:80".into(), "127.0.0.1:5353:53/udp".into(), "9000".into()]).unwrap();
        assert!(exposed.contains_key("80/tcp") && exposed.contains_key("53/udp") && exposed.contains_key("9000/tcp"));
        let b = bindings["53/udp"].as_ref().unwrap();
        assert_eq!((b[0].host_ip.as_deref(), b[0].host_port.as_deref()), (Some("127.0.0.1"), Some("5353")));
        assert_eq!(bindings["9000/tcp"].as_ref().unwrap()[0].host_port.as_deref(), Some(""));
        assert!(ports_of(&["http:80".into()]).is_err());
    }
}
