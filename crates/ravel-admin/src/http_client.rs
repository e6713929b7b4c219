//! A small HTTP/1.1 client for the admin's API, used by the `ravel` CLI and
//! by tests: one request per connection, JSON in and out.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the admin at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin at {0} did not answer in time")]
    Timeout(String),
    #[error("malformed response from the admin: {0}")]
    Malformed(String),
}

/// A response: status code and body parsed as JSON (or `Null`).
#[derive(Debug, Clone)]
pub struct JsonResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Sends `method path` with an optional raw body to `addr` (`host:port`).
pub async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> Result<JsonResponse, ClientError> {
    tokio::time::timeout(timeout, send(addr, method, path, body))
        .await
        .map_err(|_| ClientError::Timeout(addr.to_string()))?
}

async fn send(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<JsonResponse, ClientError> {
    let connect = |source| ClientError::Connect {
        addr: addr.to_string(),
        source,
    };
    let mut stream = TcpStream::connect(addr).await.map_err(connect)?;
    stream.set_nodelay(true).map_err(connect)?;
    let body = body.unwrap_or_default();
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    // One write: headers and body in separate segments would wait on
    // delayed ACKs.
    request.extend_from_slice(body);
    stream.write_all(&request).await.map_err(connect)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(connect)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| ClientError::Malformed("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| ClientError::Malformed(format!("status line {:?}", head.lines().next())))?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body)?;
    }
    let body = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ClientError::Malformed(format!("body is not JSON: {e}")))?
    };
    Ok(JsonResponse { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    loop {
        let line_end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| ClientError::Malformed("bad chunk".into()))?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..line_end]).trim(), 16)
            .map_err(|_| ClientError::Malformed("bad chunk size".into()))?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(ClientError::Malformed("short chunk".into()));
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}
