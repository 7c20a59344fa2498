//! Multi-turn conversations: what a step that holds conversations sends, turn by turn.
//!
//! A conversation is an optional system prompt and its user turns, each with the output
//! length to ask for. The answers are not part of it: the step sends each turn with the
//! whole history, the server's own earlier answers included, as a chat client does
//! (see [`crate::load`]).
//!
//! Conversations come from a file (ShareGPT's `{"conversations": [{"from", "value"}]}` or
//! OpenAI's `{"messages": [{"role", "content"}]}`, as one JSON array or as JSON Lines, one
//! conversation per line) or are synthetic: a turn count and per-turn input and output
//! lengths drawn from [`Sampled`] distributions, each user message random words of exactly
//! its length (as random prompts are made).
//!
//! A file is checked whole before a prompt is sent, and a bad conversation is refused with
//! the file, the line and the field: a user turn with no text, a role that is neither user,
//! assistant nor system, content that is not text, a conversation with no user turn, or a
//! reply with no text where its length is the output length. Consecutive messages of one
//! role are joined (ShareGPT dumps hold such pairs), and assistant messages before the
//! first user message are dropped (a greeting the user never asked for).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution as _, Exp, Normal};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use evalctl_results::{LengthReport, Sampled};

use crate::dataset::{Counter, DatasetError, TOKENIZE_CONCURRENCY, exact_text, read};

/// One user turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// The user's message.
    pub user: String,
    /// Its length in tokens, by the dataset's tokenization.
    pub user_tokens: u64,
    /// Output tokens to ask for (`max_tokens`).
    pub max_tokens: u32,
}

/// One conversation to hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// A system prompt sent first in every turn's history.
    pub system: Option<String>,
    /// Its length in tokens (0 without one).
    pub system_tokens: u64,
    /// The user turns, in order; at least one.
    pub turns: Vec<Turn>,
}

/// A step's conversations and the pause between an answer and the next turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversations {
    /// The conversations, in the order the step starts them (reused in turn when the step
    /// holds more).
    pub list: Arc<[Conversation]>,
    /// Seconds between the end of an answer and the next user turn.
    pub think_time_s: Sampled,
}

/// Where conversations come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "from")]
pub enum ConversationSource {
    /// A ShareGPT or OpenAI-messages file (see the module docs).
    File {
        /// The file.
        path: PathBuf,
        /// Keep at most this many user turns of each conversation.
        max_turns: Option<u32>,
        /// Output length of every turn; else the length of the turn's recorded reply.
        output_tokens: Option<Sampled>,
    },
    /// Generated conversations.
    Synthetic {
        /// User turns per conversation.
        turns: Sampled,
        /// Each user message's length in tokens.
        input_tokens: Sampled,
        /// The first user message's length, when it differs from the follow-ups' (a pasted
        /// document, a long first question).
        first_input_tokens: Option<Sampled>,
        /// Each turn's output length in tokens.
        output_tokens: Sampled,
    },
}

/// Draws one value of `sampled`, cut below at `floor`.
pub fn draw(sampled: &Sampled, floor: f64, rng: &mut impl Rng) -> f64 {
    let value = match *sampled {
        Sampled::Fixed { value } => value,
        Sampled::Uniform { min, max } if max > min => rng.random_range(min..=max),
        Sampled::Uniform { min, .. } => min,
        Sampled::Normal { mean, stddev } => {
            Normal::new(mean, stddev).map_or(mean, |d| d.sample(rng))
        }
        Sampled::Exponential { mean } => Exp::new(1.0 / mean).map_or(mean, |d| d.sample(rng)),
    };
    value.max(floor)
}

/// Draws a count (turns, tokens) of at least 1.
fn draw_count(sampled: &Sampled, rng: &mut impl Rng) -> u64 {
    draw(sampled, 1.0, rng).round().max(1.0) as u64
}

