//! The fast path of [`classify`](super::classify): one pass over a chunk's bytes that reads only
//! what measurement needs, or gives up.
//!
//! The rule that keeps it correct: it answers only for input that is valid JSON by the strict
//! grammar (RFC 8259) in a shape it fully understands, and then answers exactly what the serde
//! parser would. Everything else returns `None` and the serde parser decides, errors included:
//!
//! - a non-null `usage`, `error` or `message`, or `"object": "error"` (once per stream at most);
//! - an escape inside a key, an `id` or an `object`; a key or `id` that is not UTF-8;
//! - a known key twice (serde rejects duplicate fields);
//! - a known field of an unexpected type (content parts arrays among them);
//! - anything the strict grammar rejects, and nesting deeper than [`MAX_DEPTH`].
//!
//! Being stricter than serde_json is always safe (the input only takes the slow path); being
//! more lenient never is. serde_json skips ignored strings and reads `text`/`content` without
//! UTF-8 validation, so the scan does not validate them either; it does reject control
//! characters and malformed escapes in every string, and unpaired surrogate escapes.

use std::borrow::Cow;

use super::{ChoiceFields, Choices, Chunk};

/// Deepest nesting of ignored values the scan follows before leaving the chunk to serde.
const MAX_DEPTH: u32 = 64;

/// Classifies a JSON chunk, or `None` when the full parser must decide.
pub(super) fn classify(data: &[u8]) -> Option<Chunk<'_>> {
    let mut s = Scan { s: data, i: 0 };
    s.ws();
    s.eat(b'{')?;
    let mut chunk = Chunk::default();
    let mut seen = Seen::default();
    let mut choices = Choices::default();
    s.object(|s, key| {
        match key {
            b"id" => {
                seen.once(0)?;
                chunk.id = s.plain_str_or_null()?.map(Cow::Borrowed);
            }
            b"object" => {
                seen.once(1)?;
                if s.plain_str_or_null()? == Some("error") {
                    return None;
                }
            }
            b"choices" => {
                seen.once(2)?;
                if !s.null()? {
                    s.eat(b'[')?;
                    s.array(|s| {
                        choices.add(s.choice()?.summarize());
                        Some(())
                    })?;
                }
            }
            // Rare (once per stream at most): the full parser reads them.
            b"usage" | b"error" | b"message" => {
                seen.once(match key {
                    b"usage" => 3,
                    b"error" => 4,
                    _ => 5,
                })?;
                if !s.null()? {
                    return None;
                }
            }
            _ => s.skip_value(0)?,
        }
        Some(())
    })?;
    s.ws();
    if s.i != data.len() {
        return None;
    }
    chunk.token = choices.token;
    chunk.answer = choices.answer;
    chunk.finished = choices.finished;
    Some(chunk)
}

/// Which known keys an object has shown, to leave duplicates to serde (which rejects them).
#[derive(Default)]
struct Seen(u8);

impl Seen {
    fn once(&mut self, bit: usize) -> Option<()> {
        let mask = 1u8 << bit;
        if self.0 & mask != 0 {
            return None;
        }
        self.0 |= mask;
        Some(())
    }
}

