//! Pulling an image from a registry with `oci-client`.
//!
//! 1. Resolve the reference to a manifest for the platform asked for, by default
//!    `linux/<guest arch>` (an index is resolved with our own platform resolver: oci-client's
//!    default picks the *host* OS, wrong in a VM).
//! 2. Fetch the config blob; its digest is the image ID.
//! 3. Download the layers that are not in the content store, up to three at a time, each
//!    through an ingest that verifies its digest before it is committed.
//! 4. Unpack each while it downloads (the bytes go to the ingest and to the unpacker at once)
//!    into a staged snapshot, checking its uncompressed digest against the config's
//!    `diff_ids`; the snapshot is put in place under its chain ID only once both digests hold.
//! 5. Record the image and move the tag to it.
//!
//! Plain HTTP is used for registries on loopback (as dockerd allows 127.0.0.0/8) and for
//! those the engine was told are insecure; everything else is HTTPS.

use std::io::Write as _;
use std::sync::Arc;

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{ImageIndexEntry, OciDescriptor};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::sync::{Semaphore, mpsc};

use super::platform::Platform;
use super::unpack::{self, Whiteouts};
use super::{ImageError, ImageRecord, LayerRecord, familiar, parse_reference, repository, tagged};
use crate::Stores;
use crate::model::ImageConfig;
use crate::snapshot::chain_ids;

/// One line of pull progress, as dockerd streams it.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Short layer ID the line is about, or the tag for the opening line.
    pub id: Option<String>,
    pub status: String,
    pub current: Option<u64>,
    pub total: Option<u64>,
    /// A closing result, as dockerd's `aux` field carries it (a push's tag, digest and size).
    pub aux: Option<serde_json::Value>,
}

impl Progress {
    pub(super) fn msg(id: Option<&str>, status: impl Into<String>) -> Self {
        Progress { id: id.map(str::to_owned), status: status.into(), ..Default::default() }
    }
}

/// Credentials for one pull.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// A registry token (`identitytoken` / `registrytoken`), used as a bearer token.
    pub token: String,
}

impl Credentials {
    /// As oci-client takes them: a token, a user and password, or none.
    pub(super) fn auth(&self) -> RegistryAuth {
        if !self.token.is_empty() {
            RegistryAuth::Bearer(self.token.clone())
        } else if !self.username.is_empty() {
            RegistryAuth::Basic(self.username.clone(), self.password.clone())
        } else {
            RegistryAuth::Anonymous
        }
    }
}

pub(super) fn is_loopback(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .map(|(h, p)| if p.bytes().all(|b| b.is_ascii_digit()) { h } else { registry })
        .unwrap_or(registry);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Points a loopback registry at the user's machine when the engine runs in a VM; the image
/// keeps its name (`127.0.0.1:5000/app`), only the connection goes elsewhere.
pub(super) fn redirect_loopback(reference: &mut Reference, host: Option<&str>) {
    let Some(host) = host else { return };
    let registry = reference.registry().to_owned();
    if is_loopback(&registry) {
        let port = registry.rsplit_once(':').map(|(_, p)| p).filter(|p| p.bytes().all(|b| b.is_ascii_digit()));
        reference.set_mirror_registry(match port {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        });
    }
}

/// The digest of the entry of an index that is `platform`'s.
fn resolve_platform(platform: &Platform, entries: &[ImageIndexEntry]) -> Option<String> {
    entries
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| platform.matches(&p.os.to_string(), &p.architecture.to_string(), p.variant.as_deref()))
        })
        .map(|e| e.digest.clone())
}

/// A registry client for `reference` that resolves indexes to `platform`'s entry.
pub(super) fn client_for(reference: &Reference, insecure: &[String], platform: Platform) -> Client {
    let registry = reference.resolve_registry().to_owned();
    let protocol = if is_loopback(&registry)
        || is_loopback(reference.registry())
        || insecure.iter().any(|r| r == &registry || r == reference.registry())
    {
        ClientProtocol::Http
    } else {
        ClientProtocol::Https
    };
    let platform_resolver = Box::new(move |entries: &[ImageIndexEntry]| resolve_platform(&platform, entries));
    Client::new(ClientConfig { protocol, platform_resolver: Some(platform_resolver), ..Default::default() })
}

