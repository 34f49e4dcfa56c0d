//! The guest VM: the image built from Debian's cloud kernel boots under QEMU (TCG here) with
//! `berth-agent` as PID 1, which loads its modules, brings up the network, formats the data
//! disk on first boot, keeps it on the next, and starts the engine on vsock.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_tests::workspace;

/// Boots the guest until the engine serves (or `limit` passes); returns the serial log and
/// the seconds it took.
fn boot(image: &Path, disk: &Path, limit: Duration) -> (String, f64) {
    let start = Instant::now();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(image.join("vmlinuz"))
        .arg("-initrd")
        .arg(image.join("initrd.img"))
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .args(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"])
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (Debian package qemu-system-x86) must be installed");
    let mut out = qemu.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let mut secs = f64::NAN;
    while start.elapsed() < limit {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            log.extend(chunk);
        }
        if String::from_utf8_lossy(&log).contains("berth-agent serving") {
            secs = start.elapsed().as_secs_f64();
            break;
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    (String::from_utf8_lossy(&log).into_owned(), secs)
}

#[test]
fn guest_boots_with_the_agent_as_pid1_and_keeps_its_data_disk() {
    let image = workspace().join("target/vm-image");
    let built = Command::new(workspace().join("vm-image/build.sh")).arg(&image).output().unwrap();
    assert!(built.status.success(), "vm-image/build.sh failed: {}", String::from_utf8_lossy(&built.stderr));
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.qcow2");
    let made = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("2G").status().unwrap();
    assert!(made.success());

    let (first, secs) = boot(&image, &disk, Duration::from_secs(180));
    assert!(first.contains("berth-agent serving"), "the engine did not come up:\n{first}");
    assert!(first.contains("formatted and mounted at /var/lib/berth"), "{first}");
    assert!(first.contains("vsock://:2375"), "{first}");
    assert!(first.contains("eth0 10.0.2.15/24 via 10.0.2.2"), "{first}");
    assert!(!first.contains("loading module"), "a module failed to load:\n{first}");
    eprintln!("first boot (with mkfs) to a serving engine: {secs:.1} s");

    let (second, secs) = boot(&image, &disk, Duration::from_secs(180));
    assert!(second.contains("berth-agent serving"), "{second}");
    assert!(second.contains("data disk /dev/vda mounted"), "{second}");
    assert!(!second.contains("formatting"), "the data disk was formatted again:\n{second}");
    eprintln!("second boot to a serving engine: {secs:.1} s");
}
