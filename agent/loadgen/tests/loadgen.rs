//! The load generator against a scripted server that logs its own send instants, and against
//! the simulated server.

#[allow(
    dead_code,
    reason = "shared test helpers; this binary uses a part of them"
)]
mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use evalctl_loadgen::{
    Api, Arrival, ClientConfig, Dataset, ErrorKind, Load, Phase, Progress, Prompt, PromptInput,
    RequestRecord, StepOutcome, StepPlan, Stop, Summary, TokenSource, Tokenization, run_step,
};
use support::scripted_server::{RequestLog, ScriptedServer, Step, chunks};

/// `n` prompts of `input` whitespace tokens asking for `output` tokens.
fn dataset(n: usize, input: usize, output: u32) -> Dataset {
    let prompts: Vec<Prompt> = (0..n)
        .map(|i| Prompt {
            input: PromptInput::Text(vec![format!("w{i}"); input].join(" ")),
            input_tokens: input as u64,
            max_tokens: output,
        })
        .collect();
    Dataset::new(prompts, Tokenization::Whitespace)
}

fn plan(url: &str, api: Api, load: Load, stop: Stop, output: u32) -> StepPlan {
    StepPlan::new(url, api, "scripted", dataset(4, 8, output), load, stop)
}

async fn run(plan: StepPlan) -> StepOutcome {
    run_step(plan, |_| {}).await.expect("step runs")
}

/// Streams `n` completion tokens: first after `ttft`, then every `gap`; finish, usage, done.
fn steady(n: u64, ttft: Duration, gap: Duration) -> Vec<Step> {
    let mut steps = vec![Step::head(), Step::Sleep(ttft)];
    for i in 0..n {
        if i > 0 {
            steps.push(Step::Sleep(gap));
        }
        steps.push(Step::token(chunks::text(" tok")));
    }
    steps.extend([
        Step::event(chunks::text_finish()),
        Step::event(chunks::usage(8, n)),
        Step::event(chunks::done()),
        Step::End,
    ]);
    steps
}

fn p50(values: Vec<f64>) -> f64 {
    Summary::of(values).expect("values").p50
}

/// Server-side truth for the same figures the client reports.
struct Truth {
    ttft: f64,
    tpot: f64,
    itl: f64,
    e2el: f64,
}

fn truth(log: &[RequestLog]) -> Truth {
    Truth {
        ttft: p50(log.iter().filter_map(RequestLog::ttft_ms).collect()),
        e2el: p50(log.iter().filter_map(RequestLog::e2el_ms).collect()),
        itl: p50(log.iter().flat_map(RequestLog::itls_ms).collect()),
        tpot: p50(log
            .iter()
            .filter(|l| l.token_writes.len() > 1)
            .map(|l| {
                (l.e2el_ms().expect("e2el") - l.ttft_ms().expect("ttft"))
                    / (l.token_writes.len() - 1) as f64
            })
            .collect()),
    }
}

/// Per-request comparisons of the client's record with the server's log of the same request.
struct Delays {
    /// Client send stamp → the request's kernel arrival at the server.
    up: Summary,
    /// Server's first token write → the client's first token stamp (the client's own delay).
    down: Summary,
    /// TTFT bias, client minus server log. Its upper tail is the client being late; the
    /// lower tail is mostly the server's own stamp being late (the client's kernel receive
    /// stamp can precede the return of the server's `write`, which a loaded machine delays).
    ttft_bias: Summary,
    /// The lowest TTFT bias.
    ttft_bias_min: f64,
}

