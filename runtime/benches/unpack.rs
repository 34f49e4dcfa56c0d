//! Layer unpacking throughput: one synthetic layer (directories, small files, symlinks, hard
//! links, as a distribution's /usr has them) unpacked into fresh directories, best and median
//! of several rounds. `cargo bench -p berth-runtime --bench unpack [ROUNDS]`, as root (owners
//! are set as the layer says); `TMPDIR=<a tmpfs>` takes the disk's noise out of it.

use std::io::Write;
use std::time::Instant;

use berth_runtime::image::unpack::{Whiteouts, unpack};

fn layer() -> (Vec<u8>, usize) {
    let mut b = tar::Builder::new(Vec::new());
    let mut entries = 0;
    let data = vec![b'x'; 3000];
    for d in 0..400 {
        let dir = format!("usr/share/pkg{d}");
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, &dir, std::io::empty()).unwrap();
        entries += 1;
        for f in 0..25 {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, format!("{dir}/file{f}.txt"), &data[..]).unwrap();
            entries += 1;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, format!("{dir}/link"), "file0.txt").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, format!("{dir}/hard"), format!("{dir}/file1.txt")).unwrap();
        entries += 2;
    }
    (b.into_inner().unwrap(), entries)
}

fn main() {
    let (tar, entries) = layer();
    let rounds = std::env::args().nth(1).and_then(|r| r.parse().ok()).unwrap_or(7);
    let scratch = tempfile::tempdir().unwrap();
    let mut times = Vec::new();
    for i in 0..rounds {
        let root = scratch.path().join(format!("r{i}"));
        std::fs::create_dir(&root).unwrap();
        let start = Instant::now();
        unpack(&tar[..], &root, Whiteouts::Overlay, None).unwrap();
        times.push(start.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&root).unwrap();
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    let mut out = std::io::stdout();
    writeln!(
        out,
        "unpack of {entries} entries ({:.1} MiB): best {:.1} ms, median {:.1} ms, {:.0} entries/s (median)",
        tar.len() as f64 / (1 << 20) as f64,
        times[0] * 1000.0,
        median * 1000.0,
        entries as f64 / median
    )
    .unwrap();
}
