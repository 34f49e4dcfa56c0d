//! The guest image (`vmlinuz`, `initrd.img`): used from the cache in `$BERTH_HOME/image`, or
//! built there on first start by `vm-image/build.sh`, whose progress lines are passed through.
//!
//! A cached image is rebuilt when the agent it would carry is newer than it (a developer's
//! `cargo build` must reach the VM). The build writes into a temporary directory that replaces
//! the cache only when complete, so an interrupted build never leaves half an image.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Errors finding or building the guest image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "no guest image in {cache} and no builder found (vm-image/build.sh beside this program's checkout, \
         or BERTH_IMAGE_BUILDER); pass --image DIR with vmlinuz and initrd.img"
    )]
    NoBuilder { cache: PathBuf },
    #[error("building the guest image with {builder} failed ({status}); its last lines:\n{tail}")]
    Build { builder: PathBuf, status: std::process::ExitStatus, tail: String },
    #[error("guest image I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether `dir` holds an image.
pub fn is_image(dir: &Path) -> bool {
    dir.join("vmlinuz").is_file() && dir.join("initrd.img").is_file()
}

/// Where the image builder and the agent it packs are, for a `berth` program at `exe`: a
/// checkout's `vm-image/build.sh` above it (target/debug/berth in a checkout) and the
/// `berth-agent` beside it. `BERTH_IMAGE_BUILDER` overrides the builder.
pub fn builder_for(exe: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let builder = std::env::var_os("BERTH_IMAGE_BUILDER")
        .map(PathBuf::from)
        .or_else(|| exe.ancestors().skip(1).map(|d| d.join("vm-image/build.sh")).find(|p| p.is_file()))?;
    let agent = exe.parent().map(|d| d.join("berth-agent")).filter(|p| p.is_file());
    Some((builder, agent))
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Whether the image in `cache` must be (re)built: missing, or older than `agent`.
pub fn stale(cache: &Path, agent: Option<&Path>) -> bool {
    if !is_image(cache) {
        return true;
    }
    match (agent.and_then(modified), modified(&cache.join("initrd.img"))) {
        (Some(agent), Some(image)) => agent > image,
        _ => false,
    }
}

/// The image to boot: `cache`, built first if it is missing or stale. `progress` gets every
/// line the builder prints.
pub async fn ensure(cache: &Path, exe: &Path, mut progress: impl FnMut(&str)) -> Result<PathBuf, ImageError> {
    let found = builder_for(exe);
    let agent = found.as_ref().and_then(|(_, a)| a.clone());
    if !stale(cache, agent.as_deref()) {
        return Ok(cache.to_owned());
    }
    let Some((builder, agent)) = found else {
        return if is_image(cache) {
            Ok(cache.to_owned())
        } else {
            Err(ImageError::NoBuilder { cache: cache.to_owned() })
        };
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ImageError::Io { path, source }
    };
    let tmp = cache.with_extension("building");
    let _ = std::fs::remove_dir_all(&tmp);
    // The kernel package download is worth keeping across rebuilds.
    if cache.join("debs").is_dir() {
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        std::fs::rename(cache.join("debs"), tmp.join("debs")).map_err(io(&tmp))?;
    }
    progress(&format!("building the guest image with {}", builder.display()));
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&builder).arg(&tmp).stdout(Stdio::null()).stderr(Stdio::piped());
    if let Some(a) = &agent {
        cmd.env("BERTH_AGENT", a);
    }
    let mut child = cmd.spawn().map_err(io(&builder))?;
    let mut lines = Vec::new();
    if let Some(err) = child.stderr.take() {
        use tokio::io::AsyncBufReadExt;
        let mut rd = tokio::io::BufReader::new(err).lines();
        while let Ok(Some(line)) = rd.next_line().await {
            progress(line.trim_start_matches("==> "));
            lines.push(line);
        }
    }
    let status = child.wait().await.map_err(io(&builder))?;
    if !status.success() {
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        return Err(ImageError::Build { builder, status, tail });
    }
    let _ = std::fs::remove_dir_all(cache);
    std::fs::rename(&tmp, cache).map_err(io(cache))?;
    Ok(cache.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_older_than_the_agent_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("image");
        let agent = dir.path().join("berth-agent");
        std::fs::write(&agent, "old agent").unwrap();
        assert!(stale(&cache, Some(&agent)), "a missing image is stale");
        std::fs::create_dir_all(&cache).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        for f in ["vmlinuz", "initrd.img"] {
            std::fs::write(cache.join(f), "x").unwrap();
        }
        assert!(!stale(&cache, Some(&agent)));
        assert!(!stale(&cache, None), "without an agent to compare, a whole image is used");
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&agent, "new agent").unwrap();
        assert!(stale(&cache, Some(&agent)), "a newer agent makes the image stale");
    }

    #[test]
    fn finds_the_checkouts_builder_above_the_program() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vm-image")).unwrap();
        std::fs::write(dir.path().join("vm-image/build.sh"), "").unwrap();
        std::fs::create_dir_all(dir.path().join("target/debug")).unwrap();
        std::fs::write(dir.path().join("target/debug/berth-agent"), "").unwrap();
        let (builder, agent) = builder_for(&dir.path().join("target/debug/berth")).unwrap();
        assert_eq!(builder, dir.path().join("vm-image/build.sh"));
        assert_eq!(agent.unwrap(), dir.path().join("target/debug/berth-agent"));
    }

    #[tokio::test]
    async fn a_failing_build_names_itself_and_leaves_no_image() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("vm-image")).unwrap();
        std::fs::write(
            dir.path().join("vm-image/build.sh"),
            "echo '==> step one' >&2; echo 'no kernel here' >&2; exit 3",
        )
        .unwrap();
        let cache = dir.path().join("home/image");
        let mut seen = Vec::new();
        let err = ensure(&cache, &dir.path().join("bin/berth"), |l| seen.push(l.to_owned())).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("failed") && text.contains("no kernel here"), "{text}");
        assert!(seen.iter().any(|l| l == "step one"), "{seen:?}");
        assert!(!is_image(&cache));
    }
}
