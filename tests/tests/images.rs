//! Images through the docker CLI: pulls (OCI and Docker schema 2, gzip and zstd, a whiteout),
//! progress, list, inspect, tag, rmi (refused while in use), prune, unknown images, platforms.

use berth_tests::{Agent, registry};

#[test]
fn pull_shows_progress_and_images_lists_it() {
    let a = Agent::start();
    let img = format!("{}/busybox:latest", registry().addr);
    let out = a.ok(&["pull", &img]);
    assert!(out.contains("Pull complete"), "{out}");
    assert!(out.contains("Digest: sha256:"), "{out}");
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
    let again = a.ok(&["pull", &img]);
    assert!(again.contains("Image is up to date"), "{again}");
    let list = a.ok(&["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}"]);
    assert!(list.contains(&format!("{}/busybox:latest", registry().addr)), "{list}");
    let inspect = a.ok(&["image", "inspect", &img]);
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert!(v[0]["Id"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(v[0]["Config"]["Cmd"][0], "sh");
    assert_eq!(v[0]["Config"]["Labels"]["org.berth.fixture"], "busybox");
    assert_eq!(v[0]["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(v[0]["Os"], "linux");
}

#[test]
fn schema2_multi_layer_image_with_whiteouts_runs() {
    let a = Agent::start();
    let img = a.pull("layered:latest");
    let inspect: serde_json::Value = serde_json::from_str(&a.ok(&["image", "inspect", &img])).unwrap();
    assert_eq!(inspect[0]["RootFS"]["Layers"].as_array().unwrap().len(), 3);
    // Config from the image: Cmd cat /data/keep, WorkingDir /data, User app.
    assert_eq!(a.ok(&["run", "--rm", &img]), "keep\n");
    let out =
        a.ok(&["run", "--rm", &img, "sh", "-c", "pwd; id -un; ls /etc/doomed /opt/gone 2>&1; ls -A /opt | wc -l"]);
    assert!(out.starts_with("/data\napp\n"), "{out}");
    assert!(out.contains("/etc/doomed: No such file or directory"), "{out}");
    assert!(out.contains("/opt/gone: No such file or directory"), "{out}");
    assert!(out.trim_end().ends_with('0'), "opaque/whiteout left files in /opt: {out}");
}

#[test]
fn zstd_layers_pull_and_run() {
    let a = Agent::start();
    let img = a.pull("zstd/busybox:latest");
    assert_eq!(a.ok(&["run", "--rm", &img, "echo", "zstd ok"]), "zstd ok\n");
}

#[test]
fn tag_rmi_and_prune() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["tag", &img, "mine/copy:v1"]);
    let id = a.ok(&["images", "-q", "mine/copy:v1"]);
    assert_eq!(id.trim().len(), 12);
    assert_eq!(a.ok(&["run", "--rm", "mine/copy:v1", "true"]), "");
    // Untagging one of two names keeps the image.
    let out = a.ok(&["rmi", "mine/copy:v1"]);
    assert!(out.contains("Untagged: mine/copy:v1"), "{out}");
    assert!(!a.ok(&["images", "-q", &img]).trim().is_empty());
    // Refused while a container uses it, as dockerd does, by name and by ID.
    a.ok(&["create", "--name", "user", &img, "true"]);
    let (_, err) = a.fails(&["rmi", &img]);
    assert!(
        err.contains("unable to remove repository reference") && err.contains("is using its referenced image"),
        "{err}"
    );
    let (_, err) = a.fails(&["rmi", id.trim()]);
    assert!(err.contains("image is being used by stopped container"), "{err}");
    a.ok(&["rm", "user"]);
    let out = a.ok(&["rmi", &img]);
    assert!(out.contains("Deleted: sha256:"), "{out}");
    assert!(a.ok(&["images", "-q"]).trim().is_empty());
    // Layers and blobs went with it.
    let layers = std::fs::read_dir(a.data_root().join("snapshots/layers")).unwrap().count();
    assert_eq!(layers, 0);
    // prune -a removes unused images.
    a.pull("busybox:latest");
    let out = a.ok(&["image", "prune", "-a", "-f"]);
    assert!(out.contains("Deleted"), "{out}");
    assert!(a.ok(&["images", "-q"]).trim().is_empty());
}

#[test]
fn unknown_images_are_clear_errors() {
    let a = Agent::start();
    let (_, err) = a.fails(&["pull", &format!("{}/nope:latest", registry().addr)]);
    assert!(err.contains("manifest for") && err.contains("not found"), "{err}");
    let (code, err) = a.fails(&["run", "--rm", "--pull", "never", "nothere:1", "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("No such image"), "{err}");
    let (_, err) = a.fails(&["image", "inspect", "nothere:1"]);
    assert!(err.contains("No such image"), "{err}");
    let (_, err) = a.fails(&["pull", "Bad_Name"]);
    assert!(err.contains("invalid reference format"), "{err}");
}

/// A multi-platform image: a pull takes the engine's own platform unless asked for another,
/// `run --platform` of a local image of another platform makes the docker CLI pull the right
/// one (dockerd's "not found"), and a program of an architecture nothing here runs fails naming
/// its architecture.
#[test]
fn platforms_pick_an_index_entry_and_a_foreign_program_says_what_it_is() {
    let a = Agent::start();
    let img = berth_tests::multiarch();
    let arch = |a: &Agent| a.ok(&["image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", img]);
    a.ok(&["pull", img]);
    assert_eq!(arch(&a).trim(), "linux/amd64");
    assert_eq!(a.ok(&["run", "--rm", img, "cat", "/etc/arch"]), "amd64\n");
    a.ok(&["pull", "--platform", "linux/arm64", img]);
    assert_eq!(arch(&a).trim(), "linux/arm64", "the tag moves to the platform pulled, as on dockerd");
    // The local image is arm64: asking for amd64 pulls it again, then runs it.
    let out = a.ok(&["run", "--rm", "--platform", "linux/amd64", img, "cat", "/etc/arch"]);
    assert!(out.ends_with("amd64\n"), "{out}");
    assert_eq!(arch(&a).trim(), "linux/amd64");

    // arm64 programs run here only if this host registered an emulator for them.
    let emulated = std::fs::read_dir("/proc/sys/fs/binfmt_misc")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().contains("aarch64")))
        .unwrap_or(false);
    if !emulated {
        let (code, err) = a.fails(&["run", "--rm", "--platform", "linux/arm64", img, "cat", "/etc/arch"]);
        assert_eq!(code, 125, "{err}");
        assert!(err.contains("exec format error") && err.contains("it is a linux/arm64 program"), "{err}");
        assert!(err.contains("no emulator for arm64 registered in binfmt_misc"), "{err}");
    }

    let (_, err) = a.fails(&["pull", "--platform", "linux/s390x", img]);
    assert!(err.contains("no matching manifest for linux/s390x in the manifest list entries"), "{err}");
    let (_, err) = a.fails(&["pull", "--platform", "windows/amd64", img]);
    assert!(err.contains("invalid platform \"windows/amd64\": this engine runs Linux containers only"), "{err}");
}

#[test]
fn login_and_pull_from_a_registry_with_basic_auth() {
    use berth_tests::{AUTH_PASSWORD, AUTH_USER, auth_registry};
    let a = Agent::start();
    let reg = &auth_registry().addr;
    let img = format!("{reg}/private/busybox:latest");
    let (_, err) = a.fails(&["pull", &img]);
    assert!(err.contains("pull access denied") || err.contains("unauthorized"), "{err}");
    let out = a.docker_stdin(&["login", "-u", AUTH_USER, "--password-stdin", reg], Some(b"wrong\n"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("incorrect username or password"), "{out:?}");
    let out = a.docker_stdin(
        &["login", "-u", AUTH_USER, "--password-stdin", reg],
        Some(format!("{AUTH_PASSWORD}\n").as_bytes()),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Login Succeeded"));
    a.ok(&["pull", &img]);
    assert_eq!(a.ok(&["run", "--rm", &img, "echo", "private ok"]), "private ok\n");
}

/// Every fixture image Docker Engine 20.10 pulls and runs, Berth pulls and runs, with the same
/// output (they are made by umoci and skopeo, by hand-written OCI layouts, by GNU tar with
/// device nodes, and with untrailed layer streams); the zstd one only Berth takes (dockerd
/// learnt zstd in 23.0). The hostile ones are refused by both, except `hostile:dotdot`, which
/// dockerd clamps into the layer and Berth refuses.
#[test]
fn fixtures_pull_and_run_as_on_docker_engine() {
    let a = Agent::start();
    let reference = berth_tests::RefEngine::start();
    let reg = &registry().addr;
    for name in [
        "busybox:latest",
        "layered:latest",
        "zstd/busybox:latest",
        "multi/busybox:latest",
        "sloppy/untrailed:latest",
        "sloppy/untrailed:aligned",
        "rootfs:latest",
        "probe:latest",
    ] {
        let img = format!("{reg}/{name}");
        a.ok(&["pull", "-q", &img]);
        // The reference engine runs without a bridge here, so both run without a network.
        let ours = a.ok(&["run", "--rm", "--network", "none", &img]);
        let pulled = reference.docker(&["pull", "-q", &img]).status.success();
        assert_eq!(pulled, !name.starts_with("zstd/"), "dockerd 20.10 on {name}");
        if pulled {
            assert_eq!(ours, reference.ok(&["run", "--rm", "--network", "none", &img]), "{name}");
        }
    }
    for hostile in ["symlink", "hardlink", "diffid", "dotdot"] {
        let img = format!("{reg}/hostile:{hostile}");
        let theirs = reference.docker(&["pull", "-q", &img]).status.success();
        let ours = a.docker(&["pull", "-q", &img]).status.success();
        assert!(!ours, "Berth took hostile:{hostile}");
        assert_eq!(theirs, hostile == "dotdot", "dockerd on hostile:{hostile}");
    }
    // A device node in a layer: both take it.
    let img = format!("{reg}/hostile:device");
    assert!(reference.docker(&["pull", "-q", &img]).status.success());
    a.ok(&["pull", "-q", &img]);
}

/// `docker push` to a real registry: an image built here (its plain layers gzipped on the
/// way) is pulled back by Docker Engine and by a second Berth with the same image ID and runs;
/// blobs skopeo copies out match their digests; a second push finds every layer there; a push
/// without a tag (`--all-tags`) pushes each tag; a tag that is not here is dockerd's error; a
/// registry that wants credentials takes them from `docker login`.
#[test]
fn images_are_pushed_and_pull_back_the_same() {
    use berth_tests::{AUTH_PASSWORD, AUTH_USER, auth_registry};
    let a = Agent::start();
    let base = a.pull("busybox:latest");
    let reg = &registry().addr;
    let repo = format!("{reg}/pushed/app{}", std::process::id());
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {base}\nRUN echo built-here > /built\n")).unwrap();
    a.ok(&["build", "-q", "-t", &format!("{repo}:1"), ctx.path().to_str().unwrap()]);
    let out = a.ok(&["push", &format!("{repo}:1")]);
    assert!(out.contains(&format!("The push refers to repository [{repo}]")), "{out}");
    assert!(out.contains("Pushed") && out.contains("1: digest: sha256:"), "{out}");
    let id = a.ok(&["inspect", "-f", "{{.Id}}", &format!("{repo}:1")]);
    let digests = a.ok(&["inspect", "-f", "{{json .RepoDigests}}", &format!("{repo}:1")]);
    assert!(digests.contains(&format!("{repo}@sha256:")), "{digests}");

    // Read back by the reference engine and by another Berth: the same image, and it runs.
    let d = berth_tests::RefEngine::start();
    d.ok(&["pull", &format!("{repo}:1")]);
    assert_eq!(d.ok(&["inspect", "-f", "{{.Id}}", &format!("{repo}:1")]), id);
    assert_eq!(d.ok(&["run", "--rm", "--network", "none", &format!("{repo}:1"), "cat", "/built"]), "built-here\n");
    let b = Agent::start();
    b.ok(&["pull", &format!("{repo}:1")]);
    assert_eq!(b.ok(&["inspect", "-f", "{{.Id}}", &format!("{repo}:1")]), id);
    assert_eq!(b.ok(&["run", "--rm", &format!("{repo}:1"), "cat", "/built"]), "built-here\n");
    // skopeo checks every blob's digest as it copies.
    let dir = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("skopeo")
        .args(["copy", "-q", "--src-tls-verify=false", &format!("docker://{repo}:1")])
        .arg(format!("dir:{}", dir.path().display()))
        .output()
        .unwrap();
    assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));

    // Again: nothing to send.
    let again = a.ok(&["push", &format!("{repo}:1")]);
    assert!(again.contains("Layer already exists") && !again.contains("Pushed"), "{again}");
    // Every tag of the repository.
    a.ok(&["tag", &format!("{repo}:1"), &format!("{repo}:2")]);
    let all = a.ok(&["push", "--all-tags", &repo]);
    assert!(all.contains("1: digest:") && all.contains("2: digest:"), "{all}");
    b.ok(&["pull", &format!("{repo}:2")]);
    // A pulled image goes up as the blobs it came as: same layer digests, same ID.
    let copy = format!("{repo}-pulled:1");
    a.ok(&["tag", &base, &copy]);
    a.ok(&["push", &copy]);
    d.ok(&["pull", &copy]);
    assert_eq!(d.ok(&["inspect", "-f", "{{.Id}}", &copy]), a.ok(&["inspect", "-f", "{{.Id}}", &base]));
    let (_, err) = a.fails(&["push", &format!("{reg}/pushed/nothing:1")]);
    assert!(err.contains(&format!("An image does not exist locally with the tag: {reg}/pushed/nothing")), "{err}");

    // A registry that wants credentials: refused without, taken after `docker login`.
    let auth = &auth_registry().addr;
    let private = format!("{auth}/private/pushed:1");
    a.ok(&["tag", &format!("{repo}:1"), &private]);
    let (_, err) = a.fails(&["push", &private]);
    assert!(err.to_lowercase().contains("unauthorized") || err.contains("denied"), "{err}");
    let out = a.docker_stdin(
        &["login", "-u", AUTH_USER, "--password-stdin", auth],
        Some(format!("{AUTH_PASSWORD}\n").as_bytes()),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = a.ok(&["push", &private]);
    assert!(out.contains("1: digest:"), "{out}");
}

/// `GET /distribution/{name}/json` (docker-py's `get_registry_data`): the registry's
/// descriptor, with the digest skopeo sees, and the platforms of an index or of one manifest.
#[test]
fn distribution_inspect_tells_what_the_registry_has() {
    let a = Agent::start();
    let reg = &registry().addr;
    for (name, many) in [("busybox:latest", false), ("multi/busybox:latest", true)] {
        let (status, body) = a.request("GET", &format!("/distribution/{reg}/{name}/json"), b"");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let raw = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", &format!("docker://{reg}/{name}")])
            .output()
            .unwrap();
        assert!(raw.status.success(), "{}", String::from_utf8_lossy(&raw.stderr));
        let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw.stdout)));
        assert_eq!(v["Descriptor"]["digest"], digest.as_str(), "{v}");
        assert_eq!(v["Descriptor"]["size"], raw.stdout.len(), "{v}");
        let platforms = v["Platforms"].as_array().unwrap();
        assert!(platforms.iter().any(|p| p["os"] == "linux" && p["architecture"] == "amd64"), "{v}");
        assert_eq!(platforms.len() > 1, many, "{v}");
    }
    let (status, body) = a.request("GET", &format!("/distribution/{reg}/no/such:image/json"), b"");
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
}

