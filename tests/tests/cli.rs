//! The `berth` CLI's container verbs against a native engine (`BERTH_DOCKER_HOST` points
//! them at the test agent's socket): output shaped like docker's, exit codes passed through,
//! one-line errors, and `run -it` driven through a pseudo-terminal as a person would.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use berth_tests::{Agent, eventually, workspace};

fn berth_bin() -> PathBuf {
    workspace().join("target/debug/berth")
}

/// `berth ARGS` against `a`, with `stdin`.
fn berth_in(a: &Agent, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(berth_bin());
    cmd.args(args)
        .env("BERTH_DOCKER_HOST", format!("unix://{}", a.socket.display()))
        .env("BERTH_HOME", a.dir.path().join("berth-home"))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("target/debug/berth is built");
    if let Some(data) = stdin {
        child.stdin.take().unwrap().write_all(data).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn berth(a: &Agent, args: &[&str]) -> Output {
    berth_in(a, args, None)
}

#[track_caller]
fn ok(a: &Agent, args: &[&str]) -> String {
    let out = berth(a, args);
    assert!(out.status.success(), "berth {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn verbs_drive_the_engine_as_docker_does() {
    let a = Agent::start();
    let reg = &berth_tests::registry().addr;
    let img = format!("{reg}/busybox:latest");

    // pull: plain progress lines off a terminal, one per change of a layer's state.
    let pulled = ok(&a, &["pull", &img]);
    assert!(pulled.contains(&format!("Pulling from {reg}/busybox")) && pulled.contains("Pull complete"), "{pulled}");
    assert!(pulled.contains(&format!("Status: Downloaded newer image for {img}")), "{pulled}");
    assert!(!pulled.contains('\x1b') && pulled.matches("Downloading").count() <= 2, "{pulled}");
    assert_eq!(ok(&a, &["pull", "-q", &img]).trim(), format!("{img}"));
    let images = ok(&a, &["images"]);
    let header = images.lines().next().unwrap();
    assert!(header.starts_with("REPOSITORY") && header.contains("IMAGE ID") && header.ends_with("SIZE"), "{images}");
    assert!(images.contains(&format!("{reg}/busybox")) && images.contains("latest"), "{images}");
    let id = a.ok(&["inspect", "-f", "{{.Id}}", &img]).trim().to_owned();
    assert_eq!(ok(&a, &["images", "-q"]).trim(), &id["sha256:".len()..][..12]);
    let row: serde_json::Value =
        serde_json::from_str(ok(&a, &["images", "--format", "json"]).lines().next().unwrap()).unwrap();
    assert_eq!(row["Repository"], format!("{reg}/busybox"));

    // run: output, exit codes, stdin, environment, a working directory.
    assert_eq!(ok(&a, &["run", "--rm", &img, "echo", "hello"]), "hello\n");
    let failed = berth(&a, &["run", "--rm", &img, "sh", "-c", "echo to-stderr >&2; exit 3"]);
    assert_eq!(failed.status.code(), Some(3));
    assert_eq!(text(&failed.stderr), "to-stderr\n");
    let piped = berth_in(&a, &["run", "-i", "--rm", &img, "tr", "a-z", "A-Z"], Some(b"shout\n"));
    assert_eq!(text(&piped.stdout), "SHOUT\n", "{}", text(&piped.stderr));
    let env =
        ok(&a, &["run", "--rm", "-e", "X=1", "-w", "/tmp", "-u", "1234", &img, "sh", "-c", "echo $X $(pwd) $(id -u)"]);
    assert_eq!(env, "1 /tmp 1234\n");
    assert!(a.ok(&["ps", "-aq"]).trim().is_empty(), "--rm left a container");

    // A detached server with a published port and a volume; ps, exec, logs, inspect.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let publish = format!("127.0.0.1:{port}:80");
    let id = ok(
        &a,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "-p",
            &publish,
            "-v",
            "webdata:/data",
            &img,
            "sh",
            "-c",
            "echo served > /data/index.html; echo started; httpd -f -p 80 -h /data",
        ],
    );
    assert_eq!(id.trim().len(), 64, "{id}");
    let ps = ok(&a, &["ps"]);
    let header = ps.lines().next().unwrap();
    for col in ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"] {
        assert!(header.contains(col), "{ps}");
    }
    let line = ps.lines().find(|l| l.ends_with("web")).unwrap_or_else(|| panic!("{ps}"));
    assert!(line.contains(&format!("127.0.0.1:{port}->80/tcp")) && line.contains("Up "), "{ps}");
    assert!(line.starts_with(&id.trim()[..12]), "{ps}");
    assert_eq!(ok(&a, &["ps", "-q"]).trim(), &id.trim()[..12]);
    let row: serde_json::Value = serde_json::from_str(ok(&a, &["ps", "--format", "json"]).trim()).unwrap();
    assert_eq!((row["Names"].as_str(), row["State"].as_str()), (Some("web"), Some("running")), "{row}");
    let get = || {
        let out = Command::new("curl").args(["-s", "-m", "2", &format!("http://127.0.0.1:{port}/")]).output().unwrap();
        text(&out.stdout)
    };
    assert!(eventually(10, || get() == "served\n"), "the published port answered {:?}", get());
    assert_eq!(ok(&a, &["exec", "web", "cat", "/data/index.html"]), "served\n");
    assert_eq!(berth(&a, &["exec", "web", "sh", "-c", "exit 4"]).status.code(), Some(4));
    assert_eq!(text(&berth_in(&a, &["exec", "-i", "web", "cat"], Some(b"via exec\n")).stdout), "via exec\n");
    assert_eq!(ok(&a, &["logs", "web"]), "started\n");
    assert_eq!(ok(&a, &["logs", "--tail", "1", "web"]), "started\n");
    let inspected: serde_json::Value = serde_json::from_str(&ok(&a, &["inspect", "web", "webdata"])).unwrap();
    assert_eq!(inspected[0]["Id"], id.trim());
    assert_eq!(inspected[1]["Name"], "webdata");

    // Lifecycle: each verb prints the names it acted on.
    assert_eq!(ok(&a, &["stop", "-t", "1", "web"]), "web\n");
    assert!(ok(&a, &["ps"]).lines().count() == 1, "web still listed as running");
    assert!(ok(&a, &["ps", "-a"]).contains("Exited"), "stopped web not listed with -a");
    assert_eq!(ok(&a, &["start", "web"]), "web\n");
    assert_eq!(ok(&a, &["restart", "-t", "1", "web"]), "web\n");
    assert!(eventually(10, || get() == "served\n"), "after restart: {:?}", get());
    assert_eq!(ok(&a, &["rm", "-f", "web"]), "web\n");

    // Images, volumes, networks, system.
    ok(&a, &["tag", &img, "local/copy:1"]);
    assert!(ok(&a, &["images"]).contains("local/copy"), "tag");
    assert!(ok(&a, &["rmi", "local/copy:1"]).contains("Untagged: local/copy:1"));
    assert_eq!(ok(&a, &["volume", "create", "v1"]).trim(), "v1");
    let vols = ok(&a, &["volume", "ls"]);
    assert!(vols.starts_with("DRIVER") && vols.contains("v1") && vols.contains("webdata"), "{vols}");
    assert_eq!(ok(&a, &["volume", "rm", "v1", "webdata"]), "v1\nwebdata\n");
    let net = ok(&a, &["network", "create", "--ipv6", "--subnet", "fd00:74::/64", "--gateway", "fd00:74::9", "clinet"]);
    assert_eq!(net.trim().len(), 64, "{net}");
    assert!(ok(&a, &["network", "ls"]).contains("clinet"));
    ok(&a, &["run", "-d", "--name", "member", "--network", "clinet", &img, "sleep", "300"]);
    let nets: serde_json::Value = serde_json::from_str(&ok(&a, &["inspect", "member"])).unwrap();
    let member = &nets[0]["NetworkSettings"]["Networks"]["clinet"];
    assert!(member["IPAddress"].as_str().is_some_and(|ip| !ip.is_empty()), "{member}");
    assert_eq!(
        (&member["GlobalIPv6Address"], &member["IPv6Gateway"]),
        (&serde_json::json!("fd00:74::1"), &serde_json::json!("fd00:74::9"))
    );
    ok(&a, &["rm", "-f", "member"]);
    assert_eq!(ok(&a, &["network", "rm", "clinet"]), "clinet\n");
    let df = ok(&a, &["system", "df"]);
    assert!(df.starts_with("TYPE") && df.contains("Images") && df.contains("Build Cache"), "{df}");
    ok(&a, &["run", "--name", "leftover", &img, "true"]);
    let pruned = ok(&a, &["system", "prune", "-f"]);
    assert!(pruned.contains("Total reclaimed space"), "{pruned}");
    assert!(a.ok(&["ps", "-aq"]).trim().is_empty(), "prune left a stopped container");

    // Errors: one line, non-zero, no trace.
    let missing = berth(&a, &["rm", "nosuch"]);
    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(text(&missing.stderr).trim(), "Error response from daemon: No such container: nosuch");
    let bad_image = berth(&a, &["run", "--rm", &format!("{reg}/no/such:image")]);
    assert_eq!(bad_image.status.code(), Some(125));
    let err = text(&bad_image.stderr);
    assert!(err.contains("Unable to find image") && err.contains("not found"), "{err}");
    assert!(!err.contains("Backtrace") && !err.contains("panicked"), "{err}");
    let bad_flag = berth(&a, &["ps", "--no-such-flag"]);
    assert_eq!(bad_flag.status.code(), Some(2));
    let gone = Command::new(berth_bin())
        .args(["ps"])
        .env("BERTH_HOME", a.dir.path().join("empty-home"))
        .env_remove("BERTH_DOCKER_HOST")
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert_eq!(text(&gone.stderr).trim(), "the Berth VM is not running: run `berth start`");
}

/// `berth run -it` in a pseudo-terminal, as a person types: the shell's prompt and echo come
/// back, the shell's exit code is berth's, and ctrl-p ctrl-q leaves the container running.
#[test]
fn run_it_speaks_to_a_terminal() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    // Python's pty module drives it (expect-style): spawn, wait for text, type, wait.
    let script = r##"
import os, pty, sys, time
berth, img, mode = sys.argv[1], sys.argv[2], sys.argv[3]
args = [berth, "run", "-it", "--rm", img, "sh"] if mode == "exit" else [berth, "run", "-it", "--name", "sess", img, "sh"]
pid, fd = pty.fork()
if pid == 0:
    os.execv(berth, args)
buf = b""
def expect(want, limit=30):
    global buf
    end = time.time() + limit
    while want not in buf:
        if time.time() > end:
            sys.exit("timed out waiting for %r; got %r" % (want, buf))
        try:
            buf += os.read(fd, 4096)
        except OSError:
            sys.exit("the terminal closed; got %r" % buf)
expect(b"# ")
os.write(fd, b"echo $((6*7)); stty size\r")
expect(b"42")
if mode == "exit":
    os.write(fd, b"exit 5\r")
else:
    os.write(fd, b"\x10\x11")
_, status = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(status))
"##;
    for (mode, code) in [("exit", "exit 5"), ("detach", "exit 0")] {
        let out = Command::new("python3")
            .args(["-c", script, berth_bin().to_str().unwrap(), &img, mode])
            .env("BERTH_DOCKER_HOST", format!("unix://{}", a.socket.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{mode}: {}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), code, "{mode}: {}", text(&out.stderr));
    }
    // A pull on a terminal redraws each layer's line in place (cursor movements), where
    // off a terminal it prints plain lines (the other test).
    let reg = &berth_tests::registry().addr;
    let pull = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "pull", sys.argv[2]])
out = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(repr(out))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = Command::new("python3")
        .args(["-c", pull, berth_bin().to_str().unwrap(), &format!("{reg}/layered:latest")])
        .env("BERTH_DOCKER_HOST", format!("unix://{}", a.socket.display()))
        .output()
        .unwrap();
    let shown = text(&out.stdout);
    assert!(out.status.success(), "{shown} {}", text(&out.stderr));
    assert!(shown.contains("\\x1b[") && shown.contains("Pull complete"), "{shown}");
    // Detached, the container goes on; its shell is still there to attach to.
    let ps = a.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(ps.contains("sess Up"), "{ps}");
    a.ok(&["rm", "-f", "sess"]);
}

/// The docker CLI reaches Berth through the `berth` context (`berth context use`), through
/// `berth env`'s line and through `berth docker`; `berth completion` writes scripts shells
/// load.
#[test]
fn the_docker_cli_finds_berth_through_its_context() {
    let a = Agent::start();
    let home = a.dir.path().join("ctx-home");
    std::fs::create_dir_all(&home).unwrap();
    // The VM's socket, here the native agent's.
    std::os::unix::fs::symlink(&a.socket, home.join("docker.sock")).unwrap();
    let config = a.dir.path().join("ctx-docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("config.json"), r#"{"auths": {"example.com": {}}}"#).unwrap();
    let run = |program: &std::path::Path, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .env("BERTH_HOME", &home)
            .env("DOCKER_CONFIG", &config)
            .env_remove("DOCKER_HOST")
            .env_remove("BERTH_DOCKER_HOST")
            .output()
            .unwrap();
        assert!(out.status.success(), "{program:?} {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let docker = std::path::Path::new("docker");
    assert_eq!(run(&berth_bin(), &["context", "use"]).trim(), "berth");
    let contexts = run(docker, &["context", "ls", "--format", "{{.Name}} {{.Current}} {{.DockerEndpoint}}"]);
    assert!(contexts.contains(&format!("berth true unix://{}", home.join("docker.sock").display())), "{contexts}");
    let version = run(docker, &["version", "--format", "{{.Server.Version}}"]);
    assert_eq!(version.trim(), a.ok(&["version", "--format", "{{.Server.Version}}"]).trim());
    a.ok(&["create", "--name", "seen-by-context", &a.pull("busybox:latest"), "true"]);
    assert!(run(docker, &["ps", "-a", "--format", "{{.Names}}"]).contains("seen-by-context"));
    // The rest of config.json is kept; `default` goes back.
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(config.join("config.json")).unwrap()).unwrap();
    assert_eq!((kept["currentContext"].as_str(), kept["auths"].get("example.com").is_some()), (Some("berth"), true));
    run(&berth_bin(), &["context", "use", "default"]);
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(config.join("config.json")).unwrap()).unwrap();
    assert!(kept.get("currentContext").is_none(), "{kept}");
    // berth docker and berth env.
    assert!(run(&berth_bin(), &["docker", "ps", "-a", "--format", "{{.Names}}"]).contains("seen-by-context"));
    let env = run(&berth_bin(), &["env", "--shell", "bash"]);
    let line = env.lines().next().unwrap();
    assert_eq!(line, format!("export DOCKER_HOST=unix://{}", home.join("docker.sock").display()));
    let via_env = Command::new("sh")
        .args(["-c", &format!("{line}; docker ps -a --format '{{{{.Names}}}}'")])
        .env("DOCKER_CONFIG", &config)
        .output()
        .unwrap();
    assert!(text(&via_env.stdout).contains("seen-by-context"), "{}", text(&via_env.stderr));
    // Completion scripts, loaded by the shells themselves where they are installed.
    let bash = run(&berth_bin(), &["completion", "bash"]);
    assert!(bash.contains("complete") && bash.contains("berth"), "{bash}");
    let loaded = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p berth"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(bash.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(text(&loaded.stdout).contains("berth"), "bash did not load the completion");
    for shell in ["zsh", "fish", "powershell"] {
        assert!(!run(&berth_bin(), &["completion", shell]).is_empty(), "{shell}");
    }
}

