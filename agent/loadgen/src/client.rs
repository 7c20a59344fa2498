//! Streaming OpenAI-compatible HTTP/1.1 client on hyper 1, built to time what it receives.
//!
//! - **Timing at the socket.** Each connection's TCP stream is wrapped so that every successful
//!   read and write stamps a per-connection clock. The send instant is the stamp of the request's
//!   last write; a chunk's instant is the stamp of the read that delivered its bytes — not the
//!   moment parsing finished or a task woke up.
//! - **One task per request, no hand-offs.** The request's task drives its connection future
//!   itself (hyper's `conn::http1` API), so bytes go from the socket to the SSE parser without
//!   crossing tasks or channels.
//! - **Keep-alive reuse, no cap.** Idle connections wait in a LIFO pool; a request that finds
//!   none opens a new one, so the pool never caps concurrency. A reused connection that turns
//!   out closed before any byte of the answer arrived is retried once on a fresh one.
//! - **Bounded waits.** A per-request timeout covers the whole request (connect included) and a
//!   stall timeout fires when no byte arrives for that long (waiting for the first token
//!   included). Either ends the request and drops its connection.
//! - **Errors by kind** (see [`ErrorKind`]): `http_status`, `connect`, `timeout`, `stall`,
//!   `reset`, `mid_stream_error`, `decode`, `truncated`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::chunk::{self, Payload, Usage};
use super::sse::{SseEvent, SseParser};
use super::timed_io::{IoClock, TimedStream};
pub use crate::clock::now_ns;
use crate::clock::{nanos, to_tokio, until};
use evalctl_results::record::{ErrorKind, RequestError, RequestRecord, TokenSource};

/// How the client talks to the server.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Upper bound on one request, from its start (connect included) to its last byte.
    pub request_timeout: Duration,
    /// Longest wait for the next byte from the server (the first one included).
    pub stall_timeout: Duration,
    /// Bearer token sent as `Authorization`, when the server needs one.
    pub api_key: Option<String>,
    /// Largest single SSE event accepted.
    pub max_event_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            request_timeout: Duration::from_secs(600),
            stall_timeout: Duration::from_secs(120),
            api_key: None,
            max_event_bytes: super::sse::DEFAULT_MAX_EVENT_BYTES,
        }
    }
}

/// The client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL does not parse or is not `http://host[:port][/prefix]`.
    #[error("invalid server URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The API key cannot be sent as a header.
    #[error("the API key is not a valid HTTP header value")]
    InvalidApiKey,
}

/// A streaming client for one server.
#[derive(Debug)]
pub struct Client {
    host: String,
    port: u16,
    authority: HeaderValue,
    prefix: String,
    authorization: Option<HeaderValue>,
    config: ClientConfig,
    pool: Mutex<Vec<PooledConn>>,
    opened: AtomicU64,
}

/// How long the body's end may trail `[DONE]` before the connection is given up on.
const DONE_GRACE_NS: u64 = 1_000_000_000;

/// Upper bound on the error body quoted in an `http_status` message.
const ERROR_BODY_BYTES: usize = 2048;

