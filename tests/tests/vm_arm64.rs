//! The arm64 guest, the one Apple silicon Macs boot under HVF, booted here under TCG on an
//! x86-64 host by `berth start --arch arm64`: its image built on first start from Debian's
//! arm64 cloud kernel and the cross-built agent (`./dev agent-arm64`), a pull of a
//! multi-platform image picking its `linux/arm64` variant, the container running on the
//! aarch64 kernel, `--platform linux/amd64` running through QEMU's user-mode emulator, and a
//! volume kept across a restart of the VM, and a start restored from the boot snapshot.
//!
//! Its own test binary, so that cargo runs it alone, not beside the x86-64 VMs of `vm.rs`.

use berth_tests::BerthHome;

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_arm64_guest_boots_under_tcg_runs_arm64_images_and_keeps_a_volume() {
    let img = berth_tests::multiarch();

    let home = BerthHome(tempfile::tempdir().unwrap());
    let out = home.berth(&["start", "--arch", "arm64", "--memory", "1024"]);
    assert!(out.status.success(), "berth start --arch arm64: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("building the arm64 guest image"), "{err}");
    let manifest = std::fs::read_to_string(home.0.path().join("image-arm64/manifest.txt")).unwrap();
    assert!(manifest.starts_with("arch arm64\n") && manifest.contains("cloud-arm64"), "{manifest}");
    let status = home.status();
    let vm = &status["vm"];
    assert_eq!((vm["arch"].as_str(), vm["accel"].as_str()), (Some("arm64"), Some("tcg")), "{status}");
    eprintln!("arm64 guest under TCG: first start booted in {:.1} s", vm["boot"]["ready"].as_f64().unwrap_or(-1.0));

    // The engine says what it is, as dockerd on an arm64 host does.
    let info = home.docker(&["info", "--format", "{{.Architecture}} {{.OSType}}"]);
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "aarch64 linux", "{}", text(&info));
    let pull = home.docker(&["pull", img]);
    assert!(pull.status.success(), "{}", text(&pull));
    let arch = home.docker(&["image", "inspect", "--format", "{{.Architecture}}", img]);
    assert_eq!(String::from_utf8_lossy(&arch.stdout).trim(), "arm64", "the pull picked another platform");
    let run =
        home.docker(&["run", "--rm", "-v", "kept:/d", img, "sh", "-c", "uname -m; cat /etc/arch; echo kept > /d/f"]);
    assert_eq!(String::from_utf8_lossy(&run.stdout), "aarch64\narm64\n", "{}", text(&run));
    // linux/amd64 runs too, through QEMU's user-mode emulator that the guest's init registered
    // with binfmt_misc (the docker CLI pulls that platform first: the local image is arm64's).
    let amd64 = home.docker(&["run", "--rm", "--platform", "linux/amd64", img, "sh", "-c", "uname -m; cat /etc/arch"]);
    assert!(String::from_utf8_lossy(&amd64.stdout).ends_with("x86_64\namd64\n"), "{}", text(&amd64));
    let serial = std::fs::read_to_string(home.0.path().join("vm/serial.log")).unwrap_or_default();
    assert!(serial.contains("binfmt: qemu-x86_64 registered"), "{serial}");

    // A restart keeps the volume (and the image, built once: no rebuild on the second start).
    let stop = home.berth(&["stop"]);
    assert!(stop.status.success(), "{}", text(&stop));
    // The second start over hybrid vsock (the first took the default, the serial port here).
    let again = home.berth(&["start", "--arch", "arm64", "--memory", "1024", "--transport", "hybrid"]);
    assert!(again.status.success(), "the second start: {}", text(&again));
    assert_eq!(home.status()["vm"]["transport"], "hybrid");
    assert!(!String::from_utf8_lossy(&again.stderr).contains("guest image"), "the image was rebuilt: {}", text(&again));
    let kept = home.docker(&["run", "--rm", "-v", "kept:/d", img, "cat", "/d/f"]);
    assert_eq!(String::from_utf8_lossy(&kept.stdout), "kept\n", "{}", text(&kept));
    // A shared folder (the home is in the shared temporary directory) served on a published
    // port by busybox's httpd: the arm64 guest's share and port forwarding.
    let www = home.0.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "from the host, through arm64\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (bind, publish) = (format!("{}:/www", www.display()), format!("127.0.0.1:{port}:80"));
    let web = home.docker(&["run", "-d", "-v", &bind, "-p", &publish, img, "httpd", "-f", "-p", "80", "-h", "/www"]);
    assert!(web.status.success(), "{}", text(&web));
    let get = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    assert!(
        berth_tests::eventually(30, || get().is_some_and(|b| b.ends_with("\r\n\r\nfrom the host, through arm64\n"))),
        "127.0.0.1:{port} answered {:?}",
        get()
    );
    eprintln!("arm64 guest under TCG: second start booted in {:.1} s", home.status()["vm"]["boot"]["ready"]);
    let stop = home.berth(&["stop"]);
    assert!(stop.status.success(), "{}", text(&stop));
    // The third as the first: restored from the boot snapshot the first start saved.
    let third = home.berth(&["start", "--arch", "arm64", "--memory", "1024"]);
    assert!(third.status.success(), "the third start: {}", text(&third));
    let status = home.status();
    assert_eq!(status["vm"]["boot"]["restored"], true, "{status:#}");
    eprintln!("arm64 guest under TCG: restored in {:.1} s", status["vm"]["boot"]["ready"]);
    let kept = home.docker(&["run", "--rm", "-v", "kept:/d", img, "cat", "/d/f"]);
    assert_eq!(String::from_utf8_lossy(&kept.stdout), "kept\n", "{}", text(&kept));
    let stop = home.berth(&["stop"]);
    assert!(stop.status.success(), "{}", text(&stop));

    // An image of one architecture is not booted as the other's, and the error says so.
    let wrong =
        home.berth(&["start", "--arch", "amd64", "--image", home.0.path().join("image-arm64").to_str().unwrap()]);
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("is built for arm64, not for the amd64 guest"), "{}", text(&wrong));
}
