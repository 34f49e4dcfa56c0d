//! What a container may do, against what Docker Engine's defaults allow: seccomp, capabilities,
//! no_new_privs, device rules, and `docker cp` that a container cannot race out of its root.
//! The probe (`tests/fixtures/probe.c`, static, in the `probe` image) makes each attempt and
//! prints how it went.

use std::collections::BTreeMap;
use std::process::Command;

use berth_tests::{Agent, registry};

/// `probe` output as attempt → result.
fn results(out: &str) -> BTreeMap<String, String> {
    // "NAME: result" (names may hold colons), or /proc/self/status's "Key:\tvalue".
    out.lines()
        .filter_map(|l| l.rsplit_once(": ").or_else(|| l.split_once(':')))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// What Docker Engine 20.10's default seccomp profile and capabilities refuse with EPERM
/// (measured against dockerd on this machine's kind).
const REFUSED_BY_DOCKER: &[&str] = &[
    "unshare-user",
    "unshare-mount",
    "clone-newuser",
    "personality-bsd",
    "keyctl",
    "add-key",
    "bpf",
    "mount",
    "kexec",
    "open-by-handle",
    "reboot",
    "userfaultfd",
];

/// The rest of the probe's attempts, judged one by one below.
const OTHERS: &[&str] = &["vsock", "clone3", "io-uring", "chroot", "ptrace", "caps", "seccomp", "nnp"];

#[test]
fn the_default_confinement_is_docker_engines() {
    let a = Agent::start();
    let img = a.pull("probe:latest");
    let mut args = vec!["run", "--rm", img.as_str(), "/probe"];
    args.extend_from_slice(REFUSED_BY_DOCKER);
    args.extend_from_slice(OTHERS);
    let r = results(&a.ok(&args));
    for refused in REFUSED_BY_DOCKER {
        assert_eq!(r[*refused], "EPERM", "{refused}: {r:?}");
    }
    // What a user would try: busybox's unshare.
    let (_, err) = a.fails(&["run", "--rm", &img, "unshare", "-U", "-r", "true"]);
    assert!(err.contains("Operation not permitted"), "{err}");
    // clone3 answers ENOSYS, so libc falls back to clone (whose flags the filter can read).
    assert_eq!(r["clone3"], "ENOSYS");
    // Stricter than Docker 20.10: vsock sockets (in the VM they reach host services) and
    // io_uring.
    assert_eq!(r["vsock"], "EPERM");
    assert_eq!(r["io-uring"], "EPERM");
    // Allowed as by Docker.
    assert_eq!(r["chroot"], "ok");
    assert_eq!(r["ptrace"], "ok", "tracing a process of one's own container");
    // Docker's 14 default capabilities (0xa80425fb) in every set but inheritable and ambient.
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert_eq!(r[set], "00000000a80425fb", "{set}: {r:?}");
    }
    assert_eq!(r["CapInh"], "0000000000000000");
    assert_eq!(r["CapAmb"], "0000000000000000");
    assert_eq!(r["Seccomp"], "2", "seccomp filter mode");
    assert_eq!(r["NoNewPrivs"], "0");
    // /proc and /sys paths masked or read-only, as dockerd leaves them (those this kernel has:
    // these machines' kernels have no /proc/kcore or /proc/sysrq-trigger).
    let mounts = a.ok(&["run", "--rm", &img, "awk", "{print $5, $6}", "/proc/self/mountinfo"]);
    let covered = |path: &str, how: &str| mounts.lines().any(|l| l.split(' ').next() == Some(path) && l.contains(how));
    for (path, how) in [
        ("/proc/sys", " ro,"),
        ("/proc/sysrq-trigger", " ro,"),
        ("/proc/kcore", ""),
        ("/proc/keys", ""),
        ("/proc/timer_list", ""),
        ("/proc/acpi", " ro,"),
        ("/sys/firmware", " ro,"),
    ] {
        assert!(!std::path::Path::new(path).exists() || covered(path, how), "{path} is not covered ({how}): {mounts}");
    }
    assert!(covered("/proc/sys", " ro,") && covered("/proc/keys", ""), "{mounts}");
    let lifted = a.ok(&["run", "--rm", "--privileged", &img, "awk", "{print $5}", "/proc/self/mountinfo"]);
    assert!(!lifted.lines().any(|l| l == "/proc/keys"), "--privileged leaves /proc unmasked: {lifted}");

    // A non-root user keeps only the bounding set, as under dockerd.
    let r = results(&a.ok(&["run", "--rm", "-u", "1000", &img, "/probe", "caps", "unshare-user"]));
    assert_eq!(r["CapEff"], "0000000000000000");
    assert_eq!(r["CapPrm"], "0000000000000000");
    assert_eq!(r["CapBnd"], "00000000a80425fb");
    assert_eq!(r["unshare-user"], "EPERM");

    // docker exec runs under the same confinement.
    a.ok(&["run", "-d", "--name", "held", &img, "sleep", "60"]);
    let r = results(&a.ok(&["exec", "held", "/probe", "caps", "seccomp", "unshare-user", "keyctl"]));
    assert_eq!((r["CapEff"].as_str(), r["Seccomp"].as_str()), ("00000000a80425fb", "2"));
    assert_eq!((r["unshare-user"].as_str(), r["keyctl"].as_str()), ("EPERM", "EPERM"));
    // exec --privileged: every capability the engine has, the container's filter still on.
    let r = results(&a.ok(&["exec", "--privileged", "held", "/probe", "caps", "seccomp"]));
    assert_ne!(r["CapEff"], "00000000a80425fb");
    assert_eq!(r["Seccomp"], "2");
    a.ok(&["rm", "-f", "held"]);
}

