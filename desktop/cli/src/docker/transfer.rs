//! Verbs that move whole images, filesystems and files: `commit`, `save`, `load`, `export`,
//! `import`, `cp` and `build`. Archives stream between the socket and the disk in chunks,
//! never whole in memory.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use bollard::Docker;
use bollard::query_parameters as q;
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// Bytes for a request body, read in 1 MiB chunks.
type Chunks = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

/// A file's bytes as a request body.
async fn file_body(path: &Path) -> anyhow::Result<Chunks> {
    let f = tokio::fs::File::open(path).await.with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::pin(tokio_util::io::ReaderStream::with_capacity(f, 1 << 20)))
}

/// Standard input as a request body.
fn stdin_body() -> Chunks {
    Box::pin(tokio_util::io::ReaderStream::with_capacity(tokio::io::stdin(), 1 << 20))
}

/// Writes an archive stream to `out` (a file) or to standard output, which must not be a
/// terminal (as docker refuses).
async fn write_stream(
    mut stream: impl Stream<Item = Result<bytes::Bytes, bollard::errors::Error>> + Unpin,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match out {
        Some(p) => Box::new(tokio::fs::File::create(p).await.with_context(|| format!("creating {}", p.display()))?),
        None if std::io::stdout().is_terminal() => {
            anyhow::bail!("cowardly refusing to write an archive to a terminal: use -o FILE or redirect the output")
        }
        None => Box::new(tokio::io::stdout()),
    };
    while let Some(chunk) = stream.next().await {
        sink.write_all(&chunk?).await?;
    }
    sink.flush().await?;
    Ok(())
}

pub async fn commit(
    d: &Docker,
    container: &str,
    target: Option<&str>,
    message: &str,
    author: &str,
) -> anyhow::Result<i32> {
    let (repo, tag) = target.map(super::images::split_tag).unwrap_or(("", None));
    let opts = q::CommitContainerOptionsBuilder::new()
        .container(container)
        .repo(repo)
        .tag(if repo.is_empty() { "" } else { tag.unwrap_or("latest") })
        .comment(message)
        .author(author)
        .pause(true)
        .build();
    let id = d.commit_container(opts, bollard::models::ContainerConfig::default()).await?.id;
    println!("{id}");
    Ok(0)
}

pub async fn save(d: &Docker, images: &[String], out: Option<&Path>) -> anyhow::Result<i32> {
    let names: Vec<&str> = images.iter().map(String::as_str).collect();
    write_stream(Box::pin(d.export_images(&names)), out).await?;
    Ok(0)
}

pub async fn export(d: &Docker, container: &str, out: Option<&Path>) -> anyhow::Result<i32> {
    write_stream(Box::pin(d.export_container(container)), out).await?;
    Ok(0)
}

pub async fn load(d: &Docker, input: Option<&Path>, quiet: bool) -> anyhow::Result<i32> {
    let body = match input {
        Some(p) => file_body(p).await?,
        None if std::io::stdin().is_terminal() => {
            anyhow::bail!("requested load from stdin, but stdin is empty: use -i FILE or redirect the input")
        }
        None => stdin_body(),
    };
    let mut stream = Box::pin(d.import_image(
        q::ImportImageOptionsBuilder::new().quiet(quiet).build(),
        bollard::body_try_stream(body),
        None,
    ));
    while let Some(msg) = stream.next().await {
        let m = msg?;
        if let Some(e) = m.error_detail.and_then(|e| e.message).or(m.error) {
            anyhow::bail!("{e}");
        }
        if let Some(s) = m.stream.or(m.status) {
            print!("{s}");
        }
    }
    Ok(0)
}

pub async fn import(d: &Docker, source: &str, target: Option<&str>, changes: &[String]) -> anyhow::Result<i32> {
    let body = if source == "-" { stdin_body() } else { file_body(Path::new(source)).await? };
    let (repo, tag) = target.map(super::images::split_tag).unwrap_or(("", None));
    let mut opts = q::CreateImageOptionsBuilder::new().from_src("-").repo(repo);
    if !repo.is_empty() {
        opts = opts.tag(tag.unwrap_or("latest"));
    }
    if !changes.is_empty() {
        opts = opts.changes(changes.to_vec());
    }
    let mut stream = Box::pin(d.create_image(Some(opts.build()), Some(bollard::body_try_stream(body)), None));
    while let Some(msg) = stream.next().await {
        let m = msg?;
        if let Some(e) = m.error_detail.and_then(|e| e.message).or(m.error) {
            anyhow::bail!("{e}");
        }
        if let Some(s) = m.status {
            println!("{s}");
        }
    }
    Ok(0)
}

/// `CONTAINER:PATH`, if `arg` names one (a path with a `/` before its first colon is local,
/// as docker reads it).
fn container_path(arg: &str) -> Option<(&str, &str)> {
    let (c, p) = arg.split_once(':')?;
    (!c.is_empty() && !c.contains('/')).then_some((c, p))
}

