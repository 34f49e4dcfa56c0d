//! Container lifecycle and isolation through the docker CLI.

use berth_tests::{Agent, Docker, RefEngine, attach_typing, eventually, http_on, upgraded};
use std::io::{Read, Write};

/// The actions of every event of `container` so far.
fn actions(a: &Agent, container: &str) -> String {
    let until = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    let filter = format!("container={container}");
    a.ok(&[
        "events",
        "--since",
        "1970-01-01",
        "--until",
        &until.to_string(),
        "--filter",
        &filter,
        "--format",
        "{{.Action}}",
    ])
}

fn inspect(a: &Agent, name: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["inspect", name])).unwrap();
    v[0].clone()
}

#[test]
fn run_reports_output_and_exit_codes() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    assert_eq!(a.ok(&["run", "--rm", &img, "echo", "hello"]), "hello\n");
    let out = a.docker(&["run", "--rm", &img, "sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    let (code, err) = a.fails(&["run", "--rm", &img, "no-such-command"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found in $PATH"), "{err}");
    // A file that is not executable: dockerd's 126 (the command is there, it cannot run).
    let (code, err) = a.fails(&["run", "--rm", &img, "/etc/passwd"]);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("permission denied"), "{err}");
    // --rm removed everything.
    assert!(a.ok(&["ps", "-aq"]).trim().is_empty());
}

#[test]
fn config_merges_image_and_request_like_dockerd() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let out = a.ok(&[
        "run",
        "--rm",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "app",
        "-h",
        "myhost",
        &img,
        "sh",
        "-c",
        "echo $FOO; pwd; id; hostname; echo $HOME; echo $PATH",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "bar");
    assert_eq!(lines[1], "/tmp");
    assert_eq!(lines[2], "uid=1000(app) gid=1000(app) groups=50(staff)");
    assert_eq!(lines[3], "myhost");
    assert_eq!(lines[4], "/home/app");
    assert!(lines[5].contains("/bin"));
    assert_eq!(a.ok(&["run", "--rm", "-u", "1234:50", &img, "id"]), "uid=1234 gid=50(staff)\n");
    assert_eq!(a.ok(&["run", "--rm", "--entrypoint", "echo", &img, "a", "b"]), "a b\n");
    let (_, err) = a.fails(&["run", "--rm", "-u", "ghost", &img, "true"]);
    assert!(err.contains("unable to find user ghost"), "{err}");
}

#[test]
fn namespaces_isolate_each_container() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let out = a.ok(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "echo $$; ps -o pid | wc -l; ls /sys/class/net | tr '\\n' ' '; echo; cat /proc/self/cgroup | head -1; hostname",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "not PID 1 in its own PID namespace: {out}");
    assert!(lines[1].trim().parse::<i32>().unwrap() <= 4, "sees other processes: {out}");
    assert_eq!(lines[2], "eth0 lo ", "network namespace is not the container's own: {out}");
    assert!(lines[3].ends_with(":/"), "cgroup namespace not private: {out}");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(lines[4], host.trim());
    // Two containers of one image at once, each with its own files.
    a.ok(&["run", "-d", "--name", "one", &img, "sh", "-c", "echo 1 > /mine; sleep 60"]);
    a.ok(&["run", "-d", "--name", "two", &img, "sh", "-c", "echo 2 > /mine; sleep 60"]);
    assert!(eventually(10, || a.docker(&["exec", "one", "cat", "/mine"]).stdout == b"1\n"));
    assert!(eventually(10, || a.docker(&["exec", "two", "cat", "/mine"]).stdout == b"2\n"));
    // Device and proc hygiene.
    let out = a.ok(&[
        "exec",
        "one",
        "sh",
        "-c",
        "ls /dev | sort | tr '\\n' ' '; touch /sys/x 2>&1; cat /proc/timer_list | wc -c",
    ]);
    assert!(out.contains("null") && out.contains("pts") && out.contains("shm") && !out.contains("sda"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    assert!(out.trim_end().ends_with("\n0") || out.trim_end().ends_with(" 0"), "/proc/timer_list is not masked: {out}");
    a.ok(&["rm", "-f", "one", "two"]);
    // --network host and none.
    let out = a.ok(&["run", "--rm", "--network", "host", &img, "ls", "/sys/class/net"]);
    assert!(out.lines().count() >= 1);
    assert_eq!(a.ok(&["run", "--rm", "--network", "none", &img, "ls", "/sys/class/net"]), "lo\n");
}

/// `--pid host` and `--pid container:NAME`, as dockerd has them: the engine's processes (the
/// VM's, in the VM: `docker run --privileged --pid host ... nsenter -t 1` is how users reach
/// it), or another running container's; what outlives the container's first process there
/// goes with it; a bad mode or a stopped container is refused.
#[test]
fn pid_namespaces_can_be_shared() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    // The test and a natively run engine share the machine's PID namespace.
    let init = std::fs::read_to_string("/proc/1/comm").unwrap();
    assert_eq!(a.ok(&["run", "--rm", "--pid", "host", &img, "cat", "/proc/1/comm"]), init);
    let out = a.ok(&["run", "--rm", "--pid", "host", &img, "sh", "-c", "sleep 300 & echo $!"]);
    let left: i32 = out.trim().parse().unwrap();
    assert!(left > 1, "{out}");
    // SAFETY: kill(2) with signal 0 only checks.
    assert!(eventually(10, || unsafe { libc::kill(left, 0) } != 0), "a process the container left is still running");

    a.ok(&["run", "-d", "--name", "target", &img, "sleep", "300"]);
    let out =
        a.ok(&["run", "--rm", "--pid", "container:target", &img, "sh", "-c", "cat /proc/1/cmdline; echo; ps -o comm"]);
    assert!(out.starts_with("sleep"), "not in the other container's PID namespace: {out}");
    a.ok(&["create", "--name", "joiner", "--pid", "container:target", &img, "true"]);
    assert_eq!(inspect(&a, "joiner")["HostConfig"]["PidMode"], "container:target");
    a.ok(&["stop", "-t", "0", "target"]);
    let (_, err) = a.fails(&["start", "joiner"]);
    assert!(err.contains("cannot join PID of a non running container: target"), "{err}");
    let body = format!(r#"{{"Image":"{img}","HostConfig":{{"PidMode":"bogus"}}}}"#);
    let (code, text) = a.http("POST", "/containers/create", Some(&body));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("invalid PID mode: bogus"), "{text}");
    a.ok(&["rm", "-f", "target", "joiner"]);
}

