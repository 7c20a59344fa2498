//! Prompts for a step: random prompts of exact token lengths, shared-prefix prompts, ShareGPT
//! JSON, JSON Lines, trace blocks, or multi-turn conversations ([`crate::conversation`]).
//!
//! Token counts come from the best tokenizer at hand, in this order, and the prepared dataset
//! says which one it used ([`Tokenization`]):
//!
//! 1. the server's own `POST /tokenize` (vLLM, SGLang and llama.cpp shapes: the request sends
//!    `prompt` and `content` with `add_special_tokens: false`; the answer's `count` or the length
//!    of its `tokens` is used);
//! 2. the model's `tokenizer.json`, through the `tokenizers` crate, without special tokens;
//! 3. the simulated server's convention: one whitespace-separated word is one token.
//!
//! Counts are of the prompt text itself, as vLLM's benchmark counts them: without the BOS token
//! or the chat template the server adds. The server's own count (`usage.prompt_tokens`) is kept
//! per request as well.
//!
//! Random prompts are built from common English words (one token each under most tokenizers)
//! and adjusted word by word until the tokenizer counts exactly the asked length. Files are read
//! from disk only; nothing is downloaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom as _, SliceRandom as _};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

pub use evalctl_results::PrefixDistribution;
use evalctl_results::{LengthReport, Sampled, Tokenization};

use crate::conversation::{self, Conversation, ConversationSource, Conversations};

use crate::trace::{self, TraceError, TraceOptions, TraceRequest};
use evalctl_tokenizer as whitespace;

/// One chat turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The turn's text.
    pub content: String,
}

/// What a request sends as its prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptInput {
    /// A text prompt (sent as one user message to chat endpoints).
    Text(String),
    /// Chat messages (sent joined by newlines to completions endpoints).
    Messages(Vec<ChatMessage>),
    /// Token ids, sent as they are to completions endpoints (no re-tokenising, so blocks
    /// shared between prompts stay shared token for token), and as `text` (the words the
    /// ids were drawn with) to chat endpoints, whose server tokenises it again.
    Tokens {
        /// The ids.
        ids: Vec<u32>,
        /// Words standing for them, for chat.
        text: String,
    },
}

/// One prepared prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prompt {
    /// The prompt.
    pub input: PromptInput,
    /// Its length in tokens, by the dataset's [`Tokenization`].
    pub input_tokens: u64,
    /// Output tokens to ask for (`max_tokens`).
    pub max_tokens: u32,
}

/// Where prompts come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum DatasetSource {
    /// Random prompts of exactly `input_tokens`, asking for `output_tokens`.
    Random {
        /// Prompt length in tokens.
        input_tokens: u32,
        /// `max_tokens` of every request.
        output_tokens: u32,
    },
    /// A ShareGPT-format JSON file: the first human turn of each conversation is the prompt,
    /// the first reply's length is `max_tokens` unless `output_tokens` is given.
    Sharegpt {
        /// Path to the JSON file.
        path: PathBuf,
        /// Fixed `max_tokens` instead of the replies' lengths.
        output_tokens: Option<u32>,
    },
    /// Prompts sharing prefixes: `prefixes` random prefixes of exactly `prefix_tokens` (system
    /// prompts, documents), each prompt one of them, chosen by `distribution`, then a random
    /// suffix of `suffix_tokens`. A server with a prefix cache computes a prefix once.
    SharedPrefix {
        /// How many distinct prefixes.
        prefixes: u32,
        /// Length of each prefix in tokens.
        prefix_tokens: u32,
        /// Length of each prompt's own suffix in tokens.
        suffix_tokens: u32,
        /// `max_tokens` of every request.
        output_tokens: u32,
        /// How each prompt's prefix is chosen.
        distribution: PrefixDistribution,
    },
    /// A timestamped trace to replay ([`crate::trace`]): one prompt per request, in order,
    /// of its `input_length` tokens, built from one generated block per hash id (the same id
    /// is the same tokens in every prompt), with its arrival in [`Dataset::arrivals_ms`].
    Trace {
        /// The trace file.
        path: PathBuf,
        /// Block size and window.
        options: TraceOptions,
    },
    /// Multi-turn conversations ([`crate::conversation`]): each turn is sent with the
    /// conversation so far, the server's answers included.
    Conversations {
        /// A file or synthetic.
        source: ConversationSource,
        /// Seconds between an answer and the next turn.
        think_time_s: Sampled,
    },
    /// JSON Lines, one prompt per line: `{"prompt": "..."}`, `{"messages": [...]}` or a JSON
    /// string, each optionally with `"max_tokens"`.
    Jsonl {
        /// Path to the file.
        path: PathBuf,
        /// `max_tokens` of every request; else the line's `max_tokens`, else
        /// [`DEFAULT_OUTPUT_TOKENS`].
        output_tokens: Option<u32>,
    },
}

/// Draws a prefix index below `n` by `distribution`.
fn draw_prefix(distribution: PrefixDistribution, n: u32, rng: &mut impl Rng) -> u32 {
    match distribution {
        PrefixDistribution::Uniform => rng.random_range(0..n),
        PrefixDistribution::Zipf { exponent } => {
            // The inverse of the cumulative weights; `n` is small (prefixes, not prompts).
            let weights: Vec<f64> = (1..=n).map(|k| f64::from(k).powf(-exponent)).collect();
            let mut at = rng.random::<f64>() * weights.iter().sum::<f64>();
            for (k, w) in weights.iter().enumerate() {
                if at < *w {
                    return k as u32;
                }
                at -= w;
            }
            n - 1
        }
    }
}

