//! Many streams over one byte link: the transport for hosts whose QEMU has no vsock (a
//! virtio-serial port on macOS and Windows), and for hybrid vsock, whose device (vhost-device-vsock
//! 0.3) cannot carry a half-closed connection.
//!
//! The streams are [yamux] streams: credit-based flow control per stream, so one slow reader
//! does not stall the link, and a write-side close (FIN) that the other side reads as end of
//! input, which `docker run -i` needs. What yamux does not give, and this crate adds:
//!
//! - **A session handshake that resynchronises a link with stale bytes.** A virtio-serial port
//!   has no connections: bytes of a daemon that died mid-session can still sit in the guest's
//!   buffer when the next daemon connects. So the host repeats `BERTH-MUX <version> <nonce>`
//!   until the guest answers `BERTH-MUX-OK <version> <nonce>` (anything else is skipped), then
//!   sends `BERTH-MUX-START <nonce>`; the guest answers `BERTH-MUX-READY <nonce>` and both start
//!   yamux right after those lines. Each side drops everything before its marker, so repeated
//!   hellos and answers never reach yamux. A version the guest does not speak is refused with
//!   `BERTH-MUX-ERR <version>`.
//! - **Ports.** Every stream starts with the 4-byte big-endian guest port it is for (the same
//!   numbers as vsock ports), so one link carries the Docker API, the control channel and the
//!   rest, as vsock would.
//!
//! The host is yamux's client and only opens streams; the guest is the server and only accepts.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;

/// The version of the handshake and framing; a change the other side cannot read bumps it.
pub const VERSION: u32 = 1;
/// The longest handshake line; longer runs of bytes without a newline are skipped as noise.
const MAX_LINE: usize = 256;
/// How often the host repeats its hello until the guest answers.
const HELLO_EVERY: Duration = Duration::from_millis(500);

/// A stream of a session, as tokio I/O. Shutting down its write side sends yamux's FIN.
pub type MuxStream = Compat<yamux::Stream>;

/// Errors of a session.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    #[error("the link failed")]
    Io(#[from] io::Error),
    #[error("the link closed during the handshake")]
    Closed,
    #[error("the guest does not speak mux version {ours} (it answered: {theirs}); update Berth on both sides")]
    Version { ours: u32, theirs: String },
    #[error("the session failed: {0}")]
    Yamux(#[from] yamux::ConnectionError),
}

/// The link, buffered both ways. yamux writes a frame's 12-byte header and its body as two
/// writes and flushes after each frame, so a write buffer of one frame's size turns them into
/// one write: on a link where every write is a packet (a vsock device, a serial port) that
/// halves the packets. Reads are buffered for the handshake's lines and the headers.
type Link<L> = BufReader<BufWriter<L>>;

fn buffered<L: AsyncRead + AsyncWrite>(link: L) -> Link<L> {
    BufReader::with_capacity(FRAME + 64, BufWriter::with_capacity(FRAME + 64, link))
}

/// The largest data frame yamux sends.
const FRAME: usize = 64 * 1024;

fn config() -> yamux::Config {
    let mut c = yamux::Config::default();
    // Docker clients open a connection per request and keep some (logs -f, attach) for long;
    // 512 concurrent streams is yamux's default and ours too, with at most 1 GiB of receive
    // windows in total (the default) so a flood of data cannot exhaust memory.
    c.set_split_send_size(FRAME);
    c
}

/// Reads one line (without its newline), skipping runs longer than [`MAX_LINE`]. `buf` keeps a
/// partial line across calls, so a caller may cancel this between calls.
async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> Result<String, MuxError> {
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Err(MuxError::Closed);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if done {
            let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
            buf.clear();
            return Ok(line);
        }
        if buf.len() > MAX_LINE {
            buf.clear();
        }
    }
}