#[test]
fn lifecycle_verbs() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let id = a.ok(&[
        "create",
        "--name",
        "c1",
        "-l",
        "tier=web",
        &img,
        "sh",
        "-c",
        "trap 'exit 42' TERM; while true; do sleep 0.1; done",
    ]);
    assert_eq!(id.trim().len(), 64);
    assert_eq!(inspect(&a, "c1")["State"]["Status"], "created");
    a.ok(&["start", "c1"]);
    let st = inspect(&a, "c1");
    assert_eq!(st["State"]["Running"], true);
    assert!(st["State"]["Pid"].as_i64().unwrap() > 0);
    assert_eq!(st["Name"], "/c1");
    // ps filters
    assert_eq!(a.ok(&["ps", "--filter", "label=tier=web", "--format", "{{.Names}}"]), "c1\n");
    assert_eq!(a.ok(&["ps", "--filter", "name=c1", "--filter", "status=running", "-q"]).trim().len(), 12);
    assert!(a.ok(&["ps", "--filter", "label=tier=db", "-q"]).trim().is_empty());
    // Stop sends SIGTERM: the trap exits 42.
    a.ok(&["stop", "c1"]);
    let st = inspect(&a, "c1");
    assert_eq!(st["State"]["Status"], "exited");
    assert_eq!(st["State"]["ExitCode"], 42);
    assert!(a.ok(&["ps", "-q"]).trim().is_empty());
    assert!(a.ok(&["ps", "-a", "--filter", "status=exited", "--format", "{{.Status}}"]).starts_with("Exited (42)"));
    // Stop timeout then SIGKILL for a process that ignores SIGTERM.
    a.ok(&["run", "-d", "--name", "stubborn", &img, "sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]);
    a.ok(&["stop", "-t", "1", "stubborn"]);
    assert_eq!(inspect(&a, "stubborn")["State"]["ExitCode"], 137);
    // restart, kill with a signal, wait
    a.ok(&["restart", "c1"]);
    assert_eq!(inspect(&a, "c1")["State"]["Running"], true);
    a.ok(&["kill", "-s", "TERM", "c1"]);
    assert_eq!(a.ok(&["wait", "c1"]).trim(), "42");
    // SIGKILL answers once the exit is recorded, as dockerd's does: the client's next call
    // finds the container stopped (`docker kill x && docker rm x`).
    // An inspect sent right behind the kill on the same connection (natively the CLI's next
    // process comes too late to see the difference).
    for i in 0..3 {
        let name = format!("killed{i}");
        a.ok(&["run", "-d", "--name", &name, &img, "sleep", "1000"]);
        let mut conn = std::os::unix::net::UnixStream::connect(&a.socket).unwrap();
        let requests = format!(
            "POST /containers/{name}/kill HTTP/1.1\r\nHost: berth\r\nContent-Length: 0\r\n\r\n\
             GET /containers/{name}/json HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n"
        );
        conn.write_all(requests.as_bytes()).unwrap();
        let mut answers = String::new();
        conn.read_to_string(&mut answers).unwrap();
        assert!(answers.starts_with("HTTP/1.1 204"), "{answers}");
        let inspected = answers.rsplit("\r\n\r\n").next().unwrap_or_default();
        assert!(inspected.contains(r#""Running":false"#), "running right after SIGKILL: {inspected}");
        assert_eq!(inspect(&a, &name)["State"]["ExitCode"], 137);
        a.ok(&["rm", &name]);
    }
    a.ok(&["run", "-d", "--name", "killed", &img, "sleep", "1000"]);
    a.ok(&["kill", "killed"]);
    a.ok(&["rm", "killed"]);
    // rename, rm, rm -f
    a.ok(&["rename", "c1", "c2"]);
    assert_eq!(inspect(&a, "c2")["Name"], "/c2");
    a.ok(&["start", "c2"]);
    let (_, err) = a.fails(&["rm", "c2"]);
    assert!(err.contains("container is running"), "{err}");
    a.ok(&["rm", "-f", "c2", "stubborn"]);
    assert!(a.ok(&["ps", "-aq"]).trim().is_empty());
}

#[test]
fn restart_policy_and_limits() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["run", "-d", "--name", "flaky", "--restart", "on-failure:2", &img, "sh", "-c", "exit 3"]);
    assert!(eventually(20, || inspect(&a, "flaky")["RestartCount"] == 2
        && inspect(&a, "flaky")["State"]["Status"] == "exited"));
    assert_eq!(inspect(&a, "flaky")["State"]["ExitCode"], 3);
    // Limits land in the container's cgroup (v1 here, v2 in the VM).
    let id = a.ok(&["run", "-d", "-m", "64m", "--pids-limit", "30", "--cpus", "0.5", &img, "sleep", "30"]);
    let id = id.trim();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let found = |file: &str, want: &str| {
        let mut stack = vec![std::path::PathBuf::from("/sys/fs/cgroup")];
        while let Some(d) = stack.pop() {
            if d.ends_with(id) && std::fs::read_to_string(d.join(file)).is_ok_and(|s| s.trim() == want) {
                return true;
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
            }
        }
        false
    };
    if v2 {
        assert!(found("memory.max", "67108864"));
        assert!(found("pids.max", "30"));
        assert!(found("cpu.max", "50000 100000"));
    } else {
        assert!(found("memory.limit_in_bytes", "67108864"));
        assert!(found("pids.max", "30"));
        assert!(found("cpu.cfs_quota_us", "50000"));
    }
    // The pids limit holds inside.
    let out = a.docker(&[
        "run",
        "--rm",
        "--pids-limit",
        "5",
        &img,
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do sleep 5 & done; wait",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("can't fork") || !out.status.success(), "{out:?}");
    a.ok(&["rm", "-f", id]);
}

#[test]
fn engine_restart_finds_everything_again() {
    let mut a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["volume", "create", "keep"]);
    a.ok(&["run", "--name", "writer", "-v", "keep:/data", &img, "sh", "-c", "echo persisted > /data/f; sync"]);
    a.ok(&["run", "-d", "--name", "runner", &img, "sleep", "1000"]);
    a.restart();
    // Clean shutdown stopped the runner and recorded it.
    let st = inspect(&a, "runner");
    assert_eq!(st["State"]["Status"], "exited", "{st}");
    assert!(a.ok(&["images", "-q"]).trim().len() == 12);
    assert_eq!(a.ok(&["run", "--rm", "-v", "keep:/data", &img, "cat", "/data/f"]), "persisted\n");
    assert!(a.ok(&["ps", "-a", "--format", "{{.Names}}"]).contains("writer"));
    // A crash (SIGKILL of the engine): the container's process dies with it and is found exited.
    a.ok(&["start", "runner"]);
    a.crash_and_restart();
    assert_eq!(inspect(&a, "runner")["State"]["Status"], "exited");
    assert!(
        !std::process::Command::new("pgrep").args(["-f", "sleep 1000"]).status().unwrap().success(),
        "container process outlived the engine"
    );
    assert_eq!(a.ok(&["run", "--rm", "-v", "keep:/data", &img, "cat", "/data/f"]), "persisted\n");
}

#[test]
fn events_report_the_lifecycle() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 1;
    assert_eq!(
        a.docker(&["run", "--rm", "--name", "evented", "-l", "k=v", &img, "sh", "-c", "exit 3"]).status.code(),
        Some(3)
    );
    a.ok(&["volume", "create", "evvol"]);
    let until = since + 120;
    let out = a.ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1).to_string(),
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}} {{.Actor.Attributes.exitCode}}",
    ]);
    let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches(" <no value>")).collect();
    for want in
        ["container create evented", "container start evented", "container die evented 3", "container destroy evented"]
    {
        assert!(lines.contains(&want), "missing {want:?} in {out}");
    }
    assert!(out.contains("volume create"), "{out}");
    let filtered = a.ok(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.min(since + 3).to_string(),
        "--filter",
        "label=k=v",
        "--filter",
        "event=die",
        "--format",
        "{{.Action}}",
    ]);
    assert_eq!(filtered.trim(), "die", "{filtered}");
}