/// Which prefix each prompt of a shared-prefix dataset carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefixLayout {
    /// The prefix of prompt `i`.
    pub prefix_of: Vec<u32>,
    /// Length of each prefix in tokens, by the dataset's tokenization.
    pub prefix_tokens: Vec<u64>,
}

impl PrefixLayout {
    /// The fraction of prompt tokens a prefix cache that starts empty and never evicts hits
    /// when the prompts are sent one after another in the order `sent` (indices into
    /// `prompts`): every use of a prefix after its first hits the prefix's tokens, and a
    /// prompt sent again hits all its tokens but the last (which a server always computes).
    /// Engines cache whole blocks (vLLM: 16 tokens on GPUs by default), so a prefix whose
    /// length is not a multiple of the block hits less by up to a block.
    pub fn expected_hit_rate(
        &self,
        prompts: &[Prompt],
        sent: impl IntoIterator<Item = usize>,
    ) -> Option<f64> {
        let mut seen_prefix = vec![false; self.prefix_tokens.len()];
        let mut seen_prompt = vec![false; prompts.len()];
        let (mut hits, mut total) = (0u64, 0u64);
        for at in sent {
            let (prompt, prefix) = (prompts.get(at)?, *self.prefix_of.get(at)? as usize);
            total += prompt.input_tokens;
            if std::mem::replace(&mut seen_prompt[at], true) {
                hits += prompt.input_tokens.saturating_sub(1);
            } else if std::mem::replace(seen_prefix.get_mut(prefix)?, true) {
                hits += self.prefix_tokens[prefix];
            }
        }
        (total > 0).then(|| hits as f64 / total as f64)
    }
}

/// `max_tokens` for JSON Lines prompts that name none.
pub const DEFAULT_OUTPUT_TOKENS: u32 = 256;

/// Bounds on prompt and output lengths; prompts outside are skipped (file datasets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LengthFilter {
    /// Shortest prompt kept, in tokens.
    pub min_input: Option<u64>,
    /// Longest prompt kept, in tokens.
    pub max_input: Option<u64>,
    /// Smallest `max_tokens` kept.
    pub min_output: Option<u32>,
    /// Largest `max_tokens` kept.
    pub max_output: Option<u32>,
}

impl LengthFilter {
    fn keeps(&self, input: u64, output: u32) -> bool {
        self.min_input.is_none_or(|m| input >= m)
            && self.max_input.is_none_or(|m| input <= m)
            && self.min_output.is_none_or(|m| output >= m)
            && self.max_output.is_none_or(|m| output <= m)
    }
}

/// What to prepare.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetPlan {
    /// Where prompts come from.
    pub source: DatasetSource,
    /// How many prompts to prepare (requests reuse them in turn).
    pub count: usize,
    /// Seed for random prompts and file sampling.
    pub seed: u64,
    /// Length bounds for file datasets.
    pub filter: LengthFilter,
    /// Server to ask for `/tokenize` (its base URL), when it may offer one.
    pub server_url: Option<String>,
    /// Model name sent with `/tokenize` requests.
    pub model: Option<String>,
    /// A `tokenizer.json` to count with when the server offers no `/tokenize`.
    pub tokenizer_json: Option<PathBuf>,
}

/// Prepared prompts.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The prompts, in the order requests use them.
    pub prompts: Arc<[Prompt]>,
    /// How their lengths were counted.
    pub tokenization: Tokenization,
    /// For a shared-prefix dataset: which prefix each prompt carries.
    pub prefixes: Option<PrefixLayout>,
    /// For generated prompts: how close they came to their target lengths.
    pub lengths: Option<LengthReport>,
    /// For a trace: when each prompt's request arrives, in milliseconds from the first
    /// (unscaled; the step's time scale divides them).
    pub arrivals_ms: Option<Arc<[f64]>>,
    /// For a multi-turn dataset: the conversations (`prompts` then holds each one's first
    /// turn).
    pub conversations: Option<Conversations>,
}

impl Dataset {
    /// A dataset of ready prompts (no prefix layout, length report or arrivals).
    pub fn new(prompts: Vec<Prompt>, tokenization: Tokenization) -> Dataset {
        Dataset {
            prompts: prompts.into(),
            tokenization,
            prefixes: None,
            lengths: None,
            arrivals_ms: None,
            conversations: None,
        }
    }
}

/// Preparing a dataset failed.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// A dataset file could not be read.
    #[error("failed to read dataset `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A dataset file is not in the expected format.
    #[error("failed to parse dataset `{path}`{}: {message}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The 1-based line, for JSON Lines.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer file could not be loaded.
    #[error("failed to load tokenizer `{path}`: {message}")]
    Tokenizer {
        /// The file.
        path: PathBuf,
        /// The cause.
        message: String,
    },
    /// Counting tokens failed.
    #[error("failed to count tokens: {0}")]
    Count(String),
    /// Too few prompts passed the filters.
    #[error("no prompt of `{path}` passes the length filters (hint: widen min/max input/output)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Nothing to prepare.
    #[error("a dataset needs at least one prompt (count = 0)")]
    NoPrompts,
    /// A trace file is not usable.
    #[error(transparent)]
    Trace(#[from] TraceError),
}

