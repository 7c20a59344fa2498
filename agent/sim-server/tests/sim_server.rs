//! The simulated server over real HTTP on loopback.

#[allow(
    dead_code,
    reason = "shared test helpers; this binary uses a part of them"
)]
mod support;

use std::time::{Duration, Instant};

use evalctl_loadgen::dataset::{self, DatasetPlan, LengthFilter};
use evalctl_loadgen::{Api, DatasetSource, Load, StepPlan, Stop, Tokenization, run_step};
use evalctl_sim_server::{LatencyModel, SimConfig, SimServer};
use http::StatusCode;
use serde_json::{Value, json};
use support::eventually;
use support::http::HttpClient;

/// A prompt of exactly `n` tokens under the simulator's whitespace tokenizer.
fn words(n: usize) -> String {
    vec!["word"; n].join(" ")
}

fn fast() -> SimConfig {
    SimConfig {
        latency: LatencyModel::instant(),
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> (SimServer, HttpClient) {
    (
        SimServer::start(config).await.expect("sim server starts"),
        HttpClient::new(),
    )
}

fn parse_events(data: &[String]) -> (Vec<Value>, bool) {
    let done = data.last().map(String::as_str) == Some("[DONE]");
    let chunks = data
        .iter()
        .filter(|d| d.as_str() != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk is JSON"))
        .collect();
    (chunks, done)
}

#[tokio::test]
async fn streaming_chat_sends_role_tokens_finish_usage_done() {
    let (sim, client) = start(SimConfig {
        model: "served".into(),
        ..fast()
    })
    .await;
    let body = json!({
        "model": "asked-for",
        "messages": [{"role": "user", "content": words(3)}],
        "max_tokens": 5,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let reply = client
        .post(
            &format!("{}/v1/chat/completions", sim.base_url()),
            body.to_string(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let (chunks, done) = parse_events(&reply.sse_data());
    assert!(done, "stream ends with [DONE]");
    assert_eq!(chunks.len(), 1 + 5 + 1 + 1, "{chunks:#?}");

    let id = chunks[0]["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("chatcmpl-"));
    assert_eq!(reply.headers["x-request-id"], id.as_str());
    for chunk in &chunks {
        assert_eq!(chunk["id"], id.as_str());
        assert_eq!(chunk["model"], "asked-for");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["system_fingerprint"], "evalctl-sim");
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for chunk in &chunks[1..6] {
        let delta = &chunk["choices"][0]["delta"];
        assert!(delta.get("role").is_none());
        let text = delta["content"].as_str().expect("content");
        assert_eq!(
            text.split_whitespace().count(),
            1,
            "one token per chunk: {text:?}"
        );
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
    }
    assert_eq!(chunks[6]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[6]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[7]["choices"], json!([]));
    assert_eq!(
        chunks[7]["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );
}

#[tokio::test]
async fn streaming_completions_group_tokens_per_chunk() {
    let (sim, client) = start(SimConfig {
        tokens_per_chunk: 3,
        ..fast()
    })
    .await;
    let body = json!({"prompt": words(4), "max_tokens": 7, "stream": true});
    let reply = client
        .post(
            &format!("{}/v1/completions", sim.base_url()),
            body.to_string(),
        )
        .await;
    let (chunks, done) = parse_events(&reply.sse_data());
    assert!(done);
    let texts: Vec<&str> = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().expect("text"))
        .collect();
    let counts: Vec<usize> = texts.iter().map(|t| t.split_whitespace().count()).collect();
    assert_eq!(counts, vec![3, 3, 1, 0], "{texts:?}");
    assert_eq!(texts[3], "");
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "no usage unless asked"
    );
    assert!(chunks[0]["id"].as_str().expect("id").starts_with("cmpl-"));
    assert_eq!(
        chunks[0]["model"], "evalctl-sim",
        "the served model when none is named"
    );
    // The streamed text, joined, re-tokenizes to the output length.
    assert_eq!(texts.concat().split_whitespace().count(), 7);
}

#[tokio::test]
async fn non_streaming_honours_max_tokens_and_defaults() {
    let (sim, client) = start(fast()).await;
    let url = sim.base_url();

    let chat = client
        .post(
            &format!("{url}/v1/chat/completions"),
            json!({"messages": [{"role": "user", "content": words(10)}], "max_completion_tokens": 12})
                .to_string(),
        )
        .await
        .json();
    assert_eq!(chat["object"], "chat.completion");
    assert_eq!(chat["system_fingerprint"], "evalctl-sim");
    let content = chat["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert_eq!(content.split_whitespace().count(), 12);
    assert_eq!(chat["choices"][0]["finish_reason"], "length");
    assert_eq!(chat["usage"]["prompt_tokens"], 10);
    assert_eq!(chat["usage"]["completion_tokens"], 12);

    let completion = client
        .post(
            &format!("{url}/v1/completions"),
            json!({"prompt": "a b", "ignore_eos": true}).to_string(),
        )
        .await
        .json();
    let text = completion["choices"][0]["text"].as_str().expect("text");
    assert_eq!(text.split_whitespace().count(), 16, "default max_tokens");
    assert_eq!(completion["usage"]["completion_tokens"], 16);

    let big = client
        .post(
            &format!("{url}/v1/completions"),
            json!({"prompt": [1, 2, 3], "max_tokens": 1000}).to_string(),
        )
        .await
        .json();
    assert_eq!(big["usage"]["prompt_tokens"], 3);
    let text = big["choices"][0]["text"].as_str().expect("text");
    assert_eq!(text.split_whitespace().count(), 1000);
}

#[tokio::test]
async fn client_request_id_is_echoed() {
    let (sim, client) = start(fast()).await;
    let reply = client
        .post_with(
            &format!("{}/v1/completions", sim.base_url()),
            json!({"prompt": "a", "max_tokens": 1}).to_string(),
            &[("x-request-id", "abc-123")],
        )
        .await;
    assert_eq!(reply.headers["x-request-id"], "abc-123");
    assert_eq!(reply.json()["id"], "cmpl-abc-123");
}

/// Milliseconds from `from` to `to`.
fn ms(from: Instant, to: Instant) -> f64 {
    to.duration_since(from).as_secs_f64() * 1e3
}

#[tokio::test]
async fn latency_follows_prefill_and_decode_model() {
    let (sim, client) = start(SimConfig {
        latency: LatencyModel {
            prefill_us_per_token: 1000.0,
            decode_ms_per_token: 20.0,
            decode_ms_per_extra_request: 0.0,
        },
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/completions", sim.base_url());
    let run = |prompt: usize| {
        let client = client.clone();
        let url = url.clone();
        async move {
            let body = json!({"prompt": words(prompt), "max_tokens": 6, "stream": true});
            let reply = client.post_timed(&url, body.to_string()).await;
            let events = reply.timed_events();
            let tokens: Vec<Instant> = events
                .iter()
                .filter(|(_, d)| d != "[DONE]")
                .filter(|(_, d)| {
                    let v: Value = serde_json::from_str(d).expect("json");
                    v["choices"][0]["text"]
                        .as_str()
                        .is_some_and(|t| !t.is_empty())
                })
                .map(|(at, _)| *at)
                .collect();
            assert_eq!(tokens.len(), 6);
            (reply.sent, tokens)
        }
    };

    let (sent, short) = run(10).await;
    let short_ttft = ms(sent, short[0]);
    assert!(short_ttft >= 9.0, "ttft {short_ttft} ms >= 10 ms prefill");
    for pair in short.windows(2) {
        let gap = ms(pair[0], pair[1]);
        assert!(gap >= 18.0, "decode gap {gap} ms ~ 20 ms");
    }
    let e2el = ms(sent, short[5]);
    assert!(e2el >= 10.0 + 5.0 * 20.0 - 2.0, "e2el {e2el} ms");

    let (sent, long) = run(200).await;
    let long_ttft = ms(sent, long[0]);
    assert!(long_ttft >= 199.0, "ttft {long_ttft} ms >= 200 ms prefill");
    assert!(
        long_ttft > short_ttft + 150.0,
        "longer prompt, longer prefill"
    );
}

#[tokio::test]
async fn decode_slows_down_with_batch_size() {
    let (sim, client) = start(SimConfig {
        latency: LatencyModel {
            prefill_us_per_token: 0.0,
            decode_ms_per_token: 5.0,
            decode_ms_per_extra_request: 5.0,
        },
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/completions", sim.base_url());
    let body = json!({"prompt": "a", "max_tokens": 11}).to_string();
    let timed = |client: HttpClient| {
        let (url, body) = (url.clone(), body.clone());
        async move {
            let start = Instant::now();
            let reply = client.post(&url, body).await;
            assert_eq!(reply.status, StatusCode::OK);
            ms(start, Instant::now())
        }
    };
    let alone = timed(client.clone()).await;
    // 10 decode steps of 5 ms alone; with 8 running each step costs 5 + 7 × 5 = 40 ms.
    let batch = futures::future::join_all((0..8).map(|_| timed(client.clone()))).await;
    let slowest = batch.iter().copied().fold(0.0, f64::max);
    assert!(alone >= 48.0, "alone {alone} ms");
    assert!(
        slowest >= 4.0 * alone,
        "batch of 8 {slowest} ms vs alone {alone} ms"
    );
}

#[tokio::test]
async fn health_is_503_during_startup_delay_then_200() {
    let (sim, client) = start(SimConfig {
        startup_delay: Duration::from_millis(300),
        ..fast()
    })
    .await;
    let url = sim.base_url();
    let first = client.get(&format!("{url}/health")).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    let models = client.get(&format!("{url}/v1/models")).await;
    assert_eq!(models.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(models.json()["error"]["message"].is_string());

    let health = format!("{url}/health");
    eventually(Duration::from_secs(5), "health turns 200", || {
        let (client, health) = (client.clone(), health.clone());
        async move { client.get(&health).await.status == StatusCode::OK }
    })
    .await;
    assert_eq!(client.get(&health).await.text(), "ok");
}

#[tokio::test]
async fn models_version_and_tokenize() {
    let (sim, client) = start(SimConfig {
        model: "tiny".into(),
        max_model_len: 4096,
        ..fast()
    })
    .await;
    let url = sim.base_url();
    let models = client.get(&format!("{url}/v1/models")).await.json();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["owned_by"], "evalctl-sim");
    assert_eq!(models["data"][0]["max_model_len"], 4096);

    let version = client.get(&format!("{url}/version")).await.json();
    assert!(
        version["version"]
            .as_str()
            .expect("version")
            .starts_with("evalctl-sim ")
    );

    let tok = client
        .post(
            &format!("{url}/tokenize"),
            json!({"prompt": "  the quick\n brown  fox "}).to_string(),
        )
        .await
        .json();
    assert_eq!(tok["count"], 4);
    assert_eq!(tok["tokens"].as_array().expect("tokens").len(), 4);
    let again = client
        .post(
            &format!("{url}/tokenize"),
            json!({"prompt": "the"}).to_string(),
        )
        .await
        .json();
    assert_eq!(again["tokens"][0], tok["tokens"][0], "ids are stable");

    let chat = client
        .post(
            &format!("{url}/tokenize"),
            json!({"messages": [{"role": "user", "content": words(1234)}]}).to_string(),
        )
        .await
        .json();
    assert_eq!(chat["count"], 1234);
}

/// Parses Prometheus text: every non-comment line is `name{labels} value`.
fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.split_whitespace();
            let kind = parts.next().expect("comment kind");
            assert!(kind == "HELP" || kind == "TYPE", "comment {line:?}");
            if kind == "TYPE" {
                let t = parts.nth(1).expect("type");
                assert!(["gauge", "counter"].contains(&t), "type {t}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let name = series.split('{').next().expect("name");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "metric name {name:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')));
        }
        samples.push((name.to_owned(), value.parse().expect("numeric value")));
    }
    samples
}

async fn metric(client: &HttpClient, url: &str, name: &str) -> f64 {
    let reply = client.get(&format!("{url}/metrics")).await;
    assert!(
        reply.headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/plain")
    );
    parse_prometheus(&reply.text())
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("metric {name} missing"))
        .1
}

#[tokio::test]
async fn metrics_count_tokens_and_running_requests() {
    let (sim, client) = start(SimConfig {
        latency: LatencyModel {
            prefill_us_per_token: 0.0,
            decode_ms_per_token: 50.0,
            decode_ms_per_extra_request: 0.0,
        },
        ..SimConfig::default()
    })
    .await;
    let url = sim.base_url();
    assert_eq!(metric(&client, &url, "sim:num_requests_running").await, 0.0);

    client
        .post(
            &format!("{url}/v1/completions"),
            json!({"prompt": words(7), "max_tokens": 3}).to_string(),
        )
        .await;
    assert_eq!(metric(&client, &url, "sim:prompt_tokens_total").await, 7.0);
    assert_eq!(
        metric(&client, &url, "sim:generation_tokens_total").await,
        3.0
    );
    assert_eq!(
        metric(&client, &url, "sim:request_success_total").await,
        1.0
    );
    assert_eq!(metric(&client, &url, "sim:num_requests_waiting").await, 0.0);

    // A long stream shows as running; dropping it mid-way frees the slot and counts an abort.
    let open = client
        .post_open(
            &format!("{url}/v1/completions"),
            json!({"prompt": "a", "max_tokens": 1000, "stream": true}).to_string(),
        )
        .await;
    eventually(Duration::from_secs(5), "one request running", || {
        let (client, url) = (client.clone(), url.clone());
        async move { metric(&client, &url, "sim:num_requests_running").await == 1.0 }
    })
    .await;
    drop(open);
    eventually(
        Duration::from_secs(5),
        "slot freed after disconnect",
        || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                metric(&client, &url, "sim:num_requests_running").await == 0.0
                    && metric(&client, &url, "sim:request_aborted_total").await == 1.0
            }
        },
    )
    .await;
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_errors() {
    let (sim, client) = start(SimConfig {
        max_body_bytes: 1024,
        max_model_len: 100,
        ..fast()
    })
    .await;
    let url = sim.base_url();
    let chat = format!("{url}/v1/chat/completions");
    let cases = [
        (
            chat.clone(),
            "{not json".to_owned(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            chat.clone(),
            json!({"model": "m"}).to_string(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            chat.clone(),
            json!({"messages": [{"role": "user", "content": "a"}], "max_tokens": "x"}).to_string(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            chat.clone(),
            json!({"messages": [{"role": "user", "content": "a"}], "n": 3}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("n"),
        ),
        (
            format!("{url}/v1/completions"),
            json!({"prompt": words(90), "max_tokens": 20}).to_string(),
            StatusCode::BAD_REQUEST,
            Some("max_tokens"),
        ),
        (
            format!("{url}/v1/completions"),
            json!({"prompt": words(600)}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            format!("{url}/v2/nothing"),
            "{}".to_owned(),
            StatusCode::NOT_FOUND,
            None,
        ),
    ];
    for (url, body, status, param) in cases {
        let reply = client.post(&url, body.clone()).await;
        assert_eq!(reply.status, status, "{url} {body}: {}", reply.text());
        let err = &reply.json()["error"];
        assert!(!err["message"].as_str().expect("message").is_empty());
        assert!(err["type"].is_string());
        assert!(err.get("code").is_some());
        if let Some(param) = param {
            assert_eq!(err["param"], param, "{}", reply.text());
        }
    }
}

#[tokio::test]
async fn shutdown_ends_streams_in_flight() {
    let (sim, client) = start(SimConfig {
        latency: LatencyModel {
            prefill_us_per_token: 0.0,
            decode_ms_per_token: 20.0,
            decode_ms_per_extra_request: 0.0,
        },
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/chat/completions", sim.base_url());
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10_000, "stream": true});
    let stream = tokio::spawn({
        let client = client.clone();
        async move { client.post_timed(&url, body.to_string()).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    sim.shutdown().await.expect("clean shutdown");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drained promptly"
    );
    let reply = stream.await.expect("stream task");
    let events = reply.timed_events();
    assert!(
        events.len() > 1 && events.len() < 10_000,
        "cut short: {} events",
        events.len()
    );
    assert_ne!(events.last().expect("events").1, "[DONE]");
}

/// The load generator against the simulator: exact prompt lengths through `/tokenize`, usage,
/// request ids, and the latency model's prefill and decode times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_simulated_server() {
    let sim = SimServer::start(SimConfig {
        latency: LatencyModel {
            prefill_us_per_token: 200.0,
            decode_ms_per_token: 4.0,
            decode_ms_per_extra_request: 0.0,
        },
        ..SimConfig::default()
    })
    .await
    .expect("sim");
    let data = dataset::prepare(&DatasetPlan {
        source: DatasetSource::Random {
            input_tokens: 100,
            output_tokens: 12,
        },
        count: 8,
        seed: 1,
        filter: LengthFilter::default(),
        server_url: Some(sim.base_url()),
        model: None,
        tokenizer_json: None,
    })
    .await
    .expect("dataset");
    assert_eq!(data.tokenization, Tokenization::ServerTokenize);
    assert!(data.prompts.iter().all(|p| p.input_tokens == 100));

    for api in [Api::Chat, Api::Completions] {
        let plan = StepPlan::new(
            format!("{}/v1", sim.base_url()),
            api,
            "evalctl-sim",
            data.clone(),
            Load::Concurrency(4),
            Stop::Requests(16),
        );
        let outcome = run_step(plan, |_| {}).await.expect("step runs");
        let m = &outcome.metrics;
        assert_eq!((m.completed, m.failed), (16, 0), "{api:?}: {:?}", m.errors);
        assert_eq!(m.total_output_tokens, 16 * 12);
        assert_eq!(m.output_tokens_from_usage, 16);
        assert_eq!(m.total_input_tokens, 16 * 100);
        let ttft = m.ttft_ms.expect("ttft");
        let tpot = m.tpot_ms.expect("tpot");
        // Prefill of 100 tokens × 200 µs = 20 ms; decode steps of 4 ms.
        assert!(ttft.p50 >= 19.0, "{api:?} ttft {ttft:?}");
        assert!((3.5..7.0).contains(&tpot.p50), "{api:?} tpot {tpot:?}");
        assert!(outcome.records.iter().all(|r| r.token_ns.len() == 12));
        assert!(
            outcome
                .records
                .iter()
                .all(|r| r.server_request_id.is_some())
        );
        assert_eq!(outcome.connections_opened, 4);
    }
}

/// A Mooncake trace replayed at 10×: every request is sent at its scaled timestamp (ties
/// together), prompts of the same hash ids are the same token ids, sent as ids on the
/// completions API, and the simulator's prefix cache hits the shared blocks.
#[tokio::test]
async fn a_mooncake_trace_replays_on_its_own_clock_with_shared_blocks() {
    let sim = SimServer::start(SimConfig {
        prefix_caching: true,
        ..fast()
    })
    .await
    .expect("sim server starts");
    let dir = std::env::temp_dir().join(format!("evalctl-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("trace.jsonl");
    // Blocks of 16 tokens; requests 0-2 arrive together and share block 7.
    let lines = [
        r#"{"timestamp": 1000, "input_length": 40, "output_length": 3, "hash_ids": [7, 8, 9]}"#,
        r#"{"timestamp": 1000, "input_length": 20, "output_length": 3, "hash_ids": [7, 10]}"#,
        r#"{"timestamp": 1000, "input_length": 16, "output_length": 3, "hash_ids": [7]}"#,
        r#"{"timestamp": 1500, "input_length": 48, "output_length": 3, "hash_ids": [7, 8, 9]}"#,
        r#"{"timestamp": 3000, "input_length": 5, "output_length": 3, "hash_ids": [11]}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let data = dataset::prepare(&DatasetPlan {
        source: DatasetSource::Trace {
            path: path.clone(),
            options: evalctl_loadgen::trace::TraceOptions {
                block_tokens: 16,
                window_ms: None,
            },
        },
        count: 100,
        seed: 9,
        filter: LengthFilter::default(),
        server_url: Some(sim.base_url()),
        model: None,
        tokenizer_json: None,
    })
    .await
    .expect("dataset");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        data.arrivals_ms.as_deref(),
        Some(&[0.0, 0.0, 0.0, 500.0, 2000.0][..])
    );
    let ids: Vec<&Vec<u32>> = data
        .prompts
        .iter()
        .map(|p| match &p.input {
            evalctl_loadgen::PromptInput::Tokens { ids, .. } => ids,
            other => panic!("token ids expected, got {other:?}"),
        })
        .collect();
    let lengths: Vec<usize> = ids.iter().map(|i| i.len()).collect();
    assert_eq!(lengths, vec![40, 20, 16, 48, 5]);
    assert_eq!(ids[0][..16], ids[1][..16], "block 7 is shared");
    assert_eq!(ids[0][..16], ids[2][..]);
    assert_eq!(ids[0][..], ids[3][..40], "blocks 7, 8 and the cut block 9");
    assert_ne!(ids[1][16..20], ids[0][16..20], "block 10 is not block 8");

    let plan = StepPlan::new(
        format!("{}/v1", sim.base_url()),
        Api::Completions,
        "evalctl-sim",
        data,
        Load::Trace { time_scale: 10.0 },
        Stop::Requests(100),
    );
    let outcome = run_step(plan, |_| {}).await.expect("step runs");
    let m = &outcome.metrics;
    assert_eq!((m.completed, m.failed), (5, 0), "{:?}", m.errors);
    let scheduled: Vec<u64> = outcome.records.iter().map(|r| r.scheduled_ns).collect();
    let from_first: Vec<u64> = scheduled.iter().map(|s| s - scheduled[0]).collect();
    assert_eq!(from_first, vec![0, 0, 0, 50_000_000, 200_000_000], "at 10×");
    for r in &outcome.records {
        assert_eq!(
            r.server_prompt_tokens,
            Some(r.input_tokens),
            "ids sent as ids"
        );
    }
    assert!(
        m.client_lag_ms.is_some(),
        "trace replay reports its schedule lag"
    );
}

/// The three shapes a reasoning stream takes, as the simulator sends them (`reasoning`,
/// `reasoning_content`, inline `<think>…</think>` on both APIs): the load generator counts
/// reasoning and answer tokens apart and stamps the first answer token after the reasoning.
#[tokio::test]
async fn reasoning_streams_of_every_shape_are_counted_apart_from_the_answer() {
    use evalctl_loadgen::{Dataset, Prompt, PromptInput};
    use evalctl_sim_server::ReasoningShape;
    let cases = [
        (ReasoningShape::Reasoning, Api::Chat),
        (ReasoningShape::ReasoningContent, Api::Chat),
        (ReasoningShape::Think, Api::Chat),
        (ReasoningShape::Think, Api::Completions),
    ];
    for (shape, api) in cases {
        let sim = SimServer::start(SimConfig {
            reasoning: Some(shape),
            reasoning_tokens: 5,
            latency: LatencyModel {
                prefill_us_per_token: 0.0,
                decode_ms_per_token: 1.0,
                decode_ms_per_extra_request: 0.0,
            },
            ..SimConfig::default()
        })
        .await
        .expect("sim server starts");
        let data = Dataset::new(
            vec![Prompt {
                input: PromptInput::Text(words(8)),
                input_tokens: 8,
                max_tokens: 12,
            }],
            Tokenization::Whitespace,
        );
        let plan = StepPlan::new(
            format!("{}/v1", sim.base_url()),
            api,
            "evalctl-sim",
            data,
            Load::Concurrency(2),
            Stop::Requests(4),
        );
        let outcome = run_step(plan, |_| {}).await.expect("step runs");
        let m = &outcome.metrics;
        assert_eq!(
            (m.completed, m.failed),
            (4, 0),
            "{shape:?} {api:?}: {:?}",
            m.errors
        );
        for r in &outcome.records {
            assert_eq!(r.token_ns.len(), 12, "{shape:?} {api:?}");
            assert_eq!(r.reasoning_tokens, Some(5), "{shape:?} {api:?}");
            assert_eq!(r.first_answer_ns, Some(r.token_ns[5]), "{shape:?} {api:?}");
        }
        assert_eq!(m.reasoning_tokens, Some(20), "{shape:?} {api:?}");
        assert_eq!(m.answer_tokens, Some(28), "{shape:?} {api:?}");
        assert!(
            m.ttfa_ms.is_some(),
            "{shape:?} {api:?}: time to first answer"
        );
        sim.shutdown().await.expect("sim stops");
    }
}