impl Client {
    /// A client for the server at `base_url` (`http://host:port`, optionally with a path
    /// prefix; a trailing `/v1` is accepted and dropped, since request paths carry it).
    pub fn new(base_url: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = base_url.parse().map_err(|_| invalid("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(invalid("https is not supported; use http")),
            _ => return Err(invalid("expected http://host:port")),
        }
        let host = uri.host().ok_or_else(|| invalid("no host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri.authority().ok_or_else(|| invalid("no host"))?.as_str();
        let authority = HeaderValue::from_str(authority).map_err(|_| invalid("bad host"))?;
        let mut prefix = uri.path().trim_end_matches('/').to_owned();
        if prefix.ends_with("/v1") {
            prefix.truncate(prefix.len() - 3);
        }
        let authorization = match &config.api_key {
            Some(key) => Some(
                HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| ClientError::InvalidApiKey)?,
            ),
            None => None,
        };
        Ok(Client {
            host,
            port,
            authority,
            prefix,
            authorization,
            config,
            pool: Mutex::new(Vec::new()),
            opened: AtomicU64::new(0),
        })
    }

    /// Connections opened so far.
    pub fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// POSTs `body` to `path` (e.g. `/v1/chat/completions`) and reads the SSE stream, filling
    /// `record`'s send, token, end, token-count, id and error fields. Instants are recorded
    /// relative to `epoch_ns` (from [`now_ns`]). `expected_tokens` sizes the token vector.
    pub async fn stream(
        &self,
        path: &str,
        body: Bytes,
        epoch_ns: u64,
        expected_tokens: usize,
        record: &mut RequestRecord,
    ) {
        self.stream_with(
            path,
            body,
            epoch_ns,
            expected_tokens,
            record,
            SendOptions::default(),
        )
        .await;
    }

    /// [`Client::stream`] with [`SendOptions`]: the answer's text kept, or the request fired
    /// at an instant.
    pub async fn stream_with(
        &self,
        path: &str,
        body: Bytes,
        epoch_ns: u64,
        expected_tokens: usize,
        record: &mut RequestRecord,
        options: SendOptions<'_>,
    ) {
        let SendOptions { answer, fire_at_ns } = options;
        // Timeouts count from the instant the request leaves.
        let started = now_ns().max(fire_at_ns);
        let deadline = started.saturating_add(nanos(self.config.request_timeout));
        record.token_ns.reserve(expected_tokens + 1);
        let mut out = Output {
            record,
            answer,
            fire_at_ns,
        };
        let outcome = self
            .attempt(path, &body, started, deadline, epoch_ns, &mut out)
            .await;
        let outcome = match outcome {
            Err(Failure::Retryable(_)) => {
                // The reused connection was closed under us: once more on a fresh one.
                out.record.reused_connection = false;
                if let Some(answer) = out.answer.as_deref_mut() {
                    answer.clear();
                }
                self.attempt_fresh(path, &body, started, deadline, epoch_ns, &mut out)
                    .await
            }
            other => other,
        };
        if let Err(failure) = outcome {
            let error = failure.into_error();
            out.record.error = Some(error);
            out.record
                .end_ns
                .get_or_insert(now_ns().saturating_sub(epoch_ns));
        }
    }

    async fn attempt(
        &self,
        path: &str,
        body: &Bytes,
        started: u64,
        deadline: u64,
        epoch_ns: u64,
        out: &mut Output<'_>,
    ) -> Result<(), Failure> {
        match self.checkout() {
            Some(conn) => {
                out.record.reused_connection = true;
                self.exchange(conn, true, path, body, started, deadline, epoch_ns, out)
                    .await
            }
            None => {
                self.attempt_fresh(path, body, started, deadline, epoch_ns, out)
                    .await
            }
        }
    }

    async fn attempt_fresh(
        &self,
        path: &str,
        body: &Bytes,
        started: u64,
        deadline: u64,
        epoch_ns: u64,
        out: &mut Output<'_>,
    ) -> Result<(), Failure> {
        let conn = self.connect(deadline).await?;
        self.exchange(conn, false, path, body, started, deadline, epoch_ns, out)
            .await
    }

    /// The most recently used idle connection that is still open.
    fn checkout(&self) -> Option<PooledConn> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(mut conn) = pool.pop() {
            // Let the connection notice a close that arrived while it was idle.
            if !conn.alive || conn.sender.is_closed() || (&mut conn.conn).now_or_never().is_some() {
                continue;
            }
            return Some(conn);
        }
        None
    }

    fn checkin(&self, conn: PooledConn) {
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }

    async fn connect(&self, deadline: u64) -> Result<PooledConn, Failure> {
        let connect = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            tcp.set_nodelay(true)?;
            let clock = Arc::new(IoClock::default());
            let io = TokioIo::new(TimedStream::new(tcp, Arc::clone(&clock)));
            let (sender, conn) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(io::Error::other)?;
            Ok::<_, io::Error>(PooledConn {
                sender,
                conn,
                clock,
                alive: true,
            })
        };
        match tokio::time::timeout_at(to_tokio(deadline), connect).await {
            Ok(Ok(conn)) => {
                self.opened.fetch_add(1, Ordering::Relaxed);
                Ok(conn)
            }
            Ok(Err(err)) => Err(Failure::Final(RequestError {
                kind: ErrorKind::Connect,
                message: format!("failed to connect to {}:{}: {err}", self.host, self.port),
            })),
            Err(_) => Err(Failure::Final(RequestError {
                kind: ErrorKind::Timeout,
                message: "request timed out while connecting".to_owned(),
            })),
        }
    }

