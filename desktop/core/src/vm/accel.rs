//! Choosing QEMU's accelerator.
//!
//! `--accel auto` must not trust a hypervisor device just because it opens: on this project's
//! machines `/dev/kvm` opens, QEMU starts under KVM, and the guest hangs forever (the host is a
//! nested PVM hypervisor). So each candidate (kvm on Linux, hvf on macOS, whpx on Windows) is
//! *probed*: QEMU runs a tiny firmware of our own under it, which walks the x86 modes a kernel
//! walks at boot (real mode, protected mode, long mode with paging) and writes one byte to the
//! serial port after each step (`R`, `P`, `L`), then exits through QEMU's `isa-debug-exit`. An
//! accelerator works when `RPL` comes back within a few seconds; TCG is the last resort and
//! always works. On this host KVM prints `R` and hangs switching to protected mode: the same
//! place where Linux stops (its last words under KVM are the real-mode "Probing EDD").
//!
//! An arm64 host (an Apple silicon Mac under HVF, an arm64 Linux under KVM) probes its arm64
//! guest's accelerator the same way with a firmware for `virt` ([`firmware_arm64`]): it writes
//! `A64` to the PL011 UART and powers off through PSCI. A guest of another architecture than
//! the host's runs under TCG without a probe: no hardware accelerator runs a foreign
//! instruction set.
//!
//! A verdict is cached in `accel-probe.json`, keyed by QEMU's version and the host kernel, so
//! the next start does not pay for a hanging probe again; a change of either probes anew.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

use super::arch::GuestArch;

/// How long a probe may take; a working accelerator answers in well under 0.1 s.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the x86 firmware writes to the serial port once each mode is reached.
const EXPECTED_X86: &[u8] = b"RPL";
/// What the arm64 firmware writes before it powers off.
const EXPECTED_ARM64: &[u8] = b"A64";

/// An accelerator QEMU can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Hvf,
    Whpx,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Hvf => "hvf",
            Accel::Whpx => "whpx",
            Accel::Tcg => "tcg",
        }
    }

    /// The hardware accelerators worth probing on this OS, best first (TCG comes after them).
    pub fn candidates() -> &'static [Accel] {
        if cfg!(target_os = "linux") {
            &[Accel::Kvm]
        } else if cfg!(target_os = "macos") {
            &[Accel::Hvf]
        } else if cfg!(windows) {
            &[Accel::Whpx]
        } else {
            &[]
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for: probe, or one accelerator whatever the probe would say. Spelled as
/// on the command line in config files too, so a wrong name gets the same message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum AccelChoice {
    #[default]
    Auto,
    Forced(Accel),
}

impl TryFrom<String> for AccelChoice {
    type Error = AccelError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AccelChoice> for String {
    fn from(c: AccelChoice) -> String {
        c.to_string()
    }
}

impl FromStr for AccelChoice {
    type Err = AccelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => AccelChoice::Auto,
            "kvm" => AccelChoice::Forced(Accel::Kvm),
            "hvf" => AccelChoice::Forced(Accel::Hvf),
            "whpx" => AccelChoice::Forced(Accel::Whpx),
            "tcg" => AccelChoice::Forced(Accel::Tcg),
            other => return Err(AccelError::Unknown(other.to_owned())),
        })
    }
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AccelChoice::Auto => f.write_str("auto"),
            AccelChoice::Forced(a) => a.fmt(f),
        }
    }
}

/// Errors choosing an accelerator.
#[derive(Debug, thiserror::Error)]
pub enum AccelError {
    #[error("unknown accelerator {0:?}: use auto, kvm, hvf, whpx or tcg")]
    Unknown(String),
    #[error("{accel} cannot run an {guest} guest on this {host} host: only tcg emulates another architecture")]
    ForeignGuest { accel: Accel, guest: GuestArch, host: GuestArch },
    #[error("writing the probe's firmware to {path}")]
    Firmware {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU could not be started for the accelerator probe ({program}): is it installed?")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub works: bool,
    /// What was seen, for the log: the serial bytes, or QEMU's complaint.
    pub detail: String,
}

/// The accelerator to boot with, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Chosen {
    pub accel: Accel,
    /// True when the user named it; false when the probe picked it.
    pub forced: bool,
    pub reason: String,
}