impl DatasetError {
    /// The file holds what it cannot mean (a line, field or conversation refused, or
    /// nothing usable at all): reading it again gives the same error, unlike a file that
    /// could not be read or a tokenizer that did not answer.
    pub fn is_malformed(&self) -> bool {
        match self {
            DatasetError::Parse { .. } | DatasetError::Empty { .. } => true,
            DatasetError::Trace(err) => !matches!(err, TraceError::Read { .. }),
            DatasetError::Read { .. }
            | DatasetError::Tokenizer { .. }
            | DatasetError::Count(_)
            | DatasetError::NoPrompts => false,
        }
    }
}

/// Common English words, each a single token under the usual BPE tokenizers (with a leading
/// space) and under the whitespace convention.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "she", "other", "its", "may",
    "these", "what", "them", "than", "some", "him", "time", "into", "only", "do", "my", "new",
    "about", "out", "also", "two", "any", "up", "first", "could", "our", "then", "most", "see",
    "me", "should", "after", "said", "your", "very", "between", "many", "over", "like", "those",
    "did", "now", "even", "well", "where", "must", "people", "through", "how", "same", "work",
    "being", "because", "man", "life", "before", "each", "much", "under", "years", "way", "great",
    "state", "both", "use", "upon", "own", "used", "however", "us", "part", "good", "world",
    "make", "three", "while", "long", "day", "without", "just", "men", "general", "during",
    "another", "little", "found", "here", "system", "does", "de", "down", "number", "case",
    "might", "still", "made", "without", "power", "water", "place", "end",
];

/// Counts tokens of prompt text.
pub(crate) enum Counter {
    Server(Box<ServerTokenizer>),
    Json(Box<tokenizers::Tokenizer>),
    Whitespace,
}

impl Counter {
    fn kind(&self) -> Tokenization {
        match self {
            Counter::Server(_) => Tokenization::ServerTokenize,
            Counter::Json(_) => Tokenization::TokenizerJson,
            Counter::Whitespace => Tokenization::Whitespace,
        }
    }

    pub(crate) async fn count(&self, text: &str) -> Result<u64, DatasetError> {
        match self {
            Counter::Server(server) => server.count(text).await,
            Counter::Json(tokenizer) => tokenizer
                .encode(text, false)
                .map(|e| e.len() as u64)
                .map_err(|e| DatasetError::Count(e.to_string())),
            Counter::Whitespace => Ok(whitespace::count_tokens(text) as u64),
        }
    }

    /// The token ids of `text` (no special tokens); `None` for whitespace counting, which
    /// has no ids.
    async fn ids(&self, text: &str) -> Result<Option<Vec<u32>>, DatasetError> {
        match self {
            Counter::Server(server) => server.ids(text).await.map(Some),
            Counter::Json(tokenizer) => tokenizer
                .encode(text, false)
                .map(|e| Some(e.get_ids().to_vec()))
                .map_err(|e| DatasetError::Count(e.to_string())),
            Counter::Whitespace => Ok(None),
        }
    }

    async fn count_messages(&self, messages: &[ChatMessage]) -> Result<u64, DatasetError> {
        let mut total = 0;
        for m in messages {
            total += self.count(&m.content).await?;
        }
        Ok(total)
    }
}