pub(super) fn registry_error(reference: &Reference, e: OciDistributionError) -> ImageError {
    let shown = familiar(&tagged(reference));
    match &e {
        // What oci-client says when the platform resolver finds no entry in an index.
        OciDistributionError::ImageManifestNotFoundError(m) if m.contains("matching client's default platform") => {
            ImageError::NoPlatform { platform: Platform::native().to_string() }
        }
        OciDistributionError::ImageManifestNotFoundError(_) => ImageError::ManifestUnknown(shown),
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|x| &x.code).collect();
            if codes.iter().any(|c| matches!(c, OciErrorCode::ManifestUnknown)) {
                ImageError::ManifestUnknown(shown)
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::NameUnknown | OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Denied { repo: familiar(&repository(reference)), detail: e.to_string() }
            } else {
                ImageError::Registry(e.to_string())
            }
        }
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            ImageError::Denied { repo: familiar(&repository(reference)), detail: e.to_string() }
        }
        OciDistributionError::ImageIndexParsingNoPlatformResolverError => {
            ImageError::NoPlatform { platform: Platform::native().to_string() }
        }
        OciDistributionError::GenericError(Some(m)) if m.contains("platform") => {
            ImageError::NoPlatform { platform: Platform::native().to_string() }
        }
        _ => ImageError::Registry(format!("{e}")),
    }
}

pub(super) fn short(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap_or(digest).chars().take(12).collect()
}

/// Checks `creds` against `server` (`docker login`): a registry that asks for Basic auth must
/// accept them on `/v2/`; one that hands out bearer tokens (Docker Hub's scheme) must issue a
/// token for them.
pub async fn login(stores: &Stores, server: &str, creds: &Credentials) -> Result<(), ImageError> {
    let registry = server.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
    let registry = match registry {
        "" | "index.docker.io/v1" | "docker.io" => "index.docker.io",
        r => r.split('/').next().unwrap_or(r),
    };
    let mut reference = parse_reference(&format!("{registry}/library/login-check"))?;
    redirect_loopback(&mut reference, stores.host_loopback.as_deref());
    let scheme = if is_loopback(registry) || stores.insecure_registries.iter().any(|r| r == registry) {
        "http"
    } else {
        "https"
    };
    let url = format!("{scheme}://{}/v2/", reference.resolve_registry());
    let http = reqwest::Client::new();
    let unreachable = |e: reqwest::Error| ImageError::Registry(format!("Get \"{url}\": {e}"));
    let res = http.get(&url).send().await.map_err(unreachable)?;
    if res.status().is_success() {
        return Ok(());
    }
    let challenge =
        res.headers().get(reqwest::header::WWW_AUTHENTICATE).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
    let denied = || ImageError::Unauthorized(format!("Get \"{url}\": unauthorized: incorrect username or password"));
    if challenge.to_ascii_lowercase().starts_with("basic") {
        let res =
            http.get(&url).basic_auth(&creds.username, Some(&creds.password)).send().await.map_err(unreachable)?;
        return if res.status().is_success() { Ok(()) } else { Err(denied()) };
    }
    let client = client_for(&reference, &stores.insecure_registries, Platform::native());
    let auth = RegistryAuth::Basic(creds.username.clone(), creds.password.clone());
    client.auth(&reference, &auth, oci_client::RegistryOperation::Pull).await.map(|_| ()).map_err(|_| denied())
}