    fn request(&self, path: &str, body: &Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = format!("{}{}", self.prefix, path)
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        let headers = req.headers_mut();
        headers.insert(HOST, self.authority.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("evalctl/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(auth) = &self.authorization {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        req
    }

    /// One request/response exchange on `conn`; puts the connection back when it stays usable.
    #[expect(
        clippy::too_many_arguments,
        reason = "one private call site per attempt kind"
    )]
    async fn exchange(
        &self,
        mut conn: PooledConn,
        reused: bool,
        path: &str,
        body: &Bytes,
        started: u64,
        deadline: u64,
        epoch_ns: u64,
        out: &mut Output<'_>,
    ) -> Result<(), Failure> {
        let mut timer = Timer::new(deadline, self.config.stall_timeout, started);
        let reads_before = conn.clock.reads.load(Ordering::Relaxed);
        let send_from = now_ns();

        // Wait until the connection can take a request, then send it. A connection that ends
        // meanwhile never becomes ready (hyper keeps its request channel open), so its end is
        // an error here: a server that closes after each response (llama.cpp does, despite its
        // keep-alive header) may close a pooled connection right after it was checked out.
        let ready = drive(&mut conn, &mut timer, |c, cx| {
            match c.sender.poll_ready(cx) {
                Poll::Pending if !c.alive => Poll::Ready(Err(None)),
                other => other.map_err(Some),
            }
        })
        .await;
        let retryable =
            |conn: &PooledConn| reused && conn.clock.reads.load(Ordering::Relaxed) == reads_before;
        match ready {
            Driven::Done(Ok(())) => {}
            Driven::Done(Err(None)) if reused => return Err(Failure::Retryable(closed())),
            Driven::Done(Err(None)) => return Err(Failure::Final(closed())),
            Driven::Done(Err(Some(err))) if retryable(&conn) => {
                return Err(Failure::Retryable(hyper_error(&err)));
            }
            Driven::Done(Err(Some(err))) => return Err(Failure::Final(hyper_error(&err))),
            Driven::Expired(kind) => return Err(Failure::Final(expired(kind))),
        }
        let request = self.request(path, body);
        until(out.fire_at_ns).await;
        let mut response = Box::pin(conn.sender.send_request(request));
        let head = drive(&mut conn, &mut timer, |c, cx| {
            match response.as_mut().poll(cx) {
                Poll::Pending if !c.alive => Poll::Ready(Err(None)),
                other => other.map_err(Some),
            }
        })
        .await;
        drop(response);
        let wrote = conn.clock.last_write_ns.load(Ordering::Relaxed);
        if wrote >= send_from {
            out.record.sent_ns = Some(wrote.saturating_sub(epoch_ns));
        }
        let response = match head {
            Driven::Done(Ok(response)) => response,
            Driven::Done(Err(None)) if retryable(&conn) => {
                out.record.sent_ns = None;
                return Err(Failure::Retryable(closed()));
            }
            Driven::Done(Err(None)) => return Err(Failure::Final(closed())),
            Driven::Done(Err(Some(err))) if retryable(&conn) => {
                out.record.sent_ns = None;
                return Err(Failure::Retryable(hyper_error(&err)));
            }
            Driven::Done(Err(Some(err))) => return Err(Failure::Final(hyper_error(&err))),
            Driven::Expired(kind) => return Err(Failure::Final(expired(kind))),
        };
        if out.record.sent_ns.is_none() {
            // The response head cannot precede the request; stamp it now rather than not at all.
            out.record.sent_ns = Some(now_ns().saturating_sub(epoch_ns));
        }
        let status = response.status();
        out.record.http_status = Some(status.as_u16());
        out.record.server_request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut body = response.into_body();

        if !status.is_success() {
            let text = read_error_body(&mut conn, &mut timer, &mut body).await;
            return Err(Failure::Final(RequestError {
                kind: ErrorKind::HttpStatus,
                message: format!("HTTP {status}: {}", text.trim()),
            }));
        }
        if content_type.starts_with("application/json") {
            return Err(Failure::Final(RequestError {
                kind: ErrorKind::Decode,
                message: "expected an event stream (text/event-stream), got application/json; \
                          does the server support stream: true?"
                    .to_owned(),
            }));
        }

        let mut stream = StreamState::new(
            out.record,
            out.answer.as_deref_mut(),
            epoch_ns,
            self.config.max_event_bytes,
        );
        let end = drive(&mut conn, &mut timer, |c, cx| {
            loop {
                match ready!(Pin::new(&mut body).poll_frame(cx)) {
                    None => return Poll::Ready(Ok(true)),
                    Some(Err(err)) => return Poll::Ready(Err(hyper_error(&err))),
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let at = c.clock.last_read_ns.load(Ordering::Relaxed);
                            stream.on_bytes(data, at)?;
                            if stream.saw_done {
                                return Poll::Ready(Ok(body.is_end_stream()));
                            }
                        }
                    }
                }
            }
        })
        .await;
        let ended = match end {
            Driven::Done(Ok(ended)) => ended,
            Driven::Done(Err(err)) => return Err(Failure::Final(err)),
            Driven::Expired(kind) => return Err(Failure::Final(expired(kind))),
        };
        stream.finish().map_err(Failure::Final)?;
        // After `[DONE]` the body's end is normally in the same read; wait for it briefly so the
        // connection can be reused, and drop the connection if the server keeps it open.
        let reusable = ended || {
            let mut grace = Timer::new(now_ns() + DONE_GRACE_NS, Duration::MAX, now_ns());
            let drained = drive(&mut conn, &mut grace, |_, cx| {
                loop {
                    match ready!(Pin::new(&mut body).poll_frame(cx)) {
                        None => return Poll::Ready(true),
                        Some(Err(_)) => return Poll::Ready(false),
                        Some(Ok(_)) => {}
                    }
                }
            })
            .await;
            matches!(drained, Driven::Done(true))
        };
        drop(body);
        if reusable && conn.alive {
            self.checkin(conn);
        }
        Ok(())
    }
}

