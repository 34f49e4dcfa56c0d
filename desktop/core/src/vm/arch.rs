//! The guest's architecture: x86-64 (`amd64`) or arm64 (`aarch64`), and what follows from it.
//!
//! A host runs the guest of its own architecture under its hardware accelerator (KVM, HVF,
//! WHPX); a guest of another architecture runs only under TCG, QEMU's translator, which is how
//! this project's x86-64 machines boot the arm64 guest that Apple silicon Macs run under HVF.
//!
//! | | x86-64 | arm64 |
//! |---|---|---|
//! | QEMU | `qemu-system-x86_64`, machine `pc` | `qemu-system-aarch64`, machine `virt` |
//! | CPU | QEMU's default | `host` under an accelerator, `max` under TCG |
//! | console | `ttyS0` (the 16550 UART) | `ttyAMA0` (`virt`'s PL011) |
//! | image | `$BERTH_HOME/image` | `$BERTH_HOME/image-arm64` |
//!
//! The x86-64 image keeps the directory name it had before there were two guests, so homes
//! made by earlier versions keep their image.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::accel::Accel;

/// A guest architecture, spelled as Debian and OCI platforms spell it (`amd64`, `arm64`);
/// `x86_64` and `aarch64` are taken too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GuestArch {
    Amd64,
    Arm64,
}

/// A name that is no guest architecture.
#[derive(Debug, thiserror::Error)]
#[error("unknown guest architecture {0:?}: use amd64 (x86_64) or arm64 (aarch64)")]
pub struct UnknownArch(pub String);

impl GuestArch {
    pub const ALL: [GuestArch; 2] = [GuestArch::Amd64, GuestArch::Arm64];

    /// The guest this host runs natively: arm64 on arm64 hosts (Apple silicon), x86-64
    /// everywhere else.
    pub fn host() -> GuestArch {
        if cfg!(target_arch = "aarch64") { GuestArch::Arm64 } else { GuestArch::Amd64 }
    }

    /// Debian's and OCI's name.
    pub fn name(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "amd64",
            GuestArch::Arm64 => "arm64",
        }
    }

    /// The kernel's name (`uname -m`).
    pub fn machine(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "x86_64",
            GuestArch::Arm64 => "aarch64",
        }
    }

    /// Rust's target for this guest's agent.
    pub fn rust_target(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "x86_64-unknown-linux-gnu",
            GuestArch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// QEMU's system emulator for this guest.
    pub fn qemu(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "qemu-system-x86_64",
            GuestArch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// The image directory's name in `$BERTH_HOME`.
    pub fn image_dir(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "image",
            GuestArch::Arm64 => "image-arm64",
        }
    }

    /// The serial console's device in the guest.
    pub fn console(self) -> &'static str {
        match self {
            GuestArch::Amd64 => "ttyS0",
            GuestArch::Arm64 => "ttyAMA0",
        }
    }

    /// QEMU's machine and CPU arguments under `accel`. `virt` has no default CPU: a hardware
    /// accelerator passes the host's through, and TCG emulates `max`, every feature QEMU has
    /// (pointer authentication with QEMU's own cheap algorithm, not the architected one, whose
    /// emulation costs TCG dearly on every function return).
    pub fn machine_args(self, accel: Accel) -> Vec<&'static str> {
        match (self, accel) {
            (GuestArch::Amd64, _) => vec![],
            (GuestArch::Arm64, Accel::Tcg) => vec!["-machine", "virt", "-cpu", "max,pauth-impdef=on"],
            (GuestArch::Arm64, _) => vec!["-machine", "virt", "-cpu", "host"],
        }
    }
}

impl fmt::Display for GuestArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GuestArch {
    type Err = UnknownArch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "amd64" | "x86_64" | "x86-64" => Ok(GuestArch::Amd64),
            "arm64" | "aarch64" => Ok(GuestArch::Arm64),
            other => Err(UnknownArch(other.to_owned())),
        }
    }
}

impl TryFrom<String> for GuestArch {
    type Error = UnknownArch;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<GuestArch> for String {
    fn from(a: GuestArch) -> String {
        a.name().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_print() {
        for a in GuestArch::ALL {
            assert_eq!(a.name().parse::<GuestArch>().unwrap(), a);
            assert_eq!(a.machine().parse::<GuestArch>().unwrap(), a);
        }
        let e = "riscv64".parse::<GuestArch>().unwrap_err();
        assert!(e.to_string().contains("\"riscv64\"") && e.to_string().contains("arm64"), "{e}");
    }

    #[test]
    fn the_host_guest_is_the_host_architecture() {
        assert_eq!(GuestArch::host().machine(), std::env::consts::ARCH);
    }

    #[test]
    fn arm64_boots_virt_with_a_cpu_fit_for_the_accelerator() {
        assert_eq!(GuestArch::Arm64.machine_args(Accel::Tcg)[..2], ["-machine", "virt"]);
        assert!(GuestArch::Arm64.machine_args(Accel::Tcg)[3].starts_with("max"));
        assert_eq!(GuestArch::Arm64.machine_args(Accel::Hvf)[3], "host");
        assert!(GuestArch::Amd64.machine_args(Accel::Tcg).is_empty());
    }
}
