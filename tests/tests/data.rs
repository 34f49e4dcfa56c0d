//! Volumes, bind mounts and tmpfs through the docker CLI.

use berth_tests::Agent;

#[test]
fn named_volumes_outlive_containers_and_are_shared() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["volume", "create", "--label", "k=v", "shared"]);
    let ls = a.ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(ls.lines().any(|l| l == "shared"), "{ls}");
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["volume", "inspect", "shared"])).unwrap();
    assert_eq!(v[0]["Labels"]["k"], "v");
    assert_eq!(v[0]["Driver"], "local");
    a.ok(&["run", "--rm", "-v", "shared:/data", &img, "sh", "-c", "echo first > /data/a"]);
    // Two containers at once on one volume.
    a.ok(&[
        "run",
        "-d",
        "--name",
        "reader",
        "-v",
        "shared:/in",
        &img,
        "sh",
        "-c",
        "while [ ! -f /in/b ]; do sleep 0.1; done; cat /in/b",
    ]);
    a.ok(&[
        "run",
        "--rm",
        "--mount",
        "type=volume,source=shared,target=/out",
        &img,
        "sh",
        "-c",
        "cat /out/a; echo second > /out/b",
    ]);
    assert_eq!(a.ok(&["wait", "reader"]).trim(), "0");
    assert_eq!(a.ok(&["logs", "reader"]), "second\n");
    let (_, err) = a.fails(&["volume", "rm", "shared"]);
    assert!(err.contains("volume is in use"), "{err}");
    let df = a.ok(&["system", "df"]);
    let row = |kind: &str| {
        df.lines().find(|l| l.starts_with(kind)).map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    };
    assert_eq!(row("Local Volumes").map(|r| r[2].clone()), Some("1".into()), "{df}");
    assert_eq!(row("Containers").map(|r| r[1].clone()), Some("1".into()), "{df}");
    // The API's records are whole, as in the lists (typed clients such as bollard need every field).
    let (code, body) = a.http("GET", "/system/df", None);
    assert_eq!(code, 200, "{body}");
    let df: serde_json::Value = serde_json::from_str(&body).unwrap();
    let vol = df["Volumes"].as_array().unwrap().iter().find(|v| v["Name"] == "shared").expect("shared in df").clone();
    assert_eq!((vol["Scope"].as_str(), vol["Labels"]["k"].as_str()), (Some("local"), Some("v")), "{vol}");
    assert!(vol["UsageData"]["Size"].as_i64().unwrap() > 0 && vol["UsageData"]["RefCount"] == 1, "{vol}");
    let image = &df["Images"][0];
    for field in ["ParentId", "RepoDigests", "Labels", "Created", "Containers"] {
        assert!(!image[field].is_null(), "df image lacks {field}: {image}");
    }
    a.ok(&["rm", "reader"]);
    // The data is a directory on the engine's disk, outside every container.
    let data = a.data_root().join("volumes/shared/_data/a");
    assert_eq!(std::fs::read_to_string(data).unwrap(), "first\n");
    a.ok(&["volume", "rm", "shared"]);
    let (_, err) = a.fails(&["volume", "inspect", "shared"]);
    assert!(err.contains("no such volume"), "{err}");
    // Anonymous volumes and prune.
    a.ok(&["run", "--name", "anon", "-v", "/scratch", &img, "touch", "/scratch/x"]);
    a.ok(&["rm", "anon"]);
    let out = a.ok(&["volume", "prune", "-f"]);
    assert!(out.contains("Total reclaimed space"), "{out}");
    assert!(a.ok(&["volume", "ls", "-q"]).trim().is_empty());
}

