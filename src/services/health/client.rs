//! The client side of the health endpoints: [`wait_for_health`] and a minimal HTTP GET.

use std::io;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls `http://{addr}/health` until it answers `200` or `timeout` passes. `addr` is
/// `host:port` (`127.0.0.1:9090`, `localhost:9090`). The seed's `WaitForHealth`.
///
/// # Cancel safety
/// Cancel-safe: dropping the future abandons the current probe.
pub async fn wait_for_health(addr: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return false;
        }
        let probe = remaining.min(Duration::from_secs(2));
        if let Ok((200, _)) = http_get(addr, "/health", None, probe).await {
            return true;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return false;
        }
        tokio::time::sleep(remaining.min(Duration::from_millis(100))).await;
    }
}

/// A minimal HTTP/1.0 GET: `(status, body)`. `target` is the path and query; `accept` sets
/// the `Accept` header. Bounded by `timeout` and by 1 MiB of response.
pub(crate) async fn http_get(
    addr: &str,
    target: &str,
    accept: Option<&str>,
    timeout: Duration,
) -> io::Result<(u16, String)> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let accept = accept
            .map(|a| format!("Accept: {a}\r\n"))
            .unwrap_or_default();
        let request = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.take(1 << 20).read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("GET http://{addr}{target} timed out after {timeout:?}"),
            ))
        })
}

fn parse_response(raw: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "not an HTTP response: {:?}",
                    head.lines().next().unwrap_or("")
                ),
            )
        })?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let (status, body) =
            parse_response(b"HTTP/1.0 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbad\n")
                .unwrap();
        assert_eq!(status, 503);
        assert_eq!(body, "bad\n");
        assert!(parse_response(b"garbage").is_err());
    }
}
