//! Images: references, the image metadata store, pulls, unpacking and archives.
//!
//! Vocabulary: an image's *ID* is the digest of its config blob (as dockerd has it); a
//! *reference* is `[registry/]repository[:tag][@digest]`, kept normalised
//! (`docker.io/library/busybox:latest`) and shown *familiar* (`busybox:latest`). The
//! metadata store keeps one JSON record per image under `images/`, naming its config blob
//! (in the content store) and its layers (blobs and snapshots by chain ID).

pub mod archive;
pub mod platform;
pub mod pull;
pub mod push;
pub mod unpack;

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use oci_client::Reference;
use serde::{Deserialize, Serialize};

use crate::content::ContentError;
use crate::snapshot::SnapshotError;

/// Errors of image operations.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid reference format: {0:?}")]
    InvalidReference(String),
    #[error("No such image: {0}")]
    NotFound(String),
    #[error("An image does not exist locally with the tag: {0}")]
    NoLocalTag(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("pull access denied for {repo}, repository does not exist or may require 'docker login': {detail}")]
    Denied { repo: String, detail: String },
    #[error("{0}")]
    Unauthorized(String),
    #[error("manifest for {0} not found: manifest unknown")]
    ManifestUnknown(String),
    #[error("no matching manifest for {platform} in the manifest list entries")]
    NoPlatform { platform: String },
    #[error(transparent)]
    BadPlatform(#[from] platform::BadPlatform),
    #[error(
        "image with reference {reference} was found but does not match the specified platform: wanted {wanted}, actual: {actual}"
    )]
    WrongPlatform { reference: String, wanted: String, actual: String },
    #[error("registry: {0}")]
    Registry(String),
    #[error("image config blob is not valid JSON")]
    BadConfig(#[source] serde_json::Error),
    #[error(transparent)]
    Content(#[from] ContentError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Unpack(#[from] unpack::UnpackError),
    #[error("image store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_owned(), source }
}

/// Parses and normalises a reference (`busybox` → `docker.io/library/busybox:latest`).
pub fn parse_reference(s: &str) -> Result<Reference, ImageError> {
    s.parse::<Reference>().map_err(|_| ImageError::InvalidReference(s.to_owned()))
}

/// The normalised repository name (`docker.io/library/busybox`).
pub fn repository(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// `docker.io/library/busybox:latest` → `busybox:latest`; other registries stay as they are.
pub fn familiar(full: &str) -> String {
    let s = full.strip_prefix("docker.io/").unwrap_or(full);
    if full.starts_with("docker.io/") { s.strip_prefix("library/").unwrap_or(s).to_owned() } else { s.to_owned() }
}

/// The normalised `repo:tag` of a reference (tag `latest` when none).
pub fn tagged(r: &Reference) -> String {
    format!("{}:{}", repository(r), r.tag().unwrap_or("latest"))
}

/// One layer of an image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    pub diff_id: String,
    pub chain_id: String,
    /// The blob in the content store this layer was unpacked from, as the registry sent it.
    pub blob: Option<String>,
    #[serde(default)]
    pub media_type: String,
    /// Bytes of the unpacked layer.
    pub size: u64,
}

/// What the engine knows about one image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:` of the config blob.
    pub id: String,
    /// Normalised `repo:tag` names.
    pub repo_tags: Vec<String>,
    /// Normalised `repo@sha256:` names (manifest digests from a registry).
    pub repo_digests: Vec<String>,
    pub layers: Vec<LayerRecord>,
    pub created: String,
    /// Image ID of the image this one was committed from, if any.
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub comment: String,
}

impl ImageRecord {
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
    pub fn chain(&self) -> Vec<String> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }
    pub fn short_id(&self) -> &str {
        &self.id["sha256:".len()..][..12]
    }
}

/// The image metadata store: records under `images/`, indexed in memory.
#[derive(Debug)]
pub struct ImageStore {
    dir: PathBuf,
    images: BTreeMap<String, ImageRecord>,
}

