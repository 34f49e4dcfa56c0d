//! `docker stats` and `docker top`: what a running container uses, read from its cgroup and
//! from /proc, without external tools (the VM's guest has none to spare).

use std::collections::BTreeMap;

use super::{Engine, EngineError};
use crate::container::cgroup::Usage;

/// One stats sample of a container.
#[derive(Debug, Clone)]
pub struct StatsSample {
    pub id: String,
    pub name: String,
    pub read: String,
    pub usage: Usage,
    /// Host CPU time of all CPUs, in nanoseconds (/proc/stat), the denominator of CPU %.
    pub system_cpu_ns: u64,
    pub online_cpus: u64,
    /// Interface → (rx bytes, rx packets, tx bytes, tx packets), in the container's namespace.
    pub networks: BTreeMap<String, [u64; 4]>,
    pub host_memory: u64,
}

fn system_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse::<u64>().ok()).sum();
    ticks * 10_000_000
}

fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

/// Counters of the interfaces in the network namespace of `pid`, but `lo`.
fn net_dev(pid: i32) -> BTreeMap<String, [u64; 4]> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
            let name = name.trim();
            (name != "lo" && v.len() >= 10).then(|| (name.to_owned(), [v[0], v[1], v[8], v[9]]))
        })
        .collect()
}

/// `ps -ef`-style columns for one process from /proc.
fn ps_row(pid: i32, boot_secs: u64, users: &BTreeMap<u32, String>) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ppid = f.get(1)?.to_string();
    let cpu_ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let start_ticks: u64 = f.get(19)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid: u32 = status.lines().find(|l| l.starts_with("Uid:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmd = String::from_utf8_lossy(&cmd).split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    let started = time::OffsetDateTime::from_unix_timestamp((boot_secs + start_ticks / 100) as i64).ok()?;
    let t = cpu_ticks / 100;
    Some(vec![
        users.get(&uid).cloned().unwrap_or_else(|| uid.to_string()),
        pid.to_string(),
        ppid,
        "0".into(),
        format!("{:02}:{:02}", started.hour(), started.minute()),
        "?".into(),
        format!("{:02}:{:02}:{:02}", t / 3600, (t / 60) % 60, t % 60),
        cmd,
    ])
}

impl Engine {
    fn running_ctr(&self, id: &str) -> Result<std::sync::Arc<super::Ctr>, EngineError> {
        let ctr = self.ctr(id)?;
        let rec = ctr.snapshot();
        if !rec.running() {
            return Err(EngineError::Conflict(format!("Container {} is not running", rec.id)));
        }
        Ok(ctr)
    }

    /// A stats sample of a running container.
    pub fn stats(&self, id: &str) -> Result<StatsSample, EngineError> {
        let ctr = self.running_ctr(id)?;
        let rec = ctr.snapshot();
        let usage = ctr.cgroup.lock().expect("lock").as_ref().map(|c| c.usage()).unwrap_or_default();
        Ok(StatsSample {
            id: rec.id.clone(),
            name: format!("/{}", rec.name),
            read: crate::model::now_rfc3339(),
            usage,
            system_cpu_ns: system_cpu_ns(),
            online_cpus: std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1),
            networks: if rec.host_config.network_mode == "host" { BTreeMap::new() } else { net_dev(rec.state.pid) },
            host_memory: host_memory(),
        })
    }

    /// `docker top`: titles and rows for the container's processes.
    pub fn top(&self, id: &str) -> Result<(Vec<String>, Vec<Vec<String>>), EngineError> {
        let ctr = self.running_ctr(id)?;
        let pids = ctr.cgroup.lock().expect("lock").as_ref().map(|c| c.pids()).unwrap_or_default();
        let boot: u64 = std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0);
        let users: BTreeMap<u32, String> = std::fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
            })
            .collect();
        let titles = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"].map(String::from).to_vec();
        let mut rows: Vec<Vec<String>> = pids.into_iter().filter_map(|p| ps_row(p, boot, &users)).collect();
        rows.sort_by_key(|r| r[1].parse::<i32>().unwrap_or(0));
        self.container_event(&ctr.snapshot(), "top", &[]);
        Ok((titles, rows))
    }
}
