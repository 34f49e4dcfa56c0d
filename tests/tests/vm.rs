//! The guest VM: the image built from Debian's cloud kernel boots under QEMU (TCG here) with
//! `berth-agent` as PID 1, which loads its modules, brings up the network, formats the data
//! disk on first boot, keeps it on the next, and serves the Docker API and the control channel
//! over every transport (hybrid vsock through vhost-device-vsock, the virtio-serial port); the
//! `berth` CLI and daemon serve the real docker CLI from it, and recover from a killed QEMU
//! and a killed daemon.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use std::sync::Arc;

use berth_core::transport::mux::MuxTransport;
use berth_core::transport::{Kind, Transport};
use berth_core::vm::accel::{Accel, AccelChoice};
use berth_core::vm::{Machine, MachineConfig, StopStep};
use berth_tests::{BerthHome, workspace};

fn image() -> &'static PathBuf {
    berth_tests::vm_image()
}

fn data_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("data.qcow2");
    let made = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("2G").status().unwrap();
    assert!(made.success());
    disk
}

/// A running guest; killed on drop.
struct Vm {
    qemu: Child,
    serial: Receiver<Vec<u8>>,
    log: Vec<u8>,
    started: Instant,
}

impl Vm {
    fn start(disk: &Path, extra: &[String]) -> Vm {
        let image = image();
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
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 (Debian package qemu-system-x86) must be installed");
        let mut out = qemu.stdout.take().unwrap();
        let (tx, serial) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Vm { qemu, serial, log: Vec::new(), started: Instant::now() }
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&self.log).into_owned()
    }

    /// Waits until the serial log contains `text`; returns the seconds since QEMU started.
    fn wait_for(&mut self, text: &str, limit: Duration) -> Option<f64> {
        while self.started.elapsed() < limit {
            if let Ok(chunk) = self.serial.recv_timeout(Duration::from_millis(100)) {
                self.log.extend(chunk);
            }
            // The whole line, not just its start.
            let log = self.log();
            if log.find(text).is_some_and(|at| log[at..].contains('\n')) {
                return Some(self.started.elapsed().as_secs_f64());
            }
        }
        None
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

#[test]
fn guest_boots_with_the_agent_as_pid1_and_keeps_its_data_disk() {
    let dir = tempfile::tempdir().unwrap();
    let disk = data_disk(dir.path());
    let mut vm = Vm::start(&disk, &[]);
    let secs = vm.wait_for("berth-agent serving", Duration::from_secs(180));
    let first = vm.log();
    assert!(secs.is_some(), "the engine did not come up:\n{first}");
    assert!(first.contains("formatted and mounted at /var/lib/berth"), "{first}");
    assert!(first.contains("vsock://:2375"), "{first}");
    assert!(first.contains("eth0 10.0.2.15/24 via 10.0.2.2"), "{first}");
    assert!(!first.contains("loading module"), "a module failed to load:\n{first}");
    eprintln!("first boot (with mkfs) to a serving engine: {:.1} s", secs.unwrap_or_default());
    drop(vm);

    let mut vm = Vm::start(&disk, &[]);
    let secs = vm.wait_for("berth-agent serving", Duration::from_secs(180));
    let second = vm.log();
    assert!(secs.is_some(), "{second}");
    assert!(second.contains("data disk /dev/vda mounted"), "{second}");
    assert!(!second.contains("formatting"), "the data disk was formatted again:\n{second}");
    eprintln!("second boot to a serving engine: {:.1} s", secs.unwrap_or_default());
}

/// A VM of berth-core's `Machine` (TCG, 1 GiB) on `dir`, reached over `transport`.
async fn machine(dir: &Path, transport: Kind) -> Machine {
    let cfg = MachineConfig {
        dir: dir.to_owned(),
        image: image().clone(),
        arch: berth_core::vm::arch::GuestArch::host(),
        cpus: 2,
        memory_mib: 1024,
        disk_gib: 2,
        accel: AccelChoice::Forced(Accel::Tcg),
        boot_timeout: Duration::from_secs(180),
        transport,
        cid: 3,
        hostfwd: Vec::new(),
        qemu_args: Vec::new(),
    };
    let m = Machine::start(&cfg).await.unwrap_or_else(|e| panic!("booting over {transport}: {e}"));
    eprintln!("boot over {transport}: {:?}", m.boot);
    m
}

/// Serves `port` of the guest on a unix socket in `dir`, as the daemon does; returns its
/// DOCKER_HOST value.
async fn forward(dir: &Path, name: &str, t: Arc<dyn Transport>) -> String {
    let path = dir.join(name);
    let listener = berth_core::forward::socket::bind(&path).await.unwrap();
    tokio::spawn(berth_core::forward::socket::serve(listener, t, berth_protocol::DOCKER_PORT));
    format!("unix://{}", path.display())
}

/// The docker CLI against `host`, with `stdin`.
fn docker_at(host: &str, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut cmd = Command::new("docker");
    cmd.args(args).env("DOCKER_HOST", host);
    berth_tests::output_within(&mut cmd, berth_tests::COMMAND_LIMIT, stdin).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn transports_pass_the_conformance_suite_in_the_vm_and_data_survives_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let img = format!("{}/busybox:latest", berth_tests::registry().addr);
    rt.block_on(async {
        // Hybrid vsock (its mux session), and the virtio-serial port the same VM also has.
        let m = machine(dir.path(), Kind::Hybrid).await;
        let serial: Arc<dyn Transport> = Arc::new(MuxTransport::serial(m.port.clone()));
        berth_tests::conformance::run(m.transport.as_ref()).await;
        berth_tests::conformance::run(serial.as_ref()).await;

        let hybrid_host = forward(dir.path(), "hybrid.sock", m.transport.clone()).await;
        let serial_host = forward(dir.path(), "serial.sock", serial).await;
        let (img2, hybrid_host2) = (img.clone(), hybrid_host.clone());
        tokio::task::spawn_blocking(move || {
            // A registry on the host's loopback is what the user means by 127.0.0.1:PORT,
            // in the VM too.
            let pull = docker_at(&hybrid_host2, &["pull", &img2], None);
            assert!(pull.status.success(), "{}", String::from_utf8_lossy(&pull.stderr));
            let sh = "cat; cat /proc/self/cgroup; ip route | head -1; echo cpus=$(nproc)";
            for host in [&hybrid_host2, &serial_host] {
                // stdin's end reaches the container over both (a half-close in the session).
                let out =
                    docker_at(host, &["run", "--rm", "-i", &img2, "sh", "-c", sh], Some(b"hello from the host\n"));
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(out.status.success(), "{host}: {}", String::from_utf8_lossy(&out.stderr));
                assert!(text.starts_with("hello from the host\n"), "{host}: {text}");
                assert!(text.contains("0::/"), "not in its own cgroup v2 namespace: {text}");
                assert!(text.contains("default via 172.29.0.1"), "not on the guest's bridge: {text}");
                // Every CPU the VM was given is online (a kernel option once left one).
                assert!(text.contains("cpus=2\n"), "the guest does not use its 2 CPUs: {text}");
            }
            let out = docker_at(
                &serial_host,
                &["run", "--rm", "-v", "keep:/data", &img2, "sh", "-c", "echo persisted > /data/f"],
                None,
            );
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        })
        .await
        .unwrap();
        // The guest's clock, set wrong over the control channel, is put right from the host's.
        let year_in_guest = |host: String, img: String| async move {
            tokio::task::spawn_blocking(move || {
                let out = docker_at(&host, &["run", "--rm", &img, "date", "-u", "+%Y"], None);
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            })
            .await
            .unwrap()
        };
        let y2001 = berth_protocol::Request::SetTime { unix_nanos: 978_307_200 * 1_000_000_000 };
        berth_core::control::request_via(m.transport.as_ref(), &y2001).await.unwrap();
        assert_eq!(year_in_guest(hybrid_host.clone(), img.clone()).await, "2001");
        berth_core::vm::sync_clock(m.transport.as_ref()).await.unwrap();
        let host_year = String::from_utf8(Command::new("date").args(["-u", "+%Y"]).output().unwrap().stdout).unwrap();
        assert_eq!(year_in_guest(hybrid_host.clone(), img.clone()).await, host_year.trim());

        // A clean shutdown: the agent stops the containers and powers the guest off.
        assert_eq!(m.stop(Duration::from_secs(90)).await, StopStep::Guest);
        let log = std::fs::read_to_string(dir.path().join("serial.log")).unwrap();
        assert!(log.contains("power off"), "{log}");

        // The next boot, over the serial port alone (no vsock device at all), finds it all.
        let m = machine(dir.path(), Kind::Serial).await;
        let host = forward(dir.path(), "serial2.sock", m.transport.clone()).await;
        let img2 = img.clone();
        tokio::task::spawn_blocking(move || {
            let images = docker_at(&host, &["images", "--format", "{{.Repository}}"], None);
            assert!(String::from_utf8_lossy(&images.stdout).contains("busybox"), "{images:?}");
            let out = docker_at(&host, &["run", "--rm", "-v", "keep:/data", &img2, "cat", "/data/f"], None);
            assert_eq!(String::from_utf8_lossy(&out.stdout), "persisted\n", "{}", String::from_utf8_lossy(&out.stderr));
        })
        .await
        .unwrap();
        // The ACPI power button (QMP system_powerdown) shuts the guest down cleanly as well.
        let mut m = m;
        berth_core::vm::qmp::Qmp::connect(&m.qmp).await.unwrap().powerdown().await.unwrap();
        let exited = tokio::time::timeout(Duration::from_secs(90), m.wait()).await;
        let log = std::fs::read_to_string(dir.path().join("serial.log")).unwrap();
        assert!(exited.is_ok_and(|st| st.is_ok_and(|st| st.success())), "the power button was not heard:\n{log}");
        assert!(log.contains("power button pressed") && log.contains("power off"), "{log}");
        assert!(!log.contains("unmounting /var/lib/berth:"), "the data disk did not unmount cleanly:\n{log}");
    });
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn wait_gone(pid: i32, what: &str) {
    let start = Instant::now();
    while alive(pid) && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z") {
        assert!(start.elapsed() < Duration::from_secs(60), "{what} (pid {pid}) is still running");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn berth_start_serves_the_docker_cli_from_the_vm() {
    let home = BerthHome(tempfile::tempdir().unwrap());
    // The config file gives the disk's size; the flag beats its memory.
    std::fs::write(home.0.path().join("config.toml"), "memory = 768\ndisk = 4\n").unwrap();
    // No guest image yet: the first start builds one into $BERTH_HOME/image, with progress.
    // (The kernel package the test image already downloaded is lent to it, to spare the mirror.)
    let debs = home.0.path().join("image/debs");
    std::fs::create_dir_all(&debs).unwrap();
    for deb in std::fs::read_dir(image().join("debs")).unwrap() {
        let deb = deb.unwrap();
        std::fs::copy(deb.path(), debs.join(deb.file_name())).unwrap();
    }
    let out = home.berth(&["start", "--accel", "tcg", "--memory", "1024"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "berth start: {}{err}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("guest image: building") && err.contains("guest image: writing the initramfs"), "{err}");
    let manifest = std::fs::read_to_string(home.0.path().join("image/manifest.txt")).unwrap();
    assert!(manifest.contains("target/debug/berth-agent"), "{manifest}");
    let again = home.berth(&["start", "--accel", "tcg"]);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("guest image"), "the cached image was rebuilt");
    assert!(
        again.status.success() && String::from_utf8_lossy(&again.stdout).contains("berth is running"),
        "a second start"
    );
    let sock = home.0.path().join("docker.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    let img = format!("{}/busybox:latest", berth_tests::registry().addr);
    let pull = home.docker(&["pull", &img]);
    assert!(pull.status.success(), "{}", String::from_utf8_lossy(&pull.stderr));
    let run = home.docker(&["run", "--rm", &img, "uname", "-r"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("cloud-amd64"), "not the guest's kernel: {:?}", run);
    // berth's own verbs reach the same engine, and the docker CLI finds it by context too.
    let run = home.berth(&["run", "--rm", &img, "sh", "-c", "uname -r; exit 7"]);
    assert_eq!(run.status.code(), Some(7), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stdout).contains("cloud-amd64"), "berth run: {run:?}");
    let by_context = home.docker(&["--context", "berth", "version", "--format", "{{.Server.Os}}"]);
    assert_eq!(String::from_utf8_lossy(&by_context.stdout).trim(), "linux", "{by_context:?}");
    // Confinement in the guest, where the device rules are an eBPF program on the cgroup v2
    // hierarchy: the VM's data disk cannot be read raw, no user namespaces, no vsock, seccomp
    // on; --privileged lifts all of it (the read is 512 bytes, nothing is written).
    let probe = format!("{}/probe:latest", berth_tests::registry().addr);
    assert!(home.docker(&["pull", &probe]).status.success());
    let script = "d=$(cat /sys/block/vda/dev); /probe mknod:/tmp/vda:b:${d%:*}:${d#*:} read:/tmp/vda \
                  unshare-user vsock seccomp; unshare -U -r true 2>&1 || true";
    let confined = home.docker(&["run", "--rm", &probe, "sh", "-c", script]);
    let text = String::from_utf8_lossy(&confined.stdout);
    assert!(confined.status.success(), "{}", String::from_utf8_lossy(&confined.stderr));
    for want in
        ["read:/tmp/vda: EPERM", "unshare-user: EPERM", "vsock: EPERM", "Seccomp:\t2", "Operation not permitted"]
    {
        assert!(text.contains(want), "{want} in the VM: {text}");
    }
    let lifted = home.docker(&["run", "--rm", "--privileged", &probe, "sh", "-c", script]);
    let text = String::from_utf8_lossy(&lifted.stdout);
    for want in ["read:/tmp/vda: ok", "unshare-user: ok", "vsock: ok", "Seccomp:\t0"] {
        assert!(text.contains(want), "{want} with --privileged in the VM: {text}");
    }
    assert!(
        home.docker(&[
            "run",
            "-d",
            "--name",
            "keeper",
            "-v",
            "kept:/d",
            &img,
            "sh",
            "-c",
            "echo kept > /d/f; sleep 600"
        ])
        .status
        .success()
    );
    let mut exec = home.docker(&["exec", "keeper", "cat", "/d/f"]);
    for _ in 0..50 {
        if exec.stdout == b"kept\n" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        exec = home.docker(&["exec", "keeper", "cat", "/d/f"]);
    }
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "kept\n", "{}", String::from_utf8_lossy(&exec.stderr));
    // A build through the VM (the context crosses the transport), and containers finding
    // each other by name on a user-defined network there, over IPv4 and IPv6 (the guest's
    // ip6tables and its modules).
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {img}\nRUN echo built in the VM > /f\nCMD [\"cat\", \"/f\"]\n"),
    )
    .unwrap();
    let built = home.docker(&["build", "-t", "vmbuilt", ctx.path().to_str().unwrap()]);
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    assert_eq!(String::from_utf8_lossy(&home.docker(&["run", "--rm", "vmbuilt"]).stdout), "built in the VM\n");
    let made = home.docker(&["network", "create", "--ipv6", "--subnet", "fd00:5::/64", "vmnet"]);
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert!(home.docker(&["run", "-d", "--name", "peer", "--network", "vmnet", &img, "sleep", "600"]).status.success());
    let both = "ping -c 1 peer && ping -6 -c 1 peer";
    let ping = home.docker(&["run", "--rm", "--network", "vmnet", &img, "sh", "-c", both]);
    assert!(
        ping.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    assert!(home.docker(&["rm", "-f", "peer"]).status.success());
    compose_through_the_vm(&home, &img);
    published_ports_and_host_services(&home, &probe);
    shared_folders(&home, &img, &probe);
    disk_given_back(&home, &img);
    clock_after_a_pause(&home, &img);
    let status = home.berth(&["status", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("berth status --json");
    assert_eq!(report["state"], "running", "{report:#}");
    assert_eq!(report["vm"]["state"], "running", "QMP query-status: {report:#}");
    assert_eq!(report["vm"]["accel"], "tcg", "{report:#}");
    // No /dev/vhost-vsock here, so `auto` picks the serial port (faster than hybrid vsock).
    assert_eq!(report["vm"]["transport"], "serial", "{report:#}");
    assert!(report["vm"]["boot"]["ready"].as_f64().is_some_and(|s| s > 0.0), "{report:#}");
    assert!(report["agent"]["version"].as_str().is_some_and(|v| !v.is_empty()), "{report:#}");
    assert!(report["vm"]["qemu_version"].as_str().is_some_and(|v| !v.is_empty()), "{report:#}");
    assert_eq!(report["agent"]["containers_running"], 2, "{report:#}");
    assert_eq!(report["disk"]["size_bytes"], 4u64 << 30, "{report:#}");
    assert_eq!(report["vm"]["memory_mib"], 1024, "{report:#}");
    let text = home.berth(&["status"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("containers: 2 running"), "{text:?}");

    // A clean stop, and the volume is there after the next start.
    let stop = home.berth(&["stop"]);
    assert!(stop.status.success() && String::from_utf8_lossy(&stop.stdout).contains("stopped"), "{stop:?}");
    assert!(!sock.exists(), "the socket outlived the daemon");
    let stopped = home.berth(&["status", "--json"]);
    assert!(stopped.status.success());
    let report: serde_json::Value = serde_json::from_slice(&stopped.stdout).unwrap();
    assert_eq!(report["state"], "stopped", "{report:#}");
    // This time the accelerator is probed (on this project's hosts KVM fails the probe and TCG
    // is used), and the verdict is cached.
    let out = home.berth(&["start", "--memory", "1024"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(home.0.path().join("vm/accel-probe.json").exists() || !std::path::Path::new("/dev/kvm").exists());
    // The same VM as the first start: restored from the snapshot that start saved, with the
    // host's clock.
    assert_eq!(home.status()["vm"]["boot"]["restored"], true, "{:#}", home.status());
    assert!(home.0.path().join("vm/boot.snapshot").is_file());
    clock_is_the_hosts(&home, &img);
    // The container with --restart always came back with the VM, and so did its port here.
    let served = || {
        let web = home.docker(&["port", "web", "80/tcp"]);
        let addr = String::from_utf8_lossy(&web.stdout).trim().to_owned();
        !addr.is_empty() && http_get(&addr).as_deref() == Some("served from a shared folder\n")
    };
    assert!(berth_tests::eventually(60, served), "web's port after a reboot");
    let read = home.docker(&["run", "--rm", "-v", "kept:/d", &img, "cat", "/d/f"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "kept\n", "{}", String::from_utf8_lossy(&read.stderr));
    let ps = home.docker(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(String::from_utf8_lossy(&ps.stdout).contains("keeper Exited"), "{ps:?}");

    // Logs, and stdin's end, through the socket.
    let talk = home.docker(&["run", "--name", "talker", &img, "sh", "-c", "echo one; echo two >&2"]);
    assert!(talk.status.success(), "{talk:?}");
    let logs = home.docker(&["logs", "talker"]);
    assert_eq!((&logs.stdout[..], &logs.stderr[..]), (&b"one\n"[..], &b"two\n"[..]), "{logs:?}");
    let out = home.docker_stdin(&["run", "--rm", "-i", &img, "sh", "-c", "cat; echo end"], Some(b"through berth\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through berth\nend\n");

    // QEMU killed with SIGKILL: the daemon says so and exits; data synced before it is there
    // after the next start.
    let sync = home.docker(&["run", "--rm", "-v", "kept:/d", &img, "sh", "-c", "echo synced > /d/g; sync"]);
    assert!(sync.status.success(), "{sync:?}");
    let qemu = home.status()["vm"]["qemu_pid"].as_i64().expect("QEMU's pid") as i32;
    // SAFETY: kill(2) on the test's own VM.
    unsafe { libc::kill(qemu, libc::SIGKILL) };
    let daemon_log = home.0.path().join("daemon.log");
    let start = Instant::now();
    while home.0.path().join("daemon.pid").exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "the daemon outlived its VM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&daemon_log).unwrap();
    assert!(log.contains("the VM stopped by itself") && log.contains("signal: 9"), "{log}");
    assert_eq!(home.status()["state"], "stopped");
    assert!(!sock.exists(), "a dead daemon's socket was left");
    home.start();
    let read = home.docker(&["run", "--rm", "-v", "kept:/d", &img, "cat", "/d/f", "/d/g"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "kept\nsynced\n", "{}", String::from_utf8_lossy(&read.stderr));

    // The daemon killed with SIGKILL: its QEMU goes too (shut down cleanly by SIGTERM), the pid
    // file it left is stale, and the next start recovers.
    let report = home.status();
    let (daemon, qemu) =
        (report["daemon"]["pid"].as_i64().unwrap() as i32, report["vm"]["qemu_pid"].as_i64().unwrap() as i32);
    // SAFETY: kill(2) on the test's own daemon.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    wait_gone(qemu, "the crashed daemon's QEMU");
    assert_eq!(home.status()["state"], "stopped");
    home.start();
    // 768 MiB now (the config file's), so the start before booted and saved a snapshot of its
    // own; this one restored it.
    assert_eq!(home.status()["vm"]["boot"]["restored"], true, "{:#}", home.status());
    let read = home.docker(&["run", "--rm", "-v", "kept:/d", &img, "cat", "/d/g"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "synced\n", "{}", String::from_utf8_lossy(&read.stderr));
    let logs = home.docker(&["logs", "talker"]);
    assert_eq!(logs.stdout, b"one\n", "logs survive restarts: {logs:?}");

    // A changed guest image makes the snapshot stale: the next start boots it (and saves a new
    // snapshot), the one after restores that.
    assert!(home.berth(&["stop"]).status.success());
    let initrd = std::fs::File::options().append(true).open(home.0.path().join("image/initrd.img")).unwrap();
    initrd.set_modified(std::time::SystemTime::now() + Duration::from_secs(5)).unwrap();
    drop(initrd);
    home.start();
    assert_eq!(home.status()["vm"]["boot"]["restored"], false, "a stale snapshot was restored");
    assert!(home.berth(&["stop"]).status.success());
    home.start();
    assert_eq!(home.status()["vm"]["boot"]["restored"], true, "{:#}", home.status());
    clock_is_the_hosts(&home, &img);
    let read = home.docker(&["run", "--rm", "-v", "kept:/d", &img, "cat", "/d/f", "/d/g"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "kept\nsynced\n", "{}", String::from_utf8_lossy(&read.stderr));

    // A snapshot cut in half (its key still matching) does not restore: the start says so in
    // its log, boots instead, and the data is all there.
    assert!(home.berth(&["stop"]).status.success());
    let snap = home.0.path().join("vm/boot.snapshot");
    let len = std::fs::metadata(&snap).unwrap().len();
    std::fs::File::options().write(true).open(&snap).unwrap().set_len(len / 2).unwrap();
    home.start();
    assert_eq!(home.status()["vm"]["boot"]["restored"], false, "a broken snapshot was taken for restored");
    let log = std::fs::read_to_string(home.0.path().join("daemon.log")).unwrap();
    assert!(log.contains("the boot snapshot did not restore"), "{log}");
    let read = home.docker(&["run", "--rm", "-v", "kept:/d", &img, "cat", "/d/f", "/d/g"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "kept\nsynced\n", "{}", String::from_utf8_lossy(&read.stderr));
}

/// A container's clock is within 3 s of this machine's (after a start restored from a
/// snapshot saved minutes before).
fn clock_is_the_hosts(home: &BerthHome, img: &str) {
    let out = home.docker(&["run", "--rm", img, "date", "+%s"]);
    let guest: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or_else(|_| panic!("{out:?}"));
    let host = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((guest - host).abs() < 3.0, "the guest's clock is {guest}, this machine's {host}");
}

/// Bytes the data disk's qcow2 file takes on this machine.
fn allocated(home: &BerthHome) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(home.0.path().join("vm/data.qcow2")).unwrap().blocks() * 512
}

/// An image removed in the guest gives its space back: the agent trims the data disk after
/// deletions and QEMU punches the freed clusters out of the qcow2 file.
fn disk_given_back(home: &BerthHome, img: &str) {
    let ctx = tempfile::tempdir().unwrap();
    // 48 MiB that do not compress or dedupe away.
    std::fs::write(ctx.path().join("Dockerfile"), format!("FROM {img}\nRUN head -c 50331648 /dev/urandom > /big\n"))
        .unwrap();
    let before = allocated(home);
    let built = home.docker(&["build", "-q", "-t", "local/big:1", ctx.path().to_str().unwrap()]);
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    // Written out: the guest's page cache reaches the disk within its writeback interval.
    assert!(berth_tests::eventually(60, || allocated(home) > before + (40 << 20)), "the disk did not grow");
    let grown = allocated(home);
    // The image and what its build left (the layer cache keeps the RUN step's layer).
    assert!(home.docker(&["rmi", "local/big:1"]).status.success());
    assert!(home.docker(&["builder", "prune", "-af"]).status.success());
    let given_back = || grown.saturating_sub(allocated(home));
    let ok = berth_tests::eventually(60, || given_back() >= (grown - before) * 8 / 10);
    assert!(ok, "the qcow2 file gave back {} of the {} bytes the image took", given_back(), grown - before);
}

/// A QMP request on the VM's monitor (one connection, capabilities negotiated first).
fn qmp(home: &BerthHome, command: &str) {
    use std::io::{BufRead, Write};
    let s = std::os::unix::net::UnixStream::connect(home.0.path().join("vm/qmp.sock")).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    for c in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\": \"{c}\"}}").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            if line.contains("\"return\"") || line.contains("\"error\"") {
                break;
            }
        }
        assert!(line.contains("\"return\""), "QMP {c}: {line}");
    }
}

/// After the VM is paused (as a host's sleep pauses it) and resumed, the guest's clock is
/// the host's again within seconds, without NTP: the daemon hears QMP's RESUME and sets it.
fn clock_after_a_pause(home: &BerthHome, img: &str) {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    qmp(home, "stop");
    std::thread::sleep(Duration::from_secs(12));
    qmp(home, "cont");
    let guest_lag = || {
        let before = now();
        let out = home.docker(&["run", "--rm", img, "date", "+%s"]);
        let guest: i64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        before - guest
    };
    let ok = berth_tests::eventually(20, || guest_lag().abs() <= 3);
    assert!(ok, "the guest's clock is {} s behind the host's after a 12 s pause", guest_lag());
}

/// docker-compose's project of `compose.rs` through the VM: up (project network, shared
/// volume, a port published on this machine), services by name, down.
fn compose_through_the_vm(home: &BerthHome, img: &str) {
    let port = free_port(false).to_string();
    let compose = |args: &[&str]| {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", "vmdemo"])
            .args(args)
            .current_dir(workspace().join("tests/fixtures/compose"))
            .env("DOCKER_HOST", format!("unix://{}", home.0.path().join("docker.sock").display()))
            .env("IMG", img)
            .env("PORT", &port);
        let out = home.bounded(&mut cmd, None);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "docker-compose {args:?}: {text}");
        text
    };
    compose(&["up", "-d"]);
    let addr = format!("127.0.0.1:{port}");
    assert!(berth_tests::eventually(60, || http_get(&addr).as_deref() == Some("hello-compose\n")), "compose's port");
    assert!(compose(&["exec", "-T", "writer", "wget", "-qO-", "http://web/"]).contains("hello-compose"));
    compose(&["down", "-v"]);
    let left = home.docker(&["ps", "-aq", "--filter", "label=com.docker.compose.project=vmdemo"]);
    assert!(left.stdout.is_empty(), "{left:?}");
}

/// `GET /` on `addr` (host:port) over plain TCP; the body.
fn http_get(addr: &str) -> Option<String> {
    let resp = http_raw(addr).ok()?;
    resp.split_once("\r\n\r\n").filter(|(head, _)| head.contains(" 200 ")).map(|(_, body)| body.to_owned())
}

/// The whole answer to `GET /` at `addr`, or what went wrong.
fn http_raw(addr: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp)
}

fn free_port(udp: bool) -> u16 {
    if udp {
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
    }
}

/// Published ports answer on this machine (TCP and UDP), a port taken here fails the start
/// with dockerd's words and leaves nothing running, a restart brings the port back, a stop
/// closes it; containers reach this machine's loopback services as host.docker.internal.
fn published_ports_and_host_services(home: &BerthHome, probe: &str) {
    let (tcp, udp) = (free_port(false), free_port(true));
    // The page is in a folder of this machine (the home's temp directory is shared), so after
    // a reboot it is served only if the container came back after the shares were mounted.
    let www = home.0.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("index.html"), "served from a shared folder\n").unwrap();
    let bind = format!("{}:/www", www.display());
    let script = "httpd -p 80 -h /www && exec /probe udp-echo:5353";
    let (p_tcp, p_udp) = (format!("127.0.0.1:{tcp}:80"), format!("127.0.0.1:{udp}:5353/udp"));
    let run = home.docker(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "web",
        "-v",
        &bind,
        "-p",
        &p_tcp,
        "-p",
        &p_udp,
        probe,
        "sh",
        "-c",
        script,
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let addr = format!("127.0.0.1:{tcp}");
    assert!(
        berth_tests::eventually(30, || http_get(&addr).as_deref() == Some("served from a shared folder\n")),
        "{addr} answered {:?}; the container: {}; it sees: {}",
        http_raw(&addr),
        String::from_utf8_lossy(&home.docker(&["logs", "web"]).stderr),
        String::from_utf8_lossy(
            &home.docker(&["exec", "web", "sh", "-c", "ls -la /www; grep www /proc/mounts"]).stdout
        )
    );
    let port = home.docker(&["port", "web"]);
    let port = String::from_utf8_lossy(&port.stdout);
    assert!(
        port.contains(&format!("80/tcp -> 127.0.0.1:{tcp}")) && port.contains(&format!("5353/udp -> 127.0.0.1:{udp}")),
        "{port}"
    );
    let echo = || {
        let mut socat = Command::new("socat");
        socat.args(["-T", "5", "-t", "3", "-", &format!("UDP:127.0.0.1:{udp}")]);
        let out = home.bounded(&mut socat, Some(b"datagram through the VM\n"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(berth_tests::eventually(20, || echo() == "datagram through the VM\n"), "UDP echo on {udp}");

    // Taken on this machine: dockerd's error, and no container left running.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let held = format!("127.0.0.1:{}:80", holder.local_addr().unwrap().port());
    let taken = home.docker(&["run", "-d", "--name", "blocked", "-p", &held, probe, "sleep", "60"]);
    let err = String::from_utf8_lossy(&taken.stderr);
    assert!(!taken.status.success() && err.contains("port is already allocated"), "{err}");
    let state = home.docker(&["inspect", "-f", "{{.State.Running}}", "blocked"]);
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "false");
    assert!(home.docker(&["rm", "-f", "blocked"]).status.success());

    // Restart brings the port back; stop closes it.
    let restart = home.docker(&["restart", "-t", "1", "web"]);
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    assert!(
        berth_tests::eventually(30, || http_get(&addr).as_deref() == Some("served from a shared folder\n")),
        "after restart"
    );
    let once = home.docker(&["run", "-d", "--name", "brief", "-p", "127.0.0.1::80", probe, "sleep", "60"]);
    assert!(once.status.success(), "{}", String::from_utf8_lossy(&once.stderr));
    let brief = String::from_utf8_lossy(&home.docker(&["port", "brief", "80/tcp"]).stdout).trim().to_owned();
    assert!(std::net::TcpStream::connect(&brief).is_ok(), "an engine-picked port listens here: {brief}");
    assert!(home.docker(&["stop", "-t", "0", "brief"]).status.success());
    assert!(berth_tests::eventually(10, || std::net::TcpStream::connect(&brief).is_err()), "{brief} still listens");
    // A port on every address is listened on at ::1 here too; a kill answers after the exit,
    // so an rm right after it never finds the container running (issue 28).
    let every = home.docker(&["run", "-d", "--name", "every", "-p", "80", probe, "sleep", "300"]);
    assert!(every.status.success(), "{}", String::from_utf8_lossy(&every.stderr));
    let every = String::from_utf8_lossy(&home.docker(&["port", "every", "80/tcp"]).stdout).into_owned();
    let every_port: u16 =
        every.lines().next().and_then(|l| l.rsplit(':').next()).and_then(|p| p.parse().ok()).unwrap_or(0);
    assert!(every.starts_with("0.0.0.0:") && every_port > 0, "{every}");
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        assert!(std::net::TcpStream::connect(("::1", every_port)).is_ok(), "[::1]:{every_port} does not listen");
    }
    assert!(home.docker(&["kill", "every"]).status.success());
    let rm = home.docker(&["rm", "every"]);
    assert!(rm.status.success(), "rm right after kill: {}", String::from_utf8_lossy(&rm.stderr));
    // Exec output framed or raw as the start request (not the exec's creation) asks.
    assert!(home.docker(&["run", "-d", "--name", "ttyc", probe, "sleep", "300"]).status.success());
    let socket = home.0.path().join("docker.sock");
    let mut got = Vec::new();
    for (made, started) in [(true, false), (true, true), (false, true)] {
        let body = format!(r#"{{"Cmd":["echo","hi"],"Tty":{made},"AttachStdout":true,"AttachStderr":true}}"#);
        let (_, made_exec) = berth_tests::http_on(&socket, "POST", "/containers/ttyc/exec", &body);
        let id = serde_json::from_str::<serde_json::Value>(&made_exec).unwrap()["Id"].as_str().unwrap().to_owned();
        let start = format!(r#"{{"Detach":false,"Tty":{started}}}"#);
        got.push(berth_tests::upgraded(&socket, &format!("/exec/{id}/start"), &start));
    }
    // The process has its terminal either way (\r\n); the start decides the framing.
    // (Framed as the terminal's reads came: "hi" and "\r\n" are two frames at times.)
    assert_eq!(
        stdout_frames(&got[0]).as_deref(),
        Some(&b"hi\r\n"[..]),
        "made with a terminal, started without: framed"
    );
    assert_eq!(got[1], b"hi\r\n", "made and started with a terminal: raw");
    assert_eq!(got[2], b"hi\n", "made without a terminal, started with one: raw");
    assert!(home.docker(&["rm", "-f", "ttyc"]).status.success());
    // Detach keys on an attached terminal, through the VM: the default ctrl-p ctrl-q and a
    // request's own close the attach, and the container runs on.
    assert!(home.docker(&["run", "-dit", "--name", "term", probe, "sh"]).status.success());
    for (query, keys) in [("", &b"\x10\x11"[..]), ("&detachKeys=ctrl-a,x", &b"\x01x"[..])] {
        let path = format!("/containers/term/attach?stream=1&stdin=1&stdout=1{query}");
        let (seen, closed) = berth_tests::attach_typing(&socket, &path, keys);
        assert!(closed && String::from_utf8_lossy(&seen).contains("typed"), "detach {query:?}: {seen:?}");
        let running = home.docker(&["inspect", "-f", "{{.State.Running}}", "term"]);
        assert_eq!(String::from_utf8_lossy(&running.stdout), "true\n", "after detach {query:?}");
    }
    assert!(home.docker(&["rm", "-f", "term"]).status.success());

    // A service on this machine's loopback, by name from a container.
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sport = service.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in service.incoming().flatten() {
            let mut req = [0u8; 1024];
            let _ = std::io::Read::read(&mut c, &mut req);
            let _ = c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 20\r\n\r\nhello from the host\n");
        }
    });
    for name in ["host.docker.internal", "gateway.docker.internal"] {
        let url = format!("http://{name}:{sport}/");
        let got = home.docker(&["run", "--rm", probe, "wget", "-qO-", &url]);
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            "hello from the host\n",
            "{name}: {}",
            String::from_utf8_lossy(&got.stderr)
        );
    }
}

/// The default shares (the home and the temporary directory) mounted in the guest at the same
/// paths: a container bind-mounts a directory of this machine by its own path and reads,
/// writes, and sees this machine's edits; a read-only bind refuses writes.
/// The payload of a stream of Docker's multiplexed frames, all of them stdout's; None if it is
/// not one.
fn stdout_frames(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (head, rest) = b.split_at_checked(8)?;
        let len = u32::from_be_bytes(head[4..8].try_into().ok()?) as usize;
        if head[..4] != [1, 0, 0, 0] || rest.len() < len {
            return None;
        }
        out.extend_from_slice(&rest[..len]);
        b = &rest[len..];
    }
    Some(out)
}

fn shared_folders(home: &BerthHome, img: &str, probe: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("input"), "from this machine\n").unwrap();
    let bind = format!("{}:/app", dir.path().display());
    let run = |args: &[&str]| {
        let out = home.docker(args);
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let script = "cat /app/input && echo from the VM > /app/output && mkdir -p /app/d/e && ln -s output /app/link && stat -c %s /app/input";
    assert_eq!(run(&["run", "--rm", "-v", &bind, img, "sh", "-c", script]), "from this machine\n18\n");
    assert_eq!(std::fs::read_to_string(dir.path().join("output")).unwrap(), "from the VM\n");
    assert!(dir.path().join("d/e").is_dir());
    assert_eq!(std::fs::read_link(dir.path().join("link")).unwrap(), std::path::Path::new("output"));
    // An edit made here reaches a running container.
    run(&["run", "-d", "--name", "reader", "-v", &bind, img, "sleep", "300"]);
    std::fs::write(dir.path().join("input"), "edited here\n").unwrap();
    let seen = || {
        let out = home.docker(&["exec", "reader", "cat", "/app/input"]);
        String::from_utf8_lossy(&out.stdout) == "edited here\n"
    };
    assert!(berth_tests::eventually(10, seen), "the edit did not reach the container");
    run(&["rm", "-f", "reader"]);
    // And a container's inotify watch sees it (as hot reloaders use it).
    run(&["run", "-d", "--name", "watcher", "-v", &bind, probe, "/probe", "watch:/app"]);
    let logs = || String::from_utf8_lossy(&home.docker(&["logs", "watcher"]).stdout).into_owned();
    assert!(berth_tests::eventually(20, || logs().contains("watching /app")), "{}", logs());
    std::fs::write(dir.path().join("input"), "edited again\n").unwrap();
    assert!(berth_tests::eventually(10, || logs().contains("\tinput\n")), "no inotify event: {}", logs());
    run(&["rm", "-f", "watcher"]);
    // A watch of the file itself sees it go when an editor here saves over it by a rename
    // (IN_DELETE_SELF, 0x400), on the guest's own kernel.
    run(&["run", "-d", "--name", "file-watcher", "-v", &bind, probe, "/probe", "watch:/app/input"]);
    let logs = || String::from_utf8_lossy(&home.docker(&["logs", "file-watcher"]).stdout).into_owned();
    assert!(berth_tests::eventually(20, || logs().contains("watching")), "{}", logs());
    std::fs::write(dir.path().join("input.tmp"), "saved\n").unwrap();
    std::fs::rename(dir.path().join("input.tmp"), dir.path().join("input")).unwrap();
    let deleted = || {
        logs()
            .lines()
            .any(|l| u32::from_str_radix(l.split('\t').next().unwrap_or(""), 16).is_ok_and(|m| m & 0x400 != 0))
    };
    assert!(berth_tests::eventually(10, deleted), "no IN_DELETE_SELF after a save over the file: {}", logs());
    run(&["rm", "-f", "file-watcher"]);
    let ro = format!("{}:/app:ro", dir.path().display());
    let denied = home.docker(&["run", "--rm", "-v", &ro, img, "sh", "-c", "echo x > /app/nope"]);
    assert!(!denied.status.success() && String::from_utf8_lossy(&denied.stderr).contains("Read-only file system"));
    assert!(!dir.path().join("nope").exists());
}
