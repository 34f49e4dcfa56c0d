//! Seccomp: the system calls a container may make, as a profile in Docker's format compiled to
//! a classic-BPF filter with libseccomp.
//!
//! The profile format is Docker's (`defaultAction`, `archMap`, `syscalls[]` with `names`,
//! `action`, `args`, `includes`/`excludes` on capabilities, architectures and kernel
//! version), so `--security-opt seccomp=profile.json` takes the profiles users already have.
//! The built-in default (`seccomp-default.json`) allows what Docker Engine's default allows;
//! where it differs it is stricter, and says so in its `comment`.
//!
//! 1. At container start the engine compiles the profile for the container's capabilities
//!    ([`compile`]) and writes the filter next to the container's record.
//! 2. The single-threaded helper loads it ([`load`]) as the last step before it drops
//!    privileges (or, with `no-new-privileges`, just before `execve`): the container's first
//!    instruction already runs under it, and so does every `docker exec`.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::Path;

use libseccomp::{ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use serde::Deserialize;

/// Errors from reading or compiling a profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("Decoding seccomp profile failed: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("seccomp profile: {0}")]
    Invalid(String),
    #[error("compiling the seccomp profile")]
    Compile(#[source] libseccomp::error::SeccompError),
    #[error("writing the seccomp filter")]
    Write(#[source] io::Error),
}

/// A seccomp profile in Docker's format.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<i32>,
    /// The old form: a flat list of `SCMP_ARCH_*`.
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub syscalls: Vec<Syscalls>,
    /// The JSON it was read from (what a compiled filter is cached by).
    #[serde(skip)]
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Syscalls {
    #[serde(default)]
    pub names: Vec<String>,
    /// The old form: one name.
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<i32>,
    #[serde(default)]
    pub args: Vec<Arg>,
    #[serde(default)]
    pub includes: Filter,
    #[serde(default)]
    pub excludes: Filter,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

/// When a rule applies: every listed capability held (includes) or any held (excludes), the
/// machine's architecture listed, the kernel at least `minKernel`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub arches: Vec<String>,
    #[serde(default)]
    pub min_kernel: Option<String>,
}

impl Profile {
    /// Berth's default profile.
    pub fn builtin() -> Profile {
        Profile::parse(include_str!("seccomp-default.json")).expect("the built-in profile parses")
    }

    pub fn parse(json: &str) -> Result<Profile, SeccompError> {
        let mut p: Profile = serde_json::from_str(json).map_err(SeccompError::Decode)?;
        p.source = json.to_owned();
        Ok(p)
    }
}

/// The filter for `profile` and `caps`, compiled into `cache` once and reused: compiling takes
/// about 11 ms (release build, this machine), most of a container start. The name is a hash
/// of everything the program depends on (the profile, the capabilities, the kernel release,
/// libseccomp's version and the architecture), so a changed input never meets a stale file.
pub fn cached(profile: &Profile, caps: &[String], cache: &Path) -> Result<std::path::PathBuf, SeccompError> {
    use sha2::{Digest, Sha256};
    let mut caps = caps.to_vec();
    caps.sort();
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let v =
        libseccomp::ScmpVersion::current().map(|v| format!("{}.{}.{}", v.major, v.minor, v.micro)).unwrap_or_default();
    let mut h = Sha256::new();
    for part in [profile.source.as_str(), &caps.join(","), &release, &v, go_arch()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let path = cache.join(format!("{}.bpf", hex::encode(h.finalize())));
    // A file that is not whole (a crash before it reached the disk) is made again.
    let whole = std::fs::metadata(&path).is_ok_and(|m| m.len() > 0 && m.len().is_multiple_of(8));
    if !whole {
        std::fs::create_dir_all(cache).map_err(SeccompError::Write)?;
        let tmp = cache.join(format!(".{:016x}.tmp", rand::random::<u64>()));
        compile(profile, &caps, &tmp)?;
        std::fs::rename(&tmp, &path).map_err(SeccompError::Write)?;
    }
    Ok(path)
}

/// The machine's architecture as Docker's profiles name it (Go's names).
fn go_arch() -> &'static str {
    crate::model::go_arch()
}

/// The running kernel's version as (major, minor).
fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    parse_version(&release).unwrap_or((0, 0))
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty());
    Some((it.next()?.parse().ok()?, it.next().and_then(|m| m.parse().ok()).unwrap_or(0)))
}

