//! The guest image (`vmlinuz`, `initrd.img`, `manifest.txt`): booted from the cache in
//! `$BERTH_HOME/image` (`image-arm64` for the arm64 guest: [`GuestArch::image_dir`]), which is
//! filled from one of two places.
//!
//! - An installed package carries the images built with it ([`packaged_for`]): `/usr/lib/berth/image`
//!   (and `image-arm64`) beside `/usr/bin/berth`, `Contents/Resources/image` in the macOS app
//!   bundle, `image\` beside `berth.exe` on Windows. It is looked for first, and the cache is replaced whenever
//!   it is not the same image (its manifest names the agent's digest and the kernel), so an
//!   upgraded or downgraded package always boots the guest that speaks its own protocol.
//! - In a source checkout, `vm-image/build.sh` builds it on first start, passing its progress
//!   lines through, and again when the agent it would carry is newer than the cached image (a
//!   developer's `cargo build` must reach the VM). The agent is the one beside `berth` for the
//!   host's own guest, and the cross-built one in `target/cross/<target>/` for the other.
//!
//! Both write into a temporary directory that replaces the cache only when complete, so an
//! interrupted copy or build never leaves half an image.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::arch::GuestArch;

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

/// The files of an image, each copied from a package into the cache.
const FILES: [&str; 3] = ["vmlinuz", "initrd.img", "manifest.txt"];

/// Whether `dir` holds an image.
pub fn is_image(dir: &Path) -> bool {
    dir.join("vmlinuz").is_file() && dir.join("initrd.img").is_file()
}

/// The `arch` image an installed package carries for a `berth` program at `exe`, if there is
/// one, in a directory named as in the cache (`image`, `image-arm64`): under `../lib/berth` (a
/// Linux package's `/usr/bin` and `/usr/lib`), `../Resources` (a macOS bundle's
/// `Contents/MacOS` and `Contents/Resources`), or beside the program (Windows). Symbolic links
/// to the program (Homebrew's, a user's `~/bin`) are followed first.
pub fn packaged_for(exe: &Path, arch: GuestArch) -> Option<PathBuf> {
    let exe = std::fs::canonicalize(exe).unwrap_or_else(|_| exe.to_owned());
    let dir = exe.parent()?;
    let name = arch.image_dir();
    [dir.join("../lib/berth"), dir.join("../Resources"), dir.to_owned()]
        .into_iter()
        .map(|d| d.join(name))
        .find(|d| is_image(d) && d.join("manifest.txt").is_file())
}

/// The architecture an image's manifest names (`arch arm64`); None for images built before
/// the line existed (all x86-64) or without a manifest.
pub fn arch_of(dir: &Path) -> Option<GuestArch> {
    let manifest = std::fs::read_to_string(dir.join("manifest.txt")).ok()?;
    manifest.lines().find_map(|l| l.strip_prefix("arch ")).and_then(|a| a.trim().parse().ok())
}

/// Whether `a` and `b` hold the same image: the same manifest (kernel, agent digest, tools)
/// and files of the same lengths.
fn same_image(a: &Path, b: &Path) -> bool {
    let manifest = |d: &Path| std::fs::read(d.join("manifest.txt")).ok();
    let len = |d: &Path, f: &str| std::fs::metadata(d.join(f)).map(|m| m.len()).ok();
    is_image(a)
        && is_image(b)
        && manifest(a).is_some()
        && manifest(a) == manifest(b)
        && ["vmlinuz", "initrd.img"].iter().all(|f| len(a, f).is_some() && len(a, f) == len(b, f))
}

/// Makes `cache` a copy of the image in `packaged`. The copy is written beside the cache and
/// renamed over it once whole.
fn copy_image(packaged: &Path, cache: &Path) -> Result<(), ImageError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ImageError::Io { path, source }
    };
    let tmp = cache.with_extension("installing");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    for f in FILES {
        let (from, to) = (packaged.join(f), tmp.join(f));
        std::fs::copy(&from, &to).map_err(io(&from))?;
        // Written through a handle that may write: Windows flushes no read-only handle.
        std::fs::OpenOptions::new().write(true).open(&to).and_then(|f| f.sync_all()).map_err(io(&to))?;
    }
    if cache.exists() {
        std::fs::remove_dir_all(cache).map_err(io(cache))?;
    }
    std::fs::rename(&tmp, cache).map_err(io(cache))?;
    Ok(())
}