#[test]
fn stats_and_top_read_the_containers_cgroup() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        "-m",
        "64m",
        "--pids-limit",
        "50",
        &img,
        "sh",
        "-c",
        "while true; do :; done",
    ]);
    let out = a.ok(&["stats", "--no-stream", "--format", "{{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.PIDs}}", "busy"]);
    let f: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(f[0], "busy", "{out}");
    let cpu: f64 = f[1].trim_end_matches('%').parse().unwrap();
    assert!(cpu > 20.0, "a busy loop should show CPU use: {out}");
    assert!(out.contains("/ 64MiB"), "the memory limit is the cgroup's: {out}");
    assert_eq!(f.last().copied(), Some("1"), "{out}");
    let top = a.ok(&["top", "busy"]);
    assert!(top.lines().next().unwrap().contains("PID") && top.contains("while true"), "{top}");
    a.ok(&["stop", "-t", "0", "busy"]);
    let (_, err) = a.fails(&["top", "busy"]);
    assert!(err.contains("is not running"), "{err}");
}

#[test]
fn pause_update_and_diff() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    // A counter that stops while paused.
    a.ok(&[
        "run",
        "-d",
        "--name",
        "ticker",
        &img,
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /tick; sleep 0.05; done",
    ]);
    assert!(eventually(10, || a.docker(&["exec", "ticker", "cat", "/tick"]).status.success()));
    a.ok(&["pause", "ticker"]);
    let st = inspect(&a, "ticker");
    assert_eq!((st["State"]["Status"].as_str(), st["State"]["Paused"].as_bool()), (Some("paused"), Some(true)));
    assert!(a.ok(&["ps", "--format", "{{.Status}}"]).contains("(Paused)"));
    let (_, err) = a.fails(&["exec", "ticker", "true"]);
    assert!(err.contains("is paused, unpause the container before exec"), "{err}");
    let (_, err) = a.fails(&["pause", "ticker"]);
    assert!(err.contains("is already paused"), "{err}");
    // Frozen: the file does not move (read through the archive API, which needs no exec).
    let dir = tempfile::tempdir().unwrap();
    let read = |name: &str| {
        let to = dir.path().join(name);
        a.ok(&["cp", "ticker:/tick", to.to_str().unwrap()]);
        std::fs::read_to_string(to).unwrap()
    };
    let first = read("a");
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(read("b"), first, "a paused container kept running");
    a.ok(&["unpause", "ticker"]);
    assert!(eventually(10, || read("c") != first), "unpause did not resume it");
    assert_eq!(inspect(&a, "ticker")["State"]["Status"], "running");
    // A paused container stops (thawed to take its signal).
    a.ok(&["pause", "ticker"]);
    a.ok(&["stop", "-t", "1", "ticker"]);
    assert_eq!(inspect(&a, "ticker")["State"]["Status"], "exited");
    assert_eq!(inspect(&a, "ticker")["State"]["Paused"], false);

    // update: limits reach the running container's cgroup; the restart policy is kept.
    a.ok(&["run", "-d", "--name", "limited", "-m", "64m", &img, "sleep", "300"]);
    a.ok(&[
        "update",
        "--memory",
        "96m",
        "--memory-swap",
        "192m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "50",
        "--restart",
        "on-failure:3",
        "limited",
    ]);
    let hc = &inspect(&a, "limited")["HostConfig"];
    assert_eq!(hc["Memory"], 96 << 20);
    assert_eq!(hc["NanoCpus"], 500_000_000);
    assert_eq!(hc["PidsLimit"], 50);
    assert_eq!(hc["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(hc["RestartPolicy"]["MaximumRetryCount"], 3);
    let stats = a.ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", "limited"]);
    assert!(stats.contains("96MiB"), "the cgroup kept its old limit: {stats}");
    let (_, err) = a.fails(&["update", "--memory", "1m", "limited"]);
    assert!(err.contains("Minimum memory limit allowed is 6MB"), "{err}");

    // diff: added, changed and deleted paths, as docker diff prints them.
    a.ok(&[
        "run",
        "--name",
        "changer",
        &img,
        "sh",
        "-c",
        "mkdir /made; echo x > /made/f; echo y >> /etc/hostname.new; rm /etc/group; touch /bin/busybox",
    ]);
    let diff = a.ok(&["diff", "changer"]);
    for want in ["A /made", "A /made/f", "D /etc/group", "C /etc", "C /bin", "C /bin/busybox"] {
        assert!(diff.lines().any(|l| l == want), "{want} in:\n{diff}");
    }
    // Where the changes are, as inspect's GraphDriver says: the writable layer holds them, and
    // the image's top layer is one of the lower ones.
    let data = &inspect(&a, "changer")["GraphDriver"]["Data"];
    let upper = std::path::Path::new(data["UpperDir"].as_str().expect("UpperDir"));
    assert_eq!(std::fs::read_to_string(upper.join("made/f")).unwrap(), "x\n", "{data}");
    let image: serde_json::Value = serde_json::from_str(&a.ok(&["image", "inspect", &img])).unwrap();
    let top = image[0]["GraphDriver"]["Data"]["UpperDir"].as_str().expect("the image's UpperDir");
    assert!(std::path::Path::new(top).join("bin").is_dir(), "{top}");
    assert!(data["LowerDir"].as_str().unwrap().split(':').any(|d| d == top), "{data}");

    // Swarm endpoints answer as on an engine that is not a swarm manager.
    let (status, body) = a.http("GET", "/services", None);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("This node is not a swarm manager"), "{body}");
    let (status, body) = a.http("GET", "/no/such/endpoint", None);
    assert_eq!(status, 404, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["message"].is_string()), "{body}");
}