/// Prepares `count` conversations from `source`; synthetic ones come with how close their
/// user messages came to their lengths.
pub(crate) async fn prepare(
    counter: &Counter,
    source: &ConversationSource,
    count: usize,
    seed: u64,
) -> Result<(Vec<Conversation>, Option<LengthReport>), DatasetError> {
    match source {
        ConversationSource::File {
            path,
            max_turns,
            output_tokens,
        } => {
            let bytes = read(path).await?;
            let mut parsed = parse_file(path, &bytes)?;
            drop(bytes);
            parsed.shuffle(&mut StdRng::seed_from_u64(seed));
            parsed.truncate(count);
            let mut rng = StdRng::seed_from_u64(seed ^ OUTPUT_SEED);
            let mut conversations = Vec::with_capacity(parsed.len());
            for parsed in parsed {
                conversations.push(
                    count_file_conversation(
                        counter,
                        path,
                        parsed,
                        *max_turns,
                        output_tokens.as_ref(),
                        &mut rng,
                    )
                    .await?,
                );
            }
            Ok((conversations, None))
        }
        ConversationSource::Synthetic {
            turns,
            input_tokens,
            first_input_tokens,
            output_tokens,
        } => {
            let made: Vec<(Conversation, Vec<(u64, u64)>)> = futures::stream::iter(0..count)
                .map(|i| async move {
                    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
                    let n = draw_count(turns, &mut rng);
                    let mut made = Vec::with_capacity(n as usize);
                    let mut lengths = Vec::with_capacity(n as usize);
                    for k in 0..n {
                        let length = match first_input_tokens {
                            Some(first) if k == 0 => first,
                            _ => input_tokens,
                        };
                        let target = draw_count(length, &mut rng);
                        let max_tokens =
                            u32::try_from(draw_count(output_tokens, &mut rng)).unwrap_or(u32::MAX);
                        let (user, user_tokens) = exact_text(counter, &mut rng, target).await?;
                        lengths.push((target, user_tokens));
                        made.push(Turn {
                            user,
                            user_tokens,
                            max_tokens,
                        });
                    }
                    let conversation = Conversation {
                        system: None,
                        system_tokens: 0,
                        turns: made,
                    };
                    Ok::<_, DatasetError>((conversation, lengths))
                })
                .buffered(TOKENIZE_CONCURRENCY)
                .try_collect()
                .await?;
            let mut report = LengthReport {
                target: input_tokens.mean().round() as u64,
                ..LengthReport::default()
            };
            for (target, got) in made.iter().flat_map(|(_, l)| l) {
                report.add(*target, *got);
            }
            Ok((made.into_iter().map(|(c, _)| c).collect(), Some(report)))
        }
    }
}

/// Seed offset of sampled output lengths of file conversations.
const OUTPUT_SEED: u64 = 0x0000_7475_726e_7321;

/// A conversation read from a file, before its tokens are counted.
#[derive(Debug, Clone, PartialEq)]
struct ParsedConversation {
    system: Option<String>,
    /// User message and the recorded reply (with the line and field it came from).
    turns: Vec<ParsedTurn>,
}

#[derive(Debug, Clone, PartialEq)]
struct ParsedTurn {
    user: String,
    reply: Option<Located<String>>,
}

#[derive(Debug, Clone, PartialEq)]
struct Located<T> {
    value: T,
    line: usize,
    field: String,
}

/// The 1-based line of any byte offset of a text.
struct LineIndex {
    newlines: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        LineIndex {
            newlines: memchr::memchr_iter(b'\n', text.as_bytes()).collect(),
        }
    }

    fn line(&self, offset: usize) -> usize {
        self.newlines.partition_point(|&at| at < offset) + 1
    }
}

/// Where `part` (a slice of `whole`) starts in it.
fn offset_in(whole: &str, part: &str) -> usize {
    (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize)
}

#[derive(Deserialize)]
struct RawEntry<'a> {
    #[serde(borrow, default)]
    conversations: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    messages: Option<Vec<&'a RawValue>>,
}

#[derive(Deserialize)]
struct RawMessage {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    value: Option<serde_json::Value>,
    #[serde(default)]
    content: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    System,
    User,
    Assistant,
}