/// A server's `/tokenize` endpoint.
pub(crate) struct ServerTokenizer {
    url: String,
    model: Option<String>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

#[derive(Deserialize)]
struct TokenizeAnswer {
    count: Option<u64>,
    tokens: Option<Vec<serde_json::Value>>,
}

impl ServerTokenizer {
    fn new(base_url: &str, model: Option<String>) -> Self {
        let base = base_url.trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        ServerTokenizer {
            url: format!("{base}/tokenize"),
            model,
            http: HttpClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn count(&self, text: &str) -> Result<u64, DatasetError> {
        let answer = self.tokenize(text).await?;
        answer
            .count
            .or(answer.tokens.map(|t| t.len() as u64))
            .ok_or_else(|| DatasetError::Count(format!("POST {}: no count or tokens", self.url)))
    }

    async fn ids(&self, text: &str) -> Result<Vec<u32>, DatasetError> {
        let tokens = self.tokenize(text).await?.tokens.ok_or_else(|| {
            DatasetError::Count(format!("POST {}: the answer lists no token ids", self.url))
        })?;
        tokens
            .iter()
            .map(|t| t.as_u64().and_then(|id| u32::try_from(id).ok()))
            .collect::<Option<Vec<u32>>>()
            .ok_or_else(|| {
                DatasetError::Count(format!("POST {}: a token id is not a number", self.url))
            })
    }

    async fn tokenize(&self, text: &str) -> Result<TokenizeAnswer, DatasetError> {
        let mut body = serde_json::json!({
            "prompt": text,
            "content": text,
            "add_special_tokens": false,
        });
        if let Some(model) = &self.model {
            body["model"] = serde_json::Value::from(model.as_str());
        }
        let req = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| DatasetError::Count(e.to_string()))?;
        let res = self
            .http
            .request(req)
            .await
            .map_err(|e| DatasetError::Count(format!("POST {}: {e}", self.url)))?;
        let status = res.status();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| DatasetError::Count(format!("POST {}: {e}", self.url)))?
            .to_bytes();
        if !status.is_success() {
            return Err(DatasetError::Count(format!(
                "POST {}: HTTP {status}",
                self.url
            )));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| DatasetError::Count(format!("POST {}: {e}", self.url)))
    }
}

/// Picks the tokenizer: the server's `/tokenize` if it answers, else `tokenizer.json`, else
/// whitespace words.
async fn counter(plan: &DatasetPlan) -> Result<Counter, DatasetError> {
    if let Some(url) = &plan.server_url {
        let server = ServerTokenizer::new(url, plan.model.clone());
        match server.count("hello world").await {
            Ok(n) if n > 0 => return Ok(Counter::Server(Box::new(server))),
            Ok(_) => {
                tracing::info!(url = %server.url, "the server's /tokenize counted nothing; not using it")
            }
            Err(err) => tracing::info!(%err, "the server offers no usable /tokenize"),
        }
    }
    if let Some(path) = &plan.tokenizer_json {
        let tokenizer =
            tokenizers::Tokenizer::from_file(path).map_err(|e| DatasetError::Tokenizer {
                path: path.clone(),
                message: e.to_string(),
            })?;
        return Ok(Counter::Json(Box::new(tokenizer)));
    }
    Ok(Counter::Whitespace)
}

/// Prepares `plan.count` prompts.
pub async fn prepare(plan: &DatasetPlan) -> Result<Dataset, DatasetError> {
    if plan.count == 0 {
        return Err(DatasetError::NoPrompts);
    }
    let counter = counter(plan).await?;
    let mut prefixes = None;
    let mut lengths = None;
    let mut arrivals_ms = None;
    let mut conversations = None;
    let prompts = match &plan.source {
        DatasetSource::Random {
            input_tokens,
            output_tokens,
        } => {
            let (prompts, report) =
                random(&counter, plan, u64::from(*input_tokens), *output_tokens).await?;
            lengths = Some(report);
            prompts
        }
        DatasetSource::SharedPrefix {
            prefixes: count,
            prefix_tokens,
            suffix_tokens,
            output_tokens,
            distribution,
        } => {
            let shape = SharedPrefixShape {
                prefixes: *count,
                prefix_tokens: u64::from(*prefix_tokens),
                suffix_tokens: u64::from(*suffix_tokens),
                output_tokens: *output_tokens,
                distribution: *distribution,
            };
            let (prompts, layout, report) = shared_prefix(&counter, plan, &shape).await?;
            prefixes = Some(layout);
            lengths = Some(report);
            prompts
        }
        DatasetSource::Sharegpt {
            path,
            output_tokens,
        } => sharegpt(&counter, plan, path, *output_tokens).await?,
        DatasetSource::Jsonl {
            path,
            output_tokens,
        } => jsonl(&counter, plan, path, *output_tokens).await?,
        DatasetSource::Trace { path, options } => {
            let mut requests = trace::read(path, options)?;
            requests.truncate(plan.count);
            arrivals_ms = Some(requests.iter().map(|r| r.offset_ms).collect());
            trace_prompts(&counter, plan.seed, options.block_tokens, &requests).await?
        }
        DatasetSource::Conversations {
            source,
            think_time_s,
        } => {
            let (list, report) =
                conversation::prepare(&counter, source, plan.count, plan.seed).await?;
            lengths = report;
            let firsts = list.iter().map(first_turn).collect();
            conversations = Some(Conversations {
                list: list.into(),
                think_time_s: *think_time_s,
            });
            firsts
        }
    };
    if let Some(report) = lengths.filter(|r| r.missed > 0) {
        // One line per dataset, not one per prompt.
        tracing::warn!(
            target_tokens = report.target,
            missed = report.missed,
            of = report.texts,
            max_miss = report.max_miss,
            tokenization = ?counter.kind(),
            "some generated texts could not hit their target length exactly; the closest found are used"
        );
    }
    Ok(Dataset {
        prompts: prompts.into(),
        tokenization: counter.kind(),
        prefixes,
        lengths,
        arrivals_ms,
        conversations,
    })
}

/// A conversation's first turn as a prompt of its own.
fn first_turn(conversation: &Conversation) -> Prompt {
    let turn = &conversation.turns[0];
    let mut messages = Vec::with_capacity(2);
    if let Some(system) = &conversation.system {
        messages.push(ChatMessage {
            role: "system".into(),
            content: system.clone(),
        });
    }
    messages.push(ChatMessage {
        role: "user".into(),
        content: turn.user.clone(),
    });
    Prompt {
        input: PromptInput::Messages(messages),
        input_tokens: conversation.system_tokens + turn.user_tokens,
        max_tokens: turn.max_tokens,
    }
}

/// Requests in flight to `/tokenize` while preparing.
pub(crate) const TOKENIZE_CONCURRENCY: usize = 8;
/// Adjustment rounds before a random prompt settles for the closest length found.
const MAX_ROUNDS: usize = 8;

async fn random(
    counter: &Counter,
    plan: &DatasetPlan,
    target: u64,
    output_tokens: u32,
) -> Result<(Vec<Prompt>, LengthReport), DatasetError> {
    let prompts: Vec<Prompt> = futures::stream::iter(0..plan.count)
        .map(|i| async move {
            let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(i as u64));
            let (text, tokens) = exact_text(counter, &mut rng, target).await?;
            Ok::<_, DatasetError>(Prompt {
                input: PromptInput::Text(text),
                input_tokens: tokens,
                max_tokens: output_tokens,
            })
        })
        .buffered(TOKENIZE_CONCURRENCY)
        .try_collect()
        .await?;
    let mut report = LengthReport {
        target,
        ..LengthReport::default()
    };
    for p in &prompts {
        report.add(target, p.input_tokens);
    }
    Ok((prompts, report))
}

