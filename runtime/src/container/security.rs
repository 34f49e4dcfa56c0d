//! What a container may do: capabilities, seccomp, `no_new_privs` and device access, from its
//! `HostConfig`, as Docker Engine's defaults and flags give them.
//!
//! - **Capabilities**: Docker's default set (below) in the bounding, permitted and effective
//!   sets; inheritable and ambient empty; `--cap-add`/`--cap-drop` (names with or without
//!   `CAP_`, any case, `ALL`) change it as dockerd does; `--privileged` keeps every capability
//!   the engine has. A non-root user keeps the bounding set only, as under dockerd (the kernel
//!   clears the rest at exec).
//! - **Seccomp**: the built-in profile ([`super::seccomp`]), a custom one
//!   (`--security-opt seccomp=<json>`, which the docker CLI sends read from the file), or
//!   none (`seccomp=unconfined`, and `--privileged`).
//! - **no_new_privs**: `--security-opt no-new-privileges[:true]`.
//! - **Devices**: [`super::devices`]; `--device` adds nodes and rules, `--privileged` all.
//! - **System paths**: `/proc` and `/sys` entries masked or read-only unless `--privileged`
//!   or `--security-opt systempaths=unconfined`.
//!
//! [`policy`] turns a `HostConfig` into a [`Policy`] at create (so bad flags fail there, with
//! dockerd's messages); the helper gets the part it applies as a [`Confinement`].

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::devices::{self, Rule};
use super::seccomp::{Profile, SeccompError};
use crate::model::HostConfig;

/// Docker's default capabilities.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Errors in a container's security settings.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("invalid {field}: unknown capability: {name:?}")]
    UnknownCapability { field: &'static str, name: String },
    #[error("invalid --security-opt {n}: {opt:?}")]
    BadOption { n: u8, opt: String },
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Device(#[from] devices::DeviceError),
    #[error("error gathering device information while adding custom device {path:?}: {reason}")]
    DeviceInfo { path: String, reason: String },
}

/// Which seccomp profile a container runs under.
#[derive(Debug, Clone)]
pub enum Seccomp {
    Builtin,
    Custom(Box<Profile>),
    Unconfined,
}

/// A device node to create in the container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceNode {
    /// Where, inside the container.
    pub path: String,
    /// `'c'` or `'b'`.
    pub kind: char,
    pub major: u32,
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Everything a container's security settings come to.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Capability names (`CAP_CHOWN`); `None` for all the engine has (`--privileged`).
    pub caps: Option<Vec<String>>,
    pub no_new_privileges: bool,
    pub seccomp: Seccomp,
    /// Device nodes to create, and the rules for opening and creating nodes.
    pub devices: Vec<DeviceNode>,
    pub device_rules: Vec<Rule>,
    pub privileged: bool,
    /// Leave /proc and /sys unmasked and writable where the kernel allows.
    pub unmasked_paths: bool,
}

/// What the helper applies to a container's processes (its first one and every exec).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Confinement {
    /// Capability names to keep; `None` keeps all the helper has.
    pub caps: Option<Vec<String>>,
    pub no_new_privileges: bool,
    /// The compiled seccomp filter; `None` runs unconfined.
    pub seccomp: Option<PathBuf>,
    /// The filter's program, read by the helper while the engine's files are still in reach
    /// (the container's process loads it after it has moved into the container's root).
    #[serde(skip)]
    program: Option<Vec<u8>>,
}

impl Confinement {
    /// Reads the seccomp filter into memory (the helper does this first thing).
    pub fn read_filter(&mut self) -> Result<(), String> {
        if let Some(path) = &self.seccomp {
            self.program =
                Some(std::fs::read(path).map_err(|e| format!("reading the seccomp filter {}: {e}", path.display()))?);
        }
        Ok(())
    }

    fn load_filter(&self) -> Result<(), String> {
        match (&self.seccomp, &self.program) {
            (None, _) => Ok(()),
            (Some(_), Some(p)) => super::seccomp::load(p).map_err(|e| format!("loading the seccomp filter: {e}")),
            // Fail closed: a filter was asked for and is not in hand.
            (Some(path), None) => Err(format!("the seccomp filter {} was not read", path.display())),
        }
    }
}

/// `net_admin`, `CAP_NET_ADMIN`, `Net_Admin` → `CAP_NET_ADMIN` (`ALL` stays `ALL`).
fn normalise(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper == "ALL" || upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") }
}

