//! Networking through the docker CLI: the bridge with NAT, container-to-container traffic,
//! published TCP and UDP ports, `docker port`, port conflicts, `none` and `host`.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::time::Duration;

use berth_tests::{Agent, eventually};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().unwrap()
}

#[test]
fn bridge_addresses_routes_and_container_to_container() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let out = a.ok(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "ip -4 addr show eth0 | grep inet; ip route | grep default; grep $(hostname) /etc/hosts",
    ]);
    assert!(out.contains(&format!("inet {}", a.subnet)), "{out}");
    assert!(out.contains(&format!("default via {}1", a.subnet)), "{out}");
    assert!(out.lines().nth(2).is_some_and(|l| l.starts_with(&a.subnet)), "{out}");
    a.ok(&["run", "-d", "--name", "server", &img, "sh", "-c", "while true; do echo from-server | nc -l -p 7000; done"]);
    let ip = a.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "server"]).trim().to_owned();
    assert!(ip.starts_with(&a.subnet), "{ip}");
    let mac = a.ok(&["inspect", "-f", "{{.NetworkSettings.MacAddress}}", "server"]);
    let third: u8 = a.subnet.split('.').nth(2).unwrap().parse().unwrap();
    assert!(mac.starts_with(&format!("02:42:ac:1e:{third:02x}:")), "{mac}");
    assert!(eventually(10, || a.docker(&["run", "--rm", &img, "nc", &ip, "7000"]).stdout == b"from-server\n"));
    a.ok(&["rm", "-f", "server"]);
    // none: loopback only; host: the engine's interfaces.
    assert_eq!(a.ok(&["run", "--rm", "--network", "none", &img, "ls", "/sys/class/net"]), "lo\n");
    // Host mode sees the engine's interfaces (other tests add and remove veths meanwhile, so
    // compare with the one that carries the default route).
    let route = String::from_utf8(Command::new("ip").args(["-4", "route", "show", "default"]).output().unwrap().stdout)
        .unwrap();
    let uplink = route.split_whitespace().skip_while(|w| *w != "dev").nth(1).unwrap_or("lo").to_owned();
    let out = a.ok(&["run", "--rm", "--network", "host", &img, "ls", "/sys/class/net"]);
    assert!(out.lines().any(|l| l == uplink) && out.lines().any(|l| l == "lo"), "{uplink} not in {out}");
    let (_, err) = a.fails(&["run", "--rm", "--network", "nosuchnet", &img, "true"]);
    assert!(err.contains("network nosuchnet not found"), "{err}");
}

#[test]
fn traffic_leaving_the_bridge_is_masqueraded() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    // An "outside" host: a network namespace of our own behind a veth, with no route back to
    // the container subnet, so only NATed traffic can be answered.
    let n = std::process::id() % 200 + 20;
    let ns = format!("berth-out-{n}");
    let veth = format!("vo{n}");
    let _ = sh(&format!("ip netns del {ns} 2>/dev/null; ip link del {veth} 2>/dev/null"));
    let setup = format!(
        "set -e; ip netns add {ns}; ip link add {veth} type veth peer name eth0 netns {ns}; \
         ip addr add 10.250.{n}.1/24 dev {veth}; ip link set {veth} up; \
         ip -n {ns} addr add 10.250.{n}.2/24 dev eth0; ip -n {ns} link set eth0 up; ip -n {ns} link set lo up"
    );
    let out = sh(&setup);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c"])
        .arg(format!(
            "import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('10.250.{n}.2', 7777)); s.listen()\nwhile True:\n  c,a=s.accept(); c.sendall(('seen '+a[0]+'\\n').encode()); c.close()"
        ))
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(server);
    let target = format!("10.250.{n}.2");
    let mut got = String::new();
    let ok = eventually(15, || {
        got = String::from_utf8_lossy(&a.docker(&["run", "--rm", &img, "nc", "-w", "2", &target, "7777"]).stdout)
            .into_owned();
        !got.is_empty()
    });
    // A user-defined network goes out the same way; an --internal one does not go out at all.
    a.ok(&["network", "create", "--subnet", &format!("10.251.{n}.0/24"), "outnet"]);
    a.ok(&["network", "create", "--internal", "--subnet", &format!("10.252.{n}.0/24"), "innet"]);
    let reach = |net: &str| {
        String::from_utf8_lossy(
            &a.docker(&["run", "--rm", "--network", net, &img, "nc", "-w", "2", &target, "7777"]).stdout,
        )
        .into_owned()
    };
    let mut via_user = String::new();
    let user_ok = eventually(15, || {
        via_user = reach("outnet");
        !via_user.is_empty()
    });
    let via_internal = reach("innet");
    let _ = server.0.kill();
    let _ = server.0.wait();
    let _ = sh(&format!("ip netns del {ns}; ip link del {veth} 2>/dev/null"));
    assert!(ok, "the container could not reach the outside host");
    assert_eq!(got, format!("seen 10.250.{n}.1\n"), "source address was not masqueraded");
    assert!(user_ok && via_user == format!("seen 10.250.{n}.1\n"), "from a user network: {via_user:?}");
    assert!(via_internal.is_empty(), "an --internal network reached the outside: {via_internal:?}");
    a.ok(&["network", "rm", "outnet", "innet"]);
}

