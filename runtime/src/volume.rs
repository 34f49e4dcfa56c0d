//! Named volumes: directories under `volumes/<name>/_data` with a small JSON record beside
//! them. Their data outlives every container; removal is refused while a container uses one.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("get {0}: no such volume")]
    NotFound(String),
    #[error(
        "create {0}: {0:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed"
    )]
    InvalidName(String),
    #[error("remove {name}: volume is in use - [{users}]")]
    InUse { name: String, users: String },
    #[error("volume store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io { path: path.to_owned(), source }
}

/// A volume's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Created for an image's VOLUME or an unnamed `-v /path`.
    #[serde(default)]
    pub anonymous: bool,
    #[serde(skip)]
    pub mountpoint: PathBuf,
}

/// The volume store rooted at one directory.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl VolumeStore {
    pub fn open(root: &Path) -> Result<Self, VolumeError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(VolumeStore { root: root.to_owned() })
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root.join(name).join("volume.json")
    }

    /// Creates `name` (a random one when empty) or returns the existing volume.
    pub fn create(&self, name: &str, labels: BTreeMap<String, String>, anonymous: bool) -> Result<Volume, VolumeError> {
        let name = if name.is_empty() { hex::encode(rand::random::<[u8; 32]>()) } else { name.to_owned() };
        if !valid_name(&name) {
            return Err(VolumeError::InvalidName(name));
        }
        if let Ok(v) = self.get(&name) {
            return Ok(v);
        }
        let data = self.root.join(&name).join("_data");
        fs::create_dir_all(&data).map_err(io_err(&data))?;
        let v = Volume {
            name: name.clone(),
            created: crate::model::now_rfc3339(),
            labels,
            options: BTreeMap::new(),
            anonymous,
            mountpoint: data,
        };
        let path = self.record_path(&name);
        crate::fsutil::write_atomic(&path, &serde_json::to_vec(&v).expect("volume serialises"))
            .map_err(io_err(&path))?;
        Ok(v)
    }

    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::NotFound(name.to_owned()));
        }
        let path = self.record_path(name);
        let bytes = fs::read(&path).map_err(|_| VolumeError::NotFound(name.to_owned()))?;
        let mut v: Volume = serde_json::from_slice(&bytes).map_err(|e| io_err(&path)(io::Error::other(e)))?;
        v.mountpoint = self.root.join(name).join("_data");
        Ok(v)
    }

    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io_err(&self.root))?.flatten() {
            if let Ok(v) = self.get(&e.file_name().to_string_lossy()) {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a volume and its data; the caller checks that no container uses it.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        self.get(name)?;
        let dir = self.root.join(name);
        fs::remove_dir_all(&dir).map_err(io_err(&dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(dir.path()).unwrap();
        let v = s.create("data", BTreeMap::new(), false).unwrap();
        fs::write(v.mountpoint.join("f"), b"x").unwrap();
        assert_eq!(s.create("data", BTreeMap::new(), false).unwrap().created, v.created);
        assert_eq!(s.list().unwrap().len(), 1);
        assert!(matches!(s.create("../x", BTreeMap::new(), false), Err(VolumeError::InvalidName(_))));
        s.remove("data").unwrap();
        assert!(matches!(s.get("data"), Err(VolumeError::NotFound(_))));
    }
}
