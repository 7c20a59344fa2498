//! Request bodies: one JSON body per dataset prompt, serialised before the step's clock
//! starts; a conversation's turns are serialised as they come, since each carries the
//! answers before it.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::dataset::{ChatMessage, Prompt, PromptInput};

/// Which OpenAI-compatible endpoint a step drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Api {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
}

impl Api {
    /// The request path.
    pub fn path(self) -> &'static str {
        match self {
            Api::Chat => "/v1/chat/completions",
            Api::Completions => "/v1/completions",
        }
    }
}

/// Request options that are not the prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestOptions {
    /// Ask for a final usage chunk (`stream_options.include_usage`), the source of exact output
    /// token counts.
    pub include_usage: bool,
    /// Send `ignore_eos: true` so the server generates exactly `max_tokens` (vLLM, SGLang,
    /// llama.cpp honour it; others ignore unknown fields).
    pub ignore_eos: bool,
    /// Extra fields merged into every body (e.g. `temperature`); the load generator's own
    /// fields win.
    pub extra_body: Map<String, Value>,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            include_usage: true,
            ignore_eos: true,
            extra_body: Map::new(),
        }
    }
}

/// The body of a streaming request for `prompt`.
pub fn body(api: Api, model: &str, prompt: &Prompt, options: &RequestOptions) -> Bytes {
    let mut map = options.extra_body.clone();
    map.insert("model".into(), Value::from(model));
    match (&prompt.input, api) {
        (PromptInput::Text(text), Api::Completions) => {
            map.insert("prompt".into(), Value::from(text.as_str()));
        }
        (PromptInput::Text(text), Api::Chat) => {
            map.insert(
                "messages".into(),
                json!([{ "role": "user", "content": text }]),
            );
        }
        (PromptInput::Messages(messages), api) => insert_messages(&mut map, api, messages),
        (PromptInput::Tokens { ids, .. }, Api::Completions) => {
            map.insert("prompt".into(), json!(ids));
        }
        (PromptInput::Tokens { text, .. }, Api::Chat) => {
            map.insert(
                "messages".into(),
                json!([{ "role": "user", "content": text }]),
            );
        }
    }
    finish(map, prompt.max_tokens, options)
}

/// The body of a streaming request for a conversation's next turn: `history` is every
/// message so far, the new user turn last.
pub fn conversation_body(
    api: Api,
    model: &str,
    history: &[ChatMessage],
    max_tokens: u32,
    options: &RequestOptions,
) -> Bytes {
    let mut map = options.extra_body.clone();
    map.insert("model".into(), Value::from(model));
    insert_messages(&mut map, api, history);
    finish(map, max_tokens, options)
}

fn insert_messages(map: &mut Map<String, Value>, api: Api, messages: &[ChatMessage]) {
    match api {
        Api::Chat => {
            map.insert("messages".into(), json!(messages));
        }
        Api::Completions => {
            // A completions server has no chat template: send the turns as plain text.
            let text: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
            map.insert("prompt".into(), Value::from(text.join("\n")));
        }
    }
}

/// Adds the load generator's own fields (they win over `extra_body`) and serialises.
fn finish(mut map: Map<String, Value>, max_tokens: u32, options: &RequestOptions) -> Bytes {
    map.insert("max_tokens".into(), Value::from(max_tokens));
    map.insert("stream".into(), Value::Bool(true));
    if options.include_usage {
        map.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    if options.ignore_eos {
        map.insert("ignore_eos".into(), Value::Bool(true));
    }
    Bytes::from(serde_json::to_vec(&map).expect("a JSON map always serialises"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(input: PromptInput) -> Prompt {
        Prompt {
            input,
            input_tokens: 3,
            max_tokens: 7,
        }
    }

    #[test]
    fn chat_and_completion_bodies() {
        let mut options = RequestOptions::default();
        options.extra_body.insert("temperature".into(), json!(0.0));
        options.extra_body.insert("stream".into(), json!(false));
        let p = prompt(PromptInput::Text("a b c".into()));
        let chat: Value = serde_json::from_slice(&body(Api::Chat, "m", &p, &options)).unwrap();
        assert_eq!(
            chat,
            json!({
                "model": "m",
                "messages": [{"role": "user", "content": "a b c"}],
                "max_tokens": 7,
                "stream": true,
                "stream_options": {"include_usage": true},
                "ignore_eos": true,
                "temperature": 0.0,
            })
        );
        let plain = RequestOptions {
            include_usage: false,
            ignore_eos: false,
            extra_body: Map::new(),
        };
        let c: Value = serde_json::from_slice(&body(Api::Completions, "m", &p, &plain)).unwrap();
        assert_eq!(
            c,
            json!({"model": "m", "prompt": "a b c", "max_tokens": 7, "stream": true})
        );
    }

    #[test]
    fn messages_bodies() {
        let p = prompt(PromptInput::Messages(vec![
            ChatMessage {
                role: "system".into(),
                content: "s".into(),
            },
            ChatMessage {
                role: "user".into(),
                content: "u".into(),
            },
        ]));
        let options = RequestOptions::default();
        let chat: Value = serde_json::from_slice(&body(Api::Chat, "m", &p, &options)).unwrap();
        assert_eq!(chat["messages"][1], json!({"role": "user", "content": "u"}));
        let c: Value = serde_json::from_slice(&body(Api::Completions, "m", &p, &options)).unwrap();
        assert_eq!(c["prompt"], "s\nu");
    }
}
