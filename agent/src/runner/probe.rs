//! What a running server says about itself: the model name it serves and its version.
//! Both are best effort: a server that does not answer keeps the matrix's values.

use std::time::Duration;

use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Longest wait for one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest probe answer read.
const MAX_PROBE_BYTES: usize = 1 << 20;

/// GETs `url` and parses the body as JSON; `None` on any failure.
pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url.parse().ok()?;
    let fetch = async {
        let response = client.get(uri).await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_PROBE_BYTES)
            .collect()
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice(&body).ok()
    };
    tokio::time::timeout(PROBE_TIMEOUT, fetch).await.ok()?
}

/// The first model id of `GET /v1/models` (what OpenAI-compatible servers expect in requests).
pub async fn served_model(base_url: &str) -> Option<String> {
    let models = get_json(&format!("{base_url}/v1/models")).await?;
    models
        .pointer("/data/0/id")
        .and_then(|id| id.as_str())
        .map(str::to_owned)
}

/// The server's version: `GET /version` (vLLM, the simulator), else `GET /info` (TGI).
pub async fn framework_version(base_url: &str) -> Option<String> {
    for (path, pointer) in [("/version", "/version"), ("/info", "/version")] {
        if let Some(answer) = get_json(&format!("{base_url}{path}")).await
            && let Some(version) = answer.pointer(pointer).and_then(|v| v.as_str())
        {
            return Some(version.to_owned());
        }
    }
    None
}
