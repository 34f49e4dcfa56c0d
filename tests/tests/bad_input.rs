//! Malformed requests and hostile images get dockerd-shaped errors and write nothing outside
//! the data root.

use berth_tests::{Agent, registry};

#[test]
fn malformed_requests_are_400_with_a_message() {
    let a = Agent::start();
    let (code, body) = a.http("POST", "/v1.45/containers/create", Some("{not json"));
    assert_eq!(code, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["message"].as_str().unwrap().contains("invalid JSON"), "{body}");
    let (code, body) = a.http("POST", "/containers/create", Some(r#"{"Image": "x", "HostConfig": {"Binds": 7}}"#));
    assert_eq!(code, 400, "{body}");
    let (code, body) = a.http("GET", "/v1.99/version", None);
    assert_eq!(code, 400);
    assert!(body.contains("too new"), "{body}");
    let (code, body) = a.http("GET", "/v1.45/containers/nope/json", None);
    assert_eq!(code, 404);
    assert!(body.contains("No such container: nope"), "{body}");
    let (code, _) = a.http("GET", "/v1.45/no/such/route", None);
    assert_eq!(code, 404);
    let img = a.pull("busybox:latest");
    a.ok(&["create", "--name", "taken", &img, "true"]);
    let (code, err) = a.fails(&["run", "-d", "--name", "taken", &img, "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("is already in use by container"), "{err}");
    let (_, err) = a.fails(&["run", "--rm", "-v", "data:relative", &img, "true"]);
    assert!(err.contains("invalid") && err.contains("relative"), "{err}");
    let (_, err) = a.fails(&["create", "--name", "bad name", &img, "true"]);
    assert!(err.contains("Invalid container name"), "{err}");
    let (code, body) = a.http("POST", "/v1.45/containers/taken/kill?signal=BOGUS", None);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("Invalid signal: BOGUS"), "{body}");
}

#[test]
fn hostile_layers_are_refused_or_confined() {
    let a = Agent::start();
    let reg = &registry().addr;
    let marker_gone = |name: &str| {
        let parent = a.dir.path();
        !std::path::Path::new("/tmp").join(name).exists()
            && !parent.join(name).exists()
            && !std::path::Path::new("/").join(name).exists()
    };
    let (_, err) = a.fails(&["pull", &format!("{reg}/hostile:dotdot")]);
    assert!(err.contains("escapes the root"), "{err}");
    assert!(marker_gone("berth-escape-dotdot"));
    let (_, err) = a.fails(&["pull", &format!("{reg}/hostile:hardlink")]);
    assert!(err.contains("hard link target"), "{err}");
    let (_, err) = a.fails(&["pull", &format!("{reg}/hostile:huge")]);
    assert!(err.contains("extension header of 2147483648 bytes"), "{err}");
    let (_, err) = a.fails(&["pull", &format!("{reg}/hostile:diffid")]);
    assert!(err.contains("uncompressed digest"), "{err}");
    // Writes through symlinks pointing out stay inside the layer: where the target is not
    // in the layer, the pull fails (as dockerd's unpacker, chrooted into the layer, fails),
    // and nothing is written outside.
    let (_, err) = a.fails(&["pull", &format!("{reg}/hostile:symlink")]);
    assert!(err.contains("abs/berth-escape-abs"), "{err}");
    assert!(marker_gone("berth-escape-abs") && marker_gone("berth-escape-rel"));
    // A device node is made, as dockerd makes it; the device rules keep it closed
    // (tests/tests/confinement.rs).
    a.ok(&["pull", &format!("{reg}/hostile:device")]);
    let layers = a.data_root().join("snapshots/layers");
    let node = std::fs::read_dir(&layers).unwrap().flatten().find_map(|l| {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let m = std::fs::symlink_metadata(l.path().join("fs/dev/mem2")).ok()?;
        m.file_type().is_char_device().then_some(m.rdev())
    });
    assert_eq!(node, Some(libc::makedev(1, 1)), "the layer's character device 1:1");
    // Failed pulls left no half-unpacked layers behind.
    let staging = std::fs::read_dir(a.data_root().join("snapshots/staging")).unwrap().count();
    assert_eq!(staging, 0);
}

#[test]
fn multi_arch_index_resolves_to_this_architecture() {
    let a = Agent::start();
    let img = a.pull("multi/busybox:latest");
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["image", "inspect", &img])).unwrap();
    assert_eq!(v[0]["Architecture"], "amd64");
    assert_eq!(a.ok(&["run", "--rm", &img]), "picked amd64\n");
}

#[test]
fn socket_is_private_and_version_negotiates() {
    let a = Agent::start();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&a.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (code, body) = a.http("GET", "/_ping", None);
    assert_eq!((code, body.as_str()), (200, "OK"));
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["version", "--format", "{{json .Server}}"])).unwrap();
    assert_eq!(v["ApiVersion"], "1.45");
    assert_eq!(v["MinAPIVersion"], "1.24");
    let (code, _) = a.http("GET", "/v1.41/info", None);
    assert_eq!(code, 200);
}

#[test]
fn a_full_disk_fails_the_pull_cleanly_and_the_store_stays_usable() {
    // The data root on a 1.5 MiB tmpfs: the busybox layer (1 MiB compressed, 2 MiB unpacked)
    // cannot fit.
    let a = Agent::start_with(|dir| {
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1500k", "tmpfs"])
            .arg(&root)
            .status()
            .unwrap();
        assert!(ok.success());
    });
    let root = a.data_root();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(root.clone());
    let img = format!("{}/busybox:latest", registry().addr);
    let (_, err) = a.fails(&["pull", &img]);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(a.ok(&["images", "-q"]).trim().is_empty(), "a half-pulled image is listed");
    assert_eq!(std::fs::read_dir(root.join("snapshots/staging")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(root.join("snapshots/layers")).unwrap().count(), 0);
    // With room again, the same pull succeeds and the image runs.
    let grown = std::process::Command::new("mount").args(["-o", "remount,size=64m"]).arg(&root).status().unwrap();
    assert!(grown.success());
    a.ok(&["pull", &img]);
    assert_eq!(a.ok(&["run", "--rm", &img, "echo", "fits"]), "fits\n");
    // A `docker cp` that fills the disk names the cause (the engine's own failure, not the
    // client's), and the container goes on working.
    a.ok(&["create", "--name", "target", &img, "cat", "/tmp/small"]);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, vec![7u8; 40 << 20]).unwrap();
    let (_, err) = a.fails(&["cp", big.to_str().unwrap(), "target:/tmp/"]);
    assert!(err.contains("No space left on device"), "{err}");
    let small = dir.path().join("small");
    std::fs::write(&small, "still works\n").unwrap();
    a.ok(&["cp", small.to_str().unwrap(), "target:/tmp/"]);
    assert_eq!(a.ok(&["start", "-a", "target"]), "still works\n");
    // Into a directory that is not there: dockerd's 404.
    let tar = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &b"x"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let (status, body) = a.request("PUT", "/containers/target/archive?path=/no/such/dir", &tar);
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("Could not find the file /no/such/dir in container target"));
}

#[test]
fn a_serial_port_is_refused_where_only_a_socket_will_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(berth_tests::agent_bin())
        .args(["serve", "--listen", "serial://berth.0", "--data-root"])
        .arg(dir.path().join("root"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serial://berth.0: a serial port carries only multiplexed sessions: use --mux"), "{err}");
}
