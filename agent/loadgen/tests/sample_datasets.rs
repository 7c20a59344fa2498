//! The sample datasets shipped in `datasets/`: generated here, deterministically, so they
//! can be reproduced and checked; and loaded through the load generator's real readers.
//!
//! Regenerate after changing the generator with
//! `EVALCTL_UPDATE_SAMPLES=1 cargo test -p evalctl-loadgen --test sample_datasets`.

use std::path::{Path, PathBuf};

use evalctl_loadgen::dataset::{self, DatasetPlan, DatasetSource, LengthFilter};
use evalctl_loadgen::{PromptInput, Tokenization};
use serde_json::json;

const CONVERSATIONS: usize = 48;
const SEED: u64 = 20_261_123;

const WORDS: &[&str] = &[
    "latency",
    "throughput",
    "token",
    "model",
    "server",
    "request",
    "batch",
    "cache",
    "memory",
    "prefill",
    "decode",
    "stream",
    "benchmark",
    "kernel",
    "tensor",
    "parallel",
    "quantized",
    "weights",
    "context",
    "prompt",
    "answer",
    "explain",
    "compare",
    "summarize",
    "why",
    "how",
    "what",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "with",
    "on",
    "that",
    "this",
    "GPU",
    "CPU",
    "fast",
    "slow",
    "large",
    "small",
    "first",
    "last",
    "each",
    "every",
    "when",
];

