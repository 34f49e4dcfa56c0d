//! Named volumes: directories under `volumes/<name>/_data` with a small JSON record beside
//! them. Their data outlives every container; removal is refused while a container uses one.
//!
//! As with dockerd's `local` driver, a volume created with options (`type`, `device`, `o`:
//! `-o type=tmpfs -o device=tmpfs -o o=size=64m`, `-o type=none -o o=bind -o device=/path`,
//! NFS) is that mount: made on `_data` when its first container starts and undone when its
//! last one stops ([`VolumeStore::activate`], [`VolumeStore::deactivate`]).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("get {0}: no such volume")]
    NotFound(String),
    #[error(
        "create {0}: {0:?} includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed"
    )]
    InvalidName(String),
    #[error("remove {name}: volume is in use - [{users}]")]
    InUse { name: String, users: String },
    #[error("create {name}: invalid option: {key:?}")]
    BadOption { name: String, key: String },
    #[error("quota size requested but no quota support")]
    NoQuota,
    /// `reason` is the system's, worded as dockerd words it (`no such file or directory`).
    #[error("failed to mount local volume: mount {device}:{target}, flags: {flags:#x}, data: {data}: {reason}")]
    Mount { device: String, target: String, flags: u64, data: String, reason: String },
    #[error("volume store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VolumeError + '_ {
    move |source| VolumeError::Io { path: path.to_owned(), source }
}

/// A volume's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub created: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The `local` driver's options as given (none when the request had none: dockerd shows
    /// null then, and `{}` for an empty set).
    #[serde(default)]
    pub options: Option<BTreeMap<String, String>>,
    /// Created for an image's VOLUME or an unnamed `-v /path`.
    #[serde(default)]
    pub anonymous: bool,
    #[serde(skip)]
    pub mountpoint: PathBuf,
}

/// The volume store rooted at one directory.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
    /// How many running containers use each volume that is a mount of its own.
    active: Arc<Mutex<HashMap<String, usize>>>,
}

/// The options dockerd's `local` driver takes.
const OPTION_KEYS: [&str; 4] = ["type", "device", "o", "size"];

/// `o`'s words that are mount flags, as mount(8) has them; the rest is the file system's data.
const FLAGS: &[(&str, nix::mount::MsFlags, bool)] = {
    use nix::mount::MsFlags as F;
    &[
        ("ro", F::MS_RDONLY, true),
        ("rw", F::MS_RDONLY, false),
        ("bind", F::MS_BIND, true),
        ("rbind", F::MS_BIND.union(F::MS_REC), true),
        ("nosuid", F::MS_NOSUID, true),
        ("suid", F::MS_NOSUID, false),
        ("nodev", F::MS_NODEV, true),
        ("dev", F::MS_NODEV, false),
        ("noexec", F::MS_NOEXEC, true),
        ("exec", F::MS_NOEXEC, false),
        ("sync", F::MS_SYNCHRONOUS, true),
        ("async", F::MS_SYNCHRONOUS, false),
        ("dirsync", F::MS_DIRSYNC, true),
        ("noatime", F::MS_NOATIME, true),
        ("atime", F::MS_NOATIME, false),
        ("nodiratime", F::MS_NODIRATIME, true),
        ("diratime", F::MS_NODIRATIME, false),
        ("relatime", F::MS_RELATIME, true),
        ("norelatime", F::MS_RELATIME, false),
        ("strictatime", F::MS_STRICTATIME, true),
        ("mand", F::MS_MANDLOCK, true),
        ("nomand", F::MS_MANDLOCK, false),
        ("remount", F::MS_REMOUNT, true),
    ]
};

/// A volume's mount, from its options: the device, the file system type (none for a bind),
/// the flags and the file system's data.
#[derive(Debug, PartialEq)]
pub struct MountSpec {
    pub device: String,
    pub fstype: Option<String>,
    pub flags: nix::mount::MsFlags,
    pub data: String,
}

