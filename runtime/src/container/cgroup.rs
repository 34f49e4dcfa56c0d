//! Resource limits and device rules through cgroups: v2 (the VM's kernel) or v1 (some
//! hosts), one directory per container under the engine's own cgroup.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::devices::Rule;

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
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup v1 devices controller is mounted: the engine cannot keep containers off the machine's devices")]
    NoDevicesController,
    #[error(transparent)]
    Devices(#[from] super::devices::DeviceError),
}

/// A container's cgroup directories (one on v2, one per controller on v1).
#[derive(Debug, Clone, Default)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

/// Resource usage read from a container's cgroup (`docker stats`).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub cpu_total_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    pub memory: u64,
    /// The memory limit, `None` when unlimited.
    pub memory_limit: Option<u64>,
    /// memory.stat, with v1's `total_*` keys as they are.
    pub memory_stat: std::collections::BTreeMap<String, u64>,
    pub pids: u64,
    pub pids_limit: Option<u64>,
}

fn read_u64(path: &std::path::Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn read_kv(path: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' ').and_then(|(k, v)| Some((k.to_owned(), v.trim().parse().ok()?))))
        .collect()
}

const ROOT: &str = "/sys/fs/cgroup";

/// The v1 controllers a container gets a directory in.
const V1_CONTROLLERS: &[&str] = &["devices", "memory", "cpu", "cpuacct", "pids", "freezer"];

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
    fs::write(&path, value).map_err(|source| CgroupError::Io { path, source })
}

fn create_dir(dir: &std::path::Path) -> Result<(), CgroupError> {
    fs::create_dir_all(dir).map_err(|source| CgroupError::Io { path: dir.to_owned(), source })
}

/// Writes `limits` into a v2 cgroup.
fn apply_v2(dir: &std::path::Path, limits: &Limits) -> Result<(), CgroupError> {
    if limits.memory > 0 {
        write(dir, "memory.max", &limits.memory.to_string())?;
        if limits.memory_swap > 0 {
            let swap = (limits.memory_swap - limits.memory).max(0);
            let _ = write(dir, "memory.swap.max", &swap.to_string());
        }
    }
    if let Some((quota, period)) = cpu_quota(limits) {
        write(dir, "cpu.max", &format!("{quota} {period}"))?;
    }
    if limits.cpu_shares > 0 {
        let weight = 1 + ((limits.cpu_shares.clamp(2, 262144) - 2) * 9999) / 262142;
        write(dir, "cpu.weight", &weight.to_string())?;
    }
    if let Some(p) = limits.pids.filter(|p| *p > 0) {
        write(dir, "pids.max", &p.to_string())?;
    }
    Ok(())
}

/// Writes `limits` into the v1 cgroup of `controller`.
fn apply_v1(controller: &str, dir: &std::path::Path, limits: &Limits) -> Result<(), CgroupError> {
    match controller {
        "memory" if limits.memory > 0 => {
            write(dir, "memory.limit_in_bytes", &limits.memory.to_string())?;
            if limits.memory_swap > 0 {
                let _ = write(dir, "memory.memsw.limit_in_bytes", &limits.memory_swap.to_string());
            }
        }
        "cpu" => {
            if let Some((quota, period)) = cpu_quota(limits) {
                write(dir, "cpu.cfs_period_us", &period.to_string())?;
                write(dir, "cpu.cfs_quota_us", &quota.to_string())?;
            }
            if limits.cpu_shares > 0 {
                write(dir, "cpu.shares", &limits.cpu_shares.to_string())?;
            }
        }
        "pids" => {
            if let Some(p) = limits.pids.filter(|p| *p > 0) {
                write(dir, "pids.max", &p.to_string())?;
            }
        }
        _ => {}
    }
    Ok(())
}

pub fn is_v2() -> bool {
    std::path::Path::new(ROOT).join("cgroup.controllers").exists()
}

impl Cgroup {
    /// Creates the cgroup of container `id`, applies `limits`, and lets its processes open
    /// only the devices `devices` allows.
    pub fn create(id: &str, limits: &Limits, devices: &[Rule]) -> Result<Cgroup, CgroupError> {
        let cg = if is_v2() { Self::create_v2(id, limits, devices) } else { Self::create_v1(id, limits, devices) };
        if cg.is_err() {
            // Whatever was made of it goes again.
            Cgroup { dirs: Self::dirs_of(id), v2: is_v2() }.remove();
        }
        cg
    }

    /// Where `id`'s cgroup directories are (or would be).
    fn dirs_of(id: &str) -> Vec<PathBuf> {
        if is_v2() {
            vec![PathBuf::from(ROOT).join(own_path("").trim_start_matches('/')).join("berth").join(id)]
        } else {
            V1_CONTROLLERS
                .iter()
                .map(|c| PathBuf::from(ROOT).join(c).join(own_path(c).trim_start_matches('/')).join("berth").join(id))
                .collect()
        }
    }

    fn create_v2(id: &str, limits: &Limits, devices: &[Rule]) -> Result<Cgroup, CgroupError> {
        let own = own_path("");
        let base = PathBuf::from(ROOT).join(own.trim_start_matches('/')).join("berth");
        let dir = base.join(id);
        create_dir(&dir)?;
        super::devices::attach(&dir, devices)?;
        // Controllers must be enabled on the way down; ignore those the kernel lacks.
        for d in [base.parent().map(PathBuf::from).unwrap_or_default(), base.clone()] {
            for c in ["+memory", "+cpu", "+pids"] {
                let _ = fs::write(d.join("cgroup.subtree_control"), c);
            }
        }
        apply_v2(&dir, limits)?;
        Ok(Cgroup { dirs: vec![dir], v2: true })
    }

