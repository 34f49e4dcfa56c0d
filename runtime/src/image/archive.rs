//! Image archives: `save`/`load` in the docker-archive format, `import` of a flat filesystem
//! tarball, and the diff writer that turns a container's overlay upper directory into a layer.
//!
//! docker-archive (what `docker save` writes and every dockerd loads): a tar holding
//! `manifest.json` (`[{"Config": "<hex>.json", "RepoTags": [...], "Layers": ["<hex>/layer.tar"]}]`),
//! the config blobs, and each layer as an *uncompressed* tar whose digest is its diff ID.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::unpack::{self, Whiteouts};
use super::{ImageError, ImageRecord, LayerRecord, familiar, io_err, parse_reference, tagged};
use crate::Stores;
use crate::fsutil::confined::Confined;
use crate::model::{ImageConfig, now_rfc3339};
use crate::snapshot::chain_ids;

/// One entry of `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// Writes the uncompressed diff of `layer` (from its stored blob) to `out`.
fn write_layer_tar(stores: &Stores, layer: &LayerRecord, out: &mut dyn Write) -> Result<(), ImageError> {
    let blob = layer
        .blob
        .as_deref()
        .ok_or_else(|| ImageError::Invalid(format!("layer {} has no stored blob", layer.diff_id)))?;
    let mut reader = unpack::decompressor(Box::new(io::BufReader::new(stores.content.open_blob(blob)?)))
        .map_err(|source| ImageError::Io { path: blob.into(), source })?;
    io::copy(&mut reader, out).map_err(|source| ImageError::Io { path: blob.into(), source })?;
    Ok(())
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, bytes: &[u8]) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, bytes)
}

/// Writes a docker-archive of `images` (each with the names to record) into `out`.
pub fn save(
    stores: &Stores,
    images: &[(ImageRecord, Vec<String>)],
    scratch: &Path,
    out: impl Write,
) -> Result<(), ImageError> {
    let mut tar = tar::Builder::new(out);
    let werr = |source| ImageError::Io { path: "archive".into(), source };
    let mut manifest = Vec::new();
    let mut written = std::collections::HashSet::new();
    for (img, names) in images {
        let config = stores.content.read(&img.id)?;
        let config_name = format!("{}.json", hex_of(&img.id));
        if written.insert(config_name.clone()) {
            append_bytes(&mut tar, &config_name, &config).map_err(werr)?;
        }
        let mut layers = Vec::new();
        for layer in &img.layers {
            let name = format!("{}/layer.tar", hex_of(&layer.diff_id));
            if written.insert(name.clone()) {
                // The tar header needs the size first: decompress to a scratch file.
                let tmp_path = scratch.join(format!("layer-{:016x}", rand::random::<u64>()));
                let mut tmp = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&tmp_path)
                    .map_err(io_err(&tmp_path))?;
                let _ = fs::remove_file(&tmp_path);
                write_layer_tar(stores, layer, &mut tmp)?;
                let size = tmp.stream_position().map_err(werr)?;
                tmp.rewind().map_err(werr)?;
                let mut h = tar::Header::new_ustar();
                h.set_size(size);
                h.set_mode(0o644);
                h.set_mtime(0);
                tar.append_data(&mut h, &name, tmp).map_err(werr)?;
            }
            layers.push(name);
        }
        manifest.push(ManifestEntry { config: config_name, repo_tags: Some(names.clone()), layers });
    }
    append_bytes(&mut tar, "manifest.json", &serde_json::to_vec(&manifest).expect("manifest")).map_err(werr)?;
    let mut repos: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (img, names) in images {
        for n in names {
            if let Some((repo, tag)) = n.rsplit_once(':').filter(|(_, t)| !t.contains('/')) {
                let top = img.layers.last().map(|l| hex_of(&l.diff_id).to_owned()).unwrap_or_default();
                repos.entry(repo.to_owned()).or_default().insert(tag.to_owned(), top);
            }
        }
    }
    append_bytes(&mut tar, "repositories", &serde_json::to_vec(&repos).expect("repositories")).map_err(werr)?;
    tar.finish().map_err(werr)?;
    Ok(())
}

