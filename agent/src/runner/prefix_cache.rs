//! Keeping a warm server's prefix cache out of a step: before the step, empty the cache
//! (`reset`), or salt the step's generated prompts so nothing cached earlier matches
//! (`salt`), or leave both alone (`keep`). A refused reset falls back to salting. After the
//! step, the facts: what was done, the hit rate the prompts imply, the one the server saw.

use std::time::Duration;

use evalctl_loadgen::dataset::Dataset;
use evalctl_results::{
    PrefixCacheFacts, PrefixCachePolicy, RequestRecord, ServerMetricsSummary, WorkloadFacts,
};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

/// The cache-emptying endpoints tried in order: vLLM's (served only with
/// `VLLM_SERVER_DEV_MODE=1`; the simulator serves it too), then SGLang's.
const RESET_ENDPOINTS: &[&str] = &["/reset_prefix_cache", "/flush_cache"];
/// Longest wait for one reset request.
const RESET_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries of an endpoint that answers "not now" (vLLM: `{"success": false}` while blocks are
/// still held by requests the previous step abandoned; SGLang: 400 while requests run).
const RESET_TRIES: u32 = 5;
/// Pause between those tries.
const RESET_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Largest answer body read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The workload's policy from its protocol spelling ("" = the default, `reset`).
pub fn policy(spelling: &str) -> Result<PrefixCachePolicy, String> {
    match spelling {
        "" | "reset" => Ok(PrefixCachePolicy::Reset),
        "salt" => Ok(PrefixCachePolicy::Salt),
        "keep" => Ok(PrefixCachePolicy::Keep),
        other => Err(format!(
            "unknown prefix cache policy `{other}` (expected reset, salt or keep)"
        )),
    }
}

/// What was done to the cache before a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Preparation {
    /// The policy asked for.
    pub policy: PrefixCachePolicy,
    /// The endpoint that emptied the cache.
    pub reset_by: Option<String>,
    /// Every endpoint's refusal, when none emptied it.
    pub reset_refused: Option<String>,
    /// The step's generated prompts are to be salted.
    pub salt: bool,
}

/// Applies `policy` before a step against the server at `base_url`; `generated` says
/// whether the step's prompts are generated (and so can be salted).
pub async fn prepare(policy: PrefixCachePolicy, base_url: &str, generated: bool) -> Preparation {
    let mut prep = Preparation {
        policy,
        reset_by: None,
        reset_refused: None,
        salt: false,
    };
    match policy {
        PrefixCachePolicy::Keep => {}
        PrefixCachePolicy::Salt => prep.salt = generated,
        PrefixCachePolicy::Reset => match reset(base_url).await {
            Ok(endpoint) => prep.reset_by = Some(endpoint.to_owned()),
            Err(refusals) => {
                tracing::debug!(%refusals, salt = generated, "the server did not reset its prefix cache");
                prep.reset_refused = Some(refusals);
                prep.salt = generated;
            }
        },
    }
    prep
}

/// The salt of a step: a number from its id, so a step's salted prompts are the same on
/// every run of it (a resumed or repeated night sends what the last one sent).
pub fn salt(step_id: &str) -> u64 {
    let digest = Sha256::digest(step_id.as_bytes());
    u64::from_le_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 8 bytes"),
    )
}

/// POSTs each reset endpoint in turn; the first that empties the cache, or every refusal.
async fn reset(base_url: &str) -> Result<&'static str, String> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut refusals = Vec::new();
    for endpoint in RESET_ENDPOINTS {
        let mut tries = 0;
        let refusal = loop {
            tries += 1;
            match post(&client, &format!("{base_url}{endpoint}")).await {
                Answer::Done => return Ok(endpoint),
                Answer::Busy(detail) if tries < RESET_TRIES => {
                    tracing::debug!(endpoint, %detail, "prefix cache reset refused for now; retrying");
                    tokio::time::sleep(RESET_RETRY_PAUSE).await;
                }
                Answer::Busy(detail) | Answer::Refused(detail) => break detail,
            }
        };
        refusals.push(format!("POST {endpoint}: {refusal}"));
    }
    Err(refusals.join("; "))
}

/// How a reset endpoint answered.
enum Answer {
    /// The cache is empty.
    Done,
    /// The server has the endpoint but cannot reset now.
    Busy(String),
    /// No such endpoint, or no answer.
    Refused(String),
}

async fn post(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>,
    url: &str,
) -> Answer {
    let request = match hyper::Request::post(url).body(Empty::new()) {
        Ok(r) => r,
        Err(e) => return Answer::Refused(e.to_string()),
    };
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = match tokio::time::timeout(RESET_TIMEOUT, exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Answer::Refused(e),
        Err(_) => return Answer::Refused(format!("no answer in {RESET_TIMEOUT:?}")),
    };
    // vLLM answers 200 with `{"success": false}` while blocks are held.
    let refused_in_body = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("success").and_then(serde_json::Value::as_bool))
        == Some(false);
    match status.as_u16() {
        200..=299 if !refused_in_body => Answer::Done,
        200..=299 | 400 | 409 | 503 => Answer::Busy(format!(
            "{status}: {}",
            String::from_utf8_lossy(&body).trim()
        )),
        _ => Answer::Refused(status.to_string()),
    }
}

/// The workload facts of a finished load step: `kind` is the dataset's, `records` every
/// request in index order (warmup included), `server` the server's metrics over the step.
pub fn facts(
    kind: &str,
    prep: &Preparation,
    dataset: &Dataset,
    records: &[RequestRecord],
    server: Option<&ServerMetricsSummary>,
) -> WorkloadFacts {
    // With `keep` the cache does not start empty: an expected rate would not be comparable.
    let starts_empty = prep.policy != PrefixCachePolicy::Keep;
    let expected_hit_rate = dataset
        .prefixes
        .as_ref()
        .filter(|_| starts_empty)
        .and_then(|layout| {
            layout.expected_hit_rate(&dataset.prompts, records.iter().map(|r| r.prompt_index))
        });
    let (server_hit_rate, server_hit_rate_from) =
        match server.and_then(ServerMetricsSummary::prefix_cache_hit_rate) {
            Some((rate, from)) => (Some(rate), Some(from)),
            None => (None, None),
        };
    WorkloadFacts {
        dataset: kind.to_owned(),
        lengths: dataset.lengths,
        prefix_cache: Some(PrefixCacheFacts {
            policy: prep.policy,
            reset_by: prep.reset_by.clone(),
            reset_refused: prep.reset_refused.clone(),
            salted: prep.salt,
            expected_hit_rate,
            server_hit_rate,
            server_hit_rate_from,
        }),
    }
}
