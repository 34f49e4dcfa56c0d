//! Clients other than the docker CLI: docker-py (the Docker SDK for Python, from PyPI, in a
//! venv under target/) drives images, builds, containers, exec, volumes and system calls
//! through `tests/clients/docker_py_check.py`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use berth_tests::{Agent, workspace};

/// A venv with docker-py, made once (pip from PyPI).
fn docker_py() -> PathBuf {
    let venv = workspace().join("target/py-venv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python).args(["-c", "import docker"]).output().is_ok_and(|o| o.status.success());
    if !ready {
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