/// Stores the layer tarball read from `source` (any compression; `what` names it in errors)
/// and unpacks it as the snapshot on top of `parent_chain`; checks `expected_diff` when
/// given. Returns the layer record.
pub fn add_layer(
    stores: &Stores,
    mut source: impl Read,
    what: &str,
    parent_chain: Option<&str>,
    expected_diff: Option<&str>,
) -> Result<LayerRecord, ImageError> {
    let mut ingest = stores.content.ingest()?;
    io::copy(&mut source, &mut ingest).map_err(io_err(Path::new(what)))?;
    let blob = ingest.commit(None)?;
    let staged = stores.snapshots.stage()?;
    let result = unpack::unpack(
        io::BufReader::new(stores.content.open_blob(&blob)?),
        &staged,
        Whiteouts::Overlay,
        expected_diff,
    );
    let unpacked = match result {
        Ok(u) => u,
        Err(e) => {
            let _ = fs::remove_dir_all(&staged);
            return Err(e.into());
        }
    };
    let chain = match parent_chain {
        None => unpacked.diff_id.clone(),
        Some(p) => chain_ids(&[p.to_owned(), unpacked.diff_id.clone()]).pop().expect("two"),
    };
    let size = stores.snapshots.commit_layer(&chain, &staged)?;
    let media_type = if blob == unpacked.diff_id {
        "application/vnd.oci.image.layer.v1.tar"
    } else {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    };
    Ok(LayerRecord {
        diff_id: unpacked.diff_id,
        chain_id: chain,
        blob: Some(blob),
        media_type: media_type.into(),
        size,
    })
}

/// Records an image whose config is `config_bytes` and layers `layers`, tagged `tags`
/// (normalised). Returns the record.
pub fn record_image(
    stores: &Stores,
    config_bytes: &[u8],
    layers: Vec<LayerRecord>,
    tags: &[String],
    parent: &str,
    comment: &str,
) -> Result<ImageRecord, ImageError> {
    let id = stores.content.put(config_bytes)?;
    let config: ImageConfig = serde_json::from_slice(config_bytes).map_err(ImageError::BadConfig)?;
    let mut images = stores.images.lock().expect("image store lock");
    let mut rec = images.get(&id).cloned().unwrap_or(ImageRecord {
        id: id.clone(),
        repo_tags: vec![],
        repo_digests: vec![],
        layers: vec![],
        created: config.created.clone().unwrap_or_else(now_rfc3339),
        parent: parent.to_owned(),
        comment: comment.to_owned(),
    });
    rec.layers = layers;
    images.put(rec)?;
    for t in tags {
        images.set_tag(&id, t)?;
    }
    Ok(images.get(&id).cloned().expect("just stored"))
}

