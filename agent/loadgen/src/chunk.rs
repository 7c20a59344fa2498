//! What one streamed `data:` payload means for measurement: does it carry output tokens?
//!
//! A chunk is *token-bearing* when it carries generated output (docs/metrics.md):
//!
//! | chunk | token-bearing |
//! |---|---|
//! | chat role chunk: `delta: {"role": "assistant"}` or with `"content": ""` (vLLM) | no |
//! | content delta with text (`delta.content`, completions `text`) | yes |
//! | reasoning delta with text (`delta.reasoning_content`, `delta.reasoning`) | yes (not an answer token) |
//! | tool-call delta (`delta.tool_calls`) | yes |
//! | empty text without a role or finish reason (llama.cpp streams a token's partial UTF-8 bytes as `""`) | yes |
//! | role plus non-empty content (Ollama puts the role in every delta) | yes |
//! | finish-only: empty or absent text with `finish_reason` set | no |
//! | usage chunk (`choices: []`) | no |
//! | `[DONE]` | no |
//!
//! Classifying runs once per streamed chunk, so it is the load generator's hottest code. A
//! hand-written scan ([`fast`]) reads the common shapes — content, reasoning, role, finish and
//! tool-call deltas, completions text, an `id` — in one pass over the bytes, without serde and
//! without allocating. Whatever it is not sure about (a `usage` or error payload, a key with
//! escapes, content parts, a duplicate key, invalid or deeply nested JSON) goes to the full
//! serde parser below, which is the reference: the fast path answers only where it agrees with
//! it (a property test checks this on generated chunks). The full parser also borrows from the
//! payload and folds `choices` as it reads them, allocating only for an escaped `id` or an error.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, SeqAccess, Visitor};

mod fast;

/// Token counts a server reported in `usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct Usage {
    /// Prompt tokens as the server counted them (chat template and special tokens included).
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    /// Generated tokens.
    #[serde(default)]
    pub completion_tokens: Option<u64>,
}

/// A classified chunk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk<'a> {
    /// The chunk's `id` (the server's request id on most servers).
    pub id: Option<Cow<'a, str>>,
    /// Carries generated output.
    pub token: bool,
    /// Carries answer output, not only reasoning.
    pub answer: bool,
    /// A choice carries a `finish_reason`.
    pub finished: bool,
    /// The chunk's `usage`, when present.
    pub usage: Option<Usage>,
    /// The error message of an error payload sent in place of a chunk.
    pub error: Option<String>,
}

/// One `data:` payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload<'a> {
    /// `data: [DONE]`: the stream is complete.
    Done,
    /// A JSON chunk.
    Chunk(Chunk<'a>),
}

/// Classifies one `data:` payload; fails when it is neither `[DONE]` nor a JSON object.
pub fn classify(data: &[u8]) -> Result<Payload<'_>, serde_json::Error> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(Payload::Done);
    }
    if let Some(chunk) = fast::classify(data) {
        return Ok(Payload::Chunk(chunk));
    }
    classify_full(data)
}

/// [`classify`] by the full serde parser alone: the reference the fast path agrees with, and
/// what it falls back to. Slower; for tests and benchmarks.
pub fn classify_full(data: &[u8]) -> Result<Payload<'_>, serde_json::Error> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(Payload::Done);
    }
    let raw: RawChunk<'_> = serde_json::from_slice(data)?;
    let choices = raw.choices.unwrap_or_default();
    let error = match (raw.error, raw.object.as_ref().map(|o| o.0.as_ref())) {
        (Some(err), _) => Some(error_message(&err)),
        (None, Some("error")) => Some(raw.message.map_or_else(
            || "error object without a message".to_owned(),
            |m| m.0.into_owned(),
        )),
        _ => None,
    };
    Ok(Payload::Chunk(Chunk {
        id: raw.id.map(|s| s.0),
        token: choices.token,
        answer: choices.answer,
        finished: choices.finished,
        usage: raw.usage,
        error,
    }))
}