/// `build` (its context filtered by `.dockerignore` before it is sent), `commit`,
/// `save`/`load`, `export`/`import` and `cp` both ways, through `berth`.
#[test]
fn images_files_and_builds_move_through_berth() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM {img}\nCOPY . /ctx/\nRUN echo built > /built\nCMD [\"cat\", \"/built\"]\n"),
    )
    .unwrap();
    std::fs::write(ctx.join(".dockerignore"), "secret*\n").unwrap();
    std::fs::write(ctx.join("secret.key"), "do not send").unwrap();
    std::fs::write(ctx.join("src/app.txt"), "app").unwrap();
    let built = ok(&a, &["build", "-t", "local/built:1", "-t", "local/built:also", ctx.to_str().unwrap()]);
    assert!(built.contains("Step 1/4") && built.contains("Successfully tagged local/built:1"), "{built}");
    assert_eq!(ok(&a, &["run", "--rm", "local/built:also"]), "built\n");
    let listed = ok(&a, &["run", "--rm", "local/built:1", "find", "/ctx"]);
    assert!(listed.contains("/ctx/src/app.txt") && !listed.contains("secret"), "{listed}");
    let quiet = ok(&a, &["build", "-q", ctx.to_str().unwrap()]);
    assert!(quiet.trim().starts_with("sha256:"), "{quiet}");

    // commit, then save and load it back.
    ok(&a, &["run", "--name", "maker", &img, "sh", "-c", "echo made > /made"]);
    let id = ok(&a, &["commit", "-m", "a file", "maker", "local/made:1"]);
    assert!(id.trim().starts_with("sha256:"), "{id}");
    assert_eq!(ok(&a, &["run", "--rm", "local/made:1", "cat", "/made"]), "made\n");
    let archive = work.path().join("made.tar");
    ok(&a, &["save", "-o", archive.to_str().unwrap(), "local/made:1"]);
    ok(&a, &["rmi", "local/made:1"]);
    let loaded = ok(&a, &["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains("Loaded image: local/made:1"), "{loaded}");
    assert_eq!(ok(&a, &["run", "--rm", "local/made:1", "cat", "/made"]), "made\n");
    let piped = berth(&a, &["save", "local/made:1"]);
    assert!(piped.status.success(), "save to a pipe: {}", text(&piped.stderr));
    assert!(piped.stdout.len() > 1024, "save wrote {} bytes to stdout", piped.stdout.len());

    // export and import.
    let fs = work.path().join("fs.tar");
    ok(&a, &["export", "-o", fs.to_str().unwrap(), "maker"]);
    let imported = ok(&a, &["import", "-c", "CMD [\"cat\", \"/made\"]", fs.to_str().unwrap(), "local/imported:1"]);
    assert!(imported.trim().starts_with("sha256:"), "{imported}");
    assert_eq!(ok(&a, &["run", "--rm", "local/imported:1"]), "made\n");

    // cp: a file and a directory in, into an existing directory and to a new name; out again.
    std::fs::write(work.path().join("note.txt"), "note").unwrap();
    std::fs::create_dir_all(work.path().join("tree/sub")).unwrap();
    std::fs::write(work.path().join("tree/sub/leaf"), "leaf").unwrap();
    ok(&a, &["run", "-d", "--name", "box", &img, "sleep", "300"]);
    ok(&a, &["cp", work.path().join("note.txt").to_str().unwrap(), "box:/tmp"]);
    ok(&a, &["cp", work.path().join("note.txt").to_str().unwrap(), "box:/tmp/renamed.txt"]);
    ok(&a, &["cp", work.path().join("tree").to_str().unwrap(), "box:/tmp/"]);
    assert_eq!(
        a.ok(&["exec", "box", "cat", "/tmp/note.txt", "/tmp/renamed.txt", "/tmp/tree/sub/leaf"]),
        "notenoteleaf"
    );
    let out = work.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    ok(&a, &["cp", "box:/tmp/tree", out.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(out.join("tree/sub/leaf")).unwrap(), "leaf");
    ok(&a, &["cp", "box:/tmp/tree", out.join("copy").to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(out.join("copy/sub/leaf")).unwrap(), "leaf");
    ok(&a, &["cp", "box:/etc/hostname", out.join("host-name").to_str().unwrap()]);
    assert!(!std::fs::read_to_string(out.join("host-name")).unwrap().trim().is_empty());
    let missing = berth(&a, &["cp", "box:/no/such", out.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("No such"), "{}", text(&missing.stderr));
    a.ok(&["rm", "-f", "box", "maker"]);
}

/// `--format` Go templates print what the docker CLI prints from the same engine: fields,
/// `{{json .}}`, functions, and `table` with its header and columns.
#[test]
fn format_templates_print_what_docker_prints() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&[
        "run",
        "-d",
        "--name",
        "fmt-one",
        "--label",
        "k=v",
        "-v",
        "fmtvol:/data",
        "--network",
        "none",
        &img,
        "sleep",
        "300",
    ]);
    a.ok(&["run", "-d", "--name", "fmt-two", "--network", "none", &img, "sleep", "300"]);
    a.ok(&["network", "create", "fmtnet"]);
    // What moves between two calls a moment apart.
    let steady = |s: &str| {
        let mut out = String::new();
        for line in s.lines() {
            let mut v: serde_json::Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(_) => {
                    out.push_str(line);
                    out.push('\n');
                    continue;
                }
            };
            for moving in ["RunningFor", "Status", "CreatedSince"] {
                v.as_object_mut().map(|o| o.remove(moving));
            }
            // The docker CLI joins labels in a Go map's order, which changes from run to run.
            if let Some(labels) = v.get_mut("Labels").filter(|l| l.is_string()) {
                let mut all: Vec<&str> = labels.as_str().unwrap_or("").split(',').collect();
                all.sort();
                *labels = serde_json::Value::String(all.join(","));
            }
            out.push_str(&format!("{v}\n"));
        }
        out
    };
    let cases: &[&[&str]] = &[
        &["ps", "--format", "{{.Names}}"],
        &["ps", "--format", "table {{.ID}}\\t{{.Image}}\\t{{.Names}}"],
        &["ps", "--format", "table {{.Names}}\\t{{.Mounts}}\\t{{.Networks}}"],
        &["ps", "--format", "{{json .}}"],
        &["ps", "--format", r#"{{upper .Names}}|{{truncate .ID 4}}|{{join (split .Names "-") "+"}}|{{title "a b"}}"#],
        &["ps", "-a", "--format", "{{.Names}} {{.State}} {{.Command}}"],
        &["images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}"],
        &["images", "--format", "table {{.Repository}}\\t{{.ID}}"],
        &["network", "ls", "--format", "table {{.ID}}\\t{{.Name}}\\t{{.Driver}}"],
        &["volume", "ls", "--format", "table {{.Name}}\\t{{.Driver}}"],
        &["volume", "ls", "--format", "{{json .}}"],
    ];
    for args in cases {
        let ours = steady(&ok(&a, args));
        let theirs = steady(&a.ok(args));
        assert_eq!(ours, theirs, "berth {args:?}");
        assert!(!ours.trim().is_empty(), "{args:?} printed nothing");
    }
    let bad = berth(&a, &["ps", "--format", "{{.Names"]);
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("template parsing error"), "{}", text(&bad.stderr));
    a.ok(&["rm", "-f", "fmt-one", "fmt-two"]);
}
