//! Incremental server-sent events parser over raw bytes.
//!
//! Bytes go in as they arrive from the socket, split anywhere — inside a line, inside a
//! `\r\n`, inside a multi-byte UTF-8 character — and complete events come out. It follows the
//! WHATWG event-stream rules that matter to OpenAI-compatible servers:
//!
//! - lines end with `\r\n`, `\n` or `\r`;
//! - a line starting with `:` is a comment and is ignored;
//! - `field: value` and `field:value` are the same (one leading space is dropped);
//! - several `data:` lines of one event are joined with `\n`;
//! - an empty line dispatches the event; an event without `data` is dropped.
//!
//! Unlike a browser, [`SseParser::finish`] also dispatches an event that the stream ended without
//! a blank line after, because some servers close right after their last `data:` line.
//!
//! Events are handed to a callback as borrowed slices, so steady-state parsing allocates
//! nothing: the internal buffers keep their capacity across events. Event size is bounded only
//! by `max_event_bytes` (long contexts send megabyte lines).

use memchr::memchr2;

/// An event ready for its consumer; valid only during the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field; empty when the event named none (the default "message" type).
    pub event: &'a [u8],
    /// The `data:` lines joined with `\n`.
    pub data: &'a [u8],
}

/// The stream broke a rule the parser cannot recover from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// One line or event outgrew the limit.
    #[error("server-sent event larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
}

/// Incremental parser state. Feed it with [`SseParser::feed`], end it with
/// [`SseParser::finish`].
#[derive(Debug)]
pub struct SseParser {
    /// The unfinished line carried over from earlier input.
    line: Vec<u8>,
    /// Data lines of the event being assembled.
    data: Vec<u8>,
    /// Event type of the event being assembled.
    event: Vec<u8>,
    /// The event being assembled has at least one `data` line.
    has_data: bool,
    /// The last input ended with `\r`: a `\n` starting the next input belongs to it.
    skip_lf: bool,
    max_event_bytes: usize,
}

/// Default bound on one event: generous enough for any real context window.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 << 20;

