//! Pushing an image to a registry with `oci-client` (`docker push`).
//!
//! 1. The tag must name a local image (dockerd's "An image does not exist locally with the
//!    tag"); a push without a tag pushes every tag of the repository, as dockerd does.
//! 2. Each layer goes up as the compressed blob it was pulled as; a layer made here (build,
//!    commit, import, load keep them as plain tars) is gzipped first, into a scratch file,
//!    as dockerd compresses on push. A blob the registry has already is skipped ("Layer
//!    already exists"); the rest stream from disk, never held in memory whole.
//! 3. Then the config blob, then an OCI image manifest naming them, whose digest is the
//!    push's result and becomes one of the image's repo digests.
//!
//! The registry connection (loopback and insecure registries over plain HTTP, a loopback
//! registry reached on the user's machine from the VM) is the pull's, as are the errors.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use oci_client::Reference;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::pull::{Credentials, Progress, client_for, redirect_loopback, registry_error, short};
use super::{ImageError, ImageRecord, LayerRecord, familiar, parse_reference, repository, tagged};
use crate::Stores;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The tags `name` (with `tag`, or every tag of its repository when `tag` is empty) pushes.
pub fn tags_to_push(stores: &Stores, name: &str, tag: &str) -> Result<Vec<String>, ImageError> {
    let full = if tag.is_empty() { name.to_owned() } else { format!("{name}:{tag}") };
    let reference = parse_reference(&full)?;
    let images = stores.images.lock().expect("image store lock");
    let explicit = !tag.is_empty() || name.rsplit_once(':').is_some_and(|(_, t)| !t.contains('/'));
    if explicit {
        let wanted = tagged(&reference);
        return if images.all().any(|i| i.repo_tags.contains(&wanted)) {
            Ok(vec![wanted])
        } else {
            Err(ImageError::NoLocalTag(familiar(&wanted)))
        };
    }
    let repo = repository(&reference);
    let mut tags: Vec<String> = images
        .all()
        .flat_map(|i| i.repo_tags.iter())
        .filter(|t| t.rsplit_once(':').is_some_and(|(r, _)| r == repo))
        .cloned()
        .collect();
    tags.sort();
    if tags.is_empty() {
        return Err(ImageError::NoLocalTag(familiar(&repo)));
    }
    Ok(tags)
}

/// A blob ready to go up: where its bytes are, its digest, size and media type.
struct Upload {
    file: File,
    digest: String,
    size: u64,
    media_type: &'static str,
}

/// Pushes the image tagged `tag` (normalised `repo:tag`); returns its manifest digest.
/// Progress lines go to `progress`; `scratch` holds compressed copies of plain layers.
pub async fn push(
    stores: &Stores,
    tag: &str,
    creds: &Credentials,
    scratch: &Path,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<String, ImageError> {
    let mut reference = parse_reference(tag)?;
    redirect_loopback(&mut reference, stores.host_loopback.as_deref());
    let img: ImageRecord = stores.images.lock().expect("image store lock").resolve(tag)?.clone();
    let client = client_for(&reference, &stores.insecure_registries, super::platform::Platform::native());
    client.store_auth_if_needed(reference.resolve_registry(), &creds.auth()).await;
    let _ = progress
        .send(Progress::msg(None, format!("The push refers to repository [{}]", familiar(&repository(&reference)))));
    for layer in img.layers.iter().rev() {
        let _ = progress.send(Progress::msg(Some(&short(&layer.diff_id)), "Preparing"));
    }
    let mut descriptors = Vec::with_capacity(img.layers.len());
    for layer in img.layers.iter().rev() {
        let sid = short(&layer.diff_id);
        let (stores2, layer2, scratch2) = (stores.clone(), layer.clone(), scratch.to_owned());
        let upload = tokio::task::spawn_blocking(move || prepare(&stores2, &layer2, &scratch2))
            .await
            .map_err(|e| ImageError::Registry(format!("preparing a layer: {e}")))??;
        if client.blob_exists(&reference, &upload.digest).await.map_err(|e| push_error(&reference, e))? {
            let _ = progress.send(Progress::msg(Some(&sid), "Layer already exists"));
        } else {
            send_blob(&client, &reference, &upload, &sid, progress).await?;
            let _ = progress.send(Progress::msg(Some(&sid), "Pushed"));
        }
        descriptors.push(serde_json::json!({
            "mediaType": upload.media_type, "digest": upload.digest, "size": upload.size,
        }));
    }
    descriptors.reverse();
    let config = stores.content.read(&img.id)?;
    if !client.blob_exists(&reference, &img.id).await.map_err(|e| push_error(&reference, e))? {
        client.push_blob(&reference, config.clone(), &img.id).await.map_err(|e| push_error(&reference, e))?;
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": img.id, "size": config.len()},
        "layers": descriptors,
    }))
    .expect("a manifest serialises");
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    let size = manifest.len();
    client
        .push_manifest_raw(&reference, manifest, MANIFEST.parse().expect("a valid header value"))
        .await
        .map_err(|e| push_error(&reference, e))?;
    {
        let mut images = stores.images.lock().expect("image store lock");
        if let Some(mut rec) = images.get(&img.id).cloned() {
            let by_digest = format!("{}@{digest}", repository(&reference));
            if !rec.repo_digests.contains(&by_digest) {
                rec.repo_digests.push(by_digest);
                images.put(rec)?;
            }
        }
    }
    let shown_tag = reference.tag().unwrap_or("latest").to_owned();
    let _ = progress.send(Progress::msg(None, format!("{shown_tag}: digest: {digest} size: {size}")));
    let _ = progress.send(Progress {
        aux: Some(serde_json::json!({"Tag": shown_tag, "Digest": digest, "Size": size})),
        ..Default::default()
    });
    Ok(digest)
}

