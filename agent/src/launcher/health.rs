//! One health probe: `GET <path>` over a fresh HTTP/1.1 connection, with a timeout.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// The server answered with this status.
    Status(u16),
    /// The TCP connection failed (typically: refused, nothing listens yet).
    Connect(String),
    /// The connection opened but the HTTP exchange failed.
    Http(String),
    /// No answer within the probe timeout.
    Timeout(Duration),
}

impl Probe {
    /// Whether the server is ready.
    pub fn is_healthy(&self) -> bool {
        *self == Probe::Status(200)
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Status(status) => write!(f, "HTTP {status}"),
            Probe::Connect(err) => write!(f, "failed to connect: {err}"),
            Probe::Http(err) => write!(f, "failed HTTP exchange: {err}"),
            Probe::Timeout(t) => write!(f, "no answer within {}", humantime::format_duration(*t)),
        }
    }
}

/// `host:port` as it goes in a URL authority (IPv6 literals in brackets).
pub(crate) fn authority(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Sends `GET path` to `host:port` and reports the status, giving up after `timeout`.
pub(crate) async fn probe(host: &str, port: u16, path: &str, timeout: Duration) -> Probe {
    match tokio::time::timeout(timeout, exchange(host, port, path)).await {
        Ok(probe) => probe,
        Err(_) => Probe::Timeout(timeout),
    }
}

async fn exchange(host: &str, port: u16, path: &str) -> Probe {
    let connect_host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = match TcpStream::connect((connect_host, port)).await {
        Ok(stream) => stream,
        Err(err) => return Probe::Connect(err.to_string()),
    };
    let (mut sender, connection) = match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        TokioIo::new(stream),
    )
    .await
    {
        Ok(parts) => parts,
        Err(err) => return Probe::Http(err.to_string()),
    };
    let request = Request::get(path)
        .header(hyper::header::HOST, authority(host, port))
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new());
    let request = match request {
        Ok(request) => request,
        Err(err) => return Probe::Http(err.to_string()),
    };
    let response = sender.send_request(request);
    tokio::pin!(connection, response);
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        // The connection is driven until the answer arrives. When it ends first (the server
        // answered and closed at once, or failed), the answer or the reason is waiting.
        _ = &mut connection => response.await,
    };
    match response {
        Ok(response) => Probe::Status(response.status().as_u16()),
        Err(err) => Probe::Http(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_brackets_ipv6() {
        assert_eq!(authority("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(authority("::1", 80), "[::1]:80");
        assert_eq!(authority("[::1]", 80), "[::1]:80");
        assert_eq!(authority("localhost", 8000), "localhost:8000");
    }

    #[tokio::test]
    async fn probe_reports_refused_and_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let refused = probe("127.0.0.1", port, "/health", Duration::from_secs(2)).await;
        assert!(matches!(refused, Probe::Connect(_)), "{refused}");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0; 1024];
            let n = socket.read(&mut buf).await.unwrap();
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            socket
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            request
        });
        let answer = probe("127.0.0.1", port, "/ready", Duration::from_secs(2)).await;
        assert_eq!(answer, Probe::Status(503));
        assert_eq!(answer.to_string(), "HTTP 503");
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /ready HTTP/1.1\r\n"), "{request}");
        assert!(
            request
                .to_lowercase()
                .contains(&format!("host: 127.0.0.1:{port}")),
            "{request}"
        );
    }

    #[tokio::test]
    async fn probe_times_out_on_a_silent_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _server = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        });
        let answer = probe("127.0.0.1", port, "/health", Duration::from_millis(200)).await;
        assert_eq!(answer, Probe::Timeout(Duration::from_millis(200)));
    }
}