/// A cursor over the payload. Every method returns `None` on anything unexpected.
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    /// Skips JSON whitespace.
    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    /// Consumes `b`, which must come next.
    #[inline]
    fn eat(&mut self, b: u8) -> Option<()> {
        if self.peek()? != b {
            return None;
        }
        self.i += 1;
        Some(())
    }

    /// The members of an object whose `{` was consumed: `member` gets each key (plain, no
    /// escapes, UTF-8) with the cursor at its value, and must consume the value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            self.eat(b'"')?;
            let (key, escaped) = self.string()?;
            if escaped || !utf8(key) {
                return None;
            }
            self.ws();
            self.eat(b':')?;
            self.ws();
            member(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// The elements of an array whose `[` was consumed: `element` must consume each.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.ws();
            element(self)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// One element of `choices`.
    fn choice(&mut self) -> Option<ChoiceFields> {
        self.eat(b'{')?;
        let mut fields = ChoiceFields::default();
        let mut seen = Seen::default();
        self.object(|s, key| {
            match key {
                b"text" => {
                    seen.once(0)?;
                    fields.text = s.text()?;
                }
                b"delta" => {
                    seen.once(1)?;
                    if !s.null()? {
                        s.eat(b'{')?;
                        s.delta(&mut fields)?;
                    }
                }
                b"finish_reason" => {
                    seen.once(2)?;
                    fields.finished = s.set()?;
                }
                _ => s.skip_value(0)?,
            }
            Some(())
        })?;
        Some(fields)
    }

    /// The members of a `delta` object whose `{` was consumed.
    fn delta(&mut self, fields: &mut ChoiceFields) -> Option<()> {
        let mut seen = Seen::default();
        self.object(|s, key| {
            match key {
                b"content" => {
                    seen.once(0)?;
                    fields.content = s.text()?;
                }
                b"reasoning_content" => {
                    seen.once(1)?;
                    fields.reasoning_content = s.text()?;
                }
                b"reasoning" => {
                    seen.once(2)?;
                    fields.reasoning = s.text()?;
                }
                b"role" => {
                    seen.once(3)?;
                    fields.role = s.set()?;
                }
                b"tool_calls" => {
                    seen.once(4)?;
                    fields.tool_calls = s.set()?;
                }
                _ => s.skip_value(0)?,
            }
            Some(())
        })
    }

    /// A text field: `Some(None)` for null, `Some(Some(empty))` for a string; content-part
    /// arrays and other types are left to serde.
    fn text(&mut self) -> Option<Option<bool>> {
        if self.null()? {
            return Some(None);
        }
        self.eat(b'"')?;
        let (raw, _) = self.string()?;
        // Any escape decodes to at least one byte, so the raw form is empty exactly when the
        // text is.
        Some(Some(raw.is_empty()))
    }

    /// A field serde reads as `Option<IgnoredAny>`: whether it is set (not null).
    fn set(&mut self) -> Option<bool> {
        if self.null()? {
            return Some(false);
        }
        self.skip_value(0)?;
        Some(true)
    }

    /// A string without escapes, or null.
    fn plain_str_or_null(&mut self) -> Option<Option<&'a str>> {
        if self.null()? {
            return Some(None);
        }
        self.eat(b'"')?;
        let (raw, escaped) = self.string()?;
        if escaped {
            return None;
        }
        std::str::from_utf8(raw).ok().map(Some)
    }

    /// Consumes `null` when it comes next; `None` when something else starting with `n` does.
    #[inline]
    fn null(&mut self) -> Option<bool> {
        if self.peek()? != b'n' {
            return Some(false);
        }
        self.literal(b"null")?;
        Some(true)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if !self.s[self.i..].starts_with(word) {
            return None;
        }
        self.i += word.len();
        Some(())
    }

    /// The rest of a string whose opening quote was consumed: its raw bytes (escapes not
    /// decoded) and whether it has escapes.
    #[inline]
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i += plain_prefix(self.s.get(self.i..)?);
            match *self.s.get(self.i)? {
                b'"' => {
                    let raw = &self.s[start..self.i];
                    self.i += 1;
                    return Some((raw, escaped));
                }
                b'\\' => {
                    escaped = true;
                    self.escape()?;
                }
                0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
    }

    /// One escape sequence at the cursor (at its backslash).
    fn escape(&mut self) -> Option<()> {
        match *self.s.get(self.i + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {
                self.i += 2;
                Some(())
            }
            b'u' => {
                let unit = self.hex4(self.i + 2)?;
                self.i += 6;
                match unit {
                    0xD800..=0xDBFF => {
                        // A high surrogate must be followed by an escaped low one.
                        if self.s.get(self.i..self.i + 2)? != b"\\u" {
                            return None;
                        }
                        if !(0xDC00..=0xDFFF).contains(&self.hex4(self.i + 2)?) {
                            return None;
                        }
                        self.i += 6;
                        Some(())
                    }
                    0xDC00..=0xDFFF => None,
                    _ => Some(()),
                }
            }
            _ => None,
        }
    }

    fn hex4(&self, at: usize) -> Option<u16> {
        let digits = self.s.get(at..at + 4)?;
        let mut unit = 0u16;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return None,
            };
            unit = unit << 4 | u16::from(v);
        }
        Some(unit)
    }

    /// Skips one value of any type, checking its grammar.
    fn skip_value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => {
                self.i += 1;
                self.string().map(drop)
            }
            b'{' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                self.object(|s, _| s.skip_value(depth + 1))
            }
            b'[' => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                self.array(|s| s.skip_value(depth + 1))
            }
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// A number by the JSON grammar: `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek()? == b'-' {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }
}