/// Pulls `name` and returns the image record. Progress lines go to `progress`.
pub async fn pull(
    stores: &Stores,
    name: &str,
    creds: &Credentials,
    platform: Option<&Platform>,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<ImageRecord, ImageError> {
    let mut reference = parse_reference(name)?;
    redirect_loopback(&mut reference, stores.host_loopback.as_deref());
    let platform = platform.cloned().unwrap_or_else(Platform::native);
    let client = client_for(&reference, &stores.insecure_registries, platform.clone());
    let auth = creds.auth();
    let tag_shown =
        reference.digest().map(str::to_owned).or(reference.tag().map(str::to_owned)).unwrap_or_else(|| "latest".into());
    let (manifest, manifest_digest, list_digest) = client
        .pull_image_manifest_and_list_digest(&reference, &auth)
        .await
        .map_err(|e| match registry_error(&reference, e) {
            ImageError::NoPlatform { .. } => ImageError::NoPlatform { platform: platform.to_string() },
            other => other,
        })?;
    // Only now, as dockerd does: an unknown image fails before any progress is streamed.
    let _ =
        progress.send(Progress::msg(Some(&tag_shown), format!("Pulling from {}", familiar(&repository(&reference)))));
    let repo_digest = list_digest.unwrap_or(manifest_digest);

    // The config blob, verified by digest.
    let mut config_bytes = Vec::new();
    client
        .pull_blob(&reference, &manifest.config, &mut config_bytes)
        .await
        .map_err(|e| registry_error(&reference, e))?;
    let id = stores.content.put(&config_bytes)?;
    if id != manifest.config.digest {
        return Err(ImageError::Registry(format!("config digest {id} is not {}", manifest.config.digest)));
    }
    let config: ImageConfig = serde_json::from_slice(&config_bytes).map_err(ImageError::BadConfig)?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::Invalid(format!(
            "image has {} layers but its config lists {} diff_ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let chains = chain_ids(&config.rootfs.diff_ids);

    let existing = stores.images.lock().expect("image store lock").get(&id).cloned();
    let up_to_date =
        existing.as_ref().is_some_and(|e| e.layers.iter().all(|l| stores.snapshots.has_layer(&l.chain_id)));

    let mut layers = Vec::with_capacity(manifest.layers.len());
    if !up_to_date {
        // Start every needed download (at most three at a time), then unpack in order.
        let limit = Arc::new(Semaphore::new(3));
        let mut downloads = Vec::new();
        for (desc, chain) in manifest.layers.iter().zip(&chains) {
            let sid = short(&desc.digest);
            if stores.snapshots.has_layer(chain) {
                let _ = progress.send(Progress::msg(Some(&sid), "Already exists"));
                downloads.push(None);
                continue;
            }
            let _ = progress.send(Progress::msg(Some(&sid), "Pulling fs layer"));
            let (client, reference, desc, stores, progress, limit) =
                (client.clone(), reference.clone(), desc.clone(), stores.clone(), progress.clone(), limit.clone());
            let (chain, diff_id) = (chain.clone(), config.rootfs.diff_ids[downloads.len()].clone());
            downloads.push(Some(tokio::spawn(async move {
                let _permit = limit.acquire().await;
                let staged = fetch_and_unpack(&client, &reference, &desc, &diff_id, &stores, &progress).await?;
                let digest = desc.digest.clone();
                tokio::task::spawn_blocking(move || -> Result<(), ImageError> {
                    let started = std::time::Instant::now();
                    stores.snapshots.commit_layer(&chain, &staged)?;
                    tracing::info!(layer = %digest, commit_ms = started.elapsed().as_millis() as u64, "layer in place");
                    Ok(())
                })
                .await
                .map_err(|e| ImageError::Registry(format!("unpack task: {e}")))?
            })));
        }
        // Announced in order, as dockerd announces them.
        for (i, job) in downloads.into_iter().enumerate() {
            let Some(job) = job else { continue };
            job.await.map_err(|e| ImageError::Registry(format!("download task: {e}")))??;
            let _ = progress.send(Progress::msg(Some(&short(&manifest.layers[i].digest)), "Pull complete"));
        }
    }
    for (i, desc) in manifest.layers.iter().enumerate() {
        layers.push(LayerRecord {
            diff_id: config.rootfs.diff_ids[i].clone(),
            chain_id: chains[i].clone(),
            blob: Some(desc.digest.clone()),
            media_type: desc.media_type.clone(),
            size: stores.snapshots.layer_size(&chains[i]),
        });
    }

    let tag = reference.digest().is_none().then(|| tagged(&reference));
    let digest_ref = format!("{}@{}", repository(&reference), repo_digest);
    let mut images = stores.images.lock().expect("image store lock");
    let mut rec = existing.unwrap_or(ImageRecord {
        id: id.clone(),
        repo_tags: vec![],
        repo_digests: vec![],
        layers: vec![],
        created: config.created.clone().unwrap_or_default(),
        parent: String::new(),
        comment: String::new(),
    });
    rec.layers = layers;
    if !rec.repo_digests.contains(&digest_ref) {
        rec.repo_digests.push(digest_ref);
    }
    images.put(rec)?;
    if let Some(tag) = &tag {
        images.set_tag(&id, tag)?;
    }
    let rec = images.get(&id).cloned().expect("just stored");
    drop(images);

    let _ = progress.send(Progress::msg(None, format!("Digest: {repo_digest}")));
    let shown = familiar(&tag.unwrap_or_else(|| format!("{}@{}", repository(&reference), repo_digest)));
    let status = if up_to_date {
        format!("Status: Image is up to date for {shown}")
    } else {
        format!("Status: Downloaded newer image for {shown}")
    };
    let _ = progress.send(Progress::msg(None, status));
    Ok(rec)
}

/// What `GET /distribution/{name}/json` tells: the manifest (or index) a reference names in
/// its registry, and the platforms it has.
#[derive(Debug, Clone)]
pub struct Distribution {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// (architecture, os, variant)
    pub platforms: Vec<(String, String, Option<String>)>,
}

/// Looks `name` up in its registry without pulling it (`docker manifest`'s and docker-py's
/// `get_registry_data`): an index lists its platforms; a single manifest's comes from its
/// config.
pub async fn distribution(stores: &Stores, name: &str, creds: &Credentials) -> Result<Distribution, ImageError> {
    const ACCEPTED: [&str; 4] = [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ];
    let mut reference = parse_reference(name)?;
    redirect_loopback(&mut reference, stores.host_loopback.as_deref());
    let client = client_for(&reference, &stores.insecure_registries, Platform::native());
    let (raw, digest) = client
        .pull_manifest_raw(&reference, &creds.auth(), &ACCEPTED)
        .await
        .map_err(|e| registry_error(&reference, e))?;
    let doc: serde_json::Value = serde_json::from_slice(&raw).map_err(ImageError::BadConfig)?;
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let mut media_type = text(&doc, "mediaType");
    let platforms = if let Some(entries) = doc.get("manifests").and_then(|m| m.as_array()) {
        if media_type.is_empty() {
            media_type = ACCEPTED[0].into();
        }
        entries
            .iter()
            .filter_map(|e| e.get("platform"))
            .map(|p| {
                (text(p, "architecture"), text(p, "os"), p.get("variant").and_then(|v| v.as_str()).map(str::to_owned))
            })
            .collect()
    } else {
        if media_type.is_empty() {
            media_type = ACCEPTED[2].into();
        }
        let config: OciDescriptor =
            serde_json::from_value(doc.get("config").cloned().unwrap_or_default()).map_err(ImageError::BadConfig)?;
        let mut bytes = Vec::new();
        client.pull_blob(&reference, &config, &mut bytes).await.map_err(|e| registry_error(&reference, e))?;
        let c: serde_json::Value = serde_json::from_slice(&bytes).map_err(ImageError::BadConfig)?;
        vec![(text(&c, "architecture"), text(&c, "os"), c.get("variant").and_then(|v| v.as_str()).map(str::to_owned))]
    };
    Ok(Distribution { media_type, digest, size: raw.len() as u64, platforms })
}

/// Downloads a layer into the content store and unpacks it into a staged snapshot at the
/// same time (the bytes go to both as they come): returns the staged directory once the
/// blob's digest and the uncompressed stream's (`diff_id`) both hold; nothing is left behind
/// when either fails. A blob the store has already (an earlier pull that stopped before
/// unpacking it) is unpacked from there.
async fn fetch_and_unpack(
    client: &Client,
    reference: &Reference,
    desc: &OciDescriptor,
    diff_id: &str,
    stores: &Stores,
    progress: &mpsc::UnboundedSender<Progress>,
) -> Result<std::path::PathBuf, ImageError> {
    let sid = short(&desc.digest);
    let (tx, rx) = mpsc::channel::<bytes::Bytes>(AHEAD);
    let started = std::time::Instant::now();
    let from_store = stores.content.exists(&desc.digest);
    let unpacker = {
        let (stores, diff_id, digest) = (stores.clone(), diff_id.to_owned(), desc.digest.clone());
        tokio::task::spawn_blocking(move || -> Result<std::path::PathBuf, ImageError> {
            let staged = stores.snapshots.stage()?;
            let source: Box<dyn std::io::Read + Send> = if from_store {
                Box::new(stores.content.open_blob(&digest)?)
            } else {
                Box::new(Arriving { rx, chunk: bytes::Bytes::new() })
            };
            let result = unpack::unpack(
                std::io::BufReader::with_capacity(1 << 20, source),
                &staged,
                Whiteouts::Overlay,
                Some(&diff_id),
            );
            match result {
                Ok(_) => Ok(staged),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&staged);
                    Err(e.into())
                }
            }
        })
    };
    let fetched = if from_store {
        let _ = progress.send(Progress::msg(Some(&sid), "Download complete"));
        Ok(true)
    } else {
        download(client, reference, desc, stores, progress, tx).await
    };
    let _ = progress.send(Progress::msg(Some(&sid), "Extracting"));
    let unpacked = unpacker.await.map_err(|e| ImageError::Registry(format!("unpack task: {e}")))?;
    tracing::info!(layer = %desc.digest, unpack_ms = started.elapsed().as_millis() as u64, "layer unpacked");
    match (fetched, unpacked) {
        (Ok(true), Ok(staged)) => Ok(staged),
        // The unpacker failed, and the download stopped for it: the unpacker's reason.
        (Ok(_), Err(e)) => Err(e),
        (fetched, Ok(staged)) => {
            let _ = std::fs::remove_dir_all(&staged);
            Err(fetched.err().unwrap_or_else(|| {
                ImageError::Registry(format!("downloading {}: stopped before its end", desc.digest))
            }))
        }
        (Err(e), Err(_)) => Err(e),
    }
}

/// How many downloaded chunks may wait for the unpacker.
const AHEAD: usize = 64;

/// The unpacker's side of a download: the chunks as they arrive, as one stream (its end is
/// the download's).
struct Arriving {
    rx: mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl std::io::Read for Arriving {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.chunk = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        bytes::Buf::advance(&mut self.chunk, n);
        Ok(n)
    }
}

/// Downloads a blob into the content store (committed once its digest holds), passing each
/// chunk to `unpacker` too. `Ok(false)` when the unpacker stopped taking them (it failed:
/// its error says why), and the download with it.
async fn download(
    client: &Client,
    reference: &Reference,
    desc: &OciDescriptor,
    stores: &Stores,
    progress: &mpsc::UnboundedSender<Progress>,
    unpacker: mpsc::Sender<bytes::Bytes>,
) -> Result<bool, ImageError> {
    let sid = short(&desc.digest);
    let started = std::time::Instant::now();
    let mut stream = client.pull_blob_stream(reference, desc).await.map_err(|e| registry_error(reference, e))?;
    let total = stream.content_length.or(u64::try_from(desc.size).ok());
    let mut ingest = stores.content.ingest()?;
    let mut last_report = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ImageError::Registry(format!("downloading {}: {e}", desc.digest)))?;
        ingest.write_all(&chunk).map_err(|e| ImageError::Registry(format!("writing {}: {e}", desc.digest)))?;
        if unpacker.send(chunk).await.is_err() {
            return Ok(false);
        }
        let done = ingest.written();
        if done - last_report >= 256 * 1024 || Some(done) == total {
            last_report = done;
            let _ = progress.send(Progress {
                id: Some(sid.clone()),
                status: "Downloading".into(),
                current: Some(done),
                total,
                aux: None,
            });
        }
    }
    drop(unpacker);
    let _ = progress.send(Progress::msg(Some(&sid), "Verifying Checksum"));
    let fetched = started.elapsed();
    tokio::task::block_in_place(|| ingest.commit(Some(&desc.digest)))?;
    tracing::info!(
        layer = %desc.digest,
        bytes = desc.size,
        fetch_ms = fetched.as_millis() as u64,
        commit_ms = (started.elapsed() - fetched).as_millis() as u64,
        "layer downloaded"
    );
    let _ = progress.send(Progress::msg(Some(&sid), "Download complete"));
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_recognised() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(is_loopback("127.1.2.3"));
        assert!(!is_loopback("index.docker.io"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn loopback_registries_lead_to_the_host_from_a_vm() {
        let mut r = parse_reference("127.0.0.1:5000/app:1").unwrap();
        redirect_loopback(&mut r, Some("10.0.2.2"));
        assert_eq!(r.resolve_registry(), "10.0.2.2:5000");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        let mut r = parse_reference("busybox").unwrap();
        redirect_loopback(&mut r, Some("10.0.2.2"));
        assert_eq!(r.resolve_registry(), "index.docker.io");
    }
}
