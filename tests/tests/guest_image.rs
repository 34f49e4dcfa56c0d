//! The guest image builder on a machine where Debian has moved on from the pinned kernel: a
//! new user's first `berth start` must still get a guest.

use std::process::Command;

use berth_tests::{agent_bin, workspace};

fn apt(args: &[&str]) -> String {
    String::from_utf8_lossy(&Command::new("apt-cache").args(args).output().unwrap().stdout).into_owned()
}

#[test]
fn a_kernel_gone_from_the_archive_is_replaced_by_the_current_one_and_pinned() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("vm-image");
    std::fs::create_dir(&tree).unwrap();
    for f in ["build.sh", "modules.txt", "packages.lock"] {
        std::fs::copy(workspace().join("vm-image").join(f), tree.join(f)).unwrap();
    }
    // A pin Debian dropped long ago (bookworm's first cloud kernels).
    let lock = tree.join("packages.lock");
    let old = std::fs::read_to_string(&lock).unwrap();
    let stale = "linux-image-6.1.0-9-cloud-amd64 6.1.27-1 ".to_string() + &"0".repeat(64);
    let pinned: String = old
        .lines()
        .map(|l| if l.starts_with("linux-image-") { stale.as_str() } else { l })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&lock, pinned + "\n").unwrap();
    // The current kernel package, as the archive's index names it.
    let current = apt(&["depends", "linux-image-cloud-amd64"])
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: ").map(str::to_owned))
        .expect("apt knows linux-image-cloud-amd64");
    let version = apt(&["policy", &current])
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: ").map(str::to_owned))
        .unwrap();
    // Reuse a download of it from another test's image build, when there is one.
    let out = t.path().join("out");
    std::fs::create_dir_all(out.join("debs")).unwrap();
    let deb_name = format!("{current}_{version}_amd64.deb");
    let cached = workspace().join("target/vm-image/debs").join(&deb_name);
    if cached.exists() {
        std::fs::copy(&cached, out.join("debs").join(&deb_name)).unwrap();
    }

    let run = Command::new(tree.join("build.sh")).arg(&out).env("BERTH_AGENT", agent_bin()).output().unwrap();
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "build.sh failed: {log}");
    assert!(
        log.contains(&format!(
            "the pinned kernel linux-image-6.1.0-9-cloud-amd64 6.1.27-1 is no longer in the Debian archive: using its current {current} {version} instead"
        )),
        "{log}"
    );
    // The new pin is recorded, with the checksum of what was downloaded.
    let lock_now = std::fs::read_to_string(&lock).unwrap();
    let line = lock_now.lines().find(|l| l.starts_with("linux-image-")).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[..2], &[current.as_str(), version.as_str()]);
    let sum = Command::new("sha256sum").arg(out.join("debs").join(&deb_name)).output().unwrap();
    assert!(String::from_utf8_lossy(&sum.stdout).starts_with(fields[2]), "pinned sha256 is not the download's");
    assert!(lock_now.starts_with("# Debian packages"), "the lock's comments are kept: {lock_now}");
    let manifest = std::fs::read_to_string(out.join("manifest.txt")).unwrap();
    assert!(manifest.contains(&format!("kernel {current} {version}")), "{manifest}");
    assert!(out.join("vmlinuz").exists() && out.join("initrd.img").exists());
}