/// A failed attempt.
enum Failure {
    /// A reused connection was found closed before the answer began: worth one retry.
    Retryable(RequestError),
    /// The request failed.
    Final(RequestError),
}

impl Failure {
    fn into_error(self) -> RequestError {
        match self {
            Failure::Retryable(err) | Failure::Final(err) => err,
        }
    }
}

/// The connection ended before the answer began.
fn closed() -> RequestError {
    RequestError {
        kind: ErrorKind::Reset,
        message: "the server closed the connection before answering".to_owned(),
    }
}

fn expired(kind: ErrorKind) -> RequestError {
    let message = match kind {
        ErrorKind::Stall => "no bytes from the server within the stall timeout",
        _ => "the request did not finish within the request timeout",
    };
    RequestError {
        kind,
        message: message.to_owned(),
    }
}

/// Classifies a hyper error: broken connections are `reset`, malformed HTTP is `decode`.
fn hyper_error(err: &hyper::Error) -> RequestError {
    let kind = if err.is_parse() || err.is_parse_status() || err.is_parse_too_large() {
        ErrorKind::Decode
    } else {
        ErrorKind::Reset
    };
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    RequestError { kind, message }
}

/// Reads up to [`ERROR_BODY_BYTES`] of an error response for its message.
async fn read_error_body(conn: &mut PooledConn, timer: &mut Timer, body: &mut Incoming) -> String {
    let mut text = Vec::new();
    let _ = drive(conn, timer, |_, cx| {
        loop {
            match ready!(Pin::new(&mut *body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let room = ERROR_BODY_BYTES.saturating_sub(text.len());
                        text.extend_from_slice(&data[..data.len().min(room)]);
                        if text.len() >= ERROR_BODY_BYTES {
                            return Poll::Ready(());
                        }
                    }
                }
                _ => return Poll::Ready(()),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&text).into_owned()
}

/// What an exchange fills in: the record, and the answer's text when the caller keeps it;
/// and when its request leaves.
struct Output<'r> {
    record: &'r mut RequestRecord,
    answer: Option<&'r mut String>,
    fire_at_ns: u64,
}

/// What a send does beyond streaming the response into its record.
#[derive(Debug, Default)]
pub struct SendOptions<'a> {
    /// Append the answer's text here (content deltas or completion text, not reasoning),
    /// for a conversation's history.
    pub answer: Option<&'a mut String>,
    /// Send at this instant on the process clock ([`now_ns`]); 0, or an instant passed,
    /// sends at once. Everything but the write itself (a pooled connection checked out and
    /// ready, or a new one connected; the request built) is done before the instant, so a
    /// burst of requests due at one instant leaves as fast as the socket writes go.
    pub fire_at_ns: u64,
}

