//! Container lifecycle: create, start, stop, kill, wait, remove, list, logs and attach.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Ctr, Engine, EngineError, Lifecycle, Output, io_ctx};
use crate::container::cgroup::{Cgroup, Limits};
use crate::container::launch::{self};
use crate::container::logs::{LogWriter, Stream};
use crate::container::security::{Confinement, Policy};
use crate::container::shim::{MountPoint, NetMode, PidMode, ProcessSpec, RunSpec};
use crate::container::{ContainerRecord, NetRecord, State, Status, argv, merge_config, parse_signal};
use crate::image::ImageError;
use crate::model::{ContainerConfig, HostConfig, ImageConfig, now_rfc3339};
use crate::names::{random_id, random_name, valid_container_name};
use crate::network;

/// A create request: Docker's `Config` with its `HostConfig`.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: Option<String>,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    /// `NetworkingConfig.EndpointsConfig`, by network name.
    pub endpoints: std::collections::BTreeMap<String, crate::container::Endpoint>,
}

/// `POST /containers/{id}/wait?condition=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitCondition {
    NotRunning,
    NextExit,
    Removed,
}

fn not_found(id: &str) -> EngineError {
    EngineError::NotFound(format!("No such container: {id}"))
}

impl Engine {
    pub(crate) fn load_containers(&self) -> Result<(), EngineError> {
        let dir = self.inner.root.join("containers");
        std::fs::create_dir_all(&dir).map_err(io_ctx("creating containers dir"))?;
        let mut map = self.inner.containers.lock().expect("containers lock");
        for entry in std::fs::read_dir(&dir).map_err(io_ctx("reading containers dir"))?.flatten() {
            let path = entry.path().join("config.json");
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let Ok(mut rec) = serde_json::from_slice::<ContainerRecord>(&bytes) else {
                tracing::warn!(path = %path.display(), "skipping unreadable container record");
                continue;
            };
            if rec.restarting() {
                // Its restart was due when the engine went: the policy is applied at start.
                rec.state.status = Status::Exited;
            } else if rec.running() {
                // The engine stopped while it ran (crash or kill): the process is gone with it.
                rec.state.status = Status::Exited;
                rec.state.pid = 0;
                rec.state.exit_code = 128 + 9;
                rec.state.finished_at = now_rfc3339();
            }
            let ctr = Ctr::new(rec, entry.path());
            let _ = ctr.update(|_| {});
            map.insert(ctr.snapshot().id.clone(), ctr);
        }
        Ok(())
    }

    /// What an engine start does after loading: removes `--rm` containers that were running
    /// when the engine went away (their removal was due), and starts containers with restart
    /// policy `always` / `unless-stopped`.
    pub async fn start_restartable(&self) {
        let stale: Vec<String> = self
            .all_containers()
            .iter()
            .map(|c| c.snapshot())
            .filter(|r| r.host_config.auto_remove && r.state.status == Status::Exited && !r.state.started_at.is_empty())
            .map(|r| r.id)
            .collect();
        for id in stale {
            let _ = self.remove(&id, true, true).await;
        }
        let ids: Vec<String> = self
            .all_containers()
            .into_iter()
            .filter(|c| {
                let rec = c.snapshot();
                matches!(rec.host_config.restart_policy.name.as_str(), "always")
                    || (rec.host_config.restart_policy.name == "unless-stopped" && !rec.manually_stopped)
            })
            .map(|c| c.snapshot().id)
            .collect();
        for id in ids {
            if let Err(e) = self.start(&id).await {
                tracing::warn!(container = %id, error = %e, "restart at engine start failed");
            }
        }
    }

    pub(crate) fn all_containers(&self) -> Vec<Arc<Ctr>> {
        self.inner.containers.lock().expect("containers lock").values().cloned().collect()
    }

    /// Finds a container by full ID, name, or unique ID prefix.
    pub(crate) fn ctr(&self, name_or_id: &str) -> Result<Arc<Ctr>, EngineError> {
        let map = self.inner.containers.lock().expect("containers lock");
        let name = name_or_id.trim_start_matches('/');
        if let Some(c) = map.get(name) {
            return Ok(c.clone());
        }
        if let Some(c) = map.values().find(|c| c.rec.lock().expect("lock").name == name) {
            return Ok(c.clone());
        }
        let mut found = map.iter().filter(|(id, _)| !name.is_empty() && id.starts_with(name));
        match (found.next(), found.next()) {
            (Some((_, c)), None) => Ok(c.clone()),
            (Some(_), Some(_)) => {
                Err(EngineError::InvalidArgument(format!("multiple IDs found with provided prefix: {name}")))
            }
            _ => Err(not_found(name_or_id)),
        }
    }

    pub fn container(&self, name_or_id: &str) -> Result<ContainerRecord, EngineError> {
        Ok(self.ctr(name_or_id)?.snapshot())
    }

    pub fn containers(&self) -> Vec<ContainerRecord> {
        let mut v: Vec<ContainerRecord> = self.all_containers().iter().map(|c| c.snapshot()).collect();
        v.sort_by(|a, b| b.created.cmp(&a.created));
        v
    }

    /// The image's config blob.
    pub fn image_config(&self, image_id: &str) -> Result<ImageConfig, EngineError> {
        let bytes = self.inner.stores.content.read(image_id).map_err(ImageError::from)?;
        Ok(serde_json::from_slice(&bytes).map_err(ImageError::BadConfig)?)
    }