/// Appends the answer text a chunk carries (chat `delta.content`, completions `text`; not
/// reasoning) to `out`. Only multi-turn steps call it, to keep a conversation's history, so
/// it parses fully and leaves [`classify`]'s hot path alone.
pub fn append_answer_text(data: &[u8], out: &mut String) {
    #[derive(Deserialize)]
    struct TextChunk<'a> {
        #[serde(borrow, default)]
        choices: Vec<TextChoice<'a>>,
    }
    #[derive(Deserialize)]
    struct TextChoice<'a> {
        #[serde(borrow, default)]
        delta: Option<TextDelta<'a>>,
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    }
    #[derive(Deserialize)]
    struct TextDelta<'a> {
        #[serde(borrow, default)]
        content: Option<Cow<'a, str>>,
    }
    let Ok(chunk) = serde_json::from_slice::<TextChunk<'_>>(data) else {
        return;
    };
    // Only the first choice: the load generator asks for one (n = 1).
    if let Some(choice) = chunk.choices.into_iter().next() {
        let text = choice.delta.and_then(|d| d.content).or(choice.text);
        if let Some(text) = text {
            out.push_str(&text);
        }
    }
}

fn error_message(err: &serde_json::Value) -> String {
    match err {
        serde_json::Value::String(s) => s.clone(),
        other => other
            .get("message")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| other.to_string(), str::to_owned),
    }
}

#[derive(Deserialize)]
struct RawChunk<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    object: Option<Str<'a>>,
    #[serde(default)]
    choices: Option<Choices>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(borrow, default)]
    message: Option<Str<'a>>,
}

/// A string borrowed from the payload when it has no escapes (serde copies an
/// `Option<Cow<str>>` field even with `#[serde(borrow)]`).
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(StrVisitor)
    }
}

/// What the choices of a chunk carry, folded over all of them.
#[derive(Debug, Default, Clone, Copy)]
struct Choices {
    token: bool,
    answer: bool,
    finished: bool,
}

impl<'de> Deserialize<'de> for Choices {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ChoicesVisitor;
        impl<'de> Visitor<'de> for ChoicesVisitor {
            type Value = Choices;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices, A::Error> {
                let mut all = Choices::default();
                while let Some(choice) = seq.next_element::<RawChoice>()? {
                    all.add(choice.summarize());
                }
                Ok(all)
            }
        }
        d.deserialize_seq(ChoicesVisitor)
    }
}

#[derive(Deserialize)]
struct RawChoice {
    #[serde(default)]
    text: Option<Text>,
    #[serde(default)]
    delta: Option<RawDelta>,
    #[serde(default)]
    finish_reason: Option<IgnoredAny>,
}

#[derive(Deserialize, Default)]
struct RawDelta {
    #[serde(default)]
    role: Option<IgnoredAny>,
    #[serde(default)]
    content: Option<Text>,
    #[serde(default)]
    reasoning_content: Option<Text>,
    #[serde(default)]
    reasoning: Option<Text>,
    #[serde(default)]
    tool_calls: Option<IgnoredAny>,
}

impl RawChoice {
    fn summarize(self) -> Choices {
        let delta = self.delta.unwrap_or_default();
        let empty = |t: Option<Text>| t.map(|t| t.empty);
        ChoiceFields {
            text: empty(self.text),
            content: empty(delta.content),
            reasoning_content: empty(delta.reasoning_content),
            reasoning: empty(delta.reasoning),
            role: delta.role.is_some(),
            tool_calls: delta.tool_calls.is_some(),
            finished: self.finish_reason.is_some(),
        }
        .summarize()
    }
}

/// The fields of one choice that decide what it carries, as both parsers read them.
#[derive(Debug, Default, Clone, Copy)]
struct ChoiceFields {
    /// Completions `text`: absent (or null), else whether it is empty.
    text: Option<bool>,
    /// `delta.content`, as `text`.
    content: Option<bool>,
    /// `delta.reasoning_content`, as `text`.
    reasoning_content: Option<bool>,
    /// `delta.reasoning`, as `text`.
    reasoning: Option<bool>,
    /// `delta.role` is set.
    role: bool,
    /// `delta.tool_calls` is set.
    tool_calls: bool,
    /// `finish_reason` is set.
    finished: bool,
}