/// The probe's firmware: a 64 KiB BIOS image (QEMU wants a multiple of 64 KiB), mapped just
/// below 4 GiB, whose last 16 bytes are the x86 reset vector.
///
/// Layout: real-mode code at 0x0000, 32-bit code at 0x0040, 64-bit code at 0x0100, a GDT at
/// 0x0180 and its descriptor at 0x01a0; the rest is `hlt`. Page tables are built in guest RAM at
/// 0x1000..0x7000 (identity map of the low 4 GiB with 2 MiB pages), so the code keeps running
/// at the same addresses once paging is on.
pub fn firmware_x86() -> Vec<u8> {
    const SIZE: usize = 64 * 1024;
    const BASE: u32 = 0xffff_0000; // where the image's first byte is
    const PM32: u32 = 0x40;
    const LM64: u32 = 0x100;
    const GDT: u32 = 0x180;
    const GDTR: u16 = 0x1a0;
    let mut img = vec![0xf4u8; SIZE]; // hlt everywhere else
    let mut put = |at: u32, code: &[u8], room: u32| {
        assert!(code.len() <= room as usize, "firmware section at {at:#x} overflows");
        img[at as usize..at as usize + code.len()].copy_from_slice(code);
    };
    // 16-bit real mode, CS base 0xffff0000.
    let mut real = vec![
        0xfa, // cli
        0xba, 0xf8, 0x03, // mov dx, 0x3f8 (COM1)
        0xb0, b'R', // mov al, 'R'
        0xee, // out dx, al
        0x2e, 0x66, 0x0f, 0x01, 0x16, // lgdt (32-bit) [cs:GDTR]
    ];
    real.extend(GDTR.to_le_bytes());
    real.extend([
        0x0f, 0x20, 0xc0, // mov eax, cr0
        0x66, 0x83, 0xc8, 0x01, // or eax, 1 (PE)
        0x0f, 0x22, 0xc0, // mov cr0, eax
        0x66, 0xea, // jmp far (32-bit offset) 0x08:BASE+PM32
    ]);
    real.extend((BASE + PM32).to_le_bytes());
    real.extend(0x08u16.to_le_bytes());
    put(0, &real, PM32);
    // 32-bit protected mode, flat segments.
    let mut pm = vec![
        0x66, 0xb8, 0x10, 0x00, // mov ax, 0x10
        0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, // mov ds/es/ss, ax
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'P', // mov al, 'P'
        0xee, // out dx, al
        0xbf, 0x00, 0x10, 0x00, 0x00, // mov edi, 0x1000
        0x31, 0xc0, // xor eax, eax
        0xb9, 0x00, 0x1c, 0x00, 0x00, // mov ecx, 0x1c00 (dwords in 0x1000..0x8000)
        0xf3, 0xab, // rep stosd: zero the tables
    ];
    // PML4[0] -> PDPT at 0x2000; PDPT[0..4] -> the four page directories at 0x3000..0x7000.
    for (at, value) in [(0x1000u32, 0x2003u32), (0x2000, 0x3003), (0x2008, 0x4003), (0x2010, 0x5003), (0x2018, 0x6003)]
    {
        pm.extend([0xc7, 0x05]); // mov dword [at], value
        pm.extend(at.to_le_bytes());
        pm.extend(value.to_le_bytes());
    }
    pm.extend([
        0xbf, 0x00, 0x30, 0x00, 0x00, // mov edi, 0x3000
        0xb8, 0x83, 0x00, 0x00, 0x00, // mov eax, 0x83 (present, writable, 2 MiB page)
        0xb9, 0x00, 0x08, 0x00, 0x00, // mov ecx, 2048
        0x89, 0x07, // 1: mov [edi], eax
        0x05, 0x00, 0x00, 0x20, 0x00, // add eax, 0x200000
        0x83, 0xc7, 0x08, // add edi, 8
        0xe2, 0xf4, // loop 1b
        0xb8, 0x00, 0x10, 0x00, 0x00, // mov eax, 0x1000
        0x0f, 0x22, 0xd8, // mov cr3, eax
        0x0f, 0x20, 0xe0, // mov eax, cr4
        0x83, 0xc8, 0x20, // or eax, 0x20 (PAE)
        0x0f, 0x22, 0xe0, // mov cr4, eax
        0xb9, 0x80, 0x00, 0x00, 0xc0, // mov ecx, 0xc0000080 (EFER)
        0x0f, 0x32, // rdmsr
        0x0d, 0x00, 0x01, 0x00, 0x00, // or eax, 0x100 (LME)
        0x0f, 0x30, // wrmsr
        0x0f, 0x20, 0xc0, // mov eax, cr0
        0x0d, 0x00, 0x00, 0x00, 0x80, // or eax, 0x80000000 (PG)
        0x0f, 0x22, 0xc0, // mov cr0, eax
        0xea, // jmp far 0x18:BASE+LM64
    ]);
    pm.extend((BASE + LM64).to_le_bytes());
    pm.extend(0x18u16.to_le_bytes());
    put(PM32, &pm, LM64 - PM32);
    // 64-bit long mode.
    let lm = [
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, b'L', // mov al, 'L'
        0xee, // out dx, al
        0xb0, 0x00, // mov al, 0
        0xe6, 0xf4, // out 0xf4, al: isa-debug-exit, QEMU exits with status 1
        0xf4, // 2: hlt
        0xeb, 0xfd, // jmp 2b
    ];
    put(LM64, &lm, GDT - LM64);
    let gdt: [u64; 4] = [
        0,
        0x00cf_9a00_0000_ffff, // 0x08: 32-bit code, flat
        0x00cf_9200_0000_ffff, // 0x10: data, flat
        0x00af_9a00_0000_ffff, // 0x18: 64-bit code
    ];
    let gdt: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    put(GDT, &gdt, u32::from(GDTR) - GDT);
    let mut gdtr = (gdt.len() as u16 - 1).to_le_bytes().to_vec();
    gdtr.extend((BASE + GDT).to_le_bytes());
    put(u32::from(GDTR), &gdtr, 16);
    // The reset vector (CS:IP = f000:fff0): a near jump back to offset 0.
    let rel = 0u16.wrapping_sub(0xfff3);
    let mut reset = vec![0xe9];
    reset.extend(rel.to_le_bytes());
    put(0xfff0, &reset, 16);
    img
}