impl Default for SseParser {
    fn default() -> Self {
        SseParser::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser that refuses lines or events longer than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            event: Vec::new(),
            has_data: false,
            skip_lf: false,
            max_event_bytes,
        }
    }

    /// Parses `input`, calling `on_event` for every event it completes.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) -> Result<(), SseError> {
        if self.skip_lf {
            self.skip_lf = false;
            if let Some(rest) = input.strip_prefix(b"\n") {
                input = rest;
            }
        }
        while let Some(end) = memchr2(b'\n', b'\r', input) {
            if self.line.is_empty() {
                self.line_done(&input[..end], on_event)?;
            } else {
                self.grow_line(&input[..end])?;
                let line = std::mem::take(&mut self.line);
                let result = self.line_done(&line, on_event);
                self.line = line;
                self.line.clear();
                result?;
            }
            let mut next = end + 1;
            if input[end] == b'\r' {
                match input.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.skip_lf = true,
                }
            }
            input = &input[next..];
        }
        self.grow_line(input)
    }

    /// Ends the stream: completes a final line and dispatches a final event that had no blank
    /// line after it.
    pub fn finish(&mut self, on_event: &mut impl FnMut(SseEvent<'_>)) -> Result<(), SseError> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            let result = self.line_done(&line, on_event);
            self.line = line;
            self.line.clear();
            result?;
        }
        self.line_done(b"", on_event)
    }

    fn grow_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.max_event_bytes {
            return Err(SseError::TooLarge {
                limit: self.max_event_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(
        &mut self,
        line: &[u8],
        on_event: &mut impl FnMut(SseEvent<'_>),
    ) -> Result<(), SseError> {
        if line.is_empty() {
            if self.has_data {
                on_event(SseEvent {
                    event: &self.event,
                    data: &self.data,
                });
            }
            self.data.clear();
            self.event.clear();
            self.has_data = false;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(());
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                let extra = usize::from(self.has_data);
                if self.data.len() + extra + value.len() > self.max_event_bytes {
                    return Err(SseError::TooLarge {
                        limit: self.max_event_bytes,
                    });
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event.extend_from_slice(value);
            }
            // `id`, `retry` and unknown fields carry nothing a benchmark needs.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Owned copy of an event, for comparisons.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Owned {
        event: String,
        data: String,
    }

    /// Parses `stream` fed in the given pieces, then finishes.
    fn parse_pieces<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<Owned> {
        let mut parser = SseParser::default();
        let mut out = Vec::new();
        let mut collect = |e: SseEvent<'_>| {
            out.push(Owned {
                event: String::from_utf8(e.event.to_vec()).expect("utf-8 event"),
                data: String::from_utf8(e.data.to_vec()).expect("utf-8 data"),
            });
        };
        for piece in pieces {
            parser.feed(piece, &mut collect).expect("feed");
        }
        parser.finish(&mut collect).expect("finish");
        out
    }

    fn parse_whole(stream: &[u8]) -> Vec<Owned> {
        parse_pieces([stream])
    }

    fn data(events: &[Owned]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    /// A recorded-style stream: vLLM chat chunks with multi-byte text, a comment, `\r\n` and
    /// `\r` line ends, a multi-line event, a named event, a `big`-byte event and `[DONE]`.
    fn recorded(big: usize) -> (Vec<u8>, Vec<Owned>) {
        let big = "x".repeat(big);
        let chunk = |content: &str| {
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{{"index":0,"delta":{{"content":"{content}"}},"finish_reason":null}}]}}"#
            )
        };
        let mut stream = String::new();
        let mut expected = Vec::new();
        let mut push = |raw: String, event: &str, data: String| {
            stream.push_str(&raw);
            // A comment-only block dispatches nothing.
            if !raw.starts_with(':') {
                expected.push(Owned {
                    event: event.to_owned(),
                    data,
                });
            }
        };
        push(format!("data: {}\n\n", chunk("")), "", chunk(""));
        push(": keep-alive comment\n\n".into(), "", String::new());
        push(
            format!("data: {}\r\n\r\n", chunk("héllo")),
            "",
            chunk("héllo"),
        );
        push(
            format!("data:{}\n\n", chunk(" wörld ✓")),
            "",
            chunk(" wörld ✓"),
        );
        push(format!("data: {}\r\r", chunk("🦀🦀")), "", chunk("🦀🦀"));
        push(
            "data: line one\ndata: line two\n\n".into(),
            "",
            "line one\nline two".into(),
        );
        push(
            "event: error\ndata: {\"error\":{\"message\":\"boom\"}}\nid: 7\nretry: 10\n\n".into(),
            "error",
            "{\"error\":{\"message\":\"boom\"}}".into(),
        );
        push(format!("data: {big}\n\n"), "", big.clone());
        push("data: \n\n".into(), "", String::new());
        push("data: [DONE]\n\n".into(), "", "[DONE]".into());
        (stream.into_bytes(), expected)
    }

    #[test]
    fn parses_a_recorded_stream_whole() {
        let (stream, expected) = recorded(1 << 20);
        assert_eq!(parse_whole(&stream), expected);
    }

    #[test]
    fn every_two_way_split_gives_the_same_events() {
        let (stream, expected) = recorded(2_000);
        for at in 0..=stream.len() {
            let (a, b) = stream.split_at(at);
            assert_eq!(parse_pieces([a, b]), expected, "split at byte {at}");
        }
    }

    #[test]
    fn byte_by_byte_gives_the_same_events() {
        let (stream, expected) = recorded(100_000);
        assert_eq!(parse_pieces(stream.chunks(1)), expected);
    }

    #[test]
    fn line_ending_styles() {
        assert_eq!(
            data(&parse_whole(
                b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\r\n\n"
            )),
            ["a", "b", "c", "d"]
        );
        // A lone `\r` then `\n` in the next read is one line end, not two.
        assert_eq!(
            data(&parse_pieces([&b"data: a\r"[..], b"\ndata: b\r\n\r\n"])),
            ["a\nb"]
        );
    }

    #[test]
    fn field_parsing_rules() {
        assert_eq!(data(&parse_whole(b"data:x\n\n")), ["x"]);
        assert_eq!(
            data(&parse_whole(b"data:  two spaces\n\n")),
            [" two spaces"]
        );
        assert_eq!(data(&parse_whole(b"data\n\n")), [""]);
        assert_eq!(data(&parse_whole(b"event: only\n\n")), Vec::<&str>::new());
        assert_eq!(
            data(&parse_whole(b": just a comment\n\n")),
            Vec::<&str>::new()
        );
        assert_eq!(data(&parse_whole(b"unknown: field\ndata: y\n\n")), ["y"]);
        assert_eq!(data(&parse_whole(b"\n\n\ndata: z\n\n\n")), ["z"]);
    }

    #[test]
    fn final_event_without_blank_line_is_dispatched_at_finish() {
        assert_eq!(
            data(&parse_whole(b"data: a\n\ndata: [DONE]")),
            ["a", "[DONE]"]
        );
        assert_eq!(
            data(&parse_whole(b"data: a\n\ndata: [DONE]\n")),
            ["a", "[DONE]"]
        );
    }

    #[test]
    fn oversized_events_are_refused() {
        let mut parser = SseParser::new(16);
        let mut sink = |_: SseEvent<'_>| {};
        assert!(parser.feed(b"data: 0123456789\n\n", &mut sink).is_ok());
        let mut parser = SseParser::new(16);
        let err = parser
            .feed(b"data: 0123456789abcdef", &mut sink)
            .unwrap_err();
        assert_eq!(err, SseError::TooLarge { limit: 16 });
        let mut parser = SseParser::new(16);
        let err = parser
            .feed(b"data: 0123456789\ndata: abcdef\n\n", &mut sink)
            .unwrap_err();
        assert_eq!(err, SseError::TooLarge { limit: 16 });
    }

    #[test]
    fn steady_state_does_not_grow_buffers() {
        let mut parser = SseParser::default();
        let mut n = 0;
        let mut count = |_: SseEvent<'_>| n += 1;
        let event = b"data: {\"choices\":[{\"text\":\"tok\"}]}\n\n";
        parser.feed(event, &mut count).unwrap();
        let caps = (parser.line.capacity(), parser.data.capacity());
        for _ in 0..1000 {
            parser.feed(&event[..10], &mut count).unwrap();
            parser.feed(&event[10..], &mut count).unwrap();
        }
        assert_eq!(n, 1001);
        assert!(parser.line.capacity() <= caps.0.max(64));
        assert_eq!(parser.data.capacity(), caps.1);
    }

    proptest! {
        #[test]
        fn random_splits_give_the_same_events(cuts in proptest::collection::vec(0usize..200_000, 0..40)) {
            let (stream, expected) = recorded(100_000);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut pieces = Vec::new();
            let mut last = 0;
            for c in cuts {
                pieces.push(&stream[last..c]);
                last = c;
            }
            pieces.push(&stream[last..]);
            prop_assert_eq!(parse_pieces(pieces), expected);
        }

        #[test]
        fn arbitrary_utf8_payloads_round_trip(
            payloads in proptest::collection::vec("[^\r\n]{0,40}", 1..10),
            split in 1usize..7,
        ) {
            let stream: String = payloads.iter().map(|p| format!("data: {p}\n\n")).collect();
            let events = parse_pieces(stream.as_bytes().chunks(split));
            prop_assert_eq!(data(&events), payloads);
        }
    }
}
