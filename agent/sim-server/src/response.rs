//! Response bodies in the shapes vLLM sends, streamed (SSE `data:` events) or whole.
//!
//! A chat stream is: one role chunk (`delta: {"role": "assistant", "content": ""}`, as vLLM),
//! content chunks of `tokens_per_chunk` tokens each, one finish chunk whose delta is empty and
//! whose `finish_reason` is set, a usage chunk with `choices: []` when
//! `stream_options.include_usage` asked for it, and `data: [DONE]`. A completions stream is the
//! same without the role chunk; its finish chunk has `"text": ""`. Every chunk carries the same
//! `id`, the echoed `model` and `"system_fingerprint": "evalctl-sim"`.

use bytes::Bytes;
use serde::Serialize;

use super::ReasoningShape;
use super::api::Api;

/// Labels every response as coming from the simulator.
pub const SYSTEM_FINGERPRINT: &str = "evalctl-sim";

/// Why generation stopped: the simulator generates exactly `max_tokens`, but for a scored
/// answer ([`crate::quiz`]), which ends where the answer does.
const FINISH_REASON: &str = "length";
/// The finish reason of a scored answer.
const ANSWERED: &str = "stop";

/// The last event of every stream.
pub(crate) const DONE: &[u8] = b"data: [DONE]\n\n";

/// Token counts reported in `usage`.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Usage {
    pub prompt_tokens: u64,
    pub total_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            completion_tokens,
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a, C> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: C,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

#[derive(Serialize, Default)]
struct Delta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

#[derive(Serialize)]
struct ChatChunkChoice<'a> {
    index: u32,
    delta: Delta<'a>,
    logprobs: (),
    finish_reason: Option<&'static str>,
}

#[derive(Serialize)]
struct TextChoice<'a> {
    index: u32,
    text: &'a str,
    logprobs: (),
    finish_reason: Option<&'static str>,
    stop_reason: (),
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct ChatChoice<'a> {
    index: u32,
    message: ChatMessage<'a>,
    logprobs: (),
    finish_reason: &'static str,
}

/// Writes the events and bodies of one response.
#[derive(Debug, Clone)]
pub(crate) struct ResponseWriter {
    api: Api,
    id: String,
    created: u64,
    model: String,
    finish_reason: &'static str,
}

impl ResponseWriter {
    pub fn new(api: Api, id: String, created: u64, model: String) -> Self {
        ResponseWriter {
            api,
            id,
            created,
            model,
            finish_reason: FINISH_REASON,
        }
    }

    /// The response ends as an answer does (`finish_reason: "stop"`).
    pub fn answering(mut self) -> Self {
        self.finish_reason = ANSWERED;
        self
    }

