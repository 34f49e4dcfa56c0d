//! The VM's settings: `$BERTH_HOME/config.toml`, overridden by command-line flags, on top of
//! built-in defaults (flag > file > default).
//!
//! ```toml
//! cpus = 4
//! memory = 4096      # MiB
//! disk = 64          # GiB, used when the data disk is first made
//! accel = "auto"     # auto, kvm, hvf, whpx or tcg
//! arch = "arm64"     # the guest's: amd64 or arm64; default the host's
//! image = "image"    # guest image directory; relative to BERTH_HOME
//! transport = "auto" # auto, vsock, hybrid or serial (see crate::transport)
//! shares = ["/Users/me", "/Volumes/data:ro"]  # default: the home and temporary directories
//! ```
//!
//! Unknown keys are refused rather than ignored, so a typo (`memroy`) does not silently give
//! the default; the error names the file, the line and the key.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::forward::files::ShareSpec;
use crate::transport::Choice;
use crate::vm::accel::AccelChoice;
use crate::vm::arch::GuestArch;

pub const DEFAULT_CPUS: u32 = 2;
pub const DEFAULT_MEMORY_MIB: u32 = 2048;
pub const DEFAULT_DISK_GIB: u32 = 32;

/// Errors reading the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    // toml's message already says where: "TOML parse error at line 2, column 1 ... unknown
    // field `memroy`, expected one of ...".
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// Settings that may each be unset: one layer, from the file or from flags.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSettings {
    pub cpus: Option<NonZeroU32>,
    /// MiB.
    pub memory: Option<NonZeroU32>,
    /// GiB.
    pub disk: Option<NonZeroU32>,
    pub accel: Option<AccelChoice>,
    pub arch: Option<GuestArch>,
    pub image: Option<PathBuf>,
    pub transport: Option<Choice>,
    /// Directories shared with the guest, `PATH` or `PATH:ro`; given, they replace the
    /// default ones (the home directory and the temporary directory).
    pub shares: Option<Vec<String>>,
}

/// The settings in force, every one decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub cpus: u32,
    pub memory_mib: u32,
    pub disk_gib: u32,
    pub accel: AccelChoice,
    pub arch: GuestArch,
    /// None: the default image directory.
    pub image: Option<PathBuf>,
    pub transport: Choice,
    pub shares: Vec<ShareSpec>,
}

/// `PATH` or `PATH:ro` (`:rw` too) as a share.
pub fn parse_share(s: &str) -> Result<ShareSpec, String> {
    let (path, read_only) = match s.rsplit_once(':') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        _ => (s, false),
    };
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(format!("shared folder {s:?}: the path must be absolute"));
    }
    Ok(ShareSpec { path, read_only })
}