/// What the stream of one request has shown so far.
struct StreamState<'r> {
    record: &'r mut RequestRecord,
    /// Where answer text goes, when the caller keeps it.
    answer: Option<&'r mut String>,
    parser: SseParser,
    epoch_ns: u64,
    counted: u64,
    /// Token chunks that carried only reasoning.
    reasoning: u64,
    /// Where the stream is in inline `<think>…</think>` reasoning.
    think: Think,
    usage: Option<Usage>,
    saw_done: bool,
    finished: bool,
    error: Option<RequestError>,
}

/// Inline reasoning: a server without a reasoning parser streams the model's
/// `<think>…</think>` as answer text; the chunks from the opening tag to the closing one are
/// reasoning. (Reasoning models emit each tag as one token, so a tag is never split between
/// chunks.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Think {
    /// No opening tag yet.
    Before,
    /// Between the tags.
    Inside,
    /// Past the closing tag, or past answer text: tags from here on are answer text.
    Done,
}

impl Think {
    /// Whether a token chunk whose raw event is `data` is inline reasoning, moving past the
    /// tags it holds.
    fn reasoning(&mut self, data: &[u8]) -> bool {
        let has = |tag: &[u8]| memchr::memmem::find(data, tag).is_some();
        match *self {
            Think::Before if has(b"<think>") => {
                *self = if has(b"</think>") {
                    Think::Done
                } else {
                    Think::Inside
                };
                true
            }
            Think::Before => {
                *self = Think::Done;
                false
            }
            Think::Inside => {
                if has(b"</think>") {
                    *self = Think::Done;
                }
                true
            }
            Think::Done => false,
        }
    }
}

impl<'r> StreamState<'r> {
    fn new(
        record: &'r mut RequestRecord,
        answer: Option<&'r mut String>,
        epoch_ns: u64,
        max_event_bytes: usize,
    ) -> Self {
        StreamState {
            record,
            answer,
            parser: SseParser::new(max_event_bytes),
            epoch_ns,
            counted: 0,
            reasoning: 0,
            think: Think::Before,
            usage: None,
            saw_done: false,
            finished: false,
            error: None,
        }
    }

