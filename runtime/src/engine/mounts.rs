//! What a container sees of the outside: its mounts (binds, volumes, tmpfs, the image's
//! VOLUMEs) and the /etc files the engine writes for it (hostname, hosts, resolv.conf).

use std::path::PathBuf;

use super::{Ctr, Engine, EngineError, io_ctx};
use crate::container::{ContainerRecord, MountRecord};
use crate::model::{ContainerConfig, HostConfig};
use crate::network;

impl Engine {
    /// Turns `-v`, `--mount`, `--tmpfs` and the image's VOLUMEs into mounts.
    pub(super) fn resolve_mounts(
        &self,
        config: &ContainerConfig,
        host: &HostConfig,
    ) -> Result<Vec<MountRecord>, EngineError> {
        let mut out: Vec<MountRecord> = Vec::new();
        let invalid = |m: String| EngineError::InvalidArgument(m);
        for bind in host.binds.iter().flatten() {
            let parts: Vec<&str> = bind.split(':').collect();
            let (src, dst, opts) = match parts.as_slice() {
                [d] => ("", *d, ""),
                [s, d] => (*s, *d, ""),
                [s, d, o] => (*s, *d, *o),
                _ => return Err(invalid(format!("invalid volume specification: '{bind}'"))),
            };
            if !dst.starts_with('/') {
                return Err(invalid(format!(
                    "invalid volume specification: '{bind}': invalid mount config for type \"volume\": invalid mount path: '{dst}' mount path must be absolute"
                )));
            }
            let rw = !opts.split(',').any(|o| o == "ro");
            if src.starts_with('/') {
                if !std::path::Path::new(src).exists() {
                    std::fs::create_dir_all(src).map_err(io_ctx(format!("creating bind source {src}")))?;
                }
                out.push(MountRecord {
                    kind: "bind".into(),
                    name: String::new(),
                    source: src.into(),
                    destination: dst.into(),
                    rw,
                    options: String::new(),
                    mode: opts.into(),
                });
            } else {
                let v = self.mount_volume(src)?;
                out.push(MountRecord {
                    kind: "volume".into(),
                    name: v.name,
                    source: v.mountpoint.display().to_string(),
                    destination: dst.into(),
                    rw,
                    options: String::new(),
                    mode: opts.into(),
                });
            }
        }
        for m in &host.mounts {
            if !m.target.starts_with('/') {
                return Err(invalid(format!(
                    "invalid mount config for type \"{}\": invalid mount path: '{}' mount path must be absolute",
                    m.kind, m.target
                )));
            }
            match m.kind.as_str() {
                "bind" => {
                    if !std::path::Path::new(&m.source).exists() {
                        return Err(invalid(format!(
                            "invalid mount config for type \"bind\": bind source path does not exist: {}",
                            m.source
                        )));
                    }
                    out.push(MountRecord {
                        kind: "bind".into(),
                        name: String::new(),
                        source: m.source.clone(),
                        destination: m.target.clone(),
                        rw: !m.read_only,
                        options: String::new(),
                        mode: String::new(),
                    });
                }
                "volume" => {
                    let v = self.mount_volume(&m.source)?;
                    out.push(MountRecord {
                        kind: "volume".into(),
                        name: v.name,
                        source: v.mountpoint.display().to_string(),
                        destination: m.target.clone(),
                        rw: !m.read_only,
                        options: String::new(),
                        mode: String::new(),
                    });
                }
                "tmpfs" => {
                    let mut opts = Vec::new();
                    if let Some(t) = m.extra.get("TmpfsOptions") {
                        if let Some(s) = t.get("SizeBytes").and_then(|v| v.as_i64()) {
                            opts.push(format!("size={s}"));
                        }
                        if let Some(md) = t.get("Mode").and_then(|v| v.as_u64()) {
                            opts.push(format!("mode={md:o}"));
                        }
                    }
                    out.push(MountRecord {
                        kind: "tmpfs".into(),
                        name: String::new(),
                        source: String::new(),
                        destination: m.target.clone(),
                        rw: !m.read_only,
                        options: opts.join(","),
                        mode: String::new(),
                    });
                }
                other => return Err(invalid(format!("mount type {other:?} is not supported"))),
            }
        }
        for (dst, opts) in &host.tmpfs {
            out.push(MountRecord {
                kind: "tmpfs".into(),
                name: String::new(),
                source: String::new(),
                destination: dst.clone(),
                rw: true,
                options: opts.clone(),
                mode: String::new(),
            });
        }
        for dst in config.volumes.keys() {
            if !out.iter().any(|m| &m.destination == dst) {
                let v = self.mount_volume("")?;
                out.push(MountRecord {
                    kind: "volume".into(),
                    name: v.name,
                    source: v.mountpoint.display().to_string(),
                    destination: dst.clone(),
                    rw: true,
                    options: String::new(),
                    mode: String::new(),
                });
            }
        }
        let mut seen = std::collections::HashSet::new();
        for m in &out {
            if !seen.insert(m.destination.trim_end_matches('/')) {
                return Err(invalid(format!("Duplicate mount point: {}", m.destination)));
            }
        }
        Ok(out)
    }

