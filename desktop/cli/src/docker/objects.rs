//! Volumes, networks, `system df`/`prune` and `inspect`.

use bollard::Docker;
use bollard::models::{NetworkCreateRequest, VolumeCreateOptions};
use bollard::query_parameters as q;
use clap::Subcommand;

use super::format::{self, Shape};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// List volumes.
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        format: Option<String>,
    },
    /// Create a volume (a name is made up when none is given).
    Create { name: Option<String> },
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes.
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove the volumes no container uses (`-a`: named ones too).
    Prune {
        #[arg(short, long)]
        all: bool,
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum NetworkCmd {
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long)]
        format: Option<String>,
    },
    /// Create a bridge network (`--subnet`, `--gateway` optional: one of each family, an
    /// IPv6 subnet with `--ipv6`).
    Create {
        #[arg(long)]
        subnet: Vec<String>,
        #[arg(long)]
        gateway: Vec<String>,
        #[arg(long)]
        internal: bool,
        /// Containers get an IPv6 address too.
        #[arg(long)]
        ipv6: bool,
        name: String,
    },
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Put a container on a network (at once if it runs).
    Connect {
        #[arg(long = "alias")]
        aliases: Vec<String>,
        network: String,
        container: String,
    },
    Disconnect {
        network: String,
        container: String,
    },
    Prune {
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum SystemCmd {
    /// Disk use by images, containers, volumes and the build cache.
    Df,
    /// Remove stopped containers, unused networks, dangling images and the build cache
    /// (`-a`: every unused image; `--volumes`: unused anonymous volumes too).
    Prune {
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        volumes: bool,
        #[arg(short, long)]
        force: bool,
    },
}

/// Asks before a prune unless `force`, as docker does.
fn confirm(what: &str, force: bool) -> anyhow::Result<bool> {
    if force {
        return Ok(true);
    }
    eprint!("WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn pretty(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn volume(d: &Docker, cmd: VolumeCmd) -> anyhow::Result<i32> {
    match cmd {
        VolumeCmd::Ls { quiet, format } => {
            let mut list = d.list_volumes(None::<q::ListVolumesOptions>).await?.volumes.unwrap_or_default();
            list.sort_by(|a, b| a.name.cmp(&b.name));
            let shape = Shape::of(quiet, format.as_deref())?;
            match &shape {
                Shape::Quiet => list.iter().for_each(|v| println!("{}", v.name)),
                Shape::Json | Shape::Template(_) => shape
                    .print_objects(&list.iter().map(volume_fields).collect::<Vec<_>>(), &[("Name", "VOLUME NAME")])?,
                Shape::Table => format::table(
                    &["DRIVER", "VOLUME NAME"],
                    &list.iter().map(|v| vec![v.driver.clone(), v.name.clone()]).collect::<Vec<_>>(),
                ),
            }
        }
        VolumeCmd::Create { name } => {
            let v = d.create_volume(VolumeCreateOptions { name, ..Default::default() }).await?;
            println!("{}", v.name);
        }
        VolumeCmd::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                out.push(d.inspect_volume(n).await?);
            }
            pretty(&out)?;
        }
        VolumeCmd::Rm { force, names } => {
            let mut failed = false;
            for n in &names {
                match d.remove_volume(n, Some(q::RemoveVolumeOptionsBuilder::new().force(force).build())).await {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        failed = true;
                        eprintln!("{}", super::explain(e.into()));
                    }
                }
            }
            return Ok(failed as i32);
        }
        VolumeCmd::Prune { all, force } => {
            if !confirm("all local volumes not used by at least one container", force)? {
                return Ok(0);
            }
            let mut filters = std::collections::HashMap::new();
            if all {
                filters.insert("all", vec!["true"]);
            }
            let r = d.prune_volumes(Some(q::PruneVolumesOptionsBuilder::new().filters(&filters).build())).await?;
            let gone = r.volumes_deleted.unwrap_or_default();
            if !gone.is_empty() {
                println!("Deleted Volumes:\n{}\n", gone.join("\n"));
            }
            println!("Total reclaimed space: {}", format::size(r.space_reclaimed.unwrap_or(0)));
        }
    }
    Ok(0)
}