impl ImageStore {
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut images = BTreeMap::new();
        for entry in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = entry.map_err(io_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                match fs::read(&path).map(|b| serde_json::from_slice::<ImageRecord>(&b)) {
                    Ok(Ok(rec)) => {
                        images.insert(rec.id.clone(), rec);
                    }
                    _ => tracing::warn!(path = %path.display(), "skipping unreadable image record"),
                }
            }
        }
        Ok(ImageStore { dir: dir.to_owned(), images })
    }

    pub fn all(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.values()
    }

    pub fn get(&self, id: &str) -> Option<&ImageRecord> {
        self.images.get(id)
    }

    /// Finds an image by reference, `repo@digest`, full ID or unique ID prefix.
    pub fn resolve(&self, name: &str) -> Result<&ImageRecord, ImageError> {
        let not_found = || ImageError::NotFound(name.to_owned());
        if let Ok(r) = parse_reference(name) {
            if let Some(d) = r.digest() {
                let want = format!("{}@{}", repository(&r), d);
                if let Some(img) = self.images.values().find(|i| i.repo_digests.contains(&want)) {
                    return Ok(img);
                }
            } else {
                let want = tagged(&r);
                if let Some(img) = self.images.values().find(|i| i.repo_tags.contains(&want)) {
                    return Ok(img);
                }
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut found = self.images.values().filter(|i| i.id["sha256:".len()..].starts_with(hex));
            if let Some(first) = found.next()
                && found.next().is_none()
            {
                return Ok(first);
            }
        }
        Err(not_found())
    }

    /// Writes `rec` (durably) and indexes it.
    /// Bytes of `img`'s layers that its parent image does not have (what removing it alone
    /// frees, as prune reports it).
    pub fn own_size(&self, img: &ImageRecord) -> u64 {
        let parent = self.get(&img.parent);
        let shared = |chain: &str| parent.is_some_and(|p| p.layers.iter().any(|l| l.chain_id == chain));
        img.layers.iter().filter(|l| !shared(&l.chain_id)).map(|l| l.size).sum()
    }

    pub fn put(&mut self, rec: ImageRecord) -> Result<(), ImageError> {
        let path = self.dir.join(format!("{}.json", &rec.id["sha256:".len()..]));
        let bytes = serde_json::to_vec_pretty(&rec).expect("image record serialises");
        crate::fsutil::write_atomic(&path, &bytes).map_err(io_err(&path))?;
        self.images.insert(rec.id.clone(), rec);
        Ok(())
    }

    /// Moves tag `tag` (normalised) to image `id`, taking it from any other image.
    pub fn set_tag(&mut self, id: &str, tag: &str) -> Result<(), ImageError> {
        let others: Vec<ImageRecord> =
            self.images.values().filter(|i| i.id != id && i.repo_tags.iter().any(|t| t == tag)).cloned().collect();
        for mut other in others {
            other.repo_tags.retain(|t| t != tag);
            self.put(other)?;
        }
        let mut rec = self.images.get(id).cloned().ok_or_else(|| ImageError::NotFound(id.into()))?;
        if !rec.repo_tags.iter().any(|t| t == tag) {
            rec.repo_tags.push(tag.to_owned());
        }
        self.put(rec)
    }

    pub fn remove(&mut self, id: &str) -> Result<Option<ImageRecord>, ImageError> {
        let path = self.dir.join(format!("{}.json", id.strip_prefix("sha256:").unwrap_or(id)));
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
        Ok(self.images.remove(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise_and_show_familiar() {
        let r = parse_reference("busybox").unwrap();
        assert_eq!(tagged(&r), "docker.io/library/busybox:latest");
        assert_eq!(familiar(&tagged(&r)), "busybox:latest");
        let r = parse_reference("127.0.0.1:5000/tools/bb:1").unwrap();
        assert_eq!(familiar(&tagged(&r)), "127.0.0.1:5000/tools/bb:1");
        assert!(parse_reference("UPPER").is_err());
    }

    #[test]
    fn resolve_by_tag_and_id_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = ImageStore::open(dir.path()).unwrap();
        let id = format!("sha256:{}", "ab".repeat(32));
        s.put(ImageRecord {
            id: id.clone(),
            repo_tags: vec![],
            repo_digests: vec![],
            layers: vec![],
            created: String::new(),
            parent: String::new(),
            comment: String::new(),
        })
        .unwrap();
        s.set_tag(&id, "docker.io/library/x:latest").unwrap();
        assert_eq!(s.resolve("x").unwrap().id, id);
        assert_eq!(s.resolve("abab").unwrap().id, id);
        assert!(matches!(s.resolve("y"), Err(ImageError::NotFound(_))));
        let s2 = ImageStore::open(dir.path()).unwrap();
        assert_eq!(s2.resolve("x:latest").unwrap().id, id);
    }
}
