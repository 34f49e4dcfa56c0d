//! The classic builder's layer cache: for each step, the image it made, keyed like dockerd's
//! (the parent image's ID and the step as it ran: the instruction after expansion, the build
//! args a `RUN` saw, the content hash of what a `COPY` took). Kept in `builder/cache.json`;
//! an entry whose image is gone is a miss. `builder prune` empties it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::EngineError;
use crate::engine::io_ctx;

/// One cached step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheEntry {
    /// The image the step made.
    pub image: String,
    /// The step, as `docker history` shows it.
    pub description: String,
    pub created: String,
    pub last_used: String,
    pub usage_count: u64,
}

/// The cache and where it is kept.
#[derive(Debug)]
pub struct BuildCache {
    path: PathBuf,
    entries: BTreeMap<String, CacheEntry>,
}

/// The key of a step run on `parent` (an image ID, empty for `scratch`).
pub fn key(parent: &str, step: &str) -> String {
    let mut h = Sha256::new();
    h.update(parent.as_bytes());
    h.update(b"\0");
    h.update(step.as_bytes());
    hex::encode(h.finalize())
}

impl BuildCache {
    pub fn open(dir: &Path) -> Result<BuildCache, EngineError> {
        std::fs::create_dir_all(dir).map_err(io_ctx(format!("creating {}", dir.display())))?;
        let path = dir.join("cache.json");
        let entries = match std::fs::read(&path) {
            // A damaged cache file costs a rebuild, never the engine.
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "build cache unreadable; starting empty");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Ok(BuildCache { path, entries })
    }

    pub fn get(&self, key: &str) -> Option<&CacheEntry> {
        self.entries.get(key)
    }

    /// Records a use of `key` (a hit).
    pub fn used(&mut self, key: &str) {
        if let Some(e) = self.entries.get_mut(key) {
            e.last_used = crate::model::now_rfc3339();
            e.usage_count += 1;
        }
        self.save();
    }

    pub fn put(&mut self, key: String, image: &str, description: &str) {
        let now = crate::model::now_rfc3339();
        let entry = CacheEntry {
            image: image.to_owned(),
            description: description.to_owned(),
            created: now.clone(),
            last_used: now,
            usage_count: 1,
        };
        self.entries.insert(key, entry);
        self.save();
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &CacheEntry)> {
        self.entries.iter()
    }

    /// Removes every entry `drop` says to; returns them.
    pub fn remove_where(&mut self, mut drop: impl FnMut(&CacheEntry) -> bool) -> Vec<CacheEntry> {
        let keys: Vec<String> = self.entries.iter().filter(|(_, e)| drop(e)).map(|(k, _)| k.clone()).collect();
        let gone = keys.iter().filter_map(|k| self.entries.remove(k)).collect();
        self.save();
        gone
    }

    fn save(&self) {
        let bytes = serde_json::to_vec_pretty(&self.entries).expect("cache serialises");
        if let Err(e) = crate::fsutil::write_atomic(&self.path, &bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "saving the build cache");
        }
    }
}
