//! Changes to a container that exists: `pause`/`unpause` (the cgroup freezer), `update`
//! (resources and restart policy, applied to a running container's cgroup at once), and
//! `changes` (what its writable layer holds, as `docker diff` lists it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::containers::limits_of;
use super::{Ctr, Engine, EngineError};
use crate::model::RestartPolicy;

/// What `POST /containers/{id}/update` may change.
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub memory: Option<i64>,
    pub memory_swap: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub cpu_shares: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<i64>,
    pub pids_limit: Option<i64>,
    pub restart_policy: Option<RestartPolicy>,
}

/// `docker diff`'s kinds: 0 modified, 1 added, 2 deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Modified = 0,
    Added = 1,
    Deleted = 2,
}

/// One line of `docker diff`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

impl Engine {
    fn running_cgroup(&self, ctr: &Arc<Ctr>) -> Result<crate::container::cgroup::Cgroup, EngineError> {
        let rec = ctr.snapshot();
        if !rec.running() {
            return Err(EngineError::Conflict(format!("Container {} is not running", rec.id)));
        }
        ctr.cgroup
            .lock()
            .expect("lock")
            .clone()
            .ok_or_else(|| EngineError::Conflict(format!("Container {} has no cgroup", rec.id)))
    }

    /// `docker pause`: freezes every process of the container.
    pub async fn pause(&self, name_or_id: &str) -> Result<(), EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let _op = ctr.op.lock().await;
        let rec = ctr.snapshot();
        if rec.state.paused {
            return Err(EngineError::Conflict(format!("Container {} is already paused", rec.id)));
        }
        let cgroup = self.running_cgroup(&ctr)?;
        super::blocking(move || cgroup.freeze(true)).await?;
        let rec = ctr.update(|r| r.state.paused = true)?;
        self.container_event(&rec, "pause", &[]);
        Ok(())
    }

    /// `docker unpause`.
    pub async fn unpause(&self, name_or_id: &str) -> Result<(), EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let _op = ctr.op.lock().await;
        if !ctr.snapshot().state.paused {
            return Err(EngineError::Conflict(format!("Container {} is not paused", ctr.snapshot().id)));
        }
        self.thaw(&ctr)
    }

    /// Thaws a paused container (for unpause, and for stop and kill of a paused one).
    pub(crate) fn thaw(&self, ctr: &Arc<Ctr>) -> Result<(), EngineError> {
        if let Ok(cgroup) = self.running_cgroup(ctr) {
            cgroup.freeze(false)?;
        }
        let rec = ctr.update(|r| r.state.paused = false)?;
        self.container_event(&rec, "unpause", &[]);
        Ok(())
    }

    /// `docker update`: the new values are kept, and a running container's cgroup takes them.
    pub async fn update(&self, name_or_id: &str, u: Update) -> Result<Vec<String>, EngineError> {
        let ctr = self.ctr(name_or_id)?;
        let _op = ctr.op.lock().await;
        let before = ctr.snapshot();
        let mut hc = before.host_config.clone();
        let set = |field: &mut i64, v: Option<i64>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut hc.memory, u.memory);
        set(&mut hc.memory_swap, u.memory_swap);
        set(&mut hc.nano_cpus, u.nano_cpus);
        set(&mut hc.cpu_shares, u.cpu_shares);
        set(&mut hc.cpu_quota, u.cpu_quota);
        set(&mut hc.cpu_period, u.cpu_period);
        if let Some(p) = u.pids_limit {
            hc.pids_limit = Some(p);
        }
        if hc.nano_cpus > 0 && hc.cpu_quota > 0 {
            return Err(EngineError::InvalidArgument(
                "Conflicting options: Nano CPUs and CPU Period cannot both be set".into(),
            ));
        }
        if hc.memory > 0 && hc.memory < 6 * 1024 * 1024 {
            return Err(EngineError::InvalidArgument("Minimum memory limit allowed is 6MB".into()));
        }
        if hc.memory > 0 && hc.memory_swap > 0 && hc.memory_swap < hc.memory {
            return Err(EngineError::InvalidArgument(
                "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
            ));
        }
        if let Some(p) = &u.restart_policy {
            if before.host_config.auto_remove && !p.name.is_empty() && p.name != "no" {
                return Err(EngineError::InvalidArgument(
                    "Restart policy cannot be updated because AutoRemove is enabled for the container".into(),
                ));
            }
            hc.restart_policy = p.clone();
        }
        if before.running() {
            let cgroup = self.running_cgroup(&ctr)?;
            let limits = limits_of(&hc);
            super::blocking(move || cgroup.set_limits(&limits)).await?;
        }
        let rec = ctr.update(|r| r.host_config = hc)?;
        self.container_event(&rec, "update", &[]);
        Ok(vec![])
    }

    /// `docker diff`: what the container's writable layer added, changed and deleted.
    pub async fn changes(&self, name_or_id: &str) -> Result<Vec<Change>, EngineError> {
        let rec = self.container(name_or_id)?;
        let upper = self.inner.stores.snapshots.active_upper(&rec.id);
        let lower: Vec<PathBuf> = rec.chain.iter().rev().map(|c| self.inner.stores.snapshots.layer_dir(c)).collect();
        super::blocking(move || diff(&upper, &lower).map_err(super::io_ctx("reading the container's changes"))).await
    }
}

/// Walks an overlay upper directory against its lower layers (top first).
fn diff(upper: &Path, lower: &[PathBuf]) -> std::io::Result<Vec<Change>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let in_lower = |rel: &Path| lower.iter().any(|l| l.join(rel).symlink_metadata().is_ok());
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = upper.join(&rel);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries {
            let e = e?;
            let child = rel.join(e.file_name());
            let meta = e.metadata()?;
            let shown = format!("/{}", child.display());
            // A 0:0 character device is overlay's whiteout: deleted.
            if meta.file_type().is_char_device() && meta.rdev() == 0 {
                out.push(Change { path: shown, kind: ChangeKind::Deleted });
                continue;
            }
            let kind = if in_lower(&child) { ChangeKind::Modified } else { ChangeKind::Added };
            out.push(Change { path: shown, kind });
            if meta.is_dir() {
                stack.push(child);
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}