fn action(name: &str, errno: Option<i32>) -> Result<ScmpAction, SeccompError> {
    match name {
        "SCMP_ACT_ERRNO" => Ok(ScmpAction::Errno(errno.unwrap_or(libc::EPERM))),
        "SCMP_ACT_TRACE" => Ok(ScmpAction::Trace(errno.unwrap_or(libc::EPERM) as u16)),
        "SCMP_ACT_NOTIFY" => Err(SeccompError::Invalid("SCMP_ACT_NOTIFY needs a listener, which Berth has not".into())),
        other => {
            ScmpAction::from_str(other, None).map_err(|_| SeccompError::Invalid(format!("unknown action {other}")))
        }
    }
}

fn compare(arg: &Arg) -> Result<ScmpArgCompare, SeccompError> {
    let op = match arg.op.as_str() {
        "SCMP_CMP_NE" => ScmpCompareOp::NotEqual,
        "SCMP_CMP_LT" => ScmpCompareOp::Less,
        "SCMP_CMP_LE" => ScmpCompareOp::LessOrEqual,
        "SCMP_CMP_EQ" => ScmpCompareOp::Equal,
        "SCMP_CMP_GE" => ScmpCompareOp::GreaterEqual,
        "SCMP_CMP_GT" => ScmpCompareOp::Greater,
        // Docker's form: `value` is the mask, `valueTwo` what the masked argument must equal.
        "SCMP_CMP_MASKED_EQ" => {
            return Ok(ScmpArgCompare::new(arg.index, ScmpCompareOp::MaskedEqual(arg.value), arg.value_two));
        }
        other => return Err(SeccompError::Invalid(format!("unknown comparison {other}"))),
    };
    Ok(ScmpArgCompare::new(arg.index, op, arg.value))
}

/// Whether a rule applies to a container holding `caps` on this machine.
fn applies(rule: &Syscalls, caps: &BTreeSet<String>, arch: &str, kernel: (u32, u32)) -> bool {
    let inc = &rule.includes;
    let exc = &rule.excludes;
    let kernel_at_least = |v: &Option<String>| v.as_deref().and_then(parse_version).is_none_or(|min| kernel >= min);
    (inc.caps.iter().all(|c| caps.contains(c)))
        && (inc.arches.is_empty() || inc.arches.iter().any(|a| a == arch))
        && kernel_at_least(&inc.min_kernel)
        && !(exc.caps.iter().any(|c| caps.contains(c)))
        && !(exc.arches.iter().any(|a| a == arch))
        && !(exc.min_kernel.is_some() && kernel_at_least(&exc.min_kernel))
}

/// Compiles `profile` for a container holding `caps` (names such as `CAP_SYS_ADMIN`) into a
/// BPF filter written to `out`.
pub fn compile(profile: &Profile, caps: &[String], out: &Path) -> Result<(), SeccompError> {
    let caps: BTreeSet<String> = caps.iter().cloned().collect();
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let mut ctx = ScmpFilterContext::new(default).map_err(SeccompError::Compile)?;
    let native = ScmpArch::native();
    let mut arches: Vec<ScmpArch> = Vec::new();
    for m in &profile.arch_map {
        let main: ScmpArch = m
            .architecture
            .parse()
            .map_err(|_| SeccompError::Invalid(format!("unknown architecture {}", m.architecture)))?;
        if main == native {
            for sub in &m.sub_architectures {
                arches.push(sub.parse().map_err(|_| SeccompError::Invalid(format!("unknown architecture {sub}")))?);
            }
        }
    }
    for a in &profile.architectures {
        arches.push(a.parse().map_err(|_| SeccompError::Invalid(format!("unknown architecture {a}")))?);
    }
    for a in arches.into_iter().filter(|a| *a != native) {
        ctx.add_arch(a).map_err(SeccompError::Compile)?;
    }
    let (arch, kernel) = (go_arch(), kernel_version());
    for rule in &profile.syscalls {
        if !applies(rule, &caps, arch, kernel) {
            continue;
        }
        let act = action(&rule.action, rule.errno_ret.or(profile.default_errno_ret))?;
        if act == default {
            // libseccomp refuses a rule that repeats the default; it would change nothing.
            continue;
        }
        let conditions: Vec<ScmpArgCompare> = rule.args.iter().map(compare).collect::<Result<_, _>>()?;
        for name in rule.names.iter().chain(rule.name.iter()) {
            // A call this machine's kernel headers do not know is skipped, as Docker does.
            let Ok(syscall) = ScmpSyscall::from_name(name) else { continue };
            let added = if conditions.is_empty() {
                ctx.add_rule(act, syscall)
            } else {
                ctx.add_rule_conditional(act, syscall, &conditions)
            };
            added.map_err(SeccompError::Compile)?;
        }
    }
    let mut file = std::fs::File::create(out).map_err(SeccompError::Write)?;
    ctx.export_bpf(&file).map_err(SeccompError::Compile)?;
    file.flush().map_err(SeccompError::Write)?;
    file.sync_all().map_err(SeccompError::Write)
}