    fn create_v1(id: &str, limits: &Limits, devices: &[Rule]) -> Result<Cgroup, CgroupError> {
        if !PathBuf::from(ROOT).join("devices").join("devices.allow").exists() {
            return Err(CgroupError::NoDevicesController);
        }
        let mut dirs = Vec::new();
        for ctrl in V1_CONTROLLERS {
            let mount = PathBuf::from(ROOT).join(ctrl);
            if !mount.is_dir() {
                continue;
            }
            let dir = mount.join(own_path(ctrl).trim_start_matches('/')).join("berth").join(id);
            create_dir(&dir)?;
            match *ctrl {
                "devices" => {
                    // Deny everything, then allow the rules one by one (a new cgroup starts
                    // with its parent's list).
                    write(&dir, "devices.deny", "a")?;
                    for rule in devices {
                        write(&dir, "devices.allow", &rule.to_string())?;
                    }
                }
                other => apply_v1(other, &dir, limits)?,
            }
            dirs.push(dir);
        }
        Ok(Cgroup { dirs, v2: false })
    }

    /// Changes the limits of a running container (`docker update`).
    pub fn set_limits(&self, limits: &Limits) -> Result<(), CgroupError> {
        if self.v2 {
            return self.dirs.first().map(|d| apply_v2(d, limits)).unwrap_or(Ok(()));
        }
        for ctrl in ["memory", "cpu", "pids"] {
            if let Some(d) = self.dir_of(ctrl) {
                apply_v1(ctrl, d, limits)?;
            }
        }
        Ok(())
    }

    /// Freezes (`docker pause`) or thaws every process of the cgroup; returns once the kernel
    /// says the whole group is in that state.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        let (dir, file, value, done) = if self.v2 {
            let d = self.dirs.first().cloned().unwrap_or_default();
            (d, "cgroup.freeze", if frozen { "1" } else { "0" }, if frozen { "frozen 1" } else { "frozen 0" })
        } else {
            let d = self.dir_of("freezer").cloned().unwrap_or_default();
            (d, "freezer.state", if frozen { "FROZEN" } else { "THAWED" }, if frozen { "FROZEN" } else { "THAWED" })
        };
        write(&dir, file, value)?;
        let state_file = if self.v2 { "cgroup.events" } else { "freezer.state" };
        for _ in 0..2000 {
            let now = fs::read_to_string(dir.join(state_file)).unwrap_or_default();
            if now.lines().any(|l| l.trim() == done) {
                return Ok(());
            }
            // v1 may stop at FREEZING while a task resists; asking again moves it on.
            if !self.v2 && frozen {
                let _ = fs::write(dir.join(file), value);
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(CgroupError::Io {
            path: dir.join(state_file),
            source: io::Error::new(io::ErrorKind::TimedOut, format!("the cgroup did not reach {done}")),
        })
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(d, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    fn dir_of(&self, controller: &str) -> Option<&PathBuf> {
        if self.v2 {
            return self.dirs.first();
        }
        let mount = PathBuf::from(ROOT).join(controller);
        self.dirs.iter().find(|d| d.starts_with(&mount))
    }

    /// Every process in the cgroup (the container's init, its children, exec'd processes).
    pub fn pids(&self) -> Vec<i32> {
        let Some(dir) = self.dir_of("pids").or(self.dirs.first()) else { return vec![] };
        fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// CPU, memory and pids usage.
    pub fn usage(&self) -> Usage {
        let mut u = Usage::default();
        if self.v2 {
            let Some(d) = self.dirs.first() else { return u };
            let cpu = read_kv(&d.join("cpu.stat"));
            u.cpu_total_ns = cpu.get("usage_usec").copied().unwrap_or(0) * 1000;
            u.cpu_user_ns = cpu.get("user_usec").copied().unwrap_or(0) * 1000;
            u.cpu_system_ns = cpu.get("system_usec").copied().unwrap_or(0) * 1000;
            u.memory = read_u64(&d.join("memory.current")).unwrap_or(0);
            u.memory_limit = read_u64(&d.join("memory.max"));
            u.memory_stat = read_kv(&d.join("memory.stat"));
            u.pids = read_u64(&d.join("pids.current")).unwrap_or(0);
            u.pids_limit = read_u64(&d.join("pids.max"));
        } else {
            if let Some(d) = self.dir_of("cpuacct") {
                u.cpu_total_ns = read_u64(&d.join("cpuacct.usage")).unwrap_or(0);
                // cpuacct.stat is in USER_HZ ticks (100 a second).
                let st = read_kv(&d.join("cpuacct.stat"));
                u.cpu_user_ns = st.get("user").copied().unwrap_or(0) * 10_000_000;
                u.cpu_system_ns = st.get("system").copied().unwrap_or(0) * 10_000_000;
            }
            if let Some(d) = self.dir_of("memory") {
                u.memory = read_u64(&d.join("memory.usage_in_bytes")).unwrap_or(0);
                u.memory_limit = read_u64(&d.join("memory.limit_in_bytes")).filter(|l| *l < (1 << 62));
                u.memory_stat = read_kv(&d.join("memory.stat"));
            }
            if let Some(d) = self.dir_of("pids") {
                u.pids = read_u64(&d.join("pids.current")).unwrap_or(0);
                u.pids_limit = read_u64(&d.join("pids.max"));
            }
        }
        u
    }

    /// Removes the cgroup directories (they must be empty of processes).
    /// How many times the kernel's OOM killer killed in this cgroup (`oom_kill` of v2's
    /// `memory.events`, or of v1's `memory.oom_control`).
    pub fn oom_kills(&self) -> u64 {
        let (file, dir) =
            if self.v2 { ("memory.events", self.dirs.first()) } else { ("memory.oom_control", self.dir_of("memory")) };
        let Some(dir) = dir else { return 0 };
        fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    }

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
