//! Transports without a VM: the multiplexed session (what the virtio-serial port and hybrid
//! vsock carry) against a real agent, through the conformance suite and through the docker CLI
//! via a forwarded socket. The VM test runs the same suite over hybrid vsock and the real
//! virtio-serial port.

use std::sync::Arc;

use berth_core::transport::Transport;
use berth_core::transport::mux::MuxTransport;
use berth_tests::Agent;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn a_mux_session_passes_the_conformance_suite() {
    let a = Agent::start();
    rt().block_on(async {
        let t = MuxTransport::serial(a.mux_socket());
        berth_tests::conformance::run(&t).await;
        // A second session on the same agent (as after a daemon restart) works too.
        berth_tests::conformance::run(&MuxTransport::serial(a.mux_socket())).await;
    });
}

#[test]
fn docker_cli_through_a_forwarded_socket_over_mux() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let rt = rt();
    let forwarded = a.dir.path().join("forwarded.sock");
    let listener = rt.block_on(berth_core::forward::socket::bind(&forwarded)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&forwarded).unwrap().permissions().mode() & 0o777, 0o600);
    let t: Arc<dyn Transport> = Arc::new(MuxTransport::serial(a.mux_socket()));
    rt.spawn(berth_core::forward::socket::serve(listener, t, berth_protocol::DOCKER_PORT));
    let host = format!("unix://{}", forwarded.display());
    let docker = |args: &[&str], stdin: Option<&[u8]>| {
        let mut all = vec!["-H", &host];
        all.extend_from_slice(args);
        a.docker_stdin(&all, stdin)
    };
    // stdin's end reaches the container through the forwarder (a half-close over the mux).
    let out = docker(&["run", "--rm", "-i", &img, "sh", "-c", "cat; echo done"], Some(b"hello\n"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\ndone\n");
    // Attach output, exit codes and exec through it too.
    let out = docker(&["run", "--rm", &img, "sh", "-c", "echo out; echo err >&2; exit 3"], None);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let out = docker(&["run", "-d", "--name", "fwd", &img, "sleep", "600"], None);
    assert!(out.status.success());
    let out = docker(&["exec", "-i", "fwd", "wc", "-c"], Some(&vec![b'x'; 100_000]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "100000");
    // A TTY (run -it, exec -it, with the terminal's size) through it.
    let in_terminal = |cmd: &str| {
        let out = std::process::Command::new("script")
            .args(["-qec", &format!("stty rows 33 cols 101; {cmd}"), "/dev/null"])
            .env("DOCKER_HOST", &host)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    };
    let out = in_terminal(&format!("docker run -it --rm {img} sh -c 'tty; stty size; exit 5'; echo rc=$?"));
    assert!(out.contains("/dev/pts/0") && out.contains("33 101") && out.contains("rc=5"), "{out}");
    let out = in_terminal("docker exec -it fwd sh -c 'tty; stty size'");
    assert!(out.contains("/dev/pts/") && out.contains("33 101"), "{out}");
    // Followed logs stream until the container ends.
    let out = docker(&["run", "-d", &img, "sh", "-c", "echo a; sleep 1; echo b"], None);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let out = docker(&["logs", "-f", &id], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
    // A socket that is served already is not taken over.
    let err = rt.block_on(berth_core::forward::socket::bind(&forwarded)).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    a.ok(&["rm", "-f", "fwd"]);
}