impl VmSettings {
    /// Reads a config file; a missing file is an empty layer. Relative `image` paths are taken
    /// from the file's directory.
    pub fn load(path: &Path) -> Result<VmSettings, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VmSettings::default()),
            Err(source) => return Err(ConfigError::Read { path: path.to_owned(), source }),
        };
        let mut s: VmSettings =
            toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        if let (Some(image), Some(dir)) = (&s.image, path.parent()) {
            s.image = Some(dir.join(image));
        }
        s.check().map_err(|message| ConfigError::Parse { path: path.to_owned(), message })?;
        Ok(s)
    }

    /// `self` (the flags) over `file` over the defaults.
    pub fn over(&self, file: &VmSettings) -> Resolved {
        let num = |flag: Option<NonZeroU32>, file: Option<NonZeroU32>, default| {
            flag.or(file).map_or(default, NonZeroU32::get)
        };
        Resolved {
            cpus: num(self.cpus, file.cpus, DEFAULT_CPUS),
            memory_mib: num(self.memory, file.memory, DEFAULT_MEMORY_MIB),
            disk_gib: num(self.disk, file.disk, DEFAULT_DISK_GIB),
            accel: self.accel.or(file.accel).unwrap_or_default(),
            arch: self.arch.or(file.arch).unwrap_or_else(GuestArch::host),
            image: self.image.clone().or_else(|| file.image.clone()),
            transport: self.transport.or(file.transport).unwrap_or_default(),
            shares: match self.shares.as_ref().or(file.shares.as_ref()) {
                // Checked when read (`check`): bad entries never get this far.
                Some(list) => list.iter().filter_map(|s| parse_share(s).ok()).collect(),
                None => crate::forward::files::default_shares(),
            },
        }
    }

    /// Refuses share entries that do not parse, naming them.
    pub fn check(&self) -> Result<(), String> {
        for s in self.shares.iter().flatten() {
            parse_share(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::accel::Accel;

    fn n(v: u32) -> Option<NonZeroU32> {
        NonZeroU32::new(v)
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        // Absolute paths as this host writes them (TOML's literal strings keep backslashes).
        let (srv, work) = if cfg!(windows) { (r"C:\srv", r"C:\work") } else { ("/srv", "/work") };
        std::fs::write(
            &path,
            format!(
                "# mine\ncpus = 4\nmemory = 4096\naccel = \"tcg\"\narch = \"aarch64\"\nimage = \"img\"\ntransport = \"serial\"\nshares = ['{srv}:ro', '{work}']\n"
            ),
        )
        .unwrap();
        let file = VmSettings::load(&path).unwrap();
        assert_eq!(file.image, Some(dir.path().join("img")));

        let none = VmSettings::default().over(&file);
        assert_eq!(
            none,
            Resolved {
                cpus: 4,
                memory_mib: 4096,
                disk_gib: DEFAULT_DISK_GIB,
                accel: AccelChoice::Forced(Accel::Tcg),
                arch: GuestArch::Arm64,
                image: Some(dir.path().join("img")),
                transport: Choice::Kind(crate::transport::Kind::Serial),
                shares: vec![
                    ShareSpec { path: srv.into(), read_only: true },
                    ShareSpec { path: work.into(), read_only: false },
                ],
            }
        );
        let flags = VmSettings {
            cpus: n(1),
            disk: n(8),
            accel: Some(AccelChoice::Auto),
            arch: Some(GuestArch::Amd64),
            ..Default::default()
        };
        let r = flags.over(&file);
        assert_eq!((r.cpus, r.memory_mib, r.disk_gib, r.accel), (1, 4096, 8, AccelChoice::Auto));
        assert_eq!(r.arch, GuestArch::Amd64);

        let defaults = VmSettings::default().over(&VmSettings::default());
        assert_eq!(
            defaults,
            Resolved {
                cpus: 2,
                memory_mib: 2048,
                disk_gib: 32,
                accel: AccelChoice::Auto,
                arch: GuestArch::host(),
                image: None,
                transport: Choice::Auto,
                shares: crate::forward::files::default_shares(),
            }
        );
        assert!(defaults.shares.iter().any(|s| s.path == std::env::temp_dir()), "{:?}", defaults.shares);
        assert!(parse_share("relative").is_err());
        #[cfg(unix)]
        assert_eq!(parse_share("/a:b").unwrap().path, PathBuf::from("/a:b"));
        // A drive letter's colon is not a mode's.
        #[cfg(windows)]
        {
            let ro = parse_share(r"C:\work:ro").unwrap();
            assert_eq!((ro.path, ro.read_only), (PathBuf::from(r"C:\work"), true));
            assert_eq!(parse_share(r"C:\work").unwrap().path, PathBuf::from(r"C:\work"));
        }
    }

    #[test]
    fn a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(VmSettings::load(&dir.path().join("config.toml")).unwrap(), VmSettings::default());
    }

    #[test]
    fn bad_files_name_the_file_the_line_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let err = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let e = VmSettings::load(&path).unwrap_err();
            assert!(matches!(e, ConfigError::Parse { .. }));
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            msg
        };
        let unknown = err("cpus = 2\nmemroy = 4096\n");
        assert!(unknown.contains("line 2") && unknown.contains("memroy"), "{unknown}");
        let wrong_type = err("cpus = \"many\"\n");
        assert!(wrong_type.contains("line 1") && wrong_type.contains("cpus"), "{wrong_type}");
        let zero = err("\n\nmemory = 0\n");
        assert!(zero.contains("line 3") && zero.contains("memory"), "{zero}");
        let accel = err("accel = \"fast\"\n");
        assert!(accel.contains("line 1") && accel.contains("unknown accelerator \"fast\""), "{accel}");
        let arch = err("arch = \"riscv64\"\n");
        assert!(arch.contains("line 1") && arch.contains("unknown guest architecture \"riscv64\""), "{arch}");
        let syntax = err("cpus = = 2\n");
        assert!(syntax.contains("line 1"), "{syntax}");
    }
}