    /// Parses bytes that arrived at `at_ns` (process clock).
    fn on_bytes(&mut self, bytes: &[u8], at_ns: u64) -> Result<(), RequestError> {
        let at = at_ns.saturating_sub(self.epoch_ns);
        let mut parser = std::mem::take(&mut self.parser);
        let fed = parser.feed(bytes, &mut |event| self.on_event(event, at));
        self.parser = parser;
        if let Err(err) = fed {
            return Err(RequestError {
                kind: ErrorKind::Decode,
                message: err.to_string(),
            });
        }
        match self.error.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn on_event(&mut self, event: SseEvent<'_>, at: u64) {
        if self.error.is_some() || self.saw_done {
            return;
        }
        if event.event == b"error" {
            self.error = Some(RequestError {
                kind: ErrorKind::MidStreamError,
                message: String::from_utf8_lossy(event.data).into_owned(),
            });
            return;
        }
        let chunk = match chunk::classify(event.data) {
            Ok(Payload::Done) => {
                self.saw_done = true;
                self.record.end_ns = Some(at);
                return;
            }
            Ok(Payload::Chunk(chunk)) => chunk,
            Err(err) => {
                let shown = &event.data[..event.data.len().min(200)];
                self.error = Some(RequestError {
                    kind: ErrorKind::Decode,
                    message: format!(
                        "invalid JSON in stream event ({err}): {}",
                        String::from_utf8_lossy(shown)
                    ),
                });
                return;
            }
        };
        if let Some(message) = chunk.error {
            self.error = Some(RequestError {
                kind: ErrorKind::MidStreamError,
                message,
            });
            return;
        }
        if self.record.server_request_id.is_none()
            && let Some(id) = chunk.id
        {
            self.record.server_request_id = Some(id.into_owned());
        }
        if chunk.token {
            self.record.token_ns.push(at);
            self.counted += 1;
            // Answer text may still be inline reasoning; reasoning fields never are answers.
            let answer = chunk.answer && !self.think.reasoning(event.data);
            if answer {
                if self.record.first_answer_ns.is_none() {
                    self.record.first_answer_ns = Some(at);
                }
                if let Some(text) = self.answer.as_deref_mut() {
                    chunk::append_answer_text(event.data, text);
                }
            } else {
                self.reasoning += 1;
            }
        }
        self.finished |= chunk.finished;
        if chunk.usage.is_some() {
            self.usage = chunk.usage;
        }
    }

    /// The body ended cleanly: settle token counts, or fail a stream that never finished.
    fn finish(mut self) -> Result<(), RequestError> {
        let mut parser = std::mem::take(&mut self.parser);
        let at = self
            .record
            .end_ns
            .unwrap_or(now_ns().saturating_sub(self.epoch_ns));
        let finished = parser.finish(&mut |event| self.on_event(event, at));
        if let Err(err) = finished {
            return Err(RequestError {
                kind: ErrorKind::Decode,
                message: err.to_string(),
            });
        }
        if let Some(err) = self.error.take() {
            return Err(err);
        }
        let record = &mut *self.record;
        record.end_ns.get_or_insert(at);
        match self.usage.and_then(|u| u.completion_tokens) {
            Some(n) => {
                record.output_tokens = n;
                record.output_tokens_source = Some(TokenSource::Usage);
            }
            None => {
                record.output_tokens = self.counted;
                record.output_tokens_source = Some(TokenSource::Counted);
            }
        }
        record.server_prompt_tokens = self.usage.and_then(|u| u.prompt_tokens);
        record.reasoning_tokens = (self.reasoning > 0).then_some(self.reasoning);
        if self.saw_done || self.finished {
            Ok(())
        } else {
            Err(RequestError {
                kind: ErrorKind::Truncated,
                message: format!(
                    "the stream ended after {} token chunks without [DONE] or a finish_reason",
                    self.counted
                ),
            })
        }
    }
}

/// An open connection with its send handle and socket clock.
struct PooledConn {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: http1::Connection<TokioIo<TimedStream>, Full<Bytes>>,
    clock: Arc<IoClock>,
    /// The connection future has not completed (it must not be polled after).
    alive: bool,
}

impl std::fmt::Debug for PooledConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledConn").finish_non_exhaustive()
    }
}

