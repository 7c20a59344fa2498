//! A minimal HTTP/1.1 client over hyper for tests: whole replies, and streamed replies with the
//! arrival instant of every body frame.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A reply read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON; panics with the body text when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        sse_data(&self.body)
    }
}

/// A reply whose body frames were timed as they arrived.
#[derive(Debug)]
pub struct TimedReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// When the request was handed to the client.
    pub sent: Instant,
    /// Each body frame with its arrival instant.
    pub frames: Vec<(Instant, Bytes)>,
}

impl TimedReply {
    /// Each SSE `data:` payload with the arrival instant of the frame that completed it.
    pub fn timed_events(&self) -> Vec<(Instant, String)> {
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for (at, frame) in &self.frames {
            pending.extend_from_slice(frame);
            while let Some(end) = find(&pending, b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                out.extend(sse_data(&event).into_iter().map(|d| (*at, d)));
            }
        }
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The `data:` payloads of an SSE body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|event| event.strip_prefix("data: ").map(str::to_owned))
        .collect()
}

/// A keep-alive HTTP/1.1 client.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    fn request(method: Method, url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("valid test request")
    }

    /// GET `url` and read the whole reply.
    pub async fn get(&self, url: &str) -> Reply {
        self.send(Self::request(Method::GET, url, Bytes::new()))
            .await
    }

    /// POST `body` (JSON text) to `url` and read the whole reply.
    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Reply {
        self.send(Self::request(Method::POST, url, body)).await
    }

    /// POST with extra headers.
    pub async fn post_with(
        &self,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = Self::request(Method::POST, url, body);
        for (k, v) in headers {
            req.headers_mut().insert(
                http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                v.parse().expect("header value"),
            );
        }
        self.send(req).await
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        let res = self.inner.request(req).await.expect("request failed");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("body failed").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// POST and time every body frame as it arrives.
    pub async fn post_timed(&self, url: &str, body: impl Into<Bytes>) -> TimedReply {
        let req = Self::request(Method::POST, url, body);
        let sent = Instant::now();
        let res = self.inner.request(req).await.expect("request failed");
        let (parts, mut body) = res.into_parts();
        let mut frames = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("body frame failed");
            if let Ok(data) = frame.into_data() {
                frames.push((Instant::now(), data));
            }
        }
        TimedReply {
            status: parts.status,
            headers: parts.headers,
            sent,
            frames,
        }
    }

    /// POST and return the open body, for tests that stop reading early.
    pub async fn post_open(
        &self,
        url: &str,
        body: impl Into<Bytes>,
    ) -> hyper::Response<hyper::body::Incoming> {
        self.inner
            .request(Self::request(Method::POST, url, body))
            .await
            .expect("request failed")
    }
}
