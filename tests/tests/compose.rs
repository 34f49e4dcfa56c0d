//! Debian's docker-compose (1.29, on docker-py) brings a multi-service app up against the
//! engine and takes it down: a project network where services reach each other by name, a
//! second network one of them is also on, a named volume two services share, a published
//! port, depends_on order, and `down -v` leaving nothing behind. (The same project runs through the VM in `vm.rs`.)

use std::process::Command;

use berth_tests::{Agent, eventually};

#[test]
fn compose_brings_an_app_up_and_down() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let dir = berth_tests::workspace().join("tests/fixtures/compose");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let compose = |args: &[&str]| {
        let mut cmd = Command::new("docker-compose");
        cmd.args(["-p", "demo"])
            .args(args)
            .current_dir(&dir)
            .env("DOCKER_HOST", format!("unix://{}", a.socket.display()))
            .env("IMG", &img)
            .env("PORT", &port);
        let out =
            berth_tests::output_within(&mut cmd, berth_tests::COMMAND_LIMIT, None).unwrap_or_else(|e| panic!("{e}"));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let (ok, text) = compose(&["up", "-d"]);
    assert!(ok, "docker-compose up: {text}\nagent: {}", berth_tests::tail(&a.log(), 30));
    // writer starts before web (depends_on).
    let started = |name: &str| a.ok(&["inspect", "-f", "{{.State.StartedAt}}", name]).trim().to_owned();
    assert!(started("demo_writer_1") <= started("demo_web_1"));
    // The published port on this machine, serving what the other service wrote in the shared volume.
    let get = || {
        let out = Command::new("curl").args(["-s", "-m", "2", &format!("http://127.0.0.1:{port}/")]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(eventually(30, || get() == "hello-compose\n"), "the published port answered {:?}", get());
    // Services find each other by name on the project network.
    let (ok, text) = compose(&["exec", "-T", "writer", "wget", "-qO-", "http://web/"]);
    assert!(ok && text.contains("hello-compose"), "{text}");
    // A service on two networks reaches one only there; one on the first alone does not.
    let (ok, text) = compose(&["exec", "-T", "writer", "wget", "-qO-", "http://store/"]);
    assert!(ok && text.contains("from-back"), "{text}");
    let (ok, text) = compose(&["exec", "-T", "web", "wget", "-T", "2", "-qO-", "http://store/"]);
    assert!(!ok && !text.contains("from-back"), "web reached a network it is not on: {text}");
    let (ok, text) = compose(&["ps"]);
    assert!(ok && text.contains("demo_web_1") && text.contains("Up"), "{text}");
    let nets = a.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(nets.lines().any(|n| n == "demo_default"), "{nets}");
    assert!(a.ok(&["volume", "ls", "--format", "{{.Name}}"]).lines().any(|v| v == "demo_shared"));
    let (ok, text) = compose(&["logs", "web"]);
    assert!(ok, "{text}");
    // Down: containers, the network and (with -v) the volume go.
    let (ok, text) = compose(&["down", "-v"]);
    assert!(ok, "docker-compose down: {text}");
    assert!(a.ok(&["ps", "-aq"]).trim().is_empty(), "{}", a.ok(&["ps", "-a"]));
    let nets = a.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert!(!nets.contains("demo_default") && !nets.contains("demo_back"), "{nets}");
    assert!(!a.ok(&["volume", "ls", "--format", "{{.Name}}"]).contains("demo_shared"));
}
