//! Images from containers and archives: commit, save, load, export, import, and the archive
//! API behind `docker cp`. Archives are written to unlinked scratch files the API streams.

use std::fs::File;
use std::io::{Seek, Write};

use super::{Engine, EngineError, io_ctx};
use crate::container::ContainerRecord;
use crate::container::rootfs::{self, PathStat, RootView};
use crate::image::{self, ImageError, ImageRecord, LayerRecord, archive, parse_reference, tagged};
use crate::model::{ContainerConfig, History, ImageConfig, apply_change, now_rfc3339};
use crate::snapshot::chain_ids;

/// What `docker commit` asks for.
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    pub reference: Option<String>,
    pub comment: String,
    pub author: String,
    pub changes: Vec<String>,
    /// Config fields sent in the body, over the container's.
    pub config: Option<ContainerConfig>,
    /// Freeze a running container while its changes are read (dockerd's default).
    pub pause: bool,
}

impl Engine {
    fn scratch(&self) -> Result<std::path::PathBuf, EngineError> {
        let d = self.inner.root.join("tmp");
        std::fs::create_dir_all(&d).map_err(io_ctx("creating the scratch dir"))?;
        Ok(d)
    }

    /// An unlinked scratch file to build an archive in.
    pub fn scratch_file(&self) -> Result<File, EngineError> {
        let path = self.scratch()?.join(format!("archive-{:016x}", rand::random::<u64>()));
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_ctx("creating a scratch file"))?;
        let _ = std::fs::remove_file(&path);
        Ok(f)
    }

    pub(crate) fn root_view(&self, id: &str) -> Result<RootView, EngineError> {
        let ctr = self.ctr(id)?;
        let rec = ctr.snapshot();
        if rec.running() && rec.state.pid > 0 {
            return Ok(RootView::running(rec.state.pid));
        }
        let overlay = self.inner.stores.snapshots.prepare(&rec.id, &rec.chain).map_err(ImageError::from)?;
        let at = self.scratch()?.join(format!("root-{:016x}", rand::random::<u64>()));
        RootView::mount(&overlay, &at).map_err(io_ctx(format!("mounting the root of {}", rec.id)))
    }

    /// The root the archive API works in: a stopped container's with its volumes and binds
    /// mounted where the container has them (a running one's shows them already), so `docker
    /// cp` reaches a volume's files, as with dockerd. Each mount point is resolved inside the
    /// root and the mount made on that very directory (through its descriptor), so an image's
    /// symlink cannot send a mount elsewhere on the machine.
    pub(crate) fn archive_view(&self, id: &str) -> Result<RootView, EngineError> {
        let view = self.root_view(id)?;
        let rec = self.container(id)?;
        if rec.running() && rec.state.pid > 0 {
            return Ok(view);
        }
        use nix::mount::{MsFlags, mount};
        for m in rec.mounts.iter().filter(|m| m.kind == "volume" || m.kind == "bind") {
            if !std::path::Path::new(&m.source).is_dir() {
                continue;
            }
            let root = view.confined().map_err(io_ctx("opening the container's root"))?;
            let dir = root
                .dir(std::path::Path::new(&m.destination), true)
                .map_err(io_ctx(format!("making the mount point {}", m.destination)))?;
            let target = dir.fd_path();
            let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
            mount(Some(m.source.as_str()), &target, None::<&str>, bind, None::<&str>)
                .map_err(|e| io_ctx(format!("mounting {} at {}", m.source, m.destination))(e.into()))?;
            if !m.rw {
                let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                // Resolved again, confined, to the mount just made.
                let mounted = root
                    .dir(std::path::Path::new(&m.destination), false)
                    .map_err(io_ctx(format!("opening the mount point {}", m.destination)))?;
                mount(None::<&str>, &mounted.fd_path(), None::<&str>, ro, None::<&str>)
                    .map_err(|e| io_ctx(format!("making {} read-only", m.destination))(e.into()))?;
            }
        }
        Ok(view)
    }

    /// `docker commit`: the container's changes become a layer on its image, read while the
    /// container is frozen (unless the request says not to), so they are one moment's.
    pub async fn commit(&self, container: &str, opts: CommitOptions) -> Result<String, EngineError> {
        let rec = self.container(container)?;
        let frozen = opts.pause && rec.running() && !rec.state.paused && self.pause(&rec.id).await.is_ok();
        let result = self.commit_frozen(&rec, opts).await;
        if frozen && let Err(e) = self.unpause(&rec.id).await {
            tracing::warn!(container = %rec.id, error = %e, "thawing after a commit");
        }
        result
    }

    async fn commit_frozen(&self, rec: &ContainerRecord, opts: CommitOptions) -> Result<String, EngineError> {
        let rec = rec.clone();
        let base = self.inner.stores.images.lock().expect("image store lock").get(&rec.image_id).cloned();
        let base = base.ok_or_else(|| EngineError::NotFound(format!("No such image: {}", rec.image_id)))?;
        let mut config: ImageConfig = self.image_config(&base.id)?;
        // As dockerd: the container's whole config when the request has none, else the
        // request's; the changes on it; then what it leaves empty from the container's.
        let mut run = opts.config.clone().unwrap_or_else(|| rec.config.clone());
        for c in &opts.changes {
            apply_change(&mut run, c).map_err(EngineError::InvalidArgument)?;
        }
        merge_config(&mut run, &rec.config);
        // Not kept when false (dockerd's `omitempty`).
        if run.extra.get("NetworkDisabled") == Some(&serde_json::Value::Bool(false)) {
            run.extra.remove("NetworkDisabled");
        }
        let tag = opts.reference.as_deref().map(|r| parse_reference(r).map(|r| tagged(&r))).transpose()?;
        config.config = run;
        config.created = Some(now_rfc3339());
        if !opts.author.is_empty() {
            config.author = Some(opts.author.clone());
        }
        let history = History {
            created: config.created.clone(),
            created_by: Some(format!("{} {}", rec.path, rec.args.join(" "))),
            comment: (!opts.comment.is_empty()).then(|| opts.comment.clone()),
            author: None,
            empty_layer: false,
        };
        config.extra.insert("container".into(), serde_json::json!(rec.id));
        let tags: Vec<String> = tag.into_iter().collect();
        let img = self.commit_layer(&rec, &base, config, history, &tags, &opts.comment).await?;
        let image_ref = tags.first().map(|t| image::familiar(t)).unwrap_or_default();
        if !image_ref.is_empty() {
            self.image_event(&img.id, "tag", &image_ref);
        }
        let attrs =
            [("comment", opts.comment.as_str()), ("imageID", img.id.as_str()), ("imageRef", image_ref.as_str())];
        self.container_event(&rec, "commit", &attrs);
        Ok(img.id)
    }

    /// The container's changes as a layer over `base`, recorded as an image with `config`
    /// (whose layers and history this completes) and tagged `tags` (normalised).
    pub(crate) async fn commit_layer(
        &self,
        rec: &ContainerRecord,
        base: &ImageRecord,
        mut config: ImageConfig,
        history: History,
        tags: &[String],
        comment: &str,
    ) -> Result<ImageRecord, EngineError> {
        let upper = self.inner.stores.snapshots.active_upper(&rec.id);
        let stores = self.inner.stores.clone();
        let mut scratch = self.scratch_file()?;
        let parent_chain = base.layers.last().map(|l| l.chain_id.clone());
        let layer: LayerRecord = super::blocking(move || -> Result<LayerRecord, EngineError> {
            archive::diff_tar(&upper, &mut scratch).map_err(io_ctx("writing the container's diff"))?;
            scratch.flush().map_err(io_ctx("writing the container's diff"))?;
            scratch.rewind().map_err(io_ctx("writing the container's diff"))?;
            Ok(archive::add_layer(&stores, &mut scratch, "the container's diff", parent_chain.as_deref(), None)?)
        })
        .await?;
        config.rootfs.diff_ids.push(layer.diff_id.clone());
        config.history.push(history);
        let mut layers = base.layers.clone();
        layers.push(layer);
        debug_assert_eq!(chain_ids(&config.rootfs.diff_ids).last(), layers.last().map(|l| &l.chain_id));
        let bytes = serde_json::to_vec(&config).expect("config serialises");
        Ok(archive::record_image(&self.inner.stores, &bytes, layers, tags, &base.id, comment)?)
    }

    /// `docker save`: a docker-archive of the named images, in an unlinked file.
    pub async fn save(&self, names: &[String]) -> Result<File, EngineError> {
        let mut images = Vec::new();
        {
            let store = self.inner.stores.images.lock().expect("image store lock");
            for n in names {
                let rec = store.resolve(n)?.clone();
                let by_ref = parse_reference(n).ok().map(|r| tagged(&r)).filter(|t| rec.repo_tags.contains(t));
                let tags: Vec<String> = match by_ref {
                    Some(t) => vec![image::familiar(&t)],
                    None if n.starts_with("sha256:") || rec.id[7..].starts_with(n.as_str()) => vec![],
                    None => rec.repo_tags.iter().map(|t| image::familiar(t)).collect(),
                };
                match images.iter_mut().find(|(i, _): &&mut (image::ImageRecord, Vec<String>)| i.id == rec.id) {
                    Some((_, t)) => t.extend(tags),
                    None => images.push((rec, tags)),
                }
            }
        }
        let stores = self.inner.stores.clone();
        let scratch = self.scratch()?;
        let mut file = self.scratch_file()?;
        super::blocking(move || -> Result<File, EngineError> {
            archive::save(&stores, &images, &scratch, &mut file)?;
            file.rewind().map_err(io_ctx("rewinding the archive"))?;
            Ok(file)
        })
        .await
    }

    /// `docker load` from an archive already written to `file`.
    pub async fn load(&self, file: File) -> Result<Vec<String>, EngineError> {
        let stores = self.inner.stores.clone();
        let scratch = self.scratch()?;
        super::blocking(move || -> Result<Vec<String>, EngineError> {
            let dir = archive::extract_upload(std::io::BufReader::new(file), &scratch)?;
            let result = archive::load(&stores, &dir);
            let _ = std::fs::remove_dir_all(&dir);
            Ok(result?)
        })
        .await
    }

    /// `docker import` of a filesystem tarball written to `file`.
    pub async fn import(
        &self,
        file: File,
        reference: Option<String>,
        changes: Vec<String>,
        comment: String,
    ) -> Result<String, EngineError> {
        let mut config = ContainerConfig::default();
        for c in &changes {
            apply_change(&mut config, c).map_err(EngineError::InvalidArgument)?;
        }
        let stores = self.inner.stores.clone();
        super::blocking(move || -> Result<String, EngineError> {
            Ok(archive::import(&stores, std::io::BufReader::new(file), reference.as_deref(), config, &comment)?.id)
        })
        .await
    }

    /// `docker export`: the container's filesystem as a tar, in an unlinked file.
    pub async fn export(&self, container: &str) -> Result<File, EngineError> {
        let view = self.root_view(container)?;
        let mut file = self.scratch_file()?;
        super::blocking(move || -> Result<File, EngineError> {
            rootfs::tar_path(&view, "/", &mut file, true).map_err(io_ctx("writing the export"))?;
            file.rewind().map_err(io_ctx("rewinding the export"))?;
            Ok(file)
        })
        .await
    }

    /// `HEAD /containers/{id}/archive`.
    pub fn archive_stat(&self, container: &str, path: &str) -> Result<PathStat, EngineError> {
        let view = self.archive_view(container)?;
        let stat = rootfs::stat(&view, path).map_err(|e| {
            EngineError::NotFound(format!("Could not find the file {path} in container {container}: {e}"))
        })?;
        self.container_event(&self.container(container)?, "archive-path", &[]);
        Ok(stat)
    }

    /// `GET /containers/{id}/archive`: the path as a tar, and its stat.
    pub async fn archive_get(&self, container: &str, path: &str) -> Result<(File, PathStat), EngineError> {
        let view = self.archive_view(container)?;
        let stat = rootfs::stat(&view, path).map_err(|e| {
            EngineError::NotFound(format!("Could not find the file {path} in container {container}: {e}"))
        })?;
        self.container_event(&self.container(container)?, "archive-path", &[]);
        let mut file = self.scratch_file()?;
        let path = path.to_owned();
        super::blocking(move || -> Result<(File, PathStat), EngineError> {
            rootfs::tar_path(&view, &path, &mut file, false).map_err(io_ctx("writing the archive"))?;
            file.rewind().map_err(io_ctx("rewinding the archive"))?;
            Ok((file, stat))
        })
        .await
    }

    /// `PUT /containers/{id}/archive`: extracts a tar (written to `file`) into a directory.
    pub async fn archive_put(&self, container: &str, path: &str, file: File) -> Result<(), EngineError> {
        let view = self.archive_view(container)?;
        let rec = self.container(container)?;
        let (path, name) = (path.to_owned(), container.to_owned());
        let engine = self.clone();
        super::blocking(move || -> Result<(), EngineError> {
            let mut reader = unpack_reader(file)?;
            rootfs::untar_into(&view, &path, &mut reader).map_err(|e| match e {
                rootfs::UntarError::NoDirectory(p) => {
                    EngineError::NotFound(format!("Could not find the file {p} in container {name}"))
                }
                e => e.into(),
            })?;
            engine.container_event(&rec, "extract-to-dir", &[]);
            Ok(())
        })
        .await
    }
}

fn unpack_reader(file: File) -> Result<Box<dyn std::io::Read + Send>, EngineError> {
    crate::image::unpack::decompressor(Box::new(std::io::BufReader::new(file))).map_err(io_ctx("reading the archive"))
}

/// Fills what a commit's config leaves empty from the container's, as dockerd's commit does:
/// the command and entrypoint when it gives no entrypoint (the command only when it gives
/// none either), then the rest as a create takes it from an image.
fn merge_config(user: &mut ContainerConfig, container: &ContainerConfig) {
    if user.entrypoint.as_ref().is_none_or(Vec::is_empty) {
        if user.cmd.as_ref().is_none_or(Vec::is_empty) {
            user.cmd = container.cmd.clone();
        }
        if user.entrypoint.is_none() {
            user.entrypoint = container.entrypoint.clone();
        }
    }
    crate::container::fill_from(user, container);
}
