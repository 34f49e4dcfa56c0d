//! Attach, logs, stdin, TTYs and exec through the docker CLI.

use std::process::Command;

use berth_tests::Agent;

/// Runs a docker command under a pseudo-terminal (script(1)) sized rows x cols.
fn in_terminal(a: &Agent, cmd: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", &format!("stty rows 33 cols 101; {cmd}"), "/dev/null"])
        .env("DOCKER_HOST", format!("unix://{}", a.socket.display()))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).replace('\r', "")
}

#[test]
fn stdin_and_tty() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let out = a.docker_stdin(&["run", "-i", "--rm", &img, "sh", "-c", "cat; echo done"], Some(b"line one\nline two\n"));
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "line one\nline two\ndone\n");
    let out = in_terminal(&a, &format!("docker run -it --rm {img} sh -c 'tty; stty size; exit 5'; echo rc=$?"));
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("33 101"), "{out}");
    assert!(out.contains("rc=5"), "{out}");
}

#[test]
fn logs_with_tail_timestamps_since_and_follow() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["run", "--name", "talker", &img, "sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; echo oops >&2"]);
    assert_eq!(a.ok(&["logs", "talker"]), "line1\nline2\nline3\nline4\nline5\n");
    let out = a.docker(&["logs", "talker"]);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // The tail counts lines of both streams together.
    let out = a.docker(&["logs", "--tail", "2", "talker"]);
    let (o, e) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert_eq!(o.lines().count() + e.lines().count(), 2, "{o}|{e}");
    assert!(o.ends_with("line5\n") && e == "oops\n" || o == "line4\nline5\n", "{o}|{e}");
    a.ok(&["run", "--name", "quiet", &img, "sh", "-c", "echo a; echo b"]);
    let ts = a.ok(&["logs", "-t", "--tail", "1", "quiet"]);
    let (stamp, rest) = ts.split_once(' ').unwrap();
    assert!(stamp.starts_with("20") && stamp.ends_with('Z') && stamp.contains('T'), "{ts}");
    assert_eq!(rest, "b\n");
    assert_eq!(a.ok(&["logs", "--since", "2099-01-01T00:00:00Z", "talker"]), "");
    // follow: sees new lines and ends when the container stops.
    a.ok(&["run", "-d", "--name", "ticker", &img, "sh", "-c", "for i in 1 2 3; do echo t$i; sleep 0.3; done"]);
    let out = a.ok(&["logs", "-f", "ticker"]);
    assert_eq!(out, "t1\nt2\nt3\n");
    // attach to a running container gets its live output.
    a.ok(&["run", "-d", "--name", "late", &img, "sh", "-c", "sleep 1; echo after-attach"]);
    assert_eq!(a.ok(&["attach", "late"]), "after-attach\n");
}

#[test]
fn exec_with_env_user_workdir_and_tty() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["run", "-d", "--name", "box", "-e", "BASE=1", &img, "sleep", "60"]);
    let out = a.ok(&[
        "exec",
        "-e",
        "X=2",
        "-u",
        "app",
        "-w",
        "/home/app",
        "box",
        "sh",
        "-c",
        "echo $BASE$X; id -un; pwd; echo $$",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..3], ["12", "app", "/home/app"]);
    assert_ne!(lines[3], "1");
    let out = a.docker(&["exec", "box", "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9));
    let out = a.docker_stdin(&["exec", "-i", "box", "cat"], Some(b"via stdin\n"));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via stdin\n");
    let out = in_terminal(&a, "docker exec -it box sh -c 'tty; stty size'");
    assert!(out.contains("/dev/pts/") && out.contains("33 101"), "{out}");
    let out = a.docker(&["exec", "box", "nope"]);
    assert_eq!(out.status.code(), Some(127));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("executable file not found"), "{text}");
    a.ok(&["stop", "-t", "0", "box"]);
    let (_, err) = a.fails(&["exec", "box", "true"]);
    assert!(err.contains("is not running"), "{err}");
}

/// An attached client gets every byte, however fast the container writes and however slowly
/// the client reads (the output waits for it, as with dockerd).
#[test]
fn attached_output_is_lossless() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let out = a.docker(&["run", "--rm", &img, "seq", "1", "300000"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 300_000);
    assert_eq!(lines.last(), Some(&"300000"));
    // A client that reads slowly: a pipe through a reader that sleeps at the start.
    let slow = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("docker run --rm {img} sh -c 'seq 1 500000; seq 1 500000 >&2' 2>&1 | (sleep 2; wc -l)"))
        .env("DOCKER_HOST", format!("unix://{}", a.socket.display()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&slow.stdout).trim(), "1000000");
}