fn delays(outcome: &StepOutcome, log: &[RequestLog]) -> Delays {
    let base = Instant::now();
    let base_ns = evalctl_loadgen::client::now_ns();
    let at = |rel: u64| {
        let ns = rel + outcome.epoch_ns;
        if ns >= base_ns {
            base + Duration::from_nanos(ns - base_ns)
        } else {
            base - Duration::from_nanos(base_ns - ns)
        }
    };
    let gap = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
    let (mut up, mut down, mut bias) = (Vec::new(), Vec::new(), Vec::new());
    for r in outcome.records.iter().filter(|r| !r.warmup) {
        let seq: u64 = r
            .server_request_id
            .as_deref()
            .and_then(|id| id.parse().ok())
            .expect("the script sends its sequence number as x-request-id");
        let l = log.iter().find(|l| l.seq == seq).expect("logged");
        up.push(gap(at(r.sent_ns.expect("sent")), l.received));
        down.push(gap(l.token_writes[0], at(r.token_ns[0])));
        bias.push(r.ttft_ms().expect("ttft") - l.ttft_ms().expect("server ttft"));
    }
    let summary = |v: Vec<f64>| Summary::of(v).expect("requests");
    Delays {
        up: summary(up),
        down: summary(down),
        ttft_bias_min: bias.iter().copied().fold(f64::INFINITY, f64::min),
        ttft_bias: summary(bias),
    }
}

/// Runs `requests` requests at `concurrency` against a server that streams 8 tokens `gap_ms`
/// apart after a first token at 30–42 ms, and compares p50s with the server's log (within
/// 2 ms), and each request's TTFT with the server's: the bias p50 within 2 ms, its p99 (how
/// late the client is) within `p99_bias_ms`.
async fn latency_matches_server_log(
    concurrency: u32,
    requests: u64,
    gap_ms: u64,
    p99_bias_ms: f64,
) {
    // The timing comparisons share two cores with their own server: one at a time.
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one_at_a_time = HEAVY.lock().await;
    // Time to first token varies by request, so requests drift apart after the first wave as
    // they do against a real server, instead of finishing in lockstep bursts whose writes this
    // one-threaded server would stamp one after another.
    let server = ScriptedServer::start(move |seq, _| {
        let ttft = Duration::from_millis(30 + (seq * 7) % 13);
        let mut steps = steady(8, ttft, Duration::from_millis(gap_ms));
        steps[0] = Step::Head {
            request_id: Some(seq.to_string()),
        };
        steps
    });
    let mut p = plan(
        &server.url(),
        Api::Completions,
        Load::Concurrency(concurrency),
        Stop::Requests(requests),
        8,
    );
    // Open every connection before measuring, as a benchmark's warmup does.
    p.warmup = u64::from(concurrency);
    let outcome = run(p).await;
    let m = &outcome.metrics;
    assert_eq!((m.completed, m.failed), (requests, 0), "{:?}", m.errors);
    assert_eq!(m.total_output_tokens, requests * 8);
    assert_eq!(m.output_tokens_from_usage, requests);
    let log: Vec<RequestLog> = server.log().split_off(concurrency as usize);
    assert_eq!(log.len() as u64, requests);
    let t = truth(&log);
    let d = delays(&outcome, &log);
    eprintln!(
        "c={concurrency}: request client write -> server socket p50 {:.3} ms; \
         token server write -> client stamp p50 {:.3} p99 {:.3} ms",
        d.up.p50, d.down.p50, d.down.p99
    );
    eprintln!(
        "c={concurrency}: ttft bias (client - server log) p50 {:+.3} p99 {:+.3} max {:+.3} \
         min {:+.3} ms",
        d.ttft_bias.p50, d.ttft_bias.p99, d.ttft_bias.max, d.ttft_bias_min
    );
    let (ttft, tpot, itl, e2el) = (
        m.ttft_ms.expect("ttft").p50,
        m.tpot_ms.expect("tpot").p50,
        m.itl_ms.expect("itl").p50,
        m.e2el_ms.expect("e2el").p50,
    );
    eprintln!(
        "c={concurrency} n={requests}: p50 client/server ms: ttft {ttft:.3}/{:.3} tpot {tpot:.3}/{:.3} \
         itl {itl:.3}/{:.3} e2el {e2el:.3}/{:.3}; connections {}",
        t.ttft, t.tpot, t.itl, t.e2el, outcome.connections_opened
    );
    for (name, client, server) in [
        ("ttft", ttft, t.ttft),
        ("tpot", tpot, t.tpot),
        ("itl", itl, t.itl),
        ("e2el", e2el, t.e2el),
    ] {
        assert!(
            (client - server).abs() <= 2.0,
            "c={concurrency} {name} p50: client {client:.3} ms vs server {server:.3} ms"
        );
    }
    assert!(
        d.ttft_bias.p50.abs() <= 2.0,
        "c={concurrency} ttft bias p50 {:.3} ms",
        d.ttft_bias.p50
    );
    assert!(
        d.ttft_bias.p99 <= p99_bias_ms,
        "c={concurrency} ttft bias p99 {:.3} ms, bound {p99_bias_ms} ms",
        d.ttft_bias.p99
    );
    assert!(
        outcome.connections_opened <= u64::from(concurrency),
        "connections are reused: {} opened",
        outcome.connections_opened
    );
}