/// The arm64 probe's firmware for QEMU's `virt` machine: 64 KiB of flash, where the CPU starts
/// (at EL1: the probe's QEMU has neither EL2 nor EL3). It stores `A`, `6`, `4` into the PL011
/// UART's data register at 0x0900_0000 and calls PSCI `SYSTEM_OFF` through `hvc`, which ends
/// QEMU; anything after that spins. Instructions are encoded here (checked against GNU as's
/// output) so that no cross assembler is needed to build Berth.
pub fn firmware_arm64() -> Vec<u8> {
    // MOVZ Wd, #imm16 (LSL #16 when `high`) and MOVK likewise: 32-bit register forms.
    let movz = |rd: u32, imm: u32, high: bool| 0x5280_0000 | u32::from(high) << 21 | imm << 5 | rd;
    let movk = |rd: u32, imm: u32, high: bool| 0x7280_0000 | u32::from(high) << 21 | imm << 5 | rd;
    const STRB_W0_X1: u32 = 0x3900_0020; // strb w0, [x1]
    let mut code = vec![0xd2a1_2001]; // movz x1, #0x0900, lsl #16: the UART
    for b in EXPECTED_ARM64 {
        code.extend([movz(0, u32::from(*b), false), STRB_W0_X1]);
    }
    code.extend([
        movz(0, 0x0008, false), // w0 = 0x8400_0008: PSCI SYSTEM_OFF
        movk(0, 0x8400, true),
        0xd400_0002, // hvc #0
        0x1400_0000, // b .
    ]);
    let mut img: Vec<u8> = code.iter().flat_map(|i| i.to_le_bytes()).collect();
    img.resize(64 * 1024, 0);
    img
}