#[test]
fn log_drivers_as_dockerd_has_them() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["run", "--name", "plain", &img, "echo", "kept"]);
    let lc = &inspect(&a, "plain")["HostConfig"]["LogConfig"];
    assert_eq!(lc["Type"], "json-file", "{lc}");
    assert_eq!(a.ok(&["logs", "plain"]), "kept\n");
    // none: the output still reaches an attached client, nothing is kept.
    assert_eq!(a.ok(&["run", "--name", "quiet", "--log-driver", "none", &img, "echo", "live"]), "live\n");
    assert_eq!(inspect(&a, "quiet")["HostConfig"]["LogConfig"]["Type"], "none");
    let (_, err) = a.fails(&["logs", "quiet"]);
    assert!(err.contains("configured logging driver does not support reading"), "{err}");
    a.ok(&["run", "--name", "local", "--log-driver", "local", "--log-opt", "max-size=10m", &img, "echo", "local"]);
    assert_eq!(a.ok(&["logs", "local"]), "local\n");
    let (_, err) = a.fails(&["run", "--log-driver", "nosuch", &img, "true"]);
    assert!(err.contains("logger: no log driver named 'nosuch' is registered"), "{err}");
    let (_, err) = a.fails(&["run", "--log-opt", "bogus=1", &img, "true"]);
    assert!(err.contains("unknown log opt 'bogus' for json-file log driver"), "{err}");
}

