//! `berth config`: shows `$BERTH_HOME/config.toml` beside the settings in force, and
//! `berth config set KEY=VALUE...` changes it (the desktop app's settings page uses both).
//!
//! A change is written with toml_edit, so the user's comments and layout stay, to a temporary
//! file that is read back with the daemon's own loader ([`VmSettings::load`]) before it takes
//! the old file's place: what `set` accepts, `start` accepts.

use std::path::Path;

use anyhow::{Context, bail};
use berth_core::config::{Resolved, VmSettings};
use serde_json::{Value, json};

/// Keys, what they take, and whether a change needs the VM restarted to apply.
const KEYS: &[(&str, Kind, &str)] = &[
    ("cpus", Kind::Count, "virtual CPUs; applies at the next start"),
    ("memory", Kind::Count, "MiB; applies at the next start"),
    ("disk", Kind::Count, "GiB; applies when the data disk is first made"),
    ("accel", Kind::Text, "auto, kvm, hvf, whpx or tcg; applies at the next start"),
    ("arch", Kind::Text, "the guest's architecture, amd64 or arm64 (default the host's); applies at the next start"),
    ("transport", Kind::Text, "auto, vsock, hybrid or serial; applies at the next start"),
    ("image", Kind::Text, "guest image directory; applies at the next start"),
    ("shares", Kind::List, "shared folders, PATH or PATH:ro, separated by commas; applies at the next start"),
];

#[derive(Clone, Copy)]
enum Kind {
    Count,
    Text,
    List,
}

fn shares_json(r: &Resolved) -> Value {
    r.shares.iter().map(|s| format!("{}{}", s.path.display(), if s.read_only { ":ro" } else { "" })).collect()
}

fn resolved_json(r: &Resolved) -> Value {
    json!({
        "cpus": r.cpus, "memory": r.memory_mib, "disk": r.disk_gib, "accel": r.accel.to_string(),
        "arch": r.arch.to_string(), "transport": r.transport.to_string(), "image": r.image, "shares": shares_json(r),
    })
}

/// `berth config [--json]`.
pub fn show(home: &Path, as_json: bool) -> anyhow::Result<()> {
    let path = home.join("config.toml");
    let file = VmSettings::load(&path)?;
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let raw: toml_edit::DocumentMut = text.parse().with_context(|| format!("{}", path.display()))?;
    let in_file: serde_json::Map<String, Value> =
        raw.iter().map(|(k, v)| (k.to_string(), toml_value_json(v))).collect();
    let resolved = VmSettings::default().over(&file);
    let defaults = VmSettings::default().over(&VmSettings::default());
    if as_json {
        let keys: Vec<Value> = KEYS.iter().map(|(k, _, help)| json!({"key": k, "help": help})).collect();
        let out = json!({
            "path": path,
            "file": in_file,
            "resolved": resolved_json(&resolved),
            "defaults": resolved_json(&defaults),
            "keys": keys,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("# {}", path.display());
    let r = resolved_json(&resolved);
    for (key, _, help) in KEYS {
        let from = if in_file.contains_key(*key) { "config.toml" } else { "default" };
        println!("{key:<10} = {:<30} # {from}; {help}", r[*key].to_string());
    }
    Ok(())
}

fn toml_value_json(item: &toml_edit::Item) -> Value {
    match item.as_value() {
        Some(toml_edit::Value::Integer(i)) => json!(i.value()),
        Some(toml_edit::Value::String(s)) => json!(s.value()),
        Some(toml_edit::Value::Boolean(b)) => json!(b.value()),
        Some(toml_edit::Value::Array(a)) => {
            a.iter().map(|v| v.as_str().map_or_else(|| json!(v.to_string().trim()), |s| json!(s))).collect()
        }
        _ => json!(item.to_string().trim()),
    }
}

/// `berth config set KEY=VALUE...`; `KEY=` removes the key (back to the default).
pub fn set(home: &Path, pairs: &[String]) -> anyhow::Result<()> {
    let path = home.join("config.toml");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut doc: toml_edit::DocumentMut = text.parse().with_context(|| format!("{}", path.display()))?;
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("{pair:?}: give KEY=VALUE (KEY= to go back to the default)");
        };
        let (key, value) = (key.trim(), value.trim());
        let Some((_, kind, _)) = KEYS.iter().find(|(k, _, _)| *k == key) else {
            let known: Vec<_> = KEYS.iter().map(|(k, _, _)| *k).collect();
            bail!("unknown setting {key:?}: the settings are {}", known.join(", "));
        };
        if value.is_empty() {
            doc.remove(key);
            continue;
        }
        doc[key] = match kind {
            Kind::Count => {
                let n: u32 = value
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .with_context(|| format!("{key} = {value:?}: give a whole number above 0"))?;
                toml_edit::value(i64::from(n))
            }
            Kind::Text => toml_edit::value(value),
            Kind::List => {
                let list: toml_edit::Array = value.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
                toml_edit::value(list)
            }
        };
    }
    // Read back by the daemon's own loader before it replaces the file.
    let tmp = home.join("config.toml.new");
    std::fs::write(&tmp, doc.to_string())?;
    if let Err(e) = VmSettings::load(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        // The loader names the temporary file; the user knows the real one.
        bail!("{}", e.to_string().replace(&tmp.display().to_string(), &path.display().to_string()));
    }
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keeps_comments_checks_values_and_unsets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "# my VM\ncpus = 4 # fast\n").unwrap();
        // Absolute paths as this host writes them.
        let (srv, work) = if cfg!(windows) { (r"C:\srv", r"C:\work") } else { ("/srv", "/work") };
        set(dir.path(), &["memory=4096".into(), format!("shares={srv}:ro, {work}")]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("# my VM") && text.contains("# fast"), "{text}");
        let s = VmSettings::load(&path).unwrap();
        assert_eq!(s.cpus.map(|n| n.get()), Some(4));
        assert_eq!(s.memory.map(|n| n.get()), Some(4096));
        assert_eq!(s.shares, Some(vec![format!("{srv}:ro"), work.to_string()]));

        set(dir.path(), &["cpus=".into()]).unwrap();
        assert_eq!(VmSettings::load(&path).unwrap().cpus, None);

        let before = std::fs::read_to_string(&path).unwrap();
        let bad = |pair: &str| set(dir.path(), &[pair.into()]).unwrap_err().to_string();
        assert!(bad("cpus=0").contains("whole number above 0"));
        assert!(bad("memroy=1").contains("unknown setting \"memroy\""));
        assert!(bad("shares=relative/path").contains("must be absolute"));
        let accel = bad("accel=fast");
        assert!(accel.contains("unknown accelerator") && accel.contains(&path.display().to_string()), "{accel}");
        assert!(bad("cpus").contains("KEY=VALUE"));
        assert!(bad("arch=sparc").contains("unknown guest architecture \"sparc\""));
        // Nothing refused was written, and no temporary file is left.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        assert!(!dir.path().join("config.toml.new").exists());
    }
}
