//! A scripted HTTP/1.1 streaming server for load generator tests.
//!
//! It speaks just enough HTTP/1.1 by hand (keep-alive, `Content-Length` request bodies, chunked
//! responses) to control every byte and every instant of a response: the test's script turns
//! each request into a list of [`Step`]s — headers, SSE events, sleeps, raw bytes, a reset, a
//! stall — and the server logs when it finished reading each request and when each event's
//! write returned, so tests can compare the load generator's figures with the truth.
//!
//! It runs on its own thread and runtime, so the client under test cannot starve it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One thing the server does while answering.
#[derive(Debug, Clone)]
pub enum Step {
    /// `200 OK` with `text/event-stream` and chunked encoding; `x-request-id` when given.
    Head { request_id: Option<String> },
    /// A non-2xx response with a JSON body, then the connection closes.
    Status(u16, String),
    /// Waits.
    Sleep(Duration),
    /// One SSE event (`data: <payload>\n\n`) as one HTTP chunk; logged as a token write when
    /// `token` is set.
    Event { payload: String, token: bool },
    /// One SSE event written as several HTTP chunks split at the given byte offsets, with a
    /// pause between pieces; logged (when `token`) at the last piece.
    SplitEvent {
        payload: String,
        token: bool,
        cuts: Vec<usize>,
        pause: Duration,
    },
    /// Raw bytes inside one HTTP chunk (comments, odd line ends).
    Raw(String),
    /// The chunked terminator: the response ends cleanly and the connection is kept.
    End,
    /// Abort the connection with a TCP reset.
    Reset,
    /// Close the connection cleanly (after `End`, like a server dropping an idle keep-alive
    /// connection).
    Close,
    /// Stop sending forever (until the client goes away).
    Stall,
}

impl Step {
    /// A token-bearing event.
    pub fn token(payload: impl Into<String>) -> Step {
        Step::Event {
            payload: payload.into(),
            token: true,
        }
    }

    /// An event that carries no token.
    pub fn event(payload: impl Into<String>) -> Step {
        Step::Event {
            payload: payload.into(),
            token: false,
        }
    }

    /// A plain `200` event-stream head.
    pub fn head() -> Step {
        Step::Head { request_id: None }
    }
}

/// What the server saw and did for one request.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// Order of arrival, from 0.
    pub seq: u64,
    /// The request body as JSON.
    pub body: serde_json::Value,
    /// When the request's last bytes reached the server's socket (the kernel's receive
    /// timestamp), so the server's own scheduling delays count as server time, as they do for a
    /// real server.
    pub received: Instant,
    /// When each token event's write returned.
    pub token_writes: Vec<Instant>,
}

impl RequestLog {
    fn ms(a: Instant, b: Instant) -> f64 {
        b.duration_since(a).as_secs_f64() * 1e3
    }

    /// Server-side TTFT: first token write − request received.
    pub fn ttft_ms(&self) -> Option<f64> {
        Some(Self::ms(self.received, *self.token_writes.first()?))
    }

    /// Server-side E2EL: last token write − request received.
    pub fn e2el_ms(&self) -> Option<f64> {
        Some(Self::ms(self.received, *self.token_writes.last()?))
    }

    /// Gaps between token writes.
    pub fn itls_ms(&self) -> Vec<f64> {
        self.token_writes
            .windows(2)
            .map(|w| Self::ms(w[0], w[1]))
            .collect()
    }
}

/// Turns a request (its arrival number and JSON body) into the steps of its answer.
pub type Script = dyn Fn(u64, &serde_json::Value) -> Vec<Step> + Send + Sync;

/// A running scripted server; stops when dropped.
pub struct ScriptedServer {
    addr: std::net::SocketAddr,
    log: Arc<Mutex<Vec<RequestLog>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    script: Box<Script>,
    log: Arc<Mutex<Vec<RequestLog>>>,
    next_seq: std::sync::atomic::AtomicU64,
}

