//! HTTP handlers: one function per endpoint, over the shared [`AppState`].

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;

use super::api::{self, Api, GenerationRequest};
use super::engine::Engine;
use super::error::ApiError;
use super::quiz;
use super::response::{DONE, ResponseWriter, SYSTEM_FINGERPRINT, Usage};
use super::{ReasoningShape, SimConfig};

/// The request and response header carrying the request id.
const REQUEST_ID: &str = "x-request-id";

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub config: SimConfig,
    pub engine: Arc<Engine>,
    /// End of the simulated startup delay.
    pub ready_at: Instant,
}

impl AppState {
    fn check_ready(&self) -> Result<(), ApiError> {
        if Instant::now() < self.ready_at {
            Err(ApiError::starting())
        } else {
            Ok(())
        }
    }
}

type Shared = State<Arc<AppState>>;

/// `GET /health`: 200 "ok", or 503 during the startup delay.
pub(crate) async fn health(State(app): Shared) -> Response {
    match app.check_ready() {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "starting").into_response(),
    }
}

/// `GET /version`, as vLLM answers it.
pub(crate) async fn version() -> Response {
    let version = format!("{SYSTEM_FINGERPRINT} {}", env!("CARGO_PKG_VERSION"));
    axum::Json(json!({ "version": version })).into_response()
}

/// `GET /v1/models`: the one served model.
pub(crate) async fn models(State(app): Shared) -> Result<Response, ApiError> {
    app.check_ready()?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": [{
            "id": app.config.model,
            "object": "model",
            "created": unix_now(),
            "owned_by": SYSTEM_FINGERPRINT,
            "root": app.config.model,
            "max_model_len": app.config.max_model_len,
        }],
    }))
    .into_response())
}

/// `GET /metrics`: Prometheus text.
pub(crate) async fn metrics(State(app): Shared) -> Response {
    let text = app.engine.stats.render(&app.config.model);
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

/// `POST /tokenize`: vLLM-style `{"prompt": "..."}` → `{"tokens": [...], "count": N}`.
pub(crate) async fn tokenize(
    State(app): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.check_ready()?;
    let body = body.map_err(ApiError::from_body)?;
    let tokens = api::parse_tokenize(&body)?;
    Ok(axum::Json(json!({
        "count": tokens.len(),
        "max_model_len": app.config.max_model_len,
        "tokens": tokens,
    }))
    .into_response())
}

/// `POST /v1/completions`.
pub(crate) async fn completions(
    State(app): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generate(app, Api::Completions, headers, body).await
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(
    State(app): Shared,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    generate(app, Api::Chat, headers, body).await
}

/// `POST /reset_prefix_cache`: empties the prefix cache and answers `{"success": true}`, as
/// vLLM's endpoint does.
pub(crate) async fn reset_prefix_cache(State(app): Shared) -> Response {
    app.engine.reset_prefix_cache();
    axum::Json(serde_json::json!({ "success": true })).into_response()
}

/// Any other path: a JSON 404.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn generate(
    app: Arc<AppState>,
    api: Api,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    app.check_ready()?;
    let body = body.map_err(ApiError::from_body)?;
    let mut req = api::parse_generation(api, &body, app.config.max_model_len)?;
    // A question of the scored task gets its one-token answer instead of generated words.
    let answer = app
        .config
        .accuracy
        .and_then(|accuracy| quiz::answer(&req.prompt_text, accuracy));
    if answer.is_some() {
        req.max_tokens = 1;
    }

    // As vLLM: a client-supplied X-Request-Id names the request; otherwise a fresh one.
    let client_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let base = client_id.map_or_else(|| format!("{:032x}", rand::random::<u128>()), str::to_owned);
    let id = match api {
        Api::Chat => format!("chatcmpl-{base}"),
        Api::Completions => format!("cmpl-{base}"),
    };
    let header_id = HeaderValue::from_str(client_id.unwrap_or(&id))
        .map_err(|_| ApiError::invalid("x-request-id must be visible ASCII"))?;
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| app.config.model.clone());
    let mut writer = ResponseWriter::new(api, id, unix_now(), model);
    if answer.is_some() {
        writer = writer.answering();
    }

    let mut response = if req.stream {
        stream_response(app, api, req, writer, answer)
    } else {
        whole_response(app, req, writer, answer).await?
    };
    response.headers_mut().insert(REQUEST_ID, header_id);
    Ok(response)
}

/// Generates every token, then answers with one JSON body (`answer`, when given, replaces
/// the generated text).
async fn whole_response(
    app: Arc<AppState>,
    req: GenerationRequest,
    writer: ResponseWriter,
    answer: Option<String>,
) -> Result<Response, ApiError> {
    let mut generation = app
        .engine
        .start(&req.prompt_ids, req.max_tokens)
        .await
        .ok_or_else(ApiError::shutting_down)?;
    let mut text = String::new();
    while generation.remaining() > 0 {
        generation
            .next_token(&mut text)
            .await
            .map_err(|_| ApiError::shutting_down())?;
    }
    if let Some(answer) = answer {
        text = answer;
    }
    let usage = Usage::new(req.prompt_tokens, u64::from(req.max_tokens));
    Ok((
        [(CONTENT_TYPE, "application/json")],
        writer.full_body(&text, usage),
    )
        .into_response())
}

/// Answers at once with an SSE body that produces events as the tokens become ready
/// (`answer`, when given, is the text of its one token).
fn stream_response(
    app: Arc<AppState>,
    api: Api,
    req: GenerationRequest,
    writer: ResponseWriter,
    answer: Option<String>,
) -> Response {
    let per_chunk = app.config.tokens_per_chunk.max(1);
    let events = async_stream::stream! {
        if api == Api::Chat {
            yield Ok::<Bytes, std::convert::Infallible>(writer.role_event());
        }
        let Some(mut generation) = app.engine.start(&req.prompt_ids, req.max_tokens).await else {
            return;
        };
        let mut text = String::new();
        let mut in_chunk = 0;
        // The first `reasoning` tokens are reasoning, in the configured shape; a chunk never
        // mixes reasoning and answer tokens.
        let shape = app.config.reasoning;
        let reasoning = shape.map_or(0, |_| app.config.reasoning_tokens.min(req.max_tokens));
        let mut made = 0u32;
        while generation.remaining() > 0 {
            let thinking = made < reasoning;
            if thinking && made == 0 && shape == Some(ReasoningShape::Think) {
                text.push_str("<think>");
            }
            if generation.next_token(&mut text).await.is_err() {
                // Shutdown: end the body without [DONE], as a server that went away would.
                return;
            }
            if let Some(answer) = &answer {
                text.clone_from(answer);
            }
            made += 1;
            in_chunk += 1;
            let last_thought = thinking && made == reasoning;
            if last_thought && shape == Some(ReasoningShape::Think) {
                text.push_str("</think>");
            }
            if in_chunk == per_chunk || generation.remaining() == 0 || last_thought {
                match shape {
                    Some(shape) if thinking => yield Ok(writer.reasoning_event(shape, &text)),
                    _ => yield Ok(writer.text_event(&text)),
                }
                text.clear();
                in_chunk = 0;
            }
        }
        drop(generation);
        yield Ok(writer.finish_event());
        if req.include_usage {
            yield Ok(writer.usage_event(Usage::new(req.prompt_tokens, u64::from(req.max_tokens))));
        }
        yield Ok(Bytes::from_static(DONE));
    };
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Body::from_stream(events),
    )
        .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