impl Volume {
    /// The mount its options ask for, if any (options without `type` or `device` ask none).
    pub fn mount_spec(&self) -> Option<MountSpec> {
        let opts = self.options.as_ref()?;
        let (kind, device) = (opts.get("type").cloned().unwrap_or_default(), opts.get("device").cloned()?);
        let mut flags = nix::mount::MsFlags::empty();
        let mut data = Vec::new();
        for word in opts.get("o").map(String::as_str).unwrap_or("").split(',').filter(|w| !w.is_empty()) {
            match FLAGS.iter().find(|(name, _, _)| *name == word) {
                Some((_, f, true)) => flags |= *f,
                Some((_, f, false)) => flags &= !*f,
                // NFS wants the server's address, not its name: dockerd resolves it too.
                None if kind == "nfs" && word.starts_with("addr=") => {
                    let host = &word["addr=".len()..];
                    let ip = std::net::ToSocketAddrs::to_socket_addrs(&(host, 0))
                        .ok()
                        .and_then(|mut a| a.next())
                        .map_or_else(|| host.to_owned(), |a| a.ip().to_string());
                    data.push(format!("addr={ip}"));
                }
                None => data.push(word.to_owned()),
            }
        }
        let bind = flags.contains(nix::mount::MsFlags::MS_BIND);
        let fstype = (!bind && !kind.is_empty() && kind != "none").then_some(kind);
        Some(MountSpec { device, fstype, flags, data: data.join(",") })
    }
}

