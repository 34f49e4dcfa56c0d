//! Clients other than the docker CLI: docker-py (the Docker SDK for Python, from PyPI, in a
//! venv under target/) drives images, builds, containers, exec, volumes and system calls
//! through `tests/clients/docker_py_check.py`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use berth_tests::{Agent, workspace};

/// A venv with docker-py, made once (pip from PyPI). The tests of this binary run at once, so
/// one makes it while the others wait; a venv left half made by a killed run is made again.
fn docker_py() -> PathBuf {
    static MAKING: Mutex<()> = Mutex::new(());
    let _one = MAKING.lock().unwrap_or_else(|e| e.into_inner());
    let venv = workspace().join("target/py-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python).args(["-c", "import docker"]).output().is_ok_and(|o| o.status.success());
    if !ready {
        if venv.exists() {
            std::fs::remove_dir_all(&venv).unwrap_or_else(|e| panic!("removing {}: {e}", venv.display()));
        }
        let made = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().expect("python3 must be installed");
        assert!(made.success(), "python3 -m venv failed (Debian package python3-venv)");
        let mut pip = Command::new(venv.join("bin/pip"));
        pip.args(["install", "-q", "docker==7.2.0"]);
        let out =
            berth_tests::output_within(&mut pip, Duration::from_secs(300), None).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.status.success(), "pip install docker: {}", String::from_utf8_lossy(&out.stderr));
    }
    python
}

#[test]
fn docker_py_finds_what_it_uses() {
    let python = docker_py();
    let a = Agent::start();
    let image = format!("{}/busybox:latest", berth_tests::registry().addr);
    let mut cmd = Command::new(python);
    cmd.arg(workspace().join("tests/clients/docker_py_check.py")).arg(&a.socket).arg(&image);
    let out = berth_tests::output_within(&mut cmd, berth_tests::COMMAND_LIMIT, None).unwrap_or_else(|e| panic!("{e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}\nagent log tail: {}", berth_tests::tail(&a.log(), 30));
    assert!(text.contains("docker-py: all checks passed"), "{text}");
}

/// docker-py's low-level and high-level clients, the same calls on Berth and on Docker Engine
/// 20.10 (API 1.41), answers and events compared field by field
/// (`tests/clients/docker_py_diff.py`): every field that differs must be one
/// `tests/clients/docker_py_diff.known` lists with its reason, so a new difference fails here.
#[test]
fn docker_py_sees_what_docker_engine_shows() {
    diff_with_docker_engine("docker_py_diff", &[]);
}

/// Debian's docker-compose (1.29) brings the same project up and down on Berth and on Docker
/// Engine 20.10 (`tests/clients/compose_diff.py`): the containers, networks and volumes it
/// made, and the events, compared field by field against `compose_diff.known`.
#[test]
fn docker_compose_makes_what_docker_engine_makes() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let project = workspace().join("tests/fixtures/compose");
    diff_with_docker_engine("compose_diff", &[project.to_str().unwrap(), &port]);
}

/// Runs `tests/clients/<script>.py BERTH DOCKERD IMAGE ARGS...` and fails on any difference
/// it prints that `<script>.known` does not list.
fn diff_with_docker_engine(script: &str, args: &[&str]) {
    let python = docker_py();
    let a = Agent::start();
    let r = berth_tests::RefEngine::start();
    let image = a.pull("busybox:latest");
    r.ok(&["pull", "-q", &image]);
    let mut cmd = Command::new(python);
    cmd.arg(workspace().join(format!("tests/clients/{script}.py")))
        .arg(&a.socket)
        .arg(r.dir.path().join("docker.sock"))
        .arg(&image)
        .args(args);
    let out = berth_tests::output_within(&mut cmd, berth_tests::COMMAND_LIMIT, None).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let known = std::fs::read_to_string(workspace().join(format!("tests/clients/{script}.known"))).unwrap_or_default();
    let known: Vec<&str> = known.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
    let new: Vec<&str> = text
        .lines()
        .filter(|line| {
            let path = line.split_once(": berth=").map_or(*line, |(p, _)| p);
            !known.iter().any(|k| glob(k, path))
        })
        .collect();
    assert!(new.is_empty(), "differences from dockerd that {script}.known does not list:\n{}", new.join("\n"));
}

/// Whether `path` matches `pattern`, in which each `*` is any text.
fn glob(pattern: &str, path: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = path.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[test]
fn known_paths_match_as_globs() {
    assert!(glob(".inspect.*.GraphDriver.Data.*", ".inspect.running.GraphDriver.Data.UpperDir"));
    assert!(!glob(".inspect.*.GraphDriver.Data.*", ".inspect.running.Config.WorkingDir"));
    assert!(glob(".errors.kill stopped.explanation", ".errors.kill stopped.explanation"));
    assert!(!glob(".errors.kill", ".errors.kill stopped"));
}