    fn envelope<C>(
        &self,
        object: &'static str,
        choices: C,
        usage: Option<Usage>,
    ) -> Envelope<'_, C> {
        Envelope {
            id: &self.id,
            object,
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage,
        }
    }

    fn chunk_object(&self) -> &'static str {
        match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Completions => "text_completion",
        }
    }

    /// The role chunk that opens a chat stream.
    pub fn role_event(&self) -> Bytes {
        self.chat_delta(Some("assistant"), Some(""), None)
    }

    /// A chunk carrying generated text.
    pub fn text_event(&self, text: &str) -> Bytes {
        match self.api {
            Api::Chat => self.chat_delta(None, Some(text), None),
            Api::Completions => self.text_choice(text, None),
        }
    }

    /// A chunk carrying reasoning text in a reasoning field (chat; completions streams have
    /// no such field and carry it as text).
    pub fn reasoning_event(&self, shape: ReasoningShape, text: &str) -> Bytes {
        let delta = match shape {
            ReasoningShape::Reasoning => Delta {
                reasoning: Some(text),
                ..Delta::default()
            },
            ReasoningShape::ReasoningContent => Delta {
                reasoning_content: Some(text),
                ..Delta::default()
            },
            ReasoningShape::Think => return self.text_event(text),
        };
        match self.api {
            Api::Chat => self.chat_choice(delta, None),
            Api::Completions => self.text_choice(text, None),
        }
    }

    /// The chunk that carries only the finish reason.
    pub fn finish_event(&self) -> Bytes {
        match self.api {
            Api::Chat => self.chat_delta(None, None, Some(self.finish_reason)),
            Api::Completions => self.text_choice("", Some(self.finish_reason)),
        }
    }

    /// The usage chunk: no choices, token counts.
    pub fn usage_event(&self, usage: Usage) -> Bytes {
        let choices: [(); 0] = [];
        sse(&self.envelope(self.chunk_object(), choices, Some(usage)))
    }

    /// A whole (non-streaming) response.
    pub fn full_body(&self, text: &str, usage: Usage) -> Vec<u8> {
        let body = match self.api {
            Api::Chat => serde_json::to_vec(&self.envelope(
                "chat.completion",
                [ChatChoice {
                    index: 0,
                    message: ChatMessage {
                        role: "assistant",
                        content: text,
                    },
                    logprobs: (),
                    finish_reason: self.finish_reason,
                }],
                Some(usage),
            )),
            Api::Completions => serde_json::to_vec(&self.envelope(
                "text_completion",
                [TextChoice {
                    index: 0,
                    text,
                    logprobs: (),
                    finish_reason: Some(self.finish_reason),
                    stop_reason: (),
                }],
                Some(usage),
            )),
        };
        body.expect("serializing plain structs to a Vec cannot fail")
    }

    fn chat_delta(
        &self,
        role: Option<&'static str>,
        content: Option<&str>,
        finish_reason: Option<&'static str>,
    ) -> Bytes {
        self.chat_choice(
            Delta {
                role,
                content,
                ..Delta::default()
            },
            finish_reason,
        )
    }

    fn chat_choice(&self, delta: Delta<'_>, finish_reason: Option<&'static str>) -> Bytes {
        let choice = ChatChunkChoice {
            index: 0,
            delta,
            logprobs: (),
            finish_reason,
        };
        sse(&self.envelope(self.chunk_object(), [choice], None))
    }

    fn text_choice(&self, text: &str, finish_reason: Option<&'static str>) -> Bytes {
        let choice = TextChoice {
            index: 0,
            text,
            logprobs: (),
            finish_reason,
            stop_reason: (),
        };
        sse(&self.envelope(self.chunk_object(), [choice], None))
    }
}

/// One SSE event: `data: <json>\n\n`.
fn sse(value: &impl Serialize) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut buf, value).expect("serializing plain structs to a Vec cannot fail");
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(event: &[u8]) -> Value {
        let text = std::str::from_utf8(event).unwrap();
        let json = text
            .strip_prefix("data: ")
            .unwrap()
            .strip_suffix("\n\n")
            .unwrap();
        serde_json::from_str(json).unwrap()
    }

    fn writer(api: Api) -> ResponseWriter {
        ResponseWriter::new(api, "id-1".into(), 7, "m".into())
    }

    #[test]
    fn chat_stream_shapes() {
        let w = writer(Api::Chat);
        let role = parse(&w.role_event());
        assert_eq!(role["object"], "chat.completion.chunk");
        assert_eq!(role["system_fingerprint"], "evalctl-sim");
        assert_eq!(
            role["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let text = parse(&w.text_event("hi there"));
        assert_eq!(text["choices"][0]["delta"], json!({"content": "hi there"}));
        assert_eq!(text["choices"][0]["finish_reason"], Value::Null);
        let finish = parse(&w.finish_event());
        assert_eq!(finish["choices"][0]["delta"], json!({}));
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
        let usage = parse(&w.usage_event(Usage::new(3, 4)));
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        );
        assert!(text.get("usage").is_none());
    }

    #[test]
    fn completion_shapes() {
        let w = writer(Api::Completions);
        let text = parse(&w.text_event("a"));
        assert_eq!(text["object"], "text_completion");
        assert_eq!(text["choices"][0]["text"], "a");
        let finish = parse(&w.finish_event());
        assert_eq!(finish["choices"][0]["text"], "");
        assert_eq!(finish["choices"][0]["finish_reason"], "length");
        let full: Value = serde_json::from_slice(&w.full_body("a b", Usage::new(1, 2))).unwrap();
        assert_eq!(full["choices"][0]["text"], "a b");
        assert_eq!(full["usage"]["completion_tokens"], 2);
        assert_eq!(full["model"], "m");
        assert_eq!(full["id"], "id-1");
    }
}