/// Kills the outside server even when an assertion fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[test]
fn published_tcp_and_udp_ports() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let port = free_port();
    let spec = format!("127.0.0.1:{port}:8080");
    a.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &spec,
        "-p",
        "9090",
        &img,
        "sh",
        "-c",
        "while true; do echo hello-tcp | nc -l -p 8080; done",
    ]);
    assert_eq!(a.ok(&["port", "web", "8080"]).trim(), format!("127.0.0.1:{port}"));
    let random = a.ok(&["port", "web", "9090"]);
    assert!(random.trim().starts_with("0.0.0.0:"), "{random}");
    let ps = a.ok(&["ps", "--format", "{{.Ports}}"]);
    assert!(ps.contains(&format!("127.0.0.1:{port}->8080/tcp")), "{ps}");
    let mut got = String::new();
    assert!(
        eventually(10, || {
            got.clear();
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.read_to_string(&mut got);
            }
            got == "hello-tcp\n"
        }),
        "{got:?}"
    );
    // The same host port again: dockerd's error, and nothing left behind.
    let (code, err) = a.fails(&["run", "--rm", "-p", &spec, &img, "true"]);
    assert_eq!(code, 125);
    assert!(err.contains("port is already allocated"), "{err}");
    a.ok(&["rm", "-f", "web"]);
    assert!(eventually(5, || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()), "port not released after rm");

    // UDP, answered by the host's python3 bind-mounted into the container.
    let uport = free_port();
    let uspec = format!("127.0.0.1:{uport}:9999/udp");
    let script = "import socket\ns=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999))\nwhile True:\n  d,a=s.recvfrom(100); s.sendto(b'pong:'+d, a)";
    a.ok(&[
        "run",
        "-d",
        "--name",
        "udp",
        "-p",
        &uspec,
        "-v",
        "/usr:/usr:ro",
        "-v",
        "/lib64:/lib64:ro",
        "-v",
        "/lib:/lib:ro",
        &img,
        "/usr/bin/python3",
        "-c",
        script,
    ]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 64];
    let answered = eventually(15, || {
        let _ = sock.send_to(b"ping", ("127.0.0.1", uport));
        matches!(sock.recv_from(&mut buf), Ok((n, _)) if &buf[..n] == b"pong:ping")
    });
    assert!(answered, "no UDP answer through the published port: {}", a.ok(&["logs", "udp"]));
    a.ok(&["rm", "-f", "udp"]);
    let _ = std::io::stdout().flush();
}