/// Loads a docker-archive (already extracted, safely, into `dir`). Returns the loaded images
/// with the names they were loaded under (familiar), or their IDs when untagged.
pub fn load(stores: &Stores, dir: &Path) -> Result<Vec<String>, ImageError> {
    // The archive's own names are resolved inside it: a manifest cannot point elsewhere.
    let confined = Confined::open(dir).map_err(io_err(dir))?;
    let inside = |name: &str| -> Result<File, ImageError> {
        confined
            .lookup_follow(Path::new(name))
            .and_then(|i| i.open())
            .map_err(|e| ImageError::Invalid(format!("{name}: {e}")))
    };
    let manifest_path = dir.join("manifest.json");
    let bytes = fs::read(&manifest_path)
        .map_err(|_| ImageError::Invalid("archive has no manifest.json: is it a `docker save` archive?".into()))?;
    let manifest: Vec<ManifestEntry> =
        serde_json::from_slice(&bytes).map_err(|e| ImageError::Invalid(format!("manifest.json: {e}")))?;
    let mut loaded = Vec::new();
    for entry in manifest {
        let mut config_bytes = Vec::new();
        inside(&entry.config)?
            .read_to_end(&mut config_bytes)
            .map_err(|e| ImageError::Invalid(format!("{}: {e}", entry.config)))?;
        let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(ImageError::BadConfig)?;
        if config.rootfs.diff_ids.len() != entry.layers.len() {
            return Err(ImageError::Invalid(format!(
                "{} lists {} layers but its config {}",
                entry.config,
                entry.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        let chains = chain_ids(&config.rootfs.diff_ids);
        let mut layers = Vec::new();
        for (i, layer_name) in entry.layers.iter().enumerate() {
            let diff = &config.rootfs.diff_ids[i];
            let layer = if stores.snapshots.has_layer(&chains[i]) {
                let existing = stores
                    .images
                    .lock()
                    .expect("image store lock")
                    .all()
                    .flat_map(|img| img.layers.iter())
                    .find(|l| l.chain_id == chains[i])
                    .cloned();
                match existing.filter(|l| l.blob.as_deref().is_some_and(|b| stores.content.exists(b))) {
                    Some(l) => l,
                    // The snapshot is there but no blob to save it from later: store this one.
                    None => {
                        let parent = (i > 0).then(|| chains[i - 1].as_str());
                        add_layer(stores, inside(layer_name)?, layer_name, parent, Some(diff))?
                    }
                }
            } else {
                let parent = if i == 0 { None } else { Some(chains[i - 1].as_str()) };
                add_layer(stores, inside(layer_name)?, layer_name, parent, Some(diff))?
            };
            layers.push(layer);
        }
        let tags: Vec<String> = entry
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| parse_reference(t).map(|r| tagged(&r)))
            .collect::<Result<_, _>>()?;
        let rec = record_image(stores, &config_bytes, layers, &tags, "", "")?;
        if tags.is_empty() {
            loaded.push(format!("Loaded image ID: {}", rec.id));
        } else {
            loaded.extend(tags.iter().map(|t| format!("Loaded image: {}", familiar(t))));
        }
    }
    Ok(loaded)
}

/// `docker import`: a flat filesystem tarball becomes a one-layer image.
pub fn import(
    stores: &Stores,
    tarball: impl Read,
    tag: Option<&str>,
    config: crate::model::ContainerConfig,
    comment: &str,
) -> Result<ImageRecord, ImageError> {
    let layer = add_layer(stores, tarball, "the imported archive", None, None)?;
    let image_config = ImageConfig {
        architecture: crate::model::go_arch().into(),
        os: "linux".into(),
        created: Some(now_rfc3339()),
        config,
        rootfs: crate::model::RootFs { kind: "layers".into(), diff_ids: vec![layer.diff_id.clone()] },
        history: vec![crate::model::History {
            created: Some(now_rfc3339()),
            comment: Some(if comment.is_empty() { "Imported from -".into() } else { comment.into() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let bytes = serde_json::to_vec(&image_config).expect("config");
    let tags: Vec<String> = tag.map(|t| parse_reference(t).map(|r| tagged(&r))).transpose()?.into_iter().collect();
    record_image(stores, &bytes, vec![layer], &tags, "", comment)
}

/// Writes the diff in an overlay upper directory as an OCI layer tar: overlay whiteouts (0:0
/// character devices) become `.wh.NAME`, opaque directories get `.wh..wh..opq`.
pub fn diff_tar(upper: &Path, out: impl Write) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let mut stack: Vec<PathBuf> = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = upper.join(&rel);
        let mut entries: Vec<_> = fs::read_dir(&dir)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = rel.join(e.file_name());
            let meta = fs::symlink_metadata(e.path())?;
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                let wh = rel.join(format!(".wh.{}", e.file_name().to_string_lossy()));
                let mut h = tar::Header::new_gnu();
                h.set_size(0);
                h.set_mode(0o600);
                h.set_mtime(meta.mtime().max(0) as u64);
                tar.append_data(&mut h, wh, io::empty())?;
                continue;
            }
            tar.append_path_with_name(e.path(), &name)?;
            if ft.is_dir() {
                if is_opaque(&e.path()) {
                    let mut h = tar::Header::new_gnu();
                    h.set_size(0);
                    h.set_mode(0o600);
                    tar.append_data(&mut h, name.join(".wh..wh..opq"), io::empty())?;
                }
                stack.push(name);
            }
        }
    }
    tar.finish()
}

fn is_opaque(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(p) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: valid C strings and a buffer we own, with its length.
    let n =
        unsafe { libc::lgetxattr(p.as_ptr(), c"trusted.overlay.opaque".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    n == 1 && buf[0] == b'y'
}

/// Reads an uploaded archive into a fresh directory under `scratch`, confined to it.
pub fn extract_upload(body: impl Read + Send, scratch: &Path) -> Result<PathBuf, ImageError> {
    let dir = scratch.join(format!("upload-{:016x}", rand::random::<u64>()));
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let mut plain = unpack::decompressor(Box::new(body)).map_err(io_err(&dir))?;
    if let Err(e) = unpack::apply_tar(&mut plain, &dir, Whiteouts::Plain) {
        let _ = fs::remove_dir_all(&dir);
        return Err(e.into());
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_tar_turns_overlay_whiteouts_into_oci_ones() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path();
        fs::create_dir_all(up.join("etc")).unwrap();
        fs::write(up.join("etc/new"), b"n").unwrap();
        nix::sys::stat::mknod(&up.join("etc/gone"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0)
            .unwrap();
        fs::create_dir(up.join("opq")).unwrap();
        crate::fsutil::confined::set_xattr_path(&up.join("opq"), "trusted.overlay.opaque", b"y", false).unwrap();
        let mut out = Vec::new();
        diff_tar(up, &mut out).unwrap();
        let mut names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["etc", "etc/.wh.gone", "etc/new", "opq", "opq/.wh..wh..opq"]);
    }
}