/// Loads the filter program `bytes` (as [`compile`] wrote it) into this process (the
/// container's helper, before exec). The caller holds CAP_SYS_ADMIN or has set no_new_privs.
pub fn load(bytes: &[u8]) -> io::Result<()> {
    const INSN: usize = std::mem::size_of::<libc::sock_filter>();
    if bytes.is_empty() || !bytes.len().is_multiple_of(INSN) || bytes.len() / INSN > u16::MAX as usize {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a BPF program"));
    }
    let filter: Vec<libc::sock_filter> = bytes
        .chunks_exact(INSN)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: prog points at a live array of `len` instructions for the duration of the call;
    // the kernel copies it.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog as *const libc::sock_fprog) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_profile_compiles_for_docker_s_default_capabilities_and_for_all() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::builtin();
        let default: Vec<String> = super::super::security::DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
        compile(&p, &default, &dir.path().join("a.bpf")).unwrap();
        let all: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
        compile(&p, &all, &dir.path().join("b.bpf")).unwrap();
        let a = std::fs::metadata(dir.path().join("a.bpf")).unwrap().len();
        assert!(a > 0 && a.is_multiple_of(8));
    }

    #[test]
    fn compiled_filters_are_cached_by_what_they_depend_on() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::builtin();
        let caps = vec!["CAP_CHOWN".to_string()];
        let a = cached(&p, &caps, dir.path()).unwrap();
        assert_eq!(cached(&p, &caps, dir.path()).unwrap(), a);
        let b = cached(&p, &["CAP_SYS_ADMIN".to_string()], dir.path()).unwrap();
        assert_ne!(a, b);
        // A torn file is made again.
        std::fs::write(&a, b"abc").unwrap();
        cached(&p, &caps, dir.path()).unwrap();
        assert!(std::fs::metadata(&a).unwrap().len().is_multiple_of(8));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn rules_apply_by_capability_architecture_and_kernel() {
        let rule: Syscalls = serde_json::from_str(
            r#"{"names":["x"],"action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_SYS_ADMIN"],"minKernel":"4.8"}}"#,
        )
        .unwrap();
        let admin: BTreeSet<String> = ["CAP_SYS_ADMIN".to_string()].into();
        assert!(applies(&rule, &admin, "amd64", (6, 1)));
        assert!(!applies(&rule, &BTreeSet::new(), "amd64", (6, 1)));
        assert!(!applies(&rule, &admin, "amd64", (4, 4)));
        let not_admin: Syscalls =
            serde_json::from_str(r#"{"names":["x"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_SYS_ADMIN"]}}"#)
                .unwrap();
        assert!(!applies(&not_admin, &admin, "amd64", (6, 1)));
        let arm: Syscalls =
            serde_json::from_str(r#"{"names":["x"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm64"]}}"#)
                .unwrap();
        assert!(!applies(&arm, &admin, "amd64", (6, 1)));
        assert_eq!(parse_version("6.1.0-56-cloud-amd64"), Some((6, 1)));
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        let err = Profile::parse("{not json").unwrap_err();
        assert!(err.to_string().starts_with("Decoding seccomp profile failed"), "{err}");
        let p = Profile::parse(r#"{"defaultAction":"SCMP_ACT_NOPE","syscalls":[]}"#).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = compile(&p, &[], &dir.path().join("x")).unwrap_err();
        assert!(err.to_string().contains("SCMP_ACT_NOPE"), "{err}");
    }
}
