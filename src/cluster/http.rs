//! A minimal HTTP/1.1 client for the operations API to reach a room's owner.
//!
//! Node-to-node requests are few (an operator ending a room, say) and small, so
//! one connection per request with `Connection: close` is enough; it spares the
//! node a second HTTP stack. Only `http://` URLs are supported.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response body read from another node.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("unsupported URL {0}: only http:// is supported between nodes")]
    Url(String),
    #[error("the node did not answer in time")]
    Timeout,
    #[error("{0}")]
    Io(String),
    #[error("the node sent a malformed response")]
    Malformed,
}

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Sends `method` to `url` with an optional `Authorization` header value.
pub async fn request(
    method: &str,
    url: &str,
    authorization: Option<&str>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    tokio::time::timeout(timeout, exchange(method, url, authorization))
        .await
        .map_err(|_| HttpError::Timeout)?
}

async fn exchange(
    method: &str,
    url: &str,
    authorization: Option<&str>,
) -> Result<Response, HttpError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpError::Url(url.to_owned()))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let io = |e: std::io::Error| HttpError::Io(e.to_string());
    let mut stream = TcpStream::connect(host).await.map_err(io)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.map_err(io)?;
    let mut raw = Vec::new();
    let mut limited = (&mut stream).take(MAX_RESPONSE_BYTES as u64);
    limited.read_to_end(&mut raw).await.map_err(io)?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<Response, HttpError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(HttpError::Malformed)?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(HttpError::Malformed)?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok(Response { status, body })
}

fn dechunk(mut body: &str) -> Result<String, HttpError> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or(HttpError::Malformed)?;
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| HttpError::Malformed)?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or(HttpError::Malformed)?;
        out.push_str(chunk);
        body = rest.get(size + 2..).ok_or(HttpError::Malformed)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse(plain).expect("parses").body, "{}");
        let chunked = b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n\
                        3\r\n{\"a\r\n2\r\n\"}\r\n0\r\n\r\n";
        let response = parse(chunked).expect("parses");
        assert_eq!(response.status, 409);
        assert_eq!(response.body, "{\"a\"}");
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(parse(b"nonsense"), Err(HttpError::Malformed));
        let bad_chunk = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n";
        assert_eq!(parse(bad_chunk), Err(HttpError::Malformed));
    }
}