/// Whether `path` is a mount point (its own line in this process's mountinfo).
fn mounted(path: &Path) -> bool {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = path.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

impl VolumeStore {
    pub fn open(root: &Path) -> Result<Self, VolumeError> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(VolumeStore { root: root.to_owned(), active: Arc::default() })
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root.join(name).join("volume.json")
    }

    /// Creates `name` (a random one when empty) or returns the existing volume.
    pub fn create(&self, name: &str, labels: BTreeMap<String, String>, anonymous: bool) -> Result<Volume, VolumeError> {
        self.create_with(name, labels, None, anonymous)
    }

    /// [`VolumeStore::create`] with the `local` driver's options (`type`, `device`, `o`).
    pub fn create_with(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        options: Option<BTreeMap<String, String>>,
        anonymous: bool,
    ) -> Result<Volume, VolumeError> {
        let name = if name.is_empty() { hex::encode(rand::random::<[u8; 32]>()) } else { name.to_owned() };
        if !valid_name(&name) {
            return Err(VolumeError::InvalidName(name));
        }
        for key in options.iter().flat_map(|o| o.keys()) {
            if !OPTION_KEYS.contains(&key.as_str()) {
                return Err(VolumeError::BadOption { name: name.clone(), key: key.clone() });
            }
        }
        // dockerd sizes a volume with an XFS project quota; Berth's data root has none.
        if options.as_ref().is_some_and(|o| o.contains_key("size")) {
            return Err(VolumeError::NoQuota);
        }
        if let Ok(v) = self.get(&name) {
            return Ok(v);
        }
        let data = self.root.join(&name).join("_data");
        fs::create_dir_all(&data).map_err(io_err(&data))?;
        let v = Volume {
            name: name.clone(),
            created: crate::model::now_rfc3339(),
            labels,
            options,
            anonymous,
            mountpoint: data,
        };
        let path = self.record_path(&name);
        crate::fsutil::write_atomic(&path, &serde_json::to_vec(&v).expect("volume serialises"))
            .map_err(io_err(&path))?;
        Ok(v)
    }

    pub fn get(&self, name: &str) -> Result<Volume, VolumeError> {
        if !valid_name(name) {
            return Err(VolumeError::NotFound(name.to_owned()));
        }
        let path = self.record_path(name);
        let bytes = fs::read(&path).map_err(|_| VolumeError::NotFound(name.to_owned()))?;
        let mut v: Volume = serde_json::from_slice(&bytes).map_err(|e| io_err(&path)(io::Error::other(e)))?;
        v.mountpoint = self.root.join(name).join("_data");
        Ok(v)
    }

    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let mut out = Vec::new();
        for e in fs::read_dir(&self.root).map_err(io_err(&self.root))?.flatten() {
            if let Ok(v) = self.get(&e.file_name().to_string_lossy()) {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Deletes a volume and its data; the caller checks that no container uses it. A volume
    /// that is a mount is unmounted first: what it mounts (a host directory, a server's
    /// share) is not the volume's to delete.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let v = self.get(name)?;
        if mounted(&v.mountpoint) {
            let _ = nix::mount::umount2(&v.mountpoint, nix::mount::MntFlags::MNT_DETACH);
        }
        self.active.lock().expect("volumes lock").remove(name);
        let dir = self.root.join(name);
        fs::remove_dir_all(&dir).map_err(io_err(&dir))
    }

    /// A container that uses `name` starts: a volume that is a mount of its own is mounted
    /// for its first user.
    pub fn activate(&self, name: &str) -> Result<(), VolumeError> {
        let v = self.get(name)?;
        let Some(spec) = v.mount_spec() else { return Ok(()) };
        let mut active = self.active.lock().expect("volumes lock");
        let users = active.entry(name.to_owned()).or_insert(0);
        // Mounted already by an engine run before this one: that mount serves.
        if *users == 0 && !mounted(&v.mountpoint) {
            nix::mount::mount(
                Some(spec.device.as_str()),
                &v.mountpoint,
                spec.fstype.as_deref(),
                spec.flags,
                (!spec.data.is_empty()).then_some(spec.data.as_str()),
            )
            .map_err(|source: nix::Error| VolumeError::Mount {
                device: spec.device.clone(),
                target: v.mountpoint.display().to_string(),
                flags: spec.flags.bits(),
                data: spec.data.clone(),
                reason: source.desc().to_lowercase(),
            })?;
            tracing::info!(volume = %name, device = %spec.device, "volume mounted");
        }
        *users += 1;
        Ok(())
    }

    /// A container that used `name` stopped: the mount goes with its last user, as dockerd
    /// unmounts it (a tmpfs volume's data with it).
    pub fn deactivate(&self, name: &str) {
        let mut active = self.active.lock().expect("volumes lock");
        let Some(users) = active.get_mut(name) else { return };
        *users = users.saturating_sub(1);
        if *users == 0 {
            active.remove(name);
            let path = self.root.join(name).join("_data");
            if mounted(&path)
                && let Err(e) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH)
            {
                tracing::warn!(volume = %name, error = %e, "unmounting a volume");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_get_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(dir.path()).unwrap();
        let v = s.create("data", BTreeMap::new(), false).unwrap();
        fs::write(v.mountpoint.join("f"), b"x").unwrap();
        assert_eq!(s.create("data", BTreeMap::new(), false).unwrap().created, v.created);
        assert_eq!(s.list().unwrap().len(), 1);
        assert!(matches!(s.create("../x", BTreeMap::new(), false), Err(VolumeError::InvalidName(_))));
        s.remove("data").unwrap();
        assert!(matches!(s.get("data"), Err(VolumeError::NotFound(_))));
    }

    #[test]
    fn options_are_checked_and_read_as_a_mount() {
        let dir = tempfile::tempdir().unwrap();
        let s = VolumeStore::open(dir.path()).unwrap();
        let opts = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        let bad = s.create_with("bad", BTreeMap::new(), opts(&[("foo", "bar")]), false).unwrap_err();
        assert_eq!(bad.to_string(), r#"create bad: invalid option: "foo""#);
        let tmpfs = s
            .create_with(
                "t",
                BTreeMap::new(),
                opts(&[("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=1m,noexec")]),
                false,
            )
            .unwrap();
        let spec = tmpfs.mount_spec().unwrap();
        assert_eq!((spec.fstype.as_deref(), spec.data.as_str()), (Some("tmpfs"), "size=1m"));
        assert_eq!(spec.flags, nix::mount::MsFlags::MS_NOEXEC);
        let bind = s
            .create_with("b", BTreeMap::new(), opts(&[("type", "none"), ("o", "bind,ro"), ("device", "/x")]), false)
            .unwrap();
        let spec = bind.mount_spec().unwrap();
        assert_eq!((spec.fstype, spec.flags), (None, nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_RDONLY));
        assert!(s.create("plain", BTreeMap::new(), false).unwrap().mount_spec().is_none());
    }
}