/// The host's side of a session: opens streams to guest ports. Dropping the last clone closes
/// the link (and the streams still open on it).
#[derive(Clone)]
pub struct Session {
    requests: mpsc::Sender<oneshot::Sender<yamux::Result<yamux::Stream>>>,
    closed: CancellationToken,
}

impl Session {
    /// Makes a session over `link` (the host end of a virtio-serial port, or a stream to the
    /// guest's mux vsock port). Waits as long as the guest takes to answer: a serial port has
    /// no connect, so the caller bounds this with its own timeout.
    pub async fn connect<L>(link: L) -> Result<Session, MuxError>
    where
        L: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut link = buffered(link);
        let nonce: u64 = rand::random();
        let hello = format!("BERTH-MUX {VERSION} {nonce:016x}\n");
        let ok = format!("BERTH-MUX-OK {VERSION} {nonce:016x}");
        let mut buf = Vec::new();
        loop {
            link.write_all(hello.as_bytes()).await?;
            link.flush().await?;
            let answered = tokio::time::timeout(HELLO_EVERY, async {
                loop {
                    let line = read_line(&mut link, &mut buf).await?;
                    if line == ok {
                        return Ok(());
                    }
                    if let Some(theirs) = line.strip_prefix("BERTH-MUX-ERR ") {
                        return Err(MuxError::Version { ours: VERSION, theirs: theirs.to_owned() });
                    }
                }
            })
            .await;
            match answered {
                Ok(Ok(())) => break,
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        link.write_all(format!("BERTH-MUX-START {nonce:016x}\n").as_bytes()).await?;
        link.flush().await?;
        let ready = format!("BERTH-MUX-READY {nonce:016x}");
        while read_line(&mut link, &mut buf).await? != ready {}
        Ok(Session::drive(yamux::Connection::new(link.compat(), config(), yamux::Mode::Client)))
    }

    /// Runs the connection in a task of its own: yamux makes progress only while polled.
    fn drive<T>(mut conn: yamux::Connection<T>) -> Session
    where
        T: futures_util::AsyncRead + futures_util::AsyncWrite + Unpin + Send + 'static,
    {
        let (requests, mut rx) = mpsc::channel::<oneshot::Sender<yamux::Result<yamux::Stream>>>(64);
        let closed = CancellationToken::new();
        let done = closed.clone();
        tokio::spawn(async move {
            let mut waiting = VecDeque::new();
            let mut dropped = false;
            let outcome: yamux::Result<()> = poll_fn(|cx| {
                // Every handle dropped: nobody can open streams any more, so close the link.
                if dropped {
                    return conn.poll_close(cx);
                }
                loop {
                    match rx.poll_recv(cx) {
                        Poll::Ready(Some(reply)) => waiting.push_back(reply),
                        Poll::Ready(None) => {
                            dropped = true;
                            return conn.poll_close(cx);
                        }
                        Poll::Pending => break,
                    }
                }
                while !waiting.is_empty() {
                    match conn.poll_new_outbound(cx) {
                        Poll::Ready(Ok(stream)) => {
                            let _ = waiting.pop_front().expect("not empty").send(Ok(stream));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
                loop {
                    match conn.poll_next_inbound(cx) {
                        // The guest never opens streams; refuse any by dropping it (a reset).
                        Poll::Ready(Some(Ok(_))) => continue,
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                        Poll::Ready(None) => return Poll::Ready(Ok(())),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
            match outcome {
                Ok(()) => tracing::info!("mux session closed by the guest"),
                Err(e) => tracing::warn!(error = %e, "mux session failed"),
            }
            done.cancel();
        });
        Session { requests, closed }
    }

    /// Whether the session has ended (the guest went away, or the link failed).
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Opens a stream to the guest's `port`.
    pub async fn open(&self, port: u32) -> io::Result<MuxStream> {
        let gone = || io::Error::new(io::ErrorKind::ConnectionReset, "the mux session has ended");
        let (tx, rx) = oneshot::channel();
        self.requests.send(tx).await.map_err(|_| gone())?;
        let stream = rx.await.map_err(|_| gone())?.map_err(|e| io::Error::new(io::ErrorKind::ConnectionReset, e))?;
        let mut stream = stream.compat();
        stream.write_all(&port.to_be_bytes()).await?;
        Ok(stream)
    }
}

/// The guest's side of a session over `link`: waits for the host's handshake, then hands every
/// stream the host opens to `handle` with the port it asked for. Returns when the link closes.
pub async fn serve<L, F>(link: L, handle: F) -> Result<(), MuxError>
where
    L: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(u32, MuxStream) + Clone + Send + 'static,
{
    let mut link = buffered(link);
    let mut buf = Vec::new();
    let mut answered: Option<String> = None;
    loop {
        let line = read_line(&mut link, &mut buf).await?;
        if let Some(rest) = line.strip_prefix("BERTH-MUX ") {
            let mut words = rest.split(' ');
            let (version, nonce) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
            if version != VERSION.to_string() {
                link.write_all(format!("BERTH-MUX-ERR {VERSION}\n").as_bytes()).await?;
            } else {
                link.write_all(format!("BERTH-MUX-OK {VERSION} {nonce}\n").as_bytes()).await?;
                answered = Some(nonce.to_owned());
            }
            link.flush().await?;
        } else if let Some(nonce) = line.strip_prefix("BERTH-MUX-START ")
            && answered.as_deref() == Some(nonce)
        {
            link.write_all(format!("BERTH-MUX-READY {nonce}\n").as_bytes()).await?;
            link.flush().await?;
            break;
        }
    }
    let mut conn = yamux::Connection::new(link.compat(), config(), yamux::Mode::Server);
    while let Some(stream) = poll_fn(|cx| conn.poll_next_inbound(cx)).await {
        let handle = handle.clone();
        let mut stream = stream?.compat();
        // The port header is read off the connection's task, so one slow opener does not
        // stall the others.
        tokio::spawn(async move {
            if let Ok(port) = stream.read_u32().await {
                handle(port, stream);
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server(link: tokio::io::DuplexStream) -> tokio::task::JoinHandle<Result<(), MuxError>> {
        tokio::spawn(serve(link, |port, stream: MuxStream| {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(stream);
                wr.write_all(format!("port {port}\n").as_bytes()).await.unwrap();
                tokio::io::copy(&mut rd, &mut wr).await.unwrap();
                wr.shutdown().await.unwrap();
            });
        }))
    }

    #[tokio::test]
    async fn streams_carry_ports_data_and_half_close() {
        let (host, guest) = tokio::io::duplex(64 * 1024);
        let server = echo_server(guest);
        let session = Session::connect(host).await.unwrap();
        let mut handles = Vec::new();
        for port in [1024u32, 2375, 7] {
            let session = session.clone();
            handles.push(tokio::spawn(async move {
                let mut s = session.open(port).await.unwrap();
                let payload = vec![port as u8; 300_000];
                let (mut rd, mut wr) = tokio::io::split(&mut s);
                let (_, got) = tokio::join!(
                    async {
                        wr.write_all(&payload).await.unwrap();
                        // Half-close: the echo ends only if the guest sees our end of input.
                        wr.shutdown().await.unwrap();
                    },
                    async {
                        let mut got = Vec::new();
                        rd.read_to_end(&mut got).await.unwrap();
                        got
                    }
                );
                let head = format!("port {port}\n");
                assert_eq!(&got[..head.len()], head.as_bytes());
                assert_eq!(&got[head.len()..], &payload[..]);
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
        drop(session);
        assert!(tokio::time::timeout(Duration::from_secs(5), server).await.is_ok());
    }

    /// Both ends of one stream split, each half in a task of its own, writing and reading at
    /// once: what the shares lanes do. yamux 0.13's stream keeps one waker for its command
    /// channel, so a reader's window update used to take the place of a blocked writer's
    /// waker and the writer slept for good (libp2p/rust-yamux#232, fixed in yamux 0.14.1).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn split_halves_in_two_tasks_both_make_progress() {
        const CHUNK: usize = 64 * 1024;
        const CHUNKS: usize = 200;
        async fn both_ways(stream: MuxStream) -> usize {
            let (mut rd, mut wr) = tokio::io::split(stream);
            let writer = tokio::spawn(async move {
                let chunk = vec![7u8; CHUNK];
                for _ in 0..CHUNKS {
                    wr.write_all(&chunk).await.unwrap();
                }
                wr.shutdown().await.unwrap();
            });
            let reader = tokio::spawn(async move {
                let (mut got, mut buf) = (0, vec![0u8; 4096]);
                loop {
                    match rd.read(&mut buf).await.unwrap() {
                        0 => return got,
                        n => got += n,
                    }
                }
            });
            writer.await.unwrap();
            reader.await.unwrap()
        }
        // A narrow link keeps yamux's command channels full, where the lost wakeup happens;
        // it does not happen every time, so several rounds.
        for _round in 0..8 {
            let (host, guest) = tokio::io::duplex(4 * 1024);
            let (tx, rx) = oneshot::channel();
            let tx = std::sync::Mutex::new(Some(tx));
            let tx = std::sync::Arc::new(tx);
            tokio::spawn(serve(guest, move |_, stream| {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(tokio::spawn(both_ways(stream)));
                }
            }));
            let session = Session::connect(host).await.unwrap();
            let host_side = tokio::spawn(both_ways(session.open(9).await.unwrap()));
            let guest_side = rx.await.unwrap();
            let within = Duration::from_secs(30);
            let host_got = tokio::time::timeout(within, host_side).await.expect("the host's halves stalled").unwrap();
            let guest_got =
                tokio::time::timeout(within, guest_side).await.expect("the guest's halves stalled").unwrap();
            assert_eq!((host_got, guest_got), (CHUNK * CHUNKS, CHUNK * CHUNKS));
        }
    }

    #[tokio::test]
    async fn handshake_skips_stale_bytes_from_a_dead_session() {
        let (mut host, guest) = tokio::io::duplex(64 * 1024);
        // What a daemon that died mid-session left in the port: a hello, half a frame, noise.
        host.write_all(b"BERTH-MUX 1 00000000000000aa\n\x00\x01\x02garbage without end").await.unwrap();
        host.write_all(&[b'x'; 1000]).await.unwrap();
        host.write_all(b"\nBERTH-MUX-START 00000000000000aa").await.unwrap();
        let server = echo_server(guest);
        // The stale START has no newline yet, so it joins the new hello's line and is skipped.
        let session = tokio::time::timeout(Duration::from_secs(10), Session::connect(host)).await.unwrap().unwrap();
        let mut s = session.open(5).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "port 5\nping");
        assert!(!server.is_finished());
    }

    #[tokio::test]
    async fn a_guest_of_another_version_is_named() {
        let (host, mut guest) = tokio::io::duplex(1024);
        tokio::spawn(async move {
            let mut line = Vec::new();
            let mut r = BufReader::new(&mut guest);
            r.read_until(b'\n', &mut line).await.unwrap();
            guest.write_all(b"BERTH-MUX-ERR 2\n").await.unwrap();
            std::future::pending::<()>().await;
        });
        match Session::connect(host).await {
            Err(MuxError::Version { ours: 1, theirs }) => assert_eq!(theirs, "2"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("connected to a guest of another version"),
        }
    }

    #[tokio::test]
    async fn a_link_that_closes_ends_the_session() {
        let (host, guest) = tokio::io::duplex(1024);
        let server = echo_server(guest);
        let session = Session::connect(host).await.unwrap();
        server.abort();
        let _ = server.await;
        tokio::time::timeout(Duration::from_secs(5), session.closed.cancelled()).await.unwrap();
        assert!(session.is_closed());
        assert!(session.open(1).await.is_err());
    }
}