/// The capability set for `--cap-add` and `--cap-drop` over Docker's defaults, as dockerd
/// computes it.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<Vec<String>, SecurityError> {
    let known: Vec<String> = {
        let mut v: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
        v.sort();
        v
    };
    let check = |field: &'static str, list: &[String]| -> Result<Vec<String>, SecurityError> {
        list.iter()
            .map(|n| {
                let c = normalise(n);
                if c == "ALL" || known.contains(&c) {
                    Ok(c)
                } else {
                    Err(SecurityError::UnknownCapability { field, name: c })
                }
            })
            .collect()
    };
    let adds = check("CapAdd", add)?;
    let drops = check("CapDrop", drop)?;
    let mut caps: Vec<String> = if adds.iter().any(|c| c == "ALL") {
        known.iter().filter(|c| !drops.contains(c)).cloned().collect()
    } else if drops.iter().any(|c| c == "ALL") {
        adds.clone()
    } else {
        let mut v: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).filter(|c| !drops.contains(c)).collect();
        for a in adds {
            if !v.contains(&a) {
                v.push(a);
            }
        }
        v
    };
    caps.sort();
    caps.dedup();
    Ok(caps)
}

/// One `SecurityOpt` as dockerd splits it: `key=value` or `key:value`.
fn option_kv(opt: &str) -> Option<(&str, &str)> {
    opt.split_once('=').or_else(|| opt.split_once(':'))
}

/// Whether a container sees /proc and /sys unmasked (`--privileged` or `--security-opt
/// systempaths=unconfined`), as its [`Policy`] has it; for inspect, without reading the rest
/// of the options (a seccomp profile among them).
pub fn system_paths_unmasked(host: &crate::model::HostConfig) -> bool {
    host.privileged || host.security_opt.iter().flatten().any(|o| option_kv(o) == Some(("systempaths", "unconfined")))
}

/// Reads `HostConfig.SecurityOpt` as dockerd does: `key=value` or `key:value`.
fn security_options(opts: &[String]) -> Result<(bool, Seccomp, bool), SecurityError> {
    let mut nnp = false;
    let mut seccomp = Seccomp::Builtin;
    let mut unmasked = false;
    for opt in opts {
        if opt == "no-new-privileges" {
            nnp = true;
            continue;
        }
        let Some((key, value)) = option_kv(opt) else {
            return Err(SecurityError::BadOption { n: 1, opt: opt.clone() });
        };
        match key {
            "no-new-privileges" => {
                nnp = value.parse::<bool>().map_err(|_| SecurityError::BadOption { n: 2, opt: opt.clone() })?
            }
            "seccomp" => {
                seccomp = match value {
                    "unconfined" => Seccomp::Unconfined,
                    "builtin" | "default" | "" => Seccomp::Builtin,
                    json => Seccomp::Custom(Box::new(Profile::parse(json)?)),
                }
            }
            "systempaths" if value == "unconfined" => unmasked = true,
            // No AppArmor or SELinux in Berth's guest: these ask for nothing Berth would do.
            "apparmor" | "label" => {}
            _ => return Err(SecurityError::BadOption { n: 2, opt: opt.clone() }),
        }
    }
    Ok((nnp, seccomp, unmasked))
}

/// The node at `host_path` (on the engine's machine) as a [`DeviceNode`] at `container_path`.
fn device_node(host_path: &Path, container_path: &str) -> Result<Option<DeviceNode>, std::io::Error> {
    let meta = std::fs::metadata(host_path)?;
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return Ok(None);
    };
    let rdev = meta.rdev();
    Ok(Some(DeviceNode {
        path: container_path.to_owned(),
        kind,
        major: nix::sys::stat::major(rdev) as u32,
        minor: nix::sys::stat::minor(rdev) as u32,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
    }))
}

