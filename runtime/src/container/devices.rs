//! Device rules: which device nodes a container may create (`m`), read (`r`) and write (`w`).
//!
//! A container is root in its own namespaces and can `mknod` any node it likes in its own
//! file system (and images carry nodes: debootstrap makes `/dev/null` and friends). What
//! keeps it off the machine's disks is the kernel's device check at `open`: on cgroup v1 the
//! `devices` controller's lists, on cgroup v2 an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup. Both get the same rules,
//! Docker Engine's defaults: any node may be created, and only these opened:
//!
//! ```text
//! c 1:3 null   c 1:5 zero    c 1:7 full   c 1:8 random   c 1:9 urandom
//! c 5:0 tty    c 5:1 console c 5:2 ptmx   c 136:* pts    c 10:200 net/tun
//! ```
//!
//! plus what `--device` and `--device-cgroup-rule` add; `--privileged` allows everything.
//!
//! The eBPF program is assembled here: it is a few dozen instructions of one shape (compare
//! the device type, access, major and minor against each rule), and the crates that assemble
//! or load eBPF (aya, libbpf-rs, rbpf) are whole loaders or virtual machines built for
//! programs compiled from C or Rust, far more than this needs. Loading and attaching are two
//! `bpf(2)` calls.

use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Access bits, as both the v1 lists and the eBPF context encode them.
const ACC_MKNOD: u32 = 1;
const ACC_READ: u32 = 2;
const ACC_WRITE: u32 = 4;

/// Errors in a device rule or in applying the rules.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("invalid device cgroup rule {0:?}: want TYPE MAJOR:MINOR ACCESS, e.g. \"c 1:3 rwm\"")]
    BadRule(String),
    #[error("loading the device rules program")]
    Load(#[source] io::Error),
    #[error("attaching the device rules to {path}")]
    Attach {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// One allow rule. `None` fields match anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `'c'` or `'b'`; `None` for `a` (all devices).
    pub kind: Option<char>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// [`ACC_MKNOD`] | [`ACC_READ`] | [`ACC_WRITE`].
    pub access: u32,
}

impl Rule {
    const fn char(major: u32, minor: Option<u32>, access: u32) -> Rule {
        Rule { kind: Some('c'), major: Some(major), minor, access }
    }

    /// Everything (`a *:* rwm`): `--privileged`.
    pub const ALL: Rule = Rule { kind: None, major: None, minor: None, access: ACC_MKNOD | ACC_READ | ACC_WRITE };

    /// Parses `TYPE MAJOR:MINOR ACCESS` (`c 1:3 rwm`, `b *:* m`, `a`).
    pub fn parse(text: &str) -> Result<Rule, DeviceError> {
        let bad = || DeviceError::BadRule(text.to_owned());
        let mut words = text.split_whitespace();
        let kind = match words.next() {
            Some("a") => return Ok(Rule::ALL),
            Some("c") => 'c',
            Some("b") => 'b',
            _ => return Err(bad()),
        };
        let (major, minor) = words.next().and_then(|w| w.split_once(':')).ok_or_else(bad)?;
        let num = |s: &str| -> Result<Option<u32>, DeviceError> {
            if s == "*" { Ok(None) } else { s.parse().map(Some).map_err(|_| bad()) }
        };
        let access = parse_access(words.next().unwrap_or("rwm")).ok_or_else(bad)?;
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(Rule { kind: Some(kind), major: num(major)?, minor: num(minor)?, access })
    }
}

/// `rwm` letters as access bits; `None` for anything else.
pub fn parse_access(s: &str) -> Option<u32> {
    let mut bits = 0;
    for c in s.chars() {
        bits |= match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => return None,
        };
    }
    (bits != 0).then_some(bits)
}

impl fmt::Display for Rule {
    /// The cgroup v1 `devices.allow` form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let num = |n: Option<u32>| n.map(|n| n.to_string()).unwrap_or_else(|| "*".into());
        let mut access = String::new();
        for (bit, c) in [(ACC_READ, 'r'), (ACC_WRITE, 'w'), (ACC_MKNOD, 'm')] {
            if self.access & bit != 0 {
                access.push(c);
            }
        }
        match self.kind {
            None => write!(f, "a *:* {access}"),
            Some(k) => write!(f, "{k} {}:{} {access}", num(self.major), num(self.minor)),
        }
    }
}

/// Docker Engine's default rules (see the module documentation).
pub fn default_rules() -> Vec<Rule> {
    let rwm = ACC_READ | ACC_WRITE | ACC_MKNOD;
    vec![
        Rule { kind: Some('c'), major: None, minor: None, access: ACC_MKNOD },
        Rule { kind: Some('b'), major: None, minor: None, access: ACC_MKNOD },
        Rule::char(1, Some(3), rwm),
        Rule::char(1, Some(5), rwm),
        Rule::char(1, Some(7), rwm),
        Rule::char(1, Some(8), rwm),
        Rule::char(1, Some(9), rwm),
        Rule::char(5, Some(0), rwm),
        Rule::char(5, Some(1), rwm),
        Rule::char(5, Some(2), rwm),
        Rule::char(10, Some(200), rwm),
        Rule::char(136, None, rwm),
    ]
}