/// `docker cp`: one side is `CONTAINER:PATH`. Copying into an existing directory puts the
/// source inside it under its own name; to any other path, the source takes that name.
pub async fn cp(d: &Docker, socket: &Path, src: &str, dst: &str) -> anyhow::Result<i32> {
    match (container_path(src), container_path(dst)) {
        (Some((c, path)), None) => copy_out(d, c, path, Path::new(dst)).await,
        (None, Some((c, path))) => copy_in(d, socket, Path::new(src), c, path).await,
        _ => anyhow::bail!(
            "copying between two containers or two local paths is not supported: one side must be CONTAINER:PATH"
        ),
    }?;
    Ok(0)
}

async fn copy_out(d: &Docker, container: &str, path: &str, dst: &Path) -> anyhow::Result<()> {
    let opts = q::DownloadFromContainerOptionsBuilder::new().path(path).build();
    let mut stream = Box::pin(d.download_from_container(container, Some(opts)));
    // Spooled to an unlinked temporary file: the tar crate reads synchronously.
    let mut spool = tempfile::tempfile()?;
    while let Some(chunk) = stream.next().await {
        spool.write_all(&chunk?)?;
    }
    let (into, rename) = if dst.is_dir() {
        (dst.to_owned(), None)
    } else {
        let parent = dst.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        anyhow::ensure!(parent.is_dir(), "no such directory: {}", parent.display());
        (parent.to_owned(), dst.file_name().map(PathBuf::from))
    };
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        use std::io::Seek;
        spool.rewind()?;
        let mut archive = tar::Archive::new(spool);
        archive.set_preserve_permissions(true);
        archive.set_overwrite(true);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry.path()?.into_owned();
            // The archive's first component is the source's own name; it may take another.
            let mut parts = name.components();
            let first = parts.next();
            let rel: PathBuf = match (&rename, first) {
                (Some(r), Some(_)) => r.join(parts.as_path()),
                _ => name.clone(),
            };
            let target = confined_target(&into, &rel)
                .with_context(|| format!("refusing {}: it would land outside {}", name.display(), into.display()))?;
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            entry.unpack(&target).with_context(|| format!("writing {}", target.display()))?;
        }
        Ok(())
    })
    .await??;
    Ok(())
}

/// Where `rel` (from a container's archive) goes under `into`: only plain names, and no
/// directory on the way that is a symlink (one the archive made could lead anywhere).
fn confined_target(into: &Path, rel: &Path) -> Option<PathBuf> {
    let mut at = into.to_owned();
    let names: Vec<_> = rel.components().collect();
    for (i, c) in names.iter().enumerate() {
        let std::path::Component::Normal(n) = c else { return None };
        at.push(n);
        let last = i + 1 == names.len();
        if !last && std::fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return None;
        }
    }
    Some(at)
}

async fn copy_in(d: &Docker, socket: &Path, src: &Path, container: &str, path: &str) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(src).with_context(|| format!("{}", src.display()))?;
    // Into an existing directory: under the source's name; otherwise the path's last part is
    // the new name, in its parent.
    let into_dir = path.ends_with('/') || is_container_dir(socket, container, path).await;
    let (dest_dir, name) = if into_dir {
        (path.to_owned(), src.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")))
    } else {
        let p = Path::new(path);
        let parent =
            p.parent().map(|x| x.to_string_lossy().into_owned()).filter(|x| !x.is_empty()).unwrap_or("/".into());
        (parent, p.file_name().map(PathBuf::from).context("a destination path needs a name")?)
    };
    let src = src.to_owned();
    let tar = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
        let mut b = tar::Builder::new(tempfile::tempfile()?);
        b.follow_symlinks(false);
        if meta.is_dir() {
            b.append_dir_all(&name, &src)?;
        } else {
            b.append_path_with_name(&src, &name)?;
        }
        let mut f = b.into_inner()?;
        use std::io::Seek;
        f.rewind()?;
        Ok(f)
    })
    .await??;
    let body = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(tar), 1 << 20);
    let opts = q::UploadToContainerOptionsBuilder::new().path(&dest_dir).build();
    d.upload_to_container(container, Some(opts), bollard::body_try_stream(body)).await?;
    Ok(())
}

/// Whether `path` is a directory in the container: `HEAD /containers/{id}/archive`, whose
/// `X-Docker-Container-Path-Stat` header (base64 JSON) carries the mode, Go's `os.ModeDir`
/// (1 << 31) for a directory. bollard has no call for this HEAD, and a download would tar the
/// whole directory just to learn that it is one; so it is one plain HTTP/1.0 request here.
async fn is_container_dir(socket: &Path, container: &str, path: &str) -> bool {
    use base64::Engine as _;
    use tokio::io::AsyncReadExt;
    let encode = |t: &str| -> String {
        t.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let Ok(mut conn) = berth_core::local::connect(socket).await else { return false };
    let request =
        format!("HEAD /containers/{}/archive?path={} HTTP/1.0\r\nHost: berth\r\n\r\n", encode(container), encode(path));
    let mut head = Vec::new();
    if conn.write_all(request.as_bytes()).await.is_err() || conn.read_to_end(&mut head).await.is_err() {
        return false;
    }
    let head = String::from_utf8_lossy(&head);
    let Some(value) = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("x-docker-container-path-stat").then(|| v.trim().to_owned())
    }) else {
        return false;
    };
    let stat: serde_json::Value = base64::engine::general_purpose::STANDARD
        .decode(value)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    stat["mode"].as_u64().is_some_and(|m| m & (1 << 31) != 0)
}