/// A pull cut short by a crash of the engine (SIGKILL while the big layer downloads, and
/// while it unpacks), and a crash right after a pull answered: after each restart the image
/// is whole (it runs, its file intact) or absent (not listed, pulled again whole), and
/// nothing half-made is left behind.
#[test]
fn a_pull_cut_by_a_crash_leaves_the_image_whole_or_absent() {
    use std::io::Write;
    let mut a = Agent::start();
    let base = a.pull("busybox:latest");
    // An image with a 48 MiB layer of random bytes, pushed to the fixture registry by Berth.
    let dir = tempfile::tempdir().unwrap();
    let mut big = std::fs::File::create(dir.path().join("big")).unwrap();
    let mut rng = std::fs::File::open("/dev/urandom").unwrap();
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..48 {
        std::io::Read::read_exact(&mut rng, &mut chunk).unwrap();
        big.write_all(&chunk).unwrap();
    }
    drop(big);
    let sum = |path: &std::path::Path| {
        let out = std::process::Command::new("sha256sum").arg(path).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_owned()
    };
    let want = sum(&dir.path().join("big"));
    std::fs::write(dir.path().join("Dockerfile"), format!("FROM {base}\nCOPY big /big\n")).unwrap();
    let img = format!("{}/crashpull:{}", registry().addr, std::process::id());
    a.ok(&["build", "-q", "-t", &img, dir.path().to_str().unwrap()]);
    a.ok(&["push", &img]);
    let check = "sha256sum /big | cut -d' ' -f1";
    let root = a.data_root();
    let leftovers = |root: &std::path::Path| {
        ["snapshots/staging", "content/ingest"]
            .iter()
            .map(|d| std::fs::read_dir(root.join(d)).map(|r| r.count()).unwrap_or(0))
            .sum::<usize>()
    };
    // Cut while downloading (an ingest file growing), then while unpacking (a staged layer).
    for (stage, probe) in [("downloading", "content/ingest"), ("unpacking", "snapshots/staging")] {
        a.ok(&["rmi", "-f", &img]);
        a.ok(&["image", "prune", "-af"]);
        a.pull("busybox:latest");
        let mut pull = std::process::Command::new("docker")
            .args(["pull", "-q", &img])
            .env("DOCKER_HOST", format!("unix://{}", a.socket.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let busy =
            berth_tests::eventually(60, || std::fs::read_dir(root.join(probe)).is_ok_and(|mut r| r.next().is_some()));
        a.crash_and_restart();
        let _ = pull.wait();
        assert!(busy, "the pull never reached {stage}");
        let listed = a.ok(&["images", "-q", &img]);
        if listed.trim().is_empty() {
            // Absent: pulled again, whole.
            a.ok(&["pull", "-q", &img]);
        }
        assert_eq!(a.ok(&["run", "--rm", &img, "sh", "-c", check]).trim(), want, "after a crash while {stage}");
        assert_eq!(leftovers(&root), 0, "half-made downloads or layers left after a crash while {stage}");
    }
    // Cut right after the pull answered: the image is there, whole.
    a.ok(&["rmi", "-f", &img]);
    a.ok(&["pull", "-q", &img]);
    a.crash_and_restart();
    assert_eq!(a.ok(&["images", "-q", &img]).trim().len(), 12, "the image went with the crash");
    assert_eq!(a.ok(&["run", "--rm", &img, "sh", "-c", check]).trim(), want);
}
