//! The transport conformance suite: what every host↔guest transport (native vsock, hybrid
//! vsock, the virtio-serial mux) must do, checked against a real `berth-agent`: natively
//! (tests/tests/transport.rs) and in the VM (tests/tests/vm.rs).

use std::time::{Duration, Instant};

use berth_core::control::{self, Request, Response};
use berth_core::transport::Transport;
use berth_protocol::{DOCKER_PORT, ECHO_PORT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LIMIT: Duration = Duration::from_secs(60);

/// A payload that shows misordered or dropped bytes (not one repeated byte).
fn payload(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed).collect()
}

/// Writes `data` to the echo port, ends its input, and returns what came back.
async fn echo(t: &dyn Transport, data: &[u8]) -> Vec<u8> {
    let s = t.connect(ECHO_PORT).await.expect("connect to the echo port");
    let (mut rd, mut wr) = tokio::io::split(s);
    let (_, got) = tokio::join!(
        async {
            wr.write_all(data).await.expect("write to echo");
            wr.shutdown().await.expect("half-close");
        },
        async {
            let mut got = Vec::new();
            rd.read_to_end(&mut got).await.expect("read the echo");
            got
        }
    );
    got
}

/// Runs every check on `t`; panics naming the first that fails.
pub async fn run(t: &dyn Transport) {
    let kind = t.kind();
    tokio::time::timeout(LIMIT, checks(t)).await.unwrap_or_else(|_| panic!("{kind}: the suite took over {LIMIT:?}"));
}

async fn checks(t: &dyn Transport) {
    let kind = t.kind();

    // The control channel: a versioned hello, then a request.
    let a = control::request_via(t, &Request::Health).await.unwrap_or_else(|e| panic!("{kind}: control: {e}"));
    assert!(matches!(a.response, Response::Health { .. }), "{kind}: {:?}", a.response);
    assert!(!a.agent.is_empty(), "{kind}: the agent's hello names no version");

    // The Docker API answers on its port.
    let mut s = t.connect(DOCKER_PORT).await.unwrap();
    s.write_all(b"GET /_ping HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("OK"), "{kind}: /_ping answered {text:?}");

    // Bytes arrive whole and in order, both ways, and the end of input is passed on (a
    // half-close: the echo ends only once the guest has read our end).
    let big = payload(8 << 20, 1);
    assert!(echo(t, &big).await == big, "{kind}: 8 MiB did not come back intact");

    // A stream ended at once reads as ended, not as a hang.
    assert!(echo(t, b"").await.is_empty(), "{kind}: an empty stream echoed bytes");

    // Many streams at once stay apart.
    let mut jobs = Vec::new();
    for i in 0..32u8 {
        let data = payload(64 * 1024 + i as usize, i);
        jobs.push(async move { echo(t, &data).await == data });
    }
    let results = futures_util::future::join_all(jobs).await;
    assert!(results.iter().all(|ok| *ok), "{kind}: concurrent streams mixed or lost bytes");

    // A stream whose reader stalls does not stall the others: fill one without reading it,
    // then another stream must still get through.
    let mut stalled = t.connect(ECHO_PORT).await.unwrap();
    let filler = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        // Ends once flow control stops it (the write blocks) or after 64 MiB.
        for _ in 0..1024 {
            if tokio::time::timeout(Duration::from_secs(2), stalled.write_all(&chunk)).await.is_err() {
                break;
            }
        }
        stalled
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let start = Instant::now();
    let small = payload(1000, 9);
    assert!(
        tokio::time::timeout(Duration::from_secs(10), echo(t, &small)).await.ok().as_deref() == Some(&small[..]),
        "{kind}: a stalled stream blocked another"
    );
    eprintln!("{kind}: an echo beside a stalled stream took {:?}", start.elapsed());
    drop(filler.await);

    // A port nothing serves ends the stream instead of leaving it hanging.
    let nothing = async {
        let mut s = t.connect(4321).await?;
        let _ = s.write_all(b"x").await;
        let mut buf = [0u8; 1];
        s.read(&mut buf).await
    };
    match tokio::time::timeout(Duration::from_secs(10), nothing).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("{kind}: a port nothing serves sent {n} bytes"),
        Err(_) => panic!("{kind}: a stream to a port nothing serves hangs"),
    }
}