/// A volume's fields as the docker CLI's templates have them (`N/A` for what only cluster
/// volumes or `docker system df` fill in).
fn volume_fields(v: &bollard::models::Volume) -> serde_json::Value {
    let labels: Vec<String> = v.labels.iter().map(|(k, x)| format!("{k}={x}")).collect();
    let (links, size) = match &v.usage_data {
        // Go's units.HumanSize prints the engine's -1 ("not counted") as "-1B".
        Some(u) => (u.ref_count.to_string(), if u.size < 0 { format!("{}B", u.size) } else { format::size(u.size) }),
        None => ("N/A".to_owned(), "N/A".to_owned()),
    };
    serde_json::json!({
        "Availability": "N/A", "Driver": v.driver, "Group": "N/A", "Labels": labels.join(","), "Links": links,
        "Mountpoint": v.mountpoint, "Name": v.name, "Scope": "local", "Size": size,
    })
}

pub async fn network(d: &Docker, cmd: NetworkCmd) -> anyhow::Result<i32> {
    match cmd {
        NetworkCmd::Ls { quiet, format } => {
            let mut list = d.list_networks(None::<q::ListNetworksOptions>).await?;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            let id = |n: &bollard::models::Network| format::short_id(n.id.as_deref().unwrap_or(""));
            let shape = Shape::of(quiet, format.as_deref())?;
            match &shape {
                Shape::Quiet => list.iter().for_each(|n| println!("{}", id(n))),
                Shape::Json | Shape::Template(_) => shape.print_objects(
                    &list
                        .iter()
                        .map(|n| serde_json::json!({"ID": id(n), "Name": n.name, "Driver": n.driver, "Scope": n.scope}))
                        .collect::<Vec<_>>(),
                    &[("ID", "NETWORK ID")],
                )?,
                Shape::Table => format::table(
                    &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                    &list
                        .iter()
                        .map(|n| {
                            vec![
                                id(n),
                                n.name.clone().unwrap_or_default(),
                                n.driver.clone().unwrap_or_default(),
                                n.scope.clone().unwrap_or_default(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        NetworkCmd::Create { subnet, gateway, internal, ipv6, name } => {
            // Each gateway goes with the subnet of its family, as docker pairs them.
            let v6 = |s: &String| s.contains(':');
            let config: Vec<bollard::models::IpamConfig> = subnet
                .iter()
                .map(|s| bollard::models::IpamConfig {
                    subnet: Some(s.clone()),
                    gateway: gateway.iter().find(|g| v6(g) == v6(s)).cloned(),
                    ..Default::default()
                })
                .collect();
            if let Some(g) = gateway.iter().find(|g| !subnet.iter().any(|s| v6(s) == v6(g))) {
                anyhow::bail!("no matching subnet for gateway {g}");
            }
            let ipam =
                (!config.is_empty()).then(|| bollard::models::Ipam { config: Some(config), ..Default::default() });
            let req = NetworkCreateRequest {
                name,
                internal: Some(internal),
                enable_ipv6: Some(ipv6),
                ipam,
                ..Default::default()
            };
            println!("{}", d.create_network(req).await?.id);
        }
        NetworkCmd::Inspect { names } => {
            let mut out = Vec::new();
            for n in &names {
                out.push(d.inspect_network(n, None::<q::InspectNetworkOptions>).await?);
            }
            pretty(&out)?;
        }
        NetworkCmd::Rm { names } => {
            let mut failed = false;
            for n in &names {
                match d.remove_network(n).await {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        failed = true;
                        eprintln!("{}", super::explain(e.into()));
                    }
                }
            }
            return Ok(failed as i32);
        }
        NetworkCmd::Connect { aliases, network, container } => {
            let req = bollard::models::NetworkConnectRequest {
                container: Some(container),
                endpoint_config: Some(bollard::models::EndpointSettings {
                    aliases: (!aliases.is_empty()).then_some(aliases),
                    ..Default::default()
                }),
            };
            d.connect_network(&network, req).await?;
        }
        NetworkCmd::Disconnect { network, container } => {
            let req = bollard::models::NetworkDisconnectRequest { container: Some(container), force: Some(false) };
            d.disconnect_network(&network, req).await?;
        }
        NetworkCmd::Prune { force } => {
            if !confirm("all custom networks not used by at least one container", force)? {
                return Ok(0);
            }
            let r = d.prune_networks(None::<q::PruneNetworksOptions>).await?;
            let gone = r.networks_deleted.unwrap_or_default();
            if !gone.is_empty() {
                println!("Deleted Networks:\n{}", gone.join("\n"));
            }
        }
    }
    Ok(0)
}

pub async fn system(d: &Docker, cmd: SystemCmd) -> anyhow::Result<i32> {
    match cmd {
        SystemCmd::Df => {
            let df = d.df(None::<q::DataUsageOptions>).await?;
            let images = df.images.unwrap_or_default();
            let containers = df.containers.unwrap_or_default();
            let volumes = df.volumes.unwrap_or_default();
            let cache = df.build_cache.unwrap_or_default();
            let image_size: i64 = images.iter().map(|i| i.size).sum();
            // Images some container was made from (the engine does not count them per image).
            let used: std::collections::HashSet<&str> =
                containers.iter().filter_map(|c| c.image_id.as_deref()).collect();
            let active_images = images.iter().filter(|i| i.containers > 0 || used.contains(i.id.as_str())).count();
            let ctr_size: i64 = containers.iter().filter_map(|c| c.size_rw).sum();
            let running =
                containers.iter().filter(|c| c.state.map(|s| s.to_string()) == Some("running".into())).count();
            let vol_size: i64 =
                volumes.iter().filter_map(|v| v.usage_data.as_ref().map(|u| u.size)).filter(|s| *s > 0).sum();
            let active_vols = volumes.iter().filter(|v| v.usage_data.as_ref().is_some_and(|u| u.ref_count > 0)).count();
            let cache_size: i64 = cache.iter().filter_map(|c| c.size).sum();
            let rows = vec![
                vec!["Images".into(), images.len().to_string(), active_images.to_string(), format::size(image_size)],
                vec!["Containers".into(), containers.len().to_string(), running.to_string(), format::size(ctr_size)],
                vec![
                    "Local Volumes".into(),
                    volumes.len().to_string(),
                    active_vols.to_string(),
                    format::size(vol_size),
                ],
                vec!["Build Cache".into(), cache.len().to_string(), "0".into(), format::size(cache_size)],
            ];
            format::table(&["TYPE", "TOTAL", "ACTIVE", "SIZE"], &rows);
        }
        SystemCmd::Prune { all, volumes, force } => {
            let what = format!(
                "all stopped containers, all networks not used by at least one container, {}{}and all build cache",
                if all {
                    "all images without at least one container associated to them, "
                } else {
                    "all dangling images, "
                },
                if volumes { "all anonymous volumes not used by at least one container, " } else { "" }
            );
            if !confirm(&what, force)? {
                return Ok(0);
            }
            let c = d.prune_containers(None::<q::PruneContainersOptions>).await?;
            let n = d.prune_networks(None::<q::PruneNetworksOptions>).await?;
            let mut reclaimed = c.space_reclaimed.unwrap_or(0);
            if volumes {
                reclaimed += d.prune_volumes(None::<q::PruneVolumesOptions>).await?.space_reclaimed.unwrap_or(0);
            }
            let mut filters = std::collections::HashMap::new();
            filters.insert("dangling", vec![if all { "false" } else { "true" }]);
            let i = d.prune_images(Some(q::PruneImagesOptionsBuilder::new().filters(&filters).build())).await?;
            reclaimed += i.space_reclaimed.unwrap_or(0);
            let b = d.prune_build(None::<q::PruneBuildOptions>).await?;
            reclaimed += b.space_reclaimed.unwrap_or(0);
            let gone = c.containers_deleted.unwrap_or_default();
            if !gone.is_empty() {
                println!("Deleted Containers:\n{}\n", gone.join("\n"));
            }
            let nets = n.networks_deleted.unwrap_or_default();
            if !nets.is_empty() {
                println!("Deleted Networks:\n{}\n", nets.join("\n"));
            }
            for img in i.images_deleted.unwrap_or_default() {
                if let Some(t) = img.untagged {
                    println!("untagged: {t}");
                }
                if let Some(id) = img.deleted {
                    println!("deleted: {id}");
                }
            }
            println!("Total reclaimed space: {}", format::size(reclaimed));
        }
    }
    Ok(0)
}

/// `inspect`: each name as a container, else an image, a volume or a network (docker's
/// order), printed together as one JSON array.
pub async fn inspect(d: &Docker, names: &[String]) -> anyhow::Result<i32> {
    let mut out = Vec::new();
    let mut failed = false;
    for n in names {
        let found = if let Ok(c) = d.inspect_container(n, None::<q::InspectContainerOptions>).await {
            Some(serde_json::to_value(c)?)
        } else if let Ok(i) = d.inspect_image(n).await {
            Some(serde_json::to_value(i)?)
        } else if let Ok(v) = d.inspect_volume(n).await {
            Some(serde_json::to_value(v)?)
        } else if let Ok(net) = d.inspect_network(n, None::<q::InspectNetworkOptions>).await {
            Some(serde_json::to_value(net)?)
        } else {
            None
        };
        match found {
            Some(v) => out.push(v),
            None => {
                failed = true;
                eprintln!("Error: No such object: {n}");
            }
        }
    }
    pretty(&out)?;
    Ok(failed as i32)
}