/// A shared-prefix dataset's parameters (see [`DatasetSource::SharedPrefix`]).
struct SharedPrefixShape {
    prefixes: u32,
    prefix_tokens: u64,
    suffix_tokens: u64,
    output_tokens: u32,
    distribution: PrefixDistribution,
}

/// Seed offset of the prefixes' texts, apart from the suffixes' and the draws'.
const PREFIX_SEED: u64 = 0x0000_7072_6566_6978;

async fn shared_prefix(
    counter: &Counter,
    plan: &DatasetPlan,
    shape: &SharedPrefixShape,
) -> Result<(Vec<Prompt>, PrefixLayout, LengthReport), DatasetError> {
    let prefix_seed = plan.seed ^ PREFIX_SEED;
    let prefix_texts: Vec<(String, u64)> = futures::stream::iter(0..shape.prefixes)
        .map(|k| async move {
            let mut rng = StdRng::seed_from_u64(prefix_seed.wrapping_add(u64::from(k)));
            exact_text(counter, &mut rng, shape.prefix_tokens).await
        })
        .buffered(TOKENIZE_CONCURRENCY)
        .try_collect()
        .await?;
    let mut draws = StdRng::seed_from_u64(plan.seed ^ PREFIX_SEED.rotate_left(17));
    let prefix_of: Vec<u32> = (0..plan.count)
        .map(|_| draw_prefix(shape.distribution, shape.prefixes, &mut draws))
        .collect();
    let prefix_texts = &prefix_texts;
    let prompts: Vec<(Prompt, u64)> =
        futures::stream::iter(prefix_of.clone().into_iter().enumerate())
            .map(|(i, k)| async move {
                let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(i as u64));
                let (suffix, suffix_tokens) =
                    exact_text(counter, &mut rng, shape.suffix_tokens).await?;
                let text = format!("{} {suffix}", prefix_texts[k as usize].0);
                // Counted whole: a tokenizer may join the last prefix word and the first suffix
                // word differently than it counts them apart.
                let input_tokens = counter.count(&text).await?;
                Ok::<_, DatasetError>((
                    Prompt {
                        input: PromptInput::Text(text),
                        input_tokens,
                        max_tokens: shape.output_tokens,
                    },
                    suffix_tokens,
                ))
            })
            .buffered(TOKENIZE_CONCURRENCY)
            .try_collect()
            .await?;
    let mut report = LengthReport {
        target: shape.prefix_tokens,
        suffix_target: Some(shape.suffix_tokens),
        ..LengthReport::default()
    };
    for (_, tokens) in prefix_texts {
        report.add(shape.prefix_tokens, *tokens);
    }
    for (_, tokens) in &prompts {
        report.add(shape.suffix_tokens, *tokens);
    }
    let layout = PrefixLayout {
        prefix_of,
        prefix_tokens: prefix_texts.iter().map(|(_, n)| *n).collect(),
    };
    Ok((
        prompts.into_iter().map(|(p, _)| p).collect(),
        layout,
        report,
    ))
}

/// Seed offset of trace blocks, apart from the other generated texts.
const TRACE_SEED: u64 = 0x0000_7472_6163_6573;

/// The words prompts are drawn from, with a token id for each: the tokenizer's ids when it
/// gives one id per word of the list, else the word's index (the simulator's whitespace
/// tokenizer takes any id).
async fn word_ids(counter: &Counter) -> Result<Vec<(u32, &'static str)>, DatasetError> {
    let mut words: Vec<&'static str> = WORDS.to_vec();
    words.sort_unstable();
    words.dedup();
    let joined = words.join(" ");
    let ids = match counter.ids(&joined).await? {
        Some(ids) if ids.len() == words.len() => ids,
        Some(ids) => {
            // Not one id per word: draw from the ids the words made, paired with any word.
            let mut ids = ids;
            ids.sort_unstable();
            ids.dedup();
            return Ok(ids
                .into_iter()
                .enumerate()
                .map(|(k, id)| (id, words[k % words.len()]))
                .collect());
        }
        None => (0..words.len() as u32).collect(),
    };
    Ok(ids.into_iter().zip(words).collect())
}

