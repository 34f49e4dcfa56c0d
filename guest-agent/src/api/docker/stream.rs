//! Hijacked connections and dockerd's stream framing.
//!
//! Attach and exec answer `101 UPGRADED` and then speak raw bytes on the connection. Without a
//! TTY, output is multiplexed: each frame is an 8-byte header `[stream, 0, 0, 0, len (u32,
//! big-endian)]` followed by `len` bytes, stream 1 for stdout and 2 for stderr. With a TTY
//! the bytes go as they are.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_header_is_dockerds() {
        let f = frame(2, b"hey");
        assert_eq!(&f[..], &[2, 0, 0, 0, 0, 0, 0, 3, b'h', b'e', b'y']);
    }
}