#[test]
fn bind_mounts_and_tmpfs() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("in.txt"), "from host\n").unwrap();
    let spec = format!("{}:/work", host.path().display());
    assert_eq!(
        a.ok(&["run", "--rm", "-v", &spec, &img, "sh", "-c", "cat /work/in.txt; echo back > /work/out.txt"]),
        "from host\n"
    );
    assert_eq!(std::fs::read_to_string(host.path().join("out.txt")).unwrap(), "back\n");
    let ro = format!("{}:/work:ro", host.path().display());
    let out = a.docker(&["run", "--rm", "-v", &ro, &img, "touch", "/work/nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"));
    let out = a.ok(&["run", "--rm", "--tmpfs", "/fast:size=1m", &img, "sh", "-c", "grep ' /fast ' /proc/mounts"]);
    assert!(out.contains("tmpfs") && out.contains("size=1024k"), "{out}");
    let out = a.ok(&[
        "run",
        "--rm",
        "--read-only",
        &img,
        "sh",
        "-c",
        "touch /x 2>&1; echo ok > /dev/shm/y && cat /dev/shm/y",
    ]);
    assert!(out.contains("Read-only file system") && out.contains("ok"), "{out}");
    let (_, err) = a.fails(&["run", "--rm", "--mount", "type=bind,source=/does/not/exist,target=/x", &img, "true"]);
    assert!(err.contains("bind source path does not exist"), "{err}");
}

/// Volumes with the `local` driver's options, side by side with Docker Engine 20.10: a tmpfs
/// volume (mounted for its first container, its data gone with its last), a volume binding a
/// host directory, and the options dockerd refuses or cannot mount, in its words.
#[test]
fn volumes_with_driver_options_match_docker_engine() {
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("from-host"), "host file\n").unwrap();
    let hostdir = host.path().to_str().unwrap().to_owned();
    let ours = berth_tests::on_both_engines(|docker, _, img| {
        let img = img.to_owned();
        let ok = |args: &[&str]| berth_tests::ok_on(docker, args);
        let said = |args: &[&str]| {
            let out = docker(args);
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            format!("{} {}", out.status.success(), err.lines().find(|l| l.contains("Error")).unwrap_or(""))
        };
        let mut got = Vec::new();
        ok(&["volume", "create", "-o", "type=tmpfs", "-o", "device=tmpfs", "-o", "o=size=2m,noexec", "tv"]);
        ok(&["volume", "create", "-o", "type=none", "-o", "o=bind", "-o", &format!("device={hostdir}"), "bv"]);
        ok(&["volume", "create", "plainv"]);
        got.push(ok(&["volume", "inspect", "-f", "{{json .Options}}", "tv", "plainv"]));
        let probe = "stat -f -c %T /v; df -k /v | tail -1 | awk '{print $2}'; grep ' /v ' /proc/mounts | grep -o noexec; \
                     echo kept > /v/f; cat /v/f";
        got.push(ok(&["run", "--rm", "-v", "tv:/v", &img, "sh", "-c", probe]));
        // The last user gone, the tmpfs went with it.
        got.push(ok(&["run", "--rm", "-v", "tv:/v", &img, "sh", "-c", "ls /v | wc -l"]));
        got.push(ok(&[
            "run",
            "--rm",
            "-v",
            "bv:/v",
            &img,
            "sh",
            "-c",
            "cat /v/from-host; echo from-container > /v/back",
        ]));
        got.push(std::fs::read_to_string(host.path().join("back")).unwrap_or_default());
        std::fs::remove_file(host.path().join("back")).unwrap();
        got.push(said(&["volume", "create", "-o", "foo=bar", "badv"]));
        ok(&["volume", "create", "-o", "type=none", "-o", "o=bind", "-o", "device=/no/such/dir", "gonev"]);
        let start = said(&["run", "--rm", "-v", "gonev:/v", &img, "true"]);
        got.push(format!("{} {}", start.starts_with("false"), start.contains("no such file or directory")));
        ok(&["volume", "rm", "tv", "bv", "plainv", "gonev"]);
        // The host directory a removed volume bound is the user's, and stays.
        got.push(std::fs::read_to_string(host.path().join("from-host")).unwrap_or_default());
        got
    });
    assert_eq!(ours[0], "{\"device\":\"tmpfs\",\"o\":\"size=2m,noexec\",\"type\":\"tmpfs\"}\nnull\n");
    assert_eq!(ours[1], "tmpfs\n2048\nnoexec\nkept\n");
    assert_eq!(ours[2], "0\n");
    assert_eq!(ours[4], "from-container\n");
    assert_eq!(ours[7], "host file\n");
}
