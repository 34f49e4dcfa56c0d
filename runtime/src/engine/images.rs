//! Image operations that need the container table: pull, tag, remove (refused while a
//! container uses the image, as dockerd does), prune.

use std::collections::HashSet;

use tokio::sync::mpsc;

use super::{Engine, EngineError};
use crate::image::pull::{Credentials, Progress};
use crate::image::{ImageError, ImageRecord, familiar, parse_reference, tagged};
use crate::model::ImageConfig;

/// One line of an `rmi` answer.
#[derive(Debug, Clone)]
pub enum RemovedImage {
    Untagged(String),
    Deleted(String),
}

impl Engine {
    /// Pulls `name` for `platform` (an index's entry for it), by default the engine's own.
    pub async fn pull(
        &self,
        name: &str,
        creds: &Credentials,
        platform: Option<&crate::image::platform::Platform>,
        progress: &mpsc::UnboundedSender<Progress>,
    ) -> Result<ImageRecord, EngineError> {
        let rec = crate::image::pull::pull(&self.inner.stores, name, creds, platform, progress).await?;
        self.inner.events.emit("image", "pull", name, &[("name", name)]);
        Ok(rec)
    }

    /// `docker push`: `name` with `tag`, or every tag of its repository when `tag` is empty
    /// (as dockerd does); progress for each goes to `progress`.
    pub async fn push(
        &self,
        name: &str,
        tag: &str,
        creds: &Credentials,
        progress: &mpsc::UnboundedSender<Progress>,
    ) -> Result<(), EngineError> {
        let scratch = self.inner.root.join("tmp");
        std::fs::create_dir_all(&scratch).map_err(super::io_ctx("creating the scratch dir"))?;
        for t in crate::image::push::tags_to_push(&self.inner.stores, name, tag)? {
            crate::image::push::push(&self.inner.stores, &t, creds, &scratch, progress).await?;
            let shown = crate::image::familiar(&t);
            self.inner.events.emit("image", "push", &shown, &[("name", &shown)]);
        }
        Ok(())
    }

    /// `GET /distribution/{name}/json`: what the registry has for `name`.
    pub async fn distribution(
        &self,
        name: &str,
        creds: &Credentials,
    ) -> Result<crate::image::pull::Distribution, EngineError> {
        Ok(crate::image::pull::distribution(&self.inner.stores, name, creds).await?)
    }

    /// `docker login`: checks the credentials against the registry.
    pub async fn login(&self, server: &str, creds: &Credentials) -> Result<(), EngineError> {
        Ok(crate::image::pull::login(&self.inner.stores, server, creds).await?)
    }

    pub fn images(&self) -> Vec<ImageRecord> {
        let images = self.inner.stores.images.lock().expect("image store lock");
        let mut v: Vec<ImageRecord> = images.all().cloned().collect();
        v.sort_by(|a, b| b.created.cmp(&a.created));
        v
    }

    pub fn image(&self, name: &str) -> Result<(ImageRecord, ImageConfig), EngineError> {
        let rec = self.inner.stores.images.lock().expect("image store lock").resolve(name)?.clone();
        let config = self.image_config(&rec.id)?;
        Ok((rec, config))
    }

    /// Whether the local image `name` is of `platform`: dockerd's "not found" when it is not,
    /// which makes the docker CLI pull that platform and ask again. An image whose config names
    /// no architecture (made by hand) is taken for any.
    pub fn check_platform(&self, name: &str, platform: &crate::image::platform::Platform) -> Result<(), EngineError> {
        let (_, config) = self.image(name)?;
        let os = if config.os.is_empty() { "linux" } else { &config.os };
        if config.architecture.is_empty() || platform.matches(os, &config.architecture, config.variant.as_deref()) {
            return Ok(());
        }
        let actual =
            [os, &config.architecture].into_iter().chain(config.variant.as_deref()).collect::<Vec<_>>().join("/");
        Err(ImageError::WrongPlatform { reference: name.to_owned(), wanted: platform.to_string(), actual }.into())
    }

    pub fn tag(&self, source: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let target = if tag.is_empty() { repo.to_owned() } else { format!("{repo}:{tag}") };
        let r = parse_reference(&target)?;
        if r.digest().is_some() {
            return Err(ImageError::InvalidReference(target).into());
        }
        let mut images = self.inner.stores.images.lock().expect("image store lock");
        let id = images.resolve(source)?.id.clone();
        images.set_tag(&id, &tagged(&r))?;
        drop(images);
        self.image_event(&id, "tag", &crate::image::familiar(&tagged(&r)));
        Ok(())
    }

    /// An image event as dockerd sends it: the name it is about and the image's labels.
    pub(crate) fn image_event(&self, id: &str, action: &str, name: &str) {
        let labels = self.image_config(id).map(|c| c.config.labels).unwrap_or_default();
        let mut attrs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        attrs.push(("name", name));
        self.inner.events.emit("image", action, id, &attrs);
    }

    fn images_in_use(&self) -> HashSet<String> {
        self.containers().into_iter().map(|c| c.image_id).collect()
    }

