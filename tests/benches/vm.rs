//! VM benchmarks, printed as figures (not asserted: these machines are shared and noisy):
//!
//! 1. Boot to a ready Docker API, cold (a new data disk: mkfs) and warm, split into QEMU start
//!    to the console's first line, init's start, the engine's start, and the agent's answer.
//! 2. Stream throughput of each transport the VM has (hybrid vsock's mux session, the
//!    virtio-serial mux session, and for comparison a raw hybrid vsock connection per stream).
//! 3. Docker API round trip through `$BERTH_HOME/docker.sock` (the daemon's forwarder) against
//!    the same request sent straight over the transport, and the daemon's resident memory.
//! 4. Published ports: throughput and connection latency of a container's TCP echo through
//!    Berth's forwarding (the host listens, the serial mux carries each connection, the agent
//!    connects to the container) against QEMU's own user-network `hostfwd` to the same
//!    container in the same VM.
//! 5. Shared folders: the same file work in a container on Berth's shared folder, on QEMU's
//!    9p (`-fsdev local` + virtio-9p, mounted as Lima mounts it), on QEMU's virtiofs
//!    (virtiofsd; Linux hosts only) and on the guest's own disk (a volume), timed inside the
//!    container, in one VM booted on Debian's generic kernel (the cloud kernel has no 9p).
//!    Then real projects' work, when this machine has Node.js with a self-contained npm and
//!    Debian's Python 3.11: `npm ci` of a small project from a local npm cache and a Python
//!    test suite of 300 modules, run twice.
//! 6. The arm64 guest under TCG: boot split, cold and warm, with each CPU model QEMU could
//!    emulate for it (what Berth passes, `max` with the architected pointer authentication,
//!    and a Cortex-A72 without it). Needs the cross-built agent (`./dev agent-arm64`).
//!
//! `cargo bench -p berth-tests --bench vm` (`./dev bench-vm` builds the release binaries and
//! runs it). Set BERTH_BENCH_BOOTS for the number of warm boots (default 3), and
//! BERTH_BENCH_ONLY=boot, =ports, =shares or =arm64 for section 1, 4, 5 or 6 alone; BERTH_BENCH_SHARES=Berth,disk
//! runs section 5 on those targets only (figures, no ratios).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_core::transport::mux::MuxTransport;
use berth_core::transport::{Kind, Transport};
use berth_core::vm::accel::{Accel, AccelChoice};
use berth_core::vm::{BootTimes, Machine, MachineConfig};
use berth_protocol::{DOCKER_PORT, ECHO_PORT};
use berth_tests::workspace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn release(bin: &str) -> PathBuf {
    let p = workspace().join("target/release").join(bin);
    assert!(p.is_file(), "{} is not built: cargo build --release -p berth -p berth-agent", p.display());
    p
}

/// The guest image with the release agent, in its own directory.
fn image() -> PathBuf {
    let dir = workspace().join("target/vm-image-bench");
    let out = Command::new(workspace().join("vm-image/build.sh"))
        .arg(&dir)
        .env("BERTH_AGENT", release("berth-agent"))
        .output()
        .unwrap();
    assert!(out.status.success(), "vm-image/build.sh: {}", String::from_utf8_lossy(&out.stderr));
    dir
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn config(dir: &Path, image: &Path) -> MachineConfig {
    MachineConfig {
        dir: dir.to_owned(),
        image: image.to_owned(),
        arch: berth_core::vm::arch::GuestArch::host(),
        cpus: 2,
        memory_mib: 1024,
        disk_gib: 8,
        accel: AccelChoice::Forced(Accel::Tcg),
        boot_timeout: Duration::from_secs(180),
        transport: Kind::Hybrid,
        cid: 3,
        hostfwd: Vec::new(),
        qemu_args: Vec::new(),
    }
}

fn row(label: &str, b: &BootTimes) {
    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    println!(
        "| {label} | {} | {} | {} | {:.2} | {} |",
        f(b.console),
        f(b.init),
        f(b.engine),
        b.ready,
        f(b.kernel_uptime)
    );
}

/// Echoes `total` bytes through a stream to the echo port: returns MiB/s of payload.
async fn throughput(
    connect: impl std::future::Future<Output = std::io::Result<berth_core::transport::Stream>>,
    total: usize,
) -> f64 {
    let s = connect.await.expect("connect to the echo port");
    let (mut rd, mut wr) = tokio::io::split(s);
    let start = Instant::now();
    let chunk = vec![0x5au8; 256 * 1024];
    let writer = async {
        let mut sent = 0;
        while sent < total {
            wr.write_all(&chunk).await.unwrap();
            sent += chunk.len();
        }
    };
    let reader = async {
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "the echo ended early");
            got += n;
        }
    };
    tokio::join!(writer, reader);
    total as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

