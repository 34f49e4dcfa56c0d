//! File-system helpers shared by the engine: durable atomic writes, and work confined to an
//! untrusted root ([`confined`]).

pub mod confined;

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file, fsyncs it and renames it into place,
/// then fsyncs the directory: after a crash the file holds either the old or the new bytes.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.{:08x}.tmp",
        path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
        rand::random::<u32>()
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}
