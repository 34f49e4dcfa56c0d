//! `berth status`: what the daemon wrote about itself at boot (`$BERTH_HOME/daemon.json`), plus
//! live answers from QEMU (QMP) and the agent, as text or as one stable JSON object.
//!
//! Every part that does not answer becomes a `null` section and a line in `problems`, so a
//! half-broken VM still gets a full report instead of an error.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_core::vm::BootTimes;
use berth_core::vm::qmp::Qmp;
use serde::{Deserialize, Serialize};

/// What the daemon knows about itself and its VM: `$BERTH_HOME/daemon.json`, written at start
/// and again once the VM answers, removed when the daemon ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonState {
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started_unix: f64,
    /// None while the VM boots.
    pub vm: Option<VmState>,
}

/// What the daemon knows of the VM it booted: kept in the state file and shown as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmFacts {
    pub qemu_pid: Option<u32>,
    /// The guest's architecture, amd64 or arm64 (empty in a state file from before it was kept).
    #[serde(default)]
    pub arch: String,
    pub accel: String,
    /// Named by the user (flag or config) rather than picked by the probe.
    pub accel_forced: bool,
    pub accel_reason: String,
    /// vsock, hybrid or serial.
    pub transport: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// The boot's phases, in seconds since QEMU started.
    pub boot: BootTimes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmState {
    #[serde(flatten)]
    pub facts: VmFacts,
    pub disk: PathBuf,
    /// When QEMU started (the boot's phases in `facts.boot` count from here).
    pub qemu_started_unix: f64,
}

pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

pub fn state_path(home: &Path) -> PathBuf {
    home.join("daemon.json")
}