/// The request timeout and the stall timeout, on one tokio timer that is re-armed lazily:
/// bytes arriving only move a stamp, and the timer looks at it when it fires.
struct Timer {
    deadline_ns: u64,
    stall_ns: u64,
    since_ns: u64,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Timer {
    fn new(deadline_ns: u64, stall: Duration, since_ns: u64) -> Self {
        let stall_ns = nanos(stall);
        let first = deadline_ns.min(since_ns.saturating_add(stall_ns));
        Timer {
            deadline_ns,
            stall_ns,
            since_ns,
            sleep: Box::pin(tokio::time::sleep_until(to_tokio(first))),
        }
    }

    /// Ready with the kind of timeout once one has passed; `last_byte_ns` is the latest sign of
    /// life from the server.
    fn poll_expired(&mut self, cx: &mut Context<'_>, last_byte_ns: u64) -> Poll<ErrorKind> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            let now = now_ns();
            if now >= self.deadline_ns {
                return Poll::Ready(ErrorKind::Timeout);
            }
            let stall_at = self
                .since_ns
                .max(last_byte_ns)
                .saturating_add(self.stall_ns);
            if now >= stall_at {
                return Poll::Ready(ErrorKind::Stall);
            }
            let next = stall_at.min(self.deadline_ns);
            self.sleep.as_mut().reset(to_tokio(next));
        }
    }
}

/// The result of driving a step of an exchange.
enum Driven<T> {
    Done(T),
    Expired(ErrorKind),
}

/// Polls the connection (which does the socket I/O) and then `step` until `step` is ready or a
/// timeout passes. A connection that ends is no longer polled; `step` then sees its end.
async fn drive<T>(
    conn: &mut PooledConn,
    timer: &mut Timer,
    mut step: impl FnMut(&mut PooledConn, &mut Context<'_>) -> Poll<T>,
) -> Driven<T> {
    std::future::poll_fn(|cx| {
        if conn.alive && Pin::new(&mut conn.conn).poll(cx).is_ready() {
            conn.alive = false;
        }
        if let Poll::Ready(out) = step(conn, cx) {
            return Poll::Ready(Driven::Done(out));
        }
        let last = conn.clock.last_read_ns.load(Ordering::Relaxed);
        timer.poll_expired(cx, last).map(Driven::Expired)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::Think;

    /// Which of `chunks` (raw events, in order) are inline reasoning.
    fn reasoning(chunks: &[&str]) -> Vec<bool> {
        let mut think = Think::Before;
        chunks
            .iter()
            .map(|c| think.reasoning(c.as_bytes()))
            .collect()
    }

    #[test]
    fn think_tags_mark_inline_reasoning_once() {
        let open_close = [
            r#"{"text":"<think>"}"#,
            r#"{"text":" why"}"#,
            r#"{"text":"</think>"}"#,
        ];
        assert_eq!(
            reasoning(&[
                open_close[0],
                open_close[1],
                open_close[2],
                r#"{"text":" yes"}"#
            ]),
            [true, true, true, false]
        );
        // Both tags in one chunk: that chunk is reasoning, the next the answer.
        assert_eq!(
            reasoning(&[r#"{"text":"<think>hm</think>"}"#, r#"{"text":"ok"}"#]),
            [true, false]
        );
        // A tag after answer text has begun is answer text.
        assert_eq!(
            reasoning(&[r#"{"text":"Use"}"#, r#"{"text":" <think>"}"#]),
            [false, false]
        );
    }
}
