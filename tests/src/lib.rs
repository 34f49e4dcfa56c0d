//! Harness for Berth's end-to-end tests: a real registry (Debian's `docker-registry`) with
//! fixture images pushed by `tests/fixtures/make-images.sh`, `berth-agent serve` on a fresh
//! data root, and the real `docker` CLI pointed at it.
//!
//! The agent binary is `target/<profile>/berth-agent` (build it first: `./dev test` does).
//! Background servers started here are killed when the test process exits.

pub mod conformance;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Directories of process-wide fixtures (held by statics, which are never dropped), removed at
/// exit once the servers using them are killed.
static LEFTOVERS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The longest one docker or berth command may take in a test (a pull or a first VM start
/// under TCG take well under a minute here); past it the command is killed and the test fails.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

extern "C" fn kill_children() {
    if let Ok(pids) = CHILDREN.lock() {
        for pid in pids.iter() {
            // SAFETY: kill(2) on a pid this process started.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
    if let Ok(dirs) = LEFTOVERS.lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn at_exit() {
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: registering a plain extern "C" function with atexit.
        unsafe { libc::atexit(kill_children) };
    });
}

fn track(child: &Child) {
    at_exit();
    CHILDREN.lock().unwrap().push(child.id());
}

/// Removes `dir` when the test process exits (after killing the servers [`track`] knows).
fn remove_at_exit(dir: &Path) {
    at_exit();
    LEFTOVERS.lock().unwrap().push(dir.to_owned());
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `berth-agent` binary under test.
/// The guest image, built once per test process by `vm-image/build.sh` into target/vm-image
/// with the agent this test run built (not a stale release build).
pub fn vm_image() -> &'static PathBuf {
    static IMAGE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let image = workspace().join("target/vm-image");
        let built = Command::new(workspace().join("vm-image/build.sh"))
            .arg(&image)
            .env("BERTH_AGENT", agent_bin())
            .output()
            .unwrap();
        assert!(built.status.success(), "vm-image/build.sh failed: {}", String::from_utf8_lossy(&built.stderr));
        image
    })
}

pub fn agent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BERTH_AGENT_BIN") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace().join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("berth-agent");
        if p.exists() {
            return p;
        }
    }
    panic!("berth-agent is not built: run `cargo build -p berth-agent` (./dev test does)");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A registry on loopback with the fixture images, shared by every test in the process.
pub struct Registry {
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Archives for `docker import` and `docker load` that `make-special.py` wrote (see there).
    pub fn archive(&self, name: &str) -> PathBuf {
        self._dir.path().join("archives").join(name)
    }
}

fn http_ok(addr: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 32];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).contains(" 200 ")
}

/// Starts `docker-registry` on a free loopback port with `auth` (a YAML block, may be empty).
fn start_registry(auth: &str) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    remove_at_exit(dir.path());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let config = dir.path().join("config.yml");
    let storage = dir.path().join("data");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
            storage.display()
        ),
    )
    .unwrap();
    #[allow(clippy::zombie_processes)]
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry (Debian package docker-registry) must be installed");
    track(&child);
    // Killed at process exit (atexit above); nothing waits for it before then.
    std::mem::forget(child);
    let start = Instant::now();
    while TcpStream::connect(&addr).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "registry did not come up on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
    (addr, dir)
}

/// The shared registry, started and filled on first use.
pub fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let (addr, dir) = start_registry("");
        assert!(eventually(20, || http_ok(&addr, "/v2/")), "registry on {addr} does not answer");
        let archives = dir.path().join("archives");
        std::fs::create_dir_all(&archives).unwrap();
        for script in ["make-images.sh", "make-special.py"] {
            let path = workspace().join("tests/fixtures").join(script);
            let out = Command::new(path).arg(&addr).arg(&archives).output().unwrap();
            assert!(out.status.success(), "{script} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Registry { addr, _dir: dir }
    })
}

