//! The control API (what the host daemon uses): version hello, health, clean shutdown.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use berth_protocol::{Request, Response, VERSION, decode, encode};
use berth_tests::Agent;

fn ask(conn: &mut UnixStream, reader: &mut BufReader<UnixStream>, req: &Request) -> Option<Response> {
    conn.write_all(&encode(req)).ok()?;
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    Some(decode(line.as_bytes()).unwrap())
}

#[test]
fn hello_health_and_shutdown() {
    let mut a = Agent::start();
    let img = a.pull("busybox:latest");
    a.ok(&["run", "-d", "--name", "up", "--stop-timeout", "1", &img, "sleep", "600"]);

    // A peer of another version is refused, and nothing else is accepted before a hello.
    let mut conn = UnixStream::connect(a.control_socket()).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let r = ask(&mut conn, &mut reader, &Request::Health).unwrap();
    assert!(matches!(r, Response::Error { ref message } if message.contains("hello")), "{r:?}");
    assert!(ask(&mut conn, &mut reader, &Request::Health).is_none(), "the connection should be closed");
    let mut conn = UnixStream::connect(a.control_socket()).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let r = ask(&mut conn, &mut reader, &Request::Hello { version: VERSION + 1, client: "test".into() }).unwrap();
    assert!(matches!(r, Response::Error { ref message } if message.contains("version mismatch")), "{r:?}");

    let mut conn = UnixStream::connect(a.control_socket()).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let r = ask(&mut conn, &mut reader, &Request::Hello { version: VERSION, client: "test".into() }).unwrap();
    assert!(matches!(r, Response::Hello { version: VERSION, .. }), "{r:?}");
    let r = ask(&mut conn, &mut reader, &Request::Health).unwrap();
    assert!(matches!(r, Response::Health { containers_running: 1, containers: 1, images: 1, .. }), "{r:?}");

    // Shutdown: answered, then the engine stops the container, records it and exits.
    let r = ask(&mut conn, &mut reader, &Request::Shutdown).unwrap();
    assert_eq!(r, Response::Ok);
    let status = a.wait_exit(30).expect("the agent did not exit after a shutdown request");
    assert!(status.success(), "{status:?}");
    assert!(!std::process::Command::new("pgrep").args(["-f", "sleep 600"]).status().unwrap().success());
    let record = std::fs::read_dir(a.data_root().join("containers"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path()
        .join("config.json");
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    assert_eq!(rec["state"]["status"], "exited");
}
