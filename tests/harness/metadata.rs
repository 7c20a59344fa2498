//! Fake cloud metadata services on loopback, built to each cloud's documented requests and
//! answers, that a test can switch to "this VM is being preempted":
//!
//! - AWS IMDSv2: `PUT /latest/api/token` needs `X-aws-ec2-metadata-token-ttl-seconds` and
//!   returns a token; `GET /latest/meta-data/spot/instance-action` needs
//!   `X-aws-ec2-metadata-token` (else 401) and answers 404 until the notice, then 200 with
//!   `{"action": "terminate", "time": "…"}`.
//! - GCP: `GET /computeMetadata/v1/instance/preempted` needs `Metadata-Flavor: Google` (else
//!   403) and answers `FALSE`/`TRUE` with an `ETag`; with `wait_for_change=true` and a
//!   `last_etag` equal to the current one it holds the call until the value changes or
//!   `timeout_sec` passes.
//! - Azure Scheduled Events: `GET /metadata/scheduledevents?api-version=…` needs
//!   `Metadata: true` (else 400) and lists a `Preempt` event once the notice is given.
//!
//! These are fakes of a boundary this machine cannot provide (a cloud), named as such.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The cloud a fake metadata service plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    /// AWS IMDSv2.
    Aws,
    /// GCP metadata server.
    Gcp,
    /// Azure Instance Metadata Service, Scheduled Events.
    Azure,
}

impl Cloud {
    /// The agent's `--spot-provider` value.
    pub fn provider(self) -> &'static str {
        match self {
            Cloud::Aws => "aws",
            Cloud::Gcp => "gcp",
            Cloud::Azure => "azure",
        }
    }
}

/// A fake metadata service.
pub struct FakeMetadata {
    url: String,
    shared: Arc<Shared>,
}

struct Shared {
    cloud: Cloud,
    preempted: AtomicBool,
    noticed_at: Mutex<Option<Instant>>,
    /// Requests refused for a missing or wrong header.
    refused: Mutex<Vec<String>>,
    served: Mutex<u64>,
    stop: AtomicBool,
}

const AWS_TOKEN: &str = "fake-imds-token-1";

impl FakeMetadata {
    /// Starts a fake of `cloud` on a free loopback port.
    pub fn start(cloud: Cloud) -> FakeMetadata {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake metadata");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        listener.set_nonblocking(true).expect("non-blocking");
        let shared = Arc::new(Shared {
            cloud,
            preempted: AtomicBool::new(false),
            noticed_at: Mutex::new(None),
            refused: Mutex::new(Vec::new()),
            served: Mutex::new(0),
            stop: AtomicBool::new(false),
        });
        let accept = Arc::clone(&shared);
        std::thread::spawn(move || {
            while !accept.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let shared = Arc::clone(&accept);
                        std::thread::spawn(move || serve(stream, &shared));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeMetadata { url, shared }
    }

    /// Base URL for the agent's `--metadata-url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Gives the preemption notice; returns when it was given.
    pub fn preempt(&self) -> Instant {
        let now = Instant::now();
        *self.shared.noticed_at.lock().expect("lock") = Some(now);
        self.shared.preempted.store(true, Ordering::SeqCst);
        now
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        *self.shared.served.lock().expect("lock")
    }

    /// Requests refused for a missing or wrong header, as "METHOD PATH".
    pub fn refused(&self) -> Vec<String> {
        self.shared.refused.lock().expect("lock").clone()
    }
}

impl Drop for FakeMetadata {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let (status, extra, body) = answer(shared, &method, &target, &headers);
        if status == 400 || status == 401 || status == 403 {
            shared
                .refused
                .lock()
                .expect("lock")
                .push(format!("{method} {target}"));
        }
        *shared.served.lock().expect("lock") += 1;
        let reason = match status {
            200 => "OK",
            404 => "Not Found",
            401 => "Unauthorized",
            403 => "Forbidden",
            _ => "Bad Request",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// (status, extra header lines, body) for one request.
fn answer(
    shared: &Shared,
    method: &str,
    target: &str,
    headers: &[(String, String)],
) -> (u16, String, String) {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    let preempted = || shared.preempted.load(Ordering::SeqCst);
    match shared.cloud {
        Cloud::Aws => match (method, path) {
            ("PUT", "/latest/api/token") => {
                if header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                    return (400, String::new(), String::new());
                }
                (200, String::new(), AWS_TOKEN.to_owned())
            }
            ("GET", "/latest/meta-data/spot/instance-action") => {
                if header("x-aws-ec2-metadata-token") != Some(AWS_TOKEN) {
                    return (401, String::new(), String::new());
                }
                if preempted() {
                    (
                        200,
                        "content-type: text/plain\r\n".to_owned(),
                        r#"{"action": "terminate", "time": "2026-11-23T12:02:00Z"}"#.to_owned(),
                    )
                } else {
                    (404, String::new(), String::new())
                }
            }
            _ => (404, String::new(), String::new()),
        },
        Cloud::Gcp => {
            if path != "/computeMetadata/v1/instance/preempted" {
                return (404, String::new(), String::new());
            }
            if header("metadata-flavor") != Some("Google") {
                return (403, String::new(), String::new());
            }
            let etag = |p: bool| if p { "etag-true" } else { "etag-false" };
            if param("wait_for_change").as_deref() == Some("true") {
                let last = param("last_etag");
                let limit = param("timeout_sec")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(300u64);
                let deadline = Instant::now() + Duration::from_secs(limit);
                while last.as_deref() == Some(etag(preempted()))
                    && Instant::now() < deadline
                    && !shared.stop.load(Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            let now = preempted();
            (
                200,
                format!("etag: {}\r\ncontent-type: application/text\r\n", etag(now)),
                if now { "TRUE" } else { "FALSE" }.to_owned(),
            )
        }
        Cloud::Azure => {
            if path != "/metadata/scheduledevents" || param("api-version").is_none() {
                return (404, String::new(), String::new());
            }
            if header("metadata") != Some("true") {
                return (400, String::new(), String::new());
            }
            let events = if preempted() {
                r#"[{"EventId": "C7061BAC-AFDC-4513-B24B-AA5F13A16123", "EventStatus": "Scheduled", "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": ["evalctl-vm"], "NotBefore": "Mon, 23 Nov 2026 12:00:30 GMT", "Description": "", "EventSource": "Platform", "DurationInSeconds": -1}]"#
            } else {
                "[]"
            };
            (
                200,
                "content-type: application/json\r\n".to_owned(),
                format!(r#"{{"DocumentIncarnation": 1, "Events": {events}}}"#),
            )
        }
    }
}