#[test]
fn health_checks_run_and_report() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    // Healthy once the file exists; the check counts its runs.
    a.ok(&[
        "run",
        "-d",
        "--name",
        "checked",
        "--health-cmd",
        "echo probe >> /runs; test -e /ready",
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        &img,
        "sh",
        "-c",
        "sleep 1; touch /ready; sleep 300",
    ]);
    let health = |name: &str| inspect(&a, name)["State"]["Health"].clone();
    assert!(eventually(20, || health("checked")["Status"] == "healthy"), "{}", health("checked"));
    let h = health("checked");
    assert!(h["Log"].as_array().is_some_and(|l| !l.is_empty() && l.len() <= 5), "{h}");
    assert_eq!(h["FailingStreak"], 0);
    assert!(a.ok(&["ps", "--format", "{{.Status}}"]).contains("(healthy)"));
    // Failing twice in a row: unhealthy, with the probe's output and exit code kept.
    a.ok(&["exec", "checked", "rm", "/ready"]);
    assert!(eventually(20, || health("checked")["Status"] == "unhealthy"), "{}", health("checked"));
    let last = health("checked")["Log"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["ExitCode"], 1, "{last}");
    // The image's check comes with it; NONE turns it off; events tell each change.
    a.ok(&["run", "-d", "--name", "off", "--no-healthcheck", &img, "sleep", "300"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(health("off").is_null(), "{}", health("off"));
    let events = actions(&a, "checked");
    assert!(events.contains("health_status: healthy") && events.contains("health_status: unhealthy"), "{events}");
}

#[test]
fn oom_runtime_mac_and_links() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    // The kernel's OOM killer: exit 137, State.OOMKilled, an oom event.
    let out = a.docker(&[
        "run",
        "--name",
        "hog",
        "-m",
        "16m",
        "--memory-swap",
        "16m",
        &img,
        "sh",
        "-c",
        "head -c 200m /dev/zero | tail",
    ]);
    assert_eq!(out.status.code(), Some(137), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(inspect(&a, "hog")["State"]["OOMKilled"], true);
    let events = actions(&a, "hog");
    assert!(events.lines().any(|l| l == "oom"), "{events}");
    a.ok(&["run", "--name", "fine", &img, "true"]);
    assert_eq!(inspect(&a, "fine")["State"]["OOMKilled"], false);
    // --runtime: runc is the one there is.
    assert_eq!(inspect(&a, "fine")["HostConfig"]["Runtime"], "runc");
    let (_, err) = a.fails(&["run", "--runtime", "kata", &img, "true"]);
    assert!(err.contains("unknown or invalid runtime name: kata"), "{err}");
    // --mac-address reaches eth0 and inspect.
    let mac = a.ok(&["run", "--rm", "--mac-address", "02:42:de:ad:be:ef", &img, "cat", "/sys/class/net/eth0/address"]);
    assert_eq!(mac.trim(), "02:42:de:ad:be:ef");
    let (_, err) = a.fails(&["run", "--rm", "--mac-address", "nonsense", &img, "true"]);
    assert!(err.contains("nonsense"), "{err}");
    // --link: the name in /etc/hosts and dockerd's variables.
    a.ok(&["run", "-d", "--name", "db", "-e", "SECRET=s3", "--expose", "5432", &img, "sleep", "300"]);
    let ip = a.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "db"]).trim().to_owned();
    let seen = a.ok(&[
        "run",
        "--rm",
        "--name",
        "web",
        "--link",
        "db:database",
        &img,
        "sh",
        "-c",
        "grep database /etc/hosts; env | sort",
    ]);
    assert!(
        seen.lines().next().is_some_and(|l| l.starts_with(&ip) && l.contains("database") && l.contains(" db")),
        "{seen}"
    );
    for want in [
        format!("DATABASE_PORT=tcp://{ip}:5432"),
        format!("DATABASE_PORT_5432_TCP_ADDR={ip}"),
        "DATABASE_PORT_5432_TCP_PORT=5432".to_owned(),
        "DATABASE_ENV_SECRET=s3".to_owned(),
        "DATABASE_NAME=/web/database".to_owned(),
    ] {
        assert!(seen.lines().any(|l| l == want), "{want} in:\n{seen}");
    }
    a.ok(&["stop", "-t", "0", "db"]);
    let (_, err) = a.fails(&["run", "--rm", "--link", "db", &img, "true"]);
    assert!(err.contains("Cannot link to a non running container"), "{err}");
}