/// Runs the firmware for `arch` under `accel` with `qemu` (that architecture's system
/// emulator), writing the image into `dir`; `Verdict::works` when the firmware's bytes (`RPL`,
/// `A64`) arrive within `timeout`.
pub async fn probe(
    qemu: &Path,
    accel: Accel,
    arch: GuestArch,
    dir: &Path,
    timeout: Duration,
) -> Result<Verdict, AccelError> {
    let bios = dir.join(format!("accel-probe-{arch}.bin"));
    let (firmware, expected, machine) = match arch {
        GuestArch::Amd64 => {
            (firmware_x86(), EXPECTED_X86, vec!["-machine", "pc", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"])
        }
        GuestArch::Arm64 => (firmware_arm64(), EXPECTED_ARM64, arch.machine_args(accel)),
    };
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&bios, firmware))
        .map_err(|source| AccelError::Firmware { path: bios.clone(), source })?;
    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-accel", accel.name(), "-m", "16", "-nodefaults", "-display", "none"])
        .args(&machine)
        .args(["-no-reboot", "-serial", "stdio"])
        .arg("-bios")
        .arg(&bios)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| AccelError::Spawn { program: qemu.display().to_string(), source })?;
    let mut out = child.stdout.take().expect("piped");
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 64];
        while !seen.ends_with(expected) {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    let timed_out = tokio::time::timeout(timeout, read).await.is_err();
    let _ = child.kill().await;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        // QEMU is dead by now, so this read ends.
        let _ = e.read_to_string(&mut err).await;
    }
    let _ = std::fs::remove_file(&bios);
    let works = seen.ends_with(expected);
    let shown = String::from_utf8_lossy(&seen).into_owned();
    let detail = if works {
        let reached = if arch == GuestArch::Amd64 { "reached long mode" } else { "ran its firmware" };
        format!("{reached} in {} ms", started.elapsed().as_millis())
    } else if timed_out {
        let expected = String::from_utf8_lossy(expected);
        format!("no answer in {} s (serial: {shown:?}, expected {expected:?})", timeout.as_secs_f32())
    } else {
        // Keep the first line that says why QEMU gave up, not its warnings.
        let why = err.lines().find(|l| !l.contains("warning")).unwrap_or(err.trim()).trim().to_owned();
        format!("QEMU exited (serial: {shown:?}): {why}")
    };
    Ok(Verdict { works, detail })
}

/// The cache key: a verdict holds for one QEMU on one host kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    pub qemu: String,
    pub kernel: String,
}

/// `accel-probe.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    key: Option<CacheKey>,
    verdicts: BTreeMap<Accel, Verdict>,
}

impl Cache {
    fn load(path: &Path, key: &CacheKey) -> Cache {
        match std::fs::read(path).ok().and_then(|b| serde_json::from_slice::<Cache>(&b).ok()) {
            Some(c) if c.key.as_ref() == Some(key) => c,
            _ => Cache { key: Some(key.clone()), verdicts: BTreeMap::new() },
        }
    }

    fn save(&self, path: &Path) {
        // A cache that cannot be written only costs a probe next time.
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(self).expect("the cache serialises");
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the accelerator cache");
        }
    }
}

/// The host kernel, as far as it can be named cheaply.
pub fn host_kernel() -> String {
    if let Ok(r) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        return r.trim().to_owned();
    }
    std::process::Command::new("uname")
        .args(["-sr"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| std::env::consts::OS.to_owned())
}

/// QEMU's `--version` first line, or None if it does not run.
pub async fn qemu_version(qemu: &Path) -> Option<String> {
    let out = Command::new(qemu).arg("--version").stdin(Stdio::null()).output().await.ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next()?.trim().to_owned())
}

/// Picks the accelerator for an `arch` guest and `choice`: a forced one as it is; for `auto`,
/// the first candidate whose probe passes (verdicts cached in `cache`), else TCG. A guest of
/// another architecture than the host's gets TCG, and a hardware accelerator asked for it is
/// refused, naming the reason.
pub async fn choose(choice: AccelChoice, arch: GuestArch, qemu: &Path, cache: &Path) -> Result<Chosen, AccelError> {
    choose_from(choice, arch, GuestArch::host(), Accel::candidates(), qemu, cache).await
}

