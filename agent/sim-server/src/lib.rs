//! Simulated OpenAI-compatible streaming inference server (`evalctl-agent sim-server`).
//!
//! It lets the quickstart and the tests run the whole path — launch, health wait, load, metrics —
//! on any laptop. Every response labels itself: `"system_fingerprint": "evalctl-sim"`, and
//! `/v1/models` says `"owned_by": "evalctl-sim"`.
//!
//! # Endpoints
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /health` | 200 `ok`; 503 `starting` until the startup delay has passed |
//! | `GET /version` | `{"version": "evalctl-sim <version>"}` |
//! | `GET /v1/models` | the served model, `owned_by: evalctl-sim` |
//! | `POST /v1/completions` | streaming (SSE) or whole JSON |
//! | `POST /v1/chat/completions` | streaming (SSE) or whole JSON |
//! | `POST /tokenize` | `{"prompt": "..."}` or `{"messages": [...]}` → `{"count", "max_model_len", "tokens"}` |
//! | `GET /metrics` | Prometheus text: `sim:num_requests_running`, `sim:num_requests_waiting`, `sim:prompt_tokens_total`, `sim:generation_tokens_total`, `sim:request_success_total`, `sim:request_aborted_total`, `sim:prefix_cache_queries_total`, `sim:prefix_cache_hits_total` (tokens, as vLLM's) |
//! | `POST /reset_prefix_cache` | empties the prefix cache (vLLM's, which vLLM serves only with `VLLM_SERVER_DEV_MODE=1`) |
//!
//! While the startup delay runs, the API endpoints answer 503 too. Errors use the OpenAI shape
//! `{"error": {"message", "type", "param", "code"}}`; bad JSON, wrong field types, `n > 1`,
//! batched prompts, `max_tokens < 1` and prompts longer than the context are 400s.
//!
//! # Behaviour
//!
//! - Tokens: one whitespace-separated word is one token ([`evalctl_tokenizer`]); a chat prompt's length
//!   is the words of all its messages' text, with no chat-template overhead.
//! - Output: exactly `max_completion_tokens`, else `max_tokens`, else 16 tokens; `finish_reason`
//!   is always `"length"` (the simulator never stops early, so `ignore_eos` changes nothing).
//! - Timing: [`LatencyModel`]; at most `max_num_seqs` requests run, the rest wait.
//! - Streams: see [`response`] for the chunk sequence. The chat role chunk is sent as soon as the
//!   request is accepted, before prefill, so a client that counts it as a token sees a TTFT near
//!   zero. The `x-request-id` response header echoes the client's, or carries the response `id`.
//! - Scored answers: with `accuracy` set, a prompt ending in a question of the shipped
//!   arithmetic task (`Question N: What is A plus B?`) is answered with one token, right or
//!   wrong as `quiz` decides, and `finish_reason: "stop"`; other prompts are unchanged.
//! - Shutdown: streams in flight end at their next token without `[DONE]`; the drain is bounded
//!   by `shutdown_grace`.

mod api;
mod engine;
mod error;
mod handlers;
pub mod latency;
mod metrics;
mod prefix_cache;
mod quiz;
mod response;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use api::DEFAULT_MAX_TOKENS;
pub use latency::LatencyModel;
pub use response::SYSTEM_FINGERPRINT;

use engine::Engine;
use handlers::AppState;

/// Configuration of one simulated server.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Served model name (`/v1/models`; echoed when a request names none).
    pub model: String,
    /// Prefill and decode costs.
    pub latency: LatencyModel,
    /// Output tokens per SSE chunk (at least 1); the last chunk may hold fewer.
    pub tokens_per_chunk: u32,
    /// How long after start `/health` (and the API) answer 503.
    pub startup_delay: Duration,
    /// Seed of the generated words; each request draws from `seed` and its arrival number.
    pub seed: u64,
    /// Requests running at once; the rest wait (vLLM's `--max-num-seqs`).
    pub max_num_seqs: usize,
    /// Context length: prompt plus output tokens of one request.
    pub max_model_len: u64,
    /// Largest request body accepted, in bytes (413 above).
    pub max_body_bytes: usize,
    /// How long shutdown waits for open connections to finish.
    pub shutdown_grace: Duration,
    /// Cache prompt prefixes, as vLLM's automatic prefix caching does: hit tokens skip the
    /// prefill cost (see `prefix_cache`).
    pub prefix_caching: bool,
    /// Tokens the prefix cache holds before it evicts the least recently used blocks.
    pub prefix_cache_tokens: usize,
    /// How the first `reasoning_tokens` output tokens of each request are streamed as
    /// reasoning, as a reasoning model's server does (`None`: no reasoning).
    pub reasoning: Option<ReasoningShape>,
    /// Output tokens of each request that are reasoning (the rest are the answer).
    pub reasoning_tokens: u32,
    /// Answer the questions of the shipped arithmetic task (`datasets/lm-eval/evalctl_arith`)
    /// with this accuracy, from 0 to 1 (see `quiz`); `None`: generate words for them as for
    /// any prompt.
    pub accuracy: Option<f64>,
}

/// The three shapes reasoning takes in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningShape {
    /// `delta.reasoning` (vLLM 0.32 with a reasoning parser); chat only.
    Reasoning,
    /// `delta.reasoning_content` (SGLang, older vLLM); chat only.
    ReasoningContent,
    /// `<think>…</think>` inline in the text (a server without a reasoning parser); both
    /// APIs.
    Think,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            model: "evalctl-sim".to_owned(),
            latency: LatencyModel::default(),
            tokens_per_chunk: 1,
            startup_delay: Duration::ZERO,
            seed: 0,
            max_num_seqs: 256,
            max_model_len: 131_072,
            max_body_bytes: 64 << 20,
            shutdown_grace: Duration::from_secs(5),
            prefix_caching: false,
            prefix_cache_tokens: 1 << 20,
            reasoning: None,
            reasoning_tokens: 0,
            accuracy: None,
        }
    }
}

impl SimConfig {
    /// Checks the values no server can run with.
    pub fn validate(&self) -> Result<(), SimError> {
        let invalid = |msg: String| Err(SimError::InvalidConfig(msg));
        if let Err(msg) = self.latency.validate() {
            return invalid(msg);
        }
        if self.tokens_per_chunk == 0 {
            return invalid("tokens_per_chunk must be at least 1".to_owned());
        }
        if self.max_num_seqs == 0 {
            return invalid("max_num_seqs must be at least 1".to_owned());
        }
        if self.model.is_empty() {
            return invalid("model must not be empty".to_owned());
        }
        if let Some(accuracy) = self.accuracy
            && !(0.0..=1.0).contains(&accuracy)
        {
            return invalid(format!("accuracy must be from 0 to 1, got {accuracy}"));
        }
        Ok(())
    }
}

/// Why the simulated server could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A configuration value is out of range.
    #[error("invalid simulated server configuration: {0}")]
    InvalidConfig(String),
    /// Binding the listening socket failed.
    #[error("failed to bind {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The listener's address could not be read.
    #[error("failed to read the listening address")]
    LocalAddr(#[source] std::io::Error),
    /// Serving failed.
    #[error("failed to serve HTTP")]
    Serve(#[source] std::io::Error),
}

/// The simulator's routes, with a fresh engine. The startup delay counts from this call.
/// Nothing cancels its generations; [`run`] is the way to serve with shutdown.
pub fn router(config: SimConfig) -> Router {
    build_router(config, CancellationToken::new())
}

fn build_router(config: SimConfig, cancel: CancellationToken) -> Router {
    let engine = Arc::new(Engine::new(
        config.latency,
        config.max_num_seqs,
        config.seed,
        config.prefix_caching.then_some(config.prefix_cache_tokens),
        cancel,
    ));
    let body_limit = config.max_body_bytes;
    let state = Arc::new(AppState {
        ready_at: tokio::time::Instant::now() + config.startup_delay,
        config,
        engine,
    });
    Router::new()
        .route("/health", get(handlers::health))
        .route("/version", get(handlers::version))
        .route("/v1/models", get(handlers::models))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/tokenize", post(handlers::tokenize))
        .route("/reset_prefix_cache", post(handlers::reset_prefix_cache))
        .route("/metrics", get(handlers::metrics))
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves the simulator on `listener` until `shutdown` completes, then ends every stream in
/// flight and waits up to `config.shutdown_grace` for connections to close.
pub async fn run(
    config: SimConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    config.validate()?;
    let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
    tracing::info!(
        %addr,
        model = %config.model,
        latency = ?config.latency,
        tokens_per_chunk = config.tokens_per_chunk,
        startup_delay = ?config.startup_delay,
        max_num_seqs = config.max_num_seqs,
        "simulated server listening"
    );
    let grace = config.shutdown_grace;
    let cancel = CancellationToken::new();
    let app = build_router(config, cancel.clone());
    // Small SSE events must leave at once: Nagle's algorithm would hold them back.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::warn!(%err, "failed to set TCP_NODELAY");
        }
    });
    let signal = {
        let cancel = cancel.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down the simulated server");
            cancel.cancel();
        }
    };
    let serve = axum::serve(listener, app).with_graceful_shutdown(signal);
    tokio::select! {
        result = serve.into_future() => result.map_err(SimError::Serve),
        () = async { cancel.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(?grace, "connections still open after the shutdown grace; closing");
            Ok(())
        }
    }
}

/// A simulated server running on a tokio task, for tests and embedding.
///
/// Dropping it shuts the server down as [`SimServer::shutdown`] does, without waiting.
#[derive(Debug)]
pub struct SimServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), SimError>>,
}

impl SimServer {
    /// Binds `127.0.0.1:0` and serves `config` there.
    pub async fn start(config: SimConfig) -> Result<SimServer, SimError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        SimServer::start_on(config, listener)
    }

    /// Serves `config` on an already bound listener.
    pub fn start_on(config: SimConfig, listener: TcpListener) -> Result<SimServer, SimError> {
        config.validate()?;
        let addr = listener.local_addr().map_err(SimError::LocalAddr)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(config, listener, async move {
            // A dropped sender means the handle is gone: stop as well.
            let _ = stopped.await;
        }));
        Ok(SimServer {
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it to finish.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