/// Reads and checks every conversation of a file.
fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<ParsedConversation>, DatasetError> {
    let error = |line: Option<usize>, message: String| DatasetError::Parse {
        path: path.to_owned(),
        line,
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| error(None, format!("not UTF-8: {e}")))?;
    let lines = LineIndex::new(text);
    let mut entries: Vec<&RawValue> = Vec::new();
    if text.trim_start().starts_with('[') {
        entries = serde_json::from_str(text).map_err(|e| {
            error(
                Some(e.line()),
                format!("expected a JSON array of conversations: {e}"),
            )
        })?;
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry: &RawValue = serde_json::from_str(line)
                .map_err(|e| error(Some(i + 1), format!("expected one JSON object: {e}")))?;
            entries.push(entry);
        }
    }
    if entries.is_empty() {
        return Err(error(None, "the file holds no conversation".into()));
    }
    entries
        .iter()
        .map(|entry| parse_entry(text, &lines, entry).map_err(|(line, m)| error(Some(line), m)))
        .collect()
}

/// One conversation; an error is its line and message.
fn parse_entry(
    text: &str,
    lines: &LineIndex,
    entry: &RawValue,
) -> Result<ParsedConversation, (usize, String)> {
    let line_of = |raw: &RawValue| lines.line(offset_in(text, raw.get()));
    let entry_line = line_of(entry);
    let raw: RawEntry<'_> = serde_json::from_str(entry.get()).map_err(|e| {
        (
            entry_line,
            format!("expected {{\"conversations\": [...]}} or {{\"messages\": [...]}}: {e}"),
        )
    })?;
    let (list, key, role_key, text_key) = match (raw.conversations, raw.messages) {
        (Some(list), None) => (list, "conversations", "from", "value"),
        (None, Some(list)) => (list, "messages", "role", "content"),
        _ => {
            return Err((
                entry_line,
                "give exactly one of \"conversations\" (ShareGPT) or \"messages\" (OpenAI)".into(),
            ));
        }
    };
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<ParsedTurn> = Vec::new();
    let mut last = None;
    for (i, raw_message) in list.iter().enumerate() {
        let line = line_of(raw_message);
        let field = |name: &str| format!("{key}[{i}].{name}");
        let message: RawMessage = serde_json::from_str(raw_message.get())
            .map_err(|e| (line, format!("{key}[{i}]: expected an object: {e}")))?;
        let role_name = match (message.from, message.role) {
            (Some(r), _) | (None, Some(r)) => r,
            (None, None) => {
                return Err((line, format!("{}: missing", field(role_key))));
            }
        };
        let role = match role_name.to_ascii_lowercase().as_str() {
            "human" | "user" => Role::User,
            "gpt" | "assistant" | "chatgpt" | "bard" | "bing" | "model" => Role::Assistant,
            "system" => Role::System,
            other => {
                return Err((
                    line,
                    format!(
                        "{}: `{other}` is not a role (expected human/user, gpt/assistant or system)",
                        field(role_key)
                    ),
                ));
            }
        };
        let body = match message.value.or(message.content) {
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => {
                return Err((
                    line,
                    format!(
                        "{}: expected text, got {}",
                        field(text_key),
                        json_kind(&other)
                    ),
                ));
            }
        };
        match (role, last) {
            (Role::System, None | Some(Role::System)) => system.push(body),
            (Role::System, Some(_)) => {
                return Err((
                    line,
                    format!(
                        "{}: a system message after the conversation began",
                        field(role_key)
                    ),
                ));
            }
            (Role::Assistant, None | Some(Role::System)) => {
                // A greeting before the user spoke: not a turn.
                continue;
            }
            (Role::User, _) => {
                if body.trim().is_empty() {
                    return Err((
                        line,
                        format!("{}: a user turn with no text", field(text_key)),
                    ));
                }
                match (last, turns.last_mut()) {
                    (Some(Role::User), Some(turn)) => {
                        turn.user.push('\n');
                        turn.user.push_str(&body);
                    }
                    _ => turns.push(ParsedTurn {
                        user: body,
                        reply: None,
                    }),
                }
            }
            (Role::Assistant, Some(_)) => {
                let Some(turn) = turns.last_mut() else {
                    continue;
                };
                match &mut turn.reply {
                    Some(reply) => {
                        reply.value.push('\n');
                        reply.value.push_str(&body);
                    }
                    None => {
                        turn.reply = Some(Located {
                            value: body,
                            line,
                            field: field(text_key),
                        })
                    }
                }
            }
        }
        last = Some(role);
    }
    if turns.is_empty() {
        return Err((
            entry_line,
            format!("`{key}` holds no user turn (expected at least one human/user message)"),
        ));
    }
    Ok(ParsedConversation {
        system: (!system.is_empty()).then(|| system.join("\n")),
        turns,
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array (content parts are not supported)",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Counts a file conversation's tokens and settles each turn's output length.
async fn count_file_conversation(
    counter: &Counter,
    path: &Path,
    parsed: ParsedConversation,
    max_turns: Option<u32>,
    output_tokens: Option<&Sampled>,
    rng: &mut StdRng,
) -> Result<Conversation, DatasetError> {
    let system_tokens = match &parsed.system {
        Some(system) => counter.count(system).await?,
        None => 0,
    };
    let keep = max_turns.map_or(usize::MAX, |n| n as usize);
    let mut turns = Vec::with_capacity(parsed.turns.len().min(keep));
    for turn in parsed.turns.into_iter().take(keep) {
        let max_tokens = match (output_tokens, &turn.reply) {
            (Some(sampled), _) => draw_count(sampled, rng),
            (None, Some(reply)) => {
                let n = counter.count(&reply.value).await?;
                if n == 0 {
                    return Err(DatasetError::Parse {
                        path: path.to_owned(),
                        line: Some(reply.line),
                        message: format!(
                            "{}: a reply with no text gives no output length (hint: set the dataset's `output_tokens`)",
                            reply.field
                        ),
                    });
                }
                n
            }
            (None, None) => u64::from(crate::dataset::DEFAULT_OUTPUT_TOKENS),
        };
        turns.push(Turn {
            user_tokens: counter.count(&turn.user).await?,
            user: turn.user,
            max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
        });
    }
    Ok(Conversation {
        system: parsed.system,
        system_tokens,
        turns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<ParsedConversation>, String> {
        parse_file(Path::new("chats.json"), text.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn sharegpt_and_messages_files_give_every_user_turn() {
        let array = r#"[
  {"id": "a", "conversations": [
    {"from": "gpt", "value": "hello, how can I help"},
    {"from": "human", "value": "one"},
    {"from": "gpt", "value": "two three"},
    {"from": "human", "value": "four"},
    {"from": "human", "value": "five"},
    {"from": "gpt", "value": "six"}
  ]},
  {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "x"}]}
]"#;
        let parsed = parse(array).expect("valid file");
        assert_eq!(parsed.len(), 2);
        let turns: Vec<(&str, Option<&str>)> = parsed[0]
            .turns
            .iter()
            .map(|t| (t.user.as_str(), t.reply.as_ref().map(|r| r.value.as_str())))
            .collect();
        assert_eq!(
            turns,
            [("one", Some("two three")), ("four\nfive", Some("six"))]
        );
        assert_eq!(parsed[0].turns[0].reply.as_ref().map(|r| r.line), Some(5));
        assert_eq!(parsed[1].system.as_deref(), Some("be brief"));
        let lines = "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"again\"}]}\n";
        let parsed = parse(lines).expect("valid JSON Lines");
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].turns[0].user, "again");
    }

    #[test]
    fn bad_conversations_name_the_line_and_field() {
        let empty_turn = r#"[
  {"conversations": [{"from": "human", "value": "fine"}, {"from": "gpt", "value": "ok"}]},
  {"conversations": [
    {"from": "human", "value": "first"},
    {"from": "gpt", "value": "ok"},
    {"from": "human", "value": "  "}
  ]}
]"#;
        let err = parse(empty_turn).unwrap_err();
        assert!(
            err.contains("chats.json` at line 6")
                && err.contains("conversations[2].value: a user turn with no text"),
            "{err}"
        );
        let role = "{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}\n{\"messages\": [{\"role\": \"robot\", \"content\": \"a\"}]}";
        let err = parse(role).unwrap_err();
        assert!(
            err.contains("at line 2") && err.contains("messages[0].role: `robot` is not a role"),
            "{err}"
        );
        let parts = r#"{"messages": [{"role": "user", "content": [{"type": "text"}]}]}"#;
        assert!(
            parse(parts)
                .unwrap_err()
                .contains("messages[0].content: expected text, got an array")
        );
        let no_user = r#"{"conversations": [{"from": "gpt", "value": "hi"}]}"#;
        assert!(parse(no_user).unwrap_err().contains("holds no user turn"));
        let both = r#"{"conversations": [], "messages": []}"#;
        assert!(parse(both).unwrap_err().contains("exactly one of"));
        let missing_role = "[{\"conversations\": [{\"value\": \"a\"}]}]";
        assert!(
            parse(missing_role)
                .unwrap_err()
                .contains("conversations[0].from: missing")
        );
        let broken = "[\n{\"conversations\": [}\n]";
        assert!(parse(broken).unwrap_err().contains("at line 2"));
        assert!(parse("").unwrap_err().contains("no conversation"));
    }

    #[tokio::test]
    async fn an_empty_reply_is_refused_only_when_its_length_is_needed() {
        let text = "{\"conversations\": [{\"from\": \"human\", \"value\": \"a b\"}, {\"from\": \"gpt\", \"value\": \"\"}]}";
        let parsed = parse(text).expect("valid");
        let path = Path::new("chats.json");
        let mut rng = StdRng::seed_from_u64(1);
        let err = count_file_conversation(
            &Counter::Whitespace,
            path,
            parsed[0].clone(),
            None,
            None,
            &mut rng,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("at line 1")
                && err.contains("conversations[1].value: a reply with no text"),
            "{err}"
        );
        let fixed = Sampled::fixed(7.0);
        let ok = count_file_conversation(
            &Counter::Whitespace,
            path,
            parsed[0].clone(),
            None,
            Some(&fixed),
            &mut rng,
        )
        .await
        .expect("a fixed output length needs no reply");
        assert_eq!((ok.turns[0].user_tokens, ok.turns[0].max_tokens), (2, 7));
    }

    #[tokio::test]
    async fn synthetic_conversations_draw_turns_and_exact_lengths() {
        let source = ConversationSource::Synthetic {
            turns: Sampled::Uniform { min: 2.0, max: 4.0 },
            input_tokens: Sampled::Normal {
                mean: 30.0,
                stddev: 10.0,
            },
            first_input_tokens: Some(Sampled::fixed(100.0)),
            output_tokens: Sampled::fixed(5.0),
        };
        let (made, report) = prepare(&Counter::Whitespace, &source, 50, 9)
            .await
            .expect("synthetic");
        assert_eq!(made.len(), 50);
        assert!(made.iter().all(|c| (2..=4).contains(&c.turns.len())));
        assert!(made.iter().all(|c| c.turns[0].user_tokens == 100));
        assert!(
            made.iter()
                .all(|c| c.turns[1..].iter().all(|t| t.user_tokens < 100))
        );
        assert!(made.iter().any(|c| c.turns.len() == 2) && made.iter().any(|c| c.turns.len() == 4));
        for turn in made.iter().flat_map(|c| &c.turns) {
            assert_eq!(
                turn.user_tokens,
                evalctl_tokenizer::count_tokens(&turn.user) as u64
            );
            assert_eq!(turn.max_tokens, 5);
        }
        let report = report.expect("a length report");
        assert_eq!(report.missed, 0);
        assert_eq!(report.target, 30, "the follow-ups' mean");
        let again = prepare(&Counter::Whitespace, &source, 50, 9)
            .await
            .expect("synthetic");
        assert_eq!(made, again.0, "seeded");
    }

    #[test]
    fn draws_respect_their_floor_and_distribution() {
        let mut rng = StdRng::seed_from_u64(3);
        let exp = Sampled::Exponential { mean: 2.0 };
        let n = 20_000;
        let mean = (0..n).map(|_| draw(&exp, 0.0, &mut rng)).sum::<f64>() / f64::from(n);
        assert!((mean - 2.0).abs() < 0.1, "exponential mean {mean}");
        let wide = Sampled::Normal {
            mean: 1.0,
            stddev: 50.0,
        };
        assert!((0..1000).all(|_| draw_count(&wide, &mut rng) >= 1));
        assert_eq!(draw(&Sampled::fixed(-3.0), 0.0, &mut rng), 0.0);
    }
}