async fn choose_from(
    choice: AccelChoice,
    arch: GuestArch,
    host: GuestArch,
    candidates: &[Accel],
    qemu: &Path,
    cache: &Path,
) -> Result<Chosen, AccelError> {
    if arch != host {
        return match choice {
            AccelChoice::Forced(accel) if accel != Accel::Tcg => {
                Err(AccelError::ForeignGuest { accel, guest: arch, host })
            }
            _ => Ok(Chosen {
                accel: Accel::Tcg,
                forced: choice != AccelChoice::Auto,
                reason: format!("an {arch} guest on an {host} host: only TCG emulates another architecture"),
            }),
        };
    }
    if let AccelChoice::Forced(accel) = choice {
        return Ok(Chosen { accel, forced: true, reason: "asked for".into() });
    }
    let dir = cache.parent().unwrap_or(Path::new("."));
    let key = CacheKey {
        qemu: qemu_version(qemu).await.unwrap_or_else(|| format!("{} (did not run)", qemu.display())),
        kernel: host_kernel(),
    };
    let mut verdicts = Cache::load(cache, &key);
    let mut why_not = Vec::new();
    for &accel in candidates {
        if accel == Accel::Kvm && !kvm_device_opens() {
            // No device: QEMU would fail at once; nothing worth caching either.
            why_not.push("kvm: /dev/kvm does not open".to_owned());
            continue;
        }
        let verdict = match verdicts.verdicts.get(&accel) {
            Some(v) => {
                tracing::debug!(%accel, works = v.works, "accelerator verdict from the cache");
                v.clone()
            }
            None => {
                let v = probe(qemu, accel, arch, dir, PROBE_TIMEOUT).await?;
                tracing::info!(%accel, works = v.works, detail = %v.detail, "accelerator probe");
                verdicts.verdicts.insert(accel, v.clone());
                verdicts.save(cache);
                v
            }
        };
        if verdict.works {
            return Ok(Chosen { accel, forced: false, reason: format!("probe passed: {}", verdict.detail) });
        }
        why_not.push(format!("{accel}: {}", verdict.detail));
    }
    let reason = if why_not.is_empty() {
        "no hardware accelerator on this OS".to_owned()
    } else {
        format!("falling back to TCG ({})", why_not.join("; "))
    };
    if !why_not.is_empty() {
        tracing::warn!(%reason, "no hardware accelerator works");
    }
    Ok(Chosen { accel: Accel::Tcg, forced: false, reason })
}