// eBPF instruction encoding (include/uapi/linux/bpf.h): 8 bytes, opcode, dst and src
// registers in one byte, a signed 16-bit offset, a signed 32-bit immediate.
const LDX_MEM_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const ALU64_MOV_X: u8 = 0xbf; // dst = src
const ALU64_MOV_K: u8 = 0xb7; // dst = imm
const ALU64_AND_K: u8 = 0x57; // dst &= imm
const ALU64_RSH_K: u8 = 0x77; // dst >>= imm
const JMP_JNE_K: u8 = 0x55; // if dst != imm goto pc + 1 + off
const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0x0f);
    b[2..4].copy_from_slice(&off.to_ne_bytes());
    b[4..8].copy_from_slice(&imm.to_ne_bytes());
    b
}

/// The eBPF program for `rules`: returns 1 (allow) when a rule matches the request, else 0.
///
/// The kernel passes `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`
/// with `access_type = access << 16 | type` (type 1 block, 2 char). Registers: r2 access,
/// r3 type, r4 major, r5 minor, r6 scratch.
pub fn program(rules: &[Rule]) -> Vec<[u8; 8]> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_MOV_X, 3, 2, 0, 0),
        insn(ALU64_AND_K, 3, 0, 0, 0xffff),
        insn(ALU64_RSH_K, 2, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules {
        // The rule's tests, each a jump past the rule when it fails, then "allow".
        let mut tests: Vec<(u8, u8, i32, Option<i32>)> = Vec::new(); // (code, dst, imm, and-mask)
        if let Some(k) = rule.kind {
            tests.push((JMP_JNE_K, 3, if k == 'b' { 1 } else { 2 }, None));
        }
        let all = ACC_MKNOD | ACC_READ | ACC_WRITE;
        if rule.access & all != all {
            // The requested access must lie within the rule's: (access & !allowed) == 0.
            tests.push((JMP_JNE_K, 6, 0, Some((!rule.access & all) as i32)));
        }
        if let Some(m) = rule.major {
            tests.push((JMP_JNE_K, 4, m as i32, None));
        }
        if let Some(m) = rule.minor {
            tests.push((JMP_JNE_K, 5, m as i32, None));
        }
        let len: usize = tests.iter().map(|t| if t.3.is_some() { 3 } else { 1 }).sum::<usize>() + 2;
        let mut at = 0;
        for (code, dst, imm, mask) in tests {
            if let Some(mask) = mask {
                p.push(insn(ALU64_MOV_X, 6, 2, 0, 0));
                p.push(insn(ALU64_AND_K, 6, 0, 0, mask));
                at += 2;
            }
            at += 1;
            // Jump to just past this rule's two closing instructions.
            p.push(insn(code, dst, 0, (len - at) as i16, imm));
        }
        p.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
        p.push(insn(JMP_EXIT, 0, 0, 0, 0));
        if len == 2 {
            // A rule that matches everything: what follows could never run, and the
            // verifier refuses unreachable instructions.
            return p;
        }
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD` (the kernel zero-fills the rest).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The fields of `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, initialised bpf_attr prefix of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *const T, std::mem::size_of::<T>()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// Loads the program for `rules` and attaches it to the cgroup v2 directory `cgroup`. The
/// attachment holds the program; it goes with the cgroup.
pub fn attach(cgroup: &Path, rules: &[Rule]) -> Result<(), DeviceError> {
    let insns = program(rules);
    let license = c"Apache-2.0";
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &load).map_err(|e| {
        // Again with the verifier's log, for the error message (a log too small for a
        // passing program would itself fail the load, so the first try goes without).
        let mut log = vec![0u8; 1 << 16];
        load.log_level = 1;
        load.log_size = log.len() as u32;
        load.log_buf = log.as_mut_ptr() as u64;
        let _ = bpf(BPF_PROG_LOAD, &load);
        let end = log.iter().position(|b| *b == 0).unwrap_or(0);
        let verifier = String::from_utf8_lossy(&log[..end]).trim().to_owned();
        DeviceError::Load(if verifier.is_empty() { e } else { io::Error::new(e.kind(), format!("{e}: {verifier}")) })
    })?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor, which nothing else owns.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let attach_err = |source| DeviceError::Attach { path: cgroup.display().to_string(), source };
    let dir = std::fs::File::open(cgroup).map_err(attach_err)?;
    let attach = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &attach).map_err(attach_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_print_as_cgroup_v1_writes_them() {
        assert_eq!(Rule::parse("c 1:3 rwm").unwrap().to_string(), "c 1:3 rwm");
        assert_eq!(Rule::parse("b *:* m").unwrap().to_string(), "b *:* m");
        assert_eq!(Rule::parse("c 136:* rw").unwrap().to_string(), "c 136:* rw");
        assert_eq!(Rule::parse("a").unwrap(), Rule::ALL);
        for bad in ["x 1:3 rwm", "c 1 rwm", "c 1:3 rwx", "c a:3 r", "c 1:3 r extra", ""] {
            assert!(Rule::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(default_rules().len(), 12);
    }

    /// Runs the program's logic on a request, as the kernel would, by interpreting the
    /// few instructions it uses.
    fn run(p: &[[u8; 8]], kind: u32, access: u32, major: u32, minor: u32) -> u64 {
        let ctx = [access << 16 | kind, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let b = p[pc];
            let (dst, src) = ((b[1] & 0x0f) as usize, (b[1] >> 4) as usize);
            let off = i16::from_ne_bytes([b[2], b[3]]);
            let imm = i32::from_ne_bytes([b[4], b[5], b[6], b[7]]);
            pc += 1;
            match b[0] {
                LDX_MEM_W => r[dst] = ctx[(off / 4) as usize] as u64,
                ALU64_MOV_X => r[dst] = r[src],
                ALU64_MOV_K => r[dst] = imm as i64 as u64,
                ALU64_AND_K => r[dst] &= imm as i64 as u64,
                ALU64_RSH_K => r[dst] >>= imm,
                JMP_JNE_K => {
                    if r[dst] != imm as i64 as u64 {
                        pc = (pc as i64 + off as i64) as usize;
                    }
                }
                JMP_EXIT => return r[0],
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    #[test]
    fn the_program_allows_exactly_the_rules() {
        let p = program(&default_rules());
        let (blk, chr) = (1, 2);
        assert_eq!(run(&p, chr, ACC_READ | ACC_WRITE, 1, 3), 1, "/dev/null");
        assert_eq!(run(&p, chr, ACC_READ, 136, 7), 1, "a pty");
        assert_eq!(run(&p, blk, ACC_MKNOD, 254, 0), 1, "mknod of a disk");
        assert_eq!(run(&p, blk, ACC_READ, 254, 0), 0, "reading a disk");
        assert_eq!(run(&p, chr, ACC_READ, 1, 1), 0, "/dev/mem");
        assert_eq!(run(&p, chr, ACC_READ | ACC_MKNOD, 1, 1), 0, "read and mknod of /dev/mem");
        let ro = program(&[Rule::parse("c 10:229 r").unwrap()]);
        assert_eq!(run(&ro, chr, ACC_READ, 10, 229), 1);
        assert_eq!(run(&ro, chr, ACC_WRITE, 10, 229), 0);
        assert_eq!(run(&ro, blk, ACC_READ, 10, 229), 0);
        assert_eq!(run(&program(&[Rule::ALL]), blk, ACC_READ | ACC_WRITE, 8, 0), 1);
        assert_eq!(run(&program(&[]), chr, ACC_READ, 1, 3), 0);
    }

    /// The kernel's verifier accepts the program and the kernel applies it, where a cgroup v2
    /// hierarchy is mounted (the VM; `/sys/fs/cgroup/unified` on hybrid hosts) and we are root.
    #[test]
    fn the_kernel_enforces_the_program() {
        let base = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|b| b.join("cgroup.procs").exists() && b.join("cgroup.controllers").exists());
        let Some(base) = base else { return };
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let cg = base.join(format!("berth-devices-test-{}", std::process::id()));
        std::fs::create_dir(&cg).unwrap();
        // The verifier takes every shape the engine makes: everything (--privileged), a rule
        // that matches all in the middle, nothing at all.
        for rules in
            [vec![Rule::ALL], vec![Rule::parse("c 1:3 r").unwrap(), Rule::ALL, Rule::parse("b 8:0 r").unwrap()], vec![]]
        {
            let scratch = base.join(format!("berth-devices-verify-{}", std::process::id()));
            std::fs::create_dir(&scratch).unwrap();
            let loaded = attach(&scratch, &rules);
            let _ = std::fs::remove_dir(&scratch);
            loaded.unwrap_or_else(|e| panic!("{rules:?}: {e}: {:?}", std::error::Error::source(&e)));
        }
        attach(&cg, &default_rules()).unwrap();
        let probe = |dev: &str| {
            let script = format!(
                "echo $$ > {}/cgroup.procs && d=$(mktemp -d) && mknod $d/n {dev} && head -c 1 $d/n >/dev/null; r=$?; rm -rf $d; exit $r",
                cg.display()
            );
            std::process::Command::new("sh").arg("-c").arg(script).status().unwrap().success()
        };
        let null_ok = probe("c 1 3");
        let loop_ok = probe("b 7 0");
        let _ = std::fs::remove_dir(&cg);
        assert!(null_ok, "/dev/null must stay readable");
        assert!(!loop_ok, "a block device must not be readable");
    }
}