    /// `docker rmi`, with dockerd's rules: a tag of an image with several tags is only
    /// untagged; an image a container uses is refused (by tag: untagged with `force`); an image
    /// named by ID with several tags needs `force`.
    pub fn remove_image(&self, name: &str, force: bool) -> Result<Vec<RemovedImage>, EngineError> {
        let mut images = self.inner.stores.images.lock().expect("image store lock");
        let rec = images.resolve(name)?.clone();
        let user = self.containers().into_iter().find(|c| c.image_id == rec.id).map(|c| c.id[..12].to_owned());
        let by_tag = parse_reference(name).ok().map(|r| tagged(&r)).filter(|t| rec.repo_tags.contains(t));
        if let Some(tag) = &by_tag {
            if rec.repo_tags.len() > 1 || (user.is_some() && force) {
                let mut rec = rec;
                rec.repo_tags.retain(|t| t != tag);
                let id = rec.id.clone();
                images.put(rec)?;
                drop(images);
                self.image_event(&id, "untag", &id);
                return Ok(vec![RemovedImage::Untagged(familiar(tag))]);
            }
            if let Some(user) = &user {
                return Err(EngineError::Conflict(format!(
                    "conflict: unable to remove repository reference \"{name}\" (must force) - container {user} is using its referenced image {}",
                    rec.short_id()
                )));
            }
        } else {
            if let Some(user) = &user {
                return Err(EngineError::Conflict(format!(
                    "conflict: unable to delete {} (must be forced) - image is being used by stopped container {user}",
                    rec.short_id()
                )));
            }
            if rec.repo_tags.len() > 1 && !force {
                return Err(EngineError::Conflict(format!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    rec.short_id()
                )));
            }
        }
        let mut out: Vec<RemovedImage> = rec.repo_tags.iter().map(|t| RemovedImage::Untagged(familiar(t))).collect();
        out.extend(rec.repo_digests.iter().map(|d| RemovedImage::Untagged(familiar(d))));
        // Announced while the image's config (its labels) is still there, as dockerd does.
        let untagged = rec.repo_tags.len() + rec.repo_digests.len();
        drop(images);
        for _ in 0..untagged {
            self.image_event(&rec.id, "untag", &rec.id);
        }
        let mut images = self.inner.stores.images.lock().expect("image store lock");
        images.remove(&rec.id)?;
        out.push(RemovedImage::Deleted(rec.id.clone()));
        // As dockerd: untagged parents (a build's intermediate images) that nothing else
        // needs go with it.
        let in_use = self.images_in_use();
        let mut parent = rec.parent.clone();
        while let Some(p) = images.get(&parent).cloned() {
            if !p.repo_tags.is_empty() || in_use.contains(&p.id) || images.all().any(|i| i.parent == p.id) {
                break;
            }
            images.remove(&p.id)?;
            out.push(RemovedImage::Deleted(p.id.clone()));
            parent = p.parent;
        }
        drop(images);
        for removed in &out {
            if let RemovedImage::Deleted(id) = removed {
                self.inner.events.emit("image", "delete", id, &[("name", id)]);
            }
        }
        self.collect_garbage();
        Ok(out)
    }

    /// Whether an image is some other image's parent (an intermediate image of a build, which
    /// `docker images` hides and `image prune` keeps).
    pub fn has_children(&self, id: &str) -> bool {
        self.inner.stores.images.lock().expect("image store lock").all().any(|i| i.parent == id)
    }

    /// Deletes layers and blobs no image references any more.
    pub fn collect_garbage(&self) {
        let images = self.inner.stores.images.lock().expect("image store lock");
        let mut chains = HashSet::new();
        let mut blobs = HashSet::new();
        for img in images.all() {
            blobs.insert(img.id.clone());
            for l in &img.layers {
                chains.insert(l.chain_id.clone());
                if let Some(b) = &l.blob {
                    blobs.insert(b.clone());
                }
            }
        }
        drop(images);
        for c in self.containers() {
            chains.extend(c.chain);
        }
        for chain in self.inner.stores.snapshots.layers() {
            if !chains.contains(&chain) {
                let _ = self.inner.stores.snapshots.remove_layer(&chain);
            }
        }
        for blob in self.inner.stores.content.list().unwrap_or_default() {
            if !blobs.contains(&blob) {
                let _ = self.inner.stores.content.delete(&blob);
            }
        }
    }

    /// `docker image prune`: dangling images (all unused ones with `all`).
    /// `docker image prune`: dangling images (all unused ones with `all`) that `select` picks.
    pub fn prune_images(
        &self,
        all: bool,
        select: impl Fn(&ImageRecord, &crate::model::ImageConfig) -> bool,
    ) -> Result<(Vec<RemovedImage>, u64), EngineError> {
        let in_use = self.images_in_use();
        let mut out = Vec::new();
        let mut freed = 0;
        // Leaves first, again and again: removing an image can make its parent a leaf.
        loop {
            let mut images = self.inner.stores.images.lock().expect("image store lock");
            let parents: HashSet<String> = images.all().map(|i| i.parent.clone()).collect();
            let victims: Vec<ImageRecord> = images
                .all()
                .filter(|i| !in_use.contains(&i.id) && !parents.contains(&i.id) && (all || i.repo_tags.is_empty()))
                .filter(|i| self.image_config(&i.id).is_ok_and(|c| select(i, &c)))
                .cloned()
                .collect();
            if victims.is_empty() {
                break;
            }
            for img in victims {
                freed += images.own_size(&img);
                for t in &img.repo_tags {
                    out.push(RemovedImage::Untagged(familiar(t)));
                }
                images.remove(&img.id)?;
                out.push(RemovedImage::Deleted(img.id.clone()));
            }
        }
        self.collect_garbage();
        Ok((out, freed))
    }
}
