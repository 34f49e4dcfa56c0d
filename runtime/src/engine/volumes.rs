//! Volume operations with the in-use checks that need the container table.

use std::collections::BTreeMap;

use super::{Engine, EngineError};
use crate::container::ContainerRecord;
use crate::volume::{Volume, VolumeError};

/// A volume with the containers that use it.
#[derive(Debug, Clone)]
pub struct VolumeInfo {
    pub volume: Volume,
    pub users: Vec<String>,
}

impl Engine {
    /// `docker volume create`, with the `local` driver's options (`type`, `device`, `o`).
    pub fn volume_create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        options: Option<BTreeMap<String, String>>,
    ) -> Result<Volume, EngineError> {
        let v = self.inner.volumes.create_with(name, labels, options, false)?;
        self.inner.events.emit("volume", "create", &v.name, &[("driver", "local")]);
        Ok(v)
    }

    /// The volume a container's mount names, made when missing (anonymous when unnamed);
    /// dockerd announces it as created each time a container asks for it.
    pub(crate) fn mount_volume(&self, name: &str) -> Result<Volume, EngineError> {
        let v = self.inner.volumes.create(name, BTreeMap::new(), name.is_empty())?;
        self.inner.events.emit("volume", "create", &v.name, &[("driver", "local")]);
        Ok(v)
    }

    /// Mounts the volumes of a starting container that are mounts of their own (all or none).
    pub(crate) fn activate_volumes(&self, rec: &ContainerRecord) -> Result<(), EngineError> {
        let names: Vec<&str> = rec.mounts.iter().filter(|m| m.kind == "volume").map(|m| m.name.as_str()).collect();
        for (i, name) in names.iter().enumerate() {
            if let Err(e) = self.inner.volumes.activate(name) {
                for done in &names[..i] {
                    self.inner.volumes.deactivate(done);
                }
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// A container's volumes after its run: mounts of their own go with their last user.
    pub(crate) fn deactivate_volumes(&self, rec: &ContainerRecord) {
        for m in rec.mounts.iter().filter(|m| m.kind == "volume") {
            self.inner.volumes.deactivate(&m.name);
        }
    }

    /// `volume mount` (before a start) or `volume unmount` (after an exit) for each volume a
    /// container mounts, as dockerd announces them.
    pub(crate) fn volume_events(&self, rec: &ContainerRecord, mounting: bool) {
        for m in rec.mounts.iter().filter(|m| m.kind == "volume") {
            if mounting {
                let rw = if m.rw { "true" } else { "false" };
                let attrs = [
                    ("container", rec.id.as_str()),
                    ("destination", m.destination.as_str()),
                    ("driver", "local"),
                    ("propagation", ""),
                    ("read/write", rw),
                ];
                self.inner.events.emit("volume", "mount", &m.name, &attrs);
            } else {
                self.inner.events.emit("volume", "unmount", &m.name, &[("container", &rec.id), ("driver", "local")]);
            }
        }
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
