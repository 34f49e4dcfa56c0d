//! Images from containers: commit, save/load (with the reference engine both ways),
//! export/import, and `docker cp` both ways.

use berth_tests::{Agent, RefEngine};

#[test]
fn commit_makes_a_new_layer_with_config_changes() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["run", "--name", "work", &img, "sh", "-c", "echo made > /etc/motd; rm /etc/group; mkdir -p /opt/app"]);
    let id = a.ok(&[
        "commit",
        "-c",
        "CMD [\"cat\", \"/etc/motd\"]",
        "-c",
        "ENV STAGE=committed",
        "-m",
        "by test",
        "work",
        "mine/committed:v1",
    ]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(a.ok(&["run", "--rm", "mine/committed:v1"]), "made\n");
    let out =
        a.ok(&["run", "--rm", "mine/committed:v1", "sh", "-c", "echo $STAGE; ls /etc/group 2>&1; ls -d /opt/app"]);
    assert!(out.starts_with("committed\n"), "{out}");
    assert!(out.contains("/etc/group: No such file or directory"), "deletion not committed as a whiteout: {out}");
    assert!(out.contains("/opt/app"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["image", "inspect", "mine/committed:v1"])).unwrap();
    assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(v[0]["Comment"], "by test");
    // The base image is untouched.
    assert_eq!(
        a.ok(&["run", "--rm", &img, "sh", "-c", "cat /etc/motd 2>&1; ls /etc/group"]),
        "cat: can't open '/etc/motd': No such file or directory\n/etc/group\n"
    );
}

#[test]
fn save_and_load_round_trip_with_docker_engine() {
    let a = Agent::start();
    let img = a.pull("layered:latest");
    a.ok(&["run", "--name", "w1", "-u", "root", &img, "sh", "-c", "echo berth-made > /data/extra"]);
    a.ok(&["commit", "w1", "interop:berth"]);
    let dir = tempfile::tempdir().unwrap();
    let berth_tar = dir.path().join("berth.tar");
    a.ok(&["save", "-o", berth_tar.to_str().unwrap(), "interop:berth"]);
    // Docker Engine loads what Berth saved, and runs it.
    let d = RefEngine::start();
    let out = d.ok(&["load", "-i", berth_tar.to_str().unwrap()]);
    assert!(out.contains("Loaded image: interop:berth"), "{out}");
    assert_eq!(d.ok(&["run", "--rm", "interop:berth", "cat", "/data/extra", "/data/keep"]), "berth-made\nkeep\n");
    // Berth loads what Docker Engine saved.
    d.ok(&["run", "--name", "dw", "-u", "root", "interop:berth", "sh", "-c", "echo docker-made > /data/more"]);
    d.ok(&["commit", "dw", "interop:docker"]);
    let docker_tar = dir.path().join("docker.tar");
    d.ok(&["save", "-o", docker_tar.to_str().unwrap(), "interop:docker"]);
    let out = a.ok(&["load", "-i", docker_tar.to_str().unwrap()]);
    assert!(out.contains("Loaded image: interop:docker"), "{out}");
    assert_eq!(
        a.ok(&["run", "--rm", "interop:docker", "cat", "/data/more", "/data/extra"]),
        "docker-made\nberth-made\n"
    );
    // The same image has the same ID in both engines.
    let berth_id = a.ok(&["images", "-q", "--no-trunc", "interop:docker"]);
    let docker_id = d.ok(&["images", "-q", "--no-trunc", "interop:docker"]);
    assert_eq!(berth_id, docker_id);
    // A truncated or foreign archive is a clear error.
    let bad = dir.path().join("bad.tar");
    std::fs::write(&bad, b"not a tar at all").unwrap();
    let (_, err) = a.fails(&["load", "-i", bad.to_str().unwrap()]);
    assert!(err.contains("manifest.json") || err.contains("archive"), "{err}");
}