impl ScriptedServer {
    /// Starts a server on 127.0.0.1:0 answering every request by `script`.
    pub fn start(
        script: impl Fn(u64, &serde_json::Value) -> Vec<Step> + Send + Sync + 'static,
    ) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(State {
            script: Box::new(script),
            log: Arc::clone(&log),
            next_seq: Default::default(),
        });
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
                addr_tx
                    .send(listener.local_addr().expect("addr"))
                    .expect("send addr");
                let accept = async {
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        let _ = tcp.set_nodelay(true);
                        tokio::spawn(serve(tcp, Arc::clone(&state)));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
            rt.shutdown_background();
        });
        let addr = addr_rx.recv().expect("server address");
        ScriptedServer {
            addr,
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything logged so far, by arrival.
    pub fn log(&self) -> Vec<RequestLog> {
        let mut log = self.log.lock().expect("log lock").clone();
        log.sort_by_key(|l| l.seq);
        log
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Maps the kernel's receive timestamps (`CLOCK_REALTIME`) onto `Instant`.
#[derive(Clone, Copy)]
struct KernelClock {
    instant: Instant,
    since_epoch: Duration,
}

impl KernelClock {
    fn now() -> Self {
        KernelClock {
            instant: Instant::now(),
            since_epoch: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970"),
        }
    }

    fn instant(&self, ts: nix::sys::time::TimeSpec) -> Instant {
        let at = Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32);
        match at.checked_sub(self.since_epoch) {
            Some(later) => self.instant + later,
            None => self.instant - (self.since_epoch - at),
        }
    }
}

/// Reads into `buf` with `recvmsg`, returning the byte count and the kernel's receive timestamp
/// of the data (when the bytes reached the socket, however late this task runs).
async fn read_stamped(
    tcp: &TcpStream,
    buf: &mut [u8],
    clock: KernelClock,
) -> std::io::Result<(usize, Option<Instant>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    use std::os::fd::AsRawFd;
    loop {
        tcp.readable().await?;
        let read = tcp.try_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(&mut *buf)];
            let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
            let msg = recvmsg::<()>(
                tcp.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .map_err(std::io::Error::from)?;
            let stamp = msg
                .cmsgs()
                .map_err(std::io::Error::from)?
                .find_map(|c| match c {
                    ControlMessageOwned::ScmTimestampns(ts) => Some(clock.instant(ts)),
                    _ => None,
                });
            Ok((msg.bytes, stamp))
        });
        match read {
            Ok(done) => return Ok(done),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads one request and the instant its last bytes reached the socket; `None` when the client
/// closed the connection.
async fn read_request(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    clock: KernelClock,
) -> Option<(Vec<u8>, Instant)> {
    let mut arrived = Instant::now();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 16 * 1024];
        let (n, stamp) = read_stamped(tcp, &mut chunk, clock).await.ok()?;
        arrived = stamp.unwrap_or_else(Instant::now);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let mut chunk = [0u8; 64 * 1024];
        let (n, stamp) = read_stamped(tcp, &mut chunk, clock).await.ok()?;
        arrived = stamp.unwrap_or_else(Instant::now);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Some((body, arrived))
}

async fn write_chunk(tcp: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    tcp.write_all(&out).await
}

async fn serve(mut tcp: TcpStream, state: Arc<State>) {
    let _ =
        nix::sys::socket::setsockopt(&tcp, nix::sys::socket::sockopt::ReceiveTimestampns, &true);
    let clock = KernelClock::now();
    let mut buf = Vec::new();
    while let Some((body, received)) = read_request(&mut tcp, &mut buf, clock).await {
        let seq = state
            .next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let steps = (state.script)(seq, &body);
        // Logged at once and updated as tokens go out, so a test that reads the log right after
        // its client finished never misses an entry.
        let slot = {
            let mut log = state.log.lock().expect("log lock");
            log.push(RequestLog {
                seq,
                body,
                received,
                token_writes: Vec::new(),
            });
            log.len() - 1
        };
        let token_written = || {
            let at = Instant::now();
            state.log.lock().expect("log lock")[slot]
                .token_writes
                .push(at);
        };
        let mut keep = true;
        for step in steps {
            let result = match step {
                Step::Head { request_id } => {
                    let id = request_id
                        .map(|id| format!("x-request-id: {id}\r\n"))
                        .unwrap_or_default();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n{id}transfer-encoding: chunked\r\n\r\n"
                    );
                    tcp.write_all(head.as_bytes()).await
                }
                Step::Status(code, text) => {
                    let head = format!(
                        "HTTP/1.1 {code} Scripted\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    keep = false;
                    tcp.write_all(head.as_bytes()).await
                }
                Step::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
                Step::Event { payload, token } => {
                    let r = write_chunk(&mut tcp, format!("data: {payload}\n\n").as_bytes()).await;
                    if token {
                        token_written();
                    }
                    r
                }
                Step::SplitEvent {
                    payload,
                    token,
                    cuts,
                    pause,
                } => {
                    let event = format!("data: {payload}\n\n").into_bytes();
                    let mut last = 0;
                    let mut result = Ok(());
                    for cut in cuts.into_iter().chain([event.len()]) {
                        if cut > last {
                            result = write_chunk(&mut tcp, &event[last..cut]).await;
                            last = cut;
                            if cut < event.len() {
                                tokio::time::sleep(pause).await;
                            }
                        }
                    }
                    if token {
                        token_written();
                    }
                    result
                }
                Step::Raw(text) => write_chunk(&mut tcp, text.as_bytes()).await,
                Step::End => tcp.write_all(b"0\r\n\r\n").await,
                Step::Reset => {
                    let _ = tcp.set_zero_linger();
                    keep = false;
                    break;
                }
                Step::Close => {
                    let _ = tcp.shutdown().await;
                    keep = false;
                    break;
                }
                Step::Stall => {
                    // Wait until the client goes away.
                    let mut sink = [0u8; 1024];
                    while let Ok(n) = tcp.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                    keep = false;
                    break;
                }
            };
            if result.is_err() {
                keep = false;
                break;
            }
        }
        if !keep {
            return;
        }
    }
}

/// Chunks in vLLM's shapes, for scripts.
pub mod chunks {
    /// A chat role chunk as vLLM sends it.
    pub fn role() -> String {
        r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#.into()
    }

    /// A chat content chunk.
    pub fn content(text: &str) -> String {
        serde_json::json!({"id": "chatcmpl-s", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        .to_string()
    }

    /// A chat reasoning chunk.
    pub fn reasoning(text: &str) -> String {
        serde_json::json!({"id": "chatcmpl-s", "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": null}]})
        .to_string()
    }

    /// A chat finish-only chunk.
    pub fn chat_finish() -> String {
        r#"{"id":"chatcmpl-s","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#.into()
    }

    /// A completions text chunk.
    pub fn text(text: &str) -> String {
        serde_json::json!({"id": "cmpl-s", "object": "text_completion",
            "choices": [{"index": 0, "text": text, "finish_reason": null}]})
        .to_string()
    }

    /// A completions finish-only chunk (llama.cpp's last chunk).
    pub fn text_finish() -> String {
        r#"{"id":"cmpl-s","object":"text_completion","choices":[{"index":0,"text":"","finish_reason":"length"}]}"#.into()
    }

    /// A usage chunk.
    pub fn usage(prompt: u64, completion: u64) -> String {
        serde_json::json!({"id": "cmpl-s", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}})
        .to_string()
    }

    /// The end marker.
    pub fn done() -> String {
        "[DONE]".into()
    }
}