/// User-defined networks: IPAM as asked, containers finding each other by name and alias
/// through the network's DNS (and the world through it too), no traffic between networks,
/// inspect as dockerd shows it, rm and prune.
#[test]
fn user_networks_with_dns_ipam_and_isolation() {
    let a = Agent::start();
    let img = a.pull("busybox:latest");
    let third: u8 = a.subnet.split('.').nth(2).unwrap().parse().unwrap();
    // A subnet of its own per test agent (they share this machine's network namespace).
    let subnet = format!("10.{}.{}.0/24", 200 + third / 100, third);
    let prefix = format!("10.{}.{}.", 200 + third / 100, third);
    let net = a.ok(&[
        "network",
        "create",
        "--subnet",
        &subnet,
        "--ip-range",
        &format!("{prefix}128/25"),
        "--label",
        "k=v",
        "appnet",
    ]);
    assert_eq!(net.trim().len(), 64, "{net}");
    let (_, err) = a.fails(&["network", "create", "appnet"]);
    assert!(err.contains("network with name appnet already exists"), "{err}");
    a.ok(&[
        "run",
        "-d",
        "--name",
        "db",
        "--network",
        "appnet",
        "--network-alias",
        "database",
        &img,
        "sh",
        "-c",
        "while true; do echo from-db | nc -l -p 5432; done",
    ]);
    a.ok(&[
        "run",
        "-d",
        "--name",
        "pinned",
        "--network",
        "appnet",
        "--ip",
        &format!("{prefix}10"),
        &img,
        "sleep",
        "300",
    ]);
    let db_ip = a.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.appnet.IPAddress}}", "db"]).trim().to_owned();
    let last: u8 = db_ip.rsplit('.').next().unwrap().parse().unwrap();
    assert!(db_ip.starts_with(&prefix) && last >= 128, "--ip-range not honoured: {db_ip}");
    assert_eq!(
        a.ok(&["inspect", "-f", "{{.NetworkSettings.Networks.appnet.IPAddress}}", "pinned"]).trim(),
        format!("{prefix}10")
    );
    // By name, by alias, and by name.network, from a third container.
    for name in ["db", "database", "db.appnet"] {
        let got = a.docker(&["run", "--rm", "--network", "appnet", &img, "nc", name, "5432"]);
        assert_eq!(
            String::from_utf8_lossy(&got.stdout),
            "from-db\n",
            "{name}: {}",
            String::from_utf8_lossy(&got.stderr)
        );
    }
    let looked = a.ok(&["run", "--rm", "--network", "appnet", &img, "nslookup", "pinned"]);
    assert!(looked.contains(&format!("{prefix}10")), "{looked}");
    // A name that is no container goes to the engine's resolvers, which do not know it.
    a.fails(&["run", "--rm", "--network", "appnet", &img, "nslookup", "nosuchcontainer"]);
    // Inspect: the network with its pool and containers; the container's endpoint.
    let v: serde_json::Value = serde_json::from_str(&a.ok(&["network", "inspect", "appnet"])).unwrap();
    let n = &v[0];
    assert_eq!(n["IPAM"]["Config"][0]["Subnet"], subnet.as_str());
    // dockerd 20.10 shows no gateway for a subnet given without one.
    assert_eq!(n["IPAM"]["Config"][0]["Gateway"], serde_json::Value::Null);
    assert_eq!(n["Labels"]["k"], "v");
    assert_eq!(n["Containers"].as_object().unwrap().len(), 2, "{n}");
    let ep: serde_json::Value =
        serde_json::from_str(&a.ok(&["inspect", "-f", "{{json .NetworkSettings.Networks.appnet}}", "db"])).unwrap();
    assert!(ep["Aliases"].as_array().unwrap().iter().any(|x| x == "database"), "{ep}");
    assert_eq!(ep["NetworkID"], n["Id"]);
    assert_eq!(ep["Gateway"], format!("{prefix}1"));
    // Isolation: the default bridge cannot reach the user network, nor it the default one.
    a.ok(&[
        "run",
        "-d",
        "--name",
        "outside",
        &img,
        "sh",
        "-c",
        "while true; do echo from-outside | nc -l -p 7001; done",
    ]);
    let outside_ip = a.ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", "outside"]).trim().to_owned();
    let cross = a.docker(&["run", "--rm", &img, "nc", "-w", "2", &db_ip, "5432"]);
    assert!(cross.stdout.is_empty(), "the default bridge reached appnet: {cross:?}");
    let cross = a.docker(&["run", "--rm", "--network", "appnet", &img, "nc", "-w", "2", &outside_ip, "7001"]);
    assert!(cross.stdout.is_empty(), "appnet reached the default bridge: {cross:?}");
    // connect: a stopped container on the default bridge joins (with an alias), keeps the
    // bridge, and is found by the alias once started.
    a.ok(&["create", "--name", "mover", &img, "sleep", "300"]);
    a.ok(&["network", "connect", "--alias", "moved", "appnet", "mover"]);
    a.ok(&["start", "mover"]);
    let found = a.ok(&["run", "--rm", "--network", "appnet", &img, "nslookup", "moved"]);
    assert!(found.contains(&prefix), "{found}");
    let nets: serde_json::Value =
        serde_json::from_str(&a.ok(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", "mover"])).unwrap();
    assert!(nets["bridge"]["IPAddress"].as_str().unwrap().starts_with(&a.subnet), "{nets}");
    assert!(nets["appnet"]["IPAddress"].as_str().unwrap().starts_with(&prefix), "{nets}");
    a.ok(&["rm", "-f", "mover"]);

    // A second user-defined network: a running container joins it at once (an interface
    // there, names found through either network's DNS server, both ways) and leaves it at once.
    let subnet2 = format!("10.{}.{}.0/24", 210 + third / 100, third);
    let prefix2 = format!("10.{}.{}.", 210 + third / 100, third);
    a.ok(&["network", "create", "--subnet", &subnet2, "second"]);
    a.ok(&[
        "run",
        "-d",
        "--name",
        "only2",
        "--network",
        "second",
        &img,
        "sh",
        "-c",
        "while true; do echo from-second | nc -l -p 7002; done",
    ]);
    let reach = |from: &str, to: &str, port: &str| {
        String::from_utf8_lossy(&a.docker(&["exec", from, "nc", "-w", "2", to, port]).stdout).into_owned()
    };
    assert_eq!(reach("db", "only2", "7002"), "", "db reached second before joining it");
    a.ok(&["network", "connect", "--alias", "db2", "second", "db"]);
    let nets: serde_json::Value =
        serde_json::from_str(&a.ok(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", "db"])).unwrap();
    let db_ip2 = nets["second"]["IPAddress"].as_str().unwrap().to_owned();
    assert!(db_ip2.starts_with(&prefix2), "{nets}");
    assert_eq!(nets["appnet"]["IPAddress"], db_ip.as_str(), "{nets}");
    assert_eq!(nets["second"]["Gateway"], format!("{prefix2}1"));
    assert!(a.ok(&["exec", "db", "ip", "-o", "-4", "addr"]).contains(&format!("eth1    inet {db_ip2}/24")));
    assert_eq!(reach("db", "only2", "7002"), "from-second\n");
    assert_eq!(reach("db", "only2.second", "7002"), "from-second\n");
    let looked = a.ok(&["exec", "only2", "nslookup", "db2"]);
    assert!(looked.contains(&db_ip2), "{looked}");
    let members =
        a.ok(&["network", "inspect", "-f", "{{range .Containers}}{{.Name}}={{.IPv4Address}} {{end}}", "second"]);
    assert!(members.contains(&format!("db={db_ip2}/24")) && members.contains("only2="), "{members}");
    // Started on two networks at once (`--network` twice).
    let both = a.docker(&[
        "run",
        "--rm",
        "--network",
        "appnet",
        "--network",
        "second",
        &img,
        "sh",
        "-c",
        "nc -w 2 only2 7002 && nc -w 2 database 5432",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&both.stdout),
        "from-second\nfrom-db\n",
        "{}",
        String::from_utf8_lossy(&both.stderr)
    );
    // A network the container runs on goes at once (the first too: networks_match_docker_engine).
    a.ok(&["network", "disconnect", "second", "db"]);
    assert!(!a.ok(&["exec", "db", "ip", "-o", "-4", "addr"]).contains("eth1"));
    assert_eq!(reach("db", "only2", "7002"), "", "db still reaches second");
    let members = a.ok(&["network", "inspect", "-f", "{{range .Containers}}{{.Name}} {{end}}", "second"]);
    assert_eq!(members.trim(), "only2");
    a.ok(&["rm", "-f", "only2"]);
    a.ok(&["network", "rm", "second"]);
    // ls with filters; rm refused while in use; prune takes the unused only.
    a.ok(&["network", "create", "spare"]);
    let ls = a.ok(&["network", "ls", "--filter", "label=k=v", "--format", "{{.Name}}"]);
    assert_eq!(ls.trim(), "appnet");
    let all = a.ok(&["network", "ls", "--format", "{{.Name}} {{.Driver}}"]);
    for want in ["bridge bridge", "host host", "none null", "appnet bridge", "spare bridge"] {
        assert!(all.contains(want), "{want} in {all}");
    }
    let (_, err) = a.fails(&["network", "rm", "appnet"]);
    assert!(err.contains("has active endpoints"), "{err}");
    let (_, err) = a.fails(&["network", "rm", "bridge"]);
    assert!(err.contains("pre-defined network and cannot be removed"), "{err}");
    let pruned = a.ok(&["network", "prune", "-f"]);
    assert!(pruned.contains("spare") && !pruned.contains("appnet"), "{pruned}");
    a.ok(&["rm", "-f", "db", "pinned", "outside"]);
    a.ok(&["network", "rm", "appnet"]);
    let bridges = sh("ip -o link show type bridge").stdout;
    assert!(
        !String::from_utf8_lossy(&bridges).contains(&format!("br-{}", &net.trim()[..12])),
        "the bridge outlived its network"
    );
}

/// Networks as dockerd 20.10 has them, side by side: IPAM as it keeps and shows it (auxiliary
/// addresses shown, never given to a container, checked against the subnet and the gateway;
/// IPAM options; a gateway shown only when given with a subnet; the errors' words and status
/// codes), IPv6 off in containers, and `--sysctl`.
#[test]
fn networks_match_docker_engine() {
    let ours = berth_tests::on_both_engines(|docker, socket, img| {
        let img = img.to_owned();
        let ok = |args: &[&str]| berth_tests::ok_on(docker, args);
        let mut got = Vec::new();
        ok(&["network", "create", "--subnet", "10.77.0.0/24", "--aux-address", "h1=10.77.0.2"]
            .iter()
            .chain(&["--aux-address", "h2=10.77.0.5", "--ipam-opt", "x=y", "ipam1"])
            .copied()
            .collect::<Vec<_>>());
        ok(&["network", "create", "--subnet", "10.78.0.0/24", "--gateway", "10.78.0.9", "ipam2"]);
        ok(&["network", "create", "ipam3"]);
        got.push(ok(&["network", "inspect", "-f", "{{json .IPAM}}", "ipam1", "ipam2"]));
        got.push(ok(&["network", "inspect", "-f", "{{json .IPAM.Options}} {{.IPAM.Driver}}", "bridge", "ipam3"]));
        // The first address left for a container skips the auxiliary 10.77.0.2.
        got.push(ok(&[
            "run",
            "--rm",
            "--network",
            "ipam1",
            &img,
            "sh",
            "-c",
            "ifconfig eth0 | grep -o 'inet addr:[0-9.]*'",
        ]));
        // IPv6 off: no link-local address, no ::1; a sysctl turns it back on.
        let six = "cat /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/eth0/disable_ipv6; ifconfig | grep -c inet6 || true";
        got.push(ok(&["run", "--rm", &img, "sh", "-c", six]));
        got.push(ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            &img,
            "sh",
            "-c",
            "cat /proc/sys/net/ipv6/conf/lo/disable_ipv6",
        ]));
        let sysctls = [
            "--sysctl",
            "net.ipv6.conf.all.disable_ipv6=0",
            "--sysctl",
            "kernel.shmmax=12345",
            "--sysctl",
            "net.core.somaxconn=999",
        ];
        let read = "cat /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/kernel/shmmax /proc/sys/net/core/somaxconn";
        got.push(ok(&[&["run", "--rm"][..], &sysctls, &[&img, "sh", "-c", read]].concat()));
        let host = docker(&["run", "--rm", "--network", "host", "--sysctl", "net.core.somaxconn=1", &img, "true"]);
        let said = String::from_utf8_lossy(&host.stderr).into_owned();
        got.push(format!(
            "{} {}",
            host.status.success(),
            said.contains(r#"sysctl "net.core.somaxconn" not allowed in host network namespace"#)
        ));
        let taken = docker(&["run", "--rm", "--network", "ipam1", "--ip", "10.77.0.5", &img, "true"]);
        got.push(format!(
            "{} {}",
            taken.status.success(),
            String::from_utf8_lossy(&taken.stderr).lines().next().unwrap_or("")
        ));
        for (name, aux) in [("bad1", "10.91.0.1"), ("bad2", "10.92.0.1"), ("bad3", "nonsense")] {
            // dockerd keeps the pool of a network it refused: each its own subnet.
            let subnet = match name {
                "bad1" => "10.90.0.0/24",
                "bad2" => "10.92.0.0/24",
                _ => "10.93.0.0/24",
            };
            let body = format!(
                r#"{{"Name":"{name}","IPAM":{{"Config":[{{"Subnet":"{subnet}","AuxiliaryAddresses":{{"a":"{aux}"}}}}]}}}}"#
            );
            let (code, text) = berth_tests::http_on(socket, "POST", "/v1.41/networks/create", &body);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            got.push(format!("{code} {}", v["message"]));
        }
        // A running container taken off its first network: routed and resolved through the
        // next one, on that network's interface.
        ok(&["network", "create", "--subnet", "10.74.0.0/24", "first"]);
        ok(&["network", "create", "--subnet", "10.75.0.0/24", "second"]);
        ok(&["run", "-d", "--name", "peer", "--network", "second", &img, "sleep", "300"]);
        ok(&["run", "-d", "--name", "moved", "--network", "first", &img, "sleep", "300"]);
        ok(&["network", "connect", "second", "moved"]);
        ok(&["network", "disconnect", "first", "moved"]);
        let inside = "ip route; ls /sys/class/net | tr '\\n' ' '; ping -c1 -W5 peer >/dev/null && echo reached peer";
        got.push(ok(&["exec", "moved", "sh", "-c", inside]));
        got.push(ok(&[
            "inspect",
            "-f",
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}} {{end}}",
            "moved",
        ]));
        got.push(ok(&["network", "inspect", "-f", "{{len .Containers}}", "first", "second"]));
        ok(&["network", "disconnect", "second", "moved"]);
        got.push(ok(&["exec", "moved", "ls", "/sys/class/net"]));
        ok(&["rm", "-f", "moved", "peer"]);
        // What connect refuses, in dockerd's words and codes.
        ok(&["run", "-d", "--name", "onnone", "--network", "none", &img, "sleep", "300"]);
        ok(&["run", "-d", "--name", "onhost", "--network", "host", &img, "sleep", "300"]);
        ok(&["run", "-d", "--name", "onbridge", &img, "sleep", "300"]);
        for (net, ctr) in [("first", "onnone"), ("first", "onhost"), ("host", "onbridge")] {
            let body = format!(r#"{{"Container":"{ctr}"}}"#);
            let (code, text) = berth_tests::http_on(socket, "POST", &format!("/v1.41/networks/{net}/connect"), &body);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            got.push(format!("{code} {}", v["message"]));
        }
        ok(&["rm", "-f", "onnone", "onhost", "onbridge"]);
        // A created container made for no network joins none either; one taken off its first
        // network keeps the mode as given and starts on what it has left.
        ok(&["create", "--name", "madenone", "--network", "none", &img, "sleep", "300"]);
        let (code, text) =
            berth_tests::http_on(socket, "POST", "/v1.41/networks/first/connect", r#"{"Container":"madenone"}"#);
        got.push(format!("{code} {}", serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()["message"]));
        let nets = "{{.HostConfig.NetworkMode}} [{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}]";
        ok(&["create", "--name", "left", "--network", "first", &img, "sleep", "300"]);
        ok(&["network", "connect", "second", "left"]);
        ok(&["network", "disconnect", "first", "left"]);
        ok(&["create", "--name", "alone", "--network", "first", &img, "sleep", "300"]);
        ok(&["network", "disconnect", "first", "alone"]);
        got.push(ok(&["inspect", "-f", nets, "left", "alone"]));
        ok(&["start", "left", "alone"]);
        got.push(ok(&["inspect", "-f", nets, "left", "alone"]));
        got.push(ok(&["exec", "left", "ls", "/sys/class/net"]));
        got.push(ok(&["exec", "alone", "ls", "/sys/class/net"]));
        ok(&["rm", "-f", "madenone", "left", "alone"]);
        ok(&["network", "rm", "ipam1", "ipam2", "ipam3", "first", "second"]);
        got
    });
    assert!(ours[0].contains(r#""AuxiliaryAddresses":{"h1":"10.77.0.2","h2":"10.77.0.5"}"#), "{}", ours[0]);
    assert!(ours[2].contains("10.77.0.3"), "{}", ours[2]);
    assert_eq!(ours[3], "1\n1\n0\n");
    assert_eq!(ours[6], "false true");
    assert!(ours.iter().any(|o| o == "first [second ]\nfirst []\n"), "{ours:#?}");
    assert!(ours.iter().any(|o| o.contains("private (none) mode")), "{ours:#?}");
    assert!(ours.iter().any(|o| o == "lo\n"), "a container that left every network has loopback only");
    let moved = ours.iter().find(|o| o.contains("default via")).expect("the moved container's routes");
    assert!(moved.contains("default via 10.75.0.1 dev eth1") && moved.contains("reached peer"), "{moved}");
}

#[test]
fn ipv6_networks_match_docker_engine() {
    let ours = berth_tests::on_both_engines(|docker, socket, img| {
        let img = img.to_owned();
        let ok = |args: &[&str]| berth_tests::ok_on(docker, args);
        // What a refused run says first.
        let refused = |args: &[&str]| {
            let out = docker(args);
            let said = String::from_utf8_lossy(&out.stderr).into_owned();
            format!("{} {}", out.status.success(), said.lines().find(|l| l.contains("Error")).unwrap_or(""))
        };
        let mut got = Vec::new();
        ok(&["network", "create", "--ipv6", "--subnet", "10.71.0.0/24", "--subnet", "fd00:71::/64"]
            .iter()
            .chain(&["--gateway", "fd00:71::fe", "six1"])
            .copied()
            .collect::<Vec<_>>());
        // An IPv6 subnet without --ipv6 is kept and shown, and gives containers no address.
        ok(&["network", "create", "--subnet", "fd00:72::/64", "six2"]);
        ok(&["network", "create", "--ipv6", "--subnet", "fd00:73::/64", "--ip-range", "fd00:73::100/120", "six3"]);
        got.push(ok(&["network", "inspect", "-f", "{{.EnableIPv6}} {{json .IPAM.Config}}", "six1"]));
        got.push(ok(&["network", "inspect", "-f", "{{.EnableIPv6}} {{json (index .IPAM.Config 1)}}", "six2", "six3"]));
        let (code, text) =
            berth_tests::http_on(socket, "POST", "/v1.41/networks/create", r#"{"Name":"six4","EnableIPv6":true}"#);
        got.push(format!("{code} {}", serde_json::from_str::<serde_json::Value>(&text).unwrap_or_default()["message"]));
        ok(&["run", "-d", "--name", "a6", "--network", "six1", "--ip6", "fd00:71::99"]
            .iter()
            .chain(&["--link-local-ip", "169.254.5.5", "--link-local-ip", "fe80::5", &img, "sleep", "300"])
            .copied()
            .collect::<Vec<_>>());
        ok(&["run", "-d", "--name", "b6", "--network", "six1", &img, "sleep", "300"]);
        let endpoint = "{{with .NetworkSettings.Networks.six1}}{{json .IPAMConfig}} {{.GlobalIPv6Address}}/{{.GlobalIPv6PrefixLen}} via {{.IPv6Gateway}}{{end}}";
        got.push(ok(&["inspect", "-f", endpoint, "a6", "b6"]));
        let mut members: Vec<String> = ok(&[
            "network",
            "inspect",
            "-f",
            "{{range .Containers}}{{.Name}}={{.IPv4Address}},{{.IPv6Address}} {{end}}",
            "six1",
        ])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
        members.sort();
        got.push(members.join(" "));
        // Inside: the addresses (the link-local one made from the MAC too), the routes, the
        // hosts file, and the other container reached over IPv6 by name.
        let inside = "ip -6 addr show eth0 | grep -o 'inet6 [^ ]*' | sort; ip -4 addr show eth0 | grep -o 'inet [^ ]*'; \
                      ip -6 route | grep default; ip -6 addr show lo | grep -o 'inet6 [^ ]*'; \
                      grep -v docker.internal /etc/hosts | sed \"s/$(hostname)/HOST/\"";
        got.push(ok(&["exec", "a6", "sh", "-c", inside]));
        got.push(ok(&["exec", "b6", "sh", "-c", "ping -6 -c1 -W5 a6 >/dev/null && echo reached a6 over IPv6"]));
        // A container on the default bridge joins: IPv6 comes on, routed through the new network.
        ok(&["run", "-d", "--name", "c6", &img, "sleep", "300"]);
        ok(&["network", "connect", "--ip6", "fd00:71::33", "six1", "c6"]);
        let joined = "ip -6 route | grep default; ip -6 addr show lo | grep -o 'inet6 [^ ]*'; \
                      ip -6 addr show eth1 | grep -o 'inet6 fd[^ ]*'; ping -6 -c1 -W5 a6 >/dev/null && echo reached";
        got.push(ok(&["exec", "c6", "sh", "-c", joined]));
        got.push(ok(&[
            "run",
            "--rm",
            "--network",
            "six2",
            "--ip6",
            "fd00:72::5",
            &img,
            "sh",
            "-c",
            "ip -6 addr | grep -c inet6 || true",
        ]));
        got.push(ok(&[
            "run",
            "--rm",
            "--network",
            "six3",
            &img,
            "sh",
            "-c",
            "ip -6 addr show eth0 | grep -o 'inet6 fd[^ ]*'",
        ]));
        // Refusals, in dockerd's words.
        got.push(refused(&["run", "--rm", "--network", "six1", "--ip6", "fd00:1::5", &img, "true"]));
        got.push(refused(&["run", "--rm", "--network", "six1", "--ip6", "fd00:71::99", &img, "true"]));
        got.push(refused(&["run", "--rm", "--network", "six1", "--ip6", "fd00:71::fe", &img, "true"]));
        got.push(refused(&["run", "--rm", "--network", "six1", "--ip6", "zzz", &img, "true"]));
        got.push(refused(&["run", "--rm", "--ip6", "fd00::9", &img, "true"]));
        got.push(refused(&["run", "--rm", "--network", "six1", "--link-local-ip", "10.0.0.1", &img, "true"]));
        ok(&["rm", "-f", "a6", "b6", "c6"]);
        ok(&["network", "rm", "six1", "six2", "six3"]);
        got
    });
    assert!(
        ours[3].contains(
            r#"{"IPv6Address":"fd00:71::99","LinkLocalIPs":["169.254.5.5","fe80::5"]} fd00:71::99/64 via fd00:71::fe"#
        ),
        "{}",
        ours[3]
    );
    assert!(
        ours[5].contains("default via fd00:71::fe dev eth0") && ours[5].contains("inet6 fe80::5/64"),
        "{}",
        ours[5]
    );
    assert_eq!(ours[6], "reached a6 over IPv6\n");
    assert!(ours[7].contains("default via fd00:71::fe dev eth1") && ours[7].ends_with("reached\n"), "{}", ours[7]);
    assert_eq!(ours[9], "inet6 fd00:73::101/64\n");
}