#[tokio::test]
async fn latency_matches_server_log_at_concurrency_1() {
    latency_matches_server_log(1, 10, 10, 5.0).await;
}

#[tokio::test]
async fn latency_matches_server_log_at_concurrency_64() {
    latency_matches_server_log(64, 256, 10, 5.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_matches_server_log_at_concurrency_512() {
    // 512 streams share two cores with this test's server: tokens 40 ms apart keep the pair
    // below saturation (about 13k events/s).
    latency_matches_server_log(512, 2048, 40, 10.0).await;
}

/// Runs one request answered by `steps` and returns its record and the server's log of it.
async fn one(api: Api, steps: Vec<Step>, config: ClientConfig) -> (RequestRecord, RequestLog) {
    let server = ScriptedServer::start(move |_, _| steps.clone());
    let mut p = plan(
        &server.url(),
        api,
        Load::Concurrency(1),
        Stop::Requests(1),
        16,
    );
    p.client = config;
    let outcome = run(p).await;
    let mut log = server.log();
    assert_eq!(log.len(), 1);
    (
        outcome.records.into_iter().next().expect("one record"),
        log.remove(0),
    )
}

fn assert_ttft_matches(record: &RequestRecord, log: &RequestLog) {
    let (client, server) = (
        record.ttft_ms().expect("ttft"),
        log.ttft_ms().expect("server ttft"),
    );
    // 5 ms: a loaded machine delays the two clocks' readings by a few ms (2.5 ms seen),
    // while the chunks a wrong TTFT would count come 20 ms or more away in these tests.
    assert!(
        (client - server).abs() <= 5.0,
        "ttft client {client} vs server {server}"
    );
}

fn ms(d: u64) -> Duration {
    Duration::from_millis(d)
}

#[tokio::test]
async fn role_only_first_chunk_is_not_a_token() {
    let steps = vec![
        Step::Head {
            request_id: Some("req-7".into()),
        },
        Step::event(chunks::role()),
        Step::Sleep(ms(60)),
        Step::token(chunks::content("Hello")),
        Step::Sleep(ms(10)),
        Step::token(chunks::content(" world")),
        Step::event(chunks::chat_finish()),
        Step::event(chunks::usage(8, 2)),
        Step::event(chunks::done()),
        Step::End,
    ];
    let (r, log) = one(Api::Chat, steps, ClientConfig::default()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert!(
        r.ttft_ms().expect("ttft") >= 55.0,
        "the role chunk is not the first token"
    );
    assert_ttft_matches(&r, &log);
    assert_eq!(r.token_ns.len(), 2);
    assert_eq!(
        (r.output_tokens, r.output_tokens_source),
        (2, Some(TokenSource::Usage))
    );
    assert_eq!(r.server_prompt_tokens, Some(8));
    assert_eq!(r.server_request_id.as_deref(), Some("req-7"));
    assert_eq!(log.body["stream"], true);
    assert_eq!(log.body["stream_options"]["include_usage"], true);
    assert!(log.body["messages"].is_array());
}

#[tokio::test]
async fn several_tokens_per_chunk_take_the_count_from_usage() {
    let steps = vec![
        Step::head(),
        Step::event(chunks::role()),
        Step::Sleep(ms(20)),
        Step::token(chunks::content("a b c")),
        Step::Sleep(ms(30)),
        Step::token(chunks::content(" d e f")),
        Step::Sleep(ms(30)),
        Step::token(chunks::content(" g h i")),
        Step::event(chunks::chat_finish()),
        Step::event(chunks::usage(8, 9)),
        Step::event(chunks::done()),
        Step::End,
    ];
    let (r, log) = one(Api::Chat, steps, ClientConfig::default()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(r.token_ns.len(), 3);
    assert_eq!(
        (r.output_tokens, r.output_tokens_source),
        (9, Some(TokenSource::Usage))
    );
    assert_ttft_matches(&r, &log);
    // TPOT spreads the 60 ms of decoding over 8 tokens (7.5 ms), not 2 chunks (30 ms); the
    // margin absorbs a loaded machine's scheduling delays in the scripted server's sleeps.
    let tpot = r.tpot_ms().expect("tpot");
    assert!((tpot - 60.0 / 8.0).abs() < 3.0, "tpot {tpot}");
    assert_eq!(
        r.server_request_id.as_deref(),
        Some("chatcmpl-s"),
        "the chunk id without a header"
    );
}

#[tokio::test]
async fn llama_cpp_empty_text_chunks_are_counted_tokens() {
    let steps = vec![
        Step::head(),
        Step::Sleep(ms(25)),
        Step::token(chunks::text("")),
        Step::Sleep(ms(5)),
        Step::token(chunks::text("")),
        Step::Sleep(ms(5)),
        Step::token(chunks::text("é")),
        Step::Sleep(ms(5)),
        Step::token(chunks::text(" x")),
        Step::event(chunks::text_finish()),
        Step::event(chunks::done()),
        Step::End,
    ];
    let (r, log) = one(Api::Completions, steps, ClientConfig::default()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(
        (r.output_tokens, r.output_tokens_source),
        (4, Some(TokenSource::Counted))
    );
    assert_eq!(r.token_ns.len(), 4);
    assert_ttft_matches(&r, &log);
    assert_eq!(r.server_prompt_tokens, None);
}

#[tokio::test]
async fn finish_only_last_chunk_ends_a_stream_without_done() {
    let steps = vec![
        Step::head(),
        Step::Sleep(ms(15)),
        Step::token(chunks::text("a")),
        Step::Sleep(ms(15)),
        Step::token(chunks::text("b")),
        Step::Sleep(ms(40)),
        Step::event(chunks::text_finish()),
        Step::End,
    ];
    let (r, log) = one(Api::Completions, steps, ClientConfig::default()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(r.output_tokens, 2);
    // E2EL ends at the last token, not at the finish chunk 40 ms later.
    let (e2el, server) = (r.e2el_ms().expect("e2el"), log.e2el_ms().expect("e2el"));
    assert!((e2el - server).abs() <= 2.0, "e2el {e2el} vs {server}");
    assert!(r.end_ns.expect("end") >= r.token_ns[1] + 35_000_000);
}

#[tokio::test]
async fn reasoning_then_answer_gives_time_to_first_answer() {
    let steps = vec![
        Step::head(),
        Step::event(chunks::role()),
        Step::Sleep(ms(10)),
        Step::token(chunks::reasoning("Let me")),
        Step::Sleep(ms(30)),
        Step::token(chunks::reasoning(" think")),
        Step::Sleep(ms(30)),
        Step::token(chunks::content("42")),
        Step::event(chunks::chat_finish()),
        Step::event(chunks::done()),
        Step::End,
    ];
    let (r, _) = one(Api::Chat, steps, ClientConfig::default()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(r.output_tokens, 3);
    let (ttft, ttfa) = (r.ttft_ms().expect("ttft"), r.ttfa_ms().expect("ttfa"));
    assert!(ttfa - ttft >= 55.0, "ttft {ttft} ttfa {ttfa}");
}

#[tokio::test]
async fn events_split_across_reads_and_odd_framing() {
    let big = "y".repeat(1 << 20);
    let content = chunks::content("día 🦀 naïve");
    let cuts: Vec<usize> = (1..content.len() + 6).step_by(3).collect();
    let steps = vec![
        Step::head(),
        Step::Raw(": keep-alive\n\n".into()),
        Step::Sleep(ms(10)),
        Step::SplitEvent {
            payload: content,
            token: true,
            cuts,
            pause: ms(1),
        },
        Step::Raw(format!("data: {}\r\n\r\n", chunks::content("crlf"))),
        Step::token(chunks::content(&big)),
        Step::Raw("data: [DONE]".into()),
        Step::End,
    ];
    let (r, _) = one(Api::Chat, steps, ClientConfig::default()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(
        (r.output_tokens, r.output_tokens_source),
        (3, Some(TokenSource::Counted))
    );
}

/// Runs `requests` requests answered by `steps` and returns the errors by kind and a record.
async fn failing(
    steps: Vec<Step>,
    config: ClientConfig,
    requests: u64,
) -> (BTreeMap<ErrorKind, u64>, RequestRecord) {
    let server = ScriptedServer::start(move |_, _| steps.clone());
    let mut p = plan(
        &server.url(),
        Api::Completions,
        Load::Concurrency(2),
        Stop::Requests(requests),
        16,
    );
    p.client = config;
    let outcome = run(p).await;
    assert_eq!(outcome.metrics.failed, requests);
    assert_eq!(outcome.metrics.completed, 0);
    let record = outcome.records.into_iter().next().expect("a record");
    (outcome.metrics.errors, record)
}

#[tokio::test]
async fn error_kinds_are_classified() {
    let token = || Step::token(chunks::text("a"));
    let quick = ClientConfig {
        stall_timeout: ms(300),
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    };
    let mut slow_tokens = vec![Step::head()];
    for _ in 0..100 {
        slow_tokens.extend([token(), Step::Sleep(ms(50))]);
    }
    let cases: Vec<(&str, Vec<Step>, ClientConfig, ErrorKind, &str)> = vec![
        (
            "http 500",
            vec![Step::Status(
                500,
                r#"{"error":{"message":"engine boom"}}"#.into(),
            )],
            quick.clone(),
            ErrorKind::HttpStatus,
            "engine boom",
        ),
        (
            "reset mid-stream",
            vec![Step::head(), token(), Step::Sleep(ms(10)), Step::Reset],
            quick.clone(),
            ErrorKind::Reset,
            "",
        ),
        (
            "stall",
            vec![Step::head(), token(), Step::Stall],
            quick.clone(),
            ErrorKind::Stall,
            "stall",
        ),
        (
            "timeout",
            slow_tokens,
            ClientConfig {
                request_timeout: ms(400),
                stall_timeout: Duration::from_secs(10),
                ..ClientConfig::default()
            },
            ErrorKind::Timeout,
            "timeout",
        ),
        (
            "mid-stream error",
            vec![
                Step::head(),
                token(),
                Step::event(
                    r#"{"error":{"message":"out of KV cache","type":"InternalServerError"}}"#,
                ),
                Step::End,
            ],
            quick.clone(),
            ErrorKind::MidStreamError,
            "out of KV cache",
        ),
        (
            "decode",
            vec![Step::head(), Step::event("this is not json"), Step::End],
            quick.clone(),
            ErrorKind::Decode,
            "invalid JSON",
        ),
        (
            "truncated",
            vec![Step::head(), token(), Step::End],
            quick.clone(),
            ErrorKind::Truncated,
            "without [DONE]",
        ),
    ];
    for (name, steps, config, kind, needle) in cases {
        let started = Instant::now();
        let (errors, record) = failing(steps, config, 2).await;
        assert_eq!(
            errors,
            BTreeMap::from([(kind, 2)]),
            "{name}: {:?}",
            record.error
        );
        let error = record.error.expect("error");
        assert!(error.message.contains(needle), "{name}: {}", error.message);
        assert!(record.end_ns.is_some(), "{name}: end stamped");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn connect_errors_are_classified() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let outcome = run(plan(
        &format!("http://127.0.0.1:{port}"),
        Api::Chat,
        Load::Concurrency(1),
        Stop::Requests(3),
        4,
    ))
    .await;
    assert_eq!(
        outcome.metrics.errors,
        BTreeMap::from([(ErrorKind::Connect, 3)])
    );
    assert!(outcome.records.iter().all(|r| r.sent_ns.is_none()));
}

#[tokio::test]
async fn failures_do_not_poison_later_requests() {
    let server = ScriptedServer::start(move |seq, _| {
        if seq % 3 == 1 {
            vec![Step::head(), Step::token(chunks::text("a")), Step::Reset]
        } else {
            steady(3, ms(1), ms(1))
        }
    });
    let outcome = run(plan(
        &server.url(),
        Api::Completions,
        Load::Concurrency(1),
        Stop::Requests(9),
        3,
    ))
    .await;
    assert_eq!(outcome.metrics.completed, 6);
    assert_eq!(
        outcome.metrics.errors,
        BTreeMap::from([(ErrorKind::Reset, 3)])
    );
    // One connection, plus a fresh one after each reset.
    assert_eq!(outcome.connections_opened, 4);
}

#[tokio::test]
async fn connections_closed_while_idle_are_replaced() {
    let server = ScriptedServer::start(|_, _| {
        let mut steps = steady(2, ms(1), ms(1));
        steps.push(Step::Close);
        steps
    });
    let outcome = run(plan(
        &server.url(),
        Api::Completions,
        Load::Concurrency(1),
        Stop::Requests(5),
        2,
    ))
    .await;
    assert_eq!(outcome.metrics.completed, 5, "{:?}", outcome.metrics.errors);
    assert_eq!(outcome.connections_opened, 5);
}

#[tokio::test]
async fn done_ends_a_request_even_if_the_body_stays_open() {
    let server = ScriptedServer::start(|_, _| {
        vec![
            Step::head(),
            Step::token(chunks::text("a")),
            Step::event(chunks::done()),
            Step::Stall,
        ]
    });
    let mut p = plan(
        &server.url(),
        Api::Completions,
        Load::Concurrency(1),
        Stop::Requests(2),
        1,
    );
    p.client.stall_timeout = Duration::from_secs(30);
    let started = Instant::now();
    let outcome = run(p).await;
    assert_eq!(outcome.metrics.completed, 2, "{:?}", outcome.metrics.errors);
    assert_eq!(
        outcome.connections_opened, 2,
        "an unfinished body is not reused"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn warmup_is_sent_first_and_excluded() {
    let server = ScriptedServer::start(|_, _| steady(2, ms(1), ms(1)));
    let mut p = plan(
        &server.url(),
        Api::Completions,
        Load::Concurrency(2),
        Stop::Requests(5),
        2,
    );
    p.warmup = 3;
    let reports = Arc::new(Mutex::new(Vec::<Progress>::new()));
    let sink = Arc::clone(&reports);
    let outcome = run_step(p, move |p| sink.lock().expect("lock").push(p))
        .await
        .expect("step");
    assert_eq!(outcome.records.len(), 8);
    assert!(outcome.records[..3].iter().all(|r| r.warmup));
    assert!(outcome.records[3..].iter().all(|r| !r.warmup));
    let last_warmup_end = outcome.records[..3].iter().filter_map(|r| r.end_ns).max();
    let first_measured = outcome.records[3..].iter().filter_map(|r| r.sent_ns).min();
    assert!(
        last_warmup_end <= first_measured,
        "warmup finishes before measuring"
    );
    assert_eq!(outcome.metrics.warmup_excluded, 3);
    assert_eq!(outcome.metrics.completed, 5);
    assert_eq!(server.log().len(), 8);
    let reports = reports.lock().expect("lock");
    let last = reports.last().expect("progress reported");
    assert_eq!(last.phase, Phase::Done);
    assert_eq!(last.completed, 5);
    assert!(
        reports
            .iter()
            .any(|r| r.phase == Phase::Warmup && r.completed == 3)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_mode_reports_client_lag() {
    let server = ScriptedServer::start(|_, _| steady(2, ms(5), ms(5)));
    let p = plan(
        &server.url(),
        Api::Completions,
        Load::Rate {
            rps: 100.0,
            arrival: Arrival::Poisson,
            max_in_flight: None,
        },
        Stop::Requests(60),
        2,
    );
    let tolerance_ms = p.lag_tolerance_ms;
    let started = Instant::now();
    let outcome = run(p).await;
    let m = &outcome.metrics;
    assert_eq!(m.completed, 60);
    let lag = m.client_lag_ms.expect("lag in rate mode");
    eprintln!(
        "rate 100/s poisson: lag p50 {:.3} p99 {:.3} max {:.3} ms",
        lag.p50, lag.p99, lag.max
    );
    assert!(lag.p50 < 5.0, "lag p50 {}", lag.p50);
    // Whether the client kept up depends on the machine (a loaded debug run once saw p99
    // 10.6 ms); what the metrics must do is flag it exactly when p99 passes the tolerance.
    assert_eq!(
        m.client_fell_behind,
        lag.p99 > tolerance_ms,
        "p99 {}",
        lag.p99
    );
    // 60 arrivals at 100/s take about 0.6 s.
    let elapsed = started.elapsed().as_secs_f64();
    assert!((0.25..3.0).contains(&elapsed), "elapsed {elapsed}");
    let scheduled: Vec<u64> = outcome.records.iter().map(|r| r.scheduled_ns).collect();
    assert!(
        scheduled.windows(2).all(|w| w[0] <= w[1]),
        "arrivals in order"
    );
    // Requests are armed ahead of their instant, but none leaves before it.
    for r in &outcome.records {
        let sent = r.sent_ns.expect("sent");
        assert!(
            sent >= r.scheduled_ns,
            "request {} left {} µs before its instant",
            r.index,
            (r.scheduled_ns - sent) / 1000
        );
    }
    // The server saw them on the schedule's clock: arrival gaps are the scheduled gaps
    // (less at most the first request's lag).
    let mut log = server.log();
    log.sort_by_key(|l| l.received);
    let first_lag = outcome.records[0].lag_ms().expect("sent");
    for (l, r) in log.iter().zip(&outcome.records).skip(1) {
        let seen = l.received.duration_since(log[0].received).as_secs_f64() * 1e3;
        let due = (r.scheduled_ns - scheduled[0]) as f64 / 1e6;
        assert!(
            seen >= due - first_lag - 0.5,
            "request {} reached the server {seen:.3} ms after the first, due {due:.3} ms",
            r.index
        );
    }

    // A cap of one request in flight with slow answers makes the client fall behind.
    let slow = ScriptedServer::start(|_, _| steady(2, ms(30), ms(5)));
    let mut p = plan(
        &slow.url(),
        Api::Completions,
        Load::Rate {
            rps: 200.0,
            arrival: Arrival::Constant,
            max_in_flight: Some(1),
        },
        Stop::Requests(10),
        2,
    );
    p.seed = 9;
    let m = run(p).await.metrics;
    assert!(m.client_fell_behind, "lag {:?}", m.client_lag_ms);
}

#[tokio::test]
async fn duration_stop_and_infinite_rate() {
    let server = ScriptedServer::start(|_, _| steady(2, ms(5), ms(5)));
    let outcome = run(plan(
        &server.url(),
        Api::Completions,
        Load::Concurrency(2),
        Stop::Duration(ms(300)),
        2,
    ))
    .await;
    let sent: Vec<u64> = outcome.records.iter().filter_map(|r| r.sent_ns).collect();
    assert!(sent.len() >= 4, "{} requests in 300 ms", sent.len());
    let first = *sent.iter().min().expect("sent");
    assert!(
        sent.iter().all(|s| s - first < 320_000_000),
        "no send after the duration"
    );
    assert!(outcome.metrics.duration_s > 0.25);

    let outcome = run(plan(
        &server.url(),
        Api::Completions,
        Load::Rate {
            rps: f64::INFINITY,
            arrival: Arrival::Poisson,
            max_in_flight: None,
        },
        Stop::Requests(20),
        2,
    ))
    .await;
    assert_eq!(outcome.metrics.completed, 20);
    assert!(
        outcome
            .records
            .iter()
            .all(|r| r.scheduled_ns == outcome.records[0].scheduled_ns)
    );
    assert!(
        !outcome.metrics.client_fell_behind,
        "rate inf is never behind schedule"
    );

    let bad = plan(
        &server.url(),
        Api::Completions,
        Load::Rate {
            rps: f64::INFINITY,
            arrival: Arrival::Poisson,
            max_in_flight: None,
        },
        Stop::Duration(ms(100)),
        2,
    );
    assert!(run_step(bad, |_| {}).await.is_err());
}