/// `multi:latest` in [`registry`]: an OCI index of a busybox for linux/amd64 and one for
/// linux/arm64 (`tests/fixtures/make-multiarch.sh`), each with `/etc/arch` saying which it is;
/// pushed once per test process, on first use. Returns the image's name.
pub fn multiarch() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let reg = registry();
        let out = Command::new(workspace().join("tests/fixtures/make-multiarch.sh")).arg(&reg.addr).output().unwrap();
        assert!(out.status.success(), "make-multiarch.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        format!("{}/multi:latest", reg.addr)
    })
}

/// A registry that wants HTTP Basic auth (`AUTH_USER`/`AUTH_PASSWORD`), with `busybox:latest`.
pub fn auth_registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let hash = Command::new("python3")
            .args([
                "-W",
                "ignore",
                "-c",
                "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                AUTH_PASSWORD,
            ])
            .output()
            .unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let htpasswd = scratch.path().join("htpasswd");
        std::fs::write(&htpasswd, format!("{AUTH_USER}:{}", String::from_utf8_lossy(&hash.stdout))).unwrap();
        let (addr, dir) =
            start_registry(&format!("auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n", htpasswd.display()));
        std::fs::copy(&htpasswd, dir.path().join("htpasswd")).unwrap();
        remove_at_exit(scratch.path());
        std::mem::forget(scratch);
        let src = format!("docker://{}/busybox:latest", registry().addr);
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false", "--dest-creds"])
            .arg(format!("{AUTH_USER}:{AUTH_PASSWORD}"))
            .arg(&src)
            .arg(format!("docker://{addr}/private/busybox:latest"))
            .output()
            .unwrap();
        assert!(out.status.success(), "pushing to the auth registry: {}", String::from_utf8_lossy(&out.stderr));
        Registry { addr, _dir: dir }
    })
}

pub const AUTH_USER: &str = "berth";
pub const AUTH_PASSWORD: &str = "s3cret-pass";

/// A running `berth-agent serve` on its own data root and its own bridge network (tests run
/// several agents at once, and two engines must not hand out addresses on one bridge);
/// stopped with SIGTERM on drop, its bridge and NAT rules removed.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// `172.30.N.`: this agent's container subnet (/24) without the last octet.
    pub subnet: String,
    bridge: String,
    child: Option<Child>,
    /// More `serve` arguments.
    extra: Vec<String>,
}

fn bridge_slot() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    (std::process::id() * 7 + n) % 250 + 1
}

impl Agent {
    pub fn start() -> Agent {
        Self::start_with(|_| {})
    }

    /// Starts an agent after `prepare` has run on its (empty) directory, e.g. to mount a small
    /// file system where the data root will be.
    pub fn start_with(prepare: impl FnOnce(&Path)) -> Agent {
        Self::start_full(prepare, |_| vec![])
    }

    /// Starts an agent with more `serve` arguments, made from its directory.
    pub fn start_args(args: impl FnOnce(&Path) -> Vec<String>) -> Agent {
        Self::start_full(|_| {}, args)
    }

