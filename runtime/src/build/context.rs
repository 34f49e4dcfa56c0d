//! The build context: the tar a client sends, unpacked (confined) into a scratch directory,
//! its `.dockerignore`, and the sources of `COPY`/`ADD` taken from it (or from another
//! stage's or image's root) as one tar to apply, with the content hash the layer cache keys on.
//!
//! `.dockerignore` follows dockerd: patterns are Go `filepath.Match` globs with `**`, matched
//! against slash-separated paths relative to the context; a path is excluded by the last pattern
//! that matches it or one of its parent directories, and `!` patterns take paths back. (The
//! docker CLI filters its tar by the same file; filtering here too holds for every client.)

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

use globset::GlobBuilder;

use sha2::{Digest, Sha256};

use crate::container::rootfs::{self, RootView};

pub use berth_dockerignore::{Ignore, clean};

/// An unpacked build context; removed on drop.
#[derive(Debug)]
pub struct Context {
    pub dir: PathBuf,
    pub ignore: Ignore,
}

impl Context {
    /// Unpacks the tar (plain or compressed) `body` into a fresh directory under `scratch`.
    pub fn unpack(body: impl Read + Send, scratch: &Path) -> Result<Context, String> {
        let dir = crate::image::archive::extract_upload(body, scratch)
            .map_err(|e| format!("the build context is not a readable tar: {e}"))?;
        let mut ctx = Context { dir, ignore: Ignore::default() };
        if let Some(text) = ctx.read(".dockerignore")? {
            ctx.ignore = Ignore::parse(&String::from_utf8_lossy(&text))?;
        }
        Ok(ctx)
    }

    /// A file of the context (confined to it), if it is there.
    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, String> {
        let rel = clean(rel).ok_or_else(|| format!("Forbidden path outside the build context: {rel}"))?;
        let root = RootView::dir(&self.dir).confined().map_err(|e| e.to_string())?;
        let inode = match root.lookup_follow(&rel) {
            Ok(i) => i,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("reading {}: {e}", rel.display())),
        };
        if !inode.meta.is_file() {
            return Ok(None);
        }
        let mut bytes = Vec::new();
        inode
            .open()
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(|e| format!("reading {}: {e}", rel.display()))?;
        Ok(Some(bytes))
    }

    /// The context paths a `COPY`/`ADD` source names: itself, or what its glob matches.
    pub fn sources(&self, source: &str, keyword: &str) -> Result<Vec<PathBuf>, String> {
        let rel = clean(source)
            .ok_or_else(|| format!("{keyword} failed: forbidden path outside the build context: {source} ()"))?;
        let text = rel.to_string_lossy();
        if !text.contains(['*', '?', '[']) {
            let root = RootView::dir(&self.dir).confined().map_err(|e| e.to_string())?;
            if self.ignore.excluded(&text) || root.lookup(&rel).is_err() {
                return Err(format!(
                    "{keyword} failed: file not found in build context or excluded by .dockerignore: stat {source}: file does not exist"
                ));
            }
            return Ok(vec![rel]);
        }
        let glob = GlobBuilder::new(&text)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("{keyword} failed: bad pattern {source:?}: {e}"))?
            .compile_matcher();
        let mut found = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(self.dir.join(&d)) else { continue };
            for e in entries.flatten() {
                let rel = d.join(e.file_name());
                if glob.is_match(&rel) && !self.ignore.excluded(&rel.to_string_lossy()) {
                    found.push(rel.clone());
                }
                // The entry's own type: a symlink to a directory is not walked into.
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(rel);
                }
            }
        }
        found.sort();
        if found.is_empty() {
            return Err(format!("{keyword} failed: no source files were specified"));
        }
        Ok(found)
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What to change in what is copied (`--chown`, `--chmod`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rewrite {
    pub owner: Option<(u64, u64)>,
    pub mode: Option<u32>,
}

/// One source to copy: `path` in `view`, its top named `name` in the result (empty: a
/// directory's contents), and the `.dockerignore` that applies (for the context only).
pub struct Source<'a> {
    pub view: &'a RootView,
    pub path: PathBuf,
    pub name: PathBuf,
    pub ignore: Option<&'a Ignore>,
}