#[test]
fn prune_filters_as_dockerd_takes_them() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["create", "--name", "keep-me", "--label", "keep=yes", &img, "true"]);
    a.ok(&["create", "--name", "old-one", "--label", "team=a", &img, "true"]);
    a.ok(&["create", "--name", "other", &img, "true"]);
    // until: nothing is older than an hour ago.
    let out = a.ok(&["container", "prune", "-f", "--filter", "until=1h"]);
    assert!(!out.contains(&a.ok(&["inspect", "-f", "{{.Id}}", "other"]).trim().to_owned()), "{out}");
    assert_eq!(a.ok(&["ps", "-aq"]).lines().count(), 3);
    // label and label!.
    a.ok(&["container", "prune", "-f", "--filter", "label=team=a"]);
    let names = a.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!names.contains("old-one") && names.contains("other"), "{names}");
    a.ok(&["container", "prune", "-f", "--filter", "label!=keep"]);
    assert_eq!(a.ok(&["ps", "-a", "--format", "{{.Names}}"]).trim(), "keep-me");
    let (_, err) = a.fails(&["container", "prune", "-f", "--filter", "bogus=1"]);
    assert!(err.contains("Invalid filter 'bogus'"), "{err}");
    // Volumes and networks by label; images by until (the fixture is older than now+1s).
    a.ok(&["volume", "create", "--label", "tmp=1", "v-tmp"]);
    a.ok(&["volume", "create", "v-kept"]);
    a.ok(&["volume", "prune", "-f", "--filter", "all=true", "--filter", "label=tmp"]);
    let vols = a.ok(&["volume", "ls", "-q"]);
    assert!(!vols.contains("v-tmp") && vols.contains("v-kept"), "{vols}");
    a.ok(&["network", "create", "--label", "tmp=1", "n-tmp"]);
    a.ok(&["network", "create", "n-kept"]);
    a.ok(&["network", "prune", "-f", "--filter", "label=tmp"]);
    let nets = a.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.contains("n-tmp") && nets.contains("n-kept"), "{nets}");
    a.ok(&["network", "rm", "n-kept"]);
    a.ok(&["rm", "keep-me"]);
    a.ok(&["image", "prune", "-af", "--filter", "until=2000-01-01"]);
    assert!(!a.ok(&["images", "-q"]).trim().is_empty(), "until kept nothing back");
}

#[test]
fn json_file_logs_rotate_at_max_size() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    // 3 files of about 4 KiB at most: the oldest lines go, the newest stay, in order.
    a.ok(&[
        "run",
        "--name",
        "chatty",
        "--log-opt",
        "max-size=4k",
        "--log-opt",
        "max-file=3",
        &img,
        "sh",
        "-c",
        "seq 1 3000",
    ]);
    let logs = a.ok(&["logs", "chatty"]);
    let lines: Vec<u32> = logs.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(lines.last(), Some(&3000));
    assert!(lines.len() < 1500 && lines.len() > 100, "{} lines kept", lines.len());
    assert!(lines.windows(2).all(|w| w[1] == w[0] + 1), "lines out of order or missing within what is kept");
    let dir = a.data_root().join("containers").join(a.ok(&["inspect", "-f", "{{.Id}}", "chatty"]).trim());
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("-json.log"))
        .count();
    assert_eq!(files, 3);
    let (_, err) = a.fails(&["run", "--log-opt", "max-size=lots", &img, "true"]);
    assert!(err.contains("invalid max-size: lots"), "{err}");
    // Taken without max-size, as dockerd takes it (nothing rotates).
    a.ok(&["run", "--rm", "--log-opt", "max-file=2", &img, "true"]);
}

