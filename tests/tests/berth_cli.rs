//! The `berth` CLI's failure cases, each with a clear message and nothing left behind: a
//! socket in use, a stale pid file, a missing QEMU, a VM that does not boot. (The VM tests
//! cover a QEMU killed with SIGKILL and a crashed daemon.)

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

use berth_tests::workspace;

fn berth(home: &Path, args: &[&str]) -> Output {
    Command::new(workspace().join("target/debug/berth"))
        .args(args)
        .env("BERTH_HOME", home)
        .output()
        .expect("berth is built by cargo build")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_docker_socket_served_by_another_program_is_not_taken_over() {
    let home = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(home.path().join("docker.sock")).unwrap();
    // Another engine answering /_ping there.
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nOK");
        }
    });
    let out = berth(home.path(), &["start", "--image", "/nonexistent"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("docker.sock is in use by another server"), "{}", text(&out));
    assert!(home.path().join("docker.sock").exists(), "the other program's socket was removed");
    assert!(!home.path().join("daemon.pid").exists());
}

#[test]
fn a_control_socket_in_use_fails_the_daemon_before_it_boots() {
    let home = tempfile::tempdir().unwrap();
    let _held = UnixListener::bind(home.path().join("control.sock")).unwrap();
    let out = berth(home.path(), &["start", "--image", "/nonexistent", "--accel", "tcg"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("control.sock is in use by another server"), "{}", text(&out));
    assert!(!home.path().join("daemon.pid").exists(), "the failed daemon left its pid file");
    assert!(!home.path().join("vm/data.qcow2").exists(), "a disk was made for a VM that could not serve");
}

#[test]
fn a_stale_pid_file_is_recognised() {
    let home = tempfile::tempdir().unwrap();
    // A dead pid, then a live process that is not berth's daemon (pid 1).
    for pid in ["2147483646", "1"] {
        std::fs::write(home.path().join("daemon.pid"), pid).unwrap();
        let out = berth(home.path(), &["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["state"], "stopped", "pid {pid}: {report}");
        assert!(!home.path().join("daemon.pid").exists(), "pid {pid}: the stale pid file was kept");
        let stop = berth(home.path(), &["stop"]);
        assert!(stop.status.success() && text(&stop).contains("not running"), "{}", text(&stop));
    }
}

#[test]
fn a_missing_qemu_is_named() {
    let home = tempfile::tempdir().unwrap();
    let image = home.path().join("image");
    std::fs::create_dir_all(&image).unwrap();
    for f in ["vmlinuz", "initrd.img"] {
        std::fs::write(image.join(f), "not used").unwrap();
    }
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(workspace().join("target/debug/berth"))
        .args(["start", "--accel", "tcg", "--transport", "serial", "--image"])
        .arg(&image)
        .env("BERTH_HOME", home.path())
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("qemu") && t.contains("is it installed?"), "{t}");
    assert!(!home.path().join("daemon.pid").exists());
    assert!(!home.path().join("docker.sock").exists());
}

#[test]
fn a_vm_that_does_not_boot_says_why_with_the_serial_tail() {
    let home = tempfile::tempdir().unwrap();
    let image = home.path().join("broken-image");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::copy(berth_tests::vm_image().join("vmlinuz"), image.join("vmlinuz")).unwrap();
    std::fs::write(image.join("initrd.img"), vec![0x5a; 4096]).unwrap();
    let out =
        berth(home.path(), &["start", "--accel", "tcg", "--transport", "serial", "--image", image.to_str().unwrap()]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("QEMU exited") && t.contains("before the agent answered"), "{t}");
    assert!(t.contains("Kernel panic"), "no serial tail in the error: {t}");
    assert!(!home.path().join("daemon.pid").exists());
    assert!(!home.path().join("docker.sock").exists(), "a socket was left for a VM that never ran");
    let status = berth(home.path(), &["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(report["state"], "stopped");
}