/// Writes the sources into `out` as one tar, rewritten by `rewrite`; returns the content hash
/// (paths, types, modes, owners, link targets and bytes, not times), as dockerd's cache uses.
pub fn copy_tar(sources: &[Source<'_>], rewrite: Rewrite, scratch: &mut File, out: impl Write) -> io::Result<String> {
    let mut tar = tar::Builder::new(out);
    let mut digests: BTreeMap<PathBuf, String> = BTreeMap::new();
    for src in sources {
        scratch.set_len(0)?;
        scratch.rewind()?;
        let path = src.path.to_string_lossy();
        rootfs::tar_path_as(src.view, &path, &src.name, &mut *scratch, false)?;
        scratch.flush()?;
        scratch.rewind()?;
        let mut archive = tar::Archive::new(&mut *scratch);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let name = entry.path()?.into_owned();
            if let Some(ignore) = src.ignore {
                let below = name.strip_prefix(&src.name).unwrap_or(&name);
                let context_path = src.path.join(below);
                if ignore.excluded(&context_path.to_string_lossy()) {
                    continue;
                }
            }
            let mut header = entry.header().clone();
            if let Some((uid, gid)) = rewrite.owner {
                header.set_uid(uid);
                header.set_gid(gid);
            }
            if let Some(mode) = rewrite.mode {
                header.set_mode(mode);
            }
            let mut data = Vec::new();
            entry.read_to_end(&mut data)?;
            let mut h = Sha256::new();
            h.update([header.entry_type().as_byte()]);
            h.update(format!("{:o} {} {}\0", header.mode()?, header.uid()?, header.gid()?));
            if let Some(link) = header.link_name()? {
                h.update(link.to_string_lossy().as_bytes());
            }
            h.update(b"\0");
            h.update(&data);
            digests.insert(name.clone(), hex::encode(h.finalize()));
            match header.entry_type() {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let link = header.link_name()?.unwrap_or_default().into_owned();
                    tar.append_link(&mut header, &name, link)?;
                }
                _ => tar.append_data(&mut header, &name, &data[..])?,
            }
        }
    }
    tar.into_inner()?.flush()?;
    let mut h = Sha256::new();
    for (path, digest) in &digests {
        h.update(path.to_string_lossy().as_bytes());
        h.update(b"\0");
        h.update(digest.as_bytes());
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_hash_contents_not_times_and_honour_the_ignore_file() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = dir.path().join("ctx");
        std::fs::create_dir_all(ctx.join("d/skip")).unwrap();
        std::fs::write(ctx.join("d/a"), b"a").unwrap();
        std::fs::write(ctx.join("d/skip/b"), b"b").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("d/link")).unwrap();
        let view = RootView::dir(&ctx);
        let ignore = Ignore::parse("d/skip").unwrap();
        let run = |owner| {
            let mut scratch = tempfile::tempfile().unwrap();
            let mut out = tempfile::tempfile().unwrap();
            let src = Source { view: &view, path: "d".into(), name: PathBuf::new(), ignore: Some(&ignore) };
            let hash = copy_tar(&[src], Rewrite { owner, mode: None }, &mut scratch, &mut out).unwrap();
            out.rewind().unwrap();
            let mut names: Vec<(String, u64)> = tar::Archive::new(out)
                .entries()
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.path().unwrap().display().to_string(), e.header().uid().unwrap())
                })
                .collect();
            names.sort();
            (hash, names)
        };
        let (h1, names) = run(Some((7, 8)));
        assert_eq!(names, [("a".to_string(), 7), ("link".to_string(), 7)]);
        // A new mtime alone leaves the hash; new bytes or owners change it.
        let f = File::options().write(true).open(ctx.join("d/a")).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(run(Some((7, 8))).0, h1);
        assert_ne!(run(Some((0, 0))).0, h1);
        std::fs::write(ctx.join("d/a"), b"A").unwrap();
        assert_ne!(run(Some((7, 8))).0, h1);
    }
}