    fn start_full(prepare: impl FnOnce(&Path), args: impl FnOnce(&Path) -> Vec<String>) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let extra = args(dir.path());
        let slot = bridge_slot();
        let mut agent = Agent {
            socket: dir.path().join("docker.sock"),
            dir,
            subnet: format!("172.30.{slot}."),
            bridge: format!("bt{slot}"),
            child: None,
            extra,
        };
        agent.spawn();
        agent
    }

    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The agent's control API socket.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Where the agent accepts multiplexed sessions: each connection is one, as a virtio-serial
    /// port's host end is.
    pub fn mux_socket(&self) -> PathBuf {
        self.dir.path().join("mux.sock")
    }

    /// Waits up to `secs` for the agent process to exit by itself; returns its status.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn spawn(&mut self) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("agent.log")).unwrap();
        let child = Command::new(agent_bin())
            .arg("serve")
            .arg("--listen")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--data-root")
            .arg(self.data_root())
            .args(["--bridge-name", &self.bridge, "--bridge-ip", &format!("{}1/24", self.subnet)])
            .arg("--control")
            .arg(format!("unix://{}", self.control_socket().display()))
            .arg("--mux")
            .arg(format!("unix://{}", self.mux_socket().display()))
            .args(&self.extra)
            .arg("--echo")
            .arg(format!("unix://{}", self.dir.path().join("echo.sock").display()))
            .env("BERTH_LOG", std::env::var("BERTH_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        track(&child);
        self.child = Some(child);
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "agent did not listen: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    /// SIGTERM, and wait for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().unwrap()
    }

    /// Stops with SIGTERM and starts again on the same data root.
    pub fn restart(&mut self) {
        let st = self.stop();
        assert!(st.success(), "agent exited {st:?}: {}", self.log());
        self.spawn();
    }

    /// Kills with SIGKILL (a crash) and starts again on the same data root.
    pub fn crash_and_restart(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.spawn();
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_stdin(args, None)
    }

    pub fn docker_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"));
        output_within(&mut cmd, COMMAND_LIMIT, stdin)
            .unwrap_or_else(|e| panic!("{e}\nagent log tail: {}", tail(&self.log(), 30)))
    }

    /// Runs docker and asserts success; returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({:?}):\nstdout: {}\nstderr: {}\nagent log tail: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log(), 20)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs docker and asserts failure; returns stderr.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> (i32, String) {
        let out = self.docker(args);
        assert!(!out.status.success(), "docker {args:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// A raw HTTP request on the socket (curl); returns (status, body).
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "--unix-socket"]).arg(&self.socket).args(["-X", method]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        cmd.arg(format!("http://localhost{path}"));
        let out = cmd.output().expect("curl must be installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// A raw HTTP/1.0 request on the socket, for loops too fast for a process each: (status,
    /// body).
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).unwrap();
        write!(s, "{method} {path} HTTP/1.0\r\nHost: berth\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
        s.write_all(body).unwrap();
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).unwrap();
        let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4).unwrap_or(resp.len());
        let status = String::from_utf8_lossy(&resp[..head_end])
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (status, resp[head_end..].to_vec())
    }

    /// Pulls a fixture image from the shared registry; returns its full name.
    pub fn pull(&self, name: &str) -> String {
        let full = format!("{}/{name}", registry().addr);
        self.ok(&["pull", "-q", &full]);
        full
    }
}

impl Agent {
    /// Removes this agent's bridge and the NAT and forwarding rules its engine added.
    fn remove_network(&self) {
        let subnet = format!("{}0/24", self.subnet);
        let b = self.bridge.as_str();
        let _ = Command::new("ip").args(["link", "del", b]).output();
        let rules: [&[&str]; 3] = [
            &["-t", "nat", "-D", "POSTROUTING", "-s", &subnet, "!", "-o", b, "-j", "MASQUERADE"],
            &["-D", "FORWARD", "-i", b, "-j", "ACCEPT"],
            &["-D", "FORWARD", "-o", b, "-j", "ACCEPT"],
        ];
        for rule in rules {
            let _ = Command::new("iptables").arg("-w").args(rule).output();
        }
        // The bridges of the user-defined networks it made, and every rule naming them (or
        // this agent's default bridge, in the isolation chain).
        let mut names = vec![b.to_owned()];
        for e in std::fs::read_dir(self.data_root().join("networks")).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().trim_end_matches(".json").to_owned();
            if id.len() >= 12 {
                let bridge = format!("br-{}", &id[..12]);
                let _ = Command::new("ip").args(["link", "del", &bridge]).output();
                names.push(bridge);
            }
        }
        for table in ["filter", "nat"] {
            let Ok(out) = Command::new("iptables").args(["-w", "-t", table, "-S"]).output() else { continue };
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first() == Some(&"-A") && names.iter().any(|n| words.contains(&n.as_str())) {
                    let mut del = vec!["-w", "-t", table, "-D"];
                    del.extend_from_slice(&words[1..]);
                    let _ = Command::new("iptables").args(&del).output();
                }
            }
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.drop_agent();
        self.remove_network();
    }
}