/// The length of the prefix of `s` that a string may hold as is: up to the first quote,
/// backslash or control character. Eight bytes at a time: a byte `b` is flagged where
/// `b ^ c` (or `b` itself, for `< 0x20`) is "less than n" by the SWAR test
/// `(x - n·0x01…) & !x & 0x80…`, whose lowest flag is always exact.
#[inline]
fn plain_prefix(s: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = ONES << 7;
    let less = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x;
    let mut words = s.chunks_exact(8);
    for (i, word) in words.by_ref().enumerate() {
        let x = u64::from_le_bytes(word.try_into().expect("chunks_exact(8) gives 8 bytes"));
        let special = (less(x ^ (ONES * u64::from(b'"')), 1)
            | less(x ^ (ONES * u64::from(b'\\')), 1)
            | less(x, 0x20))
            & HIGHS;
        if special != 0 {
            return i * 8 + (special.trailing_zeros() / 8) as usize;
        }
    }
    let done = s.len() - words.remainder().len();
    done + words
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .unwrap_or(words.remainder().len())
}

/// Whether `s` is UTF-8 (the common all-ASCII case checked first).
#[inline]
fn utf8(s: &[u8]) -> bool {
    s.is_ascii() || std::str::from_utf8(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::super::{Payload, Usage, classify_full};
    use super::*;
    use proptest::prelude::*;

    fn full(data: &[u8]) -> Option<Chunk<'_>> {
        match classify_full(data) {
            Ok(Payload::Chunk(c)) => Some(c),
            _ => None,
        }
    }

    /// The fast path answers, and as the full parser does.
    #[track_caller]
    fn fast_agrees(json: &str) -> Chunk<'_> {
        let fast = classify(json.as_bytes()).unwrap_or_else(|| panic!("fast path gave up: {json}"));
        assert_eq!(Some(&fast), full(json.as_bytes()).as_ref(), "{json}");
        fast
    }

    /// The fast path leaves the chunk to the full parser.
    #[track_caller]
    fn gives_up(json: &str) {
        assert_eq!(classify(json.as_bytes()), None, "{json}");
    }

    #[test]
    fn common_shapes_take_the_fast_path() {
        // vLLM chat: role chunk, content, finish; ids borrowed.
        let role = fast_agrees(
            r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1718000000,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
        );
        assert!(!role.token);
        assert!(matches!(role.id, Some(Cow::Borrowed("chatcmpl-1"))));
        assert!(
            fast_agrees(r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]}"#)
                .answer
        );
        let finish = fast_agrees(
            r#"{"id":"c","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}"#,
        );
        assert!(finish.finished && !finish.token);
        // vLLM and the simulator, completions.
        assert!(fast_agrees(
            r#"{"id":"cmpl-9","object":"text_completion","created":1,"model":"m","system_fingerprint":"evalctl-sim","choices":[{"index":0,"text":" tok","logprobs":null,"finish_reason":null,"stop_reason":null}]}"#
        ).token);
        // llama.cpp: an empty text that is a token; a timings object; escapes in the text.
        assert!(fast_agrees(
            r#"{"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":null}],"created":1,"model":"x","object":"text_completion","timings":{"predicted_ms":1.5e1,"n":-3}}"#
        ).token);
        assert!(
            fast_agrees(r#"{"choices":[{"delta":{"content":"\"q\" \\ \u00e9\ud83d\ude00\n"}}]}"#)
                .token
        );
        // Reasoning, tool calls, several choices, whitespace, key order, null fields.
        let r = fast_agrees(
            " {\n \"choices\" : [ { \"delta\" : { \"reasoning_content\" : \"hm\" , \"content\" : null } } ] , \"id\" : null }\r\n",
        );
        assert!(r.token && !r.answer && r.id.is_none());
        assert!(fast_agrees(r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\":1}"}}]}}]}"#).answer);
        let two = fast_agrees(
            r#"{"choices":[{"index":0,"text":"","finish_reason":"length"},{"index":1,"text":"b"}]}"#,
        );
        assert!(two.token && two.finished);
        assert_eq!(
            fast_agrees(r#"{"usage":null,"choices":null,"error":null}"#),
            Chunk::default()
        );
        assert_eq!(fast_agrees("{}"), Chunk::default());
        assert_eq!(fast_agrees(r#"{"choices":[]}"#), Chunk::default());
        // A non-ASCII id is kept when it is UTF-8.
        assert_eq!(fast_agrees(r#"{"id":"é"}"#).id.as_deref(), Some("é"));
    }

    #[test]
    fn rare_shapes_go_to_the_full_parser() {
        for json in [
            // Usage and errors.
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            r#"{"error":{"message":"oom"}}"#,
            r#"{"object":"error","message":"bad","code":400}"#,
            r#"{"message":"hello"}"#,
            // Escapes where the value or key matters.
            r#"{"id":"a\"b","choices":[]}"#,
            r#"{"\u0069d":"x"}"#,
            r#"{"object":"\u0065rror","message":"m"}"#,
            // Duplicates serde rejects.
            r#"{"id":"a","id":"b"}"#,
            r#"{"choices":[{"text":"a","text":"b"}]}"#,
            r#"{"choices":[{"delta":{"content":"a","content":null}}]}"#,
            // Content parts and wrong types.
            r#"{"choices":[{"delta":{"content":[{"type":"text","text":"x"}]}}]}"#,
            r#"{"choices":[{"delta":{"content":5}}]}"#,
            r#"{"choices":{"text":"a"}}"#,
            r#"{"choices":[["a",null,null]]}"#,
            r#"{"id":5}"#,
            r#"["a"]"#,
            // Bad JSON.
            r#"{"choices":[{"text":"a"}],}"#,
            r#"{"choices":[{"text":"a"}]} x"#,
            r#"{"x":01}"#,
            r#"{"x":1.}"#,
            r#"{"x":tru}"#,
            r#"{"x":"\ud800"}"#,
            r#"{"x":"\q"}"#,
            "{\"x\":\"a\tb\"}",
            r#"{"choices":[{"text":"a"}]"#,
            "",
        ] {
            gives_up(json);
        }
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(100), "]".repeat(100));
        gives_up(&deep);
        // The full parser still reads them.
        let usage = full(br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#)
            .expect("usage chunk");
        assert_eq!(
            usage.usage,
            Some(Usage {
                prompt_tokens: Some(1),
                completion_tokens: Some(2)
            })
        );
    }

    /// A JSON value with the keys a chunk may have, in a tree the strategies below build.
    #[derive(Debug, Clone)]
    enum J {
        Null,
        Bool(bool),
        Num(String),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    /// How a value is written: whitespace between tokens and escapes inside strings.
    #[derive(Debug, Clone)]
    struct Style {
        spaces: Vec<&'static str>,
        /// Write some characters of values as `\uXXXX` (or `\/`) escapes.
        escape_values: bool,
        /// The same for keys, which the fast path leaves to serde.
        escape_keys: bool,
        seed: usize,
    }

    impl Style {
        fn space(&mut self) -> &'static str {
            self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            self.spaces[(self.seed >> 33) % self.spaces.len()]
        }

        fn string(&mut self, s: &str, may_escape: bool, out: &mut String) {
            out.push('"');
            for c in s.chars() {
                self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let escape = may_escape && (self.seed >> 40).is_multiple_of(3);
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    '/' if escape => out.push_str("\\/"),
                    c if escape => {
                        let mut units = [0u16; 2];
                        for u in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{u:04X}"));
                        }
                    }
                    c => out.push(c),
                }
            }
            out.push('"');
        }

        fn write(&mut self, j: &J, out: &mut String) {
            match j {
                J::Null => out.push_str("null"),
                J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                J::Num(n) => out.push_str(n),
                J::Str(s) => self.string(s, self.escape_values, out),
                J::Arr(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(self.space());
                        self.write(item, out);
                        out.push_str(self.space());
                    }
                    out.push(']');
                }
                J::Obj(members) => {
                    out.push('{');
                    for (i, (k, v)) in members.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(self.space());
                        self.string(k, self.escape_keys, out);
                        out.push_str(self.space());
                        out.push(':');
                        out.push_str(self.space());
                        self.write(v, out);
                        out.push_str(self.space());
                    }
                    out.push('}');
                }
            }
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            Just(String::new()),
            "[a-z ]{1,4}",
            "[\"\\\\/\n\t\u{1}é€😀 x]{1,6}",
        ]
    }

    fn scalar() -> impl Strategy<Value = J> {
        prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            prop_oneof![
                Just("0"),
                Just("-1"),
                Just("12.5"),
                Just("1e9"),
                Just("-0.25E-3"),
                Just("1700000000")
            ]
            .prop_map(|n| J::Num(n.to_owned())),
            text().prop_map(J::Str),
        ]
    }

    /// Any value, nested: what unknown fields carry.
    fn value() -> impl Strategy<Value = J> {
        scalar().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
                proptest::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(J::Obj),
            ]
        })
    }

    /// A value for a known field: usually the right type, sometimes null, now and then wrong.
    fn field(right: impl Strategy<Value = J> + 'static) -> impl Strategy<Value = J> {
        prop_oneof![30 => right, 4 => Just(J::Null), 1 => value()]
    }

    /// Members from `known` (each present or not, rarely twice) plus unknown ones, shuffled.
    fn members(
        known: Vec<(&'static str, BoxedStrategy<J>)>,
    ) -> impl Strategy<Value = Vec<(String, J)>> {
        let known: Vec<_> = known
            .into_iter()
            .map(|(k, v)| {
                // Absent, once, or now and then twice.
                (0u8..40, v.clone(), v).prop_map(move |(n, a, b)| match n {
                    0..=14 => vec![],
                    15..=38 => vec![(k.to_owned(), a)],
                    _ => vec![(k.to_owned(), a), (k.to_owned(), b)],
                })
            })
            .collect();
        (
            known,
            proptest::collection::vec(("[a-z_]{1,10}", value()), 0..3),
        )
            .prop_map(|(known, unknown): (Vec<Vec<(String, J)>>, _)| {
                known
                    .into_iter()
                    .flatten()
                    .chain(unknown)
                    .collect::<Vec<_>>()
            })
            .prop_shuffle()
    }

    fn delta() -> impl Strategy<Value = J> {
        members(vec![
            ("content", field(text().prop_map(J::Str)).boxed()),
            ("reasoning_content", field(text().prop_map(J::Str)).boxed()),
            ("reasoning", field(text().prop_map(J::Str)).boxed()),
            ("role", field(Just(J::Str("assistant".into()))).boxed()),
            ("tool_calls", field(value()).boxed()),
        ])
        .prop_map(J::Obj)
    }

    fn choice() -> impl Strategy<Value = J> {
        members(vec![
            ("text", field(text().prop_map(J::Str)).boxed()),
            ("delta", field(delta()).boxed()),
            (
                "finish_reason",
                field(prop_oneof![Just("stop"), Just("length")].prop_map(|s| J::Str(s.into())))
                    .boxed(),
            ),
            ("index", Just(J::Num("0".into())).boxed()),
        ])
        .prop_map(J::Obj)
    }

    fn chunk() -> impl Strategy<Value = J> {
        let usage = members(vec![
            ("prompt_tokens", Just(J::Num("3".into())).boxed()),
            ("completion_tokens", Just(J::Num("7".into())).boxed()),
        ])
        .prop_map(J::Obj);
        members(vec![
            (
                "id",
                field(
                    prop_oneof![9 => "[a-z0-9-]{1,12}", 1 => "[a-z0-9é\"-]{1,12}"].prop_map(J::Str),
                )
                .boxed(),
            ),
            (
                "object",
                field(
                    prop_oneof![9 => Just("text_completion"), 1 => Just("error")]
                        .prop_map(|s| J::Str(s.into())),
                )
                .boxed(),
            ),
            (
                "choices",
                field(
                    prop_oneof![
                        1 => Just(Vec::new()),
                        6 => proptest::collection::vec(choice(), 1..3),
                    ]
                    .prop_map(J::Arr),
                )
                .boxed(),
            ),
            ("usage", prop_oneof![9 => Just(J::Null), 1 => usage].boxed()),
            (
                "error",
                prop_oneof![9 => Just(J::Null), 1 => value()].boxed(),
            ),
            (
                "message",
                prop_oneof![9 => Just(J::Null), 1 => text().prop_map(J::Str)].boxed(),
            ),
        ])
        .prop_map(J::Obj)
    }

    fn style() -> impl Strategy<Value = Style> {
        (
            proptest::sample::subsequence(vec!["", " ", "\n", "\t", " \r\n "], 1..5),
            proptest::bool::weighted(0.3),
            proptest::bool::weighted(0.1),
            any::<usize>(),
        )
            .prop_map(|(spaces, escape_values, escape_keys, seed)| Style {
                spaces,
                escape_values,
                escape_keys,
                seed,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Wherever the fast path answers, it answers what the full parser does; the public
        /// `classify` always does.
        #[test]
        fn fast_path_agrees_with_the_full_parser(j in chunk(), mut style in style()) {
            let mut json = String::new();
            json.push_str(style.space());
            style.write(&j, &mut json);
            json.push_str(style.space());
            let data = json.as_bytes();
            if let Some(fast) = classify(data) {
                prop_assert_eq!(Some(fast), full(data), "{}", json);
            }
            let public = super::super::classify(data).map_err(|e| e.to_string());
            let reference = classify_full(data).map_err(|e| e.to_string());
            prop_assert_eq!(public, reference, "{}", json);
        }

        /// The same on broken input: a chunk with bytes replaced, inserted or cut off.
        #[test]
        fn fast_path_is_never_more_lenient(
            j in chunk(),
            mut style in style(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..4),
        ) {
            let mut json = String::new();
            style.write(&j, &mut json);
            let mut data = json.into_bytes();
            for (at, op, byte) in edits {
                let byte = *b"\"\\{}[],:nu0e-. \x01\xc3\xff".get(usize::from(byte) % 20).unwrap_or(&byte);
                match op {
                    0 if !data.is_empty() => { let i = at.index(data.len()); data[i] = byte; }
                    1 => { let i = at.index(data.len() + 1); data.insert(i, byte); }
                    _ => { let i = at.index(data.len() + 1); data.truncate(i); }
                }
            }
            if let Some(fast) = classify(&data) {
                prop_assert_eq!(Some(fast), full(&data), "{}", String::from_utf8_lossy(&data));
            }
        }
    }
}
