//! The guest VM: the image built from Debian's cloud kernel boots under QEMU (TCG here) with
//! `berth-agent` as PID 1, which loads its modules, brings up the network, formats the data
//! disk on first boot, keeps it on the next, and serves the Docker API on vsock, reached from
//! the host through hybrid vsock (vhost-device-vsock), as the host daemon will.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use berth_tests::workspace;

/// Builds the guest image once per test process.
fn image() -> &'static PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let image = workspace().join("target/vm-image");
        let built = Command::new(workspace().join("vm-image/build.sh")).arg(&image).output().unwrap();
        assert!(built.status.success(), "vm-image/build.sh failed: {}", String::from_utf8_lossy(&built.stderr));
        image
    })
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

/// `vhost-device-vsock` for one guest; killed on drop.
struct VsockDevice(Child);

impl Drop for VsockDevice {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts vhost-device-vsock and the guest with a hybrid vsock device; returns them and the
/// host-side socket of the device.
fn boot_with_vsock(dir: &Path, disk: &Path) -> (Vm, VsockDevice, PathBuf) {
    let vu = dir.join("vu.sock");
    let uds = dir.join("vm.vsock");
    let _ = std::fs::remove_file(&vu);
    let _ = std::fs::remove_file(&uds);
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let bin = home.join("bin/vhost-device-vsock");
    let device = Command::new(if bin.exists() { bin } else { PathBuf::from("vhost-device-vsock") })
        .args(["--guest-cid", "3", "--socket"])
        .arg(&vu)
        .arg("--uds-path")
        .arg(&uds)
        .stdout(Stdio::null())
        .spawn()
        .expect("vhost-device-vsock (cargo install vhost-device-vsock) must be installed");
    let device = VsockDevice(device);
    let start = Instant::now();
    while !vu.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "vhost-device-vsock did not create {}", vu.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    let extra: Vec<String> = [
        "-object",
        "memory-backend-memfd,id=mem,size=1024M,share=on",
        "-numa",
        "node,memdev=mem",
        "-chardev",
        &format!("socket,id=c0,path={}", vu.display()),
        "-device",
        "vhost-user-vsock-pci,chardev=c0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut vm = Vm::start(disk, &extra);
    assert!(vm.wait_for("berth-agent serving", Duration::from_secs(180)).is_some(), "{}", vm.log());
    (vm, device, uds)
}

/// Runs `cmd` in a new container of `img` with `binds`, waits, and returns its output.
fn run_in_guest(uds: &Path, img: &str, cmd: &str, binds: &[&str]) -> String {
    let create =
        serde_json::json!({"Image": img, "Cmd": ["sh", "-c", cmd], "HostConfig": {"Binds": binds}}).to_string();
    let (status, created) = vsock_http(uds, "POST", "/v1.45/containers/create", Some(&create));
    assert_eq!(status, 201, "{created}");
    let id = serde_json::from_str::<serde_json::Value>(&created).unwrap()["Id"].as_str().unwrap().to_owned();
    let (status, started) = vsock_http(uds, "POST", &format!("/v1.45/containers/{id}/start"), None);
    assert_eq!(status, 204, "{started}");
    let (_, waited) = vsock_http(uds, "POST", &format!("/v1.45/containers/{id}/wait"), None);
    assert!(waited.contains("\"StatusCode\":0"), "{waited}");
    vsock_http(uds, "GET", &format!("/v1.45/containers/{id}/logs?stdout=1&stderr=1"), None).1
}

/// Sends a control request over hybrid vsock (after the hello) and returns the response.
fn control(uds: &Path, req: &berth_protocol::Request) -> berth_protocol::Response {
    use berth_protocol::{CONTROL_PORT, Request, VERSION, decode, encode};
    let mut conn = UnixStream::connect(uds).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    conn.write_all(format!("CONNECT {CONTROL_PORT}\n").as_bytes()).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK "), "{line:?}");
    for r in [&Request::Hello { version: VERSION, client: "vm-test".into() }, req] {
        conn.write_all(&encode(r)).unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
    }
    decode(line.as_bytes()).unwrap()
}

#[test]
fn containers_run_in_the_guest_and_their_data_survives_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let disk = data_disk(dir.path());
    let (mut vm, device, uds) = boot_with_vsock(dir.path(), &disk);

    let (status, version) = vsock_http(&uds, "GET", "/v1.45/version", None);
    assert_eq!(status, 200, "{version}");
    assert!(version.contains("\"Os\":\"linux\""), "{version}");

    // A registry on the host's loopback is what the user means by 127.0.0.1:PORT, in the VM too.
    let img = format!("{}/busybox:latest", berth_tests::registry().addr);
    let (status, pulled) = vsock_http(&uds, "POST", &format!("/v1.45/images/create?fromImage={img}"), None);
    assert!(status == 200 && pulled.contains("Downloaded newer image"), "{status} {pulled}\n{}", vm.log());
    let logs = run_in_guest(&uds, &img, "echo hello from the vm; cat /proc/self/cgroup; ip route | head -1", &[]);
    assert!(logs.contains("hello from the vm"), "{logs}");
    assert!(logs.contains("0::/"), "not in its own cgroup v2 namespace: {logs}");
    assert!(logs.contains("default via 172.29.0.1"), "not on the guest's bridge: {logs}");
    run_in_guest(&uds, &img, "echo persisted > /data/f", &["keep:/data"]);

    // A clean shutdown over the control channel: the VM powers itself off.
    assert_eq!(control(&uds, &berth_protocol::Request::Shutdown), berth_protocol::Response::Ok);
    let start = Instant::now();
    while vm.qemu.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < Duration::from_secs(120), "the VM did not power off:\n{}", vm.log());
        if let Ok(chunk) = vm.serial.recv_timeout(Duration::from_millis(100)) {
            vm.log.extend(chunk);
        }
    }
    while let Ok(chunk) = vm.serial.recv_timeout(Duration::from_millis(200)) {
        vm.log.extend(chunk);
    }
    assert!(vm.log().contains("power off"), "{}", vm.log());
    drop(vm);
    drop(device);

    // Everything is still there after the next boot.
    let (_vm, _device, uds) = boot_with_vsock(dir.path(), &disk);
    let (_, images) = vsock_http(&uds, "GET", "/v1.45/images/json", None);
    assert!(images.contains("busybox"), "{images}");
    assert_eq!(
        run_in_guest(&uds, &img, "cat /data/f", &["keep:/data"])
            .trim_start_matches(|c: char| c.is_control() || c == '\0'),
        "persisted\n"
    );
}

