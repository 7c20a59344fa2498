//! A server's cold start, split into the phases its port, its log and its health tell apart:
//! the process started, its port accepted connections, its log said the weights were loaded,
//! and its health check passed.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Lines engines log once their weights are in memory: vLLM (`Loading weights took`,
/// `Model loading took`), SGLang (`Load weight end`), llama.cpp (`model loaded`), TGI
/// (`Shard ready`), evalctl's simulated server (`weights loaded`).
pub const WEIGHTS_LOADED_MARKERS: &[&str] = &[
    "Loading weights took",
    "Model loading took",
    "Load weight end",
    "model loaded",
    "Shard ready",
    "weights loaded",
];

/// Bytes kept from one read to the next, so a marker split across two reads is found.
const OVERLAP: usize = 64;

/// When each phase of a start was seen, as offsets from the process start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StartPhases {
    /// Unix ms the process was started.
    pub started_at_ms: i64,
    /// Until the port accepted a connection, when a probe saw it open before health passed
    /// (a server that opens its port only when ready has no such phase).
    pub listening: Option<Duration>,
    /// Until the log said the weights were loaded, when it says so.
    pub weights_loaded: Option<Duration>,
    /// Until the health check passed.
    pub ready: Duration,
}

/// Follows a start: the probes' outcomes and the server's log as it grows.
#[derive(Debug)]
pub struct StartWatch {
    started: Instant,
    started_at_ms: i64,
    log: PathBuf,
    read_to: u64,
    carry: Vec<u8>,
    listening: Option<Duration>,
    weights_loaded: Option<Duration>,
}

impl StartWatch {
    /// A watch of a process started at `started` (Unix ms `started_at_ms`) logging to `log`.
    pub fn new(started: Instant, started_at_ms: i64, log: &Path) -> Self {
        StartWatch {
            started,
            started_at_ms,
            log: log.to_owned(),
            read_to: 0,
            carry: Vec::new(),
            listening: None,
            weights_loaded: None,
        }
    }

    /// Notes a probe that did not pass: whether a connection to the port opened.
    pub fn probed(&mut self, connected: bool) {
        if connected && self.listening.is_none() {
            self.listening = Some(self.started.elapsed());
        }
    }

    /// Reads what the log gained since the last call and notes the first weights marker.
    pub fn read_log(&mut self) {
        if self.weights_loaded.is_some() {
            return;
        }
        let Ok(mut file) = std::fs::File::open(&self.log) else {
            return;
        };
        if file.seek(SeekFrom::Start(self.read_to)).is_err() {
            return;
        }
        let mut fresh = Vec::new();
        if file.read_to_end(&mut fresh).is_err() || fresh.is_empty() {
            return;
        }
        self.read_to += fresh.len() as u64;
        let mut text = std::mem::take(&mut self.carry);
        text.extend_from_slice(&fresh);
        let seen = String::from_utf8_lossy(&text);
        if WEIGHTS_LOADED_MARKERS.iter().any(|m| seen.contains(m)) {
            self.weights_loaded = Some(self.started.elapsed());
        }
        self.carry = text[text.len().saturating_sub(OVERLAP)..].to_vec();
    }

    /// The phases, the health check having just passed.
    pub fn ready(mut self) -> StartPhases {
        self.read_log();
        let ready = self.started.elapsed();
        StartPhases {
            started_at_ms: self.started_at_ms,
            listening: self.listening,
            weights_loaded: self.weights_loaded,
            ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn the_first_connection_and_a_weights_line_split_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        let mut file = std::fs::File::create(&log).unwrap();
        let mut watch = StartWatch::new(Instant::now(), 1_000, &log);
        watch.probed(false);
        writeln!(file, "INFO starting").unwrap();
        watch.read_log();
        std::thread::sleep(Duration::from_millis(20));
        watch.probed(true);
        // A marker written in two pieces, read in between.
        write!(file, "INFO Loading wei").unwrap();
        watch.read_log();
        std::thread::sleep(Duration::from_millis(20));
        writeln!(file, "ghts took 12.5 seconds").unwrap();
        watch.read_log();
        std::thread::sleep(Duration::from_millis(20));
        let phases = watch.ready();
        let (listening, weights) = (phases.listening.unwrap(), phases.weights_loaded.unwrap());
        assert!(listening < weights && weights < phases.ready, "{phases:?}");
        assert_eq!(phases.started_at_ms, 1_000);
    }

    #[test]
    fn a_server_that_logs_no_marker_has_no_weights_phase() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("server.log");
        std::fs::write(&log, "listening on http://127.0.0.1:1\n").unwrap();
        let mut watch = StartWatch::new(Instant::now(), 0, &log);
        watch.read_log();
        let phases = watch.ready();
        assert_eq!((phases.weights_loaded, phases.listening), (None, None));
    }
}