/// splitmix64: a fixed, documented generator, so the files do not change when a random
/// number crate changes its algorithms between versions.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `min + below(span)` random words.
    fn sentence(&mut self, min: u64, span: u64) -> String {
        let words = min + self.below(span);
        (0..words)
            .map(|_| WORDS[self.below(WORDS.len() as u64) as usize])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// ShareGPT JSON: conversations whose questions are 8–120 words and answers 4–200 words.
fn sharegpt() -> String {
    let mut rng = SplitMix(SEED);
    let conversations: Vec<_> = (0..CONVERSATIONS)
        .map(|i| {
            let ask = rng.sentence(8, 113);
            let reply = rng.sentence(4, 197);
            json!({
                "id": format!("sample-{i:03}"),
                "conversations": [
                    { "from": "human", "value": ask },
                    { "from": "gpt", "value": reply },
                ],
            })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&conversations).expect("serializes");
    text.push('\n');
    text
}

/// Multi-turn ShareGPT JSON: conversations of 2–6 user turns (every third with a system
/// prompt), a first question of 40–160 words, follow-ups of 6–40 words, answers of 8–120.
fn conversations() -> String {
    let mut rng = SplitMix(SEED ^ 0x7475_726e);
    let conversations: Vec<_> = (0..CONVERSATIONS)
        .map(|i| {
            let mut messages = Vec::new();
            if i % 3 == 0 {
                messages.push(json!({ "from": "system", "value": "You are a concise assistant." }));
            }
            let turns = 2 + rng.below(5);
            for t in 0..turns {
                let ask = if t == 0 {
                    rng.sentence(40, 121)
                } else {
                    rng.sentence(6, 35)
                };
                messages.push(json!({ "from": "human", "value": ask }));
                messages.push(json!({ "from": "gpt", "value": rng.sentence(8, 113) }));
            }
            json!({ "id": format!("chat-{i:03}"), "conversations": messages })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&conversations).expect("serializes");
    text.push('\n');
    text
}

/// JSON Lines: alternating `{"prompt", "max_tokens"}` and `{"messages", "max_tokens"}`.
fn jsonl() -> String {
    let mut rng = SplitMix(SEED ^ 0x5a5a);
    let mut text = String::new();
    for i in 0..CONVERSATIONS {
        let max_tokens = 16 + rng.below(241);
        let line = if i % 2 == 0 {
            json!({ "prompt": rng.sentence(16, 200), "max_tokens": max_tokens })
        } else {
            json!({
                "messages": [
                    { "role": "system", "content": "You are a concise assistant." },
                    { "role": "user", "content": rng.sentence(8, 120) },
                ],
                "max_tokens": max_tokens,
            })
        };
        text.push_str(&line.to_string());
        text.push('\n');
    }
    text
}

fn datasets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets")
}

fn check_or_update(name: &str, generated: &str) -> PathBuf {
    let path = datasets_dir().join(name);
    if std::env::var_os("EVALCTL_UPDATE_SAMPLES").is_some() {
        std::fs::write(&path, generated).expect("write sample dataset");
    }
    let committed =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        committed == generated,
        "{} differs from its generator; regenerate with EVALCTL_UPDATE_SAMPLES=1",
        path.display()
    );
    path
}

fn plan(source: DatasetSource, filter: LengthFilter) -> DatasetPlan {
    DatasetPlan {
        source,
        count: CONVERSATIONS,
        seed: 7,
        filter,
        server_url: None,
        model: None,
        tokenizer_json: None,
    }
}

#[tokio::test]
async fn sharegpt_sample_is_reproducible_and_loads() {
    let path = check_or_update("sample-sharegpt.json", &sharegpt());
    let all = dataset::prepare(&plan(
        DatasetSource::Sharegpt {
            path: path.clone(),
            output_tokens: None,
        },
        LengthFilter::default(),
    ))
    .await
    .unwrap();
    assert_eq!(all.tokenization, Tokenization::Whitespace);
    assert_eq!(all.prompts.len(), CONVERSATIONS);
    assert!(
        all.prompts
            .iter()
            .all(|p| (8..=120).contains(&p.input_tokens))
    );
    assert!(
        all.prompts
            .iter()
            .all(|p| (4..=200).contains(&p.max_tokens))
    );

    let short = dataset::prepare(&plan(
        DatasetSource::Sharegpt {
            path,
            output_tokens: Some(32),
        },
        LengthFilter {
            max_input: Some(40),
            ..LengthFilter::default()
        },
    ))
    .await
    .unwrap();
    assert!(!short.prompts.is_empty() && short.prompts.len() < CONVERSATIONS);
    assert!(
        short
            .prompts
            .iter()
            .all(|p| p.input_tokens <= 40 && p.max_tokens == 32)
    );
}

#[tokio::test]
async fn jsonl_sample_is_reproducible_and_loads() {
    let path = check_or_update("sample-prompts.jsonl", &jsonl());
    let loaded = dataset::prepare(&plan(
        DatasetSource::Jsonl {
            path,
            output_tokens: None,
        },
        LengthFilter::default(),
    ))
    .await
    .unwrap();
    assert_eq!(loaded.prompts.len(), CONVERSATIONS);
    let chats = loaded
        .prompts
        .iter()
        .filter(|p| matches!(p.input, PromptInput::Messages(_)))
        .count();
    assert_eq!(chats, CONVERSATIONS / 2, "half the lines are chat messages");
    assert!(
        loaded
            .prompts
            .iter()
            .all(|p| (16..=256).contains(&p.max_tokens))
    );
}

#[tokio::test]
async fn conversations_sample_is_reproducible_and_loads() {
    use evalctl_loadgen::Sampled;
    use evalctl_loadgen::conversation::ConversationSource;
    let path = check_or_update("sample-conversations.json", &conversations());
    let loaded = dataset::prepare(&plan(
        DatasetSource::Conversations {
            source: ConversationSource::File {
                path,
                max_turns: Some(5),
                output_tokens: None,
            },
            think_time_s: Sampled::fixed(0.0),
        },
        LengthFilter::default(),
    ))
    .await
    .unwrap();
    let conversations = loaded.conversations.expect("conversations");
    assert_eq!(conversations.list.len(), CONVERSATIONS);
    assert_eq!(loaded.prompts.len(), CONVERSATIONS, "one first turn each");
    let turns: Vec<usize> = conversations.list.iter().map(|c| c.turns.len()).collect();
    assert!(turns.iter().all(|n| (2..=5).contains(n)), "{turns:?}");
    assert!(turns.contains(&2) && turns.contains(&5), "{turns:?}");
    assert!(conversations.list.iter().any(|c| c.system.is_some()));
    for c in conversations.list.iter() {
        assert!((40..=160).contains(&c.turns[0].user_tokens));
        assert!(
            c.turns[1..]
                .iter()
                .all(|t| (6..=40).contains(&t.user_tokens))
        );
        assert!(c.turns.iter().all(|t| (8..=120).contains(&t.max_tokens)));
    }
}