/// The engine's own capability sets, as /proc/self/status shows them.
fn own_caps() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim().to_owned()
}

#[test]
fn flags_lift_or_tighten_it_as_dockerd_does() {
    let a = Agent::start();
    let img = a.pull("probe:latest");
    // --privileged: no filter, every capability the engine holds.
    let r =
        results(&a.ok(&["run", "--rm", "--privileged", &img, "/probe", "seccomp", "caps", "unshare-user", "keyctl"]));
    assert_eq!(r["Seccomp"], "0");
    assert_eq!(r["CapEff"], own_caps());
    assert_eq!((r["unshare-user"].as_str(), r["keyctl"].as_str()), ("ok", "ok"));
    // seccomp=unconfined lifts only the filter.
    let r = results(&a.ok(&[
        "run",
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        &img,
        "/probe",
        "seccomp",
        "keyctl",
        "caps",
    ]));
    assert_eq!((r["Seccomp"].as_str(), r["keyctl"].as_str()), ("0", "ok"));
    assert_eq!(r["CapEff"], "00000000a80425fb");
    // A profile of one's own, as the docker CLI sends it (read from the file).
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("profile.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chroot"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let r = results(&a.ok(&["run", "--rm", "--security-opt", &opt, &img, "/probe", "chroot", "keyctl", "seccomp"]));
    assert_eq!((r["chroot"].as_str(), r["keyctl"].as_str(), r["Seccomp"].as_str()), ("EACCES", "ok", "2"));
    // no-new-privileges.
    let r = results(&a.ok(&["run", "--rm", "--security-opt", "no-new-privileges", &img, "/probe", "nnp", "seccomp"]));
    assert_eq!((r["NoNewPrivs"].as_str(), r["Seccomp"].as_str()), ("1", "2"));
    // --cap-add SYS_ADMIN opens what the profile gives that capability; --cap-drop ALL.
    let r =
        results(&a.ok(&["run", "--rm", "--cap-add", "SYS_ADMIN", &img, "/probe", "unshare-mount", "clone3", "caps"]));
    assert_eq!((r["unshare-mount"].as_str(), r["clone3"].as_str()), ("ok", "EINVAL"));
    assert_eq!(r["CapEff"], "00000000a82425fb");
    let r =
        results(&a.ok(&["run", "--rm", "--cap-drop", "ALL", "--cap-add", "net_raw", &img, "/probe", "caps", "chroot"]));
    assert_eq!((r["CapEff"].as_str(), r["CapBnd"].as_str()), ("0000000000002000", "0000000000002000"));
    assert_eq!(r["chroot"], "EPERM", "CAP_SYS_CHROOT was dropped");
    // Bad flags fail the create with dockerd's words.
    let (_, err) = a.fails(&["run", "--rm", "--cap-add", "FOO", &img, "true"]);
    assert!(err.contains("invalid CapAdd: unknown capability: \"CAP_FOO\""), "{err}");
    let (_, err) = a.fails(&["run", "--rm", "--security-opt", "bogus=1", &img, "true"]);
    assert!(err.contains("invalid --security-opt 2: \"bogus=1\""), "{err}");
    std::fs::write(&profile, r#"{"defaultAction": 5}"#).unwrap();
    let (_, err) = a.fails(&["run", "--rm", "--security-opt", &opt, &img, "true"]);
    assert!(err.contains("Decoding seccomp profile failed"), "{err}");
    let (_, err) = a.fails(&["run", "--rm", "--device", "/dev/berth-nope", &img, "true"]);
    assert!(err.contains("error gathering device information while adding custom device \"/dev/berth-nope\""), "{err}");
}

/// A loop device over a file holding a marker: a disk the test owns, standing in for the
/// machine's own (in the VM, the data disk).
struct LoopDisk {
    dev: String,
    minor: u32,
    _file: tempfile::NamedTempFile,
}

impl LoopDisk {
    fn new(marker: &[u8]) -> LoopDisk {
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut bytes = marker.to_vec();
        bytes.resize(1 << 20, 0);
        std::fs::write(file.path(), &bytes).unwrap();
        let out = Command::new("losetup").args(["-f", "--show"]).arg(file.path()).output().unwrap();
        assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let minor = dev.trim_start_matches("/dev/loop").parse().unwrap();
        LoopDisk { dev, minor, _file: file }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[test]
fn a_container_cannot_open_the_machines_disks() {
    let a = Agent::start();
    let img = a.pull("probe:latest");
    let disk = LoopDisk::new(b"BERTH-SECRET-ON-DISK");
    let node = format!("mknod:/tmp/disk:b:7:{}", disk.minor);
    // By default: the node can be made (as under dockerd), not opened.
    let r =
        results(&a.ok(&["run", "--rm", &img, "/probe", &node, "read:/tmp/disk", "write:/tmp/disk", "read:/dev/null"]));
    assert_eq!(r[&node], "ok");
    assert_eq!((r["read:/tmp/disk"].as_str(), r["write:/tmp/disk"].as_str()), ("EPERM", "EPERM"));
    assert_eq!(r["read:/dev/null"], "ok");
    // The same image with the disk given (--device, read-only) or --privileged reads it: the
    // refusal above is the device rules', not something else on the way.
    let dev = format!("{}:/dev/xdisk:r", disk.dev);
    let out =
        a.ok(&["run", "--rm", "--device", &dev, &img, "sh", "-c", "head -c 20 /dev/xdisk; /probe write:/dev/xdisk"]);
    assert_eq!(out, "BERTH-SECRET-ON-DISKwrite:/dev/xdisk: EPERM\n");
    let script = format!("/probe {node} >/dev/null && head -c 20 /tmp/disk");
    assert_eq!(a.ok(&["run", "--rm", "--privileged", &img, "sh", "-c", &script]), "BERTH-SECRET-ON-DISK");
    // A debootstrap-style image's own nodes are harmless in the same way.
    let rootfs = a.pull("rootfs:latest");
    let out = a.docker(&[
        "run",
        "--rm",
        &rootfs,
        "sh",
        "-c",
        "head -c 1 /lib/udev/devices/mem; head -c 1 /lib/udev/devices/loop0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.matches("Operation not permitted").count() == 2, "{err}");
}

/// The CVE-2018-15664 race: while `docker cp` runs, the container swaps a directory on the
/// path for a symlink to `/` + a directory of the engine's machine. Every copy must stay
/// inside the container.
#[test]
fn docker_cp_cannot_be_raced_out_of_the_container() {
    let a = Agent::start();
    let img = a.pull("probe:latest");
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("secret"), "HOST-SECRET").unwrap();
    let h = host.path().display().to_string();
    // /w/d is a real directory half the time and a symlink to the host's directory the other
    // half (inside the container that path does not exist), swapped atomically millions of
    // times a second, as the exploit for CVE-2018-15664 does.
    let swap =
        format!("mkdir -p /w/d && echo container > /w/d/secret && ln -s {h} /w/evil && exec /probe swap:/w/d:/w/evil");
    a.ok(&["run", "-d", "--name", "racer", &img, "sh", "-c", &swap]);
    let mut reads_inside = 0;
    let mut writes_done = 0;
    // An archive holding one file, `planted`, for the PUT side.
    let planted = {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "planted", &b"x\n"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let start = std::time::Instant::now();
    for _ in 0..1500 {
        let (code, body) = a.request("GET", "/containers/racer/archive?path=/w/d/secret", b"");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("HOST-SECRET"), "docker cp read the engine's file through the container's symlink");
        if code == 200 && text.contains("container") {
            reads_inside += 1;
        }
        let (code, _) = a.request("PUT", "/containers/racer/archive?path=/w/d", &planted);
        assert!(!host.path().join("planted").exists(), "docker cp wrote into the engine's directory");
        if code == 200 {
            writes_done += 1;
        }
        if start.elapsed() > std::time::Duration::from_secs(40) {
            break;
        }
    }
    a.ok(&["rm", "-f", "racer"]);
    assert!(reads_inside > 0 && writes_done > 0, "the race never let a copy through: {reads_inside} {writes_done}");
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 1);
}

#[test]
fn images_made_by_other_tools_pull_load_import_and_run() {
    let a = Agent::start();
    let reg = registry();
    // A layer whose stream stops right after the last member's data, ragged and aligned.
    let img = a.pull("sloppy/untrailed:latest");
    assert_eq!(a.ok(&["run", "--rm", &img]), "a layer that stops right after its last byte\n");
    let img = a.pull("sloppy/untrailed:aligned");
    assert_eq!(a.ok(&["run", "--rm", &img]), format!("{}\n", "x".repeat(511)));
    // A debootstrap-style root with device nodes and FIFOs, pushed as Docker schema 2.
    let img = a.pull("rootfs:latest");
    assert_eq!(a.ok(&["run", "--rm", &img]), "debootstrap-style fixture\n");
    let ls = a.ok(&["run", "--rm", &img, "ls", "-l", "/lib/udev/devices/null", "/lib/udev/devices/loop0", "/run/fifo"]);
    assert!(ls.contains("crw-rw-rw-") && ls.contains("1,   3"), "{ls}");
    assert!(ls.contains("brw-rw----") && ls.contains("7,   0"), "{ls}");
    assert!(ls.lines().any(|l| l.starts_with("prw-r--r--")), "{ls}");
    // The image's own /dev nodes are in its layer, as `docker export` shows (a running
    // container sees its engine-made /dev over them).
    a.ok(&["create", "--name", "deb", &img]);
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("deb.tar");
    a.ok(&["export", "-o", tarball.to_str().unwrap(), "deb"]);
    let list = Command::new("tar").arg("tvf").arg(&tarball).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.lines().any(|l| l.starts_with("crw-r-----") && l.ends_with(" dev/mem")), "{list}");
    assert!(list.lines().any(|l| l.starts_with("prw-------") && l.ends_with(" dev/initctl")), "{list}");
    // docker import of the same trees, and docker load of an untrailed archive.
    let id = a.ok(&["import", reg.archive("rootfs.tar").to_str().unwrap(), "imported/rootfs"]);
    assert!(id.starts_with("sha256:"), "{id}");
    assert_eq!(a.ok(&["run", "--rm", "imported/rootfs", "cat", "/etc/issue"]), "debootstrap-style fixture\n");
    a.ok(&["import", reg.archive("untrailed.tar").to_str().unwrap(), "imported/untrailed"]);
    assert_eq!(
        a.ok(&["run", "--rm", "imported/untrailed", "cat", "/last"]),
        "a layer that stops right after its last byte\n"
    );
    let loaded = a.ok(&["load", "-i", reg.archive("archive-untrailed.tar").to_str().unwrap()]);
    assert!(loaded.contains("Loaded image: sloppy/loaded:latest"), "{loaded}");
    assert_eq!(a.ok(&["run", "--rm", "sloppy/loaded"]), "a layer that stops right after its last byte\n");
}