    /// Creates a container; returns its ID and warnings.
    pub async fn create(&self, req: CreateRequest) -> Result<(String, Vec<String>), EngineError> {
        let image = {
            let images = self.inner.stores.images.lock().expect("image store lock");
            images
                .resolve(&req.config.image)
                .cloned()
                .map_err(|_| EngineError::NotFound(format!("No such image: {}", req.config.image)))?
        };
        let image_config = self.image_config(&image.id)?;
        let mut config = merge_config(&req.config, &image_config)?;
        let mut host = req.host_config;
        let log = host.extra.get("LogConfig").cloned().unwrap_or(serde_json::Value::Null);
        let log_opts: std::collections::BTreeMap<String, String> =
            log.get("Config").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
        let driver =
            crate::container::logs::check_config(log.get("Type").and_then(|t| t.as_str()).unwrap_or(""), &log_opts)
                .map_err(EngineError::InvalidArgument)?;
        crate::container::logs::Rotation::of(&log_opts).map_err(EngineError::InvalidArgument)?;
        host.extra.insert("LogConfig".into(), serde_json::json!({"Type": driver, "Config": log_opts}));
        // One runtime, reported as dockerd's default (`--runtime runc` is accepted).
        match host.extra.get("Runtime").and_then(|r| r.as_str()).unwrap_or("") {
            "" | "runc" => {
                host.extra.insert("Runtime".into(), serde_json::json!("runc"));
            }
            other => return Err(EngineError::InvalidArgument(format!("unknown or invalid runtime name: {other}"))),
        }
        // A memory limit without a swap limit allows as much swap again, as dockerd has it
        // (the cgroup's own default is unlimited swap).
        if host.memory > 0 && host.memory_swap == 0 {
            host.memory_swap = host.memory.saturating_mul(2);
        }
        pid_mode_of(&host)?;
        let attach = self.attach_of(&host.network_mode)?;
        let endpoints = req.endpoints;
        let macs =
            endpoints.values().map(|e| e.mac.as_str()).chain(config.extra.get("MacAddress").and_then(|m| m.as_str()));
        for mac in macs.filter(|m| !m.is_empty()) {
            if network::parse_mac(mac).is_none() {
                return Err(EngineError::InvalidArgument(format!("invalid MAC address: {mac}")));
            }
        }
        for ep in endpoints.values().filter(|e| !e.ipv4.is_empty() || !e.ipv6.is_empty()) {
            match &attach {
                super::networks::Attach::Bridge(_, Some(n)) if n.record.user_subnet => {
                    if !ep.ipv4.is_empty() && ep.ipv4.parse::<std::net::Ipv4Addr>().is_err() {
                        return Err(EngineError::InvalidArgument(format!("invalid IPv4 address: {}", ep.ipv4)));
                    }
                    if !ep.ipv6.is_empty() && ep.ipv6.parse::<std::net::Ipv6Addr>().is_err() {
                        return Err(EngineError::InvalidArgument(format!("invalid IPv6 address: {}", ep.ipv6)));
                    }
                }
                super::networks::Attach::Bridge(_, Some(_)) => {
                    return Err(EngineError::InvalidArgument(
                        "user specified IP address is supported only when connecting to networks with user configured subnets"
                            .into(),
                    ));
                }
                _ => {
                    return Err(EngineError::InvalidArgument(
                        "user specified IP address is supported on user defined networks only".into(),
                    ));
                }
            }
        }
        let id = random_id();
        if config.hostname.is_empty() {
            config.hostname = id[..12].to_owned();
        }
        // On a blocking thread: a bind source in a shared folder is a FUSE call answered over
        // the VM's mux, whose tasks must not wait behind a worker blocked in that call (a task
        // woken by this one sits in its worker's slot that others cannot steal).
        let mounts = {
            let (me, c, h) = (self.clone(), config.clone(), host.clone());
            super::blocking(move || me.resolve_mounts(&c, &h)).await?
        };
        // Bad capabilities, security options or devices fail the create, as with dockerd.
        crate::container::security::policy(&host)?;
        let name = {
            let map = self.inner.containers.lock().expect("containers lock");
            let name = match &req.name {
                Some(n) if !n.is_empty() => {
                    let n = n.trim_start_matches('/').to_owned();
                    if !valid_container_name(&n) {
                        return Err(EngineError::InvalidArgument(format!(
                            "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                        )));
                    }
                    n
                }
                _ => loop {
                    let n = random_name();
                    if !map.values().any(|c| c.rec.lock().expect("lock").name == n) {
                        break n;
                    }
                },
            };
            if let Some(other) = map.values().find(|c| c.rec.lock().expect("lock").name == name) {
                return Err(EngineError::Conflict(format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                    other.snapshot().id
                )));
            }
            name
        };
        let args = argv(&config);
        let dir = self.inner.root.join("containers").join(&id);
        std::fs::create_dir_all(&dir).map_err(io_ctx("creating container dir"))?;
        let rec = ContainerRecord {
            id: id.clone(),
            name,
            created: now_rfc3339(),
            image_id: image.id.clone(),
            path: args.first().cloned().unwrap_or_default(),
            args: args.iter().skip(1).cloned().collect(),
            config,
            host_config: host,
            state: State::default(),
            restart_count: 0,
            mounts,
            net: NetRecord::default(),
            chain: image.chain(),
            manually_stopped: false,
            endpoints,
            moved_to: None,
        };
        let ctr = Ctr::new(rec, dir);
        ctr.update(|_| {})?;
        self.container_event(&ctr.snapshot(), "create", &[]);
        self.inner.stores.snapshots.prepare(&id, &ctr.snapshot().chain).map_err(ImageError::from)?;
        self.inner.containers.lock().expect("containers lock").insert(id.clone(), ctr);
        tracing::info!(container = %id, "created");
        Ok((id, vec![]))
    }

    /// Starts a created or exited container.
    pub async fn start(&self, name_or_id: &str) -> Result<(), EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let _op = ctr.op.lock().await;
        let rec = ctr.snapshot();
        if rec.running() {
            return Err(EngineError::NotModified("container already started".into()));
        }
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(EngineError::Conflict("the engine is shutting down".into()));
        }
        let auto_remove = rec.host_config.auto_remove;
        let result = self.start_locked(&ctr, rec).await;
        drop(_op);
        if result.is_err() && auto_remove {
            // dockerd removes an auto-remove container whose start failed; `docker run --rm`
            // waits for that removal.
            let _ = self.remove(&ctr.snapshot().id, true, true).await;
        }
        result
    }