/// A registry's refusal as a push's error (the pull's wording names pulling).
fn push_error(reference: &Reference, e: oci_client::errors::OciDistributionError) -> ImageError {
    match registry_error(reference, e) {
        ImageError::Denied { detail, .. } => ImageError::Unauthorized(detail),
        other => other,
    }
}

/// The blob to send for `layer`: the stored one if it is compressed, else a gzip of it.
fn prepare(stores: &Stores, layer: &LayerRecord, scratch: &Path) -> Result<Upload, ImageError> {
    let blob = layer
        .blob
        .as_deref()
        .ok_or_else(|| ImageError::Invalid(format!("layer {} has no stored blob to push", layer.diff_id)))?;
    let path = stores.content.path(blob)?;
    let mut file = File::open(&path).map_err(super::io_err(&path))?;
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic).map_err(super::io_err(&path))?;
    file.rewind().map_err(super::io_err(&path))?;
    let media_type = match &magic[..n] {
        [0x1f, 0x8b, ..] => Some(GZIP_LAYER),
        [0x28, 0xb5, 0x2f, 0xfd] => Some(ZSTD_LAYER),
        _ => None,
    };
    if let Some(media_type) = media_type {
        let size = file.metadata().map_err(super::io_err(&path))?.len();
        return Ok(Upload { file, digest: blob.to_owned(), size, media_type });
    }
    // A plain tar: gzipped into an unlinked scratch file, hashed as it is written.
    let tmp: PathBuf = scratch.join(format!("push-{:016x}", rand::random::<u64>()));
    let out = File::options().read(true).write(true).create_new(true).open(&tmp).map_err(super::io_err(&tmp))?;
    let _ = std::fs::remove_file(&tmp);
    let mut hashing = HashingWriter { inner: out, hash: Sha256::new(), written: 0 };
    let mut gz = flate2::write::GzEncoder::new(&mut hashing, flate2::Compression::default());
    std::io::copy(&mut std::io::BufReader::with_capacity(1 << 20, file), &mut gz).map_err(super::io_err(&tmp))?;
    gz.finish().map_err(super::io_err(&tmp))?;
    let HashingWriter { inner: mut out, hash, written } = hashing;
    out.rewind().map_err(super::io_err(&tmp))?;
    Ok(Upload {
        file: out,
        digest: format!("sha256:{}", hex::encode(hash.finalize())),
        size: written,
        media_type: GZIP_LAYER,
    })
}

/// A writer that hashes and counts what goes through it.
struct HashingWriter {
    inner: File,
    hash: Sha256,
    written: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams `upload` to the registry in chunks, reporting how far it got.
async fn send_blob(
    client: &oci_client::Client,
    reference: &Reference,
    upload: &Upload,
    sid: &str,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<(), ImageError> {
    let file = upload.file.try_clone().map_err(|source| ImageError::Io { path: "a layer to push".into(), source })?;
    let total = upload.size;
    let (progress, sid) = (progress.clone(), sid.to_owned());
    let mut sent = 0u64;
    let mut last = 0u64;
    let chunks = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20).map(move |c| {
        let c = c.map_err(oci_client::errors::OciDistributionError::IoError)?;
        sent += c.len() as u64;
        if sent - last >= 512 * 1024 || sent == total {
            last = sent;
            let _ = progress.send(Progress {
                id: Some(sid.clone()),
                status: "Pushing".into(),
                current: Some(sent),
                total: Some(total),
                aux: None,
            });
        }
        Ok(c)
    });
    client
        .push_blob_stream(reference, chunks, &upload.digest, Some(upload.size))
        .await
        .map(|_| ())
        .map_err(|e| push_error(reference, e))
}