/// One HTTP/1.0 request to the guest's engine over hybrid vsock: connect to the unix socket,
/// `CONNECT 2375`, read `OK <port>`, then speak HTTP. Returns the status and the body.
fn vsock_http(uds: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut conn = UnixStream::connect(uds).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    conn.write_all(b"CONNECT 2375\n").unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "hybrid vsock handshake: {ok:?}");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: berth\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    reader.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// `berth stop` on drop, so a failed assertion does not leave a VM running.
struct BerthHome(tempfile::TempDir);

impl BerthHome {
    fn berth(&self, args: &[&str]) -> std::process::Output {
        let bin = workspace().join("target/debug/berth");
        Command::new(bin).args(args).env("BERTH_HOME", self.0.path()).output().expect("berth is built by cargo build")
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.0.path().join("docker.sock").display()))
            .env("DOCKER_CONFIG", self.0.path().join("docker-config"))
            .output()
            .unwrap()
    }
}

impl Drop for BerthHome {
    fn drop(&mut self) {
        let _ = self.berth(&["stop"]);
    }
}

#[test]
fn berth_start_serves_the_docker_cli_from_the_vm() {
    let home = BerthHome(tempfile::tempdir().unwrap());
    let image = image().display().to_string();
    let out = home.berth(&["start", "--accel", "tcg", "--image", &image, "--memory", "1024", "--disk", "4"]);
    assert!(
        out.status.success(),
        "berth start: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let again = home.berth(&["start", "--accel", "tcg", "--image", &image]);
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
    let status = home.berth(&["status"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("containers_running: 1"), "{status:?}");

    // A clean stop, and the volume is there after the next start.
    let stop = home.berth(&["stop"]);
    assert!(stop.status.success() && String::from_utf8_lossy(&stop.stdout).contains("stopped"), "{stop:?}");
    assert!(!sock.exists(), "the socket outlived the daemon");
    let out = home.berth(&["start", "--accel", "tcg", "--image", &image, "--memory", "1024"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = home.docker(&["run", "--rm", "-v", "kept:/d", &img, "cat", "/d/f"]);
    assert_eq!(String::from_utf8_lossy(&read.stdout), "kept\n", "{}", String::from_utf8_lossy(&read.stderr));
    let ps = home.docker(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert!(String::from_utf8_lossy(&ps.stdout).contains("keeper Exited"), "{ps:?}");
}