/// Corners dockerd 20.10 has, side by side with it on the same requests: supplementary groups
/// (`--group-add` by gid and by name, for the container's process and for an exec as another
/// user; an unknown name refused), a log's `max-file` without `max-size`, exec output framed
/// or not as the start request (not the exec's creation) asks, legacy links shown and removed,
/// network names, volume drivers, filters and prunes, a load's error, and a container waiting
/// for its policy's restart refused removal.
#[test]
fn corners_match_docker_engine() {
    let a = Agent::start();
    let r = RefEngine::start();
    let img = a.pull("busybox:latest");
    let run_groups =
        ["run", "--rm", "--network", "none", "--group-add", "1234", "--group-add", "nogroup", &img, "id", "-G"];
    let steps: Vec<Vec<&str>> = vec![
        run_groups.to_vec(),
        vec!["run", "-d", "--name", "grp", "--network", "none", "--group-add", "1234", &img, "sleep", "300"],
        vec!["exec", "-u", "1000", "grp", "id", "-G"],
        vec!["exec", "grp", "id", "-G"],
        vec!["inspect", "-f", "{{json .HostConfig.GroupAdd}}", "grp"],
        vec!["create", "--name", "lf", "--network", "none", "--log-opt", "max-file=2", &img, "true"],
        vec!["inspect", "-f", "{{json .HostConfig.LogConfig}} {{json .HostConfig.GroupAdd}}", "lf"],
        vec!["rm", "-f", "grp", "lf"],
        // The engine's mount points (/etc/hosts, /dev, /proc, ...) are not the container's
        // changes: neither in diff nor in what commit keeps.
        vec![
            "run",
            "--name",
            "df",
            "--network",
            "none",
            &img,
            "sh",
            "-c",
            "echo x > /new && mkdir -p /var/x && rm /etc/group",
        ],
        vec!["diff", "df"],
        vec!["commit", "df", "committed:1"],
        vec!["run", "--rm", "--network", "none", "committed:1", "ls", "-a", "/", "/etc", "/var"],
        vec![
            "run",
            "--rm",
            "--network",
            "none",
            "committed:1",
            "sh",
            "-c",
            "readlink /etc/mtab; ls -l /.dockerenv | cut -c1-10",
        ],
        vec!["rm", "df"],
    ];
    for step in &steps {
        let (ours, theirs) = (a.docker(step), r.docker(step));
        assert!(ours.status.success(), "berth: docker {step:?}: {}", String::from_utf8_lossy(&ours.stderr));
        assert!(theirs.status.success(), "dockerd: docker {step:?}: {}", String::from_utf8_lossy(&theirs.stderr));
        // What `create` and `run -d` print is the new container's ID.
        let prints_id = step[0] == "create" || step[0] == "commit" || step[1] == "-d";
        // dockerd lists a diff in its directory walk's order, Berth sorted: compare the sets.
        let lines = |out: &std::process::Output| {
            let mut l: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect();
            if step[0] == "diff" {
                l.sort();
            }
            l
        };
        if !prints_id {
            assert_eq!(lines(&ours), lines(&theirs), "{step:?}");
        }
    }
    assert!(a.ok(&run_groups).split_whitespace().any(|g| g == "1234"), "--group-add 1234 is not among the groups");
    let bad = ["run", "--rm", "--network", "none", "--group-add", "nosuch", &img, "true"];
    let (ours, theirs) = (a.docker(&bad), r.docker(&bad));
    assert!(!ours.status.success() && !theirs.status.success());
    assert!(String::from_utf8_lossy(&ours.stderr).contains("nosuch"), "{}", String::from_utf8_lossy(&ours.stderr));
    // An exec made with a terminal and started without one: its output comes framed.
    let ref_socket = r.dir.path().join("docker.sock");
    let mut outputs = Vec::new();
    for (docker, socket) in [(&|x: &[&str]| a.ok(x), a.socket.as_path()), (&|x: &[&str]| r.ok(x), ref_socket.as_path())]
        as [(&dyn Fn(&[&str]) -> String, &std::path::Path); 2]
    {
        docker(&["run", "-d", "--name", "tty", "--network", "none", &img, "sleep", "300"]);
        let mut got = Vec::new();
        for (made, started) in [(true, false), (true, true), (false, true)] {
            let body = format!(r#"{{"Cmd":["echo","hi"],"Tty":{made},"AttachStdout":true,"AttachStderr":true}}"#);
            let (_, made_exec) = http_on(socket, "POST", "/containers/tty/exec", &body);
            let id = serde_json::from_str::<serde_json::Value>(&made_exec).unwrap()["Id"].as_str().unwrap().to_owned();
            got.push(upgraded(socket, &format!("/exec/{id}/start"), &format!(r#"{{"Detach":false,"Tty":{started}}}"#)));
        }
        docker(&["rm", "-f", "tty"]);
        outputs.push(got);
    }
    assert_eq!(outputs[0], outputs[1], "exec output, framed and not: Berth then dockerd");
    // Legacy links as dockerd shows them, removed with `rm --link` (and refused as dockerd
    // refuses them): the same exit code, output and error from both.
    let steps: Vec<Vec<&str>> = vec![
        vec!["run", "-d", "--name", "db", &img, "sleep", "300"],
        vec!["run", "-d", "--name", "web", "--link", "db:dbal", &img, "sleep", "300"],
        vec!["inspect", "-f", "{{json .HostConfig.Links}}", "web"],
        vec!["rm", "--link", "web/dbal"],
        vec!["inspect", "-f", "{{json .HostConfig.Links}}", "web"],
        vec!["rm", "--link", "web/dbal"],
        vec!["rm", "--link", "web"],
        vec!["rm", "--link", "nosuch/x"],
        vec!["rm", "-f", "web", "db"],
    ];
    for step in &steps {
        let (ours, theirs) = (a.docker(step), r.docker(step));
        let seen = |o: &std::process::Output| {
            let out = if step[1] == "-d" { String::new() } else { String::from_utf8_lossy(&o.stdout).into_owned() };
            (o.status.code(), out, String::from_utf8_lossy(&o.stderr).into_owned())
        };
        assert_eq!(seen(&ours), seen(&theirs), "{step:?}: Berth then dockerd");
    }
    // Networks and volumes as dockerd 20.10 takes them: any network name, volume plugins
    // refused, `volume ls`'s name filter a regular expression.
    let steps: Vec<Vec<&str>> = vec![
        vec!["network", "create", "test 01"],
        vec!["network", "ls", "--filter", "name=test 0", "--format", "{{.Name}}"],
        vec!["network", "rm", "test 01"],
        vec!["network", "create", "x"],
        vec!["network", "rm", "x"],
        vec!["volume", "create", "--driver", "nosuch", "v1"],
        vec!["volume", "create", "va"],
        vec!["volume", "create", "vab"],
        vec!["volume", "ls", "--filter", "name=va", "--format", "{{.Name}}"],
        vec!["volume", "ls", "--filter", "name=^va$", "--format", "{{.Name}}"],
    ];
    for step in &steps {
        let (ours, theirs) = (a.docker(step), r.docker(step));
        let seen = |o: &std::process::Output| {
            let id = step[0] == "network" && step[1] == "create";
            let out = if id { String::new() } else { String::from_utf8_lossy(&o.stdout).into_owned() };
            (o.status.code(), out, String::from_utf8_lossy(&o.stderr).into_owned())
        };
        assert_eq!(seen(&ours), seen(&theirs), "{step:?}: Berth then dockerd");
    }
    // `volume prune` by API version: named volumes too for 1.41 (docker 20.10), as dockerd
    // 20.10 does; only anonymous ones from 1.42 on, as newer engines do.
    let pruned = |socket: &std::path::Path, version: &str| {
        let (status, body) = http_on(socket, "POST", &format!("/{version}/volumes/prune"), "");
        assert_eq!(status, 200, "{version}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut names: Vec<String> = v["VolumesDeleted"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str().map(str::to_owned))
            .collect();
        names.sort();
        names
    };
    assert!(pruned(&a.socket, "v1.45").is_empty(), "named volumes pruned for API 1.45");
    assert_eq!(pruned(&a.socket, "v1.41"), ["va", "vab"]);
    assert_eq!(pruned(&ref_socket, "v1.41"), ["va", "vab"]);
    // A load of what is not an archive: 200 and the error in the stream, as dockerd answers.
    for socket in [a.socket.as_path(), ref_socket.as_path()] {
        let (status, body) = http_on(socket, "POST", "/v1.41/images/load", "not an archive");
        let line: serde_json::Value = serde_json::from_str(body.trim()).unwrap_or_default();
        assert_eq!(status, 200, "{}: {body}", socket.display());
        assert!(line["errorDetail"]["message"].is_string() && line["error"].is_string(), "{body}");
    }
    // Detach keys on an attached terminal (the default ctrl-p ctrl-q, and `detachKeys`): the
    // engine closes the attach and the container runs on.
    for (docker, socket) in [(&|x: &[&str]| a.ok(x), a.socket.as_path()), (&|x: &[&str]| r.ok(x), ref_socket.as_path())]
        as [(&dyn Fn(&[&str]) -> String, &std::path::Path); 2]
    {
        docker(&["run", "-dit", "--name", "term", "--network", "none", &img, "sh"]);
        for (query, keys) in [("", &b"\x10\x11"[..]), ("&detachKeys=ctrl-a,x", &b"\x01x"[..])] {
            let path = format!("/v1.41/containers/term/attach?stream=1&stdin=1&stdout=1{query}");
            let (seen, closed) = attach_typing(socket, &path, keys);
            assert!(closed, "{}: the attach stayed open after the detach keys: {seen:?}", socket.display());
            assert!(String::from_utf8_lossy(&seen).contains("typed"), "{}: {seen:?}", socket.display());
            assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", "term"]), "true\n");
        }
        docker(&["rm", "-f", "term"]);
    }
    // Between an exit and the restart its policy asks for, a container is refused removal
    // without force (once its back-off has grown, the gap is long enough to hit).
    let engines: [(&str, &Docker); 2] = [("berth", &|x: &[&str]| a.docker(x)), ("dockerd", &|x: &[&str]| r.docker(x))];
    for (engine, docker) in engines {
        let run = ["run", "-d", "--name", "rs", "--network", "none", "--restart", "always", &img, "false"];
        assert!(docker(&run).status.success(), "{engine}: {run:?}");
        let mut last = String::new();
        let refused = eventually(60, || {
            let out = docker(&["rm", "rs"]);
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            !out.status.success() && last.contains("You cannot remove a restarting container")
        });
        assert!(refused, "{engine}: rm of a restarting container: {last}");
        // Stopped, it stays stopped (its restart is cancelled) and goes without force.
        assert!(docker(&["stop", "rs"]).status.success(), "{engine}: stop of a restarting container");
        std::thread::sleep(std::time::Duration::from_secs(2));
        let state = docker(&["inspect", "-f", "{{.State.Status}} {{.State.Running}} {{.State.Restarting}}", "rs"]);
        assert_eq!(String::from_utf8_lossy(&state.stdout), "exited false false\n", "{engine}");
        assert!(docker(&["rm", "rs"]).status.success(), "{engine}: rm once stopped");
    }
    assert_eq!(outputs[0][0], b"\x01\0\0\0\0\0\0\x04hi\r\n", "a terminal's output, framed");
}
