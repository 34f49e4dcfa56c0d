//! Volume operations with the in-use checks that need the container table.

use std::collections::BTreeMap;

use super::{Engine, EngineError};
use crate::volume::{Volume, VolumeError};

/// A volume with the containers that use it.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub volume: Volume,
    pub users: Vec<String>,
}

impl Engine {
    pub fn volume_create(&self, name: &str, labels: BTreeMap<String, String>) -> Result<Volume, EngineError> {
        let v = self.inner.volumes.create(name, labels, false)?;
        self.inner.events.emit("volume", "create", &v.name, &[("driver", "local")]);
        Ok(v)
    }

    pub fn volume(&self, name: &str) -> Result<VolumeInfo, EngineError> {
        let volume = self.inner.volumes.get(name)?;
        Ok(VolumeInfo { users: self.volume_users(name), volume })
    }

    pub fn volumes(&self) -> Result<Vec<VolumeInfo>, EngineError> {
        Ok(self
            .inner
            .volumes
            .list()?
            .into_iter()
            .map(|v| VolumeInfo { users: self.volume_users(&v.name), volume: v })
            .collect())
    }

    pub fn volume_remove(&self, name: &str, force: bool) -> Result<(), EngineError> {
        self.inner.volumes.get(name)?;
        let users = self.volume_users(name);
        if !users.is_empty() && !force {
            return Err(VolumeError::InUse { name: name.into(), users: users.join(", ") }.into());
        }
        self.inner.volumes.remove(name)?;
        self.inner.events.emit("volume", "destroy", name, &[("driver", "local")]);
        Ok(())
    }

    /// Removes unused volumes (anonymous only unless `all`); returns names and bytes freed.
    pub fn volume_prune(
        &self,
        all: bool,
        select: impl Fn(&crate::volume::Volume) -> bool,
    ) -> Result<(Vec<String>, u64), EngineError> {
        let mut removed = Vec::new();
        let mut bytes = 0;
        for info in self.volumes()? {
            if info.users.is_empty() && (all || info.volume.anonymous) && select(&info.volume) {
                bytes += crate::snapshot::disk_usage(&info.volume.mountpoint);
                self.inner.volumes.remove(&info.volume.name)?;
                removed.push(info.volume.name);
            }
        }
        Ok((removed, bytes))
    }
}
