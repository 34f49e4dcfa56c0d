//! Content store: immutable blobs addressed by their sha256 digest.
//!
//! Vocabulary (after containerd): a *blob* is any byte string the engine keeps (layer tarballs,
//! image configs, manifests); its *digest* is `sha256:<hex>` of its bytes. Writes go through an
//! *ingest* (a temporary file under `ingest/` that hashes as it is written) and are *committed*
//! into `blobs/sha256/<hex>` only when the digest matches what was expected, with an atomic
//! rename, so a blob that exists is always whole and verified.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    InvalidDigest(String),
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("content store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io { path: path.to_owned(), source }
}

/// Checks that `digest` is `sha256:` followed by 64 lowercase hex digits and returns the hex.
pub fn digest_hex(digest: &str) -> Result<&str, ContentError> {
    let hex = digest.strip_prefix("sha256:").ok_or_else(|| ContentError::InvalidDigest(digest.to_owned()))?;
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(hex)
    } else {
        Err(ContentError::InvalidDigest(digest.to_owned()))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The blob store rooted at one directory.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// Opens (creating if needed) a store under `root`, dropping ingests left by a crash.
    pub fn open(root: &Path) -> Result<Self, ContentError> {
        let store = ContentStore { root: root.to_owned() };
        let ingest = store.root.join("ingest");
        let _ = fs::remove_dir_all(&ingest);
        for dir in [store.root.join("blobs/sha256"), ingest] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(store)
    }

    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        Ok(self.root.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn exists(&self, digest: &str) -> bool {
        self.path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub fn size(&self, digest: &str) -> Result<u64, ContentError> {
        let path = self.path(digest)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ContentError::NotFound(digest.into())),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub fn open_blob(&self, digest: &str) -> Result<File, ContentError> {
        let path = self.path(digest)?;
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ContentError::NotFound(digest.into()),
            _ => io_err(&path)(e),
        })
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ContentError> {
        let mut buf = Vec::new();
        let path = self.path(digest)?;
        self.open_blob(digest)?.read_to_end(&mut buf).map_err(io_err(&path))?;
        Ok(buf)
    }

    /// Stores `bytes` and returns their digest.
    pub fn put(&self, bytes: &[u8]) -> Result<String, ContentError> {
        let digest = sha256_digest(bytes);
        if !self.exists(&digest) {
            let mut w = self.ingest()?;
            w.write_all(bytes).map_err(io_err(&w.path.clone()))?;
            w.commit(Some(&digest))?;
        }
        Ok(digest)
    }

    /// Starts writing a blob whose digest is checked at [`Ingest::commit`].
    pub fn ingest(&self) -> Result<Ingest, ContentError> {
        let path = self.root.join("ingest").join(format!("{:016x}", rand::random::<u64>()));
        let file = File::create(&path).map_err(io_err(&path))?;
        Ok(Ingest { file, hasher: Sha256::new(), written: 0, path, blobs: self.root.join("blobs/sha256") })
    }

    pub fn delete(&self, digest: &str) -> Result<(), ContentError> {
        let path = self.path(digest)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Digests of every committed blob.
    pub fn list(&self) -> Result<Vec<String>, ContentError> {
        let dir = self.root.join("blobs/sha256");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            out.push(format!("sha256:{}", entry.file_name().to_string_lossy()));
        }
        Ok(out)
    }
}

/// A blob being written: hashes every byte; removed unless committed.
#[derive(Debug)]
pub struct Ingest {
    file: File,
    hasher: Sha256,
    written: u64,
    path: PathBuf,
    blobs: PathBuf,
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Ingest {
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Verifies the digest (when one is expected), syncs and moves the blob into place.
    /// Returns the digest of what was written.
    pub fn commit(mut self, expected: Option<&str>) -> Result<String, ContentError> {
        let actual = format!("sha256:{}", hex::encode(std::mem::take(&mut self.hasher).finalize()));
        if let Some(expected) = expected
            && expected != actual
        {
            return Err(ContentError::DigestMismatch { expected: expected.into(), actual });
        }
        self.file.sync_all().map_err(io_err(&self.path))?;
        let target = self.blobs.join(digest_hex(&actual)?);
        fs::rename(&self.path, &target).map_err(io_err(&target))?;
        Ok(actual)
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_read_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let d = store.put(b"hello").unwrap();
        assert_eq!(d, "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(store.read(&d).unwrap(), b"hello");
        let mut w = store.ingest().unwrap();
        w.write_all(b"other").unwrap();
        let err = w.commit(Some(&d)).unwrap_err();
        assert!(matches!(err, ContentError::DigestMismatch { .. }), "{err}");
        assert_eq!(store.list().unwrap(), vec![d.clone()]);
        assert!(matches!(digest_hex("sha256:../../etc"), Err(ContentError::InvalidDigest(_))));
    }
}