fn kvm_device_opens() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print() {
        assert_eq!("auto".parse::<AccelChoice>().unwrap(), AccelChoice::Auto);
        assert_eq!("tcg".parse::<AccelChoice>().unwrap(), AccelChoice::Forced(Accel::Tcg));
        assert_eq!("whpx".parse::<AccelChoice>().unwrap().to_string(), "whpx");
        assert!(matches!("xen".parse::<AccelChoice>(), Err(AccelError::Unknown(s)) if s == "xen"));
        // As config files spell them.
        #[derive(Deserialize)]
        struct F {
            a: AccelChoice,
        }
        assert_eq!(serde_json::from_str::<F>(r#"{"a":"auto"}"#).unwrap().a, AccelChoice::Auto);
        assert_eq!(serde_json::from_str::<F>(r#"{"a":"hvf"}"#).unwrap().a, AccelChoice::Forced(Accel::Hvf));
        let bad = serde_json::from_str::<F>(r#"{"a":"fast"}"#).err().unwrap().to_string();
        assert!(bad.contains("unknown accelerator \"fast\""), "{bad}");
        assert_eq!(serde_json::to_string(&AccelChoice::Forced(Accel::Tcg)).unwrap(), "\"tcg\"");
    }

    #[test]
    fn firmware_has_its_reset_vector_and_gdt_where_the_code_expects_them() {
        let fw = firmware_x86();
        assert_eq!(fw.len(), 65536);
        // jmp near from 0xfff0 (next ip 0xfff3) lands on offset 0, wrapping in the segment.
        assert_eq!(&fw[0xfff0..0xfff3], &[0xe9, 0x0d, 0x00]);
        assert_eq!(fw[0], 0xfa, "cli first");
        // The descriptor: limit 31, base 0xffff0180, which is the GDT's place in the image.
        assert_eq!(&fw[0x1a0..0x1a6], &[31, 0, 0x80, 0x01, 0xff, 0xff]);
        assert_eq!(&fw[0x188..0x190], &0x00cf_9a00_0000_ffffu64.to_le_bytes());
        // The far jumps name the 32- and 64-bit code's addresses.
        let at = |needle: &[u8]| fw.windows(needle.len()).position(|w| w == needle);
        assert!(at(&[0x66, 0xea, 0x40, 0x00, 0xff, 0xff, 0x08, 0x00]).is_some());
        assert!(at(&[0xea, 0x00, 0x01, 0xff, 0xff, 0x18, 0x00]).is_some());
        assert_eq!(&fw[0x100..0x106], &[0x66, 0xba, 0xf8, 0x03, 0xb0, b'L']);
    }

    #[tokio::test]
    async fn forced_accelerators_are_not_probed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("accel-probe.json");
        let c = choose(AccelChoice::Forced(Accel::Kvm), GuestArch::host(), Path::new("/nonexistent/qemu"), &cache)
            .await
            .unwrap();
        assert_eq!(c, Chosen { accel: Accel::Kvm, forced: true, reason: "asked for".into() });
        assert!(!cache.exists());
    }

    // QEMU (or `true`) runs here as a Linux program: on the Linux hosts that run the tests.
    #[cfg(unix)]
    #[tokio::test]
    async fn cached_verdicts_are_used_for_the_same_qemu_and_kernel_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("accel-probe.json");
        // A program that is not QEMU: probing with it would fail, so a verdict can only come
        // from the cache. `true` prints nothing for --version.
        let qemu = Path::new("true");
        let key = CacheKey {
            qemu: qemu_version(qemu).await.unwrap_or_else(|| "true (did not run)".into()),
            kernel: host_kernel(),
        };
        let mut c = Cache { key: Some(key.clone()), verdicts: BTreeMap::new() };
        c.verdicts.insert(Accel::Hvf, Verdict { works: true, detail: "cached".into() });
        c.save(&cache);
        let chosen = choose_from(AccelChoice::Auto, GuestArch::host(), GuestArch::host(), &[Accel::Hvf], qemu, &cache)
            .await
            .unwrap();
        assert_eq!((chosen.accel, chosen.forced), (Accel::Hvf, false));
        assert!(chosen.reason.contains("cached"), "{}", chosen.reason);
        // Another kernel: the cache is stale, and the probe runs (and fails with `true`).
        let other = CacheKey { kernel: "another".into(), ..key };
        Cache { key: Some(other), verdicts: c.verdicts }.save(&cache);
        let chosen = choose_from(AccelChoice::Auto, GuestArch::host(), GuestArch::host(), &[Accel::Hvf], qemu, &cache)
            .await
            .unwrap();
        assert_eq!(chosen.accel, Accel::Tcg, "{}", chosen.reason);
        let saved: Cache = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert_eq!(saved.key.unwrap().kernel, host_kernel());
        assert!(!saved.verdicts[&Accel::Hvf].works);
    }

    #[tokio::test]
    async fn no_candidates_means_tcg() {
        let dir = tempfile::tempdir().unwrap();
        let chosen = choose_from(
            AccelChoice::Auto,
            GuestArch::host(),
            GuestArch::host(),
            &[],
            Path::new("true"),
            &dir.path().join("c.json"),
        )
        .await
        .unwrap();
        assert_eq!((chosen.accel, chosen.forced), (Accel::Tcg, false));
    }

    #[tokio::test]
    async fn a_guest_of_another_architecture_gets_tcg_without_a_probe() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("c.json");
        let (arm, x86) = (GuestArch::Arm64, GuestArch::Amd64);
        // `true` as QEMU: a probe would fail, so TCG here can only be the rule, not a verdict.
        let chosen = choose_from(AccelChoice::Auto, arm, x86, &[Accel::Kvm], Path::new("true"), &cache).await.unwrap();
        assert_eq!((chosen.accel, chosen.forced), (Accel::Tcg, false));
        assert!(chosen.reason.contains("an arm64 guest on an amd64 host"), "{}", chosen.reason);
        assert!(!cache.exists(), "nothing was probed");
        let tcg = choose_from(AccelChoice::Forced(Accel::Tcg), x86, arm, &[Accel::Hvf], Path::new("true"), &cache);
        assert_eq!(tcg.await.unwrap().accel, Accel::Tcg);
        let hvf = choose_from(AccelChoice::Forced(Accel::Hvf), x86, arm, &[Accel::Hvf], Path::new("true"), &cache);
        let e = hvf.await.unwrap_err().to_string();
        assert_eq!(e, "hvf cannot run an amd64 guest on this arm64 host: only tcg emulates another architecture");
    }

    #[test]
    fn the_arm64_firmware_is_what_gnu_as_makes_of_its_program() {
        // aarch64-linux-gnu-as on: movz x1, #0x0900, lsl #16; movz w0, #0x41; strb w0, [x1];
        // (the same for '6' and '4'); movz w0, #8; movk w0, #0x8400, lsl #16; hvc #0; b .
        let words: [u32; 11] = [
            0xd2a12001, 0x52800820, 0x39000020, 0x528006c0, 0x39000020, 0x52800680, 0x39000020, 0x52800100, 0x72b08000,
            0xd4000002, 0x14000000,
        ];
        let fw = firmware_arm64();
        assert_eq!(fw.len(), 65536);
        let expected: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(&fw[..expected.len()], &expected[..]);
        assert!(fw[expected.len()..].iter().all(|b| *b == 0));
    }

    /// The real probe with this machine's QEMU. TCG always passes. KVM is reported as this host
    /// has it: on the project's machines (a nested PVM hypervisor) `/dev/kvm` opens but the
    /// probe sees only "R" and times out; on a host with a working KVM it passes in ~0.1 s.
    // QEMU (or `true`) runs here as a Linux program: on the Linux hosts that run the tests.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_real_probe_passes_under_tcg_and_judges_kvm_in_bounded_time() {
        let qemu = Path::new("qemu-system-x86_64");
        if qemu_version(qemu).await.is_none() {
            panic!("qemu-system-x86_64 is needed (./dev setup installs it)");
        }
        let dir = tempfile::tempdir().unwrap();
        let tcg = probe(qemu, Accel::Tcg, GuestArch::Amd64, dir.path(), PROBE_TIMEOUT).await.unwrap();
        assert!(tcg.works, "{}", tcg.detail);
        let started = Instant::now();
        let kvm = probe(qemu, Accel::Kvm, GuestArch::Amd64, dir.path(), PROBE_TIMEOUT).await.unwrap();
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_secs(2), "the probe overran its timeout");
        eprintln!("kvm on this host: works={} ({})", kvm.works, kvm.detail);
        if !kvm_device_opens() {
            assert!(!kvm.works, "kvm cannot work without /dev/kvm: {}", kvm.detail);
        }
        if !kvm.works {
            // The verdict says where it stopped, for the log and the cache.
            assert!(kvm.detail.contains("serial"), "{}", kvm.detail);
        }
    }

    /// The arm64 firmware under TCG with this machine's `qemu-system-aarch64`: what an Apple
    /// silicon Mac runs under HVF, and an arm64 Linux under KVM.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_arm64_probe_passes_under_tcg() {
        let qemu = Path::new("qemu-system-aarch64");
        if qemu_version(qemu).await.is_none() {
            panic!("qemu-system-aarch64 is needed (./dev setup installs qemu-system-arm)");
        }
        let dir = tempfile::tempdir().unwrap();
        let v = probe(qemu, Accel::Tcg, GuestArch::Arm64, dir.path(), PROBE_TIMEOUT).await.unwrap();
        assert!(v.works, "{}", v.detail);
        assert!(v.detail.starts_with("ran its firmware"), "{}", v.detail);
    }
}