const PING: &[u8] = b"GET /_ping HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n";

/// One /_ping on a fresh connection, in milliseconds.
async fn ping<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S, start: Instant) -> f64 {
    s.write_all(PING).await.unwrap();
    let mut text = Vec::new();
    s.read_to_end(&mut text).await.unwrap();
    assert!(text.ends_with(b"OK"), "{}", String::from_utf8_lossy(&text));
    start.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let image = image();
    if std::env::var("BERTH_BENCH_ONLY").as_deref() == Ok("ports") {
        ports_against_hostfwd(&rt, &image);
        return;
    }
    if std::env::var("BERTH_BENCH_ONLY").as_deref() == Ok("shares") {
        shares_side_by_side(&rt);
        return;
    }
    if std::env::var("BERTH_BENCH_ONLY").as_deref() == Ok("arm64") {
        arm64_boots(&rt);
        return;
    }
    let only_boot = std::env::var("BERTH_BENCH_ONLY").as_deref() == Ok("boot");
    let boots: usize = std::env::var("BERTH_BENCH_BOOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    println!("## Boot to a ready Docker API (TCG, 2 vCPUs, 1 GiB, release agent), seconds since QEMU started");
    println!("| boot | console | init starts | engine starts | agent answers | guest uptime at init |");
    println!("|---|---|---|---|---|---|");
    rt.block_on(async {
        // Starts restored from the boot snapshot (the serial transport: hybrid vsock, which
        // the rest of this bench uses, has none); the first start boots and saves it.
        let saved = tempfile::tempdir().unwrap();
        let restoring = MachineConfig { transport: Kind::Serial, ..config(saved.path(), &image) };
        let mut restored = Vec::new();
        for i in 0..=boots {
            let m = Machine::start(&restoring).await.expect("start");
            row(if i == 0 { "saves the snapshot" } else { "restored" }, &m.boot);
            if i > 0 {
                assert!(m.boot.restored, "the boot snapshot was not restored");
                restored.push(m.boot.ready);
            }
            m.stop(Duration::from_secs(60)).await;
        }
        println!("\nrestored start median: {:.2} s over {} starts\n", median(&mut restored), restored.len());
        let mut warm = Vec::new();
        for i in 0..=boots {
            let m = Machine::start(&config(dir.path(), &image)).await.expect("boot");
            row(if i == 0 { "cold (mkfs)" } else { "warm" }, &m.boot);
            if i > 0 {
                warm.push(m.boot.ready);
            }
            if i < boots {
                m.stop(Duration::from_secs(60)).await;
                continue;
            }
            if !warm.is_empty() {
                println!("\nwarm boot median: {:.2} s over {} boots", median(&mut warm), warm.len());
            }
            println!();
            if only_boot {
                m.stop(Duration::from_secs(60)).await;
                return;
            }

            println!("## Stream throughput, 64 MiB echoed through the guest's echo port (MiB/s)");
            println!("| transport | run 1 | run 2 | run 3 |");
            println!("|---|---|---|---|");
            let serial = MuxTransport::serial(m.port.clone());
            let uds = m.vsock.clone().expect("a hybrid VM has a device socket");
            let total = 64 << 20;
            for (name, t) in [
                ("hybrid vsock, mux session", Some(m.transport.as_ref())),
                ("virtio-serial, mux session", Some(&serial as &dyn Transport)),
                ("hybrid vsock, raw connection", None),
            ] {
                let mut runs = Vec::new();
                for _ in 0..3 {
                    let mbps = match t {
                        Some(t) => throughput(t.connect(ECHO_PORT), total).await,
                        None => {
                            let uds = uds.clone();
                            throughput(
                                async move {
                                    Ok(Box::new(berth_core::transport::hybrid::connect(&uds, ECHO_PORT).await?)
                                        as berth_core::transport::Stream)
                                },
                                total,
                            )
                            .await
                        }
                    };
                    runs.push(format!("{mbps:.0}"));
                }
                println!("| {name} | {} |", runs.join(" | "));
            }
            println!("\n## Docker API round trip straight over each transport (GET /_ping, a new stream each, 200 alternating), ms");
            println!("| transport | median | p90 |");
            println!("|---|---|---|");
            let (mut h, mut se) = (Vec::new(), Vec::new());
            for i in 0..220 {
                let t = Instant::now();
                let a = ping(m.transport.connect(DOCKER_PORT).await.unwrap(), t).await;
                let t = Instant::now();
                let b = ping(serial.connect(DOCKER_PORT).await.unwrap(), t).await;
                if i >= 20 {
                    h.push(a);
                    se.push(b);
                }
            }
            println!("| hybrid vsock, mux session | {:.3} | {:.3} |", median(&mut h), pct(&mut h, 0.9));
            println!("| virtio-serial, mux session | {:.3} | {:.3} |", median(&mut se), pct(&mut se, 0.9));
            m.stop(Duration::from_secs(60)).await;
        }
    });
    if only_boot {
        return;
    }

    ports_against_hostfwd(&rt, &image);

    // The real daemon, for the forwarder and its memory.
    let home = tempfile::tempdir().unwrap();
    let berth =
        |args: &[&str]| Command::new(release("berth")).args(args).env("BERTH_HOME", home.path()).output().unwrap();
    let out = berth(&[
        "start",
        "--accel",
        "tcg",
        "--transport",
        "hybrid",
        "--memory",
        "1024",
        "--image",
        image.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "berth start: {}", String::from_utf8_lossy(&out.stderr));
    let sock = home.path().join("docker.sock");
    let n = 300;
    rt.block_on(async {
        let direct: Arc<dyn Transport> = Arc::new(MuxTransport::hybrid(home.path().join("vm/vm.vsock")));
        let (mut via, mut straight) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            ping(tokio::net::UnixStream::connect(&sock).await.unwrap(), Instant::now()).await;
            ping(direct.connect(DOCKER_PORT).await.unwrap(), Instant::now()).await;
        }
        // Alternating, so drift in the machine's load hits both alike.
        for _ in 0..n {
            let t = Instant::now();
            via.push(ping(tokio::net::UnixStream::connect(&sock).await.unwrap(), t).await);
            let t = Instant::now();
            straight.push(ping(direct.connect(DOCKER_PORT).await.unwrap(), t).await);
        }
        let (mv, ms) = (median(&mut via), median(&mut straight));
        println!("\n## Docker API round trip (GET /_ping, a new connection each, {n} alternating pairs), ms");
        println!("| path | median | p90 |");
        println!("|---|---|---|");
        println!(
            "| $BERTH_HOME/docker.sock (daemon's forwarder, then hybrid mux) | {mv:.3} | {:.3} |",
            pct(&mut via, 0.9)
        );
        println!("| straight over a hybrid mux session | {ms:.3} | {:.3} |", pct(&mut straight, 0.9));
        println!("\nforwarding adds {:.3} ms per request (median difference)", mv - ms);
    });
    let pid = std::fs::read_to_string(home.path().join("daemon.pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or("")
            .split_whitespace()
            .nth(1)
            .unwrap_or("0")
            .parse::<f64>()
            .unwrap_or(0.0)
            / 1024.0
    };
    println!(
        "\n## The daemon while the VM runs\n\nresident {:.1} MiB (peak {:.1} MiB)",
        field("VmRSS:"),
        field("VmHWM:")
    );
    let out = berth(&["stop"]);
    assert!(out.status.success());
    arm64_boots(&rt);
}

/// Section 6: the arm64 guest's boot under TCG with each CPU model (the last `-cpu` QEMU is
/// given wins, so the alternatives ride in `qemu_args`).
fn arm64_boots(rt: &tokio::runtime::Runtime) {
    let agent = workspace().join("target/cross/aarch64-unknown-linux-gnu/release/berth-agent");
    assert!(agent.is_file(), "{} is not built: ./dev agent-arm64", agent.display());
    let image = workspace().join("target/vm-image-bench-arm64");
    let out = Command::new(workspace().join("vm-image/build.sh"))
        .args(["--arch", "arm64"])
        .arg(&image)
        .env("BERTH_AGENT", &agent)
        .output()
        .unwrap();
    assert!(out.status.success(), "vm-image/build.sh --arch arm64: {}", String::from_utf8_lossy(&out.stderr));
    let boots: usize = std::env::var("BERTH_BENCH_BOOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    println!("\n## The arm64 guest under TCG (2 vCPUs, 1 GiB, release agent), seconds since QEMU started");
    println!("| CPU | boot | console | init starts | engine starts | agent answers | guest uptime at init |");
    println!("|---|---|---|---|---|---|---|");
    for cpu in [None, Some("max"), Some("cortex-a72")] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), &image);
        cfg.arch = berth_core::vm::arch::GuestArch::Arm64;
        cfg.transport = Kind::Serial;
        cfg.qemu_args = cpu.map(|c| vec!["-cpu".to_owned(), c.to_owned()]).unwrap_or_default();
        let name = cpu.unwrap_or("max,pauth-impdef=on (Berth's)");
        let mut warm = Vec::new();
        rt.block_on(async {
            for i in 0..=boots {
                let m = Machine::start(&cfg).await.expect("the arm64 guest boots");
                let b = &m.boot;
                let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
                println!(
                    "| {name} | {} | {} | {} | {} | {:.2} | {} |",
                    if i == 0 { "cold (mkfs)" } else { "warm" },
                    f(b.console),
                    f(b.init),
                    f(b.engine),
                    b.ready,
                    f(b.kernel_uptime)
                );
                if i > 0 {
                    warm.push(b.ready);
                }
                m.stop(Duration::from_secs(60)).await;
            }
        });
        println!("| {name} | warm median | | | | {:.2} | |", median(&mut warm));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One connection: connect, one byte there and back, close; milliseconds.
async fn connect_round_trip(port: u16) -> f64 {
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    drop(s);
    start.elapsed().as_secs_f64() * 1000.0
}

/// Section 4: a TCP echo in a container, published (`-p`), reached through Berth's forwarding
/// and through QEMU's `hostfwd` to the same published port in the guest.
fn ports_against_hostfwd(rt: &tokio::runtime::Runtime, image: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let (published, hostfwd) = (free_port(), free_port());
    let mut cfg = config(dir.path(), image);
    cfg.transport = Kind::Serial;
    // The guest side of the published port is the same number; slirp delivers to it.
    cfg.hostfwd = vec![format!("tcp:127.0.0.1:{hostfwd}-:{published}")];
    let reg = berth_tests::registry().addr.clone();
    rt.block_on(async {
        let m = Machine::start(&cfg).await.expect("boot");
        tokio::spawn(berth_core::forward::ports::PortHost::new(m.transport.clone()).serve());
        let sock = dir.path().join("docker.sock");
        let listener = berth_core::forward::socket::bind(&sock).await.unwrap();
        tokio::spawn(berth_core::forward::socket::serve(listener, m.transport.clone(), DOCKER_PORT));
        let docker = |args: &[&str]| {
            let out = Command::new("docker")
                .args(args)
                .env("DOCKER_HOST", format!("unix://{}", sock.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let probe = format!("{reg}/probe:latest");
        docker(&["pull", "-q", &probe]);
        docker(&["run", "-d", "-p", &format!("{published}:7777"), &probe, "/probe", "tcp-echo:7777"]);
        for port in [published, hostfwd] {
            let start = Instant::now();
            loop {
                let ok = tokio::time::timeout(Duration::from_secs(5), connect_round_trip(port)).await.is_ok();
                if ok {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(60), "port {port} does not echo");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let connect = |port: u16| async move {
            let s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as berth_core::transport::Stream)
        };
        println!("\n## Published port: a container's TCP echo, 64 MiB through it (MiB/s), same VM, serial transport");
        println!("| path | run 1 | run 2 | run 3 | median |");
        println!("|---|---|---|---|---|");
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            ours.push(throughput(connect(published), 64 << 20).await);
            theirs.push(throughput(connect(hostfwd), 64 << 20).await);
        }
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" | ");
        let (mo, mt) = (median(&mut ours.clone()), median(&mut theirs.clone()));
        println!("| Berth (host listener, serial mux, agent) | {} | {mo:.0} |", fmt(&ours));
        println!("| QEMU hostfwd (slirp, the guest's proxy) | {} | {mt:.0} |", fmt(&theirs));
        let (mut lo, mut lt) = (Vec::new(), Vec::new());
        for i in 0..220 {
            let a = connect_round_trip(published).await;
            let b = connect_round_trip(hostfwd).await;
            if i >= 20 {
                lo.push(a);
                lt.push(b);
            }
        }
        println!("\n## Published port: connect, 1 byte there and back, close (200 alternating), ms");
        println!("| path | median | p90 |");
        println!("|---|---|---|");
        println!("| Berth | {:.3} | {:.3} |", median(&mut lo), pct(&mut lo, 0.9));
        println!("| QEMU hostfwd | {:.3} | {:.3} |", median(&mut lt), pct(&mut lt, 0.9));
        println!(
            "\nBerth/hostfwd: throughput {:.2}x, connection latency {:.2}x",
            mo / mt,
            median(&mut lo) / median(&mut lt)
        );
        m.stop(Duration::from_secs(60)).await;
    });
}

/// The file work of section 5, run in `/w` with `/probe clock` around each step: a line
/// "STEP START END" (monotonic nanoseconds) per step. Caches are dropped before each cold
/// step, so those read from wherever the files live. `/src.tar` is a real git repository.
const FILE_WORK: &str = r#"
cd /w || exit 1
echo "mounted $(grep ' /w ' /proc/self/mounts)"
t() { s=$(/probe clock); c=$(head -1 /proc/stat); "$@" >/dev/null || exit 1; echo "$STEP $s $(/probe clock)"; echo "cpu $STEP $c $(head -1 /proc/stat)"; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
git() { /usr/bin/git -c safe.directory='*' -C /w/repo "$@"; }
STEP=write-64MiB t dd if=/dev/zero of=big bs=1M count=64 conv=fsync
drop; STEP=read-64MiB t cat big
rm big
mkdir many
STEP=create-10000 t sh -c 'for d in $(seq 100); do mkdir many/d$d; for f in $(seq 100); do echo x > many/d$d/f$f; done; done'
drop; STEP=stat-readdir-10000-cold t ls -lR many
STEP=stat-readdir-10000-warm t ls -lR many
STEP=remove-10000 t rm -rf many
STEP=untar-repo t tar xf /src.tar
STEP=git-status-first t git status
STEP=git-status-again t git status
drop; STEP=git-status-cold t git status
"#;
const FILE_STEPS: usize = 10;

/// How the guest's CPUs spent a step, from a line "cpu STEP" and `/proc/stat`'s first line
/// before and after it: where the time of a step on a share goes (the guest busy in user
/// code, in its kernel, or idle waiting for the host).
fn cpu_split(line: &str) -> String {
    let f: Vec<&str> = line.split_whitespace().collect();
    let fields = |at: usize| -> Vec<f64> { f[at..].iter().take(8).filter_map(|v| v.parse().ok()).collect() };
    // "cpu STEP cpu user nice system idle iowait irq softirq steal ... cpu user ...".
    let Some(second) = f.iter().skip(3).position(|w| *w == "cpu").map(|p| p + 3) else { return line.into() };
    let (a, b) = (fields(3), fields(second + 1));
    if a.len() < 7 || b.len() < 7 {
        return line.into();
    }
    let d: Vec<f64> = b.iter().zip(&a).map(|(b, a)| b - a).collect();
    let total: f64 = d.iter().sum::<f64>().max(1.0);
    let pct = |v: f64| 100.0 * v / total;
    format!(
        "{}: guest CPUs {:.0}% user, {:.0}% system, {:.0}% interrupts, {:.0}% idle",
        f[1],
        pct(d[0] + d[1]),
        pct(d[2]),
        pct(d[5] + d[6]),
        pct(d[3] + d[4])
    )
}

/// Real projects' work after the file work, when the image has it ([`project_work`]): `npm
/// ci` of a small real project (express and lodash: 73 packages, 1,700 files) from a
/// local npm cache, and a Python test suite of 300 modules run twice (the first run writes
/// each module's bytecode next to it, the second reads it back).
const PROJECT_WORK: &str = r#"
cd /w || exit 1
if [ -d /npm-project ]; then
mkdir app && cp /npm-project/package.json /npm-project/package-lock.json app/
STEP=npm-ci t sh -c 'cd app && node /usr/lib/node_modules/npm/bin/npm-cli.js ci --offline --cache /npm-cache --no-audit --no-fund --ignore-scripts --loglevel=error'
tar xf /py.tar
STEP=python-tests-first t python3 -m unittest discover -q -s py/tests -t py
STEP=python-tests-again t python3 -m unittest discover -q -s py/tests -t py
fi
"#;
const PROJECT_STEPS: usize = 3;

/// An image for the file work: the probe, Debian's git with its libraries, and `/src.tar`, a
/// clone of a real repository (BERTH_BENCH_REPO, else pyenv's checkout if the machine has
/// one, else this project's). Made with `docker cp -` and `docker commit`, so Berth's own
/// archive and commit paths build it. Returns a line that describes the repository, and
/// how many steps the file work has (the real projects' steps are there only if the machine
/// could put them in).
fn file_work_image(docker: &dyn Fn(&[&str]) -> String, host: &str, probe: &str, staging: &Path) -> (String, usize) {
    let repo = std::env::var_os("BERTH_BENCH_REPO").map(PathBuf::from).unwrap_or_else(|| {
        let pyenv = PathBuf::from("/root/.pyenv");
        if pyenv.join(".git").exists() { pyenv } else { workspace() }
    });
    let clone = staging.join("clone/repo");
    let ok = |c: &mut Command| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(Command::new("git").args(["clone", "-q", "--no-local"]).arg(&repo).arg(&clone));
    let files = ok(Command::new("git").arg("-C").arg(&clone).arg("ls-files")).lines().count();
    let root = staging.join("root");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    ok(Command::new("tar").arg("-C").arg(clone.parent().unwrap()).arg("-cf").arg(root.join("src.tar")).arg("repo"));
    let size = std::fs::metadata(root.join("src.tar")).unwrap().len();
    copy_program(&root, Path::new("/usr/bin/git"));
    let (projects, steps) = match project_work(&root, staging) {
        Ok(what) => (what, FILE_STEPS + PROJECT_STEPS),
        Err(why) => {
            eprintln!("the real projects' steps are left out: {why}");
            (format!("no real projects ({why})"), FILE_STEPS)
        }
    };
    docker(&["create", "--name", "bench-files", probe, "true"]);
    let tar = Command::new("tar").arg("-C").arg(&root).args(["-cf", "-", "."]).output().unwrap();
    let mut cp = Command::new("docker")
        .args(["cp", "-", "bench-files:/"])
        .env("DOCKER_HOST", host)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    cp.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(cp.wait().unwrap().success(), "docker cp - bench-files:/");
    docker(&["commit", "bench-files", "bench-files:latest"]);
    docker(&["rm", "bench-files"]);
    let line = format!(
        "{} ({files} files, a {:.1} MiB tar with .git); {projects}",
        repo.display(),
        size as f64 / (1 << 20) as f64
    );
    (line, steps)
}

/// Copies the program at `bin` into `root` at the same path, with the libraries it loads.
fn copy_program(root: &Path, bin: &Path) {
    let dest = root.join(bin.strip_prefix("/").unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(bin, dest).unwrap();
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let Some(lib) = line.split_whitespace().find(|w| w.starts_with('/')) else { continue };
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(lib, dest).unwrap();
    }
}

/// Puts into `root` what [`PROJECT_WORK`] needs: Node.js with a self-contained npm (as
/// nodejs.org and NodeSource ship it; Debian splits npm into hundreds of packages), a small
/// real project and the npm cache that holds its packages (fetched once from the npm registry
/// into `target/bench-npm` and kept there), Debian's Python 3.11 with its standard library, and
/// `/py.tar`, a generated package of 300 modules with a test module each. Says what it put,
/// or why it could not.
fn project_work(root: &Path, staging: &Path) -> Result<String, String> {
    let node = which("node").ok_or("no `node` on PATH")?;
    let npm = which("npm")
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|cli| Some(cli.parent()?.parent()?.to_owned()))
        .filter(|d| d.join("node_modules").is_dir() && d.join("bin/npm-cli.js").exists())
        .ok_or("no self-contained npm (a package directory with its own node_modules)")?;
    let python = Path::new("/usr/bin/python3.11");
    let stdlib = Path::new("/usr/lib/python3.11");
    if !python.exists() || !stdlib.join("os.py").exists() {
        return Err("no /usr/bin/python3.11 with its standard library (Debian's python3.11)".into());
    }
    let run = |c: &mut Command| -> Result<(), String> {
        let out = c.output().map_err(|e| format!("{c:?}: {e}"))?;
        if out.status.success() { Ok(()) } else { Err(format!("{c:?}: {}", String::from_utf8_lossy(&out.stderr))) }
    };
    // The project and its cache, made once (the only step that needs the registry).
    let npm_dir = workspace().join("target/bench-npm");
    let project = npm_dir.join("project");
    if !project.join("package-lock.json").exists() {
        let _ = std::fs::remove_dir_all(&npm_dir);
        std::fs::create_dir_all(&project).unwrap();
        let manifest = r#"{"name":"bench-app","version":"1.0.0","private":true,"dependencies":{"express":"4.21.2","lodash":"4.17.21"}}"#;
        std::fs::write(project.join("package.json"), manifest).unwrap();
        eprintln!("fetching the npm project's packages into {} (once)", npm_dir.display());
        run(Command::new(&node).arg(npm.join("bin/npm-cli.js")).current_dir(&project).args([
            "install",
            "--cache",
            npm_dir.join("cache").to_str().unwrap(),
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            // The lockfile names where each package came from, so `npm ci --offline` needs
            // no registry metadata (a user's npmrc may leave that out).
            "--omit-lockfile-registry-resolved=false",
        ]))?;
        std::fs::remove_dir_all(project.join("node_modules")).unwrap();
    }
    copy_program(root, &node);
    for (from, to) in
        [(npm.as_path(), "usr/lib/node_modules/npm"), (&project, "npm-project"), (&npm_dir.join("cache"), "npm-cache")]
    {
        std::fs::create_dir_all(root.join(to).parent().unwrap()).unwrap();
        run(Command::new("cp").arg("-a").arg(from).arg(root.join(to)))?;
    }
    copy_program(root, python);
    std::os::unix::fs::symlink("python3.11", root.join("usr/bin/python3")).unwrap();
    run(Command::new("tar")
        .args(["-C", "/usr/lib", "--exclude=python3.11/test", "--exclude=python3.11/idlelib"])
        .args(["--exclude=python3.11/tkinter", "--exclude=python3.11/lib2to3", "--exclude=__pycache__"])
        .args(["-cf"])
        .arg(staging.join("stdlib.tar"))
        .arg("python3.11"))?;
    std::fs::create_dir_all(root.join("usr/lib")).unwrap();
    run(Command::new("tar").arg("-C").arg(root.join("usr/lib")).arg("-xf").arg(staging.join("stdlib.tar")))?;
    let py = staging.join("py/py");
    for dir in ["pkg", "tests"] {
        std::fs::create_dir_all(py.join(dir)).unwrap();
        std::fs::write(py.join(dir).join("__init__.py"), "").unwrap();
    }
    for i in 0..300 {
        let module = format!(
            "\"\"\"Module {i} of a generated package.\"\"\"\n\nimport math\n\n\nclass Shape{i}:\n    def __init__(self, side):\n        self.side = side\n\n    def area(self):\n        return self.side * self.side\n\n    def diagonal(self):\n        return math.sqrt(2) * self.side\n\n\ndef total(values):\n    return sum(v * {i} for v in values)\n\n\ndef words(text):\n    return sorted(set(text.split()))\n"
        );
        std::fs::write(py.join(format!("pkg/mod{i}.py")), module).unwrap();
        let test = format!(
            "import unittest\n\nfrom pkg import mod{i}\n\n\nclass Test{i}(unittest.TestCase):\n    def test_area(self):\n        self.assertEqual(mod{i}.Shape{i}(3).area(), 9)\n\n    def test_total(self):\n        self.assertEqual(mod{i}.total([1, 2]), 3 * {i})\n\n    def test_words(self):\n        self.assertEqual(mod{i}.words('b a b'), ['a', 'b'])\n"
        );
        std::fs::write(py.join(format!("tests/test_mod{i}.py")), test).unwrap();
    }
    run(Command::new("tar").arg("-C").arg(staging.join("py")).arg("-cf").arg(root.join("py.tar")).arg("py"))?;
    Ok("npm ci of express and lodash from a local cache; 300 Python modules' tests".into())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Section 5: the same file work on Berth's shared folder, on 9p, on virtiofs and on the
/// guest's disk, in one VM on Debian's generic kernel.
fn shares_side_by_side(rt: &tokio::runtime::Runtime) {
    let image = workspace().join("target/vm-image-bench-generic");
    let out = Command::new(workspace().join("vm-image/build.sh"))
        .arg(&image)
        .env("BERTH_AGENT", release("berth-agent"))
        .env("BERTH_GUEST_KERNEL", "generic")
        .output()
        .unwrap();
    assert!(out.status.success(), "vm-image/build.sh (generic kernel): {}", String::from_utf8_lossy(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let [ours, nine, vfs] = ["berth-share", "9p-share", "virtiofs-share"].map(|d| dir.path().join(d));
    for d in [&ours, &nine, &vfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let vfs_sock = dir.path().join("virtiofs.sock");
    // Debian's QEMU ships the C virtiofsd; cache=auto is its default and what libvirt uses.
    let mut virtiofsd = Command::new("/usr/lib/qemu/virtiofsd")
        .arg(format!("--socket-path={}", vfs_sock.display()))
        .args(["-o", &format!("source={}", vfs.display()), "-o", "cache=auto"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("/usr/lib/qemu/virtiofsd (Debian's qemu-system-common)");
    let start = Instant::now();
    while !vfs_sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "virtiofsd did not make its socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut cfg = config(dir.path(), &image);
    // The transport the daemon picks here (no vsock: the serial port); virtiofs needs the
    // guest's memory shared, which that transport does not set up itself.
    cfg.transport = Kind::Serial;
    let mem = format!("{}M", cfg.memory_mib);
    cfg.qemu_args = [
        "-object".into(),
        format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        "-numa".into(),
        "node,memdev=mem".into(),
        "-chardev".into(),
        format!("socket,id=vfs,path={}", vfs_sock.display()),
        "-device".into(),
        "vhost-user-fs-pci,chardev=vfs,tag=benchfs".into(),
        // Lima's 9p defaults: security_model=none, 9p2000.L, msize 128 KiB, cache=mmap.
        "-fsdev".into(),
        format!("local,id=p9,path={},security_model=none", nine.display()),
        "-device".into(),
        "virtio-9p-pci,fsdev=p9,mount_tag=bench9p".into(),
    ]
    .to_vec();
    let reg = berth_tests::registry().addr.clone();
    rt.block_on(async {
        let m = Machine::start(&cfg).await.expect("boot");
        let share = berth_core::forward::files::ShareSpec { path: ours.clone(), read_only: false };
        let server = berth_core::forward::files::FileServer::new(&[share]).unwrap();
        if let Some(mem) = &m.shared_memory {
            server.share_memory(mem.clone());
        }
        tokio::spawn(server.serve(m.transport.clone()));
        let sock = dir.path().join("docker.sock");
        let listener = berth_core::forward::socket::bind(&sock).await.unwrap();
        tokio::spawn(berth_core::forward::socket::serve(listener, m.transport.clone(), DOCKER_PORT));
        let host = format!("unix://{}", sock.display());
        let docker = |args: &[&str]| {
            let out = Command::new("docker").args(args).env("DOCKER_HOST", &host).output().unwrap();
            assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let probe = format!("{reg}/probe:latest");
        docker(&["pull", "-q", &probe]);
        let (repo, expected) = file_work_image(&docker, &host, &probe, &dir.path().join("staging"));
        // The share is mounted once the file server's hello reaches the agent.
        std::fs::write(ours.join("ready"), "").unwrap();
        let bind = format!("{}:/w", ours.display());
        let start = Instant::now();
        while docker(&["run", "--rm", "-v", &bind, &probe, "ls", "/w"]).trim() != "ready" {
            assert!(start.elapsed() < Duration::from_secs(60), "the shared folder is not mounted");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        std::fs::remove_file(ours.join("ready")).unwrap();
        let targets: [(&str, &[&str], &str); 4] = [
            ("Berth", &["-v", &bind], ""),
            ("9p", &[], "mkdir -p /w && mount -t 9p -o trans=virtio,version=9p2000.L,msize=131072,cache=mmap bench9p /w && "),
            ("virtiofs", &[], "mkdir -p /w && mount -t virtiofs benchfs /w && "),
            ("disk", &["-v", "benchvol:/w"], ""),
        ];
        // BERTH_BENCH_SHARES=Berth (or a list) runs only those, for quick turns while tuning.
        let only = std::env::var("BERTH_BENCH_SHARES").ok();
        let picked = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|n| n == name));
        let mut results: Vec<Vec<(String, f64)>> = Vec::new();
        for (name, args, mount) in targets.iter().filter(|t| picked(t.0)) {
            eprintln!("file work on {name}");
            let script = format!("{mount}{FILE_WORK}{PROJECT_WORK}");
            let mut run = vec!["run", "--rm", "--privileged"];
            run.extend(args.iter().copied());
            run.extend(["bench-files:latest", "sh", "-c", &script]);
            let out = docker(&run);
            // Where the work ran (the file system under /w), for the record.
            for l in out.lines().filter(|l| l.starts_with("mounted ")) {
                eprintln!("{name}: {l}");
            }
            for l in out.lines().filter(|l| l.starts_with("cpu ")) {
                eprintln!("{name}: {}", cpu_split(l));
            }
            let steps = out
                .lines()
                .filter_map(|l| {
                    let mut f = l.split_whitespace();
                    let (name, a, b) = (f.next()?, f.next()?.parse::<f64>().ok()?, f.next()?.parse::<f64>().ok()?);
                    Some((name.to_string(), (b - a) / 1e6))
                })
                .collect::<Vec<_>>();
            assert_eq!(steps.len(), expected, "the file work on {name} did not finish: {out}");
            results.push(steps);
        }
        if only.is_some() {
            assert!(!results.is_empty(), "BERTH_BENCH_SHARES names none of Berth, 9p, virtiofs, disk");
            println!("\n## Shared folders, only {}: ms", only.as_deref().unwrap_or_default());
            for (k, (step, _)) in results[0].iter().enumerate() {
                println!("| {step} | {} |", results.iter().map(|r| format!("{:.0}", r[k].1)).collect::<Vec<_>>().join(" | "));
            }
            m.stop(Duration::from_secs(60)).await;
            return;
        }
        println!("\n## Shared folders: the same file work in a container, ms (generic kernel, serial transport, TCG)");
        println!("Repository: {repo}. virtiofs: virtiofsd cache=auto. 9p: Lima's defaults.");
        println!("| step | Berth | 9p | virtiofs | disk | 9p/Berth | virtiofs/Berth | Berth/disk |");
        println!("|---|---|---|---|---|---|---|---|");
        for (k, (step, ours)) in results[0].iter().enumerate() {
            let (p9, vfs, disk) = (results[1][k].1, results[2][k].1, results[3][k].1);
            println!(
                "| {step} | {ours:.0} | {p9:.0} | {vfs:.0} | {disk:.0} | {:.2} | {:.2} | {:.2} |",
                p9 / ours,
                vfs / ours,
                ours / disk
            );
        }
        // The metadata-heavy steps and the real projects' steps, as one figure each: the
        // geometric mean of their ratios against 9p, virtiofs and the disk.
        let groups = [("Metadata steps (create .. git status", 2..FILE_STEPS), ("Real projects' steps (npm ci, Python tests", FILE_STEPS..expected)];
        for (what, steps) in groups.into_iter().filter(|(_, r)| !r.is_empty()) {
            let mean = |col: usize, f: &dyn Fn(f64, f64) -> f64| {
                let r: Vec<f64> = steps.clone().map(|k| f(results[0][k].1, results[col][k].1).ln()).collect();
                (r.iter().sum::<f64>() / r.len() as f64).exp()
            };
            println!(
                "{what}, geometric mean): Berth is {:.2}x as fast as 9p, {:.2}x as fast as virtiofs, and takes {:.2}x the disk's time",
                mean(1, &|b, o| o / b),
                mean(2, &|b, o| o / b),
                mean(3, &|b, o| b / o)
            );
        }
        m.stop(Duration::from_secs(60)).await;
    });
    let _ = virtiofsd.kill();
    let _ = virtiofsd.wait();
}