    pub(super) fn write_etc_files(
        &self,
        ctr: &Ctr,
        rec: &ContainerRecord,
        eth0: Option<&network::Eth0>,
        nameserver: Option<std::net::Ipv4Addr>,
        links: &[String],
    ) -> Result<Vec<(PathBuf, String)>, EngineError> {
        let host_mode = rec.host_config.network_mode == "host";
        let hostname_path = ctr.dir.join("hostname");
        let hosts_path = ctr.dir.join("hosts");
        let resolv_path = ctr.dir.join("resolv.conf");
        let hostname = if host_mode {
            nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
        } else {
            rec.config.hostname.clone()
        };
        std::fs::write(&hostname_path, format!("{hostname}\n")).map_err(io_ctx("writing hostname"))?;
        let mut hosts = if host_mode {
            std::fs::read_to_string("/etc/hosts").unwrap_or_default()
        } else {
            // dockerd's defaults, word for word.
            String::from(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
                 ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
            )
        };
        if let Some(e) = eth0 {
            hosts.push_str(&format!("{}\t{hostname}\n", e.address));
            if let Some(v6) = e.v6 {
                hosts.push_str(&format!("{}\t{hostname}\n", v6.address));
            }
        } else if !host_mode {
            hosts.push_str(&format!("127.0.1.1\t{hostname}\n"));
        }
        // Where the user's machine is: in the VM, QEMU's address for the host (whose loopback
        // services answer there); natively, the bridge's gateway. `host-gateway` in
        // `--add-host` means the same, as with dockerd.
        let host_addr = self
            .inner
            .stores
            .host_loopback
            .as_deref()
            .map(str::to_owned)
            .or_else(|| eth0.map(|e| e.gateway.to_string()));
        let mut named = Vec::new();
        for extra in &rec.host_config.extra_hosts {
            if let Some((h, ip)) = extra.split_once(':') {
                let ip = if ip == "host-gateway" { host_addr.as_deref().unwrap_or("127.0.0.1") } else { ip };
                hosts.push_str(&format!("{ip}\t{h}\n"));
                named.push(h.to_owned());
            }
        }
        // As in Docker Desktop, the host by name (a name given with --add-host wins).
        if let Some(addr) = &host_addr {
            for name in ["host.docker.internal", "gateway.docker.internal"] {
                if !named.iter().any(|n| n == name) {
                    hosts.push_str(&format!("{addr}\t{name}\n"));
                }
            }
        }
        for l in links {
            hosts.push_str(l);
            hosts.push('\n');
        }
        std::fs::write(&hosts_path, hosts).map_err(io_ctx("writing hosts"))?;
        let resolv = if !rec.host_config.dns.is_empty() {
            rec.host_config.dns.iter().map(|d| format!("nameserver {d}\n")).collect()
        } else if let Some(ns) = nameserver {
            // A user-defined network's embedded DNS server, on its gateway.
            format!("nameserver {ns}\noptions ndots:0\n")
        } else if host_mode {
            std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
        } else {
            container_resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())
        };
        std::fs::write(&resolv_path, resolv).map_err(io_ctx("writing resolv.conf"))?;
        Ok(vec![(hostname_path, "hostname".into()), (hosts_path, "hosts".into()), (resolv_path, "resolv.conf".into())])
    }
}

/// The host's resolv.conf for a container in its own network namespace: loopback
/// nameservers (a local resolver such as systemd-resolved) cannot be reached from there, so
/// they are dropped, and Google's public ones used if none is left, as dockerd does.
fn container_resolv_conf(host: &str) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let ip = words.next().unwrap_or("");
            if ip.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback()) {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}