/// One prompt per trace request: `input_length` token ids made of one generated block of
/// `block_tokens` per hash id (the last block cut to fit), or of blocks of the request's own
/// in a trace without ids.
async fn trace_prompts(
    counter: &Counter,
    seed: u64,
    block_tokens: u32,
    requests: &[TraceRequest],
) -> Result<Vec<Prompt>, DatasetError> {
    let vocabulary = word_ids(counter).await?;
    let block_len = block_tokens as usize;
    let mut blocks: std::collections::HashMap<u64, Vec<usize>> = std::collections::HashMap::new();
    let mut prompts = Vec::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        let n = request.input_length as usize;
        // A trace without ids: blocks of this request alone (ids no trace uses).
        let own = |k: usize| u64::MAX - ((i as u64) << 20) - k as u64;
        let ids: Vec<u64> = match &request.hash_ids {
            Some(ids) => ids.clone(),
            None => (0..n.div_ceil(block_len)).map(own).collect(),
        };
        let mut words: Vec<usize> = Vec::with_capacity(n);
        for id in ids {
            let block = blocks.entry(id).or_insert_with(|| {
                let mut rng = StdRng::seed_from_u64(seed ^ TRACE_SEED ^ id.rotate_left(29));
                (0..block_len)
                    .map(|_| rng.random_range(0..vocabulary.len()))
                    .collect()
            });
            let take = (n - words.len()).min(block_len);
            words.extend_from_slice(&block[..take]);
        }
        let token_ids = words.iter().map(|&w| vocabulary[w].0).collect();
        let text = words
            .iter()
            .map(|&w| vocabulary[w].1)
            .collect::<Vec<_>>()
            .join(" ");
        prompts.push(Prompt {
            input: PromptInput::Tokens {
                ids: token_ids,
                text,
            },
            input_tokens: request.input_length,
            max_tokens: request.output_length,
        });
    }
    Ok(prompts)
}

/// Random words whose text counts exactly `target` tokens, or the closest found.
pub(crate) async fn exact_text(
    counter: &Counter,
    rng: &mut impl Rng,
    target: u64,
) -> Result<(String, u64), DatasetError> {
    let mut words: Vec<&str> = (0..target)
        .map(|_| *WORDS.choose(rng).expect("WORDS is not empty"))
        .collect();
    let mut best: Option<(String, u64)> = None;
    for _ in 0..MAX_ROUNDS {
        let text = words.join(" ");
        let count = counter.count(&text).await?;
        let closer = best
            .as_ref()
            .is_none_or(|(_, b)| count.abs_diff(target) < b.abs_diff(target));
        if count == target {
            return Ok((text, count));
        }
        if closer {
            best = Some((text, count));
        }
        // Words per token so far, to scale the correction.
        let per_token = words.len().max(1) as f64 / count.max(1) as f64;
        let step = ((count.abs_diff(target) as f64 * per_token).floor() as usize).max(1);
        if count > target {
            words.truncate(words.len().saturating_sub(step));
        } else {
            words.extend((0..step).map(|_| *WORDS.choose(rng).expect("WORDS is not empty")));
        }
    }
    // The caller counts the misses and reports them once.
    Ok(best.expect("at least one round ran"))
}

#[derive(Deserialize)]
struct ShareGptConversation {
    #[serde(default)]
    conversations: Vec<ShareGptTurn>,
}

#[derive(Deserialize)]
struct ShareGptTurn {
    #[serde(default)]
    from: String,
    #[serde(default)]
    value: String,
}

