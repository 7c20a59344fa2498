//! Real receivers on loopback for the notification tests: an HTTP/1.1 server that answers
//! POSTs (failing the first N with 500), and an SMTP server that accepts mail. Both speak
//! their protocol over real sockets and record what they were sent; each runs on a thread
//! of its own until dropped. They are test receivers, not products: one connection at a
//! time, no TLS, no pipelining.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the HTTP receiver answered.
#[derive(Debug, Clone)]
pub struct Received {
    /// Lower-cased header names with their values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == &name.to_ascii_lowercase())
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP receiver.
pub struct HttpReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
}

impl HttpReceiver {
    /// Listens on `addr` (`127.0.0.1:0` for any port); the first `fail_first` requests
    /// are answered 500.
    pub fn start(addr: &str, fail_first: usize) -> HttpReceiver {
        let listener = TcpListener::bind(addr).expect("bind the HTTP receiver");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("receiver address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (Arc::clone(&received), Arc::clone(&stop));
        let count = AtomicUsize::new(0);
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        let status = if n < fail_first { 500 } else { 200 };
                        if let Some(request) = serve_http(stream, status) {
                            seen.lock().unwrap().push(request);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        HttpReceiver {
            addr,
            received,
            stop,
        }
    }

    /// Its URL, with `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Everything it was sent so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Reads one request and answers `status`.
fn serve_http(stream: TcpStream, status: u16) -> Option<Received> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let reason = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    Some(Received {
        headers,
        body,
        status,
    })
}

/// One mail the SMTP receiver accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `MAIL FROM`.
    pub from: String,
    /// `RCPT TO`s.
    pub to: Vec<String>,
    /// The message: headers and body.
    pub data: String,
}

/// An SMTP receiver.
pub struct SmtpReceiver {
    addr: SocketAddr,
    mails: Arc<Mutex<Vec<Mail>>>,
    stop: Arc<AtomicBool>,
}

impl SmtpReceiver {
    /// Listens on a free loopback port.
    pub fn start() -> SmtpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the SMTP receiver");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("receiver address");
        let mails = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopping) = (Arc::clone(&mails), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(mail) = serve_smtp(stream) {
                            seen.lock().unwrap().extend(mail);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SmtpReceiver { addr, mails, stop }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The mails accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

impl Drop for SmtpReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One SMTP session (RFC 5321's minimum: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT).
fn serve_smtp(stream: TcpStream) -> Option<Vec<Mail>> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut out = stream;
    let mut mails = Vec::new();
    let (mut from, mut to) = (String::new(), Vec::new());
    out.write_all(b"220 evalctl-test-smtp ESMTP\r\n").ok()?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return Some(mails);
        }
        let command = line.trim_end().to_owned();
        let verb = command
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => out
                .write_all(b"250-evalctl-test-smtp\r\n250 8BITMIME\r\n")
                .ok()?,
            "HELO" | "NOOP" => out.write_all(b"250 OK\r\n").ok()?,
            "MAIL" => {
                from = command[command.find(':')? + 1..].trim().to_owned();
                out.write_all(b"250 OK\r\n").ok()?;
            }
            "RCPT" => {
                to.push(command[command.find(':')? + 1..].trim().to_owned());
                out.write_all(b"250 OK\r\n").ok()?;
            }
            "DATA" => {
                out.write_all(b"354 end with <CRLF>.<CRLF>\r\n").ok()?;
                let mut data = String::new();
                loop {
                    let mut l = String::new();
                    if reader.read_line(&mut l).ok()? == 0 {
                        return Some(mails);
                    }
                    if l == ".\r\n" {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                }
                mails.push(Mail {
                    from: std::mem::take(&mut from),
                    to: std::mem::take(&mut to),
                    data,
                });
                out.write_all(b"250 OK queued\r\n").ok()?;
            }
            "RSET" => {
                from.clear();
                to.clear();
                out.write_all(b"250 OK\r\n").ok()?;
            }
            "QUIT" => {
                out.write_all(b"221 bye\r\n").ok()?;
                return Some(mails);
            }
            _ => out.write_all(b"502 not implemented\r\n").ok()?,
        }
    }
}