impl ChoiceFields {
    fn summarize(self) -> Choices {
        let answer_texts = [self.text, self.content];
        let reasoning_texts = [self.reasoning_content, self.reasoning];
        let present = |texts: &[Option<bool>]| texts.iter().any(Option::is_some);
        let nonempty = |texts: &[Option<bool>]| texts.iter().flatten().any(|empty| !empty);

        let answer_nonempty = nonempty(&answer_texts) || self.tool_calls;
        let any_nonempty = answer_nonempty || nonempty(&reasoning_texts);
        let any_present = present(&answer_texts) || present(&reasoning_texts) || self.tool_calls;
        // An empty text is a token (llama.cpp's partial UTF-8) unless it rides on a role or a
        // finish reason, where it is only the shape of the role or finish chunk.
        let token = any_nonempty || (any_present && !self.role && !self.finished);
        let reasoning_only = nonempty(&reasoning_texts) && !answer_nonempty;
        Choices {
            token,
            answer: token && !reasoning_only,
            finished: self.finished,
        }
    }
}

impl Choices {
    /// Folds one more choice in.
    fn add(&mut self, c: Choices) {
        self.token |= c.token;
        self.answer |= c.answer;
        self.finished |= c.finished;
    }
}

/// A text field, reduced to whether it is empty. Strings are never copied.
struct Text {
    empty: bool,
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text {
                    empty: v.is_empty(),
                })
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Text, E> {
                Ok(Text {
                    empty: v.is_empty(),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text, A::Error> {
                let mut parts = 0usize;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    parts += 1;
                }
                Ok(Text { empty: parts == 0 })
            }
        }
        // serde_json hands a string over as raw bytes here, skipping UTF-8 validation of text
        // the load generator never looks at; only its emptiness matters.
        d.deserialize_bytes(TextVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(json: &str) -> Chunk<'_> {
        match classify(json.as_bytes()).expect("valid chunk") {
            Payload::Chunk(c) => c,
            Payload::Done => panic!("not a chunk"),
        }
    }

    fn token(json: &str) -> bool {
        chunk(json).token
    }

    #[test]
    fn answer_text_of_chat_and_completion_chunks() {
        let mut out = String::new();
        append_answer_text(
            br#"{"choices":[{"delta":{"role":"assistant","content":""}}]}"#,
            &mut out,
        );
        append_answer_text(
            br#"{"choices":[{"delta":{"content":"Hi \"you\""}}]}"#,
            &mut out,
        );
        append_answer_text(br#"{"choices":[{"delta":{"reasoning":"hmm"}}]}"#, &mut out);
        append_answer_text(br#"{"choices":[{"index":0,"text":" there"}]}"#, &mut out);
        append_answer_text(
            br#"{"choices":[],"usage":{"completion_tokens":3}}"#,
            &mut out,
        );
        append_answer_text(b"not json", &mut out);
        assert_eq!(out, "Hi \"you\" there");
    }

    #[test]
    fn done_marker() {
        assert_eq!(classify(b"[DONE]").unwrap(), Payload::Done);
        assert_eq!(classify(b" [DONE] ").unwrap(), Payload::Done);
        assert!(classify(b"[DONE").is_err());
        assert!(classify(b"not json").is_err());
    }

    #[test]
    fn chat_shapes() {
        // vLLM's role chunk, and the bare role chunk.
        assert!(!token(
            r#"{"choices":[{"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#
        ));
        assert!(!token(r#"{"choices":[{"delta":{"role":"assistant"}}]}"#));
        assert!(!token(
            r#"{"choices":[{"delta":{"role":"assistant","content":null}}]}"#
        ));
        // Content.
        assert!(token(
            r#"{"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}"#
        ));
        assert!(token(r#"{"choices":[{"delta":{"content":"\u00e9\n"}}]}"#));
        // Ollama: the role in every delta.
        assert!(token(
            r#"{"choices":[{"delta":{"role":"assistant","content":"hi"}}]}"#
        ));
        // An empty content delta without role or finish is a token (partial UTF-8).
        assert!(token(
            r#"{"choices":[{"delta":{"content":""},"finish_reason":null}]}"#
        ));
        // Finish-only, in the shapes servers use.
        assert!(!token(
            r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#
        ));
        assert!(!token(
            r#"{"choices":[{"delta":{"content":""},"finish_reason":"length"}]}"#
        ));
        assert!(!token(
            r#"{"choices":[{"delta":{"content":null},"finish_reason":"stop"}]}"#
        ));
        // The last token and the finish reason together (vLLM) is a token.
        let last = chunk(r#"{"choices":[{"delta":{"content":"."},"finish_reason":"stop"}]}"#);
        assert!(last.token && last.finished);
        // Tool calls.
        assert!(token(
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#
        ));
    }

    #[test]
    fn reasoning_is_a_token_but_not_an_answer() {
        for field in ["reasoning_content", "reasoning"] {
            let json = format!(r#"{{"choices":[{{"delta":{{"{field}":"hmm"}}}}]}}"#);
            let c = chunk(&json);
            assert!(c.token && !c.answer, "{field}");
        }
        let both = chunk(r#"{"choices":[{"delta":{"reasoning_content":"","content":"yes"}}]}"#);
        assert!(both.token && both.answer);
        let with_null =
            chunk(r#"{"choices":[{"delta":{"reasoning_content":"why","content":null}}]}"#);
        assert!(with_null.token && !with_null.answer);
    }

    #[test]
    fn completion_shapes() {
        assert!(token(r#"{"choices":[{"text":"a","finish_reason":null}]}"#));
        // llama.cpp: an empty text per token while a multi-byte character is incomplete.
        let partial = chunk(r#"{"choices":[{"text":"","finish_reason":null}]}"#);
        assert!(partial.token && partial.answer);
        assert!(!token(
            r#"{"choices":[{"text":"","finish_reason":"length"}]}"#
        ));
        assert!(token(
            r#"{"choices":[{"text":" end","finish_reason":"length"}]}"#
        ));
    }

    #[test]
    fn usage_id_and_errors() {
        let usage = chunk(
            r#"{"id":"cmpl-9","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":34,"total_tokens":46}}"#,
        );
        assert!(!usage.token);
        assert_eq!(usage.id.as_deref(), Some("cmpl-9"));
        assert!(
            matches!(usage.id, Some(Cow::Borrowed(_))),
            "ids are borrowed"
        );
        assert_eq!(
            usage.usage,
            Some(Usage {
                prompt_tokens: Some(12),
                completion_tokens: Some(34)
            })
        );
        assert_eq!(chunk(r#"{"usage":null,"choices":null}"#), Chunk::default());

        let err = chunk(r#"{"error":{"message":"out of memory","type":"InternalServerError"}}"#);
        assert_eq!(err.error.as_deref(), Some("out of memory"));
        let vllm_old = chunk(r#"{"object":"error","message":"bad","code":400}"#);
        assert_eq!(vllm_old.error.as_deref(), Some("bad"));
        assert_eq!(
            chunk(r#"{"error":"plain"}"#).error.as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn content_parts_and_wrong_types() {
        assert!(token(
            r#"{"choices":[{"delta":{"content":[{"type":"text","text":"x"}]}}]}"#
        ));
        assert!(!token(
            r#"{"choices":[{"delta":{"role":"assistant","content":[]}}]}"#
        ));
        assert!(classify(br#"{"choices":[{"delta":{"content":5}}]}"#).is_err());
        assert!(classify(br#"{"choices":{"text":"a"}}"#).is_err());
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let c = chunk(
            r#"{"id":"x","object":"chat.completion.chunk","created":1,"model":"m","system_fingerprint":"f",
                "choices":[{"index":0,"delta":{"content":"a","extra":{"deep":[1,2]}},"logprobs":null,"finish_reason":null,"stop_reason":null}],
                "x_groq":{"id":"q"}}"#,
        );
        assert!(c.token);
    }
}
