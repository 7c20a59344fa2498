//! Request bodies the simulator accepts, parsed and validated into what generation needs.
//!
//! Parsing is lenient where OpenAI clients are noisy (unknown fields such as `temperature` are
//! ignored) and strict where a benchmark could silently measure the wrong thing (a batch of
//! prompts, `n > 1`, a negative `max_tokens`, a prompt longer than the context): those are 400s
//! that say what was wrong.

use serde::Deserialize;
use serde_json::Value;

use super::error::ApiError;
use evalctl_tokenizer as tokenizer;

/// Output length when a request names none (OpenAI's completions default).
pub const DEFAULT_MAX_TOKENS: u32 = 16;

/// Which endpoint a generation request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Api {
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/chat/completions`.
    Chat,
}

/// A validated generation request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GenerationRequest {
    /// The model the client named, echoed in responses; `None` = the served model.
    pub model: Option<String>,
    /// Prompt length under the whitespace tokenizer (chat: the words of every message's text).
    pub prompt_tokens: u64,
    /// The prompt's token ids (completions: as sent, or of its text; chat: of every message's
    /// text, in order), for the prefix cache.
    pub prompt_ids: Vec<u32>,
    /// Exact number of tokens to generate.
    pub max_tokens: u32,
    /// Answer as server-sent events.
    pub stream: bool,
    /// Send a final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The prompt's text (completions: the prompt string; chat: the last message's text),
    /// for the scored answers of [`crate::quiz`]; empty for a prompt of token ids.
    pub prompt_text: String,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct CompletionBody {
    model: Option<String>,
    prompt: Value,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    // Accepted and recorded by clients; the simulator never stops early, so it has no effect.
    #[serde(rename = "ignore_eos")]
    _ignore_eos: Option<bool>,
}

#[derive(Deserialize)]
struct ChatBody {
    model: Option<String>,
    messages: Vec<Message>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    n: Option<i64>,
    #[serde(rename = "ignore_eos")]
    _ignore_eos: Option<bool>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(rename = "role")]
    _role: String,
    #[serde(default)]
    content: Value,
}

/// `POST /tokenize` body, as vLLM takes it: a `prompt` string or chat `messages`.
#[derive(Deserialize)]
struct TokenizeBody {
    prompt: Option<Value>,
    messages: Option<Vec<Message>>,
}

/// Parses a JSON body, naming the path of a field with the wrong type.
fn from_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || inner.is_syntax() || inner.is_eof() {
            ApiError::from_json(inner)
        } else {
            ApiError::invalid(format!("invalid JSON body: {path}: {inner}"))
        }
    })
}

/// Parses and validates a generation request for `api` against the served context length.
pub(crate) fn parse_generation(
    api: Api,
    body: &[u8],
    max_model_len: u64,
) -> Result<GenerationRequest, ApiError> {
    let (
        model,
        prompt_ids,
        prompt_text,
        max_tokens,
        max_completion_tokens,
        stream,
        stream_options,
        n,
    ) = match api {
        Api::Completions => {
            let b: CompletionBody = from_json(body)?;
            let ids = prompt_ids(&b.prompt)?;
            let text = match &b.prompt {
                Value::String(s) => s.clone(),
                Value::Array(items) => items
                    .first()
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            };
            (
                b.model,
                ids,
                text,
                b.max_tokens,
                b.max_completion_tokens,
                b.stream,
                b.stream_options,
                b.n,
            )
        }
        Api::Chat => {
            let b: ChatBody = from_json(body)?;
            if b.messages.is_empty() {
                return Err(ApiError::invalid_param(
                    "messages",
                    "messages must hold at least one message",
                ));
            }
            let texts = messages_text(&b.messages)?;
            let ids = texts.iter().flat_map(|t| tokenizer::tokenize(t)).collect();
            let text = texts.last().map_or_else(String::new, |t| (*t).to_owned());
            (
                b.model,
                ids,
                text,
                b.max_tokens,
                b.max_completion_tokens,
                b.stream,
                b.stream_options,
                b.n,
            )
        }
    };

    if let Some(n) = n
        && n != 1
    {
        return Err(ApiError::invalid_param(
            "n",
            format!("the simulated server generates one choice per request, got n = {n}"),
        ));
    }
    let stream = stream.unwrap_or(false);
    if stream_options.is_some() && !stream {
        return Err(ApiError::invalid_param(
            "stream_options",
            "stream_options can only be given when stream is true",
        ));
    }
    let include_usage = stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);

    // As OpenAI and vLLM: max_completion_tokens supersedes the older max_tokens.
    let (param, requested) = match (max_completion_tokens, max_tokens) {
        (Some(v), _) => ("max_completion_tokens", Some(v)),
        (None, v) => ("max_tokens", v),
    };
    let max_tokens = match requested {
        None => DEFAULT_MAX_TOKENS,
        Some(v) if v >= 1 && v <= i64::from(u32::MAX) => v as u32,
        Some(v) => {
            return Err(ApiError::invalid_param(
                param,
                format!("{param} must be at least 1, got {v}"),
            ));
        }
    };
    let prompt_tokens = prompt_ids.len() as u64;
    let total = prompt_tokens + u64::from(max_tokens);
    if total > max_model_len {
        return Err(ApiError::invalid_param(
            param,
            format!(
                "This model's maximum context length is {max_model_len} tokens. However, you \
                 requested {total} tokens ({prompt_tokens} in the prompt, {max_tokens} in the \
                 completion). Please reduce the length of the prompt or completion."
            ),
        ));
    }
    Ok(GenerationRequest {
        model,
        prompt_tokens,
        prompt_ids,
        max_tokens,
        stream,
        include_usage,
        prompt_text,
    })
}

/// Parses a `/tokenize` body into the token ids of its prompt or messages.
pub(crate) fn parse_tokenize(body: &[u8]) -> Result<Vec<u32>, ApiError> {
    let b: TokenizeBody = from_json(body)?;
    match (b.prompt, b.messages) {
        (Some(Value::String(prompt)), None) => Ok(tokenizer::tokenize(&prompt)),
        (Some(_), None) => Err(ApiError::invalid_param("prompt", "prompt must be a string")),
        (None, Some(messages)) => Ok(messages_text(&messages)?
            .iter()
            .flat_map(|t| tokenizer::tokenize(t))
            .collect()),
        _ => Err(ApiError::invalid(
            "give exactly one of prompt (a string) or messages (chat messages)",
        )),
    }
}

/// Token ids of a completions `prompt`: a string, an array of token ids, or a batch of one.
fn prompt_ids(prompt: &Value) -> Result<Vec<u32>, ApiError> {
    match prompt {
        Value::String(s) => Ok(tokenizer::tokenize(s)),
        Value::Array(items) if items.iter().all(Value::is_u64) => Ok(items
            .iter()
            .map(|id| {
                id.as_u64()
                    .map_or(u32::MAX, |id| id.min(u64::from(u32::MAX)) as u32)
            })
            .collect()),
        Value::Array(items) if items.len() == 1 => prompt_ids(&items[0]),
        Value::Array(items) if items.len() > 1 => Err(ApiError::invalid_param(
            "prompt",
            format!(
                "the simulated server takes one prompt per request, got a batch of {}",
                items.len()
            ),
        )),
        Value::Null => Err(ApiError::invalid_param("prompt", "prompt is required")),
        _ => Err(ApiError::invalid_param(
            "prompt",
            "prompt must be a string or an array of token ids",
        )),
    }
}

/// The text of each message: a string, or the `text` of every text part; `null` is empty.
fn messages_text(messages: &[Message]) -> Result<Vec<&str>, ApiError> {
    let mut texts = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        match &m.content {
            Value::Null => {}
            Value::String(s) => texts.push(s.as_str()),
            Value::Array(parts) => {
                for part in parts {
                    match (part.get("type"), part.get("text")) {
                        (Some(Value::String(t)), Some(Value::String(text))) if t == "text" => {
                            texts.push(text.as_str());
                        }
                        _ => {
                            return Err(ApiError::invalid_param(
                                "messages",
                                format!(
                                    "messages[{i}]: the simulated server takes only text \
                                     content parts ({{\"type\": \"text\", \"text\": ...}})"
                                ),
                            ));
                        }
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("messages[{i}].content must be a string or an array of parts"),
                ));
            }
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1000;

    fn chat(body: &str) -> Result<GenerationRequest, ApiError> {
        parse_generation(Api::Chat, body.as_bytes(), MAX)
    }

    fn completion(body: &str) -> Result<GenerationRequest, ApiError> {
        parse_generation(Api::Completions, body.as_bytes(), MAX)
    }

    #[test]
    fn chat_counts_words_of_every_message() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"one two three"}]},
                {"role":"assistant","content":null}],
                "stream":true,"stream_options":{"include_usage":true},"temperature":0.7}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            GenerationRequest {
                model: Some("m".into()),
                prompt_tokens: 5,
                prompt_ids: r.prompt_ids.clone(),
                max_tokens: DEFAULT_MAX_TOKENS,
                stream: true,
                include_usage: true,
                prompt_text: "one two three".into(),
            }
        );
    }

    #[test]
    fn completion_prompt_shapes() {
        assert_eq!(
            completion(r#"{"prompt":[7,8,9]}"#).unwrap().prompt_ids,
            [7, 8, 9]
        );
        assert_eq!(
            completion(r#"{"prompt":"a b c"}"#).unwrap().prompt_ids,
            tokenizer::tokenize("a b c")
        );
        assert_eq!(
            completion(r#"{"prompt":"a b c"}"#).unwrap().prompt_tokens,
            3
        );
        assert_eq!(
            completion(r#"{"prompt":[1,2,3,4]}"#).unwrap().prompt_tokens,
            4
        );
        assert_eq!(
            completion(r#"{"prompt":["a b"]}"#).unwrap().prompt_tokens,
            2
        );
        assert_eq!(
            completion(r#"{"prompt":[[5,6]]}"#).unwrap().prompt_tokens,
            2
        );
        let batch = completion(r#"{"prompt":["a","b"]}"#).unwrap_err();
        assert_eq!(batch.param, Some("prompt"));
        assert!(batch.message.contains("batch of 2"));
        assert!(completion(r#"{"prompt":{"x":1}}"#).is_err());
        assert!(
            completion(r#"{"max_tokens":3}"#)
                .unwrap_err()
                .message
                .contains("prompt")
        );
    }

    #[test]
    fn max_tokens_rules() {
        assert_eq!(
            completion(r#"{"prompt":"a","max_tokens":7}"#)
                .unwrap()
                .max_tokens,
            7
        );
        let both = chat(
            r#"{"messages":[{"role":"user","content":"a"}],"max_tokens":7,"max_completion_tokens":9}"#,
        );
        assert_eq!(both.unwrap().max_tokens, 9);
        let zero = completion(r#"{"prompt":"a","max_tokens":0}"#).unwrap_err();
        assert_eq!(zero.param, Some("max_tokens"));
        let typed = completion(r#"{"prompt":"a","max_tokens":"many"}"#).unwrap_err();
        assert!(typed.message.contains("max_tokens"), "{}", typed.message);
        let long = completion(r#"{"prompt":"a b","max_tokens":999}"#).unwrap_err();
        assert!(long.message.contains("1001 tokens"), "{}", long.message);
    }

    #[test]
    fn rejects_what_would_mismeasure() {
        assert!(chat(r#"{"messages":[]}"#).is_err());
        assert!(chat(r#"{"messages":[{"role":"user","content":"a"}],"n":2}"#).is_err());
        let opts = chat(
            r#"{"messages":[{"role":"user","content":"a"}],"stream_options":{"include_usage":true}}"#,
        )
        .unwrap_err();
        assert_eq!(opts.param, Some("stream_options"));
        let image = chat(
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{}}]}]}"#,
        )
        .unwrap_err();
        assert!(image.message.contains("text content parts"));
        let syntax = chat("{not json").unwrap_err();
        assert!(syntax.message.starts_with("invalid JSON body"));
    }

    #[test]
    fn tokenize_prompt_or_messages() {
        assert_eq!(parse_tokenize(br#"{"prompt":"x y"}"#).unwrap().len(), 2);
        let m = parse_tokenize(br#"{"messages":[{"role":"user","content":"x y z"}]}"#);
        assert_eq!(m.unwrap().len(), 3);
        assert!(parse_tokenize(br#"{}"#).is_err());
        assert!(parse_tokenize(br#"{"prompt":[1]}"#).is_err());
    }
}
