//! The raw record of one request: every instant the metrics are computed from.
//!
//! Instants are nanoseconds since the step's epoch (an `Instant` taken when the step starts), so
//! records serialise as plain numbers and any metric can be recomputed from them later.

use serde::{Deserialize, Serialize};

/// Where a request's output token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenSource {
    /// The server's `usage.completion_tokens`.
    Usage,
    /// The number of token-bearing chunks (the server sent no usage).
    Counted,
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The server answered with a non-2xx status.
    HttpStatus,
    /// No connection could be opened (refused, unreachable, handshake failed).
    Connect,
    /// The whole request took longer than the request timeout.
    Timeout,
    /// No bytes arrived for longer than the stall timeout.
    Stall,
    /// The connection broke before the response was complete.
    Reset,
    /// The server sent an error object inside the stream.
    MidStreamError,
    /// The response could not be understood (bad SSE, bad JSON, wrong content type).
    Decode,
    /// The stream ended cleanly but without `[DONE]` or a `finish_reason`.
    Truncated,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::HttpStatus,
        ErrorKind::Connect,
        ErrorKind::Timeout,
        ErrorKind::Stall,
        ErrorKind::Reset,
        ErrorKind::MidStreamError,
        ErrorKind::Decode,
        ErrorKind::Truncated,
    ];

    /// The snake_case name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::HttpStatus => "http_status",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Stall => "stall",
            ErrorKind::Reset => "reset",
            ErrorKind::MidStreamError => "mid_stream_error",
            ErrorKind::Decode => "decode",
            ErrorKind::Truncated => "truncated",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed request's error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// What happened, for humans.
    pub message: String,
}

/// Everything measured about one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Position in the step, from 0, warmup requests first.
    pub index: u64,
    /// A warmup request, excluded from metrics.
    pub warmup: bool,
    /// Index of the dataset prompt it sent.
    pub prompt_index: usize,
    /// When the load pattern wanted it sent.
    pub scheduled_ns: u64,
    /// Right after the request's last bytes were written to the socket.
    pub sent_ns: Option<u64>,
    /// The arrival of every token-bearing chunk, in order (the first is the first token).
    pub token_ns: Vec<u64>,
    /// The arrival of the first chunk carrying answer output (differs from the first token
    /// when a reasoning model thinks first).
    pub first_answer_ns: Option<u64>,
    /// When the response ended (`[DONE]`, end of body, or the error).
    pub end_ns: Option<u64>,
    /// Prompt tokens as the dataset counted them.
    pub input_tokens: u64,
    /// Prompt tokens as the server reported them in `usage`.
    pub server_prompt_tokens: Option<u64>,
    /// Output tokens: `usage.completion_tokens` when sent, else the token-bearing chunk count.
    pub output_tokens: u64,
    /// Where `output_tokens` came from.
    pub output_tokens_source: Option<TokenSource>,
    /// Token chunks that carried only reasoning (`delta.reasoning`, `delta.reasoning_content`,
    /// or inline `<think>…</think>`); absent when the request did not reason. Tokens when
    /// each chunk holds one, as servers stream by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_tokens: Option<u64>,
    /// The request went over a connection that an earlier request opened.
    pub reused_connection: bool,
    /// The HTTP status, once the response head arrived.
    pub http_status: Option<u16>,
    /// The server's request id (`x-request-id` header, else the first chunk's `id`).
    pub server_request_id: Option<String>,
    /// Set when the request failed.
    pub error: Option<RequestError>,
    /// In a multi-turn step: the conversation it belongs to (numbered in the order the step
    /// started them, from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<u64>,
    /// In a multi-turn step: its position in the conversation, from 1 (the request carries
    /// every earlier turn and answer as history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<u32>,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl RequestRecord {
    /// The request finished without error.
    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.sent_ns.is_some()
    }

    /// Time to first token in milliseconds: first token-bearing chunk − send.
    pub fn ttft_ms(&self) -> Option<f64> {
        let sent = self.sent_ns?;
        Some(ms(self.token_ns.first()?.saturating_sub(sent)))
    }

    /// Time to the first answer (non-reasoning) chunk in milliseconds.
    pub fn ttfa_ms(&self) -> Option<f64> {
        Some(ms(self.first_answer_ns?.saturating_sub(self.sent_ns?)))
    }

    /// End-to-end latency in milliseconds: last token-bearing chunk − send.
    pub fn e2el_ms(&self) -> Option<f64> {
        let sent = self.sent_ns?;
        Some(ms(self.token_ns.last()?.saturating_sub(sent)))
    }

    /// Time per output token in milliseconds: (E2EL − TTFT) / (output tokens − 1); `None`
    /// with at most one output token.
    pub fn tpot_ms(&self) -> Option<f64> {
        if self.output_tokens <= 1 {
            return None;
        }
        let (first, last) = (*self.token_ns.first()?, *self.token_ns.last()?);
        Some(ms(last.saturating_sub(first)) / (self.output_tokens - 1) as f64)
    }

    /// Gaps between consecutive token-bearing chunks in milliseconds.
    pub fn itls_ms(&self) -> impl Iterator<Item = f64> + '_ {
        self.token_ns
            .windows(2)
            .map(|w| ms(w[1].saturating_sub(w[0])))
    }

    /// Client lag: send − scheduled, in milliseconds.
    pub fn lag_ms(&self) -> Option<f64> {
        Some(ms(self.sent_ns?.saturating_sub(self.scheduled_ns)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> RequestRecord {
        RequestRecord {
            scheduled_ns: 1_000_000,
            sent_ns: Some(2_000_000),
            token_ns: vec![12_000_000, 14_000_000, 20_000_000, 22_000_000],
            first_answer_ns: Some(14_000_000),
            output_tokens: 4,
            ..RequestRecord::default()
        }
    }

    #[test]
    fn derived_latencies() {
        let r = record();
        assert_eq!(r.ttft_ms(), Some(10.0));
        assert_eq!(r.ttfa_ms(), Some(12.0));
        assert_eq!(r.e2el_ms(), Some(20.0));
        assert_eq!(r.tpot_ms(), Some(10.0 / 3.0));
        assert_eq!(r.itls_ms().collect::<Vec<_>>(), vec![2.0, 6.0, 2.0]);
        assert_eq!(r.lag_ms(), Some(1.0));
        assert!(r.succeeded());
    }

    #[test]
    fn tpot_uses_reported_tokens_and_needs_two() {
        let mut r = record();
        r.output_tokens = 11; // usage said 11 tokens over 4 chunks
        assert_eq!(r.tpot_ms(), Some(1.0));
        r.output_tokens = 1;
        assert_eq!(r.tpot_ms(), None);
    }

    #[test]
    fn serialises_kinds_snake_case() {
        let e = RequestError {
            kind: ErrorKind::MidStreamError,
            message: "x".into(),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"kind":"mid_stream_error","message":"x"}"#);
        for kind in ErrorKind::ALL {
            let name = serde_json::to_value(kind).unwrap();
            assert_eq!(name, kind.as_str());
        }
    }
}