async fn sharegpt(
    counter: &Counter,
    plan: &DatasetPlan,
    path: &Path,
    output_tokens: Option<u32>,
) -> Result<Vec<Prompt>, DatasetError> {
    let bytes = read(path).await?;
    let mut conversations: Vec<ShareGptConversation> =
        serde_json::from_slice(&bytes).map_err(|e| DatasetError::Parse {
            path: path.to_owned(),
            line: None,
            message: format!("expected a ShareGPT JSON array of {{\"conversations\": [...]}}: {e}"),
        })?;
    drop(bytes);
    conversations.retain(|c| c.conversations.len() >= 2);
    conversations.shuffle(&mut StdRng::seed_from_u64(plan.seed));
    let mut prompts = Vec::with_capacity(plan.count);
    for conv in &conversations {
        let (ask, reply) = (&conv.conversations[0], &conv.conversations[1]);
        if ask.from == "gpt" || ask.value.is_empty() {
            continue;
        }
        let input = counter.count(&ask.value).await?;
        let output = match output_tokens {
            Some(n) => n,
            None => u32::try_from(counter.count(&reply.value).await?).unwrap_or(u32::MAX),
        };
        if output == 0 || !plan.filter.keeps(input, output) {
            continue;
        }
        prompts.push(Prompt {
            input: PromptInput::Text(ask.value.clone()),
            input_tokens: input,
            max_tokens: output,
        });
        if prompts.len() == plan.count {
            break;
        }
    }
    if prompts.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(prompts)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonlLine {
    Text(String),
    Object {
        #[serde(default)]
        prompt: Option<String>,
        #[serde(default)]
        messages: Option<Vec<ChatMessage>>,
        #[serde(default)]
        max_tokens: Option<u32>,
    },
}

async fn jsonl(
    counter: &Counter,
    plan: &DatasetPlan,
    path: &Path,
    output_tokens: Option<u32>,
) -> Result<Vec<Prompt>, DatasetError> {
    let bytes = read(path).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| DatasetError::Parse {
        path: path.to_owned(),
        line: None,
        message: format!("not UTF-8: {e}"),
    })?;
    let mut prompts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parse_error = |message: String| DatasetError::Parse {
            path: path.to_owned(),
            line: Some(i + 1),
            message,
        };
        let parsed: JsonlLine = serde_json::from_str(line).map_err(|e| {
            parse_error(format!(
                "expected a string, {{\"prompt\": ...}} or {{\"messages\": [...]}}: {e}"
            ))
        })?;
        let (input, line_max) = match parsed {
            JsonlLine::Text(text) => (PromptInput::Text(text), None),
            JsonlLine::Object {
                prompt: Some(text),
                messages: None,
                max_tokens,
            } => (PromptInput::Text(text), max_tokens),
            JsonlLine::Object {
                prompt: None,
                messages: Some(messages),
                max_tokens,
            } if !messages.is_empty() => (PromptInput::Messages(messages), max_tokens),
            JsonlLine::Object { .. } => {
                return Err(parse_error(
                    "give exactly one of \"prompt\" or a non-empty \"messages\"".into(),
                ));
            }
        };
        let input_tokens = match &input {
            PromptInput::Text(text) => counter.count(text).await?,
            PromptInput::Messages(messages) => counter.count_messages(messages).await?,
            PromptInput::Tokens { ids, .. } => ids.len() as u64,
        };
        let max_tokens = output_tokens.or(line_max).unwrap_or(DEFAULT_OUTPUT_TOKENS);
        if !plan.filter.keeps(input_tokens, max_tokens) {
            continue;
        }
        prompts.push(Prompt {
            input,
            input_tokens,
            max_tokens,
        });
        if prompts.len() == plan.count {
            break;
        }
    }
    if prompts.is_empty() {
        return Err(DatasetError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(prompts)
}

pub(crate) async fn read(path: &Path) -> Result<Vec<u8>, DatasetError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| DatasetError::Read {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(source: DatasetSource, count: usize) -> DatasetPlan {
        DatasetPlan {
            source,
            count,
            seed: 3,
            filter: LengthFilter::default(),
            server_url: None,
            model: None,
            tokenizer_json: None,
        }
    }

    #[tokio::test]
    async fn random_prompts_have_exact_whitespace_lengths() {
        let d = prepare(&plan(
            DatasetSource::Random {
                input_tokens: 100,
                output_tokens: 7,
            },
            5,
        ))
        .await
        .unwrap();
        assert_eq!(d.tokenization, Tokenization::Whitespace);
        assert_eq!(d.prompts.len(), 5);
        for p in d.prompts.iter() {
            let PromptInput::Text(text) = &p.input else {
                panic!("text prompt")
            };
            assert_eq!(whitespace::count_tokens(text), 100);
            assert_eq!((p.input_tokens, p.max_tokens), (100, 7));
        }
        assert_ne!(d.prompts[0], d.prompts[1], "prompts differ");
        let again = prepare(&plan(
            DatasetSource::Random {
                input_tokens: 100,
                output_tokens: 7,
            },
            5,
        ))
        .await
        .unwrap();
        assert_eq!(d.prompts, again.prompts, "seeded");
    }

    fn shared(prefixes: u32, distribution: PrefixDistribution) -> DatasetSource {
        DatasetSource::SharedPrefix {
            prefixes,
            prefix_tokens: 64,
            suffix_tokens: 8,
            output_tokens: 4,
            distribution,
        }
    }

    #[tokio::test]
    async fn shared_prefix_prompts_start_with_their_prefix() {
        let d = prepare(&plan(shared(3, PrefixDistribution::Uniform), 30))
            .await
            .unwrap();
        let layout = d.prefixes.as_ref().expect("a prefix layout");
        assert_eq!(layout.prefix_tokens, vec![64, 64, 64]);
        let texts: Vec<&str> = d
            .prompts
            .iter()
            .map(|p| match &p.input {
                PromptInput::Text(t) => t.as_str(),
                PromptInput::Messages(_) | PromptInput::Tokens { .. } => panic!("text prompts"),
            })
            .collect();
        for (i, text) in texts.iter().enumerate() {
            assert_eq!(whitespace::count_tokens(text), 72, "prefix + suffix");
            assert_eq!(d.prompts[i].input_tokens, 72);
            // Prompts with the same prefix share their first 64 words, and only those.
            for (j, other) in texts.iter().enumerate() {
                let same = layout.prefix_of[i] == layout.prefix_of[j];
                let shared_words = text
                    .split(' ')
                    .zip(other.split(' '))
                    .take_while(|(a, b)| a == b)
                    .count();
                if i != j {
                    assert_eq!(shared_words >= 64, same, "prompts {i} and {j}");
                }
            }
        }
        let lengths = d.lengths.expect("a length report");
        assert_eq!(
            (lengths.texts, lengths.missed),
            (33, 0),
            "3 prefixes + 30 suffixes"
        );
        // Every prefix is used; its first use misses, every later one hits 64 of 72 tokens.
        let used = (0..3).filter(|k| layout.prefix_of.contains(k)).count();
        assert_eq!(used, 3);
        let expected = layout.expected_hit_rate(&d.prompts, 0..30).unwrap();
        assert!(
            (expected - (27.0 * 64.0) / (30.0 * 72.0)).abs() < 1e-12,
            "{expected}"
        );
        // Sent twice, the second round hits all but the last token of each prompt.
        let twice = layout
            .expected_hit_rate(&d.prompts, (0..60).map(|i| i % 30))
            .unwrap();
        let want = (27.0 * 64.0 + 30.0 * 71.0) / (60.0 * 72.0);
        assert!((twice - want).abs() < 1e-12, "{twice}");
        assert_eq!(
            layout.expected_hit_rate(&d.prompts, [99]),
            None,
            "out of range"
        );
    }

    #[tokio::test]
    async fn zipf_prefixes_favour_the_first() {
        let d = prepare(&plan(
            shared(8, PrefixDistribution::Zipf { exponent: 1.2 }),
            2000,
        ))
        .await
        .unwrap();
        let layout = d.prefixes.unwrap();
        let mut uses = [0usize; 8];
        for k in &layout.prefix_of {
            uses[*k as usize] += 1;
        }
        // Weights 1/(k+1)^1.2: prefix 0 has 42.9 % of the draws (858), prefix 7 3.5 % (71).
        assert!(uses[0] > 780 && uses[0] < 940, "{uses:?}");
        assert!(uses[7] > 30 && uses[7] < 110, "{uses:?}");
        assert!(uses.windows(2).all(|w| w[0] + 40 > w[1]), "{uses:?}");
    }

    #[tokio::test]
    async fn exact_text_converges_under_a_coarser_tokenizer() {
        // A fake tokenizer with a BOS-like extra token and two tokens for long words would need
        // correction; the whitespace counter needs none. Both must land exactly.
        let mut rng = StdRng::seed_from_u64(1);
        let (text, n) = exact_text(&Counter::Whitespace, &mut rng, 37)
            .await
            .unwrap();
        assert_eq!((whitespace::count_tokens(&text) as u64, n), (37, 37));
    }

    #[tokio::test]
    async fn sharegpt_and_jsonl_files() {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share.json");
        std::fs::write(
            &share,
            r#"[
              {"id": "a", "conversations": [{"from": "human", "value": "one two three four"},
                                             {"from": "gpt", "value": "five six"}]},
              {"id": "b", "conversations": [{"from": "human", "value": "only"}]},
              {"id": "c", "conversations": [{"from": "human", "value": "a b c d e f g h"},
                                             {"from": "gpt", "value": "x y z w"}]}
            ]"#,
        )
        .unwrap();
        let mut p = plan(
            DatasetSource::Sharegpt {
                path: share.clone(),
                output_tokens: None,
            },
            10,
        );
        let d = prepare(&p).await.unwrap();
        let mut lens: Vec<(u64, u32)> = d
            .prompts
            .iter()
            .map(|p| (p.input_tokens, p.max_tokens))
            .collect();
        lens.sort_unstable();
        assert_eq!(lens, vec![(4, 2), (8, 4)]);
        p.filter.min_input = Some(5);
        let d = prepare(&p).await.unwrap();
        assert_eq!(d.prompts.len(), 1);
        p.filter.min_input = Some(50);
        assert!(matches!(prepare(&p).await, Err(DatasetError::Empty { .. })));

        let lines = dir.path().join("p.jsonl");
        std::fs::write(
            &lines,
            "\"plain text prompt\"\n\n{\"prompt\": \"a b\", \"max_tokens\": 5}\n\
             {\"messages\": [{\"role\": \"user\", \"content\": \"hi there you\"}]}\n",
        )
        .unwrap();
        let d = prepare(&plan(
            DatasetSource::Jsonl {
                path: lines.clone(),
                output_tokens: None,
            },
            10,
        ))
        .await
        .unwrap();
        let got: Vec<(u64, u32)> = d
            .prompts
            .iter()
            .map(|p| (p.input_tokens, p.max_tokens))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, DEFAULT_OUTPUT_TOKENS),
                (2, 5),
                (3, DEFAULT_OUTPUT_TOKENS)
            ]
        );
        assert!(matches!(d.prompts[2].input, PromptInput::Messages(_)));

        std::fs::write(&lines, "{\"prompt\": \"a\"}\n{\"nope\": 1}\n").unwrap();
        let err = prepare(&plan(
            DatasetSource::Jsonl {
                path: lines,
                output_tokens: None,
            },
            10,
        ))
        .await
        .unwrap_err();
        assert!(err.to_string().contains("at line 2"), "{err}");
    }

    #[tokio::test]
    async fn tokenizer_json_counts_without_special_tokens() {
        // A tiny word-level tokenizer.json, as the `tokenizers` crate writes it.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(
            &path,
            r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
                "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,
                "decoder":null,"model":{"type":"WordLevel","vocab":{"[UNK]":0,"the":1,"of":2},
                "unk_token":"[UNK]"}}"#,
        )
        .unwrap();
        let mut p = plan(
            DatasetSource::Random {
                input_tokens: 20,
                output_tokens: 1,
            },
            2,
        );
        p.tokenizer_json = Some(path);
        let d = prepare(&p).await.unwrap();
        assert_eq!(d.tokenization, Tokenization::TokenizerJson);
        assert!(d.prompts.iter().all(|p| p.input_tokens == 20));

        p.tokenizer_json = Some(dir.path().join("missing.json"));
        assert!(matches!(
            prepare(&p).await,
            Err(DatasetError::Tokenizer { .. })
        ));
    }
}