/// `berth build`'s flags.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// Name and tag the image (`NAME[:TAG]`); may repeat.
    #[arg(short, long = "tag")]
    tags: Vec<String>,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    #[arg(short, long)]
    file: Option<String>,
    /// `KEY=VALUE` for an `ARG`.
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    #[arg(long)]
    no_cache: bool,
    /// Build up to this stage.
    #[arg(long)]
    target: Option<String>,
    /// Only the image ID at the end.
    #[arg(short, long)]
    quiet: bool,
    /// The build context: a directory.
    context: PathBuf,
}

/// The context directory as a tar, without what its `.dockerignore` leaves out (as the docker
/// CLI sends it; the engine applies the same file again).
fn context_tar(dir: &Path, dockerfile: &str) -> anyhow::Result<std::fs::File> {
    let ignore = match std::fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => berth_dockerignore::Ignore::parse(&text).map_err(anyhow::Error::msg)?,
        Err(_) => berth_dockerignore::Ignore::default(),
    };
    let mut b = tar::Builder::new(tempfile::tempfile()?);
    b.follow_symlinks(false);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = dir.join(&rel);
        for e in std::fs::read_dir(&full).with_context(|| format!("reading {}", full.display()))? {
            let e = e?;
            let child = rel.join(e.file_name());
            let text = child.to_string_lossy().replace('\\', "/");
            // The Dockerfile and .dockerignore go even when ignored (the builder needs them).
            let needed = text == dockerfile || text == ".dockerignore";
            if ignore.excluded(&text) && !needed {
                continue;
            }
            let kind = e.file_type()?;
            if kind.is_dir() {
                b.append_dir(&child, e.path())?;
                stack.push(child);
            } else {
                b.append_path_with_name(e.path(), &child)?;
            }
        }
    }
    let mut f = b.into_inner()?;
    use std::io::Seek;
    f.rewind()?;
    Ok(f)
}

pub async fn build(d: &Docker, a: BuildArgs) -> anyhow::Result<i32> {
    anyhow::ensure!(a.context.is_dir(), "the build context {} is not a directory", a.context.display());
    let dockerfile = a.file.clone().unwrap_or_else(|| "Dockerfile".into());
    let (dir, df) = (a.context.clone(), dockerfile.clone());
    let tar = tokio::task::spawn_blocking(move || context_tar(&dir, &df)).await??;
    let args: std::collections::HashMap<String, String> = a
        .build_args
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.clone(), std::env::var(kv).unwrap_or_default()),
        })
        .collect();
    let mut opts = q::BuildImageOptionsBuilder::new()
        .dockerfile(&dockerfile)
        .t(a.tags.first().map(String::as_str).unwrap_or(""))
        .nocache(a.no_cache)
        .rm(true)
        .q(a.quiet)
        .buildargs(&args);
    if let Some(t) = &a.target {
        opts = opts.target(t);
    }
    let body = tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(tar), 1 << 20);
    let mut stream = Box::pin(d.build_image(opts.build(), None, Some(bollard::body_try_stream(body))));
    let mut id = None;
    while let Some(msg) = stream.next().await {
        let m = msg?;
        if let Some(e) = m.error_detail.and_then(|e| e.message).or(m.error) {
            anyhow::bail!("{}", e.trim_end());
        }
        if let Some(s) = m.stream {
            if a.quiet {
                id = Some(s.trim().to_owned());
            } else {
                print!("{s}");
            }
        }
        if let Some(aux) = m.aux.and_then(|x| x.id) {
            id = Some(aux);
        }
    }
    let _ = std::io::stdout().flush();
    // Extra tags, as docker adds them after the build.
    if let Some(id) = &id {
        for t in a.tags.iter().skip(1) {
            super::images::tag(d, id, t).await?;
        }
        if a.quiet {
            println!("{id}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_are_told_from_local_ones() {
        assert_eq!(container_path("web:/etc/hosts"), Some(("web", "/etc/hosts")));
        assert_eq!(container_path("./a:b"), None);
        assert_eq!(container_path("/tmp/x"), None);
        assert_eq!(container_path("file"), None);
    }

    #[test]
    fn the_context_leaves_out_what_dockerignore_says() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::write(d.path().join(".dockerignore"), "node_modules\n*.log\n").unwrap();
        std::fs::create_dir_all(d.path().join("node_modules/pkg")).unwrap();
        std::fs::write(d.path().join("node_modules/pkg/index.js"), "x").unwrap();
        std::fs::write(d.path().join("app.js"), "y").unwrap();
        std::fs::write(d.path().join("debug.log"), "z").unwrap();
        let mut names: Vec<String> = tar::Archive::new(context_tar(d.path(), "Dockerfile").unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [".dockerignore", "Dockerfile", "app.js"]);
    }
}