impl DaemonState {
    /// Written whole to a temporary file and renamed, so a reader never sees half of it.
    pub fn write(&self, home: &Path) -> std::io::Result<()> {
        let tmp = home.join("daemon.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("the state serialises"))?;
        std::fs::rename(tmp, state_path(home))
    }

    pub fn read(home: &Path) -> Option<DaemonState> {
        serde_json::from_slice(&std::fs::read(state_path(home)).ok()?).ok()
    }
}

/// The whole report; its shape is the `--json` output, so fields are only ever added.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `stopped`, `starting` (the daemon boots the VM), `running` (QEMU runs the guest and the
    /// agent answers) or `degraded` (the daemon is up but something does not answer).
    pub state: &'static str,
    pub daemon: Option<DaemonReport>,
    pub vm: Option<VmReport>,
    pub disk: Option<DiskReport>,
    pub agent: Option<AgentReport>,
    pub docker_socket: Option<PathBuf>,
    /// What did not answer, and why.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonReport {
    pub pid: u32,
    pub uptime_secs: f64,
    /// Resident memory; None where /proc is not there to ask.
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmReport {
    /// QEMU's run state from QMP `query-status` (`running`, `paused`, `shutdown`, ...).
    pub state: Option<String>,
    /// From QMP `query-version`.
    pub qemu_version: Option<String>,
    #[serde(flatten)]
    pub facts: VmFacts,
    /// Since QEMU started.
    pub uptime_secs: f64,
    /// QEMU's resident memory on this machine (what the VM takes now, after the guest has
    /// given back the pages it freed); None where /proc is not there to ask.
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiskReport {
    pub path: PathBuf,
    /// The size the guest sees.
    pub size_bytes: u64,
    /// What the image takes on the host.
    pub used_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentReport {
    /// The agent's version, from its control hello.
    pub version: String,
    pub uptime_secs: f64,
    pub containers_running: usize,
    pub containers: usize,
    pub images: usize,
}

impl Report {
    pub fn stopped() -> Report {
        Report {
            state: "stopped",
            daemon: None,
            vm: None,
            disk: None,
            agent: None,
            docker_socket: None,
            problems: Vec::new(),
        }
    }
}

/// Gathers the report for the daemon `pid` (alive, as the caller checked).
pub async fn gather(home: &Path, pid: u32) -> Report {
    let mut problems = Vec::new();
    let state = DaemonState::read(home);
    let now = now_unix();
    let daemon = DaemonReport {
        pid,
        uptime_secs: state.as_ref().map_or(0.0, |s| (now - s.started_unix).max(0.0)),
        rss_bytes: rss_bytes(pid),
    };
    let Some(vm_state) = state.and_then(|s| s.vm) else {
        return Report { state: "starting", daemon: Some(daemon), ..Report::stopped() };
    };
    let mut vm = VmReport {
        state: None,
        qemu_version: None,
        rss_bytes: vm_state.facts.qemu_pid.and_then(rss_bytes),
        facts: vm_state.facts,
        uptime_secs: (now - vm_state.qemu_started_unix).max(0.0),
    };
    match Qmp::connect(&home.join("vm/qmp.sock")).await {
        Ok(qmp) => {
            match qmp.status().await {
                Ok(s) => vm.state = Some(s.state),
                Err(e) => problems.push(format!("QMP query-status: {e}")),
            }
            match qmp.version().await {
                Ok(v) => vm.qemu_version = Some(v),
                Err(e) => problems.push(format!("QMP query-version: {e}")),
            }
        }
        Err(e) => problems.push(e.to_string()),
    }
    let disk = match disk_usage(&vm_state.disk) {
        Ok(d) => Some(d),
        Err(e) => {
            problems.push(format!("data disk {}: {e}", vm_state.disk.display()));
            None
        }
    };
    let agent = match ask_agent(home).await {
        Ok(a) => Some(a),
        Err(e) => {
            problems.push(format!("the agent: {e}"));
            None
        }
    };
    let sock = crate::host::docker_endpoint(home);
    let healthy = vm.state.as_deref() == Some("running") && agent.is_some();
    Report {
        state: if healthy { "running" } else { "degraded" },
        daemon: Some(daemon),
        vm: Some(vm),
        disk,
        agent,
        docker_socket: crate::host::endpoint_may_exist(&sock).then_some(sock),
        problems,
    }
}

/// The agent's `Health` answer over the control channel.
async fn ask_agent(home: &Path) -> anyhow::Result<AgentReport> {
    use berth_core::control::{Request, Response, request_at};
    // Through the daemon, which holds the transport (a serial port has room for one client).
    let sock = crate::host::control_endpoint(home);
    let answer = match tokio::time::timeout(Duration::from_secs(10), request_at(&sock, &Request::Health)).await {
        Err(_) => anyhow::bail!("no answer in 10 s"),
        Ok(answer) => answer?,
    };
    match answer.response {
        Response::Health { uptime_secs, containers_running, containers, images } => {
            Ok(AgentReport { version: answer.agent, uptime_secs, containers_running, containers, images })
        }
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
}

/// `VmRSS` of `pid`, from /proc (Linux only).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    parse_vm_rss(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A qcow2 image's virtual size (from its header, so no `qemu-img` has to share the lock QEMU
/// holds) and the bytes it takes on the host.
pub fn disk_usage(path: &Path) -> std::io::Result<DiskReport> {
    use std::io::Read;
    let mut header = [0u8; 32];
    std::fs::File::open(path)?.read_exact(&mut header)?;
    if &header[..4] != b"QFI\xfb" {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "not a qcow2 image"));
    }
    let size_bytes = u64::from_be_bytes(header[24..32].try_into().expect("8 bytes"));
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let used_bytes = {
        use std::os::unix::fs::MetadataExt;
        meta.blocks() * 512
    };
    #[cfg(not(unix))]
    let used_bytes = meta.len();
    Ok(DiskReport { path: path.to_owned(), size_bytes, used_bytes })
}

fn duration(secs: f64) -> String {
    let s = secs as u64;
    match s {
        0..60 => format!("{secs:.1} s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

fn bytes(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let n = n as f64;
    if n >= 1024.0 * MIB { format!("{:.1} GiB", n / (1024.0 * MIB)) } else { format!("{:.1} MiB", n / MIB) }
}

/// The report for people.
pub fn render(r: &Report) -> String {
    let mut out = format!("berth: {}\n", r.state);
    if let Some(d) = &r.daemon {
        let rss = d.rss_bytes.map(|b| format!(", {} resident", bytes(b))).unwrap_or_default();
        out += &format!("  daemon     pid {}, up {}{rss}\n", d.pid, duration(d.uptime_secs));
    }
    if let Some(vm) = &r.vm {
        let how = if vm.facts.accel_forced { "as asked" } else { "probed" };
        out += &format!(
            "  vm         {}, up {} (booted in {}), QEMU {} (pid {}), accelerator {} ({how}), transport {}{}\n",
            vm.state.as_deref().unwrap_or("unknown"),
            duration(vm.uptime_secs),
            duration(vm.facts.boot.ready),
            vm.qemu_version.as_deref().unwrap_or("?"),
            vm.facts.qemu_pid.map_or("?".into(), |p| p.to_string()),
            vm.facts.accel,
            vm.facts.transport,
            if vm.facts.arch.is_empty() { String::new() } else { format!(", {} guest", vm.facts.arch) },
        );
        out += &format!("  resources  {} cpus, {} MiB memory", vm.facts.cpus, vm.facts.memory_mib);
        if let Some(rss) = vm.rss_bytes {
            out += &format!(" ({} resident)", bytes(rss));
        }
        if let Some(d) = &r.disk {
            out += &format!(", disk {} ({} used on the host)", bytes(d.size_bytes), bytes(d.used_bytes));
        }
        out += "\n";
    }
    if let Some(a) = &r.agent {
        out += &format!(
            "  agent      {} up {}, containers: {} running of {}, images: {}\n",
            a.version,
            duration(a.uptime_secs),
            a.containers_running,
            a.containers,
            a.images
        );
    }
    if let Some(s) = &r.docker_socket {
        out += &format!("  docker     export DOCKER_HOST={}\n", crate::host::docker_host(s));
    }
    for p in &r.problems {
        out += &format!("  problem    {p}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_is_a_full_object_in_json_and_one_line_for_people() {
        let json = serde_json::to_value(Report::stopped()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "state": "stopped", "daemon": null, "vm": null, "disk": null, "agent": null,
                "docker_socket": null, "problems": []
            })
        );
        assert_eq!(render(&Report::stopped()), "berth: stopped\n");
    }

    #[test]
    fn a_running_report_renders_every_part() {
        let r = Report {
            state: "running",
            daemon: Some(DaemonReport { pid: 7, uptime_secs: 75.0, rss_bytes: Some(12 * 1024 * 1024) }),
            vm: Some(VmReport {
                state: Some("running".into()),
                qemu_version: Some("7.2.22".into()),
                facts: VmFacts {
                    qemu_pid: Some(8),
                    arch: "arm64".into(),
                    accel: "tcg".into(),
                    accel_forced: false,
                    accel_reason: "probe".into(),
                    transport: "hybrid".into(),
                    cpus: 2,
                    memory_mib: 1024,
                    boot: BootTimes { ready: 6.5, ..BootTimes::default() },
                },
                uptime_secs: 70.0,
                rss_bytes: Some(300 << 20),
            }),
            disk: Some(DiskReport { path: "/d.qcow2".into(), size_bytes: 4 << 30, used_bytes: 3 << 20 }),
            agent: Some(AgentReport {
                version: "0.1.0".into(),
                uptime_secs: 65.0,
                containers_running: 1,
                containers: 2,
                images: 3,
            }),
            docker_socket: Some("/h/docker.sock".into()),
            problems: vec![],
        };
        let text = render(&r);
        for want in [
            "berth: running",
            "pid 7, up 1m 15s, 12.0 MiB resident",
            "running, up 1m 10s (booted in 6.5 s), QEMU 7.2.22 (pid 8), accelerator tcg (probed), transport hybrid, arm64 guest",
            "2 cpus, 1024 MiB memory (300.0 MiB resident), disk 4.0 GiB (3.0 MiB used on the host)",
            "containers: 1 running of 2, images: 3",
            "unix:///h/docker.sock",
        ] {
            assert!(text.contains(want), "{want:?} not in:\n{text}");
        }
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["agent"]["containers_running"], 1);
        assert_eq!(json["vm"]["qemu_version"], "7.2.22");
        assert_eq!(json["disk"]["size_bytes"], 4u64 << 30);
    }

    #[test]
    fn vm_rss_is_read_from_proc_status() {
        assert_eq!(parse_vm_rss("Name:\tberth\nVmPeak:\t  100 kB\nVmRSS:\t   2048 kB\n"), Some(2 * 1024 * 1024));
        assert_eq!(parse_vm_rss("Name:\tkthread\n"), None);
        if cfg!(target_os = "linux") {
            assert!(rss_bytes(std::process::id()).unwrap() > 0);
        }
    }

    // qemu-img makes the image: on the Linux hosts that run the tests.
    #[cfg(unix)]
    #[test]
    fn qcow2_size_and_use_come_from_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("data.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&disk)
            .arg("3G")
            .status()
            .expect("qemu-img is installed (./dev setup)");
        assert!(made.success());
        let d = disk_usage(&disk).unwrap();
        assert_eq!(d.size_bytes, 3 << 30);
        assert!(d.used_bytes > 0 && d.used_bytes < 10 << 20, "{d:?}");
        std::fs::write(dir.path().join("raw"), b"not qcow2 at all, but long enough").unwrap();
        assert!(disk_usage(&dir.path().join("raw")).is_err());
    }

    #[test]
    fn the_state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DaemonState::read(dir.path()), None);
        let s = DaemonState {
            pid: 1,
            started_unix: 2.5,
            vm: Some(VmState {
                facts: VmFacts {
                    qemu_pid: Some(3),
                    arch: "amd64".into(),
                    accel: "tcg".into(),
                    accel_forced: true,
                    accel_reason: "asked for".into(),
                    transport: "hybrid".into(),
                    cpus: 2,
                    memory_mib: 2048,
                    boot: BootTimes::default(),
                },
                disk: "/x".into(),
                qemu_started_unix: 3.0,
            }),
        };
        s.write(dir.path()).unwrap();
        assert_eq!(DaemonState::read(dir.path()), Some(s));
    }
}