/// Where the image builder and the agent it packs are, for a `berth` program at `exe` and an
/// `arch` guest: a checkout's `vm-image/build.sh` above it (target/debug/berth in a checkout),
/// and the `berth-agent` beside it for the host's own guest, or the checkout's cross-built one
/// (`target/cross/<target>/{release,debug}`) for the other. `BERTH_IMAGE_BUILDER` overrides
/// the builder.
pub fn builder_for(exe: &Path, arch: GuestArch) -> Option<(PathBuf, Option<PathBuf>)> {
    let builder = std::env::var_os("BERTH_IMAGE_BUILDER")
        .map(PathBuf::from)
        .or_else(|| exe.ancestors().skip(1).map(|d| d.join("vm-image/build.sh")).find(|p| p.is_file()))?;
    let agent = if arch == GuestArch::host() {
        exe.parent().map(|d| d.join("berth-agent")).filter(|p| p.is_file())
    } else {
        let checkout = builder.parent()?.parent()?;
        ["release", "debug"]
            .iter()
            .map(|p| checkout.join("target/cross").join(arch.rust_target()).join(p).join("berth-agent"))
            .find(|p| p.is_file())
    };
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

/// The image to boot: `cache`, filled first from the package `exe` was installed from, or else
/// built if it is missing or stale. `progress` gets what is being done, and every line the
/// builder prints.
pub async fn ensure(
    cache: &Path,
    exe: &Path,
    arch: GuestArch,
    mut progress: impl FnMut(&str),
) -> Result<PathBuf, ImageError> {
    if let Some(packaged) = packaged_for(exe, arch) {
        if !same_image(&packaged, cache) {
            progress(&format!("installing the guest image from {}", packaged.display()));
            let (from, to) = (packaged, cache.to_owned());
            tokio::task::spawn_blocking(move || copy_image(&from, &to))
                .await
                .map_err(|e| ImageError::Io { path: cache.to_owned(), source: std::io::Error::other(e) })??;
        }
        return Ok(cache.to_owned());
    }
    let found = builder_for(exe, arch);
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
    progress(&format!("building the {arch} guest image with {}", builder.display()));
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&builder).args(["--arch", arch.name()]).arg(&tmp).stdout(Stdio::null()).stderr(Stdio::piped());
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
        let (builder, agent) = builder_for(&dir.path().join("target/debug/berth"), GuestArch::host()).unwrap();
        assert_eq!(builder, dir.path().join("vm-image/build.sh"));
        assert_eq!(agent.unwrap(), dir.path().join("target/debug/berth-agent"));
        // The other architecture's guest packs the cross-built agent, or none the builder
        // could be told of (it then looks for one itself, and says how to build it).
        let other = GuestArch::ALL.into_iter().find(|a| *a != GuestArch::host()).unwrap();
        let (_, agent) = builder_for(&dir.path().join("target/debug/berth"), other).unwrap();
        assert_eq!(agent, None);
        let cross = dir.path().join("target/cross").join(other.rust_target()).join("release");
        std::fs::create_dir_all(&cross).unwrap();
        std::fs::write(cross.join("berth-agent"), "").unwrap();
        let (_, agent) = builder_for(&dir.path().join("target/debug/berth"), other).unwrap();
        assert_eq!(agent.unwrap(), cross.join("berth-agent"));
    }

    #[test]
    fn the_manifest_names_the_images_architecture() {
        let dir = tempfile::tempdir().unwrap();
        write_image(dir.path(), "arch arm64\nkernel linux-image-6.1.0-57-cloud-arm64\n", "i");
        assert_eq!(arch_of(dir.path()), Some(GuestArch::Arm64));
        write_image(dir.path(), "kernel linux-image-6.1.0-57-cloud-amd64\n", "i");
        assert_eq!(arch_of(dir.path()), None, "an image from before the line");
    }

    fn write_image(dir: &Path, manifest: &str, initrd: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("vmlinuz"), "kernel").unwrap();
        std::fs::write(dir.join("initrd.img"), initrd).unwrap();
        std::fs::write(dir.join("manifest.txt"), manifest).unwrap();
    }

    #[tokio::test]
    async fn a_packaged_image_fills_the_cache_before_any_builder_is_asked() {
        let dir = tempfile::tempdir().unwrap();
        // An installed package: /usr/bin/berth and /usr/lib/berth/image, and a builder that
        // fails if it is run.
        write_image(&dir.path().join("usr/lib/berth/image"), "agent aaa\n", "initramfs v1");
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/berth-agent"), "agent").unwrap();
        std::fs::create_dir_all(dir.path().join("vm-image")).unwrap();
        std::fs::write(dir.path().join("vm-image/build.sh"), "echo 'the builder ran' >&2; exit 9").unwrap();
        let exe = dir.path().join("usr/bin/berth");
        assert_eq!(packaged_for(&exe, GuestArch::Amd64).unwrap(), dir.path().join("usr/bin/../lib/berth/image"));
        assert_eq!(packaged_for(&exe, GuestArch::Arm64), None, "the package has no arm64 image");

        let cache = dir.path().join("home/image");
        let mut seen = Vec::new();
        let got = ensure(&cache, &exe, GuestArch::Amd64, |l| seen.push(l.to_owned())).await.unwrap();
        assert_eq!(got, cache);
        assert_eq!(std::fs::read_to_string(cache.join("initrd.img")).unwrap(), "initramfs v1");
        assert_eq!(std::fs::read_to_string(cache.join("manifest.txt")).unwrap(), "agent aaa\n");
        assert!(seen.iter().any(|l| l.starts_with("installing the guest image from")), "{seen:?}");

        // The same image again: nothing is copied (the cache's file is the one written before).
        let before = std::fs::metadata(cache.join("initrd.img")).unwrap().modified().unwrap();
        seen.clear();
        ensure(&cache, &exe, GuestArch::Amd64, |l| seen.push(l.to_owned())).await.unwrap();
        assert!(seen.is_empty(), "{seen:?}");
        assert_eq!(std::fs::metadata(cache.join("initrd.img")).unwrap().modified().unwrap(), before);

        // An upgraded package (another agent): the cache is replaced, whatever its age.
        write_image(&dir.path().join("usr/lib/berth/image"), "agent bbb\n", "initramfs v2");
        ensure(&cache, &exe, GuestArch::Amd64, |_| ()).await.unwrap();
        assert_eq!(std::fs::read_to_string(cache.join("initrd.img")).unwrap(), "initramfs v2");
        assert!(!cache.with_extension("installing").exists());
    }

    #[test]
    fn packaged_images_are_found_where_each_hosts_bundle_puts_them() {
        let dir = tempfile::tempdir().unwrap();
        // macOS: Berth.app/Contents/MacOS/berth and Contents/Resources/image.
        let mac = dir.path().join("Berth.app/Contents");
        write_image(&mac.join("Resources/image"), "m", "i");
        std::fs::create_dir_all(mac.join("MacOS")).unwrap();
        assert!(packaged_for(&mac.join("MacOS/berth"), GuestArch::Amd64).is_some());
        write_image(&mac.join("Resources/image-arm64"), "m", "i");
        assert_eq!(
            packaged_for(&mac.join("MacOS/berth"), GuestArch::Arm64).unwrap().file_name().unwrap(),
            "image-arm64"
        );
        // Windows: image\ beside berth.exe.
        let win = dir.path().join("Program Files/Berth");
        write_image(&win.join("image"), "m", "i");
        assert!(packaged_for(&win.join("berth.exe"), GuestArch::Amd64).is_some());
        // An image without its manifest is not a package's.
        let bare = dir.path().join("opt/bin");
        write_image(&bare.join("image"), "m", "i");
        std::fs::remove_file(bare.join("image/manifest.txt")).unwrap();
        assert!(packaged_for(&bare.join("berth"), GuestArch::Amd64).is_none());
        // A symbolic link to the program is followed to the package.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(mac.join("MacOS/berth"), dir.path().join("berth-link")).unwrap();
            std::fs::write(mac.join("MacOS/berth"), "").unwrap();
            assert_eq!(
                packaged_for(&dir.path().join("berth-link"), GuestArch::Amd64)
                    .unwrap()
                    .parent()
                    .unwrap()
                    .file_name()
                    .unwrap(),
                "Resources"
            );
        }
    }

    // The builder is a bash script: on the Linux hosts that build images.
    #[cfg(unix)]
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
        let err = ensure(&cache, &dir.path().join("bin/berth"), GuestArch::host(), |l| seen.push(l.to_owned()))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("failed") && text.contains("no kernel here"), "{text}");
        assert!(seen.iter().any(|l| l == "step one"), "{seen:?}");
        assert!(!is_image(&cache));
    }
}
