//! Hijacked connections and dockerd's stream framing.
//!
//! Attach and exec answer `101 UPGRADED` and then speak raw bytes on the connection. Without a
//! TTY, output is multiplexed: each frame is an 8-byte header `[stream, 0, 0, 0, len (u32,
//! big-endian)]` followed by `len` bytes, stream 1 for stdout and 2 for stderr. With a TTY
//! the bytes go as they are.
//!
//! Pulls and builds answer a JSON progress stream, one object per line ([`json_progress`]).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};

use super::ApiError;

/// One multiplexed frame.
pub fn frame(stream: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + data.len());
    b.put_u8(stream);
    b.put_bytes(0, 3);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    b.freeze()
}

pub fn content_type(tty: bool) -> &'static str {
    if tty { "application/vnd.docker.raw-stream" } else { "application/vnd.docker.multiplexed-stream" }
}

/// Takes the upgrade future out of `req` (the client must ask `Upgrade: tcp`), and the 101
/// response to send.
pub fn upgrade(req: &mut Request, tty: bool) -> Result<(hyper::upgrade::OnUpgrade, Response), ApiError> {
    if !req.headers().contains_key(header::UPGRADE) {
        return Err(ApiError::invalid("this endpoint needs a connection upgrade (Upgrade: tcp)"));
    }
    let on = hyper::upgrade::on(req);
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(tty)));
    Ok((on, resp))
}

/// The last line of a progress stream whose operation failed: dockerd's `errorDetail` (with
/// the exit code of a build's failed RUN, which the docker CLI exits with).
pub(super) fn error_line(e: berth_runtime::EngineError) -> serde_json::Value {
    let code = match &e {
        berth_runtime::EngineError::CommandFailed { code, .. } => Some(*code),
        _ => None,
    };
    let msg = ApiError::from(e).message;
    match code {
        Some(c) => serde_json::json!({"errorDetail": {"code": c, "message": msg}, "error": msg}),
        None => serde_json::json!({"errorDetail": {"message": msg}, "error": msg}),
    }
}

fn json_line(v: &serde_json::Value) -> Bytes {
    let mut b = serde_json::to_vec(v).expect("json");
    b.extend_from_slice(b"\r\n");
    b.into()
}

/// Answers an operation that reports progress on `rx` and ends with `task`'s result, as dockerd
/// answers pulls and builds: an error before the first line is an HTTP error; after it, the
/// stream's last line. (The channel closes only when the operation is over, so no first line
/// means it has ended.)
pub async fn json_progress<E: Send + 'static, T: Send + 'static>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<E>,
    task: tokio::task::JoinHandle<Result<T, berth_runtime::EngineError>>,
    line_of: fn(&E) -> serde_json::Value,
) -> Result<Response, ApiError> {
    let first = rx.recv().await;
    let task = match first {
        Some(_) => Some(task),
        None => match task.await {
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => return Err(ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
            Ok(Ok(_)) => None,
        },
    };
    let stream = futures_util::stream::unfold((first, rx, task), move |(pending, mut rx, task)| async move {
        if let Some(e) = pending {
            return Some((Ok::<_, std::io::Error>(json_line(&line_of(&e))), (None, rx, task)));
        }
        if let Some(e) = rx.recv().await {
            return Some((Ok(json_line(&line_of(&e))), (None, rx, task)));
        }
        let line = match task?.await {
            Ok(Ok(_)) => return None,
            Ok(Err(e)) => error_line(e),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        Some((Ok(json_line(&line)), (None, rx, None)))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// The key sequence that detaches a client from a container's terminal (`detachKeys` on an
/// attach, default ctrl-p ctrl-q), as dockerd reads it: comma-separated keys, each one
/// character or `ctrl-<c>` for a letter or one of `@[\]^_`.
pub fn detach_keys(spec: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let spec = spec.filter(|s| !s.is_empty()).unwrap_or("ctrl-p,ctrl-q");
    let invalid = || ApiError::invalid(format!("Invalid detach keys ({spec}) provided"));
    spec.split(',')
        .map(|key| match key.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => {
                let c = c.as_bytes()[0].to_ascii_lowercase();
                match c {
                    b'a'..=b'z' => Ok(c - b'a' + 1),
                    b'@' => Ok(0),
                    b'[' | b'\\' | b']' | b'^' | b'_' => Ok(c - b'@'),
                    _ => Err(invalid()),
                }
            }
            _ if key.len() == 1 => Ok(key.as_bytes()[0]),
            _ => Err(invalid()),
        })
        .collect()
}

/// Watches a terminal's input for the detach keys: what it passes on, and whether the keys
/// came. Bytes that begin the sequence are held until it is whole (then dropped) or broken
/// (then passed on), so a client never loses a keystroke that was not a detach.
pub struct Escape {
    keys: Vec<u8>,
    held: usize,
}

impl Escape {
    pub fn new(keys: Vec<u8>) -> Escape {
        Escape { keys, held: 0 }
    }

    /// The input to pass on from `input`, and whether the client detached in it (what came
    /// after the keys is dropped).
    pub fn feed(&mut self, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.held] {
                self.held += 1;
                if self.held == self.keys.len() {
                    return (out, true);
                }
                continue;
            }
            out.extend_from_slice(&self.keys[..self.held]);
            self.held = 0;
            if b == self.keys[0] {
                self.held = 1;
                if self.keys.len() == 1 {
                    return (out, true);
                }
            } else {
                out.push(b);
            }
        }
        (out, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_header_is_dockerds() {
        let f = frame(2, b"hey");
        assert_eq!(&f[..], &[2, 0, 0, 0, 0, 0, 0, 3, b'h', b'e', b'y']);
    }

    #[test]
    fn detach_keys_are_read_as_dockerd_reads_them() {
        assert_eq!(detach_keys(None).unwrap(), [16, 17]);
        assert_eq!(detach_keys(Some("ctrl-a,x")).unwrap(), [1, b'x']);
        assert_eq!(detach_keys(Some("ctrl-@,ctrl-[,ctrl-_")).unwrap(), [0, 27, 31]);
        assert!(detach_keys(Some("ctrl-ab")).is_err());
        assert!(detach_keys(Some("ab")).is_err());
        let mut e = Escape::new(vec![16, 17]);
        assert_eq!(e.feed(b"ls\n"), (b"ls\n".to_vec(), false));
        // Split across reads, and a false start passed on whole.
        assert_eq!(e.feed(&[16]), (vec![], false));
        assert_eq!(e.feed(&[b'a', 16]), (vec![16, b'a'], false));
        assert_eq!(e.feed(&[16, 17, b'z']), (vec![16], true));
        let mut e = Escape::new(vec![1]);
        assert_eq!(e.feed(b"ab\x01c"), (b"ab".to_vec(), true));
    }
}
