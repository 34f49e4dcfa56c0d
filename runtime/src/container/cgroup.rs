//! Resource limits through cgroups: v2 (the VM's kernel) or v1 (some hosts), one directory
//! per container under the engine's own cgroup.

use std::fs;
use std::io;
use std::path::PathBuf;

/// Limits taken from a container's HostConfig.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub memory: i64,
    pub memory_swap: i64,
    pub nano_cpus: i64,
    pub cpu_quota: i64,
    pub cpu_period: i64,
    pub cpu_shares: i64,
    pub pids: Option<i64>,
}

/// Errors setting up a container's cgroup.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {source}")]
pub struct CgroupError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// A container's cgroup directories (one on v2, one per controller on v1).
#[derive(Debug, Clone, Default)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
}

const ROOT: &str = "/sys/fs/cgroup";

fn own_path(controller: &str) -> String {
    let text = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
        if ctrls.split(',').any(|c| c == controller) {
            return path.to_owned();
        }
    }
    "/".into()
}

fn write(dir: &std::path::Path, file: &str, value: &str) -> Result<(), CgroupError> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|source| CgroupError { path, source })
}

pub fn is_v2() -> bool {
    std::path::Path::new(ROOT).join("cgroup.controllers").exists()
}

impl Cgroup {
    /// Creates the cgroup of container `id` and applies `limits`.
    pub fn create(id: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        if is_v2() { Self::create_v2(id, limits) } else { Self::create_v1(id, limits) }
    }

    fn create_v2(id: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let own = own_path("");
        let base = PathBuf::from(ROOT).join(own.trim_start_matches('/')).join("berth");
        let dir = base.join(id);
        fs::create_dir_all(&dir).map_err(|source| CgroupError { path: dir.clone(), source })?;
        // Controllers must be enabled on the way down; ignore those the kernel lacks.
        for d in [base.parent().map(PathBuf::from).unwrap_or_default(), base.clone()] {
            for c in ["+memory", "+cpu", "+pids"] {
                let _ = fs::write(d.join("cgroup.subtree_control"), c);
            }
        }
        if limits.memory > 0 {
            write(&dir, "memory.max", &limits.memory.to_string())?;
            if limits.memory_swap > 0 {
                let swap = (limits.memory_swap - limits.memory).max(0);
                let _ = write(&dir, "memory.swap.max", &swap.to_string());
            }
        }
        if let Some((quota, period)) = cpu_quota(limits) {
            write(&dir, "cpu.max", &format!("{quota} {period}"))?;
        }
        if limits.cpu_shares > 0 {
            let weight = 1 + ((limits.cpu_shares.clamp(2, 262144) - 2) * 9999) / 262142;
            write(&dir, "cpu.weight", &weight.to_string())?;
        }
        if let Some(p) = limits.pids.filter(|p| *p > 0) {
            write(&dir, "pids.max", &p.to_string())?;
        }
        Ok(Cgroup { dirs: vec![dir] })
    }

    fn create_v1(id: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        let mut dirs = Vec::new();
        for ctrl in ["memory", "cpu", "pids"] {
            let mount = PathBuf::from(ROOT).join(ctrl);
            if !mount.is_dir() {
                continue;
            }
            let dir = mount.join(own_path(ctrl).trim_start_matches('/')).join("berth").join(id);
            fs::create_dir_all(&dir).map_err(|source| CgroupError { path: dir.clone(), source })?;
            match ctrl {
                "memory" if limits.memory > 0 => {
                    write(&dir, "memory.limit_in_bytes", &limits.memory.to_string())?;
                    if limits.memory_swap > 0 {
                        let _ = write(&dir, "memory.memsw.limit_in_bytes", &limits.memory_swap.to_string());
                    }
                }
                "cpu" => {
                    if let Some((quota, period)) = cpu_quota(limits) {
                        write(&dir, "cpu.cfs_period_us", &period.to_string())?;
                        write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
                    }
                    if limits.cpu_shares > 0 {
                        write(&dir, "cpu.shares", &limits.cpu_shares.to_string())?;
                    }
                }
                "pids" => {
                    if let Some(p) = limits.pids.filter(|p| *p > 0) {
                        write(&dir, "pids.max", &p.to_string())?;
                    }
                }
                _ => {}
            }
            dirs.push(dir);
        }
        Ok(Cgroup { dirs })
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the cgroup directories (they must be empty of processes).
    pub fn remove(&self) {
        for d in &self.dirs {
            let _ = fs::remove_dir(d);
        }
    }
}

/// `--cpus` (NanoCpus) or `--cpu-quota/--cpu-period` as (quota, period) in microseconds.
fn cpu_quota(l: &Limits) -> Option<(i64, i64)> {
    if l.nano_cpus > 0 {
        let period = 100_000;
        Some((l.nano_cpus * period / 1_000_000_000, period))
    } else if l.cpu_quota > 0 {
        Some((l.cpu_quota, if l.cpu_period > 0 { l.cpu_period } else { 100_000 }))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_become_quota() {
        let l = Limits { nano_cpus: 1_500_000_000, ..Default::default() };
        assert_eq!(cpu_quota(&l), Some((150_000, 100_000)));
        assert_eq!(cpu_quota(&Limits::default()), None);
    }
}