/// Every device node under `dir` (a `--device` directory, or `/dev` for `--privileged`),
/// placed under `target` in the container. Pseudo-terminals and the engine's own mounts
/// (`pts`, `shm`, `mqueue`) are the container's own business and are skipped.
fn devices_under(dir: &Path, target: &str) -> Vec<DeviceNode> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), target.trim_end_matches('/').to_owned())];
    while let Some((d, t)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if d == Path::new("/dev") && matches!(name.as_str(), "pts" | "shm" | "mqueue" | "fd" | "console") {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            let child = format!("{t}/{name}");
            if ft.is_dir() {
                stack.push((e.path(), child));
            } else if let Ok(Some(node)) = device_node(&e.path(), &child) {
                out.push(node);
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The security policy `host` asks for, or why it cannot be had.
pub fn policy(host: &HostConfig) -> Result<Policy, SecurityError> {
    let caps = capabilities(host.cap_add.as_deref().unwrap_or_default(), host.cap_drop.as_deref().unwrap_or_default())?;
    let (nnp, mut seccomp, unmasked) = security_options(host.security_opt.as_deref().unwrap_or_default())?;
    let mut rules = Vec::new();
    let mut nodes = Vec::new();
    if host.privileged {
        // dockerd runs a privileged container unconfined unless a profile was given.
        if matches!(seccomp, Seccomp::Builtin) {
            seccomp = Seccomp::Unconfined;
        }
        rules.push(Rule::ALL);
        nodes = devices_under(Path::new("/dev"), "/dev");
    } else {
        rules = devices::default_rules();
        for d in &host.devices {
            let inside = if d.path_in_container.is_empty() { d.path_on_host.as_str() } else { &d.path_in_container };
            let perms = if d.cgroup_permissions.is_empty() { "rwm" } else { &d.cgroup_permissions };
            let access = devices::parse_access(perms).ok_or_else(|| SecurityError::DeviceInfo {
                path: d.path_on_host.clone(),
                reason: format!("invalid permissions {perms:?}"),
            })?;
            let info = |reason: String| SecurityError::DeviceInfo { path: d.path_on_host.clone(), reason };
            let host_path = Path::new(&d.path_on_host);
            let meta = std::fs::metadata(host_path).map_err(|e| info(e.to_string()))?;
            let found = if meta.is_dir() {
                devices_under(host_path, inside)
            } else {
                device_node(host_path, inside).map_err(|e| info(e.to_string()))?.into_iter().collect::<Vec<_>>()
            };
            if found.is_empty() {
                return Err(info("not a device node".into()));
            }
            for n in found {
                rules.push(Rule { kind: Some(n.kind), major: Some(n.major), minor: Some(n.minor), access });
                nodes.push(n);
            }
        }
        for r in host.device_cgroup_rules.as_deref().unwrap_or_default() {
            rules.push(Rule::parse(r)?);
        }
    }
    Ok(Policy {
        caps: (!host.privileged).then_some(caps),
        no_new_privileges: nnp,
        seccomp,
        devices: nodes,
        device_rules: rules,
        privileged: host.privileged,
        unmasked_paths: host.privileged || unmasked,
    })
}

impl Policy {
    /// The seccomp filter (if any), compiled into the cache directory `cache` unless it is
    /// there already, and what the helper applies.
    pub fn confinement(&self, cache: &Path) -> Result<Confinement, SecurityError> {
        let profile = match &self.seccomp {
            Seccomp::Unconfined => None,
            Seccomp::Builtin => Some(std::borrow::Cow::Owned(Profile::builtin())),
            Seccomp::Custom(p) => Some(std::borrow::Cow::Borrowed(p.as_ref())),
        };
        let seccomp = match profile {
            None => None,
            Some(p) => {
                let caps: Vec<String> = match &self.caps {
                    Some(c) => c.clone(),
                    None => caps::all().iter().map(|c| c.to_string()).collect(),
                };
                Some(super::seccomp::cached(&p, &caps, cache)?)
            }
        };
        Ok(Confinement { caps: self.caps.clone(), no_new_privileges: self.no_new_privileges, seccomp, program: None })
    }
}

/// In the helper, still root with every capability: the steps before the user changes.
/// Loads the seccomp filter now when `no_new_privs` is off (the kernel then wants
/// CAP_SYS_ADMIN, which is about to go), trims the bounding set and keeps the permitted set
/// across the user change. Returns the capabilities to apply afterwards.
pub fn enter(c: &Confinement) -> Result<caps::CapsHashSet, String> {
    let have = caps::read(None, caps::CapSet::Permitted).map_err(|e| format!("reading capabilities: {e}"))?;
    let keep: caps::CapsHashSet = match &c.caps {
        None => have.clone(),
        Some(names) => {
            let mut keep = caps::CapsHashSet::new();
            for n in names {
                let cap: caps::Capability = n.parse().map_err(|_| format!("unknown capability {n}"))?;
                if !have.contains(&cap) {
                    return Err(format!("the engine does not hold {n}, which the container asks for"));
                }
                keep.insert(cap);
            }
            keep
        }
    };
    if !c.no_new_privileges {
        c.load_filter()?;
    }
    for cap in caps::runtime::thread_all_supported() {
        if !keep.contains(&cap) {
            caps::drop(None, caps::CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    // Capabilities newer than the caps crate knows go too (never kept: nothing names them).
    let last: u32 =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let known = caps::all().len() as u32;
    for n in known..=last {
        // SAFETY: PR_CAPBSET_DROP takes a capability number and touches no memory.
        if c.caps.is_some() && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(format!("dropping capability {n}: {}", std::io::Error::last_os_error()));
        }
    }
    caps::securebits::set_keepcaps(true).map_err(|e| format!("PR_SET_KEEPCAPS: {e}"))?;
    Ok(keep)
}

/// In the helper, after the user change and just before exec: the capability sets, then
/// `no_new_privs` and the seccomp filter when it was asked for.
pub fn finish(c: &Confinement, keep: &caps::CapsHashSet) -> Result<(), String> {
    caps::securebits::set_keepcaps(false).map_err(|e| format!("PR_SET_KEEPCAPS: {e}"))?;
    // Effective first: it must stay within permitted at every step.
    for set in [caps::CapSet::Effective, caps::CapSet::Permitted] {
        caps::set(None, set, keep).map_err(|e| format!("setting the {set:?} capabilities: {e}"))?;
    }
    caps::clear(None, caps::CapSet::Inheritable).map_err(|e| format!("clearing inheritable capabilities: {e}"))?;
    caps::clear(None, caps::CapSet::Ambient).map_err(|e| format!("clearing ambient capabilities: {e}"))?;
    if c.no_new_privileges {
        // SAFETY: prctl with PR_SET_NO_NEW_PRIVS and constant arguments touches no memory.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error()));
        }
        c.load_filter()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_dockerd() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let default = capabilities(&[], &[]).unwrap();
        assert_eq!(default.len(), DEFAULT_CAPS.len());
        let c = capabilities(&s(&["net_admin"]), &s(&["CAP_CHOWN", "Mknod"])).unwrap();
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_CHOWN".to_string()) && !c.contains(&"CAP_MKNOD".to_string()));
        assert_eq!(capabilities(&s(&["NET_RAW"]), &s(&["ALL"])).unwrap(), s(&["CAP_NET_RAW"]));
        let all = capabilities(&s(&["ALL"]), &s(&["SYS_ADMIN"])).unwrap();
        assert!(all.len() > 30 && !all.contains(&"CAP_SYS_ADMIN".to_string()));
        let err = capabilities(&s(&["FOO"]), &[]).unwrap_err();
        assert_eq!(err.to_string(), "invalid CapAdd: unknown capability: \"CAP_FOO\"");
    }

    #[test]
    fn security_options_follow_dockerd() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let (nnp, sc, _) = security_options(&s(&["no-new-privileges", "seccomp=unconfined"])).unwrap();
        assert!(nnp && matches!(sc, Seccomp::Unconfined));
        let (nnp, sc, _) = security_options(&s(&["no-new-privileges:false", "apparmor=unconfined"])).unwrap();
        assert!(!nnp && matches!(sc, Seccomp::Builtin));
        let (_, sc, unmasked) = security_options(&s(&[
            r#"seccomp={"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#,
            "systempaths=unconfined",
        ]))
        .unwrap();
        assert!(matches!(sc, Seccomp::Custom(_)) && unmasked);
        assert_eq!(security_options(&s(&["bogus"])).unwrap_err().to_string(), "invalid --security-opt 1: \"bogus\"");
        assert_eq!(
            security_options(&s(&["foo=bar"])).unwrap_err().to_string(),
            "invalid --security-opt 2: \"foo=bar\""
        );
        assert!(security_options(&s(&["seccomp={bad"])).unwrap_err().to_string().contains("Decoding seccomp profile"));
    }

    #[test]
    fn devices_are_found_with_their_numbers_or_refused() {
        let host = HostConfig {
            devices: vec![crate::model::DeviceMapping {
                path_on_host: "/dev/null".into(),
                path_in_container: "/dev/mynull".into(),
                cgroup_permissions: "r".into(),
            }],
            ..Default::default()
        };
        let p = policy(&host).unwrap();
        assert_eq!(p.devices[0].path, "/dev/mynull");
        assert_eq!((p.devices[0].kind, p.devices[0].major, p.devices[0].minor), ('c', 1, 3));
        assert_eq!(p.device_rules.last().unwrap().to_string(), "c 1:3 r");
        let bad = HostConfig {
            devices: vec![crate::model::DeviceMapping { path_on_host: "/dev/nope".into(), ..Default::default() }],
            ..Default::default()
        };
        let err = policy(&bad).unwrap_err().to_string();
        assert!(
            err.starts_with("error gathering device information while adding custom device \"/dev/nope\""),
            "{err}"
        );
    }
}
