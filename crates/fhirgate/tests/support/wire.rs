//! HTTP/1.1 on a bare socket: bytes written exactly as given, and every response read back
//! from what the server sent until it closed the connection, so a test sees how many answers
//! one connection carried and whether the server closed it.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::RawResponse;

/// What came back on one connection.
pub struct Exchange {
    /// Everything the server sent.
    pub bytes: Vec<u8>,
    /// Whether the server closed the connection (end of stream or reset) before `deadline`.
    pub closed: bool,
}

impl Exchange {
    /// The complete responses in what was sent, and the bytes after the last of them.
    pub fn responses(&self) -> (Vec<RawResponse>, &[u8]) {
        let mut rest = self.bytes.as_slice();
        let mut out = Vec::new();
        while let Some((response, used)) = parse_response(rest, self.closed) {
            out.push(response);
            rest = &rest[used..];
        }
        (out, rest)
    }
}

/// Connects to the `host:port` of `base`, writes `request` and reads until the server closes
/// the connection or `deadline` passes.
pub async fn exchange(base: &str, request: &[u8], deadline: Duration) -> Exchange {
    let authority = base
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap();
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    let closed = tokio::time::timeout(deadline, async {
        let mut buffer = [0u8; 16384];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await
    .is_ok();
    Exchange { bytes, closed }
}

/// One response at the start of `bytes` and how many bytes it took; `None` when they do not
/// hold a whole one. A body without a length runs to the end when the connection closed.
fn parse_response(bytes: &[u8], closed: bool) -> Option<(RawResponse, usize)> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = http::HeaderMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            http::HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    let rest = &bytes[head_end..];
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    let length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let (body, used) = if chunked {
        dechunk(rest)?
    } else if let Some(length) = length {
        (rest.get(..length)?.to_vec(), length)
    } else if status == 204 || status == 304 {
        (Vec::new(), 0)
    } else if closed {
        (rest.to_vec(), rest.len())
    } else {
        return None;
    };
    let response = RawResponse {
        status,
        headers,
        body: Bytes::from(body),
    };
    Some((response, head_end + used))
}

/// A chunked body's content and how many bytes its chunks and trailer took.
fn dechunk(bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = at + bytes[at..].windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // No trailers from these servers: the last chunk ends with an empty line.
            return bytes
                .get(at..at + 2)
                .filter(|end| *end == b"\r\n")
                .map(|_| (body, at + 2));
        }
        body.extend_from_slice(bytes.get(at..at + size)?);
        at += size + 2;
    }
}