    async fn start_locked(&self, ctr: &Arc<Ctr>, rec: ContainerRecord) -> Result<(), EngineError> {
        let id = rec.id.clone();
        // Legacy links: the linked containers' addresses in /etc/hosts and their ports and
        // environment as variables (for this run; not kept in the record, as dockerd).
        let (link_hosts, link_env) = self.links_of(&rec)?;
        let mut rec = rec;
        rec.config.env.extend(link_env);
        let overlay = self.inner.stores.snapshots.prepare(&id, &rec.chain).map_err(ImageError::from)?;
        let (mode, bridge, user_net) = match self.attach_of(rec.first_network())? {
            super::networks::Attach::Bridge(b, n) => (network::Mode::Bridge, Some(b), n),
            super::networks::Attach::None => (network::Mode::None, None, None),
            super::networks::Attach::Host => (network::Mode::Host, None, None),
        };
        let net = if mode == network::Mode::Host { NetMode::Host } else { NetMode::New };
        if let Some(n) = &user_net {
            self.ensure_network(n).await?;
        }
        // The first network's endpoint settings: its address, IPv6 address and link-local ones.
        let first_ep = rec
            .endpoints
            .get(user_net.as_ref().map_or("bridge", |n| n.record.name.as_str()))
            .or(rec.endpoints.get(rec.first_network()));
        let link_local = match (first_ep, &bridge) {
            (Some(ep), Some(_)) => super::networks::link_local_of(ep)?,
            _ => Vec::new(),
        };
        let preferred = user_net.as_ref().and(first_ep).and_then(|e| e.ipv4.parse().ok());
        let preferred6 = user_net.as_ref().and(first_ep).and_then(|e| e.ipv6.parse().ok());
        let mac = rec
            .endpoints
            .values()
            .find_map(|e| network::parse_mac(&e.mac))
            .or_else(|| rec.config.extra.get("MacAddress").and_then(|m| m.as_str()).and_then(network::parse_mac));
        let (mut eth0, published) = self.prepare_network(&rec, bridge.clone(), preferred, preferred6).await?;
        if let Some(e) = eth0.as_mut() {
            e.mac = mac;
            e.link_local = link_local;
        }
        let extras = if eth0.is_some() {
            match self.prepare_extras(&rec).await {
                Ok(x) => x,
                Err(e) => {
                    if let (Some(e), Some(b)) = (&eth0, &bridge) {
                        b.release_all(e);
                    }
                    return Err(e);
                }
            }
        } else {
            Vec::new()
        };
        let extras = Arc::new(extras);
        let release = |_: &Engine| {
            if let (Some(e), Some(b)) = (&eth0, &bridge) {
                b.release_all(e);
            }
            super::networks::release(&extras);
        };
        // A user-defined network's DNS server: the first network's, or the first of the others.
        let nameserver = user_net.as_ref().map(|n| n.record.pool.gateway).or(extras.first().map(|x| x.eth.gateway));
        let etc_files = match self.write_etc_files(ctr, &rec, eth0.as_ref(), nameserver, &link_hosts) {
            Ok(f) => f,
            Err(e) => {
                release(self);
                return Err(e);
            }
        };
        let (policy, confinement) = match self.confine(&rec).await {
            Ok(s) => s,
            Err(e) => {
                release(self);
                return Err(e);
            }
        };
        let mut spec = run_spec(ctr, &rec, overlay, etc_files, eth0.clone(), net, &policy, confinement.clone());
        spec.pid = self.pid_mode(&rec)?;
        let spec_path = ctr.dir.join("spec.json");
        if let Err(e) = std::fs::write(&spec_path, serde_json::to_vec(&spec).expect("spec serialises")) {
            release(self);
            return Err(io_ctx("writing spec")(e));
        }
        let limits = limits_of(&rec.host_config);
        let cgroup = match Cgroup::create(&id, &limits, &policy.device_rules) {
            Ok(c) => c,
            Err(e) => {
                release(self);
                return Err(e.into());
            }
        };
        if let Err(e) = self.activate_volumes(&rec) {
            release(self);
            cgroup.remove();
            return Err(e);
        }
        let cg = cgroup.clone();
        let attach_bridge = bridge.clone();
        let attach_eth0 = eth0.clone();
        let id2 = id.clone();
        let plugged = extras.clone();
        let launched = launch::launch(
            &self.inner.helper,
            "run",
            &spec_path,
            rec.config.tty,
            rec.config.open_stdin,
            move |pid| async move {
                cg.add(pid).map_err(|e| e.to_string())?;
                if let (Some(e), Some(b)) = (&attach_eth0, &attach_bridge) {
                    b.attach(&id2, pid, e).await.map_err(|e| e.to_string())?;
                }
                for x in plugged.iter() {
                    super::networks::plug(pid, x).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            },
        )
        .await;
        let launched = match launched {
            Ok(l) => l,
            Err(e) => {
                release(self);
                self.deactivate_volumes(&rec);
                cgroup.remove();
                let msg = e.to_string();
                ctr.update(|r| {
                    r.state.error = msg;
                    r.state.exit_code = 127;
                })?;
                return Err(e.into());
            }
        };
        *ctr.cgroup.lock().expect("lock") = Some(cgroup);
        *ctr.confinement.lock().expect("lock") = Some(confinement);
        let net_record = match (&eth0, &published) {
            (Some(e), Some(p)) => NetRecord {
                mode: user_net.as_ref().map(|n| n.record.name.clone()).unwrap_or_else(|| "bridge".into()),
                ip: e.address.to_string(),
                gateway: e.gateway.to_string(),
                prefix: e.prefix,
                mac: e.mac_text(),
                ports: p.bindings.clone(),
                others: extras.iter().map(|x| (x.name().to_owned(), x.attachment())).collect(),
                link: String::new(),
                v6: e.v6,
            },
            _ => NetRecord {
                mode: if mode == network::Mode::Host { "host" } else { "none" }.into(),
                ..Default::default()
            },
        };
        *ctr.published.lock().expect("lock") = published;
        *ctr.pty.lock().expect("lock") = launched.io.pty.clone();
        ctr.stdin.lock().expect("lock").pump(launched.io.stdin);
        let pid = launched.pid;
        ctr.update(|r| {
            r.state = State {
                status: Status::Running,
                pid,
                exit_code: 0,
                error: String::new(),
                started_at: now_rfc3339(),
                finished_at: String::new(),
                oom_killed: false,
                paused: false,
                health: None,
            };
            r.manually_stopped = false;
            r.net = net_record;
        })?;
        let started = ctr.snapshot();
        self.network_events(&started, "connect");
        self.volume_events(&started, true);
        self.container_event(&started, "start", &[]);
        self.watch_health(ctr);
        tracing::info!(container = %id, pid, "started");

        let log_path = ctr.dir.join(format!("{id}-json.log"));
        let writer = if crate::container::logs::driver_of(&rec.host_config) == "none" {
            LogWriter::discard()
        } else {
            let opts: std::collections::BTreeMap<String, String> = rec
                .host_config
                .extra
                .get("LogConfig")
                .and_then(|c| c.get("Config"))
                .and_then(|c| serde_json::from_value(c.clone()).ok())
                .unwrap_or_default();
            let rotation = crate::container::logs::Rotation::of(&opts).unwrap_or_default();
            LogWriter::open_rotating(&log_path, rotation).map_err(io_ctx("opening the log"))?
        };
        let writer = Arc::new(std::sync::Mutex::new(writer));
        let mut pumps =
            vec![tokio::spawn(super::io::pump(launched.io.stdout, Stream::Stdout, ctr.output.clone(), writer.clone()))];
        if let Some(err) = launched.io.stderr {
            pumps.push(tokio::spawn(super::io::pump(err, Stream::Stderr, ctr.output.clone(), writer.clone())));
        }
        let engine = self.clone();
        let ctr2 = ctr.clone();
        let mut helper = launched.helper;
        let span = tracing::info_span!("container", id = %&id[..12]);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let status = helper.wait().await;
                // Before the output's end: what is left may hold it open.
                kill_leftovers(&ctr2).await;
                for p in pumps {
                    let _ = p.await;
                }
                if let Ok(mut w) = writer.lock() {
                    let _ = w.flush_partial();
                }
                // What it left in shared folders is on the user's machine before its end is
                // told.
                engine.settle_files().await;
                ctr2.output.send(Output::End).await;
                let code = status.map(launch::exit_code).unwrap_or(-1);
                engine.on_exit(ctr2, code).await;
            },
            span,
        ));
        Ok(())
    }

    /// The container's security policy, and its seccomp filter (compiled once per profile and
    /// capability set).
    async fn confine(&self, rec: &ContainerRecord) -> Result<(Policy, Confinement), EngineError> {
        let host = rec.host_config.clone();
        let cache = self.inner.root.join("seccomp");
        super::blocking(move || -> Result<_, EngineError> {
            let policy = crate::container::security::policy(&host)?;
            let confinement = policy.confinement(&cache)?;
            Ok((policy, confinement))
        })
        .await
    }

    /// Removes container `name_or_id`'s legacy link `alias` (`docker rm --link c/alias`): it
    /// takes effect at the container's next start, and inspect no longer shows it.
    pub fn remove_link(&self, name_or_id: &str, alias: &str) -> Result<(), EngineError> {
        let missing = || EngineError::NotFound(format!("No such container: {name_or_id}/{alias}"));
        let ctr = self.ctr(name_or_id).map_err(|_| missing())?;
        let links = links_of_record(&ctr.snapshot());
        let keep: Vec<String> = links.iter().filter(|(_, a)| a != alias).map(|(n, a)| format!("{n}:{a}")).collect();
        if keep.len() == links.len() {
            return Err(missing());
        }
        ctr.update(|r| {
            if keep.is_empty() {
                r.host_config.extra.remove("Links");
            } else {
                r.host_config.extra.insert("Links".into(), serde_json::json!(keep));
            }
        })?;
        Ok(())
    }

    /// The PID namespace `rec` starts in (`HostConfig.PidMode`): another container's must be
    /// running, as dockerd has it.
    fn pid_mode(&self, rec: &ContainerRecord) -> Result<PidMode, EngineError> {
        let name = match pid_mode_of(&rec.host_config)? {
            PidAsked::Own => return Ok(PidMode::New),
            PidAsked::Host => return Ok(PidMode::Host),
            PidAsked::Of(name) => name,
        };
        let other = self.container(name).map_err(|_| {
            EngineError::NotFound(format!(
                "cannot join PID of a non running container: {name}: No such container: {name}"
            ))
        })?;
        if !other.running() || other.state.pid <= 0 {
            return Err(EngineError::Conflict(format!("cannot join PID of a non running container: {name}")));
        }
        Ok(PidMode::Join(other.state.pid))
    }

    /// `HostConfig.Links` (`name[:alias]`): /etc/hosts lines and environment variables, as
    /// dockerd makes them (`ALIAS_PORT_80_TCP_ADDR`, `ALIAS_ENV_X`, `ALIAS_NAME`, ...).
    fn links_of(&self, rec: &ContainerRecord) -> Result<(Vec<String>, Vec<String>), EngineError> {
        let (mut hosts, mut env) = (Vec::new(), Vec::new());
        for (name, alias) in links_of_record(rec) {
            let (name, alias) = (name.as_str(), alias.as_str());
            let other = self
                .container(name)
                .map_err(|_| EngineError::InvalidArgument(format!("could not get container for {name}")))?;
            if !other.running() || other.net.ip.is_empty() {
                return Err(EngineError::InvalidArgument(format!(
                    "Cannot link to a non running container: /{} AS /{}/{alias}",
                    other.name, rec.name
                )));
            }
            let ip = &other.net.ip;
            hosts.push(format!("{ip}\t{alias} {} {}", &other.id[..12], other.name));
            let prefix = alias.to_ascii_uppercase().replace(['-', '.'], "_");
            env.push(format!("{prefix}_NAME=/{}/{alias}", rec.name));
            let mut ports: Vec<(u16, String)> = other
                .config
                .exposed_ports
                .keys()
                .filter_map(|p| {
                    let (n, proto) = p.split_once('/').unwrap_or((p, "tcp"));
                    Some((n.parse().ok()?, proto.to_owned()))
                })
                .collect();
            ports.sort();
            if let Some((port, proto)) = ports.first() {
                env.push(format!("{prefix}_PORT={proto}://{ip}:{port}"));
            }
            for (port, proto) in &ports {
                let key = format!("{prefix}_PORT_{port}_{}", proto.to_ascii_uppercase());
                env.push(format!("{key}={proto}://{ip}:{port}"));
                env.push(format!("{key}_ADDR={ip}"));
                env.push(format!("{key}_PORT={port}"));
                env.push(format!("{key}_PROTO={proto}"));
            }
            for e in &other.config.env {
                let key = e.split('=').next().unwrap_or("");
                if !matches!(key, "HOME" | "PATH" | "HOSTNAME") {
                    env.push(format!("{prefix}_ENV_{e}"));
                }
            }
        }
        Ok((hosts, env))
    }

    /// Bridge networking: an address, and the published ports bound before the process exists,
    /// so a taken port fails the start cleanly (and releases the address).
    async fn prepare_network(
        &self,
        rec: &ContainerRecord,
        bridge: Option<Arc<network::Bridge>>,
        preferred: Option<std::net::Ipv4Addr>,
        preferred6: Option<std::net::Ipv6Addr>,
    ) -> Result<(Option<network::Eth0>, Option<network::ports::Published>), EngineError> {
        let Some(bridge) = bridge else { return Ok((None, None)) };
        bridge.ensure().await.map_err(|e| EngineError::Network(Box::new(e)))?;
        let eth0 = bridge.allocate(preferred, preferred6).map_err(|e| EngineError::Network(Box::new(e)))?;
        let endpoint = format!("{} ({})", rec.name, &rec.id[..12]);
        let hc = &rec.host_config;
        let host = self.inner.host_side.lock().expect("lock").clone();
        match network::ports::publish(
            hc.port_bindings.as_ref().unwrap_or(&std::collections::BTreeMap::new()),
            hc.publish_all_ports,
            &rec.config.exposed_ports,
            eth0.address,
            &endpoint,
            host,
        )
        .await
        {
            Ok(p) => Ok((Some(eth0), Some(p))),
            Err(e) => {
                bridge.release_all(&eth0);
                Err(EngineError::Network(Box::new(e)))
            }
        }
    }

    /// `start_locked` behind a boxed future: the restart path calls it from a task it spawns,
    /// and the explicit `Send` bound breaks the cycle the compiler cannot see through.
    fn start_boxed<'a>(
        &'a self,
        ctr: &'a Arc<Ctr>,
        rec: ContainerRecord,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), EngineError>> + Send + 'a>> {
        Box::pin(self.start_locked(ctr, rec))
    }

    /// Records an exit, then applies the restart policy or auto-removal.
    async fn on_exit(&self, ctr: Arc<Ctr>, code: i64) {
        {
            // Close what the last run left and queue afresh for the next one.
            let mut q = ctr.stdin.lock().expect("lock");
            let _ = q.tx.send(None);
            *q = super::StdinQueue::new();
        }
        *ctr.pty.lock().expect("lock") = None;
        ctr.confinement.lock().expect("lock").take();
        let mut oom_killed = false;
        if let Some(cg) = ctr.cgroup.lock().expect("lock").take() {
            oom_killed = cg.oom_kills() > 0;
            cg.remove();
        }
        // Closed before the next start can bind the same ports again.
        let published = ctr.published.lock().expect("lock").take();
        if let Some(p) = published {
            p.close().await;
        }
        let snapshot = ctr.snapshot();
        super::networks::release_others(self, &snapshot);
        self.release_first(&snapshot.net);
        let policy = ctr.snapshot().host_config.restart_policy.clone();
        let restart = |r: &ContainerRecord| {
            !r.manually_stopped
                && !self.inner.shutting_down.load(Ordering::SeqCst)
                && match policy.name.as_str() {
                    "always" | "unless-stopped" => true,
                    "on-failure" => {
                        code != 0
                            && (policy.maximum_retry_count == 0
                                || (r.restart_count as i64) < policy.maximum_retry_count)
                    }
                    _ => false,
                }
        };
        let rec = match ctr.update(|r| {
            r.net = NetRecord::default();
            // Decided under the record's lock, so a stop or rm now sees either state whole.
            r.state.status = if restart(r) { Status::Restarting } else { Status::Exited };
            r.state.pid = 0;
            r.state.exit_code = code;
            r.state.finished_at = now_rfc3339();
            r.state.paused = false;
            r.state.oom_killed = oom_killed;
        }) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "saving exit state");
                ctr.snapshot()
            }
        };
        if oom_killed {
            self.container_event(&rec, "oom", &[]);
        }
        self.container_event(&rec, "die", &[("exitCode", &code.to_string())]);
        self.network_events(&rec, "disconnect");
        self.deactivate_volumes(&rec);
        self.volume_events(&rec, false);
        tracing::info!(container = %rec.id, code, "exited");
        ctr.life.send_modify(|l| {
            l.exits += 1;
            l.exit_code = code;
        });
        if rec.restarting() {
            let delay = Duration::from_millis(100 * 2u64.pow(rec.restart_count.min(10) as u32));
            let engine = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _op = ctr.op.lock().await;
                let rec = ctr.snapshot();
                // Stopped, removed or started by hand meanwhile (each ends the restart).
                if !rec.restarting() || ctr.life.borrow().removed {
                    return;
                }
                let rec = ctr.update(|r| r.restart_count += 1).unwrap_or(rec);
                if let Err(e) = engine.start_boxed(&ctr, rec).await {
                    tracing::warn!(error = %e, "restart failed");
                    let _ = ctr.update(|r| {
                        if r.restarting() {
                            r.state.status = Status::Exited;
                        }
                    });
                }
            });
        } else if rec.host_config.auto_remove {
            let id = rec.id.clone();
            if let Err(e) = self.remove(&id, true, true).await {
                tracing::warn!(container = %id, error = %e, "auto-remove failed");
            }
        }
    }

    /// Sends `signal` to the container's process.
    pub async fn kill(&self, name_or_id: &str, signal: &str) -> Result<(), EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let sig =
            parse_signal(signal).ok_or_else(|| EngineError::InvalidArgument(format!("Invalid signal: {signal}")))?;
        let rec = ctr.snapshot();
        if rec.restarting() {
            // No process to signal: a signal that ends it ends the restart, as with dockerd.
            if sig == libc::SIGKILL || sig == libc::SIGTERM || sig == libc::SIGINT {
                self.end_restart(&ctr)?;
            }
            return Ok(());
        }
        if !rec.running() || rec.state.pid <= 0 {
            return Err(EngineError::Conflict(format!(
                "Cannot kill container: {}: container {} is not running",
                name_or_id, rec.id
            )));
        }
        if sig == libc::SIGKILL || sig == libc::SIGTERM || sig == libc::SIGINT {
            ctr.update(|r| r.manually_stopped = true)?;
        }
        self.container_event(&rec, "kill", &[("signal", &sig.to_string())]);
        let mut life = ctr.life.subscribe();
        let exits = life.borrow_and_update().exits;
        // SAFETY: kill(2) with a pid the engine started and a valid signal number.
        unsafe { libc::kill(rec.state.pid, sig) };
        if sig == libc::SIGKILL {
            // A frozen process takes its signal when thawed (dockerd thaws after SIGKILL).
            if rec.state.paused {
                self.thaw(&ctr)?;
            }
            // As dockerd does, the answer waits for the exit to be recorded, so a client's
            // next call (`docker kill x && docker rm x`, an inspect) finds it stopped. Bounded:
            // a process stuck in the kernel (on a share whose host went away) can take longer.
            if tokio::time::timeout(KILL_WAIT, next_exit(&mut life, exits)).await.is_err() {
                tracing::warn!(container = %rec.id, "SIGKILL sent; the container has not exited yet");
            }
        }
        Ok(())
    }

    /// Stops the container: its stop signal, then SIGKILL after `timeout` seconds.
    pub async fn stop(&self, name_or_id: &str, timeout: Option<i64>, signal: Option<&str>) -> Result<(), EngineError> {
        self.stop_quietly(name_or_id, timeout, signal).await?;
        self.container_event(&self.container(name_or_id)?, "stop", &[]);
        Ok(())
    }

    /// [`Engine::stop`] without its `stop` event (a forced removal has none).
    async fn stop_quietly(
        &self,
        name_or_id: &str,
        timeout: Option<i64>,
        signal: Option<&str>,
    ) -> Result<(), EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let rec = ctr.update(|r| r.manually_stopped = true)?;
        if rec.restarting() {
            // Stopping it between an exit and its restart cancels the restart.
            return self.end_restart(&ctr);
        }
        if !rec.running() || rec.state.pid <= 0 {
            return Err(EngineError::NotModified("container already stopped".into()));
        }
        let sig = signal
            .or(rec.config.stop_signal.as_deref())
            .map(|s| parse_signal(s).ok_or_else(|| EngineError::InvalidArgument(format!("Invalid signal: {s}"))))
            .transpose()?
            .unwrap_or(libc::SIGTERM);
        let timeout = timeout.or(rec.config.stop_timeout).unwrap_or(10);
        let mut life = ctr.life.subscribe();
        let exits = life.borrow().exits;
        self.container_event(&rec, "kill", &[("signal", &sig.to_string())]);
        // SAFETY: kill(2) on the container's pid.
        unsafe { libc::kill(rec.state.pid, sig) };
        if rec.state.paused {
            // Stopping a paused container thaws it so it can take the signal, as dockerd does.
            self.thaw(&ctr)?;
        }
        let exited = next_exit(&mut life, exits);
        if timeout < 0 {
            exited.await;
        } else if tokio::time::timeout(Duration::from_secs(timeout as u64), exited).await.is_err() {
            let pid = ctr.snapshot().state.pid;
            // A SIGKILL already sent is not sent (or announced) twice.
            if pid > 0 && sig != libc::SIGKILL {
                self.container_event(&rec, "kill", &[("signal", &libc::SIGKILL.to_string())]);
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            next_exit(&mut ctr.life.subscribe(), exits).await;
        }
        Ok(())
    }

    /// A container waiting for its policy's restart is stopped instead (by hand: its policy
    /// does not bring it back).
    fn end_restart(&self, ctr: &Ctr) -> Result<(), EngineError> {
        ctr.update(|r| {
            r.manually_stopped = true;
            if r.restarting() {
                r.state.status = Status::Exited;
            }
        })?;
        Ok(())
    }

    pub async fn restart(&self, name_or_id: &str, timeout: Option<i64>) -> Result<(), EngineError> {
        match self.stop(name_or_id, timeout, None).await {
            Ok(()) | Err(EngineError::NotModified(_)) => {}
            Err(e) => return Err(e),
        }
        self.start(name_or_id).await?;
        self.container_event(&self.container(name_or_id)?, "restart", &[]);
        Ok(())
    }

    /// Registers a wait for `condition` now and returns a future of the exit code, so an API
    /// can answer its headers at once (the docker CLI waits for them before it starts).
    pub fn wait(
        &self,
        name_or_id: &str,
        condition: WaitCondition,
    ) -> Result<impl std::future::Future<Output = i64> + Send + 'static, EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let mut life = ctr.life.subscribe();
        let start = *life.borrow_and_update();
        let rec = ctr.snapshot();
        // A container waiting for its restart is up: the wait ends at its next exit, as dockerd's.
        let already = (condition == WaitCondition::NotRunning && !rec.up()).then_some(rec.state.exit_code);
        Ok(async move {
            if let Some(code) = already {
                return code;
            }
            loop {
                let now = *life.borrow_and_update();
                let done = match condition {
                    WaitCondition::Removed => now.removed,
                    _ => now.exits > start.exits || now.removed,
                };
                if done {
                    return now.exit_code;
                }
                if life.changed().await.is_err() {
                    let l: Lifecycle = *life.borrow();
                    return l.exit_code;
                }
            }
        })
    }

    /// Removes a container (`force` kills a running one first).
    pub async fn remove(&self, name_or_id: &str, force: bool, remove_volumes: bool) -> Result<(), EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let rec = ctr.snapshot();
        if rec.restarting() {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "You cannot remove a restarting container {}. Stop the container before attempting removal or force remove",
                    rec.id
                )));
            }
            self.end_restart(&ctr)?;
        }
        if rec.running() {
            if !force {
                return Err(EngineError::Conflict(format!(
                    "cannot remove container \"/{}\": container is running: stop the container before removing or force remove",
                    rec.name
                )));
            }
            self.stop_quietly(&rec.id, Some(0), Some("SIGKILL")).await.or_else(|e| match e {
                EngineError::NotModified(_) => Ok(()),
                e => Err(e),
            })?;
        }
        let _op = ctr.op.lock().await;
        if ctr.life.borrow().removed {
            return Ok(());
        }
        self.inner.containers.lock().expect("containers lock").remove(&rec.id);
        let (dir, snapshots, id) = (ctr.dir.clone(), self.inner.stores.snapshots.clone(), rec.id.clone());
        super::blocking(move || {
            let _ = std::fs::remove_dir_all(&dir);
            snapshots.remove_active(&id).map_err(ImageError::from)
        })
        .await?;
        if remove_volumes {
            for m in rec.mounts.iter().filter(|m| m.kind == "volume") {
                if let Ok(v) = self.inner.volumes.get(&m.name)
                    && v.anonymous
                    && self.volume_users(&v.name).is_empty()
                    && self.inner.volumes.remove(&v.name).is_ok()
                {
                    self.inner.events.emit("volume", "destroy", &v.name, &[("driver", "local")]);
                }
            }
        }
        ctr.life.send_modify(|l| l.removed = true);
        self.container_event(&rec, "destroy", &[]);
        tracing::info!(container = %rec.id, "removed");
        Ok(())
    }

    pub fn rename(&self, name_or_id: &str, new_name: &str) -> Result<(), EngineError> {
        let new_name = new_name.trim_start_matches('/');
        if !valid_container_name(new_name) {
            return Err(EngineError::InvalidArgument(format!(
                "Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        let ctr = self.ctr(name_or_id)?;
        let map = self.inner.containers.lock().expect("containers lock");
        if let Some(other) = map.values().find(|c| c.rec.lock().expect("lock").name == new_name) {
            return Err(EngineError::Conflict(format!(
                "Conflict. The container name \"/{new_name}\" is already in use by container \"{}\". You have to remove (or rename) that container to be able to reuse that name.",
                other.snapshot().id
            )));
        }
        drop(map);
        let old = ctr.snapshot().name;
        let rec = ctr.update(|r| r.name = new_name.to_owned())?;
        self.container_event(&rec, "rename", &[("oldName", &format!("/{old}"))]);
        Ok(())
    }

    /// Names of containers that mount volume `name`.
    pub fn volume_users(&self, name: &str) -> Vec<String> {
        self.all_containers()
            .iter()
            .map(|c| c.snapshot())
            .filter(|r| r.mounts.iter().any(|m| m.kind == "volume" && m.name == name))
            .map(|r| r.id)
            .collect()
    }

    /// Stops every running container (for engine shutdown) and waits for them.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let running: Vec<String> = self.containers().into_iter().filter(|r| r.running()).map(|r| r.id).collect();
        let stops = running.iter().map(|id| {
            let engine = self.clone();
            let id = id.clone();
            async move {
                let ctr = engine.ctr(&id).ok();
                let rec = ctr.as_ref().map(|c| c.snapshot());
                let timeout = rec.and_then(|r| r.config.stop_timeout).unwrap_or(10);
                let _ = engine.stop_for_shutdown(&id, timeout).await;
            }
        });
        futures_util::future::join_all(stops).await;
    }

    async fn stop_for_shutdown(&self, id: &str, timeout: i64) -> Result<(), EngineError> {
        // Not marked manually stopped: `unless-stopped` containers come back with the engine.
        let ctr = self.ctr(id)?;
        let rec = ctr.snapshot();
        let mut life = ctr.life.subscribe();
        let exits = life.borrow_and_update().exits;
        let sig = rec.config.stop_signal.as_deref().and_then(parse_signal).unwrap_or(libc::SIGTERM);
        // SAFETY: kill(2) on the container's pid.
        unsafe { libc::kill(rec.state.pid, sig) };
        let wait = next_exit(&mut life, exits);
        if tokio::time::timeout(Duration::from_secs(timeout.max(0) as u64), wait).await.is_err() {
            // SAFETY: as above.
            unsafe { libc::kill(ctr.snapshot().state.pid, libc::SIGKILL) };
            next_exit(&mut ctr.life.subscribe(), exits).await;
        }
        Ok(())
    }
}

/// What the helper needs to create the container's first process.
#[allow(clippy::too_many_arguments)]
fn run_spec(
    ctr: &Ctr,
    rec: &ContainerRecord,
    overlay: crate::snapshot::OverlayMount,
    etc_files: Vec<(PathBuf, String)>,
    eth0: Option<network::Eth0>,
    net: NetMode,
    policy: &Policy,
    confinement: Confinement,
) -> RunSpec {
    let sysctls = sysctls_of(rec, net, eth0.as_ref());
    RunSpec {
        rootfs: ctr.dir.join("rootfs"),
        overlay,
        readonly_rootfs: rec.host_config.readonly_rootfs,
        mounts: rec
            .mounts
            .iter()
            .map(|m| MountPoint {
                kind: if m.kind == "tmpfs" { "tmpfs".into() } else { "bind".into() },
                source: PathBuf::from(&m.source),
                destination: m.destination.clone(),
                readonly: !m.rw,
                options: m.options.clone(),
            })
            .collect(),
        hostname: if net == NetMode::Host { String::new() } else { rec.config.hostname.clone() },
        net,
        pid: PidMode::New,
        etc_files,
        shm_size: rec.host_config.shm_size.max(0) as u64,
        eth0,
        devices: policy.devices.clone(),
        privileged: policy.privileged,
        unmasked_paths: policy.unmasked_paths,
        sysctls,
        process: ProcessSpec {
            args: argv(&rec.config),
            env: rec.config.env.clone(),
            cwd: if rec.config.working_dir.is_empty() { "/".into() } else { rec.config.working_dir.clone() },
            user: rec.config.user.clone(),
            tty: rec.config.tty,
            console_size: console_size(rec.host_config.extra.get("ConsoleSize")),
            confinement,
            groups: rec.host_config.group_add.clone().unwrap_or_default(),
        },
    }
}

/// The kernel parameters a container starts with, then `--sysctl` (`HostConfig.Sysctls`),
/// which may undo them. In a network namespace of its own, IPv6 is off unless its first
/// network has it, as dockerd 20.10 has it (a link-local address and `::1` that no network
/// routes made programs that prefer IPv6 behave otherwise than under dockerd); with it,
/// `eth0` takes its addresses with no duplicate address detection (dockerd adds them with
/// `IFA_F_NODAD`), so they answer at once. Networks joined later turn IPv6 on themselves.
fn sysctls_of(rec: &ContainerRecord, net: NetMode, eth0: Option<&network::Eth0>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let ipv6 = eth0.is_some_and(|e| e.v6.is_some() || e.link_local.iter().any(std::net::IpAddr::is_ipv6));
    // A kernel without IPv6 has nothing to turn off.
    if net == NetMode::New && std::path::Path::new("/proc/sys/net/ipv6").exists() {
        let settings: &[(&str, &str)] = if ipv6 {
            &[("net.ipv6.conf.eth0.accept_dad", "0")]
        } else {
            &[("net.ipv6.conf.all.disable_ipv6", "1"), ("net.ipv6.conf.default.disable_ipv6", "1")]
        };
        out.extend(settings.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    }
    let given: std::collections::BTreeMap<String, String> =
        rec.host_config.extra.get("Sysctls").and_then(|s| serde_json::from_value(s.clone()).ok()).unwrap_or_default();
    out.extend(given);
    out
}

/// The cgroup limits a HostConfig asks for.
pub(crate) fn limits_of(hc: &crate::model::HostConfig) -> Limits {
    Limits {
        memory: hc.memory,
        memory_swap: hc.memory_swap,
        nano_cpus: hc.nano_cpus,
        cpu_quota: hc.cpu_quota,
        cpu_period: hc.cpu_period,
        cpu_shares: hc.cpu_shares,
        pids: hc.pids_limit,
    }
}

/// `ConsoleSize` as `[rows, columns]`.
pub fn console_size(v: Option<&serde_json::Value>) -> Option<(u16, u16)> {
    let a = v?.as_array()?;
    Some((a.first()?.as_u64()? as u16, a.get(1)?.as_u64()? as u16))
}

/// How long a kill with SIGKILL waits for the container's exit before it answers anyway.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Waits for the container's exit after its `exits`-th (or for its record to go).
async fn next_exit(life: &mut tokio::sync::watch::Receiver<crate::engine::Lifecycle>, exits: u64) {
    while life.borrow_and_update().exits == exits {
        if life.changed().await.is_err() {
            break;
        }
    }
}

/// Kills what outlived a container's first process, as runc does: in a PID namespace of its
/// own the kernel has done it, but in the engine's or another container's (`--pid`) its
/// children and exec'd processes are still there, in its cgroup.
async fn kill_leftovers(ctr: &Ctr) {
    for _ in 0..50 {
        let left = ctr.cgroup.lock().expect("lock").as_ref().map(|cg| cg.pids()).unwrap_or_default();
        if left.is_empty() {
            return;
        }
        for pid in left {
            // SAFETY: kill(2) has no memory effects; these are the container's own processes.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tracing::warn!(dir = %ctr.dir.display(), "processes of an ended container outlived SIGKILL");
}

/// The PID namespace a create asked for (`HostConfig.PidMode`).
enum PidAsked<'a> {
    Own,
    Host,
    /// That of the container so named.
    Of(&'a str),
}

/// `HostConfig.PidMode` checked as dockerd checks it: empty, `host` or `container:NAME`.
fn pid_mode_of(host: &crate::model::HostConfig) -> Result<PidAsked<'_>, EngineError> {
    match host.extra.get("PidMode").map(|m| m.as_str().unwrap_or("?")).unwrap_or("") {
        "" => Ok(PidAsked::Own),
        "host" => Ok(PidAsked::Host),
        m => match m.strip_prefix("container:") {
            Some(name) if !name.is_empty() => Ok(PidAsked::Of(name)),
            _ => Err(EngineError::InvalidArgument(format!("invalid PID mode: {m}"))),
        },
    }
}

/// A container's legacy links (`HostConfig.Links`, each `name[:alias]` as the client gave it,
/// or dockerd's `/name:/container/alias`) as (linked container's name, alias) pairs.
pub fn links_of_record(rec: &ContainerRecord) -> Vec<(String, String)> {
    let links: Vec<String> =
        rec.host_config.extra.get("Links").and_then(|l| serde_json::from_value(l.clone()).ok()).unwrap_or_default();
    links
        .iter()
        .map(|link| {
            let (name, alias) = link.split_once(':').unwrap_or((link, link));
            let alias = alias.rsplit('/').next().unwrap_or(alias);
            (name.trim_start_matches('/').to_owned(), alias.to_owned())
        })
        .collect()
}