#[test]
fn export_import_and_cp() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&[
        "run",
        "--name",
        "src",
        "-v",
        "vol:/mnt/vol",
        &img,
        "sh",
        "-c",
        "echo exported > /root/file; echo in-volume > /mnt/vol/v",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("fs.tar");
    a.ok(&["export", "-o", tarball.to_str().unwrap(), "src"]);
    let list =
        String::from_utf8(std::process::Command::new("tar").arg("tf").arg(&tarball).output().unwrap().stdout).unwrap();
    assert!(list.lines().any(|l| l.trim_end_matches('/') == "root/file"), "{list}");
    assert!(list.lines().any(|l| l.trim_end_matches('/') == "bin/busybox"));
    let id = a.ok(&["import", "-c", "CMD [\"cat\", \"/root/file\"]", tarball.to_str().unwrap(), "imported:1"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(a.ok(&["run", "--rm", "imported:1"]), "exported\n");
    // cp into and out of a stopped and a running container.
    let host_file = dir.path().join("in.txt");
    std::fs::write(&host_file, "copied in\n").unwrap();
    a.ok(&["cp", host_file.to_str().unwrap(), "src:/tmp/"]);
    let out_file = dir.path().join("out.txt");
    a.ok(&["cp", "src:/tmp/in.txt", out_file.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out_file).unwrap(), "copied in\n");
    a.ok(&["run", "-d", "--name", "live", &img, "sleep", "60"]);
    a.ok(&["cp", host_file.to_str().unwrap(), "live:/root/"]);
    assert_eq!(a.ok(&["exec", "live", "cat", "/root/in.txt"]), "copied in\n");
    let etc = dir.path().join("etc");
    a.ok(&["cp", "live:/etc", etc.to_str().unwrap()]);
    assert!(etc.join("passwd").is_file());
    let (_, err) = a.fails(&["cp", "live:/no/such", dir.path().to_str().unwrap()]);
    assert!(err.contains("Could not find the file"), "{err}");
    a.ok(&["rm", "-f", "live"]);
}

/// `docker cp` of a stopped container reaches its volumes and binds (mounted for the copy, as
/// dockerd does), not the layer under them; a read-only bind stays read-only.
#[test]
fn cp_goes_through_volumes_and_binds_of_a_stopped_container() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("ro.txt"), "read only\n").unwrap();
    let ro = format!("{}:/ro:ro", host.path().display());
    a.ok(&["run", "--name", "holder", "-v", "data:/data", "-v", &ro, &img, "sh", "-c", "echo in-volume > /data/f"]);
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("f");
    a.ok(&["cp", "holder:/data/f", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&dest).unwrap(), "in-volume\n");
    let src = out.path().join("new.txt");
    std::fs::write(&src, "copied in\n").unwrap();
    a.ok(&["cp", src.to_str().unwrap(), "holder:/data/"]);
    assert_eq!(a.ok(&["run", "--rm", "-v", "data:/d", &img, "cat", "/d/new.txt"]), "copied in\n");
    a.ok(&["cp", "holder:/ro/ro.txt", out.path().join("ro.txt").to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(out.path().join("ro.txt")).unwrap(), "read only\n");
    let (_, err) = a.fails(&["cp", src.to_str().unwrap(), "holder:/ro/"]);
    assert!(!err.is_empty());
    assert!(!host.path().join("new.txt").exists(), "a read-only bind was written");
}

/// An image of 125 layers (dockerd's most), written here as `docker save` writes it, loaded,
/// run, and copied from while stopped. The overlay's options name each layer; 125 paths of
/// the store do not fit in the one page the kernel takes, so they are named by descriptor.
#[test]
fn an_image_of_125_layers_runs_and_copies() {
    use sha2::{Digest, Sha256};
    const LAYERS: usize = 125;
    let dir = tempfile::tempdir().unwrap();
    let mut archive = tar::Builder::new(Vec::new());
    let add = |archive: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        archive.append_data(&mut h, name, data).unwrap();
    };
    let mut diff_ids = Vec::new();
    let mut layer_names = Vec::new();
    let busybox = std::fs::read("/bin/busybox").unwrap();
    for i in 0..LAYERS {
        let mut layer = tar::Builder::new(Vec::new());
        if i == 0 {
            add(&mut layer, "bin/busybox", &busybox, 0o755);
        }
        add(&mut layer, &format!("layers/{i:03}"), format!("layer {i}\n").as_bytes(), 0o644);
        let layer = layer.into_inner().unwrap();
        diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(&layer))));
        let name = format!("{i:03}/layer.tar");
        add(&mut archive, &name, &layer, 0o644);
        layer_names.push(name);
    }
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/busybox", "cat", "/layers/000", "/layers/062", "/layers/124"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let config_name = format!("{}.json", hex::encode(Sha256::digest(config.as_bytes())));
    add(&mut archive, &config_name, config.as_bytes(), 0o644);
    let manifest =
        serde_json::json!([{"Config": config_name, "RepoTags": ["many:layers"], "Layers": layer_names}]).to_string();
    add(&mut archive, "manifest.json", manifest.as_bytes(), 0o644);
    let path = dir.path().join("many.tar");
    std::fs::write(&path, archive.into_inner().unwrap()).unwrap();

    let a = Agent::start();
    let out = a.ok(&["load", "-i", path.to_str().unwrap()]);
    assert!(out.contains("Loaded image: many:layers"), "{out}");
    let layers = a.ok(&["image", "inspect", "-f", "{{len .RootFS.Layers}}", "many:layers"]);
    assert_eq!(layers.trim(), LAYERS.to_string());
    assert_eq!(a.ok(&["run", "--rm", "many:layers"]), "layer 0\nlayer 62\nlayer 124\n");
    // A stopped container's root is mounted by the engine itself for `docker cp`.
    a.ok(&["create", "--name", "stopped", "many:layers"]);
    let out = dir.path().join("out");
    a.ok(&["cp", "stopped:/layers/124", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "layer 124\n");
    a.ok(&["rm", "stopped"]);
}