impl Agent {
    fn drop_agent(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One engine's docker CLI, for tests that run the same steps on Berth and on [`RefEngine`].
pub type Docker<'a> = dyn Fn(&[&str]) -> Output + 'a;

/// Runs `steps` on a fresh Berth agent, then on Docker Engine 20.10 ([`RefEngine`]), each
/// with the fixture busybox pulled (`steps` gets the engine's docker CLI, its API socket and
/// the image's name); asserts that both saw the same, and returns what Berth saw.
pub fn on_both_engines(steps: impl Fn(&Docker<'_>, &std::path::Path, &str) -> Vec<String>) -> Vec<String> {
    let a = Agent::start();
    let r = RefEngine::start();
    let img = a.pull("busybox:latest");
    r.ok(&["pull", "-q", &img]);
    let ours = steps(&|x| a.docker(x), &a.socket, &img);
    let theirs = steps(&|x| r.docker(x), &r.dir.path().join("docker.sock"), &img);
    assert!(ours == theirs, "\nberth:   {ours:#?}\ndockerd: {theirs:#?}");
    ours
}

/// A docker CLI call that must succeed: its standard output.
#[track_caller]
pub fn ok_on(docker: &Docker<'_>, args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The reference engine, Debian's dockerd, on its own socket and data root, for
/// interoperability checks. Killed on drop.
///
/// It gets a bridge of its own (`br<slot>`, `172.29.<slot>.1/24`, made here and removed on
/// drop), so its default network works (links, networks) and it leaves the machine as it
/// found it: with `--bridge none` dockerd deletes the machine's `docker0`, which breaks a
/// developer's own Docker until it restarts. No iptables rules, no IP forwarding changed.
pub struct RefEngine {
    pub dir: tempfile::TempDir,
    child: Child,
    bridge: String,
}

impl RefEngine {
    pub fn start() -> RefEngine {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let slot = bridge_slot();
        let bridge = format!("br{slot}");
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        for args in [
            vec!["link", "add", &bridge, "type", "bridge"],
            vec!["addr", "add", &format!("172.29.{slot}.1/24"), "dev", &bridge],
            vec!["link", "set", &bridge, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("ip (iproute2) must be installed");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let child = Command::new("dockerd")
            .arg("--host")
            .arg(format!("unix://{}/docker.sock", d.display()))
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .args(["--bridge", &bridge, "--iptables=false", "--ip-forward=false", "--ip-masq=false"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("dockerd.log")).unwrap())
            .spawn()
            .expect("dockerd (Debian package docker.io) must be installed");
        track(&child);
        let engine = RefEngine { dir, child, bridge };
        let ok = eventually(60, || engine.docker(&["version"]).status.success());
        assert!(
            ok,
            "dockerd did not start: {}",
            std::fs::read_to_string(engine.dir.path().join("dockerd.log")).unwrap_or_default()
        );
        engine
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", format!("unix://{}/docker.sock", self.dir.path().display()))
            .env("DOCKER_CONFIG", self.dir.path().join("docker-config"));
        output_within(&mut cmd, COMMAND_LIMIT, None).unwrap_or_else(|e| panic!("dockerd: {e}"))
    }

    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "dockerd: docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RefEngine {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        // dockerd leaves its overlay mounts behind when it dies in a hurry.
        let _ = Command::new("umount").arg("-R").arg(self.dir.path().join("root/overlay2")).output();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` until it is true or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A plain HTTP/1.0 request on a Docker API socket: (status, body).
pub fn http_on(socket: &std::path::Path, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), body.to_owned())
}

/// Attaches to a container's terminal over an upgraded connection, types a command and waits
/// for its output, then types `keys`: what came back, and whether the engine then closed the
/// connection within 10 s.
pub fn attach_typing(socket: &std::path::Path, path: &str, keys: &[u8]) -> (Vec<u8>, bool) {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    while !seen.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
        seen.push(byte[0]);
    }
    seen.clear();
    s.write_all(b"echo ty\"\"ped\n").unwrap();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("typed") {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    s.write_all(keys).unwrap();
    let closed = s.read_to_end(&mut seen).is_ok();
    (seen, closed)
}

/// A request on a Docker API socket that upgrades the connection (as `exec start` and attach
/// do): what comes after the answer's head, until the engine closes the stream.
pub fn upgraded(socket: &std::path::Path, path: &str, body: &str) -> Vec<u8> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let head_end = resp.windows(4).position(|w| w == b"\r\n\r\n").map_or(resp.len(), |p| p + 4);
    resp[head_end..].to_vec()
}

/// Runs `cmd` to its end with `stdin` fed to it, but for `limit` at most: a command that hangs
/// is killed and reported as an error naming it, so a stuck test fails with a reason instead
/// of holding CI until its deadline.
pub fn output_within(cmd: &mut Command, limit: Duration, stdin: Option<&[u8]>) -> Result<Output, String> {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{:?}", cmd);
    let mut child = cmd.spawn().map_err(|e| format!("{what}: {e}"))?;
    let feed = stdin.map(|data| {
        let mut w = child.stdin.take().expect("piped stdin");
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        })
    });
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{what}: {e}"))? {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
            return Err(format!(
                "{what} did not finish within {} s (killed)\nstdout: {}\nstderr: {}",
                limit.as_secs(),
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&err)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(f) = feed {
        let _ = f.join();
    }
    Ok(Output { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
}

/// `berth stop` on drop, so a failed assertion does not leave a VM running.
pub struct BerthHome(pub tempfile::TempDir);

impl BerthHome {
    pub fn berth(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(workspace().join("target/debug/berth"));
        // The docker context `berth start` registers goes to this home's docker config.
        cmd.args(args)
            .env("BERTH_HOME", self.0.path())
            .env("DOCKER_CONFIG", self.0.path().join("docker-config"))
            .env_remove("BERTH_DOCKER_HOST");
        self.bounded(&mut cmd, None)
    }

    pub fn docker(&self, args: &[&str]) -> std::process::Output {
        self.docker_stdin(args, None)
    }

    pub fn docker_stdin(&self, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
        let mut cmd = Command::new("docker");
        cmd.args(args)
            .env("DOCKER_HOST", format!("unix://{}", self.0.path().join("docker.sock").display()))
            .env("DOCKER_CONFIG", self.0.path().join("docker-config"));
        self.bounded(&mut cmd, stdin)
    }

    /// Runs `cmd` for [`crate::COMMAND_LIMIT`] at most; a hang fails the test with the tails of
    /// the daemon's log (its error backtraces left out: they crowd out what was logged) and of
    /// the VM's serial console.
    pub fn bounded(&self, cmd: &mut Command, stdin: Option<&[u8]>) -> std::process::Output {
        crate::output_within(cmd, crate::COMMAND_LIMIT, stdin).unwrap_or_else(|e| {
            let read = |f: &str| std::fs::read_to_string(self.0.path().join(f)).unwrap_or_default();
            let daemon: String = read("daemon.log")
                .lines()
                .filter(|l| {
                    !l.trim_start().starts_with("at ")
                        && !l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit())
                })
                .map(|l| format!("{l}\n"))
                .collect();
            panic!(
                "{e}\ndaemon log tail:\n{}\nserial log tail:\n{}",
                crate::tail(&daemon, 40),
                crate::tail(&read("vm/serial.log"), 40)
            )
        })
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.berth(&["status", "--json"]);
        assert!(out.status.success(), "berth status: {out:?}");
        serde_json::from_slice(&out.stdout).expect("berth status --json")
    }

    pub fn start(&self) {
        let out = self.berth(&["start"]);
        assert!(out.status.success(), "berth start: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for BerthHome {
    /// `berth stop`, then the home removed: a daemon still exiting can make a file in it (the
    /// vsock device's socket) after the first try, which left the directory behind, so it tries
    /// again for a few seconds.
    fn drop(&mut self) {
        let _ = self.berth(&["stop"]);
        eventually(5, || {
            let _ = std::fs::remove_dir_all(self.0.path());
            !self.0.path().exists()
        });
    }
}
